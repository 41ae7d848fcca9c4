"""Several followers on one MariaDB state: the import pipeline owned by one lease whose generation fences every
write, send claims taken with SKIP LOCKED, every process in `status`; and three real followers, one SIGKILLed
and restarted, one frozen (SIGSTOP) past the lease: every notification exactly once, nothing stuck, nothing
written or uploaded by the frozen one once it wakes."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymysql
import pytest

from mcnotify.errors import LeaseHeld, PipelineLost, StateDatabaseError
from mcnotify.state.interface import NewNotification, Outcome
from mcnotify.state.mysql import MySQLStore, Target
from mcnotify.state.states import BatchStatus, Delivery
from tests.conftest import Env
from tests.helpers import event_rows, people, run_cli

LEASE = 2.0


@contextmanager
def stores(url: str, count: int) -> Iterator[list[MySQLStore]]:
    made = [MySQLStore(Target.from_url(url), lease=LEASE) for _ in range(count)]
    try:
        yield made
    finally:
        for store in made:
            store.close()


def _freeze(store: MySQLStore) -> None:
    """As SIGSTOP would: its heartbeat stops (the process itself, this test's, stays alive)."""
    store._stop_heartbeat.set()
    if store._heartbeat is not None:
        store._heartbeat.join(5)


def _taken_over(frozen: MySQLStore, by: MySQLStore) -> None:
    """`frozen` freezes past its lease and `by` takes the pipeline over, as soon as it may."""
    _freeze(frozen)
    deadline = time.monotonic() + LEASE + 3
    while not by.take_pipeline():
        assert time.monotonic() < deadline, "no takeover within the lease and a little"
        time.sleep(0.1)


def _sms(nid: str) -> NewNotification:
    return NewNotification(
        nid, "t", "sms", f"k{nid}", "+886912345678", "+886912345678", "{}", None, Delivery.PENDING, None,
        f"mcn-sms-{nid}",
    )  # fmt: skip


def test_the_pipeline_has_one_owner_and_a_frozen_one_cannot_write_once_taken_over(state_db: str) -> None:
    with stores(state_db, 2) as (a, b):
        a.register("follower")
        b.register("follower")
        assert a.take_pipeline() and not b.take_pipeline()
        with a.fenced(), a.transaction():  # the owner writes
            a.set_meta("source.watermark", 1)
        time.sleep(LEASE + 0.5)  # the heartbeat keeps it
        assert not b.take_pipeline()
        assert (b.pipeline_owner() or {}).get("generation") == 1
        _freeze(a)
        deadline = time.monotonic() + LEASE + 2
        while not b.take_pipeline():
            assert time.monotonic() < deadline, "no takeover within the lease and a little"
            time.sleep(0.2)
        assert (b.pipeline_owner() or {})["generation"] == 2
        # The frozen one wakes: no fenced write, no upload, no import start.
        with pytest.raises(PipelineLost), a.fenced(), a.transaction():
            a.set_meta("source.watermark", 99)
        with pytest.raises(PipelineLost):
            a.check_fence()
        assert not a.take_pipeline()  # b holds it now
        assert a.get_meta("source.watermark") == 1
        with b.fenced(), b.transaction():
            b.set_meta("source.watermark", 2)
        # A one-shot run is refused while followers live.
        with stores(state_db, 1) as (one_shot,), pytest.raises(LeaseHeld, match="followers work"):
            one_shot.lock()
        assert {p["role"] for p in b.processes()} == {"follower"} and len(b.processes()) == 2


def test_send_claims_split_the_work_and_a_frozen_claimers_rows_go_to_another(state_db: str) -> None:
    with stores(state_db, 2) as (a, b):
        a.register("follower")
        b.register("follower")
        with a.transaction():
            batch = a.create_batch()
            a.add_notifications(batch, [_sms(str(i)) for i in range(10)])
            a.update_batch(batch, status=BatchStatus.CLAIMED)
        mine = a.claim_work(batch, "sms", (Delivery.PENDING,), limit=4)
        theirs = b.claim_work(batch, "sms", (Delivery.PENDING,), limit=100)
        assert len(mine) == 4 and len(theirs) == 6
        assert not {n.seq for n in mine} & {n.seq for n in theirs}
        with b.transaction():  # b cannot mark what a claims
            assert b.mark([mine[0].seq], Delivery.SENDING) == 0
        _freeze(a)  # its claims are no longer renewed
        time.sleep(LEASE + 0.5)
        taken = b.claim_work(batch, "sms", (Delivery.PENDING,), limit=100)
        assert {n.seq for n in mine} <= {n.seq for n in taken}
        with a.transaction():  # a wakes: the row is another's, it marks nothing (a triggered send never goes)
            assert a.mark([mine[0].seq], Delivery.SENDING) == 0


def _batch_of(store: MySQLStore, rows: list[NewNotification]) -> int:
    with store.transaction():
        batch = store.create_batch()
        store.add_notifications(batch, rows)
        store.update_batch(batch, status=BatchStatus.CLAIMED)
    return batch


def _claims(store: MySQLStore) -> list[tuple[int, int]]:
    return [(int(r[0]), int(r[1])) for r in store.conn.execute("SELECT lo, hi FROM claims ORDER BY lo")]


def test_a_claim_is_a_range_per_page_and_goes_once_its_rows_are_recorded(state_db: str) -> None:
    """The database's cost per message: claiming 500 rows writes one claim, not 500 rows; recording the last of
    them deletes it, so nothing of it is left to renew or to hold rows up."""
    with stores(state_db, 1) as (a,):
        a.register("follower")
        batch = _batch_of(a, [_sms(str(i)) for i in range(500)])
        rows = a.claim_work(batch, "sms", (Delivery.PENDING,), limit=500)
        assert len(rows) == 500 and _claims(a) == [(rows[0].seq, rows[-1].seq)]
        with a.transaction():
            a.record([Outcome(n.seq, Delivery.SENT, None, None) for n in rows[:499]])
        assert len(_claims(a)) == 1
        with a.transaction():
            a.record([Outcome(rows[-1].seq, Delivery.SENT, None, None)])
        assert _claims(a) == [] and a._claims == {}


def test_a_claim_spans_no_other_claim_so_rows_freed_inside_it_go_to_the_next_claimer(state_db: str) -> None:
    """a claims rows 1-2 and stops; b holds 3-4; c claims what is free: 1-2 and 5-10, as two ranges around b's.
    When b stops too, its rows go to the next claimer at once (c's claim does not cover them)."""
    with stores(state_db, 4) as (a, b, c, d):
        for store in (a, b, c, d):
            store.register("follower")
        batch = _batch_of(a, [_sms(str(i)) for i in range(10)])
        first = a.claim_work(batch, "sms", (Delivery.PENDING,), limit=2)
        second = b.claim_work(batch, "sms", (Delivery.PENDING,), limit=2)
        a.release_claims()
        third = c.claim_work(batch, "sms", (Delivery.PENDING,))
        assert [n.seq for n in third] == [n.seq for n in first] + [first[0].seq + i for i in range(4, 10)]
        lo = first[0].seq
        assert _claims(c) == [(lo, lo + 1), (lo + 2, lo + 3), (lo + 4, lo + 9)]  # c's two around b's
        assert d.claim_work(batch, "sms", (Delivery.PENDING,)) == []  # every row claimed
        b.release_claims()
        assert [n.seq for n in d.claim_work(batch, "sms", (Delivery.PENDING,))] == [n.seq for n in second]


def test_claims_of_one_template_leave_the_others_rows_of_the_same_span_free(state_db: str) -> None:
    """Receiver and sender emails interleave in a batch: a claim of one template's rows covers none of the
    other's, though their seqs lie between."""
    with stores(state_db, 2) as (a, b):
        a.register("follower")
        b.register("follower")
        rows = [dataclasses.replace(_sms(str(i)), template="t" if i % 2 else "u") for i in range(8)]
        batch = _batch_of(a, rows)
        mine = a.claim_work(batch, "sms", (Delivery.PENDING,), template="t")
        theirs = b.claim_work(batch, "sms", (Delivery.PENDING,), template="u")
        assert [n.notification_id for n in mine] == ["1", "3", "5", "7"]
        assert [n.notification_id for n in theirs] == ["0", "2", "4", "6"]


def test_claiming_goes_on_when_its_lock_row_was_tidied_away(state_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock rows of batches done for a day are deleted; processes that claimed in such a batch before and
    are asked to again (an operator's retry) make the row again and still claim one at a time."""
    with stores(state_db, 2) as (a, b):
        a.register("follower")
        b.register("follower")
        batch = _batch_of(a, [_sms(str(i)) for i in range(4)])
        before = a.claim_work(batch, "sms", (Delivery.PENDING,), limit=1)
        before += b.claim_work(batch, "sms", (Delivery.PENDING,), limit=1)
        a.conn.execute("DELETE FROM claim_locks")
        reading, go_on = threading.Event(), threading.Event()
        page = a._page

        def slow_page(*args: Any) -> Any:  # a stops inside its claim, the lock row held
            reading.set()
            go_on.wait(10)
            return page(*args)

        monkeypatch.setattr(a, "_page", slow_page)
        got: dict[str, list[int]] = {"a": [], "b": []}
        claimers = [
            threading.Thread(target=lambda: got["a"].extend(n.seq for n in a.claim_work(batch, "sms", ("pending",)))),
            threading.Thread(target=lambda: got["b"].extend(n.seq for n in b.claim_work(batch, "sms", ("pending",)))),
        ]
        claimers[0].start()
        assert reading.wait(5)
        claimers[1].start()
        claimers[1].join(1)
        assert claimers[1].is_alive()  # b waits for a's claim
        go_on.set()
        for claimer in claimers:
            claimer.join(10)
        # a took what was free before b looked (and its own row again); b only its own row.
        assert got["a"] == [before[0].seq + i for i in (0, 2, 3)] and got["b"] == [before[1].seq]
        assert [int(r[0]) for r in a.conn.execute("SELECT COUNT(*) FROM claim_locks")] == [1]


def test_what_dead_claims_leave_is_tidied_when_a_process_starts(state_db: str) -> None:
    """A claim whose holder died an hour ago and that nobody claimed over, and the claim locks of a batch done
    for a day, are deleted when a follower or a run starts: the tables hold what is in flight, not the past."""
    with stores(state_db, 2) as (a, b):
        a.register("follower")
        old, current = _batch_of(a, [_sms("1")]), _batch_of(a, [_sms("2")])
        for batch in (old, current):
            a.claim_work(batch, "sms", (Delivery.PENDING,))
        a._claims.clear()  # a dies with its claims
        a.conn.execute("UPDATE claims SET expires = expires - 3700 WHERE batch_id = ?", (old,))
        with a.transaction():
            a.update_batch(old, status=BatchStatus.DONE, created_at=time.time() - 90000)
        b.register("follower")
        assert [int(r[0]) for r in b.conn.execute("SELECT batch_id FROM claims")] == [current]
        assert [int(r[0]) for r in b.conn.execute("SELECT batch_id FROM claim_locks")] == [current]


def _triggered_row(store: MySQLStore) -> int:
    with store.transaction():
        batch = store.create_batch()
        store.add_notifications(
            batch,
            [NewNotification("1", "t", "email", "k1", "a@x.com", "a@x.com", "{}", None, Delivery.PENDING, None, "m1")],
        )
        store.update_batch(batch, status=BatchStatus.IMPORTED, import_status="Completed")
    return batch


def test_a_one_shot_run_started_while_a_follower_is_frozen_and_the_follower_never_both_send(state_db: str) -> None:
    """From an attack: a follower claims a triggered email and freezes past the lease; a timer's one-shot run
    starts (no live follower), and marks the email for sending. The follower wakes: it must neither send it
    too nor go on owning the import pipeline beside the run."""
    with stores(state_db, 2) as (follower, one_shot):
        batch = _triggered_row(follower)
        follower.register("follower")
        assert follower.take_pipeline()
        mine = follower.claim_work(batch, "email", (Delivery.PENDING, Delivery.SENDING), template="t")
        _freeze(follower)
        time.sleep(LEASE + 1)
        one_shot.lock()
        theirs = one_shot.claim_work(batch, "email", (Delivery.PENDING, Delivery.SENDING), template="t")
        with one_shot.transaction():
            assert one_shot.mark([theirs[0].seq], Delivery.SENDING) == 1
        follower._start_heartbeat()  # it wakes
        with follower.transaction():
            assert follower.mark([mine[0].seq], Delivery.SENDING) == 0
        with pytest.raises(PipelineLost):
            follower.check_fence()
        assert not follower.take_pipeline()


def test_a_one_shot_run_frozen_past_its_lease_and_a_follower_never_both_send(state_db: str) -> None:
    """The other way round: a one-shot run holds a triggered email and freezes; a follower starts (the lease is
    expired), claims and marks it. The run wakes: it stops or marks nothing, never sends it again."""
    from mcnotify.state.mysql import LeaseLost

    with stores(state_db, 2) as (one_shot, follower):
        batch = _triggered_row(one_shot)
        one_shot.lock()
        held = one_shot.claim_work(batch, "email", (Delivery.PENDING, Delivery.SENDING), template="t")
        _freeze(one_shot)
        time.sleep(LEASE + 1)
        follower.register("follower")
        assert follower.take_pipeline()
        got = follower.claim_work(batch, "email", (Delivery.PENDING, Delivery.SENDING), template="t")
        with follower.transaction():
            assert follower.mark([got[0].seq], Delivery.SENDING) == 1
        one_shot._start_heartbeat()  # it wakes
        marked = 0
        with contextlib.suppress(LeaseLost, PipelineLost), one_shot.transaction():
            marked = one_shot.mark([held[0].seq], Delivery.SENDING)
        assert marked == 0
        time.sleep(LEASE)  # its heartbeat finds the run lease taken from it
        with pytest.raises((LeaseLost, PipelineLost)), one_shot.transaction():
            one_shot.mark([held[0].seq], Delivery.SENDING)


def test_a_frozen_follower_never_marks_a_row_another_sent_meanwhile(state_db: str) -> None:
    """From an attack: a follower claims triggered emails and freezes; another claims them once the claims
    expire, sends and records them. The first wakes with its list in memory: it must mark none of them."""
    with stores(state_db, 2) as (a, b):
        batch = _triggered_row(a)
        a.register("follower")
        b.register("follower")
        mine = b.claim_work(batch, "email", (Delivery.PENDING, Delivery.SENDING), template="t")
        _freeze(b)
        time.sleep(LEASE + 1)
        got = a.claim_work(batch, "email", (Delivery.PENDING, Delivery.SENDING), template="t")
        with a.transaction():
            assert a.mark([got[0].seq], Delivery.SENDING) == 1
        with a.transaction():
            a.record([Outcome(got[0].seq, Delivery.SENT, None, None)])
        b._start_heartbeat()  # it wakes
        with b.transaction():
            assert b.mark([mine[0].seq], Delivery.SENDING) == 0
        assert [n.status for n in a.notifications(batch_id=batch)] == ["sent"]


def test_a_one_shot_run_that_outlives_its_lease_with_nobody_else_goes_on(state_db: str) -> None:
    """A run's transaction longer than the lease, or a pause that nobody used to take anything over: the run is
    still the only one at work and must neither fail nor strand a row in 'sending'."""
    with stores(state_db, 1) as (one_shot,):
        batch = _triggered_row(one_shot)
        one_shot.lock()
        rows = one_shot.claim_work(batch, "email", (Delivery.PENDING, Delivery.SENDING), template="t")
        with one_shot.transaction():
            assert one_shot.mark([rows[0].seq], Delivery.SENDING) == 1
            time.sleep(LEASE + 1.5)  # a long transaction: the heartbeat could not renew the pipeline meanwhile
        _freeze(one_shot)
        time.sleep(LEASE + 1)  # paused past the lease, and nobody else about
        with one_shot.transaction():
            assert one_shot.release([rows[0].seq]) == 1  # its request never left: back to pending
        assert [n.status for n in one_shot.notifications(batch_id=batch)] == ["pending"]


def test_a_follower_frozen_inside_a_transaction_does_not_hold_up_a_one_shot_run(state_db: str) -> None:
    """With no other follower alive to end its connection, a one-shot run that starts does so itself: it does
    not wait (innodb_lock_wait_timeout, or the server's wait_timeout) on the frozen one's locks."""
    with stores(state_db, 2) as (follower, one_shot):
        follower.register("follower")
        assert follower.take_pipeline()
        frozen = contextlib.ExitStack()
        frozen.enter_context(follower.fenced())
        frozen.enter_context(follower.transaction())  # holds the pipeline lease row in share mode
        _freeze(follower)
        time.sleep(LEASE + 1)
        started = time.monotonic()
        one_shot.lock()
        assert time.monotonic() - started < 5 and one_shot.take_pipeline()
        with pytest.raises(StateDatabaseError), frozen:  # it wakes: its transaction is gone
            follower.set_meta("source.watermark", 1)


def test_the_heartbeat_never_waits_on_claims_its_own_process_is_recording(state_db: str) -> None:
    """The heartbeat renews the claims it read a moment ago while the main thread records the last row of one
    in a transaction, which deletes that claim: waiting on it, in the other order, is a deadlock that loses the
    recording transaction (from an attack). The renewal skips claims a transaction holds."""
    with stores(state_db, 1) as (a,):
        a.register("follower")
        with a.transaction():
            batch = a.create_batch()
            a.add_notifications(batch, [_sms(str(i)) for i in range(3)])
            a.update_batch(batch, status=BatchStatus.CLAIMED)
        rows = a.claim_work(batch, "sms", (Delivery.PENDING,), limit=2)
        rows += a.claim_work(batch, "sms", (Delivery.PENDING,), after=rows[-1].seq, limit=10)
        read_by_heartbeat = {claim: set(seqs) for claim, seqs in a._claims.items()}
        assert len(read_by_heartbeat) == 2 and len(rows) == 3
        heartbeat = a.target.connect()
        try:
            with heartbeat.cursor() as cur:
                cur.execute("SET SESSION innodb_lock_wait_timeout = 30")
            with a.transaction():
                a.record([Outcome(rows[2].seq, Delivery.SENT, None, None)])  # the second claim's last row
                a._claims.update(read_by_heartbeat)  # the heartbeat read its claims just before record() let go
                started = time.monotonic()
                with heartbeat.cursor() as cur:
                    a._renew_claims(cur)
                assert time.monotonic() - started < 2  # it did not wait for the recording transaction
                a.record([Outcome(rows[0].seq, Delivery.SENT, None, None)])
        finally:
            heartbeat.close()
        assert {n.notification_id: n.status for n in a.notifications(batch_id=batch)} == {
            "0": "sent",
            "1": "pending",
            "2": "sent",
        }
        assert [int(r[0]) for r in a.conn.execute("SELECT COUNT(*) FROM claims")] == [1]  # the first one's


def test_a_connection_id_from_before_a_server_restart_is_never_ended(state_db: str) -> None:
    """A frozen follower's recorded connection id is reused by the server after a restart, by a client of
    the same address (over a socket every client is `localhost`): that connection is not the frozen one and must
    live. Only a connection of the same server run is ended."""
    from mcnotify.state.mysql import _identity, _server_started

    with stores(state_db, 2) as (a, b):
        a.register("follower")
        b.register("follower")
        _freeze(b)
        other = Target.from_url(state_db).connect()  # someone else's connection, as after a restart
        try:
            other_id, other_client = _identity(other)
            host = other_client.rpartition("|")[0]
            with other.cursor() as cur:
                before_restart = _server_started(cur) - 3600
            for recorded, should_live in ((f"{host}|{before_restart:.0f}", True), (other_client, False)):
                conn = Target.from_url(state_db).connect()
                try:
                    with conn.cursor() as cur:
                        cur.execute(
                            "UPDATE processes SET conn_id = %s, conn_client = %s WHERE holder = %s",
                            (other_id, recorded, b._holder),
                        )
                finally:
                    conn.close()
                time.sleep(LEASE + 1.5)  # b's heartbeat is a lease old, and a's next beats look at it
                alive = True
                try:
                    with other.cursor() as cur:
                        cur.execute("SELECT 1")
                except pymysql.Error:
                    alive = False
                assert alive is should_live, recorded
        finally:
            other.close()


def test_a_holder_in_another_pid_namespace_under_this_hostname_is_not_taken_for_dead(state_db: str) -> None:
    """Containers with host networking share the host's name, not their pids: a pid that does not exist here
    may be a live process there. Its lease is waited out, not taken at once; this namespace's dead holder's is."""
    import socket

    from mcnotify.state.mysql import _PID_NAMESPACE

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid nobody has now
    MySQLStore(Target.from_url(state_db)).close()
    for namespace, taken in (("4026599999", False), (_PID_NAMESPACE, True)):
        conn = Target.from_url(state_db).connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "REPLACE INTO leases (name, holder, host, pid, generation, acquired_at, heartbeat_at, expires_at)"
                    " VALUES ('run', %s, %s, %s, 1, 0, UNIX_TIMESTAMP(), UNIX_TIMESTAMP() + 60)",
                    (f"{socket.gethostname()}:{dead.pid}:{namespace}:abcd1234", socket.gethostname(), dead.pid),
                )
        finally:
            conn.close()
        with stores(state_db, 1) as (one_shot,):
            if taken:
                one_shot.lock()
                assert one_shot.generation == 2
            else:
                with pytest.raises(LeaseHeld, match=f"pid {dead.pid}"):
                    one_shot.lock()


def test_a_follower_stops_once_a_newer_mcnotify_upgraded_the_schema_under_it(state_db: str) -> None:
    """A rolling upgrade: the new version migrates the database while old followers still run. An old one stops
    at its next transaction rather than write rows in a shape it does not know (its supervisor then starts the
    new version)."""
    from mcnotify.state.mysql import LeaseLost
    from mcnotify.state.mysql_schema import MIGRATIONS

    with stores(state_db, 1) as (a,):
        a.register("follower")
        conn = Target.from_url(state_db).connect()
        try:
            with conn.cursor() as cur:
                cur.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS) + 1,))
            time.sleep(LEASE)  # a heartbeat or two
            with pytest.raises(LeaseLost, match="upgraded by a newer mcnotify"), a.transaction():
                a.set_meta("source.watermark", 1)
        finally:
            with conn.cursor() as cur:
                cur.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS),))
            conn.close()
    assert MySQLStore(Target.from_url(state_db), read_only=True).get_meta("source.watermark") is None


def test_a_follower_frozen_inside_a_transaction_is_cut_off_and_its_row_locks_freed(state_db: str) -> None:
    """Frozen between two statements of a fenced transaction, a follower holds the pipeline lease row in share
    mode and the rows it wrote locked: without more, the others would wait for as long as it stays frozen. A
    lease later, another's heartbeat ends its connection; the pipeline and its rows move on, and the frozen
    one's transaction is gone when it wakes."""
    with stores(state_db, 2) as (a, b):
        a.register("follower")
        b.register("follower")
        assert a.take_pipeline()
        with a.transaction():
            batch = a.create_batch()
            a.add_notifications(batch, [_sms(str(i)) for i in range(6)])
            a.update_batch(batch, status=BatchStatus.CLAIMED)
        frozen = contextlib.ExitStack()
        frozen.enter_context(a.fenced())
        frozen.enter_context(a.transaction())
        a.set_meta("source.watermark", 7)  # the meta row, locked
        a.conn.execute("SELECT seq FROM notifications WHERE batch_id = ? FOR UPDATE", (batch,))  # every row
        _freeze(a)
        started = time.monotonic()
        while not b.take_pipeline():
            assert time.monotonic() - started < LEASE + 3, "the frozen owner's locks held the takeover up"
            time.sleep(0.1)
        rows = b.claim_work(batch, "sms", (Delivery.PENDING,), limit=100)
        assert len(rows) == 6  # no longer locked by the frozen one
        with b.fenced(), b.transaction():
            b.set_meta("source.watermark", 8)
        assert time.monotonic() - started < LEASE + 4
        with pytest.raises(StateDatabaseError, match=r"Lost connection|closed"), frozen:  # a wakes: cut off
            a.set_meta("source.watermark", 9)
        assert b.get_meta("source.watermark") == 8
        # It reconnects for what comes next and is refused as the pipeline's writer.
        with pytest.raises(PipelineLost), a.fenced(), a.transaction():
            a.set_meta("source.watermark", 10)
        assert b.get_meta("source.watermark") == 8


def test_an_owner_that_loses_the_pipeline_during_its_upload_publishes_nothing(env: Env, state_db: str) -> None:
    """No transaction covers an SFTP upload, which can take long: the lease is checked again once the file is up
    under a name of its own, before it takes the name MC imports. A takeover meanwhile (the uploader froze)
    leaves the file MC imports as the new owner made it, and no partial file behind."""
    from mcnotify.config import load
    from mcnotify.mc import sftp

    section = load(env.config).sftp
    (env.import_dir / section.file_name).write_bytes(b"the new owner's file\r\n")
    local = env.tmp / "stale.csv"
    local.write_bytes(b"SubscriberKey,EmailAddress\r\n" + b"k,old@example.com\r\n" * 20000)
    with stores(state_db, 2) as (a, b):
        a.register("follower")
        b.register("follower")
        assert a.take_pipeline()

        def frozen_then_woken() -> None:
            _taken_over(a, by=b)  # the upload took longer than the lease: another took the pipeline over
            a.check_fence()

        with pytest.raises(PipelineLost):
            sftp.upload(section, local, section.file_name, before_publish=frozen_then_woken)
    assert (env.import_dir / section.file_name).read_bytes() == b"the new owner's file\r\n"
    assert sorted(p.name for p in env.import_dir.iterdir()) == [section.file_name]


def test_an_owner_frozen_after_the_fence_said_yes_publishes_nothing_when_it_wakes(
    state_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fence's answer ages: an owner that froze right after the database said "yours" (its heartbeat frozen
    with it) and woke past the lease, with another owner meanwhile, is refused though it has not asked again."""
    with stores(state_db, 2) as (a, b):
        a.register("follower")
        b.register("follower")
        assert a.take_pipeline()
        a.check_fence()  # current: the owner may upload
        ask = a.conn.execute

        def answered_then_frozen(sql: str, args: Any = ()) -> Any:
            answer = ask(sql, args)
            if "AS remaining" in sql:
                _taken_over(a, by=b)
            return answer

        monkeypatch.setattr(a.conn, "execute", answered_then_frozen)
        with pytest.raises(PipelineLost, match="ran out"):
            a.check_fence()


def test_a_fenced_import_start_is_never_sent(env: Env, state_db: str) -> None:
    """The import start is fenced once its token is in hand, right before the request goes out: an owner that
    lost the pipeline meanwhile sends nothing, and MC starts no import."""
    from mcnotify.config import load
    from mcnotify.mc import soap
    from mcnotify.mc.auth import TokenProvider
    from mcnotify.mc.client import McClient
    from mcnotify.state.tokens import NoTokenCache

    section = load(env.config).marketing_cloud
    client = McClient(section, TokenProvider(section, NoTokenCache()))
    with stores(state_db, 2) as (a, b):
        a.register("follower")
        b.register("follower")
        assert a.take_pipeline()

        def lost_meanwhile() -> None:
            _taken_over(a, by=b)
            a.check_fence()

        try:
            with pytest.raises(PipelineLost):
                soap.start_import(client, "mcnotify-subscribers", before_send=lost_meanwhile)
            assert env.sandbox.account.tasks == {}
            assert soap.start_import(client, "mcnotify-subscribers", before_send=b.check_fence)  # the owner's goes
            assert len(env.sandbox.account.tasks) == 1
        finally:
            client.close()


def test_an_import_start_the_fence_refused_while_still_the_owner_is_started_at_once_next_run(
    env: Env, app_db: Any, state_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fence refuses an import start while this process still owns the pipeline (its heartbeat ran late: a
    database hiccup, a long GC): the request was never sent, so the start is forgotten and the next run starts the
    import at once, instead of asking MC's runs for one that never began. (Found by an attack on the fence.)"""
    from mcnotify.mc import soap

    env.values["state"] = {"url": state_db}
    env.write()
    real = soap.start_import

    def heartbeat_late(client: Any, key: str, before_send: Any = None) -> str:
        store = before_send.__self__

        def check() -> None:
            _freeze(store)  # the heartbeat is late: the lease has 0.5 s left, under the fence's margin
            store.conn.execute("UPDATE leases SET expires_at = UNIX_TIMESTAMP(NOW(6)) + 0.5 WHERE name = 'pipeline'")
            before_send()

        return real(client, key, before_send=check)

    monkeypatch.setattr(soap, "start_import", heartbeat_late)
    app_db(event_rows(1, people(3)))
    first = run_cli(env.config, "run-all")
    assert first.exit_code == 75 and "has under" in first.output, first.output
    assert env.sandbox.account.tasks == {}  # never sent
    with stores(state_db, 1) as (store,):
        batch = store.batch(1)
        assert batch is not None and batch.import_status != "starting", batch
    monkeypatch.setattr(soap, "start_import", real)
    second = run_cli(env.config, "-v", "run-all")
    assert second.exit_code == 0, second.output
    assert "asking MC" not in second.output and "MC lists" not in second.output, second.output
    assert len(env.sandbox.account.tasks) == 1
    delivered = Counter(m["messageKey"] for m in env.accepted())
    assert len(delivered) == 9 and set(delivered.values()) == {1}


# -- three real followers -------------------------------------------------------------------------------------
def _follower(env: Env, name: str) -> tuple[subprocess.Popen[str], Path]:
    log = env.tmp / f"{name}.log"
    command = [sys.executable, "-m", "mcnotify", "-v", "--config", str(env.config), "run-all", "--follow"]
    with log.open("a") as out:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=out, text=True), log


def _owner_pid(env: Env) -> int | None:
    data = json.loads(run_cli(env.config, "status", "--json").output)
    owner = data["pipeline_owner"]
    return None if owner is None else int(owner["pid"])


def _wait(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _gaps(times: list[float], start: float, end: float) -> tuple[float, float]:
    """The longest stretch in [start, end] with no delivery, and when it began."""
    inside = sorted(t for t in times if start <= t <= end)
    edges = [start, *inside, end]
    return max(((b - a, a) for a, b in itertools.pairwise(edges)), default=(0.0, start))


def test_three_followers_killed_at_random_and_one_frozen_deliver_everything_once_without_long_pauses(
    env: Env, app_db: Any, state_db: str
) -> None:
    """The issue's scenario, shortened: three followers, events arriving at 10/s, followers SIGKILLed at random
    (the pipeline's owner among them) and restarted, the owner frozen (SIGSTOP) for four leases then thawed. Every
    notification goes out exactly once, no row is left behind, deliveries never pause for more than lease + 10 s,
    and the thawed one writes and uploads nothing for the pipeline it lost."""
    lease = 3.0
    env.sandbox.settings.import_lag = 0.3
    env.values["state"] = {"url": state_db, "lease": lease}
    env.write(source={"poll_interval": 0.2}, **{"import": {"poll_interval": 0.1}})
    rng = random.Random(13)
    procs = {name: _follower(env, name) for name in ("a", "b", "c")}
    arrived: list[int] = []
    streaming = threading.Event()
    streaming.set()

    def stream() -> None:  # 10 events a second, each one three notifications
        n = 0
        while streaming.is_set():
            app_db(event_rows(1 + n * 3, people(1, offset=n)))
            arrived.append(3)
            n += 1
            time.sleep(0.1)

    def owner_name() -> str:
        _wait(lambda: _owner_pid(env) is not None, 3 * lease + 10, "an owner of the pipeline")
        pid = _owner_pid(env)
        return next(name for name, (p, _) in procs.items() if p.pid == pid)

    def kill(name: str) -> None:
        procs[name][0].send_signal(signal.SIGKILL)
        procs[name][0].wait(5)
        time.sleep(1)  # what systemd's RestartSec or a pod's restart would take, at least
        procs[name] = _follower(env, name)

    feeder = threading.Thread(target=stream, daemon=True)
    try:
        _wait(lambda: _owner_pid(env) is not None, 20, "the followers to start")
        began = time.time()
        feeder.start()
        time.sleep(5)
        assert run_cli(env.config, "run-all").exit_code == 75  # a timer's run while followers work
        kill(owner_name())  # the pipeline's owner: the hardest case
        time.sleep(4)
        kill(rng.choice(sorted(procs)))
        time.sleep(4)
        frozen = owner_name()
        procs[frozen][0].send_signal(signal.SIGSTOP)
        time.sleep(4 * lease)
        woke_at = procs[frozen][1].stat().st_size
        thawed_at = time.monotonic()  # the sandbox's clock
        procs[frozen][0].send_signal(signal.SIGCONT)
        time.sleep(3)
        kill(rng.choice(sorted(set(procs) - {frozen})))
        time.sleep(5)
        streaming.clear()
        feeder.join(5)
        ended = time.time()
        expected = sum(arrived)
        _wait(lambda: len(env.accepted()) >= expected, 30, "every notification")
        time.sleep(2)  # anything late or doubled would show now
        for proc, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs.values():
            proc.wait(20)
    finally:
        streaming.clear()
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
    accepted = env.accepted()
    keys = Counter(m["messageKey"] for m in accepted)
    assert len(keys) == expected and set(keys.values()) == {1}, keys.most_common(3)
    data = json.loads(run_cli(env.config, "status", "--json").output)
    assert data["totals"] == {"sent": expected}, data["totals"]  # nothing stuck: no pending, sending, unknown
    # Each stopped cleanly and left; a SIGKILLed one could not, and the follower restarted on this host freed its
    # claims and its row: nobody is listed.
    assert [(p["pid"], p["fresh"]) for p in data["processes"]] == []
    pause, at = _gaps([float(m["acceptedAt"]) for m in accepted], began + 2, ended)
    assert pause <= lease + 10, f"no delivery for {pause:.1f} s from {at - began:.1f} s in"
    # The thawed one uploaded and started nothing for the pipeline it had lost: after waking, its log shows no
    # upload or import start until it owns the pipeline again (it need not: the new owner keeps it).
    # (In bytes: the log holds non-ASCII text. From the first line begun after the thaw: one whose start was
    # flushed before the freeze was logged before it.)
    log_bytes = procs[frozen][1].read_bytes()
    woke = log_bytes[woke_at:] if log_bytes[woke_at - 1 : woke_at] == b"\n" else log_bytes[woke_at:].partition(b"\n")[2]
    after = woke.decode(errors="replace").split("owns the import pipeline")[0]
    assert "taken over by another process" in after or "lost the import pipeline" in after, after[-2000:]
    # An upload begun after the thaw was never published. (One begun before the freeze may be logged as done after
    # it: the log cannot tell a rename made before the freeze from one made after; the fence's own test does.)
    assert "bytes uploaded to" not in after.partition("sync: uploading")[2], after[-2000:]
    # An import start logged after the thaw is one sent before the freeze (its reply was read after): the sandbox's
    # record of each such task says it came before the thaw (a start sent after it could not).
    late = [
        task
        for task in re.findall(r"sync: started import '[^']*', task (\S+)", after)
        if env.sandbox.account.tasks[task].started_at >= thawed_at
    ]
    assert late == [], (late, after[-2000:])


def test_followers_ride_out_a_restart_of_the_state_database(env: Env, app_db: Any, state_db: str) -> None:
    """The database the followers share goes away for a few seconds (a restart, a failover): nobody exits, and
    within lease + 10 s of its return the rows written meanwhile go out, each once."""
    lease = 3.0
    env.sandbox.settings.import_lag = 0.3
    env.values["state"] = {"url": state_db, "lease": lease}
    env.write(source={"poll_interval": 0.2}, **{"import": {"poll_interval": 0.1}})
    procs = {name: _follower(env, name) for name in ("a", "b")}
    try:
        app_db(event_rows(1, people(3)))
        _wait(lambda: len(env.accepted()) >= 9, 30, "the first rows")
        env.mariadb.kill_server()
        time.sleep(3)  # the followers meet a database that is gone
        env.mariadb.start_server()
        back = time.monotonic()
        app_db(event_rows(100, people(3, offset=10)))
        _wait(lambda: len(env.accepted()) >= 18, lease + 10, "the rows written after the restart")
        assert time.monotonic() - back <= lease + 10
        assert all(p.poll() is None for p, _ in procs.values())
        for proc, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(20) for proc, _ in procs.values()]
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert codes == [0, 0], [log.read_text()[-2000:] for _, log in procs.values()]
    keys = Counter(m["messageKey"] for m in env.accepted())
    assert len(keys) == 18 and set(keys.values()) == {1}, keys.most_common(3)


def test_one_token_for_all_processes_and_a_refresh_by_one_is_seen_by_the_others(env: Env, state_db: str) -> None:
    from mcnotify.mc.auth import TokenProvider
    from mcnotify.state.mysql import MySQLTokenCache
    from tests.test_secrets import mc_section

    MySQLStore(Target.from_url(state_db)).close()  # the schema
    section = mc_section(env.sandbox.url, secret=env.values["marketing_cloud"]["client_secret"])
    a, b = (TokenProvider(section, MySQLTokenCache(Target.from_url(state_db))) for _ in range(2))
    first = a.get()
    assert b.get() == first and b.requests_made == 0  # the second process reuses the first one's token
    a.invalidate(first)  # MC answered 401 to a: it gets a new token, kept for all
    second = a.get()
    assert second.access_token != first.access_token and a.requests_made == 2
    b.invalidate(first)  # b's next request also gets a 401 for the old one: it takes a's new token
    assert b.get() == second and b.requests_made == 0
