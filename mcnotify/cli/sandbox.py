"""The local Marketing Cloud stand-in as commands: sandbox (run it) and demo (the real pipeline against it)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mcnotify.cli.application import app, application
from mcnotify.cli.render import render_run_all, render_status
from mcnotify.errors import EXIT_FAILURE


@app.command()
def sandbox(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1 (0 picks one).", min=0, max=65535)] = 0,
    workdir: Annotated[Path | None, typer.Option(help="Where to keep the SFTP root and config.")] = None,
    import_lag: Annotated[float, typer.Option(help="Seconds MC takes to import a file.", min=0)] = 2.0,
    token_lifetime: Annotated[float, typer.Option(help="Real token lifetime in seconds.", min=1)] = 1200.0,
    latency_ms: Annotated[float, typer.Option(help="Added to every MC request, milliseconds.", min=0)] = 0.0,
    fault_rate: Annotated[
        float, typer.Option(help="Share of MC requests that fail (429/500/503/reset/...).", min=0, max=1)
    ] = 0.0,
) -> None:
    """Run the local Marketing Cloud stand-in until Ctrl-C or SIGTERM, and print a config pointing at it."""
    import secrets as pysecrets

    from mcnotify.sandbox import Sandbox
    from mcnotify.sandbox.model import SandboxSettings

    out = application(ctx).out
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
def demo(ctx: typer.Context) -> None:
    """Run the real pipeline against the built-in sandbox in a temporary workspace."""
    from mcnotify import report
    from mcnotify.runner import execute, open_context
    from mcnotify.sandbox import demo as demo_lib
    from mcnotify.steps import run_all as step

    cli = application(ctx)
    out = cli.out
    workdir = Path(tempfile.mkdtemp(prefix="mcnotify-demo-"))
    box, config_path, rows = demo_lib.prepare(workdir)
    try:
        out.print(
            f"[bold]mcnotify demo[/bold] in {workdir}: {rows} notifications in a SQLite source, sandbox MC on {box.url}"
        )
        settings = cli.settings(config_path)
        render_run_all(cli, cli.guard(lambda: execute(settings, "run-all", lambda c: step.run(c))), False)
        again = cli.guard(lambda: execute(settings, "run-all", lambda c: step.run(c)))
        resent = sum(r.sent for r in again.sends)
        out.print(f"second run-all: {resent} sent (nothing is ever sent twice)")
        with open_context(settings, lock=False) as c:
            render_status(cli, report.status(c.store, templates=settings.templates))
            invalid = c.store.invalid_rows()
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
            cli.fail("demo: a message was accepted twice", EXIT_FAILURE)
    finally:
        box.stop()
