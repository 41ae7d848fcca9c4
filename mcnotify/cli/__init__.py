"""The command line: parse, call the library, render. The only package that imports typer or rich."""

from __future__ import annotations

# Importing these registers their commands on the app; --help lists the pipeline's first.
from mcnotify.cli import steps  # noqa: F401  # isort: skip
from mcnotify.cli import ops  # noqa: F401  # isort: skip
from mcnotify.cli.base import app

__all__ = ["app", "main"]


def main() -> None:
    import signal

    from mcnotify.steps import request_stop

    # systemd stop: finish the request in flight, record it, exit promptly (exit code 143).
    signal.signal(signal.SIGTERM, lambda signum, frame: request_stop())
    app(prog_name="mcnotify")


if __name__ == "__main__":
    main()
