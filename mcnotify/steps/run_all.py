"""run-all: the chain sync -> wait-import -> send-email -> send-sms, each gated by the state file.

Every step resumes whatever an earlier run left half done, so a crash anywhere is repaired by the next run.
The channels fail independently: when one channel's API gives up, the other still sends, and the run ends with
the first failure after reporting each step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from mcnotify.errors import DryRunRefused, McnotifyError, Stopped
from mcnotify.state.store import StateFileLost
from mcnotify.steps import Context, send, sync, wait_import

log = logging.getLogger("mcnotify")
T = TypeVar("T")


@dataclass
class RunAllReport:
    syncs: list[sync.SyncReport] = field(default_factory=list)
    waits: list[wait_import.WaitReport] = field(default_factory=list)
    sends: list[send.SendReport] = field(default_factory=list)
    errors: list[tuple[str, McnotifyError]] = field(default_factory=list)  # (step, why it gave up)

    def failure(self) -> McnotifyError | None:
        """The run's verdict once every step has had its go: the first step that gave up sets the exit code;
        notifications MC refused for good make it fail too (EXIT_REFUSED)."""
        refusals = [p for r in self.sends if (p := r.failure()) is not None]
        problems = [exc for _, exc in self.errors] + refusals
        if not problems:
            return None
        texts = [f"{step}: {exc}" for step, exc in self.errors] + [str(p) for p in refusals]
        verdict = McnotifyError("; ".join(texts))
        verdict.exit_code = problems[0].exit_code
        return verdict


def _attempt(step: str, errors: list[tuple[str, McnotifyError]], work: Callable[[], T]) -> T | None:
    """One step whose failure is recorded, not raised, so that the rest still goes (the SMS after a failed
    upload, one channel after the other's outage). A stop request, a lost state file or a refused dry run end
    everything at once."""
    try:
        return work()
    except (Stopped, StateFileLost, DryRunRefused):
        raise
    except McnotifyError as exc:
        log.error("%s: %s; the rest carries on", step, exc)
        errors.append((step, exc))
        return None


def send_channel(
    ctx: Context, channel: str, dry_run: bool, errors: list[tuple[str, McnotifyError]]
) -> send.SendReport | None:
    """One channel's sends; a failure of its API is recorded (see _attempt)."""
    return _attempt(f"send-{channel}", errors, lambda: send.run(ctx, channel, dry_run=dry_run))


def _chain(ctx: Context, report: RunAllReport, dry_run: bool, wait: bool, failed: set[str]) -> sync.SyncReport | None:
    """sync, the SMS, the import wait, the emails. A channel that failed earlier in this run is not tried again;
    a failed sync (MySQL, SFTP, the import start) still lets everything already claimed go that may."""
    synced = _attempt("sync", report.errors, lambda: sync.run(ctx, dry_run=dry_run))
    if synced is not None:
        report.syncs.append(synced)
    sms_waits = ctx.settings.sms.wait_for_import

    def send_each(channels: tuple[str, ...]) -> None:
        for channel in channels:
            if channel in failed:
                continue
            ctx.check_stop()
            if sent := send_channel(ctx, channel, dry_run, report.errors):
                report.sends.append(sent)
            elif report.errors and report.errors[-1][0] == f"send-{channel}":
                failed.add(channel)

    if not sms_waits:  # SMS need no subscriber import: they go before the wait, not after it
        send_each(("sms",))
    if synced is None:
        # Nothing was uploaded this time: the emails MC can take already (known contacts) still go.
        send_each(("email",))
        return None
    ctx.check_stop()
    report.waits.append(wait_import.run(ctx, dry_run=dry_run, wait=wait))
    send_each(("email", "sms") if sms_waits else ("email",))
    return synced


def run(ctx: Context, dry_run: bool = False, wait: bool = True) -> RunAllReport:
    """The chain, again and again until the source has nothing new: a backlog larger than batch_limit drains in
    one run (each claim stays within batch_limit), the SMS included while the email API is down. A stop request
    ends it with the report of what was done (the CLI prints it, then exits 143 or 130)."""
    report = RunAllReport()
    limit = ctx.settings.source.batch_limit
    blocked_before = False
    failed: set[str] = set()
    try:
        while True:
            synced = _chain(ctx, report, dry_run, wait, failed)
            if dry_run or synced is None:
                return report
            if synced.blocked and not blocked_before:
                # An earlier batch's import held up sync; it has now been waited for and sent, so go again.
                ctx.progress("run-all: previous batch finished; syncing new rows")
            elif synced.new_rows >= limit:
                ctx.progress(f"run-all: claimed a full batch ({limit} rows); the source may hold more, going again")
            else:
                return report
            blocked_before = synced.blocked
    except Stopped as exc:
        report.errors.append(("run-all", exc))
        return report
