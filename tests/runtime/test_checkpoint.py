"""Checkpointer: round trip, iterator position, keep-N + best, atomicity, read-only loading."""

from __future__ import annotations

import os
from pathlib import Path

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.config import schema
from jdiffseg.runtime import checkpoint, run_dir


def _loader(n: int = 40) -> grain.DataLoader:
    sampler = grain.samplers.IndexSampler(n, shard_options=grain.sharding.NoSharding(),
                                          shuffle=True, num_epochs=None, seed=3)
    return grain.DataLoader(data_source=list(range(n)), sampler=sampler,
                            operations=[grain.transforms.Batch(4)], worker_count=0)


def _state(v: float) -> dict:
    return {"params": {"w": jnp.full((3, 2), v)}, "ema_params": {"w": jnp.full((3, 2), -v)},
            "batch_stats": {}, "step": jnp.int32(int(v))}


def test_round_trip_with_iterator_position(tmp_path):
    it = iter(_loader())
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
    for step in range(1, 4):
        next(it)
        ckpt.save(step, _state(step), it)
    expected = [next(it) for _ in range(3)]
    ckpt.close()

    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
    fresh = iter(_loader())
    state, meta = ckpt.restore("latest", checkpoint.abstract_like(_state(0)), fresh)
    assert meta["step"] == 3 and ckpt.all_steps() == [2, 3]
    np.testing.assert_array_equal(state["params"]["w"], 3.0)
    for want in expected:  # the restored iterator continues where the saved one was
        np.testing.assert_array_equal(next(fresh), want)
    ckpt.close()


def test_keeps_latest_and_best(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, best_metric="val_dice")
    for step, dice in zip(range(1, 6), (0.1, 0.9, 0.3, 0.2, None), strict=True):
        ckpt.save(step, _state(step), metrics=None if dice is None else {"val_dice": dice})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4, 5] and ckpt.best_step() == 2
    assert ckpt.resolve("best") == 2 and ckpt.resolve("latest") == 5
    assert ckpt.metrics(2) == {"val_dice": 0.9}
    ckpt.save(5, _state(99))  # an existing step is not rewritten
    ckpt.close()
    lower = checkpoint.Checkpointer(str(tmp_path / "ece"), keep=1, best_metric="val_ece_top_label")
    for step, ece in ((1, 0.3), (2, 0.1), (3, 0.2)):
        lower.save(step, _state(step), metrics={"val_ece_top_label": ece})
    lower.wait()
    assert lower.best_step() == 2 and lower.all_steps() == [2, 3]
    lower.close()


def test_unfinished_save_is_ignored(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, async_save=False)
    ckpt.save(1, _state(1))
    ckpt.close()
    # A save killed half-way leaves orbax's temporary directory behind.
    partial = Path(checkpoint.checkpoint_dir(str(tmp_path))) / "2.orbax-checkpoint-tmp-123"
    (partial / "state").mkdir(parents=True)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
    assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
    state, _ = ckpt.restore("latest")
    np.testing.assert_array_equal(state["params"]["w"], 1.0)
    ckpt.close()


def test_load_variables_reads_ema_and_best(tmp_path):
    run_dir.write_config(str(tmp_path), schema.base_config())  # best by val_dice
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1, best_metric="val_dice")
    ckpt.save(1, _state(1), metrics={"val_dice": 0.8})
    ckpt.save(2, _state(2), metrics={"val_dice": 0.4})
    ckpt.close()
    before = sorted(os.listdir(checkpoint.checkpoint_dir(str(tmp_path))))
    variables, meta = checkpoint.load_variables(str(tmp_path), "best")
    assert meta["step"] == 1 and set(variables) == {"params"}
    np.testing.assert_array_equal(variables["params"]["w"], -1.0)  # EMA params
    variables, meta = checkpoint.load_variables(str(tmp_path), "latest", use_ema=False)
    np.testing.assert_array_equal(variables["params"]["w"], 2.0)
    assert sorted(os.listdir(checkpoint.checkpoint_dir(str(tmp_path)))) == before


def test_missing_checkpoints_are_reported(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no finished checkpoint in"):
        ckpt.restore("latest")
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 7"):
        ckpt.resolve(7)
    with pytest.raises(ValueError, match="'latest', 'best' or a step"):
        ckpt.resolve("newest")
    ckpt.close()


def test_metric_direction():
    assert checkpoint.higher_is_better("val_dice") and checkpoint.higher_is_better("val_iou")
    assert not checkpoint.higher_is_better("val_loss")
    assert not checkpoint.higher_is_better("val_ece_foreground")


def test_load_variables_falls_back_to_raw_params_without_ema(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1, best_metric=None)
    state = _state(2.0)
    state["ema_params"] = {}
    ckpt.save(1, state)
    ckpt.close()
    variables, meta = checkpoint.load_variables(str(tmp_path), "latest", use_ema=True)
    assert meta["step"] == 1 and set(variables) == {"params"}
    np.testing.assert_array_equal(variables["params"]["w"], 2.0)
