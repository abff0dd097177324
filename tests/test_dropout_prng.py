"""The dropout masks' bit generator: a threefry4x32 key derived from the step's key."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trdetr_jax import objective


def test_dropout_key_is_a_deterministic_threefry4x32_key_of_the_step_key():
    step_key = jax.random.fold_in(jax.random.key(3), 7)
    a, b = objective.dropout_key(step_key), objective.dropout_key(step_key)
    assert str(jax.random.key_impl(a)) == "threefry4x32"
    np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))
    other = objective.dropout_key(jax.random.fold_in(jax.random.key(3), 8))
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(other))
    # a raw uint32 key is the same key as its typed form
    raw = objective.dropout_key(jax.random.key_data(step_key))
    np.testing.assert_array_equal(jax.random.key_data(raw), jax.random.key_data(a))
    # None, or a key of the implementation already: the key itself
    assert objective.dropout_key(step_key, None) is step_key
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


def test_loss_with_dropout_is_deterministic_per_key_and_draws_from_the_derived_key():
    from test_objective import _batch, _config

    from trdetr_jax.model import TRDETR, model_inputs, model_kwargs_from_config

    config = _config()
    config.model.input_dropout, config.model.dropout = 0.5, 0.1
    model = TRDETR(**model_kwargs_from_config(config))
    batch = _batch()
    params = model.init(jax.random.key(0), **model_inputs(batch), train=False)["params"]
    loss_fn = objective.make_loss_fn(config)

    @jax.jit
    def losses(key):  # the default stream, the step key's own, the derived key given as is
        def total(k, impl):
            return loss_fn(params, model, batch, train=True, dropout_rng=k, dropout_prng=impl)[0]

        default = loss_fn(params, model, batch, train=True, dropout_rng=key)[0]
        return default, total(key, None), total(objective.dropout_key(key), None)

    default, own, by_hand = map(float, losses(jax.random.key(1)))
    assert default == float(losses(jax.random.key(1))[0])
    assert default != float(losses(jax.random.key(2))[0])
    assert default == by_hand and default != own
