"""`mcnotify sandbox` as an engineer runs it: a separate process, its printed config, its record file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import run_cli


def test_sandbox_command_serves_a_real_run(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcnotify", "sandbox", "--workdir", str(tmp_path), "--import-lag", "0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        config = tmp_path / "config.toml"
        deadline = time.monotonic() + 30
        while not (config.exists() and "[templates." in config.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert config.exists(), proc.stderr.read() if proc.stderr and proc.poll() is not None else "no config written"
        # The printed config works as printed: the sandbox created the SQLite source it names.
        assert (tmp_path / "app.sqlite").exists()
        text = config.read_text().replace("poll_interval = 0.5", "poll_interval = 0.1")
        config.write_text(text)
        result = run_cli(config, "run-all")
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in (tmp_path / "accepted.jsonl").read_text().splitlines()]
        assert len(records) == 30 and len({r["messageKey"] for r in records}) == 30
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    assert "[marketing_cloud]" in out and "auth_url" in out
    assert f"sample source {tmp_path / 'app.sqlite'} created with 39 notifications" in out


def test_sandbox_keeps_a_source_already_in_its_folder(tmp_path: Path) -> None:
    source = tmp_path / "app.sqlite"
    source.write_bytes(b"")  # stands for the engineer's own data: never overwritten
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcnotify", "sandbox", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        config = tmp_path / "config.toml"
        while not (config.exists() and "[templates." in config.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    assert f"source {source} kept as it was" in out and source.read_bytes() == b""
