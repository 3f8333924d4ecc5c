"""Workdir locks as other trainers leave them, for the lock, training and command-line tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from jdiffseg.runtime import lock


def plant_lock(workdir: Path, **fields: object) -> None:
    """A lock file as another trainer would hold it: by default this host and a live process
    that is not this one (the test's parent), with a fresh heartbeat."""
    holder = {
        "host": socket.gethostname(),
        "pid": os.getppid(),
        "started": "2026-01-01T00:00:00+00:00",
        "heartbeat": time.time(),
        "token": "other",
        "pid_namespace": lock._pid_namespace(),
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / lock.LOCK_FILE).write_text(json.dumps({**holder, **fields}))


def dead_pid() -> int:
    """The PID of a process that has just exited (a killed trainer's)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
