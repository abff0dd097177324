"""The TR-DETR model: input projections -> VFR -> T2V -> encoder (+ HD2MR) -> anchor decoder
-> heads -> MR2HD saliency. See DESIGN.md section 1 for the stages and their paper equations.

Official padded lengths. The official collate pads every batch to its longest video and
query, and official mode depends on that padded length in these places (reference README
section 6), which here read ``official_vid_len`` / ``official_txt_len`` instead of the array
shape, so a batch padded physically further gives the same result:

* the pooled ``src_vid_cls_ed`` / ``src_txt_cls_ed`` (VTC inputs): mean over the first
  L_v / L_t rows, padding within them included (item 2);
* HD2MR: the softmax over the first L_v clips, padding within them included (item 9);
* MR2HD: the span is floored on L_v, the slice wraps a negative bound by L_v and clamps at
  L_v, and the GRU runs L_v steps (its state stays unchanged after them) (item 13);
* the losses: the CTC mean over ``B * L_v`` and the rank-contrastive softmax of the
  saliency loss over the first L_v clips (:mod:`trdetr_jax.losses`).

Padding-independent already (checked, each has a test): the sine position embedding
(cumsum of the mask over the valid count), the T2V mask quirk (a position beyond L is
padding for every sample: masked by the key-padding mask, and its query rows are free),
the VFR's masked softmaxes (exactly zero weight on padding), the encoder and decoder
attention (key-padding masks), the margin part of the saliency loss (clip indices).
Rows beyond the official lengths hold finite values that nothing reads.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trdetr_jax.model.decoder import AnchorDecoder
from trdetr_jax.model.encoder import Encoder
from trdetr_jax.model.hd2mr import hd2mr_weights, saliency_from_projection
from trdetr_jax.model.input_proj import InputProjection
from trdetr_jax.model.layers import MLP, Dtype, layer_norm, torch_dense
from trdetr_jax.model.mr2hd import MR2HD
from trdetr_jax.model.position import sine_position_embedding
from trdetr_jax.model.t2v import T2VEncoder
from trdetr_jax.model.vfr import VFR
from trdetr_jax.spans import refine_spans

COMPAT_MODES = ("official", "fixed")


def official_lengths(length: jax.Array | None, batch: int, physical: int, name: str) -> jax.Array:
    """``official_*_len [B]`` (the input ``name``) as int32, or ``physical`` for every row
    when None.

    A concrete length beyond the physical one (nothing to pad to) is an error.
    """
    if length is None:
        return jnp.full((batch,), physical, jnp.int32)
    if not isinstance(length, jax.core.Tracer):
        found = np.asarray(length)
        if found.shape != (batch,) or found.size and (found.max() > physical or found.min() < 0):
            raise ValueError(
                f"{name}: expected shape ({batch},) with values in [0, {physical}] "
                f"(the padded array length), found shape {found.shape}, values {found.tolist()}"
            )
    return jnp.asarray(length).astype(jnp.int32)


def mean_of_first(x: jax.Array, length: jax.Array) -> jax.Array:
    """Mean of the first ``length[b]`` rows, padding included: x [B, L, d] -> [B, d]."""
    within = jnp.arange(x.shape[1])[None, :] < length[:, None]  # [B, L]
    total = jnp.sum(jnp.where(within[:, :, None], x, jnp.zeros((), x.dtype)), axis=1)
    return total / jnp.maximum(length, 1)[:, None].astype(x.dtype)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over valid rows: x [B, L, d], mask [B, L] (1 = valid) -> [B, d]."""
    m = mask.astype(x.dtype)[:, :, None]
    return jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


class TextPositionEmbedding(nn.Module):
    """The official learned text position encoding: LayerNorm(x + E[pos]) -> Dropout.

    The official model builds it but never uses it (``use_txt_pos`` off): its params exist so
    that checkpoints port (and training leaves them untouched); when disabled the text
    position is zero and the length is not checked against ``max_len``.
    """

    max_len: int
    dropout_rate: float = 0.5
    enabled: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        table = self.param(
            "position_embeddings",
            nn.initializers.normal(1.0),
            (self.max_len, x.shape[-1]),
            self.param_dtype,
        )
        norm = layer_norm(name="norm", dtype=self.dtype, param_dtype=self.param_dtype)
        if not self.enabled:
            norm(table[:1])  # creates the LayerNorm params; the result is unused
            return jnp.zeros_like(x)
        if x.shape[1] > self.max_len:
            raise ValueError(f"text length {x.shape[1]} exceeds max_q_l {self.max_len}")
        y = norm(x + table[None, : x.shape[1]].astype(x.dtype))
        return nn.Dropout(self.dropout_rate)(y, deterministic=not train)


class TRDETR(nn.Module):
    """TR-DETR. Call with (src_txt, src_txt_mask, src_vid, src_vid_mask, src_aud=None, *,
    official_vid_len=None, official_txt_len=None, official_batch_size=None, train).

    Masks are float, 1 = valid. ``official_vid_len`` / ``official_txt_len`` [B] int32 (every
    row the same value): the lengths the official collate would pad the batch to (its
    longest video / query); None means the array's length. Official mode reads them wherever
    the official code depends on the padded length (see the module docstring);
    ``official_batch_size`` [B] int32 (the batch's real rows, which the T2V mask quirk wraps
    around; None: the array's B) likewise. Fixed mode ignores all three. ``compat``: 'official' reproduces the official code including
    its quirks; 'fixed' corrects them (see each module's docstring). Intermediates with the
    reference-fixture names are sown into the 'intermediates' collection when the caller asks
    for it (``mutable=['intermediates']``); see :func:`collect_intermediates`.
    """

    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 2
    dec_layers: int = 2
    dim_feedforward: int = 1024
    num_queries: int = 10
    n_input_proj: int = 2
    input_dropout: float = 0.5
    dropout: float = 0.1
    vfr_dropout: float = 0.1
    max_q_l: int = 32
    clip_length: float = 2.0
    aux_loss: bool = True
    use_vfr: bool = True
    use_hd2mr: bool = True
    use_mr2hd: bool = True
    use_txt_pos: bool = False
    compat: str = "official"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        src_txt,
        src_txt_mask,
        src_vid,
        src_vid_mask,
        src_aud=None,
        *,
        official_vid_len=None,
        official_txt_len=None,
        official_batch_size=None,
        train: bool = False,
    ) -> dict[str, Any]:
        if self.compat not in COMPAT_MODES:
            raise ValueError(f"compat must be one of {COMPAT_MODES}, got {self.compat!r}")
        official = self.compat == "official"
        src_txt, src_txt_mask, src_vid, src_vid_mask = map(
            jnp.asarray, (src_txt, src_txt_mask, src_vid, src_vid_mask)
        )
        d = self.hidden_dim
        n = src_vid.shape[0]
        vid_len = official_lengths(official_vid_len, n, src_vid.shape[1], "official_vid_len")  # [B]
        txt_len = official_lengths(official_txt_len, n, src_txt.shape[1], "official_txt_len")  # [B]
        # Clips within the official padded length: what the official softmaxes range over.
        within_vid = jnp.arange(src_vid.shape[1])[None, :] < vid_len[:, None]  # [B, Lv]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        # Heads feed softmaxes, costs and losses: at least float32 even with bf16 compute.
        head_dtype = None if self.dtype is None else jnp.promote_types(self.dtype, jnp.float32)
        head_kw = dict(dtype=head_dtype, param_dtype=self.param_dtype)
        tx = dict(
            nheads=self.nheads,
            dim_feedforward=self.dim_feedforward,
            dropout_rate=self.dropout,
            **kw,
        )
        sow = lambda name, value: self.sow("intermediates", name, value)  # noqa: E731

        # 1. Input projections (audio joins the video before its projection).
        if src_aud is not None:
            src_vid = jnp.concatenate([src_vid, src_aud.astype(src_vid.dtype)], axis=-1)
        proj = dict(features=d, num_layers=self.n_input_proj, dropout_rate=self.input_dropout, **kw)
        vid = InputProjection(name="input_vid_proj", **proj)(src_vid, train=train)  # [B, Lv, d]
        txt = InputProjection(name="input_txt_proj", **proj)(src_txt, train=train)  # [B, Lt, d]
        sow("inter_input_vid_proj", vid)
        sow("inter_input_txt_proj", txt)
        if official:  # mean over all official rows, padding included
            vid_cls, txt_cls = mean_of_first(vid, vid_len), mean_of_first(txt, txt_len)
        else:
            vid_cls, txt_cls = masked_mean(vid, src_vid_mask), masked_mean(txt, src_txt_mask)

        # 3. Visual feature refinement by co-attention with the text.
        if self.use_vfr:
            fused = VFR(self.vfr_dropout, name="vfr", **kw)(
                vid, txt, src_vid_mask, src_txt_mask, train=train
            )
        else:
            fused = vid
        sow("inter_fuser_out", fused)

        # Positions: sine for video (float32 island), zeros (or the unused learned table) for text.
        pos_vid = sine_position_embedding(src_vid_mask, d)  # [B, Lv, d] float32
        sow("inter_pos_vid", pos_vid)
        txt_pos = TextPositionEmbedding(
            self.max_q_l, self.input_dropout, self.use_txt_pos, name="txt_position_embed", **kw
        )(txt, train=train)  # [B, Lt, d], zeros unless use_txt_pos
        sow("inter_transformer_src", jnp.concatenate([fused, txt], axis=1))
        sow(
            "inter_transformer_pos",
            jnp.concatenate([pos_vid.astype(txt_pos.dtype), txt_pos], axis=1),
        )
        sow(
            "inter_transformer_key_padding_mask",
            jnp.concatenate([src_vid_mask, src_txt_mask], axis=1) <= 0,
        )

        # 4. Text-to-video cross-attention.
        t2v_vid, t2v_layers = T2VEncoder(
            self.enc_layers, compat=self.compat, name="t2v_encoder", **tx
        )(
            fused,
            txt,
            pos_vid,
            txt_pos,
            src_vid_mask,
            src_txt_mask,
            official_batch_size,
            train=train,
        )
        for i, out in enumerate(t2v_layers):
            sow(f"inter_t2v_layer{i}_out", jnp.concatenate([out, txt], axis=1))
        sow("inter_t2v_encoder_out", jnp.concatenate([t2v_vid, txt], axis=1))

        # 5-6. Encoder, then HD2MR re-weighting and the same encoder again.
        encoder = Encoder(self.enc_layers, name="encoder", **tx)
        saliency_proj = torch_dense(d, d, name="saliency_proj", **head_kw)
        memory, layers = encoder(t2v_vid, pos_vid, src_vid_mask, train=train)
        self._sow_encoder_call(1, t2v_vid, layers, memory)
        if self.use_hd2mr:
            sow("inter_hd2mr_saliency_proj_in", memory)
            scores = saliency_from_projection(saliency_proj(memory))  # [B, Lv]
            weight = hd2mr_weights(scores, within_vid if official else src_vid_mask)
            sow("inter_hd2mr_saliency_scores", scores)
            sow("inter_hd2mr_weight_softmax", weight)
            memory_in = memory + t2v_vid * weight[:, :, None].astype(t2v_vid.dtype)
            memory, layers = encoder(memory_in, pos_vid, src_vid_mask, train=train)
            self._sow_encoder_call(2, memory_in, layers, memory)
        sow("inter_memory", memory)

        # 7-8. Anchor decoder and heads.
        anchors = self.param(
            "query_embed", nn.initializers.normal(1.0), (self.num_queries, 2), self.param_dtype
        )
        hs, references = AnchorDecoder(
            self.dec_layers, self.nheads, self.dim_feedforward, self.dropout, name="decoder", **kw
        )(memory, src_vid_mask, pos_vid, anchors, train=train)
        sow("inter_dec_hs", hs)
        sow("inter_dec_references", references)
        outputs_class = torch_dense(2, d, name="class_embed", **head_kw)(hs)  # [n_dec, B, nq, 2]
        span_offsets = MLP(d, 2, 3, name="span_embed", **head_kw)(hs)  # [n_dec, B, nq, 2]
        sow("inter_outputs_class", outputs_class)
        sow("inter_span_embed_out", span_offsets)
        outputs_spans = refine_spans(span_offsets, references.astype(span_offsets.dtype))

        # 9. MR2HD saliency.
        if self.use_mr2hd:
            memory = MR2HD(self.clip_length, self.compat, name="mr2hd", **kw)(
                outputs_class[-1], outputs_spans[-1], memory, vid, src_vid_mask, vid_len
            )
            sow("inter_mr2hd_memory_modulated", memory)
        saliency = saliency_from_projection(saliency_proj(memory))  # [B, Lv]

        out = {
            "pred_logits": outputs_class[-1],
            "pred_spans": outputs_spans[-1],
            "saliency_scores": saliency,
            "video_mask": src_vid_mask,
            "src_txt_ed": txt,
            "src_vid_ed": vid,
            "src_txt_cls_ed": txt_cls,
            "src_vid_cls_ed": vid_cls,
        }
        if head_dtype is not None:  # the alignment losses read these: at least float32
            for k in ("src_txt_ed", "src_vid_ed", "src_txt_cls_ed", "src_vid_cls_ed"):
                out[k] = out[k].astype(head_dtype)
        if self.aux_loss:
            out["aux_outputs"] = tuple(
                {"pred_logits": outputs_class[i], "pred_spans": outputs_spans[i]}
                for i in range(self.dec_layers - 1)
            )
        return out

    def _sow_encoder_call(self, call: int, x_in, layer_outs, x_out) -> None:
        self.sow("intermediates", f"inter_encoder_call{call}_in", x_in)
        for i, out in enumerate(layer_outs):
            self.sow("intermediates", f"inter_encoder_call{call}_layer{i}_out", out)
        self.sow("intermediates", f"inter_encoder_call{call}_out", x_out)
