"""Length buckets: each batch is padded to a few lengths, not always to max_v_l / max_q_l.

A batch is padded physically to the smallest video bucket that holds its longest video and
the smallest text bucket that holds its longest query (the *global* batch's, so every
process builds the same shapes). Each (video, text) bucket pair is one compilation of the
jitted steps. The last bucket is always ``max_v_l`` / ``max_q_l``, so every example fits.

Default buckets come from the training split's lengths (file headers only). A batch of
``B`` random examples is padded to its longest one, whose distribution is that of the
maximum of ``B`` draws: its ``q``-quantile is the per-example ``q ** (1 / B)``-quantile. With
``n`` buckets the levels ``q = 1/(n-1), 2/(n-1), ..., 1`` give buckets that split the
batches roughly evenly; the last level is the longest training example, then
``max_v_l`` / ``max_q_l`` closes the list (it holds longer evaluation examples).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from trdetr_jax.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class Buckets:
    """Padded lengths a batch may have: ``video`` and ``text``, ascending."""

    video: tuple[int, ...]
    text: tuple[int, ...]

    def pick(self, video_len: int, text_len: int) -> tuple[int, int]:
        """``(video bucket, text bucket)`` of a batch whose longest items have these lengths."""
        return (
            smallest_holding(self.video, video_len, "video"),
            smallest_holding(self.text, text_len, "text"),
        )

    def describe(self) -> str:
        return f"video {list(self.video)}, text {list(self.text)}"


def no_buckets(max_v_l: int, max_q_l: int) -> Buckets:
    """Every batch padded to the maxima."""
    return Buckets((int(max_v_l),), (int(max_q_l),))


def smallest_holding(buckets: Sequence[int], length: int, what: str) -> int:
    """The smallest bucket ``>= length``."""
    i = int(np.searchsorted(np.asarray(buckets), length, side="left"))
    if i == len(buckets):
        raise DataError(f"a {what} of length {length} exceeds the largest bucket {buckets[-1]}")
    return int(buckets[i])


def quantile_buckets(
    lengths: Sequence[int], num_buckets: int, maximum: int, batch_size: int
) -> tuple[int, ...]:
    """At most ``num_buckets`` buckets from per-example ``lengths``; the last is ``maximum``."""
    lengths = np.asarray(lengths, np.int64)
    if num_buckets <= 1 or lengths.size == 0:
        return (int(maximum),)
    levels = (np.arange(1, num_buckets) / (num_buckets - 1)) ** (1.0 / max(1, batch_size))
    values = np.quantile(lengths, levels, method="higher")  # lengths that occur
    return tuple(sorted({min(int(v), int(maximum)) for v in values} | {int(maximum)}))


def explicit_buckets(values: Sequence[int], maximum: int, field: str, max_name: str) -> tuple:
    """Given bucket sizes, checked, with ``maximum`` appended when absent."""
    values = tuple(int(v) for v in values)
    if any(v < 1 or v > maximum for v in values) or list(values) != sorted(set(values)):
        raise DataError(
            f"config.data.{field}: expected increasing lengths in 1..{max_name}={maximum}, "
            f"found {values}"
        )
    return values if values and values[-1] == maximum else (*values, int(maximum))


def from_config(
    data, video_lengths: Sequence[int], text_lengths: Sequence[int], batch_size: int
) -> Buckets:
    """The buckets ``config.data`` asks for, defaults from these per-example lengths."""
    if not data.length_buckets:
        return no_buckets(data.max_v_l, data.max_q_l)
    if data.video_buckets:
        video = explicit_buckets(data.video_buckets, data.max_v_l, "video_buckets", "max_v_l")
    else:
        video = quantile_buckets(video_lengths, data.num_video_buckets, data.max_v_l, batch_size)
    if data.text_buckets:
        text = explicit_buckets(data.text_buckets, data.max_q_l, "text_buckets", "max_q_l")
    else:
        text = quantile_buckets(text_lengths, data.num_text_buckets, data.max_q_l, batch_size)
    return Buckets(video, text)
