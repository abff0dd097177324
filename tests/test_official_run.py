"""A checkpoint trained by the official code, converted and evaluated here, gives the official
run's own val predictions and metrics.

Fixture (tests/official_run/, rebuilt by experiments/make_official_run.sh): the generated
dataset's annotation files and generator (make_data.py; the features are regenerated here and
checked against the SHA-256 the official run saw), the official ``model_best.ckpt`` state_dict
as float32 ``model_best.npz``, its ``opt.json``, and the official evaluation of that epoch:
``best_hl_val_preds.jsonl`` and ``best_hl_val_preds_metrics.json``. The official run used
``--eval_bsz 5``, so its 23 val queries were five batches (5, 5, 5, 5, 3), each padded to its
own longest video and query; in official mode the outputs depend on that padding.

The checks:
- ``test_evaluate_cli_reproduces_official_run``: the whole path, the converter then
  ``python -m trdetr_jax.evaluate --checkpoint DIR`` (one device, so that the evaluation batch
  is the official 5). It passes only once the data pipeline pads each evaluation batch as the
  official collate does (to the batch's longest video and query, no filler rows).
- ``test_model_on_official_batches``: our model run directly on batches built here exactly as
  the official collate builds them; this isolates the converter and the model from the data
  pipeline.
- ``test_official_metrics_file_scores_the_official_rows``: our evaluation of the official rows
  gives the official metrics file, so the metric comparisons compare predictions.

How rows are compared (``compare_rows``): both sides compute in float32, in a different
order; the model outputs agree to ~1e-6.
- Window starts/ends are multiples of 2 s after the official snapping, so they must be
  equal; a one-step difference is accepted only where our unsnapped value lies within
  2e-4 s of a rounding boundary (an odd second): a 1e-6 error on a normalised span end is
  up to 1.5e-4 s on a 150-s video. (None is that close in this fixture: the nearest is 8 ms.)
- Scores are rounded to 4 decimals: equal, or one 1e-4 step apart (a rounding boundary).
- Window order must be equal, except that two adjacent windows whose full-precision scores
  (ours) differ by at most 1e-6 may come out swapped. This matters: the barely trained model
  scores its 10 windows within ~1e-4 of each other (many are equal to 4 decimals), so the
  order is decided by differences of 1e-5 and less.
- Saliency is the official float16 values: within 1 float16 ulp, or within 4e-6 where that
  is more (|x| < 2^-8, where a float16 ulp is below the ~1e-6 float32 error of the score;
  run op by op instead of jitted, our model gives one such value 2 ulps away).
Metrics (``check_metrics``) must equal the official file exactly where no row differs;
otherwise a metric may move by one query's share (100 / queries) per query that differs.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from trdetr_jax.model import model_inputs
from trdetr_jax.official import convert

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = pathlib.Path(__file__).resolve().parent / "official_run"
VIDEO_DIMS = "data.v_feat_dims=(24,16)"  # opt.json only has the summed v_feat_dim (40)

SNAP_BOUNDARY_TOL = 2e-4  # seconds: how close to a rounding boundary a flipped end may be
SCORE_STEP = 1e-4  # the official 4-decimal rounding
TIE_TOL = 1e-6  # full-precision scores closer than this may come out in either order
SALIENCY_ABS_TOL = 4e-6  # float32 error of a saliency score; above 1 float16 ulp near 0


def _load_make_data():
    spec = importlib.util.spec_from_file_location(
        "official_run_make_data", FIXTURE / "make_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run_info() -> dict:
    return json.loads((FIXTURE / "run.json").read_text())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, run_info) -> pathlib.Path:
    """The generated dataset, regenerated bit-identically to what the official run read."""
    out = tmp_path_factory.mktemp("official_run_data")
    digest = _load_make_data().write(out)
    assert digest == run_info["features_sha256"], (
        "tests/official_run/make_data.py no longer generates the features the official run "
        f"was trained on (sha256 {digest}, recorded {run_info['features_sha256']})"
    )
    for name in ("train.jsonl", "val.jsonl"):
        assert (out / name).read_text() == (FIXTURE / name).read_text(), name
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("official_run_converted") / "ckpt"
    convert.convert(FIXTURE / "model_best.npz", out, options=FIXTURE / "opt.json")
    return out


@pytest.fixture(scope="module")
def official_rows() -> list[dict]:
    return _jsonl(FIXTURE / "best_hl_val_preds.jsonl")


@pytest.fixture(scope="module")
def official_metrics() -> dict:
    return json.loads((FIXTURE / "best_hl_val_preds_metrics.json").read_text())


# ------------------------------------------------------------------------------ comparison


def _near_boundary(value: float) -> bool:
    """Whether an unsnapped time lies within SNAP_BOUNDARY_TOL of a 2-s rounding boundary."""
    return abs((value % 2.0) - 1.0) <= SNAP_BOUNDARY_TOL


def _swap_adjacent_ties(ours: np.ndarray, theirs: np.ndarray, ranked) -> tuple[np.ndarray, int]:
    """``theirs`` with adjacent windows swapped where ours come in the other order and our
    full-precision scores of the two differ by at most TIE_TOL (their order is float noise)."""
    theirs = theirs.copy()
    swaps, i = 0, 0
    while i < len(theirs) - 1:
        crossed = (
            not np.array_equal(ours[i, :2], theirs[i, :2])
            and np.array_equal(ours[i, :2], theirs[i + 1, :2])
            and np.array_equal(ours[i + 1, :2], theirs[i, :2])
        )
        if crossed and ranked is not None and ranked[i] - ranked[i + 1] <= TIE_TOL:
            theirs[[i, i + 1]] = theirs[[i + 1, i]]
            swaps += 1
            i += 2
        else:
            i += 1
    return theirs, swaps


def compare_rows(ours: list[dict], official: list[dict], unsnapped: list[dict] | None = None):
    """Problems (strings) and statistics of our rows against the official ones.

    ``unsnapped``: our rows before the 2-s snapping, with ``ranked_scores`` (see
    :func:`_direct_rows`); without them no boundary flip or tie swap is accepted.
    """
    problems = []
    stats = dict(score_steps=0, swaps=0, boundary_flips=0, sal_diffs=0)
    stats.update(inexact_mr_queries=0, inexact_hl_queries=0)
    stats.update(window_diffs=0, score_max_diff=0.0, sal_max_ulps=0.0, sal_max_abs=0.0)
    if [r["qid"] for r in ours] != [r["qid"] for r in official]:
        return [f"qid order differs: {[r['qid'] for r in ours]}"], stats
    for k, (mine, theirs) in enumerate(zip(ours, official)):
        qid = theirs["qid"]
        a = np.asarray(mine["pred_relevant_windows"], np.float64)
        b = np.asarray(theirs["pred_relevant_windows"], np.float64)
        if a.shape != b.shape:
            problems.append(f"qid {qid}: {a.shape[0]} windows, official {b.shape[0]}")
            continue
        raw = None if unsnapped is None else unsnapped[k]
        accepted = stats["score_steps"] + stats["swaps"] + stats["boundary_flips"]
        b, swaps = _swap_adjacent_ties(a, b, raw and raw["ranked_scores"])
        stats["swaps"] += swaps
        for i, (wa, wb) in enumerate(zip(a, b)):
            for j in range(2):
                if wa[j] == wb[j]:
                    continue
                unsnapped_end = None if raw is None else raw["pred_relevant_windows"][i][j]
                if (
                    abs(wa[j] - wb[j]) == 2.0
                    and unsnapped_end is not None
                    and _near_boundary(unsnapped_end)
                ):
                    stats["boundary_flips"] += 1
                else:
                    stats["window_diffs"] += 1
                    problems.append(
                        f"qid {qid} window {i}: {wa[:2].tolist()} vs official {wb[:2].tolist()}"
                        + ("" if raw is None else f" (ours unsnapped {unsnapped_end} at [{j}])")
                    )
            step = abs(wa[2] - wb[2])
            stats["score_max_diff"] = max(stats["score_max_diff"], float(step))
            if step > SCORE_STEP * 1.001:
                problems.append(f"qid {qid} window {i}: score {wa[2]} vs official {wb[2]}")
            elif step > 0:
                stats["score_steps"] += 1
        sa = np.asarray(mine["pred_saliency_scores"], np.float64)
        sb = np.asarray(theirs["pred_saliency_scores"], np.float64)
        if sa.shape != sb.shape:
            problems.append(f"qid {qid}: {sa.size} saliency scores, official {sb.size}")
            continue
        diff = np.abs(sa - sb)
        ulps = diff / np.spacing(np.abs(sb).astype(np.float16)).astype(np.float64)
        stats["sal_max_ulps"] = max(stats["sal_max_ulps"], float(ulps.max(initial=0.0)))
        stats["sal_diffs"] += int((ulps > 0).sum())
        stats["sal_max_abs"] = max(stats["sal_max_abs"], float(np.abs(sa - sb).max(initial=0)))
        stats["inexact_mr_queries"] += accepted < (
            stats["score_steps"] + stats["swaps"] + stats["boundary_flips"]
        )
        stats["inexact_hl_queries"] += bool((ulps > 0).any())
        if ((ulps > 1.0) & (diff > SALIENCY_ABS_TOL)).any():
            i = int(np.where(diff > SALIENCY_ABS_TOL, ulps, 0).argmax())
            problems.append(
                f"qid {qid}: saliency[{i}] {sa[i]} vs official {sb[i]} ({ulps[i]:.0f} ulps)"
            )
    return problems, stats


def check_metrics(ours: dict, official: dict, stats: dict, num_queries: int) -> list[str]:
    """Metric differences beyond what the accepted row differences explain.

    Every metric is a mean over queries, rounded to 2 decimals; a query whose rows differ
    within the accepted tolerances can move it by at most its share, 100 / num_queries. So
    the moment-retrieval metrics (MR-*) get that share per query with an accepted window or
    score difference, the highlight metrics (HL-*) per query with a saliency difference, and
    everything must be equal, full file included, where no row differs at all.
    """
    share = 100.0 / num_queries
    tol = {"MR": share * stats["inexact_mr_queries"], "HL": share * stats["inexact_hl_queries"]}
    problems = []
    for key, value in official["brief"].items():
        t = tol[key.split("-")[0]]
        t = t + 0.01 if t else 0.0  # the 2-decimal rounding
        mine = ours["brief"].get(key)
        if mine is None or abs(mine - value) > t:
            problems.append(f"{key}: {mine} vs official {value} (tolerance {t:.2f})")
    if not any(tol.values()) and ours != official:
        problems.append("the full metrics differ from the official file")
    return problems


def _report(problems: list[str], stats: dict) -> str:
    shown = "\n  ".join(problems[:15])
    return f"{len(problems)} differences ({stats}):\n  {shown}"


# ----------------------------------------------------------------------------------- tests


def test_fixture_is_the_official_run(run_info, official_rows):
    """The committed files belong together: the official options are the small model, eval
    batch 5, and the predictions cover every val query."""
    opt = json.loads((FIXTURE / "opt.json").read_text())
    assert opt["eval_bsz"] == run_info["eval_bsz"] == 5
    assert (opt["hidden_dim"], opt["enc_layers"], opt["dec_layers"]) == (256, 1, 1)
    assert opt["v_feat_dim"] == 40 and opt["t_feat_dim"] == 16
    val = _jsonl(FIXTURE / "val.jsonl")
    assert [r["qid"] for r in official_rows] == [r["qid"] for r in val]
    with np.load(FIXTURE / "model_best.npz") as z:
        assert sum(z[k].size for k in z.files) == run_info["num_parameters"]


def test_official_metrics_file_scores_the_official_rows(official_rows, official_metrics):
    """Our evaluation of the official predictions gives the official metrics file exactly, so
    comparing metrics below compares predictions, not evaluators."""
    from trdetr_jax.evaluation import JsonlFile, evaluate_submission, read_jsonl

    metrics = evaluate_submission(
        JsonlFile.from_rows(official_rows, "<official>"), read_jsonl(FIXTURE / "val.jsonl"), None
    )
    assert json.loads(json.dumps(metrics)) == official_metrics


@functools.cache
def _direct_rows(converted: str, data_dir: str, batch_size: int):
    """Our model on batches padded exactly as the official collate pads them: consecutive
    ``batch_size`` queries in file order, each batch padded to its longest video and query,
    the last batch smaller. Returns (snapped rows, unsnapped rows)."""
    import jax

    from trdetr_jax import data as data_lib
    from trdetr_jax import evaluation, inference, predict
    from trdetr_jax.evaluation.postprocess import foreground_prob
    from trdetr_jax.model import TRDETR, model_kwargs_from_config

    params, _ = convert.load_converted(converted)
    config = predict.load_config(converted)
    config.data.eval_path = str(pathlib.Path(data_dir) / "val.jsonl")
    config.data.feature_root = data_dir
    predict.apply_overrides(config, [VIDEO_DIMS])
    config = data_lib.resolve_config(config)
    ds = data_lib.build_eval_dataset(config)
    model = TRDETR(**model_kwargs_from_config(config))
    apply = jax.jit(functools.partial(model.apply, train=False))
    snapped, unsnapped = [], []
    for start in range(0, len(ds), batch_size):
        idx = list(range(start, min(start + batch_size, len(ds))))
        examples = [ds.example(i, np.random.default_rng(0)) for i in idx]
        batch = data_lib.collate(
            examples,
            max_v_l=max(len(e["video"]) for e in examples),
            max_q_l=max(len(e["text"]) for e in examples),
            max_windows=ds.max_windows,
        )
        out = jax.device_get(apply({"params": params}, **model_inputs(batch)))
        out = {k: np.asarray(out[k]) for k in inference.EVAL_OUTPUT_KEYS}
        metas = [ds.rows[i] for i in idx]
        args = (out["pred_logits"], out["pred_spans"], out["saliency_scores"], out["video_mask"])
        snapped += evaluation.predictions_to_rows(*args, metas, mode="official")
        unsnapped += evaluation.predictions_to_rows(*args, metas, mode="official", snap=False)
        # the scores at full float32 precision, in ranked order (rows keep 4 decimals)
        for b, row in enumerate(unsnapped[-len(idx) :]):
            prob = foreground_prob(out["pred_logits"][b])
            row["ranked_scores"] = sorted(prob.tolist(), reverse=True)
    return snapped, unsnapped


@pytest.mark.slow  # slow: the fast suite stays under 10 minutes on 2 cores; CI runs -m slow too
def test_model_on_official_batches(converted, data_dir, run_info, official_rows, official_metrics):
    from trdetr_jax.evaluation import JsonlFile, evaluate_submission, read_jsonl

    rows, unsnapped = _direct_rows(str(converted), str(data_dir), run_info["eval_bsz"])
    problems, stats = compare_rows(rows, official_rows, unsnapped)
    print(f"rows against the official run: {stats}")  # shown with -rP
    assert not problems, _report(problems, stats)
    metrics = evaluate_submission(
        JsonlFile.from_rows(rows, "<direct>"), read_jsonl(data_dir / "val.jsonl"), None
    )
    bad = check_metrics(json.loads(json.dumps(metrics)), official_metrics, stats, len(rows))
    assert not bad, bad


@pytest.mark.slow  # a second process: JAX start-up and compilation, ~30 s
def test_evaluate_cli_reproduces_official_run(
    converted, data_dir, run_info, official_rows, official_metrics, tmp_path
):
    pred, out = tmp_path / "preds.jsonl", tmp_path / "metrics.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, "-m", "trdetr_jax.evaluate", "--checkpoint", str(converted),
           "--gt", str(data_dir / "val.jsonl"), "--feature-root", str(data_dir),
           "--override", VIDEO_DIMS, "--save-submission", str(pred), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _jsonl(pred)
    _, unsnapped = _direct_rows(str(converted), str(data_dir), run_info["eval_bsz"])
    problems, stats = compare_rows(rows, official_rows, unsnapped)
    print(f"rows against the official run: {stats}")  # shown with -rP
    assert not problems, _report(problems, stats)
    bad = check_metrics(json.loads(out.read_text()), official_metrics, stats, len(rows))
    assert not bad, bad
