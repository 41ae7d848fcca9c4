"""Operators' commands: history, show, retry, skip, invalid, doctor, alert."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.table import Table

from mcnotify.cli.application import LARGEST, JsonOut, app, application
from mcnotify.cli.render import fit_table, gantt, secs, when
from mcnotify.errors import EXIT_FAILURE
from mcnotify.redact import scrub

if TYPE_CHECKING:
    from mcnotify.steps import Context


@app.command()
def history(
    ctx: typer.Context,
    json_out: JsonOut = False,
    step: Annotated[str | None, typer.Option(help="Only this command, e.g. run-all or send-email.")] = None,
    result: Annotated[
        Literal["ok", "failed", "temporary", "running"] | None, typer.Option(help="Only runs with this result.")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many runs, newest first (1 or more).", min=1, max=LARGEST)] = 20,
) -> None:
    """Recent runs, newest first: command, host, start, duration, exit code, counts, error."""
    cli = application(ctx)
    out = cli.out
    runs = cli.read_only(lambda c: c.store.runs(limit=limit, command=step, result=result))
    for run in runs:
        run["counts"] = json.loads(run["counts"]) if run["counts"] else {}
    if json_out:
        out.print_json(json.dumps(runs))
        return
    rows = []
    for r in runs:
        took = None if r["finished_at"] is None else r["finished_at"] - r["started_at"]
        counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items() if k != "seconds" and v)
        rows.append(
            [
                str(r["id"]),
                r["command"],
                r["host"],
                str(r["pid"]),
                when(r["started_at"]),
                secs(took),
                str(r["exit_code"]) if r["exit_code"] is not None else _unfinished(r),
                counts,
                r["error"] or "",
            ]
        )
    header = ("run", "command", "host", "pid", "started", "took", "exit", "counts", "error")
    # Long counts and errors wrap; on a narrow terminal the pid, then the host, then the duration give way.
    table, _ = fit_table(out, "runs", header, rows, ("pid", "host", "took"))
    out.print(table)


def _unfinished(run: dict[str, Any]) -> str:
    """An unfinished run: still running, or its process is gone without recording how it ended."""
    from mcnotify.report import process_alive

    return "gone (killed?)" if process_alive(run["host"], run["pid"]) is False else "running"


@app.command()
def show(
    ctx: typer.Context,
    batch: Annotated[int, typer.Argument(help="Batch number.", min=1, max=LARGEST)],
    json_out: JsonOut = False,
) -> None:
    """One batch: its steps on a timeline, the import's counts, sent/failed/invalid per channel, first errors."""
    from mcnotify import report

    cli = application(ctx)
    out = cli.out
    view = cli.read_only(lambda c: report.batch_view(c.store, batch))
    if view is None:
        cli.fail(f"no batch {batch}", 1)
    if json_out:
        out.print_json(json.dumps(view, default=str))
        return
    imp = view["import"]

    def n(value: int | None) -> str:  # an import that never reported counts
        return "-" if value is None else str(value)

    out.print(
        f"batch {view['batch']} · {view['status']} · created {when(view['created_at'])} · {view['rows']} rows, "
        f"{view['invalid']} invalid, {view['conflicts']} key conflicts, "
        + ("nothing uploaded" if view["csv_rows"] is None else f"{view['csv_rows']} subscribers uploaded"),
        markup=False,
    )
    out.print(
        f"import: {imp['status'] or '-'} task {imp['task_id'] or '-'} · total {n(imp['total'])}, ok {n(imp['ok'])}, "
        f"rejected {n(imp['errors'])}, duplicates {n(imp['duplicates'])}",
        markup=False,
    )
    if view["skipped"]:
        out.print(f"skipped by an operator at {when(view['skipped']['at'])}: {view['skipped']['reason']}", markup=False)
    timeline = Table("step", "timeline", "took", "status", "detail", title="steps")
    bars = {name: (bar, took) for name, bar, took in gantt(view["steps"])}
    for name, step_view in view["steps"].items():
        bar, took = bars.get(name, ("", "-"))
        timeline.add_row(name, bar, took, step_view["status"], step_view["detail"] or "")
    out.print(timeline)
    for channel, counts in view["channels"].items():
        out.print(f"{channel}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), markup=False)
    for channel, lat in sorted(view["latency"].items()):
        out.print(
            f"latency {channel} (event → accepted): p50 {lat['p50']:.1f}s · p95 {lat['p95']:.1f}s"
            f" · max {lat['max']:.1f}s over {lat['count']}",
            markup=False,
        )
    for e in view["errors"]:
        out.print(
            f"  {e['channel']} {e['notification_id']}: {e['status']} {e['error_code'] or ''} {e['reason'] or ''}",
            markup=False,
        )


@app.command()
def retry(
    ctx: typer.Context,
    batch: Annotated[int, typer.Option("--batch", help="Batch number.", min=1, max=LARGEST)],
    channel: Annotated[
        Literal["email", "sms"] | None, typer.Option(help="Only this channel; both when omitted.")
    ] = None,
) -> None:
    """Put a batch's failed notifications back to pending (never touches sent or unknown ones)."""
    from mcnotify.steps import repair

    cli = application(ctx)
    result = cli.run("retry", lambda c: repair.retry(c, batch, channel), False)
    cli.out.print(f"retry: batch {result.batch_id}: {result.note}")


@app.command()
def skip(
    ctx: typer.Context,
    batch: Annotated[int, typer.Option("--batch", help="Batch number.", min=1, max=LARGEST)],
    reason: Annotated[str, typer.Option(help="Why; kept with every skipped notification.")],
) -> None:
    """Mark a stuck batch done: what it has not sent is marked skipped with the reason."""
    from mcnotify.steps import repair

    cli = application(ctx)
    result = cli.run("skip", lambda c: repair.skip(c, batch, reason), False)
    cli.out.print(f"skip: {result.note}")


@app.command()
def invalid(
    ctx: typer.Context,
    batch: Annotated[int | None, typer.Option("--batch", help="Only this batch.", min=1, max=LARGEST)] = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Write them to this CSV file instead ('-': standard output).")
    ] = None,
    json_out: JsonOut = False,
    limit: Annotated[int, typer.Option(help="At most this many.", min=1, max=LARGEST)] = 100_000,
) -> None:
    """List quarantined contacts with the reason, so the app team can fix their data."""
    from mcnotify import report

    cli = application(ctx)
    out = cli.out

    def read(c: Context) -> list[dict[str, Any]]:
        if batch is not None and c.store.batch(batch) is None:
            cli.fail(f"no batch {batch}", EXIT_FAILURE)  # like `show`: a typo must not look like "all clean"
        return c.store.invalid_rows(batch, limit)

    rows = cli.read_only(read)
    if csv_path == Path("-"):  # the usual "standard output"; nothing else is printed there
        report.write_invalid_csv(rows, sys.stdout)
        return
    if csv_path is not None:

        def write() -> int:
            with csv_path.open("w", encoding="utf-8", newline="") as f:
                return report.write_invalid_csv(rows, f)

        try:
            count = write()
        except OSError as exc:
            cli.fail(f"cannot write {csv_path}: {exc.strerror}", EXIT_FAILURE)
        out.print(f"invalid: {count} quarantined contact(s) written to {csv_path}", markup=False)
        return
    if json_out:
        out.print_json(json.dumps(rows))
        return
    table = Table(
        "batch",
        "notification",
        "template",
        "channel",
        "subscriber",
        "contact",
        "reason",
        title=f"{len(rows)} quarantined contact(s)",
    )
    for r in rows:
        table.add_row(*(str(r[c]) if r[c] is not None else "" for c in report.INVALID_COLUMNS))
    out.print(table)


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check the config, the state file, MySQL, SFTP, the MC token and the templates' definitions."""
    from mcnotify import doctor as doc
    from mcnotify.runner import open_context

    cli = application(ctx)
    settings = cli.settings()

    def go() -> list[doc.Check]:
        with open_context(settings, lock=False) as context:
            return doc.checks(context)

    results = cli.guard(go)
    for c in results:
        mark = "[green]ok[/green]" if c.ok else "[red]failed[/red]"
        cli.out.print(
            f"{mark} {c.name}: "
            + scrub(c.detail, settings.secrets).replace("[", "\\[")
            + ("" if c.ok else " → " + c.hint.replace("[", "\\["))  # "[sftp]" is text, not markup
        )
    if not all(c.ok for c in results):
        raise typer.Exit(EXIT_FAILURE)


@app.command()
def alert(
    ctx: typer.Context, unit: Annotated[str, typer.Option("--unit", help="The systemd unit that failed.")]
) -> None:
    """Send a failure alert for a unit (mcnotify-alert@.service runs this from OnFailure=), unless the failed run
    has already alerted it."""
    import logging

    from mcnotify import hooks
    from mcnotify.config import load, load_alerts_only
    from mcnotify.errors import ConfigError
    from mcnotify.runner import open_context

    app_ = application(ctx)
    path = app_.config_path
    try:
        settings = load(path)
    except ConfigError as exc:
        # The likeliest first-day failure is the config itself: alert it with [alerts] alone.
        fallback = app_.guard(lambda: load_alerts_only(path))
        app_.use_secrets(fallback)
        hooks.unit_failed(fallback, None, unit, reason=f"its configuration does not load: {exc}")
        return
    app_.use_secrets(settings)
    try:
        with open_context(settings, lock=False) as c:
            hooks.unit_failed(settings, c.store, unit)
            return
    except Exception as exc:  # no state to check against: an alert too many beats none
        logging.getLogger("mcnotify").warning("state unavailable (%s: %s); alerting anyway", type(exc).__name__, exc)
    hooks.unit_failed(settings, None, unit)
