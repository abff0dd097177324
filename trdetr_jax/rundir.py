"""The run directory: can it be written, may a run resume in it, which checkpoint to resume.

Everything here decides before the workdir is touched; :func:`resume_point` is the one
function that changes it (it moves unreadable checkpoint steps aside).
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import jax
import ml_collections
from absl import logging

from trdetr_jax import checkpointing
from trdetr_jax.errors import RunError


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_diff(a, b, prefix + k + ".")
        elif a != b:
            diffs.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return diffs


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


# Settings a run cannot change when it resumes: they fix the shapes of the parameters, of the
# optimiser state or of the batches, or the run's random streams and data positions. A
# trailing '.' names a whole section; the others are single keys.
RESUME_FIXED = (
    "seed",
    "model.",
    "data.dataset",
    "data.v_feat_dirs",
    "data.v_feat_dims",
    "data.v_feat_format",
    "data.t_feat_dim",
    "data.a_feat_dir",
    "data.a_feat_dim",
    "data.use_tef",
    "data.max_v_l",
    "data.max_q_l",
    "data.max_windows",
    "train.batch_size",
)


# Model settings that change neither shapes nor anything a checkpoint holds.
RESUME_FREE_MODEL = ("model.dropout", "model.input_dropout")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_conflicts(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``'key old -> new'`` for each :data:`RESUME_FIXED` setting that differs."""
    a, b = _flat(old), _flat(new)
    out = []
    for key in sorted(set(a) | set(b)):
        fixed = any(key == f or (f.endswith(".") and key.startswith(f)) for f in RESUME_FIXED)
        if fixed and key not in RESUME_FREE_MODEL and a.get(key) != b.get(key):
            out.append(f"{key} {a.get(key)!r} -> {b.get(key)!r}")
    return out


def check_resumable(old: dict[str, Any], new: dict[str, Any], workdir: pathlib.Path) -> None:
    conflicts = resume_conflicts(old, new)
    if conflicts:
        raise RunError(
            f"cannot resume {workdir}: settings fixed by its checkpoints differ from its "
            f"{checkpointing.CONFIG_FILE}: {', '.join(conflicts)}. Set them back, or use "
            "another --workdir for a new run."
        )


def check_workdir(workdir: pathlib.Path) -> None:
    """The workdir (or the folder it will be created in) can be written; changes nothing."""
    existing = workdir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunError(f"--workdir {workdir}: {existing} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".trdetr-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunError(f"--workdir {workdir}: cannot write in {existing} ({e.strerror})") from None


def has_checkpoints(ckpt_dir: pathlib.Path) -> bool:
    if not ckpt_dir.is_dir():
        return False
    ckpt = checkpointing.RunCheckpoints(ckpt_dir, read_only=True)
    try:
        return bool(ckpt.candidate_steps())
    finally:
        ckpt.close()


def saved_config(path: pathlib.Path) -> dict[str, Any] | None:
    """The ``config.json`` of an earlier run in the workdir, None if there is none."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(
            f"{path}: cannot read the run's recorded configuration ({e}); restore it, or use "
            "another --workdir"
        ) from None


def resume_point(
    ckpt: checkpointing.RunCheckpoints,
    abstract_state: Any,
    candidates: list[int],
    workdir: pathlib.Path,
    notes: list[str],
) -> tuple[int, Any, checkpointing.LoopState]:
    """``(step, state, loop)`` of the newest checkpoint that restores completely.

    Each unreadable step is reported in one warning line (appended to ``notes``) and moved
    to ``<workdir>/checkpoints_damaged/`` once an older step has restored, so that the
    replayed steps can be saved again. Raises :class:`RunError` when no step can be read.
    """

    def on_damaged(step: int, reason: str) -> None:
        line = f"checkpoint step {step} of {ckpt.directory} cannot be read ({reason})"
        logging.warning("%s", line)
        notes.append(line)

    found = ckpt.restore_intact(abstract_state, candidates, on_damaged)
    if found is None:
        raise RunError(
            f"no checkpoint of {ckpt.directory} can be read (steps "
            f"{', '.join(map(str, candidates))}); move that folder away to start the run over"
        )
    for step in (s for s in candidates if s > found[0]):
        if jax.process_index() == 0:
            dest = ckpt.set_aside(step, workdir / checkpointing.DAMAGED_SUBDIR)
            line = f"moved the unreadable checkpoint step {step} to {dest}"
            logging.warning("%s", line)
            notes.append(line)
    return found
