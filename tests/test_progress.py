"""Progress on long work (issue 10 §6): a progress bar with totals on a terminal, plain progress lines elsewhere."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from typing import Any

from tests.conftest import Env
from tests.helpers import event_rows, people, run_cli


def run_on_terminal(*command: str) -> tuple[int, str]:
    """Run a command with stdout and stderr on a pseudo-terminal; return its exit code and everything it drew."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=os.environ)
    os.close(follower)
    drawn = bytearray()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    return proc.wait(30), drawn.decode("utf-8", "replace")


def test_a_send_on_a_terminal_draws_a_bar_with_the_total(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(400)))
    assert run_cli(env.config, "sync").exit_code == 0
    code, drawn = run_on_terminal(sys.executable, "-m", "mcnotify", "--config", str(env.config), "send-sms")
    assert code == 0, drawn
    assert "send-sms" in drawn and "400/400" in drawn, drawn[-2000:]
    assert "━" in drawn  # the bar itself


def test_no_bar_in_a_pipe_or_with_quiet(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(50)))
    assert run_cli(env.config, "sync").exit_code == 0
    piped = subprocess.run(
        [sys.executable, "-m", "mcnotify", "--config", str(env.config), "send-sms"], capture_output=True, text=True
    )
    assert piped.returncode == 0 and "━" not in piped.stderr + piped.stdout
    assert "50 sent" in piped.stderr + piped.stdout
    code, drawn = run_on_terminal(sys.executable, "-m", "mcnotify", "-q", "--config", str(env.config), "send-email")
    assert code == 0 and "━" not in drawn and "/100" not in drawn
