"""I/O failures as one line (errno and file out of orbax/tensorstore messages); noise filters."""

from __future__ import annotations

import errno
import io
import logging
import os
import sys

import pytest

from jdiffseg.runtime import io_errors

# The status orbax raised when a 6 MB filesystem filled up during a checkpoint (shortened).
TENSORSTORE_ENOSPC = (
    'RESOURCE_EXHAUSTED: Error writing "ema_params.out.bias/0" in OCDBT database at local file '
    '"/runs/a/checkpoints/4.orbax-checkpoint-tmp/state/ocdbt.process_0/": Failed writing: '
    '"/runs/a/checkpoints/4.orbax-checkpoint-tmp/state/ocdbt.process_0/d/0af4": Failed to write '
    "5730304 bytes to file 5: No space left on device [os_error_code='28'] "
    '[tensorstore_spec=\'{"path":"/runs/a/checkpoints/4.orbax-checkpoint-tmp/state/"}\']'
)


def _raised_in(filename: str, exc: BaseException) -> BaseException:
    """`exc` raised from code compiled as `filename` (so its traceback names that file)."""
    code = compile("raise exc", filename, "exec")
    try:
        exec(code, {"exc": exc})
    except BaseException as e:
        return e
    raise AssertionError("not raised")


def test_os_error_from_a_tensorstore_status():
    err = io_errors.os_error(ValueError(TENSORSTORE_ENOSPC))
    assert err.errno == errno.ENOSPC and err.strerror == "No space left on device"
    assert err.filename == "/runs/a/checkpoints/4.orbax-checkpoint-tmp/state/ocdbt.process_0/d/0af4"


def test_os_error_from_the_exception_chain_or_none():
    try:
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/runs/a/metrics.jsonl")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert io_errors.os_error(outer).filename == "/runs/a/metrics.jsonl"
    assert io_errors.os_error(ValueError("shape mismatch")) is None
    assert io_errors.io_failure(ValueError("shape mismatch"), "saving", "none") is None


def test_one_line_then_the_traceback_once():
    cause = _raised_in("/site-packages/orbax/fake.py", ValueError(TENSORSTORE_ENOSPC))
    failure = io_errors.io_failure(cause, "could not save checkpoint step 4", "step 2 (/runs/a)")
    assert str(failure) == (
        "could not save checkpoint step 4: /runs/a/checkpoints/4.orbax-checkpoint-tmp/state/"
        "ocdbt.process_0/d/0af4: [Errno 28] No space left on device; "
        "last complete checkpoint: step 2 (/runs/a)"
    )
    assert failure.errno == errno.ENOSPC and "\n" not in str(failure)
    failure.__cause__ = cause
    out = io.StringIO()
    io_errors.report(failure, out)
    lines = out.getvalue().splitlines()
    assert lines[0] == str(failure) and lines[1] == "Traceback (most recent call last):"
    assert out.getvalue().count("Traceback") == 1 and out.getvalue().count("RESOURCE_EX") == 1


def test_noise_filters_drop_only_orbax_reports(capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    absl = logging.getLogger("absl")
    monkeypatch.setattr(absl, "filters", [])
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])
    io_errors.quiet_orbax_noise()
    io_errors.quiet_orbax_noise()  # idempotent
    assert len(absl.filters) == 1

    class Dying:
        def __init__(self, exc: BaseException) -> None:
            self.exc = exc

        def __del__(self) -> None:
            raise self.exc

    Dying(RuntimeError("Event loop is closed"))  # dropped at once: unraisable
    Dying(_raised_in("/site-packages/orbax/serialization.py", ImportError("shutting down")))
    Dying(RuntimeError("a real problem"))
    assert [str(u.exc_value) for u in seen] == ["a real problem"]

    orbax_exc = _raised_in("/site-packages/orbax/future.py", ValueError(TENSORSTORE_ENOSPC))
    ours = _raised_in("/work/jdiffseg/train.py", ValueError("ours"))

    def record(exc: BaseException | None, level: int = logging.ERROR) -> logging.LogRecord:
        info = (type(exc), exc, exc.__traceback__) if exc else None
        return logging.LogRecord("absl", level, "x.py", 1, "msg", None, info)

    keep = absl.filters[0].filter
    assert not keep(record(orbax_exc))
    assert keep(record(ours)) and keep(record(None)) and keep(record(orbax_exc, logging.WARNING))


def test_short_reason_keeps_the_status_and_the_innermost_cause():
    truncated = (
        'OUT_OF_RANGE: Error opening "zarr" driver: Error reading "step/.zarray" in OCDBT database '
        f'at local file "{"/runs/a" * 30}/checkpoints/4/state/": Error reading Byte range '
        "[0, 67240): Requested byte range [0, 67240) is not valid for value of size 10"
        ' [tensorstore_spec=\'{"driver": "zarr"}\']'
    )
    assert io_errors.short_reason(ValueError(truncated)) == (
        "ValueError: OUT_OF_RANGE: ... Requested byte range [0, 67240) is not valid for value "
        "of size 10"
    )
    assert io_errors.short_reason(KeyError("w")) == "KeyError: 'w'"
    assert len(io_errors.short_reason(ValueError("x" * 1000))) < 320


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_other_os_errors_are_named(code):
    status = f"PERMISSION_DENIED: Failed writing: \"/r/x\": ... [os_error_code='{code}']"
    assert io_errors.os_error(ValueError(status)).strerror == os.strerror(code)
