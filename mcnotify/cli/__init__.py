"""The command line: parse, call the library, render. The only package that imports typer or rich."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

# Importing these registers their commands on the app; --help lists them in this order, the pipeline's first.
from mcnotify.cli import pipeline  # noqa: F401  # isort: skip
from mcnotify.cli import views  # noqa: F401  # isort: skip
from mcnotify.cli import sandbox  # noqa: F401  # isort: skip
from mcnotify.cli import operator  # noqa: F401  # isort: skip
from mcnotify.cli import state  # noqa: F401  # isort: skip
from mcnotify.cli.application import app
from mcnotify.stop import request_stop

__all__ = ["app", "main"]

_presses = {"sigint": 0}


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler only decides about a hard interrupt; the stop request itself reaches
    `request_stop` through the wakeup pipe and a watcher thread (see `_watch`), because a handler that set
    STOP here could deadlock on the Event's lock if the signal landed while the main thread held it."""
    if signum == signal.SIGINT:
        _presses["sigint"] += 1
        if _presses["sigint"] >= 2:
            # Second Ctrl-C: the operator insists. Interrupt hard; a third one kills outright.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            raise KeyboardInterrupt


def _watch(read_fd: int) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except InterruptedError:
            continue
        if not data:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                request_stop(signum)


def install_signal_handlers() -> None:
    """SIGTERM (systemd stop) and the first Ctrl-C: finish the work in flight, record it, and exit promptly
    with 143 (SIGTERM) or 130 (SIGINT). Never a KeyboardInterrupt in the middle of a state write."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    # CPython's C-level handler writes each signal's number to this fd: no Python code, no locks.
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read_fd,), name="mcnotify-signals", daemon=True).start()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def main() -> None:
    install_signal_handlers()
    app(prog_name="mcnotify")


if __name__ == "__main__":
    main()
