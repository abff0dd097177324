"""Figures of what a model found, and of a run's curves (PNG; needs matplotlib).

    python -m trdetr_jax.plot query --workdir workdir/demo --qid 400 --out query.png
    python -m trdetr_jax.plot query --preds preds.jsonl --gt val.jsonl --qid 7 --out q.png
    python -m trdetr_jax.plot run --workdir workdir/demo --out curves.png

query: the paper's Fig. 2/3 view of one query: the predicted saliency per clip against the
ground-truth saliency (mean annotator score of each relevant clip), and the top-k predicted
moments (bars labelled with their scores) against the ground-truth windows; time in
seconds. --workdir reads the run's best_<split>_preds.jsonl and its config's evaluation
file; --gt also takes DATASET:SPLIT (a shipped annotation file, as in evaluate).
run: the training losses (class_error on its own axis), learning rate (and grad_norm)
and every evaluation metric of metrics.jsonl against the step.

The figure functions return the matplotlib Figure (matplotlib is the extra "plot":
pip install 'trdetr_jax[plot]'). Figures are written through a temporary file and a
rename, so an interrupted run leaves no partial image.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            "figures need matplotlib: pip install 'trdetr_jax[plot]' (or matplotlib)"
        ) from err
    return plt


def gt_saliency(gt: dict[str, Any], n_clips: int) -> np.ndarray:
    """Ground-truth saliency per clip: the mean annotator score of each relevant clip (0
    elsewhere); TVSum rows (``label``): the mean over annotators."""
    out = np.zeros(n_clips, np.float64)
    if gt.get("label") is not None:
        label = np.asarray(gt["label"], np.float64).mean(1)[:n_clips]
        out[: len(label)] = label
        return out
    for cid, scores in zip(gt.get("relevant_clip_ids", []), gt.get("saliency_scores", [])):
        if 0 <= cid < n_clips:
            out[cid] = float(np.mean(scores))
    return out


def query_figure(
    pred: dict[str, Any],
    gt: dict[str, Any] | None = None,
    *,
    clip_length: float = 2.0,
    top_k: int = 5,
):
    """Fig. 2/3 view of one query. ``pred``: a prediction row (``pred_saliency_scores``,
    ``pred_relevant_windows``); ``gt``: its annotation row (optional).

    Axes 0: predicted saliency (line ``'predicted'``) and ground truth (line
    ``'ground truth'``) per clip, at the clips' start times. Axes 1: one bar per top-k
    predicted moment (patch gid ``'moment'``, row k from the top, labelled with its score) and
    the ground-truth windows (grey spans, gid ``'ground truth'``)."""
    plt = _pyplot()
    sal = np.asarray(pred.get("pred_saliency_scores", []), np.float64)
    t = np.arange(len(sal)) * clip_length
    fig, (ax_s, ax_m) = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
    title = pred.get("query") or (gt or {}).get("query") or f"qid {pred.get('qid')}"
    fig.suptitle(str(title), fontsize=10)
    ax_s.plot(t, sal, color="tab:blue", label="predicted")
    ax_s.set_ylabel("saliency")
    if gt is not None:
        ax_g = ax_s.twinx()
        ax_g.step(
            t, gt_saliency(gt, len(sal)), where="post", color="tab:green", label="ground truth"
        )
        ax_g.set_ylabel("ground truth", color="tab:green")
        ax_s.legend(handles=ax_s.get_lines() + ax_g.get_lines(), loc="upper right", fontsize=8)
    moments = list(pred.get("pred_relevant_windows", []))[:top_k]
    for k, (st, ed, score) in enumerate(moments):
        y = len(moments) - 1 - k
        ax_m.barh(y, ed - st, left=st, height=0.6, color="tab:orange", gid="moment")
        ax_m.text(ed, y, f" {score:.2f}", va="center", fontsize=8)
    for st, ed in (gt or {}).get("relevant_windows", []):
        ax_m.axvspan(st, ed, color="0.8", zorder=0, gid="ground truth")
    ax_m.set_yticks(range(len(moments)), [f"top {len(moments) - y}" for y in range(len(moments))])
    ax_m.set_xlabel("time (s)")
    duration = (gt or {}).get("duration") or pred.get("duration") or len(sal) * clip_length
    ax_m.set_xlim(0, duration)
    fig.tight_layout()
    return fig


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    records = []
    for line in pathlib.Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return records


# Fields drawn on a right-hand axis of their own panel, so they do not flatten the others:
# class_error is a percentage (0-100) beside losses of a few units; grad_norm shares the
# learning-rate panel.
RIGHT_AXIS = {("train", "class_error"): "class error (%)", ("lr", "grad_norm"): "grad norm"}


def curves_figure(metrics_path: str | pathlib.Path):
    """Curves of a ``metrics.jsonl`` against the step, one line per field, labelled with its
    name: the training losses (axes 0; ``class_error`` on its right-hand axis), ``lr``
    (axes 1; ``grad_norm`` on its right-hand axis) and every evaluation metric (axes 2).
    Right-hand axes come after the three panels in ``fig.axes``; each panel's lines differ
    in colour or style."""
    plt = _pyplot()
    records = read_metrics(metrics_path)
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    panels = {"train": axes[0], "lr": axes[1], "eval": axes[2]}
    series: dict[tuple[str, str], tuple[list, list]] = {}
    for r in records:
        kind = r.get("type")
        for name, value in r.items():
            if name in ("type", "step", "epoch", "steps_per_sec") or value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            panel = "lr" if name in ("lr", "grad_norm") else kind
            if panel in panels:
                xs, ys = series.setdefault((panel, name), ([], []))
                xs.append(r["step"])
                ys.append(float(value))
    right = {key: panels[key[0]].twinx() for key in RIGHT_AXIS if key in series}
    colours = plt.get_cmap("tab10").colors
    styles = ("-", "--", ":", "-.")
    handles: dict[str, list] = {p: [] for p in panels}
    for panel in panels:
        names = sorted(n for p, n in series if p == panel)
        for i, name in enumerate(names):
            xs, ys = series[(panel, name)]
            ax = right.get((panel, name), panels[panel])
            (line,) = ax.plot(
                xs,
                ys,
                marker="." if panel == "eval" else None,
                label=name,
                color=colours[i % len(colours)],
                linestyle=styles[(i // len(colours)) % len(styles)],
            )
            handles[panel].append(line)
    for key, ax in right.items():
        ax.set_ylabel(RIGHT_AXIS[key])
    for panel, label in (("train", "training"), ("lr", "learning rate"), ("eval", "eval")):
        panels[panel].set_ylabel(label)
        if handles[panel]:  # beside the axes, not over the data
            panels[panel].legend(
                handles=handles[panel], fontsize=6, loc="upper left", bbox_to_anchor=(1.08, 1)
            )
    axes[2].set_xlabel("step")
    fig.tight_layout()
    return fig


def _rows_by_qid(path) -> dict[str, dict]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return {str(r["qid"]): r for r in read_metrics(path) if "qid" in r}


def _workdir_paths(workdir: pathlib.Path) -> tuple[pathlib.Path, str, float]:
    from trdetr_jax import data as data_lib
    from trdetr_jax import predict

    config = data_lib.resolve_config(predict.load_config(workdir))
    preds = workdir / f"best_{config.data.eval_split_name}_preds.jsonl"
    if not preds.is_file():
        raise FileNotFoundError(f"{workdir}: no {preds.name} yet (no evaluation has finished)")
    return preds, config.data.eval_path, float(config.data.clip_length)


def save_figure(fig, out: str | pathlib.Path, *, dpi: int = 80) -> None:
    """``fig`` to ``out`` (format from its suffix, PNG without one), written atomically
    (:func:`trdetr_jax.files.write_bytes_atomic`)."""
    import io

    from trdetr_jax import files

    out = pathlib.Path(out)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=out.suffix[1:] or "png")
    files.write_bytes_atomic(out, buf.getvalue())


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, found {text}")
        return value

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, 1 for an input that cannot be plotted (one line on stderr), 2 for a
    usage error."""
    parser = argparse.ArgumentParser(
        prog="python -m trdetr_jax.plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("query", help="predicted vs ground-truth saliency and moments")
    q.add_argument("--workdir", help="a training workdir (its best predictions and eval file)")
    q.add_argument("--preds", help="prediction rows (.jsonl); overrides the workdir's")
    q.add_argument(
        "--gt", help="annotation rows (.jsonl) or DATASET:SPLIT; overrides the workdir's"
    )
    q.add_argument("--qid", required=True, help="the query to draw")
    q.add_argument(
        "--clip-length",
        type=_positive(float),
        default=None,
        help="seconds per clip (default: the workdir's config, else 2)",
    )
    q.add_argument(
        "--top-k", type=_positive(int), default=5, help="predicted moments to draw (default 5)"
    )
    q.add_argument("--out", required=True, help="image file (.png, .pdf, .svg)")
    r = sub.add_parser("run", help="training and evaluation curves of metrics.jsonl")
    r.add_argument("--workdir", required=True, help="a training workdir (its metrics.jsonl)")
    r.add_argument("--out", required=True, help="image file (.png, .pdf, .svg)")
    args = parser.parse_args(argv)
    try:
        if args.what == "run":
            metrics = pathlib.Path(args.workdir) / "metrics.jsonl"
            if not metrics.is_file():
                what = "has no metrics.jsonl" if metrics.parent.is_dir() else "does not exist"
                raise FileNotFoundError(f"workdir {args.workdir} {what}")
            fig = curves_figure(metrics)
        else:
            from trdetr_jax.evaluate import resolve_gt

            clip_length = 2.0
            preds, gt_path = args.preds, args.gt
            if args.workdir:
                if not pathlib.Path(args.workdir).is_dir():
                    raise FileNotFoundError(f"workdir {args.workdir} does not exist")
                wd_preds, wd_gt, clip_length = _workdir_paths(pathlib.Path(args.workdir))
                preds, gt_path = preds or wd_preds, gt_path or wd_gt
            if preds is None:
                parser.error("query needs --workdir or --preds")
            rows = _rows_by_qid(preds)
            if str(args.qid) not in rows:
                raise ValueError(f"{preds}: no prediction for qid {args.qid}")
            gt = _rows_by_qid(resolve_gt(str(gt_path))).get(str(args.qid)) if gt_path else None
            fig = query_figure(
                rows[str(args.qid)],
                gt,
                clip_length=args.clip_length or clip_length,
                top_k=args.top_k,
            )
        save_figure(fig, args.out)
    except (OSError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
