"""Padding examples to bucketed shapes and iterating epochs deterministically.

Every batch is a dict of numpy arrays; ``Lv`` / ``Lq`` are the dataset's length buckets
that hold the global batch's longest video / query (:mod:`trdetr_jax.data.buckets`;
``max_v_l`` / ``max_q_l`` with buckets off), so there is one compilation per bucket pair:

    src_txt [B, Lq, Dt] f32, src_txt_mask [B, Lq] f32 (1 = valid)
    src_vid [B, Lv, Dv] f32, src_vid_mask [B, Lv] f32
    src_aud [B, Lv, Da] f32 (only with audio; same mask as the video)
    span_labels [B, max_windows, 2] f32 (center, width), span_mask [B, max_windows] f32
    saliency_pos_labels, saliency_neg_labels [B, P] int32
    saliency_all_labels [B, Lv] f32, src_pos_mask [B, Lv] f32
    example_mask [B] f32 (0 for rows that only fill an evaluation batch)
    official_vid_len, official_txt_len [B] int32: on every row the longest video / query
        among the real rows of the global batch (what the official collate pads it to)
    official_batch_size [B] int32: on every row the number of real rows of the global batch

and travels with ``metas``: the annotation rows of the real (``example_mask = 1``) rows, in
order. Randomness is seeded, never global: the epoch order comes from
``default_rng([seed, epoch, 0])`` and example ``i``'s saliency pairs / window shuffle from
``default_rng([seed, epoch, 1, i])`` (evaluation: ``[seed, 2, i]``), so a run resumed at any
step sees the same batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import jax
import numpy as np

from trdetr_jax.data.dataset import MomentDataset
from trdetr_jax.data.errors import DataError

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
    p = len(examples[0]["pos"])
    batch = {
        "src_txt_mask": np.zeros((b, max_q_l), np.float32),
        "src_vid_mask": np.zeros((b, max_v_l), np.float32),
        "span_labels": np.zeros((b, max_windows, 2), np.float32),
        "span_mask": np.zeros((b, max_windows), np.float32),
        "saliency_pos_labels": np.zeros((b, p), np.int32),
        "saliency_neg_labels": np.zeros((b, p), np.int32),
        "saliency_all_labels": np.zeros((b, max_v_l), np.float32),
        "src_pos_mask": np.zeros((b, max_v_l), np.float32),
        "example_mask": np.ones(b, np.float32) if example_mask is None else example_mask,
    }
    features = "video" in examples[0]  # False: targets only (features stay on the device)
    if features:
        batch["src_txt"] = np.zeros((b, max_q_l, examples[0]["text"].shape[1]), np.float32)
        batch["src_vid"] = np.zeros((b, max_v_l, examples[0]["video"].shape[1]), np.float32)
    if "audio" in examples[0]:
        batch["src_aud"] = np.zeros((b, max_v_l, examples[0]["audio"].shape[1]), np.float32)
    for i, ex in enumerate(examples):
        if features:
            lv, lt = len(ex["video"]), len(ex["text"])
        else:
            lv, lt = ex["lengths"]
        nw = len(ex["spans"])
        if lv > max_v_l or lt > max_q_l or nw > max_windows:  # the store cuts; defensive
            raise DataError(f"example {i} exceeds max_v_l/max_q_l/max_windows: {lv}/{lt}/{nw}")
        batch["src_vid_mask"][i, :lv] = 1.0
        batch["src_txt_mask"][i, :lt] = 1.0
        if features:
            batch["src_vid"][i, :lv] = ex["video"]
            batch["src_txt"][i, :lt] = ex["text"]
        batch["span_labels"][i, :nw] = ex["spans"]
        batch["span_mask"][i, :nw] = 1.0
        batch["saliency_pos_labels"][i] = ex["pos"]
        batch["saliency_neg_labels"][i] = ex["neg"]
        batch["saliency_all_labels"][i, : len(ex["saliency_all"])] = ex["saliency_all"][:max_v_l]
        batch["src_pos_mask"][i, : len(ex["pos_mask"])] = ex["pos_mask"][:max_v_l]
        if "audio" in ex:
            batch["src_aud"][i, :lv] = ex["audio"]
    return batch


def stack_batches(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batches of one shape as one chunk ``[steps, rows, ...]``."""
    shapes = {tuple((k, v.shape) for k, v in sorted(b.items())) for b in batches}
    if len(shapes) != 1:
        raise ValueError("stack_batches: the batches of a chunk must have one shape")
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def _process(index: int | None, count: int | None) -> tuple[int, int]:
    """``(process index, process count)``, this process's where not given."""
    return (
        jax.process_index() if index is None else index,
        jax.process_count() if count is None else count,
    )


def _local_slice(batch_size: int, process_index: int, process_count: int) -> slice:
    if batch_size % process_count:
        raise DataError(
            f"config.train.batch_size = {batch_size} is not divisible by the {process_count} "
            "processes"
        )
    per = batch_size // process_count
    return slice(process_index * per, (process_index + 1) * per)


def _make(dataset: MomentDataset, global_idx, rngs, mask, local: slice, resident=None) -> Batch:
    """This process's rows ``local`` of the global batch of examples ``global_idx``.

    Shapes and official lengths come from every row's header lengths, so each process
    agrees on them while loading only its own rows. With ``resident`` (a
    :class:`~trdetr_jax.data.resident.ResidentFeatures` of ``dataset``) the batch carries
    ``video_row`` / ``text_row`` (rows of its device tables) instead of the feature arrays.
    """
    lengths = np.asarray([dataset.lengths(int(i)) for i in global_idx], np.int64)  # [B, 2]
    real = lengths[np.asarray(mask) > 0]
    official_v, official_t = (int(x) for x in real.max(0))
    pad_v, pad_t = dataset.buckets.pick(*(int(x) for x in lengths.max(0)))
    idx, mask = global_idx[local], np.asarray(mask, np.float32)[local]
    examples = []
    for i, rng, (lv, lt) in zip(idx, rngs[local], lengths[local]):
        ex = dataset.example(int(i), rng, with_features=resident is None)
        if resident is None and (len(ex["video"]), len(ex["text"])) != (lv, lt):
            row = dataset.rows[int(i)]
            raise DataError(
                f"vid {row['vid']!r} / qid {row['qid']!r}: loaded lengths "
                f"{len(ex['video'])}/{len(ex['text'])}, file headers say {lv}/{lt}"
            )
        examples.append(ex)
    batch = collate(
        examples,
        max_v_l=pad_v,
        max_q_l=pad_t,
        max_windows=dataset.max_windows,
        example_mask=mask,
    )
    batch["official_vid_len"] = np.full(len(idx), official_v, np.int32)
    batch["official_txt_len"] = np.full(len(idx), official_t, np.int32)
    # The official loader's batch: the real rows only (the T2V mask quirk wraps around it).
    batch["official_batch_size"] = np.full(len(idx), len(real), np.int32)
    if resident is not None:
        batch["video_row"], batch["text_row"] = resident.rows(idx)
    metas = [dataset.rows[int(i)] for i, m in zip(idx, mask) if m > 0]
    return batch, metas


def train_batches(
    dataset: MomentDataset,
    batch_size: int,
    *,
    epoch: int,
    seed: int | None = None,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    resident=None,
) -> Iterator[tuple[Batch, list[dict]]]:
    """``(this process's rows of the batch, metas of its real examples)`` of training epoch
    ``epoch`` from step ``start_step`` on (for resuming).

    ``batch_size`` is global; each process (default: this one of ``jax.process_count()``)
    gets its contiguous share of every batch. A split smaller than one batch is completed by
    repeating examples (wrap-around). ``seed`` defaults to the dataset's. ``resident``: the
    split's :class:`~trdetr_jax.data.resident.ResidentFeatures` (batches then carry table
    rows instead of features).
    """
    seed = dataset.seed if seed is None else seed
    local = _local_slice(batch_size, *_process(process_index, process_count))
    n = len(dataset)
    order = epoch_order(n, seed, epoch)
    if n < batch_size:
        order = np.resize(order, batch_size)  # wrap around
    for step in range(start_step, steps_per_epoch(n, batch_size)):
        idx = order[step * batch_size : (step + 1) * batch_size]
        rngs = np.asarray([example_rng(seed, epoch, i) for i in idx], dtype=object)
        yield _make(dataset, idx, rngs, np.ones(len(idx), np.float32), local, resident)


def num_eval_batches(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)


def eval_batches(
    dataset: MomentDataset,
    batch_size: int,
    *,
    pad_to: int | None = None,
    seed: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    resident=None,
) -> Iterator[tuple[Batch, list[dict]]]:
    """Every example once, in file order, ``batch_size`` examples a batch (the official
    ``eval_bsz``: the official lengths are those of these groups).

    Each batch has ``pad_to`` rows (default ``batch_size``; more when the device count asks
    for a multiple): the rows after its real examples, and those completing the last batch,
    are copies of its last real example with ``example_mask`` 0 (they change neither the
    official lengths nor the bucket). Yields ``(this process's rows, metas of every real
    example of the global batch)``: outputs gathered from every process match the metas.
    ``seed`` defaults to the dataset's.
    """
    seed = dataset.seed if seed is None else seed
    pad_to = batch_size if pad_to is None else pad_to
    if pad_to < batch_size:
        raise ValueError(f"pad_to={pad_to} is smaller than batch_size={batch_size}")
    local = _local_slice(pad_to, *_process(process_index, process_count))
    n = len(dataset)
    for b in range(num_eval_batches(n, batch_size)):
        real = np.arange(b * batch_size, min((b + 1) * batch_size, n))
        idx = np.concatenate([real, np.full(pad_to - len(real), real[-1])])
        mask = (np.arange(pad_to) < len(real)).astype(np.float32)
        rngs = np.asarray([np.random.default_rng([_seed(seed), 2, int(i)]) for i in idx], object)
        batch, _ = _make(dataset, idx, rngs, mask, local, resident)
        yield batch, [dataset.rows[int(i)] for i in real]


def batch_shapes(dataset: MomentDataset, batch_size: int) -> dict[str, tuple[tuple, np.dtype]]:
    """``{key: (shape, dtype)}`` of a global batch of ``batch_size`` rows padded to the
    largest buckets (``max_v_l`` / ``max_q_l``); from one example, whatever the process."""
    ex = dataset.example(0, np.random.default_rng(0))
    one = collate(
        [ex],
        max_v_l=dataset.buckets.video[-1],
        max_q_l=dataset.buckets.text[-1],
        max_windows=dataset.max_windows,
    )
    for key in ("official_vid_len", "official_txt_len", "official_batch_size"):
        one[key] = np.zeros(1, np.int32)
    return {k: ((batch_size, *v.shape[1:]), v.dtype) for k, v in one.items()}


def abstract_batch(dataset: MomentDataset, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """:func:`batch_shapes` as ``jax.ShapeDtypeStruct`` (parameter shapes do not depend on the
    lengths; the steps compile per bucket)."""
    return {
        k: jax.ShapeDtypeStruct(shape, dtype)
        for k, (shape, dtype) in batch_shapes(dataset, batch_size).items()
    }


def train_dispatches(
    dataset: MomentDataset,
    batch_size: int,
    *,
    epoch: int,
    seed: int | None,
    start_step: int,
    first_step: int,
    steps_per_dispatch: int,
    cut_every: int,
    resident=None,
) -> Iterator[Batch]:
    """This process's batches of training epoch ``epoch`` from its step ``start_step`` on
    (:func:`train_batches`), as the loop dispatches them: one by one, or with several steps
    per dispatch stacked into chunks (:func:`chunk_batches`; ``first_step``: the global step
    of the first one, ``cut_every``: the checkpoint interval)."""
    batches = (
        b
        for b, _ in train_batches(
            dataset, batch_size, epoch=epoch, seed=seed, start_step=start_step, resident=resident
        )
    )
    if steps_per_dispatch == 1:
        return batches
    return chunk_batches(
        batches, first_step=first_step, size=steps_per_dispatch, cut_every=cut_every
    )


def chunk_batches(batches: Iterable[Batch], *, first_step: int, size: int, cut_every: int):
    """Consecutive batches stacked into chunks ``[steps, rows, ...]`` of at most ``size`` steps.

    A chunk holds batches of one length bucket only (a batch padded further would draw other
    dropout masks: JAX draws one per position of the padded array), and it ends where the
    global step after it is a multiple of ``size`` or of ``cut_every`` (the checkpoint
    interval), or where the batches (the epoch) end. So the chunks depend on the data order
    and step positions only: a run resumed at a checkpoint makes the chunks the uninterrupted
    run made.
    """

    def shape(batch):
        return batch["src_vid_mask"].shape, batch["src_txt_mask"].shape

    chunk: list[Batch] = []
    step = first_step
    for batch in batches:
        if chunk and shape(batch) != shape(chunk[0]):
            yield stack_batches(chunk)
            chunk = []
        chunk.append(batch)
        step += 1
        if step % size == 0 or step % cut_every == 0:
            yield stack_batches(chunk)
            chunk = []
    if chunk:
        yield stack_batches(chunk)


def bucket_counts(
    dataset: MomentDataset, batch_size: int, *, epoch: int, seed: int | None = None
) -> dict[tuple[int, int], int]:
    """``{(video bucket, text bucket): batches}`` of training epoch ``epoch`` (headers only)."""
    seed = dataset.seed if seed is None else seed
    n = len(dataset)
    order = epoch_order(n, seed, epoch)
    if n < batch_size:
        order = np.resize(order, batch_size)
    counts: dict[tuple[int, int], int] = {}
    for step in range(steps_per_epoch(n, batch_size)):
        idx = order[step * batch_size : (step + 1) * batch_size]
        lengths = np.asarray([dataset.lengths(int(i)) for i in idx], np.int64)
        key = dataset.buckets.pick(*(int(x) for x in lengths.max(0)))
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
