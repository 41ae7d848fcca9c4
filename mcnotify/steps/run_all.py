"""run-all: the chain sync -> wait-import -> send-email -> send-sms, each gated by the state file.

Every step resumes whatever an earlier run left half done, so a crash anywhere is repaired by the next run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mcnotify.steps import Context, send, sync, wait_import


@dataclass
class RunAllReport:
    syncs: list[sync.SyncReport] = field(default_factory=list)
    waits: list[wait_import.WaitReport] = field(default_factory=list)
    sends: list[send.SendReport] = field(default_factory=list)


def _chain(ctx: Context, report: RunAllReport, dry_run: bool, wait: bool) -> sync.SyncReport:
    synced = sync.run(ctx, dry_run=dry_run)
    report.syncs.append(synced)
    sms_waits = bool(ctx.settings.section("sms")["wait_for_import"])
    if not sms_waits:  # SMS need no subscriber import: they go before the wait, not after it
        ctx.check_stop()
        report.sends.append(send.run(ctx, "sms", dry_run=dry_run))
    ctx.check_stop()
    report.waits.append(wait_import.run(ctx, dry_run=dry_run, wait=wait))
    for channel in ("email", "sms") if sms_waits else ("email",):
        ctx.check_stop()
        report.sends.append(send.run(ctx, channel, dry_run=dry_run))
    return synced


def run(ctx: Context, dry_run: bool = False, wait: bool = True) -> RunAllReport:
    """The chain, again and again until the source has nothing new: a backlog larger than batch_limit drains in
    one run (each claim stays within batch_limit)."""
    report = RunAllReport()
    limit = int(ctx.settings.section("source")["batch_limit"])
    blocked_before = False
    while True:
        synced = _chain(ctx, report, dry_run, wait)
        if dry_run:
            return report
        if synced.blocked and not blocked_before:
            # An earlier batch's import held up sync; it has now been waited for and sent, so go again.
            ctx.progress("run-all: previous batch finished; syncing new rows")
        elif synced.new_rows >= limit:
            ctx.progress(f"run-all: claimed a full batch ({limit} rows); the source may hold more, going again")
        else:
            return report
        blocked_before = synced.blocked
