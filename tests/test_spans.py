"""Span maths: hand-checked values (the official doctest examples) and gradients."""

import jax
import jax.numpy as jnp
import numpy as np

from trdetr_jax import losses, spans

S1 = np.array([[0.0, 0.2], [0.5, 1.0]], np.float32)
S2 = np.array([[0.0, 0.3], [0.0, 1.0]], np.float32)


def test_format_round_trip():
    cxw = np.array([[0.5, 1.0], [0.3, 0.2]], np.float32)
    xx = spans.span_cxw_to_xx(cxw)
    np.testing.assert_allclose(xx, [[0.0, 1.0], [0.2, 0.4]], atol=1e-7)
    np.testing.assert_allclose(spans.span_xx_to_cxw(xx), cxw, atol=1e-7)
    # leading dims are kept
    assert spans.span_cxw_to_xx(cxw[None, None]).shape == (1, 1, 2, 2)


def test_temporal_iou_values():
    iou, union = spans.temporal_iou(S1, S2)
    np.testing.assert_allclose(iou, [[2 / 3, 0.2], [0.0, 0.5]], atol=1e-6)
    np.testing.assert_allclose(union, [[0.3, 1.0], [0.8, 1.0]], atol=1e-6)


def test_generalized_iou_values_and_float32_island():
    giou = spans.generalized_temporal_iou(S1, S2)
    np.testing.assert_allclose(giou, [[2 / 3, 0.2], [-0.2, 0.5]], atol=1e-6)
    with jax.enable_x64(True):
        g64 = spans.generalized_temporal_iou(
            jnp.asarray(S1, jnp.float64), jnp.asarray(S2, jnp.float64)
        )
        assert g64.dtype == jnp.float32  # official .float()
        keep = spans.generalized_temporal_iou(
            jnp.asarray(S1, jnp.float64), jnp.asarray(S2, jnp.float64), dtype=None
        )
        assert keep.dtype == jnp.float64
    # disjoint spans: GIoU < 0 and bounded by -1
    far = spans.generalized_temporal_iou(np.array([[0.0, 0.1]]), np.array([[0.9, 1.0]]))
    np.testing.assert_allclose(far, [[-0.8]], atol=1e-6)


def test_inverse_sigmoid_clamps_like_official():
    x = jnp.array([-0.5, 0.0, 0.5, 0.25, 1.0, 2.0])
    out = spans.inverse_sigmoid(x)
    big = np.log(1 / 1e-3)
    np.testing.assert_allclose(out, [-big, -big, 0.0, np.log(1 / 3), big, big], rtol=1e-6)
    np.testing.assert_allclose(
        jax.nn.sigmoid(spans.inverse_sigmoid(jnp.array(0.3))), 0.3, rtol=1e-6
    )


def test_clamp_gradient_is_one_at_the_bound():
    # torch.clamp passes the gradient at the bound itself; jnp.maximum would give 0.5
    g = jax.grad(lambda x: spans.clamp(x, 0.0))(0.0)
    assert float(g) == 1.0
    g = jax.grad(lambda x: spans.clamp(x, 0.0))(-1.0)
    assert float(g) == 0.0
    g = jax.grad(lambda x: spans.clamp(x, None, 1.0))(1.0)
    assert float(g) == 1.0


def test_clamp_keeps_nan_like_torch():
    # torch.clamp(NaN) is NaN: a NaN must not be turned into a bound
    x = jnp.array([np.nan, -1.0, 0.5, 2.0])
    out = np.asarray(spans.clamp(x, 0.0, 1.0))
    assert np.isnan(out[0]) and out[1:].tolist() == [0.0, 0.5, 1.0]
    assert np.isnan(spans.clamp(jnp.array(np.nan), 0.0))
    assert np.isnan(spans.clamp(jnp.array(np.nan), None, 1.0))
    assert np.isnan(spans.inverse_sigmoid(jnp.array(np.nan)))


def test_nan_reaching_a_loss_keeps_it_nan():
    # A batch without saliency positives skips the rank-contrastive part, so the margin
    # hinge clamp(margin + neg - pos, 0) is all that sees the scores: a NaN must survive it.
    scores = jnp.array([[0.1, np.nan, 0.3, 0.2]])
    mask = jnp.ones((1, 4))
    pos, neg = jnp.array([[1]]), jnp.array([[0]])
    loss = losses.loss_saliency(scores, mask, pos, neg, jnp.zeros((1, 4)))
    assert np.isnan(loss)
    finite = losses.loss_saliency(jnp.nan_to_num(scores), mask, pos, neg, jnp.zeros((1, 4)))
    np.testing.assert_allclose(finite, (0.2 + 0.1 - 0.0) * 2, rtol=1e-6)
    # a NaN span makes both span losses NaN
    match = (jnp.array([[0]]), jnp.array([[0]]), jnp.array([[1.0]]))
    out = losses.loss_spans(jnp.array([[[np.nan, 0.2]]]), jnp.array([[[0.5, 0.2]]]), match)
    assert np.isnan(out["loss_span"]) and np.isnan(out["loss_giou"])
