"""Stops and locks: one state file is one lock under every name, and SIGTERM / Ctrl-C end a run within a few
seconds whatever it is waiting for, with the work in flight recorded (issue 9, items 1, 14, 15 and SIGINT)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mcnotify.state import StateStore
from tests.conftest import Env, sqlite_only
from tests.helpers import event_rows, people, read_state, run_cli, statuses

STOP_WITHIN = 5.0  # seconds from the signal to the exit: the stop grace (2 s) plus start-up slack


# -- helpers ---------------------------------------------------------------------------------------------------


class BlackHole:
    """A TCP server on 127.0.0.1 that accepts every connection, reads what it is sent, and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.received = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                self.received += len(data)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


@contextmanager
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


def stop_run(env: Env, when: Callable[[], bool], signum: int = signal.SIGTERM) -> tuple[int, str, float]:
    """Start `run-all` as a real process, signal it once `when()` holds; (exit code, stderr, seconds to exit)."""
    command = [sys.executable, "-m", "mcnotify", "-q", "--config", str(env.config), "run-all"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not when():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached the moment to stop it"
            time.sleep(0.02)
        time.sleep(0.3)  # well inside the wait, not at its first instant
        proc.send_signal(signum)
        signalled = time.monotonic()
        _, err = proc.communicate(timeout=15)
        return proc.returncode, err, time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("mcnotify: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def last_run(env: Env) -> tuple[str, int | None, str | None]:
    with read_state(env.state) as store:
        (run,) = store.runs(limit=1)
    return run["command"], run["exit_code"], run["error"]


def batch_status(env: Env) -> str:
    with read_state(env.state) as store:
        return store.batches(limit=1)[0].status


def delivered_once(env: Env, count: int) -> None:
    keys = Counter(m["messageKey"] for m in env.accepted())
    assert len(keys) == count and set(keys.values()) == {1}, keys.most_common(3)


def assert_stopped(rc: int, err: str, seconds: float, env: Env, code: int = 143) -> None:
    name = "SIGTERM" if code == 143 else "SIGINT"
    assert rc == code and f"stopped by {name}" in error_line(err), (rc, err)
    assert seconds < STOP_WITHIN, f"took {seconds:.1f} s to stop"
    assert last_run(env)[:2] == ("run-all", code)  # the run is recorded as stopped, not left running


# -- item 1: one state file, one lock --------------------------------------------------------------------------


def _symlink_to_file(real: Path, tmp: Path) -> Path:
    (tmp / "alias.db").symlink_to(real)
    return tmp / "alias.db"


def _symlink_to_folder(real: Path, tmp: Path) -> Path:
    (tmp / "alias-dir").symlink_to(real.parent)
    return tmp / "alias-dir" / real.name


def _dotdot(real: Path, tmp: Path) -> Path:
    (tmp / "elsewhere").mkdir()
    return real.parent / ".." / "elsewhere" / ".." / real.parent.name / real.name


# (A hard link is refused outright: see test_send_holes.py.)
@sqlite_only
@pytest.mark.parametrize("alias", [_symlink_to_file, _symlink_to_folder, _dotdot])
def test_one_state_file_under_two_names_is_one_lock(env: Env, app_db: Any, alias: Callable[[Path, Path], Path]) -> None:
    app_db(event_rows(1, people(2)))
    StateStore(env.state_path).close()  # the state file exists, as after any earlier run
    other = alias(env.state_path, env.tmp)
    holder = StateStore(env.state_path)  # a run in progress under the configured name
    holder.lock()
    try:
        env.write(state={"path": str(other)})  # a second config reaching the same file by another name
        result = run_cli(env.config, "run-all")
        assert result.exit_code == 75 and "holds the lock" in result.output, result.output
    finally:
        holder.close()
    assert env.accepted() == []
    assert run_cli(env.config, "run-all").exit_code == 0  # the lock goes with the run
    delivered_once(env, 6)


@sqlite_only
@pytest.mark.parametrize("what", ["folder", "file"])
def test_a_bind_mount_is_the_same_lock(env: Env, app_db: Any, what: str) -> None:
    app_db(event_rows(1, people(1)))
    StateStore(env.state_path).close()
    real = env.state_path
    source, target = (real.parent, env.tmp / "mounted") if what == "folder" else (real, env.tmp / "mounted.db")
    target.mkdir() if what == "folder" else target.touch()
    mounted = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"bind mount not permitted here: {mounted.stderr.strip()}")
    try:
        holder = StateStore(real)
        holder.lock()
        try:
            env.write(state={"path": str(target / real.name if what == "folder" else target)})
            result = run_cli(env.config, "run-all")
            assert result.exit_code == 75 and "holds the lock" in result.output, result.output
        finally:
            holder.close()
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert env.accepted() == []


# -- item 14: every wait obeys SIGTERM -------------------------------------------------------------------------


def test_sigterm_while_the_sftp_server_never_answers(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(3)))
    with black_hole() as hole:
        env.write(sftp={"port": hole.port, "timeout": 30.0})
        rc, err, seconds = stop_run(env, lambda: bool(hole.connections))
    assert_stopped(rc, err, seconds, env)
    assert batch_status(env) == "claimed"  # the claimed rows are kept; the upload is redone
    env.write(sftp={"port": env.sshd.port})
    assert run_cli(env.config, "run-all").exit_code == 0
    delivered_once(env, 9)


def test_sigterm_while_the_mc_token_request_hangs(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(3)))
    good = env.values["marketing_cloud"]["auth_url"]
    with black_hole() as hole:
        env.write(marketing_cloud={"auth_url": f"http://127.0.0.1:{hole.port}/", "timeout": 30.0})
        rc, err, seconds = stop_run(env, lambda: hole.received > 0)
    assert_stopped(rc, err, seconds, env)
    assert batch_status(env) == "uploaded"  # the upload is recorded; the import starts next run
    env.write(marketing_cloud={"auth_url": good})
    assert run_cli(env.config, "run-all").exit_code == 0
    delivered_once(env, 9)


def test_sigterm_while_mysql_never_answers(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(1)))
    good = env.values["source"]["url"]
    with black_hole() as hole:
        env.write(source={"url": good.replace(f":{env.mariadb.port}/", f":{hole.port}/"), "connect_timeout": 30.0})
        rc, err, seconds = stop_run(env, lambda: bool(hole.connections))
    assert_stopped(rc, err, seconds, env)
    env.write(source={"url": good})
    assert run_cli(env.config, "run-all").exit_code == 0
    delivered_once(env, 3)


TRIGGERED = "/messaging/v1/messageDefinitionSends"  # (SMS go out first: they do not wait for the import)


def _slow_sends(env: Env, seconds: float, times: int = 10_000, path: str = "/messaging") -> Callable[[], bool]:
    """MC's send endpoints take `seconds` to answer; returns "a send is being held" for stop_run."""
    env.sandbox.settings.slow_seconds = seconds
    env.sandbox.account.inject("slow", times=times, path_prefix=path)
    fault = env.sandbox.account.faults[-1]
    return lambda: fault.remaining < times


def test_sigterm_while_a_transactional_send_hangs(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(20)))
    env.write(email={"batch_size": 5, "concurrency": 2}, marketing_cloud={"timeout": 30.0})
    rc, err, seconds = stop_run(env, _slow_sends(env, 30.0))
    assert_stopped(rc, err, seconds, env)
    assert statuses(env, "email")["pending"] == 40  # nothing recorded as sent that was not; keys make a resend safe
    env.sandbox.account.faults.clear()
    assert run_cli(env.config, "run-all").exit_code == 0
    delivered_once(env, 60)


def test_sigterm_during_a_retry_backoff(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(5)))
    env.write(marketing_cloud={"backoff_max": 60.0, "max_attempts": 5})
    env.sandbox.account.inject("500", times=10_000, path_prefix="/messaging")
    fault = env.sandbox.account.faults[-1]
    rc, err, seconds = stop_run(env, lambda: fault.remaining < 10_000)
    assert_stopped(rc, err, seconds, env)


def test_sigterm_records_a_hung_triggered_send_as_unknown(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(10)))
    env.write(email={"api": "triggered-send", "concurrency": 2}, marketing_cloud={"timeout": 30.0})
    rc, err, seconds = stop_run(env, _slow_sends(env, 30.0, path=TRIGGERED))
    assert_stopped(rc, err, seconds, env)
    counts = statuses(env, "email")
    # Only the requests MC had been handed are unknown; the rest go out next run.
    assert 1 <= counts["unknown"] <= 2 and counts["pending"] == 20 - counts["unknown"], counts
    with read_state(env.state) as store:
        reasons = {n.reason or "" for n in store.notifications(status="unknown")}
    assert all("stop request" in r for r in reasons), reasons


def test_sigterm_records_a_slow_triggered_send_that_answers_within_the_grace(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(10)))
    env.write(email={"api": "triggered-send", "concurrency": 1}, marketing_cloud={"timeout": 30.0})
    rc, err, seconds = stop_run(env, _slow_sends(env, 1.0, times=1, path=TRIGGERED))
    assert_stopped(rc, err, seconds, env)
    counts = statuses(env, "email")
    assert counts["sent"] >= 1 and counts["unknown"] == 0, counts  # its true outcome, not "unknown"
    emails = [m for m in env.accepted() if m["channel"] == "email"]
    assert len(emails) == counts["sent"]  # what MC accepted is what the state says was sent


# -- SIGINT: like SIGTERM, exit 130 ------------------------------------------------------------------------------


def test_ctrl_c_finishes_the_requests_in_flight_and_stops_with_130(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(300)))
    env.sandbox.settings.latency = 0.2
    env.write(email={"batch_size": 5, "concurrency": 2})
    rc, err, seconds = stop_run(env, lambda: any(m["channel"] == "email" for m in env.accepted()), signal.SIGINT)
    assert_stopped(rc, err, seconds, env, code=130)
    with read_state(env.state) as store:
        sent = {n.message_key for n in store.notifications(status="sent")}
    assert {m["messageKey"] for m in env.accepted()} == sent and 0 < len(sent) < 900
    env.sandbox.settings.latency = 0
    assert run_cli(env.config, "run-all").exit_code == 0
    delivered_once(env, 900)


def test_ctrl_c_while_the_sftp_server_never_answers(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(1)))
    with black_hole() as hole:
        env.write(sftp={"port": hole.port, "timeout": 30.0})
        rc, err, seconds = stop_run(env, lambda: bool(hole.connections), signal.SIGINT)
    assert_stopped(rc, err, seconds, env, code=130)


# -- item 15: the sandbox command obeys SIGTERM ------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sandbox_command_stops_on_a_signal(tmp_path: Path, signum: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcnotify", "sandbox", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        config = tmp_path / "config.toml"
        deadline = time.monotonic() + 30
        while not (config.exists() and "[templates." in config.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "the sandbox did not start"
            time.sleep(0.05)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "sandbox stopped" in out, (proc.returncode, err)
