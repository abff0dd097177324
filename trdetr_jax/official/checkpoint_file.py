"""Reading official weights: a ``.ckpt`` (torch's restricted unpickler) or an ``.npz``.

torch is imported here only, and only when a ``.ckpt`` is read. A file that cannot be read
raises :class:`CheckpointFileError`, one line naming the file and what is wrong with it.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import pickle
import pickletools
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from trdetr_jax.official.keys import as_numpy


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and the problem."""


def load_checkpoint(
    path: str | os.PathLike, *, trust_pickle: bool = False
) -> tuple[dict[str, np.ndarray], Any]:
    """Read an official ``.ckpt`` (needs torch) or an ``.npz`` of state_dict arrays.

    Returns (state_dict of numpy arrays, options or None). A ``.ckpt`` holds
    ``{'model': state_dict, 'opt': argparse.Namespace, ...}`` (official) or
    ``{'model', 'optimizer', 'lr_scheduler', 'epoch', 'opt': easydict.EasyDict}``
    (lighthouse; the options come back as a dict, see
    :mod:`trdetr_jax.official.lighthouse`); it is read with torch's restricted unpickler
    (tensors, containers, ``argparse.Namespace``, lighthouse's options). ``trust_pickle``
    allows arbitrary pickled objects, which lets the file run code: only for files from a
    trusted source, and only for files that parse as a pickle (a damaged file is an error
    either way).
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise CheckpointFileError(f"{path}: a folder, expected a .ckpt or .npz file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".npz":
        return load_npz_state_dict(path), None
    ckpt = _torch_load(path, trust_pickle)
    if isinstance(ckpt, Mapping) and "model" in ckpt:
        sd, opt = ckpt["model"], ckpt.get("opt")
    elif isinstance(ckpt, Mapping):
        sd, opt = ckpt, None
    else:
        raise CheckpointFileError(
            f"{path}: expected a dict with a 'model' state_dict, found {type(ckpt).__name__}"
        )
    if not isinstance(sd, Mapping):
        raise CheckpointFileError(
            f"{path}: expected 'model' to be a state_dict (a dict of tensors), "
            f"found {type(sd).__name__}"
        )
    return {str(k): as_numpy(v) for k, v in sd.items()}, opt


class LighthouseOptions:
    """Stands in for ``easydict.EasyDict`` (lighthouse's options) when unpickling: the
    restricted unpickler builds a plain ``OrderedDict`` of the options, no easydict code runs
    and easydict need not be installed."""

    def __new__(cls, *args):
        return OrderedDict()


def load_npz_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (key -> array); never unpickles anything."""
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as err:  # not a zip / npy, or damaged: zip, zlib, format and EOF errors
        raise CheckpointFileError(
            f"{path}: not a readable .npz of state_dict arrays ({_reason(err)})"
        ) from err
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise CheckpointFileError(
            f"{path}: expected an .npz archive of named state_dict arrays, found one .npy array"
        )
    try:
        with z:
            return {k: z[k] for k in z.files}
    except Exception as err:  # a damaged member
        raise CheckpointFileError(
            f"{path}: not a readable .npz of state_dict arrays ({_reason(err)})"
        ) from err


def _torch_load(path: pathlib.Path, trust_pickle: bool) -> Any:
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"reading {path} needs PyTorch (pip install 'trdetr_jax[torch]'), "
            "or convert the state_dict to an .npz of arrays first"
        ) from err
    try:
        allowed = [argparse.Namespace, (LighthouseOptions, "easydict.EasyDict")]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the restricted unpickler runs no code: any failure is the file's
        # Only a file that parses as a pickle may be a candidate for --trust-pickle.
        problem = _pickle_problem(path, torch.serialization.MAGIC_NUMBER)
        if problem is not None or not isinstance(err, pickle.UnpicklingError):
            raise CheckpointFileError(
                f"{path}: not a readable PyTorch checkpoint ({problem or _torch_reason(err)})"
            ) from err
        refused = _torch_reason(err)
    if not trust_pickle:
        raise CheckpointFileError(
            f"{path}: the restricted unpickler refuses what it holds ({refused}); if the file "
            "comes from a trusted source, --trust-pickle (trust_pickle=True) loads it and lets "
            "it run code"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointFileError(
            f"{path}: cannot rebuild the pickled objects ({_reason(err)})"
        ) from err


def _torch_reason(err: BaseException) -> str:
    """The part of a torch.load error that says what is wrong, on one line."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = " ".join(text.split(marker, 1)[1].split())
        detail = detail.split(". ", 1)[0].split(" Check the documentation", 1)[0]
        return detail.rstrip(".") or _reason(err)
    return _reason(err)


def _pickle_problem(path: pathlib.Path, legacy_magic: int) -> str | None:
    """Why ``path`` is not a well-formed torch pickle, found by parsing its opcodes without
    running any of them; None if it is well formed."""
    try:
        with open(path, "rb") as f:
            zip_header = f.read(4) == b"PK\x03\x04"
        if zip_header and not zipfile.is_zipfile(path):
            return "a damaged zip archive: its central directory is missing (truncated file?)"
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
                if not names:
                    return "a zip archive without data.pkl"
                _parse_one_pickle(io.BytesIO(zf.read(names[0])))
            return None
        with open(path, "rb") as f:
            if legacy_magic not in _parse_one_pickle(f):
                return "neither a zip archive nor a legacy torch file"
            for _ in range(3):  # protocol version, system info, the objects
                _parse_one_pickle(f)
    except Exception as err:
        return f"damaged pickle: {_reason(err)}"
    return None


def _parse_one_pickle(f) -> list[Any]:
    """The opcode arguments of the next pickle in ``f`` (up to its STOP); raises if damaged."""
    return [arg for _, arg, _ in pickletools.genops(f)]


def _reason(err: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line errors."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
