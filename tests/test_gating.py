"""Per-contact gating (issue 10 §2): an email whose subscriber MC already holds with that address goes at once;
only new and changed contacts are uploaded and wait for their import; MC refusing a send for want of the
subscriber sends it again after the next import, never twice and never failed for that alone."""

from __future__ import annotations

import csv
import sqlite3
from collections import Counter
from typing import Any

import pytest

from tests.conftest import Env, sqlite_only
from tests.helpers import read_state, run_cli, statuses


def email(nid: int, key: str, address: str) -> tuple[Any, ...]:
    return (nid, "envelope-received", key, address, None, "Luffy", "Nami", 8)


def uploaded(env: Env) -> list[list[str]]:
    return list(csv.reader((env.import_dir / "mcnotify-subscribers.csv").open(newline="")))[1:]


def emails_to(env: Env) -> Counter[tuple[str, str]]:
    return Counter((m["contactKey"], m["to"]) for m in env.accepted() if m["channel"] == "email")


@pytest.mark.parametrize("api", ["transactional", "triggered-send"])
def test_a_known_member_is_mailed_before_the_import_and_only_new_contacts_are_uploaded(
    env: Env, app_db: Any, api: str
) -> None:
    env.write(email={"api": api})
    app_db([email(1, "m-1", "one@example.com"), email(2, "m-2", "two@example.com")])
    assert run_cli(env.config, "run-all").exit_code == 0  # MC now holds m-1 and m-2
    env.sandbox.settings.import_lag = 3.0  # the next import takes a while
    app_db(
        [
            email(3, "m-1", "one@example.com"),  # known, same email: goes at once
            email(4, "m-2", "two.new@example.com"),  # changed email: waits for the import
            email(5, "m-3", "three@example.com"),  # new member: waits for the import
        ]
    )
    assert run_cli(env.config, "sync").exit_code == 0
    assert sorted(uploaded(env)) == [["m-2", "two.new@example.com"], ["m-3", "three@example.com"]]
    early = run_cli(env.config, "send-email")
    assert early.exit_code == 0, early.output
    assert emails_to(env) == {("m-1", "one@example.com"): 2, ("m-2", "two@example.com"): 1}
    assert run_cli(env.config, "run-all").exit_code == 0
    assert statuses(env) == {"sent": 5}
    assert emails_to(env) == {
        ("m-1", "one@example.com"): 2,
        ("m-2", "two@example.com"): 1,
        ("m-2", "two.new@example.com"): 1,
        ("m-3", "three@example.com"): 1,
    }


def test_every_email_waits_for_the_import_when_told_to(env: Env, app_db: Any) -> None:
    env.write(email={"wait_for_import": "always"})
    app_db([email(1, "m-1", "one@example.com")])
    assert run_cli(env.config, "run-all").exit_code == 0
    env.sandbox.settings.import_lag = 2.0
    app_db([email(2, "m-1", "one@example.com")])
    assert run_cli(env.config, "sync").exit_code == 0
    assert uploaded(env) == [["m-1", "one@example.com"]]  # everyone is uploaded again, as before
    held = run_cli(env.config, "send-email")
    assert held.exit_code == 0 and "not imported yet" in held.output
    assert len(env.accepted()) == 1
    assert run_cli(env.config, "run-all").exit_code == 0
    assert statuses(env) == {"sent": 2}


def test_mc_refusing_for_want_of_the_subscriber_sends_it_after_the_next_import(env: Env, app_db: Any) -> None:
    env.write(email={"api": "triggered-send"})
    app_db([email(1, "m-1", "one@example.com")])
    assert run_cli(env.config, "run-all").exit_code == 0
    del env.sandbox.account.subscribers["m-1"]  # MC lost it (deleted by someone): the ledger is now wrong
    app_db([email(2, "m-1", "one@example.com")])
    first = run_cli(env.config, "run-all")
    assert first.exit_code == 0, first.output
    assert "waiting for MC to import their subscriber" in first.output
    assert statuses(env) == {"sent": 1, "pending": 1}  # refused (180008): not failed, not unknown
    second = run_cli(env.config, "run-all")
    assert second.exit_code == 0, second.output
    assert statuses(env) == {"sent": 2}
    assert emails_to(env) == {("m-1", "one@example.com"): 2}  # the first mail once, the refused one once
    assert uploaded(env) == [["m-1", "one@example.com"]]


@sqlite_only
def test_a_state_from_the_release_before_upgrades_in_place_and_sends_nothing_twice(env: Env, app_db: Any) -> None:
    env.write(email={"api": "triggered-send"})
    app_db([email(1, "m-1", "one@example.com"), email(2, "m-2", "two@example.com")])
    assert run_cli(env.config, "sync").exit_code == 0
    assert run_cli(env.config, "wait-import").exit_code == 0
    assert run_cli(env.config, "send-email").exit_code == 0  # m-1's and m-2's first emails are out
    app_db([email(3, "m-1", "one@example.com")])
    # Make it the file the release before wrote (schema 2): no ledger, no columns it did not have.
    # (Raw sqlite3: turning the file back into an older schema is below any store.)
    conn = sqlite3.connect(env.state_path)
    conn.execute("ALTER TABLE token DROP COLUMN issued_for")
    conn.execute("DROP TABLE contacts")
    conn.execute("DROP INDEX notifications_sent_at")
    conn.execute("DROP INDEX notifications_pending")
    for column in ("requeued", "event_at", "sent_at"):
        conn.execute(f"ALTER TABLE notifications DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    env.sandbox.settings.import_lag = 30.0  # were m-1 re-uploaded, its email would wait for this import
    assert run_cli(env.config, "sync").exit_code == 0
    with read_state(env.state) as store:
        ledger = store.contacts()
    assert ledger == {"m-1": "one@example.com", "m-2": "two@example.com"}  # learned from the completed import
    assert run_cli(env.config, "send-email").exit_code == 0
    assert statuses(env) == {"sent": 3}
    assert emails_to(env) == {("m-1", "one@example.com"): 2, ("m-2", "two@example.com"): 1}
