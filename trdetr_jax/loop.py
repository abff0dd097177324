"""What a training loop does besides stepping, shared by a single run
(:func:`trdetr_jax.train.train_and_evaluate`) and a run of several seeds
(:func:`trdetr_jax.seeds.train_and_evaluate_seeds`).

- :func:`prepare`: every check that can refuse a run, before the workdir is touched (loop
  settings, the workdir, the mesh, the data: every row and feature header, and when resuming
  whether the new config keeps what the checkpoints fix);
- :func:`restore` / :func:`open_run`: the newest readable checkpoint; the run's
  ``config.json`` and logs once it goes ahead;
- :class:`LateMetrics`, :func:`add_train_metrics` / :func:`log_train`: train metrics fetched
  one dispatch late and checked, and their running means (kept in the loop state, so a
  resumed run logs what an uninterrupted one would);
- :func:`record_eval`: an evaluation's record, the best so far (its predictions written) and
  early stopping;
- :func:`run_summary` / :func:`write_summary`: what a run reports at its end.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from trdetr_jax import checkpointing, compile_cache, files, objective, precision, rundir, runlog
from trdetr_jax import data as data_lib
from trdetr_jax import mesh as mesh_lib
from trdetr_jax.errors import NonFiniteLossError, RunError

POSITIVE_INT_SETTINGS = (
    "num_epochs",
    "batch_size",
    "eval_batch_size",
    "eval_every_epochs",
    "log_every_steps",
    "checkpoint_every_steps",
    "steps_per_dispatch",
)


def check_train_config(tcfg: ml_collections.ConfigDict) -> None:
    """Loop settings that must be positive integers, and the dropout generator; named as on
    the command line."""
    for name in POSITIVE_INT_SETTINGS:
        value = tcfg[name]
        if not isinstance(value, int) or value < 1:
            raise RunError(f"config.train.{name} must be a positive integer, got {value!r}")
    try:
        objective.check_dropout_prng(tcfg.get("dropout_prng", ""))
    except ValueError as e:
        raise RunError(str(e)) from None


@dataclasses.dataclass
class RunSetup:
    """A run that passed every check; nothing is written yet."""

    config: ml_collections.ConfigDict  # resolved: the dataset's paths filled in
    workdir: pathlib.Path
    mesh: jax.sharding.Mesh
    train_ds: Any
    eval_ds: Any
    new_cfg: dict[str, Any]  # the config as written to config.json
    old_cfg: dict[str, Any] | None  # the workdir's config.json when it holds checkpoints
    n_steps_epoch: int
    total_steps: int
    eval_batch_size: int  # rows of an eval batch: a multiple of the device count

    @property
    def config_path(self) -> pathlib.Path:
        return self.workdir / checkpointing.CONFIG_FILE

    @property
    def ckpt_dir(self) -> pathlib.Path:
        return self.workdir / checkpointing.CHECKPOINT_SUBDIR


def prepare(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    devices: Sequence[jax.Device] | None,
    check_saved: Callable[[dict[str, Any], pathlib.Path], None] | None = None,
) -> RunSetup:
    """Every check that can refuse the run, in order; nothing is written to ``workdir``.

    ``check_saved(old_cfg, workdir)``: what the caller also requires of the config of the
    checkpoints it would resume (the seeds they hold).
    """
    mesh_lib.maybe_initialize_distributed(config)
    tcfg = config.train
    check_train_config(tcfg)
    compile_cache.enable(tcfg.get("compilation_cache_dir"))
    workdir = pathlib.Path(workdir).resolve()
    rundir.check_workdir(workdir)
    mesh = mesh_lib.make_mesh(devices)
    mesh_lib.check_batch_size(tcfg.batch_size, mesh, "config.train.batch_size")
    try:
        objective.check_dropout_prng_on_mesh(tcfg.get("dropout_prng", ""), mesh)
        precision.check_on_mesh(precision.of_config(config), mesh)
    except ValueError as e:
        raise RunError(str(e)) from None
    n_dev = mesh.devices.size
    # Every annotation row and feature file header is checked here, before compiling.
    config, train_ds, eval_ds = data_lib.load_datasets(config)
    new_cfg = rundir.config_to_dict(config)
    ckpt_dir = workdir / checkpointing.CHECKPOINT_SUBDIR
    config_path = workdir / checkpointing.CONFIG_FILE
    old_cfg = rundir.saved_config(config_path) if rundir.has_checkpoints(ckpt_dir) else None
    if old_cfg is not None:
        if check_saved is not None:
            check_saved(old_cfg, workdir)
        rundir.check_resumable(old_cfg, new_cfg, workdir)
    n_steps_epoch = data_lib.steps_per_epoch(len(train_ds), tcfg.batch_size)
    return RunSetup(
        config=config,
        workdir=workdir,
        mesh=mesh,
        train_ds=train_ds,
        eval_ds=eval_ds,
        new_cfg=new_cfg,
        old_cfg=old_cfg,
        n_steps_epoch=n_steps_epoch,
        total_steps=n_steps_epoch * tcfg.num_epochs,
        eval_batch_size=-(-tcfg.eval_batch_size // n_dev) * n_dev,  # eval pads: round up
    )


def restore(ckpt: checkpointing.RunCheckpoints, abstract_state: Any, workdir: pathlib.Path):
    """``(restored, notes)``: ``(step, state, loop state)`` of the newest checkpoint that reads
    completely (None for a new run), and the lines reporting unreadable ones."""
    notes: list[str] = []
    candidates = ckpt.candidate_steps()
    if not candidates:
        return None, notes
    return rundir.resume_point(ckpt, abstract_state, candidates, workdir, notes), notes


def open_run(
    setup: RunSetup,
    restored,
    notes: Sequence[str],
    seed_dirs: dict[int, pathlib.Path] | None = None,
) -> runlog.RunLog:
    """The run goes ahead: its ``config.json`` written, its logs opened (records after the
    resumed step dropped), the unreadable checkpoints noted in ``train.log``."""
    setup.workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        files.write_json_atomic(setup.config_path, setup.new_cfg)
    log = runlog.RunLog(setup.workdir, None if restored is None else restored[0], seed_dirs)
    for line in notes:
        log.info("%s", line, console=False)  # already shown as warnings
    counts = data_lib.bucket_counts(
        setup.train_ds, setup.config.train.batch_size, epoch=0, seed=setup.config.seed
    )
    log.info(
        "length buckets: %s; train batches per bucket (video x text) in epoch 1: %s",
        setup.train_ds.buckets.describe(),
        ", ".join(f"{n} at {v}x{t}" for (v, t), n in counts.items()),
    )
    return log


def log_start(
    log: runlog.RunLog, setup: RunSetup, loop: checkpointing.LoopState, *, resumed: bool
) -> None:
    """What a single-seed run is about to do: a new run's size, a finished run's state, or
    where a resumed run goes on from."""
    tcfg = setup.config.train
    if not resumed:
        log.info(
            "new run in %s: %d devices (%s), %d train / %d eval examples, %d steps/epoch, "
            "%d epochs",
            setup.workdir,
            setup.mesh.devices.size,
            jax.devices()[0].platform,
            len(setup.train_ds),
            len(setup.eval_ds),
            setup.n_steps_epoch,
            tcfg.num_epochs,
        )
    elif loop.epoch >= tcfg.num_epochs or loop.stopped_early:
        log.info(
            "%s is finished (step %d, %d epochs%s): nothing to train",
            setup.workdir,
            loop.step,
            loop.epoch,
            ", stopped early" if loop.stopped_early else "",
        )
    else:
        log_resume(log, setup, loop)


def log_resume(log: runlog.RunLog, setup: RunSetup, loop: checkpointing.LoopState) -> None:
    """Where a resumed run goes on from, and what changed in its config."""
    log.info(
        "resuming %s from step %d (epoch %d, batch %d of %d)",
        setup.workdir,
        loop.step,
        loop.epoch + 1,
        loop.batch_in_epoch,
        setup.n_steps_epoch,
    )
    for change in rundir.config_diff(setup.old_cfg or {}, setup.new_cfg):
        log.info("config changed since the checkpoint: %s", change)


def log_new_shapes(fn, what: str, info, *, leading: str | None = None):
    """``fn(x, batch, ...)`` that reports, once per padded (video, text) length, that jit
    compiles ``what`` for it (an earlier run in this process may have compiled it).
    ``leading``: the name of the batch's leading axis to count in the message (a chunk's
    ``'steps'``)."""
    seen: set[tuple] = set()

    @functools.wraps(fn)
    def wrapped(first, batch, *args):
        mask_v, mask_t = batch["src_vid_mask"].shape, batch["src_txt_mask"].shape
        if (mask_v, mask_t) not in seen:
            seen.add((mask_v, mask_t))
            extra = f" of {mask_v[0]} {leading}" if leading else ""
            info(
                "%s%s for video length %d, text length %d (compiled once per bucket)",
                what,
                extra,
                mask_v[-1],
                mask_t[-1],
            )
        return fn(first, batch, *args)

    return wrapped


# ----------------------------------------------------------------------- train metrics


def check_finite(metrics: dict[str, Any], step: int) -> None:
    """Raises :class:`NonFiniteLossError` (before anything is saved) on a non-finite loss."""
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        parts = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()))
        raise NonFiniteLossError(
            f"training loss became {loss} at step {step} ({parts}). Stopped before saving: the "
            "last checkpoint is intact and a rerun resumes from it, but with the same data and "
            "settings it will fail the same way. Common causes: a learning rate too high "
            "(--config.optim.lr), NaN/Inf in the input features, an empty mask."
        )


def add_train_metrics(loop: checkpointing.LoopState, metrics: dict[str, Any]) -> None:
    """One step's metrics into the running sums of ``loop`` (saved with it)."""
    for k, v in metrics.items():
        loop.log_sums[k] = loop.log_sums.get(k, 0.0) + float(v)
    loop.log_count += 1


def log_train(
    log: runlog.RunLog,
    loop: checkpointing.LoopState,
    *,
    step: int,
    epoch: int,
    seconds: float,
    seed: int | None = None,
) -> None:
    """A train record and log line: the means of the sums since the last one (reset), and
    their steps per second over ``seconds``. ``seed``: the record's seed (several seeds)."""
    summary = {k: v / loop.log_count for k, v in loop.log_sums.items()}
    summary["steps_per_sec"] = loop.log_count / max(seconds, 1e-9)
    loop.log_sums, loop.log_count = {}, 0
    tag = {} if seed is None else {"seed": seed}
    log.record({"type": "train", **tag, "step": step, "epoch": epoch + 1, **summary})
    log.info(
        "%sstep %d epoch %d: %s",
        "" if seed is None else f"seed {seed} ",
        step,
        epoch + 1,
        " ".join(f"{k}={v:.4g}" for k, v in summary.items()),
    )


class LateMetrics:
    """Train metrics fetched one dispatch late, so the host reads a dispatch's metrics while
    the next one runs. Each step's loss is checked (:func:`check_finite`) and summed into the
    loop state, shown on the progress bar and logged every ``log_every`` steps.

    ``push`` after each dispatch (it drains the one before); ``drain`` before anything is
    saved, so no state is saved whose loss was not checked.
    """

    def __init__(
        self, log: runlog.RunLog, loop: checkpointing.LoopState, *, log_every: int, total_steps: int
    ):
        self.log, self.loop = log, loop
        self.log_every, self.total_steps = log_every, total_steps
        self._pending: tuple[int, Any, int] | None = None  # (last step, metrics, steps)
        self._t_log = time.perf_counter()

    def push(self, metrics: Any, *, last_step: int, n: int) -> None:
        """A dispatch's metrics (scalars, or ``[n]`` for a chunk of ``n`` steps ending at
        ``last_step``)."""
        self.drain()
        self._pending = (last_step, metrics, n)

    def drain(self) -> None:
        if self._pending is None:
            return
        last, metrics, n = self._pending
        self._pending = None
        metrics = jax.device_get(metrics)
        stacked = np.ndim(metrics["loss"]) == 1
        for i in range(n):
            step = last - n + 1 + i
            one = {k: v[i] for k, v in metrics.items()} if stacked else metrics
            check_finite(one, step)
            add_train_metrics(self.loop, one)
            self.log.bar.update(step, f"loss {float(one['loss']):.4f}")
            if step % self.log_every == 0 or step == self.total_steps:
                now = time.perf_counter()
                log_train(
                    self.log, self.loop, step=step, epoch=self.loop.epoch, seconds=now - self._t_log
                )
                self._t_log = now


# -------------------------------------------------------------------------- evaluation


def best_paths(workdir: pathlib.Path, split: str) -> tuple[pathlib.Path, pathlib.Path]:
    """The best evaluation's predictions (submission format) and metrics files."""
    return workdir / f"best_{split}_preds.jsonl", workdir / f"best_{split}_preds_metrics.json"


def record_eval(
    log: runlog.RunLog,
    loop: checkpointing.LoopState,
    results: dict[str, Any],
    rows: list[dict[str, Any]],
    *,
    epoch: int,
    tcfg: ml_collections.ConfigDict,
    paths: tuple[pathlib.Path, pathlib.Path],
    seconds: float | None = None,
    seed: int | None = None,
) -> float:
    """Records an evaluation of ``loop``'s run; a new best writes its predictions and metrics
    to ``paths`` (:func:`best_paths`); no improvement in more than ``max_es_cnt`` evaluations
    in a row stops the run (``loop.stopped_early``). Returns the selection metric."""
    from trdetr_jax import inference

    score = inference.brief_metric(results, tcfg.best_metric)
    # None marks a metric the split cannot give (e.g. an empty length bucket).
    brief = {k: None if v is None else float(v) for k, v in results["brief"].items()}
    improved = loop.best_score is None or score > loop.best_score
    tag = {} if seed is None else {"seed": seed}
    log.record({"type": "eval", **tag, "step": loop.step, "epoch": epoch + 1, **brief})
    log.info(
        "eval %sepoch %d step %d%s: %s=%.2f%s | %s",
        "" if seed is None else f"seed {seed} ",
        epoch + 1,
        loop.step,
        "" if seconds is None else f" ({seconds:.1f}s)",
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
            files.write_jsonl_atomic(paths[0], rows)
            files.write_json_atomic(paths[1], results)
    else:
        loop.es_cnt += 1
    if 0 <= tcfg.max_es_cnt < loop.es_cnt:
        log.info(
            "%searly stop: no improvement in %d evaluations",
            "" if seed is None else f"seed {seed}: ",
            loop.es_cnt,
        )
        loop.stopped_early = True
    return score


def kept_score(loop: checkpointing.LoopState) -> float | None:
    """The score to save with the checkpoint of an evaluation just recorded: its score when
    it is the run's new best, else None. Only a strict improvement is a new best
    (:func:`record_eval`), so an evaluation that ties the best is saved unscored and the
    checkpoint manager keeps the earlier one, the step the summary names as best (ranking
    both by score, it would keep the newer)."""
    return loop.best_score if loop.best_step == loop.step else None


# ----------------------------------------------------------------------------- summary


def run_summary(
    loop: checkpointing.LoopState,
    *,
    workdir: pathlib.Path,
    best_metric: str,
    best_predictions: pathlib.Path,
    wall_time_s: float,
) -> dict[str, Any]:
    """A run's (or one seed's) summary: its progress and its best evaluation."""
    return {
        "workdir": str(workdir),
        "steps": loop.step,
        "epochs": loop.epoch,
        "best_metric": best_metric,
        "best_score": loop.best_score,
        "best_epoch": loop.best_epoch,
        "best_step": loop.best_step,
        "best_brief": loop.best_brief,
        "best_predictions": str(best_predictions),
        "wall_time_s": wall_time_s,
    }


def write_summary(log: runlog.RunLog, workdir: pathlib.Path, summary: dict, table: str) -> None:
    """``summary.json``, and the summary table printed and in ``train.log``."""
    if jax.process_index() == 0:
        files.write_json_atomic(workdir / "summary.json", summary)
        log.info("summary:\n%s", table, console=False)
        print(table, flush=True)


class Clock:
    """Wall time of a run over all its processes: ``before`` (saved in the loop state by
    earlier processes) plus this process's time since it started."""

    def __init__(self, before: float = 0.0):
        self.start = time.time()
        self.before = before

    def total(self) -> float:
        return self.before + time.time() - self.start
