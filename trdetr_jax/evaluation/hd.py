"""Highlight detection metrics on QVHighlights: HL-mAP and HL-Hit1 at three levels.

As the official evaluation computes them (shared/eval/README.md, section 3.6):

* The ground truth of a query is an [n, 3] matrix of annotator scores, n = floor(duration / 2)
  clips of 2 s; clips not listed score 0. Level Fair / Good / VeryGood: score >= 2 / 3 / 4.
* Hit1: argmax of the **whole** submitted list (first maximum); a hit if any annotator marks
  that clip positive, 0 when the index is past the last clip.
* mAP: per annotator, the prediction truncated or zero-padded to n clips; the AP is the
  interpolated AP of a precision-recall curve with **one point per distinct score**, so a tie
  group counts once (not sklearn's ``average_precision_score``); an all-negative column gives
  0 and still counts, an all-positive column gives 1. The mean runs over queries x annotators.
"""

from __future__ import annotations

import numpy as np

from trdetr_jax.evaluation.rounding import numpy_sum, percent_2dp

CLIP_SECONDS = 2  # QVHighlights clips; the official evaluation hard-codes it
LEVELS = (("Fair", 2), ("Good", 3), ("VeryGood", 4))


def gt_score_matrix(duration, relevant_clip_ids, saliency_scores) -> np.ndarray:
    """[n, 3] annotator scores (0-4) for the n = int(duration / 2) clips of a video."""
    n = int(duration / CLIP_SECONDS)
    scores = np.zeros((n, 3))
    if len(relevant_clip_ids):
        scores[np.asarray(relevant_clip_ids)] = np.asarray(saliency_scores)
    return scores


def _mean_like_numpy(values: np.ndarray) -> float:
    """``np.mean`` of a 1-D float64 array, bit for bit (sum as numpy does, then / n)."""
    return numpy_sum(values) / len(values)


def query_average_precisions(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """HD AP of one query for several binary label columns at once.

    pred: [n] scores (already truncated / zero-padded to the n clips); labels: [n, C] 0/1.
    Returns [C]. Per column: 0 if all labels are 0, 1 if all are 1; otherwise the mean, over
    the distinct recall levels, of the interpolated precision of the precision-recall
    curve that has one point per distinct score.
    """
    n, n_col = labels.shape
    out = np.zeros(n_col)
    if n == 0:
        return out  # no clip at all: nothing to find (the official code raises)
    order = np.argsort(pred, kind="mergesort")[::-1]  # [n] descending score
    ranked = pred[order]
    group_end = np.r_[np.where(np.diff(ranked))[0], n - 1]  # [K] last index of each tie group
    tps = np.cumsum(labels[order], axis=0)[group_end]  # [K, C] positives at each threshold
    fps = (1 + group_end)[:, None] - tps
    precision = tps / (tps + fps)  # [K, C], highest threshold first
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = (tps / tps[-1]).astype(np.float32)  # [K, C]
    # Curve from the lowest threshold up, closed by the (recall 0, precision 1) point.
    precision = np.vstack([precision[::-1], np.ones((1, n_col))])  # [K + 1, C]
    recall = np.vstack([recall[::-1], np.zeros((1, n_col), np.float32)])
    precision = np.maximum.accumulate(precision, axis=0)  # best precision at recall >= r
    steps = np.diff(recall, axis=0) != 0  # [K, C]
    first, last = labels[0], labels.min(0) == labels.max(0)
    for c in range(n_col):
        if last[c]:
            out[c] = 0.0 if first[c] == 0 else 1.0
        else:
            out[c] = _mean_like_numpy(precision[:-1, c][steps[:, c]])
    return out


def _fit_length(pred: np.ndarray, n: int) -> np.ndarray:
    """Truncate, or zero-pad at the end, to n clips (for the mAP only)."""
    if len(pred) >= n:
        return pred[:n]
    out = np.zeros(n)
    out[: len(pred)] = pred
    return out


def highlight_detection(pred: dict, gt: dict) -> dict:
    """Official HD block ``{"HL-min-Fair": {"HL-mAP": .., "HL-Hit1": ..}, ...}``.

    pred: ``{qid: list of scores}`` in submission order; gt: ``{qid: [n, 3] score matrix}``.
    Every predicted qid must be in gt.
    """
    n_q, n_lv = len(pred), len(LEVELS)
    aps = np.zeros((n_lv, n_q, 3))  # [levels, Q, annotators]
    hits = np.zeros((n_lv, n_q, 3))
    for i, (qid, scores) in enumerate(pred.items()):
        scores = np.asarray(scores, dtype=np.float64)
        matrix = gt[qid]  # [n, 3]
        binary = np.concatenate([matrix >= lv for _, lv in LEVELS], axis=1).astype(float)
        aps[:, i] = query_average_precisions(_fit_length(scores, len(matrix)), binary).reshape(
            n_lv, 3
        )
        if len(scores):  # an empty list is a miss (the official code raises)
            top = int(np.argmax(scores))  # first maximum, over the whole list
            if top < len(matrix):
                hits[:, i] = binary[top].reshape(n_lv, 3)
    out = {}
    for k, (name, _) in enumerate(LEVELS):
        out[f"HL-min-{name}"] = {
            "HL-mAP": percent_2dp(np.mean(aps[k])),
            "HL-Hit1": percent_2dp(np.mean(np.max(hits[k], 1))),
        }
    return out
