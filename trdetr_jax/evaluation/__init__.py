"""Evaluation for QVHighlights, Charades-STA and TVSum, with the official metric definitions.

Host-side NumPy (binary64) only; nothing here needs JAX. Typical use from a training loop::

    from trdetr_jax.evaluation import SELECTION_KEYS, evaluate_submission, predictions_to_rows
    rows = predictions_to_rows(out["pred_logits"], out["pred_spans"], out["saliency_scores"],
                               out["video_mask"], metas, mode="official")
    metrics = evaluate_submission(rows, gt_rows)          # dataset detected from gt_rows
    score = metrics["brief"][SELECTION_KEYS["qvhighlights"]]

See shared/eval/README.md for every definition and quirk this package reproduces.
"""

from trdetr_jax.evaluation.errors import EvalInputError
from trdetr_jax.evaluation.io import JsonlFile, dumps_metrics, read_jsonl
from trdetr_jax.evaluation.metrics import SELECTION_KEYS, evaluate_submission
from trdetr_jax.evaluation.nms import temporal_nms
from trdetr_jax.evaluation.postprocess import predictions_to_rows
from trdetr_jax.evaluation.validate import (
    DATASETS,
    EvaluationNote,
    OddPredictionWarning,
    detect_dataset,
)

__all__ = [
    "DATASETS",
    "EvalInputError",
    "EvaluationNote",
    "JsonlFile",
    "OddPredictionWarning",
    "SELECTION_KEYS",
    "detect_dataset",
    "dumps_metrics",
    "evaluate_submission",
    "predictions_to_rows",
    "read_jsonl",
    "temporal_nms",
]
