"""Waiting on observable state instead of sleeping for an internal constant."""

from __future__ import annotations

import time
from typing import Callable


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll condition() until it holds or `timeout` seconds pass; returns its last value, so
    that `assert wait_for(...)` fails with the state at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(step)
    return condition()
