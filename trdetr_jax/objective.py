"""The training objective: forward pass, Hungarian matching and all losses.

One pure function, :func:`loss_fn`, used by the train step and by the parity tool, so the
number a parity run checks is the number training optimises. It is safe under
``jax.jit``, ``jax.grad`` and data-parallel sharding (the matcher's host callback takes
``stop_gradient``ed inputs and runs per batch shard when a mesh is given or set).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from trdetr_jax import fused_threefry, losses, matcher
from trdetr_jax.model import model_inputs

OFFICIAL_LOSSES = losses.LossConfig()

# The bit generator of the dropout masks. A training step's dropout key (``fold_in(key(seed),
# step)``, threefry2x32) can seed a key of another implementation, from which every dropout
# layer then draws its masks: the same Bernoulli distribution as masks drawn from the step's
# key (``jax.random.bernoulli`` in both cases), a different but equally deterministic stream
# (a resumed run draws the same masks). None (the default, ``config.train.dropout_prng =
# ''``): draw from the step's key's own stream, computed as one fused kernel by
# trdetr_jax.fused_threefry (JAX's bits; JAX itself lowers threefry2x32 as a rolled loop on
# CPU, which once made the masks cost more than the rest of the forward pass; with the fused
# kernel the other generators are no cheaper, experiments/PROFILE.md 2.1.2).
DROPOUT_PRNG = None
DROPOUT_PRNGS = ("threefry2x32", "threefry4x32", "philox2x32", "philox4x32", "rbg", "unsafe_rbg")


def check_dropout_prng(value) -> str | None:
    """``config.train.dropout_prng`` as :func:`loss_fn` takes it ('' -> None)."""
    if value in ("", None):
        return None
    if value not in DROPOUT_PRNGS:
        raise ValueError(
            f"config.train.dropout_prng: expected '' or one of {', '.join(DROPOUT_PRNGS)}, "
            f"found {value!r}"
        )
    return value


def check_dropout_prng_on_mesh(value, mesh: jax.sharding.Mesh) -> None:
    """Raises ValueError when the generator ``value`` cannot draw masks of a batch sharded
    over ``mesh`` (tried on a tiny array: with JAX 0.10 the philox generators fail to
    partition over several devices, "Unable to convert MHLO to StableHLO")."""
    impl = check_dropout_prng(value)
    if impl is None or mesh.devices.size == 1:
        return
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    n = mesh.devices.size
    sharding = NamedSharding(mesh, P(mesh.axis_names))

    def masks(x, key):
        return jnp.where(jax.random.bernoulli(dropout_key(key, impl), 0.5, x.shape), x, 0.0)

    try:
        jax.jit(masks, in_shardings=(sharding, None), out_shardings=sharding).lower(
            jax.ShapeDtypeStruct((n, 4), jnp.float32), jax.random.key(0)
        ).compile()
    except Exception as e:  # noqa: BLE001 (XLA reports lowering failures in several types)
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"config.train.dropout_prng: {value!r} cannot draw dropout masks of a batch sharded "
            f"over {n} devices with this JAX {jax.__version__} ({first}); use 'threefry4x32', "
            "'rbg' or '' (the step key) instead"
        ) from None


def dropout_key(key: jax.Array, impl: str | None = DROPOUT_PRNG) -> jax.Array:
    """The key the dropout layers draw from: ``key``'s own stream when ``impl`` is None or
    already ``key``'s implementation, else a key of ``impl`` made from bits of ``key``.

    ``key``'s own stream, for a threefry2x32 key, is drawn through
    :data:`trdetr_jax.fused_threefry.IMPL`: the same key data and bit for bit the same masks,
    computed by one fused kernel instead of JAX's rolled CPU loop."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw uint32 key (jax.random.PRNGKey)
    own = str(jax.random.key_impl(key))
    if impl is None or own == impl:
        return fused_threefry.same_stream(key) if own == "threefry2x32" else key
    shape = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=impl))).shape
    return jax.random.wrap_key_data(jax.random.bits(key, shape, jnp.uint32), impl=impl)


def match_outputs(
    outputs: Mapping[str, Any],
    batch: Mapping[str, jnp.ndarray],
    loss_cfg: losses.LossConfig,
    *,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, matcher.Match]:
    """Matches of the last and every auxiliary decoder layer, one host callback in all.

    Returns ``{'final': (pred_idx, tgt_idx, valid), 'aux_0': ..., ...}``, each ``[B, W]``.
    """
    aux = tuple(outputs.get("aux_outputs", ())) if loss_cfg.aux_loss else ()
    layers = [(outputs["pred_logits"], outputs["pred_spans"])]
    layers += [(a["pred_logits"], a["pred_spans"]) for a in aux]
    found = matcher.match_layers(
        layers,
        batch["span_labels"],
        batch["span_mask"],
        cost_span=loss_cfg.set_cost_span,
        cost_giou=loss_cfg.set_cost_giou,
        cost_class=loss_cfg.set_cost_class,
        mesh=mesh,
        solver=loss_cfg.matcher_solver,
    )
    matches = {"final": found[0]}
    matches.update({f"aux_{i}": m for i, m in enumerate(found[1:])})
    return matches


def loss_fn(
    params: Any,
    model,
    batch: Mapping[str, jnp.ndarray],
    *,
    train: bool,
    dropout_rng: jax.Array | None = None,
    loss_cfg: losses.LossConfig = OFFICIAL_LOSSES,
    mesh: jax.sharding.Mesh | None = None,
    dropout_prng: str | None = DROPOUT_PRNG,
) -> tuple[jnp.ndarray, tuple[dict[str, jnp.ndarray], dict[str, Any]]]:
    """Total loss of ``model`` with ``params`` on ``batch``.

    Args:
      params: the model's ``params`` collection.
      model: a ``TRDETR`` instance.
      batch: model inputs (``src_txt``, ``src_txt_mask``, ``src_vid``, ``src_vid_mask``,
        optional ``src_aud``) and targets (see :func:`trdetr_jax.losses.compute_losses`;
        ``span_mask [B, W]`` marks real windows).
      train: dropout on (needs ``dropout_rng``) or off.
      loss_cfg: loss weights (:meth:`LossConfig.from_config`).
      mesh: data-parallel mesh with a ``'data'`` axis over which the batch is sharded, so
        the matcher runs per shard; defaults to the mesh of a ``jax.set_mesh`` context.
      dropout_prng: the dropout masks' bit generator (:data:`DROPOUT_PRNG`; None: the
        implementation of ``dropout_rng`` itself).

    Returns:
      ``(total_loss, (loss_dict, outputs))``; ``outputs`` are the model outputs plus
      ``'matches'`` (None without matching).
    """
    inputs = model_inputs(batch)
    rngs = {}
    if train and dropout_rng is not None:
        rngs["dropout"] = dropout_key(dropout_rng, dropout_prng)
    outputs = dict(model.apply({"params": params}, **inputs, train=train, rngs=rngs))
    matches = match_outputs(outputs, batch, loss_cfg, mesh=mesh) if loss_cfg.use_matcher else None
    total, loss_dict = losses.compute_losses(outputs, batch, matches, loss_cfg)
    outputs["matches"] = matches
    return total, (loss_dict, outputs)


def make_loss_fn(config, *, mesh: jax.sharding.Mesh | None = None) -> Callable[..., Any]:
    """:func:`loss_fn` with the config's loss weights and dropout generator bound:
    ``f(params, model, batch, *, train, dropout_rng=None)``."""
    return functools.partial(
        loss_fn,
        loss_cfg=losses.LossConfig.from_config(config),
        mesh=mesh,
        dropout_prng=check_dropout_prng(config.train.get("dropout_prng", "")),
    )
