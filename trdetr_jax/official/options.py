"""Official options (``opt.json``, a fixture's ``config.json['opt']`` or a checkpoint's
``argparse.Namespace``) -> our ml_collections config and ``TRDETR`` kwargs."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import warnings
from collections.abc import Mapping
from typing import Any


def read_options(path: str | os.PathLike) -> dict[str, Any]:
    """Official options from ``opt.json`` or from a fixture ``config.json`` (key ``opt``).

    A file that cannot be read, is not JSON or holds no options raises ValueError, one line
    naming the file.
    """
    try:
        text = pathlib.Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not an options file (not UTF-8 text: byte {err.start} is "
            f"0x{err.object[err.start]:02x})"
        ) from err
    except OSError as err:
        raise ValueError(f"{path}: cannot read the options file ({err.strerror or err})") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not an options file (invalid JSON at line {err.lineno} column "
            f"{err.colno}: {err.msg})"
        ) from err
    if isinstance(data, dict) and isinstance(data.get("opt"), dict):
        return data["opt"]
    if not isinstance(data, dict) or "hidden_dim" not in data:
        raise ValueError(f"{path}: not official options (no 'hidden_dim' and no 'opt' entry)")
    return data


def model_kwargs_from_options(
    opt: Mapping[str, Any] | argparse.Namespace, *, float64: bool = False
):
    """``TRDETR`` kwargs for a model built with these official options.

    ``float64``: compute and params in float64 (needs ``jax_enable_x64``), for parity with a
    float64 official run.
    """
    import jax.numpy as jnp

    from trdetr_jax.model import model_kwargs_from_config

    kwargs = model_kwargs_from_config(options_to_config(opt))
    if float64:
        kwargs.update(dtype=jnp.float64, param_dtype=jnp.float64)
    return kwargs


_REQUIRED = ("v_feat_dirs", "v_feat_dim", "t_feat_dir", "t_feat_dim", "hidden_dim", "nheads",
             "enc_layers", "dec_layers", "dim_feedforward", "num_queries")  # fmt: skip
_DSET_NAMES = ("hl", "tvsum")  # the official parser's dset_name choices
_SOURCE_DIMS = (("slowfast", 2304), ("clip", 512), ("i3d", 1024), ("vgg", 4096))


def _split_video_dims(dirs: list[str], total: int) -> tuple[int, ...]:
    """Per-source feature sizes from the official summed ``v_feat_dim`` (TEF excluded)."""
    if len(dirs) <= 1:
        return (total,)
    guess = []
    for d in dirs:
        name = os.path.basename(os.path.normpath(d)).lower()
        guess.append(next((n for key, n in _SOURCE_DIMS if key in name), None))
    if None not in guess and sum(guess) == total:
        return tuple(guess)
    warnings.warn(
        f"cannot split v_feat_dim={total} over the video sources {dirs}: config.data.v_feat_dims "
        f"is set to ({total},); set the per-source sizes by hand before loading data",
        stacklevel=3,
    )
    return (total,)


def _shipped_annotation(dataset: str, official_path: str | None) -> str | None:
    """The shipped annotation file with the official path's file name, if there is one."""
    from trdetr_jax import annotations

    if not official_path:
        return None
    name = os.path.basename(os.path.normpath(official_path))
    if name not in annotations.FILES[dataset].values():
        return None
    return str(annotations.ROOT / dataset / name)


def options_to_config(opt: Mapping[str, Any] | argparse.Namespace):
    """Official options (``opt.json`` dict, ``config.json['opt']`` or the checkpoint's Namespace)
    -> our ml_collections config.

    The config starts from the dataset's own defaults (``get_tvsum_config`` for
    ``dset_name='tvsum'``, ``get_base_config`` (QVHighlights) for ``'hl'``): file layouts,
    annotation files, text normalisation and the model-selection metric; the options then
    set what the official run chose. An official ``train_path``/``eval_path`` naming a
    shipped annotation file (same file name) selects that file.

    ``opt.json`` is written before the official parser adds 2 to ``v_feat_dim`` for the TEF,
    the Namespace (and fixture ``opt``) after; the presence of ``use_tef`` tells them apart.
    """
    from trdetr_jax.config import get_base_config, get_tvsum_config

    o = dict(vars(opt)) if isinstance(opt, argparse.Namespace) else dict(opt)
    missing = [k for k in _REQUIRED if o.get(k) is None]
    if missing:
        raise ValueError(f"official options lack {', '.join(missing)}")
    unsupported = {
        "pre_norm": (o.get("pre_norm", False), False),
        "contrastive_align_loss": (o.get("contrastive_align_loss", False), False),
        "span_loss_type": (o.get("span_loss_type", "l1"), "l1"),
        "position_embedding": (o.get("position_embedding", "sine"), "sine"),
        "use_txt_pos": (o.get("use_txt_pos", False), False),
    }
    for name, (value, supported) in unsupported.items():
        if value != supported and not (name == "position_embedding" and value == "v2"):
            raise ValueError(
                f"official option {name}={value!r} is not supported (only {supported!r})"
            )

    for name in ("txt_drop_ratio", "conf_thd"):  # train/eval-time options our config lacks
        if float(o.get(name, 0) or 0) != 0:
            warnings.warn(
                f"official option {name}={o[name]} has no counterpart in our config; ignored",
                stacklevel=2,
            )

    dset = o.get("dset_name") or "hl"
    if dset not in _DSET_NAMES:
        raise ValueError(
            f"official option dset_name={dset!r} is not known: expected one of "
            + ", ".join(repr(k) for k in _DSET_NAMES)
        )
    if dset == "tvsum":
        c = get_tvsum_config({"domain": o.get("dset_domain") or ""})
    else:
        c = get_base_config()
    ctx_mode = o.get("ctx_mode", "video_tef")
    use_tef = "tef" in ctx_mode
    tef_added = "use_tef" in o  # parsed options already hold v_feat_dim + 2
    v_dim = int(o["v_feat_dim"]) - (2 if use_tef and tef_added else 0)
    c.seed = int(o.get("seed", c.seed))

    for field in ("train_path", "eval_path"):
        shipped = _shipped_annotation(c.data.dataset, o.get(field))
        if shipped is not None:
            setattr(c.data, field, shipped)
    c.data.v_feat_dirs = tuple(os.path.basename(os.path.normpath(p)) for p in o["v_feat_dirs"])
    c.data.v_feat_dims = _split_video_dims(list(o["v_feat_dirs"]), v_dim)
    c.data.t_feat_dir = os.path.basename(os.path.normpath(o["t_feat_dir"]))
    c.data.t_feat_dim = int(o["t_feat_dim"])
    if o.get("a_feat_dir"):
        c.data.a_feat_dir = os.path.basename(os.path.normpath(o["a_feat_dir"]))
        # The official audio dim counts the audio's own TEF (PANN 2048 + 2 = 2050).
        c.data.a_feat_dim = int(o["a_feat_dim"]) - (2 if use_tef else 0)
    c.data.use_tef = use_tef
    c.data.normalize_video = not o.get("no_norm_vfeat", False)
    if dset != "tvsum":  # the official TVSum reader uses the text as stored, whatever the flag
        c.data.normalize_text = not o.get("no_norm_tfeat", False)
    c.data.clip_length = float(o.get("clip_length", 2))
    c.data.max_v_l = int(o.get("max_v_l", 75))
    c.data.max_q_l = int(o.get("max_q_l", 32))
    c.data.max_windows = int(o.get("max_windows", 5))
    c.data.data_ratio = float(o.get("data_ratio", 1.0))
    c.data.eval_split_name = o.get("eval_split_name", "val")

    m = c.model
    m.compat = "official"
    for name in ("hidden_dim", "nheads", "enc_layers", "dec_layers", "dim_feedforward"):
        setattr(m, name, int(o[name]))
    m.num_queries = int(o["num_queries"])
    m.n_input_proj = int(o.get("n_input_proj", 2))
    m.input_dropout = float(o.get("input_dropout", 0.5))
    m.dropout = float(o.get("dropout", 0.1))
    m.aux_loss = bool(o.get("aux_loss", True))

    loss = c.loss
    for name in ("set_cost_span", "set_cost_giou", "set_cost_class", "span_loss_coef",
                 "giou_loss_coef", "label_loss_coef", "lw_saliency", "saliency_margin",
                 "temperature"):  # fmt: skip
        if name in o:
            setattr(loss, name, float(o[name]))
    loss.vtc_loss_coef = float(o.get("VTC_loss_coef", loss.vtc_loss_coef))
    loss.ctc_loss_coef = float(o.get("CTC_loss_coef", loss.ctc_loss_coef))

    c.optim.lr = float(o.get("lr", c.optim.lr))
    c.optim.weight_decay = float(o.get("wd", c.optim.weight_decay))
    c.optim.grad_clip = float(o.get("grad_clip", c.optim.grad_clip))
    c.optim.lr_drop = int(o.get("lr_drop", c.optim.lr_drop))
    c.train.num_epochs = int(o.get("n_epoch", c.train.num_epochs))
    c.train.batch_size = int(o.get("bsz", c.train.batch_size))
    c.train.eval_batch_size = int(o.get("eval_bsz", c.train.eval_batch_size))
    c.train.max_es_cnt = int(o.get("max_es_cnt", c.train.max_es_cnt))
    c.eval.nms_thd = float(o.get("nms_thd", c.eval.nms_thd))
    c.eval.max_before_nms = int(o.get("max_before_nms", c.eval.max_before_nms))
    c.eval.max_after_nms = int(o.get("max_after_nms", c.eval.max_after_nms))
    return c
