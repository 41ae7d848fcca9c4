"""The store is the only code that speaks SQL to the state, and the token it keeps follows the state's mode."""

from __future__ import annotations

import ast
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mcnotify
from mcnotify.errors import LeaseHeld, StateDatabaseError
from mcnotify.state import StateStore, Store, Token
from mcnotify.state.interface import NewNotification, Outcome
from mcnotify.state.mysql import LeaseLost
from mcnotify.state.states import BatchStatus, Delivery, StepStatus
from mcnotify.state.tokens import NoTokenCache, SqliteTokenCache

PACKAGE = Path(mcnotify.__file__).parent
# mcnotify/state/ is the store; the sandbox is MC's stand-in, not the state.
OWNERS = ("state", "sandbox")
# The MariaDB/MySQL backend lives in mcnotify/state/ too (mysql.py), so the scan covers it as the store.
# The source runs the operator's own query (from the config) against the operator's database: not the state.
OPERATOR_QUERY = {"source.py": {"execute", "connect"}}
SQL = re.compile(
    r"\b(SELECT\b[\s\S]*\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX)"
    r"|ALTER\s+TABLE|DROP\s+(TABLE|INDEX)|BEGIN\s+IMMEDIATE|ROLLBACK|PRAGMA)\b"
)
DB_CALLS = {"execute", "executemany", "executescript", "connect", "conn"}


def sql_outside_the_store() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in OWNERS:
            continue
        allowed = OPERATOR_QUERY.get(str(relative), set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                found.append(f"{relative}:{node.lineno}: SQL text {node.value[:60]!r}")
            elif isinstance(node, ast.Attribute) and node.attr in DB_CALLS - allowed:
                if node.attr == "connect" and not (isinstance(node.value, ast.Name) and node.value.id == "sqlite3"):
                    continue  # sftp.connect, a socket's connect: not a database
                found.append(f"{relative}:{node.lineno}: .{node.attr}")
    return found


def test_only_the_store_speaks_sql_to_the_state() -> None:
    assert sql_outside_the_store() == []


def test_the_scan_sees_sql_where_it_would_hide() -> None:
    caught = [
        'store.conn.execute("UPDATE notifications SET status = ?", x)',
        'f"SELECT count(*) FROM {table}"',
        "sqlite3.connect(path)",
    ]
    for code in caught:
        tree = ast.parse(code)
        hits = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and SQL.search(str(n.value))] + [
            n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in DB_CALLS
        ]
        assert hits, code


def test_the_states_are_spelled_as_the_sql_stores_them() -> None:
    assert [s.value for s in Delivery][:4] == ["pending", "sending", "sent", "failed"]
    assert f"'{Delivery.PENDING}'" == "'pending'"
    assert (BatchStatus.DONE.value, StepStatus.RUNNING.value) == ("done", "running")


TOKEN = Token("access-1", "https://rest.example.com/", "https://soap.example.com/", 100.0, 1200.0)

MakeStore = Callable[..., Store]


def test_the_token_cache_of_a_writable_store_keeps_the_token_for_the_same_credentials(make_store: MakeStore) -> None:
    cache = make_store().token_cache()
    assert not isinstance(cache, NoTokenCache)
    cache.save(TOKEN, "hmac-of-these-credentials")
    assert cache.load("hmac-of-these-credentials") == TOKEN
    assert cache.load("hmac-of-other-credentials") is None
    cache.save(None)
    assert cache.load("hmac-of-these-credentials") is None


def test_the_sqlite_token_cache_is_the_state_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    try:
        assert isinstance(store.token_cache(), SqliteTokenCache)
    finally:
        store.close()


def test_a_preview_store_keeps_no_token_and_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore(path).close()
    before = path.read_bytes()
    for store in (StateStore(path, read_only=True), StateStore(tmp_path / "none.db", memory=True)):
        try:
            cache = store.token_cache()
            assert isinstance(cache, NoTokenCache)
            cache.save(TOKEN, "x")
            assert cache.load("x") is None
        finally:
            store.close()
    assert path.read_bytes() == before and not (tmp_path / "none.db").exists()


def test_a_read_only_store_refuses_writes_on_either_backend(make_store: MakeStore) -> None:
    writer = make_store()
    with writer.transaction():
        writer.set_meta("source.watermark", 7)
    reader = make_store(read_only=True)
    assert isinstance(reader.token_cache(), NoTokenCache)
    assert reader.get_meta("source.watermark") == 7
    with pytest.raises((sqlite3.OperationalError, StateDatabaseError)):
        reader.set_meta("source.watermark", 8)
    assert writer.get_meta("source.watermark") == 7


def _new(nid: str, key: str | None, address: str | None, channel: str = "email", **over: Any) -> NewNotification:
    status = over.pop("status", Delivery.PENDING if address else Delivery.INVALID)
    return NewNotification(
        nid, over.pop("template", "t"), channel, key, address, address or "bad", '{"a": 1}', None, status,
        None if address else "no @", over.pop("message_key", f"mcn-{channel}-{nid}"), **over,
    )  # fmt: skip


def test_the_read_api_sees_what_was_claimed(make_store: MakeStore) -> None:
    store = make_store()
    with store.transaction():
        batch = store.create_batch()
        store.add_notifications(batch, [_new("1", "k1", "a@example.com"), _new("2", "k2", None)])
        store.add_claimed_counts(batch, 2, 1)
    assert store.status_counts() == {"pending": 1, "invalid": 1}
    assert [(n.notification_id, n.status, n.reason) for n in store.notifications(batch_id=batch)] == [
        ("1", "pending", None),
        ("2", "invalid", "no @"),
    ]
    assert store.notifications(batch_id=batch)[0].attributes == {"a": 1}
    claimed = store.batch(batch)
    assert claimed is not None and (claimed.rows, claimed.invalid) == (2, 1)
    assert store.known_ids(["1", "2", "3"]) == {"1", "2"}
    assert store.invalid_rows()[0]["notification_id"] == "2"
    with store.transaction():
        assert store.skip_open(batch, "by hand") == 1
    assert store.status_counts("email") == {"skipped": 1, "invalid": 1}


def test_ids_templates_and_keys_longer_than_an_index_holds_are_stored_and_recognised(make_store: MakeStore) -> None:
    """A source row with a 300-character id, template or subscriber key is quarantined, never a claim that fails
    for good (MariaDB's indexed text holds 255 characters): the row is stored, and the overlap recognises it."""
    store = make_store()
    long_id, other_id = "9" * 300, "9" * 299 + "8"  # the same beginning: still two rows
    with store.transaction():
        batch = store.create_batch()
        store.add_notifications(
            batch,
            [
                _new(long_id, "k" * 300, None, template="unknown-" + "t" * 300),
                _new(other_id, "k2", None),
            ],
        )
    assert store.known_ids([long_id, other_id, "9" * 301]) == {long_id, other_id}
    rows = store.invalid_rows()
    assert len(rows) == 2 and {r["reason"] for r in rows} == {"no @"}
    assert all(r["template"].startswith("unknown-") or r["template"] == "t" for r in rows)


def test_meta_steps_and_runs_behave_alike(make_store: MakeStore) -> None:
    store = make_store()
    with store.transaction():
        batch = store.create_batch()
        store.set_meta("follower", {"pid": 1})
        store.set_meta("follower", {"pid": 2})
        store.update_batch(batch, status=BatchStatus.CLAIMED, rows=5, csv_rows=3)
        store.step_started(batch, "sync")
        store.step_started(batch, "sync")  # again: keeps its first start
        store.step_started(batch, "upload")
        store.note_import_start(batch)
    first_start = store.steps(batch)["sync"]["started_at"]
    assert store.get_meta("follower") == {"pid": 2} and store.get_meta("missing") is None
    assert store.import_start_attempt(batch) is not None
    with store.transaction():
        store.step_finished(batch, "sync", StepStatus.DONE, "ok")
        assert store.end_running_steps(StepStatus.INTERRUPTED, "killed") == 1
        store.forget_import_start(batch, "Completed")
        store.update_batch(batch, import_task_id="task-1")
    steps = store.steps(batch)
    assert steps["sync"]["status"] == "done" and steps["sync"]["started_at"] == first_start
    assert (steps["upload"]["status"], steps["upload"]["detail"]) == ("interrupted", "killed")
    b = store.batch(batch)
    assert b is not None and (b.status, b.rows, b.csv_rows, b.import_status) == ("claimed", 5, 3, "Completed")
    assert store.import_start_attempt(batch) is None and store.import_task_ids() == {"task-1"}
    assert [x.id for x in store.batches(BatchStatus.CLAIMED)] == [batch]
    with store.transaction():
        run = store.run_started("run-all")
    assert store.runs(result="running")[0]["id"] == run
    with store.transaction():
        store.run_finished(run, 0, None, {"sent": 1})
    assert store.runs(result="ok")[0]["counts"] == '{"sent": 1}'
    last = store.last_runs()
    assert last[0]["command"] == "run-all" and last[0]["exit_code"] == 0


def test_newest_address_wins_and_the_ledger_learns_it(make_store: MakeStore) -> None:
    store = make_store()
    with store.transaction():
        one = store.create_batch()
        store.add_notifications(
            one,
            [
                _new("1", "k1", "old@example.com"),
                _new("2", "k1", "new@example.com"),
                _new("3", "k2", "b@example.com"),
                _new("4", "k3", "Case@example.com"),
                _new("5", "k3", "case@example.com"),  # a different address byte for byte, as on SQLite
            ],
        )
        assert sorted(store.resolve_email_conflicts(one)) == ["k1", "k3"]
    assert list(store.subscribers(one)) == [
        ("k1", "new@example.com"),
        ("k2", "b@example.com"),
        ("k3", "case@example.com"),
    ]
    with store.transaction():
        store.learn_contact("k2", "b@example.com", "triggered send")
    assert list(store.subscribers(one, new_only=True)) == [("k1", "new@example.com"), ("k3", "case@example.com")]
    assert [n.notification_id for n in store.work(one, "email", [Delivery.PENDING], known_only=True)] == ["3"]
    assert store.templates(one, "email", known_only=True) == ["t"]
    assert store.open_work(one, "email", known_only=True) == 1
    with store.transaction():
        assert store.learn_batch_contacts(one) == 3
        store.forget_contacts(["k2"])
    assert store.contacts() == {"k1": "new@example.com", "k3": "case@example.com"}


def test_older_pending_emails_follow_the_newest_address(make_store: MakeStore) -> None:
    store = make_store()
    with store.transaction():
        one = store.create_batch()
        store.add_notifications(one, [_new("1", "k1", "old@example.com"), _new("2", "k2", "same@example.com")])
        store.update_batch(one, status=BatchStatus.IMPORTED)
        two = store.create_batch()
        store.add_notifications(two, [_new("3", "k1", "new@example.com"), _new("4", "k2", "same@example.com")])
        # batch two is not imported yet: the older rows move into it (k1's with the new address), to be sent
        # after its import
        assert store.readdress_to_newest(one) == 1
    moved = {n.notification_id: (n.batch_id, n.address) for n in store.notifications()}
    assert moved == {
        "1": (two, "new@example.com"),
        "2": (two, "same@example.com"),
        "3": (two, "new@example.com"),
        "4": (two, "same@example.com"),
    }
    with store.transaction():
        three = store.create_batch()
        store.add_notifications(three, [_new("5", "k2", "other@example.com")])
        assert store.adopt_older_pending_emails(three) == ["k2"]
    rows = {n.notification_id: (n.batch_id, n.address) for n in store.notifications()}
    assert rows["2"] == (three, "other@example.com") and rows["4"] == (three, "other@example.com")


def test_sending_records_and_views(make_store: MakeStore) -> None:
    store = make_store()
    now = time.time()
    with store.transaction():
        batch = store.create_batch()
        store.add_notifications(
            batch,
            [_new(str(i), f"k{i}", f"u{i}@example.com", event_at=now - 10 * i) for i in range(1, 6)]
            + [_new("s1", "k1", "0912345678", channel="sms", message_key="bad key!")],
        )
    page = store.claim_work(batch, "email", [Delivery.PENDING], after=0, limit=2)  # (MariaDB: claimed to mark)
    assert [n.notification_id for n in page] == ["1", "2"]
    assert len(store.work(batch, "email", [Delivery.PENDING])) == 5  # no limit
    with store.transaction():
        store.mark([page[0].seq, page[1].seq], Delivery.SENDING)
        assert store.release([page[1].seq]) == 1
        store.record(
            [
                Outcome(page[0].seq, Delivery.SENT),
                Outcome(page[1].seq + 1, Delivery.FAILED, "404", "no such definition"),
                Outcome(page[1].seq + 2, Delivery.UNKNOWN, reason="lost reply"),
            ]
        )
    assert store.counts(batch)[("email", "sent")] == 1
    assert store.open_by_template() == {("t", "email"): 2, ("t", "sms"): 1}
    assert store.unknown_reasons() == {"lost reply": 1}
    assert store.errors(batch)[0]["error_code"] == "404"
    assert store.bad_message_keys(["sms", "email"]) == (1, batch)
    latency = store.latency(batch)
    assert latency["email"]["count"] == 1 and latency["email"]["p50"] >= 10
    histogram = store.latency_histogram([5.0, 60.0])
    assert histogram["email"][0] == [0, 1] and histogram["email"][1] == 1
    assert store.oldest_pending_event() == pytest.approx(now - 50)
    with store.transaction():
        assert store.retry_failed(batch, ["email"]) == 1
        assert store.requeue_for_import([page[1].seq], "MC does not hold it") == (1, 0)
        assert store.fail_channel(batch, "sms", "gave up") == 1
    assert store.status_counts("sms") == {"failed": 1}


def test_a_transaction_is_all_or_nothing(make_store: MakeStore) -> None:
    store = make_store()
    with pytest.raises(RuntimeError), store.transaction():
        store.create_batch()
        raise RuntimeError("boom")
    assert store.batches() == []
    store.probe_write()


# -- the MariaDB/MySQL run lease ------------------------------------------------------------------------------
def test_the_run_lease_refuses_a_second_holder_until_released(state_db: str) -> None:
    from mcnotify.state.mysql import MySQLStore, Target

    first, second = (MySQLStore(Target.from_url(state_db), lease=3.0) for _ in range(2))
    try:
        first.lock()
        assert first.generation == 1
        with pytest.raises(LeaseHeld, match=r"holds the lease on mysql://\*\*\*@127.0.0.1"):
            second.lock()
        time.sleep(4)  # longer than the lease: the heartbeat keeps it
        with pytest.raises(LeaseHeld):
            second.lock()
        first.unlock()  # given up at once
        second.lock()
        assert second.generation == 2
    finally:
        first.close()
        second.close()


def test_a_lease_held_on_another_host_is_taken_over_once_it_expires(state_db: str) -> None:
    from mcnotify.state.mysql import MySQLStore, Target

    holder, waiting = (MySQLStore(Target.from_url(state_db), lease=3.0) for _ in range(2))
    try:
        holder.lock()
        # The holder dies on another host: no heartbeat any more, and no pid this host could look up.
        holder._stop_heartbeat.set()
        holder.conn.execute("UPDATE leases SET host = 'elsewhere.example' WHERE name = 'run'")
        started = time.monotonic()
        while True:
            try:
                waiting.lock()
                break
            except LeaseHeld as exc:
                assert "on elsewhere.example" in str(exc)
                assert time.monotonic() - started < 3.0 + 2, "not taken over within the lease and a little"
                time.sleep(0.2)
        assert time.monotonic() - started > 2.0 and waiting.generation == 2
        # Had the old holder only been frozen, its next heartbeat finds the lease taken: it writes nothing more.
        holder._stop_heartbeat.clear()
        beat = threading.Thread(target=holder._beat, daemon=True)
        beat.start()
        beat.join(5)
        with pytest.raises(LeaseLost, match="lost the run lease"), holder.transaction():
            holder.set_meta("x", 1)
        assert holder.lost and waiting.get_meta("x") is None
    finally:
        holder.close()
        waiting.close()


def test_a_connection_lost_at_commit_is_an_error_not_a_silent_loss(state_db: str, mariadb: Any) -> None:
    from mcnotify.state.mysql import MySQLStore, Target

    store = MySQLStore(Target.from_url(state_db))
    try:
        thread = store.conn._conn.thread_id()  # type: ignore[attr-defined]
        with pytest.raises(StateDatabaseError), store.transaction():
            store.set_meta("probe", "written")
            with mariadb.admin() as admin, admin.cursor() as cur:
                cur.execute(f"KILL CONNECTION {thread}")  # gone between the last write and COMMIT
        assert store.get_meta("probe") is None  # not committed, and the caller was told so
        with store.transaction():  # the next transaction reconnects and works
            store.set_meta("probe", "again")
        assert store.get_meta("probe") == "again"
    finally:
        store.close()
