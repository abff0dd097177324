"""Multi-head attention with PyTorch's numerics and parameter layout.

``TorchMultiheadAttention`` is ``torch.nn.MultiheadAttention`` (separate q/k/v Dense layers
here, one packed ``in_proj_weight`` there; ``official.keys`` splits it). ``ProjectionFreeAttention``
is the decoder's attention that receives already-projected q/k/v and only owns ``out_proj``;
its query/key head size may differ from the value head size (the decoder's cross-attention
concatenates a content and a positional half per head).

Masks: ``valid`` is boolean, True = may attend, broadcastable to [B, H, L_q, L_k]. Masked
logits get the lowest finite value rather than -inf, so they get exactly zero weight and a
fully masked row gives uniform weights instead of NaN.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from trdetr_jax.model.layers import (
    Dtype,
    packed_qkv_xavier,
    torch_dense,
    xavier_uniform,
)
from trdetr_jax.precision import at_least_f32


def attention_weights(q: jax.Array, k: jax.Array, valid: jax.Array | None) -> jax.Array:
    """Softmax attention weights of pre-scaled queries.

    q: [B, L_q, H, D], k: [B, L_k, H, D] -> [B, H, L_q, L_k], at least float32.
    """
    logits = at_least_f32(jnp.einsum("bqhd,bkhd->bhqk", q, k))  # [B, H, L_q, L_k]
    if valid is not None:
        logits = jnp.where(valid, logits, jnp.finfo(logits.dtype).min)
    return jax.nn.softmax(logits, axis=-1)


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """[B, L, E] -> [B, L, H, E / H]."""
    b, n, e = x.shape
    if e % num_heads:
        raise ValueError(f"feature size {e} is not divisible by {num_heads} heads")
    return x.reshape(b, n, num_heads, e // num_heads)


def _attend(q, k, v, valid, num_heads, dropout: nn.Dropout, train: bool) -> jax.Array:
    """Scaled dot-product attention over heads; returns [B, L_q, E_v] before the out-projection."""
    q = split_heads(q, num_heads)  # [B, L_q, H, Dq]
    k = split_heads(k, num_heads)  # [B, L_k, H, Dq]
    v = split_heads(v, num_heads)  # [B, L_k, H, Dv]
    q = q * (q.shape[-1] ** -0.5)  # PyTorch scales q before the dot product
    w = attention_weights(q, k, valid)  # [B, H, L_q, L_k]
    w = dropout(w, deterministic=not train).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", w, v)  # [B, L_q, H, Dv]
    return out.reshape(out.shape[0], out.shape[1], -1)


class TorchMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention(d, num_heads, dropout)`` on batch-first inputs [B, L, d]."""

    num_heads: int
    dropout_rate: float = 0.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, query, key, value, valid=None, *, train: bool) -> jax.Array:
        d = query.shape[-1]

        def proj(name, kernel_init):
            return torch_dense(
                d,
                d,
                name=name,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=kernel_init,
                zero_bias=True,
            )

        q = proj("q_proj", packed_qkv_xavier)(query)
        k = proj("k_proj", packed_qkv_xavier)(key)
        v = proj("v_proj", packed_qkv_xavier)(value)
        out = _attend(q, k, v, valid, self.num_heads, nn.Dropout(self.dropout_rate), train)
        return proj("out_proj", xavier_uniform)(out)


class ProjectionFreeAttention(nn.Module):
    """Decoder attention: q/k/v arrive projected; only ``out_proj`` (E_v -> E_v) is owned.

    q, k: [B, L, E_qk], v: [B, L_k, E_v]; head sizes E_qk / H (scale) and E_v / H.
    """

    num_heads: int
    dropout_rate: float = 0.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, query, key, value, valid=None, *, train: bool) -> jax.Array:
        out = _attend(
            query, key, value, valid, self.num_heads, nn.Dropout(self.dropout_rate), train
        )
        e_v = value.shape[-1]
        return torch_dense(
            e_v,
            e_v,
            name="out_proj",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=xavier_uniform,
            zero_bias=True,
        )(out)
