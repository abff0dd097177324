"""TR-DETR training losses, as the official implementation computes them.

All functions are pure ``jnp`` and take precomputed matches (see :mod:`trdetr_jax.matcher`),
so they can be tested with hand-made matches. Conventions: masks are float, 1 = valid;
``W`` = target-window capacity, ``P`` = saliency pairs per example.

Terms (official weights in :class:`LossConfig`):
  * ``loss_span``: L1 between matched (center, width) pairs, mean over pairs and both coords;
  * ``loss_giou``: mean ``1 - GIoU`` of matched pairs (float32, as the official code);
  * ``loss_label``: sigmoid focal loss (alpha 0.25, gamma 2) on *both* logit channels with
    one-hot targets (foreground = index 0), mean over ``B * 2 * nq`` (float32);
  * ``class_error``: ``100 - top-1 accuracy`` of the matched queries (logged, not weighted);
  * ``loss_saliency`` (last layer only): margin loss on the sampled pairs of *unmasked*
    scores + rank-contrastive loss over 11 thresholds divided by 12;
  * ``*_{i}`` for each auxiliary decoder layer ``i`` (span, giou, label, class_error);
  * ``VTC_loss``: symmetric InfoNCE between pooled video and text (global alignment);
  * ``CTC_loss``: per-clip BCE of video-clip / pooled-text similarity against the relevant
    clips (local alignment), mean over ``B * L_v`` *including* padding (float32 result).

Optional ``batch['example_mask'] [B]`` (0 = padding example filling a fixed-size batch)
turns every per-example mean into a mean over real examples and removes padding examples
from the VTC negatives. Without it the formulas are the official ones, op for op.

Optional ``batch['official_vid_len'] [B]`` (the length the official collate pads the batch
to; default the array's length): clips beyond it are not there in the official code, so the
CTC mean is over ``B * official_vid_len`` and the rank-contrastive softmax of the saliency
loss stops there. Padding within it counts as in the official code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from trdetr_jax.matcher import SOLVERS
from trdetr_jax.precision import at_least_f32
from trdetr_jax.spans import clamp, generalized_temporal_iou, span_cxw_to_xx

Match = tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]  # (pred_idx, tgt_idx, valid), [B, W] each


def check_matcher_solver(value) -> str:
    """``config.train.matcher`` if valid, else a one-line ValueError naming the field."""
    if value not in SOLVERS:
        raise ValueError(
            f"config.train.matcher: expected one of {', '.join(SOLVERS)}, found {value!r}"
        )
    return value


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Loss and matching weights (hashable, so it can be a static jit argument)."""

    # Hungarian matching cost weights.
    set_cost_span: float = 10.0
    set_cost_giou: float = 1.0
    set_cost_class: float = 4.0
    # Weights of the criterion terms (aux layers use the same ones).
    span_loss_coef: float = 10.0
    giou_loss_coef: float = 1.0
    label_loss_coef: float = 4.0
    lw_saliency: float = 1.0
    saliency_margin: float = 0.2
    # Alignment (LGAM) losses: coefficients and temperature; use_lgam False drops them
    # from the total (they are still reported).
    vtc_loss_coef: float = 0.3
    ctc_loss_coef: float = 0.5
    temperature: float = 0.07
    use_lgam: bool = True
    # False (TVSum): no matching, the criterion is the saliency loss only.
    use_matcher: bool = True
    # Losses on the auxiliary decoder layers.
    aux_loss: bool = True
    # Who solves the assignment: 'scipy' (host) or 'device' (see trdetr_jax.matcher).
    matcher_solver: str = "scipy"

    @classmethod
    def from_config(cls, config) -> LossConfig:
        """From the full ml_collections config (``config.loss``, ``config.model`` and
        ``config.train.matcher``)."""
        loss = config.loss
        return cls(
            set_cost_span=float(loss.set_cost_span),
            set_cost_giou=float(loss.set_cost_giou),
            set_cost_class=float(loss.set_cost_class),
            span_loss_coef=float(loss.span_loss_coef),
            giou_loss_coef=float(loss.giou_loss_coef),
            label_loss_coef=float(loss.label_loss_coef),
            lw_saliency=float(loss.lw_saliency),
            saliency_margin=float(loss.saliency_margin),
            vtc_loss_coef=float(loss.vtc_loss_coef),
            ctc_loss_coef=float(loss.ctc_loss_coef),
            temperature=float(loss.temperature),
            use_lgam=bool(config.model.use_lgam),
            use_matcher=bool(loss.use_matcher),
            aux_loss=bool(config.model.aux_loss),
            matcher_solver=check_matcher_solver(config.train.matcher),
        )

    def weight_dict(self, num_aux: int) -> dict[str, float]:
        """The official weight dict (aux entries included even without matching)."""
        base = {
            "loss_span": self.span_loss_coef,
            "loss_giou": self.giou_loss_coef,
            "loss_label": self.label_loss_coef,
            "loss_saliency": self.lw_saliency,
        }
        weights = dict(base)
        for i in range(num_aux):
            weights.update({f"{k}_{i}": v for k, v in base.items() if k != "loss_saliency"})
        return weights

    def loss_order(self, num_aux: int) -> list[str]:
        """Keys of the criterion's loss dict in the official (summation) order."""
        if not self.use_matcher:
            return ["loss_saliency"]
        layer = ["loss_span", "loss_giou", "loss_label", "class_error"]
        order = [*layer, "loss_saliency"]
        if self.aux_loss:
            for i in range(num_aux):
                order += [f"{k}_{i}" for k in layer]
        return order


# --------------------------------------------------------------------------- helpers


def _weights(batch: Mapping[str, jnp.ndarray]) -> jnp.ndarray | None:
    """``example_mask [B]`` if the batch carries one, else None (official means)."""
    return batch.get("example_mask")


def pairwise_sum(x: jnp.ndarray) -> jnp.ndarray:
    """Sum of ``x [B, ...]``: pairwise (tree) summation within each example, then over B.

    torch sums float32 tensors with a cascade that keeps the error near one ulp; a plain
    reduction over a few hundred float32 terms can be several ulps off. Summing neighbours
    (0+1, 2+3, ..., then pairs of those) keeps the float32 loss terms within ~1 ulp of the
    official values, and trailing zeros (clips beyond the official padded length) leave the
    result bit-identical. The batch axis is left whole until the last step, so a
    batch-sharded ``x`` is not resharded.
    """
    x = x.reshape(x.shape[0], -1)  # [B, N]
    n = x.shape[1]
    size = 1
    while size < n:
        size *= 2
    x = jnp.pad(x, ((0, 0), (0, size - n)))
    while x.shape[1] > 1:
        x = x[:, 0::2] + x[:, 1::2]
    return jnp.sum(x[:, 0])


def _mean_over_examples(
    x: jnp.ndarray, w: jnp.ndarray | None, length: jnp.ndarray | None = None
) -> jnp.ndarray:
    """Mean over all entries of ``x [B, ...]``; with ``w [B]`` only real examples count.

    ``length [B]``: only the first ``length[b]`` entries of axis 1 exist (``x [B, L]``).
    """
    if length is not None:
        within = jnp.arange(x.shape[1])[None, :] < length[:, None]  # [B, L]
        x = jnp.where(within, x, jnp.zeros((), x.dtype))
        ones = jnp.ones(x.shape[0], x.dtype) if w is None else w.astype(x.dtype)
        count = jnp.sum(ones * length.astype(x.dtype))
        return pairwise_sum(x * ones[:, None]) / jnp.maximum(count, 1.0)
    if w is None:
        return pairwise_sum(x) / x.size
    w = w.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    per_example = x[0].size
    return pairwise_sum(x * w) / (jnp.maximum(jnp.sum(w), 1.0) * per_example)


def _normalize(x: jnp.ndarray, axis: int) -> jnp.ndarray:
    """``F.normalize``: ``x / max(||x||_2, 1e-12)``."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
    return x / clamp(norm, 1e-12)


def bce_with_logits(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Elementwise ``(1 - t) x - log(sigmoid(x))`` (torch's formula), in the dtype of ``x``."""
    return (1.0 - targets) * logits - jax.nn.log_sigmoid(logits)


def _gather_rows(x: jnp.ndarray, idx: jnp.ndarray) -> jnp.ndarray:
    """``x [B, N, C]``, ``idx [B, K]`` -> ``[B, K, C]``."""
    return jnp.take_along_axis(x, idx[..., None].astype(jnp.int32), axis=1)


def _n_pairs(valid: jnp.ndarray) -> jnp.ndarray:
    # Official: mean over an empty set is NaN; guard so a batch without windows trains.
    return jnp.maximum(jnp.sum(valid), 1.0)


# ---------------------------------------------------------------------- span terms


def loss_spans(
    pred_spans: jnp.ndarray, span_labels: jnp.ndarray, match: Match
) -> dict[str, jnp.ndarray]:
    """``loss_span`` (L1) and ``loss_giou`` over the matched pairs.

    Args:
      pred_spans: ``[B, nq, 2]`` (center, width); span_labels ``[B, W, 2]``.
      match: ``(pred_idx, tgt_idx, valid)``, ``[B, W]`` each.
    """
    pred_idx, tgt_idx, valid = match
    src = _gather_rows(pred_spans, pred_idx)  # [B, W, 2]
    tgt = _gather_rows(span_labels, tgt_idx)  # [B, W, 2]
    v = valid.astype(src.dtype)  # [B, W]
    n = _n_pairs(v)
    loss_span = jnp.sum(jnp.abs(src - tgt) * v[..., None]) / (2.0 * n)

    # Padding pairs may point at degenerate (0, 0) targets: replace them before the GIoU so
    # neither the value nor its gradient sees a 0/0.
    ok = valid[..., None] > 0
    dummy = jnp.asarray([0.5, 1.0], src.dtype)
    src_xx = span_cxw_to_xx(jnp.where(ok, src, dummy))[..., None, :]  # [B, W, 1, 2]
    tgt_xx = span_cxw_to_xx(jnp.where(ok, tgt, dummy))[..., None, :]  # [B, W, 1, 2]
    giou = generalized_temporal_iou(src_xx, tgt_xx)[..., 0, 0]  # [B, W] float32
    v32 = valid.astype(giou.dtype)
    loss_giou = jnp.sum((1.0 - giou) * v32) / _n_pairs(v32)
    return {"loss_span": loss_span, "loss_giou": loss_giou}


def sigmoid_focal_loss(
    logits: jnp.ndarray, targets: jnp.ndarray, *, alpha: float = 0.25, gamma: float = 2.0
) -> jnp.ndarray:
    """Elementwise sigmoid focal loss (RetinaNet; torchvision's order of operations)."""
    p = jax.nn.sigmoid(logits)
    ce = bce_with_logits(logits, targets)
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    loss = ce * ((1.0 - p_t) ** gamma)
    alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets)
    return alpha_t * loss


def loss_labels(
    pred_logits: jnp.ndarray, match: Match, example_mask: jnp.ndarray | None = None
) -> dict[str, jnp.ndarray]:
    """``loss_label`` (focal, both channels) and ``class_error``, in float32.

    Args:
      pred_logits: ``[B, nq, 2]``, foreground at index 0.
    """
    pred_idx, _, valid = match
    logits = pred_logits.astype(jnp.float32)  # the official code casts here
    nq = logits.shape[1]
    # [B, nq]: 1 where the query is matched (foreground target)
    hit = (pred_idx[..., None] == jnp.arange(nq)) & (valid[..., None] > 0)  # [B, W, nq]
    fg = jnp.any(hit, axis=1).astype(jnp.float32)  # [B, nq]
    targets = jnp.stack([fg, 1.0 - fg], axis=-1)  # [B, nq, 2] one-hot (fg = [1, 0])
    focal = sigmoid_focal_loss(logits, targets)  # [B, nq, 2]
    loss_label = _mean_over_examples(focal, example_mask)

    matched = _gather_rows(logits, pred_idx)  # [B, W, 2]
    correct = (matched[..., 0] >= matched[..., 1]).astype(jnp.float32)  # top-1 == fg
    v = valid.astype(jnp.float32)
    accuracy = jnp.sum(correct * v) * (100.0 / _n_pairs(v))
    class_error = jax.lax.stop_gradient(100.0 - accuracy)
    return {"loss_label": loss_label, "class_error": class_error}


# ------------------------------------------------------------------------ saliency


def loss_saliency(
    saliency_scores: jnp.ndarray,
    video_mask: jnp.ndarray,
    saliency_pos_labels: jnp.ndarray,
    saliency_neg_labels: jnp.ndarray,
    saliency_all_labels: jnp.ndarray,
    *,
    margin: float = 0.2,
    example_mask: jnp.ndarray | None = None,
    padded_len: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Margin loss on sampled pairs + rank-contrastive loss (11 thresholds, / 12).

    Args:
      saliency_scores: ``[B, L]`` raw scores (padding positions hold values).
      video_mask: ``[B, L]`` float, 1 = valid clip.
      saliency_pos_labels, saliency_neg_labels: ``[B, P]`` int clip indices.
      saliency_all_labels: ``[B, L]`` per-clip saliency (QVH 0..12).
      padded_len: ``[B]`` official padded length: the rank-contrastive softmax runs over
        the first ``padded_len`` clips (None: all ``L``).
    """
    dtype = saliency_scores.dtype
    mask = video_mask.astype(dtype)
    labels = saliency_all_labels
    tau = 0.5

    # Rank-contrastive part: for each threshold r, clips with label >= r are positives of a
    # masked softmax over the clips (padding pushed to -1e3).
    scores = mask * saliency_scores + (1.0 - mask) * -1e3  # [B, L]
    if padded_len is None:
        within = jnp.ones(scores.shape, bool)
    else:
        within = jnp.arange(scores.shape[1])[None, :] < padded_len[:, None]  # [B, L]
    drop = (labels <= 100).astype(dtype)  # always 1 (labels <= 12): kept for fidelity
    total = 0.0
    for r in range(1, 12):
        pos = (labels >= r).astype(dtype)  # [B, L]
        any_pos = jnp.sum(pos) > 0  # thresholds with no positive in the batch are skipped
        row_has_pos = (jnp.sum(pos, axis=1) > 0).astype(dtype)  # [B]
        cur = scores * drop / tau + (1.0 - drop) * -1e3
        row_max = jnp.max(jnp.where(within, cur, -jnp.inf), axis=1, keepdims=True)
        logits = jnp.where(within, cur - row_max, jnp.zeros((), dtype))
        exp = jnp.where(within, jnp.exp(logits), jnp.zeros((), dtype))
        log_prob = logits - jnp.log(jnp.sum(exp, axis=1, keepdims=True) + 1e-6)
        mean_log_prob_pos = jnp.sum(pos * log_prob * mask, axis=1) / (jnp.sum(pos, axis=1) + 1e-6)
        loss_r = _mean_over_examples(-mean_log_prob_pos * row_has_pos, example_mask)
        total = total + jnp.where(any_pos, loss_r, jnp.zeros_like(loss_r))
    rank_contrastive = total / 12  # the official code divides by 12 for 11 thresholds

    # Margin part on the unmasked scores.
    pos_scores = jnp.take_along_axis(saliency_scores, saliency_pos_labels.astype(jnp.int32), 1)
    neg_scores = jnp.take_along_axis(saliency_scores, saliency_neg_labels.astype(jnp.int32), 1)
    hinge = clamp(margin + neg_scores - pos_scores, 0.0)  # [B, P]
    num_pairs = saliency_pos_labels.shape[1]
    if example_mask is None:
        margin_loss = jnp.sum(hinge) / (hinge.shape[0] * num_pairs) * 2
    else:
        w = example_mask.astype(dtype)[:, None]
        margin_loss = jnp.sum(hinge * w) / (jnp.maximum(jnp.sum(w), 1.0) * num_pairs) * 2
    return margin_loss + rank_contrastive


# ------------------------------------------------------------------- alignment (LGAM)


def vtc_loss(
    txt_cls: jnp.ndarray,
    vid_cls: jnp.ndarray,
    *,
    temperature: float = 0.07,
    example_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Global video-text contrastive loss: symmetric InfoNCE over the batch.

    Args:
      txt_cls, vid_cls: ``[B, d]`` pooled text / video projections.
    """
    t = _normalize(txt_cls, axis=1)
    v = _normalize(vid_cls, axis=1)
    logits = (t @ v.T) / temperature  # [B, B], rows = text, columns = video
    diag = jnp.diagonal(logits)  # [B]
    if example_mask is None:
        loss_t2v = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
        loss_v2t = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
        return (loss_t2v + loss_v2t) / 2
    real = example_mask > 0  # [B]
    # padding examples are neither anchors nor negatives
    masked = jnp.where(real[None, :] & real[:, None], logits, -1e9)
    w = example_mask.astype(logits.dtype)
    n = jnp.maximum(jnp.sum(w), 1.0)
    loss_t2v = jnp.sum((jax.nn.logsumexp(masked, axis=1) - diag) * w) / n
    loss_v2t = jnp.sum((jax.nn.logsumexp(masked, axis=0) - diag) * w) / n
    return (loss_t2v + loss_v2t) / 2


def ctc_loss(
    vid_feat: jnp.ndarray,
    txt_feat: jnp.ndarray,
    pos_mask: jnp.ndarray,
    vid_mask: jnp.ndarray,
    txt_mask: jnp.ndarray,
    *,
    temperature: float = 0.07,
    example_mask: jnp.ndarray | None = None,
    padded_len: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Local clip-text contrastive loss; returns float32 like the official code.

    ``sim[b, t] = <normalize(vid[b, t]), masked_mean(normalize(txt[b]))> * vid_mask / tau``,
    BCE-with-logits against ``pos_mask``, mean over all ``B * L_v`` entries (padding clips
    have logit 0 and contribute ``log 2`` each).

    Args:
      vid_feat: ``[B, L_v, d]``; txt_feat ``[B, L_t, d]``; pos_mask, vid_mask ``[B, L_v]``;
      txt_mask ``[B, L_t]``; padded_len ``[B]``: the official padded length, over which
      the mean runs (None: all ``L_v``).
    """
    v = _normalize(vid_feat, axis=2)  # [B, L_v, d]
    t = _normalize(txt_feat, axis=2) * txt_mask[..., None]  # [B, L_t, d]
    t_global = jnp.sum(t, axis=1) / jnp.sum(txt_mask[..., None], axis=1)  # [B, d]
    sim = jnp.einsum("bld,bd->bl", v, t_global) * vid_mask  # [B, L_v]
    logits = sim / temperature
    target = pos_mask.astype(jnp.float32)
    if logits.dtype == jnp.float32:
        bce = bce_with_logits(logits, target)
    else:
        # float64 logits against a float32 target: torch evaluates each in-place step in
        # the wide type and stores it in the float32 result tensor.
        first = ((1.0 - target.astype(logits.dtype)) * logits).astype(jnp.float32)
        bce = (first.astype(logits.dtype) - jax.nn.log_sigmoid(logits)).astype(jnp.float32)
    return _mean_over_examples(bce, example_mask, padded_len)


# -------------------------------------------------------------------------- total


def compute_losses(
    outputs: Mapping,
    batch: Mapping[str, jnp.ndarray],
    matches: Mapping[str, Match] | None,
    cfg: LossConfig = LossConfig(),
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """All loss terms and the weighted total, as the official training step.

    Args:
      outputs: model outputs: ``pred_logits``, ``pred_spans``, ``saliency_scores``,
        ``video_mask``, ``src_txt_ed``, ``src_vid_ed``, ``src_txt_cls_ed``,
        ``src_vid_cls_ed`` and ``aux_outputs`` (tuple of ``{pred_logits, pred_spans}``).
      batch: ``span_labels [B, W, 2]``, ``saliency_{pos,neg}_labels [B, P]``,
        ``saliency_all_labels [B, L_v]``, ``src_pos_mask [B, L_v]``, ``src_vid_mask``,
        ``src_txt_mask``; optional ``example_mask [B]`` and ``official_vid_len [B]``.
      matches: ``{'final': match, 'aux_0': match, ...}``; ignored (may be None) when
        ``cfg.use_matcher`` is False.

    Returns:
      ``(total_loss, loss_dict)``: the criterion terms (official names, incl.
      ``class_error*``), ``VTC_loss`` and ``CTC_loss``. The total is the Python sum of
      ``weight * term`` in the official order, then ``+ vtc_coef * VTC + ctc_coef * CTC``.
    """
    example_mask = _weights(batch)
    padded_len = batch.get("official_vid_len")
    # Losses are computed in float32 (or float64 under x64) even for bfloat16 compute.
    outputs = jax.tree.map(at_least_f32, dict(outputs))
    aux_outputs = tuple(outputs.get("aux_outputs", ())) if cfg.aux_loss else ()
    terms: dict[str, jnp.ndarray] = {}
    layers = [("", outputs, "final")]
    layers += [(f"_{i}", aux, f"aux_{i}") for i, aux in enumerate(aux_outputs)]
    for suffix, out, name in layers:
        if cfg.use_matcher:
            terms.update(
                {
                    k + suffix: v
                    for k, v in loss_spans(
                        out["pred_spans"], batch["span_labels"], matches[name]
                    ).items()
                }
            )
            terms.update(
                {
                    k + suffix: v
                    for k, v in loss_labels(out["pred_logits"], matches[name], example_mask).items()
                }
            )
        if not suffix:
            terms["loss_saliency"] = loss_saliency(
                outputs["saliency_scores"],
                outputs["video_mask"],
                batch["saliency_pos_labels"],
                batch["saliency_neg_labels"],
                batch["saliency_all_labels"],
                margin=cfg.saliency_margin,
                example_mask=example_mask,
                padded_len=padded_len,
            )

    order = cfg.loss_order(len(aux_outputs))
    weights = cfg.weight_dict(len(aux_outputs))
    loss_dict = {k: terms[k] for k in order}
    total = 0
    for k in order:
        if k in weights:
            total = total + loss_dict[k] * weights[k]

    vtc = vtc_loss(
        outputs["src_txt_cls_ed"],
        outputs["src_vid_cls_ed"],
        temperature=cfg.temperature,
        example_mask=example_mask,
    )
    ctc = ctc_loss(
        outputs["src_vid_ed"],
        outputs["src_txt_ed"],
        batch["src_pos_mask"],
        batch["src_vid_mask"],
        batch["src_txt_mask"],
        temperature=cfg.temperature,
        example_mask=example_mask,
        padded_len=padded_len,
    )
    loss_dict["VTC_loss"] = vtc
    loss_dict["CTC_loss"] = ctc
    if cfg.use_lgam:
        total = total + cfg.vtc_loss_coef * vtc + cfg.ctc_loss_coef * ctc
    return total, loss_dict
