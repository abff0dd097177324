"""Hungarian matching between predicted and ground-truth spans.

The cost matrix is built in ``jnp`` inside the (jitted) step; the assignment itself is
solved on the host by ``scipy.optimize.linear_sum_assignment`` through one
``jax.pure_callback`` for all decoder layers at once. Targets have a fixed capacity
``W = max_windows`` with a float mask (1 = real window); padded target columns are sliced
away per sample on the host, so the assignment equals the official per-sample one.

Matches come back as fixed-shape arrays, per layer:
  ``pred_idx [B, W] int32``: matched query of the k-th pair (ascending, as scipy returns);
  ``tgt_idx  [B, W] int32``: matched target window of the k-th pair;
  ``valid    [B, W] float``: 1 for the first ``min(nq, #windows)`` pairs, 0 for padding
  (padding pairs point at query 0 / window 0 and must be masked by the consumer).

Data parallel: under ``jax.jit`` with the batch sharded over a mesh axis, pass ``mesh``
(and ``axis_name``) so the callback runs per shard inside ``jax.shard_map`` on the local
rows only; without it the callback sees the whole (gathered) batch on one device.

``solver='device'`` solves the same problem inside the computation instead
(``optax.assignment.hungarian_algorithm``, vmapped over samples and layers): no host round
trip, so a step can run without leaving the device and its compilation can be cached.
It returns an optimal assignment, in the same layout; where several assignments are optimal
(tied costs) it may pick another one than scipy. Ties aside, the two return the same pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from trdetr_jax.spans import generalized_temporal_iou, span_cxw_to_xx

Match = tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]  # (pred_idx, tgt_idx, valid), each [B, W]
SOLVERS = ("scipy", "device")


def match_cost(
    pred_logits: jnp.ndarray,
    pred_spans: jnp.ndarray,
    span_labels: jnp.ndarray,
    span_mask: jnp.ndarray | None = None,
    *,
    cost_span: float = 10.0,
    cost_giou: float = 1.0,
    cost_class: float = 4.0,
) -> jnp.ndarray:
    """Matching cost ``[B, nq, W]`` (lower is better), padded target columns included.

    ``cost_span * L1(c, w) - cost_giou * GIoU - cost_class * softmax(logits)[fg]``, with
    the foreground at class index 0 and GIoU in float32 as in the official code.

    Args:
      pred_logits: ``[B, nq, 2]``.
      pred_spans: ``[B, nq, 2]`` normalised (center, width).
      span_labels: ``[B, W, 2]`` normalised (center, width); padded rows may hold anything.
      span_mask: ``[B, W]`` float, 1 = real window; padded rows get a dummy span so their
        (discarded) columns stay finite.
    """
    # costs in float32 at least, whatever the compute dtype of the model
    pred_logits, pred_spans = (
        x.astype(jnp.promote_types(x.dtype, jnp.float32)) for x in (pred_logits, pred_spans)
    )
    prob_fg = jax.nn.softmax(pred_logits, axis=-1)[..., 0]  # [B, nq]
    # cdist with p=1 on (c, w)
    l1 = jnp.abs(pred_spans[:, :, None, :] - span_labels[:, None, :, :]).sum(-1)  # [B, nq, W]
    # Padded target rows are usually (0, 0): give them a harmless span so no NaN enters
    # the cost (those columns are sliced away on the host anyway).
    if span_mask is not None:
        dummy = jnp.asarray([0.5, 1.0], span_labels.dtype)
        safe_labels = jnp.where(span_mask[..., None] > 0, span_labels, dummy)
    else:
        safe_labels = span_labels
    giou = generalized_temporal_iou(
        span_cxw_to_xx(pred_spans), span_cxw_to_xx(safe_labels)
    )  # [B, nq, W] float32
    cost = cost_span * l1 + cost_giou * -giou + cost_class * -prob_fg[:, :, None]
    return cost


def _assign_host(cost: np.ndarray, tgt_mask: np.ndarray):
    """Host side: per-sample ``linear_sum_assignment`` on the valid target columns.

    ``cost [..., nq, W]``, ``tgt_mask [..., W]`` (leading dims broadcast). Never raises: a
    sample whose assignment fails (e.g. a non-finite cost after sanitising) returns no pairs.
    """
    cost = np.asarray(cost, dtype=np.float64)
    tgt_mask = np.asarray(tgt_mask)
    nq, width = cost.shape[-2:]
    lead = np.broadcast_shapes(cost.shape[:-2], tgt_mask.shape[:-1])
    cost = np.broadcast_to(cost, (*lead, nq, width)).reshape(-1, nq, width)
    tgt_mask = np.broadcast_to(tgt_mask, (*lead, width)).reshape(-1, width)
    n = cost.shape[0]
    pred_idx = np.zeros((n, width), np.int32)
    tgt_idx = np.zeros((n, width), np.int32)
    valid = np.zeros((n, width), np.float32)
    for i in range(n):
        cols = np.flatnonzero(tgt_mask[i] > 0.5)
        if cols.size == 0:
            continue
        c = cost[i][:, cols]
        if not np.all(np.isfinite(c)):
            finite = c[np.isfinite(c)]
            big = (np.abs(finite).max() if finite.size else 0.0) * 2 + 1e6
            c = np.nan_to_num(c, nan=big, posinf=big, neginf=-big)
        try:
            rows, sel = scipy.optimize.linear_sum_assignment(c)
        except Exception:  # noqa: BLE001 - a callback must not raise (undefined behaviour)
            continue
        k = len(rows)
        pred_idx[i, :k] = rows
        tgt_idx[i, :k] = cols[sel]
        valid[i, :k] = 1.0
    shape = (*lead, width)
    return pred_idx.reshape(shape), tgt_idx.reshape(shape), valid.reshape(shape)


def _assign_callback(cost: jnp.ndarray, tgt_mask: jnp.ndarray):
    """``pure_callback`` around :func:`_assign_host`; ``cost [..., nq, W]``, ``tgt_mask [..., W]``."""
    shape = (*cost.shape[:-2], cost.shape[-1])
    out_types = (
        jax.ShapeDtypeStruct(shape, jnp.int32),
        jax.ShapeDtypeStruct(shape, jnp.int32),
        jax.ShapeDtypeStruct(shape, jnp.float32),
    )
    return jax.pure_callback(
        _assign_host,
        out_types,
        jax.lax.stop_gradient(cost),
        jax.lax.stop_gradient(tgt_mask),
        vmap_method="broadcast_all",
    )


def _assign_one_device(cost: jnp.ndarray, valid_col: jnp.ndarray):
    """One sample on the device: ``cost [nq, W]``, ``valid_col [W]`` bool -> ``[W]`` x3.

    The same problem :func:`_assign_host` solves: the valid columns only (padded columns
    get a cost that cannot change the optimum of the valid ones), non-finite costs
    sanitised as there, pairs ordered by query as scipy returns them.
    """
    nq, width = cost.shape
    finite = jnp.isfinite(cost)
    magnitude = jnp.max(jnp.where(finite & valid_col[None], jnp.abs(cost), 0.0))
    big = magnitude * 2 + 1e6
    cost = jnp.where(jnp.isnan(cost), big, jnp.where(jnp.isinf(cost), jnp.sign(cost) * big, cost))
    if nq >= width:
        # Any assignment of the valid columns extends to the padded ones at the same
        # constant cost (there are enough spare queries): a constant keeps the optimum.
        pad_cost = jnp.zeros((), cost.dtype)
    else:
        # Fewer queries than columns: a padded column must never take a query that a
        # valid one could have: its cost exceeds anything a valid column can save.
        hi = jnp.max(jnp.where(valid_col[None], cost, -jnp.inf))
        lo = jnp.min(jnp.where(valid_col[None], cost, jnp.inf))
        spread = jnp.where(jnp.any(valid_col), hi - lo, 0.0)
        pad_cost = jnp.where(jnp.any(valid_col), hi, 0.0) + nq * spread + 1.0
    cost = jnp.where(valid_col[None], cost, pad_cost)
    rows, cols = optax.assignment.hungarian_algorithm(cost)  # min(nq, W) pairs each
    keep = valid_col[cols]
    # Valid pairs first, by ascending query (scipy's order); then the discarded ones.
    order = jnp.argsort(jnp.where(keep, rows, nq + jnp.arange(rows.shape[0])))
    rows, cols, keep = rows[order], cols[order], keep[order]
    pad = width - rows.shape[0]
    if pad:
        rows, cols = (jnp.pad(x, (0, pad)) for x in (rows, cols))
        keep = jnp.pad(keep, (0, pad))
    pred_idx = jnp.where(keep, rows, 0).astype(jnp.int32)
    tgt_idx = jnp.where(keep, cols, 0).astype(jnp.int32)
    return pred_idx, tgt_idx, keep.astype(jnp.float32)


def _assign_device(cost: jnp.ndarray, tgt_mask: jnp.ndarray):
    """:func:`_assign_one_device` over the leading dims: ``cost [..., nq, W]``, ``tgt_mask [..., W]``."""
    cost = jax.lax.stop_gradient(cost)
    nq, width = cost.shape[-2:]
    lead = jnp.broadcast_shapes(cost.shape[:-2], tgt_mask.shape[:-1])
    flat_cost = jnp.broadcast_to(cost, (*lead, nq, width)).reshape(-1, nq, width)
    flat_mask = jnp.broadcast_to(tgt_mask, (*lead, width)).reshape(-1, width) > 0.5
    out = jax.vmap(_assign_one_device)(flat_cost, flat_mask)
    return tuple(x.reshape(*lead, width) for x in out)


def assign(
    cost: jnp.ndarray,
    tgt_mask: jnp.ndarray,
    *,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: str = "data",
    solver: str = "scipy",
) -> Match:
    """Solve the assignment for stacked costs.

    Args:
      cost: ``[n_layers, B, nq, W]``.
      tgt_mask: ``[B, W]`` float, 1 = real window.
      mesh: if given (and ``axis_name`` has more than one device), the callback runs per
        batch shard inside ``jax.shard_map``; the batch axis must be sharded over
        ``axis_name`` (or be shardable: its size divisible by the axis size). Defaults to
        the mesh of a surrounding ``jax.set_mesh`` context, if any.
      solver: ``'scipy'`` (host callback, the reference) or ``'device'`` (in the
        computation; see the module docstring for ties).

    Returns:
      ``(pred_idx, tgt_idx, valid)``, each ``[n_layers, B, W]``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"matcher solver must be one of {SOLVERS}, got {solver!r}")
    tgt_mask = jnp.broadcast_to(tgt_mask[None], (cost.shape[0], *tgt_mask.shape))
    if solver == "device":
        return _assign_device(cost, tgt_mask)
    if mesh is None:
        # a mesh set by ``jax.set_mesh`` around the jitted step works too
        context = jax.sharding.get_abstract_mesh()
        if not context.empty:
            mesh = context
    if mesh is None or mesh.shape.get(axis_name, 1) == 1:
        return _assign_callback(cost, tgt_mask)
    spec = jax.sharding.PartitionSpec(None, axis_name)
    sharded = jax.shard_map(
        _assign_callback,
        mesh=mesh,
        in_specs=(spec, spec),
        out_specs=(spec, spec, spec),
    )
    return sharded(cost, tgt_mask)


def match_layers(
    layers: Sequence[tuple[jnp.ndarray, jnp.ndarray]],
    span_labels: jnp.ndarray,
    span_mask: jnp.ndarray,
    *,
    cost_span: float = 10.0,
    cost_giou: float = 1.0,
    cost_class: float = 4.0,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: str = "data",
    solver: str = "scipy",
) -> list[Match]:
    """Match every decoder layer with one host callback.

    Args:
      layers: per layer ``(pred_logits [B, nq, 2], pred_spans [B, nq, 2])``.
      span_labels: ``[B, W, 2]`` (center, width); span_mask ``[B, W]`` float, 1 = real.

    Returns:
      One ``(pred_idx, tgt_idx, valid)`` per layer, each ``[B, W]``.
    """
    costs = jnp.stack(
        [
            match_cost(
                logits,
                spans,
                span_labels,
                span_mask,
                cost_span=cost_span,
                cost_giou=cost_giou,
                cost_class=cost_class,
            )
            for logits, spans in layers
        ]
    )  # [n_layers, B, nq, W]
    pred_idx, tgt_idx, valid = assign(
        costs, span_mask, mesh=mesh, axis_name=axis_name, solver=solver
    )
    return [(pred_idx[i], tgt_idx[i], valid[i]) for i in range(len(layers))]


def match(
    pred_logits: jnp.ndarray,
    pred_spans: jnp.ndarray,
    span_labels: jnp.ndarray,
    span_mask: jnp.ndarray,
    *,
    cost_span: float = 10.0,
    cost_giou: float = 1.0,
    cost_class: float = 4.0,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: str = "data",
    solver: str = "scipy",
) -> Match:
    """Match one decoder layer: ``(pred_idx, tgt_idx, valid)``, each ``[B, W]``."""
    return match_layers(
        [(pred_logits, pred_spans)],
        span_labels,
        span_mask,
        cost_span=cost_span,
        cost_giou=cost_giou,
        cost_class=cost_class,
        mesh=mesh,
        axis_name=axis_name,
        solver=solver,
    )[0]
