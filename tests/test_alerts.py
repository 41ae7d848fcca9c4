"""One alert per failure: the run's own alert and the alert unit's (OnFailure=) are one message; the same
failure again only after alerts.repeat_after, a different one at once; recovery still told."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mcnotify.sandbox import Sandbox
from mcnotify.sandbox import demo as demo_lib
from tests.helpers import run_cli


class Slack(BaseHTTPRequestHandler):
    texts: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Slack.texts.append(json.loads(body)["text"])
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def alerting(tmp_path: Path) -> Iterator[tuple[Sandbox, Path]]:
    box, config, _ = demo_lib.prepare(tmp_path)
    Slack.texts = []
    web = HTTPServer(("127.0.0.1", 0), Slack)
    threading.Thread(target=web.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}/hook"
    config.write_text(config.read_text() + f'\n[alerts]\nslack_webhook = "{url}"\non_recovery = true\n')
    yield box, config
    web.shutdown()
    box.stop()


def test_one_alert_per_failure_repeat_after_quiet_period_and_recovery(alerting: tuple[Sandbox, Path]) -> None:
    box, config = alerting
    good = config.read_text()
    config.write_text(good.replace(box.settings.client_secret, "wrong-secret"))
    assert run_cli(config, "run-all").exit_code == 78
    assert len(Slack.texts) == 1 and "run-all failed" in Slack.texts[0] and "exit code 78" in Slack.texts[0]
    # What systemd's OnFailure= starts next: the same failure, already alerted by the run.
    unit = run_cli(config, "alert", "--unit", "mcnotify.service")
    assert unit.exit_code == 0 and len(Slack.texts) == 1
    assert "not repeated" in unit.output
    # The timer's next runs fail the same way: nothing new, from the run or from the unit.
    for _ in range(2):
        assert run_cli(config, "run-all").exit_code == 78
        assert run_cli(config, "alert", "--unit", "mcnotify.service").exit_code == 0
    assert len(Slack.texts) == 1
    # Something changes (another error, another exit code): alerted at once.
    broken = good.replace(box.url.rstrip("/"), "http://127.0.0.1:9").replace(
        "[marketing_cloud]", "[marketing_cloud]\nmax_attempts = 2", 1
    )
    config.write_text(broken.replace(box.settings.client_secret, "wrong-secret"))
    assert run_cli(config, "run-all").exit_code == 69
    assert len(Slack.texts) == 2 and "exit code 69" in Slack.texts[1]
    # After the quiet period the same failure is told again.
    config.write_text(config.read_text().replace("on_recovery = true", "on_recovery = true\nrepeat_after = 1"))
    time.sleep(1.1)
    assert run_cli(config, "run-all").exit_code == 69
    assert len(Slack.texts) == 3 and Slack.texts[2] == Slack.texts[1]
    # Recovery: told once; the next success says nothing.
    config.write_text(good)
    assert run_cli(config, "run-all").exit_code == 0
    assert len(Slack.texts) == 4 and "run-all recovered" in Slack.texts[3]
    assert run_cli(config, "run-all").exit_code == 0 and len(Slack.texts) == 4
    # A failure after the recovery is alerted again, although it is the one alerted before.
    with sqlite3.connect(config.parent / "app.sqlite") as conn:  # new rows: this run must reach MC
        conn.execute(
            "INSERT INTO notifications SELECT notification_id + 1000, template, subscriber_key, email, phone,"
            " sender_name, receiver_name, amount, created_at FROM notifications"
        )
    config.write_text(broken)
    assert run_cli(config, "run-all").exit_code == 69
    # (this time both channels had work and each reports MC unreachable)
    assert len(Slack.texts) == 5 and "exit code 69" in Slack.texts[4] and "127.0.0.1:9 unreachable" in Slack.texts[4]


def test_alert_unit_tells_of_a_run_that_died_unrecorded(alerting: tuple[Sandbox, Path], tmp_path: Path) -> None:
    _, config = alerting
    assert run_cli(config, "sync").exit_code == 0
    # A sync killed by systemd (TimeoutStartSec, OOM) leaves its run unfinished and alerts nothing itself.
    # Raw sqlite3: a run no mcnotify process would record this way (tampering on purpose).
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        conn.execute(
            "INSERT INTO runs (command, host, pid, started_at) VALUES ('sync', 'here', 4242, ?)", (time.time(),)
        )
    assert run_cli(config, "alert", "--unit", "mcnotify-sync.service").exit_code == 0
    assert len(Slack.texts) == 1
    assert "sync failed" in Slack.texts[0] and "(pid 4242) ended without recording how" in Slack.texts[0]
    assert "journalctl -u mcnotify-sync.service" in Slack.texts[0]
    assert run_cli(config, "alert", "--unit", "mcnotify-sync.service").exit_code == 0
    assert len(Slack.texts) == 1
    # Another unit's failure is its own alert.
    assert run_cli(config, "alert", "--unit", "mcnotify-send-sms.service").exit_code == 0
    assert len(Slack.texts) == 2 and "send-sms failed" in Slack.texts[1]
