"""Each broken dependency gives one clear line, the right exit code, no traceback, and a later run finishes
the work without loss or duplicates."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from tests.conftest import Env, sqlite_only
from tests.helpers import event_rows, people, read_state, run_cli
from tests.services import free_port


def one_line(text: str) -> str:
    """The single error line (progress lines may come before it), and no traceback."""
    lines = [line for line in text.splitlines() if line.startswith("mcnotify: error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def delivered_once(env: Env, count: int) -> None:
    keys = Counter(m["messageKey"] for m in env.accepted())
    assert len(keys) == count and set(keys.values()) == {1}


def test_mysql_down(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(2)))
    good = env.values["source"]["url"]
    env.write(source={"url": good.replace(f":{env.mariadb.port}/", f":{free_port()}/"), "connect_timeout": 1.0})
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 69
    assert "MySQL 127.0.0.1" in one_line(result.output) and "unreachable" in result.output
    env.write(source={"url": good})
    assert run_cli(env.config, "run-all").exit_code == 0
    delivered_once(env, 6)


def test_sftp_refused(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(2)))
    env.write(sftp={"port": free_port(), "timeout": 1.0})
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 69 and "SFTP 127.0.0.1" in one_line(result.output)
    env.write(sftp={"port": env.sshd.port})
    assert run_cli(env.config, "run-all").exit_code == 0
    delivered_once(env, 6)


def test_mc_down_for_minutes_then_back(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(5)))
    env.sandbox.account.inject("503", times=10_000, path_prefix="/messaging")
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 69 and "503" in one_line(result.output)
    env.sandbox.account.faults.clear()
    # Fewer faults than max_attempts (5): whichever call meets them all (the SMS go first) still gets through.
    env.sandbox.account.inject("truncated", times=2, path_prefix="/messaging")
    env.sandbox.account.inject("html", times=2, path_prefix="/messaging")
    assert run_cli(env.config, "run-all").exit_code == 0
    delivered_once(env, 15)


def test_dns_failure(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(1)))
    env.write(marketing_cloud={"auth_url": "https://mc-no-such-host.invalid/", "max_attempts": 2})
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 69 and "mc-no-such-host.invalid" in one_line(result.output)


@sqlite_only
def test_disk_full_for_the_state_file(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(1000)))
    command = [sys.executable, "-m", "mcnotify", "-q", "--config", str(env.config), "run-all"]

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    full = subprocess.run(command, capture_output=True, text=True, preexec_fn=small_disk, timeout=120)
    assert full.returncode == 1, full.stderr
    assert "state file" in one_line(full.stderr) and ("full" in full.stderr or "large" in full.stderr)
    with sqlite3.connect(env.state_path) as conn:  # raw: the file's own integrity, below any store
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    delivered_once(env, 3000)


def test_sigterm_finishes_the_request_in_flight_and_stops(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(300)))
    env.sandbox.settings.latency = 0.2
    env.write(email={"batch_size": 5, "concurrency": 2})
    command = [sys.executable, "-m", "mcnotify", "-q", "--config", str(env.config), "run-all"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(m["channel"] == "email" for m in env.accepted()):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    stopped_at = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - stopped_at < 2.0
    assert proc.returncode == 143 and "stopped by SIGTERM" in one_line(err)
    # Everything MC accepted is recorded as sent: nothing in flight was abandoned.
    with read_state(env.state) as store:
        sent = {n.message_key for n in store.notifications(status="sent")}
    accepted = {m["messageKey"] for m in env.accepted()}
    assert accepted == sent and 0 < len(sent) < 900
    env.sandbox.settings.latency = 0
    assert run_cli(env.config, "run-all").exit_code == 0
    delivered_once(env, 900)


def test_partial_uploads_left_by_killed_processes_are_cleared_and_a_live_one_is_not(env: Env) -> None:
    """Each upload goes up under a name of its own; a process killed mid-upload leaves that file behind in MC's
    Import folder. The next upload removes those an hour old, never a recent one (another process may be
    uploading it now), nor anything else."""
    from mcnotify.config import load
    from mcnotify.mc import sftp

    section = load(env.config).sftp
    left = env.import_dir / f"{section.file_name}.dead1234.part"
    live = env.import_dir / f"{section.file_name}.live5678.part"
    other = env.import_dir / "someone-elses-file.csv.part"
    for path in (left, live, other):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(left, (two_hours_ago, two_hours_ago))
    os.utime(other, (two_hours_ago, two_hours_ago))
    local = env.tmp / "subscribers.csv"
    local.write_bytes(b"SubscriberKey,EmailAddress\r\nk,a@example.com\r\n")
    sftp.upload(section, local, section.file_name)
    assert sorted(p.name for p in env.import_dir.iterdir()) == sorted([section.file_name, live.name, other.name])
