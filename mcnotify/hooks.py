"""Monitoring hooks: alerts (Slack, e-mail, healthchecks-style ping) and Prometheus textfile metrics.

Like borgmatic's hooks, none of them may fail a run: every problem is logged as a warning and swallowed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcnotify.config import Settings
from mcnotify.errors import EXIT_OK, EXIT_TEMPORARY
from mcnotify.state import Store

log = logging.getLogger(__name__)


def _guarded(what: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as exc:  # a hook never fails the run
        log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)


def _post(url: str, timeout: float, json: Any = None) -> None:
    import requests

    resp = requests.post(url, json=json, timeout=timeout)
    resp.raise_for_status()


def _ping(settings: Settings, suffix: str) -> None:
    alerts = settings.alerts
    if alerts.ping_url:
        url = alerts.ping_url.rstrip("/") + suffix
        _guarded("healthchecks ping", lambda: _post(url, alerts.timeout))


def _email(settings: Settings, host: str, to: str, subject: str, body: str) -> None:
    # Imported here, when an alert is mailed: smtplib and email cost every run's start ~15 ms otherwise.
    import smtplib
    import ssl
    from email.message import EmailMessage

    a = settings.alerts
    message = EmailMessage()
    message["Subject"], message["From"] = subject, a.smtp_from
    message["To"] = ", ".join(t.strip() for t in to.split(",") if t.strip())
    message.set_content(body)
    if a.smtp_security == "ssl":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(
            host, a.smtp_port, timeout=a.timeout, context=ssl.create_default_context()
        )
    else:
        smtp = smtplib.SMTP(host, a.smtp_port, timeout=a.timeout)
    with smtp:
        if a.smtp_security == "starttls":
            smtp.starttls(context=ssl.create_default_context())
        if a.smtp_username:
            smtp.login(a.smtp_username, a.smtp_password or "")
        smtp.send_message(message)


def alert(settings: Settings, subject: str, body: str) -> None:
    a = settings.alerts
    if webhook := a.slack_webhook:
        _guarded("Slack alert", lambda: _post(webhook, a.timeout, {"text": f"*{subject}*\n{body}"}))
    if (host := a.smtp_host) and (to := a.smtp_to):
        _guarded("e-mail alert", lambda: _email(settings, host, to, subject, body))


def run_started(settings: Settings, command: str) -> None:
    _ping(settings, "/start")


ALERTS_META = "alerts"  # state meta: command -> the failure last alerted for it (fingerprint, when)
RECENT = 900.0  # seconds: a failed run this recent is the one an alert unit was started for


def _alerted(store: Store | None) -> dict[str, Any]:
    value = store.get_meta(ALERTS_META) if store is not None else None
    return value if isinstance(value, dict) else {}


def _writable(store: Store | None) -> Store | None:
    return None if store is None or store.read_only or store.lost else store


def failure_alert(settings: Settings, store: Store | None, command: str, failure: str, subject: str, body: str) -> bool:
    """Alert a failure once: the same `failure` (exit code and error) of the same command again only after
    `alerts.repeat_after`, a different one at once. Remembered in the state's meta, which the runs and the
    alert unit share: the unit started by OnFailure= for a run that has already alerted stays quiet. Returns
    whether the alert went out; without a state to remember in, it always goes."""
    store = _writable(store)
    now = time.time()
    # The same failure whatever its counts, batch numbers, ports or times ("MC refused 3 ... in batch 7" and
    # "... 5 ... in batch 8" are one failure); the error text itself is not kept.
    fingerprint = hashlib.sha256(re.sub(r"\d+", "#", failure).encode()).hexdigest()[:16]
    try:
        if store is not None:
            with store.transaction():  # two chained units may fail at once
                last = _alerted(store).get(command)
                quiet_for = settings.alerts.repeat_after
                if last and last.get("fingerprint") == fingerprint and now - float(last.get("at", 0)) < quiet_for:
                    log.info(
                        "alert for %s not repeated: the same failure was alerted %.0f min ago (alerts.repeat_after)",
                        command,
                        (now - float(last["at"])) / 60,
                    )
                    return False
                store.set_meta(ALERTS_META, {**_alerted(store), command: {"fingerprint": fingerprint, "at": now}})
    except Exception as exc:  # the state cannot say: alert rather than stay silent
        log.warning("alert state unavailable (%s: %s); alerting anyway", type(exc).__name__, exc)
    alert(settings, subject, body)
    return True


def _recovered(store: Store | None, command: str) -> bool:
    """Forget the failure alerted for `command`; True when there was one."""
    store = _writable(store)
    try:
        if store is None or command not in _alerted(store):
            return False
        with store.transaction():
            alerted = _alerted(store)
            gone = alerted.pop(command, None)
            store.set_meta(ALERTS_META, alerted)
        return gone is not None
    except Exception as exc:
        log.warning("alert state unavailable (%s: %s)", type(exc).__name__, exc)
        return False


def run_finished(settings: Settings, store: Store, command: str, exit_code: int, error: str | None) -> None:
    host = socket.gethostname()
    if exit_code in (143, 130):  # an operator's systemctl stop or Ctrl-C is not an incident
        return
    if exit_code in (EXIT_OK, EXIT_TEMPORARY):
        _ping(settings, "")
        if _recovered(store, command) and settings.alerts.on_recovery:
            alert(settings, f"mcnotify {command} recovered on {host}", "The last run succeeded again.")
    else:
        _ping(settings, "/fail")
        failure = f"exit code {exit_code}: {error or 'no message'}"
        failure_alert(settings, store, command, failure, f"mcnotify {command} failed on {host}", failure)
    path = settings.metrics.textfile
    if path:
        _guarded("metrics textfile", lambda: write_metrics(store, Path(path)))


def command_of_unit(unit: str) -> str:
    """The command a unit of systemd/ runs: mcnotify.service and mcnotify-follow.service run-all,
    mcnotify-NAME.service NAME (sync, wait-import, send-email, send-sms)."""
    name = unit.removesuffix(".service")
    if name in ("mcnotify", "mcnotify-follow"):
        return "run-all"
    return name.removeprefix("mcnotify-")


def unit_failed(settings: Settings, store: Store | None, unit: str, reason: str | None = None) -> bool:
    """`mcnotify alert --unit U` (systemd's OnFailure=): alert, unless the run has already alerted this very
    failure. A run that ended recorded gives its exit code and error (the same failure the run alerted, so no
    second message); a process that died unrecorded (killed, timed out, crashed) is alerted as such."""
    host = socket.gethostname()
    command = command_of_unit(unit)
    runs = store.runs(limit=1, command=command) if store is not None else []
    last = runs[0] if runs else None
    if reason is not None:  # e.g. the configuration does not load: no run could start or be recorded
        failure = f"{unit} failed: {reason}"
    elif (
        last and last["exit_code"] not in (None, EXIT_OK, EXIT_TEMPORARY) and time.time() - last["finished_at"] < RECENT
    ):
        failure = f"exit code {last['exit_code']}: {last['error'] or 'no message'}"
    elif last and last["exit_code"] is None and time.time() - last["started_at"] < 86400:
        failure = f"run {last['id']} (pid {last['pid']}) ended without recording how: killed, timed out or crashed"
    else:
        failure = f"{unit} failed before a run was recorded"
    return failure_alert(
        settings,
        store,
        command,
        failure,
        f"mcnotify {command} failed on {host}",
        f"{failure}\nSee: journalctl -u {unit}",
    )


RUN_GAUGES = (  # (metric, column of Store.last_runs, help)
    ("mcnotify_last_success_timestamp_seconds", "last_success", "Unix time the step last finished successfully."),
    ("mcnotify_last_run_duration_seconds", "duration", "How long the step's last run took."),
    ("mcnotify_last_run_exit_code", "exit_code", "Exit code of the step's last run."),
)


LATENCY_BUCKETS = (0.5, 1, 2, 3, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def metrics_text(store: Store) -> str:
    last = store.last_runs()
    lines: list[str] = []
    for metric, column, text in RUN_GAUGES:
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} gauge"]
        lines += [f'{metric}{{step="{r["command"]}"}} {_number(r[column])}' for r in last if r[column] is not None]
    lines += [
        "# HELP mcnotify_messages Notifications by channel and result, over the whole state file.",
        "# TYPE mcnotify_messages gauge",
    ]
    for (channel, status), n in sorted(store.counts().items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        lines.append(f'mcnotify_messages{{channel="{channel or "none"}",result="{status}"}} {n}')
    metric = "mcnotify_delivery_latency_seconds"
    lines += [
        f"# HELP {metric} From the event (the source's created_at) to MC accepting the message.",
        f"# TYPE {metric} histogram",
    ]
    for channel, (buckets, count, total) in sorted(store.latency_histogram(LATENCY_BUCKETS).items()):
        for bound, n in zip(LATENCY_BUCKETS, buckets, strict=True):
            lines.append(f'{metric}_bucket{{channel="{channel}",le="{bound:g}"}} {n}')
        lines.append(f'{metric}_bucket{{channel="{channel}",le="+Inf"}} {count}')
        lines += [f'{metric}_sum{{channel="{channel}"}} {total:.3f}', f'{metric}_count{{channel="{channel}"}} {count}']
    oldest = store.oldest_pending_event()
    lines += [
        "# HELP mcnotify_oldest_pending_age_seconds Age of the oldest notification still to send (0: none).",
        "# TYPE mcnotify_oldest_pending_age_seconds gauge",
        f"mcnotify_oldest_pending_age_seconds {0.0 if oldest is None else max(0.0, time.time() - oldest):.3f}",
    ]
    return "\n".join(lines) + "\n"


def write_metrics_guarded(store: Store, path: str) -> None:
    """write_metrics, never failing the caller (a monitoring hook)."""
    _guarded("metrics textfile", lambda: write_metrics(store, Path(path)))


def write_metrics(store: Store, path: Path) -> None:
    """Atomically: the node exporter must never read half a file."""
    text = metrics_text(store)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
