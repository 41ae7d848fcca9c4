"""The pipeline's commands: sync, wait-import, send-email, send-sms, run-all (each a run of its steps)."""

from __future__ import annotations

from typing import Annotated

import typer

from mcnotify.cli.application import DryRun, NoWait, app, application
from mcnotify.cli.render import render_follow, render_run_all, render_send, render_sync, render_wait
from mcnotify.errors import EXIT_USAGE


@app.command()
def sync(ctx: typer.Context, dry_run: DryRun = False) -> None:
    """Claim new notifications, validate contacts, upload the subscriber CSV and start MC's import."""
    from mcnotify.steps import sync as step

    cli = application(ctx)
    render_sync(cli, cli.run("sync", lambda c: step.run(c, dry_run=dry_run), dry_run), dry_run)


@app.command("wait-import")
def wait_import(ctx: typer.Context, dry_run: DryRun = False, no_wait: NoWait = False) -> None:
    """Wait until MC reports the import finished, and record its counts."""
    from mcnotify.steps import wait_import as step

    cli = application(ctx)
    report = cli.run("wait-import", lambda c: step.run(c, dry_run=dry_run, wait=not no_wait), dry_run)
    render_wait(cli, report)


@app.command("send-email")
def send_email(ctx: typer.Context, dry_run: DryRun = False) -> None:
    """Send the pending emails of every batch whose import completed."""
    from mcnotify.steps import send

    cli = application(ctx)
    report = cli.run("send-email", lambda c: send.run(c, "email", dry_run=dry_run), dry_run)
    render_send(cli, report, dry_run)
    cli.exit_with_verdict(report)


@app.command("send-sms")
def send_sms(ctx: typer.Context, dry_run: DryRun = False) -> None:
    """Send the pending SMS of every imported batch."""
    from mcnotify.steps import send

    cli = application(ctx)
    report = cli.run("send-sms", lambda c: send.run(c, "sms", dry_run=dry_run), dry_run)
    render_send(cli, report, dry_run)
    cli.exit_with_verdict(report)


@app.command("run-all")
def run_all(
    ctx: typer.Context,
    dry_run: DryRun = False,
    no_wait: NoWait = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep the chain moving until stopped (SIGTERM or Ctrl-C: exit 0).")
    ] = False,
) -> None:
    """The whole chain: sync, wait-import, send-email, send-sms. Resumes whatever an earlier run left."""
    cli = application(ctx)
    if follow:
        from mcnotify.steps import follow as following

        if dry_run or no_wait:
            cli.fail("--follow cannot be combined with --dry-run or --no-wait", EXIT_USAGE)
        render_follow(cli, cli.run("run-all", following.run, False, role=following.ROLE))
        return
    from mcnotify.steps import run_all as step

    report = cli.run("run-all", lambda c: step.run(c, dry_run=dry_run, wait=not no_wait), dry_run)
    render_run_all(cli, report, dry_run)
    cli.exit_with_verdict(report)
