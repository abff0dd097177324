"""Metric functions on small cases: the official micro checks and hand-computed examples."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from trdetr_jax import runlog
from trdetr_jax.evaluation import evaluate_submission
from trdetr_jax.evaluation.hd import highlight_detection, query_average_precisions
from trdetr_jax.evaluation.iou import cross_iou, hull_iou
from trdetr_jax.evaluation.mr import (
    THRESHOLDS,
    first_window_ious,
    format_map,
    mean_ap,
    query_average_precision,
    recall_at_1,
)
from trdetr_jax.evaluation.nms import temporal_nms
from trdetr_jax.evaluation.rounding import numpy_round_5, numpy_sum, percent_2dp
from trdetr_jax.evaluation.tvsum import lower_median, top5_average_precision, tvsum_metrics


def _gt(windows):
    return np.array(windows, dtype=np.float64)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# --------------------------------------------------------------- official micro checks


def _micro(eval_dir):
    return json.loads((eval_dir / "micro_checks.json").read_text())


def test_micro_checks(eval_dir):
    """Every case of shared/eval/micro_checks.json, against the function it documents."""
    checked = 0
    for case in _micro(eval_dir):
        fn = case["function"]
        if fn.startswith("utils.compute_average_precision_detection"):
            ap = query_average_precision(
                _gt(case["gt_windows"]), case["pred_windows_[st,ed,score]"]
            )
            assert ap.tolist() == case["ap_per_threshold"], case["note"]
        elif fn == "eval.compute_mr_ap":
            pred = {d["qid"]: d["pred_relevant_windows"] for d in case["submission"]}
            gt = {d["qid"]: _gt(d["relevant_windows"]) for d in case["ground_truth"]}
            map_per_thr, n = mean_ap(pred, gt)
            assert format_map(map_per_thr) == case["output"], case["note"]
            assert n == 2  # qid 3 has no prediction and is not in the mean
        elif fn == "eval.compute_mr_r1":
            pred = {d["qid"]: d["pred_relevant_windows"] for d in case["submission"]}
            gt = {d["qid"]: _gt(d["relevant_windows"]) for d in case["ground_truth"]}
            assert recall_at_1(first_window_ious(pred, gt)) == case["output"], case["note"]
        elif fn.startswith("utils.compute_temporal_iou_batch_cross"):
            a, b = _gt(case["a"]), _gt(case["b"])
            assert cross_iou(a, b)[0, 0] == case["cross"]
            assert hull_iou(a, b)[0] == case["paired"]
        elif fn.startswith("utils.get_ap") or fn == "eval.compute_ap_from_tuple":
            # Through the HD entry point: one query, the label as every annotator's column.
            y = np.array(case["y_true"], dtype=float)
            scores = np.array(case["y_pred"], dtype=float)
            n = len(y)
            fitted = scores[:n] if len(scores) >= n else np.r_[scores, np.zeros(n - len(scores))]
            ap = query_average_precisions(fitted, y[:, None])[0]
            assert ap == case["output"], case["note"]
        elif fn == "eval.compute_hl_hit1":
            # Hit1 through highlight_detection: annotator scores 4 where the binary GT is 1.
            pred = {q: v["pred_saliency_scores"] for q, v in case["qid2pred"].items()}
            gt = {q: np.array(b) * 4 for q, b in case["qid2gt_binary"].items()}
            hd = highlight_detection(pred, gt)
            assert hd["HL-min-Fair"]["HL-Hit1"] == case["output"], case["note"]
        else:
            raise AssertionError(f"unhandled micro check {fn}")
        checked += 1
    assert checked == 22


# --------------------------------------------------------------------- hand-computed MR


def test_ap_two_gt_windows_with_tied_scores():
    # Tied scores keep list order: TP (gt 1), FP, TP (gt 0). Precision 1, 1/2, 2/3 at
    # recall 1/2, 1/2, 1 -> interpolated AP = 1/2 * 1 + 1/2 * 2/3.
    ap = query_average_precision(
        _gt([[0, 10], [20, 30]]), [[20, 30, 0.9], [40, 50, 0.9], [0, 10, 0.9]]
    )
    assert ap.tolist() == [0.5 * 1.0 + 0.5 * (2 / 3)] * 10


def test_ap_sorts_by_score_after_cutting_at_ten():
    # The perfect window is 11th in the list: cut before sorting, so AP is 0 although it
    # has the best score; moved into the first ten it ranks first.
    junk = [[100, 101, 0.1]] * 10
    assert query_average_precision(_gt([[0, 10]]), (junk + [[0, 10, 0.9]])[:10]).max() == 0
    ap = query_average_precision(_gt([[0, 10]]), junk[:9] + [[0, 10, 0.9]])
    assert ap.tolist() == [1.0] * 10


def test_zero_length_windows():
    # A zero-length prediction never matches a real window (IoU 0) ...
    assert query_average_precision(_gt([[10, 20]]), [[15, 15, 0.9]]).max() == 0
    # ... but against a zero-length ground-truth window the IoU is 0/0 = NaN, which the
    # official matcher counts as a hit at every threshold; R1's hull IoU guards 0/0 -> 0.
    assert query_average_precision(_gt([[5, 5]]), [[5, 5, 0.9]]).tolist() == [1.0] * 10
    assert first_window_ious({1: [[5, 5, 0.9]]}, {1: _gt([[5, 5]])}).tolist() == [0.0]


def test_r1_first_listed_window_and_best_gt():
    pred = {1: [[0, 4, 0.1], [21, 30, 0.9]], 2: [[21, 30, 0.1]]}
    gt = {1: _gt([[0, 4], [21, 30]]), 2: _gt([[0, 4], [20, 30]])}
    ious = first_window_ious(pred, gt)
    # q1: first listed window [0, 4] equals gt 0; q2: [21, 30] vs its best gt [20, 30] = 0.9.
    assert ious.tolist() == [1.0, 0.9]
    r1 = recall_at_1(ious)
    assert r1["0.5"] == r1["0.9"] == 100.0 and r1["0.95"] == 50.0


def test_thresholds_are_the_two_decimal_doubles():
    assert THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def _charades_like(preds, windows, durations=None):
    gt = [
        {"qid": q, "duration": (durations or {}).get(q, 60), "relevant_windows": w}
        for q, w in windows.items()
    ]
    rows = [{"qid": q, "pred_relevant_windows": p} for q, p in preds.items()]
    return rows, gt


def test_empty_list_is_r1_miss_and_left_out_of_map():
    rows, gt = _charades_like({1: [[10, 20, 1.0]], 2: []}, {1: [[10, 20]], 2: [[30, 40]]})
    metrics = _quiet(evaluate_submission, rows, gt, "charades")
    full = metrics["full"]
    assert full["MR-mAP"]["average"] == 100.0  # only query 1 is in the mean
    assert full["MR-R1"]["0.5"] == 50.0  # query 2 counts as a miss
    assert metrics["brief"]["MR-full-mIoU"] == 50.0
    assert metrics["brief"]["MR-full-R1@0.3"] == 50.0


def test_empty_buckets_are_null():
    # Both windows are 10 s long: "short" only; middle and long are empty.
    rows, gt = _charades_like(
        {1: [[10, 20, 1.0]], 2: [[30, 35, 1.0]]}, {1: [[10, 20]], 2: [[30, 40]]}
    )
    metrics = _quiet(evaluate_submission, rows, gt)  # detected as Charades
    assert metrics["brief"]["MR-middle-mAP"] is None and metrics["brief"]["MR-long-mAP"] is None
    assert "middle" not in metrics and "long" not in metrics
    assert set(metrics["_skipped_buckets"]) == {"middle", "long"}
    assert metrics["short"] == metrics["full"]
    # Query 2: [30, 35] vs [30, 40], IoU exactly 0.5.
    assert metrics["full"]["MR-R1"]["0.5"] == 100.0 and metrics["full"]["MR-R1"]["0.55"] == 50.0


def test_bucket_uses_binary64_length():
    # 16.1 - 6.1 = 10.000000000000002 > 10: "middle", not "short" (Charades qid 13033).
    rows, gt = _charades_like({1: [[6.1, 16.1, 1.0]]}, {1: [[6.1, 16.1]]})
    metrics = _quiet(evaluate_submission, rows, gt)
    assert "short" not in metrics and metrics["middle"]["MR-mAP"]["average"] == 100.0


def test_reversed_window_with_gt_length_is_a_hit_in_map_only():
    rows, gt = _charades_like({1: [[13, 3, 0.9]]}, {1: [[10, 20]]})
    metrics = _quiet(evaluate_submission, rows, gt)
    assert metrics["full"]["MR-mAP"]["average"] == 100.0  # IoU NaN: a hit (official quirk)
    assert metrics["full"]["MR-R1"]["0.5"] == 0.0


# --------------------------------------------------------------------- hand-computed HD


def _qvh_gt(qid, duration, clip_ids, scores, windows=((0, 2),)):
    return {
        "qid": qid,
        "duration": duration,
        "relevant_clip_ids": clip_ids,
        "saliency_scores": scores,
        "relevant_windows": [list(w) for w in windows],
    }


def test_hd_single_clip_video():
    # One 2-s clip scored [4, 1, 2]: Fair (>= 2) positives per annotator [1, 0, 1] -> APs
    # 1, 0, 1 (all-positive / all-negative columns); Good and VeryGood: [1, 0, 0].
    gt = [_qvh_gt(1, 2, [0], [[4, 1, 2]])]
    metrics = evaluate_submission([{"qid": 1, "pred_saliency_scores": [0.3]}], gt)
    assert metrics["HL-min-Fair"] == {"HL-mAP": 66.67, "HL-Hit1": 100.0}
    assert metrics["HL-min-VeryGood"] == {"HL-mAP": 33.33, "HL-Hit1": 100.0}
    assert list(metrics) == ["brief", "HL-min-Fair", "HL-min-Good", "HL-min-VeryGood"]
    # A longer list: argmax past the only clip is a Hit1 miss; mAP uses the first score.
    longer = _quiet(evaluate_submission, [{"qid": 1, "pred_saliency_scores": [0.3, 0.9]}], gt)
    assert longer["HL-min-Fair"] == {"HL-mAP": 66.67, "HL-Hit1": 0.0}


def test_hd_ties_count_once():
    # Scores [.9, .5, .5, .5, .1] with positives at the first three clips: thresholds .9
    # (precision 1, recall 1/3) and .5 (precision 3/4, recall 1) -> (1 + 0.75) / 2.
    y = np.array([[1, 1, 1, 0, 0]], dtype=float).T
    assert query_average_precisions(np.array([0.9, 0.5, 0.5, 0.5, 0.1]), y)[0] == 0.875


def test_hd_constant_and_empty_predictions():
    gt = [_qvh_gt(1, 8, [1, 3], [[4, 4, 4], [2, 2, 2]])]  # 4 clips
    constant = evaluate_submission([{"qid": 1, "pred_saliency_scores": [1, 1, 1, 1]}], gt)
    # Constant scores: AP = share of positives; argmax = clip 0, not positive.
    assert constant["HL-min-Fair"] == {"HL-mAP": 50.0, "HL-Hit1": 0.0}
    assert constant["HL-min-VeryGood"] == {"HL-mAP": 25.0, "HL-Hit1": 0.0}
    empty = _quiet(evaluate_submission, [{"qid": 1, "pred_saliency_scores": []}], gt)
    assert empty["HL-min-Fair"] == {"HL-mAP": 50.0, "HL-Hit1": 0.0}  # zero-padded, a miss


# ------------------------------------------------------------------------------ TVSum


def test_tvsum_lower_median_and_top5():
    assert lower_median(np.array([4.0, 1.0, 3.0, 2.0], np.float32)) == 2.0
    # One positive clip (5 > median 1) ranked 3rd: trapezoid AP = 1 / (2 * 3).
    label = np.array([[1], [1], [1], [1], [1], [5]] * 1, np.float32).repeat(20, axis=1)
    pred = [0.9, 0.8, 0.7, 0.6, 0.5, 0.75]  # clip 5 has the 3rd best score
    assert top5_average_precision(pred, label) == [1 / 6] * 20
    # Ranked 6th: no positive in the top 5 -> 0.
    assert top5_average_precision([0.9, 0.8, 0.7, 0.6, 0.5, 0.1], label) == [0] * 20
    # Ranked 1st -> 1.
    assert top5_average_precision([0, 0.1, 0.2, 0.3, 0.4, 0.5], label) == [1.0] * 20


def test_tvsum_single_clip_video():
    # One clip: nothing is above its own median, so every AP is 0.
    gt = [{"qid": "v", "duration": 2, "label": [[3.0] * 20], "domain": "BK"}]
    metrics = evaluate_submission([{"qid": "v", "pred_saliency_scores": [0.2]}], gt)
    assert metrics == {"brief": {"mAP": 0.0}, "mAP": 0.0, "per_domain_mAP": {"BK": 0.0}}


def test_tvsum_float32_ties():
    # Distinct doubles that are equal in float32 tie; ties keep list order.
    label = np.array([[1], [5], [1], [1], [1], [1]], np.float32).repeat(20, axis=1)
    a, b = 0.5, 0.5 + 1e-12
    assert np.float32(a) == np.float32(b)
    assert top5_average_precision([a, b, 0, 0, 0, 0], label) == [0.25] * 20  # 2nd: 1/(2*2)


def test_tvsum_mean_is_the_mean_of_the_domain_values_shown():
    # Domain A: its one positive ranked 1st (AP 1); domain B: ranked 3rd (AP 1/6 -> 0.16667).
    label = np.array([[1], [1], [1], [1], [1], [5]], np.float32).repeat(20, axis=1)
    pred = {"a": [0, 0.1, 0.2, 0.3, 0.4, 0.5], "b": [0.9, 0.8, 0.7, 0.6, 0.5, 0.75]}
    metrics = tvsum_metrics(pred, {"a": label, "b": label}, {"a": "A", "b": "B"})
    assert metrics["per_domain_mAP"] == {"A": 1.0, "B": 0.16667}
    shown = np.mean([1.0, 0.16667])  # 0.583335: not cut again to 5 places
    assert metrics["mAP"] == metrics["brief"]["mAP"] == shown
    assert numpy_round_5(shown) != shown
    assert runlog.fmt_num(shown) == "0.583335" and runlog.fmt_num(0.16667) == "0.16667"


def test_numpy_rounding():
    assert numpy_round_5(0.123455) == 0.12346
    assert round(0.123455, 5) == 0.12345  # what Python's round would give
    assert percent_2dp(0.7100000000000001) == 71.0


def test_numpy_sum_matches_np_sum():
    rng = np.random.default_rng(0)
    for n in range(0, 40):
        for _ in range(30):
            x = rng.random(n) * rng.choice([1e-8, 1.0, 1e8], n)
            assert numpy_sum(x) == np.sum(x)


# -------------------------------------------------------------------------------- NMS


def test_temporal_nms():
    windows = [[1, 10, 0.8], [0, 10, 0.9], [20, 30, 0.7], [21, 30, 0.6]]
    # [1, 10] overlaps [0, 10] with hull IoU 0.9 > 0.5: dropped; [21, 30] likewise for
    # [20, 30]; the last remaining window is kept unchecked.
    assert temporal_nms(windows, 0.5) == [[0, 10, 0.9], [20, 30, 0.7]]
    assert temporal_nms(windows, 0.95) == [[0, 10, 0.9], [1, 10, 0.8], [20, 30, 0.7], [21, 30, 0.6]]
    assert temporal_nms(windows, 0.95, max_after=2) == [[0, 10, 0.9], [1, 10, 0.8]]
    assert temporal_nms([[5, 1, 0.1]], 0.5) == [[5, 1, 0.1]]
    assert temporal_nms([], 0.5) == []


@pytest.mark.parametrize("x", [0.0, 0.25, 1.0])
def test_percent_rounding_simple(x):
    assert percent_2dp(x) == 100 * x
