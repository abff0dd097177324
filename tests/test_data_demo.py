"""The built-in demo dataset: deterministic, atomic, official layout, learnable signal."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

from trdetr_jax import data
from trdetr_jax.data import demo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def demo_config(cache_dir, arg="tiny"):
    spec = importlib.util.spec_from_file_location("demo_cfg", ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.data.cache_dir = str(cache_dir)
    return config


def test_generated_once_atomically_and_deterministically(tmp_path):
    config = demo_config(tmp_path / "a")
    root = demo.ensure_demo_dataset(config.data.demo, config.data.cache_dir)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [root.name]  # no temp left
    stamp = (root / "train.jsonl").stat().st_mtime_ns
    assert demo.ensure_demo_dataset(config.data.demo, config.data.cache_dir) == root
    assert (root / "train.jsonl").stat().st_mtime_ns == stamp  # reused, not rewritten
    other = demo.ensure_demo_dataset(config.data.demo, str(tmp_path / "b"))
    assert (root / "val.jsonl").read_text() == (other / "val.jsonl").read_text()
    vid = "demo_train_0003"
    for d in ("slowfast_features", "clip_features"):
        np.testing.assert_array_equal(
            np.load(root / d / f"{vid}.npz")["features"],
            np.load(other / d / f"{vid}.npz")["features"],
        )
    config.data.demo.seed = 1  # another knob value: another folder
    assert demo.ensure_demo_dataset(config.data.demo, config.data.cache_dir) != root


def test_demo_config_resolves_and_reads_in_the_qvh_layout(tmp_path):
    config = demo_config(tmp_path)
    resolved = data.resolve_config(config)
    assert config.data.feature_root is None  # the input config is not modified
    root = pathlib.Path(resolved.data.feature_root)
    assert resolved.data.train_path == str(root / "train.jsonl")
    train, ev = data.build_datasets(config)
    assert (len(train), len(ev)) == (config.data.demo.n_train, config.data.demo.n_val)
    for row in train.rows[:20]:
        ids = row["relevant_clip_ids"]
        ((st, ed),) = row["relevant_windows"]
        assert ids == list(range(int(st // 2), int(ed // 2)))
        sums = [sum(s) for s in row["saliency_scores"]]
        assert sums[len(sums) // 2] >= max(sums[0], sums[-1])  # highest near the centre
    batch, _ = next(iter(data.train_batches(train, 4, epoch=0)))
    lv, lt = train.buckets.pick(batch["official_vid_len"][0], batch["official_txt_len"][0])
    assert batch["src_vid"].shape == (4, lv, 66) and batch["src_txt"].shape == (4, lt, 32)


@pytest.mark.parametrize("noise", [0.5, 1.0])
def test_planted_signal_is_learnable_and_needs_the_query(tmp_path, noise):
    """A linear text->video map fitted on train finds the moment's clips on val."""
    config = demo_config(tmp_path, arg=None)
    config.data.demo.noise = noise
    config.data.demo.n_train, config.data.demo.n_val = 200, 60
    train, ev = data.build_datasets(config)

    def pairs(ds):
        out = []
        for i in range(len(ds)):
            ex = ds.example(i, np.random.default_rng(0))
            mask = np.zeros(len(ex["video"]), bool)
            mask[ds.rows[i]["relevant_clip_ids"]] = True
            out.append((ex["text"].mean(0), ex["video"][:, :-2], mask))
        return out

    tr = pairs(train)
    x = np.stack([t for t, _, _ in tr])  # [N, Dt]
    y = np.stack([v[m].mean(0) for _, v, m in tr])  # [N, Dv]
    w, *_ = np.linalg.lstsq(x, y, rcond=None)
    val = pairs(ev)
    hits = [m[np.argmax(v @ (t @ w))] for t, v, m in val]
    assert np.mean(hits) > 0.85
    # With another video's query the same map finds the moment only by chance.
    wrong = [m[np.argmax(v @ (val[(i + 2) % len(val)][0] @ w))] for i, (_, v, m) in enumerate(val)]
    assert np.mean(wrong) < 0.5
