"""Latency is visible (issue 10 §6): event (the source's created_at) -> accepted by MC, per channel, in status,
show and their --json, and in the metrics file as a histogram, with the oldest pending notification's age."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import Env
from tests.helpers import QUERY, run_cli


def timed_rows(env: Env, rows: list[tuple[Any, ...]]) -> None:
    """The app table with an event time: (id, template, key, email, phone, seconds ago)."""
    with env.mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS notifications")
        cur.execute(
            "CREATE TABLE notifications (notification_id BIGINT PRIMARY KEY, template VARCHAR(64),"
            " subscriber_key VARCHAR(300), email VARCHAR(400), phone VARCHAR(64), sender_name TEXT,"
            " receiver_name TEXT, amount INT, created_at DATETIME(3)) CHARACTER SET utf8mb4"
        )
        cur.executemany(
            "INSERT INTO notifications VALUES (%s, %s, %s, %s, %s, 'Luffy', 'Nami', 1,"
            " UTC_TIMESTAMP(3) - INTERVAL %s SECOND)",
            rows,
        )
    env.write(
        source={
            "query": QUERY.replace(
                "amount FROM", "amount, CONVERT_TZ(created_at, '+00:00', 'SYSTEM') AS created_at FROM"
            )
        }
    )


def test_status_show_and_metrics_give_event_to_accepted_latency(env: Env) -> None:
    timed_rows(
        env,
        [
            (1, "envelope-received", "m-1", "one@example.com", None, 20),
            (2, "envelope-received", "m-2", "two@example.com", None, 10),
            (3, "envelope-received-sms", "m-1", None, "0912345678", 30),
        ],
    )
    metrics = env.tmp / "mcnotify.prom"
    env.write(metrics={"textfile": str(metrics)})
    assert run_cli(env.config, "run-all").exit_code == 0
    status = json.loads(run_cli(env.config, "status", "--json").output)
    email, sms = status["latency_last_hour"]["email"], status["latency_last_hour"]["sms"]
    assert email["count"] == 2 and 10 <= email["p50"] <= email["max"] and 20 <= email["max"] < 120
    assert sms["count"] == 1 and 30 <= sms["p95"] < 120
    assert status["oldest_pending_seconds"] is None
    shown = json.loads(run_cli(env.config, "show", "1", "--json").output)
    assert shown["latency"]["email"]["count"] == 2
    assert "latency, last hour, email" in run_cli(env.config, "status").output
    text = metrics.read_text()
    assert 'mcnotify_delivery_latency_seconds_bucket{channel="email",le="5"} 0' in text
    assert 'mcnotify_delivery_latency_seconds_bucket{channel="email",le="60"} 2' in text
    assert 'mcnotify_delivery_latency_seconds_count{channel="sms"} 1' in text
    assert "mcnotify_oldest_pending_age_seconds 0.000" in text
