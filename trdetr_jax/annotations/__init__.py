"""Annotation files shipped with the package, so nobody has to hunt for them.

    >>> from trdetr_jax import annotations
    >>> annotations.path("qvhighlights", "val")
    PosixPath('.../trdetr_jax/annotations/qvhighlights/highlight_val_release.jsonl')

Splits:

* qvhighlights: ``train``, ``val``, ``test`` (the released test split *with* its ground
  truth, which the evaluation can score) and ``test_release`` (the public file without
  ground truth, as given to the official evaluation server);
* charades: ``train`` and ``test``. The official file of the test split is named
  ``charades_sta_val_tvr_format.jsonl``; ``val`` is accepted as an alias for it;
* tvsum: ``train`` and ``val`` (one validation video per domain).

The files are byte copies of the annotation files the TR-DETR repository distributes; their
licence (CC BY-NC-SA 4.0) is ``LICENSE-annotations`` next to this module.
"""

from __future__ import annotations

import pathlib

ROOT = pathlib.Path(__file__).resolve().parent
LICENSE = ROOT / "LICENSE-annotations"

FILES = {
    "qvhighlights": {
        "train": "highlight_train_release.jsonl",
        "val": "highlight_val_release.jsonl",
        "test": "highlight_test_with_gt.jsonl",
        "test_release": "highlight_test_release.jsonl",
    },
    "charades": {
        "train": "charades_sta_train_tvr_format.jsonl",
        "test": "charades_sta_val_tvr_format.jsonl",
        "val": "charades_sta_val_tvr_format.jsonl",
    },
    "tvsum": {
        "train": "tvsum_train.jsonl",
        "val": "tvsum_val.jsonl",
    },
}


def path(dataset: str, split: str) -> pathlib.Path:
    """Path of the shipped annotation file of `dataset` ('qvhighlights', 'charades',
    'tvsum') and `split`; ValueError naming the valid choices otherwise."""
    if dataset not in FILES:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(FILES)}")
    splits = FILES[dataset]
    if split not in splits:
        raise ValueError(
            f"unknown split {split!r} for {dataset}; expected one of {', '.join(splits)}"
        )
    file = ROOT / dataset / splits[split]
    if not file.is_file():
        raise FileNotFoundError(f"annotation file missing from the installation: {file}")
    return file
