"""Moment-to-highlight refinement (MR2HD, paper eq. 14-16).

The top-1 moment of the last decoder layer (highest softmax foreground probability) picks
a run of clips of the pre-fusion video projection; a GRU summarises it into ``h``; the
memory is re-weighted by the clips' similarity to ``h`` (``memory * w + memory``) before the
shared saliency head.

Official mode (bit-faithful), with L the official padded length (``official_vid_len``,
which may be shorter than the array):
- span -> ``floor(xx * (L * clip_len) / clip_len)``;
- the clip run is ``src_vid_ed[b, start:end + 1]`` with Python slice semantics (a negative
  start or end wraps by L, bounds clamp to [0, L], a reversed range is empty), zero-padded
  at the end to L steps; here it is a gather with a validity mask (static shapes);
- the GRU runs over all L steps, zeros included, and its state stays unchanged on the
  array's steps beyond L; ``w = h . src_vid_ed^T`` (raw dot product).
``compat='fixed'``: the span is floored on the sample's true length, clamped into its valid
clips (at least one), the GRU stops after the run (state frozen), and
``w = softmax over valid clips of cos(h, src_vid_ed)`` (the paper's cosine + softmax).

Top-1 ties: ``argmax`` returns the lowest index among exactly equal probabilities; the
official ``torch.sort(descending=True)`` (torch 2.13, CPU) also lists tied entries in index
order, so the same query is picked. No gradient flows through the selection or the indices.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from trdetr_jax.model.layers import Dtype, masked_softmax, torch_uniform
from trdetr_jax.precision import at_least_f32
from trdetr_jax.spans import span_cxw_to_xx


def python_slice_bounds(start: jax.Array, stop: jax.Array, length):
    """Python's ``slice(start, stop).indices(length)`` for step 1 on int arrays.

    ``length``: an int or an int array broadcastable with ``start`` (one length per row).

    Returns (start, count): the first row taken and how many rows the slice holds.
    """

    def norm(i):
        i = jnp.where(i < 0, i + length, i)
        return jnp.clip(i, 0, length)

    start, stop = norm(start), norm(stop)
    return start, jnp.maximum(stop - start, 0)


def gather_run(x: jax.Array, start: jax.Array, count: jax.Array) -> jax.Array:
    """Rows ``x[b, start_b : start_b + count_b]`` zero-padded at the end to L: [B, L, D]."""
    length = x.shape[1]
    t = jnp.arange(length)[None, :]  # [1, L]
    idx = jnp.clip(start[:, None] + t, 0, length - 1)  # [B, L]
    rows = jnp.take_along_axis(x, idx[:, :, None], axis=1)  # [B, L, D]
    return jnp.where((t < count[:, None])[:, :, None], rows, jnp.zeros((), x.dtype))


class _Affine(nn.Module):
    """Holds one gate's ``kernel`` [in, out] and ``bias`` [out] (torch GRU init)."""

    in_features: int
    features: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self):
        init = torch_uniform(self.features)  # torch GRU: U(-1/sqrt(hidden), 1/sqrt(hidden))
        k = self.param("kernel", init, (self.in_features, self.features), self.param_dtype)
        b = self.param("bias", init, (self.features,), self.param_dtype)
        return k, b


class TorchGRU(nn.Module):
    """One-layer unidirectional ``torch.nn.GRU`` (batch_first), returning the last hidden state.

    Gates (r, z, n) as PyTorch: r = s(W_ir x + b_ir + W_hr h + b_hr), z likewise,
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (h - n) * z + n.
    Params ``ir, iz, in`` (input) and ``hr, hz, hn`` (hidden), each ``kernel``/``bias``.
    """

    hidden_dim: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, num_steps: jax.Array | None = None) -> jax.Array:
        """x [B, T, D]; num_steps [B] (None: all T steps update the state) -> h [B, H]."""
        h_dim, d_in = self.hidden_dim, x.shape[-1]
        gates_i = [_Affine(d_in, h_dim, self.param_dtype, name=g)() for g in ("ir", "iz", "in")]
        gates_h = [_Affine(h_dim, h_dim, self.param_dtype, name=g)() for g in ("hr", "hz", "hn")]
        dt = self.dtype or jnp.result_type(x, gates_i[0][0])
        w_i = jnp.concatenate([k for k, _ in gates_i], axis=1).astype(dt)  # [D, 3H]
        b_i = jnp.concatenate([b for _, b in gates_i]).astype(dt)
        w_h = jnp.concatenate([k for k, _ in gates_h], axis=1).astype(dt)  # [H, 3H]
        b_h = jnp.concatenate([b for _, b in gates_h]).astype(dt)
        xi = jnp.einsum("btd,dg->tbg", x.astype(dt), w_i) + b_i  # [T, B, 3H], all steps at once
        steps = jnp.arange(x.shape[1])

        def step(h, inputs):
            xi_t, t = inputs
            hh = h @ w_h + b_h  # [B, 3H]
            xr, xz, xn = jnp.split(xi_t, 3, axis=-1)
            hr, hz, hn = jnp.split(hh, 3, axis=-1)
            r = jax.nn.sigmoid(xr + hr)
            z = jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            h_new = (h - n) * z + n
            if num_steps is not None:
                h_new = jnp.where((t < num_steps)[:, None], h_new, h)
            return h_new, None

        h0 = jnp.zeros((x.shape[0], h_dim), dt)
        h, _ = jax.lax.scan(step, h0, (xi, steps))
        return h


class MR2HD(nn.Module):
    """Returns the re-weighted memory ``memory * w + memory`` [B, L, d]; params ``gru``."""

    clip_length: float = 2.0
    compat: str = "official"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pred_logits, pred_spans, memory, src_vid_ed, video_mask, padded_len=None):
        """pred_logits/pred_spans [B, nq, 2] (last layer); memory, src_vid_ed [B, L, d];
        padded_len [B] int: the official padded length (None: L), official mode only."""
        b, length, d = memory.shape
        official = self.compat == "official"
        if padded_len is None:
            padded_len = jnp.full((b,), length, jnp.int32)
        fg = jax.nn.softmax(at_least_f32(pred_logits), axis=-1)[..., 0]  # [B, nq]
        fg = jax.lax.stop_gradient(fg)
        top1 = jnp.argmax(fg, axis=-1)  # [B]
        span = jnp.take_along_axis(pred_spans, top1[:, None, None], axis=1)[:, 0]  # [B, 2]
        span = jax.lax.stop_gradient(span)
        if official:
            n_clips = padded_len[:, None].astype(span.dtype)  # [B, 1] the padded length
        else:
            n_clips = jnp.sum(video_mask > 0, axis=1).astype(span.dtype)[:, None]  # [B, 1]
        bounds = jnp.floor(span_cxw_to_xx(span) * (n_clips * self.clip_length) / self.clip_length)
        first, last = bounds[:, 0].astype(jnp.int32), bounds[:, 1].astype(jnp.int32)
        if official:
            start, count = python_slice_bounds(first, last + 1, padded_len)
        else:
            n_valid = n_clips[:, 0].astype(jnp.int32)
            last_clip = jnp.maximum(n_valid - 1, 0)  # an all-padding example keeps one step
            start = jnp.clip(first, 0, last_clip)
            end = jnp.clip(last, start, last_clip)
            count = end - start + 1
        run = gather_run(src_vid_ed, start, count)  # [B, L, d]
        h = TorchGRU(d, self.dtype, self.param_dtype, name="gru")(
            run, num_steps=padded_len if official else count
        )  # [B, d]
        if official:
            w = jnp.einsum("bd,bld->bl", h, src_vid_ed.astype(h.dtype))  # [B, L]
        else:
            eps = 1e-8
            hn = h / jnp.maximum(jnp.linalg.norm(h, axis=-1, keepdims=True), eps)
            vn = src_vid_ed / jnp.maximum(jnp.linalg.norm(src_vid_ed, axis=-1, keepdims=True), eps)
            cos = at_least_f32(jnp.einsum("bd,bld->bl", hn, vn.astype(hn.dtype)))
            w = masked_softmax(cos, video_mask > 0)
        for name, value in (
            ("inter_mr2hd_fg_prob", fg),
            ("inter_mr2hd_top1_query_idx", top1),
            ("inter_mr2hd_top1_span_clip_idx", bounds),
            ("inter_mr2hd_slice_len", count),
            ("inter_mr2hd_sliced_features", run),
            ("inter_mr2hd_gru_hidden", h),
            ("inter_mr2hd_weight", w),
        ):
            self.sow("intermediates", name, value)
        w = w.astype(memory.dtype)
        return memory * w[:, :, None] + memory
