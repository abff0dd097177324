"""Shared configuration defaults.

Every file under ``configs/`` starts from :func:`get_base_config` and overrides only what
its dataset / feature setting changes. Values default to the official code's defaults
(``tr_detr/config.py`` and ``scripts/train.sh``) so an unmodified config reproduces the
official QVHighlights schedule.
"""

from __future__ import annotations

from ml_collections import config_dict

from trdetr_jax import annotations


def get_base_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()

    # Random seed for parameter init, dropout, shuffling and saliency-pair sampling.
    config.seed = 2017

    # ------------------------------------------------------------------ data
    data = config_dict.ConfigDict()
    # Which on-disk layout to read: 'qvhighlights' | 'charades' | 'tvsum' (the demo is 'qvhighlights').
    data.dataset = "qvhighlights"
    # Root folder holding the feature sub-folders named below.
    data.feature_root = config_dict.placeholder(str)
    # Training / evaluation annotation files (jsonl, official format).
    data.train_path = str(annotations.path("qvhighlights", "train"))
    data.eval_path = str(annotations.path("qvhighlights", "val"))
    # Name of the evaluation split (used in output file names).
    data.eval_split_name = "val"
    # Video feature sub-folders of feature_root, concatenated in this order.
    data.v_feat_dirs = ("slowfast_features", "clip_features")
    # Per-source feature dimensions (same order as v_feat_dirs), before the TEF.
    data.v_feat_dims = (2304, 512)
    # Video file layout: 'npz' (<vid>.npz['features']), 'npy' (<vid>.npy), 'rgb_opt' (TVSum).
    data.v_feat_format = "npz"
    # Text feature sub-folder and dimension.
    data.t_feat_dir = "clip_text_features"
    data.t_feat_dim = 512
    # Text file layout: 'qid_npz' (qid<qid>.npz['last_hidden_state']), 'tvsum_npz' (<qid>.npz['token']).
    data.t_feat_format = "qid_npz"
    # Cut text to max_q_l (official QVH/CLIP); False: error on longer text (TVSum).
    data.truncate_text = True
    # Optional audio sub-folder (PANN, <vid>.npy) and its dimension before the TEF; None = no audio.
    data.a_feat_dir = config_dict.placeholder(str)
    data.a_feat_dim = config_dict.placeholder(int)
    # Append the temporal endpoint feature [t/T, (t+1)/T] to video (and audio) features.
    data.use_tef = True
    # L2-normalise each video / text source x / (|x| + 1e-5).
    data.normalize_video = True
    data.normalize_text = True
    # Seconds per clip feature (Charades I3D: 0.5, so this is a float).
    data.clip_length = 2.0
    # Padded capacities: clips, text tokens, GT windows per query.
    data.max_v_l = 75
    data.max_q_l = 32
    data.max_windows = 5
    # Pad each batch to the smallest length bucket holding its longest video / query (False: to max_v_l / max_q_l).
    data.length_buckets = True
    # Video / text buckets chosen from the training split's lengths (at most this many, the last max_v_l / max_q_l).
    data.num_video_buckets = 4
    data.num_text_buckets = 2
    # Explicit ascending bucket lengths instead of the chosen ones (max_v_l / max_q_l is added as the last).
    data.video_buckets = ()
    data.text_buckets = ()
    # What to do with a video longer than max_v_l: 'truncate' (warn once) or 'error'.
    data.on_long_video = "truncate"
    # Odd but usable annotation rows (a window starting before 0 or ending after the
    # duration): False clamps them to [0, duration] and warns once with a count; True
    # refuses the run and lists them (see trdetr_jax.data.checks).
    data.strict = False
    # TVSum domain (BK BT DS FM GA MS PK PR VT VU); None for other datasets.
    data.domain = config_dict.placeholder(str)
    # Keep all features in host memory after the first read.
    data.preload = True
    # Fraction of the training set to use (official data_ratio).
    data.data_ratio = 1.0
    # Cache folder for the built-in demo dataset (None = ~/.cache/trdetr_jax/demo).
    data.cache_dir = config_dict.placeholder(str)
    # Keep the processed features on the device(s) and send only row indices each step
    # (trdetr_jax/data/resident.py): 'auto' (on accelerators when the tables fit in 40% of
    # device memory; on CPU when the features are cached in memory (data.preload) and the
    # tables fit in 40% of the available host memory), 'on' or 'off'. Batches are
    # bit-identical either way.
    data.features_on_device = "auto"
    # Batches loaded ahead of the train step by the prefetch thread.
    data.prefetch_depth = 2
    # The built-in demo dataset generator and its knobs.
    data.demo = config_dict.ConfigDict()
    data.demo.enabled = False  # generate the demo on first use and read it (configs/demo.py)
    data.demo.seed = 0  # generator seed (independent of config.seed)
    data.demo.n_train = 400  # training queries (two per video)
    data.demo.n_val = 100  # validation queries
    data.demo.n_topics = 8  # number of planted topics
    data.demo.noise = 0.5  # feature noise scale relative to the unit topic signal
    data.demo.v_dims = (48, 16)  # dims of the two video sources (slowfast_features, clip_features)
    data.demo.t_dim = 32  # text token feature dim
    data.demo.min_clips = 16  # shortest video, in 2 s clips
    data.demo.max_clips = 32  # longest video, in 2 s clips
    data.demo.min_query_len = 4  # fewest query tokens
    data.demo.max_query_len = 10  # most query tokens
    config.data = data

    # ----------------------------------------------------------------- model
    model = config_dict.ConfigDict()
    # 'official' reproduces the official code bit for bit; 'fixed' corrects its bugs.
    model.compat = "official"
    # Transformer width, heads, layers, FFN width, number of moment queries.
    model.hidden_dim = 256
    model.nheads = 8
    model.enc_layers = 2
    model.dec_layers = 2
    model.dim_feedforward = 1024
    model.num_queries = 10
    # Number of LayerNorm-Dropout-Linear(-ReLU) blocks in each input projection.
    model.n_input_proj = 2
    # Dropout before input projections / inside the transformer.
    model.input_dropout = 0.5
    model.dropout = 0.1
    # Decoder auxiliary outputs (losses on every decoder layer).
    model.aux_loss = True
    # Paper Table 4 ablation switches.
    model.use_lgam = True  # local/global alignment losses (CTC + VTC)
    model.use_vfr = True  # co-attention visual feature refinement
    model.use_hd2mr = True  # highlight-to-moment re-weighting before the second encoder pass
    model.use_mr2hd = True  # moment-to-highlight GRU re-weighting of the saliency
    # Compute dtype for matmuls ('float32' or 'bfloat16'); params stay float32.
    model.dtype = "float32"
    # Precision of float32 matmuls in the compiled steps (trdetr_jax/precision.py):
    # 'highest' (true float32, as the official code), 'tensorfloat32' or 'bfloat16'
    # (faster on recent GPUs, ~1e-3 / ~4e-3 relative error per product; 'bfloat16' also on
    # CPUs with bfloat16 units such as AMX, one CPU device only).
    model.matmul_precision = "highest"
    config.model = model

    # ------------------------------------------------------------------ loss
    loss = config_dict.ConfigDict()
    # Hungarian matching cost weights.
    loss.set_cost_span = 10.0
    loss.set_cost_giou = 1.0
    loss.set_cost_class = 4.0
    # Loss weights.
    loss.span_loss_coef = 10.0
    loss.giou_loss_coef = 1.0
    loss.label_loss_coef = 4.0
    loss.lw_saliency = 1.0
    loss.saliency_margin = 0.2
    # Alignment losses (LGAM) and their temperature.
    loss.vtc_loss_coef = 0.3
    loss.ctc_loss_coef = 0.5
    loss.temperature = 0.07
    # Span matching / losses on (False: TVSum, saliency only).
    loss.use_matcher = True
    config.loss = loss

    # ----------------------------------------------------------------- optim
    optim = config_dict.ConfigDict()
    # AdamW learning rate and decoupled weight decay.
    optim.lr = 1e-4
    optim.weight_decay = 1e-4
    # Global-norm gradient clipping.
    optim.grad_clip = 0.1
    # StepLR: multiply lr by lr_gamma every lr_drop epochs.
    optim.lr_drop = 400
    optim.lr_gamma = 0.1
    config.optim = optim

    # ----------------------------------------------------------------- train
    train = config_dict.ConfigDict()
    # Epochs, global batch size (split across devices), evaluation interval.
    train.num_epochs = 200
    train.batch_size = 32
    train.eval_every_epochs = 5
    # Evaluation batch: official eval_bsz (100 for every dataset), in file order; official-mode
    # predictions depend on it (each batch is padded to its own longest video and query).
    train.eval_batch_size = 100
    # Log train metrics every N steps; save the latest checkpoint every N steps.
    train.log_every_steps = 50
    train.checkpoint_every_steps = 500
    # Model-selection metric from the evaluation brief (higher is better).
    train.best_metric = "MR-full-mAP"
    # Early stopping patience in evaluations (-1: never).
    train.max_es_cnt = 200
    # Initialise jax.distributed (multi-host); also enabled by JAX_COORDINATOR_ADDRESS.
    train.distributed = False
    # Hungarian assignment: 'scipy' (host callback, the reference) or 'device' (inside the
    # step: no host round trip per step; ties may be broken differently, see matcher.py).
    train.matcher = "scipy"
    # Train steps per dispatch: > 1 runs chunks of that many steps as one lax.scan (one
    # dispatch, metrics fetched once per chunk); a chunk holds one length bucket and is cut
    # at checkpoint steps and epoch ends. 1: one jitted call per step.
    train.steps_per_dispatch = 1
    # The dropout masks' bit generator: '' draws them from the step's dropout key
    # (threefry2x32, computed as one fused kernel by trdetr_jax/fused_threefry.py: JAX's bits,
    # without its rolled CPU loop); a JAX PRNG name ('threefry4x32', 'philox2x32', ...) draws
    # them from a key of that generator seeded by the step's key: the same Bernoulli masks in
    # distribution, another (equally deterministic) stream, no faster any more
    # (experiments/PROFILE.md 2.1.2). The philox generators cannot be partitioned over
    # several devices with JAX 0.10 (refused before the run).
    train.dropout_prng = ""
    # XLA's persistent compilation cache ('' = off): a rerun of the same config loads the eval
    # step, and with matcher='device' the train step, instead of compiling it (see
    # trdetr_jax/compile_cache.py).
    train.compilation_cache_dir = "~/.cache/trdetr_jax/xla"
    # Several seeds in one run (trdetr_jax/seeds.py): K models trained at once by one
    # compiled step, seeds config.seed + k (k < num_seeds), or the explicit list `seeds`.
    train.num_seeds = 1
    train.seeds = ()
    # How the K seeds' batches share a step when they fall in different length buckets:
    # 'exact' runs one call per bucket pair among them (each seed sees the shapes, hence the
    # dropout masks, of its single run); 'common' pads all to the largest (one call a step;
    # dropout draws per padded position, so a seed padded further gets other masks).
    train.seed_padding = "exact"
    config.train = train

    # ------------------------------------------------------------------ eval
    evaluation = config_dict.ConfigDict()
    # Post-processing: 'official' (hard-coded 2 s / 150 s) or 'dataset' (clip_length, duration).
    evaluation.postprocess = "official"
    # Temporal NMS IoU threshold (<= 0: off), windows kept before / after NMS.
    evaluation.nms_thd = -1.0
    evaluation.max_before_nms = 10
    evaluation.max_after_nms = 10
    config.eval = evaluation

    return config


def get_charades_config() -> config_dict.ConfigDict:
    """Charades-STA defaults shared by every feature setting (paper's schedule)."""
    config = get_base_config()
    # The official code has no Charades path (see trdetr_jax/data/targets.py for the labels).
    config.data.dataset = "charades"  # windows only; relevant clips / 0-1 saliency from the window
    config.data.train_path = str(annotations.path("charades", "train"))
    config.data.eval_path = str(annotations.path("charades", "test"))
    # The shipped Charades-STA evaluation file is the test split.
    config.data.eval_split_name = "test"
    config.train.num_epochs = 100  # paper's Charades schedule
    config.train.batch_size = 8  # paper's Charades batch
    config.optim.lr = 1e-4  # paper's Charades learning rate
    config.train.eval_every_epochs = 1  # small dataset, cheap evaluation
    config.train.best_metric = "MR-full-R1@0.5"  # Charades reports R1@0.5 / R1@0.7
    config.eval.postprocess = "dataset"  # official post-processing clamps to 150 s at 2 s clips
    return config


def get_tvsum_config(opts: dict[str, str]) -> config_dict.ConfigDict:
    """TVSum I3D defaults (official ``train_tvsum.sh``), one model per domain."""
    config = get_base_config()
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
    return config


def apply_tiny(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """Shrink a config for smoke runs (``get_config('tiny')``): 1 epoch, 1 layer, tiny FFN."""
    config.train.num_epochs = 1
    config.train.batch_size = 4
    config.train.eval_batch_size = 4
    config.train.eval_every_epochs = 1
    config.train.log_every_steps = 1
    config.model.enc_layers = 1
    config.model.dec_layers = 1
    config.model.dim_feedforward = 64
    config.data.demo.n_train = 32
    config.data.demo.n_val = 16
    return config


def parse_arg(arg: str | None) -> dict[str, str]:
    """Options of ``--config=configs/x.py:opt1,key=value`` as a dict (flags map to '')."""
    out: dict[str, str] = {}
    for part in (arg or "").split(","):
        part = part.strip()
        if part:
            key, _, value = part.partition("=")
            out[key.strip()] = value.strip()
    return out
