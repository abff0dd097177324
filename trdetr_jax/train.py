"""Training loop for TR-DETR.

Layout follows the flax examples (lm1b / imagenet): :func:`create_train_state`,
:func:`train_step` and :func:`train_and_evaluate`. Around it:

- :mod:`trdetr_jax.mesh`: the ``('data',)`` mesh over every device, batches onto it, outputs
  back to the host;
- :mod:`trdetr_jax.inference`: the eval step and predicting / scoring a split (shared with
  ``evaluate``, ``predict`` and the Predictor);
- :mod:`trdetr_jax.rundir`: what a workdir allows (writable, resumable, which checkpoint);
- :mod:`trdetr_jax.data`: the data pipeline (datasets, seeded batches).

Parallelism: parameters and optimiser state are replicated, batches are sharded on their
leading axis, so the *global* batch ``config.train.batch_size`` is split across devices and
the loss is the loss of the global batch whatever the device count.

Determinism and resumption: data order and saliency-pair sampling are seeded by
(seed, epoch) in the data pipeline, dropout keys are ``fold_in(key(seed), step)``, and the
checkpoint records how many batches of the current epoch are done, so a resumed run replays
exactly the batches and random numbers an uninterrupted run would have used.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from trdetr_jax import checkpointing, compile_cache, files, inference, precision, runlog
from trdetr_jax import mesh as mesh_lib
from trdetr_jax import seeds as seeds_lib
from trdetr_jax.data import resident
from trdetr_jax.errors import NonFiniteLossError, RunError
from trdetr_jax.model import model_inputs
from trdetr_jax.rundir import (
    check_resumable,
    check_workdir,
    config_diff,
    config_to_dict,
    has_checkpoints,
    resume_point,
    saved_config,
)

Batch = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- state


class TrainState(struct.PyTreeNode):
    """Everything the jitted train step updates; saved as one Orbax ``state`` item."""

    step: jax.Array  # int32 scalar: optimiser updates done
    params: Any
    opt_state: Any
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    def apply_gradients(self, grads: Any) -> TrainState:
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


def init_params(model, batch: dict[str, Any], rng: jax.Array) -> Any:
    """Initialises parameters from a (possibly abstract) example batch."""
    params_rng, dropout_rng = jax.random.split(rng)
    variables = model.init(
        {"params": params_rng, "dropout": dropout_rng}, **model_inputs(batch), train=False
    )
    return variables["params"]


def create_train_state(
    model, tx: optax.GradientTransformation, batch: dict[str, Any], rng: jax.Array
) -> TrainState:
    """A fresh :class:`TrainState` (call under ``jax.jit`` to place it on the mesh)."""
    params = init_params(model, batch, rng)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), tx=tx
    )


def lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """StepLR by epoch, as the official code: ``lr * gamma ** (epoch // lr_drop)``."""
    from trdetr_jax import optim

    return optim.step_lr_schedule(
        config.optim.lr,
        lr_drop_epochs=config.optim.lr_drop,
        gamma=config.optim.lr_gamma,
        steps_per_epoch=steps_per_epoch,
    )


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
    """Clipping + AdamW (frozen parameters as the official code), epoch-wise StepLR."""
    from trdetr_jax import optim

    return optim.make_optimizer_from_config(config, lr_schedule(config, steps_per_epoch))


def make_loss_fn(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """``loss_fn(params, model, batch, *, train, dropout_rng) -> (total, (loss_dict, outputs))``.

    ``mesh`` lets the host matcher run per batch shard rather than on a gathered batch.
    """
    from trdetr_jax import objective

    return objective.make_loss_fn(config, mesh=mesh)


# ----------------------------------------------------------------------------- steps


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    model,
    loss_fn,
    schedule: optax.Schedule,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser update on a global batch; returns the new state and scalar metrics."""
    # A fresh dropout key per step, derived rather than stored (kauldron / lm1b style).
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_of(params):
        total, (loss_dict, _) = loss_fn(params, model, batch, train=True, dropout_rng=dropout_rng)
        return total, loss_dict

    (loss, loss_dict), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in loss_dict.items()}
    metrics["loss"] = loss.astype(jnp.float32)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    return new_state, metrics


# ------------------------------------------------------------------------ sharding


def train_chunk(
    state: TrainState,
    batches: dict[str, jax.Array],
    rng: jax.Array,
    **step_kwargs,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """:func:`train_step` over a chunk of stacked batches ``[steps, rows, ...]`` in one
    ``lax.scan`` (one dispatch); metrics come back stacked ``[steps]``."""

    def body(s, batch):
        return train_step(s, batch, rng, **step_kwargs)

    return jax.lax.scan(body, state, batches)


def chunks(batches: Iterable[dict], *, first_step: int, size: int, cut_every: int):
    """Consecutive batches stacked into chunks of at most ``size`` steps.

    A chunk holds batches of one length bucket only (a batch padded further would draw other
    dropout masks: JAX draws one per position of the padded array), and it ends where the
    global step after it is a multiple of ``size`` or of ``cut_every`` (the checkpoint
    interval), or where the epoch ends. So the chunks depend on the data order and step
    positions only: a run resumed at a checkpoint makes the chunks the uninterrupted run made.
    """
    from trdetr_jax import data as data_lib

    def shape(batch):
        return batch["src_vid_mask"].shape, batch["src_txt_mask"].shape

    chunk, step = [], first_step
    for batch in batches:
        if chunk and shape(batch) != shape(chunk[0]):
            yield data_lib.stack_batches(chunk)
            chunk = []
        chunk.append(batch)
        step += 1
        if step % size == 0 or step % cut_every == 0:
            yield data_lib.stack_batches(chunk)
            chunk = []
    if chunk:
        yield data_lib.stack_batches(chunk)


def check_train_config(tcfg: ml_collections.ConfigDict) -> None:
    """Loop settings that must be positive integers, named as on the command line."""
    for name in (
        "num_epochs",
        "batch_size",
        "eval_batch_size",
        "eval_every_epochs",
        "log_every_steps",
        "checkpoint_every_steps",
        "steps_per_dispatch",
    ):
        value = tcfg[name]
        if not isinstance(value, int) or value < 1:
            raise RunError(f"config.train.{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass
class Steps:
    """The jitted step functions of a run and the shardings they use."""

    mesh: jax.sharding.Mesh
    replicated: NamedSharding
    batch_sharding: NamedSharding  # batch arrays: split over the mesh's data axis
    state_sharding: Any
    train: Any  # (state, batch, rng) -> (state, metrics); donates state
    eval: Any  # (params, batch) -> outputs
    init: Any  # (rng) -> state
    abstract_state: Any  # ShapeDtypeStructs with shardings (restore target)
    # (state, chunk [steps, rows, ...], rng) -> (state, metrics [steps]); donates state
    train_chunk: Any = None
    chunk_sharding: NamedSharding | None = None  # chunks: rows split over the data axis
    # train / train_chunk / eval are resident.WithTables: .bind(tables) for batches of
    # table rows (features resident on the device).


def build_steps(
    mesh: jax.sharding.Mesh,
    model,
    tx: optax.GradientTransformation,
    loss_fn,
    schedule: optax.Schedule,
    batch_shapes: dict[str, jax.ShapeDtypeStruct],
    matmul_precision: str = precision.DEFAULT,
) -> Steps:
    """Jits init / train / eval with explicit shardings over ``mesh``.

    ``batch_shapes``: global shapes of a batch (only used to initialise parameters).
    ``matmul_precision``: ``config.model.matmul_precision``, applied to every step.
    """
    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))

    def init_fn(rng):
        # Parameter shapes depend on the input shapes only: initialise from zeros.
        zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in batch_shapes.items()}
        return create_train_state(model, tx, zeros, rng)

    shapes = jax.eval_shape(init_fn, jax.random.key(0))
    state_sharding = jax.tree.map(lambda _: replicated, shapes)
    init = jax.jit(init_fn, in_shardings=replicated, out_shardings=state_sharding)
    train = jax.jit(
        resident.gathering(
            functools.partial(train_step, model=model, loss_fn=loss_fn, schedule=schedule)
        ),
        in_shardings=(replicated, state_sharding, data, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(1,),  # the state
    )
    chunk_sharding = NamedSharding(mesh, P(None, "data"))
    chunk = jax.jit(
        resident.gathering(
            functools.partial(train_chunk, model=model, loss_fn=loss_fn, schedule=schedule)
        ),
        in_shardings=(replicated, state_sharding, chunk_sharding, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(1,),
    )
    init, train, chunk = (
        precision.with_matmul_precision(f, matmul_precision) for f in (init, train, chunk)
    )
    train, chunk = resident.WithTables(train), resident.WithTables(chunk)
    evaluate = inference.jit_eval_step(mesh, model, state_sharding.params, matmul_precision)
    abstract = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes, state_sharding
    )
    return Steps(
        mesh,
        replicated,
        data,
        state_sharding,
        train,
        evaluate,
        init,
        abstract,
        chunk,
        chunk_sharding,
    )


# Jitted steps of recent runs in this process, so that running again with the same model,
# losses, optimiser and shapes (a resumed run, a sweep over seeds, a notebook, the tests)
# does not compile again. The train step holds a host callback (the matcher), so XLA's
# persistent compilation cache cannot keep it across processes.
_STEPS_CACHE: dict[tuple, Steps] = {}
_STEPS_CACHE_SIZE = 4


def cached_steps(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    n_steps_epoch: int,
    batch_shapes: dict[str, jax.ShapeDtypeStruct],
) -> Steps:
    """:func:`build_steps` for a config, reusing the jitted steps of an identical earlier run."""
    from trdetr_jax import losses
    from trdetr_jax.model import TRDETR, model_kwargs_from_config

    model_kwargs = model_kwargs_from_config(config)
    key = (
        tuple(d.id for d in mesh.devices.flat),
        repr(sorted(model_kwargs.items())),
        losses.LossConfig.from_config(config),
        config.optim.to_json(),
        n_steps_epoch,
        tuple(sorted((k, v.shape, str(v.dtype)) for k, v in batch_shapes.items())),
        precision.of_config(config),
    )
    if key not in _STEPS_CACHE:
        while len(_STEPS_CACHE) >= _STEPS_CACHE_SIZE:
            _STEPS_CACHE.pop(next(iter(_STEPS_CACHE)))
        _STEPS_CACHE[key] = build_steps(
            mesh,
            TRDETR(**model_kwargs),
            make_optimizer(config, n_steps_epoch),
            make_loss_fn(config, mesh),
            lr_schedule(config, n_steps_epoch),
            batch_shapes,
            precision.of_config(config),
        )
    return _STEPS_CACHE[key]


# --------------------------------------------------------------------- host helpers


def check_finite(metrics: dict[str, Any], step: int) -> None:
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        parts = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()))
        raise NonFiniteLossError(
            f"training loss became {loss} at step {step} ({parts}). Stopped before saving: the "
            "last checkpoint is intact and a rerun resumes from it, but with the same data and "
            "settings it will fail the same way. Common causes: a learning rate too high "
            "(--config.optim.lr), NaN/Inf in the input features, an empty mask."
        )


# ----------------------------------------------------------------------------- data
# The one boundary to the data pipeline (trdetr_jax.data): datasets, seeded batches.


def load_datasets(config: ml_collections.ConfigDict):
    """``(resolved config, train dataset, eval dataset)``.

    The resolved config has the dataset's paths filled in (the demo generates its data on
    first use); it is the one written to ``config.json``.
    """
    from trdetr_jax import data as data_lib

    config = data_lib.resolve_config(config)
    train_ds, eval_ds = data_lib.build_datasets(config)
    return config, train_ds, eval_ds


def steps_per_epoch(train_ds, batch_size: int) -> int:
    from trdetr_jax import data as data_lib

    return data_lib.steps_per_epoch(len(train_ds), batch_size)


def train_batches(
    train_ds,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start_step: int,
    process_index: int | None = None,
    process_count: int | None = None,
    resident=None,
):
    """This process's rows of each global training batch of ``epoch``, from ``start_step``
    (``resident``: the split's features on the device; batches carry table rows)."""
    from trdetr_jax import data as data_lib

    for batch, _ in data_lib.train_batches(
        train_ds,
        batch_size,
        seed=seed,
        epoch=epoch,
        start_step=start_step,
        process_index=jax.process_index() if process_index is None else process_index,
        process_count=jax.process_count() if process_count is None else process_count,
        resident=resident,
    ):
        yield batch


def abstract_batch(ds, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Global shapes / dtypes of a ``batch_size``-row batch at the largest length buckets
    (parameter shapes do not depend on the lengths; the steps compile per bucket)."""
    from trdetr_jax import data as data_lib

    return {
        k: jax.ShapeDtypeStruct(shape, dtype)
        for k, (shape, dtype) in data_lib.batch_shapes(ds, batch_size).items()
    }


def log_new_shapes(fn, what: str, info):
    """``fn(x, batch, ...)`` that reports, once per padded (video, text) length (and chunk
    length), that jit compiles ``what`` for it (an earlier run in this process may have
    compiled it)."""
    seen: set[tuple[int, ...]] = set()

    @functools.wraps(fn)
    def wrapped(first, batch, *args):
        mask_v, mask_t = batch["src_vid_mask"], batch["src_txt_mask"]
        shape = (*mask_v.shape[:-2], mask_v.shape[-1], mask_t.shape[-1])
        if shape not in seen:
            seen.add(shape)
            chunk = f" of {shape[0]} steps" if len(shape) == 3 else ""
            info(
                "%s%s for video length %d, text length %d (compiled once per bucket)",
                what,
                chunk,
                *shape[-2:],
            )
        return fn(first, batch, *args)

    return wrapped


def resident_features(config, train_ds, eval_ds, steps: Steps, info):
    """``(train, eval)`` :class:`~trdetr_jax.data.resident.ResidentFeatures` when
    ``config.data.features_on_device`` asks for them (and they fit), else ``(None, None)``."""
    setting = config.data.get("features_on_device", "auto")
    on, why = resident.wanted(setting, train_ds, list(steps.mesh.devices.flat))
    if on:
        eval_on, eval_why = resident.wanted(setting, eval_ds, list(steps.mesh.devices.flat))
        on, why = on and eval_on, why if eval_on else eval_why
    info("features on the device: %s (%s)", "yes" if on else "no", why)
    if not on:
        return None, None
    tables = resident.build(train_ds, steps.replicated), resident.build(eval_ds, steps.replicated)
    train_ds.store.disable_cache()  # the host copies are no longer read
    return tables


def log_buckets(log, train_ds, batch_size: int, seed: int) -> None:
    """The run's length buckets and how the first epoch's batches fall into them."""
    from trdetr_jax import data as data_lib

    counts = data_lib.bucket_counts(train_ds, batch_size, epoch=0, seed=seed)
    log.info(
        "length buckets: %s; train batches per bucket (video x text) in epoch 1: %s",
        train_ds.buckets.describe(),
        ", ".join(f"{n} at {v}x{t}" for (v, t), n in counts.items()),
    )


# ------------------------------------------------------------------------ evaluation


# ------------------------------------------------------------------------------ loop


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> dict[str, Any]:
    """Trains, evaluates every ``eval_every_epochs``, keeps the best; resumes from ``workdir``.

    ``devices``: the mesh's devices (default: every device of every process). A config with
    several seeds (``config.train.num_seeds`` / ``seeds``) trains them all at once:
    :func:`trdetr_jax.seeds.train_and_evaluate_seeds`.

    Everything that can refuse the run is decided before the workdir is touched: the loop
    settings, the workdir's writability, the data (every row and feature header), and, when
    resuming, whether the new config keeps the settings the checkpoints fix
    (:data:`RESUME_FIXED`). Resuming restores the newest checkpoint that reads completely
    (unreadable newer steps are reported and moved to ``checkpoints_damaged/``).

    Returns the run summary (also printed as a table and written to ``summary.json``).
    """
    if seeds_lib.is_multi_seed(config):
        return seeds_lib.train_and_evaluate_seeds(config, workdir, devices=devices)
    t_start = time.time()
    mesh_lib.maybe_initialize_distributed(config)
    tcfg = config.train
    check_train_config(tcfg)
    compile_cache.enable(tcfg.get("compilation_cache_dir"))
    workdir_path = pathlib.Path(workdir).resolve()
    check_workdir(workdir_path)

    # ---- data, model, mesh. Nothing is written to the workdir until the run goes ahead.
    mesh = mesh_lib.make_mesh(devices)
    mesh_lib.check_batch_size(tcfg.batch_size, mesh, "config.train.batch_size")
    n_dev = mesh.devices.size
    eval_batch_size = -(-tcfg.eval_batch_size // n_dev) * n_dev  # eval pads: round up
    # Every annotation row and feature file header is checked here, before compiling.
    config, train_ds, eval_ds = load_datasets(config)
    new_cfg = config_to_dict(config)
    config_path = workdir_path / checkpointing.CONFIG_FILE
    ckpt_dir = workdir_path / checkpointing.CHECKPOINT_SUBDIR
    old_cfg = saved_config(config_path) if has_checkpoints(ckpt_dir) else None
    if old_cfg is not None:
        if len(seeds_lib.seeds_of_saved(old_cfg)) > 1:  # its checkpoints stack several seeds
            seeds_lib.check_same_seeds(old_cfg, (config.seed,), workdir_path)
        check_resumable(old_cfg, new_cfg, workdir_path)
    n_steps_epoch = steps_per_epoch(train_ds, tcfg.batch_size)
    total_steps = n_steps_epoch * tcfg.num_epochs
    steps = cached_steps(config, mesh, n_steps_epoch, abstract_batch(train_ds, tcfg.batch_size))
    mesh_lib.check_process_rows(steps.batch_sharding, tcfg.batch_size)
    # Parameter init and dropout draw from independent streams of the one seed.
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))

    # ---- checkpoints: resume from the newest one that can be read, if there is one.
    ckpt = checkpointing.RunCheckpoints(ckpt_dir)
    damaged: list[str] = []
    restored = None
    candidates = ckpt.candidate_steps()
    if candidates:
        restored = resume_point(ckpt, steps.abstract_state, candidates, workdir_path, damaged)
        if restored[2].seed != config.seed:
            raise RunError(
                f"{workdir_path} holds a run with seed {restored[2].seed}, but config.seed is "
                f"{config.seed}; resuming would not reproduce it. Use another --workdir."
            )

    # ---- the run goes ahead: record its configuration, say what changed when resuming.
    workdir_path.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        files.write_json_atomic(config_path, new_cfg)
    log = runlog.RunLog(workdir_path, None if restored is None else restored[0])
    for line in damaged:
        log.info("%s", line, console=False)  # already shown as warnings
    log_buckets(log, train_ds, tcfg.batch_size, config.seed)
    train_res, eval_res = resident_features(config, train_ds, eval_ds, steps, log.info)
    if train_res is not None:
        steps = dataclasses.replace(
            steps,
            train=steps.train.bind(train_res.tables),
            train_chunk=steps.train_chunk.bind(train_res.tables),
            eval=steps.eval.bind(eval_res.tables),
        )
    steps = dataclasses.replace(
        steps,
        train=log_new_shapes(steps.train, "train step", log.info),
        train_chunk=log_new_shapes(steps.train_chunk, "train chunk", log.info),
        eval=log_new_shapes(steps.eval, "eval step", log.info),
    )
    if restored is None:
        state = steps.init(init_rng)
        loop = checkpointing.LoopState(seed=config.seed)
        log.info(
            "new run in %s: %d devices (%s), %d train / %d eval examples, %d steps/epoch, "
            "%d epochs",
            workdir_path,
            n_dev,
            jax.devices()[0].platform,
            len(train_ds),
            len(eval_ds),
            n_steps_epoch,
            tcfg.num_epochs,
        )
    else:
        _, state, loop = restored
        if loop.epoch >= tcfg.num_epochs or loop.stopped_early:
            log.info(
                "%s is finished (step %d, %d epochs%s): nothing to train",
                workdir_path,
                loop.step,
                loop.epoch,
                ", stopped early" if loop.stopped_early else "",
            )
        else:
            log.info(
                "resuming %s from step %d (epoch %d, batch %d of %d)",
                workdir_path,
                loop.step,
                loop.epoch + 1,
                loop.batch_in_epoch,
                n_steps_epoch,
            )
        for change in config_diff(old_cfg, new_cfg) if old_cfg is not None else []:
            log.info("config changed since the checkpoint: %s", change)
    # Wall time of the earlier processes of this run (this one's is added at each save).
    wall_before = loop.wall_time_s

    def save(score: float | None = None) -> None:
        loop.wall_time_s = wall_before + time.time() - t_start
        ckpt.save(state, loop, score=score)

    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log.info("model: %.2fM parameters", n_params / 1e6)

    split = config.data.eval_split_name
    best_preds_path = workdir_path / f"best_{split}_preds.jsonl"
    best_metrics_path = workdir_path / f"best_{split}_preds_metrics.json"

    def run_eval(epoch: int) -> float:
        t0 = time.time()
        results, rows = inference.evaluate_split(
            steps.eval,
            steps.batch_sharding,
            state.params,
            eval_ds,
            config,
            eval_batch_size,
            eval_res,
        )
        score = inference.brief_metric(results, tcfg.best_metric)
        # None marks a metric the split cannot give (e.g. an empty length bucket).
        brief = {k: None if v is None else float(v) for k, v in results["brief"].items()}
        improved = loop.best_score is None or score > loop.best_score
        log.record({"type": "eval", "step": loop.step, "epoch": epoch + 1, **brief})
        log.info(
            "eval epoch %d step %d (%.1fs): %s=%.2f%s | %s",
            epoch + 1,
            loop.step,
            time.time() - t0,
            tcfg.best_metric,
            score,
            " (new best)" if improved else "",
            " ".join(f"{k}={runlog.fmt_num(v)}" for k, v in brief.items()),
        )
        if improved:
            loop.best_score, loop.best_step, loop.best_epoch = score, loop.step, epoch + 1
            loop.best_brief = brief
            loop.es_cnt = 0
            if jax.process_index() == 0:
                files.write_jsonl_atomic(best_preds_path, rows)
                files.write_json_atomic(best_metrics_path, results)
        else:
            loop.es_cnt += 1
        return score

    # ---- the loop.
    bar = runlog.ProgressBar(total_steps, loop.step)
    log.bar = bar
    # Metrics of the last dispatch, fetched one dispatch late: (last step, metrics, steps).
    pending: tuple[int, Any, int] | None = None
    t_log = time.perf_counter()
    per_dispatch = tcfg.steps_per_dispatch

    def drain() -> None:
        """Fetches the pending dispatch's metrics; checks each step's loss; logs."""
        nonlocal pending
        if pending is None:
            return
        last, metrics, n = pending
        pending = None
        metrics = jax.device_get(metrics)
        if n == 1 and per_dispatch == 1:
            record_step(last, metrics)
        else:  # a chunk: metrics [n], one row per step
            for i in range(n):
                record_step(last - n + 1 + i, {k: v[i] for k, v in metrics.items()})

    def record_step(step: int, metrics: dict[str, Any]) -> None:
        nonlocal t_log
        check_finite(metrics, step)
        # Running sums live in the loop state, so a resumed run logs the same means.
        for k, v in metrics.items():
            loop.log_sums[k] = loop.log_sums.get(k, 0.0) + float(v)
        loop.log_count += 1
        bar.update(step, f"loss {float(metrics['loss']):.4f}")
        if step % tcfg.log_every_steps == 0 or step == total_steps:
            now = time.perf_counter()
            summary = {k: v / loop.log_count for k, v in loop.log_sums.items()}
            summary["steps_per_sec"] = loop.log_count / max(now - t_log, 1e-9)
            loop.log_sums, loop.log_count = {}, 0
            t_log = now
            log.record({"type": "train", "step": step, "epoch": loop.epoch + 1, **summary})
            log.info(
                "step %d epoch %d: %s",
                step,
                loop.epoch + 1,
                " ".join(f"{k}={v:.4g}" for k, v in summary.items()),
            )

    try:
        while loop.epoch < tcfg.num_epochs and not loop.stopped_early:
            epoch = loop.epoch
            batches = train_batches(
                train_ds,
                tcfg.batch_size,
                seed=config.seed,
                epoch=epoch,
                start_step=loop.batch_in_epoch,
                resident=train_res,
            )
            if per_dispatch == 1:
                feed, run = (
                    mesh_lib.prefetch_to_devices(
                        batches, steps.batch_sharding, config.data.prefetch_depth
                    ),
                    steps.train,
                )
            else:  # several steps per dispatch: one lax.scan over each chunk
                batches = chunks(
                    batches,
                    first_step=loop.step,
                    size=per_dispatch,
                    cut_every=tcfg.checkpoint_every_steps,
                )
                feed = mesh_lib.prefetch_to_devices(
                    batches, steps.chunk_sharding, config.data.prefetch_depth, batch_axis=1
                )
                run = steps.train_chunk
            for batch in feed:
                n = 1 if per_dispatch == 1 else batch["example_mask"].shape[0]
                state, metrics = run(state, batch, dropout_rng)
                drain()  # previous dispatch's metrics, while this one runs
                loop.step += n
                loop.batch_in_epoch += n
                pending = (loop.step, metrics, n)
                end_of_epoch = loop.batch_in_epoch == n_steps_epoch
                if not end_of_epoch and loop.step % tcfg.checkpoint_every_steps == 0:
                    drain()  # never save a state whose loss was not checked
                    save()
            drain()
            loop.epoch, loop.batch_in_epoch = epoch + 1, 0
            is_last = loop.epoch == tcfg.num_epochs
            if loop.epoch % tcfg.eval_every_epochs == 0 or is_last:
                score = run_eval(epoch)
                if 0 <= tcfg.max_es_cnt < loop.es_cnt:
                    log.info("early stop: no improvement in %d evaluations", loop.es_cnt)
                    loop.stopped_early = True
                save(score)
            elif is_last or loop.step % tcfg.checkpoint_every_steps == 0:
                save()
    finally:
        bar.close()
    ckpt.close()

    summary = {
        "workdir": str(workdir_path),
        "steps": loop.step,
        "epochs": loop.epoch,
        "best_metric": tcfg.best_metric,
        "best_score": loop.best_score,
        "best_epoch": loop.best_epoch,
        "best_step": loop.best_step,
        "best_brief": loop.best_brief,
        "best_predictions": str(best_preds_path),
        "wall_time_s": wall_before + time.time() - t_start,
    }
    if jax.process_index() == 0:
        files.write_json_atomic(workdir_path / "summary.json", summary)
        table = runlog.summary_table(summary)
        log.info("summary:\n%s", table, console=False)
        print(table, flush=True)
    return summary
