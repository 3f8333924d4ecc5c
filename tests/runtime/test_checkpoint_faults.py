"""Damaged checkpoints and failed writes: fall back to the newest step that restores, move the
damaged one aside (never delete), fail loudly when asked for it; a save that cannot be written
stops with one line, leaves no temporary directory, and the run resumes from the last good step.
A full disk is simulated by a file-size limit that makes the checkpointer's writes fail."""

from __future__ import annotations

import errno
import io
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.runtime import checkpoint, io_errors

REPO = Path(__file__).resolve().parents[2]


def _state(v: float) -> dict:
    """A few arrays of incompressible data (so the files are big enough to fail to write)."""
    rng = np.random.default_rng(int(v))
    return {f"w{i}": jnp.asarray(rng.normal(size=16384).astype(np.float32)) + v for i in range(4)}


def _save(workdir: Path, steps: list[int], dice: list[float] | None = None) -> None:
    ckpt = checkpoint.Checkpointer(str(workdir), keep=5, best_metric="val_dice")
    for step, d in zip(steps, dice or [s / 10 for s in steps], strict=True):
        ckpt.save(step, _state(step), metrics={"val_dice": d})
    ckpt.close()


def _truncate_data(workdir: Path, step: int) -> None:
    """What a crashed storage node or a copy that ran out of space leaves: short data files."""
    files = [
        p
        for p in (workdir / "checkpoints" / str(step) / "state").rglob("*")
        if p.is_file() and p.parent.name == "d"
    ]
    assert files
    for path in files:
        os.truncate(path, 10)


def _listing(workdir: Path) -> list[str]:
    return sorted(os.listdir(workdir / "checkpoints"))


def test_resume_falls_back_to_the_newest_step_that_restores(tmp_path, caplog):
    _save(tmp_path, [1, 2, 3])
    _truncate_data(tmp_path, 3)
    _truncate_data(tmp_path, 2)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=5, best_metric="val_dice")
    state, meta = ckpt.restore("latest", checkpoint.abstract_like(_state(0)))
    assert meta["step"] == 1
    np.testing.assert_array_equal(state["w0"], _state(1)["w0"])
    # Moved aside, not deleted; orbax no longer lists them; each named in one line.
    assert _listing(tmp_path) == ["1", "2.corrupt", "3.corrupt"] and ckpt.all_steps() == [1]
    lines = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert lines[0].startswith("checkpoint step 3 does not restore (ValueError: OUT_OF_RANGE")
    assert "moved it aside to" in lines[0] and lines[0].endswith("resuming from step 1")
    ckpt.save(2, _state(22))  # the run goes on and writes step 2 again
    ckpt.close()
    assert _listing(tmp_path) == ["1", "2", "2.corrupt", "3.corrupt"]


def test_readers_skip_without_writing_and_an_explicit_step_fails_loudly(tmp_path, caplog):
    _save(tmp_path, [1, 2, 3])
    _truncate_data(tmp_path, 3)  # also the best by val_dice
    before = _listing(tmp_path)
    ckpt = checkpoint.Checkpointer(str(tmp_path), best_metric="val_dice", read_only=True)
    assert ckpt.restore("best")[1]["step"] == 2
    assert "checkpoint step 3 in" in caplog.text and "skipped it, using step 2" in caplog.text
    with pytest.raises(checkpoint.CheckpointRestoreError, match=r"step 3 in .* does not restore"):
        ckpt.restore(3)
    with pytest.raises(checkpoint.CheckpointRestoreError, match=r"step 3 in .* does not restore"):
        ckpt.restore("3")
    ckpt.close()
    assert _listing(tmp_path) == before


def test_best_falls_back_to_the_next_best_then_latest_to_the_newest(tmp_path):
    _save(tmp_path, [1, 2, 3], dice=[0.5, 0.1, 0.9])
    _truncate_data(tmp_path, 3)
    ckpt = checkpoint.Checkpointer(str(tmp_path), best_metric="val_dice", read_only=True)
    assert ckpt.candidates("best") == [3, 1, 2] and ckpt.candidates("latest") == [3, 2, 1]
    assert ckpt.restore("best")[1]["step"] == 1
    assert ckpt.restore("latest")[1]["step"] == 2
    ckpt.close()


def test_when_nothing_restores_nothing_is_moved_and_all_tries_are_listed(tmp_path):
    _save(tmp_path, [1, 2])
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=5, best_metric="val_dice")
    wrong = checkpoint.abstract_like({"w0": jnp.zeros(3)})  # a config that no longer fits
    with pytest.raises(checkpoint.CheckpointRestoreError) as info:
        ckpt.restore("latest", wrong)
    message = str(info.value)
    assert "no checkpoint in" in message and "none was moved" in message
    assert "step 2: " in message and "step 1: " in message and "\n" not in message
    assert _listing(tmp_path) == ["1", "2"]
    ckpt.close()


def _fail_then_resume(workdir: str) -> dict:
    """Saves step 1, makes writes fail, tries step 2, lifts the limit, resumes and saves step 2.
    Run in a process of its own: the limit applies to the whole process."""
    ckpt = checkpoint.Checkpointer(workdir, keep=5)
    ckpt.save(1, _state(1))
    ckpt.wait()
    free = _limit_file_size()
    report = io.StringIO()
    try:
        ckpt.save(2, _state(2))
        ckpt.wait()
    except io_errors.RunIOError as e:
        io_errors.report(e, report)
    after_failure = sorted(os.listdir(checkpoint.checkpoint_dir(workdir)))
    free()
    ckpt = checkpoint.Checkpointer(workdir, keep=5)
    state, meta = ckpt.restore("latest", checkpoint.abstract_like(_state(0)))
    ckpt.save(2, _state(2))
    ckpt.close()
    return {
        "report": report.getvalue(),
        "after_failure": after_failure,
        "resumed_at": meta["step"],
        "restored_exactly": bool(np.array_equal(state["w3"], _state(1)["w3"])),
        "final": sorted(os.listdir(checkpoint.checkpoint_dir(workdir))),
    }


def _limit_file_size() -> Callable[[], None]:
    """Makes writes past 30 kB fail (EFBIG) in this process; returns the function that undoes it."""
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, limits[1]))

    def undo() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)

    return undo


SCENARIO = """
import json, sys
sys.path.insert(0, "tests/runtime")
import test_checkpoint_faults as t
print(json.dumps(t._fail_then_resume(sys.argv[1])))
"""


def test_failing_writes_stop_with_one_line_no_leftovers_and_resume(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    run, code = tmp_path / "run", errno.EFBIG
    argv = [sys.executable, "-c", SCENARIO, str(run)]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    report = out["report"].splitlines()
    assert report[0].startswith(f"could not save checkpoint step 2 in {run}/checkpoints: ")
    assert report[0].endswith(
        f"[Errno {code}] {os.strerror(code)}; last complete checkpoint: step 1 "
        f"({run}/checkpoints/1)"
    )
    assert report[1] == "Traceback (most recent call last):"
    assert out["report"].count("Traceback (most recent call last)") == 1
    assert out["after_failure"] == ["1"]  # the unfinished step-2 directory is gone
    assert out["resumed_at"] == 1 and out["restored_exactly"]
    assert out["final"] == ["1", "2"]
    # orbax's background threads report nothing more: the traceback above is the only one.
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
