"""Running it like a service: history, show, retry, skip, alerts, metrics, logs, doctor."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mcnotify.sandbox import Sandbox
from mcnotify.sandbox import demo as demo_lib
from tests.conftest import Env
from tests.helpers import event_rows, people, run_cli, tamper


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[Sandbox, Path]]:
    box, config, _ = demo_lib.prepare(tmp_path)
    yield box, config
    box.stop()


class Catcher(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Catcher.seen.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


class SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP to receive one message."""

    messages: ClassVar[list[str]] = []

    def handle(self) -> None:
        self.wfile.write(b"220 test ESMTP\r\n")
        data: list[str] = []
        while line := self.rfile.readline():
            text = line.decode().rstrip("\r\n")
            verb = text.split(" ")[0].upper()
            if verb in ("EHLO", "HELO"):
                self.wfile.write(b"250 test\r\n")
            elif verb == "DATA":
                self.wfile.write(b"354 go on\r\n")
                while (body := self.rfile.readline().decode()) not in (".\r\n", ""):
                    data.append(body)
                SmtpHandler.messages.append("".join(data))
                self.wfile.write(b"250 queued\r\n")
            elif verb == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def serve(server: socketserver.BaseServer) -> None:
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()


def add(config: Path, text: str) -> None:
    config.write_text(config.read_text() + "\n" + text + "\n")


def test_history_show_and_metrics(demo: tuple[Sandbox, Path], tmp_path: Path) -> None:
    _, config = demo
    metrics = tmp_path / "mcnotify.prom"
    add(config, f'[metrics]\ntextfile = "{metrics}"')
    assert run_cli(config, "run-all").exit_code == 0
    assert run_cli(config, "run-all").exit_code == 0
    history = json.loads(run_cli(config, "history", "--json").output)
    assert [r["command"] for r in history] == ["run-all", "run-all"] and history[0]["exit_code"] == 0
    assert history[1]["counts"]["seconds"] > 0
    assert json.loads(run_cli(config, "history", "--json", "--result", "failed").output) == []
    shown = run_cli(config, "show", "1")
    assert shown.exit_code == 0 and "█" in shown.output and "wait-import" in shown.output
    assert "email: 1 expired, 6 invalid, 19 sent" in shown.output and "Completed" in shown.output
    view = json.loads(run_cli(config, "show", "1", "--json").output)
    assert view["steps"]["send-email"]["status"] == "done" and view["import"]["ok"] == 7
    text = metrics.read_text()
    assert 'mcnotify_last_success_timestamp_seconds{step="run-all"}' in text
    assert 'mcnotify_messages{channel="email",result="sent"} 19' in text
    assert 'mcnotify_last_run_exit_code{step="run-all"} 0' in text
    missing = run_cli(config, "show", "99")
    assert missing.exit_code == 1 and "no batch 99" in missing.output


def test_alerts_on_failure_and_recovery_never_fail_the_run(demo: tuple[Sandbox, Path]) -> None:
    box, config = demo
    Catcher.seen, SmtpHandler.messages = [], []
    web = HTTPServer(("127.0.0.1", 0), Catcher)
    smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), SmtpHandler)
    serve(web)
    serve(smtp)
    base = f"http://127.0.0.1:{web.server_address[1]}"
    add(
        config,
        f'[alerts]\nslack_webhook = "{base}/slack"\nping_url = "{base}/ping"\n'
        f'smtp_host = "127.0.0.1"\nsmtp_port = {smtp.server_address[1]}\nsmtp_security = "none"\n'
        'smtp_to = "oncall@example.com"\non_recovery = true',
    )
    text = config.read_text()
    config.write_text(text.replace(box.settings.client_secret, "wrong-secret"))
    failed = run_cli(config, "run-all")
    assert failed.exit_code == 78
    paths = [p for p, _ in Catcher.seen]
    assert paths == ["/ping/start", "/ping/fail", "/slack"]
    assert b"run-all failed" in Catcher.seen[2][1] and b"wrong-secret" not in Catcher.seen[2][1]
    assert len(SmtpHandler.messages) == 1 and "Subject: mcnotify run-all failed" in SmtpHandler.messages[0]
    config.write_text(text)
    assert run_cli(config, "run-all").exit_code == 0
    assert [p for p, _ in Catcher.seen][3:] == ["/ping/start", "/ping", "/slack"]
    assert b"recovered" in Catcher.seen[-1][1]
    web.shutdown()
    smtp.shutdown()
    # Nowhere to deliver alerts: a warning, and the run still succeeds.
    config.write_text(text.replace(base, "http://127.0.0.1:9"))
    result = run_cli(config, "run-all")
    assert result.exit_code == 0 and "healthchecks ping failed" in result.output


def test_retry_and_skip_never_resend_accepted_messages(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(3)))
    env.sandbox.account.inject("503", times=50, path_prefix="/messaging/v1/sms")
    env.write(marketing_cloud={"max_attempts": 2})
    assert run_cli(env.config, "run-all").exit_code == 69
    # Mark the emails failed by hand to model a transient failure that exhausted its retries.
    # Raw SQL: no store operation fails a sent notification; this tampers on purpose.
    tamper(env.state, "UPDATE notifications SET status = 'failed', error_code = '50300' WHERE notification_id = '1'")
    env.sandbox.account.faults.clear()
    again = run_cli(env.config, "retry", "--batch", "1", "--channel", "email")
    assert again.exit_code == 0 and "1 failed notification(s) back to pending" in again.output
    assert run_cli(env.config, "run-all").exit_code == 0
    keys = [m["messageKey"] for m in env.accepted()]
    assert len(keys) == 9 and len(set(keys)) == 9
    # skip: a stuck batch is closed without sending what is left.
    app_db(event_rows(100, people(2, offset=50)))
    env.sandbox.account.inject("503", times=50, path_prefix="/messaging")
    assert run_cli(env.config, "run-all").exit_code == 69
    skipped = run_cli(env.config, "skip", "--batch", "2", "--reason", "campaign cancelled")
    assert skipped.exit_code == 0 and "6 notification(s) skipped" in skipped.output
    env.sandbox.account.faults.clear()
    assert run_cli(env.config, "run-all").exit_code == 0
    assert len(env.accepted()) == 9
    assert run_cli(env.config, "retry", "--batch", "7").exit_code == 1


def test_logs_for_journald_and_json_mask_contacts(demo: tuple[Sandbox, Path], monkeypatch: Any) -> None:
    from mcnotify.logs import RedactingFilter

    _, config = demo
    as_json = run_cli(config, "--log-json", "sync")
    records = [json.loads(line) for line in as_json.stderr.splitlines() if line.startswith("{")]
    assert records and {"time", "level", "logger", "message"} <= set(records[0])
    assert any(r["message"].startswith("sync: claimed 39") for r in records)
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    journal = run_cli(config, "run-all")
    lines = [line for line in journal.stderr.splitlines() if line]
    assert lines and all(line.startswith("<") for line in lines), lines[:3]
    assert any(line.startswith("<6>wait-import: batch 1 import Completed") for line in lines), lines
    import logging

    record = logging.LogRecord("x", logging.INFO, "", 0, "to %s or %s", ("luffy@example.com", "0912-345-678"), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "to l***@example.com or *******678"


def test_doctor_checks_every_dependency(env: Env) -> None:
    result = run_cli(env.config, "doctor")
    assert result.exit_code == 0, result.output
    for name in ("config", "state", "source", "sftp", "mc token", "template envelope-received"):
        assert f"ok     {name}" in result.output or f"ok {name}" in result.output.replace("    ", " ")
    env.write(templates={"envelope-sent": {"channel": "email", "definition_key": "nope"}})
    bad = run_cli(env.config, "doctor")
    assert bad.exit_code == 1 and "create or activate the email definition 'nope'" in bad.output
