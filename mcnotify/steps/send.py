"""send-email / send-sms: deliver a batch's pending notifications once its import has finished.

Requests run in a bounded thread pool; only the main thread writes the state, one transaction per call.
Transactional sends carry a deterministic messageKey, so repeating one after a crash or a lost reply cannot
send twice (MC answers 109110). Triggered sends have no such key: each is marked 'sending' first, and one whose
outcome a crash or a lost reply hid is recorded 'unknown', never sent again.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mcnotify import stop
from mcnotify.errors import McnotifyError, NotificationsRefused
from mcnotify.mc import DUPLICATE_MESSAGE_KEY
from mcnotify.redact import mask_contact
from mcnotify.state import Batch, Notification
from mcnotify.state.states import BatchStatus, StepStatus
from mcnotify.state.store import FAILED, PENDING, REQUEUE, SENDING, SENT, UNKNOWN, Outcome
from mcnotify.steps import Context
from mcnotify.steps.flow import RateLimiter, Throttle

if TYPE_CHECKING:  # requests is slow to import; a run with nothing to send never needs it
    from mcnotify.mc import rest

EMAIL_READY = {"Completed", "skipped", "assumed"}
PROGRESS_EVERY = 3.0  # seconds between running progress lines of a long send (the journal's view of it)

log = logging.getLogger("mcnotify")


@dataclass
class SendReport:
    channel: str
    sent: int = 0
    failed: int = 0
    unknown: int = 0
    requeued: int = 0  # refused for want of a subscriber: uploaded again, sent after that import
    total: int = 0  # the current batch's notifications to send (progress lines)
    started_at: tuple[int, float] = (0, 0.0)  # counts and monotonic time when the current batch began
    duplicates: int = 0
    calls: int = 0
    batches: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    note: str = ""
    samples: list[dict[str, Any]] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)  # template the config no longer has -> rows kept pending

    def failure(self) -> McnotifyError | None:
        """What makes this run a failure once it has finished: notifications MC refused for good."""
        if not self.failed:
            return None
        where = ", ".join(map(str, self.batches)) or "?"
        return NotificationsRefused(
            f"send-{self.channel}: MC refused {self.failed} notification(s) for good in batch {where};"
            f" `mcnotify show {self.batches[-1] if self.batches else '<batch>'}` gives the reasons,"
            " `mcnotify retry` sends them again once fixed"
        )


# Batches whose claim is complete (conflicts resolved): SMS may go from here on, unless told to wait.
CLAIMED = (BatchStatus.CLAIMED, BatchStatus.UPLOADED, BatchStatus.IMPORTING, BatchStatus.IMPORTED)


def _gate(ctx: Context, batch: Batch, channel: str) -> str | None:
    """How much of a batch's `channel` may go now: "all", "known" (the emails whose subscriber MC already holds
    with that address), or None (it waits for the batch's import)."""
    if batch.status not in CLAIMED:
        return None
    if channel == "sms":
        waits = ctx.settings.sms.wait_for_import
        return "all" if not waits or batch.status == BatchStatus.IMPORTED else None
    if batch.status == BatchStatus.IMPORTED:
        return "all" if batch.import_status in EMAIL_READY or batch.import_status == "Error" else None
    return {"new-contacts": "known", "never": "all"}.get(ctx.settings.email.wait_for_import)


def _attributes(ctx: Context, n: Notification) -> dict[str, str]:
    attrs = {k: "" if v is None else str(v) for k, v in n.attributes.items()}
    if n.channel == "email" and n.from_name is not None:
        attrs[ctx.settings.email.from_name_attribute] = n.from_name
    return attrs


def _recipient(ctx: Context, n: Notification) -> rest.Recipient:
    from mcnotify.mc import rest

    assert n.message_key and n.subscriber_key and n.address
    return rest.Recipient(n.message_key, n.subscriber_key, n.address, _attributes(ctx, n))


# MC refusing a send because it does not hold the subscriber with that email: a triggered send's 180008 ("no
# valid subscribers"), the subscriber-level SubscriberKeyMismatch (13) / EmailAddressMismatch (14), and their
# transactional REST form (InvalidValue_subscriberKey naming the mismatch).
NOT_HELD_CODES = frozenset({"180008", "13", "14"})
NOT_HELD_WORDS = ("SubscriberKeyMismatch", "EmailAddressMismatch")


def _not_held(verdict: rest.Verdict) -> bool:
    return verdict.code in NOT_HELD_CODES or any(w in (verdict.message or "") for w in NOT_HELD_WORDS)


def _outcome(n: Notification, verdict: rest.Verdict, learn: bool = False) -> Outcome:
    contact = (n.subscriber_key, n.address) if n.subscriber_key and n.address else None
    if verdict.accepted:
        reason = "messageKey already used: MC accepted it earlier" if verdict.duplicate else None
        return Outcome(n.seq, SENT, verdict.code, reason, contact if learn else None)
    if n.channel == "email" and _not_held(verdict):
        why = f"MC does not hold this subscriber with this email ({verdict.code}); uploaded again"
        return Outcome(n.seq, REQUEUE, verdict.code, why, contact)
    return Outcome(n.seq, FAILED, verdict.code, verdict.message or "refused by MC")


def _record(ctx: Context, outcomes: Sequence[Outcome]) -> None:
    """One call's outcomes, in one transaction: states, what MC showed it holds, and refusals for want of a
    subscriber (forgotten from the ledger and sent again after the next import: never failed for that alone)."""
    store = ctx.store
    store.record([o for o in outcomes if o.status != REQUEUE])
    for o in outcomes:
        if o.status == SENT and o.contact is not None:
            store.learn_contact(*o.contact, "triggered send")
    requeue = [o for o in outcomes if o.status == REQUEUE]
    if requeue:
        store.forget_contacts({o.contact[0] for o in requeue if o.contact})
        store.requeue_for_import([o.seq for o in requeue], requeue[0].reason or "MC does not hold the subscriber")


def _tally(report: SendReport, outcomes: Sequence[Outcome]) -> None:
    for o in outcomes:
        if o.status == SENT:
            report.sent += 1
            report.duplicates += o.error_code == DUPLICATE_MESSAGE_KEY
        elif o.status == FAILED:
            report.failed += 1
        elif o.status == UNKNOWN:
            report.unknown += 1
        elif o.status == REQUEUE:
            report.requeued += 1


def _configured(ctx: Context, template: str, channel: str) -> bool:
    """A template the config still has, for this channel. Rows of any other are held, not failed: they go out
    once the template is back."""
    found = ctx.settings.templates.get(template)
    return found is not None and found.channel == channel


def _chunks(
    ctx: Context, batch_id: int, channel: str, size: int, known_only: bool = False
) -> Iterator[list[Notification]]:
    """The batch's sendable notifications in chunks of one template each, read page by page so a large batch
    is never in memory. Templates the config no longer has are skipped (see `held`). Followers sharing a database
    each get pages of their own (claims); rows another one claims are not seen."""
    for template in ctx.store.templates(batch_id, channel, known_only):
        if not _configured(ctx, template, channel):
            continue
        after = 0
        # Sharing the state, a claim is a few calls' worth: large enough to cost the database little, small
        # enough that the other followers get their share of a batch.
        pages = 4 if ctx.store.shared else 20
        while page := ctx.store.claim_work(  # claimed for this process when several share the state
            batch_id,
            channel,
            (PENDING, SENDING),
            template=template,
            after=after,
            limit=size * pages,
            known_only=known_only,
        ):
            after = page[-1].seq
            for start in range(0, len(page), size):
                yield page[start : start + size]


def held(ctx: Context, channel: str | None = None) -> dict[str, int]:
    """{template: n} of notifications waiting for a template the config no longer has (for this channel)."""
    if channel is not None:
        # Each send pass asks: first which templates the open batches use (read from an index alone), and count
        # the rows (every open row read) only when one of them is not configured (rare).
        batches = [b.id for b in ctx.store.batches(*(s for s in BatchStatus if s != BatchStatus.DONE))]
        if all(_configured(ctx, t, channel) for b in batches for t in ctx.store.templates(b, channel)):
            return {}
    return {
        template: n
        for (template, ch), n in ctx.store.open_by_template().items()
        if (channel is None or ch == channel) and not _configured(ctx, template, ch)
    }


def _run_pool(
    ctx: Context,
    report: SendReport,
    jobs: Iterator[tuple[Callable[[], list[Outcome]], int]],
    throttle: Throttle,
    limiter: RateLimiter,
    on_submit: Callable[[int], None] | None = None,
) -> None:
    """Run jobs with at most `throttle.limit` in flight; record each result as it lands, in one transaction per
    call. On a fatal error (a call's, a claim's, a recording's), let the in-flight ones finish and be recorded,
    then re-raise the first. `on_submit(i)` runs in this thread just before job i is handed to the pool."""
    failure: BaseException | None = None
    last_progress = time.monotonic()  # a running count once a second; a short send logs only its result
    with cf.ThreadPoolExecutor(max_workers=throttle.maximum, thread_name_prefix="mcnotify-send") as pool:
        in_flight: set[cf.Future[list[Outcome]]] = set()
        job_iter = iter(jobs)
        submitted = 0

        def fill() -> None:
            """Hand jobs to the pool up to the limit. A failure here (claiming the next chunk, marking a row) ends
            the submitting, not the recording: what is in flight is still recorded, then the failure is raised."""
            nonlocal submitted, failure
            try:
                while failure is None and not ctx.stopping and len(in_flight) < throttle.limit:
                    nxt = next(job_iter, None)
                    if nxt is None:
                        return
                    limiter.acquire(nxt[1])
                    if on_submit is not None:
                        on_submit(submitted)
                    submitted += 1
                    in_flight.add(pool.submit(nxt[0]))
            except BaseException as exc:
                failure = failure or exc

        while True:
            fill()
            if not in_flight:
                break
            done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            in_flight.difference_update(done)
            results: list[list[Outcome]] = []
            for fut in done:
                try:
                    results.append(fut.result())
                except BaseException as exc:
                    failure = failure or exc
            for outcomes in results:
                try:
                    with ctx.store.transaction():
                        _record(ctx, outcomes)
                except BaseException as exc:
                    # Nothing more is sent; what is in flight is still recorded if the state takes it (a lost
                    # connection is retried; a lost lease or state file refuses every write).
                    failure = failure or exc
                    continue
                report.calls += 1
                throttle.succeeded()
                _tally(report, outcomes)
            if done:
                handled = report.sent + report.failed + report.unknown + report.requeued - report.started_at[0]
                ctx.meter(f"send-{report.channel}", handled, report.total)
            if time.monotonic() - last_progress >= PROGRESS_EVERY:
                last_progress = time.monotonic()
                handled = report.sent + report.failed + report.unknown + report.requeued - report.started_at[0]
                rate = handled / max(1e-9, last_progress - report.started_at[1])
                total = f"/{report.total:,}" if report.total else ""
                ctx.progress(
                    f"send-{report.channel}: {handled:,}{total} done ({report.sent:,} sent, {report.failed:,} failed),"
                    f" {rate:,.0f} a second"
                )
    if failure is not None:
        raise failure
    ctx.check_stop()


def _flow(ctx: Context, channel: str) -> tuple[Throttle, RateLimiter]:
    section = ctx.settings.channel(channel)
    throttle = Throttle(section.concurrency)
    ctx.mc().on_throttle = throttle.throttled
    return throttle, RateLimiter(section.rate_limit, ctx.sleep)


def _send_transactional(
    ctx: Context, report: SendReport, batch_id: int, channel: str, known_only: bool = False
) -> None:
    from mcnotify.mc import rest

    client = ctx.mc()

    def job(chunk: list[Notification]) -> Callable[[], list[Outcome]]:
        definition_key = ctx.settings.templates[chunk[0].template].definition_key
        recipients = [_recipient(ctx, n) for n in chunk]

        def call() -> list[Outcome]:
            verdicts = rest.send_transactional(client, channel, definition_key, recipients)
            return [_outcome(n, verdicts[n.message_key or ""]) for n in chunk]

        return call

    size = ctx.settings.channel(channel).batch_size
    jobs = ((job(chunk), len(chunk)) for chunk in _chunks(ctx, batch_id, channel, size, known_only))
    _run_pool(ctx, report, jobs, *_flow(ctx, channel))


def _send_triggered(ctx: Context, report: SendReport, batch_id: int, known_only: bool = False) -> None:
    """One request per notification, and no key to make a repeat harmless. So each row is marked 'sending' just
    before its own request is handed to the pool, and whatever way this ends (done, an error, a stop), rows whose
    request never left go back to 'pending'. Only a row whose request may have reached MC can end 'unknown'."""
    from mcnotify.mc import rest
    from mcnotify.mc.client import OutcomeUnknown

    section = ctx.settings.email
    client = ctx.mc()
    fresh: list[Notification] = []  # the rows handed to the pool so far, in submit order

    def rows() -> Iterator[Notification]:
        """Chunk by chunk as the pool takes them: a large batch is neither read nor claimed all at once (sharing
        the state, what this process has not reached yet stays for the others)."""
        for chunk in _chunks(ctx, batch_id, "email", 1000, known_only):
            # A 'sending' row survived a crash mid-request: MC may have sent it. Never send it again.
            stale = [
                Outcome(n.seq, UNKNOWN, None, "interrupted during a triggered send; not resent to avoid a duplicate")
                for n in chunk
                if n.status == SENDING
            ]
            if stale:
                with ctx.store.transaction():
                    ctx.store.record(stale)
                _tally(report, stale)
            for n in chunk:
                if n.status == PENDING:
                    fresh.append(n)
                    yield n

    throttle, limiter = _flow(ctx, "email")
    marked: list[int] = []  # seqs marked 'sending', in submit order
    left: set[int] = set()  # seqs whose request was handed to the HTTP client (worker threads add)
    unsent: set[int] = set()  # of those, seqs the client says never reached MC

    lost: set[int] = set()  # seqs whose claim went to another process before they were marked (we froze)

    def job(n: Notification) -> Callable[[], list[Outcome]]:
        def call() -> list[Outcome]:
            if n.seq in lost:
                return []  # another process has it now: at most once
            key = ctx.settings.templates[n.template].definition_key
            recipient = _recipient(ctx, n)
            if ctx.stopping:
                raise stop.stopped("before the request was sent")
            left.add(n.seq)
            try:
                reply = rest.post_triggered(client, key, recipient, n.from_name, section.from_address)
            except OutcomeUnknown as exc:
                return [Outcome(n.seq, UNKNOWN, None, f"reply lost ({exc}); not resent to avoid a duplicate")]
            except McnotifyError:
                # The client's word: MC did not act on it (never reached, refused, a token it could not get).
                unsent.add(n.seq)
                raise
            except Exception as exc:  # not the client's own: it may have gone out
                reason = f"request failed ({type(exc).__name__}: {exc}); not resent to avoid a duplicate"
                return [Outcome(n.seq, UNKNOWN, None, reason)]
            try:
                verdict = rest.triggered_verdict(reply)
            except Exception as exc:  # MC answered, but not usably: it may have queued the send
                reason = f"no usable reply ({type(exc).__name__}: {exc}); not resent to avoid a duplicate"
                return [Outcome(n.seq, UNKNOWN, None, reason)]
            return [_outcome(n, verdict, learn=True)]  # accepted: MC holds this subscriber with this email

        return call

    def mark(index: int) -> None:
        seq = fresh[index].seq
        with ctx.store.transaction():
            if not ctx.store.mark([seq], SENDING):
                lost.add(seq)
                return
        marked.append(seq)

    try:
        _run_pool(ctx, report, ((job(n), 1) for n in rows()), throttle, limiter, on_submit=mark)
    finally:
        # Never left, or never reached MC: send again later. (A row whose outcome was recorded is no longer
        # 'sending', so release leaves it alone.)
        back = [seq for seq in marked if seq not in left or seq in unsent]
        if back:
            with ctx.store.transaction():
                ctx.store.release(back)


def _sample(ctx: Context, n: Notification) -> dict[str, Any]:
    template = ctx.settings.templates.get(n.template)
    return {
        "batch": n.batch_id,
        "notification_id": n.notification_id,
        "template": n.template,
        "definition_key": template.definition_key if template else "(not in the config: held)",
        "to": mask_contact(n.channel, n.address),
        "from_name": n.from_name or "",
        "message_key": n.message_key or "",
    }


def run(ctx: Context, channel: str, dry_run: bool = False) -> SendReport:
    store, report = ctx.store, SendReport(channel)
    step = f"send-{channel}"
    unfinished = store.batches(BatchStatus.CLAIMING, BatchStatus.CLAIMED, BatchStatus.UPLOADED, BatchStatus.IMPORTING)
    waiting = [b.id for b in unfinished if _gate(ctx, b, channel) != "all"]
    report.waiting = waiting
    report.held = held(ctx, channel)
    if report.held:
        shown = ", ".join(f"{t!r} ({n})" for t, n in sorted(report.held.items()))
        logging.getLogger("mcnotify").warning(
            "%s: notifications held for template(s) no longer in the config, kept pending until they return: %s",
            step,
            shown,
        )
    for batch in store.batches(*CLAIMED):
        gate = _gate(ctx, batch, channel)
        if gate is None:
            continue
        known_only = gate == "known"
        pending = store.open_work(batch.id, channel, known_only)
        if report.held:
            pending -= sum(
                n for t, n in store.open_by_template(batch.id).items() if t[1] == channel and not _configured(ctx, *t)
            )
        log.debug(
            "%s: batch %d (%s): %s may go now, %d to send",
            step,
            batch.id,
            batch.status,
            "only those to subscribers MC already holds" if known_only else "all",
            pending,
        )
        if channel == "email" and batch.import_status == "Error" and pending:
            if dry_run:
                report.note = f"batch {batch.id}: import failed, its emails would be marked failed"
                continue
            with store.transaction():
                report.failed += store.fail_channel(batch.id, channel, "MC import of the subscriber file failed")
                store.step_finished(batch.id, step, StepStatus.FAILED, "import failed")
            pending = 0
        if dry_run:
            if pending:
                report.batches.append(batch.id)
                report.sent += pending  # "would send"
                want = max(0, 5 - len(report.samples))
                sample = (
                    store.work(batch.id, channel, (PENDING, SENDING), limit=want * 4, known_only=known_only)
                    if want
                    else []
                )
                report.samples += [_sample(ctx, n) for n in sample if _configured(ctx, n.template, channel)][:want]
            continue
        if pending:
            report.batches.append(batch.id)
            with store.transaction():
                store.step_started(batch.id, step)
            ctx.progress(f"{step}: batch {batch.id}: {pending} to send")
            # For the running progress lines: this batch's total, and where the counts and the clock start.
            report.total = pending
            report.started_at = (report.sent + report.failed + report.unknown + report.requeued, time.monotonic())
            before = (report.sent, report.failed, report.unknown, report.requeued)
            api = ctx.settings.channel(channel).api
            if api == "triggered-send":
                _send_triggered(ctx, report, batch.id, known_only)
            else:
                _send_transactional(ctx, report, batch.id, channel, known_only)
            now = (report.sent, report.failed, report.unknown, report.requeued)
            sent, failed, unknown, requeued = (a - b for a, b in zip(now, before, strict=True))
            summary = f"{sent} sent, {failed} failed, {unknown} unknown" + (
                f", {requeued} waiting for MC to import their subscriber" if requeued else ""
            )
            with store.transaction():
                store.step_finished(batch.id, step, StepStatus.FAILED if failed else "done", summary)
            counts = {"sent": sent, "failed": failed, "unknown": unknown, "requeued": requeued}
            ctx.progress(f"{step}: batch {batch.id}: {summary}", counts=counts)  # the log's last word on the batch
        if batch.status == BatchStatus.IMPORTED and store.open_work(batch.id) == 0:
            with store.transaction():
                store.update_batch(batch.id, status=BatchStatus.DONE)
    if not report.batches and not report.note:
        report.note = "nothing to send" + (
            f" (batch {', '.join(map(str, waiting))} not imported yet)" if waiting else ""
        )
    return report
