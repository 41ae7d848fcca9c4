"""The pipeline's commands: sync, wait-import, send-email, send-sms, run-all, status, config check, sandbox, demo."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mcnotify.cli.base import (
    DryRun,
    JsonOut,
    NoWait,
    _fail,
    _guard,
    _read_only,
    _run,
    _settings,
    _use_secrets,
    app,
    config_app,
    exit_with_verdict,
    out,
)
from mcnotify.cli.render import _render_follow, _render_run_all, _render_send, _render_sync, _render_wait, render_status
from mcnotify.config import load
from mcnotify.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_USAGE


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

    report = _run("send-email", lambda ctx: send.run(ctx, "email", dry_run=dry_run), dry_run)
    _render_send(report, dry_run)
    exit_with_verdict(report)


@app.command("send-sms")
def send_sms(dry_run: DryRun = False) -> None:
    """Send the pending SMS of every imported batch."""
    from mcnotify.steps import send

    report = _run("send-sms", lambda ctx: send.run(ctx, "sms", dry_run=dry_run), dry_run)
    _render_send(report, dry_run)
    exit_with_verdict(report)


@app.command("run-all")
def run_all(
    dry_run: DryRun = False,
    no_wait: NoWait = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep the chain moving until stopped (SIGTERM or Ctrl-C: exit 0).")
    ] = False,
) -> None:
    """The whole chain: sync, wait-import, send-email, send-sms. Resumes whatever an earlier run left."""
    if follow:
        from mcnotify.steps import follow as following

        if dry_run or no_wait:
            _fail("--follow cannot be combined with --dry-run or --no-wait", EXIT_USAGE)
        _render_follow(_run("run-all", following.run, False))
        return
    from mcnotify.steps import run_all as step

    report = _run("run-all", lambda ctx: step.run(ctx, dry_run=dry_run, wait=not no_wait), dry_run)
    _render_run_all(report, dry_run)
    exit_with_verdict(report)


@app.command()
def status(
    json_out: JsonOut = False,
    limit: Annotated[int, typer.Option(help="How many batches, newest first (1 or more).")] = 10,
) -> None:
    """Recent batches with each step's state, counts and durations."""
    from mcnotify import report

    if limit < 1:  # the store reads no limit as "every batch, oldest first": never what was asked for
        _fail("--limit must be 1 or more", EXIT_USAGE)
    data = _read_only(lambda ctx: report.status(ctx.store, limit, ctx.settings.templates))
    if json_out:
        out.print_json(json.dumps(data, default=str))
    else:
        render_status(data)


@config_app.command("check")
def config_check(json_out: JsonOut = False) -> None:
    """Validate the config and print it with secrets redacted."""
    from mcnotify.source import max_age_note

    settings = _settings()
    if settings.section("sftp")["key_file"]:
        from mcnotify.mc.sftp import load_key

        _guard(lambda: load_key(settings.section("sftp")))  # a key that cannot be used is a config error
    if settings.metrics.textfile and not Path(settings.metrics.textfile).parent.is_dir():
        _fail(f"[metrics] textfile {settings.metrics.textfile}: its folder does not exist", EXIT_CONFIG)
    data = settings.redacted()
    note = max_age_note(settings.section("source"))
    if json_out:
        out.print_json(json.dumps({**data, "notes": [note] if note else []}))
        return
    out.print(f"config {settings.path}: ok", markup=False)
    for section, values in data.items():
        for key, value in values.items():
            out.print(f"  {section}.{key} = {value!r}", markup=False)
    if note:
        out.print(f"note: {note}", markup=False)


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1 (0 picks one).")] = 0,
    workdir: Annotated[Path | None, typer.Option(help="Where to keep the SFTP root and config.")] = None,
    import_lag: Annotated[float, typer.Option(help="Seconds MC takes to import a file.")] = 2.0,
    token_lifetime: Annotated[float, typer.Option(help="Real token lifetime in seconds.")] = 1200.0,
    latency_ms: Annotated[float, typer.Option(help="Added to every MC request, milliseconds.")] = 0.0,
    fault_rate: Annotated[float, typer.Option(help="Share of MC requests that fail (429/500/503/reset/...).")] = 0.0,
) -> None:
    """Run the local Marketing Cloud stand-in until Ctrl-C or SIGTERM, and print a config pointing at it."""
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
    from mcnotify.sandbox.demo import make_source

    # The printed config reads this source: create the demo's sample rows so that it works as printed. A source
    # already there (an earlier sandbox in this folder, or the engineer's own data) is kept as it is.
    source = base / "app.sqlite"
    if source.exists():
        source_note = f"source {source} kept as it was"
    else:
        source_note = f"sample source {source} created with {make_source(source)} notifications"
    box = Sandbox(base, settings, port=port).start()
    box.account.record_path = base / "accepted.jsonl"
    config = base / "config.toml"
    text = box.config_toml(base / "state.db", "sqlite:///" + str(source))
    config.write_text(text)
    config.chmod(0o600)
    out.print(text, markup=False)
    out.print(
        f"# sandbox: MC on {box.url}, SFTP on 127.0.0.1:{box.sftp.port if box.sftp else '-'}; {source_note}; "
        f"config written to {config} (point [source] at your data, or try `mcnotify --config {config} run-all` as "
        f"it is); accepted messages in {box.account.record_path} and at "
        f"{box.url}_sandbox/record. Ctrl-C or SIGTERM stops it.",
        markup=False,
    )
    from mcnotify.stop import STOP

    # SIGTERM or Ctrl-C sets STOP (see mcnotify.cli.main); either is this command's normal end (exit 0).
    try:
        STOP.wait()
    finally:
        box.stop()
    out.print("# sandbox stopped", markup=False)


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
            render_status(report.status(ctx.store, templates=settings.templates))
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
