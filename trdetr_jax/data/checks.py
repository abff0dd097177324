"""Checks of both splits before anything is compiled: a fault in the data ends the run in
seconds, with every problem listed, rather than at the batch (or the evaluation) that reads it.

:func:`preflight` checks, per split:

* annotation rows (field types, positive durations, windows with start < end) were checked
  when the file was read (:func:`trdetr_jax.data.annotations.row_problems`);
* qids are unique (text features are found by qid: a repeated qid would train or score one
  query with another query's text);
* every window lies inside ``[0, duration]``. A window that starts before 0 or ends after
  the duration is odd but usable: by default it is clamped to ``[0, duration]`` with one
  warning that counts them; ``config.data.strict`` refuses the run and lists them. A window
  with nothing left inside ``[0, duration]`` is an error;
* every feature file of every row exists, is readable and has the configured width (file
  headers only, :meth:`~trdetr_jax.data.features.FeatureStore.lengths`).

Problems are reported all at once, ``file:line``, qid, field and value, the first
:data:`~trdetr_jax.data.annotations.MAX_LISTED` listed and the rest counted.
"""

from __future__ import annotations

import json
import logging
import os

from trdetr_jax.data.annotations import format_problems
from trdetr_jax.data.errors import DataError


def _line_numbers(path: str, domain: str | None) -> list[int]:
    """File line of each row ``read_annotations`` returns (it skips blank lines and, with a
    ``domain``, TVSum rows of other domains)."""
    with open(path, encoding="utf-8") as f:
        return [
            i
            for i, line in enumerate(f, start=1)
            if line.strip() and (domain is None or json.loads(line).get("domain") == domain)
        ]


def _where(path: str, lines: list[int], index: int) -> str:
    return f"{path}:{lines[index]}" if index < len(lines) else f"{path} (row {index + 1})"


def check_split(ds, path: str, *, strict: bool, domain: str | None = None) -> tuple[list[str], int]:
    """``(problems, clamped)`` of one split; clamps odd windows in ``ds.rows`` unless strict.

    Rows are matched to file lines by position (the reader keeps file order; a
    ``data_ratio`` subset is a prefix, TVSum keeps the rows of ``domain``).
    """
    path = os.fspath(path)
    lines = _line_numbers(path, domain if ds.layout == "tvsum" else None)
    problems: list[str] = []
    clamped = 0
    seen: dict = {}
    for i, row in enumerate(ds.rows):
        where = _where(path, lines, i)
        qid = row["qid"]
        if qid in seen:
            problems.append(f"{where}: qid {qid!r} repeats the qid of {seen[qid]}")
        else:
            seen[qid] = where
        windows = row.get("relevant_windows")
        duration = row.get("duration")
        if windows is not None and duration is not None and ds.layout != "tvsum":
            fixed = []
            for j, (st, ed) in enumerate(windows):
                inside = [max(0.0, st), min(float(duration), ed)]
                if inside == [st, ed]:
                    fixed.append([st, ed])
                    continue
                field = f"field 'relevant_windows'[{j}] = {[st, ed]}"
                if inside[0] >= inside[1]:
                    problems.append(
                        f"{where}: {field} lies outside [0, duration = {duration}] (qid {qid!r})"
                    )
                elif strict:
                    problems.append(
                        f"{where}: {field} is not inside [0, duration = {duration}] "
                        f"(qid {qid!r}; config.data.strict=False would clamp it)"
                    )
                else:
                    fixed.append(inside)
                    clamped += 1
            if len(fixed) == len(windows) and fixed != windows:
                ds.rows[i] = {**row, "relevant_windows": fixed}
        try:
            ds.store.lengths(row["vid"], qid)
        except DataError as e:
            problems.append(f"{where}: {e} (qid {qid!r})")
    return problems, clamped


def preflight(data, train_ds=None, eval_ds=None) -> None:
    """Checks the splits given (see the module docstring) against ``config.data``; raises
    one :class:`DataError` listing every problem found, or returns after at most one
    warning about clamped windows. :func:`~trdetr_jax.data.build_datasets` calls it."""
    strict = bool(data.get("strict", False))
    problems: list[str] = []
    clamped = 0
    for ds, path in ((train_ds, data.train_path), (eval_ds, data.eval_path)):
        if ds is None:
            continue
        found, n = check_split(ds, path, strict=strict, domain=data.domain)
        problems += found
        clamped += n
    if problems:
        raise DataError(format_problems("the data cannot be used", problems))
    if clamped:
        logging.warning(
            "%d annotated window(s) start before 0 or end after the video's duration; clamped "
            "to [0, duration] (--config.data.strict=True refuses such rows instead)",
            clamped,
        )
