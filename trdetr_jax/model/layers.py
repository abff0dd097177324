"""Torch-compatible building blocks: Dense with PyTorch's default init, LayerNorm, PReLU, MLP.

Why a module of its own: every other model file needs the same three primitives with the
numerics of the official implementation (LayerNorm eps 1e-5 with a two-pass variance,
PReLU with one learnable scalar) and the same initialisers, so that a model trained from
scratch here starts from the distribution the official code starts from.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from trdetr_jax.precision import at_least_f32, dense_dot_general

Dtype = Any


def torch_uniform(fan_in: int) -> nn.initializers.Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default Linear/Conv1d weight and bias init."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# Xavier-uniform on a (in, out) kernel (the official transformer re-initialises every >= 2-D
# parameter with it).
xavier_uniform = nn.initializers.xavier_uniform()
# Xavier-uniform of one third of a packed [q; k; v] (3d, d) in-projection: bound sqrt(6 / 4d).
packed_qkv_xavier = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")


def torch_dense(
    features: int,
    in_features: int,
    *,
    name: str,
    dtype: Dtype | None,
    param_dtype: Dtype,
    kernel_init: nn.initializers.Initializer | None = None,
    zero_bias: bool = False,
) -> nn.Dense:
    """A Dense layer initialised like ``torch.nn.Linear(in_features, features)``.

    ``kernel_init`` overrides the default kaiming-uniform(a=sqrt(5)) weight init (e.g. Xavier for
    transformer weights); ``zero_bias`` gives a zero bias (attention projections, box head).
    """
    return nn.Dense(
        features,
        name=name,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=kernel_init or torch_uniform(in_features),
        bias_init=nn.initializers.zeros if zero_bias else torch_uniform(in_features),
        dot_general=dense_dot_general,
    )


def layer_norm(*, name: str, dtype: Dtype | None, param_dtype: Dtype) -> nn.LayerNorm:
    """``torch.nn.LayerNorm`` numerics: eps 1e-5, variance as mean((x - mean)^2)."""
    return nn.LayerNorm(
        epsilon=1e-5, use_fast_variance=False, name=name, dtype=dtype, param_dtype=param_dtype
    )


class PReLU(nn.Module):
    """``torch.nn.PReLU()``: one learnable slope shared by all channels (init 0.25)."""

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        alpha = self.param("alpha", nn.initializers.constant(0.25), (), self.param_dtype)
        # x > 0 (not >=): at exactly 0 the slope is alpha, as in torch's backward.
        return jnp.where(x > 0, x, alpha.astype(x.dtype) * x)


class MLP(nn.Module):
    """Dense layers ``layer_0 .. layer_{n-1}`` with ReLU between them (none after the last).

    ``xavier``: Xavier-uniform kernels (MLPs inside the official transformer);
    ``zero_last_bias``: zero bias on the last layer (the decoder's box-refinement head).
    """

    hidden_dim: int
    output_dim: int
    num_layers: int
    xavier: bool = False
    zero_last_bias: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_dims = [x.shape[-1]] + [self.hidden_dim] * (self.num_layers - 1)
        out_dims = [self.hidden_dim] * (self.num_layers - 1) + [self.output_dim]
        for i, (n_in, n_out) in enumerate(zip(in_dims, out_dims)):
            last = i == self.num_layers - 1
            x = torch_dense(
                n_out,
                n_in,
                name=f"layer_{i}",
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=xavier_uniform if self.xavier else None,
                zero_bias=last and self.zero_last_bias,
            )(x)
            if not last:
                x = nn.relu(x)
        return x


def masked_softmax(logits: jax.Array, valid: jax.Array, axis: int = -1) -> jax.Array:
    """Softmax over the ``valid`` entries only (others get 0), at least float32.

    A row with no valid entry gives all zeros (not NaN), e.g. a padding example that fills
    the last evaluation batch.
    """
    logits = at_least_f32(logits)
    w = jax.nn.softmax(jnp.where(valid, logits, jnp.finfo(logits.dtype).min), axis=axis)
    return w * valid
