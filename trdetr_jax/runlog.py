"""What a training run shows and writes as it goes: the progress bar on stderr, ``train.log``
(human-readable), ``metrics.jsonl`` (one JSON object per record) and the final summary table.
Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Any

import jax
from absl import logging

from trdetr_jax import files, tensorboard


class ProgressBar:
    """A one-line progress bar on stderr: step, steps/s, ETA (redrawn in place on a TTY)."""

    def __init__(self, total: int, initial: int = 0, stream=None, min_interval: float = 0.5):
        self.total, self.initial = total, initial
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        # Off a TTY a line every 30 s is plenty (logs, CI).
        self.min_interval = min_interval if self.tty else 30.0
        self.t0 = self.t_last = None
        self.n0 = initial
        self.enabled = jax.process_index() == 0
        self.drawn = False

    def clear(self) -> None:
        """Blanks the bar's line so a log line can be printed; the next update redraws it."""
        if self.drawn:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
            self.drawn = False

    def update(self, n: int, text: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.t0 is None:  # the first update follows compilation: rate from here on
            self.t0, self.n0, self.t_last = now, n, now
        if now - self.t_last < self.min_interval and n < self.total:
            return
        self.t_last = now
        rate = (n - self.n0) / max(now - self.t0, 1e-9)
        eta = (self.total - n) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * n / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = f"[{bar}] {n}/{self.total} {rate:.2f} step/s ETA {fmt_time(eta)} {text}"
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(100))
            self.drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.t0 is not None:
            self.stream.write("\n")
            self.stream.flush()


def fmt_num(v: float | None) -> str:
    """Percentages with 2 decimals; fractions (TVSum mAP: 5 places per domain, their mean
    may have more) in full, up to 10 significant digits (no binary noise)."""
    if v is None:
        return "n/a"
    return f"{v:.2f}" if abs(v) >= 1 or v == 0 else f"{v:.10g}"


def fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class RunLog:
    """``train.log`` (human-readable) and ``metrics.jsonl`` (one JSON object per record)."""

    def __init__(
        self,
        workdir: pathlib.Path,
        resume_step: int | None,
        seed_dirs: dict[int, pathlib.Path] | None = None,
    ):
        self.enabled = jax.process_index() == 0
        self.bar: ProgressBar | None = None  # cleared before console lines
        self.log_path = workdir / "train.log"
        self.metrics_path = workdir / "metrics.jsonl"
        self.events = tensorboard.EventWriter(workdir, resume_step)  # TensorBoard curves
        # A run of several seeds: a record with a "seed" goes to that seed's event files (one
        # TensorBoard run per seed under the workdir).
        self.seed_events = {
            s: tensorboard.EventWriter(d, resume_step) for s, d in (seed_dirs or {}).items()
        }
        if self.enabled:
            self._truncate_metrics(resume_step)

    def _truncate_metrics(self, resume_step: int | None) -> None:
        """Drops records written after the checkpoint we resume from (they will be redone)."""
        if not self.metrics_path.exists():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if resume_step is not None and record.get("step", 0) <= resume_step:
                keep.append(line)
        files.write_text_atomic(self.metrics_path, "".join(s + "\n" for s in keep))

    def info(self, msg: str, *args, console: bool = True) -> None:
        text = msg % args if args else msg
        if console:
            if self.bar is not None:
                self.bar.clear()
            logging.info("%s", text)
        if self.enabled:
            with open(self.log_path, "a") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")

    def record(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record, sort_keys=True, default=files.json_default) + "\n")
            events = self.seed_events.get(record.get("seed"), self.events)
            events.write({k: v for k, v in record.items() if k != "seed"})


def summary_table(summary: dict[str, Any]) -> str:
    """The final human-readable table."""
    rows = [
        ("workdir", summary["workdir"]),
        ("steps / epochs", f"{summary['steps']} / {summary['epochs']}"),
        ("wall time", fmt_time(summary["wall_time_s"])),
        (
            f"best {summary['best_metric']}",
            "n/a"
            if summary["best_score"] is None
            else f"{fmt_num(summary['best_score'])} (epoch {summary['best_epoch']}, "
            f"step {summary['best_step']})",
        ),
    ]
    for k, v in (summary["best_brief"] or {}).items():
        rows.append((f"  {k}", fmt_num(v)))
    rows.append(("best predictions", summary["best_predictions"]))
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(str(v)) for _, v in rows))
    body = "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
    return f"{line}\nTR-DETR training summary\n{line}\n{body}\n{line}"


def fmt_mean_std(mean: float | None, std: float | None) -> str:
    """``mean ± std``: 2 decimals for percentages, 4 for fractions (TVSum mAP); the mean
    alone for one value."""
    if mean is None:
        return "n/a"
    digits = 2 if abs(mean) >= 1 or mean == 0 else 4
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def seeds_table(over: dict[str, dict[str, Any]], per_seed: list[dict[str, Any]]) -> str:
    """Metric rows: mean ± std over seeds (sample std), then one column per seed."""
    header = ["metric", "mean ± std", *(r.get("label") or f"seed {r['seed']}" for r in per_seed)]
    rows = [header]
    for name, agg in over.items():
        cells = [fmt_num((r.get("best_brief") or {}).get(name)) for r in per_seed]
        rows.append([name, fmt_mean_std(agg["mean"], agg["std"]), *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def seeds_summary_table(summary: dict[str, Any]) -> str:
    """The final table of a run of several seeds: run facts, the metric table, each seed's
    status and best step."""
    per_seed = summary["per_seed"]
    facts = [
        ("workdir", summary["workdir"]),
        ("seeds", ", ".join(str(s) for s in summary["seeds"])),
        ("steps / epochs", f"{summary['steps']} / {summary['epochs']}"),
        ("wall time", fmt_time(summary["wall_time_s"])),
        ("selection metric", summary["best_metric"]),
        ("finished", f"{len(summary['finished'])} of {len(per_seed)}"),
    ]
    for r in per_seed:
        best = (
            "no evaluation"
            if r["best_score"] is None
            else f"best {fmt_num(r['best_score'])} at epoch {r['best_epoch']} (step {r['best_step']})"
        )
        facts.append((f"  seed {r['seed']}", f"{r['status']}, {best}"))
    width = max(len(k) for k, _ in facts)
    body = "\n".join(f"{k.ljust(width)}  {v}" for k, v in facts)
    table = seeds_table(summary["over_seeds"], per_seed)
    line = "-" * max(len(x) for x in (body + "\n" + table).splitlines())
    n = len(per_seed)
    title = f"TR-DETR training summary: {n} seeds, best evaluation of each, mean ± std (sample)"
    return f"{line}\n{title}\n{line}\n{body}\n{line}\n{table}\n{line}"
