"""Converting lighthouse TR-DETR checkpoints (torch.save of {'model', ..., 'opt': EasyDict})."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from trdetr_jax.official import convert, keys, lighthouse

# lighthouse's option files for TR-DETR on QVHighlights with CLIP + SlowFast
# (configs/base.yml, feature/clip_slowfast.yml, model/tr_detr.yml, dataset/qvhighlight.yml),
# shrunk where the model allows (hidden 256 stays: the sine embedding needs it).
LIGHTHOUSE_OPT = {
    "seed": 2023, "device": "cuda", "lr": 0.0001, "lr_drop": 400, "wd": 0.0001,
    "n_epoch": 200, "max_es_cnt": 200, "bsz": 32, "eval_bsz": 100, "grad_clip": 0.1,
    "max_q_l": 32, "max_v_l": 75, "max_a_l": 75, "max_windows": 5, "clip_length": 2,
    "position_embedding": "sine", "enc_layers": 1, "dec_layers": 1, "dim_feedforward": 32,
    "hidden_dim": 256, "input_dropout": 0.5, "dropout": 0.1, "nheads": 8, "num_queries": 4,
    "n_input_proj": 2, "saliency_margin": 0.2, "span_loss_type": "l1", "set_cost_span": 10,
    "set_cost_giou": 1, "set_cost_class": 4, "span_loss_coef": 10, "giou_loss_coef": 1,
    "label_loss_coef": 4, "eos_coef": 0.1, "lw_saliency": 1, "aux_loss": True,
    "ckpt_filename": "best.ckpt", "eval_split_name": "val", "results_dir": "results",
    "ctx_mode": "video_tef", "v_feat_types": "slowfast_clip", "t_feat_type": "clip",
    "v_feat_dim": 2818, "t_feat_dim": 512, "model_name": "tr_detr", "VTC_loss_coef": 0.3,
    "CTC_loss_coef": 0.5, "dset_name": "qvhighlight",
    "train_path": "data/qvhighlight/highlight_train_release.jsonl",
    "eval_path": "data/qvhighlight/highlight_val_release.jsonl",
    "v_feat_dirs": ["features/qvhighlight/clip", "features/qvhighlight/slowfast"],
    "t_feat_dir": "features/qvhighlight/clip_text", "a_feat_dirs": None, "a_feat_types": None,
    "t_feat_dir_pretrain_eval": None,
}  # fmt: skip
KWARGS = dict(hidden_dim=256, nheads=8, enc_layers=1, dec_layers=1, dim_feedforward=32,
              num_queries=4, n_input_proj=2, max_q_l=32)  # fmt: skip


@pytest.fixture
def easydict_module(monkeypatch):
    """An ``easydict.EasyDict`` that pickles as the real one (a dict subclass mirroring its
    items in ``__dict__``), so torch.save writes what lighthouse's save_checkpoint writes."""
    module = types.ModuleType("easydict")

    class EasyDict(dict):
        def __init__(self, d=None):
            super().__init__()
            for k, v in (d or {}).items():
                setattr(self, k, v)

        def __setattr__(self, name, value):
            super().__setattr__(name, value)
            super().__setitem__(name, value)

        __setitem__ = __setattr__

    EasyDict.__module__ = "easydict"
    EasyDict.__qualname__ = "EasyDict"
    module.EasyDict = EasyDict
    monkeypatch.setitem(sys.modules, "easydict", module)
    return module


def _state_dict(seed=0):
    rng = np.random.default_rng(seed)
    shapes = keys.expected_param_shapes(KWARGS, 2818, 512)
    flat = {p: rng.standard_normal(s).astype(np.float32) for p, s in shapes.items()}
    return keys.params_to_state_dict(keys.unflatten_params(flat))


def _save_lighthouse(torch, path, easydict_module, opt, sd):
    """As lighthouse's basic_utils.save_checkpoint: model, optimizer, lr_scheduler, epoch, opt."""
    model = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 1e-4, "params": [0]}]}
    scheduler = {"step_size": 400, "gamma": 0.1, "base_lrs": [1e-4], "last_epoch": 7}
    checkpoint = {
        "model": model,
        "optimizer": optimizer,
        "lr_scheduler": scheduler,
        "epoch": 7,
        "opt": easydict_module.EasyDict(opt),
    }
    torch.save(checkpoint, path)


def test_lighthouse_checkpoint_converts(tmp_path, easydict_module, torch):
    sd = _state_dict()
    _save_lighthouse(torch, tmp_path / "best.ckpt", easydict_module, LIGHTHOUSE_OPT, sd)
    del sys.modules["easydict"]  # reading needs no easydict: the options come back as a dict
    rc = convert.main(["--checkpoint", str(tmp_path / "best.ckpt"), "--out", str(tmp_path / "o")])
    assert rc == 0
    params, config = convert.load_converted(tmp_path / "o")
    assert config.data.dataset == "qvhighlights"
    assert config.data.v_feat_dirs == ("clip", "slowfast")  # lighthouse's order: CLIP first
    assert config.data.v_feat_dims == (512, 2304)  # 2818 counts the TEF
    assert config.data.t_feat_dir == "clip_text" and config.data.t_feat_dim == 512
    assert config.data.use_tef and config.data.clip_length == 2.0
    assert (config.data.max_v_l, config.data.max_q_l) == (75, 32)
    assert (config.model.dim_feedforward, config.model.num_queries) == (32, 4)
    assert config.seed == 2023 and config.loss.vtc_loss_coef == 0.3
    back = keys.params_to_state_dict(params)
    assert sorted(back) == sorted(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_lighthouse_audio_and_other_datasets_are_refused(tmp_path, easydict_module, capsys, torch):
    opt = dict(LIGHTHOUSE_OPT, ctx_mode="video_audio_tef", a_feat_dirs=["features/q/pann"])
    _save_lighthouse(torch, tmp_path / "a.ckpt", easydict_module, opt, _state_dict())
    rc = convert.main(["--checkpoint", str(tmp_path / "a.ckpt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert str(tmp_path / "a.ckpt") in err and "no TEF to the audio" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="dset_name='tacos' is not supported"):
        lighthouse.to_official_options(dict(LIGHTHOUSE_OPT, dset_name="tacos"))
    with pytest.raises(ValueError, match="only 'tr_detr'"):
        lighthouse.to_official_options(dict(LIGHTHOUSE_OPT, model_name="qd_detr"))


def test_lighthouse_tvsum_options_keep_their_domain():
    opt = dict(LIGHTHOUSE_OPT, dset_name="tvsum", domain="BK", v_feat_dirs=["features/tvsum/i3d"])
    o = lighthouse.to_official_options(dict(opt, v_feat_dim=2050, max_v_l=1000, max_q_l=100))
    assert o["dset_name"] == "tvsum" and o["dset_domain"] == "BK" and o["use_tef"] is True
    from trdetr_jax.official.options import options_to_config

    c = options_to_config(o)
    assert c.data.dataset == "tvsum" and c.data.domain == "BK"
    assert c.data.v_feat_dims == (2048,) and c.data.v_feat_dirs == ("i3d",)
    assert not lighthouse.is_lighthouse_options({"hidden_dim": 256, "dset_name": "hl"})
