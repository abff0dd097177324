"""Header-only lengths (``FeatureStore.lengths``) equal what loading gives, and catch damage."""

from __future__ import annotations

import numpy as np
import pytest
from test_data_readers import qvh_config, tvsum_config, write_charades_i3d, write_qvh, write_tvsum

from trdetr_jax import data
from trdetr_jax.data import DataError
from trdetr_jax.data.features import array_shape


def _store(config):
    return data.make_store(data.resolve_config(config).data)


@pytest.mark.parametrize("audio", [False, True])
def test_lengths_equal_loaded_lengths(tmp_path, audio):
    # Lengths 12 and 3 clips with max_v_l 10: one video is cut, one is short; texts 3..4 tokens
    # with max_q_l 3: one is cut. Audio is two rows longer than the video.
    rows = write_qvh(tmp_path, lengths=(12, 3), audio=audio)
    overrides = dict(max_q_l=3)
    if audio:
        overrides.update(a_feat_dir="pann_features", a_feat_dim=3)
    store = _store(qvh_config(tmp_path, **overrides))
    for r in rows:
        video, _ = store.video(r["vid"])
        assert store.lengths(r["vid"], r["qid"]) == (len(video), len(store.text(r["qid"])))
    assert [store.lengths(r["vid"], r["qid"]) for r in rows] == [(10, 3), (3, 3)]


def test_lengths_npy_layout(tmp_path):
    rows = write_charades_i3d(tmp_path, lengths=(12, 7))
    config = qvh_config(tmp_path, dataset="charades", v_feat_format="npy", clip_length=0.5)
    config.data.v_feat_dirs, config.data.v_feat_dims = ("i3d_features",), (8,)
    store = _store(config)
    for r in rows:
        assert store.lengths(r["vid"], r["qid"]) == (len(store.video(r["vid"])[0]), 4)


def test_lengths_rgb_opt_layout_with_audio(tmp_path):
    rows = write_tvsum(tmp_path, lengths=(14, 6), audio=True)  # audio is one row shorter
    store = _store(tvsum_config(tmp_path, audio=True))
    got = [store.lengths(r["vid"], r["qid"]) for r in rows]
    assert got == [(len(store.video(r["vid"])[0]), 2) for r in rows] == [(12, 2), (5, 2)]


def test_array_shape_reads_headers_and_catches_truncation(tmp_path):
    x = np.zeros((7, 5), np.float32)
    np.save(tmp_path / "a.npy", x[None])  # a leading batch axis of 1 is dropped
    np.savez(tmp_path / "b.npz", features=x)
    np.savez_compressed(tmp_path / "c.npz", features=x)
    assert array_shape(str(tmp_path / "a.npy"), None, "v") == (7, 5)
    assert array_shape(str(tmp_path / "b.npz"), "features", "v") == (7, 5)
    assert array_shape(str(tmp_path / "c.npz"), "features", "v") == (7, 5)
    with pytest.raises(DataError, match=r"b.npz has no array 'token' \(has \['features'\]\)"):
        array_shape(str(tmp_path / "b.npz"), "token", "v")
    raw = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[:-4])
    with pytest.raises(DataError, match=r"t.npy is damaged: its header promises 268 bytes"):
        array_shape(str(tmp_path / "t.npy"), None, "video v")
    raw = (tmp_path / "b.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"video v: cannot read .*t.npz"):
        array_shape(str(tmp_path / "t.npz"), "features", "video v")
    with pytest.raises(DataError, match=r"feature file not found, tried .*missing.npy"):
        array_shape(str(tmp_path / "missing.npy"), None, "video v")
    np.save(tmp_path / "e.npy", np.zeros((0, 5), np.float32))
    with pytest.raises(DataError, match=r"e.npy is empty \(0 rows\)"):
        array_shape(str(tmp_path / "e.npy"), None, "video v")


def test_lengths_errors_as_loading(tmp_path):
    rows = write_qvh(tmp_path, lengths=(12, 3))
    store = _store(qvh_config(tmp_path, on_long_video="error", t_feat_dim=9))
    with pytest.raises(DataError, match=r"12 clips > config.data.max_v_l = 10"):
        store.lengths(rows[0]["vid"], rows[0]["qid"])
    with pytest.raises(
        DataError, match=r"feature dimension 5 disagrees with config.data.t_feat_dim = 9"
    ):
        store.lengths(rows[1]["vid"], rows[1]["qid"])
