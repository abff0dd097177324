"""Reading official checkpoint files and the converter CLI (trdetr_jax.official)."""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import zipfile

import numpy as np
import pytest
from test_official_keys import tiny_kwargs, tiny_params, tree_equal  # noqa: F401 (a fixture)

from trdetr_jax.official import checkpoint_file, convert, keys


def test_load_checkpoint_ckpt_with_torch(tmp_path, tiny_params, torch):  # noqa: F811 (fixture)
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


# ------------------------------------------------------------------ the converter on bad input
TINY_OPT = dict(dset_name="hl", ctx_mode="video_tef", use_tef=True, v_feat_dirs=["f/slowfast"],
                v_feat_dim=12, t_feat_dir="f/clip_text_features", t_feat_dim=6, hidden_dim=16,
                nheads=2, enc_layers=1, dec_layers=1, dim_feedforward=32, num_queries=4,
                n_input_proj=1, max_q_l=5)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_state_dict():
    """An official state_dict of a tiny model (hidden 16, 1 layer), from TINY_OPT."""
    from trdetr_jax.official import options

    kwargs = options.model_kwargs_from_options(TINY_OPT)
    rng = np.random.default_rng(1)
    shapes = keys.expected_param_shapes(kwargs, 12, 6)
    flat = {p: rng.standard_normal(s).astype(np.float32) for p, s in shapes.items()}
    return keys.params_to_state_dict(keys.unflatten_params(flat))


@pytest.fixture
def tiny_files(tmp_path, tiny_state_dict):
    """(params.npz, opt.json) of the tiny model in tmp_path/in."""
    folder = tmp_path / "in"
    folder.mkdir()
    np.savez(folder / "params.npz", **tiny_state_dict)
    (folder / "opt.json").write_text(json.dumps(TINY_OPT))
    return folder / "params.npz", folder / "opt.json"


def run_cli(capsys, *args):
    """(exit status, stderr) of the converter CLI."""
    rc = convert.main([str(a) for a in args])
    return rc, capsys.readouterr().err


def assert_one_line_error(err, *names):
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, no traceback
    assert "Traceback" not in err
    for name in names:
        assert str(name) in err, (name, err)


def assert_nothing_written(tmp_path):
    """No output folder and no temporary folder next to it."""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_tiny_files_convert(tmp_path, tiny_files, capsys, tiny_state_dict):
    npz, opt = tiny_files
    rc, err = run_cli(capsys, "--checkpoint", npz, "--options", opt, "--out", tmp_path / "out")
    assert rc == 0 and err == ""
    params, _ = convert.load_converted(tmp_path / "out")
    back = keys.params_to_state_dict(params)
    for k, v in tiny_state_dict.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.0])
def test_truncated_npz_is_one_line_naming_the_file(tmp_path, tiny_files, capsys, keep):
    npz, opt = tiny_files
    data = npz.read_bytes()
    npz.write_bytes(data[: int(len(data) * keep)])
    rc, err = run_cli(capsys, "--checkpoint", npz, "--options", opt, "--out", tmp_path / "out")
    assert rc == 2
    assert_one_line_error(err, npz, "not a readable .npz")
    assert_nothing_written(tmp_path)


def test_npz_with_a_damaged_member_is_one_line(tmp_path, tiny_files, capsys):
    npz, opt = tiny_files
    data = bytearray(npz.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # central directory intact
    npz.write_bytes(bytes(data))
    rc, err = run_cli(capsys, "--checkpoint", npz, "--options", opt, "--out", tmp_path / "out")
    assert rc == 2
    assert_one_line_error(err, npz, "not a readable .npz")
    assert_nothing_written(tmp_path)


def test_npz_holding_one_array_or_a_folder_is_one_line(tmp_path, tiny_files, capsys):
    npz, opt = tiny_files
    with open(npz, "wb") as f:
        np.save(f, np.zeros(3))
    rc, err = run_cli(capsys, "--checkpoint", npz, "--options", opt, "--out", tmp_path / "out")
    assert rc == 2
    assert_one_line_error(err, npz, "found one .npy array")
    rc, err = run_cli(capsys, "--checkpoint", npz.parent, "--options", opt, "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line_error(err, npz.parent, "a folder, expected a .ckpt or .npz file")
    assert_nothing_written(tmp_path)


def test_random_bytes_ckpt_never_suggests_trusting_it(tmp_path, tiny_files, capsys, torch):
    _, opt = tiny_files
    ckpt = tmp_path / "in" / "model_best.ckpt"
    ckpt.write_bytes(np.random.default_rng(0).bytes(4096))
    for trust in ([], ["--trust-pickle"]):
        args = ["--checkpoint", ckpt, "--options", opt, "--out", tmp_path / "out", *trust]
        rc, err = run_cli(capsys, *args)
        assert rc == 2
        assert_one_line_error(err, ckpt, "not a readable PyTorch checkpoint")
        assert "trust" not in err
    assert_nothing_written(tmp_path)


def test_truncated_ckpt_is_one_line(tmp_path, tiny_files, capsys, tiny_state_dict, torch):
    ckpt = tmp_path / "in" / "model_best.ckpt"
    sd = {k: torch.from_numpy(v) for k, v in tiny_state_dict.items()}
    torch.save({"model": sd, "opt": argparse.Namespace(**TINY_OPT)}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    rc, err = run_cli(capsys, "--checkpoint", ckpt, "--out", tmp_path / "out", "--trust-pickle")
    assert rc == 2
    assert_one_line_error(err, ckpt, "not a readable PyTorch checkpoint", "truncated")
    assert "trust" not in err
    assert_nothing_written(tmp_path)


def test_ckpt_with_a_refused_class_suggests_trust_pickle(tmp_path, tiny_state_dict, capsys, torch):
    (tmp_path / "in").mkdir()
    ckpt = tmp_path / "in" / "model_best.ckpt"
    sd = {k: torch.from_numpy(v) for k, v in tiny_state_dict.items()}
    torch.save({"model": sd, "opt": argparse.Namespace(**TINY_OPT), "extra": _Custom()}, ckpt)
    rc, err = run_cli(capsys, "--checkpoint", ckpt, "--out", tmp_path / "out")
    assert rc == 2
    assert_one_line_error(err, ckpt, "--trust-pickle", "_Custom")
    assert_nothing_written(tmp_path)
    rc, err = run_cli(capsys, "--checkpoint", ckpt, "--out", tmp_path / "out", "--trust-pickle")
    assert rc == 0 and err == ""
    assert (tmp_path / "out" / "config.json").is_file()


def test_nonfinite_weights_are_refused_naming_keys_and_counts(tmp_path, tiny_files, capsys):
    npz, opt = tiny_files
    with np.load(npz) as z:
        sd = dict(z)
    sd["class_embed.bias"][0] = np.nan
    sd["saliency_proj1.weight"][:2, 0] = [np.inf, -np.inf]
    sd["saliency_proj1.weight"][3, 3] = np.nan
    np.savez(npz, **sd)
    out = tmp_path / "out"
    rc, err = run_cli(capsys, "--checkpoint", npz, "--options", opt, "--out", out)
    assert rc == 2
    assert_one_line_error(
        err,
        npz,
        f"2 of {len(sd)} tensors hold NaN/Inf",
        "class_embed.bias (1 NaN, 0 Inf)",
        "saliency_proj1.weight (1 NaN, 2 Inf)",
        "--allow-nonfinite",
    )
    assert_nothing_written(tmp_path)
    rc, err = run_cli(capsys, "--checkpoint", npz, "--options", opt, "--out", out,
                      "--allow-nonfinite")  # fmt: skip
    assert rc == 0 and err.startswith("warning: ") and "class_embed.bias" in err
    params, _ = convert.load_converted(out)
    assert np.isnan(params["class_embed"]["bias"][0])


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe\x00garbled", b'{"hidden_dim": 16, ', b"[1, 2]", None],
    ids=["binary", "truncated-json", "not-options", "folder"],
)
def test_bad_options_file_is_named(tmp_path, tiny_files, capsys, content):
    npz, _ = tiny_files
    opt = tmp_path / "in" / "opt.json"
    opt.unlink()
    if content is None:
        opt.mkdir()
    else:
        opt.write_bytes(content)
    rc, err = run_cli(capsys, "--checkpoint", npz, "--options", opt, "--out", tmp_path / "out")
    assert rc == 2
    assert_one_line_error(err, opt)
    shutil.rmtree(opt) if content is None else opt.unlink()
    assert_nothing_written(tmp_path)


def test_options_lacking_a_field_or_mismatching_the_weights(tmp_path, tiny_files, capsys):
    npz, opt = tiny_files
    opt.write_text(json.dumps({k: v for k, v in TINY_OPT.items() if k != "t_feat_dim"}))
    rc, err = run_cli(capsys, "--checkpoint", npz, "--options", opt, "--out", tmp_path / "out")
    assert rc == 2
    assert_one_line_error(err, opt, "official options lack t_feat_dim")
    opt.write_text(json.dumps(dict(TINY_OPT, dim_feedforward=64)))
    rc, err = run_cli(capsys, "--checkpoint", npz, "--options", opt, "--out", tmp_path / "out")
    assert rc == 2
    assert_one_line_error(
        err, npz, "'transformer.encoder.layers.0.linear1.weight': expected shape (64, 16)"
    )
    assert_nothing_written(tmp_path)


def test_traceback_flag_shows_the_error_itself(tmp_path, tiny_files):
    npz, opt = tiny_files
    npz.write_bytes(npz.read_bytes()[:100])
    args = ["--checkpoint", str(npz), "--options", str(opt), "--out", str(tmp_path / "out")]
    with pytest.raises(checkpoint_file.CheckpointFileError, match="not a readable .npz") as info:
        convert.main([*args, "--traceback"])
    assert isinstance(info.value.__cause__, zipfile.BadZipFile)  # the original error, chained
    assert_nothing_written(tmp_path)


def test_a_failed_write_leaves_no_output_folder(tmp_path, tiny_files, capsys, monkeypatch):
    import orbax.checkpoint as ocp

    def half_save(self, directory, *args, **kwargs):
        pathlib.Path(directory).mkdir(parents=True)
        (pathlib.Path(directory) / "partial").write_bytes(b"x")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", half_save)
    npz, opt = tiny_files
    out = tmp_path / "out"
    rc, err = run_cli(capsys, "--checkpoint", npz, "--options", opt, "--out", out)
    assert rc == 2
    assert_one_line_error(err, "No space left on device")
    assert_nothing_written(tmp_path)
    # --overwrite that fails keeps the old, complete folder.
    out.mkdir()
    (out / "config.json").write_text("{}")
    rc, err = run_cli(capsys, "--checkpoint", npz, "--options", opt, "--out", out, "--overwrite")
    assert rc == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    assert (out / "config.json").read_text() == "{}"
