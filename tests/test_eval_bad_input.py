"""Bad input: structural errors name file, line, qid and field; odd predictions are
evaluated as the official code does with one warning (errors with strict); the CLI exits
non-zero with a one-line message and never shows a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

from trdetr_jax import evaluate
from trdetr_jax.evaluation import (
    EvalInputError,
    EvaluationNote,
    OddPredictionWarning,
    evaluate_submission,
    read_jsonl,
)

GT = [
    {
        "qid": 1,
        "query": "a",
        "duration": 20,
        "vid": "v1",
        "relevant_clip_ids": [2, 3],
        "saliency_scores": [[4, 4, 4], [2, 3, 1]],
        "relevant_windows": [[4, 8]],
    },
    {
        "qid": 2,
        "query": "b",
        "duration": 30,
        "vid": "v2",
        "relevant_clip_ids": [0],
        "saliency_scores": [[1, 2, 3]],
        "relevant_windows": [[0, 2], [10, 14]],
    },
]


def good_rows():
    return [
        {"qid": 1, "pred_relevant_windows": [[4, 8, 0.9]], "pred_saliency_scores": [0.0] * 10},
        {
            "qid": 2,
            "pred_relevant_windows": [[10, 14, 0.8], [0, 2, 0.7]],
            "pred_saliency_scores": [1.0] * 15,
        },
    ]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path):
    """(write submission rows, ground-truth path)."""
    gt = write_jsonl(tmp_path / "gt.jsonl", GT)
    return (lambda rows: write_jsonl(tmp_path / "pred.jsonl", rows)), gt


def error_of(rows, gt=GT, **kwargs) -> str:
    with pytest.raises(EvalInputError) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluate_submission(rows, gt, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_rows_evaluate_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = evaluate_submission(good_rows(), GT)
    assert metrics["brief"]["MR-full-mAP"] == 100.0


# ------------------------------------------------------------------------- structural


def test_malformed_json_line(files):
    write, gt = files
    pred = write([json.dumps(good_rows()[0]), '{"qid": 2, "pred_relevant_windows": [[1, 2, 0.5]'])
    with pytest.raises(EvalInputError, match=r"pred\.jsonl:2: malformed JSON"):
        read_jsonl(pred)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("[1, 2, 3]", r"pred\.jsonl:1: expected one JSON object per line, got a JSON array"),
        ('{"qid": NaN}', r"pred\.jsonl:1: non-finite number NaN"),
        ('{"qid": 1, "x": 1e999}', r"pred\.jsonl:1: number 1e999 overflows"),
    ],
)
def test_unreadable_lines(files, line, expected):
    write, _ = files
    with pytest.raises(EvalInputError, match=expected):
        read_jsonl(write([line]))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(EvalInputError, match="not found"):
        read_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(EvalInputError, match="contains no JSON lines"):
        read_jsonl(tmp_path / "empty.jsonl")


def test_errors_name_file_line_qid_and_field(files):
    write, gt = files
    rows = good_rows()
    rows[1]["pred_relevant_windows"] = [[10, 14, 0.8], [1, 2]]
    message = error_of(read_jsonl(write(rows)), read_jsonl(gt))
    assert message.startswith(f"{write(rows)}:2: qid 2: field 'pred_relevant_windows[1]'")
    assert "expected [start, end, score]" in message


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda r: r[0].pop("qid"), "<submission>:1: field 'qid': required field is missing"),
        (lambda r: r[0].update(qid=[1]), "field 'qid': must be an integer or a string, got array"),
        (lambda r: r[0].update(qid=True), "field 'qid': must be an integer or a string"),
        (
            lambda r: r[1].update(pred_relevant_windows="[[1, 2, 3]]"),
            "<submission>:2: qid 2: field 'pred_relevant_windows': expected a list",
        ),
        (
            lambda r: r[1]["pred_relevant_windows"][0].__setitem__(0, "10"),
            "field 'pred_relevant_windows[0]': start, end and score must be a number",
        ),
        (
            lambda r: r[1]["pred_relevant_windows"][0].__setitem__(2, None),
            "start, end and score must be a number, got null",
        ),
        (
            lambda r: r[0]["pred_relevant_windows"][0].__setitem__(0, float("inf")),
            "must be finite",
        ),
        (
            lambda r: r[1].update(pred_saliency_scores={"0": 1}),
            "qid 2: field 'pred_saliency_scores': expected a list of numbers, got object",
        ),
        (
            lambda r: r[1]["pred_saliency_scores"].__setitem__(3, True),
            "field 'pred_saliency_scores[3]': each score must be a number, got boolean",
        ),
        (
            lambda r: r[1].pop("pred_saliency_scores"),
            "qid 2: field 'pred_saliency_scores': required field is missing (the first row",
        ),
        (lambda r: r[1].update(qid=1), "<submission>:2: qid 1: duplicated qid (first on line 1)"),
        (lambda r: r[1].update(qid=3), "<submission>:2: qid 3: qid not in the ground truth"),
        (
            lambda r: r[1].update(qid="2"),
            "the ground truth uses integer qids; this one is a string",
        ),
        (
            lambda r: [x.clear() or x.update(qid=q) for x, q in zip(r, (1, 2))],
            "nothing to evaluate: the first row has no 'pred_relevant_windows' or "
            "'pred_saliency_scores'",
        ),
    ],
)
def test_structural_errors(mutate, expected):
    rows = good_rows()
    mutate(rows)
    assert expected in error_of(rows)


def test_missing_predictions():
    gt = GT + [dict(GT[1], qid=q) for q in range(3, 12)]
    message = error_of(good_rows(), gt)
    assert "no prediction for 9 of 11 ground-truth qids (e.g. 3, 4, 5, 6, 7)" in message
    assert "--allow-missing" in message
    # Allowed: evaluated on the shared qids, as the official match_number=False path.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = evaluate_submission(good_rows(), gt, allow_missing=True)
    assert metrics == evaluate_submission(good_rows(), GT)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda g: g[1].update(qid=1), "<ground truth>:2: qid 1: duplicated qid"),
        (lambda g: g[0].pop("duration"), "field 'duration': required field is missing"),
        (lambda g: g[0].update(duration=-3), "field 'duration': must be positive"),
        (lambda g: g[0].update(relevant_windows=[]), "expected a non-empty list of [start, end]"),
        (lambda g: g[0].update(relevant_windows=[[8, 4]]), "start > end"),
        (lambda g: g[0].update(relevant_clip_ids=[2, 10]), "expected a clip index in [0, 10)"),
        (lambda g: g[0].update(saliency_scores=[[4, 4]]), "expected one [s1, s2, s3] per relevant"),
    ],
)
def test_ground_truth_errors(mutate, expected):
    gt = json.loads(json.dumps(GT))
    mutate(gt)
    assert expected in error_of(good_rows(), gt)


def test_release_file_without_ground_truth(shared):
    message = error_of(
        good_rows(), read_jsonl(shared / "data/qvhighlights/highlight_test_release.jsonl")
    )
    assert "cannot tell the dataset" in message and "highlight_test_release.jsonl:1" in message


# -------------------------------------------------------------------------------- odd


def odd_rows():
    rows = good_rows()
    rows[0]["pred_relevant_windows"] = [
        [8, 4, 0.9],  # start > end
        [-2, 5, 1.5],  # negative start, score > 1
        [15, 25, 0.95],  # past the end (20 s), unsorted
        [3, 3, 0.1],  # zero length
    ] + [[0, 1, 0.01]] * 8  # 12 windows
    rows[1]["pred_saliency_scores"] = [1.0] * 14  # 15 clips
    return rows


def test_odd_predictions_warn_once():
    with pytest.warns(OddPredictionWarning) as record:
        metrics = evaluate_submission(odd_rows(), GT)
    assert len(record) == 1
    message = str(record[0].message)
    for kind in (
        "window with start > end",
        "window starting before 0",
        "window past the video end",
        "zero-length window",
        "score outside [0, 1]",
        "more than 10 windows",
        "not sorted by descending score",
        "saliency list length differs",
        "2 queries have odd predictions",
    ):
        assert kind in message
    # Computed anyway: query 1's top-scoring window (1.5) is [-2, 5], its first listed one
    # [8, 4] is reversed (R1 miss); query 2 is perfect.
    assert metrics["full"]["MR-R1"]["0.5"] == 50.0


def test_strict_rejects_odd_predictions():
    message = error_of(odd_rows(), strict=True)
    assert message.startswith("<submission>:1: qid 1: field 'pred_relevant_windows[0]'")
    assert "--strict" in message


def test_empty_window_list_warns_and_strict_rejects():
    rows = good_rows()
    rows[1]["pred_relevant_windows"] = []
    with pytest.warns(OddPredictionWarning, match="empty window list"):
        metrics = evaluate_submission(rows, GT)
    assert metrics["full"]["MR-R1"]["0.5"] == 50.0
    assert metrics["full"]["MR-mAP"]["average"] == 100.0
    assert "empty window list" in error_of(rows, strict=True)


def test_field_only_in_later_rows_is_ignored_as_official():
    rows = good_rows()
    del rows[0]["pred_saliency_scores"]
    with pytest.warns(OddPredictionWarning, match="field absent from the first row"):
        metrics = evaluate_submission(rows, GT)
    assert not any(k.startswith("HL") for k in metrics)


def test_saliency_without_saliency_ground_truth_is_a_note():
    gt = [
        {k: v for k, v in g.items() if k not in ("saliency_scores", "relevant_clip_ids")}
        for g in GT
    ]
    with pytest.warns(EvaluationNote, match="ignored"):
        metrics = evaluate_submission(good_rows(), gt)  # Charades-like: MR only
    assert "MR-full-mIoU" in metrics["brief"] and "HL-min-Fair" not in metrics


# -------------------------------------------------------------------------------- CLI


def test_cli_errors_are_one_line(files, capsys):
    write, gt = files
    rows = good_rows()
    rows[1]["qid"] = 1
    rc = evaluate.run(["--submission", str(write(rows)), "--gt", str(gt)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert "pred.jsonl:2: qid 1: duplicated qid" in err


def test_cli_strict_and_warning(files, capsys):
    write, gt = files
    pred = write(odd_rows())
    assert evaluate.run(["--submission", str(pred), "--gt", str(gt)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("warning: ")
    assert "MR-full-mAP" in captured.out
    assert evaluate.run(["--submission", str(pred), "--gt", str(gt), "--strict"]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_cli_out_is_written_atomically(files, tmp_path, capsys):
    write, gt = files
    out = tmp_path / "metrics.json"
    out.write_text("old")
    assert (
        evaluate.run(["--submission", str(write(good_rows())), "--gt", str(gt), "--out", str(out)])
        == 0
    )
    assert json.loads(out.read_text())["brief"]["MR-full-mAP"] == 100.0
    assert not out.read_text().endswith("\n")  # the official layout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.jsonl", "metrics.json", "pred.jsonl"]
    rc = evaluate.run(
        [
            "--submission",
            str(write(good_rows())),
            "--gt",
            str(gt),
            "--out",
            str(tmp_path / "no/m.json"),
        ]
    )
    assert rc == 1 and "output folder does not exist" in capsys.readouterr().err


def test_cli_gt_shorthand_and_bad_shorthand(capsys):
    assert evaluate.resolve_gt("tvsum:val").name == "tvsum_val.jsonl"
    rc = evaluate.run(["--submission", "x.jsonl", "--gt", "tvsum:test"])
    assert rc == 1 and "unknown split 'test' for tvsum" in capsys.readouterr().err


def test_cli_checkpoint_option_reports_one_line(tmp_path, capsys):
    rc = evaluate.run(["--checkpoint", str(tmp_path / "none"), "--gt", "tvsum:val"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and err.startswith("error: ")


def test_cli_as_module(files):
    """The real entry point: a bad file gives exit status 1 and one line on stderr."""
    write, gt = files
    pred = write(["not json"])
    env = dict(os.environ, PYTHONPATH=str(evaluate.__file__).rsplit("/trdetr_jax/", 1)[0])
    proc = subprocess.run(
        [sys.executable, "-m", "trdetr_jax.evaluate", "--submission", str(pred), "--gt", str(gt)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {pred}:1: malformed JSON (Expecting value at column 1)"
    ]


def test_empty_inputs():
    assert "there are no predictions" in error_of([])
    assert "the ground truth has no rows" in error_of(good_rows(), [])
    assert "unknown dataset 'hl'" in error_of(good_rows(), dataset="hl")
    assert "expected a JSON object" in error_of([["qid", 1]])


def test_in_memory_rows_with_numpy_values():
    import numpy as np

    rows = good_rows()
    rows[0]["qid"] = np.int64(1)
    rows[0]["pred_relevant_windows"] = np.array(rows[0]["pred_relevant_windows"], np.float32)
    rows[1]["pred_relevant_windows"] = [tuple(w) for w in rows[1]["pred_relevant_windows"]]
    rows[1]["pred_saliency_scores"] = np.ones(15)
    assert evaluate_submission(rows, GT) == evaluate_submission(good_rows(), GT)


def test_json_array_file_and_byte_order_mark(files):
    write, _ = files
    pred = write([json.dumps(good_rows())])
    with pytest.raises(EvalInputError, match="looks like one JSON array, expected JSON lines"):
        read_jsonl(pred)
    pred.write_bytes(b"\xef\xbb\xbf" + pred.read_bytes()[1:-2].replace(b"}, {", b"}\n{") + b"\n")
    assert len(read_jsonl(pred)) == 2
