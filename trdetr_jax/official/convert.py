"""Convert an official TR-DETR checkpoint into an Orbax checkpoint of our Flax params.

    python -m trdetr_jax.official.convert --checkpoint model_best.ckpt --out DIR
    python -m trdetr_jax.official.convert --checkpoint params.npz --options opt.json --out DIR

``--checkpoint``: the official ``.ckpt`` (``torch.save({'model': state_dict, 'opt': ...})``,
needs torch) or an ``.npz`` of state_dict arrays. ``--options``: the official ``opt.json``, or
a fixture ``config.json`` (its ``"opt"`` entry is used); optional for a ``.ckpt``, which
carries its options.

Writes ``DIR/params`` (an Orbax ``StandardSave`` of the params tree, as
``trdetr_jax.predict`` loads it) and ``DIR/config.json`` (our config the options imply). The
output is assembled in a temporary sibling folder and renamed into place, so a ``DIR`` that
exists is complete.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any

import numpy as np

from trdetr_jax.official.checkpoint_file import load_checkpoint
from trdetr_jax.official.keys import state_dict_to_params
from trdetr_jax.official.options import options_to_config, read_options

PARAMS_SUBDIR = "params"
CONFIG_FILE = "config.json"


def convert(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    options: str | os.PathLike | None = None,
    dtype: str | None = "float32",
    overwrite: bool = False,
    trust_pickle: bool = False,
) -> tuple[dict[str, Any], Any]:
    """Convert and write ``out``; returns (params, config)."""
    import orbax.checkpoint as ocp

    out = pathlib.Path(out).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    state_dict, opt = load_checkpoint(checkpoint, trust_pickle=trust_pickle)
    if options is not None:
        opt = read_options(options)
    if opt is None:
        raise ValueError(
            f"{checkpoint} carries no options: pass --options opt.json (the official run's "
            "opt.json, or a fixture config.json)"
        )
    config = options_to_config(opt)
    from trdetr_jax.model import model_kwargs_from_config

    params = state_dict_to_params(
        state_dict, model_kwargs_from_config(config), dtype=np.dtype(dtype) if dtype else None
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_SUBDIR, params)
            ckptr.wait_until_finished()
        config_json = json.loads(config.to_json_best_effort())
        (tmp / CONFIG_FILE).write_text(json.dumps(config_json, indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return params, config


def load_converted(directory: str | os.PathLike) -> tuple[dict[str, Any], Any]:
    """(params as numpy arrays, config) of a folder written by :func:`convert`."""
    import ml_collections
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).resolve()
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(directory / PARAMS_SUBDIR)
    config = ml_collections.ConfigDict(json.loads((directory / CONFIG_FILE).read_text()))
    return params, config


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
        help="allow arbitrary pickled objects in the .ckpt (only for trusted files)",
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
        )
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, ImportError) as err:
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
