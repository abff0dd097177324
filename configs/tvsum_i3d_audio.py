"""TVSum, I3D rgb + flow video with PANN audio (``audio_features/<vid>.npy``), per domain.

The official ``train_tvsum_audio.sh`` sweeps the VTC/CTC weights; this keeps the TVSum
weights of ``train_tvsum.sh`` (VTC 0.5, CTC 2.0). Options: ``:tiny``, ``:domain=BK``.
"""

from trdetr_jax.config import apply_tiny, get_tvsum_config, parse_arg


def get_config(arg=None):
    opts = parse_arg(arg)
    config = get_tvsum_config(opts)
    config.data.a_feat_dir = "audio_features"  # <vid>.npy audio features
    config.data.a_feat_dim = 2048  # PANN width (the script's 2050 includes the TEF)
    if "tiny" in opts:
        apply_tiny(config)
    return config
