"""trdetr_jax.Predictor: preprocessing as the loader, long-video windows, loading, errors."""

from __future__ import annotations

import copy

import _tiny_run
import numpy as np
import pytest

from trdetr_jax import Predictor
from trdetr_jax.data import DataError, features
from trdetr_jax.predictor import bucket, window_starts


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return _tiny_run.tiny_config(tmp_path_factory.mktemp("demo"))


def test_window_starts_cover_the_video_and_end_at_its_end():
    assert window_starts(12, 12, 6) == [0]
    assert window_starts(5, 12, 6) == [0]
    assert window_starts(30, 12, 6) == [0, 6, 12, 18]
    assert window_starts(31, 12, 6) == [0, 6, 12, 18, 19]
    assert window_starts(40, 12, 12) == [0, 12, 24, 28]
    with pytest.raises(ValueError, match="stride"):
        window_starts(40, 12, 0)
    assert [bucket(n) for n in (1, 2, 3, 5, 8, 9, 40)] == [1, 2, 4, 8, 8, 16, 32]


def _stub_forward(params, batch):
    """A model stand-in: saliency = first feature + the TEF start (position in the window);
    query 0 spans the clips whose first feature exceeds 0.5 (score from its size), query 1
    the whole window with a low score."""
    vid, mask = batch["src_vid"], batch["src_vid_mask"]
    b = len(vid)
    f0 = vid[..., 0] * mask
    sal = f0 + vid[..., -2]
    spans = np.zeros((b, 2, 2), np.float32)
    logits = np.zeros((b, 2, 2), np.float32)
    for i in range(b):
        hot = np.flatnonzero(f0[i] > 0.5)
        length = mask[i].sum()  # spans are fractions of the valid clips
        if len(hot):
            st, ed = hot[0], hot[-1] + 1
            spans[i, 0] = [(st + ed) / 2 / length, (ed - st) / length]
            logits[i, 0] = [4.0, 0.0]
        else:
            spans[i, 0] = [0.5, 0.1]
            logits[i, 0] = [-4.0, 0.0]
        spans[i, 1] = [0.5, 1.0]
        logits[i, 1] = [-2.0, 0.0]
    return {"pred_logits": logits, "pred_spans": spans, "saliency_scores": sal, "video_mask": mask}


def _long_video(rng, n_clips, hot):
    a = rng.normal(0, 0.05, (n_clips, 8)).astype(np.float32)
    a[:, 1] = 1.0  # background: feature 0 near 0 after the L2 norm
    a[hot, 0] = 5.0  # the planted moment: feature 0 near 1
    b = rng.normal(0, 1.0, (n_clips + 1, 6)).astype(np.float32)  # one row longer: cut
    return a, b


def test_long_video_windows_find_a_moment_past_the_first_window(config):
    rng = np.random.default_rng(0)
    n, hot = 40, slice(20, 24)  # max_v_l = 12: the moment is in windows 12-23 and 18-29
    a, b = _long_video(rng, n, hot)
    query = rng.normal(size=(5, 16)).astype(np.float32)
    pred = Predictor(None, config, stride=6, forward=_stub_forward)
    out = pred.predict([a, b], query)
    moments = out["pred_relevant_windows"]
    assert moments[0][:2] == [40.0, 48.0]  # clips 20-23, 2 s each, in video time
    assert moments[0][2] == pytest.approx(1 / (1 + np.exp(-4.0)), abs=1e-4)
    scores = [m[2] for m in moments]
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= st <= ed <= n * 2.0 for st, ed, _ in moments)
    # Windows 12-23 and 18-29 found the same moment: NMS kept one copy.
    assert sum(m[:2] == [40.0, 48.0] for m in moments) == 1
    # Saliency: mean over the windows holding each clip of (feature 0 + position / 12).
    f0 = features.l2_normalize(a)[:, 0]
    starts = window_starts(n, 12, 6)
    want = [
        np.mean([f0[c] + np.float32(c - s) / np.float32(12) for s in starts if s <= c < s + 12])
        for c in range(n)
    ]
    np.testing.assert_allclose(out["pred_saliency_scores"], want, rtol=1e-6, atol=1e-6)


def test_short_video_is_one_window_with_the_configured_postprocessing(config):
    rng = np.random.default_rng(1)
    a, b = _long_video(rng, 10, slice(2, 5))
    pred = Predictor(None, config, forward=_stub_forward)
    out = pred.predict([a, b], rng.normal(size=(3, 16)).astype(np.float32))
    assert out["pred_relevant_windows"][0][:2] == [4.0, 10.0]  # clips 2-4
    assert len(out["pred_saliency_scores"]) == 10
    f0 = features.l2_normalize(a)[:, 0]
    np.testing.assert_allclose(
        out["pred_saliency_scores"], f0 + np.arange(10, dtype=np.float32) / 10, rtol=1e-6
    )


def test_bad_inputs_raise_data_errors_naming_the_field(config):
    pred = Predictor(None, config, forward=_stub_forward)
    a, b = np.ones((10, 8), np.float32), np.ones((10, 6), np.float32)
    q = np.ones((3, 16), np.float32)
    with pytest.raises(DataError, match=r"expected 2 arrays .* found 1"):
        pred.predict([a], q)
    with pytest.raises(DataError, match=r"video_features\[1\]: feature dimension 7 disagrees"):
        pred.predict([a, np.ones((10, 7), np.float32)], q)
    with pytest.raises(DataError, match=r"query_features\[0\] is empty"):
        pred.predict([a, b], np.ones((0, 16), np.float32))
    with pytest.raises(DataError, match="at least one query"):
        pred.predict([a, b], [])
    with pytest.raises(DataError, match=r"t_feat_dim = 16"):
        pred.predict([a, b], np.ones((3, 15), np.float32))
    with pytest.raises(DataError, match="NaN"):
        pred.predict([a * np.nan, b], q)
    with pytest.raises(DataError, match="uses no audio"):
        pred.predict([a, b], q, audio_features=a)


def test_duration_scales_long_videos_as_one_window_and_bad_values_are_refused(config):
    rng = np.random.default_rng(2)
    a, b = _long_video(rng, 40, slice(20, 24))  # 80 s at 2 s a clip
    q = rng.normal(size=(5, 16)).astype(np.float32)
    pred = Predictor(None, config, stride=6, forward=_stub_forward)
    base = pred.predict([a, b], q)
    assert pred.predict([a, b], q, duration=80.0) == base  # the default duration
    # Half the duration: every moment at half its time (snapped to 2 s), none past the end,
    # no pile-up of clamped copies.
    half = pred.predict([a, b], q, duration=40.0)
    assert half["pred_relevant_windows"][0][:2] == [20.0, 24.0]
    assert all(0 <= st <= ed <= 40.0 for st, ed, _ in half["pred_relevant_windows"])
    spans = [tuple(w[:2]) for w in half["pred_relevant_windows"]]
    assert len(spans) == len(set(spans))
    # A short video maps its spans onto the duration the same way.
    a10, b10 = _long_video(rng, 10, slice(2, 5))
    assert pred.predict([a10, b10], q, duration=40.0)["pred_relevant_windows"][0][:2] == [
        8.0,
        20.0,
    ]
    for bad in (-5.0, 0.0, float("nan"), float("inf"), "50", True):
        with pytest.raises(DataError, match=r"duration: expected .* positive number"):
            pred.predict([a, b], q, duration=bad)


def test_query_and_video_array_types(config):
    import jax.numpy as jnp

    rng = np.random.default_rng(3)
    a, b = _long_video(rng, 10, slice(2, 5))
    q = rng.normal(size=(3, 16)).astype(np.float32)
    pred = Predictor(None, config, forward=_stub_forward)
    want = pred.predict([a, b], q)
    assert pred.predict([jnp.asarray(a), b.tolist()], jnp.asarray(q)) == want
    assert pred.predict([a, b], q.tolist()) == want
    assert pred.predict([a, b], q[None]) == [want]  # [Q, N, D]: a list of queries
    with pytest.raises(DataError, match=r"query_features: shape \(16,\), expected"):
        pred.predict([a, b], q[0])
    with pytest.raises(DataError, match="holds bool values"):
        pred.predict([a, b], q > 0)
    with pytest.raises(DataError, match=r"video_features\[0\] holds complex64 values"):
        pred.predict([a + 0j, b], q)
    with pytest.raises(DataError, match="not a rectangular array"):
        pred.predict([a, b], [[1.0] * 16, [1.0] * 15])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"stride": 13}, r"stride: expected an integer in \[1, 12\]"),
        ({"stride": 0}, r"stride: expected an integer in \[1, 12\]"),
        ({"max_batch": 0}, r"max_batch: expected an integer >= 1"),
        ({"merge_nms_thd": -1}, r"merge_nms_thd: expected a number in \[0.0, 1.0\]"),
        ({"max_moments": 0}, r"max_moments: expected an integer >= 1"),
    ],
)
def test_bad_predictor_options_are_refused(config, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Predictor(None, config, forward=_stub_forward, **kwargs)


def _random_params(config):
    import jax

    from trdetr_jax import train
    from trdetr_jax.model import TRDETR, model_kwargs_from_config

    v, t, _ = features.input_dims(config.data)
    batch = {
        "src_txt": np.zeros((1, config.data.max_q_l, t), np.float32),
        "src_txt_mask": np.ones((1, config.data.max_q_l), np.float32),
        "src_vid": np.zeros((1, config.data.max_v_l, v), np.float32),
        "src_vid_mask": np.ones((1, config.data.max_v_l), np.float32),
    }
    model = TRDETR(**model_kwargs_from_config(config))
    return jax.device_get(train.init_params(model, batch, jax.random.key(3)))


@pytest.mark.slow
def test_real_model_long_video_and_several_queries(config):
    rng = np.random.default_rng(2)
    # 30 clips, stride 6: windows at 0, 6, 12, 18; 4 rows a pass (one compilation).
    pred = Predictor(_random_params(config), config, stride=6, max_batch=4)
    a, b = _long_video(rng, 30, slice(20, 24))
    queries = [rng.normal(size=(n, 16)).astype(np.float32) for n in (3, 11)]  # 11: cut to 8
    outs = pred.predict([a, b], queries)
    assert len(outs) == 2
    for out in outs:
        assert len(out["pred_saliency_scores"]) == 30
        scores = [m[2] for m in out["pred_relevant_windows"]]
        assert 1 <= len(scores) <= config.eval.max_after_nms
        assert scores == sorted(scores, reverse=True)
        assert all(0 <= st <= ed <= 60.0 for st, ed, _ in out["pred_relevant_windows"])
    # One query alone gives what it gets inside the batch.
    alone = pred.predict([a, b], queries[1])
    np.testing.assert_allclose(
        alone["pred_saliency_scores"], outs[1]["pred_saliency_scores"], rtol=1e-5, atol=1e-6
    )


@pytest.mark.slow
def test_load_converted_dir_matches_predict_rows(config, tmp_path):
    import json

    from trdetr_jax import data as data_lib
    from trdetr_jax import predict
    from trdetr_jax.official.convert import _write_atomically

    out = tmp_path / "converted"
    _write_atomically(out, _random_params(config), config)
    resolved = data_lib.resolve_config(config)
    # Official mode depends on the batch: compare one query with evaluation batches of one.
    rows = predict.predict_rows(
        out, resolved.data.eval_path, overrides=("train.eval_batch_size=1",)
    )
    gt = [json.loads(line) for line in open(resolved.data.eval_path)]
    pred = Predictor.load(out, max_batch=4)
    got = pred.predict_files(gt[0]["vid"], [gt[0]["qid"]], duration=gt[0]["duration"])[0]
    assert got["pred_relevant_windows"] == rows[0]["pred_relevant_windows"]
    # float32 sums in another order: other padded shapes here (max_v_l) and there (buckets).
    np.testing.assert_allclose(
        got["pred_saliency_scores"], rows[0]["pred_saliency_scores"], rtol=1e-4, atol=1e-5
    )
    # predict() on the raw stored arrays gives the same as predict_files.
    root = resolved.data.feature_root
    with np.load(f"{root}/slowfast_features/{gt[0]['vid']}.npz") as z:
        a = z["features"]
    with np.load(f"{root}/clip_features/{gt[0]['vid']}.npz") as z:
        b = z["features"]
    with np.load(f"{root}/clip_text_features/qid{gt[0]['qid']}.npz") as z:
        q = z["last_hidden_state"]
    direct = pred.predict([a, b], q, duration=gt[0]["duration"])
    assert direct == got


def test_audio_is_normalised_cut_to_the_video_and_gets_the_tef(config):
    audio_config = copy.deepcopy(config)
    audio_config.data.a_feat_dir, audio_config.data.a_feat_dim = "pann_features", 4
    seen = []

    def forward(params, batch):
        seen.append(batch)
        return _stub_forward(params, batch)

    rng = np.random.default_rng(4)
    a, b = _long_video(rng, 10, slice(2, 5))
    audio = rng.normal(size=(8, 4)).astype(np.float32)  # shorter: the video is cut to 8
    pred = Predictor(None, audio_config, forward=forward)
    out = pred.predict([a, b], np.ones((3, 16), np.float32), audio_features=audio)
    assert len(out["pred_saliency_scores"]) == 8
    (batch,) = seen
    want = features.l2_normalize(audio)
    np.testing.assert_allclose(batch["src_aud"][0, :8, :4], want, rtol=1e-6)
    np.testing.assert_allclose(batch["src_aud"][0, :8, 4:], features.temporal_endpoint_feature(8))
    assert batch["src_vid_mask"][0].tolist() == [1.0] * 8 + [0.0] * 4
    with pytest.raises(DataError, match="the model uses audio"):
        pred.predict([a, b], np.ones((3, 16), np.float32))
    with pytest.raises(DataError, match=r"audio_features: feature dimension 5 disagrees"):
        pred.predict([a, b], np.ones((3, 16), np.float32), audio_features=np.ones((8, 5)))
