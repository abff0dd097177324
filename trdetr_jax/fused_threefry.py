"""JAX's threefry2x32 stream, drawn as one fused elementwise kernel.

On CPU, JAX lowers the threefry2x32 hash as a *rolled* loop (five passes of a while loop
over the whole array, none fused with the consumer), which makes the dropout masks of a
QVHighlights step cost more than the rest of the forward pass (experiments/PROFILE.md,
section 2.1). :data:`IMPL` is a PRNG implementation with threefry2x32's key layout, seeding,
splitting and folding (JAX's own functions) whose ``random_bits`` computes the same hash
(Salmon et al. 2011, Threefry-2x32 with 20 rounds, the key schedule and rotations JAX uses)
written out round by round in ``jax.numpy``, so XLA fuses it into the ops that use the bits.

The bits are identical to ``jax.random.bits`` of the threefry2x32 key with the same key data
(JAX's partitionable mode, its default: element ``i`` of the row-major order hashes the
counter ``(0, i)``); ``tests/test_dropout_prng.py`` checks this bit for bit. Where the
fused path would differ (``jax_threefry_partitionable`` off, 64-bit draws, 2**32 elements or
more) it hands over to JAX's own ``random_bits``.

:func:`same_stream` re-wraps a threefry2x32 key with this implementation: every draw from
it (``jax.random.bernoulli`` in ``flax.linen.Dropout``, fold-ins in ``make_rng``) gives the
values the original key gives.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import random as jex_random

_BASE = jex_random.threefry_prng_impl
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)  # the Threefish key-schedule constant


def _rotl(x, r: int):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def hash_2x32(k1, k2, x1, x2):
    """Threefry-2x32 (20 rounds) of the counters ``(x1, x2)`` under the key ``(k1, k2)``,
    all uint32, broadcast together; returns the two output words."""
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1 = x1 + ks[0]
    x2 = x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = _rotl(x2, r) ^ x1
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _row_major_index(shape: tuple[int, ...]):
    """uint32 array of ``shape`` holding each element's row-major position (size < 2**32);
    built from per-dimension iotas so that XLA can partition it like the array."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for dim in range(len(shape) - 1, -1, -1):
        index = index + lax.broadcasted_iota(jnp.uint32, shape, dim) * np.uint32(stride)
        stride *= shape[dim]
    return index


def _random_bits(key_data, bit_width: int, shape):
    shape = tuple(int(d) for d in shape)
    if (
        not jax.config.jax_threefry_partitionable
        or bit_width not in (8, 16, 32)
        or math.prod(shape) >= 2**32
        or not shape
    ):
        return _BASE.random_bits(key_data, bit_width, shape)
    bits1, bits2 = hash_2x32(key_data[0], key_data[1], np.uint32(0), _row_major_index(shape))
    bits = bits1 ^ bits2
    if bit_width == 32:
        return bits
    return lax.convert_element_type(bits, {8: jnp.uint8, 16: jnp.uint16}[bit_width])


IMPL = jex_random.define_prng_impl(
    key_shape=_BASE.key_shape,
    seed=_BASE.seed,
    split=_BASE.split,
    random_bits=_random_bits,
    fold_in=_BASE.fold_in,
    name="threefry2x32_fused",
    tag="fryf",
)


def same_stream(key: jax.Array) -> jax.Array:
    """``key`` (a threefry2x32 key, typed or raw uint32[2]) as a key of :data:`IMPL`: the
    same key data, so the same draws."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return jax.random.wrap_key_data(key, impl=IMPL)
