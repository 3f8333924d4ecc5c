"""Sweep expansion and the three launchers (no training is run)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from jdiffseg.runtime import run_dir
from jdiffseg.study import sweep

SWEEP = """
SLURM = {"gpus-per-node": 4, "time": "01:00:00"}

def sweep(add):
    for lr in (1e-4, 3e-4):
        add("configs/default.py:variant=nuclei", **{"train.lr": lr})
    add("configs/default.py", name="plain", train__steps=7, model__channel_mult=(1, 2))
"""


@pytest.fixture
def sweep_file(tmp_path: Path) -> Path:
    path = tmp_path / "grid.py"
    path.write_text(SWEEP)
    return path


def test_expand_names_workdirs_and_argv(sweep_file, tmp_path):
    runs = sweep.expand(str(sweep_file), str(tmp_path / "out"))
    assert [r.name for r in runs] == [
        "default_variant=nuclei_lr=0.0001",
        "default_variant=nuclei_lr=0.0003",
        "plain",
    ]
    assert runs[2].workdir == str(tmp_path / "out" / "plain")
    argv = runs[2].argv("python")
    assert argv[:5] == ["python", "-m", "jdiffseg.cli.main", "train", "--config=configs/default.py"]
    assert "--config.train.steps=7" in argv and "--config.model.channel_mult=(1,2)" in argv


def test_default_sweep_dir_and_print_launcher(sweep_file, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert sweep.launch(str(sweep_file), launcher="print") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert "--workdir=runs/grid/plain" in shlex.split(lines[2])


def test_local_launcher_skips_finished_runs(sweep_file, tmp_path, monkeypatch, capsys):
    runs = sweep.expand(str(sweep_file), str(tmp_path))
    for run in runs[:2]:
        Path(run.workdir).mkdir(parents=True)
        run_dir.write_finished(run.workdir, {"step": 7})
    calls = []
    monkeypatch.setattr(sweep.subprocess, "call", lambda argv: calls.append(argv) or 0)
    assert sweep.launch(str(sweep_file), launcher="local", sweep_dir=str(tmp_path)) == 0
    assert len(calls) == 1 and f"--workdir={runs[2].workdir}" in calls[0]
    assert capsys.readouterr().out.count("finished, skipped") == 2
    monkeypatch.setattr(sweep.subprocess, "call", lambda argv: 1)
    assert sweep.launch(str(sweep_file), launcher="local", sweep_dir=str(tmp_path)) == 1


def test_paper_sweep_covers_the_grid():
    runs = sweep.expand("configs/sweeps/paper.py", "/tmp/paper")
    names = {r.name for r in runs}
    assert len(runs) == 3 * 3 * 4 + 3
    assert {
        "ensemdiff_isic2016_e2",
        "segdiff_monuseg_e1",
        "medsegdiff_her2_e3",
        "nnunet_isic2016_e1",
    } <= names


def test_bad_sweep_files_are_named(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ValueError, match="must define a function sweep"):
        sweep.expand(str(bad))
    dup = tmp_path / "dup.py"
    dup.write_text("def sweep(add):\n    add('a.py', name='x')\n    add('b.py', name='x')\n")
    with pytest.raises(ValueError, match="share the names"):
        sweep.expand(str(dup))
    with pytest.raises(FileNotFoundError, match=r"missing\.py"):
        sweep.expand(str(tmp_path / "missing.py"))
