"""The SQLite state file: the only hand-off between steps, and the memory of every notification's fate."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from mcnotify.errors import ConfigError, LockHeld, McnotifyError
from mcnotify.message_keys import MAX_LENGTH, SAFE_CHARS
from mcnotify.state.interface import (
    REQUEUE,
    Batch,
    NewNotification,
    Notification,
    NotificationRecord,
    Outcome,
    Store,
)
from mcnotify.state.schema import MIGRATIONS
from mcnotify.state.states import (
    FOLLOWER_META,
    NOT_YET_IMPORTED,
    OPEN,
    UNSENDABLE,
    BatchStatus,
    Delivery,
    StepStatus,
    sql_list,
)
from mcnotify.state.tokens import NoTokenCache, SqliteTokenCache, Token

_RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(NotificationRecord))

# The delivery states under the names the steps import.
PENDING, SENDING, SENT, FAILED, INVALID, UNKNOWN = (
    Delivery.PENDING,
    Delivery.SENDING,
    Delivery.SENT,
    Delivery.FAILED,
    Delivery.INVALID,
    Delivery.UNKNOWN,
)
# SQL fragments of the states (enum values, never outside input).
_OPEN = sql_list(OPEN)
_UNSENDABLE = sql_list(UNSENDABLE)
_NOT_YET_IMPORTED = sql_list(NOT_YET_IMPORTED)
_NOT_SENT = sql_list((Delivery.FAILED, Delivery.UNKNOWN))  # what `show` lists as a batch's errors
# message_keys' rule in SQLite's GLOB syntax: a stored key MC would refuse.
_INVALID_MESSAGE_KEY = f"(length(message_key) NOT BETWEEN 1 AND {MAX_LENGTH} OR message_key GLOB '*[^{SAFE_CHARS}]*')"

__all__ = [
    "FAILED",
    "INVALID",
    "PENDING",
    "REQUEUE",
    "SENDING",
    "SENT",
    "UNKNOWN",
    "Batch",
    "NewNotification",
    "Notification",
    "NotificationRecord",
    "Outcome",
    "StateFileLost",
    "StateStore",
    "Token",
]


class StateFileLost(McnotifyError):
    """The state file vanished or was replaced under a running process."""


class StateStore:
    def __init__(self, path: Path, memory: bool = False, read_only: bool = False) -> None:
        """`memory`: an empty throw-away state (dry runs before the first real run).
        `read_only`: a dry run's view. Any write raises, and the file, its WAL and its -shm are left byte for byte
        as they were (a preview must not be able to lose or change anything)."""
        self.path = path
        self.location = str(path)
        self.memory = memory
        self.read_only = read_only or memory
        self._scratch: Path | None = None  # a dry run's private copy of a state that has a WAL
        try:
            if memory:
                self.conn = self._connect(":memory:")
            elif read_only:
                from mcnotify.state.perms import tighten

                tighten(path)  # file modes are not the state's bytes: a preview may make them private too
                self.conn = self._open_read_only(path)
            else:
                from mcnotify.state.perms import create_private

                # Private (0600 in a 0700 folder) before SQLite opens it: it holds contacts and a token.
                create_private(path)
                if (links := os.stat(path).st_nlink) > 1:
                    # SQLite names its WAL after the path: another name of this inode would miss the commits in
                    # this name's WAL and resend them (and damage the file). One state, one name.
                    raise ConfigError(
                        f"state file {path} has {links} hard links; SQLite's WAL follows the name, so each name"
                        " would see a different state: remove the other links"
                    )
                self.conn = self._connect(str(path))
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            if self.read_only:
                self._migrate_copy()
                self.conn.execute("PRAGMA query_only=ON")  # a stray write in a preview raises
            else:
                self._migrate()
            # The file this process works on: checked at each transaction, so a state file deleted, emptied or
            # replaced under a running process stops it instead of filling an unlinked inode (or a new file
            # that starts again from watermark 0). A preview writes nothing, so it needs no check.
            self._identity = None if self.read_only else self._file_identity()
            self._held_fds: list[int] = []  # fds of the state file, closed only after the connection
            self._mark: bytes | None = None if self.read_only else self._content_mark()
        except (sqlite3.Error, OSError) as exc:
            raise McnotifyError(f"cannot open state file {path}: {exc}") from None
        self._lock_fd: int | None = None
        self._tried_fd: int | None = None  # the fd a refused lock attempt used (in _held_fds), for the next try
        self.lost = False  # the file was deleted, emptied or replaced under this process: write nothing more

    @staticmethod
    def _connect(target: str, uri: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(target, timeout=30, isolation_level=None, check_same_thread=False, uri=uri)
        conn.row_factory = sqlite3.Row
        return conn

    def _open_read_only(self, path: Path) -> sqlite3.Connection:
        if not path.is_file():
            raise McnotifyError(f"state file {path} does not exist")
        wal = Path(f"{path}-wal")
        if not (wal.exists() and wal.stat().st_size):
            # No WAL: nobody is writing, and `immutable` reads without creating -wal or -shm files.
            return self._connect(f"file:{quote(str(path.resolve()))}?mode=ro&immutable=1", uri=True)
        # A WAL (a run in progress, or one that crashed): any reader of the file would write to its -shm, so
        # read a private copy of the file and its WAL instead; SQLite replays the WAL into the copy.
        self._scratch = Path(tempfile.mkdtemp(prefix="mcnotify-preview-"))
        copy = self._scratch / "state.db"
        shutil.copyfile(path, copy)
        shutil.copyfile(wal, f"{copy}-wal")
        conn = self._connect(str(copy))
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn

    def _migrate_copy(self) -> None:
        """A read-only state from an older release: preview on a migrated copy, never the file."""
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise McnotifyError(f"state file {self.path} is from a newer mcnotify (schema {version})")
        if version == len(MIGRATIONS):
            return
        if not self.memory and self._scratch is None:
            copy = self._connect(":memory:")
            self.conn.backup(copy)
            self.conn.close()
            self.conn = copy
        self._migrate()

    # -- plumbing -----------------------------------------------------------------------------------------
    def close(self) -> None:
        self.unlock()
        if self.lost and getattr(self, "_lost_in_place", False):
            # Someone else's bytes now sit in our inode: closing would checkpoint our WAL into them and corrupt
            # them. An empty WAL gives SQLite nothing to copy (what it held belonged to the lost state anyway).
            with contextlib.suppress(OSError):
                os.truncate(f"{self.path}-wal", 0)
        self.conn.close()
        self._close_lock_fds()  # only now: closing a fd of the state file drops SQLite's locks on it
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.check_identity()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.check_identity()  # gone while we wrote: what we would commit would be lost
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise McnotifyError(f"state file {self.path} is from a newer mcnotify (schema {version})")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self.conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")

    def lock(self) -> None:
        """One run at a time per state file, whatever name it is reached by (a symlink, `..`, a hard link, a
        bind mount, a second config): an advisory flock on the state file's own inode, held for the life of the
        process (the kernel drops it if we die).

        flock and SQLite's POSIX (fcntl) locks do not interact on Linux, but closing ANY fd of a file drops
        all of this process's POSIX locks on it, SQLite's included (in WAL mode a connection holds a shared
        lock on the database file for as long as it is open). So this fd is opened once and closed only
        after SQLite's connection is closed (see close())."""
        if self._lock_fd is not None:
            return
        # A second attempt (waiting for a held lock) reuses the fd of the first: one fd, however long the wait.
        fd = next((f for f in self._held_fds if f == self._tried_fd), None)
        if fd is None:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise McnotifyError(f"cannot open state file {self.path} to lock it: {exc}") from None
            # Kept until close() even if the lock is refused: closing it would drop SQLite's locks on the file.
            self._held_fds.append(fd)
            self._tried_fd = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"another mcnotify run holds the lock on {self.path}; try again later") from None
        self._held_fds.remove(fd)
        self._tried_fd = None
        self._lock_fd = fd

    # -- one process per state file: the follower holds the run lock, owns the pipeline, claims nothing ----------
    shared = False

    def register(self, role: str) -> None:
        self.lock()

    def take_pipeline(self) -> bool:
        return True

    def fenced(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def check_fence(self) -> None:
        pass

    def release_claims(self) -> None:
        pass

    def processes(self) -> list[dict[str, Any]]:
        return []

    def pipeline_owner(self) -> dict[str, Any] | None:
        return None

    def alone(self) -> bool:
        return True

    def note_follower(self, info: dict[str, Any]) -> None:
        with self.transaction():
            self.set_meta(FOLLOWER_META, info)

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
        return self.work(batch_id, channel, statuses, template, after, limit, known_only)

    def unlock(self) -> None:
        """Release the run lock. The fd itself is closed by _close_lock_fds(), after the connection."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            self._held_fds.append(self._lock_fd)
            self._lock_fd = None

    def _close_lock_fds(self) -> None:
        while self._held_fds:
            os.close(self._held_fds.pop())

    def probe_write(self) -> None:
        """Raise unless this process can take the state's write lock (doctor); writes nothing."""
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("ROLLBACK")

    # -- meta ---------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    # -- batches ------------------------------------------------------------------------------------------
    def batch(self, batch_id: int) -> Batch | None:
        row = self.conn.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return None if row is None else Batch(**dict(row))

    def batches(self, *statuses: str, limit: int | None = None) -> list[Batch]:
        sql = "SELECT * FROM batches"
        args: list[Any] = []
        if statuses:
            sql += f" WHERE status IN ({','.join('?' * len(statuses))})"
            args += statuses
        sql += " ORDER BY id DESC" if limit else " ORDER BY id"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        return [Batch(**dict(r)) for r in self.conn.execute(sql, args)]

    def create_batch(self) -> int:
        cur = self.conn.execute(
            "INSERT INTO batches (created_at, status) VALUES (?, ?)", (time.time(), BatchStatus.CLAIMING)
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def update_batch(self, batch_id: int, **fields: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE batches SET {cols} WHERE id = ?", (*fields.values(), batch_id))

    def add_claimed_counts(self, batch_id: int, rows: int, invalid: int) -> None:
        """Rows (and how many of them invalid) just claimed into the batch."""
        self.conn.execute(
            "UPDATE batches SET rows = rows + ?, invalid = invalid + ? WHERE id = ?", (rows, invalid, batch_id)
        )

    # -- steps --------------------------------------------------------------------------------------------
    def step_started(self, batch_id: int, step: str) -> None:
        self.conn.execute(
            "INSERT INTO steps (batch_id, step, status, started_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (batch_id, step) DO UPDATE SET status = excluded.status, "
            "started_at = COALESCE(steps.started_at, excluded.started_at), finished_at = NULL",
            (batch_id, step, StepStatus.RUNNING, time.time()),
        )

    def step_finished(self, batch_id: int, step: str, status: str, detail: str | None = None) -> None:
        now = time.time()
        self.conn.execute(
            "INSERT INTO steps (batch_id, step, status, started_at, finished_at, detail) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (batch_id, step) DO UPDATE SET status = excluded.status, "
            "finished_at = excluded.finished_at, detail = excluded.detail",
            (batch_id, step, status, now, now, detail),
        )

    def end_running_steps(self, status: str, detail: str, batch_id: int | None = None) -> int:
        """Close the steps still marked running (of one batch, or all): the process that ran them ended, or the
        batch was skipped. Only the lock holder calls this, so no other process is running a step."""
        now = time.time()
        where, args = (
            ("status = ?", [StepStatus.RUNNING])
            if batch_id is None
            else (
                "status = ? AND batch_id = ?",
                [StepStatus.RUNNING, batch_id],
            )
        )
        cur = self.conn.execute(
            f"UPDATE steps SET status = ?, finished_at = ?, detail = ? WHERE {where}", (status, now, detail, *args)
        )
        return cur.rowcount

    def steps(self, batch_id: int) -> dict[str, dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM steps WHERE batch_id = ?", (batch_id,))
        return {r["step"]: dict(r) for r in rows}

    # -- notifications ------------------------------------------------------------------------------------
    def known_ids(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            sql = f"SELECT notification_id FROM notifications WHERE notification_id IN ({','.join('?' * len(chunk))})"
            found.update(r[0] for r in self.conn.execute(sql, chunk))
        return found

    def add_notifications(self, batch_id: int, rows: Iterable[NewNotification]) -> None:
        now = time.time()
        self.conn.executemany(
            "INSERT INTO notifications (notification_id, batch_id, template, channel, subscriber_key, address,"
            " raw_contact, attributes, from_name, status, reason, message_key, updated_at, event_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    n.notification_id,
                    batch_id,
                    n.template,
                    n.channel,
                    n.subscriber_key,
                    n.address,
                    n.raw_contact,
                    n.attributes,
                    n.from_name,
                    n.status,
                    n.reason,
                    n.message_key,
                    now,
                    n.event_at,
                )
                for n in rows
            ],
        )

    _SENDABLE_EMAIL = f"batch_id = ? AND channel = 'email' AND status NOT IN {_UNSENDABLE}"

    def resolve_email_conflicts(self, batch_id: int) -> list[str]:
        """MC keeps one email per subscriber key, and the newest one wins: within the batch (one subscriber file),
        the newest row's email becomes every row's. Returns the subscriber keys whose address changed."""
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
            self.conn.execute(
                "UPDATE notifications SET address = (SELECT newest.address FROM notifications AS newest"
                "  WHERE newest.batch_id = notifications.batch_id AND newest.channel = 'email'"
                f"   AND newest.status NOT IN {_UNSENDABLE}"
                "   AND newest.subscriber_key = notifications.subscriber_key"
                "  ORDER BY newest.seq DESC LIMIT 1)"
                f" WHERE {self._SENDABLE_EMAIL} AND subscriber_key IN ({','.join('?' * len(chunk))})",
                (batch_id, *chunk),
            )
        return keys

    def adopt_older_pending_emails(self, batch_id: int) -> list[str]:
        """Run just before this batch's subscriber file goes up (no import is in flight then). An email of an
        earlier batch still pending for an older address moves into this batch with the newest address: once this
        import lands MC holds only the new one, and a send to the old would be refused. Done at upload, not at
        claim, so an email whose own import is still running goes to the address MC gets from it as soon as that
        import completes, instead of waiting for the next one too. Returns the subscriber keys moved."""
        # Driven from the (few) pending emails of earlier batches, through the partial index of pending rows,
        # each looked up in this batch by key: never a scan of this batch against every earlier row.
        moved = [
            r[0]
            for r in self.conn.execute(
                "SELECT DISTINCT older.subscriber_key FROM notifications AS older INDEXED BY notifications_pending"
                f" WHERE older.status = '{Delivery.PENDING}' AND older.channel = 'email' AND older.batch_id < ?"
                " AND EXISTS (SELECT 1 FROM notifications AS newer WHERE newer.batch_id = ?"
                "  AND newer.channel = 'email' AND newer.subscriber_key = older.subscriber_key"
                f"  AND newer.status NOT IN {_UNSENDABLE} AND newer.address != older.address)",
                (batch_id, batch_id),
            )
        ]
        for start in range(0, len(moved), 500):
            chunk = moved[start : start + 500]
            self.conn.execute(
                "UPDATE notifications SET batch_id = ?, updated_at = ?, address = (SELECT newer.address"
                "  FROM notifications AS newer WHERE newer.batch_id = ? AND newer.channel = 'email'"
                f"   AND newer.status NOT IN {_UNSENDABLE}"
                "   AND newer.subscriber_key = notifications.subscriber_key"
                "  ORDER BY newer.seq DESC LIMIT 1)"
                f" WHERE batch_id < ? AND channel = 'email' AND status = '{Delivery.PENDING}'"
                f" AND subscriber_key IN ({','.join('?' * len(chunk))})",
                (batch_id, time.time(), batch_id, batch_id, *chunk),
            )
        return sorted(moved)

    # An email MC can take now: its subscriber key is in the ledger with this very address.
    _KNOWN = (
        "EXISTS (SELECT 1 FROM contacts AS c WHERE c.subscriber_key = notifications.subscriber_key"
        " AND c.email = notifications.address)"
    )

    def subscribers(self, batch_id: int, new_only: bool = False) -> Iterator[tuple[str, str]]:
        """(subscriber key, email) once per key, streamed in key order; run after resolve_email_conflicts.
        `new_only`: only the contacts MC does not hold with that email (new members, changed emails)."""
        unknown = f" AND NOT {self._KNOWN}" if new_only else ""
        for key, address, _ in self.conn.execute(
            f"SELECT subscriber_key, address, MAX(seq) FROM notifications WHERE {self._SENDABLE_EMAIL}{unknown}"
            " GROUP BY subscriber_key ORDER BY subscriber_key",
            (batch_id,),
        ):
            yield key, address

    # -- the contact ledger: what MC holds ----------------------------------------------------------------
    def learn_batch_contacts(self, batch_id: int) -> int:
        """A batch's import completed: MC now holds each of its subscribers with the email the file carried."""
        cur = self.conn.execute(
            "INSERT OR REPLACE INTO contacts (subscriber_key, email, learned_from, updated_at)"
            f" SELECT subscriber_key, address, 'import of batch ' || batch_id, ? FROM notifications"
            f" WHERE {self._SENDABLE_EMAIL} GROUP BY subscriber_key HAVING seq = MAX(seq)",
            (time.time(), batch_id),
        )
        return max(cur.rowcount, 0)

    def learn_contact(self, subscriber_key: str, email: str, learned_from: str) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO contacts (subscriber_key, email, learned_from, updated_at) VALUES (?, ?, ?, ?)",
            (subscriber_key, email, learned_from, time.time()),
        )

    def forget_contacts(self, subscriber_keys: Iterable[str]) -> None:
        """MC said it does not hold these (a refused send): the next subscriber file carries them again."""
        self.conn.executemany("DELETE FROM contacts WHERE subscriber_key = ?", [(k,) for k in subscriber_keys])

    def requeue_for_import(self, seqs: Sequence[int], reason: str, limit: int = 3) -> tuple[int, int]:
        """Emails MC refused because it does not hold their subscriber with that address: back to pending in the
        open batch (claimed, not yet uploaded; a new one if none), so the next subscriber file carries them and
        they are sent after its import. One refused `limit` times already is failed with `reason` instead (an
        address MC's import keeps rejecting). Returns (requeued, failed)."""
        failed = self.conn.executemany(
            f"UPDATE notifications SET status = '{Delivery.FAILED}', reason = ?, updated_at = ?"
            " WHERE seq = ? AND requeued >= ?",
            [(f"{reason} (after {limit} imports)", time.time(), s, limit) for s in seqs],
        ).rowcount
        row = self.conn.execute(
            "SELECT id FROM batches WHERE status IN (?, ?) ORDER BY id DESC LIMIT 1",
            (BatchStatus.CLAIMING, BatchStatus.CLAIMED),
        ).fetchone()
        if row is not None:
            batch_id = int(row[0])
        else:
            batch_id = self.create_batch()
            self.update_batch(batch_id, status=BatchStatus.CLAIMED)
        requeued = self.conn.executemany(
            f"UPDATE notifications SET batch_id = ?, status = '{Delivery.PENDING}', requeued = requeued + 1,"
            f" updated_at = ? WHERE seq = ? AND status != '{Delivery.FAILED}'",
            [(batch_id, time.time(), s) for s in seqs],
        ).rowcount
        return max(requeued, 0), max(failed, 0)

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
        """Notifications to send, oldest first; keyset-paged by `after` (a seq) and `limit`. `known_only`: only
        emails whose subscriber MC already holds with that address."""
        sql = (
            "SELECT seq, notification_id, batch_id, template, channel, subscriber_key, address, attributes,"
            " from_name, status, message_key FROM notifications WHERE batch_id = ? AND channel = ?"
            f" AND status IN ({','.join('?' * len(statuses))}) AND seq > ?"
            + (f" AND {self._KNOWN}" if known_only else "")
        )
        args: list[Any] = [batch_id, channel, *statuses, after]
        if template is not None:
            sql += " AND template = ?"
            args.append(template)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        out = []
        for r in self.conn.execute(sql, args):
            d = dict(r)
            d["attributes"] = json.loads(d["attributes"])
            out.append(Notification(**d))
        return out

    def templates(self, batch_id: int, channel: str, known_only: bool = False) -> list[str]:
        known = f" AND {self._KNOWN}" if known_only else ""
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT DISTINCT template FROM notifications WHERE batch_id = ? AND channel = ?"
                f" AND status IN {_OPEN}{known}",
                (batch_id, channel),
            )
        ]

    def readdress_to_newest(self, batch_id: int) -> int:
        """Pending emails of this batch go to their subscriber's newest address, when a later batch holds a newer
        one (MC keeps one email per key; the newest import wins). A row whose newest address is still on its
        way to MC (a later batch not yet imported) moves into that batch, to be sent after its import."""
        newest = (
            "SELECT newer.{col} FROM notifications AS newer WHERE newer.subscriber_key = notifications.subscriber_key"
            f" AND newer.channel = 'email' AND newer.status NOT IN {_UNSENDABLE}"
            " AND newer.batch_id > notifications.batch_id ORDER BY newer.seq DESC LIMIT 1"
        )
        mine = f"batch_id = ? AND channel = 'email' AND status = '{Delivery.PENDING}'"
        cur = self.conn.execute(
            f"UPDATE notifications SET address = ({newest.format(col='address')}), updated_at = ?"
            f" WHERE {mine} AND EXISTS ({newest.format(col='address')})"
            f" AND address != ({newest.format(col='address')})",
            (time.time(), batch_id),
        )
        changed = max(cur.rowcount, 0)
        self.conn.execute(
            f"UPDATE notifications SET batch_id = ({newest.format(col='batch_id')})"
            f" WHERE {mine} AND ({newest.format(col='batch_id')}) IN"
            f" (SELECT id FROM batches WHERE status IN {_NOT_YET_IMPORTED})",
            (batch_id,),
        )
        return changed

    def open_by_template(self, batch_id: int | None = None) -> dict[tuple[str, str], int]:
        """{(template, channel): n} of notifications still to send, in one batch or all."""
        sql = f"SELECT template, channel, COUNT(*) FROM notifications WHERE status IN {_OPEN}"
        args: tuple[Any, ...] = ()
        if batch_id is not None:
            sql += " AND batch_id = ?"
            args = (batch_id,)
        else:  # only batches with work left: a done batch has none, and there may be millions of its rows
            sql += f" AND batch_id IN (SELECT id FROM batches WHERE status != '{BatchStatus.DONE}')"
        return {(r[0], r[1]): r[2] for r in self.conn.execute(sql + " GROUP BY template, channel", args)}

    def mark(self, seqs: Sequence[int], status: str) -> int:
        now = time.time()
        cur = self.conn.executemany(
            "UPDATE notifications SET status = ?, attempts = attempts + 1, updated_at = ? WHERE seq = ?",
            [(status, now, s) for s in seqs],
        )
        return max(cur.rowcount, 0)

    def release(self, seqs: Iterable[int]) -> int:
        """Rows marked 'sending' whose request never left this process go back to 'pending'."""
        cur = self.conn.executemany(
            f"UPDATE notifications SET status = '{Delivery.PENDING}', attempts = attempts - 1"
            f" WHERE seq = ? AND status = '{Delivery.SENDING}'",
            [(s,) for s in seqs],
        )
        return max(cur.rowcount, 0)

    def unknown_reasons(self) -> dict[str, int]:
        """Why notifications stay 'unknown': {reason: n}."""
        return {
            str(r[0]): r[1]
            for r in self.conn.execute(
                "SELECT COALESCE(reason, 'no reason recorded'), COUNT(*) FROM notifications"
                f" WHERE status = '{Delivery.UNKNOWN}' GROUP BY 1 ORDER BY 2 DESC"
            )
        }

    def record(self, outcomes: Iterable[Outcome]) -> None:
        now = time.time()
        self.conn.executemany(
            "UPDATE notifications SET status = ?, error_code = ?, reason = ?, updated_at = ?,"
            f" sent_at = CASE WHEN ? = '{Delivery.SENT}' THEN ? ELSE sent_at END WHERE seq = ?",
            [(o.status, o.error_code, o.reason, now, o.status, now, o.seq) for o in outcomes],
        )

    def latency(self, batch_id: int | None = None, since: float | None = None) -> dict[str, dict[str, float]]:
        """Event (the source's created_at) -> accepted by MC, per channel: {channel: {count, p50, p95, max}} in
        seconds, over one batch or what was accepted since `since`; only rows whose event time is known."""
        where, args = "sent_at IS NOT NULL AND event_at IS NOT NULL", list[float]()
        if batch_id is not None:
            where += " AND batch_id = ?"
            args.append(batch_id)
        if since is not None:
            where += " AND sent_at >= ?"
            args.append(since)
        out: dict[str, dict[str, float]] = {}
        for channel, count in self.conn.execute(
            f"SELECT channel, COUNT(*) FROM notifications WHERE {where} GROUP BY channel", args
        ).fetchall():

            def at(fraction: float, channel: str = channel, count: int = count) -> float:
                row = self.conn.execute(
                    f"SELECT sent_at - event_at AS d FROM notifications WHERE {where} AND channel = ?"
                    " ORDER BY d LIMIT 1 OFFSET ?",
                    (*args, channel, min(count - 1, int(fraction * count))),
                ).fetchone()
                return round(max(0.0, float(row[0])), 3)

            out[channel] = {"count": count, "p50": at(0.5), "p95": at(0.95), "max": at(1.0)}
        return out

    def latency_histogram(self, bounds: Sequence[float]) -> dict[str, tuple[list[int], int, float]]:
        """Event -> accepted, per channel, as a cumulative histogram: {channel: ([count <= bound...], count,
        sum)}, in one pass over the accepted notifications whose event time is known."""
        cases = ", ".join(f"SUM(d <= {float(b)!r})" for b in bounds)
        out: dict[str, tuple[list[int], int, float]] = {}
        for row in self.conn.execute(
            f"SELECT channel, {cases}, COUNT(*), TOTAL(d) FROM (SELECT channel, MAX(0, sent_at - event_at) AS d"
            " FROM notifications WHERE sent_at IS NOT NULL AND event_at IS NOT NULL) GROUP BY channel"
        ):
            out[str(row[0])] = ([int(x or 0) for x in row[1:-2]], int(row[-2]), float(row[-1]))
        return out

    def oldest_pending_event(self) -> float | None:
        """The event time of the oldest notification still to send (its age is how late the pipeline runs)."""
        row = self.conn.execute(
            f"SELECT MIN(event_at) FROM notifications WHERE status IN {_OPEN}"
            f" AND batch_id IN (SELECT id FROM batches WHERE status != '{BatchStatus.DONE}')"
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def fail_channel(self, batch_id: int, channel: str, reason: str) -> int:
        cur = self.conn.execute(
            f"UPDATE notifications SET status = '{Delivery.FAILED}', reason = ?, updated_at = ?"
            f" WHERE batch_id = ? AND channel = ? AND status IN {_OPEN}",
            (reason, time.time(), batch_id, channel),
        )
        return cur.rowcount

    def counts(self, batch_id: int | None = None) -> dict[tuple[str | None, str], int]:
        """{(channel, status): n} for one batch or all."""
        sql = "SELECT channel, status, COUNT(*) FROM notifications"
        args: tuple[Any, ...] = ()
        if batch_id is not None:
            sql += " WHERE batch_id = ?"
            args = (batch_id,)
        sql += " GROUP BY channel, status"
        return {(r[0], r[1]): r[2] for r in self.conn.execute(sql, args)}

    def open_work(self, batch_id: int, channel: str | None = None, known_only: bool = False) -> int:
        sql = f"SELECT COUNT(*) FROM notifications WHERE batch_id = ? AND status IN {_OPEN}"
        args: tuple[Any, ...] = (batch_id,)
        if channel is not None:
            sql += " AND channel = ?"
            args += (channel,)
        if known_only:
            sql += f" AND {self._KNOWN}"
        return int(self.conn.execute(sql, args).fetchone()[0])

    def invalid_rows(self, batch_id: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        sql = (
            "SELECT batch_id, notification_id, template, channel, subscriber_key, raw_contact, reason"
            f" FROM notifications WHERE status = '{Delivery.INVALID}'"
        )
        args: list[Any] = []
        if batch_id is not None:
            sql += " AND batch_id = ?"
            args.append(batch_id)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        return [dict(r) for r in self.conn.execute(sql, args)]

    def retry_failed(self, batch_id: int, channels: Sequence[str]) -> int:
        """The batch's failed notifications of these channels back to pending, their error forgotten."""
        cur = self.conn.execute(
            f"UPDATE notifications SET status = '{Delivery.PENDING}', error_code = NULL, reason = NULL,"
            f" updated_at = ? WHERE batch_id = ? AND status = '{Delivery.FAILED}'"
            f" AND channel IN ({','.join('?' * len(channels))})",
            (time.time(), batch_id, *channels),
        )
        return cur.rowcount

    def skip_open(self, batch_id: int, reason: str) -> int:
        """What the batch still has to send is skipped with `reason`; sent and unknown rows are left alone."""
        cur = self.conn.execute(
            f"UPDATE notifications SET status = '{Delivery.SKIPPED}', reason = ?, updated_at = ?"
            f" WHERE batch_id = ? AND status IN {_OPEN}",
            (reason, time.time(), batch_id),
        )
        return cur.rowcount

    def bad_message_keys(self, channels: Sequence[str]) -> tuple[int, int | None]:
        """(how many, first batch) of the notifications still to send on these channels whose stored messageKey
        MC would refuse (see message_keys: keys are fixed at claim time)."""
        row = self.conn.execute(
            f"SELECT count(*), min(batch_id) FROM notifications WHERE status IN {_OPEN}"
            f" AND channel IN ({','.join('?' * len(channels))}) AND message_key IS NOT NULL"
            f" AND {_INVALID_MESSAGE_KEY}",
            tuple(channels),
        ).fetchone()
        return int(row[0]), None if row[1] is None else int(row[1])

    def errors(self, batch_id: int, limit: int = 5) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self.conn.execute(
                "SELECT notification_id, channel, status, error_code, reason FROM notifications"
                f" WHERE batch_id = ? AND status IN {_NOT_SENT} ORDER BY seq LIMIT ?",
                (batch_id, limit),
            )
        ]

    # -- reads for views and tests -------------------------------------------------------------------------
    def status_counts(self, channel: str | None = None) -> dict[str, int]:
        """{status: n} over every notification (of one channel)."""
        sql, args = "SELECT status, COUNT(*) FROM notifications", list[Any]()
        if channel is not None:
            sql += " WHERE channel = ?"
            args.append(channel)
        return {str(r[0]): int(r[1]) for r in self.conn.execute(sql + " GROUP BY status", args)}

    def notifications(
        self, batch_id: int | None = None, channel: str | None = None, status: str | None = None
    ) -> list[NotificationRecord]:
        """Every stored column of the notifications (of one batch, channel, status), in arrival order."""
        sql, args = "SELECT * FROM notifications WHERE 1 = 1", list[Any]()
        for column, value in (("batch_id", batch_id), ("channel", channel), ("status", status)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        out = []
        for r in self.conn.execute(sql + " ORDER BY seq", args):
            # (Columns a backend adds for its own bookkeeping, the MariaDB send claims, are not part of a record.)
            d = {k: v for k, v in dict(r).items() if k in _RECORD_FIELDS}
            d["attributes"] = json.loads(d["attributes"])
            out.append(NotificationRecord(**d))
        return out

    def contacts(self) -> dict[str, str]:
        """The contact ledger: {subscriber key: the email MC holds}."""
        return {str(r[0]): str(r[1]) for r in self.conn.execute("SELECT subscriber_key, email FROM contacts")}

    # -- token --------------------------------------------------------------------------------------------
    def token_cache(self) -> SqliteTokenCache | NoTokenCache:
        """Where the MC token is kept between runs. A preview's state (read-only or in memory) keeps none: it
        must not write, and its client never asks MC for a token anyway."""
        return NoTokenCache() if self.read_only else SqliteTokenCache(self.path)

    # -- runs ---------------------------------------------------------------------------------------------
    def run_started(self, command: str) -> int:
        cur = self.conn.execute(
            "INSERT INTO runs (command, host, pid, started_at) VALUES (?, ?, ?, ?)",
            (command, socket.gethostname(), os.getpid(), time.time()),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def run_finished(self, run_id: int, exit_code: int, error: str | None, counts: dict[str, Any]) -> None:
        self.conn.execute(
            "UPDATE runs SET finished_at = ?, exit_code = ?, error = ?, counts = ? WHERE id = ?",
            (time.time(), exit_code, error, json.dumps(counts), run_id),
        )

    def runs(self, limit: int = 20, command: str | None = None, result: str | None = None) -> list[dict[str, Any]]:
        """Newest first. `result`: ok (0), temporary (75), failed (anything else), running (not finished)."""
        sql, args = "SELECT * FROM runs WHERE 1 = 1", list[Any]()
        if command:
            sql += " AND command = ?"
            args.append(command)
        if result == "ok":
            sql += " AND exit_code = 0"
        elif result == "temporary":
            sql += " AND exit_code = 75"
        elif result == "failed":
            sql += " AND exit_code NOT IN (0, 75)"
        elif result == "running":
            sql += " AND exit_code IS NULL"
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [dict(r) for r in self.conn.execute(sql, args)]

    def last_runs(self) -> list[dict[str, Any]]:
        """Per command: its last run's exit code and duration, and when it last succeeded."""
        return [
            dict(r)
            for r in self.conn.execute(
                "SELECT command,"
                " (SELECT MAX(finished_at) FROM runs s WHERE s.command = r.command AND s.exit_code = 0)"
                "   AS last_success,"
                " (SELECT exit_code FROM runs l WHERE l.command = r.command AND l.finished_at IS NOT NULL"
                "   ORDER BY l.id DESC LIMIT 1) AS exit_code,"
                " (SELECT finished_at - started_at FROM runs l WHERE l.command = r.command"
                "   AND l.finished_at IS NOT NULL ORDER BY l.id DESC LIMIT 1) AS duration"
                " FROM runs r GROUP BY command ORDER BY command"
            )
        ]

    # -- source / claim (issue 9) --------------------------------------------------------------------------
    def _file_identity(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def _content_mark(self) -> bytes | None:
        """A random application_id in the SQLite header marks this state's content, so a file copied over it in
        place (`cp`, `rsync --inplace`: same inode) is noticed too. Read through an fd opened once and kept
        (closing an fd of the file would drop SQLite's locks on it). None when the header on disk does not
        carry the mark yet (a checkpoint was busy): the next process checks."""
        if self.conn.execute("PRAGMA application_id").fetchone()[0] == 0:
            self.conn.execute(f"PRAGMA application_id = {secrets.randbits(31) | 1}")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the header reaches the file itself
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._held_fds.append(fd)
        self._mark_fd = fd
        expected = self.conn.execute("PRAGMA application_id").fetchone()[0].to_bytes(4, "big")
        return expected if os.pread(fd, 4, 68) == expected else None

    def check_identity(self) -> None:
        """Stop when the state file is no longer the one this process opened."""
        if self._identity is None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            problem = "was deleted"
        else:
            if (st.st_dev, st.st_ino) != self._identity:
                problem = "was replaced"
            elif st.st_size == 0:
                problem = "was emptied"
            elif self._mark is not None and os.pread(self._mark_fd, 4, 68) != self._mark:
                problem = "was overwritten with other content"
            else:
                return
        self.lost = True
        self._lost_in_place = problem in ("was emptied", "was overwritten with other content")
        raise StateFileLost(
            f"state file {self.path} {problem} while mcnotify was running; stopped without recording more"
            " (a new state file sends nothing older than source.max_age)"
        )

    def note_import_start(self, batch_id: int) -> None:
        """Before the import's start request: a crash from here on is resolved by a look-up, not a second start."""
        self.update_batch(batch_id, import_status="starting")
        self.set_meta(f"import.start_attempt.{batch_id}", time.time())

    def import_start_attempt(self, batch_id: int) -> float | None:
        value = self.get_meta(f"import.start_attempt.{batch_id}")
        return float(value) if isinstance(value, int | float) else None

    def forget_import_start(self, batch_id: int, import_status: str | None = None) -> None:
        self.conn.execute("DELETE FROM meta WHERE key = ?", (f"import.start_attempt.{batch_id}",))
        self.update_batch(batch_id, import_status=import_status)

    def import_task_ids(self) -> set[str]:
        """Every import task a batch has recorded: none of them can be another batch's lost start."""
        return {r[0] for r in self.conn.execute("SELECT import_task_id FROM batches WHERE import_task_id IS NOT NULL")}


if TYPE_CHECKING:
    _: type[Store] = StateStore  # mypy checks that the SQLite store implements the whole interface
