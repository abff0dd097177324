"""The on-device assignment (``solver='device'``) against scipy, the reference.

An assignment is compared by its cost (computed in float64 from the same float32 matrix):
ties may be broken differently, optimality may not. Where the optimum is unique the pairs
must be scipy's, in scipy's order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from trdetr_jax import matcher


def _scipy(cost, mask):
    """Per sample: (cost of scipy's optimum on the valid columns, its pairs)."""
    out = []
    for c, m in zip(cost.astype(np.float64), mask):
        cols = np.flatnonzero(m > 0.5)
        if cols.size == 0:
            out.append((0.0, []))
            continue
        r, s = scipy.optimize.linear_sum_assignment(c[:, cols])
        out.append((c[r, cols[s]].sum(), list(zip(r, cols[s]))))
    return out


_device = jax.jit(lambda c, m: matcher.assign(c[None], m, solver="device"))


def _check(cost, mask, *, rtol=1e-6):
    pred, tgt, valid = (np.asarray(x[0]) for x in _device(jnp.asarray(cost), jnp.asarray(mask)))
    ref = _scipy(cost, mask)
    n_ties = 0
    for b, (ref_cost, ref_pairs) in enumerate(ref):
        k = int(valid[b].sum())
        assert k == len(ref_pairs), (b, k, len(ref_pairs))
        assert np.all(valid[b, :k] == 1) and np.all(valid[b, k:] == 0)
        pairs = list(zip(pred[b, :k], tgt[b, :k]))
        assert [p for p, _ in pairs] == sorted(p for p, _ in pairs)  # scipy's query order
        assert len({p for p, _ in pairs}) == k and len({t for _, t in pairs}) == k
        assert all(mask[b, t] > 0.5 for _, t in pairs)
        c = cost[b].astype(np.float64)
        got = sum(c[p, t] for p, t in pairs)
        scale = np.abs(c[:, mask[b] > 0.5]).max(initial=1.0) * max(k, 1)
        assert abs(got - ref_cost) <= rtol * scale, (b, got, ref_cost)
        if pairs != [(int(p), int(t)) for p, t in ref_pairs]:
            n_ties += 1
    return n_ties


def _masks(rng, n, width, min_valid=0):
    counts = rng.integers(min_valid, width + 1, size=n)
    mask = (np.arange(width)[None] < counts[:, None]).astype(np.float32)
    # Valid columns anywhere, not only first (the matcher must not assume a prefix).
    return np.take_along_axis(mask, rng.permuted(np.tile(np.arange(width), (n, 1)), axis=1), 1)


@pytest.mark.parametrize("nq,width", [(10, 5), (3, 5)])
def test_random_costs_are_optimal_and_scipys_pairs(nq, width):
    rng = np.random.default_rng(0)
    n = 4000
    cost = rng.normal(size=(n, nq, width)).astype(np.float32)
    # Continuous costs: the optimum is unique (up to float32 near-ties, which are rare).
    assert _check(cost, _masks(rng, n, width)) <= n // 1000


@pytest.mark.parametrize("nq,width", [(10, 5), (3, 5)])
def test_adversarial_costs(nq, width):
    rng = np.random.default_rng(1)
    n = 1000
    cases = {
        "ties": rng.integers(0, 3, size=(n, nq, width)).astype(np.float32),
        "all_equal": np.full((n, nq, width), 0.25, np.float32),
        "duplicated_rows": np.repeat(rng.normal(size=(n, 1, width)), nq, 1).astype(np.float32),
        "huge": (rng.normal(size=(n, nq, width)) * 1e6).astype(np.float32),
        "tiny": (rng.normal(size=(n, nq, width)) * 1e-6).astype(np.float32),
        "mixed_scale": (
            rng.normal(size=(n, nq, width)) * 10.0 ** rng.integers(-3, 4, (n, 1, 1))
        ).astype(np.float32),
    }
    for cost in cases.values():
        # Ties: an equal cost is all that can be asked (relative to the costs' scale).
        _check(cost, _masks(rng, n, width))


def test_all_padding_gives_no_pairs():
    cost = np.ones((3, 10, 5), np.float32)
    mask = np.zeros((3, 5), np.float32)
    pred, tgt, valid = (np.asarray(x[0]) for x in _device(cost, mask))
    assert valid.sum() == 0 and pred.sum() == 0 and tgt.sum() == 0


def test_non_finite_costs_sanitised_like_the_host():
    rng = np.random.default_rng(2)
    cost = rng.normal(size=(200, 10, 5)).astype(np.float32)
    flat = cost.reshape(-1)
    idx = rng.choice(flat.size, size=300, replace=False)
    flat[idx[:100]], flat[idx[100:200]], flat[idx[200:]] = np.nan, np.inf, -np.inf
    mask = _masks(rng, 200, 5)
    host = matcher._assign_host(cost, mask)
    dev = [np.asarray(x[0]) for x in _device(cost, mask)]
    for h, d in zip(host, dev):
        np.testing.assert_array_equal(h, d)


def test_fixture_matching_indices(reference_dir):
    for case in ("qvh_video_s0", "small_qvh_f64"):
        z = np.load(reference_dir / case / "matching.npz")
        for layer in ("final", "aux0"):
            b = 0
            while f"{layer}_cost_{b}" in z.files:
                c = z[f"{layer}_cost_{b}"].astype(np.float32)  # [nq, n_windows]
                nq, nw = c.shape
                cost = np.zeros((1, nq, 5), np.float32)
                cost[0, :, :nw] = c
                mask = (np.arange(5) < nw).astype(np.float32)[None]
                pred, tgt, valid = (np.asarray(x[0]) for x in _device(cost, mask))
                k = int(valid.sum())
                np.testing.assert_array_equal(pred[0, :k], z[f"{layer}_pred_idx_{b}"])
                np.testing.assert_array_equal(tgt[0, :k], z[f"{layer}_tgt_idx_{b}"])
                b += 1
            assert b > 0


def test_unknown_solver_is_an_error():
    with pytest.raises(ValueError, match=r"solver must be one of \('scipy', 'device'\)"):
        matcher.assign(jnp.zeros((1, 1, 2, 2)), jnp.ones((1, 2)), solver="gpu")


@pytest.mark.slow  # slow: the fast suite stays under 10 minutes on 2 cores; CI runs -m slow too
def test_train_objective_same_with_either_solver():
    """The loss and its gradient through ``config.train.matcher='device'`` equal scipy's."""
    from test_objective import _batch, _config

    from trdetr_jax import objective
    from trdetr_jax.model import TRDETR, model_inputs, model_kwargs_from_config

    config = _config()
    model = TRDETR(**model_kwargs_from_config(config))
    batch = _batch()
    params = jax.jit(lambda k: model.init(k, **model_inputs(batch), train=False))(
        jax.random.key(0)
    )["params"]
    found = {}
    for solver in ("scipy", "device"):
        config.train.matcher = solver
        loss_fn = objective.make_loss_fn(config)
        fn = jax.jit(
            jax.value_and_grad(lambda p, b: loss_fn(p, model, b, train=False)[0])  # noqa: B023
        )
        found[solver] = fn(params, batch)
    (loss_s, grad_s), (loss_d, grad_d) = found["scipy"], found["device"]
    assert float(loss_s) == float(loss_d)
    jax.tree.map(np.testing.assert_array_equal, grad_s, grad_d)
    config.train.matcher = "hungarian"
    with pytest.raises(ValueError, match=r"config.train.matcher: expected one of scipy, device"):
        objective.make_loss_fn(config)
