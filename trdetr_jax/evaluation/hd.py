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

from trdetr_jax.evaluation.rounding import percent_2dp

CLIP_SECONDS = 2  # QVHighlights clips; the official evaluation hard-codes it
LEVELS = (("Fair", 2), ("Good", 3), ("VeryGood", 4))


def gt_score_matrix(duration, relevant_clip_ids, saliency_scores) -> np.ndarray:
    """[n, 3] annotator scores (0-4) for the n = int(duration / 2) clips of a video."""
    n = int(duration / CLIP_SECONDS)
    scores = np.zeros((n, 3))
    if len(relevant_clip_ids):
        scores[np.asarray(relevant_clip_ids)] = np.asarray(saliency_scores)
    return scores


class _RankedScores:
    """Predicted scores of one query sorted once, shared by every annotator and level.

    Mirrors the precision-recall curve the official code builds: descending score (ties are
    one threshold), cumulative positives read at the last index of each tie group.
    """

    def __init__(self, scores: np.ndarray):
        order = np.argsort(scores, kind="mergesort")[::-1]  # [n] descending
        self.order = order
        ranked = scores[order]
        self.group_end = np.r_[np.where(np.diff(ranked))[0], len(ranked) - 1]  # [K]

    def average_precision(self, y_true: np.ndarray) -> float:
        """AP of binary labels y_true [n] (float 0/1) against the ranked scores."""
        if len(y_true) == 0:
            return 0.0  # no clip at all: nothing to find (the official code raises)
        first = y_true[0]
        if (y_true == first).all():
            return 0.0 if first == 0 else 1.0
        tps = np.cumsum(y_true[self.order])[self.group_end]  # [K] at descending thresholds
        fps = 1 + self.group_end - tps
        precision = tps / (tps + fps)
        recall = (tps / tps[-1]).astype(np.float32)
        # Curve from the lowest threshold up, closed by the (recall 0, precision 1) point.
        precision = np.hstack((precision[::-1], 1.0))
        recall = np.hstack((recall[::-1], 0.0))
        precision = np.maximum.accumulate(precision)  # interpolation: best at recall >= r
        return np.mean(precision[np.where(np.diff(recall))])


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
    qids = list(pred)
    preds = [np.asarray(pred[q], dtype=np.float64) for q in qids]
    ranked = [_RankedScores(_fit_length(p, len(gt[q]))) for q, p in zip(qids, preds)]
    top = [int(np.argmax(p)) if len(p) else -1 for p in preds]  # -1: empty list, a miss
    out = {}
    for name, level in LEVELS:
        hits = np.zeros((len(qids), 3))  # [Q, 3]
        aps = np.zeros((len(qids), 3))  # [Q, 3]
        for i, q in enumerate(qids):
            binary = (gt[q] >= level).astype(float)  # [n, 3]
            if 0 <= top[i] < len(binary):
                hits[i] = binary[top[i]]
            for a in range(3):
                aps[i, a] = ranked[i].average_precision(binary[:, a])
        out[f"HL-min-{name}"] = {
            "HL-mAP": percent_2dp(np.mean(aps)),
            "HL-Hit1": percent_2dp(np.mean(np.max(hits, 1))),
        }
    return out
