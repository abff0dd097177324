"""TVSum highlight detection: top-5 mAP per domain (the UMT protocol TR-DETR reports).

As the official `compute_hl_results` computes it (shared/eval/README.md, section 3.8), per
video and per annotator i = 0..19:

* the prediction is cut to the number of labelled clips and ranked by descending **float32**
  score (ties: list order here; the official torch.argsort leaves them unspecified);
* a clip is positive when its float32 label is strictly above the column's **lower** median;
* only the top 5 ranks count: positives are counted within them, and the AP is a trapezoid
  over the 5 ranks that starts from precision 1 (0 when the top 5 hold no positive);
* a domain's value is ``round(mean of all its APs, 5)`` with numpy rounding, a fraction
  (the official per-run ``mAP``, one domain per run); the dataset value is the plain mean of
  the domain values as shown, not rounded again (two domains at 0.4 and 0.413162 give
  0.406581, not 0.40658).

The official code has a batching bug: only the last video of each evaluation batch is scored
(harmless in the official runs, which have one validation video per domain). Pass
``videos_per_batch`` to reproduce it for a given batch size; by default every video counts
(the official result with batch size 1).
"""

from __future__ import annotations

import numpy as np

from trdetr_jax.evaluation.rounding import numpy_round_5

TOP_K = 5


def lower_median(column: np.ndarray):
    """torch.median: the element at index (n - 1) // 2 of the sorted values."""
    return np.sort(column)[(len(column) - 1) // 2]


def top5_average_precision(pred: np.ndarray, label: np.ndarray) -> list:
    """The 20 per-annotator top-5 APs of one video.

    pred: [n_pred] scores (cast to float32); label: [n, 20] annotator scores (float32).
    Returns Python numbers (0 where the top 5 hold no positive), in annotator order.
    """
    with np.errstate(over="ignore"):  # scores beyond float32 range become +-inf
        scores = np.asarray(pred, dtype=np.float32)[: len(label)]
    order = np.argsort(-scores, kind="stable")  # [n'] descending score
    aps = []
    for i in range(label.shape[1]):
        column = label[:, i]
        positive = np.where(column > lower_median(column), 1.0, 0.0)
        top = positive[order].tolist()[:TOP_K]
        num_gt = sum(top)
        if num_gt == 0:
            aps.append(0)
            continue
        hits = ap = recall = 0
        precision = 1
        for rank, is_pos in enumerate(top, start=1):
            hits += is_pos
            new_recall = hits / num_gt
            new_precision = hits / rank
            ap += (new_recall - recall) * (precision + new_precision) / 2
            recall, precision = new_recall, new_precision
        aps.append(ap)
    return aps


def tvsum_metrics(pred: dict, labels: dict, domains: dict, *, videos_per_batch=None) -> dict:
    """``{"brief": {"mAP": m}, "mAP": m, "per_domain_mAP": {domain: mAP}}`` (fractions).

    pred: {qid: scores}; labels: {qid: [n, 20]} and domains: {qid: domain}, in ground-truth
    order (the official evaluation order). Domains without a predicted video are left out.
    """
    if videos_per_batch is not None and videos_per_batch < 1:
        raise ValueError(f"videos_per_batch must be a positive integer, got {videos_per_batch}")
    per_domain = {}
    for domain in sorted(set(domains.values())):
        videos = [q for q in labels if domains[q] == domain and q in pred]
        if not videos:
            continue
        if videos_per_batch is not None:
            # Official batching bug: only the last video of each batch is kept.
            videos = [
                videos[min(s + videos_per_batch, len(videos)) - 1]
                for s in range(0, len(videos), videos_per_batch)
            ]
        collected = [top5_average_precision(pred[q], labels[q]) for q in videos]  # [V, 20]
        per_domain[domain] = numpy_round_5(np.mean(collected))
    mean = float(np.mean(list(per_domain.values()))) if per_domain else None
    return {"brief": {"mAP": mean}, "mAP": mean, "per_domain_mAP": per_domain}
