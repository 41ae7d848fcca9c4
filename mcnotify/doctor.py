"""`mcnotify doctor`: check each dependency in turn and say what to do about a failure."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from mcnotify.errors import McnotifyError
from mcnotify.steps import Context


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""


def _run(name: str, hint: str, fn: Callable[[], str]) -> Check:
    try:
        return Check(name, True, fn())
    except McnotifyError as exc:
        return Check(name, False, str(exc), hint)
    except Exception as exc:
        return Check(name, False, f"{type(exc).__name__}: {exc}", hint)


def _message_keys(ctx: Context) -> str:
    """Notifications waiting to be sent whose stored messageKey MC would refuse (keys are fixed at claim time)."""
    channels = ["sms"] + (["email"] if ctx.settings.email.api == "transactional" else [])
    bad, first = ctx.store.bad_message_keys(channels)
    if bad:
        raise McnotifyError(
            f"{bad} notifications waiting to be sent (first in batch {first}) have a messageKey over"
            " 100 characters or with characters other than A-Z a-z 0-9 _ . -; MC will refuse every one"
        )
    return "every messageKey waiting to be sent is one MC accepts"


def checks(ctx: Context) -> list[Check]:
    settings = ctx.settings
    results = [Check("config", True, f"{settings.path} is valid")]

    def state() -> str:
        ctx.store.probe_write()
        return f"{ctx.store.location} is writable"

    hint = (
        "check the [state] path's folder exists and belongs to this user"
        if settings.state_url is None
        else "check the [state] url's server is up and its user may write to the database"
    )
    results.append(_run("state", hint, state))

    def source() -> str:
        from mcnotify.source import open_source

        src = open_source(settings.source)
        try:
            next(iter(src.rows(-1, 0)), None)
        finally:
            src.close()
        return "connected; the query runs and returns the required columns"

    results.append(_run("source", "check [source] url, password and query", source))

    def sftp_login() -> str:
        from mcnotify.mc import sftp

        return "host key verified, logged in, " + sftp.check_login(settings.sftp)

    results.append(_run("sftp", "check [sftp] host, credentials and known_hosts", sftp_login))
    if textfile := settings.metrics.textfile:

        def metrics() -> str:
            folder = Path(textfile).parent
            if not folder.is_dir():
                raise McnotifyError(f"folder {folder} of {textfile} does not exist")
            try:  # what each run does: a temporary file in the folder, renamed over the textfile
                with tempfile.NamedTemporaryFile(dir=folder, prefix=".mcnotify-doctor-"):
                    pass
            except OSError as exc:
                raise McnotifyError(f"cannot write in {folder}: {exc.strerror or exc}") from None
            return f"{folder} is writable"

        results.append(
            _run("metrics", "check [metrics] textfile: its folder must exist, writable by this user", metrics)
        )
    results.append(
        _run(
            "message keys",
            "claimed with an over-long or unsafe [email] message_key_prefix by an older mcnotify: MC refuses them",
            lambda: _message_keys(ctx),
        )
    )
    # A fresh request, never the cached token: only that proves the credentials as configured now.
    token = _run(
        "mc token",
        "check [marketing_cloud] auth_url, client_id, client_secret and account_id",
        lambda: f"new token issued for {ctx.mc().tokens.refresh().rest_url}",
    )
    results.append(token)
    if not token.ok:
        return results
    for template in settings.templates.values():
        if template.channel == "email" and settings.email.api == "triggered-send":
            results.append(Check(f"template {template.name}", True, "triggered send definitions are not checked"))
            continue
        path = f"messaging/v1/{template.channel}/definitions/{quote(template.definition_key, safe='')}"

        def definition(path: str = path) -> str:
            reply = ctx.mc().call("GET", path)
            if reply.status == 404:
                raise McnotifyError("MC has no such definition")
            if reply.status >= 300:
                raise McnotifyError(f"MC answered HTTP {reply.status}")
            status = reply.body.get("status", "?") if isinstance(reply.body, dict) else "?"
            if status != "Active":
                raise McnotifyError(f"definition status is {status}, not Active")
            return "Active"

        results.append(
            _run(
                f"template {template.name}",
                f"create or activate the {template.channel} definition {template.definition_key!r}",
                definition,
            )
        )
    return results
