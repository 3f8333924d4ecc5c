"""SIGTERM and Ctrl-C while training: finish the step, save a checkpoint, exit.

A scheduler preempting a job sends SIGTERM; a person at a terminal presses Ctrl-C (SIGINT). Both
mean "stop, but keep the work", so the first of either only sets a flag: the loop finishes its
step, saves and exits with 128 + the signal number (143 for SIGTERM, 130 for SIGINT), as if the
signal had ended it. A second Ctrl-C means "stop now": it raises KeyboardInterrupt at once, and
the last complete checkpoint is what a restart resumes from.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The exit status of a run stopped by SIGTERM after saving: preempted, to be resumed.
PREEMPTED_EXIT = 128 + int(signal.SIGTERM)


@dataclass
class StopRequest:
    """The first stop signal received (None while none has come)."""

    signum: int | None = None

    @property
    def name(self) -> str:
        """'SIGTERM' or 'SIGINT'; SIGTERM when none was caught here (a multi-host job learns of
        its preemption, a SIGTERM, from JAX)."""
        return signal.Signals(self.signum or signal.SIGTERM).name

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the status a shell reports for a process it ended."""
        return 128 + int(self.signum or signal.SIGTERM)


@contextlib.contextmanager
def stop_requests(enabled: bool = True) -> Iterator[StopRequest]:
    """Records SIGTERM / SIGINT in the yielded StopRequest instead of dying; a second SIGINT
    raises KeyboardInterrupt. A signal ignored when this starts (nohup, a background job) stays
    ignored. Only the main thread can take signals; elsewhere, or when not `enabled` (multi-host
    jobs, whose preemption JAX coordinates), the handlers stay as they are.
    """
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        if request.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop without saving
        if request.signum is None:
            request.signum = signum

    # A signal the parent set to be ignored (nohup, a background job) stays ignored.
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    caught = [s for s, h in previous.items() if h is not signal.SIG_IGN]
    for s in caught:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s in caught:
            signal.signal(s, previous[s])
