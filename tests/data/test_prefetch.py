"""Device prefetch: same batches as the plain iterator, the consumed position as state, errors
raised at their batch, a synchronous depth 0, no thread left after close."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from data_fixtures import config

from jdiffseg.config import schema
from jdiffseg.data import build_dataset, make_loader, pipeline
from jdiffseg.data.prefetch import DevicePrefetcher
from jdiffseg.runtime import checkpoint, run_dir, sharding


class Source:
    """A grain-like iterator: batch i is {'x': [i, i]}; the state is the next index."""

    def __init__(self, fail_at: int | None = None, stop_at: int | None = None) -> None:
        self.position = 0
        self.fail_at, self.stop_at = fail_at, stop_at
        self.threads: set[str] = set()

    def __next__(self) -> dict[str, np.ndarray]:
        self.threads.add(threading.current_thread().name)
        i = self.position
        if i == self.stop_at:
            raise StopIteration
        self.position += 1
        if i == self.fail_at:
            raise OSError(f"corrupt record {i}")
        return {"x": np.full(2, i)}

    def get_state(self) -> dict[str, int]:
        return {"position": self.position}

    def set_state(self, state: dict[str, int]) -> None:
        self.position = state["position"]


class Counting:
    """A real iterator that counts the batches read from it."""

    def __init__(self, iterator: Any) -> None:
        self.iterator, self.reads = iterator, 0

    def __next__(self) -> Any:
        self.reads += 1
        return next(self.iterator)

    def get_state(self) -> Any:
        return self.iterator.get_state()

    def set_state(self, state: Any) -> None:
        self.iterator.set_state(state)


def _values(batches: list[dict[str, Any]]) -> list[int]:
    return [int(b["x"][0]) for b in batches]


def _wait_until(condition, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "device-prefetch"]


@pytest.fixture
def make():
    """DevicePrefetcher, closed after the test even when it fails (no thread leaks out)."""
    made: list[DevicePrefetcher] = []

    def build(*args, **kwargs) -> DevicePrefetcher:
        made.append(DevicePrefetcher(*args, **kwargs))
        return made[-1]

    yield build
    for it in made:
        it.close()


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_same_batches_as_the_plain_iterator(make, depth):
    it = make(Source(), jax.device_put, depth)
    got = [next(it) for _ in range(7)]
    assert all(isinstance(b["x"], jax.Array) for b in got)
    plain = Source()
    for b in got:
        np.testing.assert_array_equal(b["x"], next(plain)["x"])


def test_state_is_that_of_the_last_batch_consumed_not_of_the_read_ahead(make):
    source = Source()
    it = make(source, lambda b: b, depth=2)
    assert it.get_state() == {"position": 0}
    for k in range(1, 4):
        next(it)
        _wait_until(lambda k=k: source.position == k + 3)  # 2 queued + 1 waiting to be queued
        assert it.get_state() == {"position": k}


def test_set_state_continues_like_the_plain_iterator(make):
    it = make(Source(), lambda b: b, depth=2)
    [next(it) for _ in range(3)]
    saved = it.get_state()
    after = _values([next(it) for _ in range(4)])
    assert after == [3, 4, 5, 6]
    it.set_state(saved)
    assert _values([next(it) for _ in range(4)]) == after
    it.set_state({"position": 10})
    it.start_prefetch()
    assert _values([next(it)]) == [10] and it.get_state() == {"position": 11}


@pytest.mark.parametrize("depth", [0, 2])
def test_source_error_is_raised_at_its_batch(make, depth):
    it = make(Source(fail_at=3), lambda b: b, depth)
    assert _values([next(it) for _ in range(3)]) == [0, 1, 2]
    with pytest.raises(OSError, match="corrupt record 3"):
        next(it)
    assert it.get_state() == {"position": 3}
    assert _values([next(it)]) == [4]  # as a plain iterator: the source decides what follows
    it.close()
    assert not _prefetch_threads()


def test_device_error_is_raised_at_its_batch(make):
    def to_device(batch):
        if batch["x"][0] == 2:
            raise ValueError("cannot place batch 2")
        return batch

    it = make(Source(), to_device, depth=2)
    assert _values([next(it), next(it)]) == [0, 1]
    with pytest.raises(ValueError, match="cannot place batch 2"):
        next(it)


def test_stop_iteration_ends_the_iteration(make):
    it = make(Source(stop_at=5), lambda b: b, depth=2)
    assert _values(list(it)) == [0, 1, 2, 3, 4]
    assert not _prefetch_threads()


def test_depth_zero_reads_synchronously_in_the_callers_thread(make):
    source = Source()
    it = make(source, lambda b: b, depth=0)
    it.start_prefetch()
    assert source.position == 0
    next(it), next(it)
    assert source.position == 2 and it.get_state() == {"position": 2}
    assert source.threads == {threading.current_thread().name} and not _prefetch_threads()


def test_close_stops_the_thread_and_reading_again_continues_after_the_last_batch(make):
    source = Source()
    it = make(source, lambda b: b, depth=2)
    next(it)
    _wait_until(lambda: source.position == 4)  # the producer waits on a full queue
    it.close()
    assert not _prefetch_threads()
    assert _values([next(it), next(it)]) == [1, 2]
    it.close()
    assert not _prefetch_threads()


def test_grain_loader_round_trip_through_a_checkpoint(make, tmp_path):
    cfg = config(tmp_path, variant="lesion", image_size=8, num_train_examples=12,
                 num_val_examples=2, num_test_examples=2, batch_size=2)
    build_dataset(cfg)
    mesh = sharding.make_mesh(jax.devices()[:1])

    def wrapped() -> tuple[DevicePrefetcher, Counting]:
        source = Counting(iter(make_loader(cfg, "train", train=True, seed=1, shard=(0, 1))))
        return make(source, lambda b: pipeline.to_global(b, mesh), depth=2), source

    plain = iter(make_loader(cfg, "train", train=True, seed=1, shard=(0, 1)))
    expected = [next(plain)["image"] for _ in range(10)]  # past one epoch of 6 batches
    it, source = wrapped()
    for want in expected[:4]:
        np.testing.assert_array_equal(next(it)["image"], want)
    _wait_until(lambda: source.reads == 7)  # read ahead
    ckpt = checkpoint.Checkpointer(str(tmp_path / "run"), best_metric=None)
    ckpt.save(4, {"w": jnp.zeros(2)}, it)
    ckpt.close()
    it.close()

    ckpt = checkpoint.Checkpointer(str(tmp_path / "run"), best_metric=None)
    resumed, _ = wrapped()
    ckpt.restore("latest", data_iterator=resumed)
    ckpt.close()
    for want in expected[4:]:
        np.testing.assert_array_equal(next(resumed)["image"], want)
    resumed.close()
    assert not _prefetch_threads()


def test_prefetch_may_change_on_resume_unlike_the_data(tmp_path):
    config = schema.base_config()
    run_dir.write_config(str(tmp_path), config)
    saved = json.loads((tmp_path / run_dir.CONFIG_FILE).read_text())
    del saved["data"]["prefetch"]  # a run from before the key existed
    (tmp_path / run_dir.CONFIG_FILE).write_text(json.dumps(saved))
    config.data.prefetch = 0
    run_dir.check_resume_config(str(tmp_path), config)
    config.data.num_workers = 2
    with pytest.raises(ValueError, match=r"different config.data \(keys \['num_workers'\]\)"):
        run_dir.check_resume_config(str(tmp_path), config)
