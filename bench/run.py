"""mcnotify benchmark: prints a table and writes JSON (bench/results/latest.json).

Against the sandbox (a separate process, with --latency-ms added to every MC request):
 1. send-email messages/second, and its ratio to the bound concurrency x batch_size / latency;
 2. a naive sender (one request per message, sequential, like the old script) and mcnotify's speed-up over it;
 3. sync rows/second from a private MariaDB through validation to the uploaded CSV, and the sync's peak RSS;
 4. `mcnotify run-all` wall time with nothing to do, and `mcnotify --help`.

    python bench/run.py [--latency-ms 50] [--messages 200000] [--sync-rows 1000000] [--members 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
MCNOTIFY = [sys.executable, "-m", "mcnotify"]
QUERY = (
    "SELECT notification_id, template, subscriber_key, email, phone, sender_name"
    " FROM notifications WHERE notification_id > %(after)s ORDER BY notification_id LIMIT %(limit)s"
)


def run_measured(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child, read with wait4."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args[2:]))} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def watch_worker_rss(stop: threading.Event, peak: list[int]) -> None:
    """Sample the sync's reading process (a grandchild wait4 cannot see) for its peak RSS, in MiB."""
    while not stop.wait(0.2):
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                if b"sync_worker" not in (status.parent / "cmdline").read_bytes():
                    continue
                hwm = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM"))
            except (OSError, StopIteration):
                continue
            peak[0] = max(peak[0], int(hwm.split()[1]) // 1024)


def start_sandbox(workdir: Path, latency_ms: float, import_lag: float = 0.5) -> tuple[subprocess.Popen[str], str]:
    """The sandbox as its own process; returns it and the config it wrote."""
    command = [*MCNOTIFY, "sandbox", "--workdir", str(workdir), "--latency-ms", str(latency_ms)]
    proc = subprocess.Popen(
        [*command, "--import-lag", str(import_lag)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    config = workdir / "config.toml"
    deadline = time.monotonic() + 30
    while not (config.exists() and "[templates." in config.read_text()):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("the sandbox did not start")
        time.sleep(0.1)
    return proc, config.read_text()


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def configure(base: str, workdir: Path, source_url: str, rows: int) -> Path:
    text = base.replace("batch_limit = 50000", f"batch_limit = {rows}")
    lines = []
    for line in text.splitlines():
        if line.startswith("url = ") and "sqlite" in line:
            line = f"url = {json.dumps(source_url)}"
        elif line.startswith("query = "):
            line = f"query = {json.dumps(QUERY)}"
        elif line.startswith("path = "):
            line = f"path = {json.dumps(str(workdir / 'state.db'))}"
        elif line.startswith("poll_interval"):
            line = "poll_interval = 0.2"
        lines.append(line)
    config = workdir / "mcnotify.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def email_for(member: int) -> str:
    return f"member{member}@domain{member % 50}.example.com"


def sqlite_source(path: Path, messages: int, members: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE notifications (notification_id INTEGER PRIMARY KEY, template TEXT,"
        " subscriber_key TEXT, email TEXT, phone TEXT, sender_name TEXT)"
    )
    conn.executemany(
        "INSERT INTO notifications VALUES (?, 'envelope-received', ?, ?, NULL, ?)",
        ((i, f"m-{i % members}", email_for(i % members), f"Sender{i % 997}") for i in range(1, messages + 1)),
    )
    conn.commit()
    conn.close()


def bench_send(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    workdir = tmp / "send"
    workdir.mkdir()
    sandbox, base = start_sandbox(workdir, args.latency_ms)
    try:
        source = workdir / "app.sqlite"
        sqlite_source(source, args.messages, min(args.members, args.messages))
        config = configure(base, workdir, f"sqlite:///{source}", args.messages)
        cli = [*MCNOTIFY, "-q", "--config", str(config)]
        run_measured([*cli, "sync"])
        run_measured([*cli, "wait-import"])
        wall, _ = run_measured([*cli, "send-email"])
        status = json.loads(
            subprocess.run([*cli, "status", "--json"], capture_output=True, text=True, check=True).stdout
        )
        step = status["batches"][0]["steps"]["send-email"]
        sent = status["batches"][0]["channels"]["email"].get("sent", 0)
        batch_size, concurrency = 500, 5
        bound = concurrency * batch_size / (args.latency_ms / 1000)
        rate = sent / step["seconds"]

        # The naive sender: one request per message, one after another, like the old script.
        url = base.split('auth_url = "')[1].split('"')[0]
        client_id = base.split('client_id = "')[1].split('"')[0]
        secret = base.split('client_secret = "')[1].split('"')[0]
        session = requests.Session()
        token = session.post(
            url + "v2/token",
            json={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
            timeout=10,
        ).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        started = time.perf_counter()
        for i in range(args.naive):
            member = i % min(args.members, args.messages)
            resp = session.post(
                f"{token['rest_instance_url']}messaging/v1/email/messages/naive-{i}",
                json={
                    "definitionKey": "red-envelope-received",
                    "recipient": {"contactKey": f"m-{member}", "to": email_for(member)},
                },
                headers=headers,
                timeout=10,
            )
            resp.raise_for_status()
        naive_rate = args.naive / (time.perf_counter() - started)

        # run-all with nothing to do, and --help (median of 5).
        idle = statistics.median(run_measured([*cli, "run-all"])[0] for _ in range(5))
        helptime = statistics.median(run_measured([*MCNOTIFY, "--help"])[0] for _ in range(5))
    finally:
        stop(sandbox)
    return {
        "messages": sent,
        "send_seconds": step["seconds"],
        "send_wall_seconds": round(wall, 3),
        "send_rate": round(rate),
        "bound": round(bound),
        "ratio_to_bound": round(rate / bound, 3),
        "naive_messages": args.naive,
        "naive_rate": round(naive_rate, 1),
        "speedup": round(rate / naive_rate, 1),
        "run_all_idle_seconds": round(idle, 3),
        "help_seconds": round(helptime, 3),
    }


def bench_sync(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from tests.services import start_mariadb

    db = start_mariadb()
    workdir = tmp / "sync"
    workdir.mkdir()
    sandbox, base = start_sandbox(workdir, 0)
    try:
        with db.connect() as conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE notifications (notification_id BIGINT PRIMARY KEY, template VARCHAR(64),"
                " subscriber_key VARCHAR(64), email VARCHAR(128), phone VARCHAR(32), sender_name VARCHAR(64))"
            )
            members = min(args.members, args.sync_rows)
            cur.execute(
                "INSERT INTO notifications SELECT seq, 'envelope-received', CONCAT('m-', MOD(seq, %s)),"
                " CONCAT('member', MOD(seq, %s), '@domain', MOD(MOD(seq, %s), 50), '.example.com'), NULL,"
                " CONCAT('Sender', MOD(seq, 997)) FROM seq_1_to_" + str(args.sync_rows),
                (members, members, members),
            )
        config = configure(base, workdir, db.url, args.sync_rows)
        done, worker_rss = threading.Event(), [0]
        watcher = threading.Thread(target=watch_worker_rss, args=(done, worker_rss), daemon=True)
        watcher.start()
        wall, rss = run_measured([*MCNOTIFY, "-q", "--config", str(config), "sync"])
        done.set()
        status = json.loads(
            subprocess.run(
                [*MCNOTIFY, "--config", str(config), "status", "--json"], capture_output=True, text=True, check=True
            ).stdout
        )
        batch = status["batches"][0]
    finally:
        stop(sandbox)
        db.stop()
    return {
        "sync_rows": batch["rows"],
        "sync_subscribers": batch["csv_rows"],
        "sync_seconds": round(wall, 2),
        "sync_rate": round(batch["rows"] / wall),
        "sync_peak_rss_mb": round(rss, 1),
        "sync_reader_peak_rss_mb": worker_rss[0],
        "sync_both_peak_rss_mb": round(rss + worker_rss[0], 1),
    }


def compile_package() -> None:
    """mcnotify's bytecode, as an installed package has it (pip compiles at install): a checkout run with
    PYTHONDONTWRITEBYTECODE set would compile it from source in every timed start-up."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "mcnotify")], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--naive", type=int, default=500, help="messages for the naive sender")
    parser.add_argument("--sync-rows", type=int, default=1_000_000)
    parser.add_argument("--members", type=int, default=200_000, help="distinct members the rows are for")
    parser.add_argument("--skip-sync", action="store_true")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    compile_package()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "latency_ms": args.latency_ms,
    }
    with tempfile.TemporaryDirectory(prefix="mcnotify-bench-") as tmp:
        results.update(bench_send(args, Path(tmp)))
        if not args.skip_sync:
            results.update(bench_sync(args, Path(tmp)))
    targets = {
        "send_rate": (">=", 10_000),
        "speedup": (">=", 100),
        "sync_rate": (">=", 50_000),
        "sync_peak_rss_mb": ("<=", 200),
        "sync_both_peak_rss_mb": ("<=", 200),
        "run_all_idle_seconds": ("<=", 0.6),
    }
    print(f"\nmcnotify benchmark ({results['machine']}, {args.latency_ms:g} ms MC latency)")
    print(f"{'figure':<28}{'measured':>14}  {'target':>10}  ok")
    for key, value in results.items():
        if key in ("machine", "latency_ms"):
            continue
        target = targets.get(key)
        verdict = ""
        if target:
            op, goal = target
            verdict = "yes" if (value >= goal if op == ">=" else value <= goal) else "NO"
        print(f"{key:<28}{value!s:>14}  {(target[0] + ' ' + str(target[1])) if target else '':>10}  {verdict}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
