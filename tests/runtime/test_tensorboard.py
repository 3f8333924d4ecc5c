"""TensorBoard event files: written beside metrics.jsonl when `train.tensorboard` is on, read back
here with a TFRecord parse of tensorboardX's own Event protobuf."""

from __future__ import annotations

import importlib.util
import struct
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from train_support import tiny_config

from jdiffseg.evaluation import evaluate
from jdiffseg.runtime import runlog, tensorboard
from jdiffseg.training import train

needs_tensorboardx = pytest.mark.skipif(
    importlib.util.find_spec("tensorboardX") is None, reason="tensorboardX is not installed"
)


def read_events(directory: Path) -> list[Any]:
    """Every Event of the event files in `directory`, file by file (TFRecord: 8-byte length,
    4-byte length CRC, the record, 4-byte record CRC)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + n])
            events.append(event)
            i += 12 + n + 4
    return events


def scalars(events: list[Any]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for event in events:
        for value in event.summary.value:
            if value.HasField("simple_value"):
                out[value.tag][event.step] = value.simple_value
    return out


def images(events: list[Any]) -> dict[str, tuple[int, int, int]]:
    """tag -> (step, height, width) of each image event."""
    return {v.tag: (e.step, v.image.height, v.image.width)
            for e in events for v in e.summary.value if v.HasField("image")}


@needs_tensorboardx
def test_metric_writer_mirrors_metrics_jsonl_and_purges_on_resume(tmp_path):
    writer = runlog.MetricWriter(str(tmp_path), tensorboard=True, events_name="replica_1")
    for step in (1, 2, 3):
        writer.write(step, loss=1.0 / step, lr=np.float32(1e-3 * step))
    writer.write(2, val_dice=0.25)
    events = read_events(tmp_path / "tensorboard" / "replica_1")
    got = scalars(events)
    assert got["train/loss"] == pytest.approx({1: 1.0, 2: 0.5, 3: 1 / 3})
    assert got["train/lr"] == pytest.approx({1: 1e-3, 2: 2e-3, 3: 3e-3})
    assert got["val/dice"] == {2: 0.25}
    # A run resumed at step 2 logs step 3 again: TensorBoard is told to drop steps >= 3.
    resumed = runlog.MetricWriter(str(tmp_path), resume_step=2, tensorboard=True,
                                  events_name="replica_1")
    resumed.write(3, loss=7.0)
    events = read_events(tmp_path / "tensorboard" / "replica_1")
    starts = [e.step for e in events if e.HasField("session_log") and e.session_log.status == 1]
    assert starts == [3]
    assert [r["step"] for r in runlog.read_metrics(str(tmp_path))] == [1, 2, 2, 3]


def test_missing_tensorboardx_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"jdiffseg\[tensorboard\]"):
        runlog.MetricWriter(str(tmp_path), tensorboard=True)
    assert not (tmp_path / "tensorboard").exists()
    runlog.MetricWriter(str(tmp_path)).write(1, loss=0.5)  # off: no tensorboardX needed


@needs_tensorboardx
@pytest.mark.slow
def test_training_and_evaluation_write_scalars_and_figures(tmp_path):
    config = tiny_config(tmp_path / "data", mode="feedforward", steps=2)  # the cheapest to run
    config.train.tensorboard = True
    config.data.num_test_examples = 4
    config.eval.bootstrap_resamples, config.eval.num_cases = 20, 2
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir))
    evaluate.evaluate(workdir)
    events = read_events(Path(tensorboard.event_dir(workdir)))
    got = scalars(events)
    logged = runlog.read_metrics(str(workdir))
    for key, tag in (("loss", "train/loss"), ("lr", "train/lr"),
                     ("images_per_sec", "train/images_per_sec"), ("val_dice", "val/dice")):
        expected = {r["step"]: r[key] for r in logged if key in r}
        assert expected and got[tag] == pytest.approx(expected, rel=1e-6), tag
    shown = images(events)
    for name in ("cases", "reliability"):
        with Image.open(workdir / "eval" / f"{name}.png") as png:
            assert shown[f"eval/{name}"] == (2, png.height, png.width)
