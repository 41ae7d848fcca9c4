"""Rendering of reports and views with rich (CLI layer): each report class has its render function."""

from __future__ import annotations

import datetime
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # the reports' modules pull in the steps' dependencies: only the types are needed here
    from mcnotify.cli.application import Application
    from mcnotify.steps.follow import FollowReport
    from mcnotify.steps.run_all import RunAllReport
    from mcnotify.steps.send import SendReport
    from mcnotify.steps.sync import SyncReport
    from mcnotify.steps.wait_import import WaitReport


def render_sync(cli: Application, r: SyncReport, dry_run: bool) -> None:
    out = cli.out
    if dry_run:
        out.print(
            f"[bold]sync (dry run)[/bold]: {r.new_rows} new notifications, {r.invalid} invalid, "
            f"{r.expired} expired, {r.conflicts} key conflicts; would upload {r.csv_rows} subscribers"
        )
        for reason, n in sorted(r.invalid_reasons.items(), key=lambda kv: -kv[1]):
            out.print(f"  invalid: {n} x {reason}", markup=False)
        if r.sample_csv:
            table = Table("SubscriberKey", "EmailAddress", title="CSV sample")
            for row in r.sample_csv:
                table.add_row(*row)
            out.print(table)
        render_samples(out, r.sample_sends, "would send (sample)")
        return
    if r.blocked or r.batch_id is None:
        if not cli.quiet:  # -q: a run with nothing to do prints nothing
            out.print(f"sync: {r.note}", markup=False)
        return
    out.print(
        f"sync: batch {r.batch_id}: {r.new_rows} new, {r.invalid} invalid, {r.expired} expired, "
        f"{r.conflicts} key conflicts, "
        f"{r.csv_rows} subscribers uploaded"
        + (f", import task {r.task_id}" if r.task_id else "")
        + (f" ({r.note})" if r.note else "")
    )


def render_samples(out: Console, samples: list[dict[str, Any]], title: str) -> None:
    if not samples:
        return
    table = Table(*samples[0].keys(), title=title)
    for s in samples:
        table.add_row(*(str(v) for v in s.values()))
    out.print(table)


def render_wait(cli: Application, r: WaitReport) -> None:
    out = cli.out
    if not r.results and not cli.quiet:
        out.print(f"wait-import: {r.note}", markup=False)
    for res in r.results:
        counts = (
            ""
            if res.total is None
            else f": {res.ok} ok, {res.errors} rejected, {res.duplicates} duplicates of {res.total}"
        )
        out.print(f"wait-import: batch {res.batch_id} import {res.status}{counts}")


def render_send(cli: Application, r: SendReport, dry_run: bool) -> None:
    out = cli.out
    if dry_run:
        would = (
            f"would send {r.sent} in batch(es) {', '.join(map(str, r.batches))}" if r.sent else "nothing would be sent"
        )
        note = r.note.removeprefix("nothing to send").strip()  # "(batch 2 not imported yet)" stays
        note = f" {note}" if note.startswith("(") else f" ({note})" if note else ""
        out.print(f"send-{r.channel} (dry run): {would}{note}", markup=False)
        render_samples(out, r.samples, f"send-{r.channel} sample")
        return
    if r.held:
        shown = ", ".join(f"{t} ({n})" for t, n in sorted(r.held.items()))
        out.print(f"send-{r.channel}: held, kept pending until their template is back in the config: {shown}")
    if not r.batches and not r.failed:
        if not cli.quiet:
            out.print(f"send-{r.channel}: {r.note}", markup=False)
        return
    out.print(
        f"send-{r.channel}: {r.sent} sent ({r.duplicates} already accepted earlier), {r.failed} failed, "
        f"{r.unknown} unknown, {r.calls} API calls"
    )


def render_run_all(cli: Application, report: RunAllReport, dry_run: bool) -> None:
    for s in report.syncs:
        render_sync(cli, s, dry_run)
    for w in report.waits:
        render_wait(cli, w)
    for r in report.sends:
        render_send(cli, r, dry_run)
    claimable = sum(s.new_rows for s in report.syncs)
    if dry_run and claimable:
        # A preview claims nothing, so the sends above count only what the state already holds.
        cli.out.print(
            f"run-all (dry run): the {claimable} new row(s) sync would claim are not counted in the sends above;"
            " a real run claims them and sends what may go (their samples are above)",
            markup=False,
        )


def render_follow(cli: Application, r: FollowReport) -> None:
    cli.out.print(
        f"follow: {r.cycles} cycles, {r.claimed} claimed; email {r.sent['email']} sent, {r.failed['email']} failed;"
        f" sms {r.sent['sms']} sent, {r.failed['sms']} failed; {r.unknown} unknown; {r.outages} outage(s); {r.note}",
        markup=False,
    )


def when(ts: float | None) -> str:
    return "-" if ts is None else datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _shortwhen(ts: float | None) -> str:
    """A date that fits a table: month, day and minute this year; the full date for an older one."""
    if ts is None:
        return "-"
    when = datetime.datetime.fromtimestamp(ts)
    return when.strftime("%m-%d %H:%M" if when.year == datetime.date.today().year else "%Y-%m-%d")


STEP_COLUMNS = ("sync", "wait-import", "send-email", "send-sms")
# What `status` gives up first when the terminal is narrow: step durations (`show` has them), then the rest.
STATUS_DROP_ORDER = ("sync", "wait-import", "send-sms", "send-email", "invalid", "import", "created")


def fit_table(
    out: Console, title: str, header: tuple[str, ...], rows: list[list[str]], drop_order: tuple[str, ...]
) -> tuple[Table | Text, list[str]]:
    """A table as wide as the console allows: columns are dropped in `drop_order` until it fits, and a cell that
    still does not fit wraps instead of being cut to `500…`. Returns the table and the dropped columns.

    On a console narrower than the narrowest table (a split pane, a phone's terminal) the columns would be a
    letter wide and every word cut into a ladder: then each row is one line of text instead, every column named,
    wrapping as text does, and nothing is dropped."""
    hidden: list[str] = []
    for drop in (None, *drop_order):
        if drop is not None:
            hidden.append(drop)
        keep = [i for i, name in enumerate(header) if name not in hidden]
        table = Table(title=title)
        for i in keep:
            table.add_column(header[i], overflow="fold")
        for row in rows:
            table.add_row(*(row[i] for i in keep))
        # Measured without the console's limit (a measurement is capped at it): the width it wants.
        if Measurement.get(out, out.options.update_width(10_000), table).maximum <= out.width:
            return table, hidden
    named = ((f"{name} {value or '-'}" for name, value in zip(header, row, strict=True)) for row in rows)
    lines = [title, *(" · ".join(cells) for cells in named)]
    return Text("\n".join(lines)), []


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def render_status(cli: Application, data: dict[str, Any]) -> None:
    out = cli.out
    totals = ", ".join(f"{k} {v}" for k, v in sorted(data["totals"].items())) or "nothing yet"
    out.print(f"state {data['state']} · watermark {data['watermark']} · notifications: {totals}", markup=False)
    if (f := data.get("follower")) and not data.get("processes"):  # else: the processes' lines below
        state = {True: "running", False: "not running", None: "on another host"}[f["alive"]]
        out.print(
            f"follower: {state} · {f['host']} pid {f['pid']} · since {when(f['since'])} · last cycle "
            f"{when(f['last_cycle'])} · {f['cycles']} cycles · "
            + ("stopped" if f.get("stopped") else f"waiting for {f['waiting_for']}"),
            markup=False,
        )
    if data.get("processes"):
        owner = data.get("pipeline_owner")
        out.print(
            "import pipeline: "
            + (f"{owner['host']} pid {owner['pid']} (generation {owner['generation']})" if owner else "no owner now"),
            markup=False,
        )
        for p in data["processes"]:
            doing = ""
            if p.get("last_cycle") is not None:
                doing = f" · last cycle {when(p['last_cycle'])} · {p['cycles']} cycles · waiting for {p['waiting_for']}"
            out.print(
                f"  {p['role']} {p['host']} pid {p['pid']} · since {when(p['started_at'])} · last heartbeat"
                f" {p['heartbeat_age']:.1f}s ago" + ("" if p["fresh"] else " (stale: dead or frozen?)") + doing,
                markup=False,
            )
    for channel, lat in sorted((data.get("latency_last_hour") or {}).items()):
        out.print(
            f"latency, last hour, {channel}: p50 {lat['p50']:.1f}s · p95 {lat['p95']:.1f}s · max {lat['max']:.1f}s"
            f" ({lat['count']} accepted; event → accepted)",
            markup=False,
        )
    if data.get("oldest_pending_seconds") is not None:
        out.print(f"oldest notification still to send: {data['oldest_pending_seconds']:.1f}s old", markup=False)
    if data.get("held"):
        shown = ", ".join(f"{t} ({n})" for t, n in sorted(data["held"].items()))
        out.print(f"held, kept pending until their template is back in the config: {shown}", markup=False)
    unknown = data.get("unknown") or {}
    if unknown.get("count"):
        out.print(f"unknown {unknown['count']}: {unknown['why']}", markup=False)
        for reason, n in unknown["reasons"].items():
            out.print(f"  {n} × {reason}", markup=False)
    header = ("batch", "created", "status", "rows", "invalid", "import", "email", "sms", *STEP_COLUMNS)
    rows: list[list[str]] = []
    for b in data["batches"]:
        imp = b["import"]
        import_text = imp["status"] or "-"
        if imp["total"] is not None:
            import_text += f" {imp['ok']}/{imp['total']}" + (f" ({imp['errors']} rejected)" if imp["errors"] else "")

        def channel(name: str, b: dict[str, Any] = b) -> str:
            c = b["channels"].get(name, {})
            parts = [f"{c[k]} {k}" for k in ("sent", "failed", "unknown", "pending", "sending") if c.get(k)]
            return ", ".join(parts) or "-"

        def step(name: str, b: dict[str, Any] = b) -> str:
            s = b["steps"].get(name)
            return "-" if s is None else f"{s['status']} {secs(s['seconds'])}"

        rows.append(
            [
                str(b["batch"]),
                _shortwhen(b["created_at"]),
                b["status"],
                str(b["rows"]),
                str(b["invalid"]),
                import_text,
                channel("email"),
                channel("sms"),
                *(step(name) for name in STEP_COLUMNS),
            ]
        )
    table, hidden = fit_table(out, "recent batches", header, rows, STATUS_DROP_ORDER)
    out.print(table)
    if hidden:
        out.print(f"(not shown at {out.width} columns: {', '.join(hidden)}; see `mcnotify show BATCH`)", markup=False)
    for b in data["batches"]:
        for e in b["errors"]:
            out.print(
                f"  batch {b['batch']} {e['channel']} {e['notification_id']}: {e['status']} "
                f"{e['error_code'] or ''} {e['reason'] or ''}",
                markup=False,
            )


def gantt(steps: dict[str, dict[str, Any]], width: int = 50) -> list[tuple[str, str, str]]:
    """One bar per step on a shared time axis: the batch's Gantt chart."""
    # A running step's bar reaches now; one whose process is gone without an end (interrupted) stops where it
    # started, with no duration, instead of growing for ever.
    spans = [
        (n, s["started_at"], s["finished_at"] or (time.time() if s["status"] == "running" else None))
        for n, s in steps.items()
        if s["started_at"]
    ]
    if not spans:
        return []
    first, last = min(s[1] for s in spans), max(s[2] or s[1] for s in spans)
    scale = width / max(last - first, 1e-9)
    rows = []
    for name, start, end in spans:
        lead = int((start - first) * scale)
        size = max(1, round(((end or start) - start) * scale))
        rows.append((name, " " * lead + "█" * min(size, width - lead), "-" if end is None else secs(end - start)))
    return rows
