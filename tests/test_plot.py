"""Figures: the plotted data are the predictions, ground truth and metrics given."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="matplotlib (extra 'plot') not installed")
pytestmark = pytest.mark.extras  # CI installs the extras and selects these

from trdetr_jax import plot  # noqa: E402

PRED = {
    "qid": 7,
    "query": "a dog runs",
    "pred_saliency_scores": [0.1, 0.5, 0.9, 0.2],
    "pred_relevant_windows": [[2.0, 6.0, 0.9], [0.0, 8.0, 0.4], [4.0, 6.0, 0.1]],
}
GT = {
    "qid": 7,
    "duration": 8,
    "relevant_windows": [[2, 6]],
    "relevant_clip_ids": [1, 2],
    "saliency_scores": [[2, 3, 4], [4, 4, 4]],
}


def test_query_figure_plots_saliency_and_moments():
    fig = plot.query_figure(PRED, GT, clip_length=2.0, top_k=2)
    ax_s, ax_m = fig.axes[0], fig.axes[1]
    (pred_line,) = ax_s.get_lines()
    np.testing.assert_array_equal(pred_line.get_xdata(), [0, 2, 4, 6])
    np.testing.assert_array_equal(pred_line.get_ydata(), PRED["pred_saliency_scores"])
    (gt_line,) = fig.axes[2].get_lines()  # the twin axis
    np.testing.assert_array_equal(gt_line.get_ydata(), [0, 3, 4, 0])
    bars = [
        (p.get_x(), p.get_x() + p.get_width(), p.get_y() + p.get_height() / 2)
        for p in ax_m.patches
        if p.get_gid() == "moment"
    ]
    np.testing.assert_allclose(bars, [(2.0, 6.0, 1.0), (0.0, 8.0, 0.0)])  # best on top
    spans = [p.get_x() for p in ax_m.patches if p.get_gid() == "ground truth"]
    assert len(spans) == 1 and ax_m.patches[-1].get_gid() == "ground truth"
    assert [t.get_text().strip() for t in ax_m.texts] == ["0.90", "0.40"]
    assert ax_m.get_xlim() == (0.0, 8.0)


def test_gt_saliency_of_tvsum_rows_is_the_annotator_mean():
    label = [[1, 3], [2, 2], [5, 1]]
    np.testing.assert_array_equal(plot.gt_saliency({"label": label}, 3), [2, 2, 3])


def test_curves_figure_and_cli(tmp_path):
    records = [
        {"type": "train", "step": 2, "epoch": 1, "loss": 2.0, "lr": 1e-3, "steps_per_sec": 9},
        {"type": "train", "step": 4, "epoch": 1, "loss": 1.0, "lr": 5e-4, "steps_per_sec": 9},
        {"type": "eval", "step": 4, "epoch": 1, "MR-full-mAP": 10.0, "HL-min-VG-mAP": None},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = plot.curves_figure(tmp_path / "metrics.jsonl")
    lines = {
        ax_i: {
            ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()
        }
        for ax_i, ax in enumerate(fig.axes)
    }
    assert lines[0] == {"loss": ([2, 4], [2.0, 1.0])}
    assert lines[1] == {"lr": ([2, 4], [1e-3, 5e-4])}
    assert lines[2] == {"MR-full-mAP": ([4], [10.0])}
    assert plot.main(["run", "--workdir", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "p.jsonl").write_text(json.dumps(PRED) + "\n")
    (tmp_path / "g.jsonl").write_text(json.dumps(GT) + "\n")
    args = ["query", "--preds", str(tmp_path / "p.jsonl"), "--gt", str(tmp_path / "g.jsonl")]
    assert plot.main([*args, "--qid", "7", "--out", str(tmp_path / "q.png")]) == 0
    assert (tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"
    assert plot.main([*args, "--qid", "8", "--out", str(tmp_path / "x.png")]) == 1
    assert not (tmp_path / "x.png").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files


def test_curves_class_error_on_its_own_axis_and_eval_colours_distinct(tmp_path):
    names = [f"m{i}" for i in range(13)]
    records = [
        {"type": "train", "step": 2, "loss": 2.0, "class_error": 80.0, "lr": 1e-3},
        {"type": "eval", "step": 2, **{n: float(i) for i, n in enumerate(names)}},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = plot.curves_figure(tmp_path / "metrics.jsonl")
    train, _, evals, right = fig.axes
    assert [ln.get_label() for ln in train.get_lines()] == ["loss"]
    assert [ln.get_label() for ln in right.get_lines()] == ["class_error"]
    assert list(right.get_lines()[0].get_ydata()) == [80.0]
    styles = {(ln.get_color(), ln.get_linestyle()) for ln in evals.get_lines()}
    assert len(evals.get_lines()) == 13 and len(styles) == 13


def test_cli_errors_are_one_line_and_gt_takes_a_shipped_split(tmp_path, capsys):
    out = str(tmp_path / "c.png")
    assert plot.main(["run", "--workdir", str(tmp_path / "nope"), "--out", out]) == 1
    assert capsys.readouterr().err.strip() == f"error: workdir {tmp_path / 'nope'} does not exist"
    assert plot.main(["run", "--workdir", str(tmp_path), "--out", out]) == 1
    assert "has no metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"type": "train", "step": 1, "loss": 1}))
    bad_out = str(tmp_path / "no_dir" / "c.png")
    assert plot.main(["run", "--workdir", str(tmp_path), "--out", bad_out]) == 1
    assert "output folder does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a usage error
        plot.main(["query", "--preds", "p", "--qid", "1", "--clip-length", "0", "--out", out])
    assert e.value.code == 2
    # --gt DATASET:SPLIT reads the shipped file: qid 2579 of the QVHighlights val split.
    pred = dict(PRED, qid=2579, pred_saliency_scores=[0.5] * 75)
    (tmp_path / "p.jsonl").write_text(json.dumps(pred) + "\n")
    args = ["query", "--preds", str(tmp_path / "p.jsonl"), "--gt", "qvhighlights:val"]
    assert plot.main([*args, "--qid", "2579", "--out", str(tmp_path / "q.png")]) == 0
    assert (tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"
