"""Training-step throughput at the QVHighlights shapes, on whatever device JAX finds.

    python experiments/benchmark.py                 # batch 32, 75 clips, 32 tokens, 2818-d video
    python experiments/benchmark.py --steps 50 --devices 1
    python experiments/benchmark.py --cpu-devices 4   # data parallel over 4 CPU "devices"

Uses the real model, losses (host matcher included) and optimiser of the QVHighlights
config (hidden 256, 2 encoder / 2 decoder layers, FFN 1024, 10 queries) on synthetic
batches with valid targets, through the same jitted, sharded step as training. Prints one
JSON line: compile time, steps/s, examples/s, peak memory. Not a test: nothing is asserted.

With ``--config`` the batches come from the data pipeline instead, on generated features of
the dataset's length distribution (TVSum: 50-320 clips; Charades: 10-190 s videos at the
config's clip length; QVHighlights: mostly 75 clips), and the step is timed twice, padding
to the length buckets and to the maxima, one JSON line each::

    python experiments/benchmark.py --config configs/tvsum_i3d.py --steps 8
    python experiments/benchmark.py --config configs/charades_i3d.py --steps 8

``--profile DIR`` times the pieces of the step separately (forward, matcher, losses,
backward, optimiser, eval forward), prints them with the XLA cost analysis of each compiled
piece, and writes a ``jax.profiler`` trace of a few steps to DIR. ``--pipeline`` times the
real training loop (``train.train_and_evaluate``) on a generated QVHighlights-shaped
dataset against the bare step. ``--dropout-prng`` and ``--xla-flags`` are the A/B
switches of experiments/PROFILE.md::

    python experiments/benchmark.py --steps 10 --warmup 2 --profile /tmp/trdetr_profile
    python experiments/benchmark.py --steps 10 --warmup 2 --dropout-prng key   # A/B
    python experiments/benchmark.py --pipeline --steps 10

With ``--seeds 1,2,4,8`` the step of a run of several seeds (trdetr_jax/seeds.py: K models,
one vmapped step) is timed for each K, after the single-seed step; one JSON line each, with
examples/s per model and the step time relative to the single-seed step::

    python experiments/benchmark.py --seeds 1,2,4,8 --steps 10
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import pathlib
import resource
import sys
import tempfile
import time

import jax
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trdetr_jax import data as data_lib  # noqa: E402
from trdetr_jax import losses, objective, optim, precision, train  # noqa: E402
from trdetr_jax import mesh as mesh_lib  # noqa: E402
from trdetr_jax.config import get_base_config  # noqa: E402
from trdetr_jax.data import synthetic  # noqa: E402
from trdetr_jax.model import TRDETR, model_inputs, model_kwargs_from_config  # noqa: E402

# --dropout-prng: "key" draws the masks from the step's own key (threefry2x32); without the
# flag the config's train.dropout_prng ('' by default: the step key) is used.
DROPOUT_PRNGS = ("threefry4x32", "philox4x32", "philox2x32", "rbg", "unsafe_rbg", "key")


def synthetic_batch(config, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A QVHighlights-shaped batch: random features, random lengths, consistent targets."""
    d = config.data
    lv, lq, w = d.max_v_l, d.max_q_l, d.max_windows
    dv = sum(d.v_feat_dims) + (2 if d.use_tef else 0)
    vid_len = rng.integers(lv // 2, lv + 1, batch_size)  # [B]
    txt_len = rng.integers(8, lq + 1, batch_size)  # [B]
    vid_mask = (np.arange(lv)[None] < vid_len[:, None]).astype(np.float32)  # [B, Lv]
    txt_mask = (np.arange(lq)[None] < txt_len[:, None]).astype(np.float32)  # [B, Lq]
    centers = rng.uniform(0.2, 0.8, batch_size)
    widths = rng.uniform(0.05, 0.3, batch_size)
    span_labels = np.zeros((batch_size, w, 2), np.float32)
    span_labels[:, 0] = np.stack([centers, widths], -1)
    span_mask = np.zeros((batch_size, w), np.float32)
    span_mask[:, 0] = 1.0
    clip = np.arange(lv)[None] / vid_len[:, None]  # [B, Lv] clip position in [0, 1)
    inside = (np.abs(clip - centers[:, None]) < widths[:, None] / 2) * vid_mask
    inside[np.arange(batch_size), (centers * vid_len).astype(int)] = 1.0  # >= 1 positive
    pos = np.stack([np.flatnonzero(r)[[0, -1]] for r in inside]).astype(np.int32)  # [B, 2]
    neg = np.stack([np.flatnonzero((1 - r) * m)[[0, -1]] for r, m in zip(inside, vid_mask)]).astype(
        np.int32
    )
    return {
        "src_txt": (
            rng.standard_normal((batch_size, lq, d.t_feat_dim)) * txt_mask[..., None]
        ).astype(np.float32),
        "src_txt_mask": txt_mask,
        "src_vid": (rng.standard_normal((batch_size, lv, dv)) * vid_mask[..., None]).astype(
            np.float32
        ),
        "src_vid_mask": vid_mask,
        "span_labels": span_labels,
        "span_mask": span_mask,
        "saliency_pos_labels": pos,
        "saliency_neg_labels": neg,
        "saliency_all_labels": (inside * rng.uniform(1, 4, inside.shape)).astype(np.float32),
        "src_pos_mask": inside.astype(np.float32),
        "example_mask": np.ones(batch_size, np.float32),
    }


def peak_memory_bytes() -> dict[str, int | None]:
    stats = jax.local_devices()[0].memory_stats() or {}
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"device_peak_bytes": stats.get("peak_bytes_in_use"), "host_peak_rss_bytes": host}


def load_config(arg: str):
    """``configs/x.py[:options]`` -> its ``get_config(options)``."""
    path, _, opts = arg.partition(":")
    spec = importlib.util.spec_from_file_location("benchmark_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(opts or None)


def example_lengths(config, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-example clips and tokens as the config's dataset has them (approximately)."""
    d = config.data
    if d.dataset == "tvsum":
        video = rng.integers(50, 321, n)  # TVSum videos: ~50-320 clips
    elif d.dataset == "charades":
        video = np.ceil(rng.uniform(10, 190, n) / d.clip_length).astype(int)  # 10-190 s
    else:  # QVHighlights: 150 s videos (75 clips of 2 s), a few shorter
        video = np.where(rng.random(n) < 0.9, 75, rng.integers(30, 76, n))
    text = rng.integers(4, 21, n)  # queries of 4-20 tokens
    return np.minimum(video, d.max_v_l), np.minimum(text, d.max_q_l)


def bench_config(args) -> None:
    """Step time on pipeline batches of generated data, with and without length buckets."""
    base = load_config(args.config)
    base.model.dtype = args.dtype
    base.model.matmul_precision = args.precision
    base.train.matcher = args.matcher
    batch_size = args.batch_size or base.train.batch_size
    base.train.batch_size = batch_size
    devices = jax.devices()[: args.devices] if args.devices else jax.devices()
    mesh = mesh_lib.make_mesh(devices)
    mesh_lib.check_batch_size(batch_size, mesh, "--batch-size")
    rng = np.random.default_rng(0)
    video, text = example_lengths(base, args.examples, rng)
    with tempfile.TemporaryDirectory() as root:
        base = synthetic.write_dataset(base, root, video, text, num_eval=1)
        for buckets in (True, False):
            config = base.copy_and_resolve_references()
            config.data.length_buckets = buckets
            config.data.preload = True
            print(json.dumps(time_pipeline(config, mesh, batch_size, args)), flush=True)


def time_pipeline(config, mesh, batch_size: int, args) -> dict:
    config, train_ds, _ = data_lib.load_datasets(config)
    n_steps = data_lib.steps_per_epoch(len(train_ds), batch_size)
    steps = train.cached_steps(config, mesh, n_steps, data_lib.abstract_batch(train_ds, batch_size))
    host = [b for b, _ in data_lib.train_batches(train_ds, batch_size, seed=config.seed, epoch=0)]
    host = [host[i % len(host)] for i in range(args.steps)]
    batches = [mesh_lib.device_batch(b, steps.batch_sharding) for b in host]
    state = steps.init(jax.random.key(0))
    dropout_rng = jax.random.key(1)
    t0 = time.perf_counter()
    shapes = {}
    for b in batches:  # compile every bucket shape once, untimed
        shape = (b["src_vid"].shape[1], b["src_txt"].shape[1])
        if shape not in shapes:
            state, metrics = steps.train(state, b, dropout_rng)
            jax.block_until_ready(metrics)
            shapes[shape] = 0
        shapes[shape] += 1
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in batches:
        state, metrics = steps.train(state, b, dropout_rng)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - t0
    devices = mesh.devices.flat
    first = next(iter(devices))
    return {
        "config": args.config,
        "length_buckets": bool(config.data.length_buckets),
        "device": f"{first.platform}:{first.device_kind}",
        "num_devices": mesh.devices.size,
        "batch_size": batch_size,
        "max_v_l": config.data.max_v_l,
        "max_q_l": config.data.max_q_l,
        "video_buckets": list(train_ds.buckets.video),
        "text_buckets": list(train_ds.buckets.text),
        "timed_batches_per_shape": {f"{v}x{t}": n for (v, t), n in sorted(shapes.items())},
        "train_batches_per_bucket": {
            f"{v}x{t}": n
            for (v, t), n in data_lib.bucket_counts(
                train_ds, batch_size, epoch=0, seed=config.seed
            ).items()
        },
        "mean_padded_video_len": float(np.mean([b["src_vid"].shape[1] for b in host])),
        "mean_official_video_len": float(np.mean([b["official_vid_len"][0] for b in host])),
        "compile_s": round(compile_s, 2),
        "steps": args.steps,
        "step_s": round(elapsed / args.steps, 4),
        "examples_per_s": round(args.steps * batch_size / elapsed, 1),
        **peak_memory_bytes(),
    }


def with_dropout_prng(loss_fn, name: str):
    """``loss_fn`` drawing its dropout masks from ``name`` (see :data:`DROPOUT_PRNGS`)."""
    return functools.partial(loss_fn, dropout_prng=None if name == "key" else name)


def median_ms(fn, *args, runs: int, warmup: int = 1) -> float:
    """Median wall time of ``fn(*args)`` in ms, results ready, after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(1e3 * (time.perf_counter() - t0))
    return round(float(np.median(times)), 1)


def cost(compiled) -> dict[str, float | None]:
    """GFLOP and GB accessed of a compiled computation (XLA's cost analysis)."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else (analysis or {})
    flops, accessed = analysis.get("flops"), analysis.get("bytes accessed")
    return {
        "gflop": None if flops is None else round(flops / 1e9, 2),
        "gbytes": None if accessed is None else round(accessed / 1e9, 2),
    }


def profile_step(args, config, steps, state, batch, dropout_rng, loss_fn, tx) -> dict:
    """Per-phase times of the train step, each phase jitted on its own (median ms).

    forward: the training forward pass (dropout on); matcher: the cost matrices and the
    assignment (host callback or device solver) on fixed outputs; loss: the loss terms on
    fixed outputs and matches; forward+loss: the objective's value; grad: its value and
    gradient; optimizer: clipping + AdamW on fixed gradients; step: the jitted train step.
    backward is grad - (forward+loss). The pieces are compiled separately, so XLA cannot
    share work between them: the sum can exceed the step.
    """
    model = TRDETR(**model_kwargs_from_config(config))
    loss_cfg = losses.LossConfig.from_config(config)
    params = state.params
    key = jax.random.fold_in(dropout_rng, 0)

    def forward(p, b, k):
        rngs = {
            "dropout": objective.dropout_key(
                k, loss_fn.keywords.get("dropout_prng", objective.DROPOUT_PRNG)
            )
        }
        return model.apply({"params": p}, **model_inputs(b), train=True, rngs=rngs)

    def match(outputs, b):
        return objective.match_outputs(outputs, b, loss_cfg, mesh=steps.mesh)

    def loss_terms(outputs, b, matches):
        return losses.compute_losses(outputs, b, matches, loss_cfg)[0]

    def value(p, b, k):
        return loss_fn(p, model, b, train=True, dropout_rng=k)[0]

    def optimize(p, o, g):
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o

    def evaluate(p, b):
        return model.apply({"params": p}, **model_inputs(b), train=False)

    def jit(fn, *example):
        with precision.matmul_precision(args.precision):
            return jax.jit(fn).lower(*example).compile()

    runs = max(args.steps, 3)
    pieces, phases = {}, {}
    compiled = jit(forward, params, batch, key)
    outputs = compiled(params, batch, key)
    pieces["forward"] = (compiled, (params, batch, key))
    compiled = jit(match, outputs, batch)
    matches = compiled(outputs, batch)
    pieces["matcher"] = (compiled, (outputs, batch))
    pieces["loss"] = (jit(loss_terms, outputs, batch, matches), (outputs, batch, matches))
    pieces["forward+loss"] = (jit(value, params, batch, key), (params, batch, key))
    grad_fn = jax.value_and_grad(value)
    compiled = jit(grad_fn, params, batch, key)
    grads = compiled(params, batch, key)[1]
    pieces["grad"] = (compiled, (params, batch, key))
    pieces["optimizer"] = (
        jit(optimize, params, state.opt_state, grads),
        (params, state.opt_state, grads),
    )
    pieces["eval_forward"] = (jit(evaluate, params, batch), (params, batch))
    for name, (fn, example) in pieces.items():
        phases[name] = {"ms": median_ms(fn, *example, runs=runs), **cost(fn)}
    # the real step (donates its state: feed it back)
    step = steps.train.lower(state, batch, dropout_rng).compile()
    phases["step"] = cost(step)
    times = []
    for i in range(args.warmup + runs):
        t0 = time.perf_counter()
        state, metrics = step(state, batch, dropout_rng)
        jax.block_until_ready((state, metrics))
        if i >= args.warmup:
            times.append(1e3 * (time.perf_counter() - t0))
    phases["step"]["ms"] = round(float(np.median(times)), 1)
    phases["backward"] = {"ms": round(phases["grad"]["ms"] - phases["forward+loss"]["ms"], 1)}
    # the host side of the matcher: the assignment itself, on the step's cost matrices
    phases["matcher_host"] = {"ms": host_matcher_ms(outputs, batch, loss_cfg, runs)}

    trace_dir = pathlib.Path(args.profile)
    trace_dir.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(trace_dir)):
        for _ in range(3):
            state, metrics = step(state, batch, dropout_rng)
        jax.block_until_ready((state, metrics))
        jax.block_until_ready(pieces["eval_forward"][0](state.params, batch))
    found = {"trace_dir": str(trace_dir), "load_avg_1m": round(os.getloadavg()[0], 2)}
    found["trace_ops_ms"] = trace_op_kinds(trace_dir)
    print_phases(phases)
    return {"phases": phases, **found}


def trace_op_kinds(trace_dir: pathlib.Path, top: int = 12) -> dict[str, float]:
    """Thread time (ms) per XLA op kind in the newest trace under ``trace_dir`` (3 train
    steps and one eval forward): ``ynn_fusion`` / ``dot`` are the matrix products,
    ``copy_*`` / ``transpose_*`` layout copies, the other fusions elementwise work. Events of
    the thread pool overlap, so the sum exceeds the wall time."""
    import collections
    import gzip
    import re

    found = sorted(trace_dir.glob("plugins/profile/*/*.trace.json.gz"))
    if not found:
        return {}
    events = json.loads(gzip.decompress(found[-1].read_bytes()))["traceEvents"]
    runtime = ("ThunkExecutor", "SlinkyThreadPool", "$", "ExecuteReplicated", "CommonPjRt")
    kinds = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(runtime):
            kinds[re.sub(r"\.\d+$", "", e["name"])] += e.get("dur", 0)
    return {k: round(v / 1e3, 1) for k, v in kinds.most_common(top)}


def host_matcher_ms(outputs, batch, loss_cfg, runs: int) -> float | None:
    """Median ms of the host assignment (scipy) alone on this step's cost matrices."""
    from trdetr_jax import matcher

    layers = [(outputs["pred_logits"], outputs["pred_spans"])]
    layers += [(a["pred_logits"], a["pred_spans"]) for a in outputs.get("aux_outputs", ())]
    cost_kw = dict(
        cost_span=loss_cfg.set_cost_span,
        cost_giou=loss_cfg.set_cost_giou,
        cost_class=loss_cfg.set_cost_class,
    )
    costs = np.stack(
        [
            np.asarray(
                matcher.match_cost(lg, sp, batch["span_labels"], batch["span_mask"], **cost_kw)
            )
            for lg, sp in layers
        ]
    )  # [n_layers, B, nq, W]
    mask = np.broadcast_to(
        np.asarray(batch["span_mask"])[None], (len(layers),) + batch["span_mask"].shape
    )
    return median_ms(lambda: matcher._assign_host(costs, mask), runs=runs, warmup=1)


def print_phases(phases: dict) -> None:
    print(f"{'phase':<14}{'ms':>9}{'GFLOP':>9}{'GB':>8}{'GFLOP/s':>9}", file=sys.stderr)
    for name, p in phases.items():
        flops = p.get("gflop")
        rate = round(flops / p["ms"] * 1e3, 1) if flops and p["ms"] > 0 else ""
        print(
            f"{name:<14}{p['ms']:>9}{flops if flops is not None else '':>9}"
            f"{p.get('gbytes') if p.get('gbytes') is not None else '':>8}{rate:>9}",
            file=sys.stderr,
        )


def bench_pipeline(args) -> None:
    """Steps/s of ``train.train_and_evaluate`` on a generated QVHighlights-shaped dataset
    (one epoch of ``--warmup + --steps`` batches, then a one-example evaluation), against
    the bare jitted step on the same pipeline batches (:func:`time_pipeline`).

    The loop's rate is the steps after the warm-up over the time their ``steps_per_sec``
    records span, so compilation and evaluation are left out. ``--set KEY=VALUE`` overrides
    the config (``data.features_on_device=on``, ``train.steps_per_dispatch=4``).
    """
    config = get_base_config()
    config.model.dtype = args.dtype
    config.model.matmul_precision = args.precision
    config.train.matcher = args.matcher
    batch_size = args.batch_size
    config.train.batch_size = batch_size
    config.train.num_epochs = 1
    config.train.eval_every_epochs = 1
    config.train.log_every_steps = 1
    config.train.checkpoint_every_steps = 10**9
    config.train.eval_batch_size = 1
    from trdetr_jax.predict import apply_overrides

    if args.dropout_prng:
        config.train.dropout_prng = "" if args.dropout_prng == "key" else args.dropout_prng
    apply_overrides(config, args.set)  # e.g. data.features_on_device=on
    rng = np.random.default_rng(0)
    n_train = batch_size * (args.steps + args.warmup)
    video, text = example_lengths(config, n_train + 1, rng)
    with tempfile.TemporaryDirectory() as root:
        config = synthetic.write_dataset(config, root, video, text, num_eval=1)
        config.data.preload = True
        t0 = time.perf_counter()
        summary = train.train_and_evaluate(config, str(pathlib.Path(root) / "run"))
        wall = time.perf_counter() - t0
        metrics_file = pathlib.Path(root) / "run" / "metrics.jsonl"
        records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
        log = (pathlib.Path(root) / "run" / "train.log").read_text()
        resident = [x.split("features on the device: ")[1] for x in log.splitlines()
                    if "features on the device: " in x]  # fmt: skip
        bare = time_pipeline(config, mesh_lib.make_mesh(), batch_size, args)  # cached steps
    rates = [
        r["steps_per_sec"]
        for r in records
        if r.get("type") == "train" and args.warmup < r["step"] < summary["steps"]
    ]
    # Steps over the time they took (each record spans the steps since the previous one:
    # one, or none for all but the first step of a chunk).
    loop = len(rates) / sum(1.0 / r for r in rates) if rates else None
    print(
        json.dumps(
            {
                "mode": "pipeline",
                "set": args.set,
                "dropout_prng": config.train.dropout_prng or "key",
                "features_on_device": resident[-1] if resident else None,
                "batch_size": batch_size,
                "steps": summary["steps"],
                "wall_s": round(wall, 1),
                "loop_steps_per_s": None if loop is None else round(loop, 3),
                "bare_step_steps_per_s": round(1.0 / bare["step_s"], 3),
                "loop_over_bare": None if loop is None else round(loop * bare["step_s"], 3),
                "mean_padded_video_len": bare["mean_padded_video_len"],
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
        ),
        flush=True,
    )


def bench_seeds(args, config, mesh, steps, device_batches, single_step_s: float) -> None:
    """``--seeds``: the K-seed step at the single step's shapes, one JSON line per K."""
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from trdetr_jax import precision, seeds

    steps_per_epoch = 7293 // args.batch_size
    train_fn = seeds.build_seeds_train_step(
        mesh, train.step_of_config(config, mesh, steps_per_epoch), precision.of_config(config)
    )
    replicated = NamedSharding(mesh, P())
    stacked = NamedSharding(mesh, P(None, "data"))
    for k in (int(x) for x in args.seeds.split(",")):
        state = jax.jit(lambda *xs: seeds.stack(xs), out_shardings=replicated)(
            *[steps.init(jax.random.key(i)) for i in range(k)]
        )
        rngs = jax.device_put(jax.random.split(jax.random.key(1), k), replicated)
        flags = jax.device_put(jnp.ones(k, bool), replicated)
        batches = [
            jax.device_put(jax.tree.map(lambda x, k=k: jnp.stack([x] * k), b), stacked)
            for b in device_batches
        ]
        t0 = time.perf_counter()
        compiled = train_fn.lower(state, batches[0], rngs, flags, flags).compile()
        compile_s = time.perf_counter() - t0
        running = flags
        for i in range(args.warmup):
            state, metrics, running = compiled(state, batches[i % 4], rngs, running, flags)
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for i in range(args.steps):
            state, metrics, running = compiled(state, batches[i % 4], rngs, running, flags)
        jax.block_until_ready((state, metrics))
        step_s = (time.perf_counter() - t0) / args.steps
        device = jax.devices()[0]
        result = {
            "device": f"{device.platform}:{device.device_kind}",
            "num_devices": mesh.devices.size,
            "seeds": k,
            "batch_size": args.batch_size,
            "compile_s": round(compile_s, 2),
            "step_s": round(step_s, 4),
            "time_vs_one_seed_step": round(step_s / single_step_s, 3),
            "examples_per_s_per_model": round(args.batch_size / step_s, 1),
            "examples_per_s_all_models": round(k * args.batch_size / step_s, 1),
            "all_finite": bool(np.all(np.asarray(running))),
            **peak_memory_bytes(),
        }
        print(json.dumps(result), flush=True)
        del state, batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=None, help="global batch (default 32, "
                   "or the config's)")  # fmt: skip
    p.add_argument("--config", default=None, help="a configs/*.py[:opts]: time pipeline batches")
    p.add_argument("--examples", type=int, default=48, help="generated examples (--config)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    p.add_argument("--devices", type=int, default=None, help="use the first N devices")
    p.add_argument("--dtype", default="float32", help="model compute dtype (bfloat16 ...)")
    p.add_argument("--matcher", default="scipy", choices=("scipy", "device"), help="assignment")
    p.add_argument("--precision", default="highest", help="config.model.matmul_precision")
    p.add_argument("--eval", action="store_true", help="also time the eval forward (median ms)")
    p.add_argument(
        "--cpu-devices", type=int, default=None, help="split the CPU into N devices (data parallel)"
    )
    p.add_argument("--profile", metavar="DIR", default=None, help="per-phase times and cost "
                   "analysis; a jax.profiler trace to DIR")  # fmt: skip
    p.add_argument("--pipeline", action="store_true", help="time train.train_and_evaluate on "
                   "a generated dataset (batch 32: --steps + --warmup batches)")  # fmt: skip
    p.add_argument("--dropout-prng", default=None, choices=DROPOUT_PRNGS,
                   help="bit generator of the dropout masks ('key': the step's own key; "
                   "default: config.train.dropout_prng)")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="--pipeline: a config override, e.g. train.steps_per_dispatch=4")  # fmt: skip
    p.add_argument(
        "--xla-flags",
        default="",
        help="appended to XLA_FLAGS (before JAX starts); write --xla-flags=--flag=value",
    )
    p.add_argument("--seeds", default=None, help="e.g. 1,2,4,8: time the K-seed step per K")
    args = p.parse_args()
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before any backend use
    if args.config:
        return bench_config(args)
    args.batch_size = args.batch_size or 32
    if args.pipeline:
        return bench_pipeline(args)

    config = get_base_config()  # QVHighlights SF+CLIP schedule and model
    config.model.dtype = args.dtype
    config.model.matmul_precision = args.precision
    config.train.matcher = args.matcher
    devices = jax.devices()[: args.devices] if args.devices else jax.devices()
    mesh = mesh_lib.make_mesh(devices)
    mesh_lib.check_batch_size(args.batch_size, mesh, "--batch-size")
    rng = np.random.default_rng(0)
    batches = [synthetic_batch(config, args.batch_size, rng) for _ in range(4)]
    shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batches[0].items()}
    steps_per_epoch = 7293 // args.batch_size  # QVHighlights train split
    tx = optim.optimizer_of_config(config, steps_per_epoch)
    args.dropout_prng = args.dropout_prng or config.train.dropout_prng or "key"
    loss_fn = with_dropout_prng(objective.make_loss_fn(config, mesh=mesh), args.dropout_prng)
    steps = train.build_steps(
        mesh,
        TRDETR(**model_kwargs_from_config(config)),
        tx,
        loss_fn,
        optim.schedule_of_config(config, steps_per_epoch),
        shapes,
        matmul_precision=args.precision,
    )
    state = steps.init(jax.random.key(0))
    dropout_rng = jax.random.key(1)
    device_batches = [mesh_lib.device_batch(b, steps.batch_sharding) for b in batches]

    if args.profile:
        found = profile_step(
            args, config, steps, state, device_batches[0], dropout_rng, loss_fn, tx
        )
        print(json.dumps({"mode": "profile", "dropout_prng": args.dropout_prng,
                          "xla_flags": os.environ.get("XLA_FLAGS", ""), **found}))  # fmt: skip
        return
    t0 = time.perf_counter()
    compiled = steps.train.lower(state, device_batches[0], dropout_rng).compile()
    compile_s = time.perf_counter() - t0

    for i in range(args.warmup):
        state, metrics = compiled(state, device_batches[i % 4], dropout_rng)
    jax.block_until_ready(state)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(args.steps):
        state, metrics = compiled(state, device_batches[i % 4], dropout_rng)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0  # all threads: steadier than wall time under load
    eval_ms = None
    if args.eval:  # the inference forward on the same batches, as the official --eval times it
        forward = steps.eval.lower(state.params, device_batches[0]).compile()
        times = []
        for i in range(args.warmup + args.steps):
            t1 = time.perf_counter()
            jax.block_until_ready(forward(state.params, device_batches[i % 4]))
            if i >= args.warmup:
                times.append(1e3 * (time.perf_counter() - t1))
        eval_ms = round(float(np.median(times)), 2)

    result = {
        "device": f"{devices[0].platform}:{devices[0].device_kind}",
        "num_devices": len(devices),
        "batch_size": args.batch_size,
        "max_v_l": config.data.max_v_l,
        "max_q_l": config.data.max_q_l,
        "video_dim": batches[0]["src_vid"].shape[-1],
        "dtype": args.dtype,
        "matcher": args.matcher,
        "matmul_precision": args.precision,
        "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "compile_s": round(compile_s, 2),
        "steps": args.steps,
        "steps_per_s": round(args.steps / elapsed, 3),
        "cpu_s_per_step": round(cpu_s / args.steps, 3),
        "examples_per_s": round(args.steps * args.batch_size / elapsed, 1),
        "final_loss": float(metrics["loss"]),
        "eval_forward_ms_median": eval_ms,
        "dropout_prng": args.dropout_prng,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        **peak_memory_bytes(),
    }
    print(json.dumps(result), flush=True)
    if args.seeds:
        bench_seeds(args, config, mesh, steps, device_batches, elapsed / args.steps)


if __name__ == "__main__":
    main()
