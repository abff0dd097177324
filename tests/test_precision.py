"""Numerics policy: config.model.matmul_precision reaches every matmul of the compiled steps."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiny_run import tiny_config

from trdetr_jax import inference, optim, precision, train
from trdetr_jax import mesh as mesh_lib
from trdetr_jax.model import TRDETR, model_kwargs_from_config

B, L_V, L_T, D = 2, 12, 8, 16


def _abstract_inputs():
    f32 = jnp.float32
    return {
        "src_txt": jax.ShapeDtypeStruct((B, L_T, D), f32),
        "src_txt_mask": jax.ShapeDtypeStruct((B, L_T), f32),
        "src_vid": jax.ShapeDtypeStruct((B, L_V, D), f32),
        "src_vid_mask": jax.ShapeDtypeStruct((B, L_V), f32),
    }


def _abstract_params(model, inputs):
    """Shapes and dtypes of ``model``'s parameters for the abstract ``inputs``."""
    return jax.eval_shape(
        lambda: model.init(
            jax.random.key(0), **{k: jnp.zeros(v.shape, v.dtype) for k, v in inputs.items()}
        )["params"]
    )


def _dot_precisions(stablehlo: str) -> list[str]:
    """The precision / algorithm attributes of every dot_general in a StableHLO module."""
    dots = [line for line in stablehlo.splitlines() if "stablehlo.dot_general" in line]
    assert dots, "no dot_general in the lowered step"
    return [
        " ".join(re.findall(r"precision = \[[A-Z, ]+\]|algorithm = <[^>]*>", line)) for line in dots
    ]


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, "precision = [HIGHEST, HIGHEST]"),  # the default: true float32
        ("tensorfloat32", "precision = [HIGH, HIGH]"),
        ("bfloat16", "lhs_precision_type = bf16, rhs_precision_type = bf16"),
    ],
)
def test_eval_step_lowers_with_the_configured_precision(tmp_path, value, expected):
    config = tiny_config(tmp_path)
    if value is not None:
        config.model.matmul_precision = value
    assert precision.of_config(config) == (value or "highest")
    model = TRDETR(**model_kwargs_from_config(config))
    inputs = _abstract_inputs()
    params = _abstract_params(model, inputs)
    step = inference.jit_eval_step(
        mesh_lib.make_mesh(jax.devices()[:1]), model, None, precision.of_config(config)
    )
    found = _dot_precisions(step.lower(params, inputs).as_text())
    assert all(expected in f for f in found), sorted(set(found))
    # Called outside the wrapper, the same jitted function gets JAX's default instead.
    bare = _dot_precisions(step.unbound.__wrapped__.lower({}, params, inputs).as_text())
    assert not any(expected in f for f in bare), sorted(set(bare))


def test_train_step_lowers_with_the_configured_precision(tmp_path):
    config = tiny_config(tmp_path)
    config.model.matmul_precision = "tensorfloat32"
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    inputs = _abstract_inputs()
    steps = train.build_steps(
        mesh,
        TRDETR(**model_kwargs_from_config(config)),
        optim.optimizer_of_config(config, 4),
        lambda params, model, batch, *, train, dropout_rng: (
            jnp.sum(model.apply({"params": params}, **batch, train=False)["saliency_scores"]),
            ({}, {}),
        ),
        optim.schedule_of_config(config, 4),
        inputs,
        precision.of_config(config),
    )
    found = _dot_precisions(
        steps.train.lower(steps.abstract_state, inputs, jax.random.key(0)).as_text()
    )
    assert all("precision = [HIGH, HIGH]" in f for f in found), sorted(set(found))


@pytest.mark.parametrize("bad", ["float32", "HIGHEST", "", None])
def test_bad_matmul_precision_is_one_clear_line(tmp_path, bad):
    config = tiny_config(tmp_path)
    config.model.matmul_precision = bad
    with pytest.raises(ValueError) as err:
        precision.of_config(config)
    msg = str(err.value)
    assert "\n" not in msg
    assert "config.model.matmul_precision" in msg and "highest, tensorfloat32, bfloat16" in msg
    assert repr(bad) in msg


def _bf16(x):
    """``x`` rounded to bfloat16, as float64."""
    return np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


def test_bf16_dense_is_the_product_of_the_rounded_operands_and_so_is_its_gradient():
    """The 'bfloat16' precision's definition (operands rounded to bfloat16, products summed
    in float32), forward and backward, against the same product in float64."""
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, 20, 48), jnp.float32)
    w = jax.random.normal(kw, (48, 24), jnp.float32) * 0.2
    g = jax.random.normal(kg, (3, 20, 24), jnp.float32)
    y, vjp = jax.vjp(precision.bf16_dense, x, w)
    dx, dw = vjp(g)
    assert y.dtype == dx.dtype == dw.dtype == jnp.float32
    xb, wb, gb = _bf16(x), _bf16(w), _bf16(g)
    np.testing.assert_allclose(np.asarray(y), xb @ wb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), gb @ wb.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(dw), xb.reshape(-1, 48).T @ gb.reshape(-1, 24), rtol=1e-5, atol=1e-4
    )
    # and it is not the float32 product: the rounding shows
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    assert np.abs(np.asarray(y) - exact).max() > 1e-3


def _dot_operand_types(stablehlo: str) -> set[str]:
    """Element types of the operands of every dot_general ('f32', 'bf16', ...)."""
    found = set()
    for line in stablehlo.splitlines():
        if "stablehlo.dot_general" in line:
            sig = line.rsplit(":", 1)[-1]  # (tensor<..xT>, tensor<..xT>) -> tensor<..>
            found.update(re.findall(r"tensor<(?:[\d?]+x)*([a-z]+\d+)>", sig.split("->")[0]))
    return found


@pytest.mark.parametrize("value", ["highest", "bfloat16"])
def test_dense_layers_take_bfloat16_operands_under_the_bfloat16_precision(tmp_path, value):
    """Under 'bfloat16' the model's Dense products (nearly all its FLOPs) get explicit
    bfloat16 operands, which XLA's CPU backend runs on its bfloat16 units; the other
    products stay float32 (with the precision preset) and 'highest' has no bfloat16."""
    config = tiny_config(tmp_path)
    config.model.matmul_precision = value
    model = TRDETR(**model_kwargs_from_config(config))
    inputs = _abstract_inputs()
    params = _abstract_params(model, inputs)

    def grad_of_scores(p, batch):
        return jax.grad(
            lambda p: jnp.sum(model.apply({"params": p}, **batch, train=False)["saliency_scores"])
        )(p)

    with precision.matmul_precision(value):
        lowered = jax.jit(grad_of_scores).lower(params, inputs)
    types = _dot_operand_types(lowered.as_text())
    assert "f32" in types
    assert ("bf16" in types) == (value == "bfloat16"), types
    if value != "bfloat16":
        return
    # and it runs (one CPU device): finite gradients
    concrete = {k: jnp.ones(v.shape, v.dtype) for k, v in inputs.items()}
    real = jax.jit(lambda k, b: model.init(k, **b)["params"])(jax.random.key(0), concrete)
    grads = lowered.compile()(real, concrete)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


def test_bfloat16_on_several_cpu_devices_is_refused_before_the_run(tmp_path):
    """XLA's CPU backend fails in the first sharded step under the bfloat16 dot algorithm
    (the slow test below shows it); the run is refused up front instead, naming the
    setting."""
    from trdetr_jax import errors

    if len(jax.devices()) < 4:
        pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)")
    four = mesh_lib.make_mesh(jax.devices()[:4])
    with pytest.raises(ValueError, match=r"'bfloat16' cannot run on 4 CPU devices"):
        precision.check_on_mesh("bfloat16", four)
    precision.check_on_mesh("highest", four)
    precision.check_on_mesh("bfloat16", mesh_lib.make_mesh(jax.devices()[:1]))
    config = tiny_config(tmp_path / "demo")
    config.model.matmul_precision = "bfloat16"
    workdir = tmp_path / "run"
    with pytest.raises(errors.RunError, match=r"'bfloat16' cannot run on 4 CPU devices"):
        train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:4])
    assert not workdir.exists() and not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_bfloat16_on_several_cpu_devices_still_fails_without_the_check(tmp_path, monkeypatch):
    """Why the check above exists: without it the first sharded step fails deep inside XLA.
    Should a jaxlib run it, this test fails: the check is then no longer needed."""
    if len(jax.devices()) < 4:
        pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)")
    config = tiny_config(tmp_path / "demo")
    config.model.matmul_precision = "bfloat16"
    monkeypatch.setattr(precision, "check_on_mesh", lambda value, mesh: None)
    with pytest.raises(Exception, match="ALG_DOT_BF16_BF16_F32"):
        train.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:4])
