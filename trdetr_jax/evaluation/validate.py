"""Checking ground-truth and prediction rows before any metric runs.

Two kinds of problems:

* **Structural** (the file cannot mean anything): malformed rows, a missing or mistyped
  field, a duplicated qid, a prediction for a qid not in the ground truth, missing
  predictions (unless allowed). Raised as `EvalInputError` naming file, line, qid and field.
* **Odd but well-formed** predictions that the official evaluation accepts (windows past the
  video end, negative starts, start > end, zero length, more than 10 windows, unsorted lists,
  empty lists, saliency lists of the wrong length, scores outside [0, 1]). By default they
  are evaluated exactly as the official code does and summarised in one warning; with
  ``strict=True`` the first one is raised as an error.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import warnings

import numpy as np

from trdetr_jax.evaluation.errors import EvalInputError, where
from trdetr_jax.evaluation.hd import CLIP_SECONDS, gt_score_matrix
from trdetr_jax.evaluation.io import JsonlFile
from trdetr_jax.evaluation.mr import MAX_PRED_WINDOWS

DATASETS = ("qvhighlights", "charades", "tvsum")
WINDOWS = "pred_relevant_windows"
SALIENCY = "pred_saliency_scores"
TVSUM_ANNOTATORS = 20
MAX_CLIPS = 10**6  # a sanity bound on floor(duration / 2) before allocating scores


class OddPredictionWarning(UserWarning):
    """Predictions the official evaluation accepts but that are probably not intended."""


class EvaluationNote(UserWarning):
    """Information about what is (not) evaluated, e.g. a prediction field that is ignored."""


def _number_problem(x) -> str | None:
    """Why x is not a usable number, or None. JSON gives int/float; rows built in memory
    may also hold NumPy scalars. Fast for the common case."""
    t = type(x)
    if t is float:
        return None if math.isfinite(x) else "must be finite"
    if t is int:
        return None if abs(x) <= sys.float_info.max else "must fit in a double"
    if isinstance(x, (np.floating, np.integer)):
        return None if np.isfinite(x) else "must be finite"
    return "must be a number"


def _check_number(x, loc: str, what: str):
    problem = _number_problem(x)
    if problem:
        raise EvalInputError(f"{loc}: {what} {problem}, got {_describe(x)}")


def _describe(x) -> str:
    text = repr(x)
    if len(text) > 40:
        text = text[:37] + "..."
    kind = {list: "array", dict: "object", str: "string", bool: "boolean"}.get(type(x))
    if x is None:
        return "null"
    return f"{kind} {text}" if kind else text


def _check_qid(row: dict, source: str, line: int):
    if "qid" not in row:
        raise EvalInputError(f"{where(source, line, field='qid')}: required field is missing")
    qid = row["qid"]
    if isinstance(qid, np.integer):  # rows built in memory
        qid = int(qid)
    if isinstance(qid, bool) or not isinstance(qid, (int, str)):
        raise EvalInputError(
            f"{where(source, line, field='qid')}: must be an integer or a string, got "
            f"{_describe(qid)}"
        )
    return qid


# ----------------------------------------------------------------------------- ground truth


@dataclasses.dataclass
class GroundTruth:
    """Parsed ground truth. Dicts are keyed by qid in file order."""

    dataset: str
    source: str
    durations: dict
    windows: dict | None = None  # {qid: float64 [G, 2]} (moment retrieval)
    scores: dict | None = None  # {qid: [n, 3] annotator scores} (QVHighlights saliency)
    labels: dict | None = None  # {qid: float32 [n, 20]} (TVSum)
    domains: dict | None = None  # {qid: str} (TVSum)


def detect_dataset(gt: JsonlFile) -> str:
    """'tvsum' when rows carry a `label` matrix, 'qvhighlights' when they carry saliency
    annotations, 'charades' when they carry only `relevant_windows`."""
    if not gt.rows:
        raise EvalInputError(f"{gt.source}: the ground truth has no rows")
    first = gt.rows[0]
    if first.get("label") is not None:
        return "tvsum"
    if first.get("saliency_scores") is not None or first.get("relevant_clip_ids") is not None:
        return "qvhighlights"
    if first.get("relevant_windows") is not None:
        return "charades"
    raise EvalInputError(
        f"{gt.source}:{gt.lines[0]}: cannot tell the dataset: the ground truth has no "
        "'relevant_windows', 'saliency_scores' or 'label' (a release file without ground "
        "truth, such as highlight_test_release.jsonl, cannot be scored)"
    )


def parse_ground_truth(gt: JsonlFile, dataset: str | None = None) -> GroundTruth:
    """Validate ground-truth rows for `dataset` (detected when None)."""
    if not gt.rows:
        raise EvalInputError(f"{gt.source}: the ground truth has no rows")
    if dataset is None:
        dataset = detect_dataset(gt)
    if dataset not in DATASETS:
        raise EvalInputError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    out = GroundTruth(dataset=dataset, source=gt.source, durations={})
    has_saliency = dataset == "qvhighlights" and gt.rows[0].get("saliency_scores") is not None
    if dataset == "tvsum":
        out.labels, out.domains = {}, {}
    else:
        out.windows = {}
        if has_saliency:
            out.scores = {}
    first_line = {}
    for row, line in zip(gt.rows, gt.lines):
        qid = _check_qid(row, gt.source, line)
        if qid in first_line:
            raise EvalInputError(
                f"{where(gt.source, line, qid)}: duplicated qid (first on line {first_line[qid]})"
            )
        first_line[qid] = line
        loc = functools.partial(where, gt.source, line, qid)  # loc(field) -> location text
        if "duration" not in row:
            raise EvalInputError(f"{loc('duration')}: required field is missing")
        _check_number(row["duration"], loc("duration"), "the duration")
        if row["duration"] <= 0:
            raise EvalInputError(f"{loc('duration')}: must be positive, got {row['duration']}")
        out.durations[qid] = row["duration"]
        if dataset == "tvsum":
            out.labels[qid], out.domains[qid] = _tvsum_label(row, loc)
            continue
        out.windows[qid] = _gt_windows(row, loc)
        if has_saliency:
            out.scores[qid] = _gt_saliency(row, loc)
    return out


def _gt_windows(row: dict, loc) -> np.ndarray:
    windows = row.get("relevant_windows")
    if not isinstance(windows, list) or not windows:
        raise EvalInputError(
            f"{loc('relevant_windows')}: expected a non-empty list of [start, end], got "
            f"{_describe(windows)}"
        )
    for k, w in enumerate(windows):
        if not isinstance(w, list) or len(w) != 2:
            raise EvalInputError(
                f"{loc(f'relevant_windows[{k}]')}: expected [start, end], got {_describe(w)}"
            )
        for x in w:
            _check_number(x, loc(f"relevant_windows[{k}]"), "each coordinate")
        if w[0] > w[1]:
            raise EvalInputError(f"{loc(f'relevant_windows[{k}]')}: start > end in {w}")
    return np.array(windows, dtype=np.float64)


def _gt_saliency(row: dict, loc) -> np.ndarray:
    ids, scores = row.get("relevant_clip_ids"), row.get("saliency_scores")
    if not isinstance(ids, list):
        raise EvalInputError(f"{loc('relevant_clip_ids')}: expected a list of clip indices")
    if not isinstance(scores, list) or len(scores) != len(ids):
        raise EvalInputError(
            f"{loc('saliency_scores')}: expected one [s1, s2, s3] per relevant clip "
            f"({len(ids)}), got {_describe(scores)}"
        )
    n = int(row["duration"] / CLIP_SECONDS)
    if n > MAX_CLIPS:
        raise EvalInputError(
            f"{loc('duration')}: {row['duration']} s is {n} clips of {CLIP_SECONDS} s; more "
            f"than {MAX_CLIPS} is not a video"
        )
    for k, c in enumerate(ids):
        if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < n:
            raise EvalInputError(
                f"{loc(f'relevant_clip_ids[{k}]')}: expected a clip index in [0, {n}), got "
                f"{_describe(c)}"
            )
    for k, s in enumerate(scores):
        if type(s) is not list or len(s) != 3 or any(map(_number_problem, s)):
            raise EvalInputError(
                f"{loc(f'saliency_scores[{k}]')}: expected 3 annotator scores, got {_describe(s)}"
            )
    return gt_score_matrix(row["duration"], ids, scores)


def _tvsum_label(row: dict, loc):
    label, domain = row.get("label"), row.get("domain")
    if not isinstance(domain, str):
        raise EvalInputError(f"{loc('domain')}: expected a domain name, got {_describe(domain)}")
    if (
        not isinstance(label, list)
        or not label
        or not all(
            isinstance(r, list) and len(r) == TVSUM_ANNOTATORS and not any(map(_number_problem, r))
            for r in label
        )
    ):
        raise EvalInputError(
            f"{loc('label')}: expected a non-empty [n_clips, {TVSUM_ANNOTATORS}] matrix of numbers"
        )
    return np.array(label, dtype=np.float32), domain


# ------------------------------------------------------------------------------ predictions


@dataclasses.dataclass
class Submission:
    """Parsed predictions, keyed by qid in submission order."""

    windows: dict | None  # {qid: [[st, ed, score], ...]} when moment retrieval is evaluated
    saliency: dict | None  # {qid: [score, ...]} when highlight detection is evaluated
    missing: list  # ground-truth qids without a prediction (only with allow_missing)


class _OddTally:
    """Counts odd predictions per kind, keeping where each kind first occurred.

    Locations are (line, qid, field, detail) tuples, formatted only when reported, so that
    checking a large file costs no string building.
    """

    def __init__(self, source: str):
        self.source = source
        self.counts: dict[str, int] = {}
        self.first: dict[str, tuple] = {}
        self.queries: set = set()

    def add(self, kind: str, line: int, qid, field: str, detail: str = ""):
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind not in self.first:
            self.first[kind] = (line, qid, field, detail)
        self.queries.add(qid)

    def location(self, kind: str) -> str:
        line, qid, field, detail = self.first[kind]
        return where(self.source, line, qid, field) + (f" ({detail})" if detail else "")

    def summary(self) -> str:
        ranked = sorted(self.counts.items(), key=lambda kv: -kv[1])
        parts = [f"{n} x {kind}" for kind, n in ranked]
        return (
            f"{len(self.queries)} queries have odd predictions, evaluated as the official code "
            f"does: {'; '.join(parts)} (first: {self.location(ranked[0][0])}); "
            "use --strict (strict=True) to reject them"
        )


def parse_submission(
    sub: JsonlFile, gt: GroundTruth, *, strict: bool = False, allow_missing: bool = False
) -> Submission:
    """Validate prediction rows against parsed ground truth.

    Which prediction fields are evaluated follows the official rule: those present in the
    first row. Raises EvalInputError for structural problems (and, with `strict`, for odd
    predictions); otherwise warns once (OddPredictionWarning) if anything was odd.
    """
    if not sub.rows:
        raise EvalInputError(f"{sub.source}: there are no predictions")
    known = gt.labels if gt.dataset == "tvsum" else gt.windows
    tally = _OddTally(sub.source)
    first = sub.rows[0]
    if gt.dataset == "tvsum":
        use_windows, use_saliency = False, True
        if SALIENCY not in first:
            raise EvalInputError(
                f"{where(sub.source, sub.lines[0], first.get('qid'), SALIENCY)}: required "
                "field is missing (TVSum is scored on saliency only)"
            )
    else:
        use_windows = WINDOWS in first
        use_saliency = SALIENCY in first and gt.scores is not None
        if SALIENCY in first and gt.scores is None:
            warnings.warn(
                EvaluationNote(
                    f"'{SALIENCY}' ignored: the ground truth {gt.source} has no saliency "
                    "annotations"
                ),
                stacklevel=3,
            )
        if not use_windows and not use_saliency:
            needed = f"'{WINDOWS}'" + (f" or '{SALIENCY}'" if gt.scores is not None else "")
            raise EvalInputError(
                f"{where(sub.source, sub.lines[0], first.get('qid'))}: nothing to evaluate: "
                f"the first row has no {needed}"
            )
    windows = {} if use_windows else None
    saliency = {} if use_saliency else None
    seen = {}
    for row, line in zip(sub.rows, sub.lines):
        qid = _check_qid(row, sub.source, line)
        if qid in seen:
            raise EvalInputError(
                f"{where(sub.source, line, qid)}: duplicated qid (first on line {seen[qid]})"
            )
        seen[qid] = line
        if qid not in known:
            raise EvalInputError(
                f"{where(sub.source, line, qid)}: qid not in the ground truth {gt.source}"
                + _qid_type_hint(qid, known)
            )
        for field, used in ((WINDOWS, use_windows), (SALIENCY, use_saliency)):
            if used and field not in row:
                raise EvalInputError(
                    f"{where(sub.source, line, qid, field)}: required field is missing (the "
                    "first row has it)"
                )
            ignored_anyway = gt.dataset == "tvsum" or (field == SALIENCY and gt.scores is None)
            if not used and field in row and not ignored_anyway:
                # The official code decides what to evaluate from the first row only.
                tally.add("field absent from the first row (ignored)", line, qid, field)
        at = (sub.source, line, qid)
        if use_windows:
            windows[qid] = _pred_windows(row[WINDOWS], at, gt.durations[qid], tally)
        if use_saliency:
            n = len(gt.labels[qid]) if gt.dataset == "tvsum" else len(gt.scores[qid])
            saliency[qid] = _pred_saliency(row[SALIENCY], at, n, tally)

    missing = [q for q in known if q not in seen]
    if missing and not allow_missing:
        shown = ", ".join(repr(q) for q in missing[:5])
        raise EvalInputError(
            f"{sub.source}: no prediction for {len(missing)} of {len(known)} ground-truth qids "
            f"(e.g. {shown}); use --allow-missing (allow_missing=True) to evaluate only the "
            "qids present in both"
        )
    if tally.counts:
        if strict:
            kind = next(iter(tally.first))
            raise EvalInputError(
                f"{tally.location(kind)}: {kind} (rejected by --strict; "
                f"{sum(tally.counts.values())} odd predictions in {len(tally.queries)} queries)"
            )
        warnings.warn(OddPredictionWarning(tally.summary()), stacklevel=3)
    return Submission(windows, saliency, missing)


def _qid_type_hint(qid, known) -> str:
    sample = next(iter(known))
    if isinstance(qid, str) and isinstance(sample, int) and qid.strip().lstrip("-").isdigit():
        return " (the ground truth uses integer qids; this one is a string)"
    if isinstance(qid, int) and isinstance(sample, str) and str(qid) in known:
        return " (the ground truth uses string qids; this one is an integer)"
    return ""


def _pred_windows(windows, at, duration, tally: _OddTally) -> list:
    """[[st, ed, score], ...] as floats; `at` = (source, line, qid)."""
    source, line, qid = at
    if isinstance(windows, np.ndarray):  # rows built in memory
        windows = windows.tolist()
    if not isinstance(windows, (list, tuple)):
        raise EvalInputError(
            f"{where(source, line, qid, WINDOWS)}: expected a list of [start, end, score], "
            f"got {_describe(windows)}"
        )
    out = []
    for k, w in enumerate(windows):
        field = f"{WINDOWS}[{k}]"
        if not isinstance(w, (list, tuple)) or len(w) != 3:
            raise EvalInputError(
                f"{where(source, line, qid, field)}: expected [start, end, score], got "
                f"{_describe(w)}"
            )
        for x in w:
            problem = _number_problem(x)
            if problem:
                raise EvalInputError(
                    f"{where(source, line, qid, field)}: start, end and score {problem}, got "
                    f"{_describe(x)}"
                )
        st, ed, score = float(w[0]), float(w[1]), float(w[2])
        if st > ed:
            tally.add("window with start > end", line, qid, field)
        elif st == ed:
            tally.add("zero-length window", line, qid, field)
        if min(st, ed) < 0:
            tally.add("window starting before 0", line, qid, field)
        if max(st, ed) > duration:
            tally.add("window past the video end", line, qid, field, f"duration {duration}")
        if not 0 <= score <= 1:
            tally.add("score outside [0, 1]", line, qid, field)
        out.append([st, ed, score])
    if not out:
        tally.add("empty window list (R1 miss, left out of mAP)", line, qid, WINDOWS)
    if len(out) > MAX_PRED_WINDOWS:
        kind = (
            f"more than {MAX_PRED_WINDOWS} windows (only the first {MAX_PRED_WINDOWS} listed "
            "count for mAP)"
        )
        tally.add(kind, line, qid, WINDOWS)
    if any(out[i][2] < out[i + 1][2] for i in range(len(out) - 1)):
        kind = (
            "windows not sorted by descending score (mAP cuts in list order, R1 takes the "
            "first listed)"
        )
        tally.add(kind, line, qid, WINDOWS)
    return out


def _pred_saliency(scores, at, n_clips: int, tally: _OddTally) -> list:
    """Scores as floats; `at` = (source, line, qid)."""
    source, line, qid = at
    if isinstance(scores, np.ndarray):  # rows built in memory
        scores = scores.tolist()
    if not isinstance(scores, (list, tuple)):
        raise EvalInputError(
            f"{where(source, line, qid, SALIENCY)}: expected a list of numbers, got "
            f"{_describe(scores)}"
        )
    for k, x in enumerate(scores):
        problem = _number_problem(x)
        if problem:
            raise EvalInputError(
                f"{where(source, line, qid, f'{SALIENCY}[{k}]')}: each score {problem}, got "
                f"{_describe(x)}"
            )
    if not scores:
        tally.add("empty saliency list (Hit1 miss, all-zero scores for mAP)", line, qid, SALIENCY)
    elif len(scores) != n_clips:
        kind = (
            "saliency list length differs from the number of clips (truncated or zero-padded "
            "for mAP; Hit1 uses the whole list)"
        )
        tally.add(kind, line, qid, SALIENCY, f"{len(scores)} scores, {n_clips} clips")
    return [float(x) for x in scores]
