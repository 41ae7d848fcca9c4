"""Issue 9 items 5-8: bad source rows, a lost state file, a wrongly ordered query, a lost import start.

Each test drives the real CLI against the private MariaDB (or a SQLite source), sshd and the sandbox MC, and
asserts what an operator notices: exit code, one clear line, nothing sent twice, nothing lost.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Env, sqlite_only
from tests.helpers import QUERY, read_state, run_cli, start_afresh


def message_keys(env: Env) -> Counter[str]:
    return Counter(str(m["messageKey"]) for m in env.accepted())


def state_rows(env: Env) -> dict[str, tuple[str, str]]:
    """notification_id -> (status, reason)."""
    with read_state(env.state) as store:
        return {n.notification_id: (n.status, n.reason or "") for n in store.notifications()}


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "error:" in line]


def sqlite_source(env: Env, rows: list[tuple[Any, ...]], columns: str = "") -> Path:
    """A SQLite app database (dynamically typed: ids and text can be anything) as the source."""
    path = env.tmp / "app.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE notifications (notification_id INTEGER, template TEXT, subscriber_key TEXT, email TEXT,"
            f" phone TEXT, sender_name TEXT, receiver_name TEXT, amount INTEGER{columns})"
        )
        marks = ", ".join("?" * len(rows[0]))
        conn.executemany(f"INSERT INTO notifications VALUES ({marks})", rows)
    conn.close()
    env.write(source={"url": f"sqlite:///{path}"})
    return path


def row(nid: Any, key: str, email: Any, sender: Any = "Luffy") -> tuple[Any, ...]:
    return (nid, "envelope-received", key, email, None, sender, "Receiver", 1)


# -- item 5: one bad row must not stop the pipeline ----------------------------------------------------------


def test_bytes_that_are_not_utf8_are_quarantined_or_replaced_not_fatal(env: Env) -> None:
    bad_email = b"l\xe9on@example.com"  # latin-1, not UTF-8
    sqlite_source(
        env,
        [
            row(1, "m-1", "one@example.com"),
            row(2, "m-2", bad_email),  # the contact is not text: quarantined, with the reason
            row(3, "m-3", "three@example.com", b"Jos\xe9"),  # only a name is: replaced, still sent
            row(4, "m-4", b"blob@example.com"),  # a BLOB that is a good email
            row(5, "m-5", "five@example.com"),
        ],
    )
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output
    state = state_rows(env)
    assert state["2"] == ("invalid", "email is not valid UTF-8")
    assert {n: s for n, (s, _) in state.items()} == {"1": "sent", "2": "invalid", "3": "sent", "4": "sent", "5": "sent"}
    by_key = {m["messageKey"]: m for m in env.accepted()}
    assert by_key["mcn-email-4"]["to"] == "blob@example.com"
    assert by_key["mcn-email-3"]["attributes"]["SenderDisplayName"] == "Jos\ufffd via EZTABLE"
    assert "l\ufffdon" not in result.output and "léon" not in result.output
    # Nothing is held back or sent again on the next run.
    assert run_cli(env.config, "run-all").exit_code == 0
    assert set(message_keys(env).values()) == {1} and len(message_keys(env)) == 4


def test_mysql_binary_and_blob_columns_are_decoded_before_validation(env: Env) -> None:
    with env.mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS notifications")
        cur.execute(
            "CREATE TABLE notifications (notification_id BIGINT PRIMARY KEY, template VARCHAR(64),"
            " subscriber_key VARBINARY(300), email BLOB, phone VARCHAR(64), sender_name VARBINARY(200),"
            " receiver_name TEXT, amount DECIMAL(10, 2)) CHARACTER SET utf8mb4"
        )
        cur.executemany(
            "INSERT INTO notifications VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (1, "envelope-received", b"m-1", b"blob@example.com", None, b"Nami", "R", "8.80"),
                (2, "envelope-received", b"m-2", b"\xff\xfe@example.com", None, b"Nami", "R", "1"),
                (3, "envelope-received", b"m-\xff", b"three@example.com", None, b"Nami", "R", "1"),
                (4, "envelope-received", b"m-4", b"four@example.com", None, b"Zoro \xe9", "R", "1"),
            ],
        )
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output
    state = state_rows(env)
    assert state["2"] == ("invalid", "email is not valid UTF-8")
    assert state["3"] == ("invalid", "subscriber_key is not valid UTF-8")
    by_key = {m["messageKey"]: m for m in env.accepted()}
    assert set(by_key) == {"mcn-email-1", "mcn-email-4"}
    assert by_key["mcn-email-1"]["to"] == "blob@example.com" and by_key["mcn-email-1"]["contactKey"] == "m-1"
    assert by_key["mcn-email-1"]["attributes"]["amount"] == "8.80"
    assert by_key["mcn-email-4"]["attributes"]["SenderDisplayName"] == "Zoro \ufffd via EZTABLE"


def test_a_text_id_among_integer_ids_is_quarantined_and_later_rows_still_flow(env: Env) -> None:
    path = sqlite_source(env, [row(1, "m-1", "one@example.com"), row("abc", "m-x", "x@example.com")])
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO notifications VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [row(2, "m-2", "two@example.com")]
        )
    conn.close()
    first = run_cli(env.config, "run-all")
    assert first.exit_code == 0, first.output
    state = state_rows(env)
    assert state["abc"][0] == "invalid" and "cursor notification_id 'abc' is text among numbers" in state["abc"][1]
    assert set(message_keys(env)) == {"mcn-email-1", "mcn-email-2"}
    # The odd id did not poison the watermark: a later integer row is still picked up, nothing goes twice.
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO notifications VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row(3, "m-3", "three@example.com"))
    conn.close()
    second = run_cli(env.config, "run-all")
    assert second.exit_code == 0, second.output
    assert message_keys(env) == Counter({"mcn-email-1": 1, "mcn-email-2": 1, "mcn-email-3": 1})


# -- item 7: a query in the wrong order must stop, not lose rows ---------------------------------------------


def test_a_descending_query_stops_with_one_line_and_loses_nothing(env: Env, app_db: Any) -> None:
    app_db([row(i, f"m-{i}", f"member{i}@example.com") for i in range(1, 31)])
    # Pages of 10: today the first page (30..21) moves the watermark to 30 and 1..20 are never read.
    desc = QUERY.replace("ORDER BY notification_id", "ORDER BY notification_id DESC")
    env.write(source={"query": desc, "batch_limit": 10})
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 78, result.output
    (line,) = error_lines(result.output)
    assert "not ordered by notification_id ascending" in line and "ORDER BY" in line
    assert env.accepted() == []
    with read_state(env.state) as store:
        assert store.get_meta("source.watermark") is None
    # Fixed, every row goes out exactly once.
    env.write(source={"query": QUERY, "batch_limit": 50000})
    fixed = run_cli(env.config, "run-all")
    assert fixed.exit_code == 0, fixed.output
    assert message_keys(env) == Counter({f"mcn-email-{i}": 1 for i in range(1, 31)})


def test_a_query_ordered_by_another_column_stops_in_later_pages_too(env: Env, app_db: Any) -> None:
    # Ordered by name: ascending ids at first, then a step down deep in the stream, past the first chunks.
    app_db([row(i, f"m-{i}", f"member{i}@example.com", "A" if i <= 2500 else "B") for i in range(1, 2600)])
    app_db([row(i, f"m-{i}", f"member{i}@example.com", "A") for i in range(5000, 5010)])
    wrong = QUERY.replace("ORDER BY notification_id", "ORDER BY sender_name, notification_id")
    env.write(source={"query": wrong, "batch_limit": 4000, "parallel_after": 1000})
    result = run_cli(env.config, "sync")
    assert result.exit_code == 78, result.output
    (line,) = error_lines(result.output)
    assert "not ordered by notification_id ascending" in line
    with read_state(env.state) as store:
        watermark = store.get_meta("source.watermark")
    assert int(watermark) <= 1000  # only the first page, read whole and in order, was passed
    env.write(source={"query": QUERY})
    fixed = run_cli(env.config, "run-all")
    assert fixed.exit_code == 0, fixed.output
    assert len(message_keys(env)) == 2599 + 10 and set(message_keys(env).values()) == {1}


# -- item 6: a lost state file must stop the run, and a fresh one must not resend the past --------------------


def _lose_state(env: Env, how: str) -> None:
    path = env.state_path
    if how == "deleted":
        path.unlink()
    elif how == "emptied":
        os.truncate(path, 0)
    else:  # a deploy put another (empty) file in its place
        replacement = path.with_suffix(".new")
        replacement.write_bytes(b"not a state file")
        replacement.replace(path)


@sqlite_only
@pytest.mark.parametrize("when", ["upload", "send"])
@pytest.mark.parametrize("how", ["deleted", "emptied", "replaced"])
def test_a_state_file_lost_mid_run_stops_the_run_with_one_line(
    env: Env, app_db: Any, monkeypatch: pytest.MonkeyPatch, how: str, when: str
) -> None:
    from mcnotify.mc import rest, sftp

    app_db([row(i, f"m-{i}", f"member{i}@example.com") for i in range(1, 11)])
    module, name = (sftp, "upload") if when == "upload" else (rest, "send_transactional")
    original = getattr(module, name)

    def lose_then_call(*args: Any, **kwargs: Any) -> Any:
        if env.state_path.exists() and env.state_path.stat().st_size and not lost:
            lost.append(how)
            _lose_state(env, how)
        return original(*args, **kwargs)

    lost: list[str] = []
    monkeypatch.setattr(module, name, lose_then_call)
    result = run_cli(env.config, "run-all")
    assert lost and result.exit_code not in (0, 75), result.output
    (line,) = error_lines(result.output)
    assert f"state file {env.state_path} was {how}" in line and "while mcnotify was running" in line
    if when == "upload":
        assert env.accepted() == []


def _timed_source(env: Env, rows: list[tuple[Any, ...]]) -> None:
    with env.mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS notifications")
        cur.execute(
            "CREATE TABLE notifications (notification_id BIGINT PRIMARY KEY, template VARCHAR(64),"
            " subscriber_key VARCHAR(300), email VARCHAR(400), phone VARCHAR(64), sender_name TEXT,"
            " created_at DATETIME) CHARACTER SET utf8mb4"
        )
        cur.executemany("INSERT INTO notifications VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)
    env.write(
        source={
            "query": "SELECT notification_id, template, subscriber_key, email, phone, sender_name, created_at"
            " FROM notifications WHERE notification_id > %(after)s ORDER BY notification_id LIMIT %(limit)s"
        }
    )


def test_a_fresh_state_sends_nothing_older_than_max_age(env: Env) -> None:
    now = datetime.datetime.now().replace(microsecond=0)
    old, recent = now - datetime.timedelta(hours=72), now - datetime.timedelta(hours=1)
    rows: list[tuple[Any, ...]] = [
        (i, "envelope-received", f"m-{i}", f"member{i}@example.com", None, "Luffy", old) for i in range(1, 6)
    ]
    rows += [(i, "envelope-received", f"m-{i}", f"member{i}@example.com", None, "Luffy", recent) for i in (6, 7)]
    rows += [(8, "envelope-received-sms", "m-8", None, "0912345678", "Luffy", old)]
    _timed_source(env, rows)
    assert "protection is off" not in run_cli(env.config, "config", "check").output  # it selects created_at
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output
    assert set(message_keys(env)) == {"mcn-email-6", "mcn-email-7"}
    state = state_rows(env)
    for nid in ("1", "2", "3", "4", "5", "8"):
        assert state[nid][0] == "expired" and "older than source.max_age (48 h)" in state[nid][1], state[nid]
    totals = json.loads(run_cli(env.config, "status", "--json").stdout)["totals"]
    assert totals == {"expired": 6, "sent": 2}
    # Expired subscribers were not uploaded either.
    uploaded = (env.import_dir / "mcnotify-subscribers.csv").read_text()
    assert "m-6" in uploaded and "m-1," not in uploaded
    # max_age = 0 turns it off.
    start_afresh(env)
    env.write(source={"max_age": 0})
    assert run_cli(env.config, "run-all").exit_code == 0
    assert set(message_keys(env)) >= {"mcn-email-1", "mcn-sms-8"}


def test_without_created_at_config_check_and_sync_say_the_protection_is_off(env: Env, app_db: Any) -> None:
    app_db([row(1, "m-1", "one@example.com")])
    check = run_cli(env.config, "config", "check")
    assert check.exit_code == 0
    assert "source.max_age protection is off: the query does not select created_at" in check.output
    as_json = json.loads(run_cli(env.config, "config", "check", "--json").stdout)
    assert any("protection is off" in note for note in as_json["notes"])
    result = run_cli(env.config, "sync")
    assert result.exit_code == 0, result.output
    assert result.output.count("returns no created_at column") == 1


# -- item 8: an import start is not repeated blindly ---------------------------------------------------------


def import_runs(env: Env) -> int:
    return len(env.sandbox.account.tasks)


@pytest.mark.sandbox(import_lag=1.0)
@pytest.mark.parametrize("fault", ["accepted-then-500", "reset", "500"])
def test_a_lost_reply_to_the_import_start_never_starts_it_twice(env: Env, app_db: Any, fault: str) -> None:
    # accepted-then-500: MC started it but the reply is lost; reset / 500: MC never acted on it.
    app_db([row(i, f"m-{i}", f"member{i}@example.com") for i in range(1, 6)])
    env.sandbox.account.inject(fault, times=1, path_prefix="/Service.asmx")
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output
    assert import_runs(env) == 1
    assert message_keys(env) == Counter({f"mcn-email-{i}": 1 for i in range(1, 6)})


def test_a_crash_after_the_import_start_is_resolved_by_a_look_up(
    env: Env, app_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcnotify.mc import soap

    app_db([row(i, f"m-{i}", f"member{i}@example.com") for i in range(1, 6)])
    start = soap.start_import

    def start_then_crash(*args: Any, **kwargs: Any) -> str:
        start(*args, **kwargs)
        raise RuntimeError("killed before the task id was recorded")

    monkeypatch.setattr(soap, "start_import", start_then_crash)
    assert run_cli(env.config, "sync").exit_code == 1
    assert import_runs(env) == 1
    monkeypatch.setattr(soap, "start_import", start)
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output
    assert import_runs(env) == 1
    assert message_keys(env) == Counter({f"mcn-email-{i}": 1 for i in range(1, 6)})
    # The next batch's start is not mistaken for a run of the first one, nor the first for the second.
    app_db([row(i, f"m-{i}", f"member{i}@example.com") for i in range(6, 9)])
    assert run_cli(env.config, "run-all").exit_code == 0
    assert import_runs(env) == 2 and len(message_keys(env)) == 8


# -- found by trying to break the above --------------------------------------------------------------------------


def test_a_cursor_shared_by_two_rows_stops_with_one_line(env: Env) -> None:
    # created_at as the cursor, with ties: `> after` would skip a row whose twin ended the previous page. A tie
    # is seen within a page (a tie exactly at a page boundary cannot be seen: the cursor must be unique).
    rows = [
        (*row(i, f"m-{i}", f"member{i}@example.com"), "2026-11-29 10:00:00" if i > 2 else f"2026-11-29 0{i}")
        for i in range(1, 8)
    ]
    sqlite_source(env, rows, ", created_at TEXT")
    env.write(
        source={
            "cursor_column": "created_at",
            "batch_limit": 5,
            "max_age": 0,
            "query": QUERY.replace("notification_id,", "notification_id, created_at,", 1)
            .replace("notification_id > %(after)s", "created_at > %(after)s")
            .replace("ORDER BY notification_id", "ORDER BY created_at"),
        }
    )
    result = run_cli(env.config, "sync")
    assert result.exit_code == 78, result.output
    (line,) = error_lines(result.output)
    assert "cursor_column created_at is not unique" in line
    assert env.accepted() == []


def test_a_text_cursor_in_the_databases_own_order_is_not_refused(env: Env) -> None:
    # SQLite's binary order puts '_' between 'Z' and 'a'; a case-blind comparison called that a descent.
    rows = [row(nid, f"m-{nid}", f"member{n}@example.com") for n, nid in enumerate(["B1", "Z3", "_4", "a2"])]
    sqlite_source(env, rows)
    env.write(source={"query": QUERY.replace("%(after)s", "CAST(%(after)s AS TEXT)")})
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output
    assert {status for status, _ in state_rows(env).values()} == {"sent"} and len(state_rows(env)) == 4


def test_an_id_with_a_trailing_newline_gets_a_valid_hashed_key() -> None:
    from mcnotify.steps.classify import message_key

    key = message_key("mcn", "email", "1002\n")
    assert key.startswith("mcn-email-h") and "\n" not in key and len(key) <= 100
    assert message_key("mcn", "email", "1002") == "mcn-email-1002"


def test_a_state_file_overwritten_in_place_is_noticed_and_left_intact(tmp_path: Path) -> None:
    from mcnotify.state.store import StateFileLost, StateStore

    other = StateStore(tmp_path / "other" / "state.db")
    with other.transaction():
        other.set_meta("source.watermark", 1039)
    other.close()
    path = tmp_path / "state" / "state.db"
    store = StateStore(path)
    store.lock()
    with store.transaction():
        for n in range(300):  # enough to leave pages in the WAL
            store.set_meta(f"k{n}", "x" * 200)
    with path.open("r+b") as target:  # cp over it: same inode, other bytes
        target.write((tmp_path / "other" / "state.db").read_bytes())
        target.truncate()
    with pytest.raises(StateFileLost, match="was overwritten with other content"), store.transaction():
        store.set_meta("source.watermark", 5)
    store.close()
    conn = sqlite3.connect(path)  # raw: the bytes now in the file, which no store of ours may have touched
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT value FROM meta WHERE key = 'source.watermark'").fetchone()[0] == "1039"
    conn.close()


@pytest.mark.sandbox(import_lag=1.0)
def test_a_lost_import_start_never_adopts_a_run_that_began_before_the_upload(env: Env, app_db: Any) -> None:
    app_db([row(i, f"m-{i}", f"member{i}@example.com") for i in range(1, 6)])
    env.write(**{"import": {"clock_skew": 0}})
    foreign = env.sandbox.account.start_import("mcnotify-subscribers")  # another environment's run
    assert foreign is not None
    env.sandbox.account.inject("reset", times=1, path_prefix="/Service.asmx")  # our start never reaches MC
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output
    assert foreign.id not in result.output and import_runs(env) == 2
    assert message_keys(env) == Counter({f"mcn-email-{i}": 1 for i in range(1, 6)})
