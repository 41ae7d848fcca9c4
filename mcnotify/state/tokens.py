"""The MC token the state keeps between runs (the one secret it holds; never in dumps or logs)."""

from __future__ import annotations

import hmac
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mcnotify.state.perms import tighten

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Token:
    access_token: str
    rest_url: str
    soap_url: str
    obtained_at: float
    expires_at: float


class NoTokenCache:
    """No state to keep the token in (a dry run, an in-memory state): every process asks MC for its own."""

    def load(self, issued_for: str) -> Token | None:
        return None

    def save(self, token: Token | None, issued_for: str = "") -> None:
        pass


class SqliteTokenCache:
    """The token row of the state file, through a connection of its own per call: any thread may use it, and a
    token saved while the store's connection is inside a transaction is neither part of it nor blocked by it.

    It never creates the state file (StateStore does, private): a file that is gone means no cache."""

    def __init__(self, state_path: Path) -> None:
        self._path = state_path

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection | None]:
        tighten(self._path)
        # mode=rw: a plain connect would recreate a deleted state file with the umask's mode (0644).
        uri = self._path.absolute().as_uri() + "?mode=rw"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=30)
        except sqlite3.OperationalError:
            if self._path.exists():
                raise
            log.warning("state file %s is gone: the MC token is not cached", self._path)
            yield None
            return
        try:
            yield conn
        finally:
            conn.close()

    def load(self, issued_for: str) -> Token | None:
        """The cached token, if it was issued for these credentials (`issued_for`, an HMAC: see mc.auth)."""
        with self._connect() as conn:
            if conn is None:
                return None
            row = conn.execute(
                "SELECT access_token, rest_url, soap_url, obtained_at, expires_at, issued_for FROM token WHERE id = 1"
            ).fetchone()
        if row is None or not hmac.compare_digest(str(row[5] or ""), issued_for):
            return None
        return Token(*row[:5])

    def save(self, token: Token | None, issued_for: str = "") -> None:
        """Keep `token` (None: forget the one kept)."""
        with self._connect() as conn:
            if conn is None:
                return
            with conn:
                conn.execute("DELETE FROM token")
                if token is not None:
                    conn.execute(
                        "INSERT INTO token (id, access_token, rest_url, soap_url, obtained_at, expires_at, issued_for)"
                        " VALUES (1, ?, ?, ?, ?, ?, ?)",
                        (
                            token.access_token,
                            token.rest_url,
                            token.soap_url,
                            token.obtained_at,
                            token.expires_at,
                            issued_for,
                        ),
                    )
