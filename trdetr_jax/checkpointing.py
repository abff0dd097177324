"""Checkpoints of a training run: Orbax, keeping the latest and the best by the selection metric.

One ``CheckpointManager`` under ``<workdir>/checkpoints``; each step directory holds two items:

- ``state``: the :class:`~trdetr_jax.train.TrainState` pytree (step, params, optimizer state),
  written with ``ocp.args.StandardSave``;
- ``loop``: the host-side loop state (:class:`LoopState`) as JSON: which epoch is in progress,
  how many of its batches are done, the best score so far, the early-stopping counter.

A run of several seeds (:mod:`trdetr_jax.seeds`) saves the same two items with the seeds'
train states stacked on a leading axis and a :class:`SeedsLoopState` (the run's position and
one :class:`LoopState` per seed) as ``loop``, unscored (its manager keeps the latest); each
seed's own folder holds a manager of this layout for that seed alone.

Checkpoints saved right after an evaluation that is a new best carry
``metrics={"score": ...}`` (one that only ties the best is saved unscored, so the first best,
the step the run's summary names, stays). The preservation policy keeps the newest
checkpoint (``LatestN(1)``) and the best-scoring one (``BestN(1)``); everything else is
deleted by Orbax after each save.

Atomicity: Orbax writes a step into a temporary directory and renames it only once every item
is complete, and the manager lists finalised steps only. Saves here are synchronous (the train
step donates its state buffers, so nothing may still be reading them when it runs), which
means that when :meth:`RunCheckpoints.save` returns, the checkpoint is on disk. A process
killed mid-save leaves a temporary directory that is ignored and removed
(``cleanup_tmp_directories``) the next time a manager opens the folder.

Damage after the fact (a truncated or deleted data file, a deleted or garbled
``manifest.ocdbt``, ``state/_METADATA`` or ``loop/metadata``) is found by restoring:
:meth:`RunCheckpoints.restore_intact` tries the steps newest first and returns the first one
whose two items both restore, so train state and loop state always come from one step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import pathlib
import shutil
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

STATE_ITEM = "state"
LOOP_ITEM = "loop"
CHECKPOINT_SUBDIR = "checkpoints"
CONFIG_FILE = "config.json"
# Where a resumed run moves the step directories it could not read (kept for inspection,
# out of the manager's folder so that the replayed steps can be saved again).
DAMAGED_SUBDIR = "checkpoints_damaged"


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be read (every candidate step is damaged)."""


@dataclasses.dataclass
class LoopState:
    """Host-side state of the training loop, saved beside the train state.

    Together with ``config.seed`` this determines everything the rest of the run does: data
    order and saliency-pair sampling are seeded by (seed, epoch), dropout keys by
    ``fold_in(key(seed), step)``, so no random generator state needs saving.
    """

    # Epoch in progress (0-based) and how many of its batches are already trained.
    epoch: int = 0
    batch_in_epoch: int = 0
    # Global optimiser step (equals ``state.step``).
    step: int = 0
    # Best selection-metric value so far, the step / epoch it was reached at.
    best_score: float | None = None
    best_step: int | None = None
    best_epoch: int | None = None
    # Brief metrics of the best evaluation (for the final summary).
    best_brief: dict[str, float] | None = None
    # Evaluations in a row without improvement (early stopping).
    es_cnt: int = 0
    # Seed of the run that wrote this state (checked on resume).
    seed: int = 0
    # True once early stopping ended the run (a rerun then only reports).
    stopped_early: bool = False
    # Running sums of train metrics since the last log line (so a resumed run logs the same).
    log_sums: dict[str, float] = dataclasses.field(default_factory=dict)
    log_count: int = 0
    # Wall-clock seconds of every process of the run up to this checkpoint (the summary's
    # wall time adds the current process's time since its start to it).
    wall_time_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LoopState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def state_steps(self) -> list[int]:
        """The optimiser step(s) the saved train state must hold (checked on restore)."""
        return [self.step]


@dataclasses.dataclass
class SeedsLoopState:
    """Host-side state of a run of several seeds (:mod:`trdetr_jax.seeds`), saved beside
    their stacked train state: the run's position plus one :class:`LoopState` per seed.

    ``step`` counts the run's steps; ``loops[k].step`` counts the updates seed ``k`` applied
    (equal while it trains; frozen once it stopped early or its loss became non-finite).
    """

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    seeds: list[int] = dataclasses.field(default_factory=list)
    loops: list[LoopState] = dataclasses.field(default_factory=list)
    # Per seed: None, or the one-line report of the step at which its loss became non-finite.
    failed: list[str | None] = dataclasses.field(default_factory=list)
    wall_time_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["loops"] = [loop.to_json() for loop in self.loops]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SeedsLoopState:
        names = {f.name for f in dataclasses.fields(cls)}
        out = cls(**{k: v for k, v in d.items() if k in names})
        out.loops = [LoopState.from_json(x) for x in out.loops]
        return out

    def state_steps(self) -> list[int]:
        return [loop.step for loop in self.loops]


class _QuietUntracked(logging.Filter):
    """Drops two Orbax warnings that are expected here: saves without metrics (only evaluated
    saves carry a score) and opening a run's checkpoints read-only (prediction)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            "did not provide metrics" in message or "Given directory is read only" in message
        )


logging.getLogger("absl").addFilter(_QuietUntracked())


def _score(metrics: dict[str, Any]) -> float:
    return float(metrics["score"])


class RunCheckpoints:
    """The checkpoints of one run: latest + best, atomic, synchronous."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        read_only: bool = False,
        loop_type: type = LoopState,
    ):
        self.directory = pathlib.Path(directory).resolve()
        # LoopState, or SeedsLoopState for the stacked state of a run of several seeds.
        self.loop_type = loop_type
        options = ocp.CheckpointManagerOptions(
            # best_fn/best_mode make `best_step()` rank by the saved metrics; what is kept is
            # decided by `preservation_policy` alone.
            best_fn=_score,
            best_mode="max",
            preservation_policy=pp.AnyPreservationPolicy(
                [
                    pp.LatestN(n=1),
                    pp.BestN(get_metric_fn=_score, n=1, keep_checkpoints_without_metrics=False),
                ]
            ),
            enable_async_checkpointing=False,
            save_interval_steps=0 if read_only else 1,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE_ITEM, LOOP_ITEM)
        )

    # ------------------------------------------------------------------ save
    def save(self, state: Any, loop: Any, *, score: float | None = None) -> None:
        """Saves ``state`` + ``loop`` at ``loop.step``; ``score`` marks an evaluated checkpoint."""
        metrics = None if score is None else {"score": float(score)}
        self.manager.save(
            loop.step,
            args=ocp.args.Composite(
                **{
                    STATE_ITEM: ocp.args.StandardSave(state),
                    LOOP_ITEM: ocp.args.JsonSave(loop.to_json()),
                }
            ),
            metrics=metrics,
            force=True,
        )
        self.manager.wait_until_finished()

    # --------------------------------------------------------------- restore
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The best evaluated step, or None when no saved checkpoint has been evaluated."""
        if not any(self.manager.metrics(s) is not None for s in self.manager.all_steps()):
            return None
        return self.manager.best_step()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, LoopState]:
        """Restores the train state (to ``abstract_state``'s shapes and shardings) and loop state."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                    LOOP_ITEM: ocp.args.JsonRestore(),
                }
            ),
        )
        return restored[STATE_ITEM], self.loop_type.from_json(restored[LOOP_ITEM])

    def candidate_steps(self, *, best_first: bool = False) -> list[int]:
        """Finalised steps, newest first; ``best_first`` puts the best evaluated step first."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        best = self.best_step() if best_first else None
        if best is not None:
            steps = [best] + [s for s in steps if s != best]
        return steps

    def restore_intact(
        self,
        abstract_state: Any,
        steps: Iterable[int],
        on_damaged: Callable[[int, str], None],
    ) -> tuple[int, Any, LoopState] | None:
        """``(step, state, loop)`` of the first of ``steps`` whose items all restore.

        Train state and loop state always come from the same step: a step where either item
        fails to read (or where they disagree on the step) is reported through
        ``on_damaged(step, reason)`` and skipped as a whole. ``None`` when no step remains.
        """
        for step in steps:
            with _quiet_orbax():
                try:
                    state, loop = self.restore(step, abstract_state)
                    found = (
                        np.asarray(state.step).reshape(-1).tolist()
                        if hasattr(state, "step")
                        else loop.state_steps()
                    )
                    if loop.step != step or found != loop.state_steps():
                        raise ValueError(
                            f"loop state says step {loop.step} ({loop.state_steps()}), train "
                            f"state {found}"
                        )
                except Exception as e:  # noqa: BLE001 (any failure to read means: damaged)
                    reason = _one_line(e)
                    del e
                    # The reads still pending of the failed restore end (and would log their
                    # errors) when collected: collect them while Orbax is silenced.
                    gc.collect()
                else:
                    return step, state, loop
            on_damaged(step, reason)
        return None

    def set_aside(self, step: int, dest: str | os.PathLike) -> pathlib.Path:
        """Moves a damaged step directory to ``dest/<step>`` and forgets it."""
        dest = pathlib.Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / str(step)
        n = 1
        while target.exists():
            target, n = dest / f"{step}.{n}", n + 1
        shutil.move(str(self.directory / str(step)), str(target))
        self.manager.reload()
        return target

    def delete_after(self, step: int) -> list[int]:
        """Deletes the finalised steps after ``step`` (a resumed run saves them again)."""
        later = sorted(s for s in self.manager.all_steps() if s > step)
        for s in later:
            self.manager.delete(s)
        return later

    def close(self) -> None:
        self.manager.close()


def _one_line(e: BaseException) -> str:
    """An exception as one short line (Orbax / TensorStore messages run over many lines)."""
    text = " ".join(str(e).split()).split(" [tensorstore_spec")[0]
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@contextlib.contextmanager
def _quiet_orbax():
    """Silences Orbax's own error logging (and the errors of its abandoned reads) while a
    possibly damaged step is tried; the caller reports the failure in one line."""
    loggers = [logging.getLogger(n) for n in ("absl", "orbax", "asyncio", "jax._src.array")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    hook = sys.unraisablehook
    # Callbacks of the failed reads find their event loop closed ("Event loop is closed").
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        sys.unraisablehook = hook
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
