"""The sync's reading process and its pipe, on their own: the stream of rows must arrive whole."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

from mcnotify.config import parse
from mcnotify.state import StateStore
from mcnotify.steps import Context, sync_worker
from tests.helpers import QUERY, TEMPLATES


def _source(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE notifications (notification_id INTEGER PRIMARY KEY, template TEXT, subscriber_key TEXT,"
            " email TEXT, phone TEXT, sender_name TEXT, receiver_name TEXT, amount INTEGER)"
        )
        conn.executemany(
            "INSERT INTO notifications VALUES (?, 'envelope-received', ?, ?, NULL, ?, 'R', 1)",
            ((i, f"m-{i}", f"member{i}@example.com", f"Sender{i}") for i in range(1, rows + 1)),
        )
    conn.close()


def _context(tmp_path: Path, rows: int) -> Context:
    _source(tmp_path / "app.db", rows)
    settings = parse(
        {
            "state": {"path": str(tmp_path / "state.db")},
            "source": {"url": f"sqlite:///{tmp_path / 'app.db'}", "query": QUERY, "batch_limit": rows},
            "marketing_cloud": {"auth_url": "http://127.0.0.1:9/", "client_id": "c", "client_secret": "s"},
            "sftp": {"host": "127.0.0.1", "username": "u", "password": "p", "known_hosts": "/dev/null"},
            "import": {"definition_key": "subs"},
            "templates": dict(TEMPLATES),
        },
        environ={},
    )
    return Context(settings, StateStore(tmp_path / "state.db"))


def _worker_pids() -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError, StopIteration, ValueError):
            ppid = next(int(x.split()[1]) for x in status.read_text().splitlines() if x.startswith("PPid"))
            if ppid == os.getpid() and b"sync_worker" in (status.parent / "cmdline").read_bytes():
                found.append(int(status.parent.name))
    return found


def _pause_and_resume(stop: threading.Event, pauses: list[int]) -> None:
    """Ctrl-Z and fg (or a frozen cgroup, or a profiler) again and again on the reading process."""
    while not stop.wait(0.002):
        for pid in _worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                time.sleep(0.001)
                os.kill(pid, signal.SIGCONT)
                pauses[0] += 1


def test_rows_arrive_whole_while_the_reading_process_is_paused_and_resumed(tmp_path: Path) -> None:
    rows = 60_000
    ctx = _context(tmp_path, rows)
    stop, pauses = threading.Event(), [0]
    pauser = threading.Thread(target=_pause_and_resume, args=(stop, pauses), daemon=True)
    pauser.start()
    received: list[tuple[str, str | None, str | None]] = []
    try:
        for chunk, _top, _count in sync_worker.classified(ctx, 0, rows):
            # A slow consumer, like the state writer: the pipe stays full, so pauses land inside writes.
            time.sleep(0.03)
            received += [(n.notification_id, n.address, n.from_name) for n in chunk]
    finally:
        stop.set()
        pauser.join(5)
        ctx.store.close()
    assert pauses[0] > 20, "the reading process was never paused: this test would prove nothing"
    assert received == [(str(i), f"member{i}@example.com", f"Sender{i} via EZTABLE") for i in range(1, rows + 1)]


def test_a_damaged_message_is_caught_not_unpickled() -> None:
    import io
    import pickle
    import queue
    import zlib

    body = pickle.dumps(("chunk", ([], 7, 1)))
    good = len(body).to_bytes(8, "big") + zlib.crc32(body).to_bytes(4, "big") + body
    flipped = good[:-3] + bytes([good[-3] ^ 0x01]) + good[-2:]
    huge = (1 << 40).to_bytes(8, "big") + bytes(4)
    for stream, expected in ((good + good, [body, body, None]), (good + flipped + good, [body, sync_worker.DAMAGED])):
        frames: queue.Queue[bytes | None] = queue.Queue()
        sync_worker._drain(io.BytesIO(stream), frames)
        assert [frames.get_nowait() for _ in range(frames.qsize())] == expected
    frames = queue.Queue()
    sync_worker._drain(io.BytesIO(huge), frames)
    assert frames.get_nowait() is sync_worker.DAMAGED
