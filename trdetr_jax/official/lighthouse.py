"""TR-DETR checkpoints of lighthouse (``line/lighthouse``), the moment-retrieval library.

lighthouse saves ``torch.save({'model': state_dict, 'optimizer': ..., 'lr_scheduler': ...,
'epoch': i, 'opt': EasyDict})``. Its TR-DETR has the official module names, so the
state_dict keys are the official ones; the options differ:

* ``dset_name`` is ``'qvhighlight'`` / ``'tvsum'`` (official ``'hl'`` / ``'tvsum'``), the
  TVSum domain is ``domain`` (official ``dset_domain``);
* ``v_feat_dim`` comes from its feature YAML and already counts the TEF (``2818`` =
  CLIP 512 + SlowFast 2304 + 2), as the official parsed options do;
* the video folders are ``features/<dataset>/{clip,slowfast,i3d}``, in that order (CLIP
  first), concatenated in that order;
* audio (``a_feat_dirs``, ``ctx_mode`` with ``audio``) gets **no** TEF in lighthouse (the
  official code adds one), so its models do not fit ours: refused with a clear error.

:func:`to_official_options` turns lighthouse options into official ones;
``trdetr_jax.official.convert`` calls it for any checkpoint whose options look like
lighthouse's (:func:`is_lighthouse_options`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_DSET_NAMES = {"qvhighlight": "hl", "tvsum": "tvsum"}


def is_lighthouse_options(opt: Any) -> bool:
    """True for the options lighthouse stores (a mapping with its own keys)."""
    return isinstance(opt, Mapping) and (
        "model_name" in opt or "v_feat_types" in opt or "a_feat_dirs" in opt
    )


def to_official_options(opt: Mapping[str, Any]) -> dict[str, Any]:
    """Official-style options (what :func:`trdetr_jax.official.options.options_to_config`
    reads) for a lighthouse TR-DETR checkpoint's options. ValueError (one line) for a
    lighthouse model, dataset or input the port does not support."""
    o = dict(opt)
    model = o.get("model_name", "tr_detr")
    if model != "tr_detr":
        raise ValueError(f"lighthouse model_name={model!r}: only 'tr_detr' converts")
    dset = o.get("dset_name")
    if dset not in _DSET_NAMES:
        raise ValueError(
            f"lighthouse dset_name={dset!r} is not supported: expected one of "
            + ", ".join(repr(k) for k in _DSET_NAMES)
        )
    ctx_mode = str(o.get("ctx_mode", "video_tef"))
    if o.get("a_feat_dirs") or "audio" in ctx_mode:
        raise ValueError(
            f"lighthouse audio models (ctx_mode={ctx_mode!r}, a_feat_dirs="
            f"{o.get('a_feat_dirs')}) are not supported: lighthouse adds no TEF to the audio, "
            "the official code (and this port) does"
        )
    if "video" not in ctx_mode:
        raise ValueError(f"lighthouse ctx_mode={ctx_mode!r} has no video: not supported")
    o["dset_name"] = _DSET_NAMES[dset]
    if dset == "tvsum":
        o["dset_domain"] = o.get("domain") or o.get("dset_domain")
    o["use_tef"] = "tef" in ctx_mode  # marks v_feat_dim as counting the TEF already
    o["v_feat_dirs"] = list(o["v_feat_dirs"])
    return o
