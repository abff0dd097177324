"""Data pipeline: official on-disk layouts -> length-bucketed numpy batches.

Typical use (the trainer)::

    from trdetr_jax import data
    config, train_ds, eval_ds = data.load_datasets(config)  # demo generated; buckets
    steps = data.steps_per_epoch(len(train_ds), B)  # full batches per epoch
    batches = data.train_batches(train_ds, B, epoch=e, start_step=s)  # this process's rows
    for batch, metas in data.prefetch(batches, put=put_on_devices, depth=2):
        ...
    chunks = data.chunk_batches((b for b, _ in batches), first_step=s, size=4, cut_every=N)
    for batch, metas in data.eval_batches(eval_ds, eval_bsz, pad_to=rows):
        ...  # batch['example_mask'] is 0 on the rows that only pad the batch
    gt = eval_ds.gt_rows()

Batches are padded to the dataset's length buckets (``train_ds.buckets``) and carry the
official padded lengths (``official_vid_len`` / ``official_txt_len``); see
:mod:`trdetr_jax.data.batching`. ``data.resolve_config(config)`` gives the config with the
demo's generated paths filled in.
"""

from trdetr_jax.data.batching import (
    abstract_batch,
    batch_shapes,
    bucket_counts,
    chunk_batches,
    collate,
    epoch_order,
    eval_batches,
    example_rng,
    num_eval_batches,
    stack_batches,
    steps_per_epoch,
    train_batches,
    train_dispatches,
)
from trdetr_jax.data.buckets import Buckets
from trdetr_jax.data.dataset import (
    MomentDataset,
    build_datasets,
    build_eval_dataset,
    load_datasets,
    make_dataset,
    make_store,
    resolve_config,
)
from trdetr_jax.data.errors import DataError
from trdetr_jax.data.features import input_dims, l2_normalize, temporal_endpoint_feature
from trdetr_jax.data.prefetch import prefetch

__all__ = [
    "Buckets",
    "abstract_batch",
    "chunk_batches",
    "load_datasets",
    "DataError",
    "MomentDataset",
    "batch_shapes",
    "bucket_counts",
    "build_datasets",
    "build_eval_dataset",
    "collate",
    "epoch_order",
    "eval_batches",
    "example_rng",
    "input_dims",
    "l2_normalize",
    "make_dataset",
    "make_store",
    "num_eval_batches",
    "stack_batches",
    "prefetch",
    "resolve_config",
    "steps_per_epoch",
    "temporal_endpoint_feature",
    "train_batches",
    "train_dispatches",
]
