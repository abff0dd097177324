"""Predicting and scoring a split: the one path training's evaluation, ``evaluate
--checkpoint``, ``predict`` and the :class:`~trdetr_jax.Predictor` share.

:func:`eval_step` is the inference-mode forward pass, :func:`jit_eval_step` jits it over a
mesh, :func:`predict_split` turns a dataset into submission rows (official format) and
:func:`evaluate_split` scores them with the official metrics.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from trdetr_jax import data as data_lib
from trdetr_jax import mesh as mesh_lib
from trdetr_jax import precision
from trdetr_jax.data import resident
from trdetr_jax.model import model_inputs

# Model outputs the evaluation needs on the host.
EVAL_OUTPUT_KEYS = ("pred_logits", "pred_spans", "saliency_scores", "video_mask")


def eval_step(params: Any, batch: dict[str, jax.Array], *, model) -> dict[str, jax.Array]:
    """Forward pass in inference mode; returns the outputs the post-processing needs."""
    outputs = model.apply({"params": params}, **model_inputs(batch), train=False)
    return {k: outputs[k] for k in EVAL_OUTPUT_KEYS}


def jit_eval_step(
    mesh: jax.sharding.Mesh,
    model,
    params_sharding: Any = None,
    matmul_precision: str = precision.DEFAULT,
):
    """``eval_step`` jitted over ``mesh``: replicated params, batch-sharded inputs/outputs.

    Called as ``step(params, batch)``; ``step.bind(tables)`` gives the step for batches whose
    features are resident on the device (:mod:`trdetr_jax.data.resident`).
    """
    if params_sharding is None:
        params_sharding = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))
    step = jax.jit(
        resident.gathering(functools.partial(eval_step, model=model)),
        in_shardings=(NamedSharding(mesh, P()), params_sharding, data),
        out_shardings=data,
    )
    return resident.WithTables(precision.with_matmul_precision(step, matmul_precision))


def eval_dataset_name(config: ml_collections.ConfigDict) -> str:
    """The metric family of the config's dataset ('qvhighlights', 'charades' or 'tvsum')."""
    from trdetr_jax.data import annotations

    return annotations.layout_of(config.data.dataset)


def evaluate_split(
    eval_fn,
    data_sharding: NamedSharding,
    params: Any,
    eval_ds,
    config: ml_collections.ConfigDict,
    batch_size: int,
    resident=None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Predicts the eval split and scores it with the official metrics.

    Returns (metrics, submission rows); ``metrics['brief']`` holds the headline numbers.
    """
    rows = predict_split(eval_fn, data_sharding, params, eval_ds, config, batch_size, resident)
    return score_rows(rows, eval_ds, config), rows


def score_rows(rows: list[dict[str, Any]], eval_ds, config: ml_collections.ConfigDict) -> dict:
    """The official metrics of the model's own prediction rows of ``eval_ds``.

    The official post-processing makes some rows odd by construction (windows clamped to
    150 s, past the end of a shorter video; saliency written for a dataset without saliency
    annotations): the evaluation's warnings about them are not shown, as they would repeat at
    every evaluation of a run. Ground-truth problems name the annotation file and line.
    """
    import warnings

    from trdetr_jax import evaluation
    from trdetr_jax.evaluation.validate import EvaluationNote, OddPredictionWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OddPredictionWarning)
        warnings.simplefilter("ignore", EvaluationNote)
        return evaluation.evaluate_submission(
            rows, eval_ds.gt_file(), dataset=eval_dataset_name(config)
        )


def predict_split(
    eval_fn,
    data_sharding: NamedSharding,
    params: Any,
    eval_ds,
    config: ml_collections.ConfigDict,
    batch_size: int,
    resident=None,
) -> list[dict[str, Any]]:
    """Submission rows (official format) for every query of ``eval_ds``.

    ``eval_fn(params, batch)`` is a jitted :func:`eval_step` (see :func:`jit_eval_step`);
    with ``resident`` (the split's features on the device) it must be the step bound to its
    tables (``step.bind(resident.tables)``).
    """
    rows: list[dict[str, Any]] = []
    examples = min(config.train.eval_batch_size, batch_size)  # batch_size: rows, rounded up
    for batch, metas in mesh_lib.prefetch_to_devices(
        data_lib.eval_batches(eval_ds, examples, pad_to=batch_size, resident=resident),
        data_sharding,
        config.data.prefetch_depth,
    ):
        rows += output_rows(mesh_lib.to_host(eval_fn(params, batch)), metas, config)
    return rows


def output_rows(out: dict[str, Any], metas: list[dict], config) -> list[dict[str, Any]]:
    """Submission rows of one eval batch's host outputs (padding rows, which come last, are
    dropped: ``metas`` lists the real ones)."""
    from trdetr_jax import evaluation

    # Without matching (TVSum) the span heads are untrained: saliency only.
    windows = bool(config.loss.use_matcher)
    n = len(metas)
    out = {k: np.asarray(v)[:n] for k, v in out.items()}
    return evaluation.predictions_to_rows(
        out["pred_logits"] if windows else None,
        out["pred_spans"] if windows else None,
        out["saliency_scores"],
        out["video_mask"],
        metas,
        **postprocess_kwargs(config),
    )


def postprocess_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return dict(
        mode=config.eval.postprocess,
        clip_length=config.data.clip_length,
        nms_thd=config.eval.nms_thd,
        max_before_nms=config.eval.max_before_nms,
        max_after_nms=config.eval.max_after_nms,
        dataset=eval_dataset_name(config),
    )


def brief_metric(results: dict[str, Any], name: str) -> float:
    brief = results["brief"]
    if brief.get(name) is None:
        available = sorted(k for k, v in brief.items() if v is not None)
        raise KeyError(
            f"config.train.best_metric={name!r} is not among the evaluation's metrics "
            f"(or is empty on this split); available: {available}"
        )
    return float(brief[name])
