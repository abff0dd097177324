"""Moment retrieval metrics: mAP over IoU 0.5:0.05:0.95 and R1, per length bucket.

Every rule below is the official QVHighlights evaluation's, quirks included (see
shared/eval/README.md, sections 3.3-3.5):

* mAP keeps the first 10 windows **in list order**, then sorts them by score with a stable
  sort; a query whose list is empty is left out of the mean.
* Each prediction visits the ground-truth windows in descending IoU order (NaN first, ties:
  the later index first) and takes the first unlocked one with IoU >= t.
* AP is the VOC-2011 all-point interpolated AP; ``average`` is the mean of the ten
  unrounded per-threshold values.
* R1 scores the **first listed** window (scores ignored) against the ground-truth window of
  highest cross IoU (first maximum), with the hull IoU. An empty list is a miss (the
  official code crashes there).
* Buckets filter ground-truth windows by length ``min < L <= max``; ``full`` keeps every
  query and window unfiltered; predictions are never filtered.

Inputs are dicts keyed by qid: predictions ``{qid: [[st, ed, score], ...]}`` in submission
order (that order fixes the summation order of the means), ground truth
``{qid: float64 array [G, 2]}``.
"""

from __future__ import annotations

import numpy as np

from trdetr_jax.evaluation.iou import cross_iou, hull_iou
from trdetr_jax.evaluation.rounding import numpy_sum, percent_2dp

# The doubles nearest 0.50, 0.55, ..., 0.95 (the official code formats linspace with .2f).
THRESHOLDS = tuple(float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10))
# (name, (min_len, max_len)) in the order the official code evaluates them.
BUCKETS = (("short", (0, 10)), ("middle", (10, 30)), ("long", (30, 150)), ("full", (0, 150)))
MAX_PRED_WINDOWS = 10


def query_average_precision(
    gt_windows: np.ndarray, pred_windows, thresholds=THRESHOLDS
) -> np.ndarray:
    """AP of one query at each threshold.

    gt_windows: [G, 2] float64, G >= 1. pred_windows: sequence of (st, ed, score), already
    cut to the windows that count. Returns [T] float64; all zeros when there is no window.
    """
    n_pred, n_gt, n_thr = len(pred_windows), len(gt_windows), len(thresholds)
    ap = np.zeros(n_thr)
    if n_pred == 0:
        return ap
    # Stable sort by descending score: tied scores keep list order.
    ranked = sorted(pred_windows, key=lambda w: -w[2])
    spans = np.array([[w[0], w[1]] for w in ranked], dtype=np.float64)  # [P, 2]
    ious = cross_iou(spans, gt_windows)  # [P, G]
    # Visit order per prediction: stable ascending argsort puts NaN last; reversed, NaN comes
    # first and equal IoUs go later index first, as observed for the official code.
    visit = np.argsort(ious, axis=1, kind="stable")[:, ::-1].tolist()  # [P, G]
    ious = ious.tolist()
    tp = np.zeros((n_thr, n_pred))
    fp = np.zeros((n_thr, n_pred))
    locked = [[False] * n_gt for _ in range(n_thr)]
    for p in range(n_pred):
        row, order = ious[p], visit[p]
        for t, thr in enumerate(thresholds):
            lock_t = locked[t]
            for g in order:
                if row[g] < thr:  # False for NaN: a NaN IoU matches at every threshold
                    fp[t, p] = 1
                    break
                if lock_t[g]:
                    continue
                tp[t, p] = 1
                lock_t[g] = True
                break
            else:
                fp[t, p] = 1
    tp_cum = np.cumsum(tp, axis=1)  # [T, P]
    fp_cum = np.cumsum(fp, axis=1)
    # VOC-2011 all-point interpolated AP, for all thresholds at once: the curve gets a
    # (recall 0, precision 0) point in front and (1, 0) at the end, precision becomes the
    # max over this and every later point, and the steps where recall changes are summed.
    mprec = np.zeros((n_thr, n_pred + 2))  # [T, P + 2]
    mprec[:, 1:-1] = tp_cum / (tp_cum + fp_cum)
    mprec = np.maximum.accumulate(mprec[:, ::-1], axis=1)[:, ::-1]
    mrec = np.zeros((n_thr, n_pred + 2))  # [T, P + 2]
    mrec[:, 1:-1] = tp_cum / float(n_gt)
    mrec[:, -1] = 1.0
    steps = mrec[:, 1:] != mrec[:, :-1]  # [T, P + 1]
    terms = (mrec[:, 1:] - mrec[:, :-1]) * mprec[:, 1:]  # [T, P + 1]
    for t in range(n_thr):
        ap[t] = numpy_sum(terms[t][steps[t]])
    return ap


def bucket(gt: dict, len_range) -> dict:
    """Ground truth of one length bucket: only windows with ``min < L <= max`` (L = ed - st in
    binary64), only queries left with a window. (0, 150) is ``full``: returned unfiltered."""
    lo, hi = len_range
    if (lo, hi) == (0, 150):
        return gt
    out = {}
    for qid, windows in gt.items():
        lengths = windows[:, 1] - windows[:, 0]
        keep = (lengths > lo) & (lengths <= hi)
        if keep.any():
            out[qid] = windows[keep]
    return out


def mean_ap(pred: dict, gt: dict, thresholds=THRESHOLDS):
    """Unrounded mAP per threshold over the predicted queries of `gt` that have a window.

    Returns ([T] float64 or None when no query counts, number of queries in the mean).
    """
    rows = []
    for qid, windows in pred.items():
        if qid in gt and windows:
            rows.append(query_average_precision(gt[qid], windows[:MAX_PRED_WINDOWS], thresholds))
    if not rows:
        return None, 0
    return np.array(rows).mean(0), len(rows)


def first_window_ious(pred: dict, gt: dict) -> np.ndarray:
    """R1's IoU per predicted query of `gt` (submission order): hull IoU of the first listed
    window with the ground-truth window of maximal cross IoU. 0.0 for an empty list."""
    qids = [q for q in pred if q in gt]
    firsts, targets, has = [], [], []
    for qid in qids:
        windows = pred[qid]
        if not windows:
            has.append(False)
            continue
        p = np.array([windows[0][:2]], dtype=np.float64)  # [1, 2]
        g = gt[qid]
        best = int(np.argmax(cross_iou(p, g)[0]))  # first maximum; NaN counts as maximum
        firsts.append(p[0])
        targets.append(g[best])
        has.append(True)
    ious = np.zeros(len(qids))
    if firsts:
        ious[np.array(has)] = hull_iou(np.array(firsts), np.array(targets))
    return ious


def recall_at_1(ious: np.ndarray, thresholds=THRESHOLDS) -> dict:
    """``{str(t): percent}`` of queries with IoU >= t, rounded as the official code does."""
    return {str(t): percent_2dp(np.mean(ious >= t)) for t in thresholds}


def format_map(map_per_thr: np.ndarray, thresholds=THRESHOLDS) -> dict:
    """``{"0.5": .., ..., "0.95": .., "average": ..}``; the average uses unrounded values."""
    out = {str(t): percent_2dp(v) for t, v in zip(thresholds, map_per_thr)}
    out["average"] = percent_2dp(np.mean(map_per_thr))
    return out


def moment_retrieval(pred: dict, gt: dict) -> dict:
    """Official per-bucket block ``{name: {"MR-mAP": {...}, "MR-R1": {...}}}``.

    A bucket without any ground-truth window is None (the official code crashes on it); a
    bucket where no query has a predicted window has ``"MR-mAP": None``.
    """
    out = {}
    for name, len_range in BUCKETS:
        gt_b = bucket(gt, len_range)
        if not gt_b:
            out[name] = None
            continue
        map_per_thr, _ = mean_ap(pred, gt_b)
        out[name] = {
            "MR-mAP": None if map_per_thr is None else format_map(map_per_thr),
            "MR-R1": recall_at_1(first_window_ious(pred, gt_b)),
        }
    return out
