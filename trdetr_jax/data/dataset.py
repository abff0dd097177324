"""Per-dataset readers: annotation rows + feature store -> unpadded examples.

One reader class covers the three official layouts; ``layout`` chooses how targets are
built (see :mod:`trdetr_jax.data.targets`):

* ``qvhighlights`` (also the built-in demo): windows, relevant clip ids, 3 annotator scores;
* ``charades``: windows only; relevant clips and 0/1 saliency come from the first window;
* ``tvsum``: ``label`` (clips x 20 annotators), no windows (a dummy ``[[0, 0]]`` span).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
from ml_collections import config_dict

from trdetr_jax.data import annotations as ann
from trdetr_jax.data import buckets as buckets_lib
from trdetr_jax.data import checks, features, targets
from trdetr_jax.data.errors import DataError


class MomentDataset:
    """Examples of one split. ``rows[i]`` is the annotation row (also the host metadata)."""

    def __init__(
        self,
        rows: list[dict],
        store: features.FeatureStore,
        *,
        layout: str,
        clip_length: float,
        max_v_l: int,
        max_q_l: int,
        max_windows: int,
        name: str = "",
        seed: int = 0,
    ):
        self.rows = rows
        self.store = store
        self.layout = layout
        self.clip_length = float(clip_length)
        self.max_v_l, self.max_q_l, self.max_windows = max_v_l, max_q_l, max_windows
        self.name = name
        self.seed = seed  # seeds shuffling and target sampling together with the epoch
        # Saliency pairs per example: [hard, easy] (QVH), two sampled (Charades), hard (TVSum).
        self.num_pairs = 1 if layout == "tvsum" else 2
        self.has_audio = store.a_feat_dir is not None
        # Padded lengths of its batches (see trdetr_jax.data.buckets); default: the maxima.
        self.buckets = buckets_lib.no_buckets(max_v_l, max_q_l)
        # The annotation file and each row's line in it (for messages), set by the pre-flight
        # check (trdetr_jax.data.checks.check_split).
        self.gt_source, self.gt_lines = "<ground truth>", None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_examples(self) -> int:
        return len(self.rows)

    @property
    def metas(self) -> list[dict]:
        return self.rows

    def gt_rows(self) -> list[dict]:
        """The annotation rows, as the evaluation metrics take them (ground truth)."""
        return [dict(r) for r in self.rows]

    def gt_file(self):
        """:meth:`gt_rows` with the annotation file's name and line numbers (set by the
        pre-flight check), so evaluation messages point into the file."""
        from trdetr_jax.evaluation.io import JsonlFile

        lines = self.gt_lines or list(range(1, len(self.rows) + 1))
        return JsonlFile(self.gt_source, self.gt_rows(), lines)

    def lengths(self, index: int) -> tuple[int, int]:
        """``(clips, tokens)`` of example ``index`` once loaded, from file headers alone."""
        row = self.rows[index]
        return self.store.lengths(row["vid"], row["qid"])

    def all_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-example video and text lengths ``[N]`` int64 (file headers alone)."""
        pairs = np.asarray([self.lengths(i) for i in range(len(self))], np.int64).reshape(-1, 2)
        return pairs[:, 0], pairs[:, 1]

    def example(
        self, index: int, rng: np.random.Generator, *, with_features: bool = True
    ) -> dict[str, np.ndarray]:
        """Unpadded arrays of example ``index``; ``rng`` draws its random saliency pairs.

        ``with_features=False``: the targets alone (the features stay on the device, see
        :mod:`trdetr_jax.data.resident`); the clip count then comes from the file header.
        """
        row = self.rows[index]
        if with_features:
            video, audio = self.store.video(row["vid"])  # [T, Dv], [T, Da] | None
            text = self.store.text(row["qid"])  # [N, Dt]
            ctx_l = len(video)
            out = {"video": video, "text": text}
            if audio is not None:
                out["audio"] = audio
        else:
            lengths = self.lengths(index)
            ctx_l = lengths[0]
            out = {"lengths": np.asarray(lengths, np.int64)}
        if not ann.has_labels(row, self.layout):  # test split: zero targets, no span
            out.update(
                spans=np.zeros((0, 2), np.float32),
                pos=np.zeros(self.num_pairs, np.int32),
                neg=np.zeros(self.num_pairs, np.int32),
                saliency_all=np.zeros(ctx_l, np.float32),
                pos_mask=np.zeros(ctx_l, np.float32),
            )
            return out
        if self.layout == "tvsum":
            spans = np.zeros((1, 2), np.float32)  # dummy target, no matching on TVSum
            pos, neg, sal, mask = targets.tvsum_saliency(row["label"], ctx_l)
        else:
            spans = targets.span_labels(
                row["relevant_windows"], ctx_l, self.clip_length, self.max_windows, rng
            )
            if self.layout == "qvhighlights":
                pos, neg, sal, mask = targets.qvh_saliency(
                    row["relevant_clip_ids"], row["saliency_scores"], ctx_l, rng
                )
            else:
                pos, neg, sal, mask = targets.window_saliency(
                    row["relevant_windows"][0], ctx_l, self.clip_length, rng
                )
        out.update(spans=spans, pos=pos, neg=neg, saliency_all=sal, pos_mask=mask)
        return out


def resolve_config(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """A copy of ``config`` with data paths filled in where the dataset provides them.

    For the built-in demo this generates the dataset on first use (see
    :mod:`trdetr_jax.data.demo`) and points ``feature_root`` / ``train_path`` /
    ``eval_path`` at it unless they are set. Other datasets are returned unchanged.
    """
    config = copy.deepcopy(config)
    data = config.data
    if data.demo.enabled:
        from trdetr_jax.data import demo  # noqa: PLC0415 (only the demo needs it)

        root = demo.ensure_demo_dataset(data.demo, data.cache_dir)
        if data.feature_root is None:
            data.feature_root = str(root)
        if data.train_path is None:
            data.train_path = str(root / "train.jsonl")
        if data.eval_path is None:
            data.eval_path = str(root / "val.jsonl")
    return config


def make_store(data: config_dict.ConfigDict) -> features.FeatureStore:
    """The feature store ``config.data`` describes (no file is read yet)."""
    return features.FeatureStore(
        feature_root=data.feature_root,
        v_feat_dirs=data.v_feat_dirs,
        v_feat_dims=data.v_feat_dims,
        v_feat_format=data.v_feat_format,
        t_feat_dir=data.t_feat_dir,
        t_feat_dim=data.t_feat_dim,
        t_feat_format=data.t_feat_format,
        a_feat_dir=data.a_feat_dir,
        a_feat_dim=data.a_feat_dim,
        max_v_l=data.max_v_l,
        max_q_l=data.max_q_l,
        truncate_text=data.truncate_text,
        normalize_video=data.normalize_video,
        normalize_text=data.normalize_text,
        use_tef=data.use_tef,
        on_long_video=data.on_long_video,
        preload=data.preload,
    )


def make_dataset(
    data: config_dict.ConfigDict,
    split: str,
    store: features.FeatureStore | None = None,
    seed: int = 0,
) -> MomentDataset:
    """The ``'train'`` or ``'eval'`` split described by ``config.data`` (paths resolved)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    layout = ann.layout_of(data.dataset)
    path = data.train_path if split == "train" else data.eval_path
    if not path:
        raise DataError(f"config.data.{split}_path is not set")
    rows = ann.read_annotations(
        path,
        layout,
        require_labels=split == "train",
        domain=data.domain,
        data_ratio=data.data_ratio if split == "train" else 1.0,
    )
    return MomentDataset(
        rows,
        store if store is not None else make_store(data),
        layout=layout,
        clip_length=data.clip_length,
        max_v_l=data.max_v_l,
        max_q_l=data.max_q_l,
        max_windows=data.max_windows,
        name=split,
        seed=seed,
    )


def build_datasets(config: config_dict.ConfigDict) -> tuple[MomentDataset, MomentDataset]:
    """``(train, eval)`` datasets sharing one feature store (one memory cache).

    The config is resolved first (:func:`resolve_config`: the demo is generated on first
    use). With ``config.data.preload`` the processed features stay in memory after their
    first read, unless a probe of a few files says they would not fit (then they are read
    every time). Both splits pad to the length buckets chosen from the training split
    (``config.data.length_buckets``, :mod:`trdetr_jax.data.buckets`).
    """
    data = resolve_config(config).data
    store = make_store(data)
    train = make_dataset(data, "train", store, seed=config.seed)
    evaluation = make_dataset(data, "eval", store, seed=config.seed)
    checks.preflight(data, train, evaluation)  # every row and feature header, all at once
    _check_memory(store, train.rows + evaluation.rows)
    train.buckets = evaluation.buckets = _buckets(data, train, config.train.batch_size)
    return train, evaluation


def load_datasets(config: config_dict.ConfigDict):
    """``(resolved config, train dataset, eval dataset)`` of a training run: the resolved
    config has the dataset's paths filled in (the demo generated on first use); it is the
    one a run records in its ``config.json``."""
    config = resolve_config(config)
    train, evaluation = build_datasets(config)
    return config, train, evaluation


def build_eval_dataset(config: config_dict.ConfigDict) -> MomentDataset:
    """The evaluation split alone (prediction with a trained model); its buckets come from
    its own lengths."""
    data = resolve_config(config).data
    store = make_store(data)
    evaluation = make_dataset(data, "eval", store, seed=config.seed)
    checks.preflight(data, None, evaluation)
    _check_memory(store, evaluation.rows)
    evaluation.buckets = _buckets(data, evaluation, config.train.eval_batch_size)
    return evaluation


def _buckets(data, ds: MomentDataset, batch_size: int) -> buckets_lib.Buckets:
    if not data.length_buckets:
        return buckets_lib.no_buckets(data.max_v_l, data.max_q_l)
    return buckets_lib.from_config(data, *ds.all_lengths(), batch_size)


def _check_memory(store: features.FeatureStore, rows: list[dict]) -> None:
    """Turn the memory cache off when the features would not fit (probe of a few files)."""
    if store.preload:
        vids = sorted({r["vid"] for r in rows})
        qids = [r["qid"] for r in rows]
        need = features.estimated_bytes(store, vids, qids)
        avail = features.available_memory_bytes()
        if avail is not None and need > 0.7 * avail:
            logging.warning(
                "features need about %.1f GB but %.1f GB are available: not caching them "
                "in memory (config.data.preload ignored)", need / 1e9, avail / 1e9,
            )  # fmt: skip
            store.disable_cache()
        else:
            logging.info("caching about %.2f GB of features in memory", need / 1e9)
