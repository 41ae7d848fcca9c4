"""Exactly once under SIGKILL: kill `run-all` at moments spread over sync, wait-import and sending, rerun to
completion, and check from the sandbox's record that every valid notification was accepted exactly once."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.conftest import Env, sqlite_only
from tests.helpers import event_rows, people, read_state

TRIALS = 10


def phase(state: Path) -> str:
    """Where the pipeline stood when it was killed, read from the state file. Raw sqlite3: polled every 10 ms
    while the run writes and is killed, a plain reader (not a read-only store's copy) sees each commit."""
    if not state.exists():
        return "start"
    with sqlite3.connect(state) as conn:
        # A kill between creating the file and committing its schema leaves a file with no tables: still the start.
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'batches'").fetchone() is None:
            return "start"
        row = conn.execute("SELECT status, id FROM batches ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            return "start"
        sent = conn.execute("SELECT COUNT(*) FROM notifications WHERE status = 'sent'").fetchone()[0]
    return f"{row[0]}{'+sending' if sent else ''}"


def kill_in_phase(proc: subprocess.Popen[bytes], state: Path, wanted: str, timeout: float = 20.0) -> None:
    """SIGKILL `proc` as soon as the state shows the pipeline in `wanted` (a batch status)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if (wanted == "start" and state.exists()) or phase(state).split("+")[0] == wanted:
                break
        except sqlite3.Error:
            pass  # mid-creation
        time.sleep(0.01)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)


@sqlite_only  # it watches the file's phases and checks its integrity; followers on MariaDB: test_mysql_shared
def test_sigkill_at_random_moments_never_loses_or_duplicates(env: Env, app_db: Any) -> None:
    rows = event_rows(1, people(700))
    rows.append((99_999, "envelope-received", "m-bad", "bad@@example.com", "0912345678", "X", "Y", 1))
    app_db(rows)
    env.sandbox.settings.latency = 0.03
    env.sandbox.settings.import_lag = 0.6
    rng = random.Random(20261123)
    phases: list[str] = []
    for trial in range(TRIALS):
        prefix = f"t{trial}"
        state = env.tmp / f"state-{trial}" / "state.db"
        config = env.write(
            # Odd trials hand most of the sync to the reading process, so kills land there too.
            source={"parallel_after": 300 if trial % 2 else 20_000},
            state={"path": str(state)},
            email={"message_key_prefix": prefix, "batch_size": 50, "concurrency": 2},
            sms={"batch_size": 50},
        )
        command = [sys.executable, "-m", "mcnotify", "-q", "--config", str(config), "run-all"]
        # Kill moments spread over the whole run (about 3 s), two kills per trial.
        for kill_at in (0.3 + trial * 0.3 + rng.random() * 0.2, 0.2 + rng.random() * 1.5):
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if trial < 3 and not phases[trial * 2 :]:
                # The first kill of the first three trials is aimed: while MC imports, while sending, and as
                # soon as the state file exists (setting up or claiming).
                kill_in_phase(proc, state, ("importing", "imported", "start")[trial])
            else:
                time.sleep(kill_at)
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            phases.append(phase(state))
        for _ in range(3):
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                break
        assert done.returncode == 0, done.stderr
        with sqlite3.connect(state) as conn:  # raw: the file's own integrity after the kills
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        with read_state(state) as store:
            statuses = Counter(store.status_counts())
        assert statuses == {"sent": 2100, "invalid": 1}, (trial, statuses)
        accepted = Counter(m["messageKey"] for m in env.accepted() if m["messageKey"].startswith(prefix + "-"))
        assert len(accepted) == 2100 and set(accepted.values()) == {1}, trial
        expected = {f"{prefix}-{'sms' if r[1].endswith('sms') else 'email'}-{r[0]}" for r in rows[:-1]}
        assert set(accepted) == expected
    print("kill phases:", phases)
    # The kills landed in every stage of the chain.
    stages = {p.split("+")[0] for p in phases}
    assert {"importing", "imported"} <= stages, phases
    assert any(p.startswith(("start", "claiming", "claimed", "uploaded")) for p in phases), phases
    assert any("+sending" in p and not p.startswith("done") for p in phases), phases
