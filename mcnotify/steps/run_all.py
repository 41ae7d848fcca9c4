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
    ctx.check_stop()
    report.waits.append(wait_import.run(ctx, dry_run=dry_run, wait=wait))
    for channel in ("email", "sms"):
        ctx.check_stop()
        report.sends.append(send.run(ctx, channel, dry_run=dry_run))
    return synced


def run(ctx: Context, dry_run: bool = False, wait: bool = True) -> RunAllReport:
    report = RunAllReport()
    first = _chain(ctx, report, dry_run, wait)
    if first.blocked and not dry_run:
        # An earlier batch's import held up sync; it has now been waited for and sent, so go again.
        ctx.progress("run-all: previous batch finished; syncing new rows")
        _chain(ctx, report, dry_run, wait)
    return report
