"""QVHighlights with PANN audio (official ``scripts/train_audio.sh``).

Expects ``pann_features/<vid>.npy`` (T, 2048) beside the video feature folders.
Options: ``:tiny``.
"""

from trdetr_jax.config import apply_tiny, get_base_config, parse_arg


def get_config(arg=None):
    config = get_base_config()
    config.data.dataset = "qvhighlights"  # hl layout
    config.data.a_feat_dir = "pann_features"  # <vid>.npy audio features
    config.data.a_feat_dim = 2048  # PANN width (the script's 2050 includes the TEF)
    config.loss.ctc_loss_coef = 0.3  # the audio script's CTC weight
    config.train.best_metric = "MR-full-mAP"  # official model selection
    if "tiny" in parse_arg(arg):
        apply_tiny(config)
    return config
