"""`mcnotify state migrate`: the configured SQLite state copied into a MariaDB/MySQL database."""

from __future__ import annotations

from typing import Annotated

import typer

from mcnotify.cli.application import application, state_app
from mcnotify.config import check_state_url, hide_userinfo, redact_url, url_secrets
from mcnotify.errors import EXIT_CONFIG, EXIT_USAGE


@state_app.command("migrate")
def migrate(
    ctx: typer.Context,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="mysql://user:password@host:port/database, an empty database (the password may come from"
            " MCNOTIFY_STATE_PASSWORD instead).",
        ),
    ],
) -> None:
    """Copy the configured SQLite state into an empty MariaDB/MySQL database, ids and all."""
    import os

    from mcnotify.state.copy import copy_to_mysql

    cli = application(ctx)
    settings = cli.settings()
    # The URL's password is a secret from now on: no message or log line may carry it.
    from mcnotify import logs

    cli.secrets = tuple(sorted({*cli.secrets, *url_secrets(to, bare_user_is_secret=False)}, key=len, reverse=True))
    logs.set_secrets(cli.redactor, cli.secrets)
    if problem := check_state_url(to):
        cli.fail(f"--to {problem}", EXIT_USAGE)
    if settings.state_url is not None:
        cli.fail(f"the configured state is already a database ({settings.state_location})", EXIT_CONFIG)
    password = os.environ.get("MCNOTIFY_STATE_PASSWORD")
    counts = cli.guard(
        lambda: copy_to_mysql(
            settings.state_path, to, password, None if cli.quiet else lambda line: cli.err.print(line, markup=False)
        )
    )
    total = sum(counts.values())
    cli.out.print(
        f"state migrate: {total} rows copied from {settings.state_path} to {hide_userinfo(to)}"
        f" ({', '.join(f'{t} {n}' for t, n in counts.items())})",
        markup=False,
    )
    cli.out.print(
        "now, in the config's [state]: remove `path` and set\n"
        f'  url = "{redact_url(to)}"\n'
        "with the password in password_file (or MCNOTIFY_STATE_PASSWORD) rather than in the URL",
        markup=False,
    )
