"""Runs one command against the state: opens it, takes the lock, records the run, always closes.

A dry run opens no lock, records no run and, when no state file exists yet, works on an empty in-memory one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from mcnotify import hooks, logs
from mcnotify.config import Settings
from mcnotify.errors import EXIT_TEMPORARY, ConfigError, LeaseHeld, LockHeld, McnotifyError
from mcnotify.redact import scrub
from mcnotify.state import Store, open_store
from mcnotify.state.states import StepStatus
from mcnotify.steps import Context

T = TypeVar("T")


@contextmanager
def open_context(
    settings: Settings,
    *,
    dry_run: bool = False,
    lock: bool = True,
    progress: Callable[[str], None] | None = None,
    meter: Callable[[str, int, int], None] | None = None,
    role: str | None = None,
) -> Iterator[Context]:
    """`role`: a follower registers as one of the processes sharing the state instead of taking the run lock
    (on SQLite that is the run lock: one process per file)."""
    store = open_store(settings, read_only=dry_run)
    ctx = Context(settings, store, dry_run=dry_run)
    if progress:
        ctx.progress = progress
    if meter:
        ctx.meter = meter
    try:
        if lock and not dry_run:
            _lock(store, role)
            # Steps left "running" by a process that was killed: nobody else holds the lock, so none runs now.
            # (Followers sharing a database: the others' steps may be running now.)
            if not store.shared:
                with store.transaction():
                    store.end_running_steps(StepStatus.INTERRUPTED, "its process ended without recording how (killed?)")
        yield ctx
    finally:
        ctx.close()
        store.close()


# The commands a timer or the follower runs: their runs ping the health check and alert on failure.
PIPELINE = frozenset(("sync", "wait-import", "send-email", "send-sms", "run-all"))
LOCK_WAIT = "MCNOTIFY_LOCK_WAIT"  # seconds to wait for a held lock (the chained send units: one after the other)


def _lock(store: Store, role: str | None = None) -> None:
    """Take the run lock; with MCNOTIFY_LOCK_WAIT set, wait that long for a run that holds it (a stop request
    ends the wait). Otherwise, or when the wait runs out: exit 75, naming the holder."""
    from mcnotify import stop

    try:
        wait = max(0.0, float(os.environ.get(LOCK_WAIT) or 0))
    except ValueError:
        raise ConfigError(f"{LOCK_WAIT} must be a number of seconds") from None
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            store.register(role) if role else store.lock()
            return
        except LockHeld as exc:
            waits_for_run = role is not None and isinstance(exc, LeaseHeld)
            if waits_for_run:
                # A follower on a shared database and a one-shot run holding it (a timer's, an operator's): that
                # run ends soon, and the follower starts then rather than exit (and be restarted, backing off).
                if not told:
                    logging.getLogger(__name__).warning("%s", exc)
                    told = True
            elif time.monotonic() >= deadline:
                if isinstance(exc, LeaseHeld):  # the lease row names its holder already
                    raise
                raise LockHeld(_lock_holder(store) or str(exc)) from None
        # Stopped on a stop request. A follower waiting for a one-shot run looks once a second (a locking read).
        stop.sleep(1.0 if waits_for_run else min(0.2, max(0.0, deadline - time.monotonic())))


def _lock_holder(store: Store) -> str | None:
    """Who holds the run lock, from the runs it recorded (newest unfinished one whose process may live)."""
    from mcnotify.report import process_alive

    try:
        unfinished = store.runs(limit=20, result="running")
    except (sqlite3.Error, McnotifyError):
        return None
    for run in unfinished:
        if process_alive(run["host"], run["pid"]) is not False:
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run["started_at"]))
            return (
                f"another run holds the lock on {store.path}: {run['command']}, pid {run['pid']} on {run['host']},"
                f" since {since}; nothing done, the next run goes ahead"
            )
    return f"another run holds the lock on {store.path} (it has not recorded itself yet); nothing done"


def _counts(result: Any) -> dict[str, Any]:
    """What a run did, for `history`: a step's own numbers; run-all's summed over its steps (sync's rows, each
    channel's sends); the follower's per channel."""
    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        return {}
    # Shallow: asdict() would deep-copy every field, exceptions recorded in a report included.
    data = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    counts: dict[str, Any] = {
        k: v for k, v in data.items() if isinstance(v, int | float | str) and not isinstance(v, bool)
    }
    for synced in getattr(result, "syncs", ()):
        for key in ("new_rows", "invalid", "expired", "conflicts", "csv_rows"):
            counts[key] = counts.get(key, 0) + int(getattr(synced, key, 0) or 0)
    for sent in getattr(result, "sends", ()):
        for key in ("sent", "failed", "unknown"):
            name = f"{sent.channel}_{key}"
            counts[name] = counts.get(name, 0) + int(getattr(sent, key, 0) or 0)
    for key in ("sent", "failed"):
        if isinstance(per_channel := data.get(key), dict):
            counts.update({f"{channel}_{key}": n for channel, n in per_channel.items()})
    return counts


def execute(
    settings: Settings,
    command: str,
    action: Callable[[Context], T],
    *,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
    meter: Callable[[str, int, int], None] | None = None,
    role: str | None = None,
) -> T:
    logs.set_command(command)
    with open_context(settings, dry_run=dry_run, progress=progress, meter=meter, role=role) as ctx:
        if dry_run:
            return _state_errors(settings, lambda: action(ctx))
        run_id = ctx.store.run_started(command)
        if command in PIPELINE:
            hooks.run_started(settings, command)
        started = time.monotonic()
        try:
            result = _state_errors(settings, lambda: action(ctx))
        except BaseException as exc:
            code = exc.exit_code if isinstance(exc, McnotifyError) else 130 if isinstance(exc, KeyboardInterrupt) else 1
            text = str(exc) if isinstance(exc, McnotifyError) else f"{type(exc).__name__}: {exc}"
            _finish(ctx, run_id, command, code, scrub(text, settings.secrets), {})
            raise
        counts = _counts(result)
        counts["seconds"] = round(time.monotonic() - started, 3)
        # A run that finished its work can still have failed (MC refused notifications for good, one channel
        # gave up): recorded and alerted with its own exit code; the CLI renders the report, then exits with it.
        problem = verdict(result)
        code = problem.exit_code if problem else 0
        _finish(ctx, run_id, command, code, scrub(str(problem), settings.secrets) if problem else None, counts)
        return result


def verdict(result: Any) -> McnotifyError | None:
    """The failure a finished step's report carries (its `failure()`), or None."""
    failure = getattr(result, "failure", None)
    problem = failure() if callable(failure) else None
    return problem if isinstance(problem, McnotifyError) else None


def _state_errors(settings: Settings, fn: Callable[[], T]) -> T:
    """SQLite failures (disk full, read-only, corrupt) as one clear line; the transaction was rolled back."""
    try:
        return fn()
    except sqlite3.Error as exc:
        raise McnotifyError(f"state file {settings.state_path}: {exc}; nothing recorded before it is lost") from None


def _finish(ctx: Context, run_id: int, command: str, code: int, error: str | None, counts: dict[str, Any]) -> None:
    if ctx.store.lost:
        # The file is no longer ours (deleted, emptied, replaced): writing the run into it would damage it.
        logging.getLogger(__name__).warning("run not recorded: the state file is no longer the one opened")
    else:
        # A step still marked running when the run ends shows how it ended, not "running" for ever: one the
        # next run resumes (a claim that waits for the import in flight) is "waiting".
        ended, why = {
            0: (StepStatus.WAITING, "the run ended before this step could finish; the next run resumes it"),
            EXIT_TEMPORARY: (StepStatus.WAITING, error or "the next run resumes it"),
            130: (StepStatus.STOPPED, error or "stopped"),
            143: (StepStatus.STOPPED, error or "stopped"),
        }.get(code, (StepStatus.FAILED, error or f"exit code {code}"))
        with contextlib.suppress(sqlite3.Error, McnotifyError):  # (the failure may be the state)
            # Followers sharing a database: while another lives, the steps marked running may be its own.
            if not ctx.store.shared or ctx.store.alone():
                with ctx.store.transaction():
                    ctx.store.end_running_steps(ended, why)
        ctx.store.run_finished(run_id, code, error, counts)
    try:
        if command in PIPELINE:  # an operator's own retry or skip that fails is told on the terminal, not paged
            hooks.run_finished(ctx.settings, ctx.store, command, code, error)
    except Exception:  # hooks guard themselves; this is the last line of defence
        logging.getLogger(__name__).warning("monitoring hooks failed", exc_info=True)
