"""Features resident on the device: the gathered batch equals the collated one, bit for bit."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_data_readers import AUD, qvh_config, write_qvh

from trdetr_jax import data
from trdetr_jax import mesh as mesh_lib
from trdetr_jax.data import features, resident

LENGTHS = (8, 5, 9, 6, 7, 10, 4, 3)


def _datasets(tmp_path, **overrides):
    write_qvh(tmp_path, lengths=LENGTHS, audio=overrides.pop("audio", False))
    overrides.setdefault("length_buckets", True)
    return data.build_datasets(qvh_config(tmp_path, **overrides))


def _assert_same(gathered, collated):
    assert sorted(gathered) == sorted(collated)
    for k, v in collated.items():
        got = np.asarray(gathered[k])
        assert got.dtype == v.dtype and got.shape == v.shape, k
        np.testing.assert_array_equal(got, v, err_msg=k)


@pytest.mark.parametrize("audio", [False, True])
def test_gathered_batches_equal_the_collated_ones(tmp_path, audio):
    overrides = dict(audio=audio, video_buckets=(6,), text_buckets=(5,))
    if audio:
        overrides.update(a_feat_dir="pann_features", a_feat_dim=AUD)
    train_ds, eval_ds = _datasets(tmp_path, **overrides)
    mesh = mesh_lib.make_mesh(jax.devices()[:2])
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    gather = jax.jit(resident.gather)
    shapes = set()
    for ds, batches in (
        (train_ds, lambda r: data.train_batches(train_ds, 4, epoch=1, seed=5, resident=r)),
        (eval_ds, lambda r: data.eval_batches(eval_ds, 3, pad_to=4, resident=r)),
    ):
        tables = resident.build(ds, sharding)
        assert tables.nbytes == resident.table_bytes(ds)
        for (host, metas), (rows, metas_r) in zip(batches(None), batches(tables), strict=True):
            assert metas == metas_r
            assert not set(resident.FEATURE_KEYS) & set(rows)
            assert rows["video_row"].dtype == rows["text_row"].dtype == np.int32
            _assert_same(gather(tables.tables, rows), host)
            shapes.add(host["src_vid"].shape[1])
    assert shapes == {6, 10}  # both video buckets were gathered


def test_a_batch_with_features_passes_through(tmp_path):
    train_ds, _ = _datasets(tmp_path)
    host, _ = next(data.train_batches(train_ds, 4, epoch=0))
    assert resident.gather({}, host) is host


def test_auto_on_cpu_keeps_cached_features_resident_when_they_fit(tmp_path, monkeypatch):
    train_ds, eval_ds = _datasets(tmp_path)
    devices = jax.devices()[:1]
    need = resident.table_bytes(train_ds) + resident.table_bytes(eval_ds)
    # Fits in 40% of the available memory: on; one byte short of it: off, saying why.
    monkeypatch.setattr(features, "available_memory_bytes", lambda: int(need / 0.4) + 1)
    on, why = resident.wanted("auto", (train_ds, eval_ds), devices)
    assert on is True and why.startswith("CPU: ")
    monkeypatch.setattr(features, "available_memory_bytes", lambda: int(need / 0.4) - 1)
    on, why = resident.wanted("auto", (train_ds, eval_ds), devices)
    assert on is False and "more than 40% of the" in why
    # Every CPU device of the process holds a copy.
    two = [devices[0], devices[0]]
    monkeypatch.setattr(features, "available_memory_bytes", lambda: int(need / 0.4) + 1)
    assert resident.wanted("auto", (train_ds, eval_ds), two)[0] is False
    monkeypatch.setattr(features, "available_memory_bytes", lambda: None)
    assert resident.wanted("auto", train_ds, devices)[0] is False
    monkeypatch.undo()
    # Features not cached in memory (config.data.preload off, or too big for it): off.
    train_ds.store.disable_cache()
    on, why = resident.wanted("auto", train_ds, devices)
    assert on is False and "config.data.preload" in why


def test_on_and_off_force_the_choice(tmp_path):
    train_ds, _ = _datasets(tmp_path)
    devices = jax.devices()[:1]
    assert resident.wanted("on", train_ds, devices)[0] is True
    assert resident.wanted("off", train_ds, devices)[0] is False
    with pytest.raises(ValueError, match="features_on_device: expected 'auto', 'on' or 'off'"):
        resident.wanted("yes", train_ds, devices)
    # 8 videos x 10 clips x (SF + CLIP + TEF) + 8 queries x 6 tokens x TXT, float32.
    dv, dt, _ = resident.widths(train_ds)
    assert resident.table_bytes(train_ds) == 4 * (8 * 10 * dv + 8 * 6 * dt)
