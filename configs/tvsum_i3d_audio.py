"""TVSum, I3D rgb + flow video with PANN audio (``audio_features/<vid>.npy``), per domain.

The official ``train_tvsum_audio.sh`` sweeps the VTC/CTC weights; this keeps the TVSum
weights of ``train_tvsum.sh`` (VTC 0.5, CTC 2.0). Options: ``:tiny``, ``:domain=BK``.
"""

from trdetr_jax import annotations
from trdetr_jax.config import apply_tiny, get_base_config, parse_arg


def get_config(arg=None):
    config = get_base_config()
    opts = parse_arg(arg)
    config.data.dataset = "tvsum"  # label (clips x 20 annotators) layout, one domain per model
    config.data.train_path = str(annotations.path("tvsum", "train"))
    config.data.eval_path = str(annotations.path("tvsum", "val"))
    config.data.domain = opts.get("domain") or None  # else --config.data.domain (required)
    config.data.v_feat_dirs = ("video_features",)  # one folder holding rgb and flow
    config.data.v_feat_dims = (2048,)  # rgb 1024 + flow 1024
    config.data.v_feat_format = "rgb_opt"  # <vid>_rgb.npy + <vid>_opt.npy, one L2 norm
    config.data.t_feat_dir = "query_features"  # <vid>.npz['token']
    config.data.t_feat_format = "tvsum_npz"  # 'token' key, file named by qid (== vid)
    config.data.normalize_text = False  # official: TVSum text used as stored
    config.data.truncate_text = False  # official: not cut; error if longer than max_q_l
    config.data.max_v_l = 1000  # official script
    config.train.num_epochs = 2000  # official script
    config.train.batch_size = 4  # official script
    config.train.best_metric = "mAP"  # top-5 mAP
    config.train.max_es_cnt = -1  # official script: no early stopping
    config.optim.lr = 1e-3  # official script
    config.optim.lr_drop = 2000  # official script
    config.loss.vtc_loss_coef = 0.5  # official script
    config.loss.ctc_loss_coef = 2.0  # official script
    config.loss.use_matcher = False  # saliency only, no span matching
    config.data.a_feat_dir = "audio_features"  # <vid>.npy audio features
    config.data.a_feat_dim = 2048  # PANN width (the script's 2050 includes the TEF)
    if "tiny" in opts:
        apply_tiny(config)
    return config
