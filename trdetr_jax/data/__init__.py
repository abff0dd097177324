"""Data pipeline: official on-disk layouts -> fixed-shape numpy batches.

Typical use (the trainer)::

    from trdetr_jax import data
    train_ds, eval_ds = data.build_datasets(config)  # demo generated; annotations validated
    steps = train_ds.num_batches(config.train.batch_size)  # full batches per epoch
    batches = train_ds.iter_batches(epoch=e, batch_size=B, train=True, start=s)
    for batch, metas in data.prefetch(batches, put=put_on_devices, depth=2):
        ...
    for batch, metas in eval_ds.iter_batches(epoch=0, batch_size=B, train=False):
        ...  # batch['example_mask'] is 0 on the rows that pad the last batch
    gt = eval_ds.gt_rows()

``data.resolve_config(config)`` gives the config with the demo's generated paths filled in.
"""

from trdetr_jax.data.batching import (
    collate,
    epoch_order,
    eval_batches,
    example_rng,
    num_eval_batches,
    steps_per_epoch,
    train_batches,
)
from trdetr_jax.data.dataset import (
    MomentDataset,
    build_datasets,
    build_eval_dataset,
    make_dataset,
    make_store,
    resolve_config,
)
from trdetr_jax.data.errors import DataError
from trdetr_jax.data.features import input_dims, l2_normalize, temporal_endpoint_feature
from trdetr_jax.data.prefetch import prefetch

__all__ = [
    "DataError",
    "MomentDataset",
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
    "prefetch",
    "resolve_config",
    "steps_per_epoch",
    "temporal_endpoint_feature",
    "train_batches",
]
