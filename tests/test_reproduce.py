"""experiments/reproduce.py: cells, configs, the paper-vs-ours table, a tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "experiments/reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["reproduce"]


def test_cells_get_their_configs_and_switches(reproduce):
    bk = next(c for c in reproduce.TABLES[3] if c.name == "BK")
    config = reproduce.load_config(bk, tiny=False)
    assert config.data.dataset == "tvsum" and config.data.domain == "BK"
    assert config.train.num_epochs == 2000 and config.data.max_v_l == 1000
    row_a = reproduce.TABLES[4][0]
    tiny = reproduce.load_config(row_a, tiny=True)
    assert tiny.data.demo.enabled and tiny.train.num_epochs == 1
    model = tiny.model
    assert (model.use_lgam, model.use_vfr, model.use_hd2mr, model.use_mr2hd) == (False,) * 4
    audio = reproduce.load_config(reproduce.TABLES[1][1], tiny=False)
    assert audio.data.a_feat_dir == "pann_features"
    assert len(reproduce.TABLES[4]) == 10 and len(reproduce.TABLES[3]) == 10
    # Every cell has a paper entry for every column (None where not filled in).
    for t, cells in reproduce.TABLES.items():
        for cell in cells:
            assert set(reproduce.PAPER[t][cell.name]) == set(reproduce.COLUMNS[t])


def test_table_prints_paper_beside_mean_and_std(reproduce, monkeypatch):
    monkeypatch.setitem(reproduce.PAPER[3]["BK"], "mAP", 91.0)
    monkeypatch.setitem(reproduce.PAPER[3]["VT"], "mAP", None)
    bk = [c for c in reproduce.TABLES[3] if c.name in ("BK", "VT")]
    text = reproduce.format_table(3, {"BK": [{"mAP": 0.8}, {"mAP": 0.9}]}, bk)
    lines = text.splitlines()
    assert lines[0] == "Table 3"
    assert lines[2] == "VT | - / -"
    assert lines[3] == "BK | 91.00 / 85.00±7.07"  # TVSum mAP: fraction -> percent
    monkeypatch.setitem(reproduce.PAPER[2]["VGG"], "MR-full-R1@0.5", 52.5)
    monkeypatch.setitem(reproduce.PAPER[2]["VGG"], "MR-full-R1@0.7", None)
    one = reproduce.format_table(2, {"VGG": [{"MR-full-R1@0.5": 50.0}]}, reproduce.TABLES[2][:1])
    assert one.splitlines()[-1] == "VGG | 52.50 / 50.00 | - / -"


def test_paper_values_are_percentages_and_empty_only_where_unsourced(reproduce):
    empty = set()
    for t, cells in reproduce.PAPER.items():
        for cell, metrics in cells.items():
            for metric, value in metrics.items():
                if value is None:
                    empty.add((t, cell))
                else:  # percent as printed in the paper, never a fraction
                    assert isinstance(value, float) and 1.0 < value <= 100.0, (t, cell, metric)
    # The cells no source gives (see the PAPER comments); everything else is filled.
    unsourced = {(2, "I3D")} | {(4, c.name) for c in reproduce.TABLES[4]}
    assert empty == unsourced


@pytest.mark.slow
def test_tiny_ablation_row_runs_end_to_end(reproduce, tmp_path, capsys):
    args = ["--table", "4", "--tiny", "--rows", "a", "--workdir-root", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path / "demo")]  # fmt: skip
    assert reproduce.main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "runs/table4/a/seed0/summary.json").read_text())
    brief = summary["best_brief"]
    want = f"{float(brief['MR-full-R1@0.5']):.2f}"
    assert out.strip().splitlines()[-1].startswith(f"a | - / {want} |")
    # A finished run is read back, not trained again.
    (tmp_path / "runs/table4/a/seed0/metrics.jsonl").unlink()
    assert reproduce.main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"a | - / {want} |")
    assert not (tmp_path / "runs/table4/a/seed0/metrics.jsonl").exists()


def test_a_run_that_cannot_start_is_one_line_naming_the_cell(reproduce, tmp_path, capsys):
    root = tmp_path / "nope"
    argv = ["--table", "1", "--rows", "SF+CLIP", "--feature-root", str(root)]
    assert reproduce.main([*argv, "--workdir-root", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: table 1 SF+CLIP seed 0: config.data.feature_root = {root} is not a directory"
    ]
