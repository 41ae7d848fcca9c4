"""End to end through the CLI: private MariaDB source, private OpenSSH sshd for SFTP, sandbox MC over HTTP."""

from __future__ import annotations

import csv
import gc
import sqlite3
from collections import Counter
from typing import Any

import pytest

from mcnotify.state import StateStore
from tests.conftest import Env, sqlite_only
from tests.helpers import event_rows, people, read_state, run_cli, statuses


def keys(accepted: list[dict[str, Any]]) -> Counter[str]:
    return Counter(m["messageKey"] for m in accepted)


def test_run_all_delivers_everything_once_and_quarantines_bad_contacts(env: Env, app_db: Any) -> None:
    rows = event_rows(1, people(20))
    rows += [
        (100, "envelope-received", "m-bad1", "two@@example.com", "0912345678", "Luffy", "Bad", 1),
        (101, "envelope-received", "m-bad2", "no-tld@example", "0912345678", "Luffy", "Bad", 1),
        (102, "envelope-received-sms", "m-bad3", "x@example.com", "12345", "Luffy", "Bad", 1),
        (103, "envelope-received", "m-bad4", "多字节@example.com", "0912345678", "Luffy", "Bad", 1),
        (104, "no-such-template", "m-bad5", "ok@example.com", "0912345678", "Luffy", "Bad", 1),
    ]
    app_db(rows)
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output

    accepted = env.accepted()
    assert len(accepted) == 60 and max(keys(accepted).values()) == 1
    emails = [m for m in accepted if m["channel"] == "email"]
    assert {m["attributes"]["SenderDisplayName"] for m in emails if m["definitionKey"] == "red-envelope-received"} == {
        f"Sender{i} via EZTABLE" for i in range(20)
    }
    sms = [m for m in accepted if m["channel"] == "sms"]
    assert len(sms) == 20 and all(m["to"].startswith("8869") for m in sms)

    # The bad contacts never reached the CSV or MC, and are counted.
    uploaded = list(csv.reader((env.import_dir / "mcnotify-subscribers.csv").open(newline="")))
    assert uploaded[0] == ["SubscriberKey", "EmailAddress"] and len(uploaded) == 41
    assert not any(r[0].startswith("m-bad") for r in uploaded)
    assert not any(m["contactKey"].startswith("m-bad") for m in accepted)
    assert statuses(env) == {"sent": 60, "invalid": 5}
    status = run_cli(env.config, "status", "--json")
    assert '"invalid": 5' in status.output and '"sent": 60' in status.output


def test_second_run_sends_nothing_and_new_rows_go_out_next_run(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(5)))
    assert run_cli(env.config, "run-all").exit_code == 0
    assert len(env.accepted()) == 15
    again = run_cli(env.config, "run-all")
    assert again.exit_code == 0 and "nothing new in the source" in again.output
    assert len(env.accepted()) == 15
    app_db(event_rows(1000, people(3, offset=100)))
    assert run_cli(env.config, "run-all").exit_code == 0
    accepted = env.accepted()
    assert len(accepted) == 24 and max(keys(accepted).values()) == 1


def test_email_waits_for_the_import_and_sms_does_not(env: Env, app_db: Any) -> None:
    env.sandbox.settings.import_lag = 2.0
    app_db(event_rows(1, people(3)))
    assert run_cli(env.config, "sync").exit_code == 0
    early = run_cli(env.config, "send-email")
    assert early.exit_code == 0 and "not imported yet" in early.output
    assert run_cli(env.config, "send-sms").exit_code == 0
    assert [m["channel"] for m in env.accepted()] == ["sms"] * 3  # SMS need no subscriber import
    pending = run_cli(env.config, "wait-import", "--no-wait")
    assert pending.exit_code == 75, pending.output
    assert run_cli(env.config, "wait-import").exit_code == 0
    assert run_cli(env.config, "send-email").exit_code == 0
    assert len(env.accepted()) == 9
    assert statuses(env) == {"sent": 9}


def test_sms_wait_for_the_import_when_told_to(env: Env, app_db: Any) -> None:
    env.sandbox.settings.import_lag = 2.0
    env.write(sms={"wait_for_import": True})
    app_db(event_rows(1, people(3)))
    assert run_cli(env.config, "sync").exit_code == 0
    held = run_cli(env.config, "send-sms")
    assert held.exit_code == 0 and "not imported yet" in held.output
    assert env.accepted() == []
    assert run_cli(env.config, "run-all").exit_code == 0
    assert len(env.accepted()) == 9


def test_token_expiry_mid_run_refreshes_once(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(30)))
    env.write(email={"batch_size": 10, "concurrency": 1})
    env.sandbox.account.inject("expire-token", times=1, path_prefix="/messaging/v1/email")
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output
    assert len(env.accepted()) == 90 and max(keys(env.accepted()).values()) == 1
    assert env.sandbox.account.token_requests == 2


def test_token_is_reused_across_runs(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(2)))
    assert run_cli(env.config, "run-all").exit_code == 0
    app_db(event_rows(100, people(2, offset=50)))
    assert run_cli(env.config, "run-all").exit_code == 0
    assert len(env.accepted()) == 12
    assert env.sandbox.account.token_requests == 1


def test_5xx_429_and_lost_replies_are_retried_without_duplicates(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(40)))
    env.write(email={"batch_size": 20, "concurrency": 2})
    acc = env.sandbox.account
    acc.inject("500", times=2, path_prefix="/messaging/v1/email")
    acc.inject("429", times=2, path_prefix="/messaging/v1/sms")
    acc.inject("accepted-then-500", times=2, path_prefix="/messaging/v1/email")
    acc.inject("503", times=1, path_prefix="/Service.asmx")
    acc.inject("reset", times=1, path_prefix="/messaging/v1/sms")
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output
    accepted = env.accepted()
    assert len(accepted) == 120 and max(keys(accepted).values()) == 1
    assert statuses(env) == {"sent": 120}
    codes = Counter(status for _, _, status in acc.requests)
    assert codes[500] >= 4 and codes[429] == 2 and codes[503] == 1


@sqlite_only
def test_reused_message_key_counts_as_already_sent(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(4)))
    assert run_cli(env.config, "run-all").exit_code == 0
    # A crash after MC accepted but before the state recorded it: the rows look unsent again. (Tampering with
    # the file, as the crash would leave it: no store operation does this, so raw SQL.)
    store = StateStore(env.state_path)
    store.conn.execute("UPDATE notifications SET status = 'pending' WHERE channel = 'email'")
    store.conn.execute("UPDATE batches SET status = 'imported'")
    store.close()
    result = run_cli(env.config, "send-email")
    assert result.exit_code == 0 and "8 already accepted earlier" in result.output, result.output
    assert len(env.accepted()) == 12 and max(keys(env.accepted()).values()) == 1
    with read_state(env.state) as reader:
        reasons = {n.reason for n in reader.notifications(channel="email")}
    assert reasons == {"messageKey already used: MC accepted it earlier"}


@sqlite_only
def test_dry_run_writes_nothing(env: Env, app_db: Any) -> None:
    app_db([*event_rows(1, people(3)), (50, "envelope-received", "m-x", "bad@@x.com", "", "Luffy", "X", 1)])
    result = run_cli(env.config, "run-all", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "Sender0 via EZTABLE" in result.output and "would upload 6 subscribers" in result.output
    assert "email must contain exactly one @" in result.output
    assert not env.state_path.exists()
    assert list(env.import_dir.iterdir()) == []
    assert env.accepted() == [] and env.sandbox.account.token_requests == 0
    # After a real sync, a dry-run send previews without sending or changing the state.
    env.sandbox.settings.import_lag = 0.1
    assert run_cli(env.config, "sync").exit_code == 0
    assert run_cli(env.config, "wait-import").exit_code == 0
    gc.collect()  # the in-process runs' last connections are closed, as at a real process's exit
    folder = env.state_path.parent
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    preview = run_cli(env.config, "send-email", "--dry-run")
    assert preview.exit_code == 0 and "would send 6" in preview.output
    assert env.accepted() == []
    assert env.state_path.name in before
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert statuses(env)["pending"] == 9


def test_host_key_mismatch_is_refused(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(2)))
    other = env.tmp / "other_known_hosts"
    other.write_text(
        f"[127.0.0.1]:{env.sshd.port} ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
    )
    env.write(sftp={"known_hosts": str(other)})
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 1
    assert "does not match" in result.output and "SHA256:" in result.output
    # Nothing reaches the server whose key does not match; the SMS, which need no upload, still go.
    assert list(env.import_dir.iterdir()) == [] and {m["channel"] for m in env.accepted()} == {"sms"}
    # Nothing claimed is lost: with the right key the same rows go out.
    env.write(sftp={"known_hosts": str(env.sshd.known_hosts)})
    assert run_cli(env.config, "run-all").exit_code == 0
    assert len(env.accepted()) == 6


def test_unknown_host_is_refused_not_trusted(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(1)))
    empty = env.tmp / "empty_known_hosts"
    empty.write_text("")
    env.write(sftp={"known_hosts": str(empty)})
    result = run_cli(env.config, "sync")
    assert result.exit_code == 78 and "is not in" in result.output
    assert empty.read_text() == ""


@sqlite_only
def test_second_run_exits_75_while_the_lock_is_held(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(1)))
    holder = StateStore(env.state_path)
    holder.lock()
    try:
        result = run_cli(env.config, "run-all")
        assert result.exit_code == 75 and "lock" in result.output
    finally:
        holder.close()
    assert env.accepted() == []
    assert run_cli(env.config, "run-all").exit_code == 0


def test_late_committed_rows_below_the_watermark_are_not_lost(env: Env, app_db: Any) -> None:
    rows = event_rows(1, people(4))
    late = [r for r in rows if r[0] in (4, 5, 6)]
    app_db([r for r in rows if r not in late])
    assert run_cli(env.config, "run-all").exit_code == 0
    assert len(env.accepted()) == 9
    app_db(late)  # committed after the watermark passed them
    assert run_cli(env.config, "run-all").exit_code == 0
    accepted = env.accepted()
    assert len(accepted) == 12 and max(keys(accepted).values()) == 1


def test_subscriber_with_two_emails_newest_wins(env: Env, app_db: Any) -> None:
    app_db(
        [
            (1, "envelope-received", "m-7", "old@example.com", "0912345678", "Luffy", "Nami", 1),
            (2, "envelope-received", "m-7", "new@example.com", "0912345678", "Zoro", "Nami", 1),
        ]
    )
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0 and "1 key conflicts" in result.output
    assert [m["to"] for m in env.accepted()] == ["new@example.com", "new@example.com"]


def test_import_rejections_are_recorded_as_failed(env: Env, app_db: Any) -> None:
    # A subscriber MC refuses at import (List Detective-like rule the client cannot know) fails at send time.
    env.sandbox.account.settings.require_subscribers = True
    app_db(event_rows(1, people(2)))
    original = env.sandbox.account._run_import

    def reject_one(task: Any) -> None:
        original(task)
        env.sandbox.account.subscribers.pop("m-5000", None)

    env.sandbox.account._run_import = reject_one  # type: ignore[method-assign]
    assert run_cli(env.config, "run-all").exit_code == 0
    # Refused for want of a subscriber: not failed for that alone, but uploaded again for the next import...
    assert statuses(env) == {"sent": 5, "pending": 1}
    for _ in range(3):
        assert run_cli(env.config, "run-all").exit_code == 0
    # ...until MC's import has rejected it three times over.
    assert statuses(env) == {"sent": 5, "failed": 1}
    status = run_cli(env.config, "status")
    assert "109109" in status.output and "after 3 imports" in status.output
    assert len(env.sandbox.account.tasks) == 4


def test_triggered_send_sets_from_name(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(2)))
    env.write(email={"api": "triggered-send"})
    assert run_cli(env.config, "run-all").exit_code == 0
    triggered = [m for m in env.accepted() if m["api"] == "triggered-send"]
    assert sorted(m["fromName"] for m in triggered) == [
        "EZTABLE",
        "EZTABLE",
        "Sender0 via EZTABLE",
        "Sender1 via EZTABLE",
    ]


def test_mysql_wrong_password_is_one_line_and_loses_nothing(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(1)))
    env.write(source={"url": env.mariadb.url.replace(env.mariadb.password, "wrong-password")})
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 78 and "refused the login" in result.output
    assert "wrong-password" not in result.output and "Traceback" not in result.output
    env.write(source={"url": env.mariadb.url})
    assert run_cli(env.config, "run-all").exit_code == 0
    assert len(env.accepted()) == 3


@pytest.mark.sandbox(scheduled_import_every=0.2)
def test_fixed_delay_mode_waits_after_upload_instead_of_polling(env: Env, app_db: Any) -> None:
    # In this mode an automation in MC imports the file on its own schedule; mcnotify only waits `delay`.
    app_db(event_rows(1, people(2)))
    env.write(**{"import": {"mode": "fixed-delay", "delay": 1.0}})
    assert run_cli(env.config, "sync").exit_code == 0
    pending = run_cli(env.config, "wait-import", "--no-wait")
    assert pending.exit_code == 75
    assert run_cli(env.config, "run-all").exit_code == 0
    assert len(env.accepted()) == 6
    soap_calls = [p for _, p, _ in env.sandbox.account.requests if p.lower() == "/service.asmx"]
    assert soap_calls == []


@sqlite_only
def test_secrets_never_appear_in_output_or_state(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(2)))
    outputs = []
    for command in (
        ["run-all"],
        ["status", "--json"],
        ["status"],
        ["config", "check"],
        ["config", "check", "--json"],
        ["run-all", "--dry-run"],
        ["send-email", "--dry-run"],
    ):
        outputs.append(run_cli(env.config, *command).output)
    env.write(sftp={"known_hosts": str(env.tmp / "missing")})
    outputs.append(run_cli(env.config, "sync").output)
    env.write(source={"url": env.mariadb.url.replace("@127.0.0.1", "@127.0.0.1:1/x?")})
    outputs.append(run_cli(env.config, "sync").output)
    env.write(source={"url": env.mariadb.url.replace(env.mariadb.password, env.mariadb.password + "x")})
    outputs.append(run_cli(env.config, "-v", "sync").output)
    env.write(
        marketing_cloud={"client_secret": env.sandbox.settings.client_secret + "x"},
        source={"url": env.mariadb.url},
        sftp={"known_hosts": str(env.sshd.known_hosts)},
    )
    app_db(event_rows(500, people(1, offset=70)))
    with sqlite3.connect(env.state_path) as conn:  # raw: the store has no 'forget the token'
        conn.execute("DELETE FROM token")  # so the wrong secret is actually sent
    outputs.append(run_cli(env.config, "-v", "run-all").output)
    outputs.append(run_cli(env.config, "doctor").output)
    env.write(marketing_cloud={"client_secret": env.sandbox.settings.client_secret})
    outputs.append(run_cli(env.config, "-v", "run-all").output)
    secrets = [env.mariadb.password, env.sandbox.settings.client_secret]
    assert any("refused the client credentials" in text for text in outputs)
    # Raw sqlite3: the whole file on disk is what must hold no secret.
    with sqlite3.connect(env.state_path) as conn:
        dump = "\n".join(conn.iterdump())
        token = conn.execute("SELECT access_token FROM token").fetchone()[0]
    dump_without_token = dump.replace(token, "")
    for secret in secrets:
        assert all(secret not in text for text in outputs), secret
        assert secret not in dump_without_token
    assert all(token not in text for text in outputs)


def test_config_readable_by_others_with_secrets_warns(env: Env, app_db: Any) -> None:
    env.config.chmod(0o644)
    result = run_cli(env.config, "config", "check")
    assert result.exit_code == 0
    assert "readable by other users" in result.output and env.mariadb.password not in result.output
    env.config.chmod(0o600)
    assert "readable by other users" not in run_cli(env.config, "config", "check").output


def test_large_sync_read_by_a_second_process_gives_the_same_result(env: Env, app_db: Any) -> None:
    rows = event_rows(1, people(1500))
    rows[2500] = (rows[2500][0], "envelope-received", "m-bad", "bad@@example.com", None, "X", "Y", 1)
    app_db(rows)
    env.write(source={"parallel_after": 700, "batch_limit": 4000})
    first = run_cli(env.config, "run-all")
    assert first.exit_code == 0, first.output
    assert "claimed a full batch (4000 rows)" in first.output  # and went again for the 500 beyond it
    assert statuses(env) == {"sent": 4499, "invalid": 1}
    accepted = env.accepted()
    assert len(accepted) == 4499 and max(keys(accepted).values()) == 1
    bad = run_cli(env.config, "sync")
    assert bad.exit_code == 0 and "nothing new" in bad.output


def test_batch_with_no_email_to_upload_skips_the_import_and_still_sends_sms(env: Env, app_db: Any) -> None:
    app_db(
        [
            (1, "envelope-received-sms", "m-1", None, "0912345678", "Luffy", "Nami", 1),
            (2, "envelope-received", "m-2", "two@@example.com", None, "Luffy", "Zoro", 1),
        ]
    )
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output
    assert "nothing to upload" in result.output
    assert not list(env.import_dir.iterdir())
    assert [m["to"] for m in env.accepted()] == ["886912345678"]
    assert statuses(env) == {"sent": 1, "invalid": 1}
    steps = run_cli(env.config, "show", "1", "--json").output
    assert '"skipped"' in steps


def test_a_backlog_larger_than_batch_limit_drains_in_one_run(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(30)))  # 90 notifications
    env.write(source={"batch_limit": 20})
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output
    accepted = env.accepted()
    assert len(accepted) == 90 and max(keys(accepted).values()) == 1
    with read_state(env.state) as store:
        sizes = [b.rows for b in store.batches()]
    assert max(sizes) <= 20 and sum(sizes) == 90
    assert statuses(env) == {"sent": 90}


def test_rows_are_claimed_and_their_sms_sent_while_an_import_is_in_flight(env: Env, app_db: Any) -> None:
    env.sandbox.settings.import_lag = 3.0
    app_db(event_rows(1, people(2)))
    assert run_cli(env.config, "sync").exit_code == 0  # batch 1's import runs for 3 s
    app_db(event_rows(100, people(3, offset=10)))
    during = run_cli(env.config, "sync")
    assert during.exit_code == 0 and "an import is in flight; 9 new notification(s) claimed" in during.output
    assert run_cli(env.config, "send-sms").exit_code == 0
    assert sorted(m["channel"] for m in env.accepted()) == ["sms"] * 5  # both batches' SMS, before any import
    assert list(env.import_dir.glob("*.csv")) == [env.import_dir / "mcnotify-subscribers.csv"]
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output
    assert statuses(env) == {"sent": 15} and len(env.accepted()) == 15
    assert len(env.sandbox.account.tasks) == 2  # one import per upload, never two at once
