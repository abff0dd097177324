"""Sine position embeddings of the video clips and of the decoder's (center, width) anchors.

Both reproduce the official float32 islands: under ``jax_enable_x64`` the clip embedding is
still computed (cumsum, normalisation, frequencies, sin/cos) in float32, and the anchor
embedding's frequencies ``dim_t`` are float32 values promoted to the compute dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _frequencies(num_feats: int, temperature: float) -> jax.Array:
    """float32 ``temperature^(2 floor(i/2) / num_feats)`` for i < num_feats."""
    i = jnp.arange(num_feats, dtype=jnp.float32)
    return jnp.float32(temperature) ** (2 * (i // 2) / jnp.float32(num_feats))


def _interleave_sin_cos(x: jax.Array) -> jax.Array:
    """[..., F] -> [..., F]: (sin(x_0), cos(x_1), sin(x_2), cos(x_3), ...)."""
    out = jnp.stack([jnp.sin(x[..., 0::2]), jnp.cos(x[..., 1::2])], axis=-1)  # [..., F/2, 2]
    return out.reshape(x.shape)


def sine_position_embedding(
    mask: jax.Array, num_pos_feats: int = 256, temperature: float = 10000.0
) -> jax.Array:
    """Normalised 1-D sine embedding of the valid clips (``PositionEmbeddingSine(normalize=True)``).

    mask: [B, L] float, 1 = valid. Returns [B, L, num_pos_feats] **float32**: the position of
    clip t is ``cumsum(mask)_t / (n_valid + 1e-6) * 2 pi`` (padded clips repeat the last valid
    position), then ``[sin(x / dim_t_0), cos(x / dim_t_1), ...]`` with
    ``dim_t_i = temperature^(2 floor(i/2) / num_pos_feats)``.
    """
    f32 = jnp.float32
    x = jnp.cumsum(mask.astype(f32), axis=1)  # [B, L]
    # A true division, as the official code does: XLA would otherwise turn the division by a
    # broadcast row into a multiplication by its reciprocal (1 ulp off).
    total = jax.lax.optimization_barrier(jnp.broadcast_to(x[:, -1:] + f32(1e-6), x.shape))
    x = x / total * f32(2 * math.pi)
    dim_t = _frequencies(num_pos_feats, temperature)  # [F]
    return _interleave_sin_cos(x[:, :, None] / dim_t)  # [B, L, F]


def anchor_sine_embedding(anchors: jax.Array, num_feats: int = 128) -> jax.Array:
    """Sine embedding of (center, width) anchors (DAB-DETR ``gen_sineembed_for_position``).

    anchors: [..., 2] in [0, 1]. Returns [..., 2 * num_feats]: ``num_feats`` dims for the
    center followed by ``num_feats`` for the width. The official code hard-codes 128 per
    coordinate (so d_model must be 256); here it is ``d_model // 2``, identical at 256.
    """
    dim_t = (_frequencies(num_feats, 10000.0)).astype(anchors.dtype)  # f32, promoted
    scale = 2 * math.pi
    center = _interleave_sin_cos((anchors[..., 0] * scale)[..., None] / dim_t)  # [..., F]
    width = _interleave_sin_cos((anchors[..., 1] * scale)[..., None] / dim_t)  # [..., F]
    return jnp.concatenate([center, width], axis=-1)
