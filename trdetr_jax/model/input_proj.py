"""Input projections of video (+ audio) and text features (paper eq. 1-2)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from trdetr_jax.model.layers import Dtype, layer_norm, torch_dense


class InputProjection(nn.Module):
    """``num_layers`` blocks LayerNorm -> Dropout -> Dense (-> ReLU), named ``layer_i/{norm,dense}``.

    ReLU follows every block except block ``num_layers - 1`` (the official ``relu_args``
    pattern: for 2 blocks, ReLU only after the first).
    """

    features: int
    num_layers: int = 2
    dropout_rate: float = 0.5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if not 1 <= self.num_layers <= 3:
            raise ValueError(f"n_input_proj must be 1, 2 or 3, got {self.num_layers}")
        for i in range(self.num_layers):
            block = f"layer_{i}"
            in_features = x.shape[-1]
            x = layer_norm(name=f"{block}_norm", dtype=self.dtype, param_dtype=self.param_dtype)(x)
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
            x = torch_dense(
                self.features,
                in_features,
                name=f"{block}_dense",
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )(x)
            if i != self.num_layers - 1:
                x = nn.relu(x)
        return x  # [B, L, features]
