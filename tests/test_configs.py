"""Every config loads, has the required keys, its schedule, and takes command-line overrides."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
from absl import flags
from ml_collections import config_flags

from trdetr_jax import annotations, data

# config_flags loads config files with the deprecated importlib load_module().
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if not p.stem.startswith("_"))
REQUIRED = [
    "seed",
    "data.feature_root",
    "data.train_path",
    "data.eval_path",
    "train.num_epochs",
    "train.batch_size",
    "train.eval_every_epochs",
]


def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get(config, dotted):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def test_expected_configs_exist():
    expected = {
        "qvhighlights", "qvhighlights_audio", "charades_i3d", "charades_vgg",
        "charades_sf_clip", "tvsum_i3d", "tvsum_i3d_audio", "demo",
    }  # fmt: skip
    assert expected <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "tiny"])
def test_config_loads_with_required_keys(name, arg):
    config = load(name, arg)
    for key in REQUIRED:
        get(config, key)  # raises KeyError if absent
    assert isinstance(config.seed, int)
    if arg == "tiny":
        assert config.train.num_epochs == 1 and config.model.enc_layers == 1
    assert len(config.data.v_feat_dirs) == len(config.data.v_feat_dims)
    assert config.data.max_q_l > 0 and config.data.max_v_l > 0


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "demo"])
def test_default_annotation_paths_are_packaged(name):
    config = load(name)
    assert not config.data.demo.enabled
    for key in ("train_path", "eval_path"):
        path = pathlib.Path(config.data[key])
        assert path.parent.parent == annotations.ROOT
        assert path.is_file(), f"{name}: {key} {path} is not shipped in the package"
    assert config.data.feature_root is None  # the user says where the features are


SCHEDULES = {
    # name: (epochs, batch, lr, vtc, ctc, best metric, use_matcher, max_v_l, input dims)
    "qvhighlights": (200, 32, 1e-4, 0.3, 0.5, "MR-full-mAP", True, 75, (2818, 512, None)),
    "qvhighlights_audio": (200, 32, 1e-4, 0.3, 0.3, "MR-full-mAP", True, 75, (2818, 512, 2050)),
    "charades_sf_clip": (100, 8, 1e-4, 0.3, 0.5, "MR-full-R1@0.5", True, 200, (2818, 512, None)),
    "charades_i3d": (100, 8, 1e-4, 0.3, 0.5, "MR-full-R1@0.5", True, 400, (1026, 512, None)),
    "charades_vgg": (100, 8, 1e-4, 0.3, 0.5, "MR-full-R1@0.5", True, 1200, (4098, 300, None)),
    "tvsum_i3d": (2000, 4, 1e-3, 0.5, 2.0, "mAP", False, 1000, (2050, 512, None)),
    "tvsum_i3d_audio": (2000, 4, 1e-3, 0.5, 2.0, "mAP", False, 1000, (2050, 512, 2050)),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules(name):
    epochs, bsz, lr, vtc, ctc, best, matcher, max_v_l, dims = SCHEDULES[name]
    c = load(name)
    assert (c.train.num_epochs, c.train.batch_size, c.optim.lr) == (epochs, bsz, lr)
    assert (c.loss.vtc_loss_coef, c.loss.ctc_loss_coef) == (vtc, ctc)
    assert (c.train.best_metric, c.loss.use_matcher, c.data.max_v_l) == (best, matcher, max_v_l)
    assert data.input_dims(c.data) == dims
    assert c.optim.weight_decay == 1e-4 and c.optim.grad_clip == 0.1


def test_charades_max_v_l_covers_the_longest_video():
    import json

    for name in ("charades_sf_clip", "charades_i3d", "charades_vgg"):
        c = load(name)
        for key in ("train_path", "eval_path"):
            with open(c.data[key]) as f:
                longest = max(json.loads(line)["duration"] for line in f if line.strip())
            assert longest / c.data.clip_length <= c.data.max_v_l, (name, longest)


def test_demo_config_is_small_and_follows_the_generator():
    c = load("demo")
    assert c.data.dataset == "qvhighlights" and c.data.demo.enabled and c.model.hidden_dim == 256
    assert (c.model.enc_layers, c.model.dec_layers, c.model.dim_feedforward) == (1, 1, 256)
    assert c.data.max_v_l >= c.data.demo.max_clips and c.data.max_q_l >= c.data.demo.max_query_len
    c.data.demo.v_dims = (8, 8)
    c.data.demo.t_dim = 16
    assert tuple(c.data.v_feat_dims) == (8, 8) and c.data.t_feat_dim == 16


def _parse(argv):
    """Parse argv as ``main`` does (config_flags reads the overrides from the argv it is given)."""
    argv = ["prog", *argv]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", default=None, flag_values=fv, sys_argv=argv)
    fv(argv)
    return fv.config


@pytest.mark.parametrize("name", CONFIGS)
def test_command_line_overrides(name):
    config = _parse(
        [
            f"--config={ROOT / 'configs' / name}.py",
            "--config.train.num_epochs=20",
            "--config.data.feature_root=/data/features",
            "--config.data.domain=BK",
            "--config.data.max_v_l=123",
            "--config.optim.lr=0.5",
            "--config.seed=7",
        ]
    )
    assert config.train.num_epochs == 20
    assert config.data.feature_root == "/data/features"
    assert config.data.domain == "BK"
    assert (config.data.max_v_l, config.optim.lr, config.seed) == (123, 0.5, 7)


def test_command_line_arg_and_demo_paths():
    config = _parse(
        [
            f"--config={ROOT / 'configs' / 'tvsum_i3d.py'}:tiny,domain=VT",
            "--config.data.train_path=/x/train.jsonl",
        ]
    )
    assert config.data.domain == "VT" and config.train.num_epochs == 1
    assert config.data.train_path == "/x/train.jsonl"
    demo = _parse([f"--config={ROOT / 'configs' / 'demo.py'}", "--config.data.eval_path=/v.jsonl"])
    assert demo.data.eval_path == "/v.jsonl" and demo.data.train_path is None


def test_command_line_rejects_unknown_keys():
    with pytest.raises((flags.Error, AttributeError), match="num_epochs"):
        _parse([f"--config={ROOT / 'configs' / 'qvhighlights.py'}", "--config.train.num_epoch=3"])
