"""Random features and annotations in a config's on-disk layout, at chosen lengths.

For benchmarks and tests of the pipeline at a dataset's real length distribution (the
demo generator, :mod:`trdetr_jax.data.demo`, plants learnable topics instead)::

    config = synthetic.write_dataset(config, root, video_lengths, text_lengths)

writes ``root/train.jsonl`` / ``root/val.jsonl`` and the feature files that
``config.data`` names (``npz`` / ``npy`` / ``rgb_opt`` video, ``qid_npz`` / ``tvsum_npz``
text; no audio), and returns a copy of ``config`` pointing at them. Features are random
normal; labels are valid for the layout (one window per query, TVSum 20-annotator scores).
"""

from __future__ import annotations

import copy
import json
import pathlib
from collections.abc import Sequence

import numpy as np
from ml_collections import config_dict

from trdetr_jax.data import annotations as ann


def write_dataset(
    config: config_dict.ConfigDict,
    root: str | pathlib.Path,
    video_lengths: Sequence[int],
    text_lengths: Sequence[int],
    *,
    num_eval: int | None = None,
    seed: int = 0,
) -> config_dict.ConfigDict:
    """Example ``i`` has ``video_lengths[i]`` clips and ``text_lengths[i]`` tokens; the last
    ``num_eval`` examples (default: a fifth, at least one) form the evaluation split."""
    root = pathlib.Path(root)
    d = config.data
    layout = ann.layout_of(d.dataset)
    rng = np.random.default_rng(seed)
    n = len(video_lengths)
    num_eval = max(1, n // 5) if num_eval is None else num_eval
    for folder in (*d.v_feat_dirs, d.t_feat_dir):
        (root / folder).mkdir(parents=True, exist_ok=True)
    domain = d.domain or ann.TVSUM_DOMAINS[0]
    rows = []
    for i, (lv, lt) in enumerate(zip(video_lengths, text_lengths)):
        lv, lt = int(lv), int(lt)
        vid = f"vid{i}"
        qid = vid if d.t_feat_format == "tvsum_npz" else i
        for folder, dim in zip(d.v_feat_dirs, d.v_feat_dims):
            _write_video(root / folder, vid, d.v_feat_format, rng.standard_normal((lv, dim)))
        text = rng.standard_normal((lt, d.t_feat_dim)).astype(np.float32)
        if d.t_feat_format == "tvsum_npz":
            np.savez(root / d.t_feat_dir / f"{qid}.npz", token=text)
        else:
            np.savez(root / d.t_feat_dir / f"qid{qid}.npz", last_hidden_state=text)
        rows.append(_row(layout, qid, vid, lv, float(d.clip_length), domain, rng))
    _write_jsonl(root / "train.jsonl", rows[: n - num_eval])
    _write_jsonl(root / "val.jsonl", rows[n - num_eval :])
    config = copy.deepcopy(config)
    config.data.feature_root = str(root)
    config.data.train_path = str(root / "train.jsonl")
    config.data.eval_path = str(root / "val.jsonl")
    config.data.domain = domain if layout == "tvsum" else config.data.domain
    return config


def _write_video(folder: pathlib.Path, vid: str, fmt: str, feats: np.ndarray) -> None:
    feats = feats.astype(np.float32)
    if fmt == "npz":
        np.savez(folder / f"{vid}.npz", features=feats)
    elif fmt == "npy":
        np.save(folder / f"{vid}.npy", feats)
    elif fmt == "rgb_opt":  # the width is split between rgb and flow
        half = feats.shape[1] // 2
        np.save(folder / f"{vid}_rgb.npy", feats[:, :half])
        np.save(folder / f"{vid}_opt.npy", feats[:, half:])
    else:
        raise ValueError(f"config.data.v_feat_format {fmt!r} is not one of npz, npy, rgb_opt")


def _row(layout, qid, vid, lv, clip_length, domain, rng) -> dict:
    row = {"qid": qid, "query": f"query {qid}", "vid": vid, "duration": lv * clip_length}
    if layout == "tvsum":
        return {**row, "domain": domain, "label": rng.integers(1, 6, (lv, 20)).tolist()}
    st = int(rng.integers(0, max(1, lv - 2)))
    ed = int(rng.integers(st + 1, min(lv, st + 8) + 1))  # clips st..ed-1, at least one
    row["relevant_windows"] = [[st * clip_length, ed * clip_length]]
    if layout == "qvhighlights":
        row["relevant_clip_ids"] = list(range(st, ed))
        row["saliency_scores"] = rng.integers(0, 5, (ed - st, 3)).tolist()
    return row


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
