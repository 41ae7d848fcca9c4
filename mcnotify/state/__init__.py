from __future__ import annotations

from typing import TYPE_CHECKING

from mcnotify.state.interface import Batch, Notification, NotificationRecord, Store, TokenCache
from mcnotify.state.states import BatchStatus, Delivery, StepStatus
from mcnotify.state.store import StateStore
from mcnotify.state.tokens import Token

if TYPE_CHECKING:
    from mcnotify.config import Settings


def open_store(settings: Settings, *, read_only: bool = False) -> Store:
    """The configured state: the SQLite file ([state] path), or MariaDB/MySQL ([state] url).

    `read_only` (a dry run): nothing can be written. A state that does not exist yet (no file; a database
    mcnotify has not migrated) is previewed as an empty in-memory one, as a first dry run sees it."""
    url = settings.state_url
    if url is None:
        path = settings.state_path
        return StateStore(path, memory=read_only and not path.exists(), read_only=read_only)
    # Imported only here: pymysql costs startup time a SQLite state does not need to pay.
    from mcnotify.state.mysql import MySQLStore, Target

    section = settings.state
    target = Target.from_url(url, section.password, section.connect_timeout)
    store = MySQLStore(target, read_only=read_only, lease=section.lease)
    if read_only and not store.migrated():
        store.close()
        preview = StateStore(settings.state_path, memory=True, read_only=True)
        preview.location = f"{target.location} (empty: no mcnotify run has set it up yet)"
        return preview
    return store


__all__ = [
    "Batch",
    "BatchStatus",
    "Delivery",
    "Notification",
    "NotificationRecord",
    "StateStore",
    "StepStatus",
    "Store",
    "Token",
    "TokenCache",
    "open_store",
]
