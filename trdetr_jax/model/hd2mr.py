"""Highlight-to-moment re-weighting (HD2MR, paper eq. 12-13).

``s = sum(saliency_proj(memory), -1) / sqrt(d)``; ``w = softmax(s)`` over the clips;
the memory ``memory + t2v_video * w`` then goes through the *same* encoder again.
Official mode takes the softmax over all padded clips (most of the mass of a short video
sits on padding); ``compat='fixed'`` restricts it to the valid clips.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from trdetr_jax.model.layers import at_least_f32, masked_softmax


def saliency_from_projection(projected: jax.Array) -> jax.Array:
    """[B, L, d] output of ``saliency_proj`` -> [B, L] scores ``sum(., -1) / sqrt(d)``."""
    return jnp.sum(projected, axis=-1) / math.sqrt(projected.shape[-1])


def hd2mr_weights(scores: jax.Array, video_mask: jax.Array, compat: str) -> jax.Array:
    """Softmax of the HD2MR saliency over the clips: [B, L] -> [B, L]."""
    scores = at_least_f32(scores)
    if compat == "official":
        return jax.nn.softmax(scores, axis=-1)
    return masked_softmax(scores, video_mask > 0)
