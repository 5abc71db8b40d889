"""A rate limiter shared by every thread that calls a judge.

A token bucket (requests per second) plus a shared pause: when one request
gets a 429 with ``Retry-After``, every thread waits until then, instead of
each one hammering the endpoint in turn.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """``acquire()`` before each request; ``pause(seconds)`` after a 429."""

    def __init__(
        self,
        rps: float | None = None,
        *,
        burst: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rps is not None and rps <= 0:
            raise ValueError(f"rate limit must be positive requests/s, got {rps}")
        self.rps = rps
        self.capacity = float(burst or max(1, int(rps or 1)))
        self._tokens = self.capacity
        self._monotonic = monotonic
        self._sleep = sleep
        self._last = monotonic()
        self._paused_until = 0.0
        self._lock = threading.Lock()
        self.pauses = 0

    def pause(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` (a server's Retry-After)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._monotonic() + max(0.0, seconds))
            self.pauses += 1

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self._monotonic()
                wait = self._paused_until - now
                if wait <= 0:
                    if self.rps is None:
                        return
                    self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rps)
                    self._last = now
                    if self._tokens >= 1:
                        self._tokens -= 1
                        return
                    wait = (1 - self._tokens) / self.rps
            self._sleep(min(wait, 1.0))
