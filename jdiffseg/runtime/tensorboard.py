"""Optional TensorBoard event files of a run (`config.train.tensorboard`), besides metrics.jsonl.

`WORKDIR/tensorboard/[NAME/]` holds the events; NAME keeps apart the writers of one workdir
(e.g. the replicas of a population). Training scalars go under `train/` (loss, lr,
images_per_sec, grad_norm, ...), validation metrics under `val/`, and evaluation adds the case
grid and reliability diagram as images under `eval/`. Written with tensorboardX, which needs no
TensorFlow: `pip install 'jdiffseg[tensorboard]'`. Only process 0 writes.
"""

from __future__ import annotations

import os
import time
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

EVENTS_DIR = "tensorboard"
EXTRA = "jdiffseg[tensorboard]"


def enabled(config: Any) -> bool:
    """Whether the run writes event files (False for a config.json older than the key)."""
    return bool(config.train.get("tensorboard", False))


def require() -> Any:
    """tensorboardX's modules (summary, protos, event writer); an ImportError naming the extra
    when it is not installed."""
    try:
        from tensorboardX import event_file_writer, summary
        from tensorboardX.proto import event_pb2, summary_pb2
    except ImportError as e:
        raise ImportError(
            f"config.train.tensorboard=True needs tensorboardX: pip install '{EXTRA}' "
            "(or set config.train.tensorboard=False)"
        ) from e
    return types.SimpleNamespace(summary=summary, event_pb2=event_pb2,
                                 summary_pb2=summary_pb2, writer=event_file_writer.EventsWriter)


def event_dir(workdir: str | os.PathLike[str], name: str = "") -> str:
    """Where the events of `workdir` (and of its writer `name`, if any) go."""
    return os.path.join(os.fspath(workdir), EVENTS_DIR, name)


def scalar_tag(key: str) -> str:
    """`val_dice` -> `val/dice`; any other key -> `train/<key>`."""
    return f"val/{key.removeprefix('val_')}" if key.startswith("val_") else f"train/{key}"


class EventWriter:
    """One event file of `event_dir(workdir, name)`, written synchronously: every `write_*` is on
    disk when it returns, so a run stopped by SIGTERM or killed loses nothing it logged.

    `purpose` goes into the file name, so that training and evaluation never share a file.
    `purge_step` (the first step a resumed run logs again) tells TensorBoard to drop the earlier
    events from that step on, as `runlog.MetricWriter` drops those lines of metrics.jsonl.
    """

    def __init__(
        self, workdir: str | os.PathLike[str], name: str = "", *, purpose: str,
        purge_step: int | None = None,
    ) -> None:
        self._tbx = require()
        directory = event_dir(workdir, name)
        os.makedirs(directory, exist_ok=True)
        self._file = self._tbx.writer(os.path.join(directory, "events"),
                                      f".{purpose}.{os.getpid()}")
        if purge_step is not None:
            log = self._tbx.event_pb2.SessionLog(status=self._tbx.event_pb2.SessionLog.START)
            self._write(self._tbx.event_pb2.Event(step=int(purge_step), session_log=log))

    def _write(self, event: Any) -> None:
        event.wall_time = time.time()
        self._file.write_event(event)
        self._file.flush()

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """One event with every scalar at `step`, tagged by `scalar_tag`."""
        values = [v for k, x in scalars.items()
                  for v in self._tbx.summary.scalar(scalar_tag(k), float(x)).value]
        self._write(self._tbx.event_pb2.Event(
            step=int(step), summary=self._tbx.summary_pb2.Summary(value=values)))

    def write_pngs(self, step: int, pngs: Mapping[str, str | os.PathLike[str]]) -> None:
        """PNG files as images at `step` (stored as they are), tagged by the keys of `pngs`."""
        summary_pb2 = self._tbx.summary_pb2
        values = []
        for tag, path in pngs.items():
            with Image.open(path) as image:
                width, height, bands = image.width, image.height, len(image.getbands())
            encoded = Path(path).read_bytes()
            values.append(summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
                height=height, width=width, colorspace=bands, encoded_image_string=encoded)))
        self._write(self._tbx.event_pb2.Event(
            step=int(step), summary=summary_pb2.Summary(value=values)))

    def close(self) -> None:
        self._file.close()


def write_pngs(
    workdir: str | os.PathLike[str], step: int, pngs: Mapping[str, str | os.PathLike[str]],
    name: str = "",
) -> None:
    """Adds PNG files as images at `step` to the run's events (a file of their own)."""
    writer = EventWriter(workdir, name, purpose="images")
    try:
        writer.write_pngs(step, pngs)
    finally:
        writer.close()
