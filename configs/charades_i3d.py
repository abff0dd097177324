"""Charades-STA, I3D video (``i3d_features/<vid>.npy``, 1024-d, one per 0.5 s), CLIP text.

Options: ``:tiny``.
"""

from trdetr_jax.config import apply_tiny, get_charades_config, parse_arg


def get_config(arg=None):
    config = get_charades_config()
    config.data.v_feat_dirs = ("i3d_features",)  # one I3D source
    config.data.v_feat_dims = (1024,)  # I3D width
    config.data.v_feat_format = "npy"  # <vid>.npy
    config.data.clip_length = 0.5  # one I3D feature per 0.5 s
    config.data.max_v_l = 400  # covers the ~194 s longest video
    if "tiny" in parse_arg(arg):
        apply_tiny(config)
    return config
