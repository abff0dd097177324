"""Charades-STA, SlowFast + CLIP video (1 s clips), CLIP text. Options: ``:tiny``.

Layout: ``slowfast_features/<vid>.npz``, ``clip_features/<vid>.npz``,
``clip_text_features/qid<qid>.npz`` (as QVHighlights).
"""

from trdetr_jax.config import apply_tiny, get_charades_config, parse_arg


def get_config(arg=None):
    config = get_charades_config()
    config.data.clip_length = 1.0  # one SlowFast/CLIP feature per second
    config.data.max_v_l = 200  # covers the ~194 s longest video
    if "tiny" in parse_arg(arg):
        apply_tiny(config)
    return config
