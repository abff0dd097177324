"""Charades-STA, I3D video (``i3d_features/<vid>.npy``, 1024-d, one per 0.5 s), CLIP text.

Options: ``:tiny``.
"""

from trdetr_jax import annotations
from trdetr_jax.config import apply_tiny, get_base_config, parse_arg


def get_config(arg=None):
    config = get_base_config()
    # The official code has no Charades path (see trdetr_jax/data/targets.py for the labels).
    config.data.dataset = "charades"  # windows only; relevant clips / 0-1 saliency from the window
    config.data.train_path = str(annotations.path("charades", "train"))
    config.data.eval_path = str(annotations.path("charades", "test"))
    config.data.eval_split_name = (
        "test"  # the shipped Charades-STA evaluation file is the test split
    )
    config.train.num_epochs = 100  # paper's Charades schedule
    config.train.batch_size = 8  # paper's Charades batch
    config.optim.lr = 1e-4  # paper's Charades learning rate
    config.train.eval_every_epochs = 1  # small dataset, cheap evaluation
    config.train.best_metric = "MR-full-R1@0.5"  # Charades reports R1@0.5 / R1@0.7
    config.eval.postprocess = "dataset"  # official post-processing clamps to 150 s at 2 s clips
    config.data.v_feat_dirs = ("i3d_features",)  # one I3D source
    config.data.v_feat_dims = (1024,)  # I3D width
    config.data.v_feat_format = "npy"  # <vid>.npy
    config.data.clip_length = 0.5  # one I3D feature per 0.5 s
    config.data.max_v_l = 400  # covers the ~194 s longest video
    if "tiny" in parse_arg(arg):
        apply_tiny(config)
    return config
