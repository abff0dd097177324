"""The annotation files shipped inside the package."""

from __future__ import annotations

import filecmp

import pytest

from trdetr_jax import annotations
from trdetr_jax.evaluation import detect_dataset, read_jsonl

EXPECTED = {
    ("qvhighlights", "val"): ("qvhighlights", 1550),
    ("qvhighlights", "test"): ("qvhighlights", 1542),
    ("charades", "test"): ("charades", 3720),
    ("tvsum", "val"): ("tvsum", 10),
}


@pytest.mark.parametrize("dataset", list(annotations.FILES))
def test_every_split_is_shipped(dataset):
    for split in annotations.FILES[dataset]:
        assert annotations.path(dataset, split).stat().st_size > 0
    assert annotations.LICENSE.is_file()


@pytest.mark.parametrize("key", list(EXPECTED))
def test_ground_truth_splits_are_detected(key):
    dataset, n = EXPECTED[key]
    gt = read_jsonl(annotations.path(*key))
    assert detect_dataset(gt) == dataset and len(gt) == n


def test_same_bytes_as_shared(shared):
    for dataset, splits in annotations.FILES.items():
        for split, name in splits.items():
            assert filecmp.cmp(annotations.path(dataset, split), shared / "data" / dataset / name)


def test_total_size_is_small():
    total = sum(p.stat().st_size for p in annotations.ROOT.rglob("*.jsonl"))
    assert total < 10 * 2**20


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown dataset 'qvh'"):
        annotations.path("qvh", "val")
    with pytest.raises(ValueError, match="expected one of train, val, test, test_release"):
        annotations.path("qvhighlights", "dev")
