"""TR-DETR model (flax.linen).

from trdetr_jax.model import TRDETR, model_kwargs_from_config, collect_intermediates
model = TRDETR(**model_kwargs_from_config(config))
out, state = model.apply({'params': p}, src_txt, src_txt_mask, src_vid, src_vid_mask,
                         train=False, mutable=['intermediates'])
inter = collect_intermediates(state)   # {'inter_memory': np.ndarray, ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from trdetr_jax.model.trdetr import COMPAT_MODES, TRDETR

__all__ = [
    "MODEL_INPUT_KEYS",
    "model_inputs",
    "TRDETR",
    "COMPAT_MODES",
    "model_kwargs_from_config",
    "collect_intermediates",
    "flatten_outputs",
]

# The arguments of TRDETR.__call__ a batch carries; every other batch key is a training
# target or bookkeeping (example_mask).
MODEL_INPUT_KEYS = (
    "src_txt",
    "src_txt_mask",
    "src_vid",
    "src_vid_mask",
    "src_aud",
    "official_vid_len",
    "official_txt_len",
    "official_batch_size",
)


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The forward-pass arguments of ``TRDETR.apply`` found in ``batch`` (absent or None
    ones left out)."""
    return {k: batch[k] for k in MODEL_INPUT_KEYS if batch.get(k) is not None}


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def model_kwargs_from_config(config) -> dict[str, Any]:
    """TRDETR keyword arguments from the full ml_collections config (``model`` + ``data``)."""
    m = config.model
    if m.compat not in COMPAT_MODES:
        raise ValueError(f"config.model.compat must be one of {COMPAT_MODES}, got {m.compat!r}")
    if m.dtype not in _DTYPES:
        raise ValueError(f"config.model.dtype must be one of {sorted(_DTYPES)}, got {m.dtype!r}")
    return dict(
        hidden_dim=int(m.hidden_dim),
        nheads=int(m.nheads),
        enc_layers=int(m.enc_layers),
        dec_layers=int(m.dec_layers),
        dim_feedforward=int(m.dim_feedforward),
        num_queries=int(m.num_queries),
        n_input_proj=int(m.n_input_proj),
        input_dropout=float(m.input_dropout),
        dropout=float(m.dropout),
        max_q_l=int(config.data.max_q_l),
        clip_length=float(config.data.clip_length),
        aux_loss=bool(m.aux_loss),
        use_vfr=bool(m.use_vfr),
        use_hd2mr=bool(m.use_hd2mr),
        use_mr2hd=bool(m.use_mr2hd),
        compat=str(m.compat),
        dtype=_DTYPES[m.dtype],
    )


def collect_intermediates(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flatten the sown 'intermediates' collection into {fixture name: numpy array}.

    ``state`` is the mutated-variables dict returned by ``apply(..., mutable=['intermediates'])``
    (or its 'intermediates' entry). Names are unique across modules; the last sown value wins.
    """
    tree = state.get("intermediates", state)
    flat: dict[str, np.ndarray] = {}

    def walk(node):
        for key, value in node.items():
            if isinstance(value, tuple) and str(key).startswith("inter_"):
                flat[str(key)] = np.asarray(value[-1])
            elif isinstance(value, Mapping):
                walk(value)

    walk(tree)
    return flat


def flatten_outputs(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Model outputs as a flat dict of numpy arrays, ``aux_outputs[i][k]`` as ``aux_{i}_{k}``
    (the reference fixtures' ``outputs.npz`` naming)."""
    flat = {k: np.asarray(v) for k, v in outputs.items() if k != "aux_outputs"}
    for i, aux in enumerate(outputs.get("aux_outputs", ())):
        for k, v in aux.items():
            flat[f"aux_{i}_{k}"] = np.asarray(v)
    return flat
