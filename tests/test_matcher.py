"""Hungarian matcher: brute force, padding, jit + grad, vmap, sharding, fixtures."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from trdetr_jax import matcher

B, NQ, W = 4, 4, 3


def _random_case(seed, counts=(3, 2, 1, 0)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(B, NQ, 2)).astype(np.float32)
    pred = np.stack([rng.uniform(0.1, 0.9, (B, NQ)), rng.uniform(0.05, 0.5, (B, NQ))], -1).astype(
        np.float32
    )
    labels = np.stack([rng.uniform(0.1, 0.9, (B, W)), rng.uniform(0.05, 0.5, (B, W))], -1).astype(
        np.float32
    )
    mask = (np.arange(W)[None] < np.array(counts)[:, None]).astype(np.float32)
    labels = labels * mask[..., None]  # padded windows are (0, 0), as the data pipeline
    return logits, pred, labels, mask


def _brute_force(cost):
    """min-cost injective map of the target columns to query rows."""
    nq, n = cost.shape
    best, best_rows = np.inf, None
    for rows in itertools.permutations(range(nq), n):
        c = sum(cost[r, j] for j, r in enumerate(rows))
        if c < best:
            best, best_rows = c, rows
    return best, best_rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_padding(seed):
    logits, pred, labels, mask = _random_case(seed)
    cost = np.asarray(matcher.match_cost(logits, pred, labels, mask))
    assert np.isfinite(cost).all()
    pred_idx, tgt_idx, valid = map(np.asarray, matcher.match(logits, pred, labels, mask))
    for b in range(B):
        n = int(mask[b].sum())
        assert valid[b].sum() == n and (valid[b, :n] == 1).all()
        best, rows = _brute_force(cost[b, :, :n])
        got = cost[b, pred_idx[b, :n], tgt_idx[b, :n]].sum() if n else 0.0
        np.testing.assert_allclose(got, best if n else 0.0, rtol=1e-6)
        # scipy's order: pred rows ascending; each target used once
        assert list(pred_idx[b, :n]) == sorted(pred_idx[b, :n])
        assert sorted(tgt_idx[b, :n]) == list(range(n))
        assert dict(zip(tgt_idx[b, :n], pred_idx[b, :n])) == dict(enumerate(rows or ()))


def test_cost_terms_by_hand():
    logits = np.array([[[2.0, 0.0]]], np.float32)  # p_fg = sigmoid(2)
    pred = np.array([[[0.5, 0.2]]], np.float32)  # [0.4, 0.6]
    labels = np.array([[[0.55, 0.3]]], np.float32)  # [0.4, 0.7]
    cost = matcher.match_cost(logits, pred, labels, cost_span=10, cost_giou=1, cost_class=4)
    l1 = 0.05 + 0.1
    giou = 0.2 / 0.3  # enclosing == union
    expected = 10 * l1 - giou - 4 * (1 / (1 + np.exp(-2.0)))
    np.testing.assert_allclose(cost[0, 0, 0], expected, rtol=1e-6)


def test_more_targets_than_queries():
    rng = np.random.default_rng(3)
    cost = rng.normal(size=(1, 2, 2, 3)).astype(np.float32)  # [layers, B, nq=2, W=3]
    mask = np.ones((2, 3), np.float32)
    pred_idx, tgt_idx, valid = map(np.asarray, matcher.assign(cost, mask))
    assert (valid.sum(-1) == 2).all()
    for b in range(2):
        best, _ = min(
            (cost[0, b, [0, 1], list(cols)].sum(), cols)
            for cols in itertools.permutations(range(3), 2)
        )
        np.testing.assert_allclose(cost[0, b, pred_idx[0, b, :2], tgt_idx[0, b, :2]].sum(), best)


def test_never_raises_on_non_finite_costs():
    cost = np.full((1, 1, 3, 2), np.nan, np.float32)
    cost[0, 0, 1, 0] = 0.0
    pred_idx, tgt_idx, valid = map(np.asarray, matcher.assign(cost, np.ones((1, 2), np.float32)))
    assert valid.sum() == 2  # still a full assignment, NaN treated as very expensive
    assert (pred_idx[0, 0][tgt_idx[0, 0] == 0] == 1).all()


def test_inside_jit_and_grad_all_layers_one_callback(monkeypatch):
    logits, pred, labels, mask = _random_case(4)
    calls = []
    host = matcher._assign_host

    def spy(cost, tgt_mask):
        calls.append(cost.shape)
        return host(cost, tgt_mask)

    monkeypatch.setattr(matcher, "_assign_host", spy)

    def loss(pred_spans):
        (p0, t0, v0), (p1, t1, v1) = matcher.match_layers(
            [(logits, pred_spans), (logits[:, ::-1], pred_spans[:, ::-1])], labels, mask
        )
        src = jnp.take_along_axis(pred_spans, p0[..., None], 1)
        tgt = jnp.take_along_axis(jnp.asarray(labels), t0[..., None], 1)
        return jnp.sum(jnp.abs(src - tgt) * v0[..., None]) + 0.0 * jnp.sum(v1)

    g = jax.block_until_ready(jax.jit(jax.grad(loss))(jnp.asarray(pred)))
    assert len(calls) == 1 and calls[0][0] == 2  # both layers in one host call
    # d|src - tgt| / d src = sign(src - tgt) on the matched queries, zero elsewhere
    p0, t0, v0 = map(np.asarray, matcher.match(logits, pred, labels, mask))
    want = np.zeros((B, NQ, 2), np.float32)
    for b in range(B):
        for p, t in zip(p0[b][v0[b] > 0], t0[b][v0[b] > 0]):
            want[b, p] = np.sign(pred[b, p] - labels[b, t])
    assert np.abs(want).sum() > 0
    np.testing.assert_array_equal(np.asarray(g), want)


def test_vmap_over_models():
    logits, pred, labels, mask = _random_case(5)
    stacked = np.stack([pred, pred[:, ::-1]])  # two "models"
    out = jax.vmap(lambda s: matcher.match(logits, s, labels, mask))(stacked)
    for k in range(2):
        ref = matcher.match(logits, stacked[k], labels, mask)
        for a, r in zip(out, ref):
            np.testing.assert_array_equal(np.asarray(a)[k], np.asarray(r))


def test_data_parallel_runs_per_shard(monkeypatch):
    n_dev = len(jax.devices())
    if n_dev < 2:
        pytest.skip("needs several devices (XLA_FLAGS=--xla_force_host_platform_device_count)")
    mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rng = np.random.default_rng(6)
    b = 2 * n_dev
    logits = rng.normal(size=(b, NQ, 2)).astype(np.float32)
    pred = rng.uniform(0.1, 0.5, (b, NQ, 2)).astype(np.float32)
    labels = rng.uniform(0.1, 0.5, (b, W, 2)).astype(np.float32)
    mask = (rng.uniform(size=(b, W)) > 0.3).astype(np.float32)
    calls = []
    host = matcher._assign_host

    def spy(cost, tgt_mask):
        calls.append(cost.shape)
        return host(cost, tgt_mask)

    monkeypatch.setattr(matcher, "_assign_host", spy)
    ref = [np.asarray(x) for x in matcher.match(logits, pred, labels, mask)]
    calls.clear()
    data = NamedSharding(mesh, P("data"))
    args = [jax.device_put(x, data) for x in (logits, pred, labels, mask)]
    for kwargs, ctx in [({"mesh": mesh}, None), ({}, mesh)]:
        calls.clear()
        fn = jax.jit(lambda *a, kw=kwargs: matcher.match(*a, **kw))
        if ctx is None:
            out = fn(*args)
        else:
            with jax.set_mesh(ctx):
                out = fn(*args)
        jax.block_until_ready(out)  # dispatch is asynchronous
        assert len(calls) == n_dev and all(c[1] == b // n_dev for c in calls)
        assert out[0].sharding.spec == P("data")
        for o, r in zip(out, ref):
            np.testing.assert_array_equal(np.asarray(o), r)


@pytest.mark.parametrize("case", ["qvh_video_s0", "small_qvh_f64"])
def test_fixture_costs_and_indices(reference_dir, case):
    d = reference_dir / case
    out, inp, ref = (np.load(d / f) for f in ("outputs.npz", "inputs.npz", "matching.npz"))
    x64 = inp["src_vid"].dtype == np.float64
    with jax.enable_x64(x64):
        labels = inp["span_labels"]
        n_b = labels.shape[0]
        mask = (np.arange(labels.shape[1])[None] < inp["span_labels_count"][:, None]).astype(
            labels.dtype
        )
        layers = {
            "final": (out["pred_logits"], out["pred_spans"]),
            "aux0": (out["aux_0_pred_logits"], out["aux_0_pred_spans"]),
        }
        found = jax.jit(matcher.match_layers)(list(layers.values()), labels, mask)
        for (name, (lg, sp)), (p, t, v) in zip(layers.items(), found):
            cost = np.asarray(matcher.match_cost(lg, sp, labels, mask))
            for b in range(n_b):
                n = int(inp["span_labels_count"][b])
                np.testing.assert_allclose(
                    cost[b, :, :n], ref[f"{name}_cost_{b}"], rtol=0, atol=1e-14
                )
                keep = np.asarray(v[b]) > 0
                np.testing.assert_array_equal(np.asarray(p[b])[keep], ref[f"{name}_pred_idx_{b}"])
                np.testing.assert_array_equal(np.asarray(t[b])[keep], ref[f"{name}_tgt_idx_{b}"])
