"""Moments and saliency for your own videos' features, from a trained or converted model.

    from trdetr_jax import Predictor
    predictor = Predictor.load("workdir/demo")  # a training workdir, or a converted folder
    out = predictor.predict([clip_features], query_tokens)  # arrays as stored on disk
    out["pred_relevant_windows"]  # [[start_s, end_s, score], ...], best first
    out["pred_saliency_scores"]  # one score per clip

Inputs are preprocessed exactly as the data loader does (:func:`trdetr_jax.data.features.
video_inputs` / ``text_inputs``: per-source L2 norm, cut to the shortest source, TEF, text
cut to ``max_q_l`` and normalised), padded to the trained ``max_v_l`` / ``max_q_l`` and to
a batch of 1, 2, 4, ... rows, so each batch size compiles once.

**Long videos.** A video of more than ``max_v_l`` clips is cut into overlapping windows of
``max_v_l`` clips, starting every ``stride`` clips (default ``max_v_l // 2``; the last
window ends at the video's end). Each window is scored like a video of its own (its TEF runs
over the window); its moments are snapped to clips inside the window (the ``'dataset'``
post-processing), shifted to video time, mapped onto ``[0, duration]`` as a single window's
spans are (a moment at a fraction f of the clips ends up at f x ``duration``; a no-op for
the default duration), snapped to ``clip_length`` again, and the moments of all windows are
merged by temporal NMS (``merge_nms_thd``, hull IoU) keeping ``max_moments``. A clip's
saliency is the mean of its scores over the windows that hold it.

With ``model.compat='official'`` a row's outputs depend on its batch-mates (the padded
lengths and the text-to-video mask quirk, :mod:`trdetr_jax.model.t2v`): each forward pass
is the official computation of a loader batch of exactly its rows (at most ``max_batch``),
so one query alone equals the evaluation with ``train.eval_batch_size=1``.

A video of at most ``max_v_l`` clips is one window: the rows are those
``python -m trdetr_jax.predict`` writes for it (the config's ``eval.postprocess``, NMS and
``duration``, default clips x ``clip_length``).
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from trdetr_jax.data import features
from trdetr_jax.data.errors import DataError

MAX_BATCH = 32  # rows per forward pass; larger requests run in several passes


def bucket(n: int, cap: int = MAX_BATCH) -> int:
    """The padded batch size for ``n`` rows: the next power of two, at most ``cap``."""
    size = 1
    while size < min(n, cap):
        size *= 2
    return size


def window_starts(ctx_l: int, length: int, stride: int) -> list[int]:
    """First clips of the windows covering ``ctx_l`` clips: every ``stride`` clips, the last
    window ending at ``ctx_l``; one window ``[0]`` when the video fits."""
    if stride < 1:
        raise ValueError(f"stride must be a positive number of clips, got {stride}")
    if ctx_l <= length:
        return [0]
    starts = list(range(0, ctx_l - length + 1, stride))
    if starts[-1] != ctx_l - length:
        starts.append(ctx_l - length)
    return starts


class Predictor:
    """Inference on feature arrays with one model.

    ``params``: the model's parameter tree; ``config``: its config (as saved beside the
    checkpoint). ``stride``: clips between window starts on long videos (default
    ``max_v_l // 2``). ``merge_nms_thd`` / ``max_moments``: the NMS merging windows
    (default: ``config.eval.max_after_nms`` moments). ``max_batch``: rows per forward pass.
    ``forward(params, batch) -> outputs``: replaces the model's forward pass (tests).
    """

    def __init__(
        self,
        params: Any,
        config,
        *,
        stride: int | None = None,
        merge_nms_thd: float = 0.7,
        max_moments: int | None = None,
        max_batch: int = MAX_BATCH,
        forward: Callable[[Any, dict[str, np.ndarray]], dict[str, Any]] | None = None,
    ):
        self.config = config
        data = config.data
        self.max_v_l, self.max_q_l = int(data.max_v_l), int(data.max_q_l)
        self.clip_length = float(data.clip_length)
        self.stride = (
            max(1, self.max_v_l // 2)
            if stride is None
            else _int_in(
                stride,
                "stride",
                1,
                self.max_v_l,
                f"clips between window starts; a window is config.data.max_v_l = "
                f"{self.max_v_l} clips, so a larger stride would leave clips unscored",
            )
        )
        self.merge_nms_thd = _float_in(merge_nms_thd, "merge_nms_thd", 0.0, 1.0)
        self.max_batch = _int_in(max_batch, "max_batch", 1, None, "rows per forward pass")
        self.max_moments = _int_in(
            config.eval.max_after_nms if max_moments is None else max_moments,
            "max_moments",
            1,
            None,
            "moments per query",
        )
        if forward is None:
            from trdetr_jax import inference
            from trdetr_jax.model import TRDETR, model_kwargs_from_config

            model = TRDETR(**model_kwargs_from_config(config))
            forward = jax.jit(functools.partial(inference.eval_step, model=model))
            params = jax.device_put(jax.device_get(params), jax.devices()[0])
        self.params = params
        self._forward = forward

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, directory: str | pathlib.Path, **kwargs) -> Predictor:
        """The model of a training workdir (its best checkpoint, else the latest) or of a
        folder written by ``python -m trdetr_jax.official.convert``; config from
        ``DIR/config.json``. ``kwargs`` go to :class:`Predictor`."""
        from trdetr_jax import mesh as mesh_lib
        from trdetr_jax import optim, predict, train
        from trdetr_jax.model import TRDETR, model_kwargs_from_config

        config = predict.load_config(directory)
        v_dim, t_dim, a_dim = features.input_dims(config.data)
        shapes = {
            "src_txt": (1, config.data.max_q_l, t_dim),
            "src_txt_mask": (1, config.data.max_q_l),
            "src_vid": (1, config.data.max_v_l, v_dim),
            "src_vid_mask": (1, config.data.max_v_l),
        }
        if a_dim is not None:
            shapes["src_aud"] = (1, config.data.max_v_l, a_dim)
        mesh = mesh_lib.make_mesh(jax.devices()[:1])
        steps = train.build_steps(
            mesh,
            TRDETR(**model_kwargs_from_config(config)),
            optim.optimizer_of_config(config, 1),  # shapes the restore target
            loss_fn=None,
            schedule=None,
            batch_shapes={k: jax.ShapeDtypeStruct(v, np.float32) for k, v in shapes.items()},
        )
        params, _ = predict.restore_params(directory, steps.abstract_state)
        return cls(params, config, **kwargs)

    # -------------------------------------------------------------- prediction
    def predict(
        self,
        video_features: np.ndarray | Sequence[np.ndarray],
        query_features: np.ndarray | Sequence[np.ndarray],
        *,
        audio_features: np.ndarray | None = None,
        duration: float | None = None,
    ) -> dict[str, list] | list[dict[str, list]]:
        """Moments and saliency of one video for one query (a ``[N, Dt]`` NumPy or JAX
        array, or nested lists: one dict) or several (a list of such queries, or a
        ``[Q, N, Dt]`` array: a list of dicts, computed as one batch).

        ``video_features``: one ``[T, D]`` array per ``config.data.v_feat_dirs`` (a single
        array when there is one), as stored on disk (an ``rgb_opt`` source: its ``_rgb`` and
        ``_opt`` arrays concatenated on the feature axis); ``audio_features``: ``[T, Da]``,
        required when the model uses audio. ``duration``: the video's length in seconds, a
        positive number (default: clips x ``clip_length``); the model's spans are fractions
        of the clips given, so they are scaled to it (as the evaluation scales them by an
        annotation's duration), then snapped to ``clip_length`` and clamped to it. Short
        moments can snap to zero length (a moment within one clip), as in the evaluation.
        Each dict holds ``pred_relevant_windows`` (``[[start, end, score], ...]`` in
        seconds, best first; empty for a model trained without moment matching, e.g. TVSum)
        and ``pred_saliency_scores`` (one per clip).
        """
        sources, audio = self._check_video(video_features, audio_features)
        duration = _check_duration(duration)
        single, queries = _split_queries(query_features)
        texts = [self._check_text(q, i) for i, q in enumerate(queries)]
        ctx_l = min(len(s) for s in sources + ([] if audio is None else [audio]))
        starts = window_starts(ctx_l, self.max_v_l, self.stride)
        windows = []
        for a in starts:
            b = min(a + self.max_v_l, ctx_l)
            cut = None if audio is None else audio[a:b]
            windows.append(
                features.video_inputs(
                    [s[a:b] for s in sources],
                    cut,
                    normalize=self.config.data.normalize_video,
                    use_tef=self.config.data.use_tef,
                )
            )
        rows = [(q, w) for q in range(len(texts)) for w in range(len(windows))]
        outputs = self._run([(texts[q], *windows[w]) for q, w in rows])
        if duration is None:
            duration = ctx_l * self.clip_length
        results = []
        for q in range(len(texts)):
            picked = {k: v[q * len(windows) : (q + 1) * len(windows)] for k, v in outputs.items()}
            if len(windows) == 1:
                results.append(self._rows(picked, duration, self._postprocess())[0])
            else:
                results.append(self._merge(picked, starts, ctx_l, duration))
        return results[0] if single else results

    def predict_files(
        self,
        vid: str,
        qid,
        feature_root: str | None = None,
        *,
        duration: float | None = None,
    ) -> dict[str, list] | list[dict[str, list]]:
        """:meth:`predict` on the files of the official layout: video ``vid`` and query
        ``qid`` (or a list of qids, one batch) under ``feature_root`` (default: the
        config's), in the config's formats (see :mod:`trdetr_jax.data.features`)."""
        from trdetr_jax.data.dataset import make_store, resolve_config

        data = resolve_config(self.config).data  # the built-in demo: its generated folder
        with data.unlocked():
            if feature_root is not None:
                data.feature_root = str(feature_root)
            # Raw arrays: predict() normalises, adds the TEF and windows long videos.
            data.normalize_video = data.normalize_text = data.use_tef = False
            data.max_v_l, data.on_long_video, data.preload = 2**62, "error", False
        store = make_store(data)
        video, audio = store.video(vid)  # sources concatenated in config order
        cuts = np.cumsum([int(d) for d in data.v_feat_dims])[:-1]
        sources = np.split(video, cuts, axis=1)
        many = isinstance(qid, (list, tuple))
        texts = [store.text(q) for q in qid] if many else store.text(qid)
        return self.predict(sources, texts, audio_features=audio, duration=duration)

    # ----------------------------------------------------------------- private
    def _check_video(self, video_features, audio_features):
        data = self.config.data
        if _is_array(video_features) or _nested_rows(video_features):
            video_features = [video_features]  # one [T, D] array (or nested lists)
        video_features = list(video_features)
        dirs = list(data.v_feat_dirs)
        if len(video_features) != len(dirs):
            raise DataError(
                f"video_features: expected {len(dirs)} arrays (one per config.data.v_feat_dirs "
                f"{tuple(dirs)}), found {len(video_features)}"
            )
        sources = []
        for i, (arr, folder, dim) in enumerate(zip(video_features, dirs, data.v_feat_dims)):
            where = f"video_features[{i}]"
            arr = features.check_array(arr, f"video source {folder}", where)
            features._check_dim(arr, int(dim), f"config.data.v_feat_dims ({folder})", where)
            sources.append(arr)
        audio = None
        if data.a_feat_dir is not None:
            if audio_features is None:
                raise DataError(
                    f"audio_features: the model uses audio ({data.a_feat_dir}, "
                    f"{data.a_feat_dim}-d), found none"
                )
            audio = features.check_array(audio_features, "audio", "audio_features")
            features._check_dim(
                audio, int(data.a_feat_dim), "config.data.a_feat_dim", "audio_features"
            )
        elif audio_features is not None:
            raise DataError("audio_features: the model uses no audio (config.data.a_feat_dir)")
        return sources, audio

    def _check_text(self, arr, i: int) -> np.ndarray:
        data = self.config.data
        where = f"query_features[{i}]"
        arr = features.check_array(arr, f"query {i}", where)
        features._check_dim(arr, int(data.t_feat_dim), "config.data.t_feat_dim", where)
        if len(arr) > self.max_q_l and not data.truncate_text:
            raise DataError(
                f"query {i}: {where} has {len(arr)} tokens > config.data.max_q_l = "
                f"{self.max_q_l}; this model's text is not truncated (as in training)"
            )
        keep = min(len(arr), self.max_q_l)
        return features.text_inputs(arr, keep=keep, normalize=data.normalize_text)

    def _run(self, examples) -> dict[str, np.ndarray]:
        """Forward passes over ``(text, video, audio)`` rows, padded to fixed shapes."""
        outs: list[dict[str, np.ndarray]] = []
        for lo in range(0, len(examples), self.max_batch):
            chunk = examples[lo : lo + self.max_batch]
            batch = self._collate(chunk, bucket(len(chunk), self.max_batch))
            out = jax.device_get(self._forward(self.params, batch))
            outs.append({k: np.asarray(v)[: len(chunk)] for k, v in out.items()})
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def _collate(self, chunk, size: int) -> dict[str, np.ndarray]:
        text0, video0, audio0 = chunk[0]
        batch = {
            "src_txt": np.zeros((size, self.max_q_l, text0.shape[1]), np.float32),
            "src_txt_mask": np.zeros((size, self.max_q_l), np.float32),
            "src_vid": np.zeros((size, self.max_v_l, video0.shape[1]), np.float32),
            "src_vid_mask": np.zeros((size, self.max_v_l), np.float32),
        }
        if audio0 is not None:
            batch["src_aud"] = np.zeros((size, self.max_v_l, audio0.shape[1]), np.float32)
        for i, (text, video, audio) in enumerate(chunk):
            batch["src_txt"][i, : len(text)] = text
            batch["src_txt_mask"][i, : len(text)] = 1.0
            batch["src_vid"][i, : len(video)] = video
            batch["src_vid_mask"][i, : len(video)] = 1.0
            if audio is not None:
                batch["src_aud"][i, : len(audio)] = audio
        # Padding rows repeat the first row: no all-masked row, and no padding pattern of
        # their own for the official T2V mask quirk to mix into the real rows.
        for k in batch:
            batch[k][len(chunk) :] = batch[k][0]
        # Official mode computes what the official code computes for a loader batch of
        # exactly these rows: padded to their longest video / query, the T2V mask quirk
        # wrapping around len(chunk) rows (the padding rows above do not count).
        batch["official_vid_len"] = np.full(size, max(len(v) for _, v, _ in chunk), np.int32)
        batch["official_txt_len"] = np.full(size, max(len(t) for t, _, _ in chunk), np.int32)
        batch["official_batch_size"] = np.full(size, len(chunk), np.int32)
        return batch

    def _postprocess(self) -> dict[str, Any]:
        from trdetr_jax import inference

        return inference.postprocess_kwargs(self.config)

    def _rows(self, out: dict[str, np.ndarray], duration: float, kwargs) -> list[dict]:
        """Moments and saliency of each window of ``out``, by the evaluation's
        post-processing."""
        from trdetr_jax import evaluation

        windows = bool(self.config.loss.use_matcher)
        n = len(out["saliency_scores"])
        rows = evaluation.predictions_to_rows(
            out["pred_logits"] if windows else None,
            out["pred_spans"] if windows else None,
            out["saliency_scores"],
            out["video_mask"],
            [{"qid": None, "vid": None, "duration": duration}] * n,
            **kwargs,
        )
        return [_public(r) for r in rows]

    def _merge(self, out, starts: list[int], ctx_l: int, duration: float) -> dict[str, list]:
        """Window rows -> one video's rows (see the module docstring)."""
        from trdetr_jax.evaluation.nms import temporal_nms
        from trdetr_jax.evaluation.postprocess import snap_windows

        length = self.max_v_l * self.clip_length
        kwargs = dict(self._postprocess(), mode="dataset", nms_thd=None)
        per_window = self._rows(out, length, kwargs)
        sal_sum = np.zeros(ctx_l, np.float64)
        count = np.zeros(ctx_l, np.int64)
        moments = []
        for a, row in zip(starts, per_window):
            sal = np.asarray(row["pred_saliency_scores"], np.float64)
            sal_sum[a : a + len(sal)] += sal
            count[a : a + len(sal)] += 1
            offset = a * self.clip_length
            moments += [[st + offset, ed + offset, s] for st, ed, s in row["pred_relevant_windows"]]
        # Clip time -> [0, duration]: the same mapping as one window's spans (fractions of
        # the clips given, times ``duration``), then the dataset's snapping, then NMS.
        scale = float(duration) / (ctx_l * self.clip_length)
        moments = [[st * scale, ed * scale, s] for st, ed, s in moments]
        moments = snap_windows(
            moments, self.clip_length, float(duration), np.dtype(np.float64), clamp_after=True
        )
        moments.sort(key=lambda w: w[2], reverse=True)
        if moments:
            moments = temporal_nms(moments, self.merge_nms_thd, self.max_moments)
        return {
            "pred_relevant_windows": moments,
            "pred_saliency_scores": (sal_sum / count).tolist(),
        }


def _public(row: dict) -> dict[str, list]:
    return {
        "pred_relevant_windows": row.get("pred_relevant_windows", []),
        "pred_saliency_scores": row["pred_saliency_scores"],
    }


def _is_array(x) -> bool:
    """A NumPy or JAX array (anything with a shape), not a list of them."""
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _nested_rows(x) -> bool:
    """A list of rows of numbers (one ``[N, D]`` array as nested lists), not a list of
    arrays."""
    return isinstance(x, (list, tuple)) and bool(x) and np.ndim(x[0]) == 1


def _split_queries(query_features) -> tuple[bool, list]:
    """``(single, queries)``: one ``[N, D]`` query (an array or nested lists) or several (a
    list of them, or a ``[Q, N, D]`` array)."""
    if _is_array(query_features):
        nd = len(query_features.shape)
        if nd == 2:
            return True, [query_features]
        if nd == 3:
            return False, list(query_features)
        raise DataError(
            f"query_features: shape {tuple(query_features.shape)}, expected [tokens, dim] "
            "(one query) or [queries, tokens, dim]"
        )
    if not isinstance(query_features, (list, tuple)):
        raise DataError(
            f"query_features: expected an array [tokens, dim] or a list of them, found "
            f"{type(query_features).__name__}"
        )
    if not query_features:
        raise DataError("query_features: expected at least one query, found none")
    if _nested_rows(query_features):  # one query as nested lists
        return True, [query_features]
    return False, list(query_features)


def _is_real(x, kinds=(int, float, np.integer, np.floating)) -> bool:
    """A Python or NumPy number of ``kinds``, not a bool."""
    return isinstance(x, kinds) and not isinstance(x, (bool, np.bool_))


def _check_duration(duration) -> float | None:
    if duration is None:
        return None
    if not _is_real(duration) or not np.isfinite(duration) or duration <= 0:
        raise DataError(
            f"duration: expected the video's length in seconds (a positive number), found "
            f"{duration!r}"
        )
    return float(duration)


def _int_in(value, name: str, lo: int, hi: int | None, what: str) -> int:
    if not _is_real(value, (int, np.integer)) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: expected an integer {bound} ({what}), found {value!r}")
    return int(value)


def _float_in(value, name: str, lo: float, hi: float) -> float:
    if not _is_real(value) or not lo <= value <= hi:
        raise ValueError(f"{name}: expected a number in [{lo}, {hi}], found {value!r}")
    return float(value)
