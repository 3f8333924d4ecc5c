"""A real 2-process job on 127.0.0.1 (CPU collectives over gloo) against 1 process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent('''
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import numpy as np
    sys.path.insert(0, "tests")
    from train_support import tiny_config
    from jdiffseg.training import optim
    from jdiffseg.runtime import sharding
    from jdiffseg.training import train
    from jdiffseg.models import build_model

    workdir, data_dir, port, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    config = tiny_config(data_dir)
    config.train.distributed = True
    config.train.coordinator_address = f"127.0.0.1:{port}"
    config.train.num_processes, config.train.process_id = 2, pid
    sharding.maybe_initialize_distributed(config.train)
    assert jax.process_count() == 2 and jax.device_count() == 2

    # The same global batch, each process holding its half, vs the whole batch on one device.
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32),
             "mask": (rng.uniform(size=(4, 16, 16, 1)) > 0.5).astype(np.float32)}
    model = build_model(config.model, image_channels=3)
    tx = optim.make_optimizer(config.train)
    init = train.init_train_state(config, model, tx, (4, 16, 16, 3))
    out = {}
    for name, devices in (("local", jax.local_devices()), ("global", jax.devices())):
        mesh = sharding.make_mesh(devices)
        shard = sharding.state_shardings(jax.eval_shape(init, jax.random.key(0)), mesh)
        state = jax.jit(init, out_shardings=shard)(jax.random.key(0))
        step = train.jit_train_step(train.make_train_step(config, model, tx), shard, mesh)
        if name == "local":
            b = jax.device_put(batch, sharding.batch_sharding(mesh))
        else:
            half = {k: v[2 * pid: 2 * pid + 2] for k, v in batch.items()}
            b = {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), v)
                 for k, v in half.items()}
        for _ in range(2):
            state, metrics = step(state, b)
        params = sharding.fetch(state.params)
        flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
        out[name] = {"loss": float(metrics["loss"]), "params": flat.tolist()}

    result = train.train_and_evaluate(config, workdir)
    out["val"] = result
    print("RESULT" + json.dumps(out))
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    # Output goes to files: an undrained pipe fills up and blocks its writer, which then
    # misses the other process's collectives and JAX's shutdown barrier.
    logs = [(tmp_path / f"stdout{i}", tmp_path / f"stderr{i}") for i in range(2)]
    procs = []
    for i, (out_path, err_path) in enumerate(logs):
        with open(out_path, "w") as stdout, open(err_path, "w") as stderr:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", WORKER, str(tmp_path / "run"), str(tmp_path / "data"),
                 str(port), str(i)], cwd=REPO, env=env, stdout=stdout, stderr=stderr))
    outs = []
    for p, (out_path, err_path) in zip(procs, logs, strict=True):
        p.wait(timeout=900)
        assert p.returncode == 0, err_path.read_text()[-3000:]
        line = next(x for x in out_path.read_text().splitlines() if x.startswith("RESULT"))
        outs.append(json.loads(line[len("RESULT"):]))
    for out in outs:
        np.testing.assert_allclose(out["global"]["loss"], out["local"]["loss"], rtol=1e-5)
        np.testing.assert_allclose(out["global"]["params"], out["local"]["params"],
                                   rtol=1e-4, atol=1e-6)
    assert outs[0]["val"] == outs[1]["val"] and "val_dice" in outs[0]["val"]
    data_item = tmp_path / "run" / "checkpoints" / "4" / "data"
    assert sorted(p.name for p in data_item.iterdir() if p.suffix == ".json") == [
        "process_0-of-2.json", "process_1-of-2.json"]
    assert (tmp_path / "run" / "finished.json").exists()
