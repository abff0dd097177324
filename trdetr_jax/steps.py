"""The compiled steps of a run: where they run, not what they compute.

:mod:`trdetr_jax.train` defines what a step computes (the state, ``train_step``,
``train_chunk``); :func:`compile_steps` jits those functions over a mesh with explicit
shardings (parameters and optimiser state replicated, batches split over the ``'data'``
axis, the state donated), applies the configured matmul precision, wraps them so they can
gather their batch from feature tables resident on the device
(:mod:`trdetr_jax.data.resident`), and adds the eval step of :mod:`trdetr_jax.inference`.
:func:`cached` keeps the steps of recent runs of this process for reuse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from trdetr_jax import inference, precision
from trdetr_jax import loop as loop_lib
from trdetr_jax.data import resident


@dataclasses.dataclass
class Steps:
    """The jitted step functions of a run and the shardings they use."""

    mesh: jax.sharding.Mesh
    replicated: NamedSharding
    batch_sharding: NamedSharding  # batch arrays: split over the mesh's data axis
    state_sharding: Any
    train: Any  # (state, batch, rng) -> (state, metrics); donates state
    eval: Any  # (params, batch) -> outputs
    init: Any  # (rng) -> state
    abstract_state: Any  # ShapeDtypeStructs with shardings (restore target)
    # (state, chunk [steps, rows, ...], rng) -> (state, metrics [steps]); donates state
    train_chunk: Any = None
    chunk_sharding: NamedSharding | None = None  # chunks: rows split over the data axis
    # train / train_chunk / eval are resident.WithTables: .bind(tables) for batches of
    # table rows (features resident on the device).

    def dispatcher(self, steps_per_dispatch: int) -> tuple[Any, NamedSharding, int]:
        """``(step function, sharding of what it takes, its batch axis)``: the train step,
        or with several steps per dispatch the chunk step (one ``lax.scan`` over a chunk)."""
        if steps_per_dispatch == 1:
            return self.train, self.batch_sharding, 0
        return self.train_chunk, self.chunk_sharding, 1

    def for_run(self, train_res, eval_res, info) -> Steps:
        """The steps a run calls: bound to its splits' resident feature tables (when the
        features are on the device), each reporting the shapes it compiles for."""
        train, chunk, evaluate = self.train, self.train_chunk, self.eval
        if train_res is not None:
            train, chunk = train.bind(train_res.tables), chunk.bind(train_res.tables)
            evaluate = evaluate.bind(eval_res.tables)
        return dataclasses.replace(
            self,
            train=loop_lib.log_new_shapes(train, "train step", info),
            train_chunk=loop_lib.log_new_shapes(chunk, "train chunk", info, leading="steps"),
            eval=loop_lib.log_new_shapes(evaluate, "eval step", info),
        )


def compile_steps(
    mesh: jax.sharding.Mesh,
    model,
    batch_shapes: dict[str, jax.ShapeDtypeStruct],
    *,
    init_state: Callable[[dict[str, jax.Array], jax.Array], Any],
    train_step: Callable[..., Any],
    train_chunk: Callable[..., Any],
    matmul_precision: str = precision.DEFAULT,
) -> Steps:
    """Jits init / train / train chunk / eval with explicit shardings over ``mesh``.

    ``init_state(batch, rng) -> state``; ``train_step(state, batch, rng) -> (state,
    metrics)``; ``train_chunk`` the same over stacked batches ``[steps, rows, ...]``.
    ``batch_shapes``: global shapes of a batch (only used to initialise parameters, from
    zeros: parameter shapes depend on the input shapes only). ``model``: for the eval step.
    """
    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))

    def init_fn(rng):
        zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in batch_shapes.items()}
        return init_state(zeros, rng)

    shapes = jax.eval_shape(init_fn, jax.random.key(0))
    state_sharding = jax.tree.map(lambda _: replicated, shapes)
    init = jax.jit(init_fn, in_shardings=replicated, out_shardings=state_sharding)
    train = jax.jit(
        resident.gathering(train_step),
        in_shardings=(replicated, state_sharding, data, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(1,),  # the state
    )
    chunk_sharding = NamedSharding(mesh, P(None, "data"))
    chunk = jax.jit(
        resident.gathering(train_chunk),
        in_shardings=(replicated, state_sharding, chunk_sharding, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(1,),
    )
    init, train, chunk = (
        precision.with_matmul_precision(f, matmul_precision) for f in (init, train, chunk)
    )
    evaluate = inference.jit_eval_step(mesh, model, state_sharding.params, matmul_precision)
    abstract = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes, state_sharding
    )
    return Steps(
        mesh=mesh,
        replicated=replicated,
        batch_sharding=data,
        state_sharding=state_sharding,
        train=resident.WithTables(train),
        eval=evaluate,
        init=init,
        abstract_state=abstract,
        train_chunk=resident.WithTables(chunk),
        chunk_sharding=chunk_sharding,
    )


class Recent:
    """The values of the ``size`` most recently stored keys (the oldest is dropped first)."""

    def __init__(self, size: int):
        self.size = size
        self._items: dict[Hashable, Any] = {}

    def get(
        self, key: Hashable, build: Callable[[], Any], valid: Callable[[Any], bool] = lambda v: True
    ) -> Any:
        """The value stored under ``key`` while ``valid(value)``, else ``build()``, stored."""
        if key in self._items and valid(self._items[key]):
            return self._items[key]
        self._items.pop(key, None)
        while len(self._items) >= self.size:
            self._items.pop(next(iter(self._items)))
        value = self._items[key] = build()
        return value


# Jitted steps of recent runs in this process, so that running again with the same model,
# losses, optimiser and shapes (a resumed run, a sweep over seeds, a notebook, the tests)
# does not compile again. The train step holds a host callback (the matcher), so XLA's
# persistent compilation cache cannot keep it across processes.
_CACHE = Recent(4)


def cached(key: Hashable, build: Callable[[], Steps]) -> Steps:
    """The steps stored under ``key``, built by ``build()`` the first time (the steps of the
    four most recent keys are kept)."""
    return _CACHE.get(key, build)
