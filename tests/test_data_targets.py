"""Targets from annotation rows, checked against hand-computed values."""

from __future__ import annotations

import numpy as np

from trdetr_jax.data import targets


def rng(i=0):
    return np.random.default_rng(i)


def test_span_labels_normalised_by_feature_length():
    # 40 clips of 2 s = 80 s; [70, 80] -> (0.9375, 0.125); [4, 10] -> (0.0875, 0.075).
    out = targets.span_labels([[4, 10], [70, 80]], 40, 2.0, 5, rng())
    np.testing.assert_allclose(out, [[0.0875, 0.075], [0.9375, 0.125]], rtol=1e-6)
    assert out.dtype == np.float32


def test_span_labels_keep_at_most_max_windows():
    windows = [[2 * i, 2 * i + 2] for i in range(7)]
    out = targets.span_labels(windows, 20, 2.0, 5, rng())
    assert out.shape == (5, 2)
    centres = set(np.round(out[:, 0] * 40).astype(int).tolist())
    assert centres <= {2 * i + 1 for i in range(7)} and len(centres) == 5


def test_qvh_saliency_hard_easy_and_labels():
    ids = [3, 4, 5, 6]
    scores = [[1, 1, 1], [4, 4, 4], [0, 0, 1], [2, 2, 2]]  # sums 3, 12, 1, 6
    pos, neg, all_labels, mask = targets.qvh_saliency(ids, scores, 10, rng())
    assert pos[0] == 4 and neg[0] == 5  # argmax / argmin of the summed scores
    assert pos[1] in ids and neg[1] not in ids and 0 <= neg[1] < 10
    np.testing.assert_array_equal(all_labels, [0, 0, 0, 3, 12, 1, 6, 0, 0, 0])
    np.testing.assert_array_equal(mask, [0, 0, 0, 1, 1, 1, 1, 0, 0, 0])


def test_qvh_saliency_copies_hard_pair_without_negatives():
    pos, neg, _, _ = targets.qvh_saliency([0, 1, 2], [[1, 1, 1], [3, 3, 3], [0, 0, 0]], 3, rng())
    np.testing.assert_array_equal(pos, [1, 1])
    np.testing.assert_array_equal(neg, [2, 2])


def test_qvh_saliency_ids_past_the_features_are_dropped_and_clamped():
    pos, neg, all_labels, mask = targets.qvh_saliency([3, 4], [[4, 4, 4], [0, 0, 0]], 4, rng())
    assert pos[0] == 3 and neg[0] == 3  # id 4 clamped to ctx_l - 1
    np.testing.assert_array_equal(all_labels, [0, 0, 0, 12])
    np.testing.assert_array_equal(mask, [0, 0, 0, 1])


def test_tvsum_saliency():
    label = np.ones((6, 20))
    label[:, 0] = [1, 5, 3, 2, 4, 1]  # sums of (label - 1): 0, 4, 2, 1, 3, 0
    pos, neg, all_labels, mask = targets.tvsum_saliency(label, 6)
    assert pos.tolist() == [1] and neg.tolist() == [0]
    np.testing.assert_allclose(all_labels, np.array([0, 4, 2, 1, 3, 0]) / 80 * 12, rtol=1e-6)
    np.testing.assert_array_equal(mask, [0, 1, 1, 0, 1, 0])  # top half: clips 1, 4, 2


def test_window_saliency_from_window():
    # clip 0.5 s: [1.2, 3.1] -> clips int(2.4) = 2 .. min(int(6.2), 10) - 1 = 5
    assert targets.window_clip_range([1.2, 3.1], 10, 0.5) == (2, 5)
    pos, neg, all_labels, mask = targets.window_saliency([1.2, 3.1], 10, 0.5, rng())
    np.testing.assert_array_equal(mask, [0, 0, 1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(all_labels, mask)
    assert len(set(pos.tolist())) == 2 and all(2 <= p <= 5 for p in pos)
    assert len(set(neg.tolist())) == 2 and all(n < 2 or n > 5 for n in neg)


def test_window_saliency_edge_cases():
    # Window past the video end is clamped; a one-clip window repeats its clip.
    assert targets.window_clip_range([8.0, 30.0], 5, 2.0) == (4, 4)
    pos, neg, _, mask = targets.window_saliency([8.0, 30.0], 5, 2.0, rng())
    assert pos.tolist() == [4, 4] and all(n < 4 for n in neg)
    # Whole-video window: no negative exists, the pair is the positives (constant loss).
    pos, neg, _, mask = targets.window_saliency([0.0, 10.0], 5, 2.0, rng())
    assert mask.sum() == 5 and neg.tolist() == pos.tolist()
