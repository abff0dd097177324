"""QVHighlights, SlowFast + CLIP video, CLIP text (official ``scripts/train.sh``).

    python -m trdetr_jax.main --config=configs/qvhighlights.py \\
        --config.data.feature_root=/path/to/qvhighlights_features

The shared defaults already are this setting; options: ``:tiny`` (smoke run).
"""

from trdetr_jax.config import apply_tiny, get_base_config, parse_arg


def get_config(arg=None):
    config = get_base_config()
    # Everything else is the shared default: 200 epochs, batch 32, lr 1e-4, VTC 0.3, CTC 0.5.
    config.data.dataset = "qvhighlights"  # hl layout: windows + clip ids + 3 annotator scores
    config.train.best_metric = "MR-full-mAP"  # official model selection
    if "tiny" in parse_arg(arg):
        apply_tiny(config)
    return config
