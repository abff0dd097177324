"""The built-in demo dataset: small, deterministic, with a signal the model can learn.

Written on first use, in the QVHighlights on-disk layout, to
``<cache_dir>/demo-<hash of the knobs>/`` (``cache_dir`` defaults to
``~/.cache/trdetr_jax/demo``)::

    slowfast_features/<vid>.npz['features']   [T, v_dims[0]]
    clip_features/<vid>.npz['features']       [T, v_dims[1]]
    clip_text_features/qid<qid>.npz['last_hidden_state']   [N, t_dim]
    train.jsonl, val.jsonl                    qid, query, duration, vid, relevant_clip_ids,
                                              saliency_scores, relevant_windows

The planted signal: ``n_topics`` topics, each a random direction in video space and an
unrelated random direction in text space. Every video holds two moments of two different
topics on a noisy background; each moment has one query whose tokens carry its topic's
text direction. The relevant clips carry the topic's video direction, strongest at the
moment's centre, where the annotator scores are highest too. Finding the moment therefore
needs the query (two topics per video) and a learned text-to-video mapping.

The folder is built in a temporary sibling and renamed into place, so a crash never leaves
a half-written dataset that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

CLIP_LENGTH = 2.0  # seconds per clip, as QVHighlights
_VERSION = 2  # bump when the generator changes, so old caches are not reused


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.path.expanduser("~/.cache/trdetr_jax/demo"))


def _knobs(demo_cfg) -> dict:
    return {
        "version": _VERSION,
        "seed": int(demo_cfg.seed),
        "n_train": int(demo_cfg.n_train),
        "n_val": int(demo_cfg.n_val),
        "n_topics": int(demo_cfg.n_topics),
        "noise": float(demo_cfg.noise),
        "v_dims": [int(d) for d in demo_cfg.v_dims],
        "t_dim": int(demo_cfg.t_dim),
        "min_clips": int(demo_cfg.min_clips),
        "max_clips": int(demo_cfg.max_clips),
        "min_query_len": int(demo_cfg.min_query_len),
        "max_query_len": int(demo_cfg.max_query_len),
    }


def ensure_demo_dataset(demo_cfg, cache_dir: str | None = None) -> pathlib.Path:
    """The demo dataset's folder, generating it if it is not there yet."""
    knobs = _knobs(demo_cfg)
    digest = hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:12]
    parent = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    target = parent / f"demo-{digest}"
    if (target / "val.jsonl").is_file():
        return target
    parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".demo-tmp-", dir=parent))
    try:
        generate(tmp, **{k: v for k, v in knobs.items() if k != "version"})
        (tmp / "knobs.json").write_text(json.dumps(knobs, indent=1))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "val.jsonl").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _closeness(i: int, length: int) -> float:
    """How central clip ``i`` of a ``length``-clip moment is: (0, 1], 1 at the centre."""
    return 1.0 - abs(i - (length - 1) / 2) / (length / 2 + 0.5)


def _scores(length: int, rng: np.random.Generator) -> list[list[int]]:
    """3 annotator scores (0..4) per clip of a moment, highest (agreed 4s) at its centre."""
    out = []
    for i in range(length):
        base = 1.0 + 3.5 * _closeness(i, length)
        out.append([int(np.clip(round(base + rng.normal(0, 0.4)), 0, 4)) for _ in range(3)])
    return out


def generate(
    root: pathlib.Path,
    *,
    seed: int,
    n_train: int,
    n_val: int,
    n_topics: int,
    noise: float,
    v_dims: list[int],
    t_dim: int,
    min_clips: int,
    max_clips: int,
    min_query_len: int,
    max_query_len: int,
) -> None:
    """Write the demo dataset under ``root`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    v_dim = sum(v_dims)
    topic_video = _unit(rng, n_topics, v_dim)  # [K, Dv]
    topic_text = _unit(rng, n_topics, t_dim)  # [K, Dt]
    filler_text = _unit(rng, 4, t_dim)  # topic-free "words" shared by all queries
    background = _unit(rng, 1, v_dim)[0]  # what non-moment clips look like
    dirs = ["slowfast_features", "clip_features"][: len(v_dims)]
    for d in [*dirs, "clip_text_features"]:
        (root / d).mkdir(parents=True, exist_ok=True)
    qid = 0
    for split, n_queries in (("train", n_train), ("val", n_val)):
        rows = []
        for v in range((n_queries + 1) // 2):
            vid = f"demo_{split}_{v:04d}"
            length = int(rng.integers(min_clips, max_clips + 1))
            feats = 0.3 * background + noise * rng.standard_normal((length, v_dim)) / np.sqrt(v_dim)
            # Two non-overlapping moments of two different topics.
            topics = rng.choice(n_topics, size=2, replace=False)
            max_w = max(2, length // 3)
            widths = rng.integers(2, max_w + 1, size=2)
            gap = length - widths.sum()
            cut = np.sort(rng.integers(0, gap + 1, size=2))
            starts = [int(cut[0]), int(cut[0] + widths[0] + cut[1] - cut[0])]
            if rng.random() < 0.5:  # the first topic's moment is not always the earlier one
                topics = topics[::-1]
            for k, st, w in zip(topics, starts, widths):
                for c in range(st, st + w):  # the signal peaks where the scores do
                    feats[c] += (0.6 + 0.4 * _closeness(c - st, int(w))) * topic_video[k]
            offset = 0
            for d, dim in zip(dirs, v_dims):
                part = feats[:, offset : offset + dim].astype(np.float32)
                offset += dim
                np.savez(root / d / f"{vid}.npz", features=part)
            for k, st, w in zip(topics, starts, widths):
                if len(rows) >= n_queries:
                    break
                n_tok = int(rng.integers(min_query_len, max_query_len + 1))
                is_topic = rng.random(n_tok) < 0.6
                is_topic[int(rng.integers(n_tok))] = True  # at least one topic word
                tokens = np.where(
                    is_topic[:, None],
                    topic_text[k][None],
                    filler_text[rng.integers(len(filler_text), size=n_tok)],
                )
                tokens = tokens + noise * rng.standard_normal((n_tok, t_dim)) / np.sqrt(t_dim)
                np.savez(
                    root / "clip_text_features" / f"qid{qid}.npz",
                    last_hidden_state=tokens.astype(np.float32),
                )
                rows.append(
                    {
                        "qid": qid,
                        "query": f"demo query about topic {int(k)}",
                        "duration": length * CLIP_LENGTH,
                        "vid": vid,
                        "relevant_clip_ids": list(range(st, st + int(w))),
                        "saliency_scores": _scores(int(w), rng),
                        "relevant_windows": [[st * CLIP_LENGTH, (st + int(w)) * CLIP_LENGTH]],
                    }
                )
                qid += 1
        with open(root / f"{split}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
