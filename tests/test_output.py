"""What an operator reads: status on an 80-column terminal, history, show after skip, invalid, -q, doctor."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcnotify.sandbox import Sandbox
from mcnotify.sandbox import demo as demo_lib
from tests.helpers import run_cli


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[Sandbox, Path]]:
    box, config, _ = demo_lib.prepare(tmp_path)
    yield box, config
    box.stop()


def mcnotify(config: Path, *args: str, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    """The real entry point in a process of its own, with COLUMNS as a terminal of that width would set it."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "JOURNAL_STREAM")}
    if columns:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "mcnotify", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line[:1] in "┏┃┡│└"]


def test_status_fits_the_terminal_and_limit_must_be_positive(demo: tuple[Sandbox, Path]) -> None:
    _, config = demo
    assert run_cli(config, "run-all").exit_code == 0
    state = Path(json.loads(run_cli(config, "status", "--json").output)["state"])
    # Raw sqlite3: a count no run of this size would produce (tampering on purpose).
    with sqlite3.connect(state) as conn:  # a big batch: the count that used to show as `500…`
        conn.execute("UPDATE batches SET rows = 50000 WHERE id = 1")
    narrow = mcnotify(config, "status", columns=80)
    assert narrow.returncode == 0, narrow.stderr
    lines = table_lines(narrow.stdout)
    assert lines and max(len(line) for line in lines) <= 80, narrow.stdout
    assert "…" not in narrow.stdout
    row = next(line for line in lines if line.startswith("│ 1 "))
    assert "50000" in row and "19 sent" in row and "11 sent" in row and "done" in row
    assert "not shown at 80 columns: sync, wait-import" in narrow.stdout
    # Narrower than the narrowest table: a line per batch, every column named, rather than one-letter columns.
    tiny = mcnotify(config, "status", columns=20)
    assert tiny.returncode == 0 and not table_lines(tiny.stdout), tiny.stdout
    line = next(line for line in tiny.stdout.splitlines() if line.startswith("batch 1 "))
    assert "status done" in line and "rows 50000" in line and "email 19 sent" in line and "send-email done" in line
    wide = mcnotify(config, "status", columns=200)
    assert "send-email" in wide.stdout and "not shown" not in wide.stdout and "50000" in wide.stdout
    for command in ("status", "history", "invalid"):  # below 1 a limit would read as "no limit"
        for bad in ("0", "-1"):
            refused = mcnotify(config, command, "--limit", bad)
            assert refused.returncode == 2 and refused.stdout == ""
            assert refused.stderr.startswith("mcnotify: error: Invalid value for '--limit': Input should be greater")


def test_history_show_invalid_quiet_doctor_and_dry_run(
    demo: tuple[Sandbox, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box, config = demo
    box.account.settings.import_lag = 60.0  # the import stays pending: sync, then skip before it reports counts
    assert run_cli(config, "sync").exit_code == 0
    skipped = run_cli(config, "skip", "--batch", "1", "--reason", "campaign cancelled")
    assert skipped.exit_code == 0
    shown = run_cli(config, "show", "1")
    assert shown.exit_code == 0 and "None" not in shown.output
    assert "total -, ok -, rejected -, duplicates -" in shown.output
    assert "skipped by an operator at " in shown.output and ": campaign cancelled" in shown.output
    assert json.loads(run_cli(config, "show", "1", "--json").output)["skipped"]["reason"] == "campaign cancelled"

    # run-all's counts are what its steps did, added up; and shown in the table.
    box.account.settings.import_lag = 0.2
    with sqlite3.connect(tmp_path / "app.sqlite") as conn:
        conn.execute(
            "INSERT INTO notifications SELECT notification_id + 1000, template, subscriber_key, email, phone,"
            " sender_name, receiver_name, amount, created_at FROM notifications"
        )
    assert run_cli(config, "run-all").exit_code == 0
    last = json.loads(run_cli(config, "history", "--json", "--limit", "1").output)[0]
    assert last["command"] == "run-all"
    counts = last["counts"]
    assert counts["new_rows"] == 39 and counts["email_sent"] == 19 and counts["sms_sent"] == 11, counts
    assert counts["invalid"] == 8 and counts["email_failed"] == 0
    history = run_cli(config, "history")
    assert "new_rows 39" in history.output and "email_sent 19" in history.output

    # invalid: '-' is standard output; a batch that does not exist is an error, as for `show`.
    monkeypatch.chdir(tmp_path)
    listed = run_cli(config, "invalid", "--csv", "-")
    assert listed.exit_code == 0 and not (tmp_path / "-").exists()
    rows = list(csv.reader(io.StringIO(listed.stdout)))
    assert rows[0][:2] == ["batch_id", "notification_id"] and len(rows) == 1 + 8 + 8  # both batches' invalid
    missing = run_cli(config, "invalid", "--batch", "99")
    assert missing.exit_code == 1 and missing.output.strip() == "mcnotify: error: no batch 99"

    # -q with nothing to do: nothing at all. Without -q: one line per step.
    quiet = run_cli(config, "-q", "run-all")
    assert quiet.exit_code == 0 and quiet.output == ""
    assert len(run_cli(config, "run-all").stdout.splitlines()) == 4

    # --dry-run with nothing to send says so.
    dry = run_cli(config, "run-all", "--dry-run")
    assert "send-email (dry run): nothing would be sent" in dry.output and "batch(es) -" not in dry.output

    doctor = run_cli(config, "doctor")
    assert doctor.exit_code == 0, doctor.output
    assert "ok config: " in doctor.output and all("  " not in line for line in doctor.output.splitlines())


def test_a_usage_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "never-read.toml"  # usage is checked before the config is read
    says = {  # the arguments: what the line says, and the --help it names
        ("nope",): ("No such command 'nope'.", "mcnotify"),
        ("status", "--bogus"): ("No such option: --bogus", "mcnotify status"),
        ("--bogus", "status"): ("No such option: --bogus", "mcnotify"),
        ("status", "--limit", "x"): ("Invalid value for '--limit'", "mcnotify status"),
        ("status", "--limit"): ("Option '--limit' requires an argument", "mcnotify status"),
        ("retry", "--batch", "1", "--channel", "fax"): ("Invalid value for '--channel'", "mcnotify retry"),
        ("skip", "--batch", "1"): ("Missing option '--reason'", "mcnotify skip"),
        ("config", "nope"): ("No such command 'nope'.", "mcnotify config"),
        ("state", "migrate", "--to"): ("Option '--to' requires an argument", "mcnotify state migrate"),
        # Past a 64-bit integer a batch or a count cannot be looked up; a port past 65535 cannot be bound.
        ("show", "99999999999999999999"): ("Invalid value for 'batch'", "mcnotify show"),
        ("status", "--limit", "99999999999999999999"): ("Invalid value for '--limit'", "mcnotify status"),
        ("sandbox", "--port", "99999"): ("Invalid value for '--port'", "mcnotify sandbox"),
        ("retry", "--batch", "-99999999999999999999"): ("Invalid value for '--batch'", "mcnotify retry"),
        ("show", "0"): ("Invalid value for 'batch'", "mcnotify show"),
        # A URL's password echoed in an error is masked, with a space or an escaped backslash in it too.
        ("state", "migrate", "--to", "x", "mysql://u:s3cr3t pw@db/state"): (
            "unexpected extra argument",
            "mcnotify state migrate",
        ),
        ("retry", "--batch", "1", "--channel", "mysql://u:s3cr3t\\b c@h/db"): ("'--channel'", "mcnotify retry"),
    }
    for args, (message, where) in says.items():
        refused = mcnotify(config, *args)
        assert refused.returncode == 2 and refused.stdout == "", args
        lines = refused.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("mcnotify: error: ") and message in lines[0], refused.stderr
        assert f"'{where} --help'" in lines[0] and "s3cr3t" not in refused.stderr, refused.stderr
    in_process = run_cli(config, "state", "migrate", "--to", "x", "mysql://u:s3cr3t pw@db/state")  # not sys.argv
    assert in_process.exit_code == 2 and "s3cr3t" not in in_process.output
    # --log-json holds for errors in the app's own options and before its callback ran.
    for args in (("status", "--limit", "x"), ("--bogus", "status"), ("/x",)):
        as_json = mcnotify(config, "--log-json", *args)
        assert as_json.returncode == 2 and json.loads(as_json.stderr)["exit_code"] == 2, as_json.stderr
    # Valid JSON whatever stderr's encoding can write.
    ascii_only = subprocess.run(
        [sys.executable, "-m", "mcnotify", "--log-json", "nöpe😀"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )
    assert ascii_only.returncode == 2 and "nöpe😀" in json.loads(ascii_only.stderr)["error"], ascii_only.stderr
    # A bare group prints its help, which is all there is to say: no error line under it.
    bare = mcnotify(config, "state")
    assert bare.returncode == 2 and "migrate" in bare.stdout and bare.stderr == ""


def test_the_apps_short_options_work_after_the_command_bundled_or_with_the_value_attached(
    demo: tuple[Sandbox, Path],
) -> None:
    _, config = demo

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mcnotify", *args], capture_output=True, text=True, timeout=60)

    given = str(config)
    for args in (
        ("status", "-qc", given),
        ("status", f"-c{given}", "-q"),
        ("status", f"-qc{given}"),
        ("status", "-qv", "-c", given),
        ("-qv", "status", "-c", given),  # bundled before the command, the rest after it
        (f"-c{given}", "status", "-q"),
    ):
        shown = run(*args)
        assert shown.returncode == 0 and "recent batches" in shown.stdout, (args, shown.stderr)
    for args in (("status", "-c"), ("status", "-qc")):  # no value: it must not take the command's name as config
        refused = run(*args)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("mcnotify: error: Option '-c' requires an argument."), refused.stderr
