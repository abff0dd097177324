"""XLA's persistent compilation cache: a second process with the same config and shapes
loads its compiled steps from disk instead of compiling them again.

``config.train.compilation_cache_dir`` names the folder (``~`` expanded; empty: off). JAX
stores every executable whose compilation took at least
``jax_persistent_cache_min_compile_time_secs`` (default 1 s), keyed by the program, the
compile options, the devices and the jax/jaxlib versions, so a changed config or an upgraded
jaxlib compiles afresh.

What it can keep: the eval step always; the train step only with
``config.train.matcher = 'device'``. With the default ``'scipy'`` matcher the train step holds
a host callback, and JAX never writes executables with host callbacks to the cache (their
callback cannot be restored in another process), so that step compiles in every process.

``JAX_COMPILATION_CACHE_DIR`` in the environment (or an earlier
``jax.config.update('jax_compilation_cache_dir', ...)``) wins over the config: JAX opens its
cache once per process.
"""

from __future__ import annotations

import os
import pathlib

import jax
from absl import logging


def enable(directory: str | None) -> pathlib.Path | None:
    """Points JAX's persistent compilation cache at ``directory`` (None/empty: leaves it as is).

    Returns the folder the process's cache uses, or None when it has none.
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        wanted = pathlib.Path(os.path.expanduser(directory)).resolve() if directory else None
        if wanted is not None and pathlib.Path(current).resolve() != wanted:
            logging.info(
                "compilation cache: this process already uses %s; config.train."
                "compilation_cache_dir=%s is not used",
                current,
                directory,
            )
        return pathlib.Path(current)
    if not directory:
        return None
    path = pathlib.Path(os.path.expanduser(directory)).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only home: run without the cache rather than refuse
        logging.warning("compilation cache off: cannot create %s (%s)", path, e.strerror)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path
