"""One entry point from prediction rows and ground truth to the full nested metrics.

Layouts (the official ones where an official one exists):

* QVHighlights / Charades-STA, as the official ``eval_submission`` returns them:
  ``{"brief": {...}, "HL-min-Fair": .., "HL-min-Good": .., "HL-min-VeryGood": .., "full": ..,
  "long": .., "middle": .., "short": ..}``. The brief lists the MR keys sorted, then
  ``HL-min-{level}-{mAP,Hit1}``. MR blocks are present when the first prediction row has
  ``pred_relevant_windows``, HD blocks when it has ``pred_saliency_scores`` and the ground
  truth has saliency. Values are percentages with 2 decimals.
  A bucket without any ground-truth window (Charades has none over 30 s) is left out, its
  brief value is null and ``"_skipped_buckets"`` says why. Charades adds
  ``MR-full-R1@0.3`` and ``MR-full-mIoU`` to the brief (see charades.py).
* TVSum: ``{"brief": {"mAP": m}, "mAP": m, "per_domain_mAP": {domain: mAP}}``, fractions
  rounded to 5 decimals as the official code does.
"""

from __future__ import annotations

from trdetr_jax.evaluation.charades import charades_brief_extras
from trdetr_jax.evaluation.hd import highlight_detection
from trdetr_jax.evaluation.io import JsonlFile
from trdetr_jax.evaluation.mr import BUCKETS, moment_retrieval
from trdetr_jax.evaluation.tvsum import tvsum_metrics
from trdetr_jax.evaluation.validate import parse_ground_truth, parse_submission

# Metric a training loop should maximise when picking a checkpoint, per dataset.
SELECTION_KEYS = {
    "qvhighlights": "MR-full-mAP",
    "charades": "MR-full-R1@0.5",
    "tvsum": "mAP",
}


def _as_file(rows, source: str) -> JsonlFile:
    return rows if isinstance(rows, JsonlFile) else JsonlFile.from_rows(rows, source)


def evaluate_submission(
    rows,
    gt_rows,
    dataset: str | None = None,
    *,
    strict: bool = False,
    allow_missing: bool = False,
    tvsum_videos_per_batch: int | None = None,
) -> dict:
    """Metrics of prediction rows against ground-truth rows.

    rows, gt_rows: lists of dicts (one per JSON line) or `JsonlFile`s (which carry file names
    and line numbers for messages). dataset: 'qvhighlights', 'charades' or 'tvsum'; detected
    from the ground truth when None.
    strict: odd-but-valid predictions raise instead of producing one OddPredictionWarning.
    allow_missing: evaluate only the qids present in both (official ``match_number=False``)
    instead of raising when ground-truth qids have no prediction.
    tvsum_videos_per_batch: reproduce the official TVSum batching bug for this batch size.

    Raises EvalInputError for anything that cannot be evaluated. Returns the nested metrics
    described in the module docstring; ``metrics["brief"][SELECTION_KEYS[dataset]]`` is the
    model-selection number.
    """
    gt = parse_ground_truth(_as_file(gt_rows, "<ground truth>"), dataset)
    sub = parse_submission(
        _as_file(rows, "<submission>"), gt, strict=strict, allow_missing=allow_missing
    )
    if gt.dataset == "tvsum":
        return tvsum_metrics(
            sub.saliency, gt.labels, gt.domains, videos_per_batch=tvsum_videos_per_batch
        )
    return _qvh_layout(sub, gt)


def _shared(gt_dict: dict, pred: dict) -> dict:
    return {q: v for q, v in gt_dict.items() if q in pred}


def _qvh_layout(sub, gt) -> dict:
    predicted = sub.windows if sub.windows is not None else sub.saliency
    brief, blocks, skipped = {}, {}, {}
    if sub.windows is not None:
        gt_windows = _shared(gt.windows, predicted)
        buckets = moment_retrieval(sub.windows, gt_windows)
        for (name, (lo, hi)), block in zip(BUCKETS, buckets.values()):
            if block is None:
                skipped[name] = (
                    f"empty bucket: no ground-truth window with length in ({lo}, {hi}] "
                    f"among {len(gt_windows)} queries"
                )
            else:
                blocks[name] = block

        def value(name, kind, key):
            block = buckets[name]
            return None if block is None or block[kind] is None else block[kind][key]

        mr_brief = {
            "MR-full-mAP": value("full", "MR-mAP", "average"),
            "MR-full-mAP@0.5": value("full", "MR-mAP", "0.5"),
            "MR-full-mAP@0.75": value("full", "MR-mAP", "0.75"),
            "MR-short-mAP": value("short", "MR-mAP", "average"),
            "MR-middle-mAP": value("middle", "MR-mAP", "average"),
            "MR-long-mAP": value("long", "MR-mAP", "average"),
            "MR-full-R1@0.5": value("full", "MR-R1", "0.5"),
            "MR-full-R1@0.7": value("full", "MR-R1", "0.7"),
        }
        if gt.dataset == "charades":
            mr_brief.update(charades_brief_extras(sub.windows, gt_windows))
        brief.update(sorted(mr_brief.items()))
    if sub.saliency is not None:
        hd = highlight_detection(sub.saliency, _shared(gt.scores, predicted))
        blocks.update(hd)
        for level, block in hd.items():
            for key, v in block.items():
                brief[f"{level}-{key.split('-')[1]}"] = v
    result = {"brief": brief}
    result.update(sorted(blocks.items()))
    if skipped:
        result["_skipped_buckets"] = skipped
    return result
