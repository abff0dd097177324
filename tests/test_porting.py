"""The official state_dict <-> Flax params key table, options -> config, and the converter."""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trdetr_jax import convert, porting

D_VID, D_TXT = 10, 6


def tiny_kwargs(**overrides):
    kw = dict(hidden_dim=256, nheads=8, enc_layers=1, dec_layers=1, dim_feedforward=32,
              num_queries=4, n_input_proj=2, max_q_l=5)  # fmt: skip
    kw.update(overrides)
    return kw


def init_params(kwargs, seed=0):
    """Random params with the model's tree (shapes by tracing only: no compilation)."""
    rng = np.random.default_rng(seed)
    shapes = porting.expected_param_shapes(kwargs, D_VID, D_TXT)
    flat = {p: rng.standard_normal(s).astype(np.float32) for p, s in shapes.items()}
    return porting.unflatten_params(flat)


@pytest.fixture(scope="module")
def tiny_params():
    return init_params(tiny_kwargs())


def tree_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(enc_layers=2, dec_layers=3, n_input_proj=1),
        dict(enc_layers=3, dec_layers=2, n_input_proj=3),
    ],
)
def test_round_trip_params_state_dict_params(overrides):
    kwargs = tiny_kwargs(**overrides)
    params = init_params(kwargs)
    sd = porting.params_to_state_dict(params)
    n_leaves = len(jax.tree.leaves(params))
    # Packed tensors: in_proj (weight, bias) per encoder/T2V layer and 4 GRU tensors
    # each cover several Flax leaves.
    n_enc = kwargs["enc_layers"]
    assert len(sd) == n_leaves - 2 * 2 * n_enc * 2 - 4 * 2
    tree_equal(porting.state_dict_to_params(sd, kwargs), params)


def test_official_key_set_and_shapes(tiny_params):
    sd = porting.params_to_state_dict(tiny_params)
    d, f = 256, 32
    expect = {
        "transformer.t2v_encoder.layers.0.self_attn.in_proj_weight": (3 * d, d),
        "transformer.t2v_encoder.layers.0.self_attn.in_proj_bias": (3 * d,),
        "transformer.encoder.layers.0.linear1.weight": (f, d),
        "transformer.encoder.layers.0.activation.weight": (1,),
        "transformer.decoder.layers.0.ca_qpos_proj.weight": (d, d),
        "transformer.decoder.layers.0.cross_attn.out_proj.weight": (d, d),
        "transformer.decoder.ref_anchor_head.layers.1.weight": (1, d),
        "transformer.decoder.bbox_embed.layers.2.bias": (2,),
        "fuser.cq_attention.w4C": (d, 1),
        "fuser.cq_attention.w4mlu": (1, 1, d),
        "fuser.cq_attention.cqa_linear.conv1d.weight": (d, 4 * d, 1),
        "fuser.cq_concat.weighted_pool.weight": (d, 1),
        "fuser.cq_concat.conv1d.conv1d.weight": (d, 2 * d, 1),
        "gru_extractor.gru.weight_ih_l0": (3 * d, d),
        "gru_extractor.gru.bias_hh_l0": (3 * d,),
        "input_vid_proj.0.LayerNorm.weight": (D_VID,),
        "input_vid_proj.0.net.1.weight": (d, D_VID),
        "input_txt_proj.1.net.1.weight": (d, d),
        "txt_position_embed.position_embeddings.weight": (5, d),
        "query_embed.weight": (4, 2),
        "class_embed.weight": (2, d),
        "saliency_proj1.weight": (d, d),
    }
    for key, shape in expect.items():
        assert sd[key].shape == shape, key
    assert not any(".ca_qpos_proj." in k for k in sd if ".layers.0." not in k)


def test_packed_and_reshaped_transforms(tiny_params):
    p, sd = tiny_params, porting.params_to_state_dict(tiny_params)
    d = 256
    attn = p["encoder"]["layer_0"]["self_attn"]
    w = sd["transformer.encoder.layers.0.self_attn.in_proj_weight"]
    b = sd["transformer.encoder.layers.0.self_attn.in_proj_bias"]
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        np.testing.assert_array_equal(w[i * d : (i + 1) * d], np.asarray(attn[name]["kernel"]).T)
        np.testing.assert_array_equal(b[i * d : (i + 1) * d], attn[name]["bias"])
    gru = p["mr2hd"]["gru"]
    for i, gate in enumerate("rzn"):
        rows = slice(i * d, (i + 1) * d)
        np.testing.assert_array_equal(
            sd["gru_extractor.gru.weight_ih_l0"][rows], np.asarray(gru["i" + gate]["kernel"]).T
        )
        np.testing.assert_array_equal(
            sd["gru_extractor.gru.weight_hh_l0"][rows], np.asarray(gru["h" + gate]["kernel"]).T
        )
        np.testing.assert_array_equal(
            sd["gru_extractor.gru.bias_ih_l0"][rows], gru["i" + gate]["bias"]
        )
        np.testing.assert_array_equal(
            sd["gru_extractor.gru.bias_hh_l0"][rows], gru["h" + gate]["bias"]
        )
    conv = sd["fuser.cq_attention.cqa_linear.conv1d.weight"]
    np.testing.assert_array_equal(conv[:, :, 0], np.asarray(p["vfr"]["cqa_dense"]["kernel"]).T)
    np.testing.assert_array_equal(sd["fuser.cq_attention.w4mlu"][0, 0], p["vfr"]["w4mlu"])
    np.testing.assert_array_equal(sd["fuser.cq_attention.w4Q"][:, 0], p["vfr"]["w4Q"])
    prelu = sd["transformer.decoder.layers.0.activation.weight"]
    assert prelu.shape == (1,) and prelu[0] == np.asarray(
        p["decoder"]["layer_0"]["activation"]["alpha"]
    )
    np.testing.assert_array_equal(
        sd["input_txt_proj.1.LayerNorm.weight"], p["input_txt_proj"]["layer_1_norm"]["scale"]
    )
    np.testing.assert_array_equal(
        sd["class_embed.weight"], np.asarray(p["class_embed"]["kernel"]).T
    )


def test_fixture_state_dict_round_trips_exactly(reference_dir):
    case = reference_dir / "small_tvsum"
    opt = json.loads((case / "config.json").read_text())["opt"]
    kwargs = porting.model_kwargs_from_options(opt)
    with np.load(case / "params.npz") as z:
        sd = dict(z)
    back = porting.params_to_state_dict(porting.state_dict_to_params(sd, kwargs))
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


def test_errors_name_key_and_shapes(tiny_params):
    kwargs = tiny_kwargs()
    sd = porting.params_to_state_dict(tiny_params)
    missing = dict(sd)
    del missing["transformer.decoder.norm.bias"]
    with pytest.raises(
        ValueError, match=r"missing key 'transformer.decoder.norm.bias' \(expected shape \(256,\)\)"
    ):
        porting.state_dict_to_params(missing, kwargs)
    extra = dict(sd, **{"contrastive_align_projection_query.weight": np.zeros((64, 256))})
    with pytest.raises(
        ValueError,
        match=r"unexpected key 'contrastive_align_projection_query.weight' with shape \(64, 256\)",
    ):
        porting.state_dict_to_params(extra, kwargs)
    bad = dict(sd, **{"transformer.encoder.layers.0.linear1.weight": np.zeros((64, 256))})
    with pytest.raises(
        ValueError,
        match=r"'transformer.encoder.layers.0.linear1.weight': expected shape \(32, 256\), found \(64, 256\)",
    ):
        porting.state_dict_to_params(bad, kwargs)
    # A model with more layers than the checkpoint: every absent layer key is reported.
    with pytest.raises(
        ValueError, match=r"missing key 'transformer.encoder.layers.1.norm2.weight'"
    ):
        porting.state_dict_to_params(sd, tiny_kwargs(enc_layers=2))


def test_dataparallel_prefix_is_stripped(tiny_params):
    sd = {"module." + k: v for k, v in porting.params_to_state_dict(tiny_params).items()}
    tree_equal(porting.state_dict_to_params(sd, tiny_kwargs()), tiny_params)


def test_params_to_state_dict_accepts_gradients(tiny_params):
    """Gradients (same tree as params) map to official keys for comparison by name."""
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), tiny_params)
    sd = porting.params_to_state_dict({"params": grads})
    assert set(sd) == set(porting.params_to_state_dict(tiny_params))
    assert all(np.all(v == 0.5) for v in sd.values())


def test_options_to_config_from_parsed_and_saved_options(reference_dir):
    opt = json.loads((reference_dir / "qvh_video_s0" / "config.json").read_text())["opt"]
    c = porting.options_to_config(opt)  # parsed: v_feat_dim 2818 includes the TEF
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
    assert porting.options_to_config(argparse.Namespace(**saved)).data.v_feat_dims == (2304, 512)
    tvsum = json.loads((reference_dir / "small_tvsum" / "config.json").read_text())["opt"]
    c = porting.options_to_config(tvsum)
    assert c.data.dataset == "tvsum" and not c.loss.use_matcher and c.data.v_feat_dims == (48,)
    with pytest.raises(ValueError, match="pre_norm"):
        porting.options_to_config(dict(opt, pre_norm=True))
    with pytest.warns(UserWarning, match="txt_drop_ratio"):
        porting.options_to_config(dict(opt, txt_drop_ratio=0.1))


def test_load_checkpoint_ckpt_with_torch(tmp_path, tiny_params, torch):
    sd = porting.params_to_state_dict(tiny_params)
    path = tmp_path / "model_best.ckpt"
    opt = argparse.Namespace(hidden_dim=256, device=torch.device("cpu"), v_feat_dirs=["a/b"])
    torch.save(
        {
            "model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
            "opt": opt,
            "epoch": 3,
        },
        path,
    )
    loaded, got_opt = porting.load_checkpoint(path)
    assert got_opt.hidden_dim == 256
    tree_equal(porting.state_dict_to_params(loaded, tiny_kwargs()), tiny_params)
    # Objects outside the restricted unpickler's allow-list need an explicit opt-in.
    torch.save({"model": {}, "extra": _Custom()}, tmp_path / "odd.ckpt")
    with pytest.raises(ValueError, match="trust-pickle"):
        porting.load_checkpoint(tmp_path / "odd.ckpt")
    assert porting.load_checkpoint(tmp_path / "odd.ckpt", trust_pickle=True)[0] == {}


class _Custom:
    pass


def test_convert_cli_writes_orbax_params_and_config(tmp_path, reference_dir):
    case = reference_dir / "small_tvsum"
    out = tmp_path / "converted"
    rc = convert.main(
        [
            "--checkpoint",
            str(case / "params.npz"),
            "--options",
            str(case / "config.json"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]  # no temp folder left
    params, config = convert.load_converted(out)
    assert config.data.dataset == "tvsum" and config.model.dim_feedforward == 64
    with np.load(case / "params.npz") as z:
        back = porting.params_to_state_dict(params)
        for k in z.files:
            np.testing.assert_array_equal(back[k], z[k], err_msg=k)
    assert (
        convert.main(
            [
                "--checkpoint",
                str(case / "params.npz"),
                "--options",
                str(case / "config.json"),
                "--out",
                str(out),
            ]
        )
        == 2
    )


def test_ablated_models_and_non_strict_loading(tiny_params):
    kwargs = tiny_kwargs(use_vfr=False, use_mr2hd=False)
    params = init_params(kwargs)
    assert "vfr" not in params and "mr2hd" not in params
    sd = porting.params_to_state_dict(params)
    assert not any(k.startswith(("fuser.", "gru_extractor.")) for k in sd)
    tree_equal(porting.state_dict_to_params(sd, kwargs), params)
    full = porting.params_to_state_dict(tiny_params)  # official weights: fuser + GRU present
    with pytest.raises(ValueError, match="unexpected key 'fuser.cq_attention.w4C'"):
        porting.state_dict_to_params(full, kwargs)
    loaded = porting.state_dict_to_params(full, kwargs, strict=False)
    assert "vfr" not in loaded and "mr2hd" not in loaded
