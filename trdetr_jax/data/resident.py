"""Features resident on the device: the host sends row indices, the step gathers the batch.

A batch's feature arrays (``src_vid`` 32 x 75 x 2818 float32 is 27 MB on QVHighlights) are
most of what crosses from the host to the device every step. When the processed features
of a split fit, :class:`ResidentFeatures` puts them on the device(s) once, as padded tables

    video [V, max_v_l, Dv] f32   one row per distinct video of the split
    audio [V, max_v_l, Da] f32   (only with audio)
    text  [N, max_q_l, Dt] f32   one row per example (query)

zero beyond each item's length, and the host's batches carry ``video_row`` / ``text_row``
``[B]`` int32 in place of ``src_vid`` / ``src_aud`` / ``src_txt`` (every other key, the
targets and the seeded saliency-pair draws included, is made on the host as before).
:func:`gather` rebuilds the feature arrays inside the jitted step at the batch's bucket
lengths (the widths of ``src_vid_mask`` / ``src_txt_mask``); since the tables hold exactly
the arrays the collate copies, padded with the same zeros, the gathered batch is
bit-identical to the collated one.

The tables are replicated on every device of the mesh (each device gathers the rows of its
shard of the batch); on several hosts every process builds the whole tables.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np

from trdetr_jax.data import features
from trdetr_jax.data.dataset import MomentDataset
from trdetr_jax.data.errors import DataError

FEATURE_KEYS = ("src_vid", "src_txt", "src_aud")
ROW_KEYS = ("video_row", "text_row")


@dataclasses.dataclass
class ResidentFeatures:
    """Device tables of one split and, for each example, its rows in them."""

    tables: dict[str, jax.Array]  # 'video', 'text' (and 'audio'): replicated arrays
    video_row_of_example: np.ndarray  # [N] int32
    nbytes: int

    def rows(self, example_indices) -> tuple[np.ndarray, np.ndarray]:
        """``(video_row, text_row)`` ``[B]`` int32 of the examples ``example_indices``."""
        idx = np.asarray(example_indices, np.int64)
        return self.video_row_of_example[idx], idx.astype(np.int32)


def widths(dataset: MomentDataset) -> tuple[int, int, int | None]:
    """``(video, text, audio or None)`` feature widths of ``dataset``'s processed arrays."""
    store = dataset.store
    tef = 2 if store.use_tef else 0
    audio = None if store.a_feat_dir is None else int(store.a_feat_dim) + tef
    return sum(store.v_feat_dims) + tef, int(store.t_feat_dim), audio


def table_bytes(dataset: MomentDataset) -> int:
    """Bytes the tables of ``dataset`` take (from the configured widths, no file read)."""
    dv, dt, da = widths(dataset)
    videos = len({r["vid"] for r in dataset.rows})
    return 4 * (videos * dataset.max_v_l * (dv + (da or 0)) + len(dataset) * dataset.max_q_l * dt)


def device_memory_bytes(devices) -> int | None:
    """The smallest memory limit of ``devices`` (accelerators), None where not reported."""
    limits = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001 (CPU devices and some plugins do not report)
            stats = None
        if not stats or "bytes_limit" not in stats:
            return None
        limits.append(int(stats["bytes_limit"]))
    return min(limits) if limits else None


def wanted(setting, datasets, devices, share: float = 0.4) -> tuple[bool, str]:
    """Whether to keep the features of ``datasets`` (one split or a sequence of them) on the
    devices, and why.

    ``setting`` is ``config.data.features_on_device``: ``'on'``, ``'off'`` or ``'auto'``:

    * on an accelerator, on when the tables of all ``datasets`` take at most ``share`` of the
      smallest device memory;
    * on CPU, where device memory is host memory, on when the features are cached in memory
      anyway (``config.data.preload``, kept on by the memory probe) and the tables, one copy
      per CPU device of the process, take at most ``share`` of the memory the OS reports
      available. The step then gathers its batch instead of a host thread collating it
      beside XLA's threads (the real loop ran 1.19x faster on 2 cores). While the tables are
      built the cache and the tables are both held, hence the margin.
    """
    if setting not in ("auto", "on", "off"):
        raise ValueError(
            f"config.data.features_on_device: expected 'auto', 'on' or 'off', found {setting!r}"
        )
    if isinstance(datasets, MomentDataset):
        datasets = (datasets,)
    if setting == "off":
        return False, "config.data.features_on_device is 'off'"
    need = sum(table_bytes(ds) for ds in datasets)
    if setting == "on":
        return True, f"{need / 1e9:.2f} GB of feature tables on every device (forced on)"
    platform = devices[0].platform
    if platform == "cpu":
        if not all(ds.store.preload for ds in datasets):
            return False, "CPU: the features are not kept in memory (config.data.preload)"
        avail = features.available_memory_bytes()
        copies = max(1, sum(d.process_index == jax.process_index() for d in devices))
        if avail is None:
            return False, "CPU: the OS reports no available memory"
        if need * copies > share * avail:
            return False, (
                f"CPU: feature tables need {need * copies / 1e9:.2f} GB ({copies} device "
                f"copies), more than {share:.0%} of the {avail / 1e9:.1f} GB of available memory"
            )
        return True, (
            f"CPU: {need / 1e9:.2f} GB of feature tables x {copies} devices, within {share:.0%} "
            f"of the {avail / 1e9:.1f} GB of available memory"
        )
    limit = device_memory_bytes(devices)
    if limit is None:
        return False, f"{platform}: the device reports no memory limit"
    if need > share * limit:
        return False, (
            f"feature tables need {need / 1e9:.2f} GB, more than {share:.0%} of the "
            f"{limit / 1e9:.1f} GB of device memory"
        )
    return True, f"{need / 1e9:.2f} GB of feature tables on every device"


def build(dataset: MomentDataset, sharding: jax.sharding.Sharding) -> ResidentFeatures:
    """Reads every feature of ``dataset`` once and puts the padded tables on ``sharding``
    (replicated). Raises DataError, naming the file, for a feature the collate would reject.
    """
    store = dataset.store
    dv, dt, da = widths(dataset)
    vids = sorted({r["vid"] for r in dataset.rows})
    vid_index = {v: i for i, v in enumerate(vids)}
    video = np.zeros((len(vids), dataset.max_v_l, dv), np.float32)
    audio = None if da is None else np.zeros((len(vids), dataset.max_v_l, da), np.float32)
    video_len = {}
    for i, vid in enumerate(vids):
        v, a = store.video(vid)
        video[i, : len(v)] = v
        video_len[vid] = len(v)
        if audio is not None:
            audio[i, : len(a)] = a
    text = np.zeros((len(dataset), dataset.max_q_l, dt), np.float32)
    for i, row in enumerate(dataset.rows):
        t = store.text(row["qid"])
        text[i, : len(t)] = t
        # The batches' masks and official lengths come from the file headers.
        if (video_len[row["vid"]], len(t)) != dataset.lengths(i):
            raise DataError(
                f"vid {row['vid']!r} / qid {row['qid']!r}: loaded lengths "
                f"{video_len[row['vid']]}/{len(t)}, file headers say "
                f"{'/'.join(map(str, dataset.lengths(i)))}"
            )
    host = {"video": video, "text": text}
    if audio is not None:
        host["audio"] = audio
    nbytes = sum(x.nbytes for x in host.values())
    # Every process holds the whole tables: replicated placement from the host arrays.
    tables = {
        k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
        for k, v in host.items()
    }
    rows = np.asarray([vid_index[r["vid"]] for r in dataset.rows], np.int32)
    logging.info(
        "%s split: %d videos and %d queries resident on the device (%.2f GB)",
        dataset.name,
        len(vids),
        len(dataset),
        nbytes / 1e9,
    )
    return ResidentFeatures(tables, rows, nbytes)


def for_run(setting, train_ds: MomentDataset, eval_ds: MomentDataset, sharding, info):
    """``(train, eval)`` :class:`ResidentFeatures` of a run when ``setting``
    (``config.data.features_on_device``) asks for them and both splits fit, else
    ``(None, None)``; ``info`` reports the decision. ``sharding``: replicated over the mesh."""
    devices = list(sharding.mesh.devices.flat)
    on, why = wanted(setting, (train_ds, eval_ds), devices)
    info("features on the device: %s (%s)", "yes" if on else "no", why)
    if not on:
        return None, None
    tables = build(train_ds, sharding), build(eval_ds, sharding)
    train_ds.store.disable_cache()  # the host copies are no longer read
    return tables


class WithTables:
    """A jitted ``fn(tables, *args)`` called as ``fn(*args)`` with the tables bound (``{}``:
    features come with the batch); ``lower`` too. :meth:`bind` swaps the tables."""

    def __init__(self, fn, tables=None):
        self._fn, self.tables = fn, {} if tables is None else tables

    def __call__(self, *args):
        return self._fn(self.tables, *args)

    def lower(self, *args):
        """``jit(...).lower`` with the tables bound; its ``compile()`` is called likewise."""
        return _Bound(self._fn.lower(self.tables, *args), self.tables)

    def bind(self, tables) -> WithTables:
        return WithTables(self._fn, tables)

    @property
    def unbound(self):
        """The jitted function itself, tables first."""
        return self._fn


class _Bound:
    """A lowered or compiled step whose calls get the tables first; the rest delegates."""

    def __init__(self, inner, tables):
        self._inner, self._tables = inner, tables

    def compile(self, *args, **kwargs):
        return _Bound(self._inner.compile(*args, **kwargs), self._tables)

    def __call__(self, *args):
        return self._inner(self._tables, *args)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def gathering(step):
    """``step(batch_first_args...)`` -> ``fn(tables, a, batch, *rest)`` that gathers the batch
    (the second argument) from ``tables`` before calling ``step(a, batch, *rest)``."""

    def fn(tables, first, batch, *rest):
        return step(first, gather(tables, batch), *rest)

    return fn


def gather(tables: dict[str, jax.Array], batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """``batch`` with ``src_vid`` / ``src_txt`` (/ ``src_aud``) gathered from ``tables`` at
    its rows and bucket lengths, ``video_row`` / ``text_row`` dropped (inside ``jax.jit``).

    A batch without ``video_row`` (features sent from the host) is returned unchanged.
    """
    if "video_row" not in batch:
        return batch
    out = {k: v for k, v in batch.items() if k not in ROW_KEYS}
    lv = batch["src_vid_mask"].shape[-1]
    lq = batch["src_txt_mask"].shape[-1]
    # Rows may be [B] or, for a chunk of steps, [C, B]: the length axis is the one before
    # the feature axis.
    out["src_vid"] = jnp.take(tables["video"], batch["video_row"], axis=0)[..., :lv, :]
    out["src_txt"] = jnp.take(tables["text"], batch["text_row"], axis=0)[..., :lq, :]
    if "audio" in tables:
        out["src_aud"] = jnp.take(tables["audio"], batch["video_row"], axis=0)[..., :lv, :]
    return out
