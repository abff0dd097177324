"""Length buckets and the official padded lengths every batch carries."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest
from test_data_readers import qvh_config, write_qvh

from trdetr_jax import data, train
from trdetr_jax.data import buckets, synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Video clips per example of the qvh datasets below; text tokens are 3 + index.
LENGTHS = (8, 5, 9, 6, 7, 10, 4, 3)


def _datasets(tmp_path, lengths=LENGTHS, **overrides):
    write_qvh(tmp_path, lengths=lengths)
    overrides.setdefault("length_buckets", True)  # qvh_config pads to the maxima
    return data.build_datasets(qvh_config(tmp_path, **overrides))


# -------------------------------------------------------------- bucket choice


def test_smallest_bucket_that_holds_the_longest_item():
    b = buckets.Buckets(video=(4, 8, 12), text=(5, 6))
    assert b.pick(1, 1) == (4, 5)
    assert b.pick(4, 5) == (4, 5)  # exactly full
    assert b.pick(5, 6) == (8, 6)
    assert b.pick(12, 2) == (12, 5)
    with pytest.raises(data.DataError, match="length 13 exceeds the largest bucket 12"):
        b.pick(13, 1)


def test_default_buckets_are_quantiles_of_the_batch_maximum():
    lengths = np.arange(1, 101)  # 1..100, sorted
    # One example a batch: plain quantiles 1/3, 2/3, 1 (the values at those ranks), then the max.
    assert buckets.quantile_buckets(lengths, 4, 200, batch_size=1) == (34, 67, 100, 200)
    # Batches of 4 are padded to their longest item: levels q ** (1/4).
    ranks = np.ceil((np.array([1, 2, 3]) / 3) ** 0.25 * 99).astype(int)
    assert buckets.quantile_buckets(lengths, 4, 200, batch_size=4) == (*lengths[ranks], 200)
    assert buckets.quantile_buckets(lengths, 4, 200, batch_size=4) == (77, 91, 100, 200)
    # The longest example is the maximum: no duplicate last bucket; one bucket: the maximum.
    assert buckets.quantile_buckets(lengths, 3, 100, batch_size=1) == (51, 100)
    assert buckets.quantile_buckets(lengths, 1, 100, batch_size=1) == (100,)


def test_explicit_buckets_and_the_off_switch(tmp_path):
    train_ds, ev = _datasets(tmp_path, video_buckets=(4, 7), text_buckets=(5,))
    assert train_ds.buckets == ev.buckets == buckets.Buckets((4, 7, 10), (5, 6))
    train_ds, _ = _datasets(tmp_path, length_buckets=True, num_video_buckets=2)
    assert train_ds.buckets.video == (10,)  # the longest training video is max_v_l
    train_ds, _ = _datasets(tmp_path, length_buckets=False, video_buckets=(4,))
    assert train_ds.buckets == buckets.Buckets((10,), (6,))
    with pytest.raises(data.DataError, match=r"config.data.video_buckets: .*max_v_l=10.*\(4, 11\)"):
        _datasets(tmp_path, video_buckets=(4, 11))


# ------------------------------------------------------ shapes and official lengths


def _text_len(qid):
    return min(3 + qid, 6)  # write_qvh: 3 + i tokens, cut to max_q_l = 6


def test_train_batches_pad_to_the_bucket_and_carry_the_global_lengths(tmp_path):
    train_ds, _ = _datasets(tmp_path, video_buckets=(5, 8), text_buckets=(4,))
    full = list(data.train_batches(train_ds, 4, epoch=0))
    shards = [
        list(data.train_batches(train_ds, 4, epoch=0, process_index=p, process_count=2))
        for p in (0, 1)
    ]
    assert len(full) == 2
    for (batch, metas), (b0, m0), (b1, m1) in zip(full, *shards):
        lv = max(LENGTHS[m["qid"]] for m in metas)
        lt = max(_text_len(m["qid"]) for m in metas)
        pad_v = min(x for x in (5, 8, 10) if x >= lv)
        pad_t = 4 if lt <= 4 else 6
        assert batch["src_vid"].shape[1] == pad_v and batch["src_txt"].shape[1] == pad_t
        assert batch["saliency_all_labels"].shape[1] == batch["src_pos_mask"].shape[1] == pad_v
        assert batch["official_vid_len"].tolist() == [lv] * 4
        assert batch["official_txt_len"].tolist() == [lt] * 4
        assert batch["official_vid_len"].dtype == np.int32
        # Each process: its own rows, the global batch's lengths and shapes.
        for b in (b0, b1):
            assert b["official_vid_len"].tolist() == [lv] * 2
            assert b["official_txt_len"].tolist() == [lt] * 2
            assert b["src_vid"].shape[1:] == batch["src_vid"].shape[1:]
        assert [m["qid"] for m in m0 + m1] == [m["qid"] for m in metas]
        for k in batch:
            np.testing.assert_array_equal(batch[k], np.concatenate([b0[k], b1[k]]))


def test_bucketed_content_equals_padding_to_the_maxima(tmp_path):
    bucketed, ev_b = _datasets(tmp_path, video_buckets=(5, 8), text_buckets=(4,))
    plain, ev_p = _datasets(tmp_path, length_buckets=False)
    pairs = list(
        zip(data.train_batches(bucketed, 2, epoch=1), data.train_batches(plain, 2, epoch=1))
    )
    pairs += list(zip(data.eval_batches(ev_b, 3), data.eval_batches(ev_p, 3)))
    shapes = set()
    for (b, mb), (p, mp) in pairs:
        assert [m["qid"] for m in mb] == [m["qid"] for m in mp]
        assert b.keys() == p.keys()
        lv, lt = b["src_vid"].shape[1], b["src_txt"].shape[1]
        shapes.add((lv, lt))
        assert p["src_vid"].shape[1] == 10 and p["src_txt"].shape[1] == 6
        for k, v in b.items():
            if k in ("src_vid", "src_vid_mask", "saliency_all_labels", "src_pos_mask"):
                np.testing.assert_array_equal(v, p[k][:, :lv])  # bit-identical
                assert not p[k][:, lv:].any()
            elif k in ("src_txt", "src_txt_mask"):
                np.testing.assert_array_equal(v, p[k][:, :lt])
                assert not p[k][:, lt:].any()
            else:
                np.testing.assert_array_equal(v, p[k])
                assert v.dtype == p[k].dtype
    assert len(shapes) > 1  # several buckets were used


def test_eval_batches_keep_the_official_groups_and_ignore_padding_rows(tmp_path):
    # Official eval_bsz 3 on 8 examples, in file order: [0 1 2] [3 4 5] [6 7]; rows padded
    # to 4 (e.g. 4 devices). The last group's lengths are those of examples 6, 7 alone.
    _, ev = _datasets(tmp_path, video_buckets=(5, 8), text_buckets=(4,))
    batches = list(data.eval_batches(ev, 3, pad_to=4))
    groups = [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [[m["qid"] for m in ms] for _, ms in batches] == groups
    for (batch, _), group in zip(batches, groups):
        mask = [1.0] * len(group) + [0.0] * (4 - len(group))
        assert batch["example_mask"].tolist() == mask
        lv = max(LENGTHS[q] for q in group)
        assert batch["official_vid_len"].tolist() == [lv] * 4
        assert batch["official_txt_len"].tolist() == [max(_text_len(q) for q in group)] * 4
        # Padding rows repeat the group's last example: same bucket, no longer item.
        n = len(group)
        np.testing.assert_array_equal(batch["src_vid"][n:], batch["src_vid"][[n - 1] * (4 - n)])
    assert batches[2][0]["official_vid_len"][0] == 4 and batches[2][0]["src_vid"].shape[1] == 5
    # Two processes: process 1 holds rows 2, 3 (in the last batch: example 7 and a padding
    # row); both see the official lengths of the whole group.
    p1 = list(data.eval_batches(ev, 3, pad_to=4, process_index=1, process_count=2))
    assert [[m["qid"] for m in ms] for _, ms in p1] == groups  # metas of the global batch
    for (b, _), (full, _) in zip(p1, batches):
        np.testing.assert_array_equal(b["official_vid_len"], full["official_vid_len"][2:])
        np.testing.assert_array_equal(b["src_vid"], full["src_vid"][2:])
    with pytest.raises(ValueError, match="pad_to=2 is smaller than batch_size=3"):
        next(data.eval_batches(ev, 3, pad_to=2))


def test_abstract_batch_on_many_processes(tmp_path, monkeypatch):
    """8 processes, global batch 32 (4 rows each): the abstract batch is the global one and
    every process's batches assemble the single-process batch."""
    lengths = [4 + i % 7 for i in range(32)]
    train_ds, _ = _datasets(tmp_path, lengths=lengths, video_buckets=(6,))
    monkeypatch.setattr(jax, "process_count", lambda: 8)
    shapes = data.abstract_batch(train_ds, 32)
    assert shapes["src_vid"].shape == (32, 10, 12) and shapes["src_txt"].shape == (32, 6, 5)
    assert shapes["official_vid_len"].shape == (32,) and shapes["example_mask"].shape == (32,)

    def first_batch(process_index, process_count):
        batches = data.train_batches(
            train_ds, 32, seed=3, epoch=0, start_step=0,
            process_index=process_index, process_count=process_count,
        )  # fmt: skip
        return next(batches)[0]

    full = first_batch(0, 1)
    parts = [first_batch(p, 8) for p in range(8)]
    for k in full:
        assert parts[0][k].shape[0] == 4
        np.testing.assert_array_equal(full[k], np.concatenate([p[k] for p in parts]))


def test_bucket_counts_match_the_batches(tmp_path):
    train_ds, _ = _datasets(tmp_path, video_buckets=(5, 8), text_buckets=(4,))
    counts = data.bucket_counts(train_ds, 2, epoch=1)
    seen = {}
    for batch, _ in data.train_batches(train_ds, 2, epoch=1):
        key = (batch["src_vid"].shape[1], batch["src_txt"].shape[1])
        seen[key] = seen.get(key, 0) + 1
    assert counts == dict(sorted(seen.items())) and sum(counts.values()) == 4


# ----------------------------------------------------------- short training runs


def _config_file(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("tiny")


def _shrink(config):
    config.model.hidden_dim = 256  # the decoder's sine embedding needs it
    config.model.nheads = 4
    config.model.dim_feedforward = 32
    config.model.num_queries = 4
    config.data.t_feat_dim = 8
    config.data.max_q_l = 8
    config.train.num_epochs = 1
    config.train.log_every_steps = 100
    config.train.checkpoint_every_steps = 100
    return config


def _train_log(config, tmp_path):
    train.train_and_evaluate(config, str(tmp_path / "run"))
    return (tmp_path / "run" / "train.log").read_text()


@pytest.mark.slow
def test_tvsum_shaped_run_logs_its_buckets(tmp_path):
    config = _shrink(_config_file("tvsum_i3d"))  # max_v_l 1000; videos 50-320 clips: /10
    config.data.max_v_l = 100
    config.data.v_feat_dims = (8,)
    config.data.num_video_buckets = 3
    config.data.num_text_buckets = 1
    rng = np.random.default_rng(0)
    video = rng.integers(5, 33, 10)
    video[0] = 32
    config = synthetic.write_dataset(config, tmp_path / "feats", video, np.full(10, 4), num_eval=2)
    log = _train_log(config, tmp_path)
    ds, _ = data.build_datasets(config)
    assert ds.buckets.video[-2:] == (32, 100) and ds.buckets.text == (8,)
    counts = data.bucket_counts(ds, 4, epoch=0, seed=config.seed)
    per_bucket = ", ".join(f"{n} at {v}x{t}" for (v, t), n in counts.items())
    (line,) = [x for x in log.splitlines() if "length buckets:" in x]
    assert line.endswith(
        f"length buckets: {ds.buckets.describe()}; "
        f"train batches per bucket (video x text) in epoch 1: {per_bucket}"
    )
    assert "100x" not in per_bucket  # no training batch padded to max_v_l
    assert "train step for video length" in log and "eval step for video length" in log


@pytest.mark.slow
def test_charades_i3d_shaped_run_logs_its_buckets(tmp_path):
    config = _shrink(_config_file("charades_i3d"))  # 0.5 s clips, max_v_l 400: /10
    config.data.max_v_l = 40
    config.data.v_feat_dims = (8,)
    config.data.num_video_buckets = 2
    config.data.num_text_buckets = 1
    rng = np.random.default_rng(1)
    video = rng.integers(2, 39, 12)  # 10-190 s at 0.5 s a clip, /10
    config = synthetic.write_dataset(config, tmp_path / "feats", video, rng.integers(3, 8, 12))
    log = _train_log(config, tmp_path)
    ds, _ = data.build_datasets(config)
    assert len(ds.buckets.video) == 2 and ds.buckets.video[-1] == 40
    assert f"length buckets: {ds.buckets.describe()}; " in log
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(m["type"] == "eval" for m in metrics)
