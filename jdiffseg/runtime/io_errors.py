"""I/O failures of a run as one clear line, and orbax's background noise kept off the console.

When a checkpoint cannot be written (no space, no permission, a read-only filesystem), orbax
raises a tensorstore status such as `RESOURCE_EXHAUSTED: ... No space left on device
[os_error_code='28']` from a background thread, logs the same traceback several times from its
other threads, and its pending reads and writes report `RuntimeError: Event loop is closed` (and
similar) as "unraisable" exceptions for seconds afterwards, up to interpreter shutdown.
`os_error` recovers the operating-system error from such an exception, `RunIOError` carries the
one-line summary, and `quiet_orbax_noise` drops the repeated reports (the exception itself still
propagates, and its traceback is printed once by the command).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

_OS_ERROR_CODE = re.compile(r"\[os_error_code='?(\d+)'?\]")
_QUOTED_PATH = re.compile(r'"(/[^"]*)"')
_ORBAX_DIR = f"{os.sep}orbax{os.sep}"
# OS errors that mean a file could not be written (not, say, a missing input file).
WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)


class RunIOError(RuntimeError):
    """A file of the run could not be written; `str()` is the one-line summary (what, where, the
    OS error, the last complete checkpoint); the original exception is `__cause__`."""

    def __init__(self, line: str, errno: int | None = None) -> None:
        super().__init__(line)
        self.errno = errno


def os_error(exc: BaseException | None) -> OSError | None:
    """The OS error behind `exc`: an OSError in its cause/context chain, or one parsed from a
    tensorstore status message (errno from `os_error_code`, the file from the last quoted path)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno:
            return exc
        text = str(exc)
        code = _OS_ERROR_CODE.search(text)
        if code:
            errno = int(code.group(1))
            paths = _QUOTED_PATH.findall(text[: code.start()])
            return OSError(errno, os.strerror(errno), paths[-1] if paths else None)
        exc = exc.__cause__ or exc.__context__
    return None


def short_reason(exc: BaseException, limit: int = 300) -> str:
    """`exc` as one short line: its type and message without tensorstore's spec dump; a long
    message keeps its head (the status) and tail (the innermost cause)."""
    text = " ".join(str(exc).split(" [tensorstore_spec")[0].split())
    if len(text) > limit:
        parts = text.split(": ")
        text = f"{parts[0]}: ... {parts[-1]}" if len(parts) > 1 else text
        text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"


def io_failure(exc: BaseException, what: str, last_good: str) -> RunIOError | None:
    """A RunIOError summarising `exc` ('<what>: <file>: [Errno N] <reason>; last complete
    checkpoint: <last_good>'), or None when no OS error is behind it."""
    err = os_error(exc)
    if err is None:
        return None
    where = f"{err.filename}: " if err.filename else ""
    line = (
        f"{what}: {where}[Errno {err.errno}] {err.strerror}; last complete checkpoint: {last_good}"
    )
    return RunIOError(line, err.errno)


def report(exc: RunIOError, file: TextIO | None = None) -> None:
    """Prints the summary line, then the traceback of what caused it, once."""
    out = sys.stderr if file is None else file
    print(str(exc), file=out)
    cause = exc.__cause__ or exc
    traceback.print_exception(type(cause), cause, cause.__traceback__, file=out)


def _from_orbax(tb: TracebackType | None) -> bool:
    while tb is not None:
        if _ORBAX_DIR in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _is_noise(exc: BaseException | None, tb: TracebackType | None) -> bool:
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    return _from_orbax(tb)


class _OrbaxNoiseFilter(logging.Filter):
    """Drops ERROR records whose exception is orbax's (it raises the same one to the caller)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.exc_info:
            return True
        return not _is_noise(record.exc_info[1], record.exc_info[2])


def _quiet_hook(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    def hook(unraisable: Any) -> None:
        if not _is_noise(unraisable.exc_value, unraisable.exc_traceback):
            previous(unraisable)

    hook.drops_orbax_noise = True  # type: ignore[attr-defined]
    return hook


def quiet_orbax_noise() -> None:
    """Installs filters (once) for orbax's repeated error reports: ERROR log records carrying an
    exception raised inside orbax (asyncio's 'exception was never retrieved' included) and the
    unraisable errors of its leftover tasks ('Event loop is closed'). Other reports pass."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OrbaxNoiseFilter) for f in logger.filters):
            logger.addFilter(_OrbaxNoiseFilter())
    if not getattr(sys.unraisablehook, "drops_orbax_noise", False):
        sys.unraisablehook = _quiet_hook(sys.unraisablehook)
