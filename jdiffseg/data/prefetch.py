"""Device prefetch: host batches become device arrays in a background thread, ahead of the step.

`DevicePrefetcher` wraps a stateful iterator (a grain `DataLoader` iterator) and a function that
puts a host batch on the devices (`pipeline.to_global`). A daemon thread pulls batches, puts them
on the devices and keeps up to `depth` of them ready, so the train step does not wait for input.

Exact resume: the thread records the source's state right after pulling each batch and passes it
along with the batch, so `get_state()` is the position after the last batch *returned*, not the
read-ahead position, and `set_state()` stops the thread, moves the source and reads ahead from
there. Both work with `grain.checkpoint.CheckpointSave` / `CheckpointRestore` (which also calls
`start_prefetch`). An error raised by the source or by `to_device` is raised again, with its
message and traceback, when the consumer reaches that batch; StopIteration ends the iteration.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
# How often a producer waiting on a full queue checks whether it should stop.
_POLL_S = 0.05


class StatefulIterator(Protocol):
    """An iterator whose position can be read and set (grain's `DataLoaderIterator`)."""

    def __next__(self) -> Any: ...

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


class DevicePrefetcher(Iterator[T], Generic[T]):
    """Yields `to_device(batch)` for each batch of `source`, up to `depth` ahead (0: no thread).

    Only this object may advance `source` once it is wrapped. `close()` stops the thread and
    drops the batches read ahead; iterating again afterwards continues after the last batch
    returned.
    """

    def __init__(self, source: StatefulIterator, to_device: Callable[[Any], T], depth: int) -> None:
        if depth < 0:
            raise ValueError(f"config.data.prefetch must be >= 0, got {depth}")
        self._source = source
        self._to_device = to_device
        self._depth = depth
        self._state = source.get_state()
        self._rewind = False  # the source may be past `_state` (read-ahead was dropped)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue[tuple[T, Any] | BaseException] = queue.Queue(depth)

    def __next__(self) -> T:
        if self._depth == 0:
            batch, self._state = self._pull()
            return batch
        self.start_prefetch()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._halt()  # the producer ended at this item, leaving the source as reading it did
            raise item
        batch, self._state = item
        return batch

    def get_state(self) -> Any:
        """The source's state right after the last batch `__next__` returned."""
        return self._state

    def set_state(self, state: Any) -> None:
        """Moves the source to `state`; reading ahead restarts from there."""
        self._halt()
        self._source.set_state(state)
        self._state, self._rewind = state, False

    def start_prefetch(self) -> None:
        """Starts reading ahead now instead of at the next `__next__`; no-op when running."""
        if self._depth == 0 or self._thread is not None:
            return
        if self._rewind and self._source.get_state() != self._state:
            self._source.set_state(self._state)
        self._rewind = False
        self._thread = threading.Thread(
            target=self._produce, args=(self._stop, self._queue), name="device-prefetch",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stops the thread and drops the batches read ahead."""
        if self._thread is not None:
            self._halt()
            self._rewind = True

    def _pull(self) -> tuple[T, Any]:
        batch = next(self._source)
        return self._to_device(batch), self._source.get_state()

    def _produce(self, stop: threading.Event, out: queue.Queue) -> None:
        while not stop.is_set():
            try:
                item: tuple[T, Any] | BaseException = self._pull()
            except BaseException as e:  # for the consumer, StopIteration included
                item = e
            while not stop.is_set():
                try:
                    out.put(item, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def _halt(self) -> None:
        """Joins the producer and discards its queue."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._stop = threading.Event()
        self._queue = queue.Queue(self._depth)
