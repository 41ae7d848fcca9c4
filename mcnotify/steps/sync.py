"""sync: claim new source rows into a batch, validate contacts, upload the subscriber CSV, start MC's import.

Resumable at every stage: a batch records how far it got (claiming -> claimed -> uploaded -> importing).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcnotify.errors import ConfigError, McnotifyError, PipelineLost, StateDatabaseError
from mcnotify.redact import mask_contact
from mcnotify.source import CREATED_AT, Source, open_source
from mcnotify.state import Batch
from mcnotify.state.states import BatchStatus, StepStatus
from mcnotify.state.store import INVALID, NewNotification
from mcnotify.steps import Context
from mcnotify.steps.classify import (
    EXPIRED,
    Chunk,
    CursorOrder,
    classified_chunks,
    cursor_kind,
    cursor_value,
    is_higher,
    pages,
    shown_value,
)

log = logging.getLogger("mcnotify")

WATERMARK = "source.watermark"
CSV_HEADER = ("SubscriberKey", "EmailAddress")


@dataclass
class SyncReport:
    batch_id: int | None = None
    new_rows: int = 0
    invalid: int = 0
    expired: int = 0
    conflicts: int = 0
    csv_rows: int = 0
    remote_path: str | None = None
    task_id: str | None = None
    note: str = ""
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    sample_csv: list[tuple[str, str]] = field(default_factory=list)
    sample_sends: list[dict[str, str]] = field(default_factory=list)
    blocked: bool = False


def _start_after(ctx: Context) -> Any:
    watermark = ctx.store.get_meta(WATERMARK)
    if watermark is None:
        return 0
    overlap = ctx.settings.source.overlap
    # Rows that commit late with a lower id are caught by re-reading below the watermark.
    if isinstance(watermark, int | float) and not isinstance(watermark, bool):
        return watermark - overlap
    return watermark


def _classified(ctx: Context, source: Source) -> Iterator[Chunk]:
    """All rows after the watermark, classified. The first page is read here; when it is full and more may
    follow, the rest is read and classified by a worker process on the other core (sync_worker)."""
    src = ctx.settings.source
    limit, cursor_column = src.batch_limit, src.cursor_column
    probe = limit if src.parallel_after == 0 else min(limit, src.parallel_after)
    after, read = _start_after(ctx), 0
    order = CursorOrder(cursor_column, cursor_kind(ctx.store.get_meta(WATERMARK)))
    watermark = ctx.store.get_meta(WATERMARK)
    log.debug(
        "sync: reading the source after %s %s (%s), at most %d rows, %s",
        cursor_column,
        shown_value(after),
        "no watermark yet" if watermark is None else f"watermark {shown_value(watermark)} less overlap {src.overlap}",
        limit,
        "in this process" if probe == limit else f"the first {probe} here, the rest in a worker process",
    )
    # A batch no bigger than the first page is read here, page by page, as before.
    rows = pages(source, after, limit, order) if probe == limit else _first_page(source, after, probe, order)
    for chunk, top, count in classified_chunks(ctx.settings, _warn_without_created_at(ctx, rows), ctx.store.known_ids):
        read += count
        after = top if top is not None else after
        yield chunk, top, count
    if probe == limit or read < probe:
        return
    from mcnotify.steps import sync_worker

    yield from sync_worker.classified(ctx, after, limit, order.kind)


def _warn_without_created_at(ctx: Context, rows: Iterator[dict[str, Any] | None]) -> Iterator[dict[str, Any] | None]:
    """Once per run: say so when source.max_age is on but the query returns no created_at to measure it on."""
    for row in rows:
        if row is not None:
            if ctx.settings.source.max_age > 0 and CREATED_AT not in row:
                log.warning(
                    "sync: the source query returns no %s column, so source.max_age cannot hold back old rows"
                    " (a fresh state file would send the whole source)",
                    CREATED_AT,
                )
            yield row
            break
        yield row
    yield from rows


def _first_page(source: Source, after: Any, limit: int, order: CursorOrder) -> Iterator[dict[str, Any] | None]:
    order.new_page()
    for row in source.rows(after, limit):
        if order.column not in row:
            raise ConfigError(f"[source] cursor_column {order.column!r} is not a column of the query")
        order.check(row)
        yield row
    yield None


def _new_rows(ctx: Context, source: Source, remember: bool = False) -> Iterator[tuple[list[NewNotification], Any]]:
    """Chunks of not-yet-claimed notifications with the highest cursor seen in each, up to batch_limit.

    A real sync stores each chunk before asking for the next, so the state itself dedupes across chunks; a
    preview stores nothing and must `remember` the ids it has seen."""
    wanted = ctx.settings.source.batch_limit
    seen_in_run: set[str] = set()
    for chunk, top, _ in _classified(ctx, source):
        known = ctx.store.known_ids([n.notification_id for n in chunk]) | seen_in_run
        fresh: list[NewNotification] = []
        last = None  # the last orderable cursor so far in the chunk
        for n in chunk:
            last = n.cursor if n.cursor is not None else last
            if n.notification_id in known:
                continue
            known.add(n.notification_id)
            fresh.append(n)
            if len(fresh) >= wanted:
                # Stopping inside the chunk: the watermark may only cover what was taken.
                top = last
                break
        if remember:
            seen_in_run.update(n.notification_id for n in fresh)
        wanted -= len(fresh)
        yield fresh, top
        if wanted <= 0:
            return


def _claim(ctx: Context, batch_id: int | None, report: SyncReport) -> int | None:
    store = ctx.store
    source = open_source(ctx.settings.source)
    try:
        for fresh, top in _new_rows(ctx, source):
            with store.transaction():
                if fresh and batch_id is None:
                    batch_id = store.create_batch()
                    store.step_started(batch_id, "sync")
                if fresh:
                    assert batch_id is not None
                    store.add_notifications(batch_id, fresh)
                    bad = sum(1 for n in fresh if n.status == INVALID)
                    store.add_claimed_counts(batch_id, len(fresh), bad)
                    report.new_rows += len(fresh)
                    report.invalid += bad
                    report.expired += sum(1 for n in fresh if n.status == EXPIRED)
                old = store.get_meta(WATERMARK)
                if top is not None and (old is None or is_higher(cursor_value(top), old)):
                    store.set_meta(WATERMARK, cursor_value(top))
            if fresh:
                ctx.progress(
                    f"sync: claimed {report.new_rows} notifications into batch {batch_id}",
                    batch=batch_id,
                    counts={"new_rows": report.new_rows, "invalid": report.invalid, "expired": report.expired},
                )
                ctx.meter("sync: claimed", report.new_rows, 0)
            ctx.check_stop()
    finally:
        source.close()
    return batch_id


def _resolve_conflicts(ctx: Context, batch_id: int) -> int:
    with ctx.store.transaction():
        keys = ctx.store.resolve_email_conflicts(batch_id)
        ctx.store.update_batch(batch_id, conflicts=len(keys), status=BatchStatus.CLAIMED)
    if keys:
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        ctx.progress(f"sync: {len(keys)} subscriber key(s) had two emails in batch {batch_id}; newest wins: {shown}")
    return len(keys)


def write_csv(rows: Iterable[tuple[str, str]], out: io.TextIOBase | Any) -> int:
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CSV_HEADER)
    count = 0
    for row in rows:
        writer.writerow(row)
        count += 1
    return count


def _upload(ctx: Context, batch_id: int, report: SyncReport) -> None:
    store, sftp_section = ctx.store, ctx.settings.sftp
    with store.transaction():
        moved = store.adopt_older_pending_emails(batch_id)
        if moved:
            batch = store.batch(batch_id)
            store.update_batch(batch_id, conflicts=(batch.conflicts if batch else 0) + len(moved))
    if moved:
        shown = ", ".join(moved[:5]) + (f" and {len(moved) - 5} more" if len(moved) > 5 else "")
        ctx.progress(f"sync: {len(moved)} older pending email(s) go to a newer address in batch {batch_id}: {shown}")
        report.conflicts += len(moved)
    # Written before anything else, so one pass over the batch both counts and writes the subscribers.
    fd, tmp = tempfile.mkstemp(prefix="mcnotify-", suffix=".csv")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            # Only contacts MC does not hold with that email yet, unless every email is to wait for the import.
            new_only = ctx.settings.email.wait_for_import != "always"
            report.csv_rows = write_csv(store.subscribers(batch_id, new_only=new_only), out)
        if report.csv_rows == 0:
            with store.transaction():
                store.update_batch(
                    batch_id,
                    status=BatchStatus.IMPORTED,
                    csv_rows=0,
                    import_status="skipped",
                    import_done_at=time.time(),
                )
                store.step_finished(batch_id, "sync", StepStatus.DONE, "nothing to upload")
                store.step_finished(batch_id, "wait-import", StepStatus.SKIPPED, "nothing was uploaded")
            report.note = "nothing to upload"
            return
        ctx.progress(f"sync: uploading {report.csv_rows} subscribers over SFTP to {sftp_section.host}")
        # No transaction covers the upload: a pipeline taken over since must not replace the file. Checked before
        # and again once the file is up, right before it takes the name MC imports (an upload can take long).
        store.check_fence()
        remote = ctx.upload(sftp_section, Path(tmp), sftp_section.file_name, before_publish=store.check_fence)
    finally:
        os.unlink(tmp)
    report.remote_path = remote
    with store.transaction():
        store.update_batch(
            batch_id, status=BatchStatus.UPLOADED, remote_path=remote, uploaded_at=time.time(), csv_rows=report.csv_rows
        )


# A start whose reply was lost: how long MC may take to list the run before we conclude it never started
# (in polls of import.poll_interval), and how many times to start it.
START_SETTLE_POLLS = 20
START_ATTEMPTS = 3


def _start_import(ctx: Context, batch_id: int, report: SyncReport) -> None:
    imp = ctx.settings.import_
    task_id = None
    if imp.mode == "import-definition" and imp.definition_key:  # (config requires the key in this mode)
        task_id = _start_once(ctx, batch_id, imp.definition_key)
    with ctx.store.transaction():
        ctx.store.forget_import_start(batch_id, "New" if task_id else "waiting")
        ctx.store.update_batch(batch_id, status=BatchStatus.IMPORTING, import_task_id=task_id)
        ctx.store.step_finished(batch_id, "sync", StepStatus.DONE, f"{report.csv_rows or 'all'} subscribers uploaded")
    report.task_id = task_id


def _start_once(ctx: Context, batch_id: int, key: str) -> str:
    """Start MC's import for the batch at most once. The start is recorded before it is sent; when its reply
    is lost (or we crashed before recording the task), MC's list of the definition's runs says whether it
    started, and only a start MC provably never made is sent again."""
    from mcnotify.mc import soap
    from mcnotify.mc.client import OutcomeUnknown

    store = ctx.store
    batch = store.batch(batch_id)
    assert batch is not None
    if batch.import_status == "starting" and (task_id := _started_run(ctx, batch_id, key)):
        return task_id
    for _ in range(START_ATTEMPTS):
        with store.transaction():
            store.note_import_start(batch_id)
        try:
            # Nor a start by an owner that froze since that transaction: fenced once the token is in hand, right
            # before the request goes out (a token fetch can take long).
            task_id = soap.start_import(ctx.mc(), key, before_send=store.check_fence)
        except OutcomeUnknown as exc:
            ctx.progress(f"sync: the start of import {key!r} may or may not have reached MC ({exc}); asking MC")
            if task_id := _started_run(ctx, batch_id, key):
                return task_id
            ctx.progress(f"sync: MC lists no new run of import {key!r}: it never started; starting it again")
            continue
        except PipelineLost:
            # Unsent. Still the owner (its lease ran low, nobody took it over): forget the start, fenced, so the next
            # cycle starts the import at once instead of asking MC's runs for one that never began. Taken over:
            # that transaction is refused, the start stays noted, and the new owner asks MC's runs.
            with contextlib.suppress(PipelineLost, StateDatabaseError), store.transaction():
                store.forget_import_start(batch_id)
            raise
        except McnotifyError:
            with store.transaction():  # MC answered: it did not start the import
                store.forget_import_start(batch_id)
            raise
        ctx.progress(f"sync: started import {key!r}, task {task_id}")
        return task_id
    raise McnotifyError(
        f"sync: MC did not confirm a start of import {key!r} after {START_ATTEMPTS} tries; the next run asks again"
    )


def _started_run(ctx: Context, batch_id: int, key: str) -> str | None:
    """The task of the import run the batch's lost start began, if MC lists one: the first run of the
    definition that started after the upload and that no batch has recorded (any such run reads the file this
    batch uploaded; one that started before it read an older file, and is someone else's). Asks again until MC
    has had START_SETTLE_POLLS polls' time since the attempt to list it (its summary lags the start)."""
    from mcnotify.mc import soap

    store = ctx.store
    batch = store.batch(batch_id)
    assert batch is not None
    poll = ctx.settings.import_.poll_interval
    attempted = store.import_start_attempt(batch_id) or time.time()
    # MC's clock against ours: `import.clock_skew` (UNCONFIRMED how far apart they are; NTP keeps both close).
    since = (batch.uploaded_at or attempted) - ctx.settings.import_.clock_skew
    known = store.import_task_ids()
    while True:
        runs = [
            r
            for r in soap.import_runs(ctx.mc(), key)
            if r.task_id not in known and r.started_at is not None and r.started_at >= since
        ]
        if runs:
            run = min(runs, key=lambda r: r.started_at or 0.0)
            ctx.progress(f"sync: MC lists import {key!r} as started for batch {batch_id}: task {run.task_id}")
            return run.task_id
        if time.time() >= attempted + START_SETTLE_POLLS * poll:
            return None
        ctx.sleep(poll)
        ctx.check_stop()


def _claim_while_importing(ctx: Context, unfinished: list[Batch], report: SyncReport) -> SyncReport:
    """An import is in flight. The Import file has one name, so nothing is uploaded while MC may still read it;
    new rows are still claimed (their SMS can go now), into the one open batch the next upload will carry."""
    report.blocked = True
    still_open = (BatchStatus.CLAIMING, BatchStatus.CLAIMED)
    open_batch = next((b for b in reversed(unfinished) if b.status in still_open), None)
    batch_id = _claim(ctx, open_batch.id if open_batch else None, report)
    if batch_id is not None and (report.new_rows or (open_batch and open_batch.status == BatchStatus.CLAIMING)):
        report.batch_id = batch_id
        report.conflicts = _resolve_conflicts(ctx, batch_id)  # (status claimed: its SMS may go)
    report.note = f"an import is in flight; {report.new_rows} new notification(s) claimed, their upload waits for it"
    return report


def run(ctx: Context, dry_run: bool = False) -> SyncReport:
    if dry_run:
        return preview(ctx)
    store, report = ctx.store, SyncReport()
    unfinished = store.batches(BatchStatus.CLAIMING, BatchStatus.CLAIMED, BatchStatus.UPLOADED)
    if store.batches(BatchStatus.IMPORTING) and not any(b.status == BatchStatus.UPLOADED for b in unfinished):
        return _claim_while_importing(ctx, unfinished, report)
    batch = unfinished[0] if unfinished else None
    batch_id = batch.id if batch else None
    if batch is None or batch.status == BatchStatus.CLAIMING:
        batch_id = _claim(ctx, batch_id, report)
        if batch_id is None:
            report.note = "nothing new in the source"
            return report
    assert batch_id is not None
    report.batch_id = batch_id
    batch = store.batch(batch_id)
    assert batch is not None
    if batch.status == BatchStatus.CLAIMING:
        report.conflicts = _resolve_conflicts(ctx, batch_id)
        batch = store.batch(batch_id)
        assert batch is not None
    if batch.status == BatchStatus.CLAIMED:
        _upload(ctx, batch_id, report)
    batch = store.batch(batch_id)
    assert batch is not None
    if batch.status == BatchStatus.UPLOADED:
        _start_import(ctx, batch_id, report)
    return report


def preview(ctx: Context) -> SyncReport:
    """What sync would claim, upload and later send; reads the source and writes nothing."""
    report = SyncReport()
    source = open_source(ctx.settings.source)
    subscribers: dict[str, str] = {}
    try:
        for fresh, _ in _new_rows(ctx, source, remember=True):
            for n in fresh:
                report.new_rows += 1
                if n.status == INVALID:
                    report.invalid += 1
                    reason = n.reason or "?"
                    report.invalid_reasons[reason] = report.invalid_reasons.get(reason, 0) + 1
                    continue
                if n.status == EXPIRED:
                    report.expired += 1
                    continue
                if n.channel == "email" and n.subscriber_key and n.address:
                    if subscribers.get(n.subscriber_key, n.address) != n.address:
                        report.conflicts += 1
                    subscribers[n.subscriber_key] = n.address
                if len(report.sample_sends) < 5:
                    report.sample_sends.append(
                        {
                            "notification_id": n.notification_id,
                            "template": n.template,
                            "channel": n.channel or "",
                            "to": mask_contact(n.channel, n.address),
                            "from_name": n.from_name or "",
                            "message_key": n.message_key or "",
                        }
                    )
    finally:
        source.close()
    report.csv_rows = len(subscribers)
    report.sample_csv = [(k, mask_contact("email", e)) for k, e in list(subscribers.items())[:5]]
    return report
