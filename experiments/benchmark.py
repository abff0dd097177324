"""Training-step throughput at the QVHighlights shapes, on whatever device JAX finds.

    python experiments/benchmark.py                 # batch 32, 75 clips, 32 tokens, 2818-d video
    python experiments/benchmark.py --steps 50 --devices 1
    python experiments/benchmark.py --cpu-devices 4   # data parallel over 4 CPU "devices"

Uses the real model, losses (host matcher included) and optimiser of the QVHighlights
config (hidden 256, 2 encoder / 2 decoder layers, FFN 1024, 10 queries) on synthetic
batches with valid targets, through the same jitted, sharded step as training. Prints one
JSON line: compile time, steps/s, examples/s, peak memory. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trdetr_jax import train  # noqa: E402
from trdetr_jax.config import get_base_config  # noqa: E402
from trdetr_jax.model import TRDETR, model_kwargs_from_config  # noqa: E402


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=32, help="global batch")
    p.add_argument("--steps", type=int, default=20, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    p.add_argument("--devices", type=int, default=None, help="use the first N devices")
    p.add_argument("--dtype", default="float32", help="model compute dtype (bfloat16 ...)")
    p.add_argument(
        "--cpu-devices", type=int, default=None, help="split the CPU into N devices (data parallel)"
    )
    args = p.parse_args()
    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before any backend use

    config = get_base_config()  # QVHighlights SF+CLIP schedule and model
    config.model.dtype = args.dtype
    devices = jax.devices()[: args.devices] if args.devices else jax.devices()
    mesh = train.make_mesh(devices)
    train.check_batch_size(args.batch_size, mesh, "--batch-size")
    rng = np.random.default_rng(0)
    batches = [synthetic_batch(config, args.batch_size, rng) for _ in range(4)]
    shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batches[0].items()}
    steps_per_epoch = 7293 // args.batch_size  # QVHighlights train split
    steps = train.build_steps(
        mesh,
        TRDETR(**model_kwargs_from_config(config)),
        train.make_optimizer(config, steps_per_epoch),
        train.make_loss_fn(config, mesh),
        train.lr_schedule(config, steps_per_epoch),
        shapes,
    )
    state = steps.init(jax.random.key(0))
    dropout_rng = jax.random.key(1)
    device_batches = [train.device_batch(b, steps.data) for b in batches]

    t0 = time.perf_counter()
    compiled = steps.train.lower(state, device_batches[0], dropout_rng).compile()
    compile_s = time.perf_counter() - t0

    for i in range(args.warmup):
        state, metrics = compiled(state, device_batches[i % 4], dropout_rng)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for i in range(args.steps):
        state, metrics = compiled(state, device_batches[i % 4], dropout_rng)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - t0

    result = {
        "device": f"{devices[0].platform}:{devices[0].device_kind}",
        "num_devices": len(devices),
        "batch_size": args.batch_size,
        "max_v_l": config.data.max_v_l,
        "max_q_l": config.data.max_q_l,
        "video_dim": batches[0]["src_vid"].shape[-1],
        "dtype": args.dtype,
        "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "compile_s": round(compile_s, 2),
        "steps": args.steps,
        "steps_per_s": round(args.steps / elapsed, 3),
        "examples_per_s": round(args.steps * args.batch_size / elapsed, 1),
        "final_loss": float(metrics["loss"]),
        **peak_memory_bytes(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
