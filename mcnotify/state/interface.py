"""What the state is to the rest of mcnotify: the records it hands out and takes in, and `Store`, every named
operation the steps, CLI, report, hooks and doctor use. Nothing outside mcnotify/state/ speaks SQL; a second
backend (MariaDB) implements `Store` and the steps stay as they are."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mcnotify.state.tokens import Token

# An outcome, not a state: MC refused the send because it does not hold the subscriber with that email; the
# notification goes back to pending, into the next subscriber file.
REQUEUE = "requeue"


@dataclass(frozen=True)
class Batch:
    id: int
    created_at: float
    status: str
    rows: int
    invalid: int
    conflicts: int
    csv_rows: int | None
    remote_path: str | None
    uploaded_at: float | None
    import_task_id: str | None
    import_status: str | None
    import_total: int | None
    import_ok: int | None
    import_errors: int | None
    import_duplicates: int | None
    import_done_at: float | None


@dataclass(frozen=True)
class Notification:
    seq: int
    notification_id: str
    batch_id: int
    template: str
    channel: str | None
    subscriber_key: str | None
    address: str | None
    attributes: dict[str, Any]
    from_name: str | None
    status: str
    message_key: str | None


@dataclass(frozen=True)
class NotificationRecord:
    """A notification as stored, every column (views and tests; the send path reads `Notification`)."""

    seq: int
    notification_id: str
    batch_id: int
    template: str
    channel: str | None
    subscriber_key: str | None
    address: str | None
    raw_contact: str | None
    attributes: dict[str, Any]
    from_name: str | None
    status: str
    reason: str | None
    error_code: str | None
    message_key: str | None
    attempts: int
    updated_at: float | None
    requeued: int
    event_at: float | None
    sent_at: float | None


@dataclass(slots=True)  # not frozen: a million of these are built in a sync, and frozen init is slow
class NewNotification:
    notification_id: str
    template: str
    channel: str | None
    subscriber_key: str | None
    address: str | None
    raw_contact: str | None
    attributes: str  # JSON object, encoded where the row was read (maybe the worker process)
    from_name: str | None
    status: str  # pending or invalid
    reason: str | None
    message_key: str | None
    cursor: Any = None  # the source's cursor value for this row (not stored)
    event_at: float | None = None  # the source's created_at as a Unix time, when the query returns one

    # How a row crosses the pipe from sync's reading process: plain tuples pickle several times faster.
    def to_tuple(self) -> tuple[Any, ...]:
        return _NEW_NOTIFICATION_FIELDS(self)  # type: ignore[no-any-return]

    @classmethod
    def from_tuple(cls, values: tuple[Any, ...]) -> NewNotification:
        return cls(*values)


_NEW_NOTIFICATION_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(NewNotification)))


@dataclass(frozen=True)
class Outcome:
    """What one send attempt decided for one notification."""

    seq: int
    status: str  # a notification status, or REQUEUE
    error_code: str | None = None
    reason: str | None = None
    # (subscriber key, email): MC holds it (an accepted triggered send), or, with REQUEUE, does not
    contact: tuple[str, str] | None = None


class TokenCache(Protocol):
    """Where the MC token is kept between runs, keyed by what it was issued for (an HMAC, never the secret).
    Safe to call from any thread, and independent of the store's transactions."""

    def load(self, issued_for: str) -> Token | None: ...

    def save(self, token: Token | None, issued_for: str = "") -> None: ...


class Store(Protocol):
    """The state. Writes happen inside `transaction()` (one at a time per state, all or nothing)."""

    path: Path  # SQLite: the state file
    location: str  # where the state lives, for messages (a file, or a database URL without its userinfo)
    read_only: bool  # a dry run's view: any write raises
    lost: bool  # the state was replaced under this process: write nothing more

    @property
    def shared(self) -> bool:
        """Other processes may work on this state now (MariaDB followers): nothing is "ours alone"."""
        ...

    # -- plumbing
    def close(self) -> None: ...
    def transaction(self) -> AbstractContextManager[None]: ...
    def lock(self) -> None: ...
    def probe_write(self) -> None: ...
    def token_cache(self) -> TokenCache: ...

    # -- several processes on one state (MariaDB); SQLite: one process, these fall back to the run lock
    def register(self, role: str) -> None: ...
    def take_pipeline(self) -> bool: ...
    def fenced(self) -> AbstractContextManager[None]: ...
    def check_fence(self) -> None: ...
    def release_claims(self) -> None: ...
    def processes(self) -> list[dict[str, Any]]: ...
    def pipeline_owner(self) -> dict[str, Any] | None: ...
    def alone(self) -> bool:
        """No other live process shares the state now (always so on the file)."""
        ...

    def note_follower(self, info: dict[str, Any]) -> None:
        """What this follower is doing, for `status`: one line on SQLite, its own process row when shared."""
        ...

    def claim_work(
        self,
        batch_id: int,
        channel: str,
        statuses: Sequence[str],
        template: str | None = None,
        after: int = 0,
        limit: int = -1,
        known_only: bool = False,
    ) -> list[Notification]: ...

    # -- meta
    def get_meta(self, key: str) -> Any: ...
    def set_meta(self, key: str, value: Any) -> None: ...

    # -- batches and their steps
    def batch(self, batch_id: int) -> Batch | None: ...
    def batches(self, *statuses: str, limit: int | None = None) -> list[Batch]: ...
    def create_batch(self) -> int: ...
    def update_batch(self, batch_id: int, **fields: Any) -> None: ...
    def add_claimed_counts(self, batch_id: int, rows: int, invalid: int) -> None: ...
    def step_started(self, batch_id: int, step: str) -> None: ...
    def step_finished(self, batch_id: int, step: str, status: str, detail: str | None = None) -> None: ...
    def end_running_steps(self, status: str, detail: str, batch_id: int | None = None) -> int: ...
    def steps(self, batch_id: int) -> dict[str, dict[str, Any]]: ...
    def note_import_start(self, batch_id: int) -> None: ...
    def import_start_attempt(self, batch_id: int) -> float | None: ...
    def forget_import_start(self, batch_id: int, import_status: str | None = None) -> None: ...
    def import_task_ids(self) -> set[str]: ...

    # -- claiming
    def known_ids(self, ids: Sequence[str]) -> set[str]: ...
    def add_notifications(self, batch_id: int, rows: Iterable[NewNotification]) -> None: ...
    def resolve_email_conflicts(self, batch_id: int) -> list[str]: ...
    def adopt_older_pending_emails(self, batch_id: int) -> list[str]: ...
    def subscribers(self, batch_id: int, new_only: bool = False) -> Iterator[tuple[str, str]]: ...

    # -- the contact ledger
    def learn_batch_contacts(self, batch_id: int) -> int: ...
    def learn_contact(self, subscriber_key: str, email: str, learned_from: str) -> None: ...
    def forget_contacts(self, subscriber_keys: Iterable[str]) -> None: ...
    def requeue_for_import(self, seqs: Sequence[int], reason: str, limit: int = 3) -> tuple[int, int]: ...

    # -- sending
    def work(
        self,
        batch_id: int,
        channel: str,
        statuses: Sequence[str],
        template: str | None = None,
        after: int = 0,
        limit: int = -1,
        known_only: bool = False,
    ) -> list[Notification]: ...
    def templates(self, batch_id: int, channel: str, known_only: bool = False) -> list[str]: ...
    def readdress_to_newest(self, batch_id: int) -> int: ...
    def open_by_template(self, batch_id: int | None = None) -> dict[tuple[str, str], int]: ...
    def open_work(self, batch_id: int, channel: str | None = None, known_only: bool = False) -> int: ...
    def mark(self, seqs: Sequence[int], status: str) -> int: ...
    def release(self, seqs: Iterable[int]) -> int: ...
    def record(self, outcomes: Iterable[Outcome]) -> None: ...
    def fail_channel(self, batch_id: int, channel: str, reason: str) -> int: ...

    # -- an operator's levers
    def retry_failed(self, batch_id: int, channels: Sequence[str]) -> int: ...
    def skip_open(self, batch_id: int, reason: str) -> int: ...

    # -- views (status, show, invalid, metrics, doctor) and tests
    def counts(self, batch_id: int | None = None) -> dict[tuple[str | None, str], int]: ...
    def status_counts(self, channel: str | None = None) -> dict[str, int]: ...
    def notifications(
        self, batch_id: int | None = None, channel: str | None = None, status: str | None = None
    ) -> list[NotificationRecord]: ...
    def contacts(self) -> dict[str, str]: ...
    def unknown_reasons(self) -> dict[str, int]: ...
    def invalid_rows(self, batch_id: int | None = None, limit: int = 1000) -> list[dict[str, Any]]: ...
    def errors(self, batch_id: int, limit: int = 5) -> list[dict[str, Any]]: ...
    def bad_message_keys(self, channels: Sequence[str]) -> tuple[int, int | None]: ...
    def latency(self, batch_id: int | None = None, since: float | None = None) -> dict[str, dict[str, float]]: ...
    def latency_histogram(self, bounds: Sequence[float]) -> dict[str, tuple[list[int], int, float]]: ...
    def oldest_pending_event(self) -> float | None: ...

    # -- runs
    def run_started(self, command: str) -> int: ...
    def run_finished(self, run_id: int, exit_code: int, error: str | None, counts: dict[str, Any]) -> None: ...
    def runs(self, limit: int = 20, command: str | None = None, result: str | None = None) -> list[dict[str, Any]]: ...
    def last_runs(self) -> list[dict[str, Any]]: ...
