"""TVSum, I3D rgb + flow video, one model per domain (official ``train_tvsum.sh``).

    python -m trdetr_jax.main --config=configs/tvsum_i3d.py --config.data.domain=BK \\
        --config.data.feature_root=/path/to/tvsum_features

Layout: ``video_features/<vid>_rgb.npy`` + ``<vid>_opt.npy`` (1024 each, concatenated
before one L2 norm), ``query_features/<vid>.npz['token']`` (not normalised, not cut).
Options: ``:tiny``, ``:domain=BK``.
"""

from trdetr_jax.config import apply_tiny, get_tvsum_config, parse_arg


def get_config(arg=None):
    opts = parse_arg(arg)
    config = get_tvsum_config(opts)
    if "tiny" in opts:
        apply_tiny(config)
    return config
