"""Training targets built from one annotation row (per example, unpadded).

The recipes follow the official dataset (``start_end_dataset.py``):

* span labels: windows in seconds divided by ``ctx_l * clip_length`` (the feature
  length, not the annotated duration), then ``(center, width)``; more than
  ``max_windows`` windows are shuffled and cut;
* QVHighlights saliency pairs (P = 2): [hard, easy]. Hard = the extremes of the summed
  annotator scores by ``np.argsort`` (numpy's default sort, so ties resolve as in the
  official code); easy = one random relevant clip and one random non-relevant clip; with no
  non-relevant clip the hard pair is copied;
* TVSum (P = 1): hard pair only, from ``sum(label - 1)``; the relevant-clip mask is the top
  half of the clips by that sum; all-saliency labels ``sum(label - 1) / 80 * 12``;
* Charades-STA (the official code has no Charades path): relevant clips and 0/1 saliency
  from the first window, clip ``int(st / clip_length)`` to ``min(int(ed / clip_length),
  ctx_l) - 1``; pairs (P = 2) are two random clips inside and two outside the window.

Randomness: the official code draws from Python's global ``random``; we draw from a
``np.random.Generator`` the caller seeds by (seed, epoch, example index), so a resumed run
sees the same targets. The hard pairs and every deterministic label are identical to the
official ones; the random ("easy") members are equal in distribution, not in value.

Clip ids at or beyond the feature length ``ctx_l`` (an annotation longer than its
features) are dropped from the all-saliency labels and the relevant-clip mask, and clip
indices in pairs are clamped to ``ctx_l - 1``: the official code extends its arrays past
the video there, which only works when another video in the batch is longer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def span_labels(
    windows: Sequence[Sequence[float]],
    ctx_l: int,
    clip_length: float,
    max_windows: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Normalised ``(center, width)`` windows, float32 ``[min(n, max_windows), 2]``."""
    windows = [list(w) for w in windows]
    if len(windows) > max_windows:
        order = rng.permutation(len(windows))
        windows = [windows[i] for i in order[:max_windows]]
    # float32 arithmetic as the official torch.Tensor(windows) / (ctx_l * clip_len).
    xx = np.asarray(windows, dtype=np.float32).reshape(-1, 2) / np.float32(ctx_l * clip_length)
    center = (xx[:, 0] + xx[:, 1]) * np.float32(0.5)
    width = xx[:, 1] - xx[:, 0]
    return np.stack([center, width], axis=1).astype(np.float32)  # [n, 2]


def qvh_saliency(
    relevant_clip_ids: Sequence[int],
    saliency_scores: Sequence[Sequence[float]],
    ctx_l: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """QVHighlights targets: (pos [2], neg [2], all-saliency [ctx_l], relevant mask [ctx_l])."""
    rel = [int(i) for i in relevant_clip_ids]
    agg = np.asarray(saliency_scores, dtype=np.float64).reshape(len(rel), -1).sum(1)  # [n_rel]
    order = np.argsort(agg)  # increasing, numpy default kind as the official code
    hard_pos = min(rel[order[-1]], ctx_l - 1)
    hard_neg = min(rel[order[0]], ctx_l - 1)
    rel_set = set(rel)
    easy_neg_pool = [i for i in range(ctx_l) if i not in rel_set]
    if easy_neg_pool:
        easy_pos = min(rel[int(rng.integers(len(rel)))], ctx_l - 1)
        easy_neg = easy_neg_pool[int(rng.integers(len(easy_neg_pool)))]
    else:  # no clip outside the moment: copy the hard pair (official behaviour)
        easy_pos, easy_neg = hard_pos, hard_neg
    all_labels = np.zeros(ctx_l, np.float64)
    pos_mask = np.zeros(ctx_l, np.float32)
    for clip_id, score in zip(rel, agg):
        if 0 <= clip_id < ctx_l:
            all_labels[clip_id] = score
            pos_mask[clip_id] = 1.0
    pos = np.array([hard_pos, easy_pos], np.int32)
    neg = np.array([hard_neg, easy_neg], np.int32)
    return pos, neg, all_labels.astype(np.float32), pos_mask


def tvsum_saliency(
    label: Sequence[Sequence[float]], ctx_l: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TVSum targets from the (clips x 20 annotators) label: (pos [1], neg [1], all, mask)."""
    label = np.asarray(label, dtype=np.float64)
    agg = (label - 1.0).sum(-1)[:ctx_l]  # scores start at 1
    order = np.argsort(agg)  # increasing
    pos = np.array([min(int(order[-1]), ctx_l - 1)], np.int32)
    neg = np.array([min(int(order[0]), ctx_l - 1)], np.int32)
    all_labels = np.zeros(ctx_l, np.float64)
    all_labels[: len(agg)] = agg / 80 * 12
    pos_mask = np.zeros(ctx_l, np.float32)
    pos_mask[order[ctx_l // 2 :]] = 1.0  # top half by summed score
    return pos, neg, all_labels.astype(np.float32), pos_mask


def window_clip_range(window: Sequence[float], ctx_l: int, clip_length: float) -> tuple[int, int]:
    """Inclusive clip range ``(st, ed)`` covered by a window in seconds."""
    st = int(window[0] / clip_length)
    ed = max(0, min(int(window[1] / clip_length), ctx_l) - 1)
    return min(st, ed), ed


def window_saliency(
    window: Sequence[float], ctx_l: int, clip_length: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Charades-style targets from one window: (pos [2], neg [2], 0/1 all-saliency, mask)."""
    st, ed = window_clip_range(window, ctx_l, clip_length)
    if ed > st:
        pos = rng.choice(np.arange(st, ed + 1), size=2, replace=False)
    else:
        pos = np.array([st, st])
    pool = np.array([i for i in range(ctx_l) if i < st or i > ed], np.int64)
    if len(pool) >= 2:
        neg = rng.choice(pool, size=2, replace=False)
    elif len(pool) == 1:
        neg = np.array([pool[0], pool[0]])
    else:  # the window covers the whole video: no negative exists, the pair loss is constant
        neg = pos.copy()
    mask = np.zeros(ctx_l, np.float32)
    mask[st : ed + 1] = 1.0
    return pos.astype(np.int32), neg.astype(np.int32), mask.copy(), mask
