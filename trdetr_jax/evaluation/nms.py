"""Temporal non-maximum suppression of predicted windows, as the official inference offers it
(``--nms_thd``; off by default)."""

from __future__ import annotations


def _hull_iou(a, b) -> float:
    """Intersection over the convex hull of two [st, ed] windows; 0 for an empty hull."""
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    hull = max(a[1], b[1]) - min(a[0], b[0])
    if hull == 0:
        return 0
    return 1.0 * inter / hull


def temporal_nms(windows, threshold: float, max_after: int = 100) -> list:
    """Greedy NMS over ``[[st, ed, score], ...]``.

    Windows are ranked by descending score (stable); the best is kept and every remaining
    window whose hull IoU with it exceeds `threshold` is dropped, until `max_after` windows
    are kept. As in the official code, the very last remaining window is kept without being
    compared, and a single-window list is returned as is (not re-sorted).
    """
    if len(windows) == 1:
        return windows
    remaining = sorted(windows, key=lambda w: w[2], reverse=True)
    remaining = [list(w[:3]) for w in remaining]
    kept = []
    while len(remaining) > 1 and len(kept) < max_after:
        best = remaining[0]
        remaining = [remaining[0]] + [w for w in remaining[1:] if _hull_iou(best, w) <= threshold]
        kept.append(remaining.pop(0))
    if len(kept) < max_after and remaining:
        kept.append(remaining.pop(0))
    return kept
