"""The dropout masks' bit generator: the step key's own stream drawn by the fused
threefry2x32 kernel (bit for bit JAX's), or a key of another generator derived from it."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trdetr_jax import fused_threefry, objective


def test_dropout_key_is_a_deterministic_threefry4x32_key_of_the_step_key():
    step_key = jax.random.fold_in(jax.random.key(3), 7)
    a, b = (objective.dropout_key(step_key, "threefry4x32") for _ in range(2))
    assert str(jax.random.key_impl(a)) == "threefry4x32"
    np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))
    other = objective.dropout_key(jax.random.fold_in(jax.random.key(3), 8), "threefry4x32")
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(other))
    # a raw uint32 key is the same key as its typed form
    raw = objective.dropout_key(jax.random.key_data(step_key), "threefry4x32")
    np.testing.assert_array_equal(jax.random.key_data(raw), jax.random.key_data(a))
    # None, or a key of the implementation already: the key itself (a threefry2x32 key as
    # the fused implementation of the same stream, with the same key data)
    own = objective.dropout_key(step_key, None)
    assert jax.random.key_impl(own) == fused_threefry.IMPL
    np.testing.assert_array_equal(jax.random.key_data(own), jax.random.key_data(step_key))
    assert objective.dropout_key(a) is a


@pytest.mark.parametrize("rate", [0.5, 0.1])
def test_dropout_masks_from_the_derived_key_keep_the_bernoulli_rate(rate):
    key = objective.dropout_key(jax.random.key(0))
    x = jnp.ones((64, 75, 64), jnp.float32)  # 307200 draws
    y = nn.Dropout(rate).apply({}, x, deterministic=False, rngs={"dropout": key})
    kept = np.asarray(y) != 0
    n, keep = kept.size, 1.0 - rate
    assert abs(kept.mean() - keep) < 5 * np.sqrt(keep * rate / n)
    np.testing.assert_allclose(np.asarray(y)[kept], 1.0 / keep, rtol=1e-6)
    # rows are not copies of each other (the counter covers the whole array)
    assert not np.array_equal(kept[0], kept[1]) and not np.array_equal(kept[:, 0], kept[:, 1])


def test_the_objective_draws_its_dropout_masks_from_the_derived_key():
    """Traced, not compiled: the training loss's masks come from the step key's own
    generator by default, or from a key of the configured generator."""
    from test_objective import _batch, _config

    from trdetr_jax.model import TRDETR, model_inputs, model_kwargs_from_config

    config = _config(use_matcher=False)  # the masks are the point here, not the matching
    config.model.input_dropout, config.model.dropout = 0.5, 0.1
    model = TRDETR(**model_kwargs_from_config(config))
    batch = _batch()
    params = jax.eval_shape(
        lambda: model.init(jax.random.key(0), **model_inputs(batch), train=False)["params"]
    )
    loss_fn = objective.make_loss_fn(config)

    def key_types(train, **kw):
        def total(p, key):
            return loss_fn(p, model, batch, train=train, dropout_rng=key, **kw)[0]

        jaxpr = jax.make_jaxpr(total)(params, jax.random.key(1))
        return set(re.findall(r"key<(\w+)>", str(jaxpr)))

    assert key_types(True, dropout_prng="threefry4x32") == {"fry", "fry4"}  # step, masks
    assert config.train.dropout_prng == ""
    assert key_types(True) == {"fry", "fryf"}  # the default: the step key's own stream
    assert key_types(False) == {"fry"}  # no dropout: the key is not used
    # config.train.dropout_prng chooses the generator of the training loss
    config.train.dropout_prng = "philox2x32"
    loss_fn = objective.make_loss_fn(config)
    assert key_types(True) == {"fry", "phx2"}
    assert key_types(True, dropout_prng=None) == {"fry", "fryf"}


def test_an_unknown_dropout_prng_is_refused_before_the_run():
    from trdetr_jax import config as config_lib
    from trdetr_jax import errors, loop

    tcfg = config_lib.get_base_config().train
    tcfg.dropout_prng = "threefry8x32"
    with pytest.raises(errors.RunError, match=r"config.train.dropout_prng: expected ''.*"
                       r"threefry4x32.*found 'threefry8x32'"):  # fmt: skip
        loop.check_train_config(tcfg)


def test_a_generator_that_cannot_be_partitioned_is_refused_before_the_run(tmp_path):
    """JAX 0.10 cannot partition the philox generators' masks over several devices (lowering
    fails deep in the first step); the run is refused up front, naming the setting. Should a
    JAX partition them, the first assertion fails: the check is then no longer needed."""
    from _tiny_run import tiny_config

    from trdetr_jax import errors, mesh, train

    four = mesh.make_mesh(jax.devices()[:4])
    with pytest.raises(ValueError, match=r"'philox2x32' cannot draw dropout masks of a batch "
                       r"sharded over 4 devices"):  # fmt: skip
        objective.check_dropout_prng_on_mesh("philox2x32", four)
    for fine in ("", "threefry4x32", "rbg"):
        objective.check_dropout_prng_on_mesh(fine, four)
    objective.check_dropout_prng_on_mesh("philox2x32", mesh.make_mesh(jax.devices()[:1]))
    # Through the run: refused before any data is read or anything is written.
    config = tiny_config(tmp_path / "demo")
    config.train.dropout_prng = "philox4x32"
    workdir = tmp_path / "run"
    with pytest.raises(errors.RunError, match=r"'philox4x32' cannot draw .* over 4 devices"):
        train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:4])
    assert not workdir.exists() and not (tmp_path / "demo").exists()


@pytest.mark.parametrize(
    "shape", [(1,), (7,), (3, 5), (2, 3, 4, 5), (4, 75, 2818), (32, 8, 75, 75)]
)
def test_the_fused_kernel_draws_jaxs_threefry2x32_bits_bit_for_bit(shape):
    key = jax.random.fold_in(jax.random.key(shape[-1]), 11)
    fused = fused_threefry.same_stream(key)
    for dtype in (jnp.uint32, jnp.uint16, jnp.uint8):
        want = np.asarray(jax.random.bits(key, shape, dtype))
        np.testing.assert_array_equal(np.asarray(jax.jit(jax.random.bits, static_argnums=(1, 2))(
            fused, shape, dtype)), want)  # fmt: skip
    for p in (0.5, 0.9):
        np.testing.assert_array_equal(
            np.asarray(jax.random.bernoulli(fused, p, shape)),
            np.asarray(jax.random.bernoulli(key, p, shape)),
        )
    # the bits are not trivially equal: another key gives other bits
    other = fused_threefry.same_stream(jax.random.fold_in(key, 1))
    assert not np.array_equal(jax.random.bits(other, shape), jax.random.bits(key, shape))
    # seeding, splitting and folding are JAX's: the derived keys agree too
    for derived in (lambda k: jax.random.fold_in(k, 5), lambda k: jax.random.split(k, 3)):
        np.testing.assert_array_equal(
            jax.random.key_data(derived(fused)), jax.random.key_data(derived(key))
        )


def test_the_fused_kernel_is_jaxs_hash_on_raw_counters():
    """The hash itself against jax.extend's threefry_2x32 (the reference Threefry-2x32)."""
    from jax.extend import random as jex_random

    key = np.array([0x13198A2E, 0x03707344], np.uint32)
    count = np.arange(10, dtype=np.uint32)
    want = np.asarray(jex_random.threefry_2x32(key, count))  # hashes (count[:5], count[5:])
    got = fused_threefry.hash_2x32(key[0], key[1], count[:5], count[5:])
    np.testing.assert_array_equal(np.concatenate([np.asarray(g) for g in got]), want)


def test_the_fused_stream_is_the_same_when_the_batch_is_sharded():
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from trdetr_jax import mesh

    if len(jax.devices()) < 4:
        pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)")
    four = mesh.make_mesh(jax.devices()[:4])
    sharding = NamedSharding(four, P(four.axis_names))
    key = jax.random.fold_in(jax.random.key(4), 2)
    x = jax.device_put(jnp.ones((8, 75, 64), jnp.float32), sharding)

    def masked(x, k):
        return nn.Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": k})

    sharded = jax.jit(masked, in_shardings=(sharding, None), out_shardings=sharding)
    got = sharded(x, objective.dropout_key(key))
    assert len(got.sharding.device_set) == 4
    np.testing.assert_array_equal(np.asarray(got), np.asarray(masked(np.ones(x.shape), key)))


@pytest.mark.slow  # ~35 s on 2 cores; CI runs it with -m slow
def test_the_training_loss_and_outputs_equal_those_of_jaxs_own_stream(monkeypatch):
    """The fused kernel changes how the default masks are computed, not what they are: a
    train-mode forward pass gives the loss and outputs of the masks drawn through JAX's own
    threefry2x32 lowering, to float32 rounding (the masks are the same bits, test above;
    XLA fuses them into other kernels, which may round the last bit differently), while
    other masks move them by orders of magnitude more."""
    from test_objective import _batch, _config

    from trdetr_jax.model import TRDETR, model_inputs, model_kwargs_from_config

    config = _config(use_matcher=False)  # the masks are the point here, not the matching
    config.model.input_dropout, config.model.dropout = 0.5, 0.1
    model = TRDETR(**model_kwargs_from_config(config))
    batch = _batch()
    params = model.init(jax.random.key(0), **model_inputs(batch), train=False)["params"]
    loss_fn = objective.make_loss_fn(config)
    key = jax.random.fold_in(jax.random.key(1), 3)

    def make_forward():  # a new function each time: jax.jit caches traces per function
        def forward(p, k):
            total, (_, outputs) = loss_fn(p, model, batch, train=True, dropout_rng=k)
            return total, outputs["pred_logits"], outputs["pred_spans"], outputs["saliency_scores"]

        return forward

    fused_forward = make_forward()
    assert "key<fryf>" in str(jax.make_jaxpr(fused_forward)(params, key))
    fused = jax.jit(fused_forward)(params, key)
    monkeypatch.setattr(fused_threefry, "same_stream", lambda k: k)  # JAX's own lowering
    own_forward = make_forward()
    assert "key<fryf>" not in str(jax.make_jaxpr(own_forward)(params, key))
    own = jax.jit(own_forward)(params, key)
    other = jax.jit(own_forward)(params, jax.random.fold_in(key, 1))  # other masks
    for a, b, c in zip(fused, own, other, strict=True):
        a, b, c = (np.asarray(x, np.float64) for x in (a, b, c))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert np.abs(c - b).max() > 1e-3  # what a different mask does
