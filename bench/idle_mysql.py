"""`mcnotify run-all` with nothing to do, on a MariaDB state ([state] url) beside the SQLite file, as wall time
per run (median of --runs, each a fresh process). Issue 13's target for the MariaDB state: <= 0.6 s.

    python bench/idle_mysql.py [--runs 15]

Starts a private MariaDB (as the tests do) and the sandbox; one real run-all first creates the schema and
drains the few source rows, then the idle runs are timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as bench  # noqa: E402  (bench/run.py: the sandbox and config helpers)


def idle_seconds(config: Path, runs: int) -> list[float]:
    bench.run_measured([*bench.MCNOTIFY, "-q", "--config", str(config), "run-all"])  # schema, first rows
    return [bench.run_measured([*bench.MCNOTIFY, "-q", "--config", str(config), "run-all"])[0] for _ in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    from tests.services import start_mariadb

    bench.compile_package()
    db = start_mariadb()
    with tempfile.TemporaryDirectory(prefix="mcnotify-bench-") as tmp:
        workdir = Path(tmp)
        sandbox, base = bench.start_sandbox(workdir, 0)
        try:
            with db.connect() as conn, conn.cursor() as cur:
                cur.execute(
                    "CREATE TABLE notifications (notification_id BIGINT PRIMARY KEY, template VARCHAR(64),"
                    " subscriber_key VARCHAR(64), email VARCHAR(128), phone VARCHAR(32), sender_name VARCHAR(64))"
                )
                cur.execute(
                    "INSERT INTO notifications VALUES (1, 'envelope-received', 'm-1', 'a@example.com', NULL, 'S')"
                )
            with db.admin() as conn, conn.cursor() as cur:
                cur.execute("CREATE DATABASE state CHARACTER SET utf8mb4")
                cur.execute(f"GRANT ALL ON state.* TO '{db.user}'@'127.0.0.1'")
            sqlite_config = bench.configure(base, workdir, db.url, 1000)
            text = sqlite_config.read_text()
            state_url = db.url.rsplit("/", 1)[0] + "/state"
            mysql_config = workdir / "mysql.toml"
            mysql_config.write_text(
                "\n".join(
                    f"url = {json.dumps(state_url)}" if line.startswith("path = ") and "state.db" in line else line
                    for line in text.splitlines()
                )
                + "\n"
            )
            mysql_config.chmod(0o600)
            results = {}
            for name, config in (("sqlite", sqlite_config), ("mysql", mysql_config)):
                started = time.perf_counter()
                times = idle_seconds(config, args.runs)
                results[name] = {
                    "median_s": round(statistics.median(times), 3),
                    "max_s": round(max(times), 3),
                    "runs": len(times),
                    "bench_s": round(time.perf_counter() - started, 1),
                }
        finally:
            bench.stop(sandbox)
            db.stop()
    print("run-all with nothing to do (a fresh process each run):")
    for name, r in results.items():
        verdict = "ok" if r["median_s"] <= 0.6 else "OVER 0.6 s"
        print(f"  {name:<7} median {r['median_s']:.3f} s, max {r['max_s']:.3f} s over {r['runs']} runs  {verdict}")


if __name__ == "__main__":
    main()
