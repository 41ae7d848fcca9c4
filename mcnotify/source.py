"""Readers for the app's notification rows: MySQL (streamed, server-side cursor) or SQLite.

The operator's query gets `%(after)s` and `%(limit)s` as bound parameters, never by string formatting.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from mcnotify import stop
from mcnotify.errors import ConfigError, McnotifyError, ServiceUnavailable

REQUIRED_COLUMNS = ("notification_id", "template", "subscriber_key", "email", "phone")


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
        }
        if "unix_socket" in options:
            self._params["unix_socket"] = options["unix_socket"]
        self._conn = self._connect()

    def _connect(self) -> Any:
        pymysql = self._pymysql

        @retry(
            retry=retry_if_exception_type(ServiceUnavailable),
            stop=stop_after_attempt(3),
            wait=wait_exponential(multiplier=0.5, max=4),
            sleep=stop.sleep,  # a stop request ends the backoff at once (Stopped)
            reraise=True,
        )
        def attempt() -> Any:
            try:
                # In a helper thread: a server that accepts and never answers holds it for connect_timeout,
                # and a stop request must not wait for that. Connecting twice later is harmless.
                return stop.run(
                    lambda: pymysql.connect(**self._params), what="MySQL connect", cancel_unsent=lambda: True
                )
            except pymysql.err.OperationalError as exc:
                code = exc.args[0] if exc.args else 0
                where = f"{self._params['host']}:{self._params['port']}"
                if code in (1044, 1045, 1049):  # access denied / unknown database: retrying will not help
                    raise ConfigError(f"MySQL {where} refused the login: {exc.args[1]}") from None
                raise ServiceUnavailable(f"MySQL {where} unreachable: {exc.args[-1]}") from None

        return attempt()

    def rows(self, after: Any, limit: int) -> Iterator[dict[str, Any]]:
        pymysql = self._pymysql
        cursor = self._conn.cursor()
        try:
            try:
                cursor.execute(self._query, {"after": after, "limit": limit})
            except pymysql.err.ProgrammingError as exc:
                raise ConfigError(f"[source] query failed: {exc.args[-1]}") from None
            except pymysql.err.OperationalError as exc:
                raise ServiceUnavailable(f"MySQL query failed: {exc.args[-1]}") from None
            check_columns([d[0] for d in cursor.description or ()])
            while chunk := cursor.fetchmany(self._fetch_size):
                yield from chunk
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
        self._conn.row_factory = sqlite3.Row
        self._query = query.replace("%(after)s", ":after").replace("%(limit)s", ":limit")

    def rows(self, after: Any, limit: int) -> Iterator[dict[str, Any]]:
        try:
            cursor = self._conn.execute(self._query, {"after": after, "limit": limit})
        except sqlite3.Error as exc:
            raise ConfigError(f"[source] query failed: {exc}") from None
        check_columns([d[0] for d in cursor.description or ()])
        for row in cursor:
            yield dict(row)

    def close(self) -> None:
        self._conn.close()


def open_source(section: Mapping[str, Any]) -> Source:
    url = section["url"]
    if url.startswith("sqlite:"):
        return SQLiteSource(url, section["query"])
    if url.startswith(("mysql://", "mysql+pymysql://")):
        return MySQLSource(
            url, section["query"], section["password"], section["connect_timeout"], section["fetch_size"]
        )
    raise McnotifyError(f"unsupported source url scheme in {url.split(':', 1)[0]!r}")
