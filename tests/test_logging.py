"""Retries say so, -v shows requests, SQL timings and decisions, global options work after the command, and
--log-json lines carry what they are about, the final error line included."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import Env
from tests.helpers import event_rows, people, run_cli
from tests.services import free_port


def records(stderr: str) -> list[dict[str, Any]]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), lines  # every line is JSON, the last one too
    return [json.loads(line) for line in lines]


def test_retries_logged_and_verbose_after_the_command(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(3)))
    env.sandbox.account.inject("503", times=1, path_prefix="/v2/token")
    env.sandbox.account.inject("503", times=2, path_prefix="/messaging/v1/email")
    result = run_cli(env.config, "run-all", "-v")  # the global option after the command
    assert result.exit_code == 0, result.output
    log = result.stderr
    # Each retry at INFO: what failed, attempt n of m, the wait.
    assert "INFO MC token request: MC auth 127.0.0.1:" in log
    assert "answered HTTP 503; attempt 1 of 5 failed, retrying in 0.5 s" in log
    assert (
        "INFO MC POST /messaging/v1/email/messages/: MC answered HTTP 503: Service Unavailable; attempt 1 of 5" in log
    )
    # -v: requests with method, path, status and time; the source's SQL timings; the send gate's decision.
    assert "DEBUG MC request POST /messaging/v1/email/messages/: HTTP 202 in " in log
    assert "DEBUG MC token request: HTTP 200 in " in log
    assert "DEBUG source (MySQL): query after 0, limit " in log and "9 row(s) read in" in log
    assert "send-email: batch 1 (imported): all may go now, 6 to send" in log
    assert "SFTP: " in log and "bytes uploaded to /Import/" in log
    # Never a token, a secret or a contact.
    secret = env.values["marketing_cloud"]["client_secret"]
    assert secret not in result.output and "Bearer" not in result.output and "access_token" not in result.output
    assert env.mariadb.password not in result.output
    assert env.sandbox.account.tokens and not any(t in result.output for t in env.sandbox.account.tokens)
    assert "receiver0@example.com" not in result.output and "sender0@example.com" not in result.output
    # Without -v: the retries still show, the debug lines do not.
    app_db(event_rows(100, people(1, offset=10)))
    env.sandbox.account.inject("503", times=1, path_prefix="/messaging/v1/sms")
    plain = run_cli(env.config, "run-all")
    assert "attempt 1 of 5 failed" in plain.stderr and "DEBUG" not in plain.stderr
    # -q after the command: a run with nothing to do prints nothing but warnings (this query has no created_at).
    quiet = run_cli(env.config, "run-all", "-q")
    assert quiet.stdout == "" and all(" WARNING " in line for line in quiet.stderr.splitlines())
    assert run_cli(env.config, "status", "-q", "--limit", "1").exit_code == 0


def test_mysql_and_sftp_retries_are_logged(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(1)))
    good = env.values["source"]["url"]
    env.write(source={"url": good.replace(f":{env.mariadb.port}/", f":{free_port()}/"), "connect_timeout": 1.0})
    down = run_cli(env.config, "run-all")
    assert down.exit_code == 69
    assert "MySQL connect to 127.0.0.1:" in down.stderr and "attempt 1 of 3 failed, retrying in 0.5 s" in down.stderr
    assert "attempt 2 of 3 failed" in down.stderr
    env.write(source={"url": good}, sftp={"port": free_port(), "timeout": 1.0})
    refused = run_cli(env.config, "sync")
    assert refused.exit_code == 69
    assert (
        "SFTP connect to 127.0.0.1:" in refused.stderr and "attempt 1 of 3 failed, retrying in 2.0 s" in refused.stderr
    )


def test_json_lines_carry_fields_and_the_final_error(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(3)))
    env.sandbox.account.inject("503", times=1, path_prefix="/messaging/v1/sms")
    ok = run_cli(env.config, "run-all", "--log-json")
    assert ok.exit_code == 0, ok.output
    lines = records(ok.stderr)
    assert all(r["command"] == "run-all" for r in lines)
    claimed = next(r for r in lines if r["message"].startswith("sync: claimed"))
    assert claimed["step"] == "sync" and claimed["batch"] == 1 and claimed["counts"]["new_rows"] == 9
    sent = next(r for r in lines if r.get("step") == "send-email" and "counts" in r)
    assert sent["batch"] == 1 and sent["counts"] == {"sent": 6, "failed": 0, "unknown": 0, "requeued": 0}
    imported = next(r for r in lines if r.get("step") == "wait-import" and "counts" in r)
    assert imported["counts"]["ok"] == 6
    retry = next(r for r in lines if "attempt" in r)
    assert retry["level"] == "info" and retry["attempt"] == 1 and retry["attempts"] == 5 and retry["wait"] >= 0
    assert "HTTP 503" in retry["error"]
    # The final error line is JSON too, at level error, with the exit code.
    env.sandbox.account.inject("503", times=1000, path_prefix="/messaging")
    env.write(marketing_cloud={"max_attempts": 2})
    app_db(event_rows(100, people(1, offset=10)))
    failed = run_cli(env.config, "--log-json", "run-all")
    assert failed.exit_code == 69
    last = records(failed.stderr)[-1]
    assert last["level"] == "error" and last["exit_code"] == 69 and "gave up after 2 attempts" in last["message"]
    assert "mcnotify: error:" not in failed.stderr
