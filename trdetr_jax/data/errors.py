"""The one exception type the data pipeline raises for bad user input."""

from __future__ import annotations


class DataError(ValueError):
    """Bad or missing input data: the message says what was expected, what was found, where."""
