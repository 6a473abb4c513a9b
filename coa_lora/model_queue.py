"""A re-entrant lock that serves its waiters in arrival order and tells each how many jobs are ahead of it.

The explorer's one model is used by every browser session in turn; a session waiting for it says "waiting for 2 jobs
ahead" instead of "busy". ``with queue:`` works like ``threading.RLock``; :meth:`ModelQueue.acquire` also takes a
timeout and an ``on_wait(ahead)`` callback, called while it waits (at most every ``poll`` seconds).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Optional


class ModelQueue:
    """Arrival-ordered, re-entrant; see the module docstring."""

    def __init__(self, poll: float = 0.25):
        self._cond = threading.Condition()
        self._tickets: list[int] = []  # waiting or holding, in arrival order; [0] holds the model
        self._next = 0
        self._owner: int | None = None  # thread id of the holder
        self._depth = 0
        self.poll = poll

    def __enter__(self) -> "ModelQueue":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def waiting(self) -> int:
        """Jobs that hold or wait for the model."""
        with self._cond:
            return len(self._tickets)

    def acquire(self, timeout: float = -1, on_wait: Optional[Callable[[int], None]] = None) -> bool:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            ticket, self._next = self._next, self._next + 1
            self._tickets.append(ticket)
            deadline = None if timeout < 0 else time.monotonic() + timeout
            try:
                while self._tickets[0] != ticket or self._owner is not None:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError
                    if on_wait is not None:
                        on_wait(self._tickets.index(ticket))  # may raise: e.g. a cancelled job stops waiting
                    self._cond.wait(self.poll if left is None else min(self.poll, left))
            except BaseException as exc:
                self._tickets.remove(ticket)
                self._cond.notify_all()
                if isinstance(exc, TimeoutError):
                    return False
                raise
            self._owner, self._depth = me, 1
            return True

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("release() of a ModelQueue this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._tickets.pop(0)
                self._cond.notify_all()
