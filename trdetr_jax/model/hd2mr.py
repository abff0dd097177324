"""Highlight-to-moment re-weighting (HD2MR, paper eq. 12-13).

``s = sum(saliency_proj(memory), -1) / sqrt(d)``; ``w = softmax(s)`` over the clips;
the memory ``memory + t2v_video * w`` then goes through the *same* encoder again.
Official mode takes the softmax over all padded clips, i.e. the first ``official_vid_len``
ones (most of the mass of a short video sits on padding); ``compat='fixed'`` restricts it
to the valid clips.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from trdetr_jax.model.layers import masked_softmax
from trdetr_jax.precision import at_least_f32


def saliency_from_projection(projected: jax.Array) -> jax.Array:
    """[B, L, d] output of ``saliency_proj`` -> [B, L] scores ``sum(., -1) / sqrt(d)``."""
    return jnp.sum(projected, axis=-1) / math.sqrt(projected.shape[-1])


def hd2mr_weights(scores: jax.Array, clips: jax.Array) -> jax.Array:
    """Softmax of the HD2MR saliency over the clips: [B, L] -> [B, L].

    ``clips`` [B, L] (nonzero = in the softmax): official mode passes the clips within the
    official padded length, fixed mode the valid clips. Other clips get weight 0.
    """
    return masked_softmax(at_least_f32(scores), clips > 0)
