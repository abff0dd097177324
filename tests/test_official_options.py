"""Official options -> our config (trdetr_jax.official.options)."""

from __future__ import annotations

import argparse
import json

import pytest

from trdetr_jax.official import options


def test_options_to_config_from_parsed_and_saved_options(reference_dir):
    opt = json.loads((reference_dir / "qvh_video_s0" / "config.json").read_text())["opt"]
    c = options.options_to_config(opt)  # parsed: v_feat_dim 2818 includes the TEF
    assert c.data.v_feat_dims == (2304, 512) and c.data.v_feat_dirs == (
        "slowfast_features",
        "clip_features",
    )
    assert c.data.use_tef and c.data.t_feat_dim == 512 and c.data.max_v_l == 75
    assert c.model.compat == "official" and c.model.dim_feedforward == 1024
    assert (c.loss.vtc_loss_coef, c.loss.ctc_loss_coef, c.loss.label_loss_coef) == (0.3, 0.5, 4.0)
    assert c.loss.use_matcher
    saved = {k: v for k, v in opt.items() if k not in ("use_tef", "use_video", "pin_memory")}
    saved["v_feat_dim"] = 2816  # opt.json is written before the parser adds the TEF
    assert options.options_to_config(argparse.Namespace(**saved)).data.v_feat_dims == (2304, 512)
    tvsum = json.loads((reference_dir / "small_tvsum" / "config.json").read_text())["opt"]
    c = options.options_to_config(tvsum)
    assert c.data.dataset == "tvsum" and not c.loss.use_matcher and c.data.v_feat_dims == (48,)
    with pytest.raises(ValueError, match="pre_norm"):
        options.options_to_config(dict(opt, pre_norm=True))
    with pytest.warns(UserWarning, match="txt_drop_ratio"):
        options.options_to_config(dict(opt, txt_drop_ratio=0.1))
