"""Send throughput of followers: three `run-all --follow` sharing one MariaDB state against one on the SQLite
file (issue 13: the database must not be the bottleneck). Figures only; no test asserts timings.

    python bench/shared_send.py [--messages 20000] [--latency-ms 50] [--followers 3]

Each backend: a one-shot `sync` and `wait-import` make the messages ready (transactional email), then the
followers start and the clock runs until the state records every message sent (wall time, from the followers'
start, so their start-up is included).
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as bench  # noqa: E402  (bench/run.py: the sandbox and config helpers)


def _sent(state: Path | str) -> int:
    if isinstance(state, Path):
        conn = sqlite3.connect(state)
        try:
            return int(conn.execute("SELECT count(*) FROM notifications WHERE status = 'sent'").fetchone()[0])
        finally:
            conn.close()
    from mcnotify.state.mysql import Target

    db = Target.from_url(state).connect()
    try:
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM notifications WHERE status = 'sent'")
            row = cur.fetchone()
            return int(row[0]) if row else 0
    finally:
        db.close()


def measure(config: Path, state: Path | str, followers: int, messages: int) -> float:
    cli = [*bench.MCNOTIFY, "-q", "--config", str(config)]
    subprocess.run([*cli, "sync"], check=True, capture_output=True)
    subprocess.run([*cli, "wait-import"], check=True, capture_output=True)
    started = time.perf_counter()
    procs = [
        subprocess.Popen([*cli, "run-all", "--follow"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(followers)
    ]
    try:
        while _sent(state) < messages:
            if time.perf_counter() - started > 600:
                raise SystemExit("not everything was sent within 10 minutes")
            time.sleep(0.05)
        return time.perf_counter() - started
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--followers", type=int, default=3)
    args = parser.parse_args()
    from tests.services import start_mariadb

    db = start_mariadb()
    results: dict[str, float] = {}
    try:
        for name in ("sqlite", "mysql"):
            with tempfile.TemporaryDirectory(prefix="mcnotify-bench-") as tmp:
                workdir = Path(tmp)
                sandbox, base = bench.start_sandbox(workdir, args.latency_ms, import_lag=0.2)
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
                    results[f"{name} x{followers}"] = measure(config, state, followers, args.messages)
                finally:
                    bench.stop(sandbox)
    finally:
        db.stop()
    print(f"send throughput, {args.messages:,} transactional emails ready, {args.latency_ms:g} ms MC latency:")
    for label, seconds in results.items():
        print(f"  {label:<10} {seconds:6.2f} s  {args.messages / seconds:8,.0f} messages/s")


if __name__ == "__main__":
    main()
