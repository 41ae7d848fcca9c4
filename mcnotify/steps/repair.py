"""retry and skip: an operator's two levers on a batch. Neither can cause a second send of an accepted message:
`sent` and `unknown` notifications are never touched, and transactional keys stay the same."""

from __future__ import annotations

from dataclasses import dataclass

from mcnotify.errors import McnotifyError
from mcnotify.state.states import BatchStatus, StepStatus
from mcnotify.steps import Context


@dataclass
class RepairReport:
    batch_id: int
    changed: int
    note: str


def retry(ctx: Context, batch_id: int, channel: str | None = None) -> RepairReport:
    """Put the batch's failed notifications back to pending; a failed import is uploaded and run again."""
    store = ctx.store
    batch = store.batch(batch_id)
    if batch is None:
        raise McnotifyError(f"no batch {batch_id}")
    channels = (channel,) if channel else ("email", "sms")
    with store.transaction():
        changed = store.retry_failed(batch_id, channels)
        note = f"{changed} failed notification(s) back to pending"
        if readdressed := store.readdress_to_newest(batch_id):
            note += f"; {readdressed} email(s) now go to the subscriber's newest address"
        if batch.import_status == "Error" and "email" in channels:
            store.update_batch(batch_id, status=BatchStatus.CLAIMED, import_status=None, import_task_id=None)
            note += "; the failed import will be uploaded and started again by the next sync"
        elif changed and batch.status == BatchStatus.DONE:
            store.update_batch(batch_id, status=BatchStatus.IMPORTED)
    return RepairReport(batch_id, changed, note)


def skip(ctx: Context, batch_id: int, reason: str) -> RepairReport:
    """Give up on a stuck batch: what was not sent is marked skipped with the reason, and the batch done."""
    store = ctx.store
    batch = store.batch(batch_id)
    if batch is None:
        raise McnotifyError(f"no batch {batch_id}")
    if not reason.strip():
        raise McnotifyError("skip needs a --reason")
    if batch.status == BatchStatus.DONE and store.open_work(batch_id) == 0:
        # Nothing to give up on: keep the record of how it ended (an earlier skip's reason included).
        raise McnotifyError(f"batch {batch_id} is done and has nothing left to skip")
    with store.transaction():
        skipped = store.skip_open(batch_id, f"skipped by an operator: {reason}")
        store.update_batch(batch_id, status=BatchStatus.DONE)
        store.end_running_steps(StepStatus.SKIPPED, f"skipped by an operator: {reason}", batch_id=batch_id)
        store.step_finished(batch_id, "skip", StepStatus.DONE, reason)
    return RepairReport(batch_id, skipped, f"{skipped} notification(s) skipped; batch {batch_id} done")
