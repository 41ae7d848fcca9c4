"""The command line: parse, call the library, render. The only module that imports typer or rich."""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from mcnotify import __version__
from mcnotify.config import DEFAULT_CONFIG_PATH, Settings, load
from mcnotify.errors import EXIT_FAILURE, McnotifyError
from mcnotify.redact import scrub

if TYPE_CHECKING:  # the steps pull in requests, paramiko, phonenumbers: import them only when used
    from mcnotify.steps import Context

T = TypeVar("T")
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Deliver app notifications through Salesforce Marketing Cloud, exactly once.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(config_app, name="config")

# Not a terminal (CI, journald, pipes): a wide fixed width so tables are not squeezed into 80 columns.
_WIDTH = None if sys.stdout.isatty() else 160
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
_state: dict[str, Any] = {"config": DEFAULT_CONFIG_PATH, "quiet": False, "secrets": ()}

DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would happen; write and send nothing.")]
NoWait = Annotated[bool, typer.Option("--no-wait", help="Check the import once; exit 75 while it is pending.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _version(value: bool) -> None:
    if value:
        out.print(f"mcnotify {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="MCNOTIFY_CONFIG", help="Config file.")] = (
        DEFAULT_CONFIG_PATH
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    log_json: Annotated[bool, typer.Option("--log-json", help="Log JSON lines.")] = False,
    show_contacts: Annotated[
        bool, typer.Option("--show-contacts", help="Do not mask emails and phone numbers in logs.")
    ] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    from rich.logging import RichHandler

    from mcnotify import logs

    _state["config"], _state["quiet"] = config, quiet
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    terminal = RichHandler(console=err, show_path=False, show_level=False, markup=False, rich_tracebacks=False)
    _state["redactor"] = logs.setup(
        level, json_lines=log_json, mask_contacts=not show_contacts, terminal_handler=terminal, stream=sys.stderr
    )


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"mcnotify: error: {scrub(message, _state['secrets'])}", markup=False)
    raise typer.Exit(code)


def _guard(fn: Callable[[], T]) -> T:
    """Every failure becomes one line and an exit code; a traceback only with MCNOTIFY_DEBUG=1."""
    try:
        return fn()
    except McnotifyError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except typer.Exit:
        raise
    except Exception as exc:
        if os.environ.get("MCNOTIFY_DEBUG"):
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc} (MCNOTIFY_DEBUG=1 shows a traceback)", EXIT_FAILURE)


def _settings() -> Settings:
    settings = _guard(lambda: load(Path(_state["config"])))
    _use_secrets(settings)
    return settings


def _use_secrets(settings: Settings) -> None:
    from mcnotify import logs

    _state["secrets"] = settings.secrets
    logs.set_secrets(_state.get("redactor"), settings.secrets)


def _run(command: str, action: Callable[[Context], T], dry_run: bool) -> T:
    from mcnotify.runner import execute

    settings = _settings()
    return _guard(lambda: execute(settings, command, action, dry_run=dry_run))


# -- rendering ------------------------------------------------------------------------------------------------
def _render_sync(r: Any, dry_run: bool) -> None:
    if dry_run:
        out.print(
            f"[bold]sync (dry run)[/bold]: {r.new_rows} new notifications, {r.invalid} invalid, "
            f"{r.conflicts} key conflicts; would upload {r.csv_rows} subscribers"
        )
        for reason, n in sorted(r.invalid_reasons.items(), key=lambda kv: -kv[1]):
            out.print(f"  invalid: {n} x {reason}", markup=False)
        if r.sample_csv:
            table = Table("SubscriberKey", "EmailAddress", title="CSV sample")
            for row in r.sample_csv:
                table.add_row(*row)
            out.print(table)
        _render_samples(r.sample_sends, "would send (sample)")
        return
    if r.blocked or r.batch_id is None:
        out.print(f"sync: {r.note}")
        return
    out.print(
        f"sync: batch {r.batch_id}: {r.new_rows} new, {r.invalid} invalid, {r.conflicts} key conflicts, "
        f"{r.csv_rows} subscribers uploaded"
        + (f", import task {r.task_id}" if r.task_id else "")
        + (f" ({r.note})" if r.note else "")
    )


def _render_samples(samples: list[dict[str, Any]], title: str) -> None:
    if not samples:
        return
    table = Table(*samples[0].keys(), title=title)
    for s in samples:
        table.add_row(*(str(v) for v in s.values()))
    out.print(table)


def _render_wait(r: Any) -> None:
    if not r.results:
        out.print(f"wait-import: {r.note}")
    for res in r.results:
        counts = (
            ""
            if res.total is None
            else f": {res.ok} ok, {res.errors} rejected, {res.duplicates} duplicates of {res.total}"
        )
        out.print(f"wait-import: batch {res.batch_id} import {res.status}{counts}")


def _render_send(r: Any, dry_run: bool) -> None:
    if dry_run:
        out.print(
            f"send-{r.channel} (dry run): would send {r.sent} in batch(es) {r.batches or '-'}"
            + (f"; {r.note}" if r.note else "")
        )
        _render_samples(r.samples, f"send-{r.channel} sample")
        return
    if not r.batches and not r.failed:
        out.print(f"send-{r.channel}: {r.note}")
        return
    out.print(
        f"send-{r.channel}: {r.sent} sent ({r.duplicates} already accepted earlier), {r.failed} failed, "
        f"{r.unknown} unknown, {r.calls} API calls"
    )


# -- commands -------------------------------------------------------------------------------------------------
@app.command()
def sync(dry_run: DryRun = False) -> None:
    """Claim new notifications, validate contacts, upload the subscriber CSV and start MC's import."""
    from mcnotify.steps import sync as step

    _render_sync(_run("sync", lambda ctx: step.run(ctx, dry_run=dry_run), dry_run), dry_run)


@app.command("wait-import")
def wait_import(dry_run: DryRun = False, no_wait: NoWait = False) -> None:
    """Wait until MC reports the import finished, and record its counts."""
    from mcnotify.steps import wait_import as step

    report = _run("wait-import", lambda ctx: step.run(ctx, dry_run=dry_run, wait=not no_wait), dry_run)
    _render_wait(report)


@app.command("send-email")
def send_email(dry_run: DryRun = False) -> None:
    """Send the pending emails of every batch whose import completed."""
    from mcnotify.steps import send

    _render_send(_run("send-email", lambda ctx: send.run(ctx, "email", dry_run=dry_run), dry_run), dry_run)


@app.command("send-sms")
def send_sms(dry_run: DryRun = False) -> None:
    """Send the pending SMS of every imported batch."""
    from mcnotify.steps import send

    _render_send(_run("send-sms", lambda ctx: send.run(ctx, "sms", dry_run=dry_run), dry_run), dry_run)


@app.command("run-all")
def run_all(dry_run: DryRun = False, no_wait: NoWait = False) -> None:
    """The whole chain: sync, wait-import, send-email, send-sms. Resumes whatever an earlier run left."""
    from mcnotify.steps import run_all as step

    _render_run_all(_run("run-all", lambda ctx: step.run(ctx, dry_run=dry_run, wait=not no_wait), dry_run), dry_run)


def _render_run_all(report: Any, dry_run: bool) -> None:
    for s in report.syncs:
        _render_sync(s, dry_run)
    for w in report.waits:
        _render_wait(w)
    for r in report.sends:
        _render_send(r, dry_run)


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def render_status(data: dict[str, Any]) -> None:
    totals = ", ".join(f"{k} {v}" for k, v in sorted(data["totals"].items())) or "nothing yet"
    out.print(f"state {data['state']} · watermark {data['watermark']} · notifications: {totals}", markup=False)
    table = Table(
        "batch",
        "created",
        "status",
        "rows",
        "invalid",
        "import",
        "email",
        "sms",
        "sync",
        "wait-import",
        "send-email",
        "send-sms",
        title="recent batches",
    )
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
            return "-" if s is None else f"{s['status']} {_secs(s['seconds'])}"

        table.add_row(
            str(b["batch"]),
            _when(b["created_at"]),
            b["status"],
            str(b["rows"]),
            str(b["invalid"]),
            import_text,
            channel("email"),
            channel("sms"),
            step("sync"),
            step("wait-import"),
            step("send-email"),
            step("send-sms"),
        )
    out.print(table)
    for b in data["batches"]:
        for e in b["errors"]:
            out.print(
                f"  batch {b['batch']} {e['channel']} {e['notification_id']}: {e['status']} "
                f"{e['error_code'] or ''} {e['reason'] or ''}",
                markup=False,
            )


@app.command()
def status(json_out: JsonOut = False, limit: Annotated[int, typer.Option(help="How many batches.")] = 10) -> None:
    """Recent batches with each step's state, counts and durations."""
    from mcnotify import report

    data = _read_only(lambda ctx: report.status(ctx.store, limit))
    if json_out:
        out.print_json(json.dumps(data, default=str))
    else:
        render_status(data)


def _read_only(build: Callable[[Context], T]) -> T:
    """Run a view against the state without taking the lock or recording a run."""
    from mcnotify.runner import open_context

    settings = _settings()

    def go() -> T:
        with open_context(settings, dry_run=True, lock=False) as ctx:
            return build(ctx)

    return _guard(go)


@app.command()
def history(
    json_out: JsonOut = False,
    step: Annotated[str | None, typer.Option(help="Only this command, e.g. run-all or send-email.")] = None,
    result: Annotated[str | None, typer.Option(help="ok, failed, temporary or running.")] = None,
    limit: Annotated[int, typer.Option(help="How many runs.")] = 20,
) -> None:
    """Recent runs, newest first: command, host, start, duration, exit code, counts, error."""
    if result not in (None, "ok", "failed", "temporary", "running"):
        _fail("--result must be ok, failed, temporary or running", 2)
    runs = _read_only(lambda ctx: ctx.store.runs(limit=limit, command=step, result=result))
    for run in runs:
        run["counts"] = json.loads(run["counts"]) if run["counts"] else {}
    if json_out:
        out.print_json(json.dumps(runs))
        return
    table = Table("run", "command", "host", "pid", "started", "took", "exit", "counts", "error", title="runs")
    for r in runs:
        took = None if r["finished_at"] is None else r["finished_at"] - r["started_at"]
        counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items() if k != "seconds" and v)
        table.add_row(
            str(r["id"]),
            r["command"],
            r["host"],
            str(r["pid"]),
            _when(r["started_at"]),
            _secs(took),
            "running" if r["exit_code"] is None else str(r["exit_code"]),
            counts,
            r["error"] or "",
        )
    out.print(table)


def _gantt(steps: dict[str, dict[str, Any]], width: int = 50) -> list[tuple[str, str, str]]:
    """One bar per step on a shared time axis: the batch's Gantt chart."""
    spans = [(n, s["started_at"], s["finished_at"] or time.time()) for n, s in steps.items() if s["started_at"]]
    if not spans:
        return []
    first, last = min(s[1] for s in spans), max(s[2] for s in spans)
    scale = width / max(last - first, 1e-9)
    rows = []
    for name, start, end in spans:
        lead = int((start - first) * scale)
        size = max(1, round((end - start) * scale))
        rows.append((name, " " * lead + "█" * min(size, width - lead), _secs(end - start)))
    return rows


@app.command()
def show(batch: Annotated[int, typer.Argument(help="Batch number.")], json_out: JsonOut = False) -> None:
    """One batch: its steps on a timeline, the import's counts, sent/failed/invalid per channel, first errors."""
    from mcnotify import report

    view = _read_only(lambda ctx: report.batch_view(ctx.store, batch))
    if view is None:
        _fail(f"no batch {batch}", 1)
    if json_out:
        out.print_json(json.dumps(view, default=str))
        return
    imp = view["import"]
    out.print(
        f"batch {view['batch']} · {view['status']} · created {_when(view['created_at'])} · {view['rows']} rows, "
        f"{view['invalid']} invalid, {view['conflicts']} key conflicts, {view['csv_rows']} subscribers uploaded",
        markup=False,
    )
    out.print(
        f"import: {imp['status'] or '-'} task {imp['task_id'] or '-'} · total {imp['total']}, ok {imp['ok']}, "
        f"rejected {imp['errors']}, duplicates {imp['duplicates']}",
        markup=False,
    )
    timeline = Table("step", "timeline", "took", "status", "detail", title="steps")
    bars = {name: (bar, took) for name, bar, took in _gantt(view["steps"])}
    for name, step_view in view["steps"].items():
        bar, took = bars.get(name, ("", "-"))
        timeline.add_row(name, bar, took, step_view["status"], step_view["detail"] or "")
    out.print(timeline)
    for channel, counts in view["channels"].items():
        out.print(f"{channel}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), markup=False)
    for e in view["errors"]:
        out.print(
            f"  {e['channel']} {e['notification_id']}: {e['status']} {e['error_code'] or ''} {e['reason'] or ''}",
            markup=False,
        )


@app.command()
def retry(
    batch: Annotated[int, typer.Option("--batch", help="Batch number.")],
    channel: Annotated[str | None, typer.Option(help="email or sms; both when omitted.")] = None,
) -> None:
    """Put a batch's failed notifications back to pending (never touches sent or unknown ones)."""
    from mcnotify.steps import repair

    if channel not in (None, "email", "sms"):
        _fail("--channel must be email or sms", 2)
    result = _run("retry", lambda ctx: repair.retry(ctx, batch, channel), False)
    out.print(f"retry: batch {result.batch_id}: {result.note}")


@app.command()
def skip(
    batch: Annotated[int, typer.Option("--batch", help="Batch number.")],
    reason: Annotated[str, typer.Option(help="Why; kept with every skipped notification.")],
) -> None:
    """Mark a stuck batch done: what it has not sent is marked skipped with the reason."""
    from mcnotify.steps import repair

    result = _run("skip", lambda ctx: repair.skip(ctx, batch, reason), False)
    out.print(f"skip: {result.note}")


@app.command()
def invalid(
    batch: Annotated[int | None, typer.Option("--batch", help="Only this batch.")] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write them to this CSV file instead.")] = None,
    json_out: JsonOut = False,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100_000,
) -> None:
    """List quarantined contacts with the reason, so the app team can fix their data."""
    from mcnotify import report

    rows = _read_only(lambda ctx: ctx.store.invalid_rows(batch, limit))
    if csv_path is not None:

        def write() -> int:
            with csv_path.open("w", encoding="utf-8", newline="") as f:
                return report.write_invalid_csv(rows, f)

        try:
            count = write()
        except OSError as exc:
            _fail(f"cannot write {csv_path}: {exc.strerror}", EXIT_FAILURE)
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
def doctor() -> None:
    """Check the config, the state file, MySQL, SFTP, the MC token and the templates' definitions."""
    from mcnotify import doctor as doc
    from mcnotify.runner import open_context

    settings = _settings()

    def go() -> list[doc.Check]:
        with open_context(settings, lock=False) as ctx:
            return doc.checks(ctx)

    results = _guard(go)
    for c in results:
        mark = "[green]ok[/green]    " if c.ok else "[red]failed[/red]"
        out.print(
            f"{mark} {c.name}: "
            + scrub(c.detail, settings.secrets).replace("[", "\\[")
            + ("" if c.ok else f" → {c.hint}")
        )
    if not all(c.ok for c in results):
        raise typer.Exit(EXIT_FAILURE)


@app.command()
def alert(unit: Annotated[str, typer.Option("--unit", help="The systemd unit that failed.")]) -> None:
    """Send a failure alert for a unit (mcnotify-alert@.service runs this from OnFailure=)."""
    import socket

    from mcnotify import hooks

    settings = _settings()
    hooks.alert(settings, f"{unit} failed on {socket.gethostname()}", f"See: journalctl -u {unit}")


@config_app.command("check")
def config_check(json_out: JsonOut = False) -> None:
    """Validate the config and print it with secrets redacted."""
    settings = _settings()
    data = settings.redacted()
    if json_out:
        out.print_json(json.dumps(data))
        return
    out.print(f"config {settings.path}: ok", markup=False)
    for section, values in data.items():
        for key, value in values.items():
            out.print(f"  {section}.{key} = {value!r}", markup=False)


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1 (0 picks one).")] = 0,
    workdir: Annotated[Path | None, typer.Option(help="Where to keep the SFTP root and config.")] = None,
    import_lag: Annotated[float, typer.Option(help="Seconds MC takes to import a file.")] = 2.0,
    token_lifetime: Annotated[float, typer.Option(help="Real token lifetime in seconds.")] = 1200.0,
    latency_ms: Annotated[float, typer.Option(help="Added to every MC request, milliseconds.")] = 0.0,
    fault_rate: Annotated[float, typer.Option(help="Share of MC requests that fail (429/500/503/reset/...).")] = 0.0,
) -> None:
    """Run the local Marketing Cloud stand-in until Ctrl-C, and print a config pointing at it."""
    import secrets as pysecrets

    from mcnotify.sandbox import Sandbox
    from mcnotify.sandbox.model import SandboxSettings

    base = workdir or Path(tempfile.mkdtemp(prefix="mcnotify-sandbox-"))
    base.mkdir(parents=True, exist_ok=True)
    settings = SandboxSettings(
        client_secret=pysecrets.token_urlsafe(16),
        import_lag=import_lag,
        token_lifetime=token_lifetime,
        latency=latency_ms / 1000,
        fault_rate=fault_rate,
    )
    box = Sandbox(base, settings, port=port).start()
    box.account.record_path = base / "accepted.jsonl"
    config = base / "config.toml"
    text = box.config_toml(base / "state.db", "sqlite:///" + str(base / "app.sqlite"))
    config.write_text(text)
    config.chmod(0o600)
    out.print(text, markup=False)
    out.print(
        f"# sandbox: MC on {box.url}, SFTP on 127.0.0.1:{box.sftp.port if box.sftp else '-'}; config written to "
        f"{config} (point [source] at your data); accepted messages in {box.account.record_path} and at "
        f"{box.url}_sandbox/record. Ctrl-C stops it.",
        markup=False,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        box.stop()


@app.command()
def demo() -> None:
    """Run the real pipeline against the built-in sandbox in a temporary workspace."""
    from mcnotify import report
    from mcnotify.runner import execute, open_context
    from mcnotify.sandbox import demo as demo_lib
    from mcnotify.steps import run_all as step

    workdir = Path(tempfile.mkdtemp(prefix="mcnotify-demo-"))
    box, config_path, rows = demo_lib.prepare(workdir)
    try:
        out.print(
            f"[bold]mcnotify demo[/bold] in {workdir}: {rows} notifications in a SQLite source, sandbox MC on {box.url}"
        )
        settings = _guard(lambda: load(config_path))
        _use_secrets(settings)
        _render_run_all(_guard(lambda: execute(settings, "run-all", lambda ctx: step.run(ctx))), False)
        again = _guard(lambda: execute(settings, "run-all", lambda ctx: step.run(ctx)))
        resent = sum(r.sent for r in again.sends)
        out.print(f"second run-all: {resent} sent (nothing is ever sent twice)")
        with open_context(settings, lock=False) as ctx:
            render_status(report.status(ctx.store))
            invalid = ctx.store.invalid_rows()
        if invalid:
            table = Table("notification", "template", "contact", "reason", title="quarantined (never uploaded)")
            for row in invalid:
                table.add_row(row["notification_id"], row["template"], str(row["raw_contact"]), row["reason"])
            out.print(table)
        accepted = box.account.snapshot()["accepted"]
        table = Table("messageKey", "channel", "definition", "to", "from name", title="what MC accepted")
        for m in accepted:
            table.add_row(
                m["messageKey"],
                m["channel"],
                m["definitionKey"],
                m["to"],
                m["attributes"].get("SenderDisplayName", ""),
            )
        out.print(table)
        if resent or len({m["messageKey"] for m in accepted}) != len(accepted):
            _fail("demo: a message was accepted twice", EXIT_FAILURE)
    finally:
        box.stop()


def main() -> None:
    import signal

    from mcnotify.steps import request_stop

    # systemd stop: finish the request in flight, record it, exit promptly (exit code 143).
    signal.signal(signal.SIGTERM, lambda signum, frame: request_stop())
    app(prog_name="mcnotify")


if __name__ == "__main__":
    main()
