"""Charades-STA, VGG video (``vgg_features/<vid>.npy``, 4096-d), GloVe text.

Text: ``glove_text_features/qid<qid>.npz['last_hidden_state']`` (N, 300), the GloVe
vectors of the query words. VGG features come at 6 per second (clip 1/6 s, as in the
QD-DETR / CG-DETR Charades VGG setting); override ``--config.data.clip_length`` and
``--config.data.max_v_l`` if yours differ. Options: ``:tiny``.
"""

from trdetr_jax.config import apply_tiny, get_charades_config, parse_arg


def get_config(arg=None):
    config = get_charades_config()
    config.data.v_feat_dirs = ("vgg_features",)  # one VGG source
    config.data.v_feat_dims = (4096,)  # VGG fc width
    config.data.v_feat_format = "npy"  # <vid>.npy
    config.data.t_feat_dir = "glove_text_features"  # GloVe word vectors per query
    config.data.t_feat_dim = 300  # GloVe 300-d
    config.data.clip_length = 1.0 / 6.0  # six VGG features per second
    config.data.max_v_l = 1200  # covers the ~194 s longest video
    if "tiny" in parse_arg(arg):
        apply_tiny(config)
    return config
