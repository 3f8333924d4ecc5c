"""A population on a 2-D replica x data mesh (4 devices as 2 x 2): each replica's parameters live
on its own row of devices, the batch splits over each row, and training gives the numbers of the
same population on one device (per-replica data, so both axes of the batch are split)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from train_support import SIZE

from jdiffseg.models import build_model
from jdiffseg.runtime import run_dir, variables

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import json, sys
    import jax
    sys.path.insert(0, "tests")
    from train_support import shrink_model, tiny_config
    from jdiffseg.runtime import sharding
    from jdiffseg.training import train

    workdir, data_dir, rows, data_order = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    config = shrink_model(tiny_config(data_dir, steps=2))
    config.train.population, config.train.population_data = 2, data_order
    config.train.replica_devices = rows
    config.train.eval_every, config.train.checkpoint_every = 0, 2
    out = {}
    if rows > 1:
        mesh = sharding.make_mesh(replica_devices=rows)
        out["mesh"] = dict(mesh.shape)
        leaf = jax.ShapeDtypeStruct((2, 3, 3, 8), "float32")
        out["state_spec"] = list(sharding.population_shardings(leaf, mesh).spec)
        out["batch_specs"] = [list(sharding.population_batch_spec(mesh, per_replica))
                              for per_replica in (False, True)]
        errors = []
        for bad in ((3, 2), (2, 3), (1, 2)):  # (population, replica_devices)
            trial = shrink_model(tiny_config(data_dir, steps=1))
            trial.train.population, trial.train.replica_devices = bad
            try:
                train.train_and_evaluate(trial, workdir + f"_bad{bad[0]}{bad[1]}")
            except ValueError as e:
                errors.append(str(e))
        out["errors"] = errors
    train.train_and_evaluate(config, workdir)
    print("RESULT" + json.dumps(out))
''')


def _run(workdir: Path, data_dir: Path, devices: int, rows: int, data_order: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(workdir), str(data_dir), str(rows),
                           data_order], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def _params(workdir: Path) -> np.ndarray:
    """Both replicas' parameters, restored here on one device as evaluate restores them."""
    config = run_dir.read_config(workdir)
    model = build_model(config.model, image_channels=3)
    rows = []
    for k in range(2):
        params, _ = variables.restore(workdir, config, model, (SIZE, SIZE, 3), which=2,
                                      use_ema=False, replica=k)
        rows.append(np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(params)]))
    return np.stack(rows)


@pytest.mark.slow
def test_a_two_by_two_mesh_trains_what_one_device_trains(tmp_path):
    data_dir = tmp_path / "data"
    one = _run(tmp_path / "one", data_dir, 1, 1, "per_replica")
    grid = _run(tmp_path / "grid", data_dir, 4, 2, "per_replica")
    assert one == {}
    assert grid["mesh"] == {"replica": 2, "data": 2}
    assert grid["state_spec"] == ["replica"]
    # a shared batch splits over each row's devices; per-replica batches over rows, then devices
    assert grid["batch_specs"] == [["data"], ["replica", "data"]]
    assert "replica_devices=2 needs one process and a population (3) divisible" in (
        grid["errors"][0])
    assert "replica_devices=3 must be >= 1 and divide the number of devices (4)" in (
        grid["errors"][1])
    assert "config.train.population is 1" in grid["errors"][2]
    expected, got = _params(tmp_path / "one"), _params(tmp_path / "grid")
    # Adam moves a weight by about lr a step whatever its gradient's size, so where a gradient
    # is ~0 the sum's order (one device or two) can flip its sign: 2 lr a step at most, and rare
    lr = run_dir.read_config(tmp_path / "one").train.lr
    np.testing.assert_allclose(got, expected, rtol=0, atol=2 * lr * 2 + 1e-6)
    assert np.mean(np.abs(got - expected) > 1e-5) < 0.02
    assert not np.allclose(expected[0], expected[1])  # two different replicas
