"""Nothing lost, nothing silently wrong: refused resumes leave the workdir alone, damaged
checkpoints fall back to the newest intact one, run time adds up across processes.

One tiny run is trained once per module and stopped after its step-9 checkpoint (kept: the
best evaluated step and step 9); each test works on a copy of its workdir. ``reference`` is
that run resumed undamaged to the end: a run that falls back to an older checkpoint must
finish bit-identical to it (train state and loop state never come from different steps).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from _tiny_run import ROOT, enable_compilation_cache, tiny_config
from test_resume import records, saved  # one copy of the checkpoint / metrics readers

from trdetr_jax import checkpointing, data, errors, evaluate, rundir, train


class Interrupt(Exception):
    pass


def config_of(cache_dir: pathlib.Path):
    config = tiny_config(cache_dir / "demo")
    config.train.num_epochs = 3
    return config


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("reliability")
    enable_compilation_cache(path / "xla")
    yield path
    enable_compilation_cache(None)


@pytest.fixture(scope="module")
def partial(cache_dir):
    """A 3-epoch run (12 steps) stopped while loading batch 11: checkpoints best + 9."""
    workdir = cache_dir / "partial"
    batches, count = data.train_batches, [0]

    def interrupted(*args, **kwargs):
        for batch in batches(*args, **kwargs):
            count[0] += 1
            if count[0] == 11:
                raise Interrupt
            yield batch

    data.train_batches = data.batching.train_batches = interrupted  # the loop reads the latter
    try:
        with pytest.raises(Interrupt):
            train.train_and_evaluate(config_of(cache_dir), str(workdir))
    finally:
        data.train_batches = data.batching.train_batches = batches
    steps = checkpointing.RunCheckpoints(workdir / "checkpoints", read_only=True).candidate_steps()
    assert steps[0] == 9 and len(steps) == 2, steps
    return workdir


def copy_run(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def reference(partial, cache_dir):
    workdir = copy_run(partial, cache_dir / "reference")
    summary = train.train_and_evaluate(config_of(cache_dir), str(workdir))
    return workdir, summary


def assert_same_end(a, b):
    params_a, loop_a = saved(a)
    params_b, loop_b = saved(b)
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    for loop in (loop_a, loop_b):
        loop.pop("log_sums"), loop.pop("wall_time_s")
    assert loop_a == loop_b
    assert records(a) == records(b)
    assert (a / "best_val_preds.jsonl").read_text() == (b / "best_val_preds.jsonl").read_text()


def snapshot(workdir: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(workdir)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(workdir.rglob("*"))
    }


# ------------------------------------------------------------------ refused resume


@pytest.mark.parametrize(
    "change, listed",
    [
        ({"model.dim_feedforward": 64}, "model.dim_feedforward 32 -> 64"),
        ({"seed": 7}, "seed 2017 -> 7"),
        ({"train.batch_size": 8, "model.num_queries": 5}, "model.num_queries 4 -> 5"),
    ],
    ids=["model-size", "seed", "two-keys"],
)
def test_refused_resume_changes_nothing(partial, cache_dir, tmp_path, change, listed):
    workdir = copy_run(partial, tmp_path / "run")
    before = snapshot(workdir)
    config = config_of(cache_dir)
    for key, value in change.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    with pytest.raises(errors.RunError, match="cannot resume") as info:
        train.train_and_evaluate(config, str(workdir))
    message = str(info.value)
    assert "\n" not in message and listed in message
    for key in change:
        assert key in message
    assert snapshot(workdir) == before


def test_allowed_changes_are_not_refused():
    old = {"seed": 1, "optim": {"lr": 1e-4}, "model": {"dropout": 0.1, "hidden_dim": 8}}
    new = {"seed": 1, "optim": {"lr": 1e-3}, "model": {"dropout": 0.2, "hidden_dim": 8}}
    assert rundir.resume_conflicts(old, new) == []
    new["model"]["hidden_dim"] = 16
    assert rundir.resume_conflicts(old, new) == ["model.hidden_dim 8 -> 16"]


# ------------------------------------------------------------------ damaged checkpoints


def damage(step_dir: pathlib.Path, kind: str) -> None:
    state = step_dir / "state"
    data_files = [p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files
    if kind == "truncate-data":
        for p in data_files:
            with open(p, "r+b") as f:
                f.truncate(os.path.getsize(p) // 2)
    elif kind == "delete-data":
        for p in data_files:
            p.unlink()
    else:
        action, name = kind.split(":")
        path = {"manifest": state / "manifest.ocdbt", "metadata": state / "_METADATA"}.get(
            name, step_dir / "loop" / "metadata"
        )
        assert path.is_file(), path
        if action == "delete":
            path.unlink()
        else:
            path.write_bytes(b"\x00garbled\xff" * 3)


DAMAGE = [
    "truncate-data",
    "delete-data",
    "delete:manifest",
    "garble:manifest",
    "delete:metadata",
    "garble:metadata",
    "delete:loop",
    "garble:loop",
]


# Two damage kinds in the fast suite, all of them with -m slow.
@pytest.mark.parametrize(
    "kind",
    [
        k if k in ("truncate-data", "garble:manifest") else pytest.param(k, marks=pytest.mark.slow)
        for k in DAMAGE
    ],
)
def test_damaged_latest_checkpoint_falls_back(partial, reference, cache_dir, tmp_path, kind):
    workdir = copy_run(partial, tmp_path / "run")
    damage(workdir / "checkpoints" / "9", kind)
    summary = train.train_and_evaluate(config_of(cache_dir), str(workdir))
    assert summary["steps"] == 12 and summary["best_score"] == reference[1]["best_score"]
    assert_same_end(reference[0], workdir)
    log = (workdir / "train.log").read_text()
    if "checkpoint step 9" in log:  # it could not be read: fell back, moved aside
        assert "cannot be read" in log
        assert (workdir / checkpointing.DAMAGED_SUBDIR / "9").is_dir()
        assert "resuming" in log and "from step 9 " not in log
    else:  # Orbax did not need the damaged file: resumed from step 9 itself
        assert kind == "delete:metadata", log
        assert "from step 9 " in log


def test_every_checkpoint_damaged_is_one_error(partial, cache_dir, tmp_path):
    workdir = copy_run(partial, tmp_path / "run")
    for step_dir in (workdir / "checkpoints").iterdir():
        if step_dir.name.isdigit():
            damage(step_dir, "garble:loop")
    with pytest.raises(errors.RunError, match="no checkpoint of .* can be read") as info:
        train.train_and_evaluate(config_of(cache_dir), str(workdir))
    assert "\n" not in str(info.value)


def test_evaluate_checkpoint_falls_back_from_a_damaged_best(partial, tmp_path, capsys):
    workdir = copy_run(partial, tmp_path / "run")
    gt = json.loads((workdir / "config.json").read_text())["data"]["eval_path"]
    best = checkpointing.RunCheckpoints(workdir / "checkpoints", read_only=True).best_step()
    assert best in (4, 8)
    damage(workdir / "checkpoints" / str(best), "truncate-data")
    out = tmp_path / "preds.jsonl"
    assert (
        evaluate.run(["--checkpoint", str(workdir), "--gt", gt, "--save-submission", str(out)]) == 0
    )
    assert len(out.read_text().splitlines()) == 6
    for step_dir in (workdir / "checkpoints").iterdir():
        if step_dir.name.isdigit():
            damage(step_dir, "garble:loop")
    capsys.readouterr()
    assert evaluate.run(["--checkpoint", str(workdir), "--gt", gt]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --checkpoint") and "can be read" in err[0]


def test_restore_intact_never_mixes_steps(tmp_path):
    import jax.numpy as jnp

    ckpt = checkpointing.RunCheckpoints(tmp_path / "ck")
    for step in (3, 6):
        state = {"step": jnp.asarray(step, jnp.int32), "w": jnp.full((2, 3), float(step))}
        # Step 3 is kept as the best (evaluated) step, step 6 as the latest.
        ckpt.save(state, checkpointing.LoopState(step=step, epoch=step), score=1.0 / step)
    ckpt.close()
    (tmp_path / "ck" / "6" / "loop" / "metadata").unlink()  # the state of step 6 is intact
    ckpt = checkpointing.RunCheckpoints(tmp_path / "ck", read_only=True)
    abstract = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "w": jax.ShapeDtypeStruct((2, 3), jnp.float32),
    }
    reported = []
    step, state, loop = ckpt.restore_intact(
        abstract, ckpt.candidate_steps(), lambda s, why: reported.append((s, why))
    )
    assert step == 3 and loop.epoch == 3 and np.all(np.asarray(state["w"]) == 3.0)
    assert [s for s, _ in reported] == [6] and "\n" not in reported[0][1]


# ------------------------------------------------------------------ the run record


def test_wall_time_adds_up_over_processes_and_finished_rerun(reference, tmp_path, cache_dir):
    _, loop9 = saved(reference[0].parent / "partial", 9)
    _, loop12 = saved(reference[0])
    assert 0 < loop9["wall_time_s"] < loop12["wall_time_s"]
    assert reference[1]["wall_time_s"] >= loop12["wall_time_s"]
    workdir = copy_run(reference[0], tmp_path / "run")
    again = train.train_and_evaluate(config_of(cache_dir), str(workdir))
    assert again["epochs"] == 3 and again["steps"] == 12
    assert again["wall_time_s"] > loop12["wall_time_s"]
    assert json.loads((workdir / "summary.json").read_text())["wall_time_s"] == again["wall_time_s"]
    assert "is finished (step 12, 3 epochs)" in (workdir / "train.log").read_text()


# ------------------------------------------------------------------ command-line errors


def run_main(args, cwd=ROOT):
    proc = subprocess.run(
        [sys.executable, "-m", "trdetr_jax.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stderr.strip().splitlines()


def error_lines(lines):
    assert not any("Traceback" in x for x in lines), lines
    return [x for x in lines if x.startswith("error:")]


def test_config_key_typo_is_one_line(tmp_path):
    rc, err = run_main(["--config.train.num_epoch=3", f"--workdir={tmp_path / 'w'}"])
    assert rc == 2
    assert err == [
        "error: --config.train.num_epoch=3: no config field 'num_epoch'; did you mean "
        '"num_epochs" instead of "num_epoch"?'
    ]


def test_ctrl_c_is_one_line_saying_how_to_resume(tmp_path):
    # The training itself interrupted at once (Ctrl-C): what main makes of it.
    code = (
        "import sys; from trdetr_jax import main, train\n"
        "def interrupted(config, workdir): raise KeyboardInterrupt\n"
        "train.train_and_evaluate = interrupted\n"
        f"sys.argv = ['trdetr_jax.main', '--workdir={tmp_path / 'w'}']\n"
        "main.run()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 130
    assert proc.stderr.strip().splitlines() == [
        f"interrupted: rerun the same command (--workdir={tmp_path / 'w'}) to resume from its "
        "last checkpoint"
    ]


@pytest.mark.parametrize("override", [[], ["--config.train.num_epochs=2"]])
def test_missing_config_file_is_one_line(tmp_path, override):
    missing = tmp_path / "nope.py"
    rc, err = run_main([f"--config={missing}", *override, f"--workdir={tmp_path / 'w'}"])
    assert (rc, err) == (2, [f"error: --config: no such file: {missing}"])
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("case", ["batch-size-0", "workdir-under-a-file", "seed-refused"])
def test_user_errors_of_main_are_one_line(partial, tmp_path, case):
    cache = f"--config.data.cache_dir={tmp_path / 'demo'}"
    small = ["--config.data.demo.n_train=8", "--config.data.demo.n_val=4"]
    if case == "batch-size-0":
        args, expected = ["--config.train.batch_size=0"], "config.train.batch_size must be"
    elif case == "workdir-under-a-file":
        (tmp_path / "file").write_text("")
        args, expected = [f"--workdir={tmp_path / 'file' / 'w'}"], "is not a directory"
    else:
        workdir = copy_run(partial, tmp_path / "run")
        before = snapshot(workdir)
        args, expected = (
            [f"--workdir={workdir}", "--config.seed=7", cache, *small],
            "seed 2017 -> 7",
        )
    if case != "seed-refused":
        args += [cache, *small]
    rc, err = run_main(args)
    lines = error_lines(err)
    assert rc == 1 and len(lines) == 1 and expected in lines[0], err
    if case == "seed-refused":
        assert snapshot(workdir) == before


def test_unwritable_workdir_is_refused_before_anything(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rundir.tempfile, "mkstemp", denied)
    workdir = tmp_path / "new" / "run"
    with pytest.raises(errors.RunError, match=r"cannot write in .*\(Permission denied\)$"):
        train.train_and_evaluate(config_of(tmp_path), str(workdir))
    assert not (tmp_path / "new").exists() and not (tmp_path / "demo").exists()


def test_predict_cli_errors_are_one_line(tmp_path, capsys):
    from trdetr_jax import predict

    assert predict.main([str(tmp_path / "none"), "qvhighlights:val", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "config.json not found" in err[0]
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage line, status 2
        predict.main(["only-one"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("usage: python -m trdetr_jax.predict")
