"""The sharded train / eval steps: learning, device-count invariance, one compilation."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from _tiny_run import enable_compilation_cache, tiny_config

from trdetr_jax import data, inference, objective, optim, runlog, train
from trdetr_jax import mesh as mesh_lib
from trdetr_jax import steps as steps_lib
from trdetr_jax.model import TRDETR, model_kwargs_from_config


@dataclasses.dataclass
class Setup:
    config: object
    steps: steps_lib.Steps
    batches: list  # local numpy batches of epoch 0
    traces: list  # one entry per trace of the loss function


def build(config, devices, *, count_traces: bool = True) -> Setup:
    """Steps over ``devices``; without ``count_traces`` they come from the trainer's cache
    (``train.cached_steps``), which the training runs of test_resume.py then reuse."""
    # One padded shape (the maxima): these tests count compilations and compare losses.
    config.data.length_buckets = False
    config, train_ds, _ = data.load_datasets(config)
    mesh = mesh_lib.make_mesh(devices)
    bs = config.train.batch_size
    n_steps = data.steps_per_epoch(len(train_ds), bs)
    batches = [b for b, _ in data.train_batches(train_ds, bs, seed=config.seed, epoch=0)]
    if not count_traces:
        steps = train.cached_steps(config, mesh, n_steps, data.abstract_batch(train_ds, bs))
        return Setup(config, steps, batches, [])
    traces = []
    loss_fn = objective.make_loss_fn(config, mesh=mesh)

    def counting_loss_fn(*args, **kwargs):
        traces.append(1)  # runs while tracing only
        return loss_fn(*args, **kwargs)

    steps = train.build_steps(
        mesh,
        TRDETR(**model_kwargs_from_config(config)),
        optim.optimizer_of_config(config, n_steps),
        counting_loss_fn,
        optim.schedule_of_config(config, n_steps),
        data.abstract_batch(train_ds, bs),
    )
    return Setup(config, steps, batches, traces)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("train")
    enable_compilation_cache(path / "xla")
    yield path
    enable_compilation_cache(None)


@pytest.fixture(scope="module")
def one_device(cache_dir):
    return build(tiny_config(cache_dir / "demo"), jax.devices()[:1])


def run(setup: Setup, batches, n_steps: int):
    state = setup.steps.init(jax.random.key(0))
    rng = jax.random.key(1)
    losses = []
    for i in range(n_steps):
        batch = mesh_lib.device_batch(batches[i % len(batches)], setup.steps.batch_sharding)
        state, metrics = setup.steps.train(state, batch, rng)
        losses.append(float(metrics["loss"]))
    return state, losses


def test_a_few_steps_lower_the_loss(one_device):
    batch = mesh_lib.device_batch(one_device.batches[0], one_device.steps.batch_sharding)
    loss_fn = objective.make_loss_fn(one_device.config, mesh=one_device.steps.mesh)
    model = TRDETR(**model_kwargs_from_config(one_device.config))
    eval_loss = jax.jit(lambda p, b: loss_fn(p, model, b, train=False)[0])
    state0 = one_device.steps.init(jax.random.key(0))
    before = float(eval_loss(state0.params, batch))
    state, losses = run(one_device, one_device.batches[:1], 16)
    after = float(eval_loss(state.params, batch))
    assert np.all(np.isfinite(losses))
    assert after < 0.8 * before, (before, after, losses)
    assert int(state.step) == 16


def test_train_step_compiles_once(cache_dir):
    # Fresh jitted steps (not the fixture's, which earlier tests have already traced), so
    # the count starts at zero and every trace is seen.
    setup = build(tiny_config(cache_dir / "demo"), jax.devices()[:1])
    assert len(setup.batches) >= 3 and setup.traces == []
    run(setup, setup.batches, 1)
    assert len(setup.traces) == 1  # the first step traces ...
    # ... and later steps (every batch of the epoch, a new state, new step counts) reuse it.
    state, _ = run(setup, setup.batches, 2 * len(setup.batches))
    assert int(state.step) == 2 * len(setup.batches)
    assert len(setup.traces) == 1


def test_four_devices_give_the_loss_of_one(one_device, cache_dir):
    assert len(jax.devices()) >= 4, "conftest.py asks XLA for 4 host devices"
    four = build(tiny_config(cache_dir / "demo"), jax.devices()[:4], count_traces=False)
    assert four.steps.mesh.devices.size == 4
    batch = mesh_lib.device_batch(four.batches[0], four.steps.batch_sharding)
    # The global batch of 4 really is split: one example per device.
    assert {s.data.shape[0] for s in batch["src_vid"].addressable_shards} == {1}
    state1, losses1 = run(one_device, one_device.batches, 3)
    state4, losses4 = run(four, four.batches, 3)
    np.testing.assert_allclose(losses4, losses1, rtol=2e-5)
    # Parameters whose gradient is zero in exact arithmetic (reference README section 7: the
    # attention key biases by softmax shift invariance, saliency_proj's bias, the projections
    # of the zero first decoder input) get pure rounding noise, which AdamW turns into steps
    # of up to lr each way whatever its size: another reduction order may step them
    # differently.
    noise_only = ("k_proj", "kcontent_proj", "kpos_proj", "saliency_proj", "layer_0/sa_")
    lr = float(tiny_config(cache_dir / "demo").optim.lr)

    def close(path, a, b):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        noise = any(part in name for part in noise_only) and name.endswith("bias")
        atol = 2 * lr * 3 if noise else 2e-5  # 3 steps
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, err_msg=name)

    jax.tree_util.tree_map_with_path(close, state4.params, state1.params)


def test_batch_size_not_divisible_by_devices(cache_dir, tmp_path):
    config = tiny_config(cache_dir / "demo")
    config.train.batch_size = 6  # 4 host devices in tests
    with pytest.raises(ValueError, match=r"batch_size=6 is not divisible .* devices \(4\)"):
        train.train_and_evaluate(config, str(tmp_path / "run"))


def test_eval_batch_size_rounds_up_and_predicts_every_query(cache_dir, tmp_path, monkeypatch):
    assert len(jax.devices()) == 4, "conftest.py asks XLA for 4 host devices"
    config = tiny_config(cache_dir / "demo")
    config.train.eval_batch_size = 5  # not a multiple of the 4 devices: rounds up to 8
    config.train.num_epochs = 1
    sizes, evaluate = [], inference.evaluate_split

    def spy(eval_fn, sharding, params, eval_ds, config, batch_size, resident=None):
        sizes.append(batch_size)
        return evaluate(eval_fn, sharding, params, eval_ds, config, batch_size, resident)

    monkeypatch.setattr(inference, "evaluate_split", spy)
    train.train_and_evaluate(config, str(tmp_path / "run"))
    assert sizes == [8]
    _, _, eval_ds = data.load_datasets(config)
    lines = (tmp_path / "run" / "best_val_preds.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    assert [r["qid"] for r in rows] == [r["qid"] for r in eval_ds.rows]  # 6 queries, 1 batch
    assert all(len(r["pred_relevant_windows"]) == 4 for r in rows)  # num_queries


def test_progress_bar_writes_rate_and_eta():
    import io

    stream = io.StringIO()
    bar = runlog.ProgressBar(total=10, stream=stream)
    for i in range(1, 11):
        bar.update(i, "loss 1.0")
    bar.close()
    text = stream.getvalue()
    assert "10/10" in text and "step/s" in text and "ETA" in text


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    """Multi-host path (jax.distributed, per-process batch rows, gathered eval outputs, Orbax
    from two processes): 2 processes x 2 CPU devices against 1 process x 4 devices."""
    import os
    import subprocess
    import sys

    from _tiny_run import ROOT

    args = [
        "--config=configs/demo.py:tiny",
        f"--config.data.cache_dir={tmp_path / 'demo'}",
        "--config.eval.postprocess=dataset",
        "--config.train.num_epochs=2",
        "--config.train.log_every_steps=2",
    ]

    def launch(workdir, n_proc, n_dev):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_dev}")
        if n_proc > 1:
            env.update(
                JAX_COORDINATOR_ADDRESS=f"localhost:{_free_port()}",
                JAX_NUM_PROCESSES=str(n_proc),
                JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            )
        cmd = [sys.executable, "-m", "trdetr_jax.main", f"--workdir={workdir}", *args]
        procs = [
            subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=dict(env, JAX_PROCESS_ID=str(i)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(n_proc)
        ]
        assert [p.wait(timeout=900) for p in procs] == [0] * n_proc

    def records(workdir):
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "steps_per_sec"} for x in lines]

    launch(tmp_path / "one", 1, 4)
    launch(tmp_path / "two", 2, 2)
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["type"] for r in one] == [r["type"] for r in two]
    # Two processes reduce the same per-device sums in another order: measured on 2 CPU
    # cores, the logged train scalars differ by at most 4.3e-7 relative (loss 1.2e-7, i.e.
    # one float32 ulp; grad_norm 2.1e-7; loss_giou 4.3e-7) and every eval metric is
    # identical (predictions move by ~1e-7, which here flips no ranking or IoU decision;
    # one flipped decision would move a metric by 6.25 on these 16 queries).
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for k, v in a.items():
            if a["type"] == "eval" or not isinstance(v, float):
                assert b[k] == v, (a["type"], a.get("step"), k, v, b[k])
            else:
                np.testing.assert_allclose(b[k], v, rtol=2e-6, atol=1e-7, err_msg=k)


def test_chunks_hold_one_bucket_and_end_at_size_checkpoints_and_epoch_end():
    def batch(lv, step):
        return {
            "src_vid_mask": np.zeros((2, lv), np.float32),
            "src_txt_mask": np.zeros((2, 4), np.float32),
            "example_mask": np.full(2, step, np.float32),
        }

    lengths = [8, 8, 8, 8, 12, 12, 8, 8, 8, 8]  # global steps 6..15 (first_step 5)
    batches = [batch(lv, 6 + i) for i, lv in enumerate(lengths)]
    got = list(data.chunk_batches(iter(batches), first_step=5, size=3, cut_every=4))
    # Cuts after steps 6 (6 % 3), 8 (8 % 4), 9 (9 % 3; a bucket change follows), 11 (a bucket
    # change follows), 12 (12 % 3, 12 % 4), 15 (15 % 3, the epoch's end).
    steps = [c["example_mask"][:, 0].tolist() for c in got]
    assert steps == [[6], [7, 8], [9], [10, 11], [12], [13, 14, 15]]
    assert [c["src_vid_mask"].shape for c in got] == [
        (1, 2, 8), (2, 2, 8), (1, 2, 8), (2, 2, 12), (1, 2, 8), (3, 2, 8)
    ]  # fmt: skip
