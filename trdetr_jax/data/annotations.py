"""Reading and validating annotation files (jsonl, one query per line, official format)."""

from __future__ import annotations

import json
import logging
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
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object per line")
            _validate(row, path, line_no, layout, require_labels)
            rows.append(row)
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


def _validate(row: dict, path: str, line_no: int, layout: str, require_labels: bool) -> None:
    where = f"{path}:{line_no}"
    for field in _BASE_FIELDS[layout]:
        if row.get(field) is None:
            raise DataError(f"{where}: annotation row has no field {field!r}")
    if not isinstance(row["query"], str) or not row["query"].strip():
        raise DataError(f"{where}: empty query (qid {row['qid']})")
    label_fields = _LABEL_FIELDS[layout]
    missing = [k for k in label_fields if row.get(k) is None]
    # Training needs every label field; evaluation accepts all of them or none (test split).
    if missing and (require_labels or len(missing) < len(label_fields)):
        raise DataError(f"{where}: annotation row has no field {missing[0]!r}")
    if layout in ("qvhighlights", "charades") and row.get("relevant_windows") is not None:
        windows = row["relevant_windows"]
        if (
            not isinstance(windows, list)
            or not windows
            or not all(isinstance(w, list) and len(w) == 2 for w in windows)
        ):
            raise DataError(
                f"{where}: field 'relevant_windows' must be a non-empty list of [start, end]"
            )
    if layout == "qvhighlights" and row.get("relevant_clip_ids") is not None:
        ids, scores = row["relevant_clip_ids"], row.get("saliency_scores") or []
        if not ids:
            raise DataError(f"{where}: field 'relevant_clip_ids' is empty")
        if len(ids) != len(scores):
            raise DataError(
                f"{where}: 'relevant_clip_ids' has {len(ids)} entries but 'saliency_scores' "
                f"has {len(scores)}"
            )
    if layout == "tvsum" and row.get("label") is not None and not row["label"]:
        raise DataError(f"{where}: field 'label' is empty")
