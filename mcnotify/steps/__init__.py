"""One module per step; `Context` is what they share: settings, the state store and a lazy MC client."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mcnotify.config import Settings
from mcnotify.state import StateStore

if TYPE_CHECKING:
    from mcnotify.mc.client import McClient


def _log(line: str) -> None:
    logging.getLogger("mcnotify").info(line)


@dataclass
class Context:
    settings: Settings
    store: StateStore
    progress: Callable[[str], None] = _log
    sleep: Callable[[float], None] = time.sleep
    _client: McClient | None = field(default=None, repr=False)

    def mc(self) -> McClient:
        if self._client is None:
            from mcnotify.mc.auth import TokenCache, TokenProvider  # requests is slow to import
            from mcnotify.mc.client import McClient

            section = self.settings.section("marketing_cloud")
            tokens = TokenProvider(section, TokenCache(None if self.store.memory else self.store.path))
            self._client = McClient(section, tokens, sleep=self.sleep)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
