"""Predictions from a trained (or converted) checkpoint, as official submission rows.

A checkpoint directory is either

- a training ``--workdir``: ``config.json`` + ``checkpoints/`` (the run's Orbax
  ``CheckpointManager``); the best evaluated step is used, or the latest one if the run
  never evaluated (or the next readable one when that step is damaged);
- a converted official checkpoint (``python -m trdetr_jax.convert``): ``config.json`` +
  ``params/`` (an Orbax ``StandardSave`` of the parameter tree).

``python -m trdetr_jax.evaluate --checkpoint DIR --gt GT.jsonl`` calls :func:`predict_rows`.
"""

from __future__ import annotations

import ast
import json
import logging
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from trdetr_jax import (
    checkpointing,
    compile_cache,
    errors,
    files,
    inference,
    optim,
    precision,
    train,
)
from trdetr_jax import mesh as mesh_lib

PARAMS_SUBDIR = "params"


def _tuples(obj: Any) -> Any:
    """JSON lists back to tuples (configs hold tuples: feature dirs, dims)."""
    if isinstance(obj, dict):
        return {k: _tuples(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return tuple(_tuples(v) for v in obj)
    return obj


def load_config(checkpoint_dir: str | pathlib.Path) -> ml_collections.ConfigDict:
    path = pathlib.Path(checkpoint_dir) / checkpointing.CONFIG_FILE
    if not path.exists():
        raise errors.RunError(
            f"{path} not found: a checkpoint directory needs the config.json the training run "
            "(or trdetr_jax.convert) wrote beside its checkpoints"
        )
    try:
        saved = json.loads(path.read_text())
        config = ml_collections.ConfigDict(_tuples(saved))
    except (OSError, ValueError) as e:
        raise errors.RunError(f"{path}: cannot read the recorded configuration ({e})") from None
    from trdetr_jax import seeds  # a run of several seeds: its models are in seed_<s>/

    seeds.check_single_seed_dir(saved, checkpoint_dir)
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Applies ``'a.b.c=value'`` strings (value parsed as a Python literal, else a string)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise errors.RunError(f"override {item!r} is not of the form key=value")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *parents, leaf = key.strip().split(".")
        node = config
        for name in parents:
            if name not in node:
                raise errors.RunError(f"override {item!r}: no config field {key!r}")
            node = node[name]
        if leaf not in node:
            raise errors.RunError(f"override {item!r}: no config field {key!r}")
        node[leaf] = value


def restore_params(
    checkpoint_dir: str | pathlib.Path, abstract_state: Any
) -> tuple[Any, dict[str, Any]]:
    """Parameters of the best (else latest) checkpoint of a workdir, or of a converted dir.

    A workdir step that cannot be read is reported in one warning line and the next one
    (best first, then newest first) is tried. Returns (params, info) where info names the
    step it came from.
    """
    checkpoint_dir = pathlib.Path(checkpoint_dir)
    run_dir = checkpoint_dir / checkpointing.CHECKPOINT_SUBDIR
    if run_dir.is_dir():
        ckpt = checkpointing.RunCheckpoints(run_dir, read_only=True)
        try:
            best = ckpt.best_step()
            candidates = ckpt.candidate_steps(best_first=True)
            if not candidates:
                raise errors.RunError(f"no complete checkpoint in {run_dir}")

            def on_damaged(step: int, reason: str) -> None:
                logging.warning(
                    "checkpoint step %d of %s cannot be read (%s); trying the next one",
                    step, run_dir, reason,
                )  # fmt: skip

            found = ckpt.restore_intact(abstract_state, candidates, on_damaged)
        finally:
            ckpt.close()
        if found is None:
            raise errors.RunError(
                f"no checkpoint of {run_dir} can be read (steps {', '.join(map(str, candidates))})"
            )
        step, state, _ = found
        which = "best" if step == best else "latest" if step == max(candidates) else "older"
        return state.params, {"source": str(run_dir), "step": step, "which": which}
    params_dir = checkpoint_dir / PARAMS_SUBDIR
    if params_dir.is_dir():
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(params_dir.resolve(), abstract_state.params)
        return params, {"source": str(params_dir), "step": None, "which": "converted"}
    raise errors.RunError(
        f"{checkpoint_dir} holds neither {checkpointing.CHECKPOINT_SUBDIR}/ (a training "
        f"workdir) nor {PARAMS_SUBDIR}/ (a converted checkpoint)"
    )


def predict_rows(
    checkpoint_dir: str | pathlib.Path,
    gt_path: str | pathlib.Path,
    *,
    feature_root: str | None = None,
    overrides: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Submission rows (official format) for every query of ``gt_path``.

    ``feature_root`` and ``overrides`` (``'data.max_v_l=100'`` ...) adjust the saved config,
    e.g. when the features live elsewhere on this machine.
    """
    from trdetr_jax import data as data_lib
    from trdetr_jax.model import TRDETR, model_kwargs_from_config

    config = load_config(checkpoint_dir)
    config.data.eval_path = str(gt_path)
    if feature_root is not None:
        config.data.feature_root = str(feature_root)
    apply_overrides(config, overrides)
    compile_cache.enable(config.train.get("compilation_cache_dir"))
    config = data_lib.resolve_config(config)

    eval_ds = data_lib.build_eval_dataset(config)
    mesh = mesh_lib.make_mesh()
    n_dev = mesh.devices.size
    batch_size = -(-config.train.eval_batch_size // n_dev) * n_dev
    model = TRDETR(**model_kwargs_from_config(config))
    # The optimiser only shapes the restore target (a workdir checkpoint stores it too).
    steps = train.build_steps(
        mesh,
        model,
        optim.optimizer_of_config(config, 1),
        loss_fn=None,
        schedule=None,
        batch_shapes=data_lib.abstract_batch(eval_ds, batch_size),
        matmul_precision=precision.of_config(config),
    )
    params, _ = restore_params(checkpoint_dir, steps.abstract_state)
    return inference.predict_split(
        steps.eval, steps.batch_sharding, params, eval_ds, config, batch_size
    )


def _parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m trdetr_jax.predict",
        description="Predict the queries of an annotation file with a trained or converted "
        "checkpoint; writes official submission rows (python -m trdetr_jax.evaluate "
        "--checkpoint also scores them).",
    )
    p.add_argument("checkpoint", help="training workdir or converted checkpoint folder")
    p.add_argument("queries", help="annotation .jsonl, or DATASET:SPLIT naming a shipped file")
    p.add_argument("out", help="where to write the predictions (.jsonl)")
    p.add_argument("--feature-root", help="folder of the feature files (default: the config's)")
    p.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="config override, e.g. data.max_v_l=100 (repeatable)",
    )  # fmt: skip
    p.add_argument("--traceback", action="store_true", help="show the traceback of errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trdetr_jax.predict DIR QUERIES OUT.jsonl [--override k=v ...]``."""
    from trdetr_jax.data import DataError

    args = _parser().parse_args(argv)
    try:
        rows = predict_rows(
            args.checkpoint, args.queries, feature_root=args.feature_root, overrides=args.override
        )
        files.write_jsonl_atomic(pathlib.Path(args.out), rows)
    except (errors.RunError, DataError, OSError) as e:
        if args.traceback:
            raise
        text = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else e
        print(f"error: {text}", file=sys.stderr)
        return 1
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
