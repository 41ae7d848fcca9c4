"""Three followers on one MariaDB state under fire (issue 13's target): events at --rate a second for --seconds,
a follower SIGKILLed at random every --kill-every seconds or so (restarted --restart-after seconds later, as
systemd or a pod would), and the pipeline's owner frozen (SIGSTOP) for --freeze-for seconds, then thawed.

    python bench/chaos.py [--seconds 150] [--rate 10] [--lease 15] [--freeze-at 40] [--freeze-for 40]
                          [--kill-every 20] [--import-lag 15] [--latency-ms 50] [--api transactional]

Printed: every notification exactly once (message keys counted at the sandbox), rows left in any state but sent,
the longest stretch with no delivery while events arrive (target: lease + 10 s), and event -> accepted per
channel. Exit 1 when a target is missed. The MariaDB is a private one (tests/services.py), the sandbox its own
process, the source a SQLite file, as in bench/latency.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import latency  # noqa: E402  (bench/latency.py: the sandbox, the source, the events)

MCNOTIFY = [sys.executable, "-m", "mcnotify"]


def pipeline_owner(url: str) -> int | None:
    from mcnotify.state.mysql import Target

    conn = Target.from_url(url).connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM leases WHERE name = 'pipeline' AND expires_at > UNIX_TIMESTAMP(NOW(6))")
            row = cur.fetchone()
            return int(row[0]) if row else None
    finally:
        conn.close()


def left_over(url: str) -> dict[str, int]:
    from mcnotify.state.mysql import Target

    conn = Target.from_url(url).connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT status, COUNT(*) FROM notifications GROUP BY status")
            return {str(status): int(n) for status, n in cur.fetchall()}
    finally:
        conn.close()


class Followers:
    def __init__(self, config: Path, logs: Path) -> None:
        self.config = config
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.events: list[str] = []
        self.started = time.time()

    def start(self, name: str) -> None:
        with (self.logs / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [*MCNOTIFY, "-v", "--config", str(self.config), "run-all", "--follow"],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def note(self, text: str) -> None:
        self.events.append(f"{time.time() - self.started:6.1f} s  {text}")
        print(self.events[-1], flush=True)

    def name_of(self, pid: int | None) -> str | None:
        return next((name for name, p in self.procs.items() if p.pid == pid), None)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def longest_pause(times: list[float], start: float, end: float) -> tuple[float, float]:
    inside = sorted(t for t in times if start <= t <= end)
    return max(((b - a, a) for a, b in itertools.pairwise([start, *inside, end])), default=(0.0, start))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--lease", type=float, default=15.0)
    parser.add_argument("--freeze-at", type=float, default=40.0)
    parser.add_argument("--freeze-for", type=float, default=40.0)
    parser.add_argument("--kill-every", type=float, default=20.0)
    parser.add_argument("--restart-after", type=float, default=2.0)
    parser.add_argument("--import-lag", type=float, default=15.0)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--api", default="transactional")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "chaos.json")
    args = parser.parse_args()
    from tests.services import start_mariadb

    rng = random.Random(args.seed)
    db = start_mariadb()
    box = None
    followers: Followers | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="mcnotify-chaos-") as tmp:
            workdir = Path(tmp)
            box, base, url = latency.start_sandbox(workdir / "sandbox", args.latency_ms, args.import_lag)
            state_url = db.url.rsplit("/", 1)[0] + "/state"
            with db.admin() as conn, conn.cursor() as cur:
                cur.execute("CREATE DATABASE state CHARACTER SET utf8mb4")
                cur.execute(f"GRANT ALL ON state.* TO '{db.user}'@'127.0.0.1'")
            source = latency.make_source(workdir / "app.sqlite")
            config = latency.configure(base, workdir, workdir / "app.sqlite", args.api)
            state_path = json.dumps(str(workdir / "state.db"))
            config.write_text(
                config.read_text().replace(
                    f"path = {state_path}", f"url = {json.dumps(state_url)}\nlease = {args.lease:g}"
                )
            )
            events = latency.Events(source)
            latency.seed_known_members(events)
            seeded = subprocess.run([*MCNOTIFY, "-q", "--config", str(config), "run-all"], capture_output=True)
            if seeded.returncode != 0:
                raise SystemExit(f"seeding failed: {seeded.stderr.decode(errors='replace')[-2000:]}")
            before = len(latency.accepted(url))

            followers = Followers(config, workdir)
            for name in ("a", "b", "c"):
                followers.start(name)
            deadline = time.monotonic() + 60
            while pipeline_owner(state_url) is None:
                if time.monotonic() > deadline:
                    raise SystemExit("no follower took the pipeline within 60 s")
                time.sleep(0.2)

            stop_feeding = threading.Event()

            def feed() -> None:
                period, started = 1 / args.rate, time.monotonic()
                for i in itertools.count():
                    if stop_feeding.is_set():
                        return
                    time.sleep(max(0.0, started + i * period - time.monotonic()))
                    events.add()

            began = time.time()
            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            frozen: str | None = None
            thawed = False
            next_kill = args.kill_every * rng.uniform(0.5, 1.0)
            restarts: list[tuple[float, str]] = []
            kills = 0
            while (now := time.time() - began) < args.seconds:
                if frozen is None and now >= args.freeze_at:
                    frozen = followers.name_of(pipeline_owner(state_url)) or "a"
                    followers.procs[frozen].send_signal(signal.SIGSTOP)
                    followers.note(f"SIGSTOP {frozen} (pid {followers.procs[frozen].pid}, the pipeline's owner)")
                if frozen is not None and not thawed and now >= args.freeze_at + args.freeze_for:
                    followers.procs[frozen].send_signal(signal.SIGCONT)
                    thawed = True
                    followers.note(f"SIGCONT {frozen}")
                if now >= next_kill:
                    live = sorted(n for n, p in followers.procs.items() if p.poll() is None and n != frozen)
                    if live:
                        owner = followers.name_of(pipeline_owner(state_url))
                        victim = owner if owner in live and rng.random() < 0.5 else rng.choice(live)
                        followers.procs[victim].send_signal(signal.SIGKILL)
                        followers.procs[victim].wait(10)
                        kills += 1
                        followers.note(f"SIGKILL {victim}" + (" (the pipeline's owner)" if victim == owner else ""))
                        restarts.append((now + args.restart_after, victim))
                    next_kill = now + args.kill_every * rng.uniform(0.5, 1.5)
                for at, name in list(restarts):
                    if now >= at:
                        followers.start(name)
                        followers.note(f"restarted {name} (pid {followers.procs[name].pid})")
                        restarts.remove((at, name))
                time.sleep(0.1)
            stop_feeding.set()
            feeder.join(5)
            ended = time.time()
            for _, name in restarts:
                followers.start(name)
            if frozen is not None and not thawed:
                followers.procs[frozen].send_signal(signal.SIGCONT)
            expected = before + 2 * events.event
            deadline = time.monotonic() + 2 * args.import_lag + 120
            records = latency.accepted(url)
            while len(records) < expected and time.monotonic() < deadline:
                time.sleep(1)
                records = latency.accepted(url)
            time.sleep(3)  # anything doubled would show now
            records = latency.accepted(url)
            followers.stop_all()
            mine = records[before:]
            # One notification: its messageKey; a triggered send has none: its subscriber and event.
            keys = Counter(
                m["messageKey"] or (m["channel"], m["contactKey"], m["attributes"].get("event_id")) for m in mine
            )
            doubled = sum(n - 1 for n in keys.values() if n > 1)
            pause, pause_at = longest_pause([float(m["acceptedAt"]) for m in mine], began + 2, ended)
            sms_pause, sms_at = longest_pause(
                [float(m["acceptedAt"]) for m in mine if m["channel"] == "sms"], began + 2, ended
            )
            latencies: dict[str, list[float]] = {}
            for m in mine:
                event = int(m["attributes"].get("event_id") or 0)
                if event in events.times:
                    latencies.setdefault(m["channel"], []).append(m["acceptedAt"] - events.times[event])
            states = left_over(state_url)
            result: dict[str, Any] = {
                "seconds": args.seconds,
                "rate": args.rate,
                "lease": args.lease,
                "freeze": [args.freeze_at, args.freeze_for],
                "kills": kills,
                "notifications": 2 * events.event,
                "accepted_once": len(keys),
                "doubled": doubled,
                "state": states,
                "longest_pause_s": round(pause, 1),
                "longest_pause_from_s": round(pause_at - began, 1),
                "longest_sms_pause_s": round(sms_pause, 1),
                "longest_sms_pause_from_s": round(sms_at - began, 1),
                "latency": {
                    ch: {
                        "p50": round(statistics.median(v), 2),
                        "p95": round(latency.percentile(v, 0.95), 2),
                        "max": round(max(v), 2),
                    }
                    for ch, v in sorted(latencies.items())
                },
                "timeline": followers.events,
            }
    finally:
        if followers is not None:
            followers.stop_all()
        if box is not None:
            latency.stop(box)
        db.stop()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    left = {k: v for k, v in result["state"].items() if k not in ("sent", "unknown")}
    unknown = result["state"].get("unknown", 0)
    checks = {
        # A triggered send has no key to make a repeat harmless: a follower killed mid-request leaves that one
        # 'unknown', never resent (at most once). Transactional sends: every one, exactly once.
        "every notification accepted": result["accepted_once"] + unknown >= result["notifications"],
        "none twice": result["doubled"] == 0,
        "no row left pending or sending": not left,
        "nothing unknown (transactional)": args.api != "transactional" or not unknown,
        f"no pause over lease + 10 = {args.lease + 10:g} s": result["longest_pause_s"] <= args.lease + 10,
    }
    print(
        f"\n{result['notifications']} notifications at {args.rate:g} events/s for {args.seconds:g} s;"
        f" {kills} SIGKILLs, one follower frozen {args.freeze_for:g} s from {args.freeze_at:g} s;"
        f" lease {args.lease:g} s"
    )
    print(f"accepted once: {result['accepted_once']}, twice or more: {result['doubled']}, state: {result['state']}")
    print(
        f"longest pause in deliveries: {result['longest_pause_s']} s (from {result['longest_pause_from_s']} s in);"
        f" SMS only: {result['longest_sms_pause_s']} s (from {result['longest_sms_pause_from_s']} s in)"
    )
    for channel, figures in result["latency"].items():
        print(f"event -> accepted, {channel}: {figures}")
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    print(f"written to {args.json}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
