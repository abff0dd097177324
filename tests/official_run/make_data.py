"""A small generated dataset in the official QVHighlights layout, for the official-run fixture.

    python tests/official_run/make_data.py OUT_DIR

writes

    OUT_DIR/train.jsonl, OUT_DIR/val.jsonl            (official annotation format)
    OUT_DIR/slowfast_features/<vid>.npz['features']   [T_sf, SLOWFAST_DIM] float32
    OUT_DIR/clip_features/<vid>.npz['features']       [T_clip, CLIP_DIM] float32
    OUT_DIR/clip_text_features/qid<qid>.npz['last_hidden_state']  [N, TEXT_DIM] float32

Everything comes from ``numpy.random.default_rng(SEED)``, so the arrays (not the .npz bytes:
zip entries carry a time stamp) are the same on every run; :func:`features_digest` is the
SHA-256 of all of them, which the test compares with the one recorded when the official
run was made.

The split is built so that the official outputs depend on each evaluation batch's padded
lengths: videos of 18 to 76 clips (the two video sources sometimes differ by one row, as
real SlowFast/CLIP features do; one is longer than max_v_l = 75 and gets cut) and queries
of 3 to 36 tokens (some longer than max_q_l = 32). A query's relevant clips carry a signal
that its text tokens share, so a few training epochs already give non-trivial predictions.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys

import numpy as np

SEED = 20261202
SLOWFAST_DIM = 24
CLIP_DIM = 16
TEXT_DIM = 16
NUM_TRAIN = 48
NUM_VAL = 23  # with eval batch size 5: batches of 5, 5, 5, 5, 3
CLIP_SECONDS = 2
MAX_Q_L = 32
MAX_V_L = 75
SOURCES = (("slowfast_features", SLOWFAST_DIM), ("clip_features", CLIP_DIM))
TEXT_DIR = "clip_text_features"

# Val lengths chosen by hand so that every batch of 5 has a different longest video and
# longest query (clips, tokens); the train split draws its lengths at random.
VAL_CLIPS = (40, 22, 75, 31, 18, 57, 60, 29, 44, 35, 26, 33, 19, 48, 38, 76, 45, 50, 24, 30, 64,
             21, 37)  # fmt: skip
VAL_TOKENS = (9, 4, 14, 21, 7, 12, 36, 5, 8, 3, 11, 6, 17, 10, 13, 20, 9, 25, 16, 6, 15, 8, 4)


def _windows(rng: np.random.Generator, num_clips: int) -> list[list[int]]:
    """1-2 disjoint windows in seconds (multiples of 2 s) inside the video."""
    n = 1 if num_clips < 30 or rng.random() < 0.6 else 2
    bounds = np.linspace(0, num_clips, n + 1).astype(int)
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        length = int(rng.integers(2, max(3, (hi - lo) // 2 + 1)))
        start = int(rng.integers(lo, hi - length + 1))
        out.append([start * CLIP_SECONDS, (start + length) * CLIP_SECONDS])
    return out


def _example(rng: np.random.Generator, qid: int, num_clips: int, num_tokens: int):
    """(annotation row, {source: features}, text features) of one query on its own video."""
    duration = min(num_clips, MAX_V_L) * CLIP_SECONDS
    vid = f"synth{qid:04d}_0.0_{duration:.1f}"
    windows = _windows(rng, min(num_clips, MAX_V_L))
    clip_ids = sorted({c for s, e in windows for c in range(s // CLIP_SECONDS, e // CLIP_SECONDS)})
    row = {
        "qid": qid,
        "query": f"generated query {qid} with {num_tokens} tokens",
        "duration": duration,
        "vid": vid,
        "relevant_clip_ids": clip_ids,
        "saliency_scores": rng.integers(0, 5, size=(len(clip_ids), 3)).tolist(),
        "relevant_windows": windows,
    }
    topic = rng.standard_normal(TEXT_DIM)
    relevant = np.zeros(num_clips, bool)
    relevant[clip_ids] = True
    feats = {}
    for k, (name, dim) in enumerate(SOURCES):
        rows = num_clips + (1 if (qid + k) % 7 == 0 else 0)  # sources may differ by one row
        x = rng.standard_normal((rows, dim))
        x[: len(relevant)][relevant, :TEXT_DIM] += 2.0 * topic[:dim]
        feats[name] = x.astype(np.float32)
    text = (topic + 0.5 * rng.standard_normal((num_tokens, TEXT_DIM))).astype(np.float32)
    return row, feats, text


def generate():
    """(train rows, val rows, {vid: {source: array}}, {qid: text array})."""
    rng = np.random.default_rng(SEED)
    splits = {"train": [], "val": []}
    videos, texts = {}, {}
    plan = [
        ("train", int(rng.integers(16, 76)), int(rng.integers(3, 33))) for _ in range(NUM_TRAIN)
    ]
    plan += [("val", c, t) for c, t in zip(VAL_CLIPS, VAL_TOKENS)]
    for i, (split, num_clips, num_tokens) in enumerate(plan):
        qid = 1000 + i
        row, feats, text = _example(rng, qid, num_clips, num_tokens)
        splits[split].append(row)
        videos[row["vid"]] = feats
        texts[qid] = text
    return splits["train"], splits["val"], videos, texts


def features_digest(videos, texts) -> str:
    """SHA-256 over every feature array (name, shape, float32 bytes), in a fixed order."""
    h = hashlib.sha256()
    for vid in sorted(videos):
        for name, _ in SOURCES:
            arr = np.ascontiguousarray(videos[vid][name], np.float32)
            h.update(f"{name}/{vid}{arr.shape}".encode())
            h.update(arr.tobytes())
    for qid in sorted(texts):
        arr = np.ascontiguousarray(texts[qid], np.float32)
        h.update(f"{TEXT_DIR}/qid{qid}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def jsonl_text(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write(out: str | pathlib.Path) -> str:
    """Writes the dataset under ``out``; returns :func:`features_digest`."""
    out = pathlib.Path(out)
    train, val, videos, texts = generate()
    for name, _ in SOURCES:
        (out / name).mkdir(parents=True, exist_ok=True)
    (out / TEXT_DIR).mkdir(parents=True, exist_ok=True)
    for vid, feats in videos.items():
        for name, _ in SOURCES:
            np.savez(out / name / f"{vid}.npz", features=feats[name])
    for qid, text in texts.items():
        np.savez(out / TEXT_DIR / f"qid{qid}.npz", last_hidden_state=text)
    (out / "train.jsonl").write_text(jsonl_text(train))
    (out / "val.jsonl").write_text(jsonl_text(val))
    return features_digest(videos, texts)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.split("\n\n")[1])
    print(write(sys.argv[1]))
