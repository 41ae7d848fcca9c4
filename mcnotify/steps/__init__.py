"""One module per step; `Context` is what they share: settings, the state store and a lazy MC client."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mcnotify.config import Settings
from mcnotify.errors import Stopped
from mcnotify.state import StateStore

if TYPE_CHECKING:
    from mcnotify.mc.client import McClient


# Set by the CLI's SIGTERM handler: steps finish what is in flight, record it, and stop.
STOP = threading.Event()


def request_stop() -> None:
    STOP.set()


def _sleep(seconds: float) -> None:
    STOP.wait(seconds)  # a stop request cuts a wait short


def _log(line: str) -> None:
    logging.getLogger("mcnotify").info(line)


@dataclass
class Context:
    settings: Settings
    store: StateStore
    progress: Callable[[str], None] = _log
    sleep: Callable[[float], None] = _sleep
    _client: McClient | None = field(default=None, repr=False)

    def mc(self) -> McClient:
        if self._client is None:
            from mcnotify.mc.auth import TokenCache, TokenProvider  # requests is slow to import
            from mcnotify.mc.client import McClient

            section = self.settings.section("marketing_cloud")
            tokens = TokenProvider(section, TokenCache(None if self.store.memory else self.store.path))
            self._client = McClient(section, tokens, sleep=self.sleep)
        return self._client

    @property
    def stopping(self) -> bool:
        return STOP.is_set()

    def check_stop(self) -> None:
        if STOP.is_set():
            raise Stopped("stopped by SIGTERM after finishing and recording the work in flight; the next run resumes")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
