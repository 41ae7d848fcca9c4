"""The systemd units pass `systemd-analyze verify`, and the cron example stands down where systemd runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import skip_or_fail_in_ci

UNITS = Path(__file__).resolve().parent.parent / "systemd"


def test_every_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        skip_or_fail_in_ci("!!! systemd-analyze not installed: unit files NOT verified")
    assert analyze is not None
    # verify checks that ExecStart exists: point it at this environment's mcnotify.
    exe = shutil.which("mcnotify") or str(Path(sys.executable).parent / "mcnotify")
    names = []
    for unit in sorted(UNITS.glob("*.service")) + sorted(UNITS.glob("*.timer")):
        (tmp_path / unit.name).write_text(unit.read_text().replace("/usr/local/bin/mcnotify", exe))
        names.append(unit.name)
    assert {"mcnotify.service", "mcnotify.timer", "mcnotify-sync.timer", "mcnotify-alert@.service"} <= set(names)
    result = subprocess.run([analyze, "verify", "--man=no", *names], cwd=tmp_path, capture_output=True, text=True)
    # verify only warns ("ignoring") about bad settings, so any output at all is a failure.
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stderr


def test_units_are_hardened_and_chained() -> None:
    main = (UNITS / "mcnotify.service").read_text()
    for setting in (
        "Type=oneshot",
        "SuccessExitStatus=75",
        "StateDirectory=mcnotify",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "LoadCredential=",
        "TimeoutStartSec=",
        "OnFailure=mcnotify-alert@%n.service",
        "User=mcnotify",
        "CacheDirectory=mcnotify",
    ):
        assert setting in main, setting
    timer = (UNITS / "mcnotify.timer").read_text()
    assert "OnCalendar=*:0/10" in timer and "Persistent=true" in timer and "RandomizedDelaySec=" in timer
    assert "OnSuccess=mcnotify-wait-import.service" in (UNITS / "mcnotify-sync.service").read_text()
    wait = (UNITS / "mcnotify-wait-import.service").read_text()
    assert "OnSuccess=mcnotify-send-email.service mcnotify-send-sms.service" in wait


def test_cron_example_does_nothing_where_systemd_runs(tmp_path: Path) -> None:
    line = next(x for x in (UNITS / "mcnotify.cron").read_text().splitlines() if x.startswith("*/10"))
    command = " ".join(line.split()[6:])
    marker = tmp_path / "ran"
    booted = tmp_path / "systemd"
    booted.mkdir()
    fake = command.replace("/run/systemd/system", str(booted)).split(" >>")[0]
    fake = fake.replace("/usr/local/bin/mcnotify -q --config /etc/mcnotify/config.toml run-all", f"touch {marker}")
    subprocess.run(["sh", "-c", fake], check=True)
    assert not marker.exists()  # "systemd" (the folder) is there: cron stands down
    subprocess.run(["sh", "-c", fake.replace(str(booted), str(tmp_path / "absent"))], check=True)
    assert marker.exists()
