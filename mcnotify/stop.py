"""Stop requests (SIGTERM, Ctrl-C) and waits that obey them.

A stop request never interrupts a state write: it only sets `STOP`. Every wait checks it: sleeps end at once,
and a blocking network call runs in a helper thread (`run`) whose caller stops waiting for it. A request
already on the wire gets `GRACE` seconds (counted from the stop request) for its reply, so its true outcome
can be recorded; after that it is abandoned and its socket closed.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from mcnotify.errors import Stopped

T = TypeVar("T")

STOP = threading.Event()
GRACE = 2.0  # seconds a request already sent may take to answer after a stop request
_POLL = 0.05  # how often a waiting thread looks at STOP; a cheap Event.wait, not a busy loop

_NAMES: dict[int, str] = {int(signal.SIGTERM): "SIGTERM", int(signal.SIGINT): "SIGINT (Ctrl-C)"}
_requested: dict[str, float | int] = {}  # signum and monotonic time of the first stop request


class Abandoned(Stopped):
    """A blocking call was given up because of a stop request. `maybe_sent`: the request may have reached the
    other side (it was written to a connected socket), so its effect is unknown."""

    def __init__(self, message: str, maybe_sent: bool) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent
        self.exit_code = exit_code()


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Ask every step and wait to finish what is in flight and stop. Lock-free for the caller's sake: the CLI
    calls it from a watcher thread, never from a signal handler (a handler may run while the main thread holds
    STOP's internal lock)."""
    if "at" not in _requested:
        _requested["signum"], _requested["at"] = int(signum), time.monotonic()
    STOP.set()


def reset() -> None:
    """Forget a stop request (tests running several commands in one process)."""
    _requested.clear()
    STOP.clear()


def signal_name() -> str:
    return _NAMES.get(int(_requested.get("signum", signal.SIGTERM)), "SIGTERM")


def exit_code() -> int:
    """128 + the signal number, as a shell reports a process killed by it: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + int(_requested.get("signum", signal.SIGTERM))


def stopped(detail: str = "after finishing and recording the work in flight; the next run resumes") -> Stopped:
    exc = Stopped(f"stopped by {signal_name()} {detail}")
    exc.exit_code = exit_code()
    return exc


def check() -> None:
    if STOP.is_set():
        raise stopped()


def sleep(seconds: float) -> None:
    """Sleep, but wake at once on a stop request and raise Stopped."""
    if STOP.wait(seconds):
        raise stopped()


def grace_left() -> float:
    return max(0.0, float(_requested.get("at", time.monotonic())) + GRACE - time.monotonic())


def run(
    fn: Callable[[], T],
    *,
    what: str,
    abandon: Callable[[], None] = lambda: None,
    cancel_unsent: Callable[[], bool] = lambda: False,
) -> T:
    """Run the blocking `fn` in a daemon thread and return its result (or raise its exception).

    On a stop request: if `cancel_unsent()` succeeds (nothing has gone out, and now nothing will), give up at
    once; otherwise wait until GRACE seconds after the stop for the reply. Giving up calls `abandon()` (close
    the socket, so the helper thread ends too) and raises Abandoned. A daemon thread never holds up the exit.
    """
    check()
    done = threading.Event()
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the waiting thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name=f"mcnotify-{what}", daemon=True).start()
    while not done.wait(_POLL):
        if not STOP.is_set():
            continue
        sent = not cancel_unsent()
        if sent and done.wait(grace_left()):
            break
        abandon()
        raise Abandoned(
            f"stopped by {signal_name()}: {what} abandoned"
            + (f" (no reply within {GRACE:g} s)" if sent else " before anything was sent")
            + "; the next run resumes",
            sent,
        )
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
