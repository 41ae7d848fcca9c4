"""mcnotify latency benchmark: event -> accepted by MC, with `run-all --follow` against the sandbox.

The sandbox runs as its own process with an MC import of --import-lag seconds (default 15) and --latency-ms per
request (default 50). Events arrive at --rate a second for --seconds (default 10/s for 60 s), each one email and
one SMS to its receiver: 80 % to members MC already holds, ~8 % with a changed email, the rest new members. The
follower runs throughout; the figures are event -> accepted p50/p95/max per channel and kind of member, for the
transactional API and for triggered sends. Then, with --burst N, N rows committed at once; and the follower's
RSS, open files and CPU while the source is quiet.

    python bench/latency.py [--import-lag 15] [--latency-ms 50] [--rate 10] [--seconds 60] [--burst 100000]
                            [--quiet-seconds 30] [--api transactional,triggered-send]

The 30-minute soak: --seconds 1800 --api transactional --quiet-seconds 60 (the follower's RSS, open files and CPU
sampled every 30 s while events arrive, growth measured after a 5-minute warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
MCNOTIFY = [sys.executable, "-m", "mcnotify"]
QUERY = (
    "SELECT notification_id, template, subscriber_key, email, phone, sender_name, event_id, created_at"
    " FROM notifications WHERE notification_id > %(after)s ORDER BY notification_id LIMIT %(limit)s"
)
KNOWN_MEMBERS = 400
SAMPLE_EVERY = 30.0  # seconds between samples of the follower's RSS, open files and CPU
WARM_UP = 300.0  # the soak's growth is measured from here (caches and pools filled)


def start_sandbox(workdir: Path, latency_ms: float, import_lag: float) -> tuple[subprocess.Popen[str], str, str]:
    """bench/run.py's sandbox, and the URL its config points at."""
    from run import start_sandbox as start  # bench/run.py, beside this file

    proc, text = start(workdir, latency_ms, import_lag)
    url = next(line.split('"')[1] for line in text.splitlines() if line.startswith("auth_url"))
    return proc, text, url


def stop(proc: subprocess.Popen[Any], signum: int = signal.SIGINT) -> None:
    proc.send_signal(signum)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def configure(base: str, workdir: Path, source: Path, api: str) -> Path:
    lines = []
    section = ""
    for line in base.splitlines():
        if line.startswith("["):
            section = line
        if line.startswith("url = ") and "sqlite" in line:
            line = f"url = {json.dumps('sqlite:///' + str(source))}"
        elif line.startswith("query = "):
            line = f"query = {json.dumps(QUERY)}\npoll_interval = 0.5\nmax_age = 0"
        elif line.startswith("path = "):
            line = f"path = {json.dumps(str(workdir / 'state.db'))}"
        elif line.startswith("poll_interval") and section == "[import]":
            line = "poll_interval = 1"
        elif line.startswith("api = ") and section == "[email]":
            line = f'api = "{api}"'
        lines.append(line)
    text = "\n".join(lines) + "\n"
    config = workdir / "mcnotify.toml"
    config.write_text(text)
    config.chmod(0o600)
    return config


def make_source(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        "CREATE TABLE notifications (notification_id INTEGER PRIMARY KEY, template TEXT, subscriber_key TEXT,"
        " email TEXT, phone TEXT, sender_name TEXT, event_id INTEGER, created_at REAL)"
    )
    return conn


class Events:
    """Writes events into the source and remembers each one's kind of member and time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.next_id = 1
        self.event = 0
        self.kinds: dict[int, str] = {}
        self.times: dict[int, float] = {}
        self.lock = threading.Lock()
        self.rng = random.Random(20261130)
        self.new_member = 100_000
        self.changed: dict[int, int] = {}

    def add(self, count: int = 1) -> None:
        rows = []
        with self.lock:
            for _ in range(count):
                self.event += 1
                roll = self.rng.random()
                if roll < 0.80:
                    member, kind = self.rng.randrange(KNOWN_MEMBERS), "known"
                    version = self.changed.get(member, 0)
                elif roll < 0.88:
                    member, kind = self.rng.randrange(KNOWN_MEMBERS), "changed"
                    version = self.changed[member] = self.changed.get(member, 0) + 1
                else:
                    self.new_member += 1
                    member, kind, version = self.new_member, "new", 0
                now = time.time()
                email = f"member{member}.v{version}@example.com"
                phone = f"0912{member % 1_000_000:06d}"
                key = f"m-{member}"
                rows.append((self.next_id, "envelope-received", key, email, phone, "Luffy", self.event, now))
                rows.append((self.next_id + 1, "envelope-received-sms", key, email, phone, "Luffy", self.event, now))
                self.next_id += 2
                self.kinds[self.event], self.times[self.event] = kind, now
            self.conn.executemany("INSERT INTO notifications VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def seed_known_members(events: Events) -> None:
    """Members MC already holds: one email each, before the measurement (imported by a first run)."""
    rows = [
        (events.next_id + i, "envelope-received", f"m-{i}", f"member{i}.v0@example.com", None, "Luffy", 0, time.time())
        for i in range(KNOWN_MEMBERS)
    ]
    events.next_id += KNOWN_MEMBERS
    events.conn.executemany("INSERT INTO notifications VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def accepted(url: str) -> list[dict[str, Any]]:
    return list(requests.get(url + "_sandbox/record", timeout=30).json()["accepted"])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def proc_sample(pid: int) -> tuple[float, int, float]:
    """RSS (MiB), open files, CPU seconds (user + system) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1]) / 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, fds, cpu


def run_case(args: argparse.Namespace, tmp: Path, api: str) -> dict[str, Any]:
    workdir = tmp / api
    workdir.mkdir()
    box, base, url = start_sandbox(workdir / "sandbox", args.latency_ms, args.import_lag)
    try:
        conn = make_source(workdir / "app.sqlite")
        config = configure(base, workdir, workdir / "app.sqlite", api)
        events = Events(conn)
        seed_known_members(events)
        seeded = subprocess.run([*MCNOTIFY, "-q", "--config", str(config), "run-all"], capture_output=True, text=True)
        if seeded.returncode != 0:
            raise SystemExit(f"seeding failed: {seeded.stderr[-2000:]}")
        before = len(accepted(url))
        follower = subprocess.Popen(
            [*MCNOTIFY, "-q", "--config", str(config), "run-all", "--follow"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2)
        period = 1 / args.rate
        started = time.monotonic()
        samples: list[tuple[float, float, int, float]] = []  # (seconds in, RSS MiB, open files, CPU seconds)
        next_sample = started
        for i in range(int(args.rate * args.seconds)):
            time.sleep(max(0.0, started + i * period - time.monotonic()))
            events.add()
            if time.monotonic() >= next_sample:  # the follower's footprint while events arrive (the soak)
                samples.append((round(time.monotonic() - started), *proc_sample(follower.pid)))
                next_sample += SAMPLE_EVERY
        expected = before + 2 * events.event
        deadline = time.monotonic() + 2 * args.import_lag + 60
        records = accepted(url)
        while len(records) < expected and time.monotonic() < deadline:
            time.sleep(1)
            records = accepted(url)
        result: dict[str, Any] = {"api": api, "events": events.event, "accepted": len(records) - before}
        warm = [x for x in samples if x[0] >= WARM_UP]
        if len(warm) >= 2:
            result["soak"] = {
                "seconds": round(args.seconds),
                "rss_mb_after_warm_up": [
                    round(warm[0][1], 1),
                    round(max(x[1] for x in warm), 1),
                    round(warm[-1][1], 1),
                ],
                "rss_growth_mb": round(warm[-1][1] - warm[0][1], 1),
                "open_files": [warm[0][2], max(x[2] for x in warm), warm[-1][2]],
                "cpu_percent_busy": round(100 * (warm[-1][3] - warm[0][3]) / max(1, warm[-1][0] - warm[0][0]), 1),
            }
        latencies: dict[str, list[float]] = {}
        for m in records[before:]:
            event = int(m["attributes"].get("event_id") or 0)
            if event in events.times:
                name = f"{m['channel']} {events.kinds[event]}"
                latencies.setdefault(name, []).append(m["acceptedAt"] - events.times[event])
        for name, values in sorted(latencies.items()):
            result[name] = {
                "count": len(values),
                "p50": round(statistics.median(values), 2),
                "p95": round(percentile(values, 0.95), 2),
                "max": round(max(values), 2),
            }
        if args.burst:
            base_count = len(records)
            events.add(args.burst // 2)
            burst_start = time.time()  # committed: the clock starts here
            target = base_count + 2 * (args.burst // 2)
            limit = time.monotonic() + args.import_lag + 120
            while len(records) < target and time.monotonic() < limit:
                time.sleep(2)
                records = accepted(url)
            done = max(m["acceptedAt"] for m in records[base_count:]) if len(records) > base_count else burst_start
            last: dict[str, float] = {}  # when the last of each kind was accepted, from the commit
            for m in records[base_count:]:
                event = int(m["attributes"].get("event_id") or 0)
                name = f"{m['channel']} {events.kinds.get(event, '?')}"
                last[name] = max(last.get(name, 0.0), round(m["acceptedAt"] - burst_start, 1))
            result["burst"] = {
                "rows": 2 * (args.burst // 2),
                "accepted": len(records) - base_count,
                "all_accepted_seconds": round(done - burst_start, 1),
                "last_accepted_seconds": dict(sorted(last.items())),
            }
        if args.quiet_seconds:
            time.sleep(5)  # warm
            rss0, fds0, cpu0 = proc_sample(follower.pid)
            time.sleep(args.quiet_seconds)
            rss1, fds1, cpu1 = proc_sample(follower.pid)
            result["quiet"] = {
                "seconds": args.quiet_seconds,
                "cpu_percent": round(100 * (cpu1 - cpu0) / args.quiet_seconds, 2),
                "rss_mb": [round(rss0, 1), round(rss1, 1)],
                "open_files": [fds0, fds1],
            }
        stop(follower, signal.SIGTERM)
        result["follower_exit"] = follower.returncode
        with sqlite3.connect(workdir / "state.db") as state:
            result["requeued"] = state.execute("SELECT TOTAL(requeued) FROM notifications").fetchone()[0]
            result["imports"] = state.execute(
                "SELECT COUNT(*) FROM batches WHERE import_task_id IS NOT NULL"
            ).fetchone()[0]
        state.close()
        return result
    finally:
        stop(box)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--import-lag", type=float, default=15.0)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--burst", type=int, default=0, help="rows committed at once after the steady part")
    parser.add_argument("--quiet-seconds", type=float, default=0.0, help="measure CPU/RSS with a quiet source")
    # The soak: --seconds 1800 --api transactional (RSS and open files sampled every 30 s after a 5-minute warm-up)
    parser.add_argument("--api", default="transactional,triggered-send")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latency.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="mcnotify-latency-") as tmp:
        for api in args.api.split(","):
            results.append(run_case(args, Path(tmp), api))
    limit_known, limit_new = 3.0, 2 * args.import_lag + 3
    print(f"\nevent -> accepted (import {args.import_lag:g} s, {args.latency_ms:g} ms a request, {args.rate:g}/s)")
    print(f"{'api':16} {'what':16} {'count':>6} {'p50':>7} {'p95':>7} {'max':>7}  target p95")
    for r in results:
        for name in sorted(k for k in r if k.startswith(("email", "sms"))):
            f = r[name]
            target = limit_new if name.endswith(("new", "changed")) and name.startswith("email") else limit_known
            ok = "yes" if f["p95"] <= target else "NO"
            figures = f"{f['count']:6} {f['p50']:7.2f} {f['p95']:7.2f} {f['max']:7.2f}"
            print(f"{r['api']:16} {name:16} {figures}  ≤ {target:g} {ok}")
        for extra in ("burst", "quiet", "soak"):
            if extra in r:
                print(f"{r['api']:16} {extra}: {r[extra]}")
        print(
            f"{r['api']:16} follower exit {r['follower_exit']}, accepted {r['accepted']} of {2 * r['events']},"
            f" {r['imports']} imports, {r['requeued']:.0f} sends refused for want of the subscriber"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
