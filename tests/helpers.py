"""Shared test helpers: a tiny TOML writer, sample rows, and running the CLI in-process."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from typer.testing import CliRunner, Result

from mcnotify.cli import app
from mcnotify.state import StateStore, Store

QUERY = (
    "SELECT notification_id, template, subscriber_key, email, phone, sender_name, receiver_name, amount"
    " FROM notifications WHERE notification_id > %(after)s ORDER BY notification_id LIMIT %(limit)s"
)

TEMPLATES = {
    "envelope-received": {
        "channel": "email",
        "definition_key": "red-envelope-received",
        "from_name": "{sender_name} via EZTABLE",
    },
    "envelope-sent": {"channel": "email", "definition_key": "red-envelope-sent", "from_name": "EZTABLE"},
    "envelope-received-sms": {"channel": "sms", "definition_key": "red-envelope-sms"},
}


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))


def dump_toml(data: dict[str, Any]) -> str:
    lines: list[str] = []

    def table(prefix: str, body: dict[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        if scalars or not body:
            lines.append(f"[{prefix}]")
            lines.extend(f"{k} = {_value(v)}" for k, v in scalars.items())
            lines.append("")
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}", v)

    for name, body in data.items():
        table(name, body)
    return "\n".join(lines)


def event_rows(start_id: int, events: list[tuple[str, str, str, str, str, str]]) -> list[tuple[Any, ...]]:
    """(sender_key, sender_name, sender_email, receiver_key, receiver_name, receiver_email/phone...) -> rows.

    Each event is (sender_key, sender_name, sender_email, receiver_key, receiver_name, receiver_email) and
    yields three notifications: receiver email, receiver SMS, sender email."""
    rows: list[tuple[Any, ...]] = []
    nid = start_id
    for s_key, s_name, s_email, r_key, r_name, r_email in events:
        phone = f"09{abs(hash(r_key)) % 10**8:08d}"
        rows.append((nid, "envelope-received", r_key, r_email, phone, s_name, r_name, 88))
        rows.append((nid + 1, "envelope-received-sms", r_key, r_email, phone, s_name, r_name, 88))
        rows.append((nid + 2, "envelope-sent", s_key, s_email, None, s_name, r_name, 88))
        nid += 3
    return rows


def people(n: int, offset: int = 0) -> list[tuple[str, str, str, str, str, str]]:
    return [
        (f"m-{i}", f"Sender{i}", f"sender{i}@example.com", f"m-{i + 5000}", f"Receiver{i}", f"receiver{i}@example.com")
        for i in range(offset, offset + n)
    ]


def run_cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["--config", str(config), *args], catch_exceptions=False)


@contextmanager
def read_state(where: Path | str) -> Iterator[Store]:
    """The state as a dry run sees it: read-only, and leaving the file, its WAL and -shm as they were. `where`:
    the SQLite file, or a MariaDB state's mysql:// URL (Env.state gives whichever the test runs on)."""
    store: Store
    if isinstance(where, str) and where.startswith("mysql://"):
        from mcnotify.state.mysql import MySQLStore, Target

        store = MySQLStore(Target.from_url(where), read_only=True)
    else:
        store = StateStore(Path(where), read_only=True)
    try:
        yield store
    finally:
        store.close()


def tamper(where: Path | str, sql: str) -> None:
    """Raw SQL against the state, on either backend, for a test that changes it as no store operation would
    (on purpose: to model what cannot be produced otherwise). `sql` must be valid on both."""
    if isinstance(where, str) and where.startswith("mysql://"):
        from mcnotify.state.mysql import Target

        conn = Target.from_url(where).connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()
        return
    import sqlite3

    with sqlite3.connect(where) as db:
        db.execute(sql)
    db.close()


def start_afresh(env: Any) -> None:
    """A new, empty state for the next run (the file deleted; on MariaDB a new database), as a lost or
    never-created state is met. `env` is tests.conftest.Env; its config is written again by its next write()."""
    url = env.values["state"].get("url")
    if not url:
        Path(env.values["state"]["path"]).unlink()
        return
    import uuid

    name = f"state_{uuid.uuid4().hex[:12]}"
    with env.mariadb.admin() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        cur.execute(f"GRANT ALL ON {name}.* TO '{env.mariadb.user}'@'127.0.0.1'")
    env.values["state"]["url"] = url.rsplit("/", 1)[0] + "/" + name


class HasState(Protocol):
    @property
    def state(self) -> Path | str: ...


def statuses(env: HasState, channel: str | None = None) -> Counter[str]:
    """How many notifications (of one channel) are in each status, read through the store."""
    with read_state(env.state) as store:
        return Counter(store.status_counts(channel))
