"""Issue 9's send-side holes: triggered sends released on every exit path, templates removed from the config,
an email that changed between batches, and dry runs that cannot write."""

from __future__ import annotations

import gc
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mcnotify import config
from mcnotify.errors import DryRunRefused, StateDatabaseError
from mcnotify.runner import open_context
from mcnotify.state import StateStore
from mcnotify.state.mysql import MySQLStore
from mcnotify.steps import send
from tests.conftest import Env, sqlite_only
from tests.helpers import TEMPLATES, event_rows, people, read_state, run_cli, statuses


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of the state's folder (the database, its WAL and -shm, the lock) with its bytes."""
    gc.collect()  # the in-process runs' last connections are closed, as at a real process's exit
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def triggered(env: Env) -> None:
    env.write(email={"api": "triggered-send", "concurrency": 4})


def per_contact(env: Env) -> Counter[tuple[str, str, str]]:
    return Counter((m["definitionKey"], m["contactKey"], m["to"]) for m in env.accepted() if m["channel"] == "email")


# -- dry runs -------------------------------------------------------------------------------------------------------
@sqlite_only
def test_every_dry_run_leaves_the_state_file_byte_for_byte(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(4)))
    assert run_cli(env.config, "sync").exit_code == 0
    assert run_cli(env.config, "wait-import").exit_code == 0
    app_db(event_rows(100, people(3, offset=50)))  # so the sync preview has new rows to read
    folder = env.state_path.parent
    before = snapshot(folder)
    assert env.state_path.name in before
    tokens = env.sandbox.account.token_requests
    for command in ("sync", "wait-import", "send-email", "send-sms", "run-all"):
        result = run_cli(env.config, command, "--dry-run")
        assert result.exit_code == 0, (command, result.output)
        assert snapshot(folder) == before, command
    for view in (("status",), ("status", "--json"), ("history",), ("show", "1"), ("invalid",)):
        assert run_cli(env.config, *view).exit_code == 0, view
        assert snapshot(folder) == before, view
    assert env.accepted() == [] and env.sandbox.account.token_requests == tokens
    assert "would send 8" in run_cli(env.config, "send-email", "--dry-run").output


def test_a_stray_write_or_request_in_a_preview_raises(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(2)))
    assert run_cli(env.config, "sync").exit_code == 0
    settings = config.load(env.config)
    with open_context(settings, dry_run=True) as ctx:
        with pytest.raises((sqlite3.OperationalError, StateDatabaseError), match=r"readonly|READ ONLY"):
            ctx.store.update_batch(1, status="done")
        with pytest.raises(DryRunRefused):
            ctx.mc().call("POST", "messaging/v1/email/messages/", json={})
        with pytest.raises(DryRunRefused):
            ctx.upload(settings.section("sftp"), env.tmp / "any.csv", "x.csv")
    with read_state(env.state) as store:
        assert store.batch(1).status == "importing"  # type: ignore[union-attr]


@sqlite_only
def test_a_preview_of_a_state_from_an_older_release_migrates_only_a_copy(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(2)))
    assert run_cli(env.config, "sync").exit_code == 0
    # Raw sqlite3: turning the file back into an older schema is below any store.
    conn = sqlite3.connect(env.state_path)
    # As the release before migrations 3 and 4 wrote it.
    conn.execute("ALTER TABLE token DROP COLUMN issued_for")
    conn.execute("DROP TABLE contacts")
    conn.execute("ALTER TABLE notifications DROP COLUMN requeued")
    conn.execute("DROP INDEX notifications_sent_at")
    conn.execute("DROP INDEX notifications_pending")
    for column in ("event_at", "sent_at"):
        conn.execute(f"ALTER TABLE notifications DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    before = snapshot(env.state_path.parent)
    assert run_cli(env.config, "send-email", "--dry-run").exit_code == 0
    assert run_cli(env.config, "status").exit_code == 0
    assert snapshot(env.state_path.parent) == before
    # Raw sqlite3: the schema version of the file itself, which a preview must leave alone.
    with sqlite3.connect(env.state_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


# -- triggered sends: rows whose request never left are released ----------------------------------------------------
def test_an_exception_before_the_request_leaves_no_row_unknown(
    env: Env, app_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    triggered(env)
    app_db(event_rows(1, people(20)))
    assert run_cli(env.config, "sync").exit_code == 0
    assert run_cli(env.config, "wait-import").exit_code == 0
    real, calls = send._recipient, []

    def flaky(ctx: Any, n: Any) -> Any:
        calls.append(n.seq)
        if len(calls) == 7:
            raise KeyError("boom")
        return real(ctx, n)

    monkeypatch.setattr(send, "_recipient", flaky)
    broken = run_cli(env.config, "send-email")
    assert broken.exit_code == 1 and "KeyError" in broken.output
    assert statuses(env)["sending"] == 0
    monkeypatch.undo()
    assert run_cli(env.config, "run-all").exit_code == 0
    counts = statuses(env)
    assert counts["unknown"] == 0 and counts["sent"] == 60, counts
    assert set(per_contact(env).values()) == {1} and sum(per_contact(env).values()) == 40


def _triggered_batch_ready(env: Env, app_db: Any) -> None:
    triggered(env)
    app_db(event_rows(1, people(20)))
    assert run_cli(env.config, "sync").exit_code == 0
    assert run_cli(env.config, "wait-import").exit_code == 0


def _fail_call(
    env: Env, monkeypatch: pytest.MonkeyPatch, method: str, nth: int, on_mysql_error: str, on_file_error: str
) -> None:
    """The store's `method` raises on its `nth` call, as each backend's state would fail."""
    on_mysql = isinstance(env.state, str)
    store_class: Any = MySQLStore if on_mysql else StateStore
    real, calls = getattr(store_class, method), []

    def failing(self: StateStore, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == nth:
            raise (
                StateDatabaseError(f"state database: {on_mysql_error}")
                if on_mysql
                else sqlite3.OperationalError(on_file_error)
            )
        return real(self, *args, **kwargs)

    monkeypatch.setattr(store_class, method, failing)


def test_a_state_error_mid_send_marks_unknown_only_requests_that_left(
    env: Env, app_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _triggered_batch_ready(env, app_db)
    _fail_call(env, monkeypatch, "record", 5, "lost connection", "disk I/O error")
    assert run_cli(env.config, "send-email").exit_code == 1
    monkeypatch.undo()
    assert run_cli(env.config, "run-all").exit_code == 0
    counts = statuses(env)
    # Only the call whose result could not be recorded reached MC unrecorded: the others then in flight were
    # still recorded (nothing more was sent after the error).
    assert counts["unknown"] == 1, counts
    assert counts["sent"] + counts["unknown"] == 60 and counts["pending"] == 0
    assert set(per_contact(env).values()) == {1} and sum(per_contact(env).values()) == 40
    status = run_cli(env.config, "status")
    assert "recipientSendId" in status.output and f"unknown {counts['unknown']}" in status.output


def test_a_claim_that_fails_mid_send_loses_no_result_already_in(
    env: Env, app_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From an attack: a claim that fails mid-send (a deadlock, a lost connection) must not lose the results of
    the calls then in flight: a triggered email MC accepted would end 'unknown' instead of 'sent'."""
    _triggered_batch_ready(env, app_db)
    # The claim after the first page: every request of that page is sent or in flight.
    _fail_call(env, monkeypatch, "claim_work", 2, "(1213) Deadlock found when trying to get lock", "database is locked")
    assert run_cli(env.config, "send-email").exit_code == 1
    monkeypatch.undo()
    counts = statuses(env)
    # Every request that went out is recorded sent (none left 'sending', to end 'unknown'); the rest wait.
    assert counts["sent"] == len(env.accepted()) > 0 and counts["pending"] == 60 - counts["sent"], counts


# -- a template removed from the config ----------------------------------------------------------------------------
@pytest.mark.parametrize("api", ["transactional", "triggered-send"])
def test_a_removed_template_holds_its_rows_and_blocks_nothing(env: Env, app_db: Any, api: str) -> None:
    env.write(email={"api": api})
    app_db(event_rows(1, people(5)))
    assert run_cli(env.config, "sync").exit_code == 0
    assert run_cli(env.config, "wait-import").exit_code == 0
    without = {k: v for k, v in TEMPLATES.items() if k != "envelope-sent"}
    env.values["templates"] = without
    env.write()
    for _ in range(2):  # run after run: nothing fails, nothing turns unknown
        result = run_cli(env.config, "run-all")
        assert result.exit_code == 0, result.output
        assert "envelope-sent (5)" in result.output
        assert statuses(env) == {"sent": 10, "pending": 5}
    status = run_cli(env.config, "status", "--json")
    assert '"envelope-sent": 5' in status.output
    assert {m["definitionKey"] for m in env.accepted()} == {"red-envelope-received", "red-envelope-sms"}
    env.values["templates"] = dict(TEMPLATES)
    env.write()
    assert run_cli(env.config, "run-all").exit_code == 0
    assert statuses(env) == {"sent": 15}
    assert Counter(m["definitionKey"] for m in env.accepted())["red-envelope-sent"] == 5


# -- the newest email wins across batches --------------------------------------------------------------------------
def test_an_email_changed_in_a_later_batch_goes_to_the_newest_address(env: Env, app_db: Any) -> None:
    triggered(env)
    app_db([(1, "envelope-received", "m-1", "old@example.com", "0912345678", "Luffy", "Nami", 8)])
    assert run_cli(env.config, "sync").exit_code == 0
    assert run_cli(env.config, "wait-import").exit_code == 0  # imported, not yet sent
    app_db([(2, "envelope-received", "m-1", "new@example.com", "0912345678", "Zoro", "Nami", 9)])
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output
    assert statuses(env) == {"sent": 2}
    assert per_contact(env) == {("red-envelope-received", "m-1", "new@example.com"): 2}
    assert env.sandbox.account.subscribers["m-1"] == "new@example.com"


def test_an_email_changed_during_its_import_does_not_wait_for_the_next_one(env: Env, app_db: Any) -> None:
    """The first email goes out when the import carrying its address completes; only the second waits for the
    import of the new address (one import each, not two for the first)."""
    triggered(env)
    app_db([(1, "envelope-received", "m-1", "old@example.com", "0912345678", "Luffy", "Nami", 8)])
    assert run_cli(env.config, "sync").exit_code == 0  # batch 1 uploaded, its import running
    app_db([(2, "envelope-received", "m-1", "new@example.com", "0912345678", "Zoro", "Nami", 9)])
    assert run_cli(env.config, "sync").exit_code == 0  # claimed while batch 1 imports
    assert run_cli(env.config, "wait-import").exit_code == 0
    assert run_cli(env.config, "send-email").exit_code == 0
    assert per_contact(env) == {("red-envelope-received", "m-1", "old@example.com"): 1}
    assert run_cli(env.config, "run-all").exit_code == 0
    assert statuses(env) == {"sent": 2}
    assert per_contact(env) == {
        ("red-envelope-received", "m-1", "old@example.com"): 1,
        ("red-envelope-received", "m-1", "new@example.com"): 1,
    }
    assert env.sandbox.account.subscribers["m-1"] == "new@example.com"


# -- Ctrl-C during triggered sends ---------------------------------------------------------------------------------
def test_ctrl_c_during_triggered_sends_loses_nothing(env: Env, app_db: Any) -> None:
    triggered(env)
    env.sandbox.settings.latency = 0.02
    app_db(event_rows(1, people(150)))
    assert run_cli(env.config, "sync").exit_code == 0
    assert run_cli(env.config, "wait-import").exit_code == 0
    command = [sys.executable, "-m", "mcnotify", "-q", "--config", str(env.config), "send-email"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while len(env.accepted()) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 130, stderr
    interrupted = statuses(env)
    assert interrupted["sending"] == 0 and interrupted["unknown"] == 0, interrupted
    assert 0 < interrupted["sent"] < 450 and interrupted["pending"] > 0
    assert run_cli(env.config, "run-all").exit_code == 0
    assert statuses(env) == {"sent": 450}
    assert set(per_contact(env).values()) == {1} and sum(per_contact(env).values()) == 300


def test_credentials_refused_mid_triggered_send_leave_every_row_pending(env: Env, app_db: Any) -> None:
    triggered(env)
    app_db(event_rows(1, people(10)))
    assert run_cli(env.config, "sync").exit_code == 0
    assert run_cli(env.config, "wait-import").exit_code == 0
    secret = env.values["marketing_cloud"]["client_secret"]
    env.write(marketing_cloud={"client_secret": "a-wrong-secret-123"})
    refused = run_cli(env.config, "send-email")
    assert refused.exit_code == 78, refused.output
    assert "refused the client credentials" in refused.output
    assert statuses(env)["unknown"] == 0 and statuses(env)["pending"] == 30
    env.write(marketing_cloud={"client_secret": secret})
    assert run_cli(env.config, "run-all").exit_code == 0
    assert statuses(env) == {"sent": 30}
    assert set(per_contact(env).values()) == {1} and sum(per_contact(env).values()) == 20


@sqlite_only
def test_a_second_name_for_the_state_file_is_refused(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(2)))
    assert run_cli(env.config, "sync").exit_code == 0
    other = env.tmp / "other" / "state.db"
    other.parent.mkdir()
    os.link(env.state_path, other)
    for state in (env.state_path, other):
        env.write(state={"path": str(state)})
        result = run_cli(env.config, "run-all")
        assert result.exit_code == 78, result.output
        assert "hard links" in result.output
    assert env.accepted() == []


def test_retry_sends_an_older_batchs_email_to_the_newest_address(env: Env, app_db: Any) -> None:
    triggered(env)
    broken = {**TEMPLATES, "envelope-received": {**TEMPLATES["envelope-received"], "definition_key": "typo"}}
    env.values["templates"] = broken
    env.write()
    app_db([(1, "envelope-received", "m-1", "old@example.com", "0912345678", "Luffy", "Nami", 8)])
    assert run_cli(env.config, "run-all").exit_code != 75
    assert statuses(env) == {"failed": 1}
    env.values["templates"] = dict(TEMPLATES)
    env.write()
    app_db([(2, "envelope-received", "m-1", "new@example.com", "0912345678", "Zoro", "Nami", 9)])
    assert run_cli(env.config, "run-all").exit_code == 0
    retried = run_cli(env.config, "retry", "--batch", "1")
    assert retried.exit_code == 0 and "newest address" in retried.output, retried.output
    assert run_cli(env.config, "run-all").exit_code == 0
    assert statuses(env) == {"sent": 2}
    assert per_contact(env) == {("red-envelope-received", "m-1", "new@example.com"): 2}
