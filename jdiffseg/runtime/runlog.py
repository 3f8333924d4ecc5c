"""What a run logs as it goes: `metrics.jsonl` and the progress bars.

`metrics.jsonl` holds one JSON object per logged step ({"step": ..., "loss": ..., ...}), easy to
aggregate over a sweep with pandas or `jq`. Only process 0 writes. A resumed run first drops
the lines of steps after its checkpoint (they are logged again, identically), so the file
always describes one uninterrupted run. With `tensorboard=True` the same scalars also go to
TensorBoard event files (`jdiffseg.runtime.tensorboard`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

from tqdm import tqdm

from jdiffseg.runtime import tensorboard as tensorboard_module
from jdiffseg.runtime.run_dir import atomic_write, is_primary

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All records of `workdir/metrics.jsonl` (empty when absent)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _clean(value: Any) -> Any:
    if isinstance(value, list | tuple):  # a population's per-replica values
        return [_clean(v) for v in value]
    value = float(value) if hasattr(value, "__float__") else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf
    return value


class MetricWriter:
    """Appends JSON lines to `workdir/metrics.jsonl` and, with `tensorboard`, events to
    `workdir/tensorboard/<events_name>` (process 0 only)."""

    def __init__(
        self, workdir: str, resume_step: int = 0, *, tensorboard: bool = False,
        events_name: str = "",
    ) -> None:
        self.path = os.path.join(workdir, METRICS_FILE)
        self._events = None
        if tensorboard:
            tensorboard_module.require()  # on every process: all stop if it is missing
        if is_primary() and os.path.exists(self.path):
            kept = [r for r in read_metrics(workdir) if int(r.get("step", 0)) <= resume_step]
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        if tensorboard and is_primary():
            self._events = tensorboard_module.EventWriter(
                workdir, events_name, purpose="train",
                purge_step=resume_step + 1 if resume_step else None,
            )

    def write(self, step: int, **scalars: Any) -> None:
        """One line: {"step": step, **scalars}; NaN/Inf are written as strings."""
        if not is_primary():
            return
        record = {"step": int(step), **{k: _clean(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._events is not None:
            self._events.write_scalars(step, scalars)


def progress_bar(
    total: int, desc: str, unit: str, *, initial: int = 0, enabled: bool = True
) -> tqdm:
    """A tqdm bar on stderr; redrawn every second on a terminal, every 30 s into a log file."""
    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        dynamic_ncols=tty,
        ncols=None if tty else 100,
        disable=not enabled,
        file=sys.stderr,
        mininterval=1.0 if tty else 30.0,
    )


class Progress:
    """A tqdm bar over training steps with loss, images/s and ETA (process 0 only)."""

    def __init__(self, total: int, initial: int, images_per_step: int) -> None:
        self.images_per_step = images_per_step
        self._bar = progress_bar(total, "train", "step", initial=initial, enabled=is_primary())
        self._t0, self._s0 = time.perf_counter(), initial

    def update(self, step: int, loss: float | None = None) -> float:
        """Advances to `step`; returns images/s since the last call with a loss."""
        self._bar.update(step - self._bar.n)
        if loss is None:
            return 0.0
        now = time.perf_counter()
        rate = (step - self._s0) * self.images_per_step / max(now - self._t0, 1e-9)
        self._t0, self._s0 = now, step
        self._bar.set_postfix(loss=f"{loss:.4g}", img_s=f"{rate:.1f}", refresh=False)
        return rate

    def write(self, text: str) -> None:
        """Prints a line above the bar."""
        if is_primary():
            self._bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()
