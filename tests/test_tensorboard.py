"""TensorBoard event files written beside metrics.jsonl by RunLog.record."""

from __future__ import annotations

import pytest

from trdetr_jax import runlog, tensorboard

pytestmark = pytest.mark.extras  # CI installs the extras and selects these


def test_records_read_back_from_the_event_files(tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX (extra 'tensorboard') not installed")
    log = runlog.RunLog(tmp_path, resume_step=None)
    log.record({"type": "train", "step": 2, "epoch": 1, "loss": 1.5, "lr": 1e-4, "grad_norm": 3.0})
    log.record({"type": "train", "step": 4, "epoch": 1, "loss": 1.25, "lr": 1e-4, "grad_norm": 2.0})
    log.record({"type": "eval", "step": 4, "epoch": 1, "MR-full-mAP": 12.5, "HL-min-VG-HIT1": None})
    log.events.close()
    got = tensorboard.read_scalars(tmp_path)
    assert got["train/loss"] == [(2, 1.5), (4, 1.25)]
    assert got["train/grad_norm"] == [(2, 3.0), (4, 2.0)]
    assert got["train/lr"] == [(2, pytest.approx(1e-4)), (4, pytest.approx(1e-4))]
    assert got["eval/MR-full-mAP"] == [(4, 12.5)]
    log.record({"type": "eval", "step": 6, "MR-full-R1@0.5": 40.0})
    log.events.close()
    assert tensorboard.read_scalars(tmp_path)["eval/MR-full-R1_0.5"] == [(6, 40.0)]
    assert "eval/HL-min-VG-HIT1" not in got  # a metric the split cannot give: no point
    assert not any(tag.endswith(("/step", "/epoch", "/type")) for tag in got)


def test_without_tensorboardx_no_event_files(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tbx(name, *args, **kwargs):
        if name.startswith("tensorboardX"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tbx)
    writer = tensorboard.EventWriter(tmp_path)
    writer.write({"type": "train", "step": 1, "loss": 1.0})
    writer.write({"type": "train", "step": 2, "loss": 0.5})
    assert not list(tmp_path.glob("events.out.tfevents.*"))
