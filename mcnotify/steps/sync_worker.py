"""Reading and validating a large sync in a second process, so the main one only writes the state.

PyMySQL and the validators are pure Python and hold one core; on a big batch a child process
(`python -m mcnotify.steps.sync_worker`) reads the source from `after` on, classifies the rows and hands them
over its stdout in pickled chunks, while the parent dedupes against the state, stores them and moves the
watermark, exactly as for rows it read itself. (Classifying in the parent instead measured slower: the
parent's share then outweighs the child's.) The child ignores SIGTERM and SIGINT (the parent decides when to
stop) and dies of a broken pipe if the parent is killed.

Each message goes over the pipe as its length, a CRC-32 and the pickle, written with plain os.write calls:
CPython's buffered writer was seen to damage the stream when a stop signal (Ctrl-Z, a frozen cgroup, a profiler)
interrupted a large write into a full pipe, and a damaged message must end the sync with a clear error
rather than be unpickled.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from typing import IO, Any

from mcnotify.errors import ConfigError, McnotifyError, ServiceUnavailable
from mcnotify.state.store import NewNotification
from mcnotify.steps import Context

HEADER = 12  # message length (8 bytes) and CRC-32 (4 bytes), big-endian
MAX_MESSAGE = 1 << 30
DAMAGED = b"damaged"
ERRORS: dict[str, type[McnotifyError]] = {"ConfigError": ConfigError, "ServiceUnavailable": ServiceUnavailable}


def classified(ctx: Context, after: Any, limit: int, kind: str | None = None) -> Iterator[tuple[Any, Any, int]]:
    """The source's rows after `after`, read and classified by the child process, in chunks. `kind`: the
    cursor's kind established so far (numbers or text), so the child quarantines the same rows."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # works from a zipapp too
    worker = subprocess.Popen(
        [sys.executable, "-m", "mcnotify.steps.sync_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        # Out of the terminal's process group: a Ctrl-C is this process's to handle (it stops the child), and
        # the child would otherwise print a KeyboardInterrupt traceback from its imports.
        start_new_session=True,
    )
    assert worker.stdin is not None and worker.stdout is not None
    # A thread drains the pipe as fast as the child fills it, so the child never waits for the parent's
    # writes to SQLite (a pipe holds only 64 KiB); the queue's bound keeps memory flat.
    frames: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
    reader = threading.Thread(target=_drain, args=(worker.stdout, frames), name="mcnotify-sync-reader", daemon=True)
    try:
        _write_all(worker.stdin.fileno(), pickle.dumps((ctx.settings, after, limit, kind)))
        worker.stdin.close()
        reader.start()
        while True:
            try:
                frame = frames.get(timeout=0.2)
            except queue.Empty:
                ctx.check_stop()  # a stop request ends the sync (the child is killed below); nothing half-stored
                continue
            if frame is None:
                ctx.check_stop()
                raise McnotifyError("sync: the reading process ended without finishing")
            if frame is DAMAGED:
                raise McnotifyError(
                    "sync: data from the reading process arrived damaged; nothing of it was stored, run sync again"
                )
            kind, payload = pickle.loads(frame)
            if kind == "done":
                return
            if kind == "error":
                name, message = payload
                raise ERRORS.get(name, McnotifyError)(message if name in ERRORS else f"sync: {name}: {message}")
            rows, top, count = payload
            yield [NewNotification.from_tuple(row) for row in rows], top, count
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(10)
        while reader.is_alive():  # let the reader see the end of the pipe and finish
            with contextlib.suppress(queue.Empty):
                frames.get(timeout=0.1)
        worker.stdout.close()


def _drain(pipe: IO[bytes], frames: queue.Queue[bytes | None]) -> None:
    try:
        while (header := pipe.read(HEADER)) and len(header) == HEADER:
            size, crc = int.from_bytes(header[:8], "big"), int.from_bytes(header[8:], "big")
            if size > MAX_MESSAGE:
                frames.put(DAMAGED)
                return
            body = pipe.read(size)
            if len(body) != size:  # the child died mid-message
                break
            if zlib.crc32(body) != crc:
                frames.put(DAMAGED)
                return
            frames.put(body)
    except (OSError, ValueError):
        pass
    frames.put(None)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _send(fd: int, message: tuple[str, Any]) -> None:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(fd, len(body).to_bytes(8, "big") + zlib.crc32(body).to_bytes(4, "big") + body)


def main() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.flush()
    out = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nothing but messages may reach the pipe
    settings, after, limit, kind = pickle.load(sys.stdin.buffer)
    from mcnotify.source import open_source
    from mcnotify.steps.classify import CursorOrder, classified_chunks, pages

    try:
        source = open_source(settings.source)
        try:
            rows = pages(source, after, limit, CursorOrder(settings.source.cursor_column, kind))
            for notifications, top, count in classified_chunks(settings, rows):
                _send(out, ("chunk", ([n.to_tuple() for n in notifications], top, count)))
        finally:
            source.close()
        _send(out, ("done", None))
    except BrokenPipeError:
        pass  # the parent is gone or has all it wants
    except BaseException as exc:
        with contextlib.suppress(BrokenPipeError):
            _send(out, ("error", (type(exc).__name__, str(exc))))


if __name__ == "__main__":
    main()
