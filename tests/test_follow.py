"""run-all --follow against the real services: rows delivered as they arrive, a stop ends it cleanly with exit 0,
transient outages (MC down, MySQL restarted) never end it, and one alert (and a recovery) when one lasts."""

from __future__ import annotations

import http.server
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.conftest import Env
from tests.helpers import event_rows, people, run_cli, statuses


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextmanager
def follower(env: Env) -> Iterator[subprocess.Popen[str]]:
    env.write(source={"poll_interval": 0.2}, **{"import": {"poll_interval": 0.1}})
    command = [sys.executable, "-m", "mcnotify", "--config", str(env.config), "run-all", "--follow"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def stop(proc: subprocess.Popen[str], signum: int = signal.SIGTERM) -> tuple[int, str, float]:
    proc.send_signal(signum)
    started = time.monotonic()
    _, err = proc.communicate(timeout=20)
    return proc.returncode, err, time.monotonic() - started


def delivered_once(env: Env, count: int) -> None:
    keys = Counter(m["messageKey"] for m in env.accepted())
    assert len(keys) == count and set(keys.values()) == {1}, keys.most_common(3)


def test_follow_delivers_rows_as_they_arrive_and_stops_with_exit_0(env: Env, app_db: Any) -> None:
    env.sandbox.settings.import_lag = 0.5
    with follower(env) as proc:
        for wave in range(3):
            app_db(event_rows(1 + wave * 100, people(4, offset=wave * 10)))
            expected = 12 * (wave + 1)
            wait_until(lambda: len(env.accepted()) >= expected, 30, f"wave {wave}")  # noqa: B023
        status = run_cli(env.config, "status", "--json")
        follower_view = json.loads(status.output)["follower"]
        assert follower_view["alive"] is True and follower_view["pid"] == proc.pid
        assert run_cli(env.config, "run-all").exit_code == 75  # a timer's run: the follower holds the lock
        code, err, seconds = stop(proc)
    assert code == 0 and seconds < 5, err
    delivered_once(env, 36)
    assert statuses(env) == {"sent": 36}
    after = json.loads(run_cli(env.config, "status", "--json").output)["follower"]
    assert after["alive"] is False and after["waiting_for"] == "stopped"


def test_ctrl_c_ends_the_follower_with_exit_0_and_the_next_one_resumes(env: Env, app_db: Any) -> None:
    env.sandbox.settings.latency = 0.05
    app_db(event_rows(1, people(200)))
    with follower(env) as proc:
        wait_until(lambda: len(env.accepted()) > 0, 30, "the first sends")
        code, err, seconds = stop(proc, signal.SIGINT)
    assert code == 0 and seconds < 5, err
    with follower(env) as proc:
        wait_until(lambda: len(env.accepted()) >= 600, 60, "everything")
        code, err, _ = stop(proc)
    assert code == 0, err
    delivered_once(env, 600)


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[str] = []  # noqa: RUF012  (one test at a time uses it)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        _Hook.received.append(json.loads(self.rfile.read(length))["text"])
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def slack() -> Iterator[tuple[list[str], int]]:
    """A loopback stand-in for a Slack incoming webhook: (the texts it received, its port)."""
    _Hook.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield _Hook.received, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_mc_down_does_not_end_the_follower_and_one_alert_says_so(env: Env, app_db: Any) -> None:
    with slack() as (alerts, port):
        env.write(
            alerts={"slack_webhook": f"http://127.0.0.1:{port}/hook", "after": 1.0},
            marketing_cloud={"max_attempts": 2, "backoff_max": 0.2},
        )
        env.sandbox.account.inject("503", times=100_000, path_prefix="/messaging")
        app_db(event_rows(1, people(5)))
        with follower(env) as proc:
            wait_until(lambda: any("failing" in a for a in alerts), 30, "the outage alert")
            assert proc.poll() is None  # still following
            env.sandbox.account.faults.clear()
            wait_until(lambda: len(env.accepted()) >= 15, 60, "delivery after MC is back")
            wait_until(lambda: any("recovered" in a for a in alerts), 10, "the recovery message")
            code, err, _ = stop(proc)
    assert code == 0, err
    assert "trying again" in err
    assert sum("failing" in a for a in alerts) == 1
    delivered_once(env, 15)


def test_mysql_restarted_mid_run_does_not_end_the_follower(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(3)))
    with follower(env) as proc:
        wait_until(lambda: len(env.accepted()) >= 9, 30, "the first rows")
        env.mariadb.kill_server()
        time.sleep(2)  # the follower meets a database that is gone
        env.mariadb.start_server()
        app_db(event_rows(100, people(3, offset=10)))
        wait_until(lambda: len(env.accepted()) >= 18, 60, "rows written after the restart")
        assert proc.poll() is None
        code, err, _ = stop(proc)
    assert code == 0, err
    assert "MySQL" in err and "trying again" in err
    delivered_once(env, 18)


def test_sigkill_of_the_follower_ten_times_while_events_arrive_delivers_each_once(env: Env, app_db: Any) -> None:
    env.sandbox.settings.import_lag = 0.4
    env.sandbox.settings.latency = 0.01
    rng = random.Random(20261130)
    written = 0
    for kill in range(10):
        with follower(env) as proc:
            for _ in range(3):  # events keep arriving while it runs
                app_db(event_rows(1 + written * 3, people(2, offset=written)))
                written += 2
                time.sleep(rng.uniform(0.05, 0.4))
            proc.kill()  # SIGKILL: no chance to record anything
            proc.communicate()
        assert proc.returncode == -signal.SIGKILL, kill
    with follower(env) as proc:
        wait_until(lambda: len(env.accepted()) >= 3 * written, 90, "everything after the kills")
        code, err, _ = stop(proc)
    assert code == 0, err
    delivered_once(env, 3 * written)
    assert statuses(env) == {"sent": 3 * written}, err[-3000:]
