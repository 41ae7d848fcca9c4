"""The one retry policy: a bounded number of attempts, exponential backoff (or the caller's wait, e.g. MC's
Retry-After), a sleep that a stop request cuts short (mcnotify.stop.sleep raises Stopped), and one INFO line per
retry saying what failed, attempt n of m and the wait. Used by the MC client, the token request, the MySQL
connect and the SFTP connect."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from mcnotify import stop
from mcnotify.logs import retry_logger

T = TypeVar("T")


def policy(
    what: str,
    attempts: int,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    *,
    logger: logging.Logger,
    first_wait: float = 1.0,
    max_wait: float = 30.0,
    wait: Callable[[RetryCallState], float] | None = None,
    sleep: Callable[[float], None] = stop.sleep,
    on_retry: Callable[[RetryCallState], None] | None = None,
) -> Retrying:
    """A tenacity Retrying for `what`: retries only `retry_on`, re-raises the last failure when attempts run
    out. `wait` replaces the exponential backoff (first_wait, doubling, capped at max_wait)."""
    announce = retry_logger(logger, what, attempts)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None:
            on_retry(state)
        announce(state)

    return Retrying(
        retry=retry_if_exception_type(retry_on),
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait or wait_exponential(multiplier=first_wait, max=max_wait),
        sleep=sleep,  # a stop request ends the backoff at once (Stopped)
        before_sleep=before_sleep,
        reraise=True,
    )


def call(fn: Callable[[], T], what: str, attempts: int, retry_on: Any, **options: Any) -> T:
    """fn() under the policy."""
    return policy(what, attempts, retry_on, **options)(fn)
