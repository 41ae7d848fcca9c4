"""Failing loudly and correctly (issue 11 §4-8, §11): refused notifications fail the run, one channel's outage
does not hold the other back, SFTP key problems are configuration errors naming the file, steps show how they
ended, the last line carries its journald priority, and a held lock says who holds it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import pytest

from tests.conftest import Env
from tests.helpers import TEMPLATES, event_rows, people, run_cli, statuses
from tests.test_follow import slack


def step_status(env: Env, step: str) -> str | None:
    shown = run_cli(env.config, "show", "1", "--json")
    return json.loads(shown.output)["steps"].get(step, {}).get("status") if shown.exit_code == 0 else None


def last_run(env: Env) -> dict[str, Any]:
    return dict(json.loads(run_cli(env.config, "history", "--json").output)[0])


# -- §4 permanent refusals --------------------------------------------------------------------------------------
def test_a_definition_mc_does_not_have_fails_the_run_alerts_and_everything_else_goes(env: Env, app_db: Any) -> None:
    env.values["templates"] = {**TEMPLATES, "envelope-sent": {**TEMPLATES["envelope-sent"], "definition_key": "typo"}}
    app_db(event_rows(1, people(3)))
    with slack() as (alerts, port):
        env.write(alerts={"slack_webhook": f"http://127.0.0.1:{port}/hook"})
        result = run_cli(env.config, "run-all")
    assert result.exit_code == 65, result.output
    assert "refused 3 notification(s) for good" in result.output
    assert "send-sms: 3 sent" in result.output  # the summaries are all there
    assert statuses(env) == {"sent": 6, "failed": 3}
    assert last_run(env)["exit_code"] == 65
    assert len(alerts) == 1 and "exit code 65" in alerts[0], alerts
    shown = json.loads(run_cli(env.config, "show", "1", "--json").output)
    assert shown["steps"]["send-email"]["status"] == "failed"
    assert run_cli(env.config, "run-all").exit_code == 0  # nothing new: the failure is not repeated


def test_send_email_alone_exits_65_when_mc_refuses(env: Env, app_db: Any) -> None:
    env.values["templates"] = {**TEMPLATES, "envelope-sent": {**TEMPLATES["envelope-sent"], "definition_key": "typo"}}
    env.write()
    app_db(event_rows(1, people(2)))
    assert run_cli(env.config, "sync").exit_code == 0
    assert run_cli(env.config, "wait-import").exit_code == 0
    result = run_cli(env.config, "send-email")
    assert result.exit_code == 65 and "2 sent" in result.output and "2 failed" in result.output, result.output


# -- §5 channels fail independently ------------------------------------------------------------------------------
@pytest.mark.parametrize("sms_waits", [False, True])
def test_an_email_outage_does_not_hold_back_the_sms(env: Env, app_db: Any, sms_waits: bool) -> None:
    env.write(
        marketing_cloud={"max_attempts": 2, "backoff_max": 0.1},
        sms={"wait_for_import": sms_waits},
    )
    env.sandbox.account.inject("503", times=100_000, path_prefix="/messaging/v1/email")
    app_db(event_rows(1, people(4)))
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 69, result.output
    assert "send-sms: 4 sent" in result.output and "send-email" in result.output, result.output
    assert Counter(m["channel"] for m in env.accepted()) == {"sms": 4}
    assert statuses(env) == {"sent": 4, "pending": 8}
    env.sandbox.account.faults.clear()
    assert run_cli(env.config, "run-all").exit_code == 0
    assert statuses(env) == {"sent": 12}


# -- §6 SFTP key problems ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("problem", ["missing", "garbage", "directory", "empty"])
def test_an_unusable_sftp_key_is_a_config_error_naming_the_file(env: Env, app_db: Any, problem: str) -> None:
    key = env.tmp / f"key-{problem}"
    if problem == "garbage":
        key.write_bytes(b"\xff\xfe not a key at all\n")
    elif problem == "directory":
        key.mkdir()
    elif problem == "empty":
        key.write_bytes(b"")
    env.write(sftp={"key_file": str(key)})
    app_db(event_rows(1, people(1)))
    checked = run_cli(env.config, "config", "check")
    assert checked.exit_code == 78 and str(key) in checked.output, checked.output
    result = run_cli(env.config, "sync")
    assert result.exit_code == 78, result.output
    assert str(key) in result.output and "unreachable" not in result.output and "attempts" not in result.output
    doctor = run_cli(env.config, "doctor")
    assert doctor.exit_code != 0 and str(key) in doctor.output
    assert statuses(env) == {"pending": 3}  # claimed and kept: the next run uploads once the key is fixed


# -- §7 steps show how they ended --------------------------------------------------------------------------------
def test_a_step_cut_short_by_a_failure_shows_failed_not_running(env: Env, app_db: Any) -> None:
    env.write(marketing_cloud={"max_attempts": 2, "backoff_max": 0.1})
    env.sandbox.account.inject("503", times=100_000, path_prefix="/messaging")
    app_db(event_rows(1, people(2)))
    assert run_cli(env.config, "run-all").exit_code == 69
    steps = json.loads(run_cli(env.config, "show", "1", "--json").output)["steps"]
    assert {name: s["status"] for name, s in steps.items()}["send-email"] == "failed", steps
    assert all(s["status"] != "running" and s["finished_at"] for s in steps.values()), steps


def test_a_killed_run_shows_interrupted_and_skip_ends_the_batchs_steps(env: Env, app_db: Any) -> None:
    env.sandbox.settings.import_lag = 600  # the import never finishes while the test runs
    app_db(event_rows(1, people(2)))
    command = [sys.executable, "-m", "mcnotify", "-q", "--config", str(env.config), "run-all"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while step_status(env, "wait-import") != "running":
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    steps = json.loads(run_cli(env.config, "show", "1", "--json").output)["steps"]
    assert steps["wait-import"]["status"] == "interrupted" and "killed" in steps["wait-import"]["detail"]
    assert "gone" in run_cli(env.config, "history").output
    skipped = run_cli(env.config, "skip", "--batch", "1", "--reason", "MC import stuck")
    assert skipped.exit_code == 0, skipped.output
    steps = json.loads(run_cli(env.config, "show", "1", "--json").output)["steps"]
    assert "running" not in {s["status"] for s in steps.values()}, steps


# -- §8 journald priority of the last line -----------------------------------------------------------------------
def test_the_final_error_line_has_priority_err_under_journald(env: Env, app_db: Any) -> None:
    env.write(sftp={"key_file": str(env.tmp / "no-such-key")})
    app_db(event_rows(1, people(1)))
    journal = {**os.environ, "JOURNAL_STREAM": "8:1234"}
    command = [sys.executable, "-m", "mcnotify", "--config", str(env.config), "sync"]
    done = subprocess.run(command, capture_output=True, text=True, env=journal)
    assert done.returncode == 78
    assert done.stderr.splitlines()[-1].startswith("<3>mcnotify: error: [sftp] key_file"), done.stderr


# -- §11 a held lock --------------------------------------------------------------------------------------------
def test_a_held_lock_says_who_holds_it_as_a_notice(env: Env, app_db: Any) -> None:
    env.write(source={"poll_interval": 0.2})
    app_db(event_rows(1, people(1)))
    command = [sys.executable, "-m", "mcnotify", "-q", "--config", str(env.config), "run-all", "--follow"]
    follower = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while len(env.accepted()) < 3:
            assert time.monotonic() < deadline and follower.poll() is None
            time.sleep(0.1)
        journal = {**os.environ, "JOURNAL_STREAM": "8:1234"}
        held = subprocess.run(
            [sys.executable, "-m", "mcnotify", "--config", str(env.config), "run-all"],
            capture_output=True,
            text=True,
            env=journal,
        )
    finally:
        follower.send_signal(signal.SIGTERM)
        follower.wait(20)
    assert held.returncode == 75
    last = held.stderr.splitlines()[-1]
    if isinstance(env.state, str):  # the MariaDB state: the follower's row in the processes names it
        assert last.startswith("<5>mcnotify: followers work on"), held.stderr
    else:  # the file: the run the follower recorded names it
        assert last.startswith("<5>mcnotify: another run holds the lock") and "run-all" in last, held.stderr
    assert f"pid {follower.pid}" in last and "error" not in last


# -- what an operator's first day found next ---------------------------------------------------------------------
def test_an_sftp_outage_does_not_hold_back_the_sms(env: Env, app_db: Any) -> None:
    env.write(sftp={"port": 1})  # nothing listens there
    app_db(event_rows(1, people(3)))
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 69, result.output
    assert Counter(m["channel"] for m in env.accepted()) == {"sms": 3}
    assert "sms_sent" in json.dumps(last_run(env)["counts"])  # what the run did is in history
    env.write(sftp={"port": env.sshd.port})
    assert run_cli(env.config, "run-all").exit_code == 0
    assert statuses(env) == {"sent": 9}


def test_the_follower_sends_sms_while_sftp_is_down(env: Env, app_db: Any) -> None:
    env.write(sftp={"port": 1}, source={"poll_interval": 0.2})
    app_db(event_rows(1, people(2)))
    command = [sys.executable, "-m", "mcnotify", "-q", "--config", str(env.config), "run-all", "--follow"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while Counter(m["channel"] for m in env.accepted())["sms"] < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "the SMS did not go"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert {m["channel"] for m in env.accepted()} == {"sms"}


def test_an_email_outage_still_drains_the_sms_backlog(env: Env, app_db: Any) -> None:
    env.write(source={"batch_limit": 6}, marketing_cloud={"max_attempts": 2, "backoff_max": 0.1})
    env.sandbox.account.inject("503", times=100_000, path_prefix="/messaging/v1/email")
    app_db(event_rows(1, people(10)))  # 30 rows: five claims of 6
    assert run_cli(env.config, "run-all").exit_code == 69
    assert Counter(m["channel"] for m in env.accepted()) == {"sms": 10}


def test_send_units_started_together_wait_for_each_others_lock(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(30)))
    assert run_cli(env.config, "sync").exit_code == 0
    assert run_cli(env.config, "wait-import").exit_code == 0
    env.sandbox.settings.latency = 0.02
    waiting = {**os.environ, "MCNOTIFY_LOCK_WAIT": "60"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mcnotify", "-q", "--config", str(env.config), step],
            env=waiting,
            stderr=subprocess.PIPE,
            text=True,
        )
        for step in ("send-email", "send-sms")
    ]
    codes = [(p.wait(60), p.stderr.read() if p.stderr else "") for p in procs]
    assert [c for c, _ in codes] == [0, 0], codes
    assert statuses(env) == {"sent": 90}


def test_the_same_refusal_with_other_counts_is_alerted_once(env: Env, app_db: Any) -> None:
    env.values["templates"] = {**TEMPLATES, "envelope-sent": {**TEMPLATES["envelope-sent"], "definition_key": "typo"}}
    with slack() as (alerts, port):
        env.write(alerts={"slack_webhook": f"http://127.0.0.1:{port}/hook"})
        for start, count in ((1, 1), (100, 2), (200, 3)):
            app_db(event_rows(start, people(count, offset=start)))
            assert run_cli(env.config, "run-all").exit_code == 65
    assert len(alerts) == 1, alerts


def test_a_config_that_does_not_load_is_still_alerted(env: Env) -> None:
    with slack() as (alerts, port):
        env.write(alerts={"slack_webhook": f"http://127.0.0.1:{port}/hook"})
        env.config.write_text(env.config.read_text() + "\n[sftpx]\nhost = 'x'\n")
        assert run_cli(env.config, "run-all").exit_code == 78
        result = run_cli(env.config, "alert", "--unit", "mcnotify.service")
    assert result.exit_code == 0, result.output
    assert len(alerts) == 1 and "unknown section [sftpx]" in alerts[0], alerts


def test_the_environment_wins_over_a_secret_file(env: Env, app_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = env.tmp / "mc_secret"
    secret.write_text("a-wrong-secret-123\n")
    secret.chmod(0o600)
    good = env.values["marketing_cloud"].pop("client_secret")
    env.write(marketing_cloud={"client_secret_file": str(secret)})
    app_db(event_rows(1, people(1)))
    assert run_cli(env.config, "run-all").exit_code == 78  # the file's (wrong) secret
    monkeypatch.setenv("MCNOTIFY_MARKETING_CLOUD_CLIENT_SECRET", good)
    assert run_cli(env.config, "run-all").exit_code == 0
    assert statuses(env) == {"sent": 3}


def test_a_config_with_bytes_that_are_not_utf8_is_a_config_error(env: Env) -> None:
    env.config.write_bytes(env.config.read_bytes().replace(b"mcnotify-subscribers", b"mcnotify-\xff-subscribers", 1))
    result = run_cli(env.config, "config", "check")
    assert result.exit_code == 78 and "not UTF-8" in result.output, result.output


def test_doctor_checks_the_metrics_folder_and_names_the_section(env: Env) -> None:
    env.write(metrics={"textfile": str(env.tmp / "no-such-folder" / "mcnotify.prom")})
    result = run_cli(env.config, "doctor")
    assert result.exit_code == 1
    assert "metrics" in result.output and "does not exist" in result.output and "[metrics] textfile" in result.output
    assert run_cli(env.config, "config", "check").exit_code == 78


def test_a_stopped_follower_leaves_no_step_interrupted(env: Env, app_db: Any) -> None:
    env.sandbox.settings.import_lag = 600  # the import stays in flight
    env.write(source={"poll_interval": 0.2})
    app_db(event_rows(1, people(2)))
    command = [sys.executable, "-m", "mcnotify", "-q", "--config", str(env.config), "run-all", "--follow"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while step_status(env, "wait-import") is None:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        app_db(event_rows(100, people(1, offset=50)))  # claimed while the import runs: its sync step stays open
        time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    shown = run_cli(env.config, "show", "2", "--json")
    steps = json.loads(shown.output)["steps"] if shown.exit_code == 0 else {}
    first = json.loads(run_cli(env.config, "show", "1", "--json").output)["steps"]
    for name, step in {**first, **{f"2:{k}": v for k, v in steps.items()}}.items():
        assert step["status"] not in ("running", "interrupted"), (name, step)
    text = run_cli(env.config, "show", "1").output
    again = run_cli(env.config, "show", "1").output
    assert text == again  # nothing counts up
