"""The post-norm self-attention encoder over the video clips (used once or twice, see HD2MR)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from trdetr_jax.model.attention import TorchMultiheadAttention
from trdetr_jax.model.layers import Dtype, PReLU, layer_norm, torch_dense, xavier_uniform


def feed_forward(module: nn.Module, x, dim_feedforward: int, dropout_rate: float, *, train: bool):
    """FFN of a transformer layer, creating ``linear1``, ``activation``, ``linear2`` in ``module``.

    Must be called from inside ``module``'s compact ``__call__``.
    """
    d = x.shape[-1]
    kw = dict(dtype=module.dtype, param_dtype=module.param_dtype, kernel_init=xavier_uniform)
    h = torch_dense(dim_feedforward, d, name="linear1", **kw)(x)
    h = PReLU(param_dtype=module.param_dtype, name="activation")(h)
    h = nn.Dropout(dropout_rate)(h, deterministic=not train)
    return torch_dense(d, dim_feedforward, name="linear2", **kw)(h)


class EncoderLayer(nn.Module):
    """norm1(x + SA(q=k=x+pos, v=x)); norm2(x + FFN(x)) -- post-norm, PReLU FFN."""

    nheads: int
    dim_feedforward: int
    dropout_rate: float = 0.1
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, pos, mask, *, train: bool) -> jax.Array:
        """x, pos [B, L, d]; mask [B, L] (1 = valid) -> [B, L, d]."""
        norm_kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        valid = (mask > 0)[:, None, None, :]  # [B, 1, 1, L] key padding
        qk = x + pos
        a = TorchMultiheadAttention(
            self.nheads, self.dropout_rate, self.dtype, self.param_dtype, name="self_attn"
        )(qk, qk, x, valid, train=train)
        x = x + nn.Dropout(self.dropout_rate)(a, deterministic=not train)
        x = layer_norm(name="norm1", **norm_kw)(x)
        f = feed_forward(self, x, self.dim_feedforward, self.dropout_rate, train=train)
        x = x + nn.Dropout(self.dropout_rate)(f, deterministic=not train)
        return layer_norm(name="norm2", **norm_kw)(x)


class Encoder(nn.Module):
    """``num_layers`` EncoderLayers ``layer_i``; returns (output, per-layer outputs)."""

    num_layers: int
    nheads: int
    dim_feedforward: int
    dropout_rate: float = 0.1
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, pos, mask, *, train: bool):
        outs = []
        for i in range(self.num_layers):
            x = EncoderLayer(
                self.nheads,
                self.dim_feedforward,
                self.dropout_rate,
                self.dtype,
                self.param_dtype,
                name=f"layer_{i}",
            )(x, pos, mask, train=train)
            outs.append(x)
        return x, outs
