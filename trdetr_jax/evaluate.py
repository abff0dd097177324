"""Score a prediction file (or a checkpoint) with the official metrics.

    python -m trdetr_jax.evaluate --submission PRED.jsonl --gt GT.jsonl [--out METRICS.json]
        [--dataset qvhighlights|charades|tvsum] [--strict] [--allow-missing]
    python -m trdetr_jax.evaluate --checkpoint DIR --gt GT.jsonl [--feature-root DIR]
        [--override key=value ...] [--save-submission PRED.jsonl] [--out METRICS.json]
    python -m trdetr_jax.evaluate --submission SEED1.jsonl SEED2.jsonl ... --gt GT.jsonl
    python -m trdetr_jax.evaluate --checkpoint WORKDIR_OF_SEVERAL_SEEDS --gt GT.jsonl

Several prediction files (one per seed), or the workdir of a run of several seeds (each
``seed_<s>/`` model is run), are scored one by one, then every brief metric is printed as
mean ± std over them (sample std, as ``summary.json`` of such a run).

`--gt` takes a path, or DATASET:SPLIT for an annotation file shipped with the package
(e.g. ``qvhighlights:val``, ``qvhighlights:test``, ``charades:test``, ``tvsum:val``).
Prints the brief table; `--out` receives the full nested metrics in the official JSON
layout (written atomically). Problems with the inputs end the run with a one-line message
and exit status 1.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import warnings

from trdetr_jax import annotations
from trdetr_jax.evaluation import (
    DATASETS,
    EvalInputError,
    EvaluationNote,
    JsonlFile,
    OddPredictionWarning,
    dumps_metrics,
    evaluate_submission,
    read_jsonl,
)
from trdetr_jax.files import write_jsonl_atomic, write_text_atomic


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trdetr_jax.evaluate",
        description="Moment retrieval / highlight detection metrics, as the official "
        "QVHighlights evaluation computes them (also Charades-STA and TVSum).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--submission",
        nargs="+",
        help="predictions, one JSON object per line; several files: mean ± std over them",
    )
    src.add_argument(
        "--checkpoint",
        help="run this checkpoint on the --gt queries first (a workdir of several seeds: each)",
    )
    p.add_argument("--gt", required=True, help="ground-truth .jsonl, or DATASET:SPLIT")
    p.add_argument("--out", help="write the full nested metrics (JSON) here")
    p.add_argument("--dataset", choices=DATASETS, help="default: detected from the ground truth")
    p.add_argument(
        "--strict", action="store_true", help="reject odd predictions instead of warning"
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="evaluate only qids present in both files (official match_number=False)",
    )
    p.add_argument(
        "--tvsum-videos-per-batch",
        type=_positive_int,
        metavar="N",
        help="TVSum: reproduce the official bug that scores only the last video of each "
        "batch of N (default: every video counts)",
    )
    p.add_argument("--feature-root", help="with --checkpoint: folder of the feature files")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --checkpoint: config override (repeatable)",
    )
    p.add_argument("--save-submission", help="with --checkpoint: also write the predictions")
    p.add_argument(
        "--traceback", action="store_true", help="show the traceback of unexpected errors"
    )
    return p


def resolve_gt(spec: str) -> pathlib.Path:
    """A path, or DATASET:SPLIT naming a shipped annotation file."""
    path = pathlib.Path(spec)
    if path.exists() or ":" not in spec:
        return path
    dataset, split = spec.split(":", 1)
    try:
        return annotations.path(dataset, split)
    except (ValueError, FileNotFoundError) as e:
        raise EvalInputError(f"--gt {spec}: {e}") from None


def _predict(args, gt_path: pathlib.Path, checkpoint: str | None = None) -> list[dict]:
    from trdetr_jax.data import DataError
    from trdetr_jax.errors import RunError
    from trdetr_jax.predict import predict_rows

    checkpoint = args.checkpoint if checkpoint is None else checkpoint
    try:
        return predict_rows(
            checkpoint,
            str(gt_path),
            feature_root=args.feature_root,
            overrides=tuple(args.override),
        )
    except (RunError, DataError) as e:
        if args.traceback:
            raise
        raise EvalInputError(f"--checkpoint {checkpoint}: {e}") from None


def _format(value) -> str:
    return "null" if value is None else f"{value}"


def print_brief(metrics: dict, dataset: str, n_pred: int, n_gt: int, file=None) -> None:
    file = file or sys.stdout
    print(f"{dataset}: {n_pred} predictions, {n_gt} ground-truth queries", file=file)
    rows = list(metrics["brief"].items())
    if "per_domain_mAP" in metrics:
        rows += [(f"mAP[{d}]", v) for d, v in metrics["per_domain_mAP"].items()]
    width = max(len(k) for k, _ in rows) if rows else 0
    for key, value in rows:
        print(f"  {key:<{width}}  {_format(value)}", file=file)


def _score(args, rows, gt):
    """Metrics of ``rows``; odd-prediction warnings and notes printed to stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OddPredictionWarning)
        warnings.simplefilter("always", EvaluationNote)
        metrics = evaluate_submission(
            rows,
            gt,
            args.dataset,
            strict=args.strict,
            allow_missing=args.allow_missing,
            tvsum_videos_per_batch=args.tvsum_videos_per_batch,
        )
    for w in caught:
        kind = "note" if issubclass(w.category, EvaluationNote) else "warning"
        print(f"{kind}: {w.message}", file=sys.stderr)
    return metrics


def print_over_seeds(results: list[tuple[str, dict]], file=None) -> dict:
    """Every brief metric as mean ± std over ``[(name, metrics), ...]`` (sample std), with
    one column per input; returns ``{metric: {'mean', 'std', 'n'}}``."""
    from trdetr_jax import runlog, seeds

    file = file or sys.stdout
    over = seeds.over_seeds([m["brief"] for _, m in results])
    columns = [{"label": f"#{i + 1}", "best_brief": m["brief"]} for i, (_, m) in enumerate(results)]
    print(f"mean ± std over {len(results)} (sample std):", file=file)
    for i, (name, _) in enumerate(results):
        print(f"  #{i + 1}: {name}", file=file)
    print(runlog.seeds_table(over, columns), file=file)
    return over


def run(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.checkpoint is None and (args.feature_root or args.override or args.save_submission):
        print(
            "error: --feature-root, --override and --save-submission go with --checkpoint",
            file=sys.stderr,
        )
        return 2
    from trdetr_jax import seeds

    seed_dirs = seeds.seed_workdirs(args.checkpoint) if args.checkpoint is not None else []
    if seed_dirs and args.save_submission:
        print(
            f"error: --save-submission takes one model; {args.checkpoint} is a run of "
            f"{len(seed_dirs)} seeds (their best predictions are in each seed_<s>/ folder)",
            file=sys.stderr,
        )
        return 2
    try:
        gt_path = resolve_gt(args.gt)
        gt = read_jsonl(gt_path, what="ground-truth file")
        sources: list[tuple[str, JsonlFile]] = []
        if seed_dirs:
            for d in seed_dirs:
                rows = _predict(args, gt_path, str(d))
                sources.append((str(d), JsonlFile.from_rows(rows, f"<predictions of {d}>")))
        elif args.checkpoint is not None:
            rows = JsonlFile.from_rows(
                _predict(args, gt_path), f"<predictions of {args.checkpoint}>"
            )
            if args.save_submission:
                write_jsonl_atomic(args.save_submission, rows.rows)
            sources.append((args.checkpoint, rows))
        else:
            for path in args.submission:
                sources.append((path, read_jsonl(path, what="submission file")))
        results = []
        for name, rows in sources:
            metrics = _score(args, rows, gt)
            dataset = args.dataset or _detected(gt)
            if len(sources) > 1:
                print(f"== {name}")
            print_brief(metrics, dataset, len(rows), len(gt))
            results.append((name, metrics))
        if len(results) == 1:
            if args.out:
                write_text_atomic(args.out, dumps_metrics(results[0][1]))
                print(f"metrics written to {args.out}")
        else:
            over = print_over_seeds(results)
            if args.out:
                import json

                runs = [{"source": n, "metrics": json.loads(dumps_metrics(m))} for n, m in results]
                text = json.dumps({"runs": runs, "over_seeds": over}, indent=2)
                write_text_atomic(args.out, text)
                print(f"metrics written to {args.out}")
    except (EvalInputError, OSError) as e:  # OSError: the output cannot be written
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug, or a failure inside --checkpoint prediction
        if args.traceback:
            raise
        print(
            f"error: unexpected {type(e).__name__}: {e} (rerun with --traceback for details)",
            file=sys.stderr,
        )
        return 1
    return 0


def _detected(gt: JsonlFile) -> str:
    from trdetr_jax.evaluation import detect_dataset

    return detect_dataset(gt)


if __name__ == "__main__":
    sys.exit(run())
