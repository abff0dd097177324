"""compat='fixed' differs from 'official' exactly where documented (DESIGN.md section 2).

- No padding in the batch: everything agrees except MR2HD (clamped run on the true length,
  GRU over the run only, cosine + softmax weights), i.e. the saliency.
- With padding: the HD2MR softmax and the mean pools ignore padding, the T2V mask is aligned
  (official: sample (b * H + h) mod B's pad pairs), and the outputs of a sample no longer
  depend on the batch it sits in or on how much padding follows it.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from trdetr_jax.model import TRDETR, collect_intermediates, flatten_outputs

TINY = dict(
    hidden_dim=256,
    nheads=4,
    enc_layers=1,
    dec_layers=2,
    dim_feedforward=32,
    num_queries=3,
    max_q_l=8,
)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
LV, LT, DV, DT = 12, 5, 6, 4

_rng = np.random.default_rng(11)
TXT = _rng.standard_normal((2, LT, DT)).astype(np.float32)
VID = _rng.standard_normal((2, LV, DV)).astype(np.float32)
# Sample 0 has no padding; sample 1 is padded in both video (clips 7..) and text (tokens 3..),
# so official heads of sample 0 that read sample 1's pad pairs lose tokens 3.. on clips 7...
VID_MASK = np.ones((2, LV), np.float32)
VID_MASK[1, 7:] = 0
TXT_MASK = np.ones((2, LT), np.float32)
TXT_MASK[1, 3:] = 0


@functools.cache
def params():
    model = TRDETR(**TINY)
    abstract = jax.eval_shape(
        lambda k: model.init(k, TXT, TXT_MASK, VID, VID_MASK, train=False)["params"],
        jax.random.key(0),
    )
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        if path[-1].key == "scale":
            return 1 + 0.1 * rng.standard_normal(leaf.shape).astype(np.float32)
        if path[-1].key == "alpha":
            return np.float32(0.25)
        fan_in = leaf.shape[0] if len(leaf.shape) == 2 else 16
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def run(compat, txt, txt_mask, vid, vid_mask):
    model = TRDETR(**TINY, compat=compat)
    fwd = jax.jit(
        lambda p, *a: model.apply({"params": p}, *a, train=False, mutable=["intermediates"]),
        compiler_options=FAST_COMPILE,
    )
    out, state = fwd(params(), txt, txt_mask, vid, vid_mask)
    flat = flatten_outputs(out)
    flat.update(collect_intermediates(state))
    return flat


@functools.cache
def batch_run(compat):
    return run(compat, TXT, TXT_MASK, VID, VID_MASK)


def test_without_padding_only_mr2hd_differs():
    args = (TXT, np.ones_like(TXT_MASK), VID, np.ones_like(VID_MASK))
    off, fix = run("official", *args), run("fixed", *args)
    mr2hd_outputs = {"saliency_scores", "inter_mr2hd_memory_modulated"}
    mr2hd_outputs |= {k for k in off if k.startswith("inter_mr2hd") and k not in (
        "inter_mr2hd_fg_prob", "inter_mr2hd_top1_query_idx", "inter_mr2hd_top1_span_clip_idx")}  # fmt: skip
    for name in off:
        if name in mr2hd_outputs:
            continue
        np.testing.assert_allclose(fix[name], off[name], atol=1e-6, err_msg=name)
    assert np.abs(fix["saliency_scores"] - off["saliency_scores"]).max() > 1e-3
    # fixed: cosine + softmax weights sum to one; official: raw dot products
    np.testing.assert_allclose(fix["inter_mr2hd_weight"].sum(-1), 1.0, atol=1e-5)
    assert np.abs(off["inter_mr2hd_weight"].sum(-1) - 1).min() > 1e-2
    assert np.all(fix["inter_mr2hd_slice_len"] >= 1)


def test_with_padding_hd2mr_softmax_and_mean_pools():
    off, fix = batch_run("official"), batch_run("fixed")
    w_off, w_fix = off["inter_hd2mr_weight_softmax"], fix["inter_hd2mr_weight_softmax"]
    assert np.all(w_off[1, 7:] > 0)  # official: mass on padded clips
    np.testing.assert_array_equal(w_fix[1, 7:], 0.0)
    np.testing.assert_allclose(w_fix.sum(-1), 1.0, atol=1e-6)
    s_off, s_fix = off["inter_hd2mr_saliency_scores"], fix["inter_hd2mr_saliency_scores"]
    e = np.exp(s_off - s_off.max(-1, keepdims=True))
    np.testing.assert_allclose(w_off, e / e.sum(-1, keepdims=True), atol=1e-6)
    e = np.exp(s_fix - s_fix.max(-1, keepdims=True)) * VID_MASK
    np.testing.assert_allclose(w_fix, e / e.sum(-1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(off["src_vid_cls_ed"], off["src_vid_ed"].mean(1), atol=1e-6)
    masked = (fix["src_vid_ed"][1, :7]).mean(0)
    np.testing.assert_allclose(fix["src_vid_cls_ed"][1], masked, atol=1e-6)
    masked_txt = (fix["src_txt_ed"][1, :3]).mean(0)
    np.testing.assert_allclose(fix["src_txt_cls_ed"][1], masked_txt, atol=1e-6)


def test_t2v_mask_alignment():
    off, fix = batch_run("official"), batch_run("fixed")
    a, b = off["inter_t2v_layer0_out"], fix["inter_t2v_layer0_out"]
    # Sample 0, clips 0..6: no head of theirs loses a token -> identical.
    np.testing.assert_allclose(a[0, :7], b[0, :7], atol=1e-6)
    # Sample 0, clips 7..11: odd heads read sample 1's pairs and lose tokens 3, 4.
    assert np.abs(a[0, 7:LV] - b[0, 7:LV]).max() > 1e-3
    # Sample 1 (heads read sample 0's pairs: none) and the text rows: identical.
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)
    np.testing.assert_array_equal(a[:, LV:], b[:, LV:])


@pytest.mark.parametrize("compat", ["official", "fixed"])
def test_batch_and_padding_independence(compat):
    """Sample 0 run alone and with 4 more padded clips: 'fixed' gives the same predictions."""
    in_batch = batch_run(compat)
    alone = run(compat, TXT[:1], TXT_MASK[:1], VID[:1], VID_MASK[:1])
    pad = 4
    padded = run(
        compat,
        TXT[:1],
        TXT_MASK[:1],
        np.concatenate([VID[:1], np.zeros((1, pad, DV), np.float32)], 1),
        np.concatenate([VID_MASK[:1], np.zeros((1, pad), np.float32)], 1),
    )
    diffs = {}
    for name in ("pred_logits", "pred_spans", "saliency_scores"):
        ref = in_batch[name][0]
        for label, other in (("alone", alone), ("padded", padded)):
            got = other[name][0][: ref.shape[0]]
            diffs[label, name] = float(np.abs(got - ref).max())
    if compat == "fixed":
        assert max(diffs.values()) < 2e-5, diffs
    else:  # misaligned T2V mask (batch) and padded-length softmax / MR2HD (padding)
        assert diffs["alone", "pred_logits"] > 1e-4, diffs
        assert diffs["padded", "saliency_scores"] > 1e-4, diffs


@pytest.mark.parametrize("compat", ["official", "fixed"])
def test_all_padding_example_stays_finite(compat):
    """A padding example (all masks 0) filling the last eval batch gives no NaN anywhere."""
    vid_mask, txt_mask = VID_MASK.copy(), TXT_MASK.copy()
    vid_mask[1], txt_mask[1] = 0, 0
    out = run(compat, TXT, txt_mask, VID, vid_mask)
    for name, value in out.items():
        if np.issubdtype(value.dtype, np.floating):
            assert np.isfinite(value).all(), name
