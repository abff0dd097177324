"""Padding examples to fixed shapes and iterating epochs deterministically.

Every batch is a dict of numpy arrays with static shapes (one compilation):

    src_txt [B, max_q_l, Dt] f32, src_txt_mask [B, max_q_l] f32 (1 = valid)
    src_vid [B, max_v_l, Dv] f32, src_vid_mask [B, max_v_l] f32
    src_aud [B, max_v_l, Da] f32 (only with audio; same mask as the video)
    span_labels [B, max_windows, 2] f32 (center, width), span_mask [B, max_windows] f32
    saliency_pos_labels, saliency_neg_labels [B, P] int32
    saliency_all_labels [B, max_v_l] f32, src_pos_mask [B, max_v_l] f32
    example_mask [B] f32 (0 for rows that only fill the last evaluation batch)

and travels with ``metas``: the annotation rows of the real (``example_mask = 1``) rows, in
order. Randomness is seeded, never global: the epoch order comes from
``default_rng([seed, epoch, 0])`` and example ``i``'s saliency pairs / window shuffle from
``default_rng([seed, epoch, 1, i])`` (evaluation: ``[seed, 2, i]``), so a run resumed at any
step sees the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from trdetr_jax.data.errors import DataError

if TYPE_CHECKING:
    from trdetr_jax.data.dataset import MomentDataset

Batch = tuple[dict[str, np.ndarray], list[dict]]


def _seed(seed: int) -> int:
    return int(seed) & 0xFFFFFFFF  # SeedSequence needs a non-negative integer


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator behind example ``index``'s random targets in training epoch ``epoch``."""
    return np.random.default_rng([_seed(seed), int(epoch), 1, int(index)])


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled example order of a training epoch."""
    return np.random.default_rng([_seed(seed), int(epoch), 0]).permutation(num_examples)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Training steps per epoch: full batches only (the remainder is dropped each epoch,
    after a fresh shuffle, so every example is seen); at least one step."""
    return max(1, num_examples // batch_size)


def collate(
    examples: list[dict[str, np.ndarray]],
    *,
    max_v_l: int,
    max_q_l: int,
    max_windows: int,
    example_mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Pad per-example arrays (from :meth:`MomentDataset.example`) to the fixed shapes."""
    b = len(examples)
    dv = examples[0]["video"].shape[1]
    dt = examples[0]["text"].shape[1]
    p = len(examples[0]["pos"])
    batch = {
        "src_txt": np.zeros((b, max_q_l, dt), np.float32),
        "src_txt_mask": np.zeros((b, max_q_l), np.float32),
        "src_vid": np.zeros((b, max_v_l, dv), np.float32),
        "src_vid_mask": np.zeros((b, max_v_l), np.float32),
        "span_labels": np.zeros((b, max_windows, 2), np.float32),
        "span_mask": np.zeros((b, max_windows), np.float32),
        "saliency_pos_labels": np.zeros((b, p), np.int32),
        "saliency_neg_labels": np.zeros((b, p), np.int32),
        "saliency_all_labels": np.zeros((b, max_v_l), np.float32),
        "src_pos_mask": np.zeros((b, max_v_l), np.float32),
        "example_mask": np.ones(b, np.float32) if example_mask is None else example_mask,
    }
    if "audio" in examples[0]:
        batch["src_aud"] = np.zeros((b, max_v_l, examples[0]["audio"].shape[1]), np.float32)
    for i, ex in enumerate(examples):
        lv, lt, nw = len(ex["video"]), len(ex["text"]), len(ex["spans"])
        if lv > max_v_l or lt > max_q_l or nw > max_windows:  # the store cuts; defensive
            raise DataError(f"example {i} exceeds max_v_l/max_q_l/max_windows: {lv}/{lt}/{nw}")
        batch["src_vid"][i, :lv] = ex["video"]
        batch["src_vid_mask"][i, :lv] = 1.0
        batch["src_txt"][i, :lt] = ex["text"]
        batch["src_txt_mask"][i, :lt] = 1.0
        batch["span_labels"][i, :nw] = ex["spans"]
        batch["span_mask"][i, :nw] = 1.0
        batch["saliency_pos_labels"][i] = ex["pos"]
        batch["saliency_neg_labels"][i] = ex["neg"]
        batch["saliency_all_labels"][i, : len(ex["saliency_all"])] = ex["saliency_all"][:max_v_l]
        batch["src_pos_mask"][i, : len(ex["pos_mask"])] = ex["pos_mask"][:max_v_l]
        if "audio" in ex:
            batch["src_aud"][i, :lv] = ex["audio"]
    return batch


def _local_slice(batch_size: int, process_index: int, process_count: int) -> slice:
    if batch_size % process_count:
        raise DataError(
            f"config.train.batch_size = {batch_size} is not divisible by the {process_count} "
            "processes"
        )
    per = batch_size // process_count
    return slice(process_index * per, (process_index + 1) * per)


def _make(dataset: MomentDataset, indices, rngs, mask) -> Batch:
    examples = [dataset.example(int(i), rng) for i, rng in zip(indices, rngs)]
    batch = collate(
        examples,
        max_v_l=dataset.max_v_l,
        max_q_l=dataset.max_q_l,
        max_windows=dataset.max_windows,
        example_mask=mask,
    )
    metas = [dataset.rows[int(i)] for i, m in zip(indices, mask) if m > 0]
    return batch, metas


def train_batches(
    dataset: MomentDataset,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """The batches of training epoch ``epoch`` from step ``start_step`` on (for resuming).

    ``batch_size`` is global; each process gets its contiguous share of every batch. A
    split smaller than one batch is completed by repeating examples (wrap-around).
    """
    local = _local_slice(batch_size, process_index, process_count)
    n = len(dataset)
    order = epoch_order(n, seed, epoch)
    if n < batch_size:
        order = np.resize(order, batch_size)  # wrap around
    for step in range(start_step, steps_per_epoch(n, batch_size)):
        idx = order[step * batch_size : (step + 1) * batch_size][local]
        rngs = [example_rng(seed, epoch, i) for i in idx]
        yield _make(dataset, idx, rngs, np.ones(len(idx), np.float32))


def num_eval_batches(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)


def eval_batches(
    dataset: MomentDataset,
    batch_size: int,
    *,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """Every example once, in file order; the last batch is filled with copies of the last
    example whose ``example_mask`` is 0 (their metas are left out)."""
    local = _local_slice(batch_size, process_index, process_count)
    n = len(dataset)
    for b in range(num_eval_batches(n, batch_size)):
        idx = np.arange(b * batch_size, (b + 1) * batch_size)
        mask = (idx < n).astype(np.float32)
        idx = np.minimum(idx, n - 1)
        idx, mask = idx[local], mask[local]
        rngs = [np.random.default_rng([_seed(seed), 2, int(i)]) for i in idx]
        yield _make(dataset, idx, rngs, mask)
