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


def test_the_example_metrics_path_is_writable_in_every_unit() -> None:
    import tomllib

    example = (UNITS.parent / "config.example.toml").read_text()
    # The example's (commented) textfile path, as an operator would uncomment it.
    line = next(x for x in example.splitlines() if x.lstrip("# ").startswith("textfile ="))
    textfile = Path(tomllib.loads(line.lstrip("# "))["textfile"])
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text()
        assert "ProtectSystem=strict" in text
        writable = [
            Path(p.lstrip("-"))
            for x in text.splitlines()
            if x.startswith("ReadWritePaths=")
            for p in x.split("=", 1)[1].split()
        ]
        assert textfile.parent in writable, unit.name


def test_cron_logs_where_the_mcnotify_user_can_write() -> None:
    cron = (UNITS / "mcnotify.cron").read_text()
    line = next(x for x in cron.splitlines() if x.startswith("*/10"))
    log = Path(line.split(">>")[1].split()[0])
    # /var/log itself is root's: the log lives in a folder the README and the comment create for mcnotify.
    assert log.parent != Path("/var/log") and f"install -d -o mcnotify -g mcnotify -m 0750 {log.parent}" in cron
    assert "SHIV_ROOT=" in cron


def test_units_using_on_success_say_which_systemd_they_need() -> None:
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text()
        if "\nOnSuccess=" in text:
            assert "OnSuccess= needs systemd >= 249" in text, unit.name
