"""Training loop for TR-DETR.

Layout follows the flax examples (lm1b / imagenet): :func:`create_train_state`,
:func:`train_step` and :func:`train_and_evaluate`. Around it:

- :mod:`trdetr_jax.steps`: the steps jitted over the mesh with explicit shardings (state
  donated, batches split over ``'data'``, features optionally gathered on the device), and
  the process's cache of them;
- :mod:`trdetr_jax.mesh`: the ``('data',)`` mesh over every device, batches onto it, outputs
  back to the host;
- :mod:`trdetr_jax.inference`: the eval step and predicting / scoring a split (shared with
  ``evaluate``, ``predict`` and the Predictor);
- :mod:`trdetr_jax.loop`: the loop's bookkeeping, shared with the run of several seeds
  (:mod:`trdetr_jax.seeds`): the checks before a run, resuming, metric means, the best
  evaluation and early stopping, the summary;
- :mod:`trdetr_jax.rundir`: what a workdir allows (writable, resumable, which checkpoint);
- :mod:`trdetr_jax.data`: the data pipeline (datasets, seeded batches, chunks of steps,
  features resident on the device).

Parallelism: parameters and optimiser state are replicated, batches are sharded on their
leading axis, so the *global* batch ``config.train.batch_size`` is split across devices and
the loss is the loss of the global batch whatever the device count.

Determinism and resumption: data order and saliency-pair sampling are seeded by
(seed, epoch) in the data pipeline, dropout keys are ``fold_in(key(seed), step)``, and the
checkpoint records how many batches of the current epoch are done, so a resumed run replays
exactly the batches and random numbers an uninterrupted run would have used.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from trdetr_jax import checkpointing, inference, losses, objective, optim, precision, runlog
from trdetr_jax import data as data_lib
from trdetr_jax import loop as loop_lib
from trdetr_jax import mesh as mesh_lib
from trdetr_jax import seeds as seeds_lib
from trdetr_jax import steps as steps_lib
from trdetr_jax.data import resident
from trdetr_jax.errors import RunError
from trdetr_jax.model import TRDETR, model_inputs, model_kwargs_from_config

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


def step_kwargs(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, n_steps_epoch: int
) -> dict[str, Any]:
    """What a config's :func:`train_step` closes over: its model, objective (``mesh`` lets
    the host matcher run per batch shard) and learning-rate schedule."""
    return dict(
        model=TRDETR(**model_kwargs_from_config(config)),
        loss_fn=objective.make_loss_fn(config, mesh=mesh),
        schedule=optim.schedule_of_config(config, n_steps_epoch),
    )


def step_of_config(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, n_steps_epoch: int
) -> Any:
    """:func:`train_step` of a config: ``(state, batch, rng) -> (state, metrics)`` (vmapped
    by :mod:`trdetr_jax.seeds`)."""
    return functools.partial(train_step, **step_kwargs(config, mesh, n_steps_epoch))


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


def build_steps(
    mesh: jax.sharding.Mesh,
    model,
    tx: optax.GradientTransformation,
    loss_fn,
    schedule: optax.Schedule,
    batch_shapes: dict[str, jax.ShapeDtypeStruct],
    matmul_precision: str = precision.DEFAULT,
) -> steps_lib.Steps:
    """This module's init / train / train chunk steps and the eval step, jitted over
    ``mesh`` (:func:`trdetr_jax.steps.compile_steps`).

    ``batch_shapes``: global shapes of a batch (only used to initialise parameters).
    ``matmul_precision``: ``config.model.matmul_precision``, applied to every step.
    """
    kw = dict(model=model, loss_fn=loss_fn, schedule=schedule)
    return steps_lib.compile_steps(
        mesh,
        model,
        batch_shapes,
        init_state=functools.partial(create_train_state, model, tx),
        train_step=functools.partial(train_step, **kw),
        train_chunk=functools.partial(train_chunk, **kw),
        matmul_precision=matmul_precision,
    )


def cached_steps(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    n_steps_epoch: int,
    batch_shapes: dict[str, jax.ShapeDtypeStruct],
) -> steps_lib.Steps:
    """:func:`build_steps` for a config, reusing the jitted steps of an identical earlier run
    of this process (:func:`trdetr_jax.steps.cached`)."""
    model_kwargs = model_kwargs_from_config(config)
    key = (
        tuple(d.id for d in mesh.devices.flat),
        repr(sorted(model_kwargs.items())),
        losses.LossConfig.from_config(config),
        config.optim.to_json(),
        n_steps_epoch,
        tuple(sorted((k, v.shape, str(v.dtype)) for k, v in batch_shapes.items())),
        precision.of_config(config),
        config.train.get("dropout_prng", ""),
    )
    return steps_lib.cached(
        key,
        lambda: build_steps(
            mesh,
            tx=optim.optimizer_of_config(config, n_steps_epoch),
            batch_shapes=batch_shapes,
            matmul_precision=precision.of_config(config),
            **step_kwargs(config, mesh, n_steps_epoch),
        ),
    )


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

    Everything that can refuse the run is decided before the workdir is touched
    (:func:`trdetr_jax.loop.prepare`): the loop settings, the workdir's writability, the data
    (every row and feature header), and, when resuming, whether the new config keeps the
    settings the checkpoints fix (:data:`trdetr_jax.rundir.RESUME_FIXED`). Resuming restores
    the newest checkpoint that reads completely (unreadable newer steps are reported and
    moved to ``checkpoints_damaged/``).

    Returns the run summary (also printed as a table and written to ``summary.json``).
    """
    if seeds_lib.is_multi_seed(config):
        return seeds_lib.train_and_evaluate_seeds(
            config,
            workdir,
            devices=devices,
            single_steps=cached_steps,
            step_of_config=step_of_config,
        )
    clock = loop_lib.Clock()
    setup = loop_lib.prepare(
        config, workdir, devices, check_saved=seeds_lib.single_seed_resume_check(config.seed)
    )
    config, tcfg, workdir_path = setup.config, setup.config.train, setup.workdir
    train_ds, eval_ds, n_steps_epoch = setup.train_ds, setup.eval_ds, setup.n_steps_epoch
    steps = cached_steps(
        config, setup.mesh, n_steps_epoch, data_lib.abstract_batch(train_ds, tcfg.batch_size)
    )
    mesh_lib.check_process_rows(steps.batch_sharding, tcfg.batch_size)
    # Parameter init and dropout draw from independent streams of the one seed.
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    ckpt = checkpointing.RunCheckpoints(setup.ckpt_dir)
    restored, notes = loop_lib.restore(ckpt, steps.abstract_state, workdir_path)
    if restored is not None and restored[2].seed != config.seed:
        raise RunError(
            f"{workdir_path} holds a run with seed {restored[2].seed}, but config.seed is "
            f"{config.seed}; resuming would not reproduce it. Use another --workdir."
        )

    # ---- the run goes ahead: record its configuration, say what changed when resuming.
    log = loop_lib.open_run(setup, restored, notes)
    train_res, eval_res = resident.for_run(
        config.data.get("features_on_device", "auto"), train_ds, eval_ds, steps.replicated, log.info
    )
    steps = steps.for_run(train_res, eval_res, log.info)
    if restored is None:
        state, loop = steps.init(init_rng), checkpointing.LoopState(seed=config.seed)
    else:
        _, state, loop = restored
    loop_lib.log_start(log, setup, loop, resumed=restored is not None)
    clock.before = loop.wall_time_s  # wall time of the run's earlier processes

    def save(score: float | None = None) -> None:
        loop.wall_time_s = clock.total()
        ckpt.save(state, loop, score=score)

    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log.info("model: %.2fM parameters", n_params / 1e6)
    best = loop_lib.best_paths(workdir_path, config.data.eval_split_name)

    def run_eval(epoch: int) -> float:
        t0 = time.time()
        results, rows = inference.evaluate_split(
            steps.eval,
            steps.batch_sharding,
            state.params,
            eval_ds,
            config,
            setup.eval_batch_size,
            eval_res,
        )
        return loop_lib.record_eval(
            log,
            loop,
            results,
            rows,
            epoch=epoch,
            tcfg=tcfg,
            paths=best,
            seconds=time.time() - t0,
        )

    # ---- the loop.
    bar = log.bar = runlog.ProgressBar(setup.total_steps, loop.step)
    metrics_late = loop_lib.LateMetrics(
        log, loop, log_every=tcfg.log_every_steps, total_steps=setup.total_steps
    )
    per_dispatch = tcfg.steps_per_dispatch
    run, sharding, batch_axis = steps.dispatcher(per_dispatch)
    try:
        while loop.epoch < tcfg.num_epochs and not loop.stopped_early:
            epoch = loop.epoch
            batches = data_lib.train_dispatches(
                train_ds,
                tcfg.batch_size,
                epoch=epoch,
                seed=config.seed,
                start_step=loop.batch_in_epoch,
                first_step=loop.step,
                steps_per_dispatch=per_dispatch,
                cut_every=tcfg.checkpoint_every_steps,
                resident=train_res,
            )
            for batch in mesh_lib.prefetch_to_devices(
                batches, sharding, config.data.prefetch_depth, batch_axis=batch_axis
            ):
                n = 1 if per_dispatch == 1 else batch["example_mask"].shape[0]
                state, metrics = run(state, batch, dropout_rng)
                loop.step += n
                loop.batch_in_epoch += n
                metrics_late.push(metrics, last_step=loop.step, n=n)  # drains the previous
                end_of_epoch = loop.batch_in_epoch == n_steps_epoch
                if not end_of_epoch and loop.step % tcfg.checkpoint_every_steps == 0:
                    metrics_late.drain()  # never save a state whose loss was not checked
                    save()
            metrics_late.drain()
            loop.epoch, loop.batch_in_epoch = epoch + 1, 0
            is_last = loop.epoch == tcfg.num_epochs
            if loop.epoch % tcfg.eval_every_epochs == 0 or is_last:
                run_eval(epoch)
                save(loop_lib.kept_score(loop))
            elif is_last or loop.step % tcfg.checkpoint_every_steps == 0:
                save()
    finally:
        bar.close()
    ckpt.close()

    summary = loop_lib.run_summary(
        loop,
        workdir=workdir_path,
        best_metric=tcfg.best_metric,
        best_predictions=best[0],
        wall_time_s=clock.total(),
    )
    loop_lib.write_summary(log, workdir_path, summary, runlog.summary_table(summary))
    return summary
