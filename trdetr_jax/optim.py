"""Optimiser: global-norm clipping + AdamW with a step learning-rate schedule.

Matches the official training step: ``clip_grad_norm_(params, grad_clip)`` followed by
``torch.optim.AdamW(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay)`` over every parameter
in one group, with ``StepLR(lr_drop)`` stepped once per epoch. AdamW follows torch's order
and rounding (see :func:`adamw`): float32 runs are bit-equal to torch's for parameters
larger than about one update. Parameters the official
code never updates (their ``.grad`` stays ``None``, so torch skips them entirely, weight
decay included) are frozen here through a mask.
"""

from __future__ import annotations

import functools
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


class StepLR(NamedTuple):
    """``StepLR`` stepped per epoch, as a schedule over optimiser updates.

    Update ``n`` (0-based) uses ``lr * gamma ** (n // steps_per_drop)``, with the product
    chained in float64 as torch's ``StepLR`` multiplies ``group["lr"]`` by ``gamma`` at each
    drop. Calling it gives that rate in float32 (for logging); :func:`adamw` reads the
    fields to compute its step sizes in float64, as torch does with Python floats.
    """

    lr: float
    gamma: float = 1.0
    steps_per_drop: int = 1

    def rate64(self, drops: int) -> float:
        lr = float(self.lr)
        for _ in range(drops):
            lr = lr * float(self.gamma)
        return lr

    def __call__(self, count):
        drops = jnp.asarray(count) // self.steps_per_drop
        if self.gamma == 1.0:
            return jnp.full(jnp.shape(drops), self.lr, jnp.float32)
        table = np.asarray([self.rate64(k) for k in range(_n_drops(self))], np.float32)
        return jnp.asarray(table)[jnp.minimum(drops, len(table) - 1)]


def _n_drops(sched: StepLR) -> int:
    """Drops after which the rate no longer changes in float64 (underflow, or gamma 1)."""
    if sched.gamma == 1.0 or sched.lr == 0.0:
        return 1
    rates = [float(sched.lr)]
    while len(rates) < 10_000 and rates[-1] != rates[-1] * float(sched.gamma):
        rates.append(rates[-1] * float(sched.gamma))
    return len(rates)


class AdamWState(NamedTuple):
    count: jnp.ndarray  # int32 scalar: updates done
    mu: Any  # first moment (torch's exp_avg)
    nu: Any  # second moment (torch's exp_avg_sq)


B1, B2, EPS = 0.9, 0.999, 1e-8


def _until_constant(values, dtype) -> np.ndarray:
    """``values(t)`` for t = 1, 2, ... (float64 on the host) rounded to ``dtype``, up to
    the first t from which the rounded value no longer changes (each table is monotone)."""
    out, t = [], 1
    while True:
        v = dtype(values(t))
        out.append(v)
        if v == dtype(values(t + 1)) == dtype(values(t + 1000)):
            return np.asarray(out, dtype)
        t += 1


@functools.lru_cache(maxsize=16)
def _adamw_tables(sched: StepLR, weight_decay: float, dtype_name: str):
    """The scalars torch computes in float64 each step, rounded to the parameter dtype.

    * ``decay[k] = 1 - lr_k * wd`` after ``k`` drops (1.0 in float32 for lr * wd < 3e-8);
    * ``step[k, t - 1] = lr_k / (1 - b1 ** t)`` (constant = lr_k once ``b1 ** t`` is lost);
    * ``bc2_sqrt[t - 1] = (1 - b2 ** t) ** 0.5`` (1.0 in float32 from t ~ 16,600).

    ``t`` beyond a table's end reads its last entry.
    """
    dtype = np.dtype(dtype_name).type
    rates = [sched.rate64(k) for k in range(_n_drops(sched))]
    decay = np.asarray([dtype(1 - lr * weight_decay) for lr in rates], dtype)
    rows = [_until_constant(lambda t, lr=lr: lr / (1 - B1**t), dtype) for lr in rates]
    steps = np.stack([np.pad(r, (0, max(map(len, rows)) - len(r)), mode="edge") for r in rows])
    bc2_sqrt = _until_constant(lambda t: (1 - B2**t) ** 0.5, dtype)
    return decay, steps, bc2_sqrt


def adamw(learning_rate: float | StepLR, weight_decay: float) -> optax.GradientTransformation:
    """``torch.optim.AdamW(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay)``, op for op.

    Per parameter, as torch's single-tensor and for-each implementations::

        p <- p * (1 - lr * wd)                      # decay first, on the stored weights
        m <- m + (1 - b1) * (g - m)                 # lerp
        v <- v * b2 + (1 - b2) * g * g              # addcmul
        p <- p + (-lr / (1 - b1**t)) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)   # addcdiv

    The scalars (``1 - lr*wd``, the step size, ``sqrt(1 - b2**t)``) are Python floats in
    torch: computed here in float64 on the host (tables over the step ``t`` and the number of
    learning-rate drops) and rounded to the parameter dtype as torch's kernels round them.
    So with lr 1e-4 and wd 1e-4 the factor ``1 - 1e-8`` is exactly 1.0 in float32 and the
    weights never decay, as in the official runs. The update returned is ``new - p``.
    """
    sched = learning_rate if isinstance(learning_rate, StepLR) else StepLR(float(learning_rate))
    wd = float(weight_decay)

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return AdamWState(count=jnp.zeros((), jnp.int32), mu=zeros, nu=zeros)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("adamw: update() needs the parameters (decoupled weight decay)")
        count = state.count + 1
        drops = state.count // sched.steps_per_drop

        looked_up = {}  # dtype -> this step's (decay, -step size, sqrt(1 - b2**t))

        def scalars(dtype):
            name = np.dtype(dtype).name
            if name not in looked_up:
                decay, steps, bc2_sqrt = _adamw_tables(sched, wd, name)
                k = jnp.minimum(drops, len(decay) - 1)
                t = jnp.minimum(count, steps.shape[1]) - 1
                looked_up[name] = (
                    jnp.asarray(decay)[k],
                    -jnp.asarray(steps)[k, t],
                    jnp.asarray(bc2_sqrt)[jnp.minimum(count, len(bc2_sqrt)) - 1],
                )
            return looked_up[name]

        # torch stores p * (1 - lr wd) and v * b2 before its next kernel, while its lerp and
        # addcmul kernels fuse into one FMA each (so does XLA, which contracts a product
        # with the sum that uses it). `rounded` passes a product through an integer op with
        # a zero XLA cannot prove to be zero, so it is rounded on its own, as torch's.
        zero = jnp.minimum(state.count, 0)

        def rounded(x):
            itype = jnp.int64 if x.dtype == jnp.float64 else jnp.int32
            bits = jax.lax.bitcast_convert_type(x, itype) | zero.astype(itype)
            return jax.lax.bitcast_convert_type(bits, x.dtype)

        def one(g, p, m, v):
            decay, neg_step, bc2_sqrt = scalars(p.dtype)
            p1 = rounded(p * decay) if wd != 0 else p
            m = m + (g - m) * (1 - B1)
            v = rounded(v * B2) + (1 - B2) * g * g
            # XLA turns a division by a broadcast scalar into a product with its reciprocal
            # (one more rounding); the barrier keeps torch's true division.
            bc2_sqrt = jax.lax.optimization_barrier(jnp.broadcast_to(bc2_sqrt, v.shape))
            denom = jnp.sqrt(v) / bc2_sqrt + EPS
            new = p1 + neg_step * m / denom
            return new - p, m, v

        out = jax.tree.map(one, updates, params, state.mu, state.nu)
        treedef = jax.tree.structure(updates)
        u, mu, nu = (
            jax.tree.unflatten(treedef, [leaf[i] for leaf in treedef.flatten_up_to(out)])
            for i in range(3)
        )
        return u, AdamWState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def step_lr_schedule(
    lr: float, *, lr_drop_epochs: int, gamma: float, steps_per_epoch: int
) -> StepLR:
    """``StepLR`` stepped per epoch: ``lr * gamma ** (epoch // lr_drop_epochs)``.

    The schedule's argument is the number of optimiser updates done, so epoch
    ``= step // steps_per_epoch``.
    """
    return StepLR(float(lr), float(gamma), max(1, int(lr_drop_epochs) * int(steps_per_epoch)))


def make_optimizer(
    lr_schedule: float | StepLR,
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
    config, lr_schedule: float | StepLR, params_to_state_dict=None
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


def schedule_of_config(config, steps_per_epoch: int) -> StepLR:
    """The config's StepLR by epoch, as the official code: ``lr * gamma ** (epoch // lr_drop)``."""
    return step_lr_schedule(
        config.optim.lr,
        lr_drop_epochs=config.optim.lr_drop,
        gamma=config.optim.lr_gamma,
        steps_per_epoch=steps_per_epoch,
    )


def optimizer_of_config(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """Clipping + AdamW (frozen parameters as the official code), epoch-wise StepLR."""
    return make_optimizer_from_config(config, schedule_of_config(config, steps_per_epoch))
