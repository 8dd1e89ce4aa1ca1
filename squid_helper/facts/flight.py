"""Single flight: one computation of a thing at a time, across threads and helper processes.

Fifty clients asking for one new path at once must cost the mirrors one probe, whichever of
Squid's helper processes each request reaches. Within a process, later callers join the running
computation's Future; across processes a memo lock decides who computes, and the others wait
for the answer it publishes. A waiter whose holder died or hangs (the lock outlives its hold
time) computes by itself rather than wait forever.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Callable, Dict, Optional, TypeVar

from .memo import Memo

T = TypeVar("T")
_WAIT_STEP = 0.02


class SingleFlight:
    def __init__(self, memo: Memo, hold_for: float,
                 timer: Callable[[], float] = time.monotonic):
        """timer: measures how long a waiter has waited for another process's holder."""
        self.memo = memo
        self.hold_for = hold_for
        self.timer = timer
        self._running: Dict[str, Future] = {}
        self._lock = threading.Lock()

    def running(self, name: str) -> Optional[Future]:
        """The computation under way for name in this process, if any."""
        with self._lock:
            return self._running.get(name)

    def busy(self, name: str) -> bool:
        """Whether name is being computed here or in another process."""
        return self.running(name) is not None or self.memo.locked(name)

    def claim(self, name: str) -> tuple:
        """(future, owner): the Future for name, and whether the caller must compute it (and
        then finish() it) or only wait for it."""
        with self._lock:
            running = self._running.get(name)
            if running is not None:
                return running, False
            running = Future()
            self._running[name] = running
            return running, True

    def finish(self, name: str, future: Future, compute: Callable[[], T],
               ready: Callable[[], Optional[T]]) -> T:
        """Compute a claimed name (across processes), settle its Future and release it."""
        try:
            result = self._across_processes(name, compute, ready)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._running.pop(name, None)

    def abandon(self, name: str, future: Future) -> None:
        """Release a claimed name without computing it; its waiters get None."""
        future.set_result(None)
        with self._lock:
            self._running.pop(name, None)

    def run(self, name: str, compute: Callable[[], T], ready: Callable[[], Optional[T]]) -> T:
        """compute() once for name; concurrent callers get the same result. ready() returns
        what another process published meanwhile (None: nothing yet)."""
        future, owner = self.claim(name)
        if not owner:
            return future.result()
        return self.finish(name, future, compute, ready)

    def _across_processes(self, name: str, compute: Callable[[], T],
                          ready: Callable[[], Optional[T]]) -> T:
        deadline = self.timer() + self.hold_for
        token = self.memo.try_lock(name, self.hold_for)
        while token is None:
            time.sleep(_WAIT_STEP)
            answer = ready()
            if answer is not None:
                return answer
            if self.timer() > deadline:
                return compute()  # the holder died or hangs: answer without it
            token = self.memo.try_lock(name, self.hold_for)
        try:
            answer = ready()  # published while we were queueing for the lock
            return answer if answer is not None else compute()
        finally:
            self.memo.unlock(name, token)
