"""Official mode is independent of the physical padding given the official padded lengths.

The official collate pads a batch to its longest video / query; official mode reads those
lengths from ``official_vid_len`` / ``official_txt_len``, so the same batch padded
physically further (zeros, mask 0) gives the same outputs, loss terms and gradients:
within 1e-12 in float64, within the fixture tolerances in float32. Then one focused test
per place that depends on the padded length (model docstring of :mod:`trdetr_jax.model.trdetr`):
each fails if that place reads the array's length instead.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trdetr_jax import losses, objective
from trdetr_jax.model import TRDETR, collect_intermediates, flatten_outputs, model_inputs
from trdetr_jax.model.mr2hd import MR2HD, python_slice_bounds

TINY = dict(
    hidden_dim=16,
    nheads=2,
    enc_layers=1,
    dec_layers=2,
    dim_feedforward=16,
    num_queries=4,
    max_q_l=16,
)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
B, LV, LT, DV, DT, W = 2, 12, 6, 6, 4, 2  # official lengths LV, LT
MAX_V, MAX_Q = 32, 16  # the config maxima (max_v_l, max_q_l)
PADS = [(LV, LT), (LV + 7, LT + 7), (MAX_V, MAX_Q)]
VLEN, TLEN = np.array([LV, 7]), np.array([4, LT])  # sample 1's video, sample 0's text padded


def _batch(dtype) -> dict[str, np.ndarray]:
    """A batch at the official lengths (LV clips, LT tokens), with its targets."""
    rng = np.random.default_rng(3)
    vmask = (np.arange(LV)[None] < VLEN[:, None]).astype(dtype)
    tmask = (np.arange(LT)[None] < TLEN[:, None]).astype(dtype)
    labels = rng.integers(0, 5, (B, LV)).astype(dtype) * vmask
    labels[:, 0] = 4
    spans = np.stack([rng.uniform(0.3, 0.7, (B, W)), rng.uniform(0.1, 0.4, (B, W))], -1)
    return {
        "src_txt": rng.normal(size=(B, LT, DT)).astype(dtype) * tmask[..., None],
        "src_txt_mask": tmask,
        "src_vid": rng.normal(size=(B, LV, DV)).astype(dtype) * vmask[..., None],
        "src_vid_mask": vmask,
        "span_labels": spans.astype(dtype),
        "span_mask": np.array([[1, 1], [1, 0]], dtype),
        "saliency_pos_labels": np.array([[0, 2], [0, 1]], np.int32),
        "saliency_neg_labels": np.array([[5, 9], [6, 3]], np.int32),
        "saliency_all_labels": labels,
        "src_pos_mask": (labels > 1).astype(dtype),
        "official_vid_len": np.full((B,), LV, np.int32),
        "official_txt_len": np.full((B,), LT, np.int32),
    }


VIDEO_KEYS = ("src_vid", "src_vid_mask", "saliency_all_labels", "src_pos_mask")
TEXT_KEYS = ("src_txt", "src_txt_mask")


def _pad(batch, pv, pt):
    """Zero-pads the clip axis to pv and the token axis to pt (official lengths unchanged)."""
    out = dict(batch)
    for keys, size in ((VIDEO_KEYS, pv), (TEXT_KEYS, pt)):
        for k in keys:
            widths = [(0, 0)] * out[k].ndim
            widths[1] = (0, size - out[k].shape[1])
            out[k] = np.pad(out[k], widths)
    return out


def _cut(flat, pv, pt):
    """Arrays of a run padded to (pv, pt) cut back to the official lengths."""
    out = {}
    for k, a in flat.items():
        if k.startswith(("inter_transformer_", "inter_t2v_")) and a.shape[1] == pv + pt:
            a = np.concatenate([a[:, :LV], a[:, pv : pv + LT]], axis=1)
        elif k in ("src_txt_ed", "inter_input_txt_proj"):
            a = a[:, :LT]
        elif a.ndim >= 2 and a.shape[1] == pv:
            a = a[:, :LV]
        out[k] = a
    return out


def _init_params(model, batch, dtype):
    params = model.init(
        jax.random.key(0),
        **model_inputs(batch),
        train=False,
    )["params"]
    # PReLU slopes and LayerNorm scales off their defaults so nothing is trivially symmetric
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(dtype), params)


def _run(model, params, batch, intermediates: bool):
    """(flat outputs [+ intermediates], loss dict with 'total', flat grads) of ``batch``."""

    def total(p, b):
        return objective.loss_fn(p, model, b, train=False)

    vg = jax.jit(jax.value_and_grad(total, has_aux=True), compiler_options=FAST_COMPILE)
    (value, (loss_dict, out)), grads = vg(params, batch)
    out.pop("matches")
    flat = flatten_outputs(out)
    if intermediates:
        inputs = model_inputs(batch)

        @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
        def forward(p, inp):
            return model.apply({"params": p}, **inp, train=False, mutable=["intermediates"])

        flat.update(collect_intermediates(forward(params, inputs)[1]))
    terms = {k: float(v) for k, v in loss_dict.items()}
    terms["total"] = float(value)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    return flat, terms, {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


@functools.cache
def runs(x64: bool):
    """{(pv, pt): (flat cut to the official lengths, losses, grads)} for every pad.

    Intermediates only in float64 (where the focused tests read them).
    """
    dtype = np.float64 if x64 else np.float32
    with jax.enable_x64(x64):
        pdt = jnp.float64 if x64 else jnp.float32
        model = TRDETR(**TINY, param_dtype=pdt)
        base = _batch(dtype)
        params = _init_params(model, base, dtype)
        found = {}
        for pv, pt in PADS:
            flat, terms, grads = _run(model, params, _pad(base, pv, pt), x64)
            found[(pv, pt)] = (_cut(flat, pv, pt), terms, grads)
    return found


@pytest.mark.parametrize(
    "x64", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["float64", "float32"]
)
def test_outputs_losses_grads_do_not_depend_on_physical_padding(x64):
    found = runs(x64)
    ref_flat, ref_terms, ref_grads = found[PADS[0]]
    out_tol = 1e-12 if x64 else 1e-4
    loss_rtol = 1e-12 if x64 else 1e-5
    scale = max(float(np.max(np.abs(g))) for g in ref_grads.values())
    grad_tol = 1e-12 if x64 else 1e-4 * scale
    assert ref_terms["total"] > 0 and np.isfinite(ref_terms["total"])
    for pad in PADS[1:]:
        flat, terms, grads = found[pad]
        for k, want in ref_flat.items():
            if k == "inter_pos_vid" or k == "inter_transformer_pos":  # float32 island
                np.testing.assert_allclose(flat[k], want, rtol=0, atol=2e-6, err_msg=f"{pad} {k}")
                continue
            assert flat[k].shape == want.shape, (pad, k)
            if np.issubdtype(want.dtype, np.floating):
                np.testing.assert_allclose(
                    flat[k], want, rtol=0, atol=out_tol, err_msg=f"{pad} {k}"
                )
            else:
                np.testing.assert_array_equal(flat[k], want, err_msg=f"{pad} {k}")
        assert set(terms) == set(ref_terms)
        for k, want in ref_terms.items():
            assert abs(terms[k] - want) <= loss_rtol * max(abs(want), 1e-30), (pad, k, terms[k])
        assert set(grads) == set(ref_grads)
        for k, want in ref_grads.items():
            np.testing.assert_allclose(grads[k], want, rtol=0, atol=grad_tol, err_msg=f"{pad} {k}")


def test_gradients_reach_every_length_dependent_part():
    # the padded runs above compare real, nonzero gradients (the GRU's, the input projections')
    _, _, grads = runs(True)[PADS[0]]
    for part in ("'gru'", "'input_vid_proj'", "'input_txt_proj'", "'saliency_proj'"):
        assert any(part in k and np.max(np.abs(g)) > 1e-8 for k, g in grads.items()), part


# ------------------------------------------------------------------------ one test per place


def _padded_pair():
    """(unpadded, padded to MAX) flat outputs of the float64 runs, both cut to the official."""
    found = runs(True)
    return found[PADS[0]][0], found[PADS[-1]][0]


def test_place_video_pool():
    # src_vid_cls_ed (VTC input): mean over the official LV rows, padding rows 7.. of sample 1
    # included; a mean over the physical rows would divide by MAX_V.
    ref, padded = _padded_pair()
    np.testing.assert_allclose(padded["src_vid_cls_ed"], ref["src_vid_cls_ed"], atol=1e-12)
    np.testing.assert_allclose(ref["src_vid_cls_ed"], ref["src_vid_ed"].mean(1), atol=1e-12)


def test_place_text_pool():
    ref, padded = _padded_pair()
    np.testing.assert_allclose(padded["src_txt_cls_ed"], ref["src_txt_cls_ed"], atol=1e-12)
    np.testing.assert_allclose(ref["src_txt_cls_ed"], ref["src_txt_ed"].mean(1), atol=1e-12)


def test_place_hd2mr_softmax_over_official_clips():
    ref, padded = _padded_pair()
    w = padded["inter_hd2mr_weight_softmax"]
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)  # all the mass within LV
    assert w[1, VLEN[1] :].sum() > 0.01  # official padding within LV keeps its share
    np.testing.assert_allclose(w, ref["inter_hd2mr_weight_softmax"], atol=1e-12)


def test_place_mr2hd_floor_by_official_length():
    ref, padded = _padded_pair()
    idx = ref["inter_mr2hd_top1_span_clip_idx"]
    np.testing.assert_array_equal(padded["inter_mr2hd_top1_span_clip_idx"], idx)
    # floored on LV: the same spans on MAX_V clips would give other indices
    spans = ref["pred_spans"][np.arange(B), ref["inter_mr2hd_top1_query_idx"]]
    xx = np.stack([spans[:, 0] - spans[:, 1] / 2, spans[:, 0] + spans[:, 1] / 2], -1)
    np.testing.assert_array_equal(idx, np.floor(xx * LV))
    assert not np.array_equal(idx, np.floor(xx * MAX_V))


def test_place_mr2hd_slice_wraps_and_clamps_by_official_length():
    # Python slices of an official-length row: a negative start wraps by LV, the end clamps
    # at LV; per-row lengths as MR2HD passes them.
    firsts = np.array([-3, -3, 5, 9, -20])
    stops = np.array([11, 4, 30, 3, 2])
    start, count = python_slice_bounds(
        jnp.asarray(firsts), jnp.asarray(stops), jnp.full(len(firsts), LV)
    )
    want = [slice(a, b).indices(LV) for a, b in zip(firsts, stops)]
    np.testing.assert_array_equal(start, [w[0] for w in want])
    np.testing.assert_array_equal(count, [max(w[1] - w[0], 0) for w in want])
    # by the physical length the first slice would be empty and the third longer
    s_phys, c_phys = python_slice_bounds(jnp.asarray(firsts), jnp.asarray(stops), MAX_V)
    assert int(c_phys[0]) == 0 and int(count[0]) == 2
    assert int(c_phys[2]) == 25 and int(count[2]) == LV - 5


def _mr2hd_run(spans, pv):
    """MR2HD on hand-made top-1 spans, rows zero-padded to pv, official length LV."""
    rng = np.random.default_rng(4)
    d = 8
    logits = np.zeros((B, 3, 2))
    logits[:, 1, 0] = 5.0  # query 1 is the top-1
    pred_spans = np.full((B, 3, 2), 0.5)
    pred_spans[:, 1] = spans
    memory = rng.normal(size=(B, LV, d))
    vid = rng.normal(size=(B, LV, d))
    vid_mask = np.ones((B, LV))
    pad = ((0, 0), (0, pv - LV), (0, 0))
    memory, vid = np.pad(memory, pad), np.pad(vid, pad)
    vid_mask = np.pad(vid_mask, ((0, 0), (0, pv - LV)))
    mod = MR2HD(clip_length=2.0, param_dtype=jnp.float64)
    args = (logits, pred_spans, memory, vid, vid_mask, jnp.full((B,), LV, jnp.int32))
    params = mod.init(jax.random.key(1), *args)
    out, state = mod.apply(params, *args, mutable=["intermediates"])
    return np.asarray(out)[:, :LV], collect_intermediates(state)


def test_place_mr2hd_slice_and_gru_steps_on_padded_rows():
    # sample 0: negative start (wraps by LV to an empty slice); sample 1: end beyond LV
    # (clamped at LV, the slice reaches the official end)
    spans = np.array([[0.05, 0.5], [0.9, 0.5]])
    with jax.enable_x64(True):
        ref_out, ref_inter = _mr2hd_run(spans, LV)
        out, inter = _mr2hd_run(spans, LV + 9)
    np.testing.assert_array_equal(ref_inter["inter_mr2hd_top1_span_clip_idx"], [[-3, 3], [7, 13]])
    np.testing.assert_array_equal(inter["inter_mr2hd_slice_len"], [0, LV - 7])
    np.testing.assert_array_equal(
        inter["inter_mr2hd_slice_len"], ref_inter["inter_mr2hd_slice_len"]
    )
    # the GRU runs LV steps (LV - 5 of them zeros for sample 1) and stops there
    np.testing.assert_allclose(
        inter["inter_mr2hd_gru_hidden"], ref_inter["inter_mr2hd_gru_hidden"], atol=1e-12
    )
    np.testing.assert_allclose(out, ref_out, atol=1e-12)


def test_place_gru_state_frozen_after_official_steps():
    ref, padded = _padded_pair()
    np.testing.assert_allclose(
        padded["inter_mr2hd_gru_hidden"], ref["inter_mr2hd_gru_hidden"], atol=1e-12
    )
    np.testing.assert_allclose(padded["saliency_scores"], ref["saliency_scores"], atol=1e-12)


@pytest.mark.parametrize(
    "key",
    [
        "inter_pos_vid",  # cumsum of the mask over the valid count
        "inter_fuser_out",  # VFR: masked softmaxes give padding exactly zero weight
        "inter_t2v_encoder_out",  # the T2V mask quirk: beyond LV is padding for every sample
        "inter_memory",  # encoder attention: key-padding mask
        "inter_dec_hs",  # decoder cross-attention: key-padding mask
    ],
)
def test_place_already_padding_independent(key):
    ref, padded = _padded_pair()
    tol = 2e-6 if key == "inter_pos_vid" else 1e-12
    np.testing.assert_allclose(padded[key], ref[key], rtol=0, atol=tol)


def test_place_ctc_mean_over_official_clips():
    rng = np.random.default_rng(5)
    vid = rng.normal(size=(B, LV, 8))
    txt = rng.normal(size=(B, LT, 8))
    vmask = (np.arange(LV)[None] < VLEN[:, None]).astype(np.float64)
    tmask = (np.arange(LT)[None] < TLEN[:, None]).astype(np.float64)
    pos = (rng.uniform(size=(B, LV)) > 0.5) * vmask
    with jax.enable_x64(True):
        ref = losses.ctc_loss(vid, txt, pos, vmask, tmask)
        pad = ((0, 0), (0, 9))
        args = (
            np.pad(vid, pad + ((0, 0),)),
            txt,
            np.pad(pos, pad),
            np.pad(vmask, pad),
            tmask,
        )
        got = losses.ctc_loss(*args, padded_len=jnp.full((B,), LV))
        physical = losses.ctc_loss(*args)
        with_examples = losses.ctc_loss(
            *args, padded_len=jnp.full((B,), LV), example_mask=jnp.array([1.0, 0.0])
        )
        first_only = losses.ctc_loss(vid[:1], txt[:1], pos[:1], vmask[:1], tmask[:1])
    assert float(got) == float(ref)  # bit-identical: trailing zeros in the pairwise sum
    assert abs(float(physical) - float(ref)) > 1e-3  # a mean over B * MAX would differ
    np.testing.assert_allclose(float(with_examples), float(first_only), rtol=1e-7)


def test_place_rank_contrastive_softmax_over_official_clips():
    # Scores below -1e3: the physical padding's -1e3 would take the row maximum and add
    # terms to the softmax; official padding within LV (sample 1's clips 7..) still does.
    rng = np.random.default_rng(6)
    scores = -1500.0 + rng.normal(size=(B, LV))
    vmask = (np.arange(LV)[None] < VLEN[:, None]).astype(np.float64)
    labels = rng.integers(1, 5, (B, LV)) * vmask
    pos_idx = np.array([[0, 1], [0, 1]], np.int32)
    neg_idx = np.array([[2, 3], [2, 3]], np.int32)
    pad = ((0, 0), (0, 9))
    with jax.enable_x64(True):
        ref = losses.loss_saliency(scores, vmask, pos_idx, neg_idx, labels)
        args = (np.pad(scores, pad), np.pad(vmask, pad), pos_idx, neg_idx, np.pad(labels, pad))
        got = losses.loss_saliency(*args, padded_len=jnp.full((B,), LV))
        physical = losses.loss_saliency(*args)
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-13)
    assert abs(float(physical) - float(ref)) > 1e-2


def test_official_length_beyond_the_array_is_an_error():
    model = TRDETR(**TINY)
    batch = _batch(np.float32)
    inputs = model_inputs(batch)
    inputs["official_vid_len"] = np.full((B,), LV + 1, np.int32)
    with pytest.raises(
        ValueError, match=r"official_vid_len: expected shape \(2,\) with values in \[0, 12\]"
    ):
        model.init(jax.random.key(0), **inputs, train=False)


def test_fixed_mode_ignores_official_lengths():
    model = TRDETR(**TINY, compat="fixed")
    batch = _batch(np.float32)
    inputs = model_inputs(batch)
    params = model.init(jax.random.key(0), **inputs, train=False)
    short = dict(inputs, official_vid_len=np.full((B,), 9, np.int32))
    short["official_txt_len"] = np.full((B,), 5, np.int32)
    a = model.apply(params, **inputs, train=False)
    b = model.apply(params, **short, train=False)
    for k in ("pred_logits", "pred_spans", "saliency_scores", "src_vid_cls_ed"):
        np.testing.assert_array_equal(a[k], b[k])


def test_place_t2v_mask_wraps_around_the_official_batch_size():
    """Rows that only fill a batch (the last evaluation batch) leave the real rows as the
    official loader's smaller batch computes them, given ``official_batch_size``; without it
    the T2V mask quirk wraps around the array's B and the real rows change."""
    model = TRDETR(**TINY)
    inputs = model_inputs(_batch(np.float32))
    # Sample 0 padded in video and text (tokens 4, 5), sample 1's text full: officially, head
    # 0 of sample 1 uses sample 0's (padded clip, padded token) pairs; wrapped around 5 rows
    # it would use its own copy's, which hold none.
    inputs["src_vid_mask"] = inputs["src_vid_mask"].copy()
    inputs["src_vid_mask"][0, 9:] = 0
    inputs["src_vid"] = inputs["src_vid"] * inputs["src_vid_mask"][..., None]
    params = model.init(jax.random.key(0), **inputs, train=False)
    # Fill to 5 rows with copies of the last one, as the evaluation batches do.
    filled = {k: np.concatenate([v, np.repeat(v[-1:], 3, 0)]) for k, v in inputs.items()}
    apply = jax.jit(lambda p, inp: model.apply(p, **inp, train=False))
    ref = apply(params, inputs)
    got = apply(params, dict(filled, official_batch_size=np.full((5,), B, np.int32)))
    wrapped = apply(params, filled)
    for k in ("pred_logits", "pred_spans", "saliency_scores"):
        np.testing.assert_allclose(got[k][:B], ref[k], rtol=1e-6, atol=1e-6)
    assert not np.allclose(wrapped["saliency_scores"][:B], ref["saliency_scores"], atol=1e-4)
