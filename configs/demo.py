"""The built-in demo (the default config): generated on first use, trains in minutes on CPU.

The dataset (see ``trdetr_jax/data/demo.py``) is written to ``config.data.cache_dir``
(default ``~/.cache/trdetr_jax/demo``); its generator knobs live in ``config.data.demo``.
Options: ``:tiny`` (32 training queries, one epoch).
"""

from ml_collections import config_dict

from trdetr_jax.config import apply_tiny, get_base_config, parse_arg


def get_config(arg=None):
    config = get_base_config()
    config.data.dataset = "qvhighlights"  # the demo is written in the QVHighlights layout
    config.data.demo.enabled = True  # generate it on first use (knobs: config.data.demo)
    config.data.feature_root = config_dict.placeholder(str)  # None: the generated folder
    config.data.train_path = config_dict.placeholder(str)  # None: <demo>/train.jsonl
    config.data.eval_path = config_dict.placeholder(str)  # None: <demo>/val.jsonl
    config.data.v_feat_dims = config.data.demo.get_ref("v_dims")  # follows the generator
    config.data.t_feat_dim = config.data.demo.get_ref("t_dim")  # follows the generator
    config.data.max_v_l = 32  # = demo.max_clips
    config.data.max_q_l = 12  # >= demo.max_query_len
    config.model.enc_layers = 1  # small model for CPU
    config.model.dec_layers = 1  # small model for CPU
    config.model.dim_feedforward = 256  # small model for CPU (hidden_dim stays the official 256)
    config.model.n_input_proj = 2  # as the official model
    # Fewer moment queries: matching settles in a few hundred steps. With 10 queries and 20
    # epochs the model has not converged at the last epoch and its R1 swings between 13 and
    # 79 with last-bit float32 changes (the summation order of one loss sum; same seed).
    config.model.num_queries = 5
    config.train.num_epochs = 30  # ~3 min on 2 CPU cores; MR R1@0.5 passes 70 from about epoch 16
    config.train.batch_size = 16  # small dataset
    config.train.eval_batch_size = 50  # two evaluation batches
    config.train.eval_every_epochs = 2  # evaluation interval (an evaluation takes ~0.3 s)
    config.train.log_every_steps = 10  # a few log lines per epoch
    config.train.checkpoint_every_steps = 100  # save the latest state often
    config.optim.lr = 3e-4  # faster convergence on the easy demo task
    config.eval.postprocess = "dataset"  # clamp windows to each video's duration
    if "tiny" in parse_arg(arg):
        apply_tiny(config)
    return config
