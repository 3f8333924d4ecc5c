"""The workdir lock: one live holder, named when refused; stale locks taken over; heartbeat."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lock_support import dead_pid, plant_lock

from jdiffseg.runtime import lock

REPO = Path(__file__).resolve().parents[2]

# Takes the lock of argv[1], says so, holds it for argv[2] seconds (or reports the refusal).
HOLDER = """
import sys, time
from jdiffseg.runtime import lock
try:
    held = lock.acquire(sys.argv[1], stale_after=60)
except lock.WorkdirLockedError as e:
    print("refused:", e, flush=True)
    sys.exit(3)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
held.release()
"""


def _spawn(workdir: Path, hold: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workdir), str(hold)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_holder_is_named_and_lock_released(tmp_path):
    held = lock.acquire(str(tmp_path), stale_after=60)
    holder = lock.read_holder(str(tmp_path))
    assert holder == held.holder
    assert (holder.host, holder.pid) == (socket.gethostname(), os.getpid())
    assert holder.started.endswith("+00:00") and time.time() - holder.heartbeat < 5
    held.release()
    assert not (tmp_path / lock.LOCK_FILE).exists()


def test_second_trainer_is_refused_naming_the_holder(tmp_path):
    first = _spawn(tmp_path, hold=30)
    assert first.stdout.readline().strip() == "held"
    try:
        second = _spawn(tmp_path, hold=0)
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 3
        assert f"PID {first.pid}" in out and f"host {socket.gethostname()}" in out
        with pytest.raises(lock.WorkdirLockedError, match=f"PID {first.pid}, started"):
            lock.acquire(str(tmp_path), stale_after=60)
    finally:
        first.kill()
        first.wait()


def test_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = dead_pid()
    plant_lock(tmp_path, pid=dead)
    with lock.acquire(str(tmp_path), stale_after=60) as held:
        assert lock.read_holder(str(tmp_path)).pid == os.getpid()
        assert held.held()
    assert f"process {dead} is gone" in caplog.text and "taking over the stale lock" in caplog.text
    assert os.listdir(tmp_path) == []  # no renamed stale file left behind


def test_other_host_lock_is_stale_only_after_the_timeout(tmp_path, caplog):
    plant_lock(tmp_path, host="node-17", pid=1, heartbeat=time.time() - 20)
    with pytest.raises(lock.WorkdirLockedError, match="host node-17, PID 1"):
        lock.acquire(str(tmp_path), stale_after=60)
    assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["token"] == "other"  # untouched
    with lock.acquire(str(tmp_path), stale_after=10):
        assert lock.read_holder(str(tmp_path)).host == socket.gethostname()
    assert "heartbeat is 20 s old (limit 10 s)" in caplog.text


def test_a_lock_that_missed_its_heartbeats_is_waited_for(tmp_path, caplog):
    # Another node's job died 0.5 s ago; it beat every 0.1 s and goes stale after 1.5 s.
    plant_lock(tmp_path, host="node-17", pid=1, heartbeat=time.time() - 0.5)
    start = time.time()
    with lock.acquire(str(tmp_path), stale_after=1.5, heartbeat_every=0.1):
        assert 0.9 < time.time() - start < 5
    assert "has missed its heartbeats; waiting 1 s" in caplog.text
    assert "taking over the stale lock" in caplog.text


def test_other_pid_namespace_is_judged_by_heartbeat_only(tmp_path):
    # The same host name and a PID that does not exist here: in another container it may.
    plant_lock(tmp_path, pid=dead_pid(), pid_namespace="pid:[1]")
    with pytest.raises(lock.WorkdirLockedError):
        lock.acquire(str(tmp_path), stale_after=60)


def test_heartbeat_refreshes_and_a_lost_lock_is_noticed(tmp_path):
    held = lock.acquire(str(tmp_path), stale_after=60, heartbeat_every=0.05)
    first = held.holder.heartbeat
    time.sleep(0.3)
    assert lock.read_holder(str(tmp_path)).heartbeat > first
    held.check()
    # Another trainer judged this run dead and took the lock over.
    plant_lock(tmp_path, host="node-17", token="thief")
    with pytest.raises(lock.WorkdirLockedError, match=r"no longer holds .* host node-17"):
        held.check()
    held.release()
    assert lock.read_holder(str(tmp_path)).token == "thief"  # not removed, not overwritten


def test_racing_takers_of_a_stale_lock_get_exactly_one_winner(tmp_path):
    plant_lock(tmp_path, pid=dead_pid())
    procs = [_spawn(tmp_path, hold=3) for _ in range(3)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert sum(o.startswith("held") for o in outs) == 1, outs
    assert sum(o.startswith("refused") for o in outs) == 2, outs


def test_unreadable_lock_and_bad_timeout(tmp_path):
    (tmp_path / lock.LOCK_FILE).write_text("{half")
    with pytest.raises(lock.WorkdirLockedError, match="unreadable lock file"):
        lock.acquire(str(tmp_path), stale_after=60)
    old = time.time() - 120
    os.utime(tmp_path / lock.LOCK_FILE, (old, old))
    lock.acquire(str(tmp_path), stale_after=60).release()
    with pytest.raises(ValueError, match="lock_timeout must be > 0"):
        lock.acquire(str(tmp_path), stale_after=0)
