"""The store is the only code that speaks SQL to the state, and the token it keeps follows the state's mode."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import mcnotify
from mcnotify.state import StateStore, Token
from mcnotify.state.states import BatchStatus, Delivery, StepStatus
from mcnotify.state.tokens import NoTokenCache, SqliteTokenCache

PACKAGE = Path(mcnotify.__file__).parent
# mcnotify/state/ is the store; the sandbox is MC's stand-in, not the state.
OWNERS = ("state", "sandbox")
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


def test_the_token_cache_of_a_writable_store_keeps_the_token_for_the_same_credentials(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    try:
        cache = store.token_cache()
        assert isinstance(cache, SqliteTokenCache)
        cache.save(TOKEN, "hmac-of-these-credentials")
        assert cache.load("hmac-of-these-credentials") == TOKEN
        assert cache.load("hmac-of-other-credentials") is None
        cache.save(None)
        assert cache.load("hmac-of-these-credentials") is None
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


def test_the_read_api_sees_what_was_claimed(tmp_path: Path) -> None:
    from mcnotify.state.store import NewNotification

    store = StateStore(tmp_path / "state.db")
    try:
        with store.transaction():
            batch = store.create_batch()
            store.add_notifications(
                batch,
                [
                    NewNotification(
                        "1",
                        "t",
                        "email",
                        "k1",
                        "a@example.com",
                        "a@example.com",
                        "{}",
                        None,
                        Delivery.PENDING,
                        None,
                        "mcn-email-1",
                    ),
                    NewNotification("2", "t", "email", "k2", None, "bad", "{}", None, Delivery.INVALID, "no @", None),
                ],
            )
            store.add_claimed_counts(batch, 2, 1)
        assert store.status_counts() == {"pending": 1, "invalid": 1}
        assert [(n.notification_id, n.status, n.reason) for n in store.notifications(batch_id=batch)] == [
            ("1", "pending", None),
            ("2", "invalid", "no @"),
        ]
        claimed = store.batch(batch)
        assert claimed is not None and (claimed.rows, claimed.invalid) == (2, 1)
        with store.transaction():
            assert store.skip_open(batch, "by hand") == 1
        assert store.status_counts("email") == {"skipped": 1, "invalid": 1}
    finally:
        store.close()
