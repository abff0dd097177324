"""Visual feature refinement (VFR, paper eq. 6-10): VSLNet-style context-query co-attention.

The video clips (context C) and text tokens (query Q) score each other with a trilinear
function; the video is rewritten as ``Dense([C, c2q, C*c2q, C*q2c])`` and then joined with
an attention-pooled sentence vector. Masked softmaxes add ``(1 - mask) * -1e30`` (a finite
constant, computed in float32 as in the official code) instead of using -inf.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from trdetr_jax.model.layers import Dtype, torch_dense
from trdetr_jax.precision import at_least_f32


def mask_logits(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """logits + (1 - mask) * -1e30, mask 1 = valid; the mask term is a float32 island."""
    penalty = (1.0 - mask.astype(jnp.float32)) * jnp.float32(-1e30)
    return at_least_f32(logits) + penalty


def _xavier_vector(fan_in: int, fan_out: int):
    """Xavier-uniform values for a parameter stored flat (official shapes (d, 1) / (1, 1, d))."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class VFR(nn.Module):
    """Co-attention refinement of the projected video by the projected text.

    Params: ``w4C``, ``w4Q``, ``w4mlu`` [d] (trilinear score), ``cqa_dense`` (4d -> d),
    ``pool_weight`` [d] (sentence pooling), ``concat_dense`` (2d -> d).
    """

    dropout_rate: float = 0.1  # the official fuser hard-codes 0.1 (not the --dropout flag)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, vid, txt, vid_mask, txt_mask, *, train: bool) -> jax.Array:
        """vid [B, Lv, d], txt [B, Lt, d], masks [B, L*] (1 = valid) -> [B, Lv, d]."""
        d = vid.shape[-1]
        pd = self.param_dtype
        w4c = self.param("w4C", _xavier_vector(d, 1), (d,), pd)
        w4q = self.param("w4Q", _xavier_vector(d, 1), (d,), pd)
        w4mlu = self.param("w4mlu", _xavier_vector(d, d), (d,), pd)
        pool_w = self.param("pool_weight", _xavier_vector(d, 1), (d,), pd)
        dt = self.dtype or jnp.result_type(vid, w4c)
        vid, txt = vid.astype(dt), txt.astype(dt)

        # Trilinear score on dropped-out copies of C and Q (two independent dropout masks).
        drop = nn.Dropout(self.dropout_rate)
        c = drop(vid, deterministic=not train)
        q = drop(txt, deterministic=not train)
        score = (
            jnp.einsum("bcd,d->bc", c, w4c.astype(dt))[:, :, None]  # [B, Lv, 1]
            + jnp.einsum("bqd,d->bq", q, w4q.astype(dt))[:, None, :]  # [B, 1, Lt]
            + jnp.einsum("bcd,bqd->bcq", c * w4mlu.astype(dt), q)  # [B, Lv, Lt]
        )
        s_q = jax.nn.softmax(mask_logits(score, txt_mask[:, None, :]), axis=2)  # over tokens
        s_c = jax.nn.softmax(mask_logits(score, vid_mask[:, :, None]), axis=1)  # over clips
        s_q, s_c = s_q.astype(dt), s_c.astype(dt)
        c2q = jnp.einsum("bcq,bqd->bcd", s_q, txt)  # [B, Lv, d]
        cc = jnp.einsum("bcq,bkq->bck", s_q, s_c)  # [B, Lv, Lv]
        q2c = jnp.einsum("bck,bkd->bcd", cc, vid)  # [B, Lv, d]
        x = jnp.concatenate([vid, c2q, vid * c2q, vid * q2c], axis=-1)  # [B, Lv, 4d]
        x = torch_dense(d, 4 * d, name="cqa_dense", dtype=self.dtype, param_dtype=pd)(x)
        self.sow("intermediates", "inter_fuser_cq_attention", x)

        # Attention-pooled sentence vector, broadcast to every clip.
        alpha = mask_logits(jnp.einsum("bqd,d->bq", txt, pool_w.astype(dt)), txt_mask)  # [B, Lt]
        alpha = jax.nn.softmax(alpha, axis=1).astype(dt)
        pooled = jnp.einsum("bq,bqd->bd", alpha, txt)  # [B, d]
        pooled = jnp.broadcast_to(pooled[:, None, :], x.shape)  # [B, Lv, d]
        x = jnp.concatenate([x, pooled], axis=-1)  # [B, Lv, 2d]
        x = torch_dense(d, 2 * d, name="concat_dense", dtype=self.dtype, param_dtype=pd)(x)
        self.sow("intermediates", "inter_fuser_cq_concat_prerelu", x)
        return nn.relu(x)
