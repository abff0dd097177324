"""Several seeds in one run: each seed is its single run, resumes exactly, stops alone.

The fast tests check the pieces by hand (seed lists, mean ± std, batch grouping, the masked
step, the loop state's JSON); the slow ones train K = 3 tiny models at once and compare each
with the single run of its seed (1 and 4 host devices), interrupt and resume the K-seed run,
and poison one seed's batch.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from _tiny_run import enable_compilation_cache, tiny_config

from trdetr_jax import checkpointing, data, evaluate, runlog, seeds, train

SEEDS = (2017, 2018, 2019)


# ------------------------------------------------------------------------ the pieces


def test_seed_list():
    assert seeds.seed_list(2017, 1) == (2017,)
    assert seeds.seed_list(2017, 3) == (2017, 2018, 2019)
    assert seeds.seed_list(0, 1, (5, 3)) == (5, 3)
    assert seeds.seed_list(0, 2, (5, 3)) == (5, 3)
    with pytest.raises(seeds.SeedsError, match=r"num_seeds=3 but config.train.seeds lists 2"):
        seeds.seed_list(0, 3, (5, 3))
    with pytest.raises(seeds.SeedsError, match=r"repeated seeds: \(5, 5\)"):
        seeds.seed_list(0, 1, (5, 5))
    with pytest.raises(seeds.SeedsError, match=r"num_seeds must be a positive integer, got 0"):
        seeds.seed_list(0, 0)
    # config.json of a run written before several seeds existed: one seed
    assert seeds.seeds_of_saved({"seed": 7, "train": {}}) == (7,)
    assert seeds.seeds_of_saved({"seed": 7, "train": {"num_seeds": 2, "seeds": []}}) == (7, 8)


def test_the_default_config_is_one_seed():
    config = tiny_config("/nonexistent")
    assert not seeds.is_multi_seed(config)
    assert seeds.seeds_of_config(config) == (config.seed,)
    config.train.num_seeds = 2
    assert seeds.is_multi_seed(config)
    config.train.seed_padding = "loose"
    with pytest.raises(seeds.SeedsError, match=r"seed_padding must be one of .* got 'loose'"):
        seeds.seeds_of_config(config)


def test_mean_and_sample_std():
    mean, std, n = seeds.mean_std([1.0, 2.0, None, 4.0])
    assert n == 3 and mean == pytest.approx(7 / 3)
    assert std == pytest.approx(
        math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    )
    assert seeds.mean_std([3.0]) == (3.0, None, 1)
    assert seeds.mean_std([None]) == (None, None, 0)
    over = seeds.over_seeds([{"a": 1.0, "b": None}, None, {"a": 3.0, "b": 2.0}])
    assert list(over) == ["a", "b"]
    assert over["a"] == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "n": 2}
    assert over["b"] == {"mean": 2.0, "std": None, "n": 1}


def _batch(lv: int, lt: int, fill: float) -> dict[str, np.ndarray]:
    return {
        "src_vid": np.full((2, lv, 3), fill, np.float32),
        "src_vid_mask": np.ones((2, lv), np.float32),
        "saliency_all_labels": np.ones((2, lv), np.float32),
        "src_pos_mask": np.ones((2, lv), np.float32),
        "src_txt": np.full((2, lt, 4), fill, np.float32),
        "src_txt_mask": np.ones((2, lt), np.float32),
        "span_labels": np.full((2, 5, 2), fill, np.float32),
        "official_vid_len": np.full(2, lv, np.int32),
    }


def test_step_calls_group_the_seeds_by_padded_lengths():
    batches = [_batch(10, 6, 1.0), _batch(12, 6, 2.0), _batch(10, 6, 3.0)]
    # 'common': one call, every batch zero-padded to the largest lengths (masks 0 there).
    [(member, stacked)] = seeds.step_calls(batches, "common")
    assert member.tolist() == [True, True, True]
    assert stacked["src_vid"].shape == (3, 2, 12, 3) and stacked["src_txt"].shape == (3, 2, 6, 4)
    assert stacked["src_vid_mask"][0].sum() == 20 and np.all(stacked["src_vid"][0, :, 10:] == 0)
    assert stacked["official_vid_len"][:, 0].tolist() == [10, 12, 10]  # unchanged
    # 'exact': one call per length pair; the other seeds' slots hold a member's batch.
    calls = seeds.step_calls(batches, "exact")
    assert [m.tolist() for m, _ in calls] == [[True, False, True], [False, True, False]]
    short, long = (b for _, b in calls)
    assert short["src_vid"].shape == (3, 2, 10, 3) and long["src_vid"].shape == (3, 2, 12, 3)
    assert short["src_vid"][:, 0, 0, 0].tolist() == [1.0, 1.0, 3.0]
    assert long["src_vid"][:, 0, 0, 0].tolist() == [2.0, 2.0, 2.0]


def test_masked_step_keeps_stopped_and_non_finite_seeds():
    def toy_step(state, batch, rng):
        loss = jnp.sum(batch["x"])  # NaN where the batch is
        new = {"w": state["w"] - 1.0, "step": state["step"] + 1}
        return new, {"loss": loss, "grad_norm": jnp.abs(loss)}

    state = {"w": jnp.zeros((4, 2)), "step": jnp.zeros(4, jnp.int32)}
    x = np.ones((4, 3), np.float32)
    x[2, 1] = np.nan
    running = jnp.array([True, True, True, False])
    member = jnp.array([True, False, True, True])
    rngs = jax.random.split(jax.random.key(0), 4)
    out, metrics, running_out = seeds.seeds_train_step(
        state, {"x": x}, rngs, running, member, train_step=toy_step
    )
    # seed 0 trains; 1 is not in this call; 2's loss is NaN: kept and stopped; 3 stopped.
    assert out["w"][:, 0].tolist() == [-1.0, 0.0, 0.0, 0.0]
    assert out["step"].tolist() == [1, 0, 0, 0]
    assert running_out.tolist() == [True, True, False, False]
    assert np.isnan(metrics["loss"][2]) and metrics["loss"][0] == 3.0


def test_seeds_loop_state_round_trip():
    loop = checkpointing.SeedsLoopState(
        epoch=1,
        batch_in_epoch=2,
        step=6,
        seeds=[3, 4],
        loops=[checkpointing.LoopState(step=6, seed=3, log_sums={"loss": 1.5}, log_count=1),
               checkpointing.LoopState(step=5, seed=4, best_score=2.0)],
        failed=[None, "loss became nan at step 6"],
    )  # fmt: skip
    back = checkpointing.SeedsLoopState.from_json(json.loads(json.dumps(loop.to_json())))
    assert back == loop
    assert back.state_steps() == [6, 5]
    assert checkpointing.LoopState(step=4).state_steps() == [4]


def test_dropout_masks_depend_on_the_padded_length():
    """Why ``seed_padding='exact'`` exists: the same key draws other masks for the real rows
    of a longer array, so a batch padded further than in its single run trains differently."""
    import flax.linen as nn

    drop = nn.Dropout(0.5)
    key = {"dropout": jax.random.key(0)}
    short = drop.apply({}, jnp.ones((2, 5, 3)), deterministic=False, rngs=key)
    long = drop.apply({}, jnp.ones((2, 7, 3)), deterministic=False, rngs=key)[:, :5]
    assert np.array_equal(short[0], long[0])  # the first row's positions coincide ...
    assert not np.array_equal(short[1], long[1])  # ... the second row's do not


def _model_batch(dtype):
    """A batch at its official lengths (12 clips, 6 tokens; sample 1's video and sample 0's
    text shorter), as the data pipeline gives it."""
    rng = np.random.default_rng(3)
    b, lv, lt = 2, 12, 6
    vmask = (np.arange(lv)[None] < np.array([[lv], [7]])).astype(dtype)
    tmask = (np.arange(lt)[None] < np.array([[4], [lt]])).astype(dtype)
    labels = rng.integers(0, 5, (b, lv)).astype(dtype) * vmask
    labels[:, 0] = 4
    spans = np.stack([rng.uniform(0.3, 0.7, (b, 2)), rng.uniform(0.1, 0.4, (b, 2))], -1)
    return {
        "src_txt": rng.normal(size=(b, lt, 4)).astype(dtype) * tmask[..., None],
        "src_txt_mask": tmask,
        "src_vid": rng.normal(size=(b, lv, 6)).astype(dtype) * vmask[..., None],
        "src_vid_mask": vmask,
        "span_labels": spans.astype(dtype),
        "span_mask": np.array([[1, 1], [1, 0]], dtype),
        "saliency_pos_labels": np.array([[0, 2], [0, 1]], np.int32),
        "saliency_neg_labels": np.array([[5, 9], [6, 3]], np.int32),
        "saliency_all_labels": labels,
        "src_pos_mask": (labels > 1).astype(dtype),
        "official_vid_len": np.full((b,), lv, np.int32),
        "official_txt_len": np.full((b,), lt, np.int32),
    }


@pytest.mark.slow  # ~50 s of CPU: two compiled loss gradients per mode
@pytest.mark.parametrize("compat", ["official", "fixed"])
def test_padding_to_a_larger_bucket_changes_no_loss_or_gradient(compat):
    """'common' padding (a seed's batch padded further than in its single run) leaves the
    forward pass, the losses and the gradients as they are in both modes, given the official
    lengths the pipeline puts in every batch (float64, to 1e-12): only dropout differs."""
    from trdetr_jax import objective
    from trdetr_jax.model import TRDETR, model_inputs

    tiny = dict(hidden_dim=16, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=16)
    with jax.enable_x64(True):
        model = TRDETR(**tiny, num_queries=4, max_q_l=16, compat=compat, param_dtype=jnp.float64)
        batch = _model_batch(np.float64)
        params = model.init(jax.random.key(0), **model_inputs(batch), train=False)["params"]

        def total(p, b):
            return objective.loss_fn(p, model, b, train=False)

        grad_fn = jax.jit(jax.value_and_grad(total, has_aux=True))
        (v0, (terms0, out0)), g0 = grad_fn(params, batch)
        (v1, (terms1, out1)), g1 = grad_fn(params, seeds.pad_batch(batch, 32, 16))
    assert float(v0) > 0 and abs(float(v1) - float(v0)) < 1e-12
    for k, v in terms0.items():
        assert abs(float(terms1[k]) - float(v)) < 1e-12, k
    for k in ("pred_logits", "pred_spans"):
        np.testing.assert_allclose(out1[k], out0[k], rtol=0, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(out1["saliency_scores"][:, :12], out0["saliency_scores"], atol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-12), g1, g0)
    assert max(float(np.max(np.abs(g))) for g in jax.tree.leaves(g0)) > 1e-3


# --------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("seeds")
    enable_compilation_cache(path / "xla")
    yield path
    enable_compilation_cache(None)


def run_config(cache_dir, **train_fields):
    """The trainer tests' tiny run (8 steps, checkpoints every 3, evaluation after each
    epoch) with three video buckets, so that the seeds' batches of steps 1, 5 and 8 fall in
    different buckets (checked in the tests)."""
    config = tiny_config(cache_dir / "demo")
    config.data.video_buckets = (10, 11)
    config.train.log_every_steps = 5
    for k, v in train_fields.items():
        config.train[k] = v
    return config


def saved(ckpt_dir):
    """(state, loop JSON) of the latest checkpoint in ``ckpt_dir``."""
    ckpt = checkpointing.RunCheckpoints(ckpt_dir, read_only=True)
    restored = ckpt.manager.restore(
        ckpt.latest_step(),
        args=ocp.args.Composite(state=ocp.args.StandardRestore(), loop=ocp.args.JsonRestore()),
    )
    ckpt.close()
    return restored["state"], restored["loop"]


def records(workdir, seed=None):
    """metrics.jsonl without wall-clock fields; with ``seed``: that seed's, without the key."""
    out = []
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("steps_per_sec", None)
        if seed is None or record.pop("seed", None) == seed:
            out.append(record)
    return out


def preds(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(cache_dir):
    """``{n_devices: (K-seed workdir, its summary, {seed: single workdir})}``, made lazily."""
    made = {}

    def get(n_dev):
        if n_dev not in made:
            devices = jax.devices()[:n_dev]
            multi = cache_dir / f"multi_{n_dev}"
            summary = train.train_and_evaluate(
                run_config(cache_dir, num_seeds=3), str(multi), devices=devices
            )
            singles = {}
            for s in SEEDS:
                config = run_config(cache_dir)
                config.seed = s
                singles[s] = cache_dir / f"single_{n_dev}_{s}"
                train.train_and_evaluate(config, str(singles[s]), devices=devices)
            made[n_dev] = (multi, summary, singles)
        return made[n_dev]

    return get


# Parameters whose gradient is zero in exact arithmetic get rounding noise only, which AdamW
# turns into steps of up to lr each way (see test_train.py's device-count test).
NOISE_ONLY = ("k_proj", "kcontent_proj", "kpos_proj", "saliency_proj", "layer_0/sa_")


@pytest.mark.slow
@pytest.mark.parametrize("n_dev", [4, 1])
def test_each_seed_ends_as_its_single_run(runs, cache_dir, n_dev):
    multi, summary, singles = runs(n_dev)
    # The seeds' batches do fall in different buckets (the 'exact' calls are exercised).
    config, train_ds, _ = data.load_datasets(run_config(cache_dir))
    lengths = [
        [
            seeds.batch_lengths(b)
            for b, _ in data.train_batches(train_ds, 4, seed=s, epoch=0, start_step=0)
        ]
        for s in SEEDS
    ]
    assert any(len({x[i] for x in lengths}) > 1 for i in range(len(lengths[0])))
    assert summary["seeds"] == list(SEEDS) and summary["finished"] == list(SEEDS)
    lr, n_steps = float(config.optim.lr), summary["steps"]
    finals = {}
    for s in SEEDS:
        seed_dir = multi / f"seed_{s}"
        single = singles[s]
        state_m, loop_m = saved(seed_dir / "checkpoints")
        state_1, loop_1 = saved(single / "checkpoints")
        finals[s] = state_1["params"]

        def close(path, a, b, s=s):
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            noise = any(p in name for p in NOISE_ONLY) and name.endswith("bias")
            atol = 2 * lr * n_steps if noise else 1e-3
            np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), atol=atol, err_msg=f"{s} {name}"
            )

        jax.tree_util.tree_map_with_path(close, state_m["params"], state_1["params"])
        for loop in (loop_m, loop_1):
            loop.pop("wall_time_s")
        assert loop_m == loop_1, s  # best step / score / brief, epochs, early-stop counter
        got, want = records(multi, s), records(single)
        assert [(r["type"], r["step"]) for r in got] == [(r["type"], r["step"]) for r in want]
        for a, b in zip(got, want):
            if a["type"] == "eval":
                assert a == b, (s, a, b)
            else:
                assert a.keys() == b.keys()
                for k, v in b.items():
                    if isinstance(v, float):
                        np.testing.assert_allclose(a[k], v, rtol=5e-4, err_msg=f"{s} {k}")
                    else:
                        assert a[k] == v, (s, k)
        name = "best_val_preds.jsonl"
        for a, b in zip(preds(seed_dir / name), preds(single / name)):
            assert a["qid"] == b["qid"]
            np.testing.assert_allclose(
                a["pred_relevant_windows"], b["pred_relevant_windows"], atol=1e-3
            )
            np.testing.assert_allclose(
                a["pred_saliency_scores"], b["pred_saliency_scores"], atol=1e-3
            )
        metrics = json.loads((seed_dir / "best_val_preds_metrics.json").read_text())
        assert (
            metrics["brief"]
            == json.loads((single / "best_val_preds_metrics.json").read_text())["brief"]
        )
        per_seed = next(r for r in summary["per_seed"] if r["seed"] == s)
        assert per_seed["best_brief"] == loop_1["best_brief"]
    # The tolerance above is far below how much the seeds differ from each other.
    a, b = (np.asarray(finals[s]["input_vid_proj"]["layer_0_dense"]["kernel"]) for s in SEEDS[:2])
    assert np.max(np.abs(a - b)) > 0.05
    # summary.json: mean ± std of the per-seed best briefs
    for name, agg in summary["over_seeds"].items():
        values = [r["best_brief"][name] for r in summary["per_seed"]]
        if all(v is None for v in values):
            assert agg == {"mean": None, "std": None, "n": 0}
        else:
            assert agg["mean"] == pytest.approx(np.mean(values)) and agg["n"] == 3
            assert agg["std"] == pytest.approx(np.std(values, ddof=1))
    assert json.loads((multi / "summary.json").read_text())["over_seeds"] == summary["over_seeds"]


@pytest.mark.slow
def test_seed_workdirs_are_read_as_single_runs(runs):
    from trdetr_jax import Predictor, predict

    multi, summary, _ = runs(4)
    seed_dir = multi / "seed_2018"
    config = json.loads((seed_dir / "config.json").read_text())
    assert config["seed"] == 2018 and config["train"]["num_seeds"] == 1
    assert config["train"]["seeds"] == []
    rows = predict.predict_rows(seed_dir, config["data"]["eval_path"])
    assert json.loads(json.dumps(rows)) == preds(seed_dir / "best_val_preds.jsonl")
    assert Predictor.load(seed_dir).config.seed == 2018
    # The K-seed workdir itself names its seeds' workdirs instead of misreading its stack.
    with pytest.raises(train.RunError, match=r"run of 3 seeds .*seed_2017"):
        predict.predict_rows(multi, config["data"]["eval_path"])


@pytest.mark.slow
def test_evaluate_prints_mean_and_std_over_seed_files(runs, capsys):
    multi, summary, _ = runs(4)
    gt = json.loads((multi / "config.json").read_text())["data"]["eval_path"]
    files = [str(multi / f"seed_{s}" / "best_val_preds.jsonl") for s in SEEDS]
    assert evaluate.run(["--submission", *files, "--gt", gt]) == 0
    by_files = capsys.readouterr().out
    assert evaluate.run(["--checkpoint", str(multi), "--gt", gt]) == 0
    by_run = capsys.readouterr().out
    for text in (by_files, by_run):
        assert "mean ± std over 3" in text
        for name, agg in summary["over_seeds"].items():
            if agg["mean"] is not None:
                line = [x for x in text.splitlines() if x.split()[:1] == [name]][-1]  # table
                assert runlog.fmt_mean_std(agg["mean"], agg["std"]) in line, (name, line)


def interrupt_at(monkeypatch, call: int):
    """The next run raises when seed 2017's ``call``-th training batch is loaded."""
    batches, count = data.train_batches, [0]

    class Interrupt(Exception):
        pass

    def interrupted(*args, seed, **kwargs):
        for batch in batches(*args, seed=seed, **kwargs):
            if seed == SEEDS[0]:
                count[0] += 1
                if count[0] == call:
                    raise Interrupt(f"interrupted at batch {call}")
            yield batch

    monkeypatch.setattr(data, "train_batches", interrupted)
    monkeypatch.setattr(data.batching, "train_batches", interrupted)  # the loop reads it there
    return Interrupt


@pytest.mark.slow
def test_interrupted_seeds_resume_bit_identically(runs, cache_dir, tmp_path, monkeypatch):
    multi, summary, _ = runs(4)
    workdir = tmp_path / "run"
    error = interrupt_at(monkeypatch, 8)  # steps 1..7 run; checkpoint of step 6 is the last
    with pytest.raises(error):
        train.train_and_evaluate(run_config(cache_dir, num_seeds=3), str(workdir))
    monkeypatch.undo()
    _, loop = saved(workdir / "checkpoints")
    assert loop["step"] == 6 and [x["step"] for x in loop["loops"]] == [6, 6, 6]
    again = train.train_and_evaluate(run_config(cache_dir, num_seeds=3), str(workdir))
    assert "from step 6 " in (workdir / "train.log").read_text()
    assert again["over_seeds"] == summary["over_seeds"]
    state_a, loop_a = saved(multi / "checkpoints")
    state_b, loop_b = saved(workdir / "checkpoints")
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)  # bit for bit
    for loop in (loop_a, loop_b):
        loop.pop("wall_time_s")
        for x in loop["loops"]:
            x.pop("wall_time_s")
    assert loop_a == loop_b
    assert records(multi) == records(workdir)
    for s in SEEDS:
        name = f"seed_{s}/best_val_preds.jsonl"
        assert (multi / name).read_text() == (workdir / name).read_text()
        ckpt_a = checkpointing.RunCheckpoints(multi / f"seed_{s}/checkpoints", read_only=True)
        ckpt_b = checkpointing.RunCheckpoints(workdir / f"seed_{s}/checkpoints", read_only=True)
        assert ckpt_a.manager.all_steps() == ckpt_b.manager.all_steps()
        ckpt_a.close(), ckpt_b.close()


@pytest.mark.slow
def test_a_non_finite_seed_stops_and_the_others_go_on(runs, cache_dir, tmp_path, monkeypatch):
    multi, summary, _ = runs(4)
    batches = data.train_batches

    def poisoned(ds, batch_size, *, seed, epoch, start_step):
        for i, (batch, metas) in enumerate(
            batches(ds, batch_size, seed=seed, epoch=epoch, start_step=start_step)
        ):
            if seed == 2018 and epoch == 1 and start_step + i == 1:  # step 6
                batch = dict(batch, src_vid=np.full_like(batch["src_vid"], np.nan))
            yield batch, metas

    monkeypatch.setattr(data, "train_batches", poisoned)
    monkeypatch.setattr(data.batching, "train_batches", poisoned)  # the loop reads it there
    workdir = tmp_path / "run"
    result = train.train_and_evaluate(run_config(cache_dir, num_seeds=3), str(workdir))
    assert result["non_finite"] == [2018] and result["finished"] == [2017, 2019]
    row = next(r for r in result["per_seed"] if r["seed"] == 2018)
    assert row["status"] == "non-finite" and "at step 6" in row["reason"]
    assert row["steps"] == 5 and row["best_step"] == 4  # its evaluation after epoch 1 holds
    # Its last good state, in its own workdir: the state after step 5, finite.
    state, loop = saved(workdir / "seed_2018" / "checkpoints")
    assert loop["step"] == 5 and int(state["step"]) == 5
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))
    # In the stack too (masked from step 6 on), and the other seeds are untouched by it.
    stacked, _ = saved(workdir / "checkpoints")
    clean, _ = saved(multi / "checkpoints")
    assert np.asarray(stacked["step"]).tolist() == [8, 5, 8]
    for k in (0, 2):
        jax.tree.map(
            lambda a, b, k=k: np.testing.assert_array_equal(a[k], b[k]),
            stacked["params"],
            clean["params"],
        )
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(a[1], b), stacked["params"], state["params"]
    )
    for s in (2017, 2019):
        assert records(workdir, s) == records(multi, s)
    stopped = [r for r in records(workdir) if r["type"] == "stopped"]
    assert [(r["seed"], r["step"]) for r in stopped] == [(2018, 6)]
    assert "non-finite" in (workdir / "summary.json").read_text()
