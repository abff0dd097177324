"""Convert an official TR-DETR checkpoint into an Orbax checkpoint of our Flax params.

    python -m trdetr_jax.official.convert --checkpoint model_best.ckpt --out DIR
    python -m trdetr_jax.official.convert --checkpoint params.npz --options opt.json --out DIR

``--checkpoint``: the official ``.ckpt`` (``torch.save({'model': state_dict, 'opt': ...})``,
needs torch), a lighthouse TR-DETR ``.ckpt`` (:mod:`trdetr_jax.official.lighthouse`) or an
``.npz`` of state_dict arrays. ``--options``: the official ``opt.json``, or
a fixture ``config.json`` (its ``"opt"`` entry is used); optional for a ``.ckpt``, which
carries its options.

Writes ``DIR/params`` (an Orbax ``StandardSave`` of the params tree, as
``trdetr_jax.predict`` loads it) and ``DIR/config.json`` (our config the options imply). The
output is assembled in a temporary sibling folder and renamed into place, so a ``DIR`` that
exists is complete; a failed conversion leaves no ``DIR`` (and an ``--overwrite`` that fails
keeps the old one).

A checkpoint whose tensors hold NaN or Inf is refused (``--allow-nonfinite`` converts it
anyway). Bad input ends with one line naming the file and the problem, exit status 2;
``--traceback`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from trdetr_jax.official import lighthouse
from trdetr_jax.official.checkpoint_file import load_checkpoint
from trdetr_jax.official.keys import state_dict_to_params
from trdetr_jax.official.options import options_to_config, read_options

PARAMS_SUBDIR = "params"
CONFIG_FILE = "config.json"
_LISTED = 5  # problems named in one-line errors


def nonfinite_counts(state_dict: Mapping[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    """{key: (NaN count, Inf count)} of the floating-point tensors holding non-finite values."""
    out = {}
    for k, v in state_dict.items():
        v = np.asarray(v)
        if np.issubdtype(v.dtype, np.inexact) and not np.isfinite(v).all():
            n_nan = int(np.isnan(v).sum())
            out[k] = (n_nan, int(v.size - np.isfinite(v).sum()) - n_nan)
    return out


def _nonfinite_message(checkpoint, bad: Mapping[str, tuple[int, int]], total: int) -> str:
    listed = [f"{k} ({n} NaN, {i} Inf)" for k, (n, i) in list(bad.items())[:_LISTED]]
    more = f" and {len(bad) - _LISTED} more" if len(bad) > _LISTED else ""
    return f"{checkpoint}: {len(bad)} of {total} tensors hold NaN/Inf: {', '.join(listed)}{more}"


def convert(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    options: str | os.PathLike | None = None,
    dtype: str | None = "float32",
    overwrite: bool = False,
    trust_pickle: bool = False,
    allow_nonfinite: bool = False,
) -> tuple[dict[str, Any], Any]:
    """Convert and write ``out``; returns (params, config).

    ValueError (one line, naming the file) for a checkpoint or options file that cannot be
    read, options the port does not support, a state_dict that does not match the model the
    options describe, or NaN/Inf in the weights (unless ``allow_nonfinite``).
    """
    try:
        np_dtype = None if dtype is None else np.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"dtype {dtype!r} is not a numpy dtype name (e.g. 'float32')") from err
    out = pathlib.Path(out).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    state_dict, opt = load_checkpoint(checkpoint, trust_pickle=trust_pickle)
    bad = nonfinite_counts(state_dict)
    if bad and not allow_nonfinite:
        raise ValueError(
            _nonfinite_message(checkpoint, bad, len(state_dict))
            + "; pass --allow-nonfinite to convert it anyway"
        )
    if bad:
        print(f"warning: {_nonfinite_message(checkpoint, bad, len(state_dict))}", file=sys.stderr)
    source = checkpoint
    if options is not None:
        opt, source = read_options(options), options
    if opt is None:
        raise ValueError(
            f"{checkpoint} carries no options: pass --options opt.json (the official run's "
            "opt.json, or a fixture config.json)"
        )
    try:
        if lighthouse.is_lighthouse_options(opt):
            opt = lighthouse.to_official_options(opt)
        config = options_to_config(opt)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: {err}") from err
    from trdetr_jax.model import model_kwargs_from_config

    try:
        params = state_dict_to_params(state_dict, model_kwargs_from_config(config), dtype=np_dtype)
    except ValueError as err:
        raise ValueError(f"{checkpoint}: {_one_line(str(err))}") from err
    _write_atomically(out, params, config)
    return params, config


def _one_line(message: str) -> str:
    """A multi-line problem list (header, then one problem a line) as one line."""
    header, *problems = [line.strip() for line in message.splitlines() if line.strip()]
    if not problems:
        return header
    more = f"; and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
    return f"{header.rstrip(':')}: " + "; ".join(problems[:_LISTED]) + more


def _write_atomically(out: pathlib.Path, params: Any, config: Any) -> None:
    """Write ``out`` in a temporary sibling folder, then rename it into place."""
    import orbax.checkpoint as ocp

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    old = None
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_SUBDIR, params)
            ckptr.wait_until_finished()
        config_json = json.loads(config.to_json_best_effort())
        (tmp / CONFIG_FILE).write_text(json.dumps(config_json, indent=2, sort_keys=True))
        if out.exists():  # --overwrite: set the old folder aside until the new one is in place
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / out.name).exists() and not out.exists():
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def load_converted(directory: str | os.PathLike) -> tuple[dict[str, Any], Any]:
    """(params as numpy arrays, config) of a folder written by :func:`convert`; the config
    is read by :func:`trdetr_jax.predict.load_config`, as for a training workdir."""
    import orbax.checkpoint as ocp

    from trdetr_jax.predict import load_config

    directory = pathlib.Path(directory).resolve()
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(directory / PARAMS_SUBDIR)
    return params, load_config(directory)


# Errors of the input (files, options, weights) or the environment: one line, status 2.
USER_ERRORS = (OSError, ValueError, ImportError)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trdetr_jax.official.convert", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--checkpoint", required=True, help="official model_best.ckpt or params .npz"
    )
    parser.add_argument("--options", help="official opt.json or fixture config.json")
    parser.add_argument("--out", required=True, help="output folder (must not exist)")
    parser.add_argument(
        "--dtype", default="float32", help="params dtype to write ('keep': the checkpoint's)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow any pickled object in a .ckpt that parses but holds classes the restricted "
        "unpickler refuses; this lets the file run code (only for trusted files)",
    )
    parser.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="convert weights holding NaN/Inf (refused by default)",
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    args = parser.parse_args(argv)
    try:
        params, _ = convert(
            args.checkpoint,
            args.out,
            options=args.options,
            dtype=None if args.dtype == "keep" else args.dtype,
            overwrite=args.overwrite,
            trust_pickle=args.trust_pickle,
            allow_nonfinite=args.allow_nonfinite,
        )
    except USER_ERRORS as err:
        if args.traceback:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    n = sum(int(np.size(x)) for x in _leaves(params))
    print(f"wrote {args.out}: {n:,} parameters")
    return 0


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


if __name__ == "__main__":
    sys.exit(main())
