"""The data pipeline rebuilds the reference fixtures' input batches.

The fixtures ship their annotations and the batch the official loader produced
(``inputs.npz``), not the feature files. We write the fixture's (already normalised)
features back in the official on-disk layout, with the fixture's quirks (a CLIP file one
row longer, text longer than max_q_l, a video longer than max_v_l), and check that our
pipeline gives the same batch: features up to the re-normalisation's 1e-5, and the TEF,
masks, lengths, span labels, all-saliency labels, relevant-clip mask and hard saliency
pairs exactly.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from trdetr_jax import data
from trdetr_jax.config import get_base_config

pytestmark = pytest.mark.fixtures


def _rows(case_dir):
    return [json.loads(line) for line in open(case_dir / "annotations.jsonl")]


def _write_qvh(case_dir, root, dims, ctx, clip_extra, raw_txt):
    inputs = np.load(case_dir / "inputs.npz")
    rows = _rows(case_dir)
    rng = np.random.default_rng(0)
    for d in ("slowfast_features", "clip_features", "clip_text_features"):
        (root / d).mkdir(parents=True)
    for b, row in enumerate(rows):
        n = int(inputs["video_lengths"][b])
        vid = inputs["src_vid"][b, :n].astype(np.float32)
        sf, clip = vid[:, : dims[0]], vid[:, dims[0] : dims[0] + dims[1]]
        # Rows beyond what the loader kept: extra clips (cropped by max_v_l) and CLIP's extra row.
        sf = np.concatenate([sf, rng.standard_normal((ctx[b] - n, dims[0]), np.float32)])
        clip = np.concatenate(
            [clip, rng.standard_normal((ctx[b] - n + clip_extra[b], dims[1]), np.float32)]
        )
        np.savez(root / "slowfast_features" / f"{row['vid']}.npz", features=sf)
        np.savez(root / "clip_features" / f"{row['vid']}.npz", features=clip)
        lt = int(inputs["text_lengths"][b])
        txt = inputs["src_txt"][b, :lt].astype(np.float32)
        txt = np.concatenate(
            [txt, rng.standard_normal((raw_txt[b] - lt, txt.shape[1]), np.float32)]
        )
        np.savez(root / "clip_text_features" / f"qid{row['qid']}.npz", last_hidden_state=txt)
    return inputs, rows


def _batch(config, batch_size):
    _, eval_ds = data.build_datasets(config)
    batches = list(data.eval_batches(eval_ds, batch_size))
    assert len(batches) == 1
    return batches[0]


def _check_common(batch, inputs, rows, lt_pad):
    lv = inputs["src_vid"].shape[1]
    np.testing.assert_array_equal(batch["src_vid_mask"], inputs["src_vid_mask"])
    np.testing.assert_array_equal(batch["src_txt_mask"][:, :lt_pad], inputs["src_txt_mask"])
    assert batch["src_txt_mask"][:, lt_pad:].sum() == 0
    np.testing.assert_array_equal(batch["src_vid_mask"].sum(1), inputs["video_lengths"])
    np.testing.assert_array_equal(batch["src_txt_mask"].sum(1), inputs["text_lengths"])
    # Features: the written features were already normalised, so only the 1e-5 eps differs.
    np.testing.assert_allclose(batch["src_vid"][..., :-2], inputs["src_vid"][..., :-2], atol=3e-5)
    np.testing.assert_array_equal(batch["src_vid"][..., -2:], inputs["src_vid"][..., -2:])  # TEF
    # Targets derivable from the annotations.
    count = inputs["span_labels_count"]
    np.testing.assert_array_equal(batch["span_mask"].sum(1), count)
    w = inputs["span_labels"].shape[1]
    np.testing.assert_array_equal(batch["span_labels"][:, :w], inputs["span_labels"])
    np.testing.assert_array_equal(batch["saliency_all_labels"], inputs["saliency_all_labels"])
    np.testing.assert_array_equal(batch["src_pos_mask"], inputs["src_pos_mask"])
    np.testing.assert_array_equal(
        batch["saliency_pos_labels"][:, 0], inputs["saliency_pos_labels"][:, 0]
    )
    np.testing.assert_array_equal(
        batch["saliency_neg_labels"][:, 0], inputs["saliency_neg_labels"][:, 0]
    )
    assert batch["src_vid"].shape[1] == lv


def _qvh_config(root, case_dir, cfg_json, dims):
    opt = cfg_json["opt"]
    config = get_base_config()
    config.data.feature_root = str(root)
    config.data.train_path = str(case_dir / "annotations.jsonl")
    config.data.eval_path = str(case_dir / "annotations.jsonl")
    config.data.v_feat_dims = tuple(dims)
    config.data.t_feat_dim = opt["t_feat_dim"]
    config.data.max_v_l = opt["max_v_l"]
    config.data.max_q_l = opt["max_q_l"]
    config.seed = 0
    return config


def _check_easy_pairs(batch, inputs, rows):
    for b, row in enumerate(rows):
        n = int(inputs["video_lengths"][b])
        rel = set(row["relevant_clip_ids"])
        pos, neg = batch["saliency_pos_labels"][b, 1], batch["saliency_neg_labels"][b, 1]
        if len(rel & set(range(n))) == n:  # no negative: the hard pair is copied
            assert pos == inputs["saliency_pos_labels"][b, 1]
            assert neg == inputs["saliency_neg_labels"][b, 1]
        else:
            assert pos in rel and neg not in rel and 0 <= neg < n


def test_qvh_video_s0_batch(reference_dir, tmp_path):
    case_dir = reference_dir / "qvh_video_s0"
    cfg_json = json.load(open(case_dir / "config.json"))
    spec = cfg_json["case_spec"]
    dims = (2304, 512)
    inputs, rows = _write_qvh(
        case_dir, tmp_path, dims, spec["ctx"], spec["clip_extra"], spec["raw_txt"]
    )
    config = _qvh_config(tmp_path, case_dir, cfg_json, dims)
    batch, metas = _batch(config, 4)
    assert [m["qid"] for m in metas] == [r["qid"] for r in rows]
    _check_common(batch, inputs, rows, lt_pad=inputs["src_txt"].shape[1])
    np.testing.assert_allclose(batch["src_txt"], inputs["src_txt"], atol=3e-5)
    _check_easy_pairs(batch, inputs, rows)


def test_small_qvh_f64_batch(reference_dir, tmp_path, caplog):
    case_dir = reference_dir / "small_qvh_f64"
    cfg_json = json.load(open(case_dir / "config.json"))
    spec = cfg_json["case_spec"]
    dims = tuple(spec["dims"]["v"])
    inputs, rows = _write_qvh(
        case_dir, tmp_path, dims, spec["ctx"], spec["clip_extra"], spec["raw_txt"]
    )
    config = _qvh_config(tmp_path, case_dir, cfg_json, dims)
    with caplog.at_level(logging.WARNING):
        batch, _ = _batch(config, 4)
    # Sample 0 has 44 clips > max_v_l = 40: cut, with one warning.
    assert sum("max_v_l" in r.message for r in caplog.records) == 1
    inputs = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in inputs.items()}
    _check_common(batch, inputs, rows, lt_pad=inputs["src_txt"].shape[1])
    np.testing.assert_allclose(batch["src_txt"], inputs["src_txt"], atol=3e-5)
    _check_easy_pairs(batch, inputs, rows)


def test_small_tvsum_batch(reference_dir, tmp_path):
    case_dir = reference_dir / "small_tvsum"
    cfg_json = json.load(open(case_dir / "config.json"))
    spec = cfg_json["case_spec"]
    inputs = np.load(case_dir / "inputs.npz")
    rows = _rows(case_dir)
    (tmp_path / "video_features").mkdir()
    (tmp_path / "query_features").mkdir()
    d_rgb, d_flow = spec["dims"]["rgb"], spec["dims"]["flow"]
    for b, row in enumerate(rows):
        n = int(inputs["video_lengths"][b])
        vid = inputs["src_vid"][b, :n]
        np.save(tmp_path / "video_features" / f"{row['vid']}_rgb.npy", vid[:, :d_rgb])
        np.save(
            tmp_path / "video_features" / f"{row['vid']}_opt.npy", vid[:, d_rgb : d_rgb + d_flow]
        )
        lt = int(inputs["text_lengths"][b])
        np.savez(tmp_path / "query_features" / f"{row['qid']}.npz", token=inputs["src_txt"][b, :lt])
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "tvsum_i3d.py"
    module_spec = importlib.util.spec_from_file_location("tvsum_i3d", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config("domain=VT")
    config.data.feature_root = str(tmp_path)
    config.data.train_path = str(case_dir / "annotations.jsonl")
    config.data.eval_path = str(case_dir / "annotations.jsonl")
    config.data.v_feat_dims = (d_rgb + d_flow,)
    config.data.t_feat_dim = spec["dims"]["t"]
    config.data.max_v_l = cfg_json["opt"]["max_v_l"]
    batch, _ = _batch(config, 3)
    lt_pad = inputs["src_txt"].shape[1]
    _check_common(batch, inputs, rows, lt_pad=lt_pad)
    # TVSum text is used exactly as stored (no normalisation, no cut).
    np.testing.assert_array_equal(batch["src_txt"][:, :lt_pad], inputs["src_txt"])
    assert batch["saliency_pos_labels"].shape == (3, 1)
