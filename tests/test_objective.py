"""The training objective: jit + grad, data-parallel sharding, frozen parameters."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from trdetr_jax import matcher, objective, optim
from trdetr_jax.config import get_base_config
from trdetr_jax.model import TRDETR, model_kwargs_from_config

B, LV, LT, DV, DT, W = 4, 12, 6, 10, 8, 3


def _config(use_matcher=True):
    c = get_base_config()
    c.model.hidden_dim = 16  # tiny: 4 heads of 4
    c.model.nheads = 4
    c.model.enc_layers = 1
    c.model.dec_layers = 2
    c.model.dim_feedforward = 16
    c.model.num_queries = 4
    c.model.input_dropout = 0.0
    c.model.dropout = 0.0
    c.data.v_feat_dims = (DV - 2,)
    c.data.t_feat_dim = DT
    c.data.max_v_l = LV
    c.data.max_q_l = LT
    c.data.max_windows = W
    c.loss.use_matcher = use_matcher
    return c


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    vlen = np.array([12, 9, 5, 12])
    tlen = np.array([6, 3, 4, 2])
    vmask = (np.arange(LV)[None] < vlen[:, None]).astype(np.float32)
    tmask = (np.arange(LT)[None] < tlen[:, None]).astype(np.float32)
    counts = np.array([2, 1, 3, 1])
    span_mask = (np.arange(W)[None] < counts[:, None]).astype(np.float32)
    spans = np.stack([rng.uniform(0.2, 0.8, (B, W)), rng.uniform(0.05, 0.3, (B, W))], -1)
    labels = rng.integers(0, 5, (B, LV)).astype(np.float32) * vmask
    return {
        "src_txt": rng.normal(size=(B, LT, DT)).astype(np.float32) * tmask[..., None],
        "src_txt_mask": tmask,
        "src_vid": rng.normal(size=(B, LV, DV)).astype(np.float32) * vmask[..., None],
        "src_vid_mask": vmask,
        "span_labels": (spans * span_mask[..., None]).astype(np.float32),
        "span_mask": span_mask,
        "saliency_pos_labels": np.stack([np.zeros(B), vlen - 1], 1).astype(np.int32),
        "saliency_neg_labels": np.stack([vlen // 2, vlen // 3], 1).astype(np.int32),
        "saliency_all_labels": labels,
        "src_pos_mask": (labels > 2).astype(np.float32),
    }


@pytest.fixture(scope="module")
def setup():
    config = _config()
    model = TRDETR(**model_kwargs_from_config(config))
    batch = _batch()
    keys = ("src_txt", "src_txt_mask", "src_vid", "src_vid_mask")
    init = jax.jit(lambda k: model.init(k, *(batch[n] for n in keys), train=False)["params"])
    params = init(jax.random.key(0))
    return config, model, batch, params


def test_jit_grad_and_summation_order(setup):
    config, model, batch, params = setup
    loss_fn = objective.make_loss_fn(config)

    @jax.jit
    def step(p, b):
        return jax.value_and_grad(lambda q: loss_fn(q, model, b, train=False), has_aux=True)(p)

    (total, (loss_dict, outputs)), grads = step(params, batch)
    # The official total, written out: the weighted criterion terms in the criterion's
    # order (final layer, saliency, then the auxiliary layer; class_error is logged, not
    # weighted), then the two contrastive terms; float32 left to right.
    lc = config.loss
    weighted = [
        ("loss_span", lc.span_loss_coef),
        ("loss_giou", lc.giou_loss_coef),
        ("loss_label", lc.label_loss_coef),
        ("loss_saliency", lc.lw_saliency),
        ("loss_span_0", lc.span_loss_coef),
        ("loss_giou_0", lc.giou_loss_coef),
        ("loss_label_0", lc.label_loss_coef),
        ("VTC_loss", lc.vtc_loss_coef),
        ("CTC_loss", lc.ctc_loss_coef),
    ]
    assert set(loss_dict) == {k for k, _ in weighted} | {"class_error", "class_error_0"}
    expected = np.float32(0)
    for k, w in weighted:
        expected = np.float32(expected + np.float32(loss_dict[k]) * np.float32(w))
    # Exact: other orders of the same float32 terms often differ in the last bit (43 of
    # 200 random orders of these nine terms did).
    np.testing.assert_array_equal(np.float32(total), expected)
    assert set(outputs["matches"]) == {"final", "aux_0"}
    p, _, v = outputs["matches"]["final"]
    np.testing.assert_array_equal(np.asarray(v).sum(1), [2, 1, 3, 1])
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    # the unused text position embedding gets an exactly zero gradient
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads["txt_position_embed"]))


@pytest.mark.slow  # slow: the fast suite stays under 10 minutes on 2 cores; CI runs -m slow too
def test_data_parallel_equals_single_device(setup, monkeypatch):
    n_dev = len(jax.devices())
    if n_dev < 2 or B % n_dev:
        pytest.skip("needs 2 or 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)")
    config, model, batch, params = setup
    mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    calls = []
    host = matcher._assign_host

    def spy(cost, tgt_mask):
        calls.append(cost.shape)
        return host(cost, tgt_mask)

    monkeypatch.setattr(matcher, "_assign_host", spy)

    def make_step(loss_fn):
        def step(p, b):
            (total, (loss_dict, _)), grads = jax.value_and_grad(
                lambda q: loss_fn(q, model, b, train=False), has_aux=True
            )(p)
            return total, loss_dict, grads

        return step

    single = jax.jit(make_step(objective.make_loss_fn(config)))(params, batch)
    calls.clear()
    sharded_step = jax.jit(
        make_step(objective.make_loss_fn(config, mesh=mesh)),
        in_shardings=(replicated, data),
        out_shardings=replicated,
    )
    out = sharded_step(jax.device_put(params, replicated), jax.device_put(batch, data))
    jax.block_until_ready(out)  # dispatch is asynchronous
    assert len(calls) == n_dev and all(c[1] == B // n_dev for c in calls)  # per shard
    np.testing.assert_allclose(out[0], single[0], rtol=1e-6)
    for k in single[1]:
        np.testing.assert_allclose(out[1][k], single[1][k], rtol=1e-5, atol=1e-7, err_msg=k)
    # summation order differs across shards: compare on the scale of the largest gradient
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(single[2]))
    for a, b in zip(jax.tree.leaves(out[2]), jax.tree.leaves(single[2])):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("use_matcher", [pytest.param(True, marks=pytest.mark.slow), False])
def test_optimizer_freezes_what_the_official_code_never_updates(setup, use_matcher):
    _, model, batch, params = setup
    config = _config(use_matcher)
    tx = optim.make_optimizer_from_config(config, 1e-3)
    loss_fn = objective.make_loss_fn(config)
    grads = jax.jit(jax.grad(lambda p: loss_fn(p, model, batch, train=False)[0]))(params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)

    def same(tree_a, tree_b):
        return all(
            np.array_equal(a, b) for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b))
        )

    assert same(new["txt_position_embed"], params["txt_position_embed"])
    assert not same(new["saliency_proj"], params["saliency_proj"])
    for name in ("decoder", "class_embed", "span_embed", "query_embed"):
        assert same(new[name], params[name]) == (not use_matcher), name
    if not use_matcher:  # no gradient reaches the decoder: torch leaves it untouched
        assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads["decoder"]))
