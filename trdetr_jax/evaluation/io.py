"""Reading JSON-lines files with errors a user can act on, and writing metrics atomically."""

from __future__ import annotations

import dataclasses
import json
import math

from trdetr_jax.evaluation.errors import EvalInputError


@dataclasses.dataclass
class JsonlFile:
    """Rows of a JSON-lines file, each with the 1-based line it came from.

    `source` is the name used in messages (the path as given, or e.g. ``<submission>`` for
    rows built in memory).
    """

    source: str
    rows: list[dict]
    lines: list[int]

    @classmethod
    def from_rows(cls, rows, source: str) -> JsonlFile:
        """Wrap in-memory rows (e.g. from post-processing); line numbers are 1-based indices."""
        rows = list(rows)
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise EvalInputError(
                    f"{source}:{i + 1}: expected a JSON object (dict), got {type(row).__name__}"
                )
        return cls(source, rows, list(range(1, len(rows) + 1)))

    def __len__(self) -> int:
        return len(self.rows)


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} overflows a double")
    return value


def read_jsonl(path, *, what: str = "file") -> JsonlFile:
    """Read one JSON object per line; blank lines are skipped.

    Raises EvalInputError naming the file and line for an unreadable file, invalid JSON,
    a line that is not an object, or a non-finite number (NaN, Infinity, 1e999).
    """
    source = str(path)
    try:
        with open(path, encoding="utf-8-sig") as f:  # tolerate a byte-order mark
            text_lines = f.readlines()
    except FileNotFoundError:
        raise EvalInputError(f"{what} not found: {source}") from None
    except IsADirectoryError:
        raise EvalInputError(f"{what} is a directory, expected a .jsonl file: {source}") from None
    except UnicodeDecodeError as e:
        raise EvalInputError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise EvalInputError(f"cannot read {what} {source}: {e.strerror}") from None

    rows, lines = [], []
    for i, text in enumerate(text_lines, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        except json.JSONDecodeError as e:
            hint = _array_hint(text) if not rows else ""
            raise EvalInputError(
                f"{source}:{i}: malformed JSON ({e.msg} at column {e.colno}){hint}"
            ) from None
        except ValueError as e:
            raise EvalInputError(f"{source}:{i}: {e}") from None
        except RecursionError:
            raise EvalInputError(f"{source}:{i}: JSON nested too deeply") from None
        if not isinstance(obj, dict):
            hint = _array_hint(text) if not rows else ""
            raise EvalInputError(
                f"{source}:{i}: expected one JSON object per line, got a JSON "
                f"{_json_type(obj)}{hint}"
            )
        rows.append(obj)
        lines.append(i)
    if not rows:
        raise EvalInputError(f"{what} {source} contains no JSON lines")
    return JsonlFile(source, rows, lines)


def _array_hint(first_line: str) -> str:
    if first_line.lstrip().startswith("["):
        return "; this looks like one JSON array, expected JSON lines (one object per line)"
    return ""


def _json_type(obj) -> str:
    return {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(obj), "null" if obj is None else type(obj).__name__
    )


def dumps_metrics(metrics: dict) -> str:
    """The layout the official CLI writes: ``json.dumps(..., indent=4)``, no trailing newline."""
    return json.dumps(metrics, indent=4)
