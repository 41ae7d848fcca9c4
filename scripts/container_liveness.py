#!/usr/bin/env python3
"""Liveness of the follower in this container: `mcnotify status --json`, then its follower line.

    mcnotify-liveness [MAX_AGE_SECONDS]      (exit 0: alive; 1: not, with one line saying why)

The image installs this file as /opt/mcnotify/bin/mcnotify-liveness for a Kubernetes exec probe (see
deploy/README.md). Alive means the follower recorded in the state is this container's (its host is this pod's
hostname), has not stopped, and wrote its heartbeat at most MAX_AGE_SECONDS ago. The follower writes it between
cycles (every 5 s when idle) and during an outage too, so a MySQL, SFTP or MC outage does not restart the pod;
one cycle holding a large send can take minutes, hence the generous default.

On a MariaDB state `status` lists every process instead, each with its last cycle: this pod's own row is the
one to check (the database's heartbeat thread beats even when the loop is stuck, so its last cycle decides).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any

DEFAULT_MAX_AGE = 900.0


def verdict(data: dict[str, Any], hostname: str, now: float, max_age: float) -> str | None:
    """None when this pod's follower is alive by `data` (status --json); else why not. With several followers on
    one MariaDB state, `processes` has a row per follower: this pod's own (its hostname) must have a recent
    heartbeat. On SQLite (one follower) the single `follower` entry is the one to check."""
    mine = [p for p in data.get("processes") or [] if p.get("host") == hostname and p.get("role") == "follower"]
    if data.get("processes") is not None and data.get("processes"):
        if not mine:
            return f"no follower of this pod ({hostname!r}) among the processes recorded"
        cycles = [now - float(p["last_cycle"]) for p in mine if p.get("last_cycle") is not None]
        if cycles:
            age = min(cycles)
            return (
                None
                if age <= max_age
                else f"this pod's follower's last cycle was {age:.0f} s ago (more than {max_age:g} s)"
            )
        age = min(float(p.get("heartbeat_age") or 0) for p in mine)
        return None if age <= max_age else f"this pod's follower last beat {age:.0f} s ago (more than {max_age:g} s)"
    follower = data.get("follower")
    if not follower:
        return "no follower recorded in the state yet"
    if follower.get("host") != hostname:
        return f"the follower recorded is on {follower.get('host')!r}, not this pod ({hostname!r})"
    if follower.get("stopped"):
        return "the follower stopped"
    age = now - float(follower.get("last_cycle") or 0)
    if age > max_age:
        return f"the follower's last cycle was {age:.0f} s ago (more than {max_age:g} s)"
    return None


def main(argv: list[str]) -> int:
    max_age = float(argv[1]) if len(argv) > 1 else DEFAULT_MAX_AGE
    done = subprocess.run(["mcnotify", "--quiet", "status", "--json", "--limit", "1"], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"mcnotify status exited {done.returncode}: {done.stderr.strip()[-500:]}")
        return 1
    why = verdict(json.loads(done.stdout), socket.gethostname(), time.time(), max_age)
    if why:
        print(why)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
