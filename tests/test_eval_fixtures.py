"""The evaluation CLI against every fixture in shared/eval: the metrics the official code wrote.

Each test runs the CLI entry point in-process (`trdetr_jax.evaluate.run`) and compares the
written metrics file with the official one, byte for byte where the official CLI produced
the file (same keys, key order, rounding and JSON layout).
"""

from __future__ import annotations

import json

import pytest

from trdetr_jax import evaluate

QVH_VAL = "data/qvhighlights/highlight_val_release.jsonl"
QVH_TEST = "data/qvhighlights/highlight_test_with_gt.jsonl"
CHARADES = "data/charades/charades_sta_val_tvr_format.jsonl"
TVSUM = "data/tvsum/tvsum_val.jsonl"


def run_cli(tmp_path, *args):
    out = tmp_path / "metrics.json"
    rc = evaluate.run([*map(str, args), "--out", str(out)])
    return rc, (out.read_text() if out.exists() else None)


@pytest.mark.parametrize(
    "name", ["setA_a_jitter", "setA_bd_ties", "setA_c_invalid", "quirk_nan_reversed"]
)
def test_qvh_fixture_identical_to_official(eval_dir, shared, tmp_path, name):
    rc, text = run_cli(
        tmp_path, "--submission", eval_dir / f"qvh/{name}_preds.jsonl", "--gt", shared / QVH_VAL
    )
    assert rc == 0
    assert text == (eval_dir / f"qvh/{name}_metrics.json").read_text()


def test_qvh_subset_needs_allow_missing(eval_dir, shared, tmp_path, capsys):
    preds = eval_dir / "qvh/setA_e_subset_preds.jsonl"
    rc, text = run_cli(tmp_path, "--submission", preds, "--gt", shared / QVH_VAL)
    assert rc == 1 and text is None
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    gt_qids = {json.loads(x)["qid"] for x in (shared / QVH_VAL).read_text().splitlines()}
    pred_qids = {json.loads(x)["qid"] for x in preds.read_text().splitlines()}
    missing = len(gt_qids - pred_qids)
    assert 0 < missing < len(gt_qids)
    assert f"no prediction for {missing} of {len(gt_qids)} ground-truth qids" in err
    assert "--allow-missing" in err

    rc, text = run_cli(tmp_path, "--submission", preds, "--gt", shared / QVH_VAL, "--allow-missing")
    assert rc == 0
    # Official eval_submission(match_number=False), serialised like the official CLI.
    assert text == (eval_dir / "qvh/setA_e_subset_metrics.json").read_text()


def test_qvh_empty_window_lists(eval_dir, shared, tmp_path):
    """The official CLI crashes on empty lists (in R1); its mAP and HD still work, leaving
    such queries out of the mAP mean. Ours: the same mAP and HD, and R1 counts a miss."""
    error = json.loads((eval_dir / "qvh/setA_c_empty_error.json").read_text())
    partial = error["partial_official_function_outputs"]
    preds = eval_dir / "qvh/setA_c_empty_preds.jsonl"
    rc, text = run_cli(tmp_path, "--submission", preds, "--gt", shared / QVH_VAL)
    assert rc == 0
    ours = json.loads(text)
    for bucket in ("short", "middle", "long", "full"):
        assert ours[bucket]["MR-mAP"] == partial[bucket]["compute_mr_ap"], bucket
    official_hd = partial["eval_highlight"]
    assert set(official_hd) == {"HL-min-Fair", "HL-min-Good", "HL-min-VeryGood"}
    for level, block in official_hd.items():
        assert ours[level] == block, level
    # R1: an empty list is a miss, i.e. the same as a window far outside every video.
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    n_empty = partial["full"]["n_queries_with_empty_pred_list"]
    assert n_empty > 0 and sum(not r["pred_relevant_windows"] for r in rows) == n_empty
    for r in rows:
        r["pred_relevant_windows"] = r["pred_relevant_windows"] or [[-1000, -999, 0.0]]
    filled = tmp_path / "filled.jsonl"
    filled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, text = run_cli(tmp_path, "--submission", filled, "--gt", shared / QVH_VAL)
    assert rc == 0
    for bucket in ("short", "middle", "long", "full"):
        assert ours[bucket]["MR-R1"] == json.loads(text)[bucket]["MR-R1"], bucket


# The official QVHighlights numbers as shared/eval/README.md section 1 tabulates them (an
# independent record of the official run: the metrics files must agree with it).
README_ROWS = {
    "sample_val_preds": "sample_val_preds (val)",
    "best_hl_val_preds": "best_hl_val_preds (val)",
    "hl_test_submission": "hl_test_submission (test)",
}


def readme_key_values(eval_dir, name):
    """The ten numbers of the README's 'Key values' row for ``name``."""
    prefix = f"| {README_ROWS[name]} |"
    rows = [x for x in (eval_dir / "README.md").read_text().splitlines() if x.startswith(prefix)]
    assert len(rows) == 1, f"{eval_dir / 'README.md'}: expected one row {prefix!r}, found {rows}"
    return tuple(float(v) for v in rows[0][len(prefix) :].strip(" |").split("|"))


BRIEF_KEYS = (
    "MR-full-R1@0.5",
    "MR-full-R1@0.7",
    "MR-full-mAP",
    "MR-full-mAP@0.5",
    "MR-full-mAP@0.75",
    "MR-short-mAP",
    "MR-middle-mAP",
    "MR-long-mAP",
    "HL-min-VeryGood-mAP",
    "HL-min-VeryGood-Hit1",
)


@pytest.mark.parametrize(
    "name, gt",
    [
        ("sample_val_preds", QVH_VAL),
        ("best_hl_val_preds", QVH_VAL),
        ("hl_test_submission", QVH_TEST),  # the test split, scored locally
    ],
)
def test_official_val_and_test_numbers(eval_dir, shared, tmp_path, name, gt):
    rc, text = run_cli(
        tmp_path, "--submission", eval_dir / f"official/{name}.jsonl", "--gt", shared / gt
    )
    assert rc == 0
    assert text == (eval_dir / f"official/{name}_metrics.json").read_text()
    brief = json.loads(text)["brief"]
    assert tuple(brief[k] for k in BRIEF_KEYS) == readme_key_values(eval_dir, name)


def test_charades_fixture(eval_dir, shared, tmp_path):
    rc, text = run_cli(
        tmp_path,
        "--submission",
        eval_dir / "charades/charades_s1_jitter_preds.jsonl",
        "--gt",
        shared / CHARADES,
    )
    assert rc == 0
    ours = json.loads(text)
    official = json.loads((eval_dir / "charades/charades_s1_jitter_metrics.json").read_text())
    for key in ("full", "middle", "short"):
        assert ours[key] == official[key]
    assert "long" not in ours and "long" in ours["_skipped_buckets"]
    extras = {"MR-full-R1@0.3", "MR-full-mIoU"}
    assert {k: v for k, v in ours["brief"].items() if k not in extras} == official["brief"]
    assert ours["brief"]["MR-long-mAP"] is None
    assert list(ours["brief"]) == sorted(ours["brief"])
    assert ours["brief"]["MR-full-R1@0.3"] >= ours["brief"]["MR-full-R1@0.5"]
    assert 0 < ours["brief"]["MR-full-mIoU"] < 100
    assert [k for k in ours if k != "_skipped_buckets"] == ["brief", "full", "middle", "short"]


def test_tvsum_fixture(eval_dir, shared, tmp_path):
    rc, text = run_cli(
        tmp_path,
        "--submission",
        eval_dir / "tvsum/tvsum_s1_noisy_mean_preds.jsonl",
        "--gt",
        shared / TVSUM,
    )
    assert rc == 0
    ours = json.loads(text)
    official = json.loads((eval_dir / "tvsum/tvsum_s1_noisy_mean_metrics.json").read_text())
    assert ours["per_domain_mAP"] == official["per_domain_mAP"]
    assert ours["mAP"] == ours["brief"]["mAP"] == official["average_over_10_domains"]


def test_tvsum_batch_quirk(eval_dir, shared):
    """All 10 val videos in one official batch: only the last one (PR) is scored."""
    from trdetr_jax.evaluation import evaluate_submission, read_jsonl

    demo = json.loads((eval_dir / "tvsum/tvsum_batch_quirk_demo.json").read_text())
    gt = [dict(row, domain="all") for row in read_jsonl(shared / TVSUM).rows]
    preds = read_jsonl(eval_dir / "tvsum/tvsum_s1_noisy_mean_preds.jsonl")
    quirk = evaluate_submission(preds, gt, tvsum_videos_per_batch=100)
    assert quirk["mAP"] == demo["official_result_all_videos_one_batch"]["mAP"]
    every = evaluate_submission(preds, gt)  # every video counts
    assert every["mAP"] != quirk["mAP"]
