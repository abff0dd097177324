"""How the official evaluation rounds what it reports, and the summation order of its means."""

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


def numpy_sum(values: np.ndarray) -> float:
    """``np.sum`` of a 1-D float64 array, bit for bit, without its call overhead for the
    short arrays of a query's AP: numpy adds fewer than 8 elements one after the other from
    0.0 and uses its pairwise scheme from 8 on (then we call it)."""
    if len(values) >= 8:
        return float(np.sum(values))
    total = 0.0
    for v in values.tolist():
        total += v
    return total
