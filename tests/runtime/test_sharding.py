"""Mesh and shardings; the train step gives the same numbers on 1 and 4 devices (and FSDP)."""

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
from jax.sharding import PartitionSpec

from jdiffseg.runtime import sharding

REPO = Path(__file__).resolve().parents[2]


def test_fsdp_spec_splits_the_largest_divisible_axis():
    assert sharding.fsdp_spec((3, 3, 64, 128), 4) == PartitionSpec(None, None, None, "data")
    assert sharding.fsdp_spec((3, 3, 130, 126), 4) == PartitionSpec()  # nothing divisible
    assert sharding.fsdp_spec((128,), 4) == PartitionSpec()  # too small to bother
    assert sharding.fsdp_spec((256, 512), 1) == PartitionSpec()


def test_mesh_and_batch_size_checks():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("replica", "data") and mesh.shape["replica"] == 1
    assert mesh.devices.size == jax.device_count()
    assert sharding.check_batch_size(8 * jax.device_count(), mesh, "b") == 8 * jax.device_count()
    if jax.device_count() > 1:
        with pytest.raises(ValueError, match=r"config\.data\.batch_size=3"):
            sharding.check_batch_size(3, mesh, "config.data.batch_size")


def test_distributed_needs_all_explicit_fields():
    import ml_collections

    cfg = ml_collections.ConfigDict(dict(distributed=True, coordinator_address="127.0.0.1:1",
                                         num_processes=None, process_id=None))
    with pytest.raises(ValueError, match=r"num_processes and config\.train\.process_id"):
        sharding.maybe_initialize_distributed(cfg)
    cfg.distributed = False
    sharding.maybe_initialize_distributed(cfg)  # a no-op


STEP_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, "tests")
    from train_support import tiny_config
    from jdiffseg.training import optim
    from jdiffseg.runtime import sharding
    from jdiffseg.training import train
    from jdiffseg.models import build_model

    config = tiny_config("unused")
    config.train.grad_accum = 2
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
             "mask": (rng.uniform(size=(8, 16, 16, 1)) > 0.5).astype(np.float32)}
    model = build_model(config.model, image_channels=3)
    tx = optim.make_optimizer(config.train)
    init = train.init_train_state(config, model, tx, (8, 16, 16, 3))
    out = {}
    for name, devices, fsdp in (("one", jax.devices()[:1], False), ("fsdp", jax.devices(), True)):
        mesh = sharding.make_mesh(devices)
        abstract = jax.eval_shape(init, jax.random.key(0))
        shard = sharding.state_shardings(abstract, mesh, fsdp=fsdp)
        state = jax.jit(init, out_shardings=shard)(jax.random.key(0))
        step = train.jit_train_step(train.make_train_step(config, model, tx), shard, mesh)
        losses = []
        for _ in range(2):
            state, m = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
            losses.append(float(m["loss"]))
        leaves = [np.asarray(x).ravel() for x in jax.tree.leaves(state.params)]
        out[name] = {"loss": losses, "params": np.concatenate(leaves).tolist()}
    print("RESULT" + json.dumps(out))
''')


@pytest.mark.slow
def test_one_and_four_devices_agree():
    """Data-parallel over 4 devices with FSDP and 2 accumulated micro-batches = 1 device."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", STEP_SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    out = json.loads(line[len("RESULT"):])
    np.testing.assert_allclose(out["fsdp"]["loss"], out["one"]["loss"], rtol=1e-5)
    np.testing.assert_allclose(out["fsdp"]["params"], out["one"]["params"], rtol=1e-4, atol=1e-6)
    assert out["one"]["loss"][0] != out["one"]["loss"][1]  # the params did change
