"""Interrupted runs resume exactly; a non-finite loss stops cleanly; partial saves are ignored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from _tiny_run import ROOT, enable_compilation_cache, tiny_config

from trdetr_jax import checkpointing, data, errors, train


class Interrupt(Exception):
    """Stands in for a crash / preemption at a chosen step."""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume")
    enable_compilation_cache(path / "xla")
    yield path
    enable_compilation_cache(None)


def run_config(cache_dir):
    """8 steps (2 epochs of 4), checkpoint every 3 steps, evaluation after each epoch, a
    train log at steps 5 and 8: every checkpoint before step 8 holds a partly summed log
    window (``log_sums``), which a resumed run must carry on."""
    config = tiny_config(cache_dir / "demo")
    config.train.log_every_steps = 5
    return config


@pytest.fixture(scope="module")
def uninterrupted(cache_dir):
    workdir = cache_dir / "uninterrupted"
    summary = train.train_and_evaluate(run_config(cache_dir), str(workdir))
    return workdir, summary


def saved(workdir, step=None):
    """(params, loop state) of checkpoint ``step`` of a run (default: the latest)."""
    ckpt = checkpointing.RunCheckpoints(workdir / "checkpoints", read_only=True)
    step = ckpt.latest_step() if step is None else step
    restored = ckpt.manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(), loop=ocp.args.JsonRestore()),
    )
    ckpt.close()
    return restored["state"]["params"], restored["loop"]


def records(workdir):
    """metrics.jsonl without the wall-clock field."""
    out = []
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("steps_per_sec", None)
        out.append(record)
    return out


def interrupt_at(monkeypatch, call: int):
    """Makes the next run raise when it loads its ``call``-th training batch.

    Batches are loaded on the prefetch thread ahead of the step, but the error is queued
    behind the batches already loaded, so steps ``1 .. call - 1`` run and step ``call`` fails.
    """
    batches, count = data.train_batches, [0]

    def interrupted(*args, **kwargs):
        for batch in batches(*args, **kwargs):
            count[0] += 1
            if count[0] == call:
                raise Interrupt(f"interrupted at batch {call}")
            yield batch

    monkeypatch.setattr(data, "train_batches", interrupted)
    monkeypatch.setattr(data.batching, "train_batches", interrupted)  # the loop reads it there


def assert_same_run(a, b):
    params_a, loop_a = saved(a)
    params_b, loop_b = saved(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), params_a, params_b)
    loop_a.pop("wall_time_s"), loop_b.pop("wall_time_s")  # seconds: differ run to run
    assert loop_a == loop_b  # log_sums included
    assert records(a) == records(b)
    assert (a / "best_val_preds.jsonl").read_text() == (b / "best_val_preds.jsonl").read_text()


def test_uninterrupted_run_writes_its_outputs(uninterrupted):
    workdir, summary = uninterrupted
    for name in ("config.json", "train.log", "metrics.jsonl", "summary.json"):
        assert (workdir / name).is_file(), name
    assert (workdir / "best_val_preds.jsonl").is_file()
    assert (workdir / "best_val_preds_metrics.json").is_file()
    assert summary["steps"] == 8 and summary["epochs"] == 2
    kinds = [r["type"] for r in records(workdir)]
    assert kinds.count("eval") == 2 and kinds.count("train") == 2
    rows = [json.loads(x) for x in (workdir / "best_val_preds.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"qid", "pred_relevant_windows", "pred_saliency_scores"} <= set(
        rows[0]
    )
    # Latest and best are kept, nothing else.
    ckpt = checkpointing.RunCheckpoints(workdir / "checkpoints", read_only=True)
    assert ckpt.latest_step() == 8
    assert set(ckpt.manager.all_steps()) == {8, summary["best_step"]}


@pytest.mark.parametrize(
    "call, resumed_from",
    [(5, 4), (7, 6)],
    ids=["after-epoch-eval-save", "mid-epoch-save"],
)
def test_interrupted_run_resumes_to_the_same_result(
    uninterrupted, cache_dir, tmp_path, monkeypatch, call, resumed_from
):
    workdir = tmp_path / "run"
    interrupt_at(monkeypatch, call)
    with pytest.raises(Interrupt):
        train.train_and_evaluate(run_config(cache_dir), str(workdir))
    monkeypatch.undo()
    _, loop = saved(workdir)
    assert loop["step"] == resumed_from
    # The resume point lies inside a log window (logs at steps 5, 8): the partial sums of
    # the steps since the last log are in the checkpoint, and the resumed run must add to
    # them, or the mean it logs at the next log step differs from the uninterrupted one.
    window = resumed_from if resumed_from < 5 else resumed_from - 5
    assert loop["log_count"] == window and set(loop["log_sums"]) >= {"loss"}
    summary = train.train_and_evaluate(run_config(cache_dir), str(workdir))
    assert f"from step {resumed_from} " in (workdir / "train.log").read_text()
    assert summary["best_score"] == uninterrupted[1]["best_score"]
    assert_same_run(uninterrupted[0], workdir)


def test_predict_rows_reproduces_the_best_predictions(uninterrupted):
    from trdetr_jax import predict

    workdir, _ = uninterrupted
    config = json.loads((workdir / "config.json").read_text())
    rows = predict.predict_rows(workdir, config["data"]["eval_path"])
    expected = [json.loads(x) for x in (workdir / "best_val_preds.jsonl").read_text().splitlines()]
    assert json.loads(json.dumps(rows)) == expected


def test_rerunning_a_finished_run_trains_no_more(uninterrupted, cache_dir):
    workdir, summary = uninterrupted
    again = train.train_and_evaluate(run_config(cache_dir), str(workdir))
    assert again["steps"] == summary["steps"] and again["best_score"] == summary["best_score"]


def test_partial_checkpoint_is_never_picked_up(uninterrupted, cache_dir, tmp_path):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], workdir)
    ckpts = workdir / "checkpoints"
    # What a process killed in the middle of saving step 9 leaves behind.
    partial = ckpts / "9.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(ckpts / "8", partial)
    (partial / "state").joinpath("garbage").write_text("half-written")
    ckpt = checkpointing.RunCheckpoints(ckpts)
    assert ckpt.latest_step() == 8
    ckpt.close()


@pytest.mark.slow  # ~35 s on 2 cores; CI runs it with -m slow
def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(cache_dir, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    batches = data.train_batches

    def poisoned(ds, batch_size, *, seed, epoch, start_step, resident=None):
        for i, (batch, metas) in enumerate(
            batches(ds, batch_size, seed=seed, epoch=epoch, start_step=start_step)
        ):
            if epoch == 1 and start_step + i == 1:  # global step 6
                batch = dict(batch, src_vid=np.full_like(batch["src_vid"], np.nan))
            yield batch, metas

    monkeypatch.setattr(data, "train_batches", poisoned)
    monkeypatch.setattr(data.batching, "train_batches", poisoned)  # the loop reads it there
    config = run_config(cache_dir)
    config.data.features_on_device = "off"  # the poison goes into the host-collated features
    with pytest.raises(errors.NonFiniteLossError, match=r"loss became nan at step 6.*checkpoint"):
        train.train_and_evaluate(config, str(workdir))
    params, loop = saved(workdir)
    assert loop["step"] == 4  # the save due at step 6 did not happen
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_sigkill_and_rerun_gives_the_same_result(uninterrupted, cache_dir, tmp_path):
    """A real ``kill -9`` of ``python -m trdetr_jax.main`` after its first checkpoint."""
    workdir = tmp_path / "run"
    c = run_config(cache_dir)
    d = c.data.demo
    overrides = {
        "data.cache_dir": c.data.cache_dir,
        "data.demo.n_train": d.n_train,
        "data.demo.n_val": d.n_val,
        "data.demo.v_dims": f"({d.v_dims[0]},{d.v_dims[1]})",
        "data.demo.t_dim": d.t_dim,
        "data.demo.min_clips": d.min_clips,
        "data.demo.max_clips": d.max_clips,
        "data.demo.min_query_len": d.min_query_len,
        "data.demo.max_query_len": d.max_query_len,
        "data.max_v_l": c.data.max_v_l,
        "data.max_q_l": c.data.max_q_l,
        "model.hidden_dim": c.model.hidden_dim,
        "model.enc_layers": 1,
        "model.dec_layers": 1,
        "model.dim_feedforward": c.model.dim_feedforward,
        "model.num_queries": c.model.num_queries,
        "train.num_epochs": c.train.num_epochs,
        "train.batch_size": c.train.batch_size,
        "train.eval_batch_size": c.train.eval_batch_size,
        "train.eval_every_epochs": c.train.eval_every_epochs,
        "train.log_every_steps": c.train.log_every_steps,
        "train.checkpoint_every_steps": c.train.checkpoint_every_steps,
        "optim.lr": c.optim.lr,
        "eval.postprocess": c.eval.postprocess,
    }
    cmd = [sys.executable, "-m", "trdetr_jax.main", f"--workdir={workdir}"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    # Same device count as the in-process reference run (conftest.py: 4 host devices).
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (workdir / "checkpoints" / "3").is_dir():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stderr=subprocess.DEVNULL)
    assert_same_run(uninterrupted[0], workdir)


@pytest.mark.slow  # two more runs with their own compilations
def test_features_on_the_device_train_and_resume_to_the_same_result(
    uninterrupted, cache_dir, tmp_path, monkeypatch
):
    """Batches gathered from device-resident features (config.data.features_on_device) give
    the run of host-collated batches bit for bit, interrupted and resumed included."""
    config = run_config(cache_dir)
    config.data.features_on_device = "on"
    workdir = tmp_path / "resident"
    interrupt_at(monkeypatch, 7)
    with pytest.raises(Interrupt):
        train.train_and_evaluate(config, str(workdir))
    monkeypatch.undo()
    train.train_and_evaluate(config, str(workdir))
    log = (workdir / "train.log").read_text()
    assert "features on the device: yes" in log and "from step 6 " in log
    assert_same_run(uninterrupted[0], workdir)


@pytest.mark.slow  # three more runs, each compiling its chunk lengths
def test_several_steps_per_dispatch_match_single_steps_and_resume_exactly(
    uninterrupted, cache_dir, tmp_path, monkeypatch
):
    """config.train.steps_per_dispatch = 2: chunks of lax.scan steps of one bucket, cut at
    the checkpoint steps (every 3) and epoch ends, so chunks of 2 and 1 steps. The run
    equals the one-step-per-dispatch run to float32 rounding (the scan's compile changes
    the reduction order only) and resumes bit for bit."""
    config = run_config(cache_dir)
    config.train.steps_per_dispatch = 2
    chunked = tmp_path / "chunked"
    train.train_and_evaluate(config, str(chunked))
    assert "train chunk of 2 steps" in (chunked / "train.log").read_text()
    params_1, loop_1 = saved(uninterrupted[0])
    params_2, loop_2 = saved(chunked)
    assert loop_2["step"] == loop_1["step"] == 8
    # Adam moves a parameter by up to ~lr a step whatever the gradient's size, so rounding
    # noise in a small gradient shows as up to a few lr-units of 1e-3 of a step: atol 1e-4
    # (measured: 6.4e-6 at most) is a tenth of one step's update.
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-4), params_1, params_2
    )
    a, b = records(uninterrupted[0]), records(chunked)
    assert [(r["type"], r["step"]) for r in a] == [(r["type"], r["step"]) for r in b]
    for ra, rb in zip(a, b):
        if ra["type"] == "train":
            np.testing.assert_allclose(ra["loss"], rb["loss"], rtol=1e-4)

    resumed = tmp_path / "resumed"
    interrupt_at(monkeypatch, 5)  # the chunk of steps 5-6 fails: resumes from step 4
    with pytest.raises(Interrupt):
        train.train_and_evaluate(config, str(resumed))
    monkeypatch.undo()
    train.train_and_evaluate(config, str(resumed))
    assert "from step 4 " in (resumed / "train.log").read_text()
    assert_same_run(chunked, resumed)
