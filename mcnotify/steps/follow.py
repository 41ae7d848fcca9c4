"""run-all --follow: one long-running process that keeps the chain moving until it is stopped.

Each cycle runs the same stages as the one-shot commands: claim new rows (also while an import is in flight),
send the SMS, upload the next subscriber file when no import is in flight, poll the running import every
`import.poll_interval`, and send the emails its completion released. Between cycles it sleeps
`source.poll_interval` on a stop-aware wait; a stop request (SIGTERM, Ctrl-C) lets the requests in flight finish
and be recorded, and ends the run normally.

A transient failure (MySQL gone away, MC or SFTP unreachable, a 5xx storm) never ends the follower: one log line
with what it will do, a growing pause, and the next cycle carries on where the state says. A failure that lasts
longer than `alerts.after` fires the alert hooks once, and a recovery message when it clears. Configuration
errors and a lost state file still end it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from mcnotify import hooks
from mcnotify.errors import ConfigError, ImportPending, McnotifyError, PipelineLost, StateDatabaseError, Stopped
from mcnotify.state.states import BatchStatus
from mcnotify.state.store import StateFileLost
from mcnotify.steps import Context, send, sync, wait_import

ROLE = "follower"  # how a follower registers among the processes sharing a state (MariaDB)
MAX_BACKOFF = 60.0
STATE_BACKOFF = 4.0  # at most, between tries of a state database that is away
METRICS_EVERY = 15.0
HEARTBEAT_EVERY = 5.0  # the follower's line in `status`: its last cycle is at most this old
log = logging.getLogger("mcnotify")


@dataclass
class FollowReport:
    cycles: int = 0
    claimed: int = 0
    sent: dict[str, int] = field(default_factory=lambda: {"email": 0, "sms": 0})
    failed: dict[str, int] = field(default_factory=lambda: {"email": 0, "sms": 0})
    unknown: int = 0
    outages: int = 0
    note: str = ""


@dataclass
class _Outage:
    """A failure that has lasted since `since` (monotonic); alerted once it outlasts alerts.after."""

    since: float
    first_error: str
    since_wall: float = field(default_factory=time.time)
    alerted: bool = False


class Follower:
    def __init__(self, ctx: Context, clock: Any = time.monotonic) -> None:
        self.ctx = ctx
        self.clock = clock
        self.report = FollowReport()
        source, imp = ctx.settings.source, ctx.settings.import_
        self.poll = source.poll_interval
        self.batch_limit = source.batch_limit
        self.import_poll = imp.poll_interval
        self.alert_after = ctx.settings.alerts.after
        self.sms_waits = ctx.settings.sms.wait_for_import
        self.started = time.time()
        self.last_import_poll = -float("inf")
        self.dirty = True  # something may be waiting to be sent (always, at start)
        self.heartbeat_at = -float("inf")
        self.metrics_at = -float("inf")
        self.outage: _Outage | None = None
        self.backoff = self.poll
        self.waiting_for = "new rows"
        self.refused_alert_at = -float("inf")
        self.refused_since_alert: dict[str, int] = {}

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self) -> FollowReport:
        self.ctx.progress(
            f"follow: watching the source every {self.poll:g} s (pid {os.getpid()}); SIGTERM or Ctrl-C stops"
        )
        self._heartbeat()
        while not self.ctx.stopping:
            try:
                busy = self._cycle()
            except Stopped:
                break
            except (ConfigError, StateFileLost):
                raise
            except (McnotifyError, sqlite3.OperationalError, OSError) as exc:
                self.dirty = True  # a send may have been cut short: the next pass tries again
                self._failed(exc)
                # Jittered (followers sharing a database retry apart, not in lockstep); the state database (a
                # restart, a failover) is tried again within seconds: work waits on it, and a try costs little.
                self._pause(self.backoff * random.uniform(0.5, 1.0))
                cap = STATE_BACKOFF if isinstance(exc, StateDatabaseError) else MAX_BACKOFF
                self.backoff = min(self.backoff * 2, cap)
                continue
            self._recovered()
            self.backoff = self.poll
            if self.clock() - self.heartbeat_at >= HEARTBEAT_EVERY:
                self._heartbeat()
            self._metrics()
            if not busy:
                self._pause(self.poll)
        self.report.note = f"stopped after {self.report.cycles} cycles; the next run resumes"
        self._heartbeat(stopped=True)
        return self.report

    def _pause(self, seconds: float) -> None:
        self.ctx.sleep(seconds)  # a stop request cuts it short

    def _cycle(self) -> bool:
        """One pass over the stages; True when there is more to do at once (a full claim)."""
        ctx, report = self.ctx, self.report
        report.cycles += 1
        deferred: list[BaseException] = []  # a step that failed: the others still go, then the cycle fails
        # Several followers on one database: one owns the import pipeline (claim, upload, import), every one
        # sends. A follower that does not own it only sends; one that loses it mid-cycle stops that part.
        owner = ctx.store.take_pipeline()
        try:
            if owner:
                with ctx.store.fenced():
                    synced = sync.run(ctx)
            else:
                synced = sync.SyncReport()
        except (Stopped, StateFileLost):
            raise
        except PipelineLost as exc:
            log.warning("follow: %s", exc)
            synced, owner = sync.SyncReport(), False
        except (McnotifyError, sqlite3.OperationalError, OSError) as exc:
            # MySQL or SFTP down, a bad key: what is already claimed still goes (SMS, known contacts' emails).
            deferred.append(exc)
            synced = sync.SyncReport()
            self.dirty = True
        report.claimed += synced.new_rows
        # Only this process changes the state while it holds the lock: with nothing claimed and no import
        # completed since the last full pass, there is nothing new to send (a quiet source costs next to no CPU).
        # Sharing the state, another process may have claimed rows or finished an import: always look.
        self.dirty = self.dirty or synced.new_rows > 0 or ctx.store.shared
        if not self.sms_waits and self.dirty:
            self._send("sms", deferred)
        now = self.clock()
        was_importing = ctx.store.batches(BatchStatus.IMPORTING)
        if owner and was_importing and now - self.last_import_poll >= self.import_poll:
            self.last_import_poll = now
            try:
                with contextlib.suppress(ImportPending), ctx.store.fenced():  # still running: polled next time
                    wait_import.run(ctx, wait=False)
            except PipelineLost as exc:
                log.warning("follow: %s", exc)
        importing = ctx.store.batches(BatchStatus.IMPORTING)
        if was_importing and not importing:
            self.dirty = True  # the import released its emails (and, if they wait, the SMS)
        if self.dirty:
            self._send("email", deferred)
            if self.sms_waits:
                self._send("sms", deferred)
            self.dirty = False
        if deferred:
            raise deferred[0]
        if importing:
            task = importing[0].import_task_id or "?"
            self.waiting_for = f"MC import of batch {importing[0].id} (task {task})"
        else:
            self.waiting_for = "new rows"
        # A full claim, or an import that just completed (the next file can go up at once): no pause.
        return synced.new_rows >= self.batch_limit or bool(was_importing and not importing)

    def _send(self, channel: str, deferred: list[BaseException]) -> None:
        try:
            result = send.run(self.ctx, channel)
        except (Stopped, ConfigError, StateFileLost):
            raise
        except (McnotifyError, sqlite3.OperationalError, OSError) as exc:
            deferred.append(exc)
            return
        finally:
            with contextlib.suppress(McnotifyError):  # what this process did not send, the others may
                self.ctx.store.release_claims()
        self.report.sent[channel] += result.sent
        self.report.failed[channel] += result.failed
        self.report.unknown += result.unknown
        if result.failed:
            self._refused(channel, result.failed)

    def _refused(self, channel: str, count: int) -> None:
        """MC refused notifications for good: alert at once, then at most once per alerts.after with the count
        since the last alert (the follower goes on; `status` lists them)."""
        self.refused_since_alert[channel] = self.refused_since_alert.get(channel, 0) + count
        now = self.clock()
        if now - self.refused_alert_at < self.alert_after:
            return
        self.refused_alert_at = now
        counts = ", ".join(f"{n} {ch}" for ch, n in sorted(self.refused_since_alert.items()))
        self.refused_since_alert = {}
        hooks.alert(
            self.ctx.settings,
            f"mcnotify follower on {socket.gethostname()}: MC refused notifications for good",
            f"{counts} notification(s) refused; `mcnotify status` and `mcnotify show <batch>` give the reasons,"
            " `mcnotify retry` sends them again once fixed. The follower carries on.",
        )

    # -- failures -------------------------------------------------------------------------------------------
    def _failed(self, exc: BaseException) -> None:
        text = str(exc) if isinstance(exc, McnotifyError) else f"{type(exc).__name__}: {exc}"
        now = self.clock()
        if self.outage is None:
            self.outage = _Outage(now, text)
            self.report.outages += 1
        self.waiting_for = f"recovery from: {text}"
        log.warning("follow: %s; trying again in %.0f s (what piled up goes out when it is back)", text, self.backoff)
        if not self.outage.alerted and now - self.outage.since >= self.alert_after:
            self.outage.alerted = True
            hooks.alert(
                self.ctx.settings,
                f"mcnotify follower on {socket.gethostname()} failing for {now - self.outage.since:.0f} s",
                f"{text}\n(first: {self.outage.first_error}); it keeps retrying",
            )
        with contextlib.suppress(McnotifyError, sqlite3.Error):  # the state may be what failed
            self._heartbeat()

    def _recovered(self) -> None:
        if self.outage is None:
            return
        lasted = self.clock() - self.outage.since
        log.info("follow: recovered after %.0f s", lasted)
        if self.outage.alerted:
            hooks.alert(
                self.ctx.settings,
                f"mcnotify follower on {socket.gethostname()} recovered",
                f"It works again after {lasted:.0f} s of: {self.outage.first_error}",
            )
        self.outage = None

    # -- status ---------------------------------------------------------------------------------------------
    def _metrics(self) -> None:
        """The metrics textfile, rewritten every METRICS_EVERY seconds (a one-shot run writes it at its end)."""
        path = self.ctx.settings.metrics.textfile
        now = self.clock()
        if path and now - self.metrics_at >= METRICS_EVERY:
            self.metrics_at = now
            hooks.write_metrics_guarded(self.ctx.store, path)

    def _heartbeat(self, stopped: bool = False) -> None:
        self.heartbeat_at = self.clock()
        self.ctx.store.note_follower(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": self.started,
                "last_cycle": time.time(),
                "cycles": self.report.cycles,
                "waiting_for": "stopped" if stopped else self.waiting_for,
                "failing_since": None if self.outage is None else self.outage.since_wall,
                "stopped": stopped,
            },
        )


def run(ctx: Context) -> FollowReport:
    return Follower(ctx).run()
