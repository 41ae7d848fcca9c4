"""One module per step; `Context` is what they share: settings, the state store and a lazy MC client."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mcnotify.config import MarketingCloudSettings, Settings, SftpSettings
from mcnotify.errors import DryRunRefused
from mcnotify.state.interface import Store
from mcnotify.stop import STOP, request_stop
from mcnotify.stop import check as _check_stop

if TYPE_CHECKING:
    from pathlib import Path

    from mcnotify.mc.client import McClient


# STOP is set on SIGTERM or Ctrl-C (see mcnotify.stop): steps finish what is in flight, record it, and stop.
__all__ = ["STOP", "Context", "request_stop"]


def _sleep(seconds: float) -> None:
    STOP.wait(seconds)  # a stop request cuts a wait short


def _log(line: str, **fields: Any) -> None:
    """A step's progress line; `fields` (batch, counts, ...) go into JSON log lines (--log-json)."""
    logging.getLogger("mcnotify").info(line, extra=fields or None)


def _no_meter(task: str, done: int, total: int) -> None:
    """Where a long step reports done/total as it goes; the CLI draws a progress bar on a terminal."""


@dataclass
class Context:
    settings: Settings
    store: Store  # the SQLite StateStore, or any backend that implements the interface
    progress: Callable[..., None] = _log  # (line, **fields)
    meter: Callable[[str, int, int], None] = _no_meter  # (task, done, total; 0 = total unknown)
    sleep: Callable[[float], None] = _sleep
    dry_run: bool = False  # a preview: the store is read-only and MC and SFTP refuse to act
    _client: McClient | None = field(default=None, repr=False)

    def mc(self) -> McClient:
        if self._client is None:
            from mcnotify.mc.auth import TokenProvider  # requests is slow to import
            from mcnotify.mc.client import McClient

            section = self.settings.marketing_cloud
            if self.dry_run:
                self._client = _refusing_client(section)
            else:
                tokens = TokenProvider(section, self.store.token_cache())
                self._client = McClient(section, tokens, sleep=self.sleep)
        return self._client

    def upload(
        self,
        section: SftpSettings,
        local_path: Path,
        remote_name: str,
        before_publish: Callable[[], None] | None = None,
    ) -> str:
        """Upload a file to MC's SFTP; refused in a dry run, where the side effect would happen.
        `before_publish` runs once the file is up under a name of its own, right before it takes the final name
        (raising there leaves nothing behind)."""
        if self.dry_run:
            raise DryRunRefused(f"dry run: refusing to upload {remote_name} over SFTP")
        from mcnotify.mc import sftp  # paramiko is slow to import

        return sftp.upload(section, local_path, remote_name, before_publish)

    @property
    def stopping(self) -> bool:
        return STOP.is_set()

    def check_stop(self) -> None:
        _check_stop()  # Stopped, exit 143 for SIGTERM or 130 for Ctrl-C

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _refusing_client(section: MarketingCloudSettings) -> McClient:
    """An MC client for a dry run: any request (a token included) raises instead of reaching MC."""
    from mcnotify.mc.auth import TokenProvider
    from mcnotify.mc.client import McClient
    from mcnotify.state.tokens import NoTokenCache

    class RefusingClient(McClient):
        def call(self, method: str, path: str, **_: Any) -> Any:
            raise DryRunRefused(f"dry run: refusing to call Marketing Cloud ({method} {path})")

    class RefusingTokens(TokenProvider):
        def get(self) -> Any:
            raise DryRunRefused("dry run: refusing to request a Marketing Cloud token")

    return RefusingClient(section, RefusingTokens(section, NoTokenCache()))
