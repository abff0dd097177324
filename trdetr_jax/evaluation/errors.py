"""The one exception type the evaluation raises for input a user can fix."""

from __future__ import annotations


class EvalInputError(ValueError):
    """A prediction or ground-truth file that cannot be evaluated.

    The message is one line and names what was wrong and where: file, line, qid, field.
    The CLI prints it as is and exits non-zero.
    """


def where(source: str | None, line: int | None = None, qid=None, field: str | None = None) -> str:
    """Location prefix for messages: ``pred.jsonl:12: qid 3158: field 'pred_relevant_windows'``."""
    parts = []
    if source is not None:
        parts.append(f"{source}:{line}" if line is not None else str(source))
    elif line is not None:
        parts.append(f"line {line}")
    if qid is not None:
        parts.append(f"qid {qid!r}")
    if field is not None:
        parts.append(f"field {field!r}")
    return ": ".join(parts)
