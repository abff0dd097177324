"""Optimiser: global-norm clipping + AdamW with a step learning-rate schedule.

Matches the official training step: ``clip_grad_norm_(params, grad_clip)`` followed by
``torch.optim.AdamW(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay)`` over every parameter
in one group, with ``StepLR(lr_drop)`` stepped once per epoch. Parameters the official
code never updates (their ``.grad`` stays ``None``, so torch skips them entirely, weight
decay included) are frozen here through a mask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_``: scale by ``min(1, max_norm / (norm + 1e-6))``.

    Differs from ``optax.clip_by_global_norm`` only by the ``1e-6`` in the denominator,
    which matters at float64 parity (the first AdamW step is eps-dominated for tiny
    gradients). ``max_norm <= 0`` disables clipping, as the official ``--grad_clip -1``.
    """
    if max_norm <= 0:
        return optax.identity()

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(updates)))
        coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
        return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByAdamState(NamedTuple):
    count: jnp.ndarray  # int32 scalar: updates done
    mu: Any
    nu: Any


def scale_by_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adam's direction ``m_hat / (sqrt(v_hat) + eps)`` as torch computes it.

    Same maths as ``optax.scale_by_adam``, but the bias corrections ``1 - b**t`` are
    computed as ``-expm1(t * log1p(-(1 - b)))``: in float32, ``1 - 0.999`` loses five digits
    (``0.999`` is not representable), which shifts the first steps by ~6e-6 relative where
    torch (Python doubles) does not.
    """

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaleByAdamState(count=jnp.zeros((), jnp.int32), mu=zeros, nu=zeros)

    def update_fn(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), state.mu, updates)
        nu = jax.tree.map(lambda v, g: v * b2 + (1 - b2) * g * g, state.nu, updates)

        def direction(m, v):
            t = count.astype(m.dtype)
            bc1 = -jnp.expm1(t * jnp.log1p(jnp.asarray(-(1 - b1), m.dtype)))
            bc2 = -jnp.expm1(t * jnp.log1p(jnp.asarray(-(1 - b2), m.dtype)))
            return (m / bc1) / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps)

        out = jax.tree.map(direction, mu, nu)
        return out, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def adamw(
    learning_rate: float | optax.Schedule, weight_decay: float
) -> optax.GradientTransformation:
    """torch's AdamW: betas (0.9, 0.999), eps 1e-8, decoupled decay ``lr * wd * p``."""
    return optax.chain(
        scale_by_adam(0.9, 0.999, 1e-8),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


def step_lr_schedule(
    lr: float, *, lr_drop_epochs: int, gamma: float, steps_per_epoch: int
) -> optax.Schedule:
    """``StepLR`` stepped per epoch: ``lr * gamma ** (epoch // lr_drop_epochs)``.

    The schedule's argument is the number of optimiser updates done, so epoch
    ``= step // steps_per_epoch``.
    """
    return optax.exponential_decay(
        init_value=lr,
        transition_steps=max(1, lr_drop_epochs * steps_per_epoch),
        decay_rate=gamma,
        staircase=True,
    )


def make_optimizer(
    lr_schedule: float | optax.Schedule,
    *,
    weight_decay: float = 1e-4,
    grad_clip: float = 0.1,
    frozen: Any | Callable[[Any], Any] | None = None,
) -> optax.GradientTransformation:
    """``chain(clip, adamw)`` on trainable parameters; frozen ones get a zero update.

    Args:
      lr_schedule: learning rate or schedule (see :func:`step_lr_schedule`).
      frozen: pytree of bools matching the params (True = never updated, no decay), or a
        callable ``params -> such a pytree``. Frozen leaves are also left out of the
        clipping norm, as torch leaves out parameters without a gradient.
    """
    tx = optax.chain(clip_by_global_norm(grad_clip), adamw(lr_schedule, weight_decay))
    if frozen is None:
        return tx

    def labels(params):
        mask = frozen(params) if callable(frozen) else frozen
        return jax.tree.map(lambda f: "frozen" if f else "train", mask)

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


# ------------------------------------------------------------------ frozen parameters


def official_key_is_frozen(key: str, *, use_matcher: bool = True) -> bool:
    """Whether the official parameter ``key`` (state_dict name) never gets a gradient.

    * ``txt_position_embed.*``: built but unused (no text position embedding);
    * without matching (TVSum) the decoder and the span / class heads reach the loss only
      through MR2HD's non-differentiable top-1 selection.
    """
    if key.startswith("txt_position_embed."):
        return True
    if not use_matcher:
        return key.startswith(
            ("transformer.decoder.", "class_embed.", "span_embed.", "query_embed.")
        )
    return False


def frozen_mask(
    params: Any,
    params_to_state_dict: Callable[[Any], dict[str, Any]],
    is_frozen: Callable[[str], bool],
) -> Any:
    """Pytree of bools (True = frozen) from a rule on official state_dict keys.

    ``params_to_state_dict`` (the official key table) only moves values around (transposes,
    splits, concatenations), so filling each leaf with its own index and converting tells
    which leaves every official key is made of.
    """
    leaves, treedef = jax.tree.flatten(params)
    tagged = [np.full(np.shape(x), i, np.float64) for i, x in enumerate(leaves)]
    state_dict = params_to_state_dict(jax.tree.unflatten(treedef, tagged))
    frozen = np.zeros(len(leaves), bool)
    for key, value in state_dict.items():
        if is_frozen(key):
            frozen[np.unique(np.asarray(value)).astype(int)] = True
    return jax.tree.unflatten(treedef, [bool(f) for f in frozen])


def make_optimizer_from_config(
    config, lr_schedule: float | optax.Schedule, params_to_state_dict=None
) -> optax.GradientTransformation:
    """The optimiser the config describes; frozen parameters as the official code.

    ``params_to_state_dict`` defaults to the official key table's (``official.keys``).
    """
    if params_to_state_dict is None:
        from trdetr_jax.official.keys import params_to_state_dict

    use_matcher = bool(config.loss.use_matcher)

    def frozen(params):
        return frozen_mask(
            params,
            params_to_state_dict,
            lambda key: official_key_is_frozen(key, use_matcher=use_matcher),
        )

    return make_optimizer(
        lr_schedule,
        weight_decay=float(config.optim.weight_decay),
        grad_clip=float(config.optim.grad_clip),
        frozen=frozen,
    )
