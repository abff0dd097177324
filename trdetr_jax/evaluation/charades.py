"""Charades-STA: the usual R1@{0.3, 0.5, 0.7} and mIoU, next to the QVHighlights MR block.

The official TR-DETR code has no Charades evaluation; the only MR metric code it ships is the
QVHighlights one, which the Charades annotations fit (shared/eval/README.md, section 2.3).
So Charades gets that MR block unchanged, and the brief adds the two numbers Charades papers
report that the block lacks. Both use exactly R1's definition (first listed window, hull IoU
with the best-matching ground-truth window, an empty list scores 0), over every query:

* ``MR-full-R1@0.3``: share of queries with IoU >= 0.3 (R1@0.5 / R1@0.7 are the official
  ``MR-full-R1@0.5`` / ``MR-full-R1@0.7``);
* ``MR-full-mIoU``: mean of that IoU.

Both are percentages rounded like the official values.
"""

from __future__ import annotations

import numpy as np

from trdetr_jax.evaluation.mr import first_window_ious
from trdetr_jax.evaluation.rounding import percent_2dp

R1_LOW_THRESHOLD = 0.3


def charades_brief_extras(pred: dict, gt: dict) -> dict:
    """``{"MR-full-R1@0.3": .., "MR-full-mIoU": ..}`` over the predicted queries of `gt`."""
    ious = first_window_ious(pred, gt)
    return {
        "MR-full-R1@0.3": percent_2dp(np.mean(ious >= R1_LOW_THRESHOLD)),
        "MR-full-mIoU": percent_2dp(np.mean(ious)),
    }
