"""Flow control for sending: a concurrency limit that backs off when MC throttles (AIMD) and a token bucket."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Throttle:
    """How many requests may be in flight. Halved on repeated 429s (multiplicative decrease), raised by one
    after a run of calls without throttling (additive increase), never above the configured maximum."""

    def __init__(self, maximum: int) -> None:
        self.maximum = self.limit = max(1, maximum)
        self._lock = threading.Lock()
        self._throttled = 0
        self._calm = 0
        self._logged = False

    def throttled(self) -> None:
        with self._lock:
            self._throttled += 1
            self._calm = 0
            if self._throttled < 2:  # one 429 is weather; Retry-After handles it
                return
            self.limit = max(1, self.limit // 2)
            if not self._logged:
                self._logged = True
                log.warning("MC keeps throttling (429): concurrency lowered to %d, climbing back slowly", self.limit)

    def succeeded(self) -> None:
        with self._lock:
            self._calm += 1
            if self.limit < self.maximum and self._calm >= 4 * self.limit:
                self.limit += 1
                self._calm = 0


class RateLimiter:
    """A token bucket in messages per second; `rate` 0 means unlimited. Used from one thread."""

    def __init__(self, rate: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self._sleep = sleep
        self._tokens = rate
        self._last = time.monotonic()

    def acquire(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        if self._tokens < 0:
            self._sleep(-self._tokens / self.rate)
