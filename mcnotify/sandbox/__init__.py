"""A local Marketing Cloud stand-in: OAuth, REST messaging, SOAP imports over HTTP, and SFTP, on loopback."""

from __future__ import annotations

import functools
import json
import secrets
import threading
from pathlib import Path
from typing import Any

from mcnotify.sandbox.http import SandboxServer
from mcnotify.sandbox.model import Account, SandboxSettings
from mcnotify.sandbox.sftp_server import SFTPSandbox

# The demo source's shape (sandbox/demo.py): events carry their time, so source.max_age protects a first run.
DEFAULT_QUERY = (
    "SELECT notification_id, template, subscriber_key, email, phone, sender_name, receiver_name, amount, created_at"
    " FROM notifications WHERE notification_id > %(after)s ORDER BY notification_id LIMIT %(limit)s"
)

TEMPLATES_TOML = """
[templates.envelope-received]
channel = "email"
definition_key = "red-envelope-received"
from_name = "{sender_name} via EZTABLE"

[templates.envelope-sent]
channel = "email"
definition_key = "red-envelope-sent"
from_name = "EZTABLE"

[templates.envelope-received-sms]
channel = "sms"
definition_key = "red-envelope-sms"
"""


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


class Sandbox:
    """Start with `start()`; `config_toml()` gives a config that points mcnotify at it.

    `sftp_root` is the folder whose Import/ the import definitions read. When `builtin_sftp` is False the
    caller serves that folder with a real sshd instead."""

    def __init__(
        self,
        workdir: Path,
        settings: SandboxSettings | None = None,
        builtin_sftp: bool = True,
        sftp_root: Path | None = None,
        port: int = 0,
    ) -> None:
        self.workdir = workdir
        self.settings = settings or SandboxSettings(client_secret=secrets.token_urlsafe(16))
        self.sftp_root = sftp_root or workdir / "sftp"
        self.account = Account(self.settings, self.sftp_root)
        self.http = SandboxServer(("127.0.0.1", port), self.account)
        self.sftp: SFTPSandbox | None = None
        self.sftp_password = secrets.token_urlsafe(12)
        if builtin_sftp:
            self.sftp = SFTPSandbox(self.sftp_root, "mcnotify", self.sftp_password)

    @property
    def url(self) -> str:
        return self.http.base_url

    def start(self) -> Sandbox:
        # A short poll: stop() waits up to one interval, and the default 0.5 s was a minute of every test suite.
        serve = functools.partial(self.http.serve_forever, poll_interval=0.05)
        threading.Thread(target=serve, name="sandbox-http", daemon=True).start()
        if self.sftp:
            self.sftp.start()
            (self.workdir / "known_hosts").write_text(self.sftp.known_hosts_line())
        return self

    def stop(self) -> None:
        self.account.stop()
        self.http.shutdown()
        self.http.server_close()
        if self.sftp:
            self.sftp.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def config_toml(
        self,
        state_path: Path,
        source_url: str,
        query: str = DEFAULT_QUERY,
        poll_interval: float = 0.5,
        extra: str = "",
    ) -> str:
        sftp = ""
        if self.sftp:
            sftp = (
                f'[sftp]\nhost = "127.0.0.1"\nport = {self.sftp.port}\nusername = "mcnotify"\n'
                f"password = {toml_str(self.sftp_password)}\n"
                f'known_hosts = {toml_str(str(self.workdir / "known_hosts"))}\nremote_dir = "/Import"\n'
            )
        return f"""# Points mcnotify at the local sandbox on {self.url}
[state]
path = {toml_str(str(state_path))}

[source]
url = {toml_str(source_url)}
query = {toml_str(query)}
batch_limit = 50000

[marketing_cloud]
auth_url = {toml_str(self.url)}
client_id = {toml_str(self.settings.client_id)}
client_secret = {toml_str(self.settings.client_secret)}
timeout = 10
backoff_max = 2

{sftp}
[import]
mode = "import-definition"
definition_key = "mcnotify-subscribers"
poll_interval = {poll_interval}
timeout = 120

[email]
api = "transactional"

[sms]
default_region = "TW"
{TEMPLATES_TOML}
{extra}"""
