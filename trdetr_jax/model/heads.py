"""Prediction heads: foreground logits and spans refined from the decoder's anchors."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def torch_clamp(x: jax.Array, lo: float | None = None, hi: float | None = None) -> jax.Array:
    """``torch.clamp``: gradient 1 where lo <= x <= hi (bounds included), else 0.

    (``jnp.clip`` splits the gradient at a bound, e.g. for a reference that saturated to 1.0.)
    NaN stays NaN, as in torch: only values really beyond a bound are replaced.
    """
    if lo is not None:
        x = jnp.where(x < lo, jnp.asarray(lo, x.dtype), x)
    if hi is not None:
        x = jnp.where(x > hi, jnp.asarray(hi, x.dtype), x)
    return x


def inverse_sigmoid(x: jax.Array, eps: float = 1e-3) -> jax.Array:
    """log(x / (1 - x)) after clamping x to [0, 1] and both terms to >= eps (official eps 1e-3)."""
    x = torch_clamp(x, 0.0, 1.0)
    return jnp.log(torch_clamp(x, eps) / torch_clamp(1.0 - x, eps))


def refine_spans(span_offsets: jax.Array, references: jax.Array) -> jax.Array:
    """sigmoid(span_embed(hs) + inverse_sigmoid(reference)): [..., 2] (center, width)."""
    return jax.nn.sigmoid(span_offsets + inverse_sigmoid(references))
