"""Shared test set-up.

Tests that need the reference fixtures find them through one environment variable,
``TRDETR_SHARED`` (default: ``../shared`` beside the project root). Where that folder is
absent they skip with a visible reason, unless ``TRDETR_REQUIRE_SHARED=1`` (set by
``.ci/run``), in which case they fail. Tests that compare with PyTorch take the ``torch``
fixture and skip with a visible reason where torch is not installed.

Markers follow the fixtures: a test using ``shared`` (directly or through
``reference_dir`` / ``eval_dir``) is marked ``fixtures``, one using ``torch`` is marked
``torch``, so ``-m "fixtures or torch"`` selects exactly what a bare install skips.
"""

from __future__ import annotations

import os
import pathlib

import pytest

# Several tests need more than one CPU device (data-parallel checks); this must be set
# before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("TRDETR_SHARED", ROOT.parent / "shared")).resolve()


def _require() -> bool:
    return os.environ.get("TRDETR_REQUIRE_SHARED", "") not in ("", "0", "false")


@pytest.fixture(scope="session")
def shared() -> pathlib.Path:
    """The shared folder (fixtures, eval files, annotations), or a skip/fail."""
    path = shared_dir()
    if not (path / "reference").is_dir():
        msg = f"reference fixtures not found at {path} (set TRDETR_SHARED)"
        if _require():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def reference_dir(shared) -> pathlib.Path:
    return shared / "reference"


@pytest.fixture(scope="session")
def eval_dir(shared) -> pathlib.Path:
    return shared / "eval"


@pytest.fixture(scope="session")
def torch():
    """The torch module, or a skip: it is not a dependency (README's install has no torch)."""
    return pytest.importorskip("torch", reason="torch not installed (only needed for comparisons)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "shared" in names:
            item.add_marker(pytest.mark.fixtures)
        if "torch" in names:
            item.add_marker(pytest.mark.torch)
