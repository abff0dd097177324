"""Everything that reads or writes the official PyTorch code's artefacts.

- :mod:`~trdetr_jax.official.keys`: the official ``state_dict`` key <-> Flax param path table,
  both ways (``state_dict_to_params``, ``params_to_state_dict``);
- :mod:`~trdetr_jax.official.options`: official options -> our config and ``TRDETR`` kwargs;
- :mod:`~trdetr_jax.official.checkpoint_file`: reading a ``.ckpt`` (torch, imported only
  there) or an ``.npz`` of ``state_dict`` arrays;
- :mod:`~trdetr_jax.official.lighthouse`: lighthouse's TR-DETR checkpoint options ->
  official options;
- :mod:`~trdetr_jax.official.convert`: the converter CLI,
  ``python -m trdetr_jax.official.convert``.
"""
