"""One writer per workdir: a lock file held for the life of a training run.

`WORKDIR/train.lock` is a small JSON file naming the holder (host, PID, start time) with a
heartbeat time that a background thread refreshes. A second trainer on a locked workdir stops at
once, naming the holder. A lock is stale, and is taken over with a warning, when its process is
gone (same host and PID namespace), when its heartbeat is older than `stale_after` seconds (any
host: a job on another node cannot be probed), or when it names this very host and PID (a
requeued job that came back with the same PID). A lock that has missed two heartbeats but is not
yet stale is waited for, so a job requeued on another node soon after its first copy died still
resumes. Readers (evaluate, analyze, report) take no lock.

The file is created with O_EXCL, so of two trainers starting together exactly one wins; a stale
file is renamed aside before it is replaced, so of two trainers taking over the same stale lock
exactly one wins too.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from absl import logging

LOCK_FILE = "train.lock"


class WorkdirLockedError(RuntimeError):
    """The workdir is held by another live trainer (or this run lost its lock)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: written into the lock file."""

    host: str
    pid: int
    started: str  # UTC, ISO 8601
    heartbeat: float  # time.time() of the last refresh
    token: str  # unique per acquisition, tells this holder from a later one
    pid_namespace: str = ""  # PIDs are comparable only within one namespace (containers)

    def describe(self, now: float | None = None) -> str:
        """'host H, PID P, started S, heartbeat N s ago' for messages."""
        age = (time.time() if now is None else now) - self.heartbeat
        return (
            f"host {self.host}, PID {self.pid}, started {self.started}, "
            f"heartbeat {max(age, 0.0):.0f} s ago"
        )


def lock_path(workdir: str) -> str:
    """Where a workdir's lock file lives."""
    return os.path.join(os.path.abspath(workdir), LOCK_FILE)


def read_holder(workdir: str) -> Holder | None:
    """The holder named in the workdir's lock file; None when there is no (readable) lock."""
    try:
        with open(lock_path(workdir)) as f:
            return _parse(f.read())
    except FileNotFoundError:
        return None


def _parse(text: str) -> Holder | None:
    try:
        fields = json.loads(text)
        return Holder(
            host=str(fields["host"]),
            pid=int(fields["pid"]),
            started=str(fields["started"]),
            heartbeat=float(fields["heartbeat"]),
            token=str(fields["token"]),
            pid_namespace=str(fields.get("pid_namespace", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None  # half-written or foreign: judged by the file's age instead


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""  # not Linux: the host name alone decides


def stale_reason(holder: Holder, stale_after: float, now: float | None = None) -> str | None:
    """Why a lock may be taken over, or None while its holder looks alive."""
    now = time.time() if now is None else now
    if holder.host == socket.gethostname() and holder.pid_namespace == _pid_namespace():
        if holder.pid == os.getpid():
            return "it names this very process (a restarted job with the same PID)"
        if not _pid_alive(holder.pid):
            return f"process {holder.pid} is gone"
    if now - holder.heartbeat > stale_after:
        return f"its heartbeat is {now - holder.heartbeat:.0f} s old (limit {stale_after:.0f} s)"
    return None


class WorkdirLock:
    """A held lock; refreshes its heartbeat until `release()`. Use `acquire` to get one."""

    def __init__(self, workdir: str, holder: Holder, heartbeat_every: float) -> None:
        self.path = lock_path(workdir)
        self.holder = holder
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(heartbeat_every,), name="workdir-lock", daemon=True
        )
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            if not self.held():
                logging.warning("lost the lock %s; no longer refreshing it", self.path)
                return
            self.holder = Holder(**{**asdict(self.holder), "heartbeat": time.time()})
            _write_atomic(self.path, self.holder)

    def held(self) -> bool:
        """Whether the lock file still names this acquisition."""
        try:
            with open(self.path) as f:
                current = _parse(f.read())
        except FileNotFoundError:
            return False
        return current is not None and current.token == self.holder.token

    def check(self) -> None:
        """Raises WorkdirLockedError when another trainer has taken the lock over."""
        if not self.held():
            now = read_holder(os.path.dirname(self.path))
            who = now.describe() if now else "nobody"
            raise WorkdirLockedError(
                f"this run no longer holds {self.path} (held by {who}); stopping without "
                f"writing, so that only one trainer writes the workdir"
            )

    def release(self) -> None:
        """Stops the heartbeat and removes the lock file if it is still this run's."""
        self._stop.set()
        self._thread.join()
        if self.held():
            os.unlink(self.path)

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _write_atomic(path: str, holder: Holder) -> None:
    tmp = f"{path}.{holder.token}.tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(holder), f)
    os.replace(tmp, path)


def _create(path: str, holder: Holder) -> bool:
    """Writes the lock file if none exists; False when one does."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(holder), f)
    return True


def _take_over(path: str, seen: str) -> bool:
    """Moves the stale lock file (whose content was `seen`) out of the way; False when another
    trainer changed or took it meanwhile."""
    aside = f"{path}.stale-{uuid.uuid4().hex}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    with open(aside) as f:
        moved = f.read()
    if moved != seen:  # renewed between our read and the rename: put it back
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        os.unlink(aside)
        return False
    os.unlink(aside)
    return True


def acquire(
    workdir: str, *, stale_after: float = 600.0, heartbeat_every: float | None = None
) -> WorkdirLock:
    """Takes the workdir's lock for this process, or raises WorkdirLockedError naming the holder.

    `stale_after` (seconds) is how old a heartbeat may get before another host's lock is taken
    over; the heartbeat is refreshed every `heartbeat_every` seconds (default stale_after / 4).
    A live holder (a fresh heartbeat) is refused at once; one that has missed two heartbeats is
    waited for until it goes stale.
    """
    if stale_after <= 0:
        raise ValueError(f"config.train.lock_timeout must be > 0 seconds, got {stale_after}")
    every = stale_after / 4 if heartbeat_every is None else heartbeat_every
    os.makedirs(workdir, exist_ok=True)
    path = lock_path(workdir)
    now = time.time()
    holder = Holder(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(timespec="seconds"),
        heartbeat=now,
        token=uuid.uuid4().hex,
        pid_namespace=_pid_namespace(),
    )
    for _ in range(5):  # a few rounds in case other trainers race for a stale lock
        if _create(path, holder):
            return WorkdirLock(workdir, holder, every)
        try:
            with open(path) as f:
                seen = f.read()
        except FileNotFoundError:
            continue  # released meanwhile
        current = _parse(seen)
        if current is None:
            reason = _unreadable_reason(path, stale_after)
        else:
            reason = stale_reason(current, stale_after)
        if reason is None and current is not None and time.time() - current.heartbeat > 2 * every:
            # Two missed heartbeats: most likely a killed job on another node. Wait for it to go
            # stale rather than failing the requeued job that came to resume it.
            wait = stale_after - (time.time() - current.heartbeat) + min(every, 1.0)
            logging.warning(
                "the lock %s (%s) has missed its heartbeats; waiting %.0f s for it to go stale",
                path,
                current.describe(),
                wait,
            )
            time.sleep(wait)
            continue
        if reason is None:
            who = current.describe() if current else "an unreadable lock file"
            raise WorkdirLockedError(
                f"{workdir} is being trained by another process ({who}); refusing to write "
                f"into it. Wait for it to finish or stop it; a lock whose heartbeat is older "
                f"than {stale_after:.0f} s is taken over (config.train.lock_timeout)"
            )
        if _take_over(path, seen):
            who = current.describe() if current else "unreadable"
            logging.warning("taking over the stale lock %s (%s): %s", path, who, reason)
    raise WorkdirLockedError(f"could not take {path}: other trainers keep taking it")


def _unreadable_reason(path: str, stale_after: float) -> str | None:
    """A lock file that does not parse (a crash mid-write) is stale once old enough."""
    try:
        age = time.time() - os.path.getmtime(path)
    except FileNotFoundError:
        return "it is gone"
    return f"it is unreadable and {age:.0f} s old" if age > stale_after else None
