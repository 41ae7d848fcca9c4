"""`mcnotify demo`: a throw-away workspace with a SQLite source of red-envelope notifications and a sandbox."""

from __future__ import annotations

import datetime
import sqlite3
from pathlib import Path

from mcnotify.sandbox import Sandbox

MEMBERS = [
    # (subscriber key, name, email, phone)
    ("m-1001", "Luffy", "luffy@example.com", "0912-345-678"),
    ("m-1002", "Nami", "nami@example.com", "0922 111 222"),
    ("m-1003", "Zoro", "zoro@example.org", "+886 933 444 555"),
    ("m-1004", "Sanji", "sanji@example.net", "0955-666-777"),
    ("m-1005", "Robin", "robin@example.com", "0988123456"),
    ("m-1006", "Chopper", "chopper@example.com", "0910 000 111"),
    ("m-1007", "Usopp", "usopp@example", "0912-000-222"),  # no TLD: MC would reject it
    ("m-1008", "Franky", "franky @example.com", "12345"),  # a space, and a phone that is no number
    ("m-1009", "Brook", "布魯克@example.com", "0936 777 888"),  # multibyte: MC rejects it
    ("m-1010", 'Jinbe, "Knight of the Sea"', "jinbe@example.com", "0920-123-456"),
]

EVENTS = [  # (sender index, receiver index, amount)
    (0, 1, 88),
    (0, 2, 168),
    (1, 3, 66),
    (2, 4, 200),
    (3, 5, 520),
    (4, 0, 1314),
    (5, 6, 99),
    (6, 7, 50),
    (7, 8, 10),
    (8, 9, 600),
    (9, 0, 888),
    (1, 2, 18),
]


def make_source(path: Path) -> int:
    """Three notifications per event: receiver email and SMS, sender email. Returns the row count."""
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE notifications (notification_id INTEGER PRIMARY KEY, template TEXT, subscriber_key TEXT,"
        " email TEXT, phone TEXT, sender_name TEXT, receiver_name TEXT, amount INTEGER, created_at TEXT)"
    )
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    rows = []
    nid = 1000
    for sender_i, receiver_i, amount in EVENTS:
        sender, receiver = MEMBERS[sender_i], MEMBERS[receiver_i]
        for template, member in (
            ("envelope-received", receiver),
            ("envelope-received-sms", receiver),
            ("envelope-sent", sender),
        ):
            nid += 1
            rows.append((nid, template, member[0], member[2], member[3], sender[1], receiver[1], amount, now))
    # Nami changed her email between two events: the newest one wins.
    nid += 1
    rows.append((nid, "envelope-received", "m-1002", "nami.new@example.com", "0922 111 222", "Zoro", "Nami", 5, now))
    nid += 1
    rows.append((nid, "birthday-coupon", "m-1001", "luffy@example.com", "0912-345-678", "EZTABLE", "Luffy", 0, now))
    # An event from last week: older than source.max_age, so it is recorded expired, never sent.
    nid += 1
    week_ago = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=7)).isoformat(timespec="seconds")
    rows.append((nid, "envelope-received", "m-1001", "luffy@example.com", "", "Nami", "Luffy", 1, week_ago))
    conn.executemany("INSERT INTO notifications VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    return len(rows)


def prepare(workdir: Path) -> tuple[Sandbox, Path, int]:
    """Start a sandbox and write a config for it; returns (sandbox, config path, source rows)."""
    source = workdir / "app.sqlite"
    count = make_source(source)
    sandbox = Sandbox(workdir).start()
    config = workdir / "config.toml"
    config.write_text(sandbox.config_toml(workdir / "state" / "state.db", f"sqlite:///{source}", poll_interval=0.3))
    config.chmod(0o600)
    return sandbox, config, count
