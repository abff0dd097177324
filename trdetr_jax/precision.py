"""Numerics policy: the precision of float32 matrix products in every compiled step, and
the dtypes that stay at least float32 under a bfloat16 compute dtype.

``config.model.matmul_precision``:

* ``'highest'`` (default): true float32 products, as the official code computes them;
* ``'tensorfloat32'``: XLA may use TF32 tensor cores on recent NVIDIA GPUs (inputs cut to a
  10-bit mantissa, ~1e-3 relative error per product);
* ``'bfloat16'``: inputs rounded to bfloat16 (8-bit mantissa), float32 accumulation. The
  model's Dense products (nearly all its FLOPs, forward and backward) take explicit bfloat16
  operands (:func:`bf16_dense`), which XLA's CPU backend runs on the bfloat16 units (AMX on
  recent Intel Xeons: 4-5x its float32 rate); the other products get JAX's dot-algorithm
  preset. Not the official numerics: an opt-in for speed.

On CPU ``'highest'`` and ``'tensorfloat32'`` compute the same float32 products. JAX reads
the setting when a jitted function is traced, so :func:`with_matmul_precision` enters it
around every call (and ``.lower``) of a jitted step; jit keeps one compiled version per
setting.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

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


def check_on_mesh(value: str, mesh: jax.sharding.Mesh) -> None:
    """Raises ValueError for ``'bfloat16'`` on a mesh of several CPU devices: there XLA's CPU
    backend (jaxlib 0.10) fails in the first step ("Algorithm not supported by the
    ElementalIrEmitter: ALG_DOT_BF16_BF16_F32"; one CPU device and GPUs are fine)."""
    n = mesh.devices.size
    if check_matmul_precision(value) == "bfloat16" and n > 1:
        if all(d.platform == "cpu" for d in mesh.devices.flat):
            raise ValueError(
                f"config.model.matmul_precision: 'bfloat16' cannot run on {n} CPU devices with "
                f"this jaxlib {jax.__version__} (XLA's CPU backend fails on its dot algorithm "
                "when the step is sharded); use one CPU device or 'highest'"
            )


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


# ------------------------------------------------------------- bfloat16 dense products


def _dense(a, b):
    """``a [..., in] @ b [in, out]`` accumulated and returned in float32."""
    return lax.dot_general(
        a, b, (((a.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )


@jax.custom_vjp
def bf16_dense(x, kernel):
    """``x @ kernel`` of float32 arrays with both rounded to bfloat16 and the products
    accumulated in float32 (the ``'bfloat16'`` precision's definition), as explicit bfloat16
    operands: XLA's CPU backend then runs them on the bfloat16 units (AMX / AVX512-BF16,
    4-5x the float32 rate on an Intel Xeon), where the dot-algorithm preset alone computes
    float32 products of rounded inputs. The backward products are bfloat16 x bfloat16 ->
    float32 as well (the gradient rounded to bfloat16, as the preset does on GPUs)."""
    return _bf16_dense_fwd(x, kernel)[0]


def _bf16_dense_fwd(x, kernel):
    xb, kb = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    return _dense(xb, kb), (xb, kb)


def _bf16_dense_bwd(res, g):
    xb, kb = res
    gb = g.astype(jnp.bfloat16)
    dx = lax.dot_general(  # [..., out] x [in, out] -> [..., in]
        gb, kb, (((gb.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32
    )
    dk = lax.dot_general(  # [N, in] x [N, out] -> [in, out]
        xb.reshape(-1, xb.shape[-1]),
        gb.reshape(-1, gb.shape[-1]),
        (((0,), (0,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    return dx, dk


bf16_dense.defvjp(_bf16_dense_fwd, _bf16_dense_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
    """``dot_general`` of the model's Dense layers: :func:`bf16_dense` for a float32 Dense
    product traced under the ``'bfloat16'`` matmul precision, ``lax.dot_general`` otherwise
    (the other precisions, other dtypes, an explicit ``precision``)."""
    if (
        jax.config.jax_default_matmul_precision == MATMUL_PRECISIONS["bfloat16"]
        and precision is None
        and not kwargs.get("preferred_element_type")
        and lhs.dtype == jnp.float32
        and rhs.dtype == jnp.float32
        and rhs.ndim == 2
        and tuple(map(tuple, dimension_numbers[0])) == ((lhs.ndim - 1,), (0,))
        and not any(dimension_numbers[1][0])
        and not any(dimension_numbers[1][1])
    ):
        return bf16_dense(lhs, rhs)
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, **kwargs)
