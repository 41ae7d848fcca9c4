"""Send throughput of followers: three `run-all --follow` sharing one MariaDB state against one on the SQLite
file (issue 13: the database must not be the bottleneck). Figures only; no test asserts timings.

    python bench/shared_send.py [--messages 100000] [--latency-ms 50] [--followers 3] [--repeat 3]

Each backend: a one-shot `sync` and `wait-import` make the messages ready (transactional email), then the
followers start and the clock runs until the state records every message sent (wall time, from the followers'
start, so their start-up is included); and the sending itself, from the first message the sandbox accepted to the
last (followers are long-running: they start once, not per burst).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import latency  # noqa: E402  (bench/latency.py: the sandbox's record)
import run as bench  # noqa: E402  (bench/run.py: the sandbox and config helpers)

ANY_LEFT = "SELECT COUNT(*) FROM (SELECT 1 FROM notifications WHERE status IN ('pending', 'sending') LIMIT 1) AS t"


def _left(state: Path | str) -> int:
    """1 while a message is not yet recorded sent, else 0 (an index probe: polling must not load the database)."""
    if isinstance(state, Path):
        conn = sqlite3.connect(state)
        try:
            query = (
                "SELECT COUNT(*) FROM (SELECT 1 FROM notifications WHERE status IN ('pending', 'sending') LIMIT 1) AS t"
            )
            return int(conn.execute(query).fetchone()[0])
        finally:
            conn.close()
    from mcnotify.state.mysql import Target

    db = Target.from_url(state).connect()
    try:
        with db.cursor() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM notifications WHERE status IN ('pending', 'sending') LIMIT 1) AS t"
            )
            row = cur.fetchone()
            return int(row[0]) if row else 0
    finally:
        db.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sending_window(url: str) -> float:
    """Seconds from the first message MC accepted to the last: the sending itself, without the followers'
    start-up (a follower is a long-running process: it starts once, not per burst)."""
    times = [float(m["acceptedAt"]) for m in latency.accepted(url)]
    return max(times) - min(times) if times else 0.0


def measure(
    config: Path, state: Path | str, followers: int, messages: int, others: dict[str, int], url: str
) -> tuple[float, dict[str, float], float]:
    """Wall seconds until every message is recorded sent, the CPU seconds spent meanwhile by the followers and by
    `others` (name: pid: the sandbox, the database server), and the sending window."""
    cli = [*bench.MCNOTIFY, "-q", "--config", str(config)]
    subprocess.run([*cli, "sync"], check=True, capture_output=True)
    subprocess.run([*cli, "wait-import"], check=True, capture_output=True)
    before = {name: cpu_seconds(pid) for name, pid in others.items()}
    started = time.perf_counter()
    procs = [
        subprocess.Popen([*cli, "run-all", "--follow"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(followers)
    ]
    try:
        while _left(state) > 0:
            if time.perf_counter() - started > 600:
                raise SystemExit("not everything was sent within 10 minutes")
            time.sleep(0.2)
        wall = time.perf_counter() - started
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in others.items()}
        cpu["followers"] = sum(cpu_seconds(p.pid) for p in procs)
        return wall, cpu, sending_window(url)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--followers", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, alternating; the median is reported")
    args = parser.parse_args()
    from tests.services import start_mariadb

    db = start_mariadb()
    results: dict[str, list[tuple[float, dict[str, float], float]]] = {}
    try:
        for name in ("sqlite", "mysql") * args.repeat:
            with tempfile.TemporaryDirectory(prefix="mcnotify-bench-") as tmp:
                workdir = Path(tmp)
                sandbox, base = bench.start_sandbox(workdir, args.latency_ms, import_lag=0.2)
                url = next(line.split('"')[1] for line in base.splitlines() if line.startswith("auth_url"))
                try:
                    source = workdir / "bench_source.sqlite"
                    bench.sqlite_source(source, args.messages, args.messages)
                    config = bench.configure(base, workdir, f"sqlite:///{source}", args.messages)
                    state: Path | str = workdir / "state.db"
                    followers = 1
                    if name == "mysql":
                        with db.admin() as conn, conn.cursor() as cur:
                            cur.execute("DROP DATABASE IF EXISTS bench_state")
                            cur.execute("CREATE DATABASE bench_state CHARACTER SET utf8mb4")
                            cur.execute(f"GRANT ALL ON bench_state.* TO '{db.user}'@'127.0.0.1'")
                        state = db.url.rsplit("/", 1)[0] + "/bench_state"
                        text = config.read_text().replace(f'path = "{workdir / "state.db"}"', f'url = "{state}"')
                        config.write_text(text)
                        followers = args.followers
                    config.chmod(0o600)
                    others = {"sandbox": sandbox.pid, **({"mariadbd": db.proc.pid} if name == "mysql" else {})}
                    run = measure(config, state, followers, args.messages, others, url)
                    results.setdefault(f"{name} x{followers}", []).append(run)
                finally:
                    bench.stop(sandbox)
    finally:
        db.stop()
    print(f"send throughput, {args.messages:,} transactional emails ready, {args.latency_ms:g} ms MC latency:")
    for label, runs in results.items():
        seconds, cpu, _ = sorted(runs, key=lambda r: r[0])[len(runs) // 2]  # the median run
        spent = ", ".join(f"{name} {value:.1f}" for name, value in cpu.items())
        rates = ", ".join(f"{args.messages / r[0]:,.0f}" for r in runs)
        window = sorted(r[2] for r in runs)[len(runs) // 2]
        windows = ", ".join(f"{args.messages / r[2]:,.0f}" for r in runs if r[2])
        print(
            f"  {label:<10} {seconds:6.2f} s  {args.messages / seconds:8,.0f} messages/s (median of {rates})"
            f"   CPU seconds: {spent}"
        )
        print(
            f"  {'':<10} sending, first to last accepted: {window:6.2f} s  {args.messages / max(window, 1e-9):8,.0f}"
            f" messages/s (median of {windows})"
        )


if __name__ == "__main__":
    main()
