"""Reading and validating annotation files (jsonl, one query per line, official format)."""

from __future__ import annotations

import json
import logging
import math
import os

from trdetr_jax.data.errors import DataError

TVSUM_DOMAINS = ("BK", "BT", "DS", "FM", "GA", "MS", "PK", "PR", "VT", "VU")

# Fields every row needs, and the label fields a row with labels needs, per layout.
_BASE_FIELDS = {
    "qvhighlights": ("qid", "query", "vid", "duration"),
    "charades": ("qid", "query", "vid", "duration"),
    "tvsum": ("qid", "query", "vid", "domain"),
}
_LABEL_FIELDS = {
    "qvhighlights": ("relevant_windows", "relevant_clip_ids", "saliency_scores"),
    "charades": ("relevant_windows",),
    "tvsum": ("label",),
}


def layout_of(dataset: str) -> str:
    """The on-disk / label layout of ``config.data.dataset`` (checked; the demo is
    'qvhighlights')."""
    layouts = ("qvhighlights", "charades", "tvsum")
    if dataset not in layouts:
        raise DataError(f"config.data.dataset = {dataset!r} is not one of {layouts}")
    return dataset


def has_labels(row: dict, layout: str) -> bool:
    """Whether a row carries the labels of its layout (test splits have none)."""
    return all(row.get(k) is not None for k in _LABEL_FIELDS[layout])


def read_annotations(
    path: str | os.PathLike,
    layout: str,
    *,
    require_labels: bool,
    domain: str | None = None,
    data_ratio: float = 1.0,
) -> list[dict]:
    """Rows of an annotation file, validated.

    ``require_labels``: every row must carry its layout's label fields (training). Without it
    (evaluation) a row may carry all label fields or none (a test split). TVSum rows are
    filtered to ``domain``. ``data_ratio`` < 1 keeps the first fraction (official
    ``data_ratio``). Errors name the file, the line and the field.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"annotation file not found: {path}")
    if layout == "tvsum" and domain not in TVSUM_DOMAINS:
        raise DataError(
            f"TVSum trains one model per domain: set --config.data.domain to one of "
            f"{', '.join(TVSUM_DOMAINS)} (got {domain!r})"
        )
    rows, problems = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{where}: not valid JSON ({e.msg})")
                continue
            if not isinstance(row, dict):
                problems.append(f"{where}: expected a JSON object per line")
                continue
            found = row_problems(row, layout, require_labels)
            qid = f" (qid {row['qid']!r})" if "qid" in row else ""
            problems += [f"{where}: {p}{qid}" for p in found]
            rows.append(row)
    if problems:
        raise DataError(format_problems(f"{path}: bad annotation rows", problems))
    if layout == "tvsum":
        rows = [r for r in rows if r["domain"] == domain]
    if data_ratio != 1.0:
        n = int(len(rows) * data_ratio)
        logging.info("Using %.1f%% of %s: %d examples", 100 * data_ratio, path, n)
        rows = rows[:n]
    if not rows:
        where = f" for domain {domain}" if layout == "tvsum" else ""
        raise DataError(f"{path}: no annotation rows{where}")
    return rows


# How many problems an error message lists before it only counts the rest.
MAX_LISTED = 20


def format_problems(headline: str, problems: list[str], limit: int = MAX_LISTED) -> str:
    """``headline (N problems):`` then one indented line per problem, the first ``limit``."""
    if len(problems) == 1:
        return f"{headline}: {problems[0]}"
    lines = [f"{headline} ({len(problems)} problems):"]
    lines += [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _got(x) -> str:
    text = json.dumps(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _number_lists(value, field: str, *, same_length: bool) -> str | None:
    """Problem with a non-empty list of non-empty lists of numbers, or None."""
    if not isinstance(value, list) or not value:
        return f"field {field!r} must be a non-empty list of lists of numbers, got {_got(value)}"
    for i, item in enumerate(value):
        if not isinstance(item, list) or not item or not all(_is_number(v) for v in item):
            return f"field {field!r}[{i}] must be a non-empty list of numbers, got {_got(item)}"
    if same_length and len({len(item) for item in value}) > 1:
        return f"field {field!r}: entries of different lengths, got {_got(value)}"
    return None


def row_problems(row: dict, layout: str, require_labels: bool) -> list[str]:
    """What is wrong with one annotation row (field, expected, found); empty when usable.

    Types of every field the pipeline reads, a positive duration and windows with
    start < end. Whether windows lie inside ``[0, duration]`` is checked (and clamped) by
    :mod:`trdetr_jax.data.checks`, with the other checks across rows and feature files.
    """
    problems = []
    for field in _BASE_FIELDS[layout]:
        if row.get(field) is None:
            problems.append(f"annotation row has no field {field!r}")
    if problems:
        return problems
    qid = row["qid"]
    if not (_is_int(qid) or isinstance(qid, str)):
        problems.append(f"field 'qid' must be an integer or a string, got {_got(qid)}")
    if not isinstance(row["query"], str) or not row["query"].strip():
        problems.append(
            f"empty query: field 'query' must be a non-empty string, got {_got(row['query'])}"
        )
    if not isinstance(row["vid"], str) or not row["vid"]:
        problems.append(f"field 'vid' must be a non-empty string, got {_got(row['vid'])}")
    if "duration" in row and row["duration"] is not None:
        duration = row["duration"]
        if not _is_number(duration) or duration <= 0:
            problems.append(f"field 'duration' must be a positive number, got {_got(duration)}")
    if layout == "tvsum" and not isinstance(row["domain"], str):
        problems.append(f"field 'domain' must be a string, got {_got(row['domain'])}")
    label_fields = _LABEL_FIELDS[layout]
    missing = [k for k in label_fields if row.get(k) is None]
    # Training needs every label field; evaluation accepts all of them or none (test split).
    if missing and (require_labels or len(missing) < len(label_fields)):
        problems.append(f"annotation row has no field {missing[0]!r}")
    if layout in ("qvhighlights", "charades") and row.get("relevant_windows") is not None:
        windows = row["relevant_windows"]
        if (
            not isinstance(windows, list)
            or not windows
            or not all(
                isinstance(w, list) and len(w) == 2 and all(_is_number(x) for x in w)
                for w in windows
            )
        ):
            problems.append(
                f"field 'relevant_windows' must be a non-empty list of [start, end] numbers, "
                f"got {_got(windows)}"
            )
        else:
            for i, (st, ed) in enumerate(windows):
                if st >= ed:
                    problems.append(
                        f"field 'relevant_windows'[{i}] must have start < end, got {_got([st, ed])}"
                    )
    if layout == "qvhighlights" and row.get("relevant_clip_ids") is not None:
        ids, scores = row["relevant_clip_ids"], row.get("saliency_scores")
        if not isinstance(ids, list) or not ids:
            problems.append(f"field 'relevant_clip_ids' must be a non-empty list, got {_got(ids)}")
        elif not all(_is_int(i) and i >= 0 for i in ids):
            problems.append(
                f"field 'relevant_clip_ids' must hold non-negative integers, got {_got(ids)}"
            )
        bad = _number_lists(scores, "saliency_scores", same_length=True)
        if bad:
            problems.append(bad)
        elif isinstance(ids, list) and len(ids) != len(scores):
            problems.append(
                f"'relevant_clip_ids' has {len(ids)} entries but 'saliency_scores' "
                f"has {len(scores)}"
            )
    if layout == "tvsum" and row.get("label") is not None:
        bad = _number_lists(row["label"], "label", same_length=True)
        if bad:
            problems.append(bad)
    return problems
