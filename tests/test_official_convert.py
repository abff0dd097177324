"""Reading official checkpoint files and the converter CLI (trdetr_jax.official)."""

from __future__ import annotations

import argparse

import jax
import numpy as np
import pytest

from trdetr_jax.official import checkpoint_file, convert, keys

D_VID, D_TXT = 10, 6


def tiny_kwargs(**overrides):
    kw = dict(hidden_dim=256, nheads=8, enc_layers=1, dec_layers=1, dim_feedforward=32,
              num_queries=4, n_input_proj=2, max_q_l=5)  # fmt: skip
    kw.update(overrides)
    return kw


def init_params(kwargs, seed=0):
    """Random params with the model's tree (shapes by tracing only: no compilation)."""
    rng = np.random.default_rng(seed)
    shapes = keys.expected_param_shapes(kwargs, D_VID, D_TXT)
    flat = {p: rng.standard_normal(s).astype(np.float32) for p, s in shapes.items()}
    return keys.unflatten_params(flat)


@pytest.fixture(scope="module")
def tiny_params():
    return init_params(tiny_kwargs())


def tree_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_load_checkpoint_ckpt_with_torch(tmp_path, tiny_params):
    torch = pytest.importorskip("torch")
    sd = keys.params_to_state_dict(tiny_params)
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
    loaded, got_opt = checkpoint_file.load_checkpoint(path)
    assert got_opt.hidden_dim == 256
    tree_equal(keys.state_dict_to_params(loaded, tiny_kwargs()), tiny_params)
    # Objects outside the restricted unpickler's allow-list need an explicit opt-in.
    torch.save({"model": {}, "extra": _Custom()}, tmp_path / "odd.ckpt")
    with pytest.raises(ValueError, match="trust-pickle"):
        checkpoint_file.load_checkpoint(tmp_path / "odd.ckpt")
    assert checkpoint_file.load_checkpoint(tmp_path / "odd.ckpt", trust_pickle=True)[0] == {}


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
        back = keys.params_to_state_dict(params)
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
