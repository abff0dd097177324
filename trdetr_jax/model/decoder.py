"""DAB-DETR style anchor decoder.

Learned 2-d anchors (center, width) in logit space are refined layer by layer. Per layer:
the anchor's sine embedding gives the positional query ``query_pos = ref_point_head(sine)``;
the sine embedding is scaled by ``query_scale(prev_output)`` (layers > 0) and modulated by
``sigmoid(ref_anchor_head(prev_output)) / width`` on all dims; self-attention on
content+position projections; conditional cross-attention where each head's query/key is
``[content_h, positional_h]`` (head size 2d/H, value head size d/H); post-norm; the box head
``bbox_embed`` (distinct from the model's ``span_embed``) refines the anchor, and the next
layer sees the refined anchor with its gradient stopped (the returned references keep it).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from trdetr_jax.model.attention import ProjectionFreeAttention, split_heads
from trdetr_jax.model.encoder import feed_forward
from trdetr_jax.model.layers import MLP, Dtype, layer_norm, torch_dense, xavier_uniform
from trdetr_jax.model.position import anchor_sine_embedding
from trdetr_jax.spans import inverse_sigmoid


def _concat_heads(a: jax.Array, b: jax.Array, num_heads: int) -> jax.Array:
    """[B, L, d] x2 -> [B, L, 2d] with head h = [a_h, b_h]."""
    x = jnp.concatenate([split_heads(a, num_heads), split_heads(b, num_heads)], axis=-1)
    return x.reshape(x.shape[0], x.shape[1], -1)


class DecoderLayer(nn.Module):
    nheads: int
    dim_feedforward: int
    dropout_rate: float = 0.1
    is_first: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tgt, memory, memory_mask, pos, query_pos, query_sine, *, train: bool):
        """tgt [B, nq, d], memory/pos [B, L, d], memory_mask [B, L] -> [B, nq, d]."""
        d = tgt.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def proj(name):
            return torch_dense(d, d, name=name, kernel_init=xavier_uniform, **kw)

        def drop(x):
            return nn.Dropout(self.dropout_rate)(x, deterministic=not train)

        # Self-attention over the queries.
        q = proj("sa_qcontent_proj")(tgt) + proj("sa_qpos_proj")(query_pos)
        k = proj("sa_kcontent_proj")(tgt) + proj("sa_kpos_proj")(query_pos)
        v = proj("sa_v_proj")(tgt)
        a = ProjectionFreeAttention(self.nheads, self.dropout_rate, name="self_attn", **kw)(
            q, k, v, None, train=train
        )
        tgt = layer_norm(name="norm1", **kw)(tgt + drop(a))

        # Conditional cross-attention to the memory.
        q = proj("ca_qcontent_proj")(tgt)
        k = proj("ca_kcontent_proj")(memory)
        v = proj("ca_v_proj")(memory)
        k_pos = proj("ca_kpos_proj")(pos)
        if self.is_first:  # only the first layer adds the positional query/key (keep_query_pos off)
            q = q + proj("ca_qpos_proj")(query_pos)
            k = k + k_pos
        sine = proj("ca_qpos_sine_proj")(query_sine)
        q = _concat_heads(q, sine, self.nheads)  # [B, nq, 2d]
        k = _concat_heads(k, k_pos, self.nheads)  # [B, L, 2d]
        valid = (memory_mask > 0)[:, None, None, :]  # [B, 1, 1, L]
        a = ProjectionFreeAttention(self.nheads, self.dropout_rate, name="cross_attn", **kw)(
            q, k, v, valid, train=train
        )
        tgt = layer_norm(name="norm2", **kw)(tgt + drop(a))

        f = feed_forward(self, tgt, self.dim_feedforward, self.dropout_rate, train=train)
        return layer_norm(name="norm3", **kw)(tgt + drop(f))


class AnchorDecoder(nn.Module):
    num_layers: int
    nheads: int
    dim_feedforward: int
    dropout_rate: float = 0.1
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, memory, memory_mask, pos, anchors_logit, *, train: bool):
        """memory, pos [B, L, d]; memory_mask [B, L]; anchors_logit [nq, 2].

        Returns hs [n_layers, B, nq, d] (after the shared final LayerNorm) and the references
        fed to each layer [n_layers, B, nq, 2].
        """
        b, _, d = memory.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        query_scale = MLP(d, d, 2, xavier=True, name="query_scale", **kw)
        ref_point_head = MLP(d, d, 2, xavier=True, name="ref_point_head", **kw)
        ref_anchor_head = MLP(d, 1, 2, xavier=True, name="ref_anchor_head", **kw)
        bbox_embed = MLP(d, 2, 3, xavier=True, zero_last_bias=True, name="bbox_embed", **kw)
        norm = layer_norm(name="norm", **kw)

        ref = jnp.broadcast_to(jax.nn.sigmoid(anchors_logit), (b,) + anchors_logit.shape)
        output = jnp.zeros((b, anchors_logit.shape[0], d), memory.dtype)  # content queries
        hs, refs = [], [ref]
        for i in range(self.num_layers):
            sine = anchor_sine_embedding(ref, d // 2)  # [B, nq, d]
            query_pos = ref_point_head(sine)
            scale = query_scale(output)  # also built for layer 0 so its params always exist
            if i > 0:
                sine = sine * scale
            modulation = jax.nn.sigmoid(ref_anchor_head(output))[..., 0] / ref[..., 1]  # [B, nq]
            sine = sine * modulation[..., None]
            self.sow("intermediates", f"inter_dec_layer{i}_tgt_in", output)
            self.sow("intermediates", f"inter_dec_layer{i}_query_pos", query_pos)
            self.sow("intermediates", f"inter_dec_layer{i}_query_sine_embed", sine)
            output = DecoderLayer(
                self.nheads,
                self.dim_feedforward,
                self.dropout_rate,
                is_first=i == 0,
                name=f"layer_{i}",
                **kw,
            )(output, memory, memory_mask, pos, query_pos, sine, train=train)
            self.sow("intermediates", f"inter_dec_layer{i}_out", output)
            new_ref = jax.nn.sigmoid(bbox_embed(output) + inverse_sigmoid(ref))
            if i != self.num_layers - 1:
                refs.append(new_ref)
            ref = jax.lax.stop_gradient(new_ref)
            hs.append(norm(output))
        return jnp.stack(hs), jnp.stack(refs)
