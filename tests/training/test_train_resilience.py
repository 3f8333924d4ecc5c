"""Never lose work: SIGTERM saves and exits, SIGKILL at a random moment + restart ends with the
same train state as an uninterrupted run (saved data position + per-step fold_in keys), for a
single run and for a population of three replicas."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jdiffseg.runtime import checkpoint

REPO = Path(__file__).resolve().parents[2]
STEPS = 8

RUNNER = textwrap.dedent('''
    import sys
    sys.path.insert(0, "tests")
    from train_support import shrink_model, tiny_config
    from jdiffseg.training import train

    config = shrink_model(tiny_config(sys.argv[2], steps=int(sys.argv[3])))
    config.train.population = int(sys.argv[4])
    config.train.checkpoint_every, config.train.eval_every, config.train.keep_checkpoints = 1, 0, 3
    train.train_and_evaluate(config, sys.argv[1])
''')


def _start(workdir: Path, data_dir: Path, population: int) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-c", RUNNER, str(workdir), str(data_dir), str(STEPS), str(population)]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _steps(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _wait_for_step(proc: subprocess.Popen, workdir: Path, above: int, timeout: float = 400) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if any(s > above for s in _steps(workdir)):
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended early (rc={proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no checkpoint after step {above} within {timeout}s")


def _state(workdir: Path) -> dict:
    """The whole train state of the last step: parameters, EMA, optimiser, step (per replica)."""
    ckpt = checkpoint.Checkpointer(str(workdir), best_metric=None, read_only=True)
    state, meta = ckpt.restore("latest")
    ckpt.close()
    assert meta["step"] == STEPS
    return jax.tree.map(np.asarray, state)


@pytest.mark.slow
@pytest.mark.parametrize("population", [1, 3])
def test_sigterm_then_sigkill_then_resume_matches_uninterrupted(tmp_path, population):
    data_dir = tmp_path / "data"
    ref = _start(tmp_path / "ref", data_dir, population)
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-2000:]
    reference = _state(tmp_path / "ref")
    if population > 1:  # the replicas differ, so each one is checked
        leaf = jax.tree.leaves(reference["params"])[0]
        assert leaf.shape[0] == population and not np.allclose(leaf[0], leaf[1])

    run = tmp_path / "run"
    proc = _start(run, data_dir, population)
    _wait_for_step(proc, run, 0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    assert "SIGTERM: saved a checkpoint at step" in proc.stderr.read()
    after_term = max(_steps(run))
    assert 0 < after_term < STEPS

    proc = _start(run, data_dir, population)
    _wait_for_step(proc, run, after_term)
    time.sleep(random.Random().uniform(0.0, 1.0))  # a random moment, maybe mid-save
    proc.kill()
    proc.wait()

    proc = _start(run, data_dir, population)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    assert "resuming" in proc.stderr.read()
    jax.tree.map(np.testing.assert_array_equal, _state(run), reference)
