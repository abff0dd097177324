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


def test_tvsum_options_start_from_the_tvsum_defaults(reference_dir):
    """A converted TVSum checkpoint reads TVSum's file layouts, annotations and metric."""
    from trdetr_jax import annotations
    from trdetr_jax.config import get_tvsum_config

    opt = json.loads((reference_dir / "small_tvsum" / "config.json").read_text())["opt"]
    assert opt["dset_name"] == "tvsum" and opt["no_norm_tfeat"] is False
    c = options.options_to_config(opt)
    d = c.data
    assert (d.dataset, d.v_feat_format, d.t_feat_format) == ("tvsum", "rgb_opt", "tvsum_npz")
    # The official TVSum reader never normalises or cuts the text, whatever no_norm_tfeat says.
    assert d.normalize_text is False and d.truncate_text is False and d.normalize_video is True
    assert d.train_path == str(annotations.path("tvsum", "train"))
    assert d.eval_path == str(annotations.path("tvsum", "val"))
    assert d.domain == "VT" and c.train.best_metric == "mAP" and not c.loss.use_matcher
    # The run's own values win over the dataset defaults ...
    assert (d.v_feat_dirs, d.v_feat_dims, d.t_feat_dir) == (
        ("video_features",),
        (48,),
        "query_features",
    )
    assert (d.max_v_l, c.model.dim_feedforward, c.train.max_es_cnt) == (60, 64, -1)
    # ... and every field the options do not set is TVSum's default.
    tvsum = get_tvsum_config({"domain": "VT"})
    assert d.on_long_video == tvsum.data.on_long_video
    assert c.eval.postprocess == tvsum.eval.postprocess
    assert c.train.eval_every_epochs == tvsum.train.eval_every_epochs


def test_qvhighlights_options_keep_the_qvhighlights_defaults(reference_dir):
    from trdetr_jax import annotations

    opt = json.loads((reference_dir / "qvh_video_s0" / "config.json").read_text())["opt"]
    c = options.options_to_config(opt)
    d = c.data
    assert (d.dataset, d.v_feat_format, d.t_feat_format) == ("qvhighlights", "npz", "qid_npz")
    assert d.normalize_text is True and d.truncate_text is True and d.domain is None
    assert d.eval_path == str(annotations.path("qvhighlights", "val"))
    assert c.train.best_metric == "MR-full-mAP" and c.loss.use_matcher
    c = options.options_to_config(dict(opt, no_norm_tfeat=True))
    assert c.data.normalize_text is False
    # An official annotation path selects the shipped file of that name; others the default.
    test = dict(opt, eval_path="data/highlight_test_release.jsonl", train_path="my/own.jsonl")
    c = options.options_to_config(test)
    assert c.data.eval_path == str(annotations.path("qvhighlights", "test_release"))
    assert c.data.train_path == str(annotations.path("qvhighlights", "train"))


def test_unknown_dataset_name_is_an_error(reference_dir):
    opt = json.loads((reference_dir / "qvh_video_s0" / "config.json").read_text())["opt"]
    with pytest.raises(ValueError, match=r"dset_name='charades'.*expected one of 'hl', 'tvsum'"):
        options.options_to_config(dict(opt, dset_name="charades"))
