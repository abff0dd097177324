"""Prediction heads: foreground logits and spans refined from the decoder's anchors."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def inverse_sigmoid(x: jax.Array, eps: float = 1e-3) -> jax.Array:
    """log(x / (1 - x)) after clamping x to [0, 1] and both terms to >= eps (official eps 1e-3)."""
    x = jnp.clip(x, 0.0, 1.0)
    return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1.0 - x, eps))


def refine_spans(span_offsets: jax.Array, references: jax.Array) -> jax.Array:
    """sigmoid(span_embed(hs) + inverse_sigmoid(reference)): [..., 2] (center, width)."""
    return jax.nn.sigmoid(span_offsets + inverse_sigmoid(references))
