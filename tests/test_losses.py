"""Losses: hand-computed values on tiny cases, and every fixture's losses.json."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trdetr_jax import losses


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_span_losses_by_hand():
    pred = np.array([[[0.5, 0.2], [0.1, 0.1], [0.7, 0.4]]], np.float32)  # B=1, nq=3
    labels = np.array([[[0.55, 0.3], [0.0, 0.0]]], np.float32)  # 1 real window + padding
    match = (np.array([[2, 0]]), np.array([[0, 0]]), np.array([[1.0, 0.0]]))
    out = losses.loss_spans(pred, labels, match)
    # pair (query 2, window 0): |0.7-0.55| + |0.4-0.3| over 2 coords
    np.testing.assert_allclose(out["loss_span"], (0.15 + 0.1) / 2, rtol=1e-6)
    # [0.5, 0.9] vs [0.4, 0.7]: inter 0.2, union 0.5, enclosing 0.5
    np.testing.assert_allclose(out["loss_giou"], 1 - 0.2 / 0.5, rtol=1e-6)
    # the padding pair (degenerate target) must not leak NaN into the gradient
    g = jax.grad(lambda p: sum(losses.loss_spans(p, labels, match).values()))(jnp.asarray(pred))
    assert np.isfinite(np.asarray(g)).all()
    assert np.all(np.asarray(g)[0, :2] == 0)


def test_focal_label_loss_and_class_error_by_hand():
    logits = np.array([[[2.0, -1.0], [0.5, 1.5]]], np.float32)  # B=1, nq=2
    match = (np.array([[0, 1]]), np.array([[0, 0]]), np.array([[1.0, 0.0]]))  # query 0 matched
    out = losses.loss_labels(logits, match)
    targets = np.array([[1, 0], [0, 1]], np.float64)

    def focal(x, t):
        p = _sigmoid(x)
        ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
        p_t = p * t + (1 - p) * (1 - t)
        return (0.25 * t + 0.75 * (1 - t)) * ce * (1 - p_t) ** 2

    np.testing.assert_allclose(out["loss_label"], focal(logits[0], targets).mean(), rtol=1e-6)
    assert float(out["class_error"]) == 0.0  # query 0 predicts foreground
    wrong = losses.loss_labels(logits, (np.array([[1, 0]]), match[1], match[2]))
    assert float(wrong["class_error"]) == 100.0
    assert out["loss_label"].dtype == jnp.float32


def test_saliency_loss_by_hand():
    s = np.array([[1.0, 0.0, 2.0, 5.0]], np.float32)  # last clip is padding
    mask = np.array([[1.0, 1.0, 1.0, 0.0]], np.float32)
    labels = np.array([[1.0, 0.0, 2.0, 0.0]], np.float32)
    pos, neg = np.array([[2]]), np.array([[3]])  # the neg points at padding: unmasked scores
    got = losses.loss_saliency(s, mask, pos, neg, labels, margin=0.2)
    margin = max(0.2 + 5.0 - 2.0, 0) / 1 * 2
    # thresholds 1 and 2 have positives; 3..11 are skipped
    z = np.array([1.0, 0.0, 2.0]) / 0.5
    logits = z - z.max()
    log_prob = logits - np.log(np.exp(logits).sum() + np.exp(-2000 - z.max()) + 1e-6)
    r1 = -(log_prob[0] + log_prob[2]) / (2 + 1e-6)
    r2 = -log_prob[2] / (1 + 1e-6)
    np.testing.assert_allclose(got, margin + (r1 + r2) / 12, rtol=1e-6)


def test_vtc_and_ctc_by_hand():
    txt = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    vid = np.array([[3.0, 0.0], [1.0, 1.0]], np.float32)
    got = losses.vtc_loss(txt, vid, temperature=0.5)
    v = vid / np.linalg.norm(vid, axis=1, keepdims=True)
    t = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    lg = t @ v.T / 0.5

    def ce(m):
        return np.mean([np.log(np.exp(m[i]).sum()) - m[i, i] for i in range(2)])

    np.testing.assert_allclose(got, (ce(lg) + ce(lg.T)) / 2, rtol=1e-6)

    vf = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], np.float32)  # B=1, Lv=3 (last pad)
    tf = np.array([[[2.0, 0.0], [9.0, 9.0]]], np.float32)  # Lt=2 (last pad)
    pos = np.array([[1.0, 0.0, 0.0]], np.float32)
    got = losses.ctc_loss(
        vf, tf, pos, np.array([[1.0, 1.0, 0.0]]), np.array([[1.0, 0.0]]), temperature=0.5
    )
    x = np.array([1.0, 0.0, 0.0]) / 0.5  # cos with text [1, 0]; padding clip masked to 0
    bce = np.log1p(np.exp(-x)) * pos[0] + np.log1p(np.exp(x)) * (1 - pos[0])
    np.testing.assert_allclose(got, bce.mean(), rtol=1e-6)  # padding clip counts (log 2)


def test_example_mask_ignores_padding_examples():
    rng = np.random.default_rng(0)
    b, lv = 3, 5
    out = {
        "saliency_scores": rng.normal(size=(b, lv)).astype(np.float32),
        "video_mask": np.ones((b, lv), np.float32),
        "src_txt_cls_ed": rng.normal(size=(b, 4)).astype(np.float32),
        "src_vid_cls_ed": rng.normal(size=(b, 4)).astype(np.float32),
        "src_txt_ed": rng.normal(size=(b, 2, 4)).astype(np.float32),
        "src_vid_ed": rng.normal(size=(b, lv, 4)).astype(np.float32),
    }
    batch = {
        "saliency_pos_labels": np.zeros((b, 1), np.int32),
        "saliency_neg_labels": np.ones((b, 1), np.int32),
        "saliency_all_labels": rng.integers(0, 4, (b, lv)).astype(np.float32),
        "src_pos_mask": (rng.uniform(size=(b, lv)) > 0.5).astype(np.float32),
        "src_vid_mask": np.ones((b, lv), np.float32),
        "src_txt_mask": np.ones((b, 2), np.float32),
    }
    cfg = losses.LossConfig(use_matcher=False)
    small = {k: v[:2] for k, v in out.items()}
    small_batch = {k: v[:2] for k, v in batch.items()}
    ref_total, ref = losses.compute_losses(small, small_batch, None, cfg)
    padded_batch = dict(batch, example_mask=np.array([1.0, 1.0, 0.0], np.float32))
    total, got = losses.compute_losses(out, padded_batch, None, cfg)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=2e-6, err_msg=k)
    np.testing.assert_allclose(total, ref_total, rtol=2e-6)


def _fixture_inputs(d):
    out = dict(np.load(d / "outputs.npz"))
    inp = dict(np.load(d / "inputs.npz"))
    ref = np.load(d / "matching.npz")
    labels = inp["span_labels"]
    b, w = labels.shape[:2]
    batch = {k: inp[k] for k in ("span_labels", "saliency_pos_labels", "saliency_neg_labels",
                                 "saliency_all_labels", "src_pos_mask", "src_vid_mask",
                                 "src_txt_mask")}  # fmt: skip
    batch["span_mask"] = (np.arange(w)[None] < inp["span_labels_count"][:, None]).astype(
        labels.dtype
    )
    outputs = {k: v for k, v in out.items() if not k.startswith(("inter_", "aux_"))}
    outputs["aux_outputs"] = (
        {"pred_logits": out["aux_0_pred_logits"], "pred_spans": out["aux_0_pred_spans"]},
    )
    matches = None
    if int(ref["use_matcher"]):
        matches = {}
        for layer, name in (("final", "final"), ("aux0", "aux_0")):
            p, t, v = np.zeros((b, w), np.int32), np.zeros((b, w), np.int32), np.zeros((b, w))
            for i in range(b):
                pi = ref[f"{layer}_pred_idx_{i}"]
                p[i, : len(pi)], t[i, : len(pi)], v[i, : len(pi)] = (
                    pi,
                    ref[f"{layer}_tgt_idx_{i}"],
                    1,
                )
            matches[name] = (p, t, v.astype(np.float32))
    return outputs, batch, matches


@pytest.mark.parametrize("case", ["qvh_video_s0", "small_qvh_f64", "small_tvsum"])
def test_fixture_losses(reference_dir, case):
    d = reference_dir / case
    ref = json.loads((d / "losses.json").read_text())
    opt = json.loads((d / "config.json").read_text())["opt"]
    outputs, batch, matches = _fixture_inputs(d)
    x64 = batch["src_vid_mask"].dtype == np.float64
    cfg = losses.LossConfig(
        vtc_loss_coef=opt["VTC_loss_coef"],
        ctc_loss_coef=opt["CTC_loss_coef"],
        use_matcher=matches is not None,
    )
    with jax.enable_x64(x64):
        total, got = jax.jit(losses.compute_losses, static_argnums=3)(outputs, batch, matches, cfg)
        got = {k: float(v) for k, v in got.items()}
    want = dict(ref["loss_dict"], VTC_loss=ref["VTC_loss"], CTC_loss=ref["CTC_loss"])
    # jit returns dicts with sorted keys; the summation order is the config's
    assert cfg.loss_order(num_aux=1) == ref["loss_dict_order"]
    assert set(got) == set(ref["loss_dict_order"]) | {"VTC_loss", "CTC_loss"}
    for k, v in want.items():
        if not x64:
            tol = 1e-5
        elif ref["dtypes"][k] == "torch.float32":
            tol = 2e-6
        else:
            tol = 3e-8
        assert abs(got[k] - v) <= tol * abs(v), (k, got[k], v)
    total_tol = 1e-7 if x64 else 1e-5
    assert abs(float(total) - ref["total_loss"]) <= total_tol * abs(ref["total_loss"])
