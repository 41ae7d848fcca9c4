"""Views that change nothing: status (the recent batches) and config check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mcnotify.cli.application import LARGEST, JsonOut, app, application, config_app
from mcnotify.cli.render import render_status
from mcnotify.errors import EXIT_CONFIG


@app.command()
def status(
    ctx: typer.Context,
    json_out: JsonOut = False,
    limit: Annotated[int, typer.Option(help="How many batches, newest first (1 or more).", min=1, max=LARGEST)] = 10,
) -> None:
    """Recent batches with each step's state, counts and durations."""
    from mcnotify import report

    cli = application(ctx)
    data = cli.read_only(lambda c: report.status(c.store, limit, c.settings.templates))
    if json_out:
        cli.out.print_json(json.dumps(data, default=str))
    else:
        render_status(cli, data)


@config_app.command("check")
def config_check(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """Validate the config and print it with secrets redacted."""
    from mcnotify.source import max_age_note

    cli = application(ctx)
    out = cli.out
    settings = cli.settings()
    if settings.sftp.key_file:
        from mcnotify.mc.sftp import load_key

        cli.guard(lambda: load_key(settings.sftp))  # a key that cannot be used is a config error
    if settings.metrics.textfile and not Path(settings.metrics.textfile).parent.is_dir():
        cli.fail(f"[metrics] textfile {settings.metrics.textfile}: its folder does not exist", EXIT_CONFIG)
    data = settings.redacted()
    note = max_age_note(settings.source)
    if json_out:
        out.print_json(json.dumps({**data, "notes": [note] if note else []}))
        return
    out.print(f"config {settings.path}: ok", markup=False)
    for section, values in data.items():
        for key, value in values.items():
            out.print(f"  {section}.{key} = {value!r}", markup=False)
    if note:
        out.print(f"note: {note}", markup=False)
