"""Stops and locks: one state file is one lock under every name, and SIGTERM / Ctrl-C end a run within a few
seconds whatever it is waiting for, with the work in flight recorded (issue 9, items 1, 14, 15 and SIGINT)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
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
from tests.conftest import Env
from tests.helpers import event_rows, people, run_cli

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
    with sqlite3.connect(env.state_path) as conn:
        row = conn.execute("SELECT command, exit_code, error FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    return row[0], row[1], row[2]


def statuses(env: Env) -> Counter[str]:
    with sqlite3.connect(env.state_path) as conn:
        return Counter(r[0] for r in conn.execute("SELECT status FROM notifications WHERE channel = 'email'"))


def batch_status(env: Env) -> str:
    with sqlite3.connect(env.state_path) as conn:
        return str(conn.execute("SELECT status FROM batches ORDER BY id DESC LIMIT 1").fetchone()[0])


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


def _hard_link(real: Path, tmp: Path) -> Path:
    (tmp / "hard").mkdir(mode=0o700)
    os.link(real, tmp / "hard" / "linked.db")
    return tmp / "hard" / "linked.db"


@pytest.mark.parametrize("alias", [_symlink_to_file, _symlink_to_folder, _dotdot, _hard_link])
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
