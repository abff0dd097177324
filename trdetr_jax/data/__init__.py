"""Data pipeline: official on-disk layouts -> fixed-shape numpy batches.

Typical use (the trainer)::

    from trdetr_jax import data
    config = data.resolve_config(config)            # demo: generate + fill paths
    train_ds, eval_ds = data.build_datasets(config)  # validated annotations, shared cache
    for batch, metas in data.prefetch(
        data.train_batches(train_ds, config.train.batch_size, seed=config.seed, epoch=e,
                           start_step=s),
        put=put_on_devices, depth=config.data.prefetch_depth):
        ...
    for batch, metas in data.eval_batches(eval_ds, config.train.eval_batch_size):
        ...  # batch['example_mask'] is 0 on the rows that pad the last batch
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
