"""Optimiser: one step against the fixtures, clipping, schedule, frozen parameters."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from trdetr_jax import optim


@pytest.mark.parametrize("case", ["qvh_video_s0", "small_qvh_f64", "small_tvsum"])
def test_one_step_matches_fixture(reference_dir, case):
    d = reference_dir / case
    params, grads, step = (np.load(d / f) for f in ("params.npz", "grads.npz", "step.npz"))
    info = json.loads((d / "losses.json").read_text())
    x64 = params[next(iter(params))].dtype == np.float64
    with jax.enable_x64(x64):
        tx = optim.adamw(info["optimizer"]["lr"], info["optimizer"]["weight_decay"])
        p = {k: jnp.asarray(params[k]) for k in grads}
        g = {
            k: jnp.asarray(grads[k]) * jnp.asarray(info["grad_clip_coef"], grads[k].dtype)
            for k in grads
        }
        updates, _ = tx.update(g, tx.init(p), p)
        new = {k: np.asarray(v) for k, v in optax.apply_updates(p, updates).items()}
    for k in step:
        if k not in grads:  # grad None: torch skips the parameter
            np.testing.assert_array_equal(step[k], params[k])
            assert optim.official_key_is_frozen(k, use_matcher=case != "small_tvsum"), k
            continue
        atol, rtol = (1e-12, 1e-15) if x64 else (1e-8, 5e-7)
        err = np.abs(new[k] - step[k])
        assert np.all(err <= atol + rtol * np.abs(step[k])), (k, err.max())


def test_clip_matches_torch():
    rng = np.random.default_rng(0)
    grads = {
        "a": rng.normal(size=(3, 4)).astype(np.float32),
        "b": rng.normal(size=5).astype(np.float32),
    }
    tensors = [torch.nn.Parameter(torch.zeros(v.shape)) for v in grads.values()]
    for t, v in zip(tensors, grads.values()):
        t.grad = torch.tensor(v)
    torch.nn.utils.clip_grad_norm_(tensors, 0.1)
    clipped, _ = optim.clip_by_global_norm(0.1).update(grads, optax.EmptyState())
    for t, k in zip(tensors, grads):
        np.testing.assert_allclose(clipped[k], t.grad.numpy(), rtol=1e-6)
    small = {"a": np.full(3, 1e-3, np.float32)}  # below the limit: untouched
    np.testing.assert_array_equal(
        optim.clip_by_global_norm(0.1).update(small, None)[0]["a"], small["a"]
    )


def test_adamw_three_steps_match_torch():
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=(4, 3)).astype(np.float32)
    gs = [rng.normal(size=(4, 3)).astype(np.float32) * s for s in (1.0, 1e-3, 10.0)]
    t = torch.nn.Parameter(torch.tensor(p0))
    opt = torch.optim.AdamW([t], lr=1e-3, weight_decay=1e-4)
    tx = optim.adamw(1e-3, 1e-4)
    p, state = jnp.asarray(p0), None
    state = tx.init(p)
    for g in gs:
        t.grad = torch.tensor(g)
        opt.step()
        u, state = tx.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, u)
    np.testing.assert_allclose(p, t.detach().numpy(), atol=1e-8, rtol=5e-7)


def test_step_lr_schedule():
    sched = optim.step_lr_schedule(1e-4, lr_drop_epochs=2, gamma=0.1, steps_per_epoch=3)
    np.testing.assert_allclose(
        [sched(s) for s in (0, 5, 6, 11, 12)], [1e-4, 1e-4, 1e-5, 1e-5, 1e-6], rtol=1e-6
    )


def test_frozen_parameters_get_no_update_and_no_decay():
    params = {"txt_position_embed": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(2)}}
    frozen = {"txt_position_embed": {"w": True}, "head": {"w": False}}
    tx = optim.make_optimizer(1e-2, weight_decay=0.1, grad_clip=0.1, frozen=frozen)
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert np.all(np.asarray(updates["txt_position_embed"]["w"]) == 0)
    assert np.all(np.asarray(updates["head"]["w"]) < 0)  # decoupled decay only


def test_frozen_mask_from_official_keys():
    def to_sd(tree):  # a stand-in porting table: one split tensor, one transposed
        return {
            "txt_position_embed.weight": np.asarray(tree["tpe"]["kernel"]).T,
            "transformer.decoder.layers.0.w": np.concatenate([tree["dec"]["a"], tree["dec"]["b"]]),
            "span_embed.bias": np.asarray(tree["span"]),
        }

    params = {
        "tpe": {"kernel": np.zeros((2, 3))},
        "dec": {"a": np.zeros(2), "b": np.zeros(2)},
        "span": np.zeros(2),
    }
    qvh = optim.frozen_mask(params, to_sd, lambda k: optim.official_key_is_frozen(k))
    assert qvh == {"tpe": {"kernel": True}, "dec": {"a": False, "b": False}, "span": False}
    tv = optim.frozen_mask(
        params, to_sd, lambda k: optim.official_key_is_frozen(k, use_matcher=False)
    )
    assert tv == {"tpe": {"kernel": True}, "dec": {"a": True, "b": True}, "span": True}
