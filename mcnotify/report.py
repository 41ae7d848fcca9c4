"""Plain-data views of the state for `status` (rendered by the CLI, or printed as JSON)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from mcnotify.config import Template
from mcnotify.state import Store
from mcnotify.state.states import FOLLOWER_META, StepStatus

STEPS = ("sync", "wait-import", "send-email", "send-sms")


def _duration(step: dict[str, Any] | None) -> float | None:
    if not step or step.get("started_at") is None or step.get("finished_at") is None:
        return None
    return round(float(step["finished_at"]) - float(step["started_at"]), 3)


def process_alive(host: str | None, pid: Any) -> bool | None:
    """Whether a process recorded in the state still runs: checkable on this host only (None elsewhere)."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's process
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def someone_runs(store: Store) -> bool:
    """Whether a recorded, unfinished run may still be at work (a step marked running may really be running)."""
    return any(process_alive(r["host"], r["pid"]) is not False for r in store.runs(limit=20, result="running"))


GONE = "its process ended without recording how (killed?)"


def batch_view(store: Store, batch_id: int, running: bool | None = None) -> dict[str, Any] | None:
    """`running`: whether a run may be at work now (someone_runs); a step marked running without one shows as
    interrupted instead of counting its duration up for ever."""
    batch = store.batch(batch_id)
    if batch is None:
        return None
    counts = store.counts(batch_id)
    steps = store.steps(batch_id)
    if running is None:
        running = someone_runs(store)
    if not running:
        for step in steps.values():
            if step["status"] == StepStatus.RUNNING:
                step.update(status=StepStatus.INTERRUPTED.value, detail=GONE)
    skip = steps.get("skip")  # recorded by `mcnotify skip`, with the operator's reason
    channels: dict[str, dict[str, int]] = {}
    for (channel, status), n in counts.items():
        channels.setdefault(channel or "unknown-template", {})[status] = n
    return {
        "batch": batch.id,
        "created_at": batch.created_at,
        "status": batch.status,
        "rows": batch.rows,
        "invalid": batch.invalid,
        "conflicts": batch.conflicts,
        "csv_rows": batch.csv_rows,
        "import": {
            "status": batch.import_status,
            "task_id": batch.import_task_id,
            "total": batch.import_total,
            "ok": batch.import_ok,
            "errors": batch.import_errors,
            "duplicates": batch.import_duplicates,
        },
        "channels": channels,
        "steps": {
            name: {
                "status": steps[name]["status"],
                "started_at": steps[name]["started_at"],
                "finished_at": steps[name]["finished_at"],
                "seconds": _duration(steps[name]),
                "detail": steps[name]["detail"],
            }
            for name in STEPS
            if name in steps
        },
        "skipped": None if skip is None else {"at": skip["finished_at"], "reason": skip["detail"]},
        "errors": store.errors(batch_id),
        "latency": store.latency(batch_id=batch_id),
    }


# Why an 'unknown' stays unknown: MC's delivery records are looked up by the recipientSendId that MC's reply
# carries, and for these the reply is exactly what was lost.
UNKNOWN_WHY = (
    "triggered sends whose request may have reached MC but whose reply was lost (or a crash hid it); never resent "
    "(at most once). MC's delivery records need the recipientSendId that reply carried, so they cannot settle "
    "these: check them in MC's tracking (Email Studio sends) by subscriber key"
)


def _age(event_at: float | None) -> float | None:
    return None if event_at is None else round(max(0.0, time.time() - event_at), 3)


def follower_view(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """`run-all --follow` as `status` shows it: host, pid, since, last cycle, what it waits for, and whether its
    process is alive (checkable on this host only; None elsewhere)."""
    if not meta:
        return None
    alive = False if meta.get("stopped") else process_alive(meta.get("host"), meta.get("pid"))
    return {**meta, "alive": alive}


def _follower_of(process: dict[str, Any]) -> dict[str, Any]:
    keys = ("host", "pid", "last_cycle", "cycles", "waiting_for", "failing_since")
    view = {"since": process["started_at"], "stopped": False, **{k: process.get(k) for k in keys}}
    return follower_view(view) or view


def status(store: Store, limit: int = 10, templates: Mapping[str, Template] | None = None) -> dict[str, Any]:
    totals: dict[str, int] = {}
    for (_, status_name), n in store.counts().items():
        totals[status_name] = totals.get(status_name, 0) + n
    running = someone_runs(store)
    batches = [v for b in store.batches(limit=limit) if (v := batch_view(store, b.id, running))]
    runs = store.runs(limit=5)
    unknown = store.unknown_reasons()
    held: dict[str, int] = {}
    if templates is not None:
        for (name, channel), n in store.open_by_template().items():
            template = templates.get(name)
            if template is None or template.channel != channel:
                held[name] = held.get(name, 0) + n
    # Several processes on one database (MariaDB): each with its last heartbeat and cycle, and the pipeline's
    # owner. `follower` is then the one whose cycle is the latest (the same shape as a state file's one line).
    processes = store.processes()
    cycling = [p for p in processes if p["role"] == "follower" and p.get("last_cycle") is not None]
    latest = max(cycling, key=lambda p: float(p["last_cycle"]), default=None)
    return {
        "state": store.location,
        "watermark": store.get_meta("source.watermark"),
        "totals": totals,
        "unknown": {"count": sum(unknown.values()), "why": UNKNOWN_WHY if unknown else "", "reasons": unknown},
        "follower": follower_view(store.get_meta(FOLLOWER_META)) if latest is None else _follower_of(latest),
        "processes": processes,
        "pipeline_owner": store.pipeline_owner(),
        # The last hour's event -> accepted, per channel (what a member felt), and how late the oldest waits.
        "latency_last_hour": store.latency(since=time.time() - 3600),
        "oldest_pending_seconds": _age(store.oldest_pending_event()),
        "held": held,
        "batches": batches,
        "recent_runs": [
            {k: r[k] for k in ("id", "command", "started_at", "finished_at", "exit_code", "error")} for r in runs
        ],
    }


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
INVALID_COLUMNS = ("batch_id", "notification_id", "template", "channel", "subscriber_key", "raw_contact", "reason")


def spreadsheet_safe(value: Any) -> str:
    """A cell a spreadsheet will not run as a formula (OWASP CSV injection advice: prefix a quote)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def write_invalid_csv(rows: list[dict[str, Any]], out: Any) -> int:
    import csv

    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(INVALID_COLUMNS)
    for row in rows:
        writer.writerow([spreadsheet_safe(row[c]) for c in INVALID_COLUMNS])
    return len(rows)
