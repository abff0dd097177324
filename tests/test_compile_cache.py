"""The persistent compilation cache: a second process with the same config compiles nothing
that the first one could store (the eval step; the train step with the device matcher)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _tiny_run import ROOT

pytestmark = pytest.mark.slow  # two training processes

# A tiny run in a fresh process; prints the cache hits and misses JAX reports.
SCRIPT = r"""
import json, sys
import jax
from jax import monitoring
counts = {"hits": 0, "misses": 0}
def on_event(name, **kwargs):
    if name == "/jax/compilation_cache/cache_hits":
        counts["hits"] += 1
    elif name == "/jax/compilation_cache/cache_misses":
        counts["misses"] += 1
monitoring.register_event_listener(on_event)
sys.path.insert(0, "tests")
from _tiny_run import tiny_config
from trdetr_jax import train
config = tiny_config(__import__("pathlib").Path(sys.argv[1]) / "demo")
config.train.num_epochs = 1
config.train.matcher = sys.argv[3]
config.train.compilation_cache_dir = sys.argv[2]
train.train_and_evaluate(config, sys.argv[4])
print("COUNTS " + json.dumps(counts))
"""


def _run(tmp_path, cache, matcher, workdir):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(cache), matcher, str(workdir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("COUNTS ")][-1]
    return json.loads(line[len("COUNTS ") :])


def test_second_run_loads_every_step_from_the_cache_with_the_device_matcher(tmp_path):
    cache = tmp_path / "xla"
    first = _run(tmp_path, cache, "device", tmp_path / "run1")
    assert first["misses"] >= 3 and first["hits"] == 0, first  # init, train, eval at least
    second = _run(tmp_path, cache, "device", tmp_path / "run2")
    assert second == {"hits": first["misses"], "misses": 0}, (first, second)


def test_scipy_matcher_every_step_but_the_train_step_comes_from_the_cache(tmp_path):
    cache = tmp_path / "xla"
    first = _run(tmp_path, cache, "scipy", tmp_path / "run1")
    second = _run(tmp_path, cache, "scipy", tmp_path / "run2")
    # Everything but the train step (host callback: never written) comes from the cache.
    assert second["misses"] == 0 and second["hits"] == first["misses"], (first, second)
    assert len(list(cache.iterdir())) == first["misses"], sorted(p.name for p in cache.iterdir())
