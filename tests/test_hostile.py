"""Hostile rows (tests/data/hostile_rows.json), each with its expected fate, through the real pipeline."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

from tests.conftest import Env
from tests.helpers import read_state, run_cli

CORPUS = json.loads((Path(__file__).parent / "data" / "hostile_rows.json").read_text(encoding="utf-8"))


def load(env: Env) -> None:
    with env.mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS notifications")
        # No primary key: the source may hand us the same notification twice.
        cur.execute(
            "CREATE TABLE notifications (notification_id BIGINT, template VARCHAR(64),"
            " subscriber_key VARCHAR(400), email VARCHAR(400), phone VARCHAR(64), sender_name TEXT,"
            " receiver_name TEXT, amount INT) CHARACTER SET utf8mb4"
        )
        cur.executemany(
            "INSERT INTO notifications VALUES (%s, %s, %s, %s, %s, %s, 'Receiver', 1)",
            [
                (r["notification_id"], r["template"], r["subscriber_key"], r["email"], r["phone"], r["sender_name"])
                for r in CORPUS
            ],
        )


def test_every_hostile_row_is_sent_once_or_quarantined_with_a_reason(env: Env, app_db: Any) -> None:
    load(env)
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output
    with read_state(env.state) as store:
        state = {n.notification_id: (n.status, n.reason or "") for n in store.notifications()}
    accepted = Counter(m["messageKey"] for m in env.accepted())
    assert set(accepted.values()) == {1}
    for row in CORPUS:
        if row["expect"] == "duplicate":
            continue
        nid = str(row["notification_id"])
        status, reason = state[nid]
        assert status == row["expect"], (nid, status, reason)
        if row["reason"]:
            assert row["reason"] in reason, (nid, reason)
        channel = "sms" if row["template"].endswith("sms") else "email"
        assert (accepted.get(f"mcn-{channel}-{nid}", 0) == 1) == (row["expect"] == "sent"), nid
    assert len(state) == len(CORPUS) - 1  # the duplicated id is one notification
    by_key = {m["messageKey"]: m for m in env.accepted()}
    assert by_key["mcn-email-36"]["to"] == by_key["mcn-email-37"]["to"] == "new@example.com"
    assert by_key["mcn-email-35"]["attributes"]["sender_name"] == "first copy"
    assert by_key["mcn-email-33"]["attributes"]["sender_name"] == "L" * 10_000
    assert by_key["mcn-email-22"]["attributes"]["SenderDisplayName"] == 'Luffy, the "Straw Hat" via EZTABLE'
    assert by_key["mcn-email-45"]["to"] == "Mixed.Case@example.com"
    # The source table is intact, and nothing more goes out on the next run.
    with env.mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM notifications")
        assert cur.fetchone()[0] == len(CORPUS)
    assert run_cli(env.config, "run-all").exit_code == 0
    assert Counter(m["messageKey"] for m in env.accepted()) == accepted


def test_invalid_lists_quarantined_contacts_and_csv_is_spreadsheet_safe(env: Env, app_db: Any) -> None:
    load(env)
    assert run_cli(env.config, "run-all").exit_code == 0
    listing = run_cli(env.config, "invalid", "--json")
    rows = json.loads(listing.stdout)
    expected = sum(1 for r in CORPUS if r["expect"] == "invalid")
    assert len(rows) == expected and all(r["reason"] for r in rows)
    out = env.tmp / "invalid.csv"
    result = run_cli(env.config, "invalid", "--batch", "1", "--csv", str(out))
    assert result.exit_code == 0 and f"{expected} quarantined" in result.output
    parsed = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    assert len(parsed) == expected
    formula = next(r for r in parsed if r["notification_id"] == "42")
    assert formula["subscriber_key"].startswith("'=HYPERLINK")
    assert not any(v.startswith(("=", "+", "-", "@")) for r in parsed for v in r.values())
    table = run_cli(env.config, "invalid")
    assert table.exit_code == 0 and f"{expected} quarantined contact(s)" in table.output
