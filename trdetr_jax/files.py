"""Writing the run's records: atomic file writes and the JSON of NumPy / JAX values.

Every file the project writes for a reader (metrics, predictions, configs, summaries) goes
through :func:`write_text_atomic`: a temporary file in the same folder, flushed to disk,
then renamed over the target, so a reader (or a run killed half-way) never sees a
half-written file.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from collections.abc import Iterable
from typing import Any


def json_default(x: Any) -> Any:
    """``json.dumps`` fallback: NumPy / JAX arrays and scalars as lists / numbers, tuples as
    lists."""
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` through a temporary sibling file and a rename.

    Raises ``FileNotFoundError`` naming the folder when it does not exist.
    """
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary sibling file and a rename.

    Raises ``FileNotFoundError`` naming the folder when it does not exist.
    """
    path = pathlib.Path(path)
    folder = path.parent if str(path.parent) else pathlib.Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the records are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented, key-sorted JSON, written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default))


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line (the official submission layout), written atomically."""
    write_text_atomic(path, "".join(json.dumps(r, default=json_default) + "\n" for r in rows))
