"""Text-to-video cross-attention encoder (paper eq. 11).

Each layer lets the video clips (plus their sine position) attend the text tokens (zero
position), then applies a hybrid-norm PReLU FFN:
``x = v + MHA(v + pos, t, t)``; ``out = norm2(x + FFN(norm1(x)))``. The text is not updated.

Official attention-mask quirk (``compat='official'``): besides the text key-padding mask,
the official code forbids (padded clip, padded token) pairs through a per-(sample, head) mask
laid out as ``head * B + sample`` but read as ``sample * H + head``; batch item b, head h
therefore uses the pairs of sample ``(b * H + h) mod B``, B the official batch size (the
rows the official loader put in the batch: the last evaluation batch can be smaller than the
array, whose extra rows only fill it). Valid clips of b that are padding in that other
sample cannot see tokens that are padding there. ``compat='fixed'`` uses the
aligned mask, which adds nothing to the key-padding mask.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from trdetr_jax.model.attention import TorchMultiheadAttention
from trdetr_jax.model.encoder import feed_forward
from trdetr_jax.model.layers import Dtype, layer_norm


def t2v_attention_valid(
    vid_mask, txt_mask, nheads: int, compat: str, batch_size: jax.Array | None = None
) -> jax.Array:
    """Boolean [B, H, Lv, Lt] (True = may attend) for the text-to-video attention.

    ``batch_size`` [B] int (every row the same): the official batch size of the quirk (see
    the module docstring); None means the array's B.
    """
    vid_mask, txt_mask = jnp.asarray(vid_mask), jnp.asarray(txt_mask)
    key_valid = (txt_mask > 0)[:, None, None, :]  # [B, 1, 1, Lt]
    if compat != "official":
        return key_valid
    b = vid_mask.shape[0]
    n = jnp.full((b,), b, jnp.int32) if batch_size is None else jnp.asarray(batch_size, jnp.int32)
    n = jnp.maximum(n, 1)[:, None]  # [B, 1]
    pad_pairs = (vid_mask <= 0)[:, :, None] & (txt_mask <= 0)[:, None, :]  # [B, Lv, Lt]
    src = (jnp.arange(b)[:, None] * nheads + jnp.arange(nheads)[None, :]) % n  # [B, H]
    return key_valid & ~pad_pairs[src]  # [B, H, Lv, Lt]


class T2VLayer(nn.Module):
    nheads: int
    dim_feedforward: int
    dropout_rate: float = 0.1
    compat: str = "official"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, vid, txt, pos_vid, pos_txt, valid, *, train: bool) -> jax.Array:
        """vid [B, Lv, d], txt [B, Lt, d], valid [B, H, Lv, Lt] -> new video rows [B, Lv, d]."""
        norm_kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        a = TorchMultiheadAttention(
            self.nheads, self.dropout_rate, self.dtype, self.param_dtype, name="self_attn"
        )(vid + pos_vid, txt + pos_txt, txt, valid, train=train)
        x = vid + nn.Dropout(self.dropout_rate)(a, deterministic=not train)
        h = layer_norm(name="norm1", **norm_kw)(x)
        f = feed_forward(self, h, self.dim_feedforward, self.dropout_rate, train=train)
        # The FFN residual adds to x, not to norm1(x) (official hybrid norm).
        x = x + nn.Dropout(self.dropout_rate)(f, deterministic=not train)
        return layer_norm(name="norm2", **norm_kw)(x)


class T2VEncoder(nn.Module):
    """``num_layers`` T2VLayers ``layer_i``; returns (video rows, per-layer video rows)."""

    num_layers: int
    nheads: int
    dim_feedforward: int
    dropout_rate: float = 0.1
    compat: str = "official"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, vid, txt, pos_vid, pos_txt, vid_mask, txt_mask, batch_size=None, *, train: bool
    ):
        valid = t2v_attention_valid(vid_mask, txt_mask, self.nheads, self.compat, batch_size)
        outs = []
        for i in range(self.num_layers):
            vid = T2VLayer(
                self.nheads,
                self.dim_feedforward,
                self.dropout_rate,
                self.compat,
                self.dtype,
                self.param_dtype,
                name=f"layer_{i}",
            )(vid, txt, pos_vid, pos_txt, valid, train=train)
            outs.append(vid)
        return vid, outs
