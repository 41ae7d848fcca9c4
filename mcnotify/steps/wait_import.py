"""wait-import: learn from MC when a batch's import has finished (or, in fixed-delay mode, wait it out).

The import is never started here, so polling can be repeated or resumed without importing a file twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mcnotify.errors import ImportPending, McnotifyError
from mcnotify.state import Batch
from mcnotify.state.states import BatchStatus, StepStatus
from mcnotify.steps import Context


@dataclass
class ImportResult:
    batch_id: int
    status: str
    total: int | None = None
    ok: int | None = None
    errors: int | None = None
    duplicates: int | None = None
    waited: float = 0.0


@dataclass
class WaitReport:
    results: list[ImportResult] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    note: str = ""


def _finish(ctx: Context, result: ImportResult) -> None:
    with ctx.store.transaction():
        ctx.store.update_batch(
            result.batch_id,
            status=BatchStatus.IMPORTED,
            import_status=result.status,
            import_total=result.total,
            import_ok=result.ok,
            import_errors=result.errors,
            import_duplicates=result.duplicates,
            import_done_at=time.time(),
        )
        if result.status in ("Completed", "assumed"):
            ctx.store.learn_batch_contacts(result.batch_id)  # MC now holds them: their next emails need not wait
        detail = f"{result.status}: {result.ok} ok, {result.errors} errors of {result.total}"
        if result.total is None:
            detail = result.status
        ctx.store.step_finished(
            result.batch_id, "wait-import", StepStatus.DONE if result.status != "Error" else "failed", detail
        )


def _poll(ctx: Context, batch: Batch, wait: bool, deadline: float) -> ImportResult | None:
    from mcnotify.mc import soap

    imp = ctx.settings.import_
    started = time.monotonic()
    assert batch.import_task_id is not None
    while True:
        summary = soap.import_summary(ctx.mc(), batch.import_task_id)
        status = summary.status if summary else "New"
        if summary and summary.status in soap.FINAL_STATUSES:
            return ImportResult(
                batch.id,
                summary.status,
                summary.total,
                summary.ok,
                summary.errors,
                summary.duplicates,
                time.monotonic() - started,
            )
        with ctx.store.transaction():
            ctx.store.update_batch(batch.id, import_status=status)
        if not wait:
            return None
        if time.monotonic() >= deadline:
            raise McnotifyError(
                f"import of batch {batch.id} (task {batch.import_task_id}) not finished after "
                f"{imp.timeout:g} s (last status {status}); the next run keeps waiting"
            )
        ctx.progress(f"wait-import: batch {batch.id} import is {status}; checking again in {imp.poll_interval:g} s")
        ctx.sleep(min(imp.poll_interval, max(0.0, deadline - time.monotonic())))
        ctx.check_stop()


def _fixed_delay(ctx: Context, batch: Batch, wait: bool) -> ImportResult | None:
    delay = ctx.settings.import_.delay
    remaining = (batch.uploaded_at or 0) + delay - time.time()
    if remaining > 0:
        if not wait:
            return None
        ctx.progress(f"wait-import: fixed-delay mode, waiting {remaining:.0f} s for batch {batch.id}")
        ctx.sleep(remaining)
        ctx.check_stop()
    return ImportResult(batch.id, "assumed", waited=max(remaining, 0.0))


def run(ctx: Context, dry_run: bool = False, wait: bool = True) -> WaitReport:
    report = WaitReport()
    batches = ctx.store.batches(BatchStatus.IMPORTING)
    if not batches:
        report.note = "no import to wait for"
        return report
    if dry_run:
        report.pending = [b.id for b in batches]
        report.note = "would poll MC for " + ", ".join(f"batch {b.id} (task {b.import_task_id})" for b in batches)
        return report
    mode = ctx.settings.import_.mode
    deadline = time.monotonic() + ctx.settings.import_.timeout
    for batch in batches:
        with ctx.store.transaction():
            ctx.store.step_started(batch.id, "wait-import")
        if mode == "import-definition" and batch.import_task_id:
            result = _poll(ctx, batch, wait, deadline)
        else:
            result = _fixed_delay(ctx, batch, wait)
        if result is None:
            report.pending.append(batch.id)
            continue
        _finish(ctx, result)
        report.results.append(result)
        counts = {"total": result.total, "ok": result.ok, "rejected": result.errors, "duplicates": result.duplicates}
        ctx.progress(f"wait-import: batch {batch.id} import {result.status}", counts=counts)
    if report.pending:
        raise ImportPending(f"import still pending for batch {', '.join(map(str, report.pending))}")
    return report
