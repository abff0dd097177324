"""Several seeds in one run: K independent models trained at once, reported as mean ± std.

``config.train.num_seeds = K`` (or an explicit ``config.train.seeds`` list) trains the seeds
``config.seed + k`` (``k < K``) with one compiled step: ``jax.vmap`` over a leading seed axis
of the :class:`~trdetr_jax.train.TrainState` (parameters, optimiser state, step) and of the
batch, data parallel over the mesh as a single run (state replicated, batch arrays sharded
``P(None, 'data')``). Each seed keeps what its single run would have:

- its initialisation and dropout stream: ``init_rng, dropout_rng = split(key(seed))``, the
  step's dropout key ``fold_in(dropout_rng, state.step)`` with the seed's own step count;
- its data order and saliency-pair draws: its batches are ``train_batches(..., seed=seed)``.

A step's K batches may fall in different length buckets. JAX draws a dropout mask per
position of the padded array, so a row padded further than in its single run gets other
masks. ``config.train.seed_padding = 'exact'`` (default) therefore calls the step once per
distinct bucket pair among the K batches, each call updating only the seeds of that pair
(the others are masked out), so every seed sees its single run's shapes; ``'common'`` pads
all K batches to the largest of their buckets and makes one call (faster with several
buckets; every seed is still a faithful sample of the training procedure, but not the
bit-for-bit single run). Without length buckets the two are the same.

Stopping: a seed stops by early stopping on its own best metric, or when its loss (or
gradient norm) becomes non-finite; a stopped seed's updates are masked on the device
(``jnp.where`` on a carried ``running`` flag), so a diverged seed keeps the state of its last
finite step and the others go on. The run ends when every seed has stopped or at the end of
the schedule.

Outputs (``WORKDIR``): ``config.json`` (the run's), ``checkpoints/`` (one Orbax checkpoint
manager for the stacked train state and :class:`~trdetr_jax.checkpointing.SeedsLoopState`,
resumed exactly as a single run), ``metrics.jsonl`` (every record carries ``"seed"``),
``train.log``, ``summary.json`` (mean ± std over seeds and the per-seed table), and per seed
``seed_<s>/`` laid out as a single-seed workdir for the readers (``trdetr_jax.Predictor.load``,
``python -m trdetr_jax.predict``, ``python -m trdetr_jax.evaluate --checkpoint``):
``config.json`` (that seed, ``num_seeds=1``), ``checkpoints/`` (the seed's unstacked state
after each of its evaluations: latest + best), ``best_<split>_preds.jsonl`` and its metrics.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from trdetr_jax import data as data_lib
from trdetr_jax import inference
from trdetr_jax import loop as loop_lib
from trdetr_jax import mesh as mesh_lib
from trdetr_jax import steps as steps_lib
from trdetr_jax.errors import RunError

Batch = dict[str, np.ndarray]

PADDING_MODES = ("exact", "common")
SEED_DIR_PREFIX = "seed_"
# Batch arrays whose axis 1 is the clip axis / the token axis (trdetr_jax/data/batching.py).
VIDEO_AXIS_KEYS = ("src_vid", "src_vid_mask", "src_aud", "saliency_all_labels", "src_pos_mask")
TEXT_AXIS_KEYS = ("src_txt", "src_txt_mask")


class SeedsError(ValueError):
    """The seeds a config asks for cannot be trained together; the message says why."""


# ----------------------------------------------------------------------------- seeds


def seed_list(seed: int, num_seeds: int, seeds: Sequence[int] = ()) -> tuple[int, ...]:
    """The run's seeds: the explicit ``seeds`` if given, else ``seed + k`` for ``k < num_seeds``.

    ``num_seeds`` must be 1 (its default) or agree with an explicit list's length.
    """
    if not isinstance(num_seeds, int) or isinstance(num_seeds, bool) or num_seeds < 1:
        raise SeedsError(f"config.train.num_seeds must be a positive integer, got {num_seeds!r}")
    explicit = tuple(seeds or ())
    if explicit:
        if any(not isinstance(s, int) or isinstance(s, bool) for s in explicit):
            raise SeedsError(f"config.train.seeds must be integers, got {explicit!r}")
        if len(set(explicit)) != len(explicit):
            raise SeedsError(f"config.train.seeds has repeated seeds: {explicit!r}")
        if num_seeds not in (1, len(explicit)):
            raise SeedsError(
                f"config.train.num_seeds={num_seeds} but config.train.seeds lists "
                f"{len(explicit)} seeds {explicit!r}; leave num_seeds at 1 or make them agree"
            )
        return explicit
    return tuple(int(seed) + k for k in range(num_seeds))


def seeds_of_config(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """:func:`seed_list` of a config (also checks ``seed_padding``)."""
    tcfg = config.train
    if tcfg.seed_padding not in PADDING_MODES:
        raise SeedsError(
            f"config.train.seed_padding must be one of {PADDING_MODES}, got {tcfg.seed_padding!r}"
        )
    return seed_list(config.seed, tcfg.num_seeds, tcfg.seeds)


def seeds_of_saved(cfg: Mapping[str, Any]) -> tuple[int, ...]:
    """The seeds of a run from its ``config.json`` (one seed where the fields are absent:
    runs written before several seeds existed)."""
    train_cfg = cfg.get("train", {})
    return seed_list(
        int(cfg.get("seed", 0)), int(train_cfg.get("num_seeds", 1)), train_cfg.get("seeds") or ()
    )


def is_multi_seed(config: ml_collections.ConfigDict) -> bool:
    """True when the config asks for more than one seed (or an explicit list)."""
    return config.train.num_seeds != 1 or bool(config.train.seeds)


def seed_dirname(seed: int) -> str:
    return f"{SEED_DIR_PREFIX}{seed}"


def seed_workdirs(workdir) -> list:
    """``[WORKDIR/seed_<s>, ...]`` when ``workdir`` holds a run of several seeds (its
    ``config.json`` says so), else ``[]``."""
    path = pathlib.Path(workdir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
        found = seeds_of_saved(cfg) if isinstance(cfg, dict) and "train" in cfg else ()
    except (OSError, ValueError):
        return []
    if len(found) < 2 and not (cfg.get("train") or {}).get("seeds"):
        return []
    return [pathlib.Path(workdir) / seed_dirname(s) for s in found]


def check_single_seed_dir(cfg: Mapping[str, Any], workdir) -> None:
    """Readers of one model (predict, Predictor, evaluate --checkpoint) given the workdir of
    a run of several seeds: its checkpoints stack them; each seed's model is its own folder."""
    found = seeds_of_saved(cfg) if "train" in cfg else ()
    if len(found) > 1 or (cfg.get("train") or {}).get("seeds"):
        dirs = ", ".join(str(pathlib.Path(workdir) / seed_dirname(s)) for s in found)
        raise RunError(
            f"{workdir} is a run of {len(found)} seeds {list(found)}: each seed's model is its "
            f"own folder ({dirs})"
        )


def single_seed_resume_check(seed: int) -> Callable[[Mapping[str, Any], Any], None]:
    """For a run of one seed (``loop.prepare``'s ``check_saved``): a workdir whose
    checkpoints stack several seeds resumes only as a run of those seeds."""

    def check(old_cfg: Mapping[str, Any], workdir) -> None:
        if len(seeds_of_saved(old_cfg)) > 1:
            check_same_seeds(old_cfg, (seed,), workdir)

    return check


def single_seed_config(cfg: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The ``config.json`` dict of seed ``seed``'s single run within a run's dict."""
    out = dict(cfg)
    out["seed"] = int(seed)
    out["train"] = dict(cfg["train"], num_seeds=1, seeds=[])
    return out


# -------------------------------------------------------------------------- stacking


def stack(trees: Sequence[Any]) -> Any:
    """Trees of the same structure -> one tree with a leading seed axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, k: int) -> Any:
    """Seed ``k`` of a stacked tree."""
    return jax.tree.map(lambda x: x[k], tree)


def batch_lengths(batch: Batch) -> tuple[int, int]:
    """``(video, text)`` padded lengths of a batch."""
    return int(batch["src_vid"].shape[1]), int(batch["src_txt"].shape[1])


def pad_batch(batch: Batch, video_len: int, text_len: int) -> Batch:
    """Zero-pads a batch's clip / token axes to ``video_len`` / ``text_len`` (masks 0), as
    ``collate`` pads to a larger bucket; the official lengths are left as they are."""
    out = dict(batch)
    for keys, size in ((VIDEO_AXIS_KEYS, video_len), (TEXT_AXIS_KEYS, text_len)):
        for key in keys:
            if key not in out:
                continue
            x = out[key]
            if x.shape[1] > size:
                raise ValueError(f"{key}: length {x.shape[1]} exceeds the padded length {size}")
            if x.shape[1] < size:
                widths = [(0, 0)] * x.ndim
                widths[1] = (0, size - x.shape[1])
                out[key] = np.pad(x, widths)
    return out


def stack_batches(batches: Sequence[Batch]) -> Batch:
    """K batches -> one with a leading seed axis, padded to the largest of their lengths."""
    v = max(batch_lengths(b)[0] for b in batches)
    t = max(batch_lengths(b)[1] for b in batches)
    padded = [pad_batch(b, v, t) for b in batches]
    return {k: np.stack([b[k] for b in padded]) for k in padded[0]}


def step_calls(batches: Sequence[Batch], mode: str) -> list[tuple[np.ndarray, Batch]]:
    """The calls of the step that train one step of K seeds: ``[(member [K] bool, stacked
    batch [K, ...])]``.

    ``'common'``: one call, every batch padded to the largest lengths. ``'exact'``: one call
    per distinct ``(video, text)`` length pair, in ascending order; a seed of another pair gets
    a copy of a member's batch in that call (its update is masked out).
    """
    k = len(batches)
    if mode == "common":
        return [(np.ones(k, bool), stack_batches(batches))]
    if mode != "exact":
        raise ValueError(f"seed padding must be one of {PADDING_MODES}, got {mode!r}")
    lengths = [batch_lengths(b) for b in batches]
    calls = []
    for pair in sorted(set(lengths)):
        member = np.asarray([x == pair for x in lengths])
        first = batches[int(np.flatnonzero(member)[0])]
        calls.append((member, stack_batches([b if m else first for b, m in zip(batches, member)])))
    return calls


def device_stacked_batch(local: Batch, sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's rows of K stacked global batches ``[K, B_local, ...]`` -> global
    arrays ``[K, B, ...]`` sharded over the data axis (``P(None, 'data')``)."""
    n = jax.process_count()
    return {
        key: jax.make_array_from_process_local_data(
            sharding, v, (v.shape[0], v.shape[1] * n, *v.shape[2:])
        )
        for key, v in local.items()
    }


# ----------------------------------------------------------------------------- steps


def seeds_train_step(
    state: Any,
    batch: dict[str, jax.Array],
    rngs: jax.Array,
    running: jax.Array,
    member: jax.Array,
    *,
    train_step: Callable[..., Any],
) -> tuple[Any, dict[str, jax.Array], jax.Array]:
    """One step of K seeds: ``train_step`` vmapped over the leading seed axis.

    Args:
      state: stacked train state ``[K, ...]``.
      batch: stacked batch ``[K, B, ...]``.
      rngs: ``[K]`` dropout keys (each seed's ``dropout_rng`` of its single run).
      running: ``[K]`` bool, seeds still training (carried from call to call).
      member: ``[K]`` bool, seeds whose batch this call holds.

    Returns:
      ``(state, metrics [K] each, running)``: a seed's state moves only where it is running,
      a member and its loss and gradient norm are finite; a member whose loss or gradient
      norm is not finite keeps its state and stops running.
    """
    new_state, metrics = jax.vmap(train_step)(state, batch, rngs)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])  # [K]
    update = running & member & finite  # [K]

    def pick(new, old):
        mask = update.reshape(update.shape + (1,) * (new.ndim - 1))  # [K, 1, ...]
        return jnp.where(mask, new, old)

    state = jax.tree.map(pick, new_state, state)
    return state, metrics, running & ~(member & ~finite)


def build_seeds_train_step(mesh: jax.sharding.Mesh, train_step, matmul_precision: str):
    """:func:`seeds_train_step` of ``train_step`` (``(state, batch, rng) -> (state,
    metrics)``, e.g. :func:`trdetr_jax.train.step_of_config`) jitted over ``mesh``:
    ``(state, batch, rngs, running, member) -> (state, metrics, running)``; state, keys and
    flags replicated, the stacked batch sharded ``P(None, 'data')``; donates the state."""
    from trdetr_jax import precision

    replicated = NamedSharding(mesh, P())
    stacked_data = NamedSharding(mesh, P(None, "data"))
    train_fn = jax.jit(
        functools.partial(seeds_train_step, train_step=train_step),
        in_shardings=(replicated, stacked_data, replicated, replicated, replicated),
        out_shardings=(replicated, replicated, replicated),
        donate_argnames=("state",),
    )
    return precision.with_matmul_precision(train_fn, matmul_precision)


# ----------------------------------------------------------------------- batches


def seed_step_batches(per_seed: Sequence[Iterable[Batch]]) -> Iterable[list[Batch]]:
    """The K seeds' batch iterators, zipped step by step (they have the same length)."""
    return (list(batches) for batches in zip(*per_seed, strict=True))


# ----------------------------------------------------------------------- summary


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """``(mean, sample std (ddof 1), n)`` over the values that are not None; std is None
    for fewer than two values, both None for none."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None, 0
    mean = math.fsum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None, len(xs)
    var = math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return mean, math.sqrt(var), len(xs)


def over_seeds(briefs: Sequence[Mapping[str, float | None] | None]) -> dict[str, dict[str, Any]]:
    """``{metric: {'mean', 'std', 'n'}}`` over the per-seed brief metrics (metric order of
    the first brief; seeds without results left out)."""
    names: list[str] = []
    for brief in briefs:
        for name in brief or {}:
            if name not in names:
                names.append(name)
    out = {}
    for name in names:
        mean, std, n = mean_std([(b or {}).get(name) for b in briefs])
        out[name] = {"mean": mean, "std": std, "n": n}
    return out


# ------------------------------------------------------------------------ evaluation


def predict_split_seeds(
    eval_fn,
    data_sharding: NamedSharding,
    params: Any,
    eval_ds,
    config: ml_collections.ConfigDict,
    batch_size: int,
    num_seeds: int,
) -> list[list[dict[str, Any]]]:
    """Submission rows of every query of ``eval_ds`` for each of the K stacked ``params``
    (as :func:`trdetr_jax.inference.predict_split` for one): ``[rows of seed 0, ...]``.

    ``eval_fn(params, batch)`` is the single-seed jitted eval step, called once per seed on
    each batch (loaded once): a seed's predictions are those its single run, ``predict`` and
    ``evaluate --checkpoint`` compute from the same parameters, bit for bit (a vmapped
    forward pass reduces in another order). Evaluation is a small part of a run's time."""

    rows: list[list[dict[str, Any]]] = [[] for _ in range(num_seeds)]
    examples = min(config.train.eval_batch_size, batch_size)
    per_seed = [unstack(params, k) for k in range(num_seeds)]
    for batch, metas in mesh_lib.prefetch_to_devices(
        data_lib.eval_batches(eval_ds, examples, pad_to=batch_size),
        data_sharding,
        config.data.prefetch_depth,
    ):
        for k in range(num_seeds):
            out = mesh_lib.to_host(eval_fn(per_seed[k], batch))
            rows[k] += inference.output_rows(out, metas, config)
    return rows


# ------------------------------------------------------------------------------ loop


def check_same_seeds(old_cfg: Mapping[str, Any], seeds: Sequence[int], workdir) -> None:
    """A workdir's checkpoints hold the seeds of its ``config.json``: resuming it with other
    seeds (or one seed's run with several, or the reverse) cannot reproduce it."""
    before = seeds_of_saved(old_cfg)
    if tuple(before) != tuple(seeds):
        raise RunError(
            f"{workdir} holds a run of seeds {list(before)}, but the config asks for seeds "
            f"{list(seeds)} (config.seed, config.train.num_seeds, config.train.seeds); "
            "resuming would not reproduce it. Use another --workdir."
        )


# Jitted seed steps of recent runs, beside the single-seed steps they are built with
# (``train.cached_steps``): ``id(single steps) -> (single steps, train step)``.
_SEEDS_STEPS_CACHE = steps_lib.Recent(4)


def cached_seeds_steps(single, make_step: Callable[[], Any], matmul_precision: str):
    """:func:`build_seeds_train_step` of ``make_step()`` for the run whose single-seed steps
    are ``single``, reused while ``single`` is (the same config, mesh and shapes)."""
    _, train_fn = _SEEDS_STEPS_CACHE.get(
        id(single),
        lambda: (single, build_seeds_train_step(single.mesh, make_step(), matmul_precision)),
        valid=lambda entry: entry[0] is single,  # not another object at a reused id
    )
    return train_fn


def _status(loop, failed: str | None, num_epochs: int) -> str:
    if failed is not None:
        return "non-finite"
    if loop.stopped_early:
        return "stopped early"
    return "finished" if loop.epoch >= num_epochs else "unfinished"


def train_and_evaluate_seeds(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    devices: Sequence[jax.Device] | None = None,
    single_steps: Callable[..., Any],
    step_of_config: Callable[..., Any],
) -> dict[str, Any]:
    """Trains the config's seeds at once (module docstring); resumes from ``workdir``.

    Called by :func:`trdetr_jax.train.train_and_evaluate` for a config of several seeds,
    which passes its step functions: ``single_steps(config, mesh, n_steps_epoch,
    batch_shapes)`` (the single-seed steps: init, eval, shardings) and
    ``step_of_config(config, mesh, n_steps_epoch)`` (the train step to vmap).

    The checks before the workdir is touched, the resume (newest readable checkpoint,
    unreadable ones set aside) and the logging are those of
    :func:`trdetr_jax.train.train_and_evaluate`. Returns the run summary (also printed as a
    table and written to ``summary.json``): mean ± std over seeds and one row per seed.
    """
    import time

    from absl import logging

    from trdetr_jax import checkpointing, files, precision, runlog

    clock = loop_lib.Clock()
    try:
        seeds = seeds_of_config(config)
    except SeedsError as e:
        raise RunError(str(e)) from None
    num = len(seeds)
    mode = config.train.seed_padding
    setup = loop_lib.prepare(
        config, workdir, devices, check_saved=lambda old, wd: check_same_seeds(old, seeds, wd)
    )
    config, tcfg, workdir_path, mesh = setup.config, setup.config.train, setup.workdir, setup.mesh
    train_ds, eval_ds, n_steps_epoch = setup.train_ds, setup.eval_ds, setup.n_steps_epoch
    total_steps, new_cfg = setup.total_steps, setup.new_cfg
    single = single_steps(
        config, mesh, n_steps_epoch, data_lib.abstract_batch(train_ds, tcfg.batch_size)
    )
    mesh_lib.check_process_rows(single.batch_sharding, tcfg.batch_size)
    train_fn = cached_seeds_steps(
        single,
        lambda: step_of_config(config, mesh, n_steps_epoch),
        precision.of_config(config),
    )
    replicated = single.replicated
    stacked_data = NamedSharding(mesh, P(None, "data"))
    # Each seed's two streams, as its single run splits them.
    keys = [jax.random.split(jax.random.key(s)) for s in seeds]
    dropout_rngs = jax.device_put(jnp.stack([k[1] for k in keys]), replicated)  # [K]
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((num, *x.shape), x.dtype, sharding=replicated),
        single.abstract_state,
    )

    # ---- checkpoints: resume from the newest one that can be read, if there is one.
    ckpt = checkpointing.RunCheckpoints(setup.ckpt_dir, loop_type=checkpointing.SeedsLoopState)
    restored, notes = loop_lib.restore(ckpt, abstract, workdir_path)
    if restored is not None and list(restored[2].seeds) != list(seeds):
        raise RunError(
            f"{workdir_path} holds a run of seeds {restored[2].seeds}, but the config asks "
            f"for {list(seeds)}; resuming would not reproduce it. Use another --workdir."
        )

    # ---- the run goes ahead: record its configuration (the run's and each seed's).
    seed_dirs = [workdir_path / seed_dirname(s) for s in seeds]
    for s, d in zip(seeds, seed_dirs):
        d.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:
            files.write_json_atomic(d / checkpointing.CONFIG_FILE, single_seed_config(new_cfg, s))
    log = loop_lib.open_run(setup, restored, notes, seed_dirs=dict(zip(seeds, seed_dirs)))
    seed_ckpts = [
        checkpointing.RunCheckpoints(d / checkpointing.CHECKPOINT_SUBDIR) for d in seed_dirs
    ]
    train_fn = loop_lib.log_new_shapes(train_fn, "train step of the seeds", log.info)
    if restored is None:
        init = jax.jit(lambda *xs: stack(xs), out_shardings=replicated)
        state = init(*[single.init(k[0]) for k in keys])
        loop = checkpointing.SeedsLoopState(
            seeds=list(seeds),
            loops=[checkpointing.LoopState(seed=s) for s in seeds],
            failed=[None] * num,
        )
        log.info(
            "new run of %d seeds in %s: seeds %s, %d devices (%s), %d train / %d eval "
            "examples, %d steps/epoch, %d epochs, seed padding %r",
            num,
            workdir_path,
            list(seeds),
            mesh.devices.size,
            jax.devices()[0].platform,
            len(train_ds),
            len(eval_ds),
            n_steps_epoch,
            tcfg.num_epochs,
            mode,
        )
    else:
        _, state, loop = restored
        for c in seed_ckpts:  # the steps after the resume point are trained again
            c.delete_after(loop.step)
        loop_lib.log_resume(log, setup, loop)
    if tcfg.get("steps_per_dispatch", 1) != 1 or config.data.get("features_on_device") == "on":
        # Not built for K seeds yet: every step is its own dispatch (per bucket pair), with
        # features sent from the host; the results are the same either way.
        log.info(
            "a run of several seeds sends features from the host and dispatches every step "
            "(config.data.features_on_device / config.train.steps_per_dispatch are not used)"
        )
    clock.before = loop.wall_time_s
    running_host = [
        f is None and not lp.stopped_early and lp.epoch < tcfg.num_epochs
        for lp, f in zip(loop.loops, loop.failed)
    ]
    running = jax.device_put(np.asarray(running_host), replicated)

    def save() -> None:
        loop.wall_time_s = clock.total()
        ckpt.save(state, loop)

    def save_seed(k: int, score: float | None) -> None:
        """Seed ``k``'s state and loop state into its own workdir (at its own step)."""
        lp = loop.loops[k]
        if lp.step in seed_ckpts[k].manager.all_steps():
            return
        lp.wall_time_s = clock.total()
        seed_ckpts[k].save(unstack(state, k), lp, score=score)

    n_params = sum(x.size for x in jax.tree.leaves(state.params)) // num
    log.info("model: %.2fM parameters per seed, %d seeds", n_params / 1e6, num)
    best = [loop_lib.best_paths(d, config.data.eval_split_name) for d in seed_dirs]

    def run_eval(epoch: int) -> None:
        t0 = time.time()
        rows = predict_split_seeds(
            single.eval,
            single.batch_sharding,
            state.params,
            eval_ds,
            config,
            setup.eval_batch_size,
            num,
        )
        for k, s in enumerate(seeds):
            if not running_host[k]:
                continue
            results = inference.score_rows(rows[k], eval_ds, config)
            lp = loop.loops[k]
            loop_lib.record_eval(
                log, lp, results, rows[k], epoch=epoch, tcfg=tcfg, paths=best[k], seed=s
            )
            running_host[k] = not lp.stopped_early
            save_seed(k, loop_lib.kept_score(lp))
        log.info("evaluation of %d seeds: %.1fs", num, time.time() - t0)

    # ---- the loop.
    bar = runlog.ProgressBar(total_steps, loop.step)
    log.bar = bar
    pending: tuple | None = None  # (step, epoch, batch_in_epoch, [(member, metrics)])
    t_log = time.perf_counter()

    def drain() -> None:
        """The pending step's metrics: per seed, the loss check, sums and log lines."""
        nonlocal pending, t_log, running
        if pending is None:
            return
        step, epoch, batch_in_epoch, calls = pending
        pending = None
        fetched = [(member, jax.device_get(m)) for member, m in calls]
        logged = False
        newly_failed = False
        losses = {}
        for k, s in enumerate(seeds):
            if not running_host[k]:
                continue
            metrics = next(m for mb, m in fetched if mb[k])
            metrics = {n: float(np.asarray(v)[k]) for n, v in metrics.items()}
            losses[k] = metrics["loss"]
            lp = loop.loops[k]
            if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])):
                parts = ", ".join(f"{n}={v:.4g}" for n, v in sorted(metrics.items()))
                loop.failed[k] = (
                    f"training loss became {metrics['loss']} at step {step} ({parts}); this "
                    f"seed stopped with the state of step {lp.step}"
                )
                running_host[k] = False
                newly_failed = True
                logging.warning("seed %d: %s", s, loop.failed[k])
                log.info("seed %d: %s", s, loop.failed[k], console=False)
                log.record({"type": "stopped", "seed": s, "step": step, "reason": loop.failed[k]})
                continue
            loop_lib.add_train_metrics(lp, metrics)
            lp.step, lp.epoch, lp.batch_in_epoch = step, epoch, batch_in_epoch
            if step % tcfg.log_every_steps == 0 or step == total_steps:
                seconds = time.perf_counter() - t_log
                loop_lib.log_train(log, lp, step=step, epoch=epoch, seconds=seconds, seed=s)
                logged = True
        if logged:
            t_log = time.perf_counter()
        first = next((k for k in range(num) if running_host[k]), None)
        bar.update(step, "" if first is None else f"seed {seeds[first]} loss {losses[first]:.4f}")
        if newly_failed:  # its last good state, into its own workdir (unless saved there)
            for k in range(num):
                if loop.failed[k] is not None:
                    save_seed(k, None)

    def put(calls):
        return [
            (member, jax.device_put(member, replicated), device_stacked_batch(b, stacked_data))
            for member, b in calls
        ]

    def step_batches(epoch: int, start: int):
        iters = [
            (
                b
                for b, _ in data_lib.train_batches(
                    train_ds, tcfg.batch_size, seed=s, epoch=epoch, start_step=start
                )
            )
            for s in seeds
        ]
        for _ in range(start, n_steps_epoch):
            # A seed that has stopped gets no batches of its own (a running seed's stand in).
            got = [next(it) if running_host[k] else None for k, it in enumerate(iters)]
            stand_in = next((b for b in got if b is not None), None)
            if stand_in is None:
                return
            yield step_calls([stand_in if b is None else b for b in got], mode)

    try:
        while loop.epoch < tcfg.num_epochs and any(running_host):
            epoch = loop.epoch
            for calls in data_lib.prefetch(
                step_batches(epoch, loop.batch_in_epoch), put, config.data.prefetch_depth
            ):
                done = []
                for member, member_dev, batch in calls:
                    state, metrics, running = train_fn(
                        state, batch, dropout_rngs, running, member_dev
                    )
                    done.append((member, metrics))
                drain()
                loop.step += 1
                loop.batch_in_epoch += 1
                pending = (loop.step, epoch, loop.batch_in_epoch, done)
                end_of_epoch = loop.batch_in_epoch == n_steps_epoch
                if not end_of_epoch and loop.step % tcfg.checkpoint_every_steps == 0:
                    drain()
                    save()
            drain()
            if not any(running_host):  # every seed stopped inside the epoch
                save()
                break
            loop.epoch, loop.batch_in_epoch = epoch + 1, 0
            for k in range(num):
                if running_host[k]:
                    loop.loops[k].epoch, loop.loops[k].batch_in_epoch = epoch + 1, 0
            is_last = loop.epoch == tcfg.num_epochs
            if loop.epoch % tcfg.eval_every_epochs == 0 or is_last:
                run_eval(epoch)
                running = jax.device_put(np.asarray(running_host), replicated)
                save()
            elif is_last or loop.step % tcfg.checkpoint_every_steps == 0:
                save()
    finally:
        bar.close()
    ckpt.close()
    for c in seed_ckpts:
        c.close()

    wall = clock.total()
    per_seed = []
    for k, s in enumerate(seeds):
        lp = loop.loops[k]
        of_seed = loop_lib.run_summary(
            lp,
            workdir=seed_dirs[k],
            best_metric=tcfg.best_metric,
            best_predictions=best[k][0],
            wall_time_s=wall,
        )
        status = _status(lp, loop.failed[k], tcfg.num_epochs)
        per_seed.append({"seed": s, "status": status, "reason": loop.failed[k], **of_seed})
        if jax.process_index() == 0:
            files.write_json_atomic(seed_dirs[k] / "summary.json", of_seed)
    summary = {
        "workdir": str(workdir_path),
        "seeds": list(seeds),
        "seed_padding": mode,
        "steps": loop.step,
        "epochs": loop.epoch,
        "best_metric": tcfg.best_metric,
        "over_seeds": over_seeds([r["best_brief"] for r in per_seed]),
        "per_seed": per_seed,
        "finished": [r["seed"] for r in per_seed if r["status"] in ("finished", "stopped early")],
        "non_finite": [r["seed"] for r in per_seed if r["status"] == "non-finite"],
        "wall_time_s": wall,
    }
    loop_lib.write_summary(log, workdir_path, summary, runlog.seeds_summary_table(summary))
    return summary
