"""A tiny training run for the trainer's tests: the demo generator at toy sizes.

The data are written in the QVHighlights on-disk layout (the demo generator), so the tests
go through the real readers, model, losses, matcher and metrics. Sizes: hidden 32 (8 heads
of 4), FFN 32, one encoder / decoder layer, 16-d video features (8 + 6 + TEF), 16-d text,
L_v 12, global batch 4.
"""

from __future__ import annotations

import importlib.util
import pathlib

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def enable_compilation_cache(path: pathlib.Path | None) -> None:
    """Share compiled steps between the runs of one test module (each run re-jits);
    ``None`` switches the cache off again."""
    jax.config.update("jax_compilation_cache_dir", None if path is None else str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0 if path else 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1 if path else 0)


def demo_config():
    spec = importlib.util.spec_from_file_location("demo_config", ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    # The test modules choose their compilation cache (enable_compilation_cache).
    config.train.compilation_cache_dir = ""
    return config


def tiny_config(cache_dir: pathlib.Path):
    config = demo_config()
    data = config.data
    data.cache_dir = str(cache_dir)
    data.demo.n_train = 16
    data.demo.n_val = 6
    data.demo.v_dims = (8, 6)
    data.demo.t_dim = 16
    data.demo.min_clips = 8
    data.demo.max_clips = 12
    data.demo.min_query_len = 3
    data.demo.max_query_len = 6
    data.max_v_l = 12
    data.max_q_l = 8
    data.prefetch_depth = 2
    model = config.model
    model.hidden_dim = 32
    model.enc_layers = 1
    model.dec_layers = 1
    model.dim_feedforward = 32
    model.num_queries = 4
    train = config.train
    train.num_epochs = 2
    train.batch_size = 4
    train.eval_batch_size = 4
    train.eval_every_epochs = 1
    train.log_every_steps = 2
    train.checkpoint_every_steps = 3
    config.optim.lr = 1e-3
    config.eval.postprocess = "dataset"
    return config
