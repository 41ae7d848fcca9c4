"""The state on MariaDB (>= 10.6) / MySQL (>= 8.0): the same `Store`, through pymysql.

Most of the SQL the SQLite store speaks is portable: `MySQLStore` inherits those operations from `StateStore`
and runs them through `_Connection`, which looks like the sqlite3 connection they were written for (`?`
placeholders, rows readable by index and by name). What differs is overridden here: upserts, reserved words,
updates that read their own table, SQLite's bare columns beside MAX(), GLOB, and the plumbing (transactions,
migrations, the run lock as a lease row, the token cache).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
import pymysql.constants.CLIENT
import pymysql.constants.FIELD_TYPE
import pymysql.converters

from mcnotify import mysql_tls
from mcnotify.config import hide_userinfo
from mcnotify.errors import LeaseHeld, McnotifyError, PipelineLost, StateDatabaseError
from mcnotify.message_keys import MAX_LENGTH, SAFE_CHARS
from mcnotify.state.interface import NewNotification, Notification, Outcome, Store
from mcnotify.state.mysql_schema import MIGRATIONS
from mcnotify.state.states import NOT_YET_IMPORTED, OPEN, UNSENDABLE, BatchStatus, Delivery, StepStatus, sql_list
from mcnotify.state.store import StateFileLost, StateStore
from mcnotify.state.tokens import NoTokenCache, Token

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_UNSENDABLE = sql_list(UNSENDABLE)
_OPEN = sql_list(OPEN)
_NOT_YET_IMPORTED = sql_list(NOT_YET_IMPORTED)
# message_keys' rule as a regular expression: a stored key MC would refuse.
_INVALID_MESSAGE_KEY = (
    f"(CHAR_LENGTH(message_key) NOT BETWEEN 1 AND {MAX_LENGTH} OR message_key REGEXP '[^{SAFE_CHARS}]')"
)
# "Server has gone away", "Lost connection", "Connection not available" (a restart, a failover, an idle
# timeout): the connection is new again and the statement is retried, but only between transactions.
_GONE = {2006, 2013, 2055}
# What a killed connection (KILL CONNECTION, below) or a server shutting down answers.
_GONE |= {1053, 1927}
# The session every connection starts with: a known sql_mode whatever the server's default (ANSI_QUOTES or
# PIPES_AS_CONCAT would change what the SQL means; ONLY_FULL_GROUP_BY is not needed by it), and READ COMMITTED:
# each statement sees what was committed before it, as a SQLite reader does, without InnoDB's gap locks.
# And UTC: UNIX_TIMESTAMP(NOW(6)) goes through the session's time zone, and a server on a zone with daylight
# saving time would read an hour off around the change (every heartbeat, lease and claim an hour old at once).
_SESSION = (
    "SET SESSION sql_mode = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION,ERROR_FOR_DIVISION_BY_ZERO'",
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET SESSION time_zone = '+00:00'",
)
# A table, column or index that exists already, or one to drop that is gone: a migration statement run twice.
_ALREADY_APPLIED = {1050, 1060, 1061, 1091}
RUN_LEASE = "run"
PIPELINE_LEASE = "pipeline"  # the import pipeline (claiming, the subscriber file, the import): one owner at a time
FOLLOWER = "follower"
# Seconds the pipeline's lease must still run when an upload is published or an import started: what happens
# between the last check and the bytes leaving (a rename, a request sent) must fall inside the lease.
FENCE_MARGIN = 1.0
_NOW = "UNIX_TIMESTAMP(NOW(6))"  # the database's clock decides every expiry: hosts' clocks need not agree
_NO_LIMIT = 18446744073709551615  # MySQL's "no LIMIT" (SQLite's LIMIT -1)


class LeaseLost(StateFileLost):
    """This process no longer holds the run lease (its heartbeat stopped for longer than the lease)."""


def _number(text: bytes | str) -> int | float:
    # SUM() and friends come back as DECIMAL: the SQLite store hands out ints and floats.
    value = Decimal(text.decode() if isinstance(text, bytes) else text)
    return int(value) if value == value.to_integral_value() else float(value)


_CONVERSIONS = dict(pymysql.converters.conversions)
for _decimal in (pymysql.constants.FIELD_TYPE.DECIMAL, pymysql.constants.FIELD_TYPE.NEWDECIMAL):
    _CONVERSIONS[_decimal] = _number


@dataclass(frozen=True)
class Target:
    """Where the state database is and how to reach it (the password is never part of any message)."""

    params: dict[str, Any]
    location: str  # the URL without its userinfo

    @classmethod
    def from_url(cls, url: str, password: str | None = None, connect_timeout: float = 10.0) -> Target:
        parts = urlsplit(url)
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        params: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or ""),
            "password": password if password is not None else unquote(parts.password or ""),
            "database": unquote(parts.path.lstrip("/")),
            "charset": "utf8mb4",
            "connect_timeout": connect_timeout,
            # A state statement can be long (a million-row batch's subscriber file), but never endless.
            "read_timeout": max(connect_timeout * 60, 600),
            "write_timeout": max(connect_timeout * 60, 600),
            "autocommit": True,
            # UPDATE's rowcount counts the rows it matched, as SQLite's does, not only those it changed.
            "client_flag": pymysql.constants.CLIENT.FOUND_ROWS,
            "conv": _CONVERSIONS,
        }
        if "unix_socket" in options:
            params["unix_socket"] = options["unix_socket"]
        return cls(params, hide_userinfo(url))

    def connect(self, read_only: bool = False) -> pymysql.connections.Connection[Any]:
        try:
            conn = mysql_tls.connect(**self.params)
        except pymysql.Error as exc:
            raise StateDatabaseError(f"cannot connect to the state database {self.location}: {_why(exc)}") from None
        with conn.cursor() as cur:
            for statement in _SESSION:
                cur.execute(statement)
            if read_only:  # a dry run's session: the server refuses any write
                cur.execute("SET SESSION TRANSACTION READ ONLY")
        return conn


def _code(exc: BaseException) -> int | None:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    return args[0] if args and isinstance(args[0], int) and args[0] else None


def _why(exc: BaseException) -> str:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    if isinstance(exc, pymysql.InterfaceError):
        return "the connection is closed"
    if len(args) == 2 and isinstance(args[0], int):
        return f"({args[0]}) {args[1]}"
    return str(exc) or type(exc).__name__


def _detail(text: str | None) -> dict[str, Any]:
    """A follower's own line (note_follower): its last cycle, cycles, what it waits for, since when it fails."""
    try:
        detail = json.loads(text) if text else {}
    except ValueError:
        return {}
    keys = ("last_cycle", "cycles", "waiting_for", "failing_since")
    return {k: detail.get(k) for k in keys} if isinstance(detail, dict) else {}


def _claim_of(holder: str) -> str:
    """The holder a process's send claims carry (`claims.holder`, CHAR(16)): derived from the holder name, so that
    another process can free a dead one's claims."""
    return hashlib.blake2b(holder.encode(), digest_size=8).hexdigest()


_VARCHAR = 255  # notification_id, template and subscriber_key are VARCHAR(255): indexed text has a limit here


def _stored_id(notification_id: str) -> str:
    """An id the column holds: as it is, or, longer than the column, its beginning and its hash (still unique,
    and what known_ids looks for, so a row re-read by the overlap is still recognised)."""
    if len(notification_id) <= _VARCHAR:
        return notification_id
    tail = "…sha256:" + hashlib.sha256(notification_id.encode("utf-8", "surrogatepass")).hexdigest()
    return notification_id[: _VARCHAR - len(tail)] + tail


def _cut(text: str | None) -> str | None:
    return text if text is None or len(text) <= _VARCHAR else text[: _VARCHAR - 1] + "…"


def _ranges(seqs: Sequence[int], others: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ascending seqs as (lo, hi) ranges none of which spans another process's claim (`others`, which hold none
    of these seqs): a claim never covers rows that are not its own."""
    starts = sorted(lo for lo, _ in others)
    found: list[tuple[int, int]] = []
    for seq in seqs:
        if found and bisect.bisect_right(starts, found[-1][1]) == bisect.bisect_left(starts, seq):
            found[-1] = (found[-1][0], seq)  # no other claim starts between the two
        else:
            found.append((seq, seq))
    return found


def _fitted(n: NewNotification) -> NewNotification:
    """A row whose id, template or subscriber key is longer than its column (an invalid row: a valid subscriber
    key has at most 254 characters and a template is a config name) stored rather than failing the whole
    claim: the id as _stored_id makes it, the others cut, marked with an ellipsis (the reason says why)."""
    if max(len(n.notification_id), len(n.template), len(n.subscriber_key or "")) <= _VARCHAR:
        return n
    return dataclasses.replace(
        n,
        notification_id=_stored_id(n.notification_id),
        template=_cut(n.template) or "",
        subscriber_key=_cut(n.subscriber_key),
    )


def _pid_namespace() -> str:
    """Which pid namespace this process is in (Linux): two containers may share a hostname (host networking)
    and not their pids."""
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:
        return "-"


_PID_NAMESPACE = _pid_namespace()


def _holder_name() -> str:
    """host:pid:pid-namespace:random, unique to this process and telling where its pid means something."""
    return f"{socket.gethostname()}:{os.getpid()}:{_PID_NAMESPACE}:{secrets.token_hex(4)}"


def _dead_here(holder: str) -> bool:
    """A holder on this very host, in this pid namespace, whose process is gone (SIGKILL, OOM): its lease is free
    now, as a flock would be, rather than after the lease runs out (a restarted follower need not wait).
    Elsewhere (another host, another container sharing the hostname, a holder of an older release that did
    not say its namespace): only expiry tells."""
    host, _, rest = holder.partition(":")
    pid, _, rest = rest.partition(":")
    namespace, _, token = rest.partition(":")
    if not token or host != socket.gethostname() or namespace != _PID_NAMESPACE or namespace == "-":
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


class Row(tuple[Any, ...]):
    """A result row as sqlite3.Row is read: by index, by column name, and by dict()."""

    _names: tuple[str, ...]
    _index: dict[str, int]  # one per result, shared by its rows

    def __new__(cls, values: Sequence[Any], names: tuple[str, ...], index: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        row._index = index
        return row

    def keys(self) -> tuple[str, ...]:
        return self._names

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)


class _Result:
    """What sqlite3's execute() returns, as far as the store reads it."""

    def __init__(self, rows: list[Row], rowcount: int, lastrowid: int | None) -> None:
        self._rows = rows
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def fetchone(self) -> Row | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Row]:
        return self._rows

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows)


def _server_started(cur: Any) -> float:
    """When the server started, by its own clock: a connection id is unique only within one run of the server."""
    cur.execute(f"SELECT {_NOW}")
    now = float(cur.fetchone()[0])
    cur.execute("SHOW GLOBAL STATUS LIKE 'Uptime'")
    row = cur.fetchone()
    return now - float(row[1]) if row else 0.0


def _identity(conn: pymysql.connections.Connection[Any]) -> tuple[int, str]:
    """This connection as the server's processlist shows it, and the server run it belongs to: its id, its
    client (address and port over TCP; only `localhost` over a socket), "|" and the server's start. An id is
    reused after a server restart; an id within one run is not."""
    with conn.cursor() as cur:
        cur.execute("SELECT ID, HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
        row = cur.fetchone()
        started = _server_started(cur)
    return (int(row[0]), f"{row[1]}|{started:.0f}") if row else (0, "")


class _Connection:
    """pymysql behind the sqlite3 calls the store makes: `?` placeholders, execute()/executemany() returning
    rows readable by name, and a reconnect when the server went away between transactions."""

    def __init__(self, target: Target, read_only: bool) -> None:
        self._target = target
        self._read_only = read_only
        self._conn = target.connect(read_only)
        self.in_transaction = False
        # Tracked for a follower (`track()`): the heartbeat publishes it, so that another process can end this
        # connection should this one freeze inside a transaction, holding row locks.
        self.identity: tuple[int, str] | None = None

    def track(self) -> None:
        self.identity = self._call(lambda: _identity(self._conn))

    def _reconnect(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()
        self._conn = self._target.connect(self._read_only)
        if self.identity is not None:
            self.identity = self._call(lambda: _identity(self._conn))

    def _retrying(self, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except (pymysql.OperationalError, pymysql.InterfaceError) as exc:
            # InterfaceError: the connection is closed (a reconnect that failed while the server was down).
            gone = isinstance(exc, pymysql.InterfaceError) or (exc.args and exc.args[0] in _GONE)
            if gone and not self.in_transaction:
                log.info("state database %s: %s; reconnecting", self._target.location, _why(exc))
                self._reconnect()
                return self._call(call)
            raise StateDatabaseError(f"state database {self._target.location}: {_why(exc)}", _code(exc)) from None
        except pymysql.Error as exc:
            raise StateDatabaseError(f"state database {self._target.location}: {_why(exc)}", _code(exc)) from None

    def _call(self, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except pymysql.Error as exc:
            raise StateDatabaseError(f"state database {self._target.location}: {_why(exc)}", _code(exc)) from None

    @staticmethod
    def _sql(sql: str) -> str:
        # pymysql formats with %: a literal % must be doubled, and sqlite3's ? becomes %s.
        return sql.replace("%", "%%").replace("?", "%s")

    def _fetch(self, cur: Any) -> _Result:
        rows: list[Row] = []
        if cur.description:
            names = tuple(d[0] for d in cur.description)
            index = {name: i for i, name in enumerate(names)}
            rows = [Row(r, names, index) for r in cur.fetchall()]
        return _Result(rows, cur.rowcount, cur.lastrowid or None)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> _Result:
        def call() -> _Result:
            with self._conn.cursor() as cur:
                cur.execute(self._sql(sql), tuple(args))
                return self._fetch(cur)

        return self._retrying(call)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> _Result:
        batch = [tuple(r) for r in rows]
        if not batch:
            return _Result([], 0, None)

        def call() -> _Result:
            with self._conn.cursor() as cur:
                cur.executemany(self._sql(sql), batch)
                return _Result([], cur.rowcount, cur.lastrowid or None)

        return self._retrying(call)

    def with_cursor(self, work: Callable[[Any], None]) -> None:
        """`work(cursor)` on this connection's own pymysql cursor (%s placeholders), between transactions: what
        the heartbeat runs on its connection, run here without opening another."""

        def call() -> None:
            with self._conn.cursor() as cur:
                work(cur)

        self._retrying(call)

    def raw(self, sql: str, args: Sequence[Any] | None = None) -> _Result:
        """A statement in pymysql's own %s syntax (the migrations)."""

        def call() -> _Result:
            with self._conn.cursor() as cur:
                cur.execute(sql, args)
                return self._fetch(cur)

        return self._retrying(call)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()


class MySQLTokenCache:
    """The token row of the state database, through a connection of its own per call: any thread may use it,
    and a token saved while the store is inside a transaction is neither part of it nor blocked by it."""

    def __init__(self, target: Target) -> None:
        self._target = target

    def load(self, issued_for: str) -> Token | None:
        import hmac

        conn = self._target.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT access_token, rest_url, soap_url, obtained_at, expires_at, issued_for FROM token"
                    " WHERE id = 1"
                )
                row = cur.fetchone()
        except pymysql.Error as exc:
            raise StateDatabaseError(f"state database {self._target.location}: {_why(exc)}", _code(exc)) from None
        finally:
            conn.close()
        if row is None or not hmac.compare_digest(str(row[5] or ""), issued_for):
            return None
        return Token(row[0], row[1], row[2], float(row[3]), float(row[4]))

    def save(self, token: Token | None, issued_for: str = "") -> None:
        conn = self._target.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("DELETE FROM token")
                if token is not None:
                    cur.execute(
                        "INSERT INTO token (id, access_token, rest_url, soap_url, obtained_at, expires_at, issued_for)"
                        " VALUES (1, %s, %s, %s, %s, %s, %s)",
                        (
                            token.access_token,
                            token.rest_url,
                            token.soap_url,
                            token.obtained_at,
                            token.expires_at,
                            issued_for,
                        ),
                    )
                cur.execute("COMMIT")
        except pymysql.Error as exc:
            raise StateDatabaseError(f"state database {self._target.location}: {_why(exc)}", _code(exc)) from None
        finally:
            conn.close()


def schema_version(conn: _Connection) -> int | None:
    """The schema's number, or None for a database mcnotify never used."""
    if not conn.raw("SHOW TABLES LIKE 'schema_version'").fetchall():
        return None
    row = conn.raw("SELECT version FROM schema_version WHERE id = 1").fetchone()
    return 0 if row is None else int(row[0])


class MySQLStore(StateStore):
    """The state in a MariaDB/MySQL database. The run lock is a lease row renewed by a heartbeat thread."""

    conn: _Connection  # type: ignore[assignment]  # sqlite3's calls, as far as the inherited SQL uses them

    def __init__(self, target: Target, read_only: bool = False, lease: float = 15.0) -> None:
        self.target = target
        self.location = target.location
        self.path = Path(target.location)  # (Store's `path` is for messages; `location` is what they use)
        self.memory = False
        self.read_only = read_only
        self.lost = False
        self.lease = lease
        self._scratch = None
        self._identity = None
        self._held_fds = []
        self._lock_fd = None
        self._tried_fd = None
        self._holder = _holder_name()
        self._claim = _claim_of(self._holder)
        self._generation: int | None = None
        self._heartbeat: threading.Thread | None = None
        self._stop_heartbeat = threading.Event()
        self._lease_lost = threading.Event()
        self.role: str | None = None  # registered as a process sharing the state (a follower)
        self._pipeline: int | None = None  # the pipeline lease's generation while this process owns it
        self._pipeline_lost = threading.Event()
        self._fence = 0  # inside fenced(): every transaction checks the pipeline lease first
        self._outdated = 0  # the schema a newer mcnotify moved the database to, seen by the heartbeat
        # The send claims this process holds (claim id: its seqs not yet recorded or released), and which claim
        # each of those seqs is in. A claim whose seqs are all done is deleted; the heartbeat renews the rest.
        self._claims: dict[int, set[int]] = {}
        self._claim_of_seq: dict[int, int] = {}
        self._claims_lock = threading.Lock()  # (the heartbeat thread reads them)
        self._claim_locks: set[tuple[int, str]] = set()  # claim_locks rows known to exist
        self._letting_go: set[int] = set()  # seqs let go of in the open transaction (forgotten at its commit)
        self.conn = _Connection(target, read_only)
        try:
            if read_only:
                version = schema_version(self.conn)
                if version is not None and version > len(MIGRATIONS):
                    raise McnotifyError(f"state database {self.location} is from a newer mcnotify (schema {version})")
            else:
                self._migrate()
        except BaseException:
            self.conn.close()
            raise

    def migrated(self) -> bool:
        """Whether the database holds mcnotify's current schema (a dry run previews an empty state otherwise)."""
        return schema_version(self.conn) == len(MIGRATIONS)

    # -- plumbing -----------------------------------------------------------------------------------------
    def _migrate(self) -> None:
        # DDL commits implicitly in MySQL: a named lock keeps two processes from migrating at once.
        got = self.conn.raw("SELECT GET_LOCK('mcnotify.migrate', 60)").fetchone()
        if got is None or got[0] != 1:
            raise StateDatabaseError(
                f"state database {self.location}: another mcnotify has been upgrading its schema for a minute;"
                " try again once it is done"
            )
        try:
            version = schema_version(self.conn)
            if version is None:
                self.conn.raw("CREATE TABLE schema_version (id INT NOT NULL PRIMARY KEY, version INT NOT NULL)")
                self.conn.raw("INSERT INTO schema_version (id, version) VALUES (1, 0)")
                version = 0
            if version > len(MIGRATIONS):
                raise McnotifyError(f"state database {self.location} is from a newer mcnotify (schema {version})")
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    try:
                        self.conn.raw(statement)
                    except StateDatabaseError as exc:
                        # DDL commits at once here: an upgrade cut short (killed, the connection lost) between a
                        # statement and the version's update runs that statement again. What it did is there.
                        if exc.code not in _ALREADY_APPLIED:
                            raise
                        log.info("state database %s: schema %d was partly applied: %s", self.location, number, exc)
                self.conn.raw("UPDATE schema_version SET version = %s WHERE id = 1", (number,))
        finally:
            self.conn.raw("SELECT RELEASE_LOCK('mcnotify.migrate')")

    def close(self) -> None:
        self.unlock()
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.check_identity()
        self.conn.execute("BEGIN")
        self.conn.in_transaction = True
        try:
            if self._fence or (self.role is None and self._pipeline is not None):
                # The fencing token, in the very transaction: the shared lock on the lease row keeps a takeover
                # (which updates that row) waiting until this commits, so what passed here stays true at COMMIT.
                # A one-shot run owns the pipeline for its whole life: every transaction of it is fenced.
                self._check_pipeline("LOCK IN SHARE MODE")
            yield
            self.check_identity()  # the lease was lost while we wrote: another process may be working
        except BaseException:
            self.conn.in_transaction = False
            self._letting_go = set()
            with contextlib.suppress(StateDatabaseError):
                self.conn.execute("ROLLBACK")
            raise
        try:
            # Still "in a transaction" for the retry logic: a connection lost at COMMIT is raised, never retried
            # on a new connection (where COMMIT would succeed with nothing to commit and the writes be lost).
            self.conn.execute("COMMIT")
            self._forget(self._letting_go)
        finally:
            self.conn.in_transaction = False
            self._letting_go = set()

    def check_identity(self) -> None:
        """Stop when the run lease was lost: another process may hold it now, and this one must not write. Or
        when a newer mcnotify upgraded the schema meanwhile."""
        if self._outdated:
            self.lost = True
            raise LeaseLost(
                f"the state database {self.location} was upgraded by a newer mcnotify (schema {self._outdated},"
                f" this one knows {len(MIGRATIONS)}); stopped without recording more: run the new version"
            )
        if self._lease_lost.is_set():
            self.lost = True
            raise LeaseLost(
                f"lost the run lease on the state database {self.location} (no heartbeat for {self.lease:g} s);"
                " stopped without recording more"
            )

    def probe_write(self) -> None:
        """Raise unless this process may write to the state (doctor); writes nothing."""
        with contextlib.suppress(_Rollback), self.transaction():
            self.conn.execute("UPDATE schema_version SET version = version WHERE id = 1")
            raise _Rollback

    def lock(self) -> None:
        """Take the run lease: free, expired (its holder died or froze), or ours already. Otherwise LeaseHeld,
        naming the holder. The database's clock decides expiry, so hosts' clocks need not agree."""
        if self._generation is not None:
            return
        # A follower frozen inside a transaction holds its locks (the pipeline lease row among them) until its
        # connection ends: end it first, as the followers' heartbeats would, rather than wait on it.
        self.conn.with_cursor(self._end_frozen)
        with self.transaction():
            row = self.conn.execute(
                f"SELECT holder, host, pid, generation, expires_at, {_NOW} AS now FROM leases WHERE name = ?"
                " FOR UPDATE",
                (RUN_LEASE,),
            ).fetchone()
            if row is None:
                generation = 1
                try:
                    self._write_lease(RUN_LEASE, generation, insert=True)
                except StateDatabaseError:  # another process inserted it first
                    raise LeaseHeld(f"another run took the lease on {self.location} just now; nothing done") from None
            elif (
                float(row["expires_at"]) > float(row["now"])
                and row["holder"] != self._holder
                and not _dead_here(str(row["holder"]))
            ):
                left = float(row["expires_at"]) - float(row["now"])
                raise LeaseHeld(
                    f"another run holds the lease on {self.location}: pid {row['pid']} on {row['host']}"
                    f" (lease renewed, {left:.0f} s left); nothing done, the next run goes ahead"
                )
            else:
                generation = int(row["generation"]) + 1
            if follower := self._live_follower():
                raise LeaseHeld(
                    f"followers work on {self.location} (pid {follower[1]} on {follower[0]}, and maybe more);"
                    " nothing done, they keep the chain moving (stop them to run this command)"
                )
            if row is not None:
                self._write_lease(RUN_LEASE, generation, insert=False)
            # The import pipeline too, whoever had it (a follower frozen past its lease, a run that died): from
            # now on its writes are refused, and a follower that wakes finds it owned.
            pipeline = self.conn.execute(
                "SELECT generation FROM leases WHERE name = ? FOR UPDATE", (PIPELINE_LEASE,)
            ).fetchone()
            owned = 1 if pipeline is None else int(pipeline["generation"]) + 1
            self._write_lease(PIPELINE_LEASE, owned, insert=pipeline is None)
            self._tidy_claims()
        self._generation = generation
        self._pipeline = owned
        self._pipeline_lost.clear()
        self._start_heartbeat()

    def _write_lease(self, name: str, generation: int, insert: bool) -> None:
        """Make lease `name` this process's, at `generation` (in the caller's transaction, the row locked)."""
        host, pid = socket.gethostname(), os.getpid()
        if insert:
            self.conn.execute(
                "INSERT INTO leases (name, holder, host, pid, generation, acquired_at, heartbeat_at,"
                f" expires_at) VALUES (?, ?, ?, ?, ?, {_NOW}, {_NOW}, {_NOW} + ?)",
                (name, self._holder, host, pid, generation, self.lease),
            )
        else:
            self.conn.execute(
                f"UPDATE leases SET holder = ?, host = ?, pid = ?, generation = ?, acquired_at = {_NOW},"
                f" heartbeat_at = {_NOW}, expires_at = {_NOW} + ? WHERE name = ?",
                (self._holder, host, pid, generation, self.lease, name),
            )

    def _start_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.is_alive():
            return
        self._stop_heartbeat.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="mcnotify-lease", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        """Every lease/3 s on a connection of its own (pymysql connections are not shared between threads): renew
        the run lease, or, for a follower, its process row, its pipeline lease and its send claims. A run lease
        that cannot be renewed for longer than the lease is lost: the store stops. A follower only loses the
        pipeline (its fenced writes refuse) and keeps retrying: the database may be restarting."""
        interval = max(0.5, self.lease / 3)
        renewed = time.monotonic()
        conn: pymysql.connections.Connection[Any] | None = None
        while not self._stop_heartbeat.wait(interval):
            try:
                if conn is None:
                    conn = self.target.connect()
                    with conn.cursor() as cur:  # a row lock never holds the heartbeat up for long
                        cur.execute("SET SESSION innodb_lock_wait_timeout = %s", (max(1, int(interval)),))
                with conn.cursor() as cur:
                    if self._generation is not None and not cur.execute(
                        f"UPDATE leases SET heartbeat_at = {_NOW}, expires_at = {_NOW} + %s"
                        " WHERE name = %s AND holder = %s AND generation = %s",
                        (self.lease, RUN_LEASE, self._holder, self._generation),
                    ):  # taken over: we were frozen past the lease
                        log.warning("run lease on %s was taken over by another process", self.location)
                        self._lease_lost.set()
                        break
                    renewed = time.monotonic()
                    if self.role is not None:
                        self._beat_shared(cur)
                    self._end_frozen(cur)  # (a one-shot run's too: a follower may freeze while it runs)
                    self._beat_work(cur)
                    cur.execute("SELECT version FROM schema_version WHERE id = 1")
                    newer = cur.fetchone()
                    if newer is not None and int(newer[0]) > len(MIGRATIONS):
                        # A newer mcnotify (a rolling upgrade) changed the schema under this one: stop rather
                        # than write rows this version no longer knows the shape of.
                        self._outdated = int(newer[0])
            except (pymysql.Error, StateDatabaseError, OSError) as exc:
                log.warning("lease on %s not renewed: %s", self.location, _why(exc))
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
                if self._generation is not None and time.monotonic() - renewed > self.lease:
                    self._lease_lost.set()
                    break
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _beat_shared(self, cur: Any) -> None:
        conn_id, conn_client = self.conn.identity or (None, None)
        cur.execute(
            "INSERT INTO processes (holder, host, pid, role, started_at, heartbeat_at, conn_id, conn_client)"
            f" VALUES (%s, %s, %s, %s, {_NOW}, {_NOW}, %s, %s) ON DUPLICATE KEY UPDATE"
            " heartbeat_at = VALUES(heartbeat_at), conn_id = VALUES(conn_id), conn_client = VALUES(conn_client)",
            (self._holder, socket.gethostname(), os.getpid(), self.role, conn_id, conn_client),
        )

    def _beat_work(self, cur: Any) -> None:
        """The pipeline lease this process owns and the send claims it holds (a follower's or a one-shot run's)."""
        generation = self._pipeline
        if (
            generation is not None
            and not self._pipeline_lost.is_set()
            and not cur.execute(
                f"UPDATE leases SET heartbeat_at = {_NOW}, expires_at = {_NOW} + %s"
                " WHERE name = %s AND holder = %s AND generation = %s",
                (self.lease, PIPELINE_LEASE, self._holder, generation),
            )
        ):
            log.warning("the import pipeline on %s was taken over by another process", self.location)
            self._pipeline_lost.set()
        self._renew_claims(cur)

    def _renew_claims(self, cur: Any) -> None:
        """Claims live as long as their holder: a dead or frozen one's expire within the lease. Renewed by id
        (this process knows what it holds), and only claims no transaction holds (SKIP LOCKED): the heartbeat
        never waits on this process's own recording, which deletes a claim once its rows are done, so the two
        cannot deadlock (a claim being deleted needs no renewal)."""
        with self._claims_lock:
            held = sorted(self._claims)
        for start in range(0, len(held), 5000):
            part = held[start : start + 5000]
            cur.execute("BEGIN")
            try:
                cur.execute(
                    f"SELECT id FROM claims WHERE id IN ({','.join(['%s'] * len(part))})"
                    " AND holder = %s FOR UPDATE SKIP LOCKED",
                    (*part, self._claim),
                )
                free = [int(r[0]) for r in cur.fetchall()]
                if free:
                    cur.execute(
                        f"UPDATE claims SET expires = {_NOW} + %s WHERE id IN ({','.join(['%s'] * len(free))})",
                        (self.lease, *free),
                    )
                cur.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(pymysql.Error):
                    cur.execute("ROLLBACK")
                raise

    def _end_frozen(self, cur: Any) -> None:
        """End the database connection of every process whose heartbeat is a lease old (frozen by SIGSTOP, a VM
        pause, a partition; a dead one's the server ends itself). Frozen inside a transaction, it would hold its
        row locks (the pipeline lease row its fenced writes lock in share mode, rows it was claiming or
        marking) for as long as it stays frozen, and every other process would wait on them: its transaction
        is rolled back instead, and it finds, if it wakes, a lost connection and a lost lease. The server's
        processlist must still show that id with the same client address: an id alone may be another
        connection's after a server restart, so the server must also be in the run it was then (connection
        ids are not reused within one). Killing a connection of one's own user needs no privilege."""
        cur.execute(
            f"SELECT holder, host, pid, conn_id, conn_client FROM processes WHERE heartbeat_at < {_NOW} - %s"
            " AND conn_id IS NOT NULL AND holder <> %s",
            (self.lease, self._holder),
        )
        frozen = cur.fetchall()
        started = _server_started(cur) if frozen else 0.0
        for holder, host, pid, conn_id, conn_client in frozen:
            client, _, then = str(conn_client).rpartition("|")
            try:
                same_run = abs(float(then) - started) <= 5  # (the start is computed to the second each time)
            except ValueError:
                same_run = False
            if same_run and cur.execute(
                "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s AND HOST = %s", (conn_id, client)
            ):
                try:
                    cur.execute("KILL CONNECTION %s", (int(conn_id),))
                    log.warning(
                        "ended the state database connection of pid %s on %s: no heartbeat for %g s (frozen?)",
                        pid,
                        host,
                        self.lease,
                    )
                except pymysql.Error as exc:  # gone meanwhile, or another database user's (needs a privilege)
                    log.warning("could not end the connection of frozen pid %s on %s: %s", pid, host, _why(exc))
            cur.execute("UPDATE processes SET conn_id = NULL WHERE holder = %s AND conn_id = %s", (holder, conn_id))

    # -- several processes on one database ----------------------------------------------------------------
    @property
    def shared(self) -> bool:  # type: ignore[override]  # (a plain attribute on the SQLite store)
        return self.role is not None

    def _live_follower(self) -> tuple[str, int] | None:
        """A follower whose heartbeat is fresh (and, on this host, whose process lives), if any."""
        for row in self.conn.execute(
            f"SELECT host, pid, holder FROM processes WHERE role = ? AND heartbeat_at > {_NOW} - ? AND holder != ?",
            (FOLLOWER, self.lease, self._holder),
        ):
            if not _dead_here(str(row[2])):
                return str(row[0]), int(row[1])
        return None

    def register(self, role: str) -> None:
        """Join the processes sharing this database (a follower): no run lease, but refused (75) while a
        one-shot run holds it. The run lease row is locked meanwhile, so a one-shot and a follower never both
        start."""
        host, pid = socket.gethostname(), os.getpid()
        self.conn.track()
        with self.transaction():
            row = self.conn.execute(
                f"SELECT holder, host, pid, expires_at > {_NOW} AS held FROM leases WHERE name = ? FOR UPDATE",
                (RUN_LEASE,),
            ).fetchone()
            if row is None:
                with contextlib.suppress(StateDatabaseError):  # another process inserted it first: it is free
                    self.conn.execute(
                        "INSERT INTO leases (name, holder, host, pid, generation, acquired_at, heartbeat_at,"
                        " expires_at) VALUES (?, '', '', 0, 0, 0, 0, 0)",
                        (RUN_LEASE,),
                    )
            elif row["held"] and row["holder"] != self._holder and not _dead_here(str(row["holder"])):
                raise LeaseHeld(
                    f"a run holds the lease on {self.location}: pid {row['pid']} on {row['host']};"
                    " the follower starts once it is done"
                )
            elif row["holder"]:
                # A run that died or froze past its lease: taken from it (a new generation), so that one that
                # wakes finds its lease gone at its next heartbeat and stops.
                self.conn.execute(
                    "UPDATE leases SET holder = '', host = '', pid = 0, generation = generation + 1, expires_at = 0"
                    " WHERE name = ?",
                    (RUN_LEASE,),
                )
            conn_id, conn_client = self.conn.identity or (None, None)
            self.conn.execute(
                "INSERT INTO processes (holder, host, pid, role, started_at, heartbeat_at, conn_id, conn_client)"
                f" VALUES (?, ?, ?, ?, {_NOW}, {_NOW}, ?, ?)"
                " ON DUPLICATE KEY UPDATE heartbeat_at = VALUES(heartbeat_at)",
                (self._holder, host, pid, role, conn_id, conn_client),
            )
            # Rows of processes gone for a day: status need not list them for ever.
            self.conn.execute(f"DELETE FROM processes WHERE heartbeat_at < {_NOW} - 86400")
            self._tidy_claims()
            # A process of this host that is gone (killed, restarted by systemd) frees its send claims now, as a
            # dead lease holder here frees the lease: its rows need not wait for the claims to expire.
            others = self.conn.execute(
                "SELECT holder, pid FROM processes WHERE host = ? AND holder <> ?", (host, self._holder)
            ).fetchall()
            for other in others:
                if _dead_here(str(other["holder"])):
                    self.conn.execute("DELETE FROM claims WHERE holder = ?", (_claim_of(str(other["holder"])),))
                    self.conn.execute("DELETE FROM processes WHERE holder = ?", (other["holder"],))
        self.role = role
        self._start_heartbeat()

    def take_pipeline(self) -> bool:
        """Own the import pipeline: ours already, free, or expired (its owner died or froze: on this host a
        dead owner frees it at once). A new owner raises the generation, the fencing token of its writes."""
        if self.role is None:  # a one-shot run took it with the run lease (lock)
            return self._pipeline is not None and not self._pipeline_lost.is_set()
        if self._pipeline is not None and not self._pipeline_lost.is_set():
            return True
        self._pipeline = None
        # First without a lock: a live owner is the common case, and a frozen one may hold the row in share mode
        # (a locking read would wait until the heartbeat of some process ends its connection).
        row = self.conn.execute(
            f"SELECT holder, expires_at > {_NOW} AS held FROM leases WHERE name = ?", (PIPELINE_LEASE,)
        ).fetchone()
        if row is not None and row["held"] and not _dead_here(str(row["holder"])):
            return False
        with self.transaction():
            row = self.conn.execute(
                f"SELECT holder, host, pid, generation, expires_at > {_NOW} AS held FROM leases WHERE name = ?"
                " FOR UPDATE",
                (PIPELINE_LEASE,),
            ).fetchone()
            if row is None:
                generation = 1
                try:
                    self._write_lease(PIPELINE_LEASE, generation, insert=True)
                except StateDatabaseError:  # another process inserted it first: it owns the pipeline
                    return False
            elif row["held"] and not _dead_here(str(row["holder"])):
                return False
            else:
                generation = int(row["generation"]) + 1
                self._write_lease(PIPELINE_LEASE, generation, insert=False)
        log.info("follow: this process owns the import pipeline on %s (generation %d)", self.location, generation)
        self._pipeline = generation
        self._pipeline_lost.clear()
        return True

    @contextlib.contextmanager
    def fenced(self) -> Iterator[None]:
        """The pipeline's writes: each transaction inside checks the pipeline lease (a follower's only)."""
        self._fence += self.role is not None
        try:
            yield
        finally:
            self._fence -= self.role is not None

    def _check_pipeline(self, locking: str = "") -> None:
        """Still the pipeline's owner: its holder and generation unchanged. Inside a transaction (`locking`) that
        is enough, expired or not: the shared lock keeps a takeover out until this commits, and an owner whose
        heartbeat was only late (a long transaction, a pause nobody used) goes on. Before what no transaction
        covers (an upload), the lease must also be current: a takeover could come at any moment after."""
        if self._pipeline is None or self._pipeline_lost.is_set():
            raise PipelineLost(f"this process does not own the import pipeline on {self.location}")
        asked = time.monotonic()
        row = self.conn.execute(
            f"SELECT expires_at - {_NOW} AS remaining FROM leases"
            f" WHERE name = ? AND holder = ? AND generation = ? {locking}",
            (PIPELINE_LEASE, self._holder, self._pipeline),
        ).fetchone()
        if row is None:
            self._pipeline_lost.set()
            log.warning("follow: lost the import pipeline on %s (another process took it over)", self.location)
            raise PipelineLost(
                f"another process took the import pipeline on {self.location} over; this cycle stops here"
            )
        if locking:
            return
        # The lease must outlast what the caller does next by a margin, counted from when the question was sent:
        # a pause after the database answered (a freeze, a VM pause) is caught here, not after the upload.
        margin = min(FENCE_MARGIN, self.lease / 4)
        if time.monotonic() - asked > float(row["remaining"]) - margin:  # (an expired lease: under 0 s remaining)
            raise PipelineLost(
                f"the lease on the import pipeline on {self.location} ran out, or has under {margin:g} s to run"
                " (its heartbeat is late, or this process was paused); not uploading or starting an import until it"
                " is renewed"
            )

    def check_fence(self) -> None:
        """Right before what no transaction can fence (the SFTP upload, starting the import): still the owner?"""
        if self.role is not None or self._pipeline is not None:
            self._check_pipeline()

    def claim_work(
        self,
        batch_id: int,
        channel: str,
        statuses: Sequence[str],
        template: str | None = None,
        after: int = 0,
        limit: int = -1,
        known_only: bool = False,
    ) -> list[Notification]:
        """`work`, claimed for this process: the rows in no other process's live claim, claimed as a range of
        seqs (a row in `claims` per page, not a write on every row). A batch and channel's claims are made one
        process at a time (its claim_locks row, locked for the few milliseconds a claim takes); a claim whose
        holder stopped renewing it for a lease (dead, frozen) is deleted here and its rows claimed anew. The rows
        are read FOR UPDATE SKIP LOCKED: one that a transaction is recording right now is left alone."""
        if self.read_only:  # a dry run's preview claims nothing
            return self.work(batch_id, channel, statuses, template, after, limit, known_only)
        key = (batch_id, channel)
        if key not in self._claim_locks:
            # Autocommitted, before the transaction: inside it, every claimer would share-lock the row at once
            # and then each wait for the others to lock it for update.
            self.conn.execute("INSERT IGNORE INTO claim_locks (batch_id, channel) VALUES (?, ?)", key)
            self._claim_locks.add(key)
        stored_template = _cut(template)
        made: list[tuple[int, int, int]] = []  # (claim id, lo, hi)
        with self.transaction():
            if not self.conn.execute(
                "SELECT batch_id FROM claim_locks WHERE batch_id = ? AND channel = ? FOR UPDATE", key
            ).fetchone():  # tidied away since (a batch done long ago, sent to again): made again, and so locked
                self.conn.execute("INSERT IGNORE INTO claim_locks (batch_id, channel) VALUES (?, ?)", key)
            # Other processes' claims over these rows. Read without a lock (no other process claims here now, and
            # one that finishes a claim deletes it without waiting for this); only an expired one is locked, to
            # be taken over: its holder may be renewing it, or marking a row of it, this very moment.
            others: dict[int, tuple[int, int]] = {}
            same = "" if template is None else " AND (template IS NULL OR template = ?)"  # (NULL: every template)
            for r in self.conn.execute(
                f"SELECT id, lo, hi, holder FROM claims WHERE batch_id = ? AND channel = ?{same}",
                (*key, *(() if template is None else (stored_template,))),
            ):
                if r["holder"] != self._claim:  # (ours: its rows are ours to read again)
                    others[int(r["id"])] = (int(r["lo"]), int(r["hi"]))
            if others:
                ids = sorted(others)
                expired = [
                    int(r[0])
                    for r in self.conn.execute(
                        f"SELECT id FROM claims WHERE id IN ({','.join('?' * len(ids))}) AND expires < {_NOW}"
                        " FOR UPDATE",
                        ids,
                    )
                ]
                if expired:
                    self.conn.execute(f"DELETE FROM claims WHERE id IN ({','.join('?' * len(expired))})", expired)
                    for claim_id in expired:
                        del others[claim_id]
            claimed = sorted(others.values())
            rows = self._page(batch_id, channel, statuses, template, after, limit, known_only, claimed)
            for lo, hi in _ranges([n.seq for n in rows], claimed):
                cur = self.conn.execute(
                    "INSERT INTO claims (batch_id, channel, template, lo, hi, holder, expires)"
                    f" VALUES (?, ?, ?, ?, ?, ?, {_NOW} + ?)",
                    (batch_id, channel, stored_template, lo, hi, self._claim, self.lease),
                )
                assert cur.lastrowid is not None
                made.append((cur.lastrowid, lo, hi))
        emptied: list[int] = []  # earlier claims of ours whose rows this one took over
        with self._claims_lock:
            for claim_id, lo, hi in made:
                seqs = {n.seq for n in rows if lo <= n.seq <= hi}
                for seq in seqs:
                    before = self._claim_of_seq.get(seq)
                    if before is not None and before in self._claims:
                        self._claims[before].discard(seq)
                        if not self._claims[before]:
                            del self._claims[before]
                            emptied.append(before)
                    self._claim_of_seq[seq] = claim_id
                self._claims[claim_id] = seqs
        if emptied:
            self._delete_claims(emptied)
        return rows

    def _tidy_claims(self) -> None:
        """What dead processes' claims leave behind (a claim's next claimer deletes it, unless nobody claims in
        its batch again), and the claim locks of batches done for a day: these tables hold what is in flight."""
        self.conn.execute(f"DELETE FROM claims WHERE expires < {_NOW} - 3600")
        self.conn.execute(
            "DELETE claim_locks FROM claim_locks JOIN batches ON batches.id = claim_locks.batch_id"
            " WHERE batches.status = ? AND batches.created_at < ?",
            (BatchStatus.DONE, time.time() - 86400),
        )

    def _delete_claims(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), 5000):
            part = ids[start : start + 5000]
            self.conn.execute(
                f"DELETE FROM claims WHERE id IN ({','.join('?' * len(part))}) AND holder = ?", (*part, self._claim)
            )

    def _let_go(self, seqs: Iterable[int]) -> None:
        """These rows are done with (recorded, released, moved to another batch): a claim left with none is
        deleted, in the caller's transaction, so that the rest of its range is free at once. This process forgets
        them when that transaction commits: rolled back, the claim is still there, and still renewed."""
        seqs = set(seqs)
        with self._claims_lock:
            gone = self._letting_go | seqs
            claims = {self._claim_of_seq[s] for s in seqs if s in self._claim_of_seq}
            done = sorted(c for c in claims if c in self._claims and self._claims[c] <= gone)
        if done:
            self._delete_claims(done)
        if self.conn.in_transaction:
            self._letting_go |= seqs
        else:
            self._forget(seqs)

    def _forget(self, seqs: Iterable[int]) -> None:
        with self._claims_lock:
            for seq in seqs:
                claim_id = self._claim_of_seq.pop(seq, None)
                left = self._claims.get(claim_id) if claim_id is not None else None
                if left is not None and claim_id is not None:
                    left.discard(seq)
                    if not left:
                        del self._claims[claim_id]

    def _page(
        self,
        batch_id: int,
        channel: str,
        statuses: Sequence[str],
        template: str | None,
        after: int,
        limit: int,
        known_only: bool,
        claimed: Sequence[tuple[int, int]] | None = None,
    ) -> list[Notification]:
        """A page of work, oldest first. One query per status, each an equality: the index (batch, channel,
        template, status, seq) then yields rows in seq order from `after` on, and the query stops at the limit
        (`status IN (...)` reads and sorts every open row of the batch for each page: quadratic in a large batch).
        `claimed`, to claim: the (lo, hi) seq ranges other processes claim, left out; the rows are locked with
        SKIP LOCKED."""
        where = (
            "batch_id = ? AND channel = ? AND status = ? AND seq > ?"
            + (" AND template = ?" if template is not None else "")
            + (f" AND {self._KNOWN}" if known_only else "")
            + " AND seq NOT BETWEEN ? AND ?" * len(claimed or ())
        )
        locking = " FOR UPDATE SKIP LOCKED" if claimed is not None else ""
        # Named: left to itself, the optimizer takes (batch, channel, status) and walks it from the batch's first
        # row on every page, skipping those before `after` one by one.
        table = "notifications FORCE INDEX (notifications_status)" if template is not None else "notifications"
        # Only the columns the query does not fix (pymysql decodes every value in Python: a page is thousands).
        columns = "seq, notification_id, subscriber_key, address, attributes, from_name, message_key, template"
        found: list[Notification] = []
        for status in statuses:
            args = [batch_id, channel, status, after, *([template] if template is not None else [])]
            for (
                seq,
                notification_id,
                key,
                address,
                attributes,
                from_name,
                message_key,
                row_template,
            ) in self.conn.execute(
                f"SELECT {columns} FROM {table} WHERE {where} ORDER BY seq LIMIT ?{locking}",
                (*args, *(bound for pair in claimed or () for bound in pair), _NO_LIMIT if limit < 0 else limit),
            ):
                found.append(
                    Notification(
                        seq,
                        notification_id,
                        batch_id,
                        row_template,
                        channel,
                        key,
                        address,
                        json.loads(attributes),
                        from_name,
                        status,
                        message_key,
                    )
                )
        if len(statuses) > 1:
            found.sort(key=lambda n: n.seq)
        return found if limit < 0 else found[:limit]

    def mark(self, seqs: Sequence[int], status: str) -> int:
        """Only a pending row of a claim this process still holds: its claim may have expired while it was frozen
        and been taken over, the row sent and recorded by another since (a triggered send marked by both would go
        twice). A follower and a one-shot run alike: a frozen run and a follower that started meanwhile may both
        work. The claim stays share-locked until the caller commits: a takeover (which locks it for update to
        delete it) waits for that, and then finds the row marked."""
        if not seqs:
            return 0
        if not self.conn.in_transaction:
            with self.transaction():
                return self.mark(seqs, status)
        with self._claims_lock:
            ids = sorted({self._claim_of_seq[s] for s in seqs if s in self._claim_of_seq})
        live: set[int] = set()
        if ids:
            live = {
                int(r[0])
                for r in self.conn.execute(
                    f"SELECT id FROM claims WHERE id IN ({','.join('?' * len(ids))}) AND holder = ? LOCK IN SHARE MODE",
                    (*ids, self._claim),
                )
            }
        with self._claims_lock:
            mine = [s for s in seqs if self._claim_of_seq.get(s) in live]
        if len(mine) < len(seqs):  # another process's now: not ours to send, renew or release
            self._let_go(set(seqs) - set(mine))
        if not mine:
            return 0
        cur = self.conn.execute(
            f"UPDATE notifications SET status = ?, attempts = attempts + 1, updated_at = ?"
            f" WHERE seq IN ({','.join('?' * len(mine))}) AND status = '{Delivery.PENDING}'",
            (status, time.time(), *mine),
        )
        return max(cur.rowcount, 0)

    def record(self, outcomes: Iterable[Outcome]) -> None:
        """One UPDATE per distinct outcome (a call's results are mostly alike: one statement for 500 rows);
        pymysql's executemany would make a round trip per row, and the database would be the bottleneck."""
        now = time.time()
        groups: dict[tuple[str, str | None, str | None], list[int]] = {}
        for o in outcomes:
            groups.setdefault((o.status, o.error_code, o.reason), []).append(o.seq)
        for (status, code, reason), seqs in groups.items():
            sent_at = "?" if status == Delivery.SENT else "sent_at"
            self.conn.execute(
                f"UPDATE notifications SET status = ?, error_code = ?, reason = ?, updated_at = ?, sent_at = {sent_at}"
                f" WHERE seq IN ({','.join('?' * len(seqs))})",
                (status, code, reason, now, *((now,) if status == Delivery.SENT else ()), *seqs),
            )
        # Recorded: no longer this process's to renew or release (a claim whose rows are all done is deleted).
        self._let_go(s for seqs in groups.values() for s in seqs)

    def release(self, seqs: Iterable[int]) -> int:
        seqs = list(seqs)
        released = super().release(seqs)
        self._let_go(seqs)
        return released

    def requeue_for_import(self, seqs: Sequence[int], reason: str, limit: int = 3) -> tuple[int, int]:
        counts = super().requeue_for_import(seqs, reason, limit)
        self._let_go(seqs)  # (moved to another batch, or failed: out of this claim either way)
        return counts

    def release_claims(self) -> None:
        with self._claims_lock:
            held = sorted(self._claims)
        self._delete_claims(held)
        with self._claims_lock:
            for claim_id in held:
                for seq in self._claims.pop(claim_id, ()):
                    if self._claim_of_seq.get(seq) == claim_id:
                        del self._claim_of_seq[seq]

    def processes(self) -> list[dict[str, Any]]:
        if not self.migrated():  # a preview of an older schema: no processes table yet
            return []
        return [
            {
                "host": r["host"],
                "pid": int(r["pid"]),
                "role": r["role"],
                "started_at": float(r["started_at"]),
                "last_heartbeat": float(r["heartbeat_at"]),
                "heartbeat_age": round(max(0.0, float(r["age"])), 3),
                "fresh": float(r["age"]) <= self.lease,
                **_detail(r["detail"]),
            }
            for r in self.conn.execute(
                f"SELECT host, pid, role, started_at, heartbeat_at, {_NOW} - heartbeat_at AS age, detail"
                " FROM processes ORDER BY started_at"
            )
        ]

    def pipeline_owner(self) -> dict[str, Any] | None:
        if not self.migrated():
            return None
        row = self.conn.execute(
            f"SELECT host, pid, generation, expires_at - {_NOW} AS left_s FROM leases WHERE name = ?",
            (PIPELINE_LEASE,),
        ).fetchone()
        if row is None or float(row["left_s"]) <= 0:
            return None
        return {
            "host": row["host"],
            "pid": int(row["pid"]),
            "generation": int(row["generation"]),
            "expires_in": round(float(row["left_s"]), 3),
        }

    def alone(self) -> bool:
        return self.role is None or self._live_follower() is None

    def note_follower(self, info: dict[str, Any]) -> None:
        """Each follower's own row (autocommit: no row shared by all of them for a frozen one to hold locked)."""
        if self.role is None or info.get("stopped"):  # the last one to stop leaves its line for `status`
            super().note_follower(info)
        if self.role is not None:
            self.conn.execute("UPDATE processes SET detail = ? WHERE holder = ?", (json.dumps(info), self._holder))

    def _unregister(self) -> None:
        """A clean stop: the pipeline and the claims are free at once (no one waits for them to expire)."""
        if self.read_only or self.lost:
            return
        with contextlib.suppress(McnotifyError):
            if self._pipeline is not None and not self._pipeline_lost.is_set():
                self.conn.execute(
                    "UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ? AND generation = ?",
                    (PIPELINE_LEASE, self._holder, self._pipeline),
                )
            if self._claims:
                self.release_claims()
            if self.role is not None:
                self.conn.execute("DELETE FROM processes WHERE holder = ?", (self._holder,))
        self.role = None
        self._pipeline = None

    def unlock(self) -> None:
        """Stop the heartbeat and give the lease up at once (the next run need not wait for it to expire)."""
        self._stop_heartbeat.set()
        if self._heartbeat is not None:
            self._heartbeat.join(5)
            self._heartbeat = None
        self._unregister()
        if self._generation is None:
            return
        if not self._lease_lost.is_set():
            with contextlib.suppress(McnotifyError):
                self.conn.execute(
                    "UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ? AND generation = ?",
                    (RUN_LEASE, self._holder, self._generation),
                )
        self._generation = None

    @property
    def generation(self) -> int | None:
        """The run lease's generation while this store holds it (the fencing token for issue 13's next part)."""
        return self._generation

    def token_cache(self) -> MySQLTokenCache | NoTokenCache:  # type: ignore[override]
        return NoTokenCache() if self.read_only else MySQLTokenCache(self.target)

    # -- meta: `key` is a reserved word -------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE `key` = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self.conn.execute(
            "INSERT INTO meta (`key`, value) VALUES (?, ?) ON DUPLICATE KEY UPDATE value = VALUES(value)",
            (key, json.dumps(value)),
        )

    def forget_import_start(self, batch_id: int, import_status: str | None = None) -> None:
        self.conn.execute("DELETE FROM meta WHERE `key` = ?", (f"import.start_attempt.{batch_id}",))
        self.update_batch(batch_id, import_status=import_status)

    # -- batches: `rows` is a reserved word ---------------------------------------------------------------
    def update_batch(self, batch_id: int, **fields: Any) -> None:
        cols = ", ".join(f"`{k}` = ?" for k in fields)
        self.conn.execute(f"UPDATE batches SET {cols} WHERE id = ?", (*fields.values(), batch_id))

    def add_claimed_counts(self, batch_id: int, rows: int, invalid: int) -> None:
        self.conn.execute(
            "UPDATE batches SET `rows` = `rows` + ?, invalid = invalid + ? WHERE id = ?", (rows, invalid, batch_id)
        )

    # -- steps: upserts -----------------------------------------------------------------------------------
    def step_started(self, batch_id: int, step: str) -> None:
        self.conn.execute(
            "INSERT INTO steps (batch_id, step, status, started_at) VALUES (?, ?, ?, ?) "
            "ON DUPLICATE KEY UPDATE status = VALUES(status),"
            " started_at = COALESCE(started_at, VALUES(started_at)), finished_at = NULL",
            (batch_id, step, StepStatus.RUNNING, time.time()),
        )

    def step_finished(self, batch_id: int, step: str, status: str, detail: str | None = None) -> None:
        now = time.time()
        self.conn.execute(
            "INSERT INTO steps (batch_id, step, status, started_at, finished_at, detail) VALUES (?, ?, ?, ?, ?, ?) "
            "ON DUPLICATE KEY UPDATE status = VALUES(status), finished_at = VALUES(finished_at),"
            " detail = VALUES(detail)",
            (batch_id, step, status, now, now, detail),
        )

    # -- claiming: updates that read their own table go through a derived table (MySQL error 1093) --------
    @staticmethod
    def _newest(where: str) -> str:
        """A derived table: per subscriber key, the (address, batch_id) of its newest row matching `where`."""
        return (
            "(SELECT x.subscriber_key, x.address, x.batch_id FROM notifications AS x JOIN"
            f" (SELECT MAX(seq) AS seq FROM notifications WHERE {where} GROUP BY subscriber_key) AS m"
            " ON x.seq = m.seq)"
        )

    def resolve_email_conflicts(self, batch_id: int) -> list[str]:
        keys = [
            r[0]
            for r in self.conn.execute(
                f"SELECT subscriber_key FROM notifications WHERE {self._SENDABLE_EMAIL}"
                " GROUP BY subscriber_key HAVING COUNT(DISTINCT address) > 1",
                (batch_id,),
            )
        ]
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            newest = self._newest(f"{self._SENDABLE_EMAIL} AND subscriber_key IN ({marks})")
            self.conn.execute(
                f"UPDATE notifications AS n JOIN {newest} AS newest ON newest.subscriber_key = n.subscriber_key"
                " SET n.address = newest.address"
                f" WHERE n.batch_id = ? AND n.channel = 'email' AND n.status NOT IN {_UNSENDABLE}"
                f" AND n.subscriber_key IN ({marks})",
                (batch_id, *chunk, batch_id, *chunk),
            )
        return keys

    def adopt_older_pending_emails(self, batch_id: int) -> list[str]:
        moved = [
            r[0]
            for r in self.conn.execute(
                "SELECT DISTINCT older.subscriber_key FROM notifications AS older"
                f" WHERE older.status = '{Delivery.PENDING}' AND older.channel = 'email' AND older.batch_id < ?"
                " AND EXISTS (SELECT 1 FROM notifications AS newer WHERE newer.batch_id = ?"
                "  AND newer.channel = 'email' AND newer.subscriber_key = older.subscriber_key"
                f"  AND newer.status NOT IN {_UNSENDABLE} AND newer.address != older.address)",
                (batch_id, batch_id),
            )
        ]
        for start in range(0, len(moved), 500):
            chunk = moved[start : start + 500]
            marks = ",".join("?" * len(chunk))
            newest = self._newest(
                f"batch_id = ? AND channel = 'email' AND status NOT IN {_UNSENDABLE} AND subscriber_key IN ({marks})"
            )
            self.conn.execute(
                f"UPDATE notifications AS n JOIN {newest} AS newest ON newest.subscriber_key = n.subscriber_key"
                " SET n.batch_id = ?, n.updated_at = ?, n.address = newest.address"
                f" WHERE n.batch_id < ? AND n.channel = 'email' AND n.status = '{Delivery.PENDING}'"
                f" AND n.subscriber_key IN ({marks})",
                (batch_id, *chunk, batch_id, time.time(), batch_id, *chunk),
            )
        return sorted(moved)

    def subscribers(self, batch_id: int, new_only: bool = False) -> Iterator[tuple[str, str]]:
        # SQLite reads the address of the MAX(seq) row beside the aggregate; MySQL needs the join.
        unknown = f" AND NOT {self._KNOWN}" if new_only else ""
        for key, address in self.conn.execute(
            "SELECT n.subscriber_key, n.address FROM notifications AS n JOIN"
            f" (SELECT MAX(seq) AS seq FROM notifications WHERE {self._SENDABLE_EMAIL}{unknown}"
            "  GROUP BY subscriber_key) AS m ON n.seq = m.seq ORDER BY n.subscriber_key",
            (batch_id,),
        ):
            yield str(key), str(address)

    # -- the contact ledger -------------------------------------------------------------------------------
    def learn_batch_contacts(self, batch_id: int) -> int:
        newest = (
            f"SELECT n.subscriber_key, n.address, CONCAT('import of batch ', n.batch_id), ? FROM notifications AS n"
            f" JOIN (SELECT MAX(seq) AS seq FROM notifications WHERE {self._SENDABLE_EMAIL}"
            " GROUP BY subscriber_key) AS m ON n.seq = m.seq"
        )
        count = self.conn.execute(
            f"SELECT COUNT(DISTINCT subscriber_key) FROM notifications WHERE {self._SENDABLE_EMAIL}", (batch_id,)
        ).fetchone()
        self.conn.execute(
            f"INSERT INTO contacts (subscriber_key, email, learned_from, updated_at) {newest}"
            " ON DUPLICATE KEY UPDATE email = VALUES(email), learned_from = VALUES(learned_from),"
            " updated_at = VALUES(updated_at)",
            (time.time(), batch_id),
        )
        return int(count[0]) if count else 0

    def learn_contact(self, subscriber_key: str, email: str, learned_from: str) -> None:
        self.conn.execute(
            "INSERT INTO contacts (subscriber_key, email, learned_from, updated_at) VALUES (?, ?, ?, ?)"
            " ON DUPLICATE KEY UPDATE email = VALUES(email), learned_from = VALUES(learned_from),"
            " updated_at = VALUES(updated_at)",
            (subscriber_key, email, learned_from, time.time()),
        )

    # -- sending ------------------------------------------------------------------------------------------
    # -- text the indexed VARCHAR(255) columns cannot hold (the SQLite file has no such limit) ---------------------
    def known_ids(self, ids: Sequence[str]) -> set[str]:
        stored = {_stored_id(i): i for i in ids}
        return {stored[found] for found in super().known_ids(list(stored)) if found in stored}

    def add_notifications(self, batch_id: int, rows: Iterable[NewNotification]) -> None:
        super().add_notifications(batch_id, (_fitted(n) for n in rows))

    def templates(self, batch_id: int, channel: str, known_only: bool = False) -> list[str]:
        """The batch's templates with open rows, found by skipping through the status index (status, channel,
        batch, template, seq) a template at a time: DISTINCT over the open rows reads every one of them, and
        each send pass of each follower asks."""
        if known_only:
            return super().templates(batch_id, channel, known_only)
        found: set[str] = set()
        for status in OPEN:
            last: str | None = None
            while row := self.conn.execute(
                "SELECT template FROM notifications FORCE INDEX (notifications_status)"
                " WHERE status = ? AND channel = ? AND batch_id = ?"
                f"{'' if last is None else ' AND template > ?'} ORDER BY template LIMIT 1",
                (status, channel, batch_id, *(() if last is None else (last,))),
            ).fetchone():
                last = str(row[0])
                found.add(last)
        return sorted(found)

    def work(
        self,
        batch_id: int,
        channel: str,
        statuses: Sequence[str],
        template: str | None = None,
        after: int = 0,
        limit: int = -1,
        known_only: bool = False,
    ) -> list[Notification]:
        return self._page(batch_id, channel, statuses, template, after, limit, known_only)

    def readdress_to_newest(self, batch_id: int) -> int:
        mine = f"n.batch_id = ? AND n.channel = 'email' AND n.status = '{Delivery.PENDING}'"
        # Only the keys this batch has pending: the later rows of other keys do not matter here.
        newest = self._newest(
            f"channel = 'email' AND status NOT IN {_UNSENDABLE} AND batch_id > ? AND subscriber_key IN"
            f" (SELECT subscriber_key FROM notifications WHERE batch_id = ? AND channel = 'email'"
            f"  AND status = '{Delivery.PENDING}')"
        )
        cur = self.conn.execute(
            f"UPDATE notifications AS n JOIN {newest} AS newest ON newest.subscriber_key = n.subscriber_key"
            f" SET n.address = newest.address, n.updated_at = ? WHERE {mine} AND n.address != newest.address",
            (batch_id, batch_id, time.time(), batch_id),
        )
        changed = max(cur.rowcount, 0)
        self.conn.execute(
            f"UPDATE notifications AS n JOIN {newest} AS newest ON newest.subscriber_key = n.subscriber_key"
            " JOIN batches AS b ON b.id = newest.batch_id"
            f" SET n.batch_id = newest.batch_id WHERE {mine} AND b.status IN {_NOT_YET_IMPORTED}",
            (batch_id, batch_id, batch_id),
        )
        return changed

    # -- views --------------------------------------------------------------------------------------------
    def latency_histogram(self, bounds: Sequence[float]) -> dict[str, tuple[list[int], int, float]]:
        cases = ", ".join(f"SUM(d <= {float(b)!r})" for b in bounds)
        out: dict[str, tuple[list[int], int, float]] = {}
        for row in self.conn.execute(
            f"SELECT channel, {cases}, COUNT(*), COALESCE(SUM(d), 0) FROM (SELECT channel,"
            " GREATEST(0, sent_at - event_at) AS d FROM notifications"
            " WHERE sent_at IS NOT NULL AND event_at IS NOT NULL) AS t GROUP BY channel"
        ):
            out[str(row[0])] = ([int(x or 0) for x in row[1:-2]], int(row[-2]), float(row[-1]))
        return out

    def bad_message_keys(self, channels: Sequence[str]) -> tuple[int, int | None]:
        row = self.conn.execute(
            f"SELECT count(*), min(batch_id) FROM notifications WHERE status IN {_OPEN}"
            f" AND channel IN ({','.join('?' * len(channels))}) AND message_key IS NOT NULL"
            f" AND {_INVALID_MESSAGE_KEY}",
            tuple(channels),
        ).fetchone()
        assert row is not None
        return int(row[0]), None if row[1] is None else int(row[1])


class _Rollback(Exception):
    """Ends probe_write's transaction without committing anything."""


if TYPE_CHECKING:
    _: type[Store] = MySQLStore  # mypy checks that the MySQL store implements the whole interface
