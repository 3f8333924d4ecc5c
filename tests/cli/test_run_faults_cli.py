"""The commands on a run that cannot go on as asked: a locked workdir, a failing disk, a damaged
checkpoint asked for by its step. One line saying what (for I/O failures then the traceback
once) and exit status 1; nothing written into the run."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from lock_support import plant_lock
from run_support import write_run
from train_support import tiny_config

from jdiffseg.cli import analyze as cli_analyze
from jdiffseg.cli import evaluate as cli_evaluate
from jdiffseg.cli import train as cli_train
from jdiffseg.runtime import lock, run_dir

ROOT = Path(__file__).resolve().parents[2]


def test_locked_workdir_is_refused_in_one_line(tmp_path, capsys):
    plant_lock(tmp_path)  # a live trainer: this test's parent process
    argv = [f"--config={ROOT}/configs/default.py", f"--workdir={tmp_path}"]
    assert cli_train.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"jdiffseg train: {tmp_path} is being trained by another process")
    assert f"PID {os.getppid()}" in err and "\n" not in err
    assert os.listdir(tmp_path) == [lock.LOCK_FILE]  # nothing written


def test_io_failure_is_one_line_then_the_traceback(tmp_path, capsys, monkeypatch):
    def full_disk(workdir, config):
        path = os.path.join(workdir, "config.json.tmp")
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(run_dir, "write_config", full_disk)
    argv = [f"--config={ROOT}/configs/default.py", f"--workdir={tmp_path}"]
    assert cli_train.main(argv) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (
        f"training {tmp_path} stopped: {tmp_path}/config.json.tmp: [Errno 28] No space left on "
        f"device; last complete checkpoint: none in {tmp_path}/checkpoints"
    )
    assert lines[1] == "Traceback (most recent call last):" and lines[-1].startswith("OSError")
    assert sum(line.startswith("Traceback") for line in lines) == 1
    assert not (tmp_path / lock.LOCK_FILE).exists()  # released on the way out


def test_a_damaged_checkpoint_asked_for_fails_in_one_line(tmp_path, capsys):
    config = tiny_config(tmp_path / "data")
    config.data.num_test_examples, config.analysis.num_images = 4, 4
    run = tmp_path / "run"
    write_run(run, config, step=3)
    for path in (run / "checkpoints" / "3" / "state").rglob("*"):
        if path.parent.name == "d":
            os.truncate(path, 10)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for main, section in ((cli_evaluate.main, "eval"), (cli_analyze.main, "analysis")):
        assert main([f"--workdir={run}", f"--config.{section}.checkpoint=3"]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"checkpoint step 3 in {run}/checkpoints does not restore: " in err
    # With no step asked for, every step is tried; none restores, so the command says so.
    assert cli_evaluate.main([f"--workdir={run}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no checkpoint in" in err and "none was moved (tried step 3: " in err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # readers wrote nothing
