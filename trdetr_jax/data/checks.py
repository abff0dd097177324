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
  headers only, :meth:`~trdetr_jax.data.features.FeatureStore.lengths`);
* the rows pass the evaluation's own ground-truth check
  (:func:`~trdetr_jax.evaluation.validate.parse_ground_truth`: e.g. a relevant clip id past
  the video, a clip without its 3 annotator scores), which scores the eval split after the
  first epochs and would otherwise end the run there. Its first problem per split is listed;
* a qid in both splits has the same query in both (text features are found by qid).

Usable but unusual rows get one warning per kind, listing the first few: windows ending more
than a clip past their video's features (fewer clips than the duration says: their span
targets lie past 1, as officially; usually a wrong ``clip_length`` or cut feature files);
QVHighlights-layout relevant clips outside every relevant window, and saliency scores
outside the official 0-4 scale (no row of the official files has either).

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


def check_split(
    ds, path: str, *, strict: bool, domain: str | None = None
) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """``(problems, clamped, odd)`` of one split: ``clamped`` says where each clamped window
    is (odd windows are clamped in ``ds.rows`` unless strict); ``odd``: usable but unusual
    rows, by the headline of their warning (see the module docstring).

    Rows are matched to file lines by position (the reader keeps file order; a
    ``data_ratio`` subset is a prefix, TVSum keeps the rows of ``domain``).
    """
    path = os.fspath(path)
    lines = _line_numbers(path, domain if ds.layout == "tvsum" else None)
    problems: list[str] = []
    odd: dict[str, list[str]] = {}
    clamped: list[str] = []
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
                    clamped.append(f"{where}: {field} (qid {qid!r})")
            if len(fixed) == len(windows) and fixed != windows:
                ds.rows[i] = {**row, "relevant_windows": fixed}
        try:
            clips, _ = ds.store.lengths(row["vid"], qid)
        except DataError as e:
            problems.append(f"{where}: {e} (qid {qid!r})")
            continue
        # Span targets are fractions of the clips loaded (as officially): a window past the
        # features' end gives a target past 1. (A video cut to max_v_l has its own warning.)
        ends = [ed for _, ed in ds.rows[i].get("relevant_windows") or []]
        covered = clips * ds.clip_length
        if ds.layout != "tvsum" and clips < ds.max_v_l and ends:
            if max(ends) > covered + ds.clip_length:
                odd.setdefault(PAST_FEATURES, []).append(
                    f"{where}: qid {qid!r}, video {row['vid']}: a window ends at {max(ends)} s "
                    f"but its features hold {clips} clips ({covered:g} s; duration "
                    f"{row.get('duration')})"
                )
        if ds.layout == "qvhighlights":
            for headline, found in _odd_saliency(ds.rows[i], ds.clip_length):
                odd.setdefault(headline, []).append(f"{where}: qid {qid!r}: {found}")
    # Where the evaluation's messages point (trdetr_jax.data.dataset.MomentDataset.gt_file).
    ds.gt_source = path
    ds.gt_lines = [lines[i] if i < len(lines) else i + 1 for i in range(len(ds.rows))]
    problems += _evaluation_problems(ds)
    return problems, clamped, odd


PAST_FEATURES = (
    "annotated windows past the end of the video features (their span targets lie past 1, "
    "as in the official code; check the features' clip length (config.data.clip_length) and "
    "the durations)"
)
OUTSIDE_WINDOWS = "relevant clips outside every relevant window (the official files have none)"
SCORE_RANGE = "saliency scores outside the official 0-4 scale (HD metrics threshold at 2, 3, 4)"


def _odd_saliency(row: dict, clip_length: float) -> list[tuple[str, str]]:
    """QVHighlights saliency labels the official files never have (all 10,310 rows pass)."""
    out = []
    ids, scores = row.get("relevant_clip_ids") or [], row.get("saliency_scores") or []
    windows = row.get("relevant_windows") or []
    outside = [
        c
        for c in ids
        if not any(st <= c * clip_length and (c + 1) * clip_length <= ed for st, ed in windows)
    ]
    if outside and windows:
        out.append((OUTSIDE_WINDOWS, f"clips {outside[:5]} not inside {windows}"))
    flat = [x for s in scores for x in s]
    if any(x < 0 or x > 4 for x in flat):
        out.append((SCORE_RANGE, f"scores from {min(flat)} to {max(flat)}"))
    return out


def _shared_qids(train_ds, eval_ds) -> list[str]:
    """A qid in both splits with two different queries: text features are found by qid, so
    one of them would be read with the other's text. (The same query in both, e.g. scoring
    the training split, is fine.)"""
    first = {}
    for row, line in zip(train_ds.rows, train_ds.gt_lines or []):
        first.setdefault(row["qid"], (row.get("query"), line))
    problems = []
    for row, line in zip(eval_ds.rows, eval_ds.gt_lines or []):
        hit = first.get(row["qid"])
        if hit is not None and hit[0] is not None and row.get("query") is not None:
            if hit[0] != row["query"]:
                problems.append(
                    f"{eval_ds.gt_source}:{line}: qid {row['qid']!r} also appears at "
                    f"{train_ds.gt_source}:{hit[1]} with another query ({row['query']!r} vs "
                    f"{hit[0]!r}); text features are found by qid, so both would read one file"
                )
    return problems


def _evaluation_problems(ds) -> list[str]:
    """The first row the evaluation's ground-truth check refuses (none when all pass); rows
    repeating an earlier qid are left to the check above, rows without labels (a test split,
    predicted but not scored) are not checked."""
    from trdetr_jax.data.annotations import has_labels
    from trdetr_jax.evaluation.errors import EvalInputError
    from trdetr_jax.evaluation.io import JsonlFile
    from trdetr_jax.evaluation.validate import parse_ground_truth

    seen: set = set()
    rows, lines = [], []
    for row, line in zip(ds.gt_rows(), ds.gt_lines):
        if row["qid"] not in seen and has_labels(row, ds.layout):
            seen.add(row["qid"])
            rows.append(row)
            lines.append(line)
    if not rows:
        return []
    try:
        parse_ground_truth(JsonlFile(ds.gt_source, rows, lines), ds.layout)
    except EvalInputError as e:
        return [f"{e} (the evaluation refuses such rows)"]
    return []


def preflight(data, train_ds=None, eval_ds=None) -> None:
    """Checks the splits given (see the module docstring) against ``config.data``; raises
    one :class:`DataError` listing every problem found, or returns after at most one
    warning per kind of odd row. :func:`~trdetr_jax.data.build_datasets` calls it."""
    strict = bool(data.get("strict", False))
    problems: list[str] = []
    odd: dict[str, list[str]] = {}
    clamped: list[str] = []
    for ds, path in ((train_ds, data.train_path), (eval_ds, data.eval_path)):
        if ds is None:
            continue
        found, where, odd_rows = check_split(ds, path, strict=strict, domain=data.domain)
        problems += found
        clamped += where
        for headline, rows in odd_rows.items():
            odd.setdefault(headline, []).extend(rows)
    if train_ds is not None and eval_ds is not None:
        problems += _shared_qids(train_ds, eval_ds)
    if problems:
        raise DataError(format_problems("the data cannot be used", problems))
    for headline, rows in odd.items():
        logging.warning("%s", format_problems(headline, rows, limit=5))
    if clamped:
        logging.warning(
            "%d annotated window(s) start before 0 or end after the video's duration; clamped "
            "to [0, duration] (--config.data.strict=True refuses such rows instead); first: %s",
            len(clamped),
            clamped[0],
        )
