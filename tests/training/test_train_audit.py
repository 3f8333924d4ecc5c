"""The training loop compiles its step once and reads device arrays only when it logs."""

from __future__ import annotations

from jax._src import array
from train_support import tiny_config

from jdiffseg.training import train


def test_one_compile_and_host_reads_only_at_log_steps(tmp_path, monkeypatch):
    config = tiny_config(tmp_path / "data", steps=8)
    config.train.log_every = 4
    config.train.eval_every = config.train.checkpoint_every = 0  # validate and save at the end
    compiled: list = []
    done = {"steps": 0}
    read_at: list[int] = []

    def counting_jit(*args, **kwargs):
        step = real_jit(*args, **kwargs)
        compiled.append(step)

        def run(state, batch):
            out = step(state, batch)  # the first call traces and compiles: still step 0
            done["steps"] += 1
            return out

        return run

    def recorded_value(self):
        read_at.append(done["steps"])
        return real_value.fget(self)

    # Every copy of a device array to the host (float(), np.asarray, jax.device_get, ...)
    # materialises it through `_value`: recording the step count there finds each sync.
    real_jit, real_value = train.jit_train_step, array.ArrayImpl._value
    monkeypatch.setattr(train, "jit_train_step", counting_jit)
    monkeypatch.setattr(array.ArrayImpl, "_value", property(recorded_value))
    train.train_and_evaluate(config, str(tmp_path / "run"))
    assert done["steps"] == 8
    assert compiled[0]._cache_size() == 1  # fixed shapes: every step's batch hits one trace
    assert 4 in read_at and set(read_at) <= {0, 4, 8}, sorted(set(read_at))
