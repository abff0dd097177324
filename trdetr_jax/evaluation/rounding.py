"""How the official evaluation rounds what it reports."""

from __future__ import annotations

import numpy as np


def percent_2dp(fraction) -> float:
    """QVHighlights / Charades: ``float(f"{100 * x:.2f}")``, the binary64 product formatted
    with correct decimal rounding (ties to even only for exact binary ties) and parsed back."""
    return float(f"{100 * fraction:.2f}")


def numpy_round_5(fraction) -> float:
    """TVSum: ``round(np.float64(x), 5)``, numpy's rounding (``rint(x * 1e5) / 1e5``), which
    can differ from Python's ``round`` on a float (0.123455 -> 0.12346, Python: 0.12345)."""
    return float(np.round(np.float64(fraction), 5))
