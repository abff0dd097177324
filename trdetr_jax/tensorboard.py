"""TensorBoard event files beside ``metrics.jsonl``, written without TensorFlow.

Every record :class:`trdetr_jax.runlog.RunLog` writes becomes scalars ``<type>/<name>`` at
its ``step`` (``train/loss``, ``train/lr``, ``train/grad_norm``, ``eval/MR-full-mAP``, ...;
tensorboardX writes ``@`` as ``_`` in tags: ``eval/MR-full-R1_0.5``).
The writer is ``tensorboardX`` (``pip install 'trdetr_jax[tensorboard]'``); without it no
event file is written and one info line says so. View with
``tensorboard --logdir WORKDIR``.
"""

from __future__ import annotations

import math
import pathlib
import struct
from typing import Any

from absl import logging

SKIP = ("type", "step", "epoch")  # record fields that are not curves


class EventWriter:
    """Scalars of run records into ``logdir``; opened at the first record. ``resume_step``:
    the step a resumed run restarts from (TensorBoard drops the old events after it)."""

    def __init__(self, logdir: str | pathlib.Path, resume_step: int | None = None):
        self.logdir = pathlib.Path(logdir)
        self.resume_step = resume_step
        self._writer = None
        self._missing = False

    def _open(self):
        if self._writer is None and not self._missing:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                self._missing = True
                logging.info(
                    "tensorboardX is not installed: no TensorBoard event files "
                    "(pip install 'trdetr_jax[tensorboard]'); metrics.jsonl has every record"
                )
                return None
            purge = None if self.resume_step is None else self.resume_step + 1
            self._writer = SummaryWriter(str(self.logdir), purge_step=purge)
        return self._writer

    def write(self, record: dict[str, Any]) -> None:
        writer = self._open()
        if writer is None:
            return
        kind, step = record.get("type", "run"), int(record.get("step", 0))
        for name, value in record.items():
            if name in SKIP or isinstance(value, bool) or value is None:
                continue
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                writer.add_scalar(f"{kind}/{name}", value, step)
        writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_scalars(logdir: str | pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every event file in ``logdir`` (needs tensorboardX
    for the event protocol buffer), in file order."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(pathlib.Path(logdir).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):  # TFRecord: length u64, crc u32, payload, crc u32
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            payload = data[pos + 12 : pos + 12 + n]
            pos += 12 + n + 4
            event = event_pb2.Event.FromString(payload)
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((int(event.step), float(v.simple_value)))
    return out
