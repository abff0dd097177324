"""Reading official weights: a ``.ckpt`` (torch's restricted unpickler) or an ``.npz``."""

from __future__ import annotations

import argparse
import os
import pathlib
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

from trdetr_jax.official.keys import as_numpy


def load_checkpoint(
    path: str | os.PathLike, *, trust_pickle: bool = False
) -> tuple[dict[str, np.ndarray], Any]:
    """Read an official ``.ckpt`` (needs torch) or an ``.npz`` of state_dict arrays.

    Returns (state_dict of numpy arrays, options or None). A ``.ckpt`` holds
    ``{'model': state_dict, 'opt': argparse.Namespace, ...}``; it is read with torch's
    restricted unpickler (tensors, containers, ``argparse.Namespace``). ``trust_pickle``
    allows arbitrary pickled objects: only for files from a trusted source.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".npz":
        with np.load(path) as z:
            return {k: z[k] for k in z.files}, None
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"reading {path} needs PyTorch (pip install 'trdetr_jax[torch]'), "
            "or convert the state_dict to an .npz of arrays first"
        ) from err
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise ValueError(
                f"{path} holds objects the restricted unpickler refuses ({err}); if the file "
                "comes from a trusted source, pass --trust-pickle"
            ) from err
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(ckpt, Mapping) and "model" in ckpt:
        sd, opt = ckpt["model"], ckpt.get("opt")
    elif isinstance(ckpt, Mapping):
        sd, opt = ckpt, None
    else:
        raise ValueError(f"{path}: expected a dict with a 'model' state_dict, got {type(ckpt)}")
    return {k: as_numpy(v) for k, v in sd.items()}, opt
