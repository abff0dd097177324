"""Readers on tiny synthetic datasets in each official layout, and every bad-input case."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from trdetr_jax import data
from trdetr_jax.config import get_base_config
from trdetr_jax.data import DataError

SF, CLIP, TXT, AUD = 6, 4, 5, 3  # tiny feature widths


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _qvh_row(qid, vid, n_clips, window=(2, 3)):
    ed = min(window[1], n_clips - 1)  # relevant clips inside the video
    st = min(window[0], ed)
    return {
        "qid": qid,
        "query": f"query {qid}",
        "duration": 2 * n_clips,
        "vid": vid,
        "relevant_clip_ids": list(range(st, ed + 1)),
        "saliency_scores": [[1, 2, 3]] * (ed - st + 1),
        "relevant_windows": [[2 * st, 2 * (ed + 1)]],
    }


def write_qvh(root, lengths=(8, 5), audio=False, seed=0):
    """QVHighlights layout: slowfast/clip npz, qid<qid>.npz text, optional PANN npy."""
    rng = np.random.default_rng(seed)
    for d in ("slowfast_features", "clip_features", "clip_text_features", "pann_features"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rows = []
    for i, n in enumerate(lengths):
        vid = f"v{i}"
        np.savez(root / "slowfast_features" / f"{vid}.npz", features=rng.normal(size=(n, SF)))
        # CLIP is one row longer, as in the real features.
        np.savez(root / "clip_features" / f"{vid}.npz", features=rng.normal(size=(n + 1, CLIP)))
        if audio:
            np.save(root / "pann_features" / f"{vid}.npy", rng.normal(size=(n + 2, AUD)))
        np.savez(
            root / "clip_text_features" / f"qid{i}.npz",
            last_hidden_state=rng.normal(size=(3 + i, TXT)).astype(np.float32),
        )
        rows.append(_qvh_row(i, vid, n))
    _write_jsonl(root / "train.jsonl", rows)
    _write_jsonl(root / "val.jsonl", rows)
    return rows


def qvh_config(root, **data_overrides):
    config = get_base_config()
    config.seed = 3
    d = config.data
    d.feature_root = str(root)
    d.train_path, d.eval_path = str(root / "train.jsonl"), str(root / "val.jsonl")
    d.v_feat_dims, d.t_feat_dim = (SF, CLIP), TXT
    d.max_v_l, d.max_q_l = 10, 6
    d.length_buckets = False  # pad to the maxima (the shapes these tests check)
    for k, v in data_overrides.items():
        setattr(d, k, v)
    return config


def write_charades_i3d(root, lengths=(12, 7), dim=8):
    rng = np.random.default_rng(1)
    (root / "i3d_features").mkdir(parents=True)
    (root / "clip_text_features").mkdir()
    rows = []
    for i, n in enumerate(lengths):
        np.save(root / "i3d_features" / f"c{i}.npy", rng.normal(size=(n, dim)).astype(np.float32))
        np.savez(
            root / "clip_text_features" / f"qid{10 + i}.npz",
            last_hidden_state=rng.normal(size=(4, TXT)).astype(np.float32),
        )
        rows.append(
            {
                "qid": 10 + i,
                "query": "a person opens a door.",
                "duration": n * 0.5,
                "vid": f"c{i}",
                "relevant_windows": [[1.2, 3.1]],
            }  # fmt: skip
        )
    _write_jsonl(root / "train.jsonl", rows)
    _write_jsonl(root / "val.jsonl", rows)
    return rows


def write_tvsum(root, lengths=(9, 6), audio=False, domains=("BK", "VT")):
    rng = np.random.default_rng(2)
    (root / "video_features").mkdir(parents=True)
    (root / "query_features").mkdir()
    (root / "audio_features").mkdir()
    rows = []
    for i, (n, dom) in enumerate(zip(lengths, domains)):
        vid = f"t{i}"
        np.save(root / "video_features" / f"{vid}_rgb.npy", rng.normal(size=(n, 3)))
        np.save(root / "video_features" / f"{vid}_opt.npy", rng.normal(size=(n, 3)))
        if audio:
            np.save(root / "audio_features" / f"{vid}.npy", rng.normal(size=(n - 1, AUD)))
        np.savez(root / "query_features" / f"{vid}.npz", token=3 * rng.normal(size=(2, TXT)))
        label = rng.integers(1, 6, size=(n, 20)).astype(float).tolist()
        rows.append({"qid": vid, "query": f"title {i}", "duration": n, "vid": vid,
                     "relevant_clip_ids": None, "relevant_windows": None, "label": label,
                     "domain": dom})  # fmt: skip
    _write_jsonl(root / "train.jsonl", rows)
    _write_jsonl(root / "val.jsonl", rows)
    return rows


def tvsum_config(root, domain="BK", audio=False):
    config = get_base_config()
    d = config.data
    d.dataset, d.domain = "tvsum", domain
    d.feature_root = str(root)
    d.train_path, d.eval_path = str(root / "train.jsonl"), str(root / "val.jsonl")
    d.v_feat_dirs, d.v_feat_dims, d.v_feat_format = ("video_features",), (6,), "rgb_opt"
    d.t_feat_dir, d.t_feat_dim, d.t_feat_format = "query_features", TXT, "tvsum_npz"
    d.normalize_text, d.truncate_text = False, False
    d.max_v_l, d.max_q_l = 12, 4
    if audio:
        d.a_feat_dir, d.a_feat_dim = "audio_features", AUD
    return config


def _l2(x):
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-5)


def _first_eval_batch(config, batch_size=2):
    _, ev = data.build_datasets(config)
    return next(iter(data.eval_batches(ev, batch_size)))


# ------------------------------------------------------------------------------ readers


def test_qvh_reader_normalises_crops_and_appends_tef(tmp_path):
    write_qvh(tmp_path)
    batch, metas = _first_eval_batch(qvh_config(tmp_path))
    sf = np.load(tmp_path / "slowfast_features" / "v0.npz")["features"].astype(np.float32)
    clip = np.load(tmp_path / "clip_features" / "v0.npz")["features"].astype(np.float32)
    txt = np.load(tmp_path / "clip_text_features" / "qid0.npz")["last_hidden_state"]
    n = len(sf)  # CLIP's extra row is cut to the shorter source
    assert batch["src_vid"].shape == (2, 10, SF + CLIP + 2)
    np.testing.assert_allclose(batch["src_vid"][0, :n, :SF], _l2(sf), rtol=1e-6)
    np.testing.assert_allclose(batch["src_vid"][0, :n, SF:-2], _l2(clip[:n]), rtol=1e-6)
    tef = np.stack([np.arange(n) / n, (np.arange(n) + 1) / n], 1)
    np.testing.assert_allclose(batch["src_vid"][0, :n, -2:], tef, rtol=1e-6)
    assert batch["src_vid"][0, n:].sum() == 0
    np.testing.assert_array_equal(batch["src_vid_mask"][0], [1] * n + [0] * (10 - n))
    np.testing.assert_allclose(batch["src_txt"][0, :3], _l2(txt), rtol=1e-6)
    np.testing.assert_array_equal(batch["src_txt_mask"][:, :5], [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    # Window [4, 8] s over 8 clips of 2 s -> center 6/16, width 4/16.
    np.testing.assert_allclose(batch["span_labels"][0, 0], [0.375, 0.25])
    np.testing.assert_array_equal(batch["span_mask"][0], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["saliency_all_labels"][0, :5], [0, 0, 6, 6, 0])
    assert "src_aud" not in batch and metas[0]["qid"] == 0


def test_qvh_text_truncated_before_normalising(tmp_path):
    write_qvh(tmp_path, lengths=(8, 5))
    np.savez(tmp_path / "clip_text_features" / "qid0.npz",
             last_hidden_state=np.arange(9 * TXT, dtype=np.float32).reshape(9, TXT))  # fmt: skip
    batch, _ = _first_eval_batch(qvh_config(tmp_path, max_q_l=4))
    raw = np.arange(9 * TXT, dtype=np.float32).reshape(9, TXT)[:4]
    np.testing.assert_allclose(batch["src_txt"][0], _l2(raw), rtol=1e-6)
    assert batch["src_txt_mask"][0].sum() == 4


def test_qvh_audio_reader(tmp_path):
    write_qvh(tmp_path, audio=True)
    config = qvh_config(tmp_path, a_feat_dir="pann_features", a_feat_dim=AUD)
    batch, _ = _first_eval_batch(config)
    aud = np.load(tmp_path / "pann_features" / "v0.npy").astype(np.float32)
    assert batch["src_aud"].shape == (2, 10, AUD + 2)
    n = 8  # audio is 2 rows longer: cut to the video
    np.testing.assert_allclose(batch["src_aud"][0, :n, :AUD], _l2(aud[:n]), rtol=1e-6)
    np.testing.assert_array_equal(batch["src_aud"][0, :n, -2:], batch["src_vid"][0, :n, -2:])
    assert data.input_dims(config.data) == (SF + CLIP + 2, TXT, AUD + 2)


def test_charades_i3d_reader_labels_from_window(tmp_path):
    write_charades_i3d(tmp_path)
    config = get_base_config()
    d = config.data
    d.dataset, d.feature_root = "charades", str(tmp_path)
    d.train_path, d.eval_path = str(tmp_path / "train.jsonl"), str(tmp_path / "val.jsonl")
    d.v_feat_dirs, d.v_feat_dims, d.v_feat_format = ("i3d_features",), (8,), "npy"
    d.t_feat_dim, d.clip_length, d.max_v_l = TXT, 0.5, 16
    train, _ = data.build_datasets(config)
    batch, _ = next(iter(data.train_batches(train, 2, epoch=0)))
    assert batch["src_vid"].shape == (2, 12, 10)  # the bucket of the longest video, not 16
    # [1.2, 3.1] s at 0.5 s per clip -> clips 2..5; span normalised by n * 0.5 s.
    for b in range(2):
        n = int(batch["src_vid_mask"][b].sum())
        np.testing.assert_array_equal(batch["src_pos_mask"][b, :6], [0, 0, 1, 1, 1, 1])
        np.testing.assert_array_equal(batch["saliency_all_labels"][b], batch["src_pos_mask"][b])
        np.testing.assert_allclose(
            batch["span_labels"][b, 0], [2.15 / (n * 0.5), 1.9 / (n * 0.5)], rtol=1e-5
        )
        assert set(batch["saliency_pos_labels"][b]) <= {2, 3, 4, 5}
        assert not set(batch["saliency_neg_labels"][b]) & {2, 3, 4, 5}


@pytest.mark.parametrize("audio", [False, True])
def test_tvsum_reader(tmp_path, audio):
    rows = write_tvsum(tmp_path, audio=audio)
    train, ev = data.build_datasets(tvsum_config(tmp_path, "BK", audio))
    assert len(train) == 1 and train.rows[0]["domain"] == "BK"  # one domain only
    batch, _ = next(iter(data.eval_batches(ev, 1)))
    rgb = np.load(tmp_path / "video_features" / "t0_rgb.npy").astype(np.float32)
    opt = np.load(tmp_path / "video_features" / "t0_opt.npy").astype(np.float32)
    n = 8 if audio else 9  # audio is one row shorter: everything is cut to it
    np.testing.assert_allclose(
        batch["src_vid"][0, :n, :6], _l2(np.concatenate([rgb, opt], 1))[:n], rtol=1e-6
    )
    tok = np.load(tmp_path / "query_features" / "t0.npz")["token"].astype(np.float32)
    np.testing.assert_array_equal(batch["src_txt"][0, :2], tok)  # not normalised
    label = np.asarray(rows[0]["label"])[:n]
    agg = (label - 1).sum(1)
    np.testing.assert_allclose(batch["saliency_all_labels"][0, :n], agg / 80 * 12, rtol=1e-6)
    assert batch["saliency_pos_labels"][0, 0] == np.argsort(agg)[-1]
    assert batch["src_pos_mask"][0].sum() == n - n // 2
    np.testing.assert_array_equal(batch["span_mask"][0], [1, 0, 0, 0, 0])
    assert ("src_aud" in batch) == audio


def test_eval_split_without_labels(tmp_path):
    write_qvh(tmp_path)
    rows = [{k: r[k] for k in ("qid", "query", "duration", "vid")} for r in write_qvh(tmp_path)]
    _write_jsonl(tmp_path / "val.jsonl", rows)
    batch, metas = _first_eval_batch(qvh_config(tmp_path))
    assert batch["span_mask"].sum() == 0 and batch["src_pos_mask"].sum() == 0
    assert len(metas) == 2


def test_preload_caches_and_can_be_off(tmp_path):
    write_qvh(tmp_path)
    train, ev = data.build_datasets(qvh_config(tmp_path))
    assert train.store is ev.store
    a = train.store.video("v0")[0]
    assert train.store.video("v0")[0] is a  # served from memory
    train2, _ = data.build_datasets(qvh_config(tmp_path, preload=False))
    assert train2.store.video("v0")[0] is not train2.store.video("v0")[0]


# ---------------------------------------------------------------------------- bad input


def _build(config):
    train, ev = data.build_datasets(config)
    for ds in (train, ev):
        for _ in data.eval_batches(ds, 2):
            pass


def test_missing_feature_file_names_vid_and_path(tmp_path):
    write_qvh(tmp_path)
    (tmp_path / "clip_features" / "v1.npz").unlink()
    with pytest.raises(DataError, match=r"video v1.*clip_features/v1\.npz"):
        _build(qvh_config(tmp_path, preload=False))


def test_missing_text_file(tmp_path):
    write_qvh(tmp_path)
    (tmp_path / "clip_text_features" / "qid1.npz").unlink()
    with pytest.raises(DataError, match=r"query 1.*qid1\.npz"):
        _build(qvh_config(tmp_path, preload=False))


@pytest.mark.parametrize(
    "override, pattern",
    [
        ({"v_feat_dims": (SF + 1, CLIP)}, rf"dimension {SF} disagrees with config\.data\.v_feat_dims \(slowfast_features\) = {SF + 1}"),
        ({"t_feat_dim": TXT + 2}, rf"dimension {TXT} disagrees with config\.data\.t_feat_dim = {TXT + 2}"),
    ],
)  # fmt: skip
def test_dimension_mismatch_names_key_and_numbers(tmp_path, override, pattern):
    write_qvh(tmp_path)
    with pytest.raises(DataError, match=pattern):
        _build(qvh_config(tmp_path, **override))


def test_audio_dimension_mismatch(tmp_path):
    write_qvh(tmp_path, audio=True)
    with pytest.raises(DataError, match=rf"{AUD} disagrees with config\.data\.a_feat_dim = 7"):
        _build(qvh_config(tmp_path, a_feat_dir="pann_features", a_feat_dim=7))


@pytest.mark.parametrize(
    "field", ["qid", "query", "vid", "duration", "relevant_windows", "saliency_scores"]
)
def test_missing_annotation_field_names_file_line_field(tmp_path, field):
    rows = write_qvh(tmp_path)
    del rows[1][field]
    _write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=rf"train\.jsonl:2: .*'{field}'"):
        _build(qvh_config(tmp_path))


def test_missing_charades_window(tmp_path):
    rows = write_charades_i3d(tmp_path)
    del rows[0]["relevant_windows"]
    _write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"train\.jsonl:1: .*'relevant_windows'"):
        data.make_dataset(_charades_data(tmp_path), "train", store=None)


def _charades_data(root):
    config = get_base_config()
    d = config.data
    d.dataset, d.feature_root = "charades", str(root)
    d.train_path, d.eval_path = str(root / "train.jsonl"), str(root / "val.jsonl")
    d.v_feat_dirs, d.v_feat_dims, d.v_feat_format = ("i3d_features",), (8,), "npy"
    d.t_feat_dim, d.clip_length = TXT, 0.5
    return d


def test_missing_tvsum_label_and_domain(tmp_path):
    rows = write_tvsum(tmp_path)
    del rows[0]["label"]
    _write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"train\.jsonl:1: .*'label'"):
        _build(tvsum_config(tmp_path))
    with pytest.raises(DataError, match=r"--config\.data\.domain"):
        _build(tvsum_config(tmp_path, domain=None))


@pytest.mark.parametrize("query", ["", "   "])
def test_empty_query(tmp_path, query):
    rows = write_qvh(tmp_path)
    rows[0]["query"] = query
    _write_jsonl(tmp_path / "val.jsonl", rows)
    with pytest.raises(DataError, match=r"val\.jsonl:1: empty query"):
        _build(qvh_config(tmp_path))


def test_empty_query_features(tmp_path):
    write_qvh(tmp_path)
    np.savez(tmp_path / "clip_text_features" / "qid0.npz", last_hidden_state=np.zeros((0, TXT)))
    with pytest.raises(DataError, match=r"qid0\.npz is empty"):
        _build(qvh_config(tmp_path))


def test_long_video_warns_once_and_truncates(tmp_path, caplog):
    write_qvh(tmp_path, lengths=(12, 14))
    with caplog.at_level(logging.WARNING):
        batch, _ = _first_eval_batch(qvh_config(tmp_path, max_v_l=10))
    assert sum("max_v_l" in r.message for r in caplog.records) == 1
    np.testing.assert_array_equal(batch["src_vid_mask"].sum(1), [10, 10])
    # TEF and span labels use the cut length (10 clips), as the official loader.
    np.testing.assert_allclose(batch["src_vid"][0, 9, -2:], [0.9, 1.0], rtol=1e-6)
    np.testing.assert_allclose(batch["span_labels"][0, 0], [6 / 20, 4 / 20], rtol=1e-6)


def test_long_video_error_when_configured(tmp_path):
    write_qvh(tmp_path, lengths=(12, 5))
    with pytest.raises(DataError, match=r"v0.*12 clips > config\.data\.max_v_l = 10"):
        _build(qvh_config(tmp_path, max_v_l=10, on_long_video="error"))


def test_tvsum_text_longer_than_max_q_l_is_an_error(tmp_path):
    write_tvsum(tmp_path)
    config = tvsum_config(tmp_path)
    config.data.max_q_l = 1
    with pytest.raises(DataError, match=r"2 tokens > config\.data\.max_q_l = 1"):
        _build(config)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_name_the_file(tmp_path, bad):
    write_qvh(tmp_path)
    feats = np.ones((5, SF))
    feats[2, 1] = bad
    np.savez(tmp_path / "slowfast_features" / "v1.npz", features=feats)
    with pytest.raises(DataError, match=r"slowfast_features/v1\.npz contains NaN or Inf"):
        _build(qvh_config(tmp_path))


def test_feature_root_unset_or_wrong(tmp_path):
    write_qvh(tmp_path)
    with pytest.raises(DataError, match=r"config\.data\.feature_root is not set"):
        _build(qvh_config(tmp_path, feature_root=None))
    with pytest.raises(DataError, match=r"not a directory"):
        _build(qvh_config(tmp_path, feature_root=str(tmp_path / "nope")))


def test_bad_json_and_missing_annotation_file(tmp_path):
    write_qvh(tmp_path)
    with open(tmp_path / "train.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(DataError, match=r"train\.jsonl:3: not valid JSON"):
        _build(qvh_config(tmp_path))
    with pytest.raises(DataError, match=r"annotation file not found"):
        _build(qvh_config(tmp_path, train_path=str(tmp_path / "missing.jsonl")))


def test_npz_without_the_expected_key(tmp_path):
    write_qvh(tmp_path)
    np.savez(tmp_path / "clip_features" / "v0.npz", feats=np.ones((5, CLIP)))
    with pytest.raises(DataError, match=r"clip_features/v0\.npz has no array 'features'"):
        _build(qvh_config(tmp_path))


@pytest.mark.parametrize(
    "override, pattern",
    [
        ({"dataset": "activitynet"}, r"config\.data\.dataset = 'activitynet' is not one of"),
        ({"v_feat_format": "h5"}, r"config\.data\.v_feat_format must be one of"),
        ({"t_feat_format": "txt"}, r"config\.data\.t_feat_format must be one of"),
        ({"v_feat_dims": (SF,)}, r"v_feat_dirs has 2 entries but config\.data\.v_feat_dims has 1"),
        ({"on_long_video": "skip"}, r"on_long_video must be 'truncate' or 'error'"),
        ({"a_feat_dir": "pann_features"}, r"a_feat_dir is set but config\.data\.a_feat_dim is not"),
    ],
)
def test_config_typos_are_reported(tmp_path, override, pattern):
    write_qvh(tmp_path)
    with pytest.raises(DataError, match=pattern):
        _build(qvh_config(tmp_path, **override))
