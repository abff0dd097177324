"""Bad data is caught before anything is compiled, every problem listed with file:line, qid,
field and value; odd but usable windows are clamped (or refused with config.data.strict)."""

from __future__ import annotations

import json
import logging
import pathlib
import re
import shutil

import numpy as np
import pytest
from _tiny_run import tiny_config

from trdetr_jax import data as data_lib
from trdetr_jax import train
from trdetr_jax.data import DataError, checks


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> pathlib.Path:
    config = data_lib.resolve_config(tiny_config(tmp_path_factory.mktemp("demo")))
    return pathlib.Path(config.data.feature_root)


def rows_of(path: pathlib.Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def write_rows(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config_with(demo_root, tmp_path, *, train=None, val=None, **data):
    """The tiny config on the demo data, with edited copies of its annotation files."""
    config = tiny_config(demo_root.parent)
    train_rows, val_rows = rows_of(demo_root / "train.jsonl"), rows_of(demo_root / "val.jsonl")
    if train:
        train(train_rows)
    if val:
        val(val_rows)
    config.data.feature_root = str(demo_root)
    config.data.train_path = str(write_rows(tmp_path / "train.jsonl", train_rows))
    config.data.eval_path = str(write_rows(tmp_path / "val.jsonl", val_rows))
    for k, v in data.items():
        config.data[k] = v
    return config


@pytest.fixture
def no_compile(monkeypatch):
    """Fails the test if the run gets as far as building its jitted steps."""

    def refuse(*args, **kwargs):
        raise AssertionError("the run compiled before finding the bad data")

    monkeypatch.setattr(train, "cached_steps", refuse)


def run_error(config, workdir) -> str:
    with pytest.raises(DataError) as info:
        train.train_and_evaluate(config, str(workdir))
    assert not workdir.exists(), "the workdir was written before the data were checked"
    return str(info.value)


def _set(i, **fields):
    def edit(rows):
        rows[i].update(fields)

    return edit


def _dup(rows):
    rows[2]["qid"] = rows[1]["qid"]


def _no_video(rows):
    rows[3]["vid"] = "missing_video"


def _fractional_clip_id(rows):
    rows[0]["relevant_clip_ids"][0] = 0.5


def _reverse(rows):
    st, ed = rows[1]["relevant_windows"][0]
    rows[1]["relevant_windows"][0] = [ed, st]


def _clip_id(c):
    def edit(rows):
        rows[0]["relevant_clip_ids"][0] = c

    return edit


def _two_scores(rows):
    rows[1]["saliency_scores"] = [s[:2] for s in rows[1]["saliency_scores"]]


# split, edit, line, what the message must say
CASES = [
    ("val", _no_video, 4, r"video missing_video: feature file not found"),
    ("val", _set(1, duration=0), 2, r"field 'duration' must be a positive number, got 0"),
    ("val", _reverse, 2, r"field 'relevant_windows'\[0\] must have start < end"),
    ("val", _dup, 3, r"repeats the qid of .*val\.jsonl:2"),
    ("train", _reverse, 2, r"field 'relevant_windows'\[0\] must have start < end"),
    ("train", _set(1, duration=0), 2, r"field 'duration' must be a positive number, got 0"),
    ("train", _dup, 3, r"repeats the qid of .*train\.jsonl:2"),
    ("train", _no_video, 4, r"video missing_video: feature file not found"),
    ("train", _set(0, saliency_scores=[["a", 2, 2]]), 1, r"'saliency_scores'\[0\] must be a"),
    ("train", _fractional_clip_id, 1, r"'relevant_clip_ids' must hold non-neg"),
    ("train", _set(0, relevant_windows=[[-9.0, -1.0]]), 1, r"lies outside \[0, duration"),
    # Rows only the evaluation's ground-truth check refuses: a clip id past the video, two
    # annotator scores for a clip (the evaluation would end the run after its first epochs).
    ("val", _clip_id(200), 1, r"'relevant_clip_ids\[0\]': expected a clip index in \[0, "),
    ("val", _two_scores, 2, r"'saliency_scores\[0\]': expected 3 annotator scores"),
    ("train", _two_scores, 2, r"'saliency_scores\[0\]': expected 3 annotator scores"),
]


@pytest.mark.parametrize("split, edit, line, pattern", CASES)
def test_bad_rows_stop_the_run_before_compiling(
    demo_root, tmp_path, no_compile, split, edit, line, pattern
):
    config = config_with(demo_root, tmp_path, **{split: edit})
    message = run_error(config, tmp_path / "workdir")
    assert re.search(rf"{split}\.jsonl:{line}: .*{pattern}", message), message
    assert "qid" in message and "\n" not in message  # one problem: one line


def test_feature_width_is_checked_from_headers(demo_root, tmp_path, no_compile):
    root = tmp_path / "features"
    shutil.copytree(demo_root, root)
    for path in (root / "clip_features").glob("*.npz"):
        np.savez(path, features=np.ones((10, 7), np.float32))
    config = config_with(root, tmp_path)
    message = run_error(config, tmp_path / "workdir")
    assert message.startswith("the data cannot be used (22 problems):")
    assert "feature dimension 7 disagrees with config.data.v_feat_dims (clip_features) = 6" in (
        message
    )
    assert message.count("disagrees") == 20 and message.endswith("... and 2 more")


def test_all_problems_are_listed_at_once_with_a_cap(demo_root, tmp_path, no_compile):
    def many(rows):
        for r in rows:
            r["duration"] = -1

    config = config_with(demo_root, tmp_path, train=many, val=_dup)
    message = run_error(config, tmp_path / "workdir")
    # 16 training rows fail when the file is read; the val file is not reached.
    assert message.startswith(f"{config.data.train_path}: bad annotation rows (16 problems):")
    assert message.count("must be a positive number") == 16

    config = config_with(demo_root, tmp_path, train=_reverse, val=_dup)
    message = run_error(config, tmp_path / "workdir")
    assert "train.jsonl:2" in message and "start < end" in message


def _odd(rows):
    rows[0]["relevant_windows"] = [[-2.0, 4.0]]
    rows[1]["relevant_windows"] = [[2.0, rows[1]["duration"] + 6.0]]


def test_odd_windows_are_clamped_with_one_warning(demo_root, tmp_path, caplog):
    config = config_with(demo_root, tmp_path, train=_odd, val=_odd)
    with caplog.at_level(logging.WARNING):
        train_ds, eval_ds = data_lib.build_datasets(config)  # checks (and clamps) the rows
    warnings = [r for r in caplog.records if "; clamped to [0, duration]" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].getMessage().startswith("4 annotated window(s)")
    assert re.search(
        r"first: .*train\.jsonl:1: field 'relevant_windows'\[0\] = \[-2\.0, 4\.0\] \(qid ",
        warnings[0].getMessage(),
    )
    for ds in (train_ds, eval_ds):
        assert ds.rows[0]["relevant_windows"] == [[0.0, 4.0]]
        assert ds.rows[1]["relevant_windows"] == [[2.0, ds.rows[1]["duration"]]]
    assert eval_ds.gt_rows()[0]["relevant_windows"] == [[0.0, 4.0]]


def test_strict_refuses_odd_windows(demo_root, tmp_path, no_compile):
    config = config_with(demo_root, tmp_path, train=_odd, strict=True)
    message = run_error(config, tmp_path / "workdir")
    assert message.startswith("the data cannot be used (2 problems):")
    assert "train.jsonl:1: field 'relevant_windows'[0] = [-2.0, 4.0] is not inside" in message
    assert "config.data.strict=False would clamp it" in message


def test_test_split_without_labels_is_valid(demo_root, tmp_path):
    def unlabelled(rows):
        for r in rows:
            for k in ("relevant_windows", "relevant_clip_ids", "saliency_scores"):
                del r[k]

    config = config_with(demo_root, tmp_path, val=unlabelled)
    _, eval_ds = data_lib.build_datasets(config)
    assert len(eval_ds) == 6 and eval_ds.gt_rows()[0].get("relevant_windows") is None


def test_clean_data_passes_unchanged(demo_root, tmp_path):
    config = config_with(demo_root, tmp_path)
    train_ds, eval_ds = data_lib.build_datasets(config)
    assert train_ds.rows == rows_of(pathlib.Path(config.data.train_path))
    assert eval_ds.rows == rows_of(pathlib.Path(config.data.eval_path))
    checks.preflight(config.data, train_ds, eval_ds)  # again: nothing to report
    assert train_ds.rows == rows_of(pathlib.Path(config.data.train_path))


def test_a_qid_in_both_splits_needs_the_same_query(demo_root, tmp_path, no_compile):
    train_rows = rows_of(demo_root / "train.jsonl")

    def borrow(query):
        def edit(rows):
            rows[1]["qid"] = train_rows[0]["qid"]
            rows[1]["query"] = query

        return edit

    config = config_with(demo_root, tmp_path, val=borrow("another query"))
    message = run_error(config, tmp_path / "workdir")
    assert re.search(
        rf"val\.jsonl:2: qid {train_rows[0]['qid']!r} also appears at .*train\.jsonl:1 with another "
        r"query \('another query' vs ",
        message,
    ), message
    config = config_with(demo_root, tmp_path, val=borrow(train_rows[0]["query"]))
    data_lib.build_datasets(config)  # the same query: fine


def test_windows_past_the_features_get_one_warning(demo_root, tmp_path, caplog):
    def past(rows):
        # Row 0's video holds `clips` clips of 2 s; a window well after them, inside the
        # (enlarged) duration.
        clips = int(
            np.load(demo_root / "clip_features" / f"{rows[0]['vid']}.npz")["features"].shape[0]
        )
        rows[0]["duration"] = 4 * clips * 2
        rows[0]["relevant_windows"] = [[clips * 2 + 4.0, clips * 2 + 8.0]]

    config = config_with(demo_root, tmp_path, train=past)
    with caplog.at_level(logging.WARNING):
        data_lib.build_datasets(config)
    found = [
        r.getMessage() for r in caplog.records if "past the end of the video" in r.getMessage()
    ]
    assert len(found) == 1 and re.search(r"train\.jsonl:1: qid .*: a window ends at", found[0])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        data_lib.build_datasets(config_with(demo_root, tmp_path))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_odd_saliency_labels_get_one_warning_each(demo_root, tmp_path, caplog):
    def odd(rows):
        d = rows[0]["duration"]
        rows[0]["relevant_clip_ids"] = [0] + rows[0]["relevant_clip_ids"][1:]
        rows[0]["relevant_windows"] = [[d - 4.0, d]]
        rows[2]["saliency_scores"] = [[7, -1, 2]] * len(rows[2]["saliency_scores"])

    config = config_with(demo_root, tmp_path, val=odd)
    with caplog.at_level(logging.WARNING):
        data_lib.build_datasets(config)
    found = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(found) == 2, found
    assert found[0].startswith("relevant clips outside every relevant window")
    assert re.search(r"val\.jsonl:1: qid .*: clips \[0", found[0])
    assert found[1].startswith("saliency scores outside the official 0-4 scale")
    assert re.search(r"val\.jsonl:3: qid .*: scores from -1 to 7", found[1])
