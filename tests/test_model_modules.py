"""Each model module on tiny shapes against hand-computed / NumPy reference values."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trdetr_jax.model import TRDETR, collect_intermediates, flatten_outputs
from trdetr_jax.model.attention import ProjectionFreeAttention, TorchMultiheadAttention
from trdetr_jax.model.input_proj import InputProjection
from trdetr_jax.model.layers import PReLU
from trdetr_jax.model.mr2hd import MR2HD, TorchGRU, gather_run, python_slice_bounds
from trdetr_jax.model.position import anchor_sine_embedding, sine_position_embedding
from trdetr_jax.model.t2v import t2v_attention_valid
from trdetr_jax.model.vfr import VFR, mask_logits
from trdetr_jax.spans import inverse_sigmoid

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------- positions
def test_sine_position_embedding_values():
    mask = np.array([[1, 1, 1, 0, 0]], np.float32)
    pos = np.asarray(sine_position_embedding(jnp.asarray(mask), 8))
    assert pos.dtype == np.float32 and pos.shape == (1, 5, 8)
    x = np.array([1, 2, 3, 3, 3]) / (3 + 1e-6) * 2 * math.pi  # padded clips repeat the last
    dim_t = 10000.0 ** (2 * (np.arange(8) // 2) / 8)  # 1, 1, 10, 10, 100, 100, 1000, 1000
    want = np.empty((5, 8))
    want[:, 0::2] = np.sin(x[:, None] / dim_t[0::2])
    want[:, 1::2] = np.cos(x[:, None] / dim_t[1::2])
    np.testing.assert_allclose(pos[0], want, atol=2e-6)


def test_sine_position_embedding_is_float32_under_x64():
    with jax.enable_x64(True):
        pos = sine_position_embedding(jnp.ones((2, 3), jnp.float64), 16)
        assert pos.dtype == jnp.float32


def test_anchor_sine_embedding_values():
    anchors = np.array([[0.25, 0.5]], np.float32)
    emb = np.asarray(anchor_sine_embedding(jnp.asarray(anchors), 4))  # [1, 8]
    dim_t = 10000.0 ** (2 * (np.arange(4) // 2) / 4)  # 1, 1, 100, 100
    c, w = 0.25 * 2 * math.pi, 0.5 * 2 * math.pi
    want = [math.sin(c / 1), math.cos(c / 1), math.sin(c / 100), math.cos(c / 100),
            math.sin(w / 1), math.cos(w / 1), math.sin(w / 100), math.cos(w / 100)]  # fmt: skip
    np.testing.assert_allclose(emb[0], want, atol=1e-6)
    assert dim_t[2] == 100.0


# ----------------------------------------------------------------------------- attention
def numpy_mha(q_in, k_in, v_in, wq, bq, wk, bk, wv, bv, wo, bo, heads, valid):
    """Reference multi-head attention: projections, per-head softmax(q k^T / sqrt(dh)), out."""
    q, k, v = q_in @ wq + bq, k_in @ wk + bk, v_in @ wv + bv
    b, lq, d = q.shape
    dh = d // heads
    out = np.zeros((b, lq, d))
    for bi in range(b):
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            logits = q[bi, :, sl] @ k[bi, :, sl].T / math.sqrt(dh)
            logits = np.where(valid[bi, h], logits, -np.inf)
            w = np.exp(logits - logits.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            out[bi, :, sl] = w @ v[bi, :, sl]
    return out @ wo + bo


def test_torch_multihead_attention_matches_numpy():
    b, lq, lk, d, h = 2, 3, 4, 8, 2
    q, k, v = randn(b, lq, d), randn(b, lk, d), randn(b, lk, d)
    valid = np.ones((b, h, lq, lk), bool)
    valid[0, :, :, 3] = False  # key padding
    valid[1, 1, 0, 0] = False  # a per-head pair
    mod = TorchMultiheadAttention(h)
    params = mod.init(jax.random.key(0), q, k, v, valid, train=False)["params"]
    params = jax.tree.map(lambda x: jnp.asarray(randn(*x.shape)), params)  # non-zero biases
    got = mod.apply({"params": params}, q, k, v, valid, train=False)
    p = jax.tree.map(np.asarray, params)
    want = numpy_mha(
        q,
        k,
        v,
        *(p[n][w] for n in ("q_proj", "k_proj", "v_proj", "out_proj") for w in ("kernel", "bias")),
        h,
        valid,
    )
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_projection_free_attention_head_sizes():
    """Query/key head size 2d/H scales the logits; values use d/H per head."""
    b, lq, lk, d, h = 1, 2, 3, 4, 2
    q, k, v = randn(b, lq, 2 * d), randn(b, lk, 2 * d), randn(b, lk, d)
    mod = ProjectionFreeAttention(h)
    params = mod.init(jax.random.key(0), q, k, v, None, train=False)["params"]
    got = np.asarray(mod.apply({"params": params}, q, k, v, None, train=False))
    out = np.zeros((b, lq, d))
    for hh in range(h):
        qs, vs = slice(hh * d, (hh + 1) * d), slice(hh * d // 2, (hh + 1) * d // 2)
        logits = q[0, :, qs] @ k[0, :, qs].T / math.sqrt(d)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        out[0, :, vs] = (w / w.sum(-1, keepdims=True)) @ v[0, :, vs]
    want = out @ np.asarray(params["out_proj"]["kernel"]) + np.asarray(params["out_proj"]["bias"])
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_t2v_mask_misalignment_mapping():
    """Official: item b, head h uses the pad x pad pairs of sample (b * H + h) mod B."""
    vid_mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]], np.float32)
    txt_mask = np.array([[1, 1], [1, 0], [1, 1]], np.float32)
    heads = 2
    valid = np.asarray(
        t2v_attention_valid(jnp.asarray(vid_mask), jnp.asarray(txt_mask), heads, "official")
    )
    for b in range(3):
        for h in range(heads):
            o = (b * heads + h) % 3
            pairs = (vid_mask[o] == 0)[:, None] & (txt_mask[o] == 0)[None, :]
            want = (txt_mask[b] > 0)[None, :] & ~pairs
            np.testing.assert_array_equal(valid[b, h], want, err_msg=f"b={b} h={h}")
    # b=0, h=1 uses sample 1: its padded clip 2 may not see its padded token 1.
    assert not valid[0, 1, 2, 1] and valid[0, 0, 2, 1]
    fixed = np.asarray(
        t2v_attention_valid(jnp.asarray(vid_mask), jnp.asarray(txt_mask), heads, "fixed")
    )
    np.testing.assert_array_equal(
        np.broadcast_to(fixed, valid.shape),
        np.broadcast_to((txt_mask > 0)[:, None, None, :], valid.shape),
    )


# ----------------------------------------------------------------------------- small layers
def test_prelu_and_inverse_sigmoid():
    y = PReLU().apply({"params": {"alpha": jnp.float32(0.25)}}, jnp.array([-2.0, 0.0, 3.0]))
    np.testing.assert_array_equal(y, [-0.5, 0.0, 3.0])
    x = jnp.array([-0.5, 0.0, 0.25, 1.0, 2.0])
    eps = 1e-3
    want = [
        math.log(eps / 1),
        math.log(eps / 1),
        math.log(0.25 / 0.75),
        math.log(1 / eps),
        math.log(1 / eps),
    ]
    np.testing.assert_allclose(inverse_sigmoid(x), want, rtol=1e-6)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_input_projection_relu_pattern(n_layers):
    """LayerNorm -> Dense (-> ReLU except after the last block)."""
    x = randn(2, 3, 5)
    mod = InputProjection(features=4, num_layers=n_layers)
    params = mod.init(jax.random.key(1), x, train=False)["params"]
    params = jax.tree.map(lambda p: jnp.asarray(randn(*p.shape)), params)
    got = np.asarray(mod.apply({"params": params}, x, train=False))
    h = x.astype(np.float64)
    for i in range(n_layers):
        ln, dense = params[f"layer_{i}_norm"], params[f"layer_{i}_dense"]
        mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        h = (h - mu) / np.sqrt(var + 1e-5) * np.asarray(ln["scale"]) + np.asarray(ln["bias"])
        h = h @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
        if i != n_layers - 1:
            h = np.maximum(h, 0)
    np.testing.assert_allclose(got, h, atol=3e-5)
    assert (got < 0).any()  # no ReLU after the last block


def test_mask_logits_is_a_float32_island():
    with jax.enable_x64(True):
        out = mask_logits(jnp.zeros((1, 2), jnp.float64), jnp.array([[1.0, 0.0]]))
        assert out.dtype == jnp.float64
        assert out[0, 1] == np.float64(np.float32(-1e30)) and out[0, 0] == 0.0


def test_vfr_ignores_padded_tokens_and_matches_numpy():
    b, lv, lt, d = 2, 4, 3, 8
    vid, txt = randn(b, lv, d), randn(b, lt, d)
    vmask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.float32)
    tmask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    mod = VFR()
    params = mod.init(jax.random.key(2), vid, txt, vmask, tmask, train=False)["params"]
    got = np.asarray(mod.apply({"params": params}, vid, txt, vmask, tmask, train=False))
    txt2 = txt.copy()
    txt2[tmask == 0] = 100.0  # padded tokens must not matter
    got2 = np.asarray(mod.apply({"params": params}, vid, txt2, vmask, tmask, train=False))
    np.testing.assert_allclose(got, got2, atol=1e-5)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    c, q = vid.astype(np.float64), txt.astype(np.float64)
    s = (
        (c @ p["w4C"])[:, :, None]
        + (q @ p["w4Q"])[:, None, :]
        + np.einsum("bcd,bqd->bcq", c * p["w4mlu"], q)
    )

    def softmax(x, axis):
        e = np.exp(x - x.max(axis, keepdims=True))
        return e / e.sum(axis, keepdims=True)

    sq = softmax(s + (1 - tmask[:, None, :]) * -1e30, 2)
    sc = softmax(s + (1 - vmask[:, :, None]) * -1e30, 1)
    c2q = sq @ q
    q2c = sq @ sc.transpose(0, 2, 1) @ c
    x = (
        np.concatenate([c, c2q, c * c2q, c * q2c], -1) @ p["cqa_dense"]["kernel"]
        + p["cqa_dense"]["bias"]
    )
    alpha = softmax(q @ p["pool_weight"] + (1 - tmask) * -1e30, 1)
    pooled = np.einsum("bq,bqd->bd", alpha, q)
    x = np.concatenate([x, np.broadcast_to(pooled[:, None], x.shape)], -1)
    want = np.maximum(x @ p["concat_dense"]["kernel"] + p["concat_dense"]["bias"], 0)
    np.testing.assert_allclose(got, want, atol=2e-5)


# ----------------------------------------------------------------------------- MR2HD
def numpy_gru(x, p, num_steps=None):
    """torch.nn.GRU (one layer, batch_first) last hidden state in NumPy float64."""
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    g = {
        k: (np.asarray(v["kernel"], np.float64), np.asarray(v["bias"], np.float64))
        for k, v in p.items()
    }
    b, t, _ = x.shape
    h = np.zeros((b, g["hr"][0].shape[0]))
    for s in range(t):
        xt = x[:, s]
        r = sig(xt @ g["ir"][0] + g["ir"][1] + h @ g["hr"][0] + g["hr"][1])
        z = sig(xt @ g["iz"][0] + g["iz"][1] + h @ g["hz"][0] + g["hz"][1])
        n = np.tanh(xt @ g["in"][0] + g["in"][1] + r * (h @ g["hn"][0] + g["hn"][1]))
        h_new = (1 - z) * n + z * h
        if num_steps is not None:
            h_new = np.where((s < num_steps)[:, None], h_new, h)
        h = h_new
    return h


def test_gru_matches_numpy_gru():
    x = randn(2, 5, 3)
    mod = TorchGRU(4)
    params = mod.init(jax.random.key(3), x)["params"]
    assert sorted(params) == ["hn", "hr", "hz", "in", "ir", "iz"]
    np.testing.assert_allclose(mod.apply({"params": params}, x), numpy_gru(x, params), atol=1e-5)
    steps = np.array([2, 0])
    got = mod.apply({"params": params}, x, num_steps=jnp.asarray(steps))
    np.testing.assert_allclose(got, numpy_gru(x, params, steps), atol=1e-5)
    np.testing.assert_array_equal(got[1], 0.0)  # zero steps: the initial state


def test_python_slice_bounds_match_python_slicing():
    length = 6
    rows = np.arange(length)
    cases = [(a, e) for a in range(-9, 9) for e in range(-9, 9)]
    start, count = python_slice_bounds(
        jnp.array([a for a, _ in cases]), jnp.array([e + 1 for _, e in cases]), length
    )
    for (a, e), s, n in zip(cases, np.asarray(start), np.asarray(count)):
        want = rows[a : e + 1]
        assert n == len(want), (a, e)
        if n:
            assert s == want[0], (a, e)


def test_gather_run_is_slice_plus_zero_padding():
    x = randn(3, 5, 2)
    first, last = np.array([1, -3, 2]), np.array([2, 4, 9])  # in range, negative wrap, end >= L
    start, count = python_slice_bounds(jnp.asarray(first), jnp.asarray(last + 1), 5)
    got = np.asarray(gather_run(jnp.asarray(x), start, count))
    for b in range(3):
        want = np.zeros((5, 2), np.float32)
        piece = x[b, first[b] : last[b] + 1]
        want[: len(piece)] = piece
        np.testing.assert_array_equal(got[b], want)
    assert list(np.asarray(count)) == [2, 3, 3]


def test_mr2hd_selection_and_gru_input():
    """Top-1 by softmax fg prob; floored span on the padded length; gathered run."""
    b, length, d = 3, 8, 4
    logits = np.array(
        [[[0, 1], [2, 0], [1, 1]], [[0, 0], [0, 3], [5, 0]], [[1, 0], [1, 0], [0, 1]]], np.float32
    )
    spans = np.array(
        [
            [[0.5, 0.2], [0.5, 0.5], [0.1, 0.1]],  # top-1 q1: [0.25, 0.75] -> clips 2..6
            [[0.5, 0.5], [0.5, 0.5], [0.0, 0.4]],  # top-1 q2: [-0.2, 0.2] -> -2..1: wraps, empty
            [[0.95, 0.3], [0.1, 0.1], [0.5, 0.5]],
        ],
        np.float32,
    )  # q0 (tie with q1 -> lowest): 0.8..1.1 -> 6..8
    memory, vid = randn(b, length, d), randn(b, length, d)
    mask = np.ones((b, length), np.float32)
    mod = MR2HD(clip_length=2.0)
    variables = mod.init(jax.random.key(4), logits, spans, memory, vid, mask)
    out, state = mod.apply(variables, logits, spans, memory, vid, mask, mutable=["intermediates"])
    inter = collect_intermediates(state)
    np.testing.assert_array_equal(inter["inter_mr2hd_top1_query_idx"], [1, 2, 0])
    np.testing.assert_array_equal(
        inter["inter_mr2hd_top1_span_clip_idx"], [[2, 6], [-2, 1], [6, 8]]
    )
    np.testing.assert_array_equal(inter["inter_mr2hd_slice_len"], [5, 0, 2])
    feats = inter["inter_mr2hd_sliced_features"]
    np.testing.assert_array_equal(feats[0, :5], vid[0, 2:7])
    np.testing.assert_array_equal(feats[1], 0.0)
    np.testing.assert_array_equal(feats[2, :2], vid[2, 6:8])
    h = numpy_gru(feats.astype(np.float64), variables["params"]["gru"])
    np.testing.assert_allclose(inter["inter_mr2hd_gru_hidden"], h, atol=1e-5)
    w = np.einsum("bd,bld->bl", h, vid)
    np.testing.assert_allclose(out, memory * w[:, :, None] + memory, atol=1e-4)


# ----------------------------------------------------------------------------- whole model
# hidden 16: the anchor sine embedding takes hidden_dim // 2 per coordinate (decoder.py), so
# nothing needs the official 256; 4 heads of 4 (the decoder's cross-attention: 4 of 8).
TINY = dict(
    hidden_dim=16,
    nheads=4,
    enc_layers=1,
    dec_layers=2,
    dim_feedforward=32,
    num_queries=3,
    max_q_l=5,
)
B, LV, LT, DV, DT, DA = 2, 12, 5, 6, 4, 3
D = TINY["hidden_dim"]


# Tests compile many small graphs: skip XLA's expensive backend passes (2x faster compiles).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def tiny_inputs(audio=False, dtype=np.float32):
    rng = np.random.default_rng(7)
    vid_mask = np.ones((B, LV), dtype)
    vid_mask[1, 7:] = 0
    txt_mask = np.ones((B, LT), dtype)
    txt_mask[0, 3:] = 0
    args = [rng.standard_normal((B, LT, DT)).astype(dtype), txt_mask]
    args += [rng.standard_normal((B, LV, DV)).astype(dtype), vid_mask]
    return args + ([rng.standard_normal((B, LV, DA)).astype(dtype)] if audio else [])


def random_params(model, args, dtype=np.float32, seed=0):
    """Random params of the model's tree: shapes by tracing (jax.eval_shape), no compilation.

    (Eager flax init compiles every initializer separately and jitting the model compiles the
    whole graph; both take tens of seconds on a loaded 2-core machine.)
    """
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(
        lambda k: model.init(k, *args, train=False)["params"], jax.random.key(0)
    )

    def fill(path, leaf):
        name = path[-1].key
        if name == "scale":
            return jnp.asarray(1 + 0.1 * rng.standard_normal(leaf.shape), dtype)
        if name == "alpha":
            return jnp.asarray(0.25, dtype)
        fan_in = leaf.shape[0] if len(leaf.shape) == 2 else 16
        return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def tiny_forward(train=False, audio=False, **overrides):
    """(params, jitted forward(params, dropout_key) -> (flat outputs, intermediates))."""
    model = TRDETR(**dict(TINY, **overrides))
    args = tiny_inputs(audio=audio)
    params = random_params(model, args)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def forward(p, key):
        return model.apply(
            {"params": p}, *args, train=train, rngs={"dropout": key}, mutable=["intermediates"]
        )

    def run(p, key=None):
        out, state = forward(p, jax.random.key(0) if key is None else key)
        return flatten_outputs(out), collect_intermediates(state)

    return params, run


def run_tiny(**overrides):
    params, run = tiny_forward(**overrides)
    return (params, *run(params))


@pytest.fixture(scope="module")
def tiny_run():
    return run_tiny()


def test_tiny_model_outputs_and_param_tree(tiny_run):
    params, out, inter = tiny_run
    assert out["pred_logits"].shape == (B, 3, 2) and out["pred_spans"].shape == (B, 3, 2)
    assert out["saliency_scores"].shape == (B, LV) and out["src_vid_cls_ed"].shape == (B, D)
    assert out["aux_0_pred_logits"].shape == (B, 3, 2)
    assert np.all((out["pred_spans"] > 0) & (out["pred_spans"] < 1))
    assert set(params) == {
        "input_vid_proj", "input_txt_proj", "vfr", "txt_position_embed", "t2v_encoder", "encoder",
        "saliency_proj", "query_embed", "decoder", "class_embed", "span_embed", "mr2hd",
    }  # fmt: skip
    assert inter["inter_dec_hs"].shape == (2, B, 3, D)
    assert "inter_encoder_call2_out" in inter
    # official mean pool includes padding
    np.testing.assert_allclose(out["src_vid_cls_ed"], out["src_vid_ed"].mean(1), atol=1e-6)


def test_ablation_switches():
    params, out, inter = run_tiny(use_vfr=False, use_hd2mr=False, use_mr2hd=False)
    assert "mr2hd" not in params and "vfr" not in params
    # VFR off: the transformer sees the projected video
    np.testing.assert_array_equal(inter["inter_fuser_out"], inter["inter_input_vid_proj"])
    # HD2MR off: the encoder runs once and its output is the memory
    assert "inter_encoder_call2_out" not in inter and "inter_hd2mr_weight_softmax" not in inter
    np.testing.assert_array_equal(inter["inter_memory"], inter["inter_encoder_call1_out"])
    # MR2HD off: no GRU; saliency = sum(saliency_proj(memory)) / sqrt(d)
    assert not any(k.startswith("inter_mr2hd") for k in inter)
    sp = params["saliency_proj"]
    want = (inter["inter_memory"] @ np.asarray(sp["kernel"]) + np.asarray(sp["bias"])).sum(
        -1
    ) / np.sqrt(D)
    np.testing.assert_allclose(out["saliency_scores"], want, atol=1e-4)


def test_audio_is_concatenated_before_the_video_projection():
    model = TRDETR(**TINY)
    params = random_params(model, tiny_inputs(audio=True))
    assert params["input_vid_proj"]["layer_0_norm"]["scale"].shape == (DV + DA,)
    assert params["input_vid_proj"]["layer_0_dense"]["kernel"].shape == (DV + DA, D)


def test_dropout_is_used_in_training_only(tiny_run):
    _, eval_out, _ = tiny_run
    params, run = tiny_forward(train=True)
    a, _ = run(params, jax.random.key(1))
    b, _ = run(params, jax.random.key(1))
    c, _ = run(params, jax.random.key(2))
    np.testing.assert_array_equal(a["pred_logits"], b["pred_logits"])
    assert not np.allclose(a["pred_logits"], c["pred_logits"])
    assert not np.allclose(a["pred_logits"], eval_out["pred_logits"])


def test_float64_end_to_end_matches_float32(tiny_run):
    """Float64 params and compute give the float32 model's outputs to float32 precision."""
    params32, out32, _ = tiny_run
    with jax.enable_x64(True):
        model = TRDETR(**TINY, dtype=jnp.float64, param_dtype=jnp.float64)
        args = tiny_inputs(dtype=np.float64)
        abstract = jax.eval_shape(lambda k: model.init(k, *args, train=False), jax.random.key(0))
        assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(abstract["params"]))
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params32)
        out = jax.jit(
            lambda p: model.apply({"params": p}, *args, train=False), compiler_options=FAST_COMPILE
        )(params)
        flat = flatten_outputs(out)
    assert set(flat) == set(out32)
    for k, v in flat.items():
        assert v.dtype == np.float64, k
        # float32 rounds at 2^-24 relative; over the model's ~20 chained stages the float32
        # run drifts by at most ~6e-7 on these O(1) outputs (measured): 5e-6 leaves ~10x.
        np.testing.assert_allclose(v, out32[k], rtol=0, atol=5e-6, err_msg=k)


def test_init_runs_and_matches_the_official_key_table():
    """A real (jitted) init: torch-like initialisers, the key table covers every leaf."""
    from trdetr_jax.official import keys

    model = TRDETR(**dict(TINY, dec_layers=1))
    args = tiny_inputs()
    init = jax.jit(
        lambda k: model.init(k, *args, train=False)["params"], compiler_options=FAST_COMPILE
    )
    params = init(jax.random.key(0))
    sd = keys.params_to_state_dict(params)
    assert sd["transformer.decoder.layers.0.activation.weight"][0] == np.float32(0.25)
    np.testing.assert_array_equal(sd["transformer.decoder.bbox_embed.layers.2.bias"], 0.0)
    np.testing.assert_array_equal(sd["transformer.encoder.layers.0.self_attn.in_proj_bias"], 0.0)
    w = sd["transformer.encoder.layers.0.self_attn.in_proj_weight"]  # Xavier over (3d, d)
    assert np.abs(w).max() <= np.sqrt(6 / (4 * D)) + 1e-6
    assert np.abs(w).max() > 0.9 * np.sqrt(6 / (4 * D))


def test_bfloat16_compute_follows_float32_and_keeps_heads_in_float32(tiny_run):
    params, out32, _ = tiny_run
    model = TRDETR(**TINY, dtype=jnp.bfloat16)
    out = jax.jit(
        lambda p: model.apply({"params": p}, *tiny_inputs(), train=False),
        compiler_options=FAST_COMPILE,
    )(params)
    flat = flatten_outputs(out)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    assert set(flat) == set(out32)
    # bfloat16 keeps an 8-bit significand: each rounded op is off by up to 2^-9 relative,
    # 2^-8 after a sum. The model chains ~16 rounded stages (projections, VFR, T2V, two
    # encoder calls, two decoder layers, heads), so outputs may drift by ~16 * 2^-8 of their
    # scale; measured: at most 3 % (saliency), 1.4 % (logits), 0.4 % (spans).
    tol = 16 * 2.0**-8
    for k, v in flat.items():
        assert v.dtype == np.float32, k
        scale = float(np.abs(out32[k]).max())
        np.testing.assert_allclose(v, out32[k], rtol=0, atol=tol * scale, err_msg=k)
    # ... and the compute really ran in bfloat16 (float32 agrees to ~1e-7 of the scale).
    drift = np.abs(flat["src_vid_ed"] - out32["src_vid_ed"]).max()
    assert drift > 2.0**-12 * np.abs(out32["src_vid_ed"]).max(), drift


def test_other_sizes_and_audio():
    """Layer/head counts, projection depth, batch size and audio differ from the fixtures.

    Values: the audio joins the video before its projection (the projection's output equals
    the projection of the concatenated features), and in 'fixed' mode (no cross-sample mask
    quirk) the model is equivariant to the order of the batch.
    """
    kwargs = dict(TINY, nheads=2, enc_layers=3, dec_layers=1, n_input_proj=1, num_queries=4)
    model = TRDETR(**kwargs, compat="fixed")
    rng = np.random.default_rng(3)
    b, lv, lt = 3, 9, 4
    mask_v = (np.arange(lv)[None] < np.array([[9], [5], [1]])).astype(np.float32)
    mask_t = (np.arange(lt)[None] < np.array([[4], [2], [1]])).astype(np.float32)
    args = [rng.standard_normal((b, lt, 7)).astype(np.float32), mask_t]
    args += [rng.standard_normal((b, lv, 5)).astype(np.float32), mask_v]
    args += [rng.standard_normal((b, lv, 3)).astype(np.float32)]  # audio
    params = random_params(model, args)
    fwd = jax.jit(
        lambda p, *a: model.apply({"params": p}, *a, train=False, mutable=["intermediates"]),
        compiler_options=FAST_COMPILE,
    )
    out, state = fwd(params, *args)
    inter = collect_intermediates(state)
    assert out["pred_spans"].shape == (b, 4, 2) and out["aux_outputs"] == ()
    assert out["saliency_scores"].shape == (b, lv)
    assert sorted(k for k in inter if k.startswith("inter_t2v_layer")) == [
        f"inter_t2v_layer{i}_out" for i in range(3)
    ]
    assert inter["inter_dec_hs"].shape == (1, b, 4, D)
    proj = InputProjection(features=D, num_layers=1)
    want = proj.apply(
        {"params": params["input_vid_proj"]}, np.concatenate(args[2:5:2], -1), train=False
    )
    np.testing.assert_allclose(inter["inter_input_vid_proj"], want, atol=1e-6)
    perm = np.array([2, 0, 1])
    out_p, _ = fwd(params, *(a[perm] for a in args))
    for k, v in flatten_outputs(out).items():
        np.testing.assert_allclose(flatten_outputs(out_p)[k], v[perm], atol=1e-5, err_msg=k)


def test_clamp_and_prelu_gradients_at_the_bounds_follow_torch():
    g = jax.grad(lambda x: inverse_sigmoid(x).sum())(jnp.array([1.0, 0.0, 0.5]))
    # x = 1: torch passes the clamp gradient (bounds included): d log(x / eps) / dx = 1.
    np.testing.assert_allclose(g, [1.0, 1.0, 4.0], rtol=1e-6)  # values of torch.autograd
    prelu = lambda a, x: PReLU().apply({"params": {"alpha": a}}, x).sum()  # noqa: E731
    ga, gx = jax.grad(prelu, argnums=(0, 1))(jnp.float32(0.25), jnp.array([0.0, 2.0, -1.0]))
    np.testing.assert_array_equal(gx, [0.25, 1.0, 0.25])
    assert ga == -1.0
