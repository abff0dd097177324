"""The device mesh and moving batches onto it.

One ``('data',)`` mesh over every device of every process (``jax.make_mesh``); parameters
and optimiser state are replicated, batch arrays are sharded on their leading axis. On several
hosts each process holds a contiguous block of rows of the global batch and feeds them through
``jax.make_array_from_process_local_data`` (:func:`device_batch`); :func:`to_host` gathers
outputs back on every host.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding

from trdetr_jax.errors import RunError

Batch = dict[str, np.ndarray]


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-d ``('data',)`` mesh over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh(
        (len(devices),),
        ("data",),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=devices,
    )


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh, what: str) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise RunError(
            f"{what}={batch_size} is not divisible by the number of devices ({n}): the global "
            f"batch is split evenly across devices. Use a multiple of {n}, e.g. "
            f"--config.train.batch_size={max(n, batch_size // n * n)}."
        )


def process_rows(sharding: NamedSharding, global_size: int) -> slice:
    """The rows of a batch-sharded global array that this process's devices hold."""
    index_map = sharding.addressable_devices_indices_map((global_size,))
    spans = sorted({(i[0].start or 0, i[0].stop or global_size) for i in index_map.values()})
    lo, hi = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != hi - lo:
        raise ValueError("this process's devices do not hold a contiguous block of the batch")
    return slice(lo, hi)


def check_process_rows(sharding: NamedSharding, global_size: int) -> None:
    """The data pipeline gives process p the p-th contiguous block; the mesh must agree."""
    per = global_size // jax.process_count()
    expected = slice(jax.process_index() * per, (jax.process_index() + 1) * per)
    got = process_rows(sharding, global_size)
    if (got.start, got.stop) != (expected.start, expected.stop):
        raise ValueError(
            f"process {jax.process_index()} holds rows {got.start}:{got.stop} of the global "
            f"batch but loads rows {expected.start}:{expected.stop}"
        )


def device_batch(
    local: Batch, sharding: NamedSharding, batch_axis: int = 0
) -> dict[str, jax.Array]:
    """This process's rows of a global batch -> batch-sharded global jax arrays
    (``batch_axis`` 1 for a chunk of stacked batches ``[steps, rows, ...]``)."""
    n = jax.process_count()

    def global_shape(v):
        shape = list(v.shape)
        shape[batch_axis] *= n
        return tuple(shape)

    return {
        k: jax.make_array_from_process_local_data(sharding, v, global_shape(v))
        for k, v in local.items()
    }


def to_host(tree: Any) -> Any:
    """Fetches (possibly multi-process) arrays to numpy on every host."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """``jax.distributed.initialize()`` when the config or the environment asks for it."""
    if not (config.train.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        return
    if jax.distributed.is_initialized():
        return
    # The coordinator comes from JAX_COORDINATOR_ADDRESS or cluster auto-detection (SLURM,
    # Open MPI, TPU pods, ...); JAX_NUM_PROCESSES / JAX_PROCESS_ID name the process where no
    # cluster manager does (e.g. several processes started by hand on one machine).
    kwargs = {}
    if os.environ.get("JAX_NUM_PROCESSES") and os.environ.get("JAX_PROCESS_ID"):
        kwargs = dict(
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    jax.distributed.initialize(**kwargs)
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def prefetch_to_devices(
    batches: Iterable[Any], sharding: NamedSharding, depth: int, batch_axis: int = 0
):
    """Loads and transfers batches on a worker thread, ``depth`` ahead of the step."""
    from trdetr_jax import data as data_lib

    put = functools.partial(device_batch, sharding=sharding, batch_axis=batch_axis)
    return data_lib.prefetch(batches, put, depth)
