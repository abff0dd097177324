"""Temporal span maths: format conversion, IoU / generalised IoU, inverse sigmoid, the
model's span refinement. The model, the matcher and the losses all use these.

Spans are normalised to the video length. Two formats are used:
  * ``cxw``: ``(center, width)``, what the model predicts and the targets store;
  * ``xx``: ``(start, end)``, what the IoU functions take.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def clamp(x: jnp.ndarray, lo=None, hi=None) -> jnp.ndarray:
    """``torch.clamp`` with its gradient: 1 inside ``[lo, hi]`` *including* the bounds.

    ``jnp.clip``/``jnp.maximum`` split the gradient 0.5/0.5 at a tie, which a port of
    trained weights can hit (touching spans, saturated references). NaN stays NaN, as in
    torch (a comparison with NaN is false, so only values really beyond a bound are
    replaced), so a NaN reaching a loss keeps the loss non-finite and visible.
    """
    if lo is not None:
        x = jnp.where(x < lo, jnp.asarray(lo, x.dtype), x)
    if hi is not None:
        x = jnp.where(x > hi, jnp.asarray(hi, x.dtype), x)
    return x


def span_cxw_to_xx(cxw_spans: jnp.ndarray) -> jnp.ndarray:
    """``[..., 2]`` (center, width) -> ``[..., 2]`` (start, end)."""
    center, width = cxw_spans[..., 0], cxw_spans[..., 1]
    return jnp.stack([center - 0.5 * width, center + 0.5 * width], axis=-1)


def span_xx_to_cxw(xx_spans: jnp.ndarray) -> jnp.ndarray:
    """``[..., 2]`` (start, end) -> ``[..., 2]`` (center, width)."""
    start, end = xx_spans[..., 0], xx_spans[..., 1]
    return jnp.stack([(start + end) * 0.5, end - start], axis=-1)


def temporal_iou(spans1: jnp.ndarray, spans2: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Pairwise IoU of ``xx`` spans.

    Args:
      spans1: ``[..., N, 2]`` (start, end).
      spans2: ``[..., M, 2]`` (start, end).

    Returns:
      ``(iou, union)``, each ``[..., N, M]``.
    """
    areas1 = spans1[..., :, 1] - spans1[..., :, 0]  # [..., N]
    areas2 = spans2[..., :, 1] - spans2[..., :, 0]  # [..., M]
    left = jnp.maximum(spans1[..., :, None, 0], spans2[..., None, :, 0])  # [..., N, M]
    right = jnp.minimum(spans1[..., :, None, 1], spans2[..., None, :, 1])  # [..., N, M]
    inter = clamp(right - left, 0.0)  # [..., N, M]
    union = areas1[..., :, None] + areas2[..., None, :] - inter  # [..., N, M]
    return inter / union, union


def generalized_temporal_iou(
    spans1: jnp.ndarray, spans2: jnp.ndarray, *, dtype=jnp.float32
) -> jnp.ndarray:
    """Pairwise generalised IoU (giou.stanford.edu) of ``xx`` spans, ``[..., N, M]``.

    The official implementation casts both inputs to float32 first (``.float()``), so even a
    float64 run computes GIoU in float32; ``dtype`` reproduces that (pass ``None`` to keep
    the input dtype). The cast is applied to the ``xx`` spans, i.e. after any ``cxw -> xx``
    conversion, as there.

    Unlike the official code this does not check ``end >= start`` (a traced function
    cannot raise); such spans give meaningless but finite values.
    """
    if dtype is not None:
        spans1 = spans1.astype(dtype)
        spans2 = spans2.astype(dtype)
    iou, union = temporal_iou(spans1, spans2)
    left = jnp.minimum(spans1[..., :, None, 0], spans2[..., None, :, 0])  # [..., N, M]
    right = jnp.maximum(spans1[..., :, None, 1], spans2[..., None, :, 1])  # [..., N, M]
    enclosing = clamp(right - left, 0.0)  # [..., N, M]
    return iou - (enclosing - union) / enclosing


def inverse_sigmoid(x: jnp.ndarray, eps: float = 1e-3) -> jnp.ndarray:
    """``log(x / (1 - x))`` with ``x`` clamped to [0, 1] and both terms clamped to >= eps.

    Same clamping as the official model (eps 1e-3, not DAB-DETR's 1e-5), which keeps the
    logit of a reference point within about +-6.9.
    """
    x = clamp(x, 0.0, 1.0)
    x1 = clamp(x, eps)
    x2 = clamp(1.0 - x, eps)
    return jnp.log(x1 / x2)


def refine_spans(span_offsets: jnp.ndarray, references: jnp.ndarray) -> jnp.ndarray:
    """The model's spans: ``sigmoid(span_embed(hs) + inverse_sigmoid(reference))``, ``[..., 2]``
    (center, width)."""
    return jax.nn.sigmoid(span_offsets + inverse_sigmoid(references))
