"""Post-processing from model outputs to submission rows, against the reference fixtures and
small hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trdetr_jax.evaluation import evaluate_submission, predictions_to_rows
from trdetr_jax.evaluation.postprocess import foreground_prob
from trdetr_jax.evaluation.tvsum import top5_average_precision


def _case(reference_dir, name):
    folder = reference_dir / name
    outputs = np.load(folder / "outputs.npz")
    post = json.loads((folder / "postprocess.json").read_text())
    metas = [json.loads(line) for line in (folder / "annotations.jsonl").read_text().splitlines()]
    return outputs, post, metas


@pytest.mark.parametrize("name", ["qvh_video_s0", "small_qvh_f64"])
def test_official_rows_match_reference(reference_dir, name):
    out, post, metas = _case(reference_dir, name)
    args = (out["pred_logits"], out["pred_spans"], out["saliency_scores"], out["video_mask"])
    assert [m["duration"] for m in metas] == post["durations"]
    before = predictions_to_rows(*args, metas, mode="official", snap=False)
    assert before == post["before_post_processor"]
    rows = predictions_to_rows(*args, metas, mode="official")
    assert rows == post["submission"]
    assert json.dumps(rows) == json.dumps(post["submission"])  # same key order and reprs


def test_tvsum_rows_and_official_map(reference_dir):
    out, post, metas = _case(reference_dir, "small_tvsum")
    rows = predictions_to_rows(
        None, None, out["saliency_scores"], out["video_mask"], metas, dataset="tvsum"
    )
    assert [r["pred_saliency_scores"] for r in rows] == post["pred_saliency_scores"]
    for row, meta, video in zip(rows, metas, post["per_video"]):
        aps = top5_average_precision(
            row["pred_saliency_scores"], np.array(meta["label"], np.float32)
        )
        assert aps == video["ap_per_annotator"]
        assert np.mean(aps) == video["mean_ap"]
    # The official function returned only the last video's mAP (one batch of 3).
    quirk = evaluate_submission(rows, metas, tvsum_videos_per_batch=3)
    assert quirk["mAP"] == post["official_return"]["mAP"]
    assert evaluate_submission(rows, metas)["mAP"] != quirk["mAP"]


def _one_query(spans, logits, duration, saliency=(0.1, 0.2, 0.3), mask=(1, 1, 0)):
    meta = {"qid": 7, "query": "q", "vid": "v", "duration": duration}
    return (
        np.array([logits], np.float64),
        np.array([spans], np.float64),
        np.array([saliency], np.float64),
        np.array([mask], np.float64),
        [meta],
    )


def test_official_and_dataset_modes_by_hand():
    # (c, w) = (0.25, 0.25) of 8 s = [1, 3] s; (0.5, 0.5) = [2, 6] s.
    args = _one_query([[0.25, 0.25], [0.5, 0.5]], [[2.0, 0.0], [0.0, 0.0]], duration=8)
    p = 1 / (1 + np.exp(-2.0))  # foreground probability of query 0
    assert foreground_prob(args[0])[0].tolist() == [p, 0.5]

    official = predictions_to_rows(*args, mode="official")[0]
    # 2-s multiples, half to even: 1 -> 0, 3 -> 4.
    assert official["pred_relevant_windows"] == [[0.0, 4.0, 0.8808], [2.0, 6.0, 0.5]]
    assert official["pred_saliency_scores"] == [
        float(np.float16(0.1)),
        float(np.float16(0.2)),
    ]
    assert list(official) == [
        "qid",
        "query",
        "vid",
        "pred_relevant_windows",
        "pred_saliency_scores",
    ]

    dataset = predictions_to_rows(*args, mode="dataset", clip_length=1)[0]
    assert dataset["pred_relevant_windows"] == [[1.0, 3.0, 0.8808], [2.0, 6.0, 0.5]]
    assert dataset["pred_saliency_scores"] == [float(np.float32(0.1)), float(np.float32(0.2))]


def test_clamping_official_150_vs_duration():
    # (0.75, 1.0) of 200 s = [50, 250] s.
    args = _one_query([[0.75, 1.0]], [[1.0, 0.0]], duration=200)
    official = predictions_to_rows(*args, mode="official")[0]["pred_relevant_windows"]
    assert official[0][:2] == [50.0, 150.0]  # hard-coded 150 s, whatever the duration
    args = _one_query([[0.75, 1.0]], [[1.0, 0.0]], duration=100.5)  # [25.125, 125.625]
    dataset = predictions_to_rows(*args, mode="dataset", clip_length=2)[0]
    # Clamped to the duration, rounded (100.5 / 2 -> 50), clamped again (never past it).
    assert dataset["pred_relevant_windows"][0][:2] == [26.0, 100.0]


def test_nms_and_padding_rows():
    spans = [[0.5, 0.5], [0.5, 0.52], [0.125, 0.25]]  # two near-identical windows
    logits = [[3.0, 0.0], [2.0, 0.0], [1.0, 0.0]]
    args = list(_one_query(spans, logits, duration=100))
    plain = predictions_to_rows(*args, mode="official")[0]["pred_relevant_windows"]
    assert len(plain) == 3
    kept = predictions_to_rows(*args, mode="official", nms_thd=0.5)[0]["pred_relevant_windows"]
    assert kept == [plain[0], plain[2]]
    assert (
        predictions_to_rows(*args, mode="official", nms_thd=-1)[0]["pred_relevant_windows"] == plain
    )
    # A batch of 2 with one meta: the second row is padding and is skipped.
    padded = [np.concatenate([a, a]) for a in args[:4]] + [args[4]]
    assert len(predictions_to_rows(*padded, mode="official")) == 1


def test_bad_arguments():
    args = _one_query([[0.5, 0.5]], [[1.0, 0.0]], duration=10)
    with pytest.raises(ValueError, match="mode"):
        predictions_to_rows(*args, mode="paper")
    with pytest.raises(ValueError, match="clip_length"):
        predictions_to_rows(*args, mode="dataset")
    with pytest.raises(ValueError, match="metas"):
        predictions_to_rows(*args[:4], args[4] * 2)


def test_tvsum_detected_from_metas(reference_dir):
    out, post, metas = _case(reference_dir, "small_tvsum")
    args = (out["pred_logits"], out["pred_spans"], out["saliency_scores"], out["video_mask"])
    rows = predictions_to_rows(*args, metas, mode="official")  # as a training loop calls it
    assert [r["pred_saliency_scores"] for r in rows] == post["pred_saliency_scores"]
