"""Numerics policy: the precision of float32 matrix products in every compiled step, and
the dtypes that stay at least float32 under a bfloat16 compute dtype.

``config.model.matmul_precision``:

* ``'highest'`` (default): true float32 products, as the official code computes them;
* ``'tensorfloat32'``: XLA may use TF32 tensor cores on recent NVIDIA GPUs (inputs cut to a
  10-bit mantissa, ~1e-3 relative error per product);
* ``'bfloat16'``: inputs rounded to bfloat16 (8-bit mantissa), float32 accumulation.

On CPU all three compute the same float32 products. JAX reads the setting when a jitted
function is traced, so :func:`with_matmul_precision` enters it around every call (and
``.lower``) of a jitted step; jit keeps one compiled version per setting.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

# Project name -> JAX's jax_default_matmul_precision value (a precision level or a dot
# algorithm preset).
MATMUL_PRECISIONS = {
    "highest": "highest",
    "tensorfloat32": "tensorfloat32",
    "bfloat16": "BF16_BF16_F32",
}
DEFAULT = "highest"


def check_matmul_precision(value: Any) -> str:
    """``value`` if it is one of :data:`MATMUL_PRECISIONS`, else a one-line ValueError."""
    if value not in MATMUL_PRECISIONS:
        raise ValueError(
            f"config.model.matmul_precision: expected one of {', '.join(MATMUL_PRECISIONS)}, "
            f"found {value!r}"
        )
    return value


def of_config(config) -> str:
    """``config.model.matmul_precision`` (validated); the default when the field is absent."""
    model = config.get("model") if hasattr(config, "get") else None
    value = model.get("matmul_precision", DEFAULT) if model is not None else DEFAULT
    return check_matmul_precision(value)


def matmul_precision(value: str = DEFAULT):
    """Context manager: float32 matmuls traced inside it use ``value``."""
    return jax.default_matmul_precision(MATMUL_PRECISIONS[check_matmul_precision(value)])


class _WithPrecision:
    """A jitted function whose calls and ``lower`` run under a matmul precision."""

    def __init__(self, fn, value: str):
        self._fn, self._value = fn, check_matmul_precision(value)
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        with matmul_precision(self._value):
            return self._fn(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with matmul_precision(self._value):
            return self._fn.lower(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._fn, name)


def with_matmul_precision(fn, value: str = DEFAULT):
    """``fn`` (a jitted function) traced, lowered and run under matmul precision ``value``."""
    return _WithPrecision(fn, value)


def at_least_f32(x):
    """``x`` in float32 if it is a narrower float (bfloat16, float16); other dtypes, float64
    included, unchanged. Softmaxes, costs and losses never run below float32."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
        return x.astype(jnp.float32)
    return x
