"""Readers for the app's notification rows: MySQL (streamed, server-side cursor) or SQLite.

The operator's query gets `%(after)s` and `%(limit)s` as bound parameters, never by string formatting.
"""

from __future__ import annotations

import contextlib
import decimal
import logging
import re
import sqlite3
import time
from collections.abc import Iterator
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from mcnotify import retrying, stop
from mcnotify.config import SourceSettings
from mcnotify.errors import ConfigError, McnotifyError, ServiceUnavailable

log = logging.getLogger(__name__)
CONNECT_ATTEMPTS = 3

REQUIRED_COLUMNS = ("notification_id", "template", "subscriber_key", "email", "phone")
# Added to a row whose text columns held bytes that are not valid in the source's encoding: those columns'
# names. Their text has the bad bytes replaced (U+FFFD); the classifier decides whether the row can still go.
# (No SQL column can be named with a NUL.)
NOT_TEXT = "\x00mcnotify:not-text"
# The event time a query may return; `source.max_age` is measured on it.
CREATED_AT = "created_at"


def decode_row(row: dict[str, Any], encoding: str = "utf-8") -> dict[str, Any]:
    """Text and BLOB values arrive as bytes (the drivers are told not to decode, so one bad byte cannot fail the
    whole read): decoded here, strictly where possible, with replacement characters where not."""
    bad: list[str] | None = None
    for key, value in row.items():
        if isinstance(value, bytes | bytearray):
            try:
                row[key] = value.decode(encoding)
            except UnicodeDecodeError:
                row[key] = value.decode(encoding, "replace")
                bad = [key] if bad is None else [*bad, key]
    if bad:
        row[NOT_TEXT] = tuple(bad)
    return row


def max_age_note(section: SourceSettings) -> str | None:
    """What `config check` says about the first-run protection when it may not hold."""
    if section.max_age <= 0:
        return "source.max_age = 0: protection off, a new state file sends every row of the source"
    found = selects_created_at(section.query)
    if found is False:
        return (
            f"source.max_age protection is off: the query does not select {CREATED_AT}, so a new state file"
            " would send every row of the source"
        )
    if found is None:
        return f"source.max_age holds only if the query's rows have a {CREATED_AT} column (SELECT * hides it)"
    return None


def selects_created_at(query: str) -> bool | None:
    """Whether the query's text names `created_at` (None: `SELECT *`, cannot tell from the text)."""
    if re.search(r"\bcreated_at\b", query, re.IGNORECASE):
        return True
    if re.search(r"select\s+(\w+\.)?\*", query, re.IGNORECASE):
        return None
    return False


class Source(Protocol):
    def rows(self, after: Any, limit: int) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


def check_columns(columns: list[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ConfigError(f"[source] query must return column(s) {', '.join(missing)}")


class MySQLSource:
    def __init__(self, url: str, query: str, password: str | None, connect_timeout: float, fetch_size: int):
        import pymysql

        parts = urlsplit(url)
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self._pymysql = pymysql
        # Text comes back as bytes and is decoded by decode_row: PyMySQL would raise on the first byte that is
        # not valid in the connection's charset and fail the read on every run. DECIMAL's converter needs str.
        conv = dict(pymysql.converters.conversions)
        for decimal_type in (pymysql.constants.FIELD_TYPE.DECIMAL, pymysql.constants.FIELD_TYPE.NEWDECIMAL):
            conv[decimal_type] = _decimal
        self._query = query
        self._fetch_size = fetch_size
        self._params: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or ""),
            "password": password if password is not None else unquote(parts.password or ""),
            "database": unquote(parts.path.lstrip("/")) or None,
            "charset": options.get("charset", "utf8mb4"),
            "connect_timeout": connect_timeout,
            "read_timeout": max(connect_timeout * 30, 60),
            "write_timeout": max(connect_timeout * 30, 60),
            "cursorclass": pymysql.cursors.SSDictCursor,
            "use_unicode": False,
            "conv": conv,
        }
        if "unix_socket" in options:
            self._params["unix_socket"] = options["unix_socket"]
        self._conn = self._connect()

    def _encoding(self) -> str:
        return str(getattr(self._conn, "encoding", None) or "utf-8")

    def _connect(self) -> Any:
        from mcnotify import mysql_tls  # with pymysql, only when the source is MySQL

        pymysql = self._pymysql

        where = f"{self._params['host']}:{self._params['port']}"

        def attempt() -> Any:
            started = time.monotonic()
            try:
                # In a helper thread: a server that accepts and never answers holds it for connect_timeout,
                # and a stop request must not wait for that. Connecting twice later is harmless.
                conn = stop.run(
                    lambda: mysql_tls.connect(**self._params), what="MySQL connect", cancel_unsent=lambda: True
                )
                log.debug("MySQL %s: connected in %.0f ms", where, (time.monotonic() - started) * 1000)
                return conn
            except pymysql.err.OperationalError as exc:
                code = exc.args[0] if exc.args else 0
                if code in (1044, 1045, 1049):  # access denied / unknown database: retrying will not help
                    raise ConfigError(f"MySQL {where} refused the login: {exc.args[1]}") from None
                raise ServiceUnavailable(f"MySQL {where} unreachable: {exc.args[-1]}") from None

        return retrying.call(
            attempt,
            f"MySQL connect to {where}",
            CONNECT_ATTEMPTS,
            ServiceUnavailable,
            logger=log,
            first_wait=0.5,
            max_wait=4,
        )

    def rows(self, after: Any, limit: int) -> Iterator[dict[str, Any]]:
        pymysql = self._pymysql
        cursor = self._conn.cursor()
        started, count = time.monotonic(), 0
        try:
            try:
                cursor.execute(self._query, {"after": after, "limit": limit})
            except pymysql.err.ProgrammingError as exc:
                raise ConfigError(f"[source] query failed: {exc.args[-1]}") from None
            except pymysql.err.OperationalError as exc:
                raise ServiceUnavailable(f"MySQL query failed: {exc.args[-1]}") from None
            check_columns([d[0] for d in cursor.description or ()])
            _log_query("MySQL", started, after, limit)
            encoding = self._encoding()
            while chunk := cursor.fetchmany(self._fetch_size):
                count += len(chunk)
                for row in chunk:
                    yield decode_row(row, encoding)
            _log_rows("MySQL", started, count)
        finally:
            cursor.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()


class SQLiteSource:
    def __init__(self, url: str, query: str):
        path = unquote(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else url
        if url.startswith("sqlite:////"):
            path = "/" + path.lstrip("/")
        try:
            self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error as exc:
            raise ServiceUnavailable(f"cannot open SQLite source {path}: {exc}") from None
        self._path = path
        self._conn.row_factory = sqlite3.Row
        # SQLite would raise "Could not decode to UTF-8" for a TEXT value with bad bytes: take bytes, decode here.
        self._conn.text_factory = bytes
        self._query = query.replace("%(after)s", ":after").replace("%(limit)s", ":limit")

    def rows(self, after: Any, limit: int) -> Iterator[dict[str, Any]]:
        started, count = time.monotonic(), 0
        try:
            cursor = self._conn.execute(self._query, {"after": after, "limit": limit})
        except sqlite3.Error as exc:
            raise ConfigError(f"[source] query failed: {exc}") from None
        check_columns([d[0] for d in cursor.description or ()])
        _log_query("SQLite", started, after, limit)
        while True:
            try:
                chunk = cursor.fetchmany(1000)
            except sqlite3.Error as exc:  # the source's failure, not the state file's
                raise ServiceUnavailable(f"reading SQLite source {self._path} failed: {exc}") from None
            if not chunk:
                _log_rows("SQLite", started, count)
                return
            count += len(chunk)
            for row in chunk:
                yield decode_row(dict(row))

    def close(self) -> None:
        self._conn.close()


def _log_query(kind: str, started: float, after: Any, limit: int) -> None:
    # The bound parameters only (a cursor value and a number): never a row, which holds contacts.
    ms = (time.monotonic() - started) * 1000
    log.debug("source (%s): query after %r, limit %d: first rows in %.0f ms", kind, after, limit, ms)


def _log_rows(kind: str, started: float, count: int) -> None:
    log.debug("source (%s): %d row(s) read in %.0f ms", kind, count, (time.monotonic() - started) * 1000)


def _decimal(data: bytes | str) -> decimal.Decimal:
    return decimal.Decimal(data.decode("ascii") if isinstance(data, bytes | bytearray) else data)


def open_source(section: SourceSettings) -> Source:
    url = section.url
    if url.startswith("sqlite:"):
        return SQLiteSource(url, section.query)
    if url.startswith(("mysql://", "mysql+pymysql://")):
        return MySQLSource(url, section.query, section.password, section.connect_timeout, section.fetch_size)
    raise McnotifyError(f"unsupported source url scheme in {url.split(':', 1)[0]!r}")
