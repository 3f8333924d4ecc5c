"""Fixtures shared across the suite."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """Ctrl-C as in an interactive Python (KeyboardInterrupt), whatever the suite was started
    under: a background job or nohup inherits SIGINT ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
