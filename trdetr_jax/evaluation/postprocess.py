"""From model outputs to submission rows (one dict per query, the format the evaluation reads).

The official inference does, per query (shared/reference/README.md, surprise 26):

1. score = softmax(pred_logits)[..., 0] (class 0 is foreground); window =
   (c - w/2, c + w/2) * duration, in the model's float dtype;
2. windows sorted by descending score (stable), every number rounded to 4 decimals;
3. saliency: the valid clips' scores converted to float16 (QVHighlights path; the TVSum path
   keeps float32);
4. windows clamped to [0, 150] s and rounded to multiples of 2 s (half to even) in the
   model's float dtype, the score rounded to 4 decimals again; these two constants are
   hard-coded, whatever the dataset.

``mode="official"`` reproduces exactly that (for parity with published numbers).
``mode="dataset"`` uses the dataset's own geometry instead: windows clamped to
[0, duration] and rounded to multiples of `clip_length` (then clamped again, so an end is
never past the video), and saliency kept at float32 precision. Optional temporal NMS runs
last, as in the official inference.
"""

from __future__ import annotations

import numpy as np

from trdetr_jax.evaluation.nms import temporal_nms

MODES = ("official", "dataset")
OFFICIAL_CLIP_SECONDS = 2
OFFICIAL_MAX_SECONDS = 150


def _round4(x) -> float:
    return float(f"{x:.4f}")


def foreground_prob(pred_logits: np.ndarray) -> np.ndarray:
    """softmax over the 2 classes, class 0: [B, nq, 2] -> [B, nq] in the logits' dtype.

    exp(x - max), then times 1 / sum, each step rounded to the logits' dtype (the order of
    the reference softmax kernel); exp itself is evaluated in binary64 and rounded once.
    """
    dtype = pred_logits.dtype
    shifted = pred_logits - pred_logits.max(-1, keepdims=True)  # [B, nq, 2]
    e = np.exp(shifted.astype(np.float64)).astype(dtype)
    inv = (dtype.type(1) / (e[..., 0] + e[..., 1])).astype(dtype)  # [B, nq]
    return (e[..., 0] * inv).astype(dtype)


def ranked_windows(spans: np.ndarray, scores: np.ndarray, duration) -> list:
    """Steps 1-2 for one query: [[st, ed, score], ...] in seconds, best score first.

    spans: [nq, 2] normalised (c, w); scores: [nq] foreground probabilities; both in the
    model's float dtype, which the arithmetic keeps (as the reference does).
    """
    dtype = spans.dtype
    half = dtype.type(0.5) * spans[:, 1]  # [nq]
    xx = np.stack([spans[:, 0] - half, spans[:, 0] + half], axis=-1)  # [nq, 2]
    xx = (xx * dtype.type(duration)).astype(dtype)
    rows = [[float(st), float(ed), float(s)] for (st, ed), s in zip(xx, scores)]
    rows.sort(key=lambda w: w[2], reverse=True)  # stable: ties keep query order
    return [[_round4(x) for x in w] for w in rows]


def snap_windows(windows: list, clip_length, max_seconds, dtype, *, clamp_after=False) -> list:
    """Step 4: clamp (st, ed) to [0, max_seconds] and round to multiples of clip_length
    (half to even), computed in `dtype`; the score is rounded to 4 decimals again.
    clamp_after: clamp to max_seconds once more after rounding."""
    if not windows:
        return []
    xx = np.array([w[:2] for w in windows], dtype=dtype)  # [nq, 2]
    xx = np.clip(xx, dtype.type(0), dtype.type(max_seconds))
    step = dtype.type(clip_length)
    xx = (np.round(xx / step) * step).astype(dtype)
    if clamp_after:
        xx = np.minimum(xx, dtype.type(max_seconds))
    return [[st, ed, _round4(float(dtype.type(w[2])))] for (st, ed), w in zip(xx.tolist(), windows)]


def predictions_to_rows(
    pred_logits: np.ndarray | None,
    pred_spans: np.ndarray | None,
    saliency_scores: np.ndarray | None,
    video_mask: np.ndarray | None,
    metas,
    *,
    mode: str = "official",
    clip_length: float | None = None,
    nms_thd: float | None = None,
    max_before_nms: int = 10,
    max_after_nms: int = 10,
    dataset: str | None = None,
    snap: bool = True,
) -> list[dict]:
    """Submission rows ``{qid, query, vid, pred_relevant_windows, pred_saliency_scores}``.

    pred_logits [B, nq, 2] (index 0 = foreground), pred_spans [B, nq, 2] normalised (c, w),
    saliency_scores [B, Lv], video_mask [B, Lv] (1 = valid clip): NumPy arrays, e.g.
    ``jax.device_get`` of the model outputs. Pass None for pred_logits/pred_spans to write
    saliency only, or None for saliency_scores to write windows only.
    metas: one dict per real example with qid, query, vid, duration (seconds); batch rows
    past ``len(metas)`` are padding and are skipped.
    mode: 'official' (2 s / 150 s, float16 saliency; `clip_length` is ignored) or 'dataset'
    (`clip_length` seconds, clamped to each video's duration, float32 saliency).
    nms_thd: temporal NMS threshold; None or negative (the official -1) means no NMS. NMS
    keeps at most `max_after_nms` of the first `max_before_nms` windows.
    dataset: 'tvsum' keeps float32 saliency in both modes (the official TVSum evaluation
    reads the model's float32 scores directly); None detects TVSum from the metas (TVSum
    annotation rows carry a 'label' matrix).
    snap: False stops before step 4 and NMS (the rows as the official inference has them
    before its post-processor), for inspection and tests.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "official":
        clip_length, hi = OFFICIAL_CLIP_SECONDS, OFFICIAL_MAX_SECONDS
    elif clip_length is None or clip_length <= 0:
        raise ValueError("mode='dataset' needs the dataset's clip_length in seconds")
    with_windows = pred_logits is not None and pred_spans is not None
    if not with_windows and saliency_scores is None:
        raise ValueError("nothing to write: give pred_logits and pred_spans, or saliency_scores")
    batch = len(pred_spans) if with_windows else len(saliency_scores)
    if len(metas) > batch:
        raise ValueError(f"{len(metas)} metas for a batch of {batch} examples")

    if with_windows:
        spans = np.asarray(pred_spans)
        dtype = spans.dtype if spans.dtype.kind == "f" else np.dtype(np.float32)
        spans = spans.astype(dtype, copy=False)
        scores = foreground_prob(np.asarray(pred_logits, dtype=dtype))  # [B, nq]
    if dataset is None and metas and metas[0].get("label") is not None:
        dataset = "tvsum"
    if saliency_scores is not None:
        if video_mask is None:
            raise ValueError("saliency_scores need video_mask to know each video's clips")
        valid = np.asarray(video_mask).sum(1).astype(int)  # [B]
        sal = np.asarray(saliency_scores).astype(np.float32)  # [B, Lv]
        if mode == "official" and dataset != "tvsum":
            sal = sal.astype(np.float16)  # a float tensor's .half(): via float32

    rows = []
    for b, meta in enumerate(metas):
        row = {"qid": meta["qid"], "query": meta.get("query"), "vid": meta.get("vid")}
        if with_windows:
            windows = ranked_windows(spans[b], scores[b], meta["duration"])
            if snap:
                if mode == "dataset":
                    hi = meta["duration"]
                windows = snap_windows(
                    windows, clip_length, hi, dtype, clamp_after=mode == "dataset"
                )
                if nms_thd is not None and nms_thd >= 0:
                    windows = temporal_nms(windows[:max_before_nms], nms_thd, max_after_nms)
            row["pred_relevant_windows"] = windows
        if saliency_scores is not None:
            row["pred_saliency_scores"] = sal[b, : valid[b]].tolist()
        rows.append(row)
    return rows
