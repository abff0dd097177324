"""The loop's late metric fetch (``loop.LateMetrics``): each step of a dispatch is checked
for a finite loss and summed one dispatch late, and a non-finite step stops it before any
later step is counted. (The whole run stopping on a NaN loss with its last checkpoint intact
is ``test_resume.py``'s slow test.)"""

import types

import numpy as np
import pytest

from trdetr_jax import checkpointing, loop
from trdetr_jax.errors import NonFiniteLossError


class _Bar:
    def __init__(self):
        self.steps = []

    def update(self, step, text):
        self.steps.append(step)


def test_a_chunks_steps_are_checked_and_summed_one_dispatch_late():
    log = types.SimpleNamespace(bar=_Bar())
    state = checkpointing.LoopState()
    late = loop.LateMetrics(log, state, log_every=1000, total_steps=1000)

    late.push({"loss": np.array([1.0, 2.0]), "lr": np.array([0.5, 0.25])}, last_step=2, n=2)
    assert state.log_count == 0 and log.bar.steps == []  # nothing read while it runs

    late.push({"loss": np.array([4.0, np.nan]), "lr": np.array([0.5, 0.5])}, last_step=4, n=2)
    assert state.log_count == 2 and log.bar.steps == [1, 2]
    assert state.log_sums == {"loss": 3.0, "lr": 0.75}

    with pytest.raises(NonFiniteLossError, match=r"became nan at step 4 \(loss=nan, lr=0\.5\)"):
        late.drain()
    assert state.log_count == 3 and state.log_sums["loss"] == 7.0  # step 3 only
    assert log.bar.steps == [1, 2, 3]
    late.drain()  # the failed dispatch is not drained twice
    assert state.log_count == 3


def test_single_step_metrics_are_scalars():
    log = types.SimpleNamespace(bar=_Bar())
    state = checkpointing.LoopState()
    late = loop.LateMetrics(log, state, log_every=1000, total_steps=1000)
    late.push({"loss": np.float32(np.inf)}, last_step=7, n=1)
    with pytest.raises(NonFiniteLossError, match="became inf at step 7"):
        late.drain()
    assert state.log_count == 0


class _Log:
    bar = _Bar()

    def record(self, record):
        pass

    def info(self, *args, **kwargs):
        pass


def test_an_evaluation_tying_the_best_leaves_the_best_checkpoint_kept(tmp_path):
    import ml_collections

    ckpt = checkpointing.RunCheckpoints(tmp_path / "checkpoints")
    state = checkpointing.LoopState()
    tcfg = ml_collections.ConfigDict({"best_metric": "R1", "max_es_cnt": -1})
    paths = (tmp_path / "best.jsonl", tmp_path / "best_metrics.json")
    for step, r1 in ((5, 0.0), (10, 0.0), (15, 2.0), (20, 2.0), (25, 1.0)):
        state.step = step
        loop.record_eval(
            _Log(), state, {"brief": {"R1": r1}}, [], epoch=step, tcfg=tcfg, paths=paths
        )
        ckpt.save({"w": np.full(2, step, np.float32)}, state, score=loop.kept_score(state))
        best = 5 if step < 15 else 15  # the first of equal scores is the best
        assert state.best_step == best
        assert ckpt.best_step() == best
        assert sorted(ckpt.manager.all_steps()) == sorted({best, step})
    ckpt.close()
