"""The two temporal IoU formulas of the official evaluation, in binary64.

Windows are ``[start, end]`` in seconds and are used as given: never clipped, validated or
reordered, because the official numbers depend on exactly that (a reversed window whose
length equals a ground-truth length has IoU NaN, which the mAP matcher counts as a hit).
The operation order below is part of the definition: at threshold boundaries a different
but mathematically equal formula gives a different double.
"""

from __future__ import annotations

import numpy as np


def cross_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of every prediction with every ground-truth window; used for mAP matching and to
    pick R1's ground-truth window.

    pred: [N, 2], gt: [M, 2] float64 -> [N, M]. ``union = len_p + len_g - inter`` with IEEE
    semantics and no guard: 0/0 gives NaN and 0/negative gives -0.0.
    """
    with np.errstate(all="ignore"):  # IEEE results are the definition, even NaN
        len_p = pred[:, 1] - pred[:, 0]  # [N]
        len_g = gt[:, 1] - gt[:, 0]  # [M]
        left = np.maximum(pred[:, None, 0], gt[None, :, 0])  # [N, M]
        right = np.minimum(pred[:, None, 1], gt[None, :, 1])  # [N, M]
        inter = np.clip(right - left, 0, None)  # [N, M]
        union = len_p[:, None] + len_g[None, :] - inter  # [N, M]
        return inter / union


def hull_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Pairwise IoU with the convex hull as 'union'; the value R1 thresholds.

    pred, gt: [N, 2] float64 -> [N]. ``union = max(ends) - min(starts)``; 0 where the union
    is 0. Equal to `cross_iou` for overlapping valid windows in exact arithmetic, not
    always as a double (e.g. [6.1, 16.1] vs [6.2, 13.3]: 0.7100000000000001 vs 0.71).
    """
    with np.errstate(all="ignore"):
        inter = np.maximum(
            0, np.minimum(pred[:, 1], gt[:, 1]) - np.maximum(pred[:, 0], gt[:, 0])
        )  # [N]
        union = np.maximum(pred[:, 1], gt[:, 1]) - np.minimum(pred[:, 0], gt[:, 0])  # [N]
        return np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)
