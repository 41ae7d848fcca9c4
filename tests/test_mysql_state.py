"""The state on MariaDB ([state] url) end to end: the real pipeline, the operator's commands, the run lease
between processes, and `state migrate` from an existing SQLite state."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pymysql
import pytest

from mcnotify.source import MySQLSource
from mcnotify.state.mysql import MySQLStore, Target
from tests import services
from tests.conftest import Env, skip_or_fail_in_ci
from tests.helpers import QUERY, event_rows, people, run_cli

BAD = (900, "envelope-received", "m-bad1", "two@@example.com", "0912345678", "Luffy", "Bad", 1)


def use_database(env: Env, url: str, **state: Any) -> None:
    env.values["state"] = {"url": url, **state}
    env.write()


def use_file(env: Env) -> None:
    """The SQLite state, whichever backend MCNOTIFY_TEST_STATE gave the fixture (a migration starts from one)."""
    env.values["state"] = {"path": str(env.tmp / "state" / "state.db")}
    env.write()


def counts(url: str) -> Counter[str]:
    store = MySQLStore(Target.from_url(url), read_only=True)
    try:
        return Counter(store.status_counts()) if store.migrated() else Counter()
    finally:
        store.close()


def test_run_all_and_the_operator_commands_on_the_mariadb_state(env: Env, app_db: Any, state_db: str) -> None:
    use_database(env, state_db)
    app_db([*event_rows(1, people(10)), BAD])
    preview = run_cli(env.config, "run-all", "--dry-run")
    assert preview.exit_code == 0, preview.output
    assert env.accepted() == [] and counts(state_db) == {}  # a preview of an unmigrated database writes nothing
    before = run_cli(env.config, "status")  # it names the database, not a state file that is not configured
    database = state_db.rsplit("/", 1)[1]
    assert before.exit_code == 0 and f"{database} (empty: no mcnotify run has set it up yet)" in before.output
    assert "state.db" not in before.output, before.output
    first = run_cli(env.config, "run-all")
    assert first.exit_code == 0, first.output
    accepted = env.accepted()
    assert len(accepted) == 30 and max(Counter(m["messageKey"] for m in accepted).values()) == 1
    assert counts(state_db) == {"sent": 30, "invalid": 1}
    again = run_cli(env.config, "run-all")
    assert again.exit_code == 0 and "nothing new in the source" in again.output and len(env.accepted()) == 30
    preview = run_cli(env.config, "run-all", "--dry-run")
    assert preview.exit_code == 0, preview.output

    status = run_cli(env.config, "status", "--json")
    assert status.exit_code == 0, status.output
    data = json.loads(status.output)
    assert data["totals"] == {"sent": 30, "invalid": 1} and data["state"].startswith("mysql://***@127.0.0.1")
    history = run_cli(env.config, "history", "--json")
    assert history.exit_code == 0 and [r["command"] for r in json.loads(history.output)] == ["run-all"] * 2
    show = run_cli(env.config, "show", "1")
    assert show.exit_code == 0 and "batch 1" in show.output, show.output
    invalid = run_cli(env.config, "invalid", "--json")
    assert invalid.exit_code == 0 and [r["subscriber_key"] for r in json.loads(invalid.output)] == ["m-bad1"]
    retry = run_cli(env.config, "retry", "--batch", "1")
    assert retry.exit_code == 0, retry.output
    skip = run_cli(env.config, "skip", "--batch", "1", "--reason", "checked by hand")
    assert skip.exit_code == 1 and "nothing left to skip" in skip.output, skip.output  # every row has its end
    doctor = run_cli(env.config, "doctor")
    assert "state" in doctor.output and "is writable" in doctor.output, doctor.output
    everything = first.output + status.output + history.output + doctor.output + show.output
    assert env.mariadb.password not in everything
    assert len(env.accepted()) == 30  # nothing went twice


def _followers(url: str) -> list[int]:
    """The pids of the processes registered as followers (fresh heartbeat), read straight from the table."""
    conn = Target.from_url(url).connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES LIKE 'processes'")
            if cur.fetchone() is None:  # the follower has not created the schema yet
                return []
            cur.execute("SELECT pid FROM processes WHERE role = 'follower' AND heartbeat_at > UNIX_TIMESTAMP() - 3")
            return [int(r[0]) for r in cur.fetchall()]
    finally:
        conn.close()


def test_a_one_shot_run_exits_75_while_a_follower_works_and_goes_ahead_once_it_died(
    env: Env, app_db: Any, state_db: str
) -> None:
    use_database(env, state_db, lease=3.0)
    app_db(event_rows(1, people(3)))
    command = [sys.executable, "-m", "mcnotify", "-q", "--config", str(env.config), "run-all", "--follow"]
    holder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while _followers(state_db) != [holder.pid]:
            assert holder.poll() is None, holder.communicate()
            assert time.monotonic() < deadline, "the follower never registered"
            time.sleep(0.1)
        time.sleep(4)  # past one lease: the heartbeat keeps it
        assert _followers(state_db) == [holder.pid]
        second = subprocess.run(command[:-1], capture_output=True, text=True, timeout=60)
        assert second.returncode == 75, second.stderr
        assert f"pid {holder.pid}" in second.stderr and env.mariadb.password not in second.stderr
        # SIGKILL: nothing given up. On this host a dead follower counts for nothing at once; one on another
        # host is waited out (its heartbeat goes stale within the lease).
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        killed = time.monotonic()
        third = subprocess.run(command[:-1], capture_output=True, text=True, timeout=60)
        assert third.returncode == 0, third.stderr
        assert time.monotonic() - killed < 3.0 + 10
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert len(env.accepted()) == 9 and max(Counter(m["messageKey"] for m in env.accepted()).values()) == 1


def test_a_follower_waits_for_a_one_shot_run_to_finish_instead_of_exiting(env: Env, app_db: Any, state_db: str) -> None:
    """A timer's run holds the database's lease when a follower starts (a deploy, a restart): the follower says
    so once and starts when that run ends, rather than exit 75 and be restarted with a growing backoff."""
    use_database(env, state_db, lease=3.0)
    app_db(event_rows(1, people(2)))
    one_shot = MySQLStore(Target.from_url(state_db), lease=3.0)
    one_shot.lock()
    command = [sys.executable, "-m", "mcnotify", "--config", str(env.config), "run-all", "--follow"]
    follower = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        assert follower.poll() is None, follower.communicate()
        assert _followers(state_db) == [] and env.accepted() == []
        one_shot.close()  # the run ends
        deadline = time.monotonic() + 20
        while len(env.accepted()) < 6:
            assert follower.poll() is None, follower.communicate()
            assert time.monotonic() < deadline, "the follower did not start after the run"
            time.sleep(0.1)
        assert _followers(state_db) == [follower.pid]
        follower.send_signal(signal.SIGTERM)
        _, err = follower.communicate(timeout=20)
    finally:
        one_shot.close()
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, err
    assert err.count("a run holds the lease") == 1 and f"pid {os.getpid()}" in err, err


def test_leases_read_the_true_time_on_a_server_whose_zone_changes_its_clocks(mariadb: Any, state_db: str) -> None:
    """A server on a zone with daylight saving time: in the hour before clocks go back, UNIX_TIMESTAMP(NOW())
    in that zone reads an hour ahead, and every heartbeat, lease and claim would look an hour old at once (a
    healthy follower's connection ended as frozen, leases taken over). Each session runs in UTC."""
    import shutil

    tzinfo, client = shutil.which("mariadb-tzinfo-to-sql"), shutil.which("mariadb")
    zone = Path("/usr/share/zoneinfo/Europe/Berlin")
    if not tzinfo or not client or not zone.exists():
        pytest.skip("!!! mariadb-tzinfo-to-sql, the mariadb client or tzdata missing: daylight saving NOT tested")
    sql = subprocess.run([tzinfo, str(zone), "Europe/Berlin"], capture_output=True, check=True).stdout
    subprocess.run([client, f"--socket={mariadb.socket_path}", "-uroot", "mysql"], input=sql, check=True)
    with mariadb.admin() as conn, conn.cursor() as cur:
        cur.execute("SET GLOBAL time_zone = 'Europe/Berlin'")
    try:
        conn = Target.from_url(state_db).connect()
        try:
            with conn.cursor() as cur:
                back = 1729990800  # 2024-10-27 01:00 UTC: 03:00 CEST becomes 02:00 CET
                for moment in (back - 1800, back - 10, back + 10, back + 1800):
                    cur.execute("SET timestamp = %s", (moment,))
                    cur.execute("SELECT UNIX_TIMESTAMP(NOW(6))")
                    row = cur.fetchone()
                    assert row is not None and abs(float(row[0]) - moment) < 1, (moment, row)
        finally:
            conn.close()
    finally:
        with mariadb.admin() as conn, conn.cursor() as cur:
            cur.execute("SET GLOBAL time_zone = 'SYSTEM'")


@pytest.mark.parametrize("applied_up_to", [6, 4])
def test_an_upgrade_cut_short_after_a_schema_change_completes_on_the_next_start(
    state_db: str, applied_up_to: int
) -> None:
    """MySQL commits each DDL statement at once: an upgrade killed after a migration's statements but before the
    version was written leaves the changes and the old number. The next start runs those statements again; what
    they find already done is taken as done, and the state works."""
    from mcnotify.state.mysql_schema import MIGRATIONS

    MySQLStore(Target.from_url(state_db)).close()
    conn = Target.from_url(state_db).connect()
    try:
        with conn.cursor() as cur:
            cur.execute("UPDATE schema_version SET version = %s", (applied_up_to,))
    finally:
        conn.close()
    store = MySQLStore(Target.from_url(state_db))
    try:
        assert store.migrated()
        with store.transaction():
            store.set_meta("source.watermark", 5)
        assert store.get_meta("source.watermark") == 5 and len(MIGRATIONS) > applied_up_to
    finally:
        store.close()


def test_state_migrate_copies_the_sqlite_state_and_refuses_a_used_database(
    env: Env, app_db: Any, state_db: str
) -> None:
    use_file(env)
    app_db([*event_rows(1, people(4)), BAD])
    assert run_cli(env.config, "run-all").exit_code == 0
    app_db(event_rows(100, people(2, offset=50)))
    assert run_cli(env.config, "sync").exit_code == 0  # a second batch still to send when the state moves
    copied = run_cli(env.config, "state", "migrate", "--to", state_db)
    assert copied.exit_code == 0, copied.output
    assert "rows copied" in copied.output and 'url = "mysql://mcnotify:***@127.0.0.1' in copied.output
    assert env.mariadb.password not in copied.output
    assert counts(state_db) == {"sent": 12, "invalid": 1, "pending": 6}

    refused = run_cli(env.config, "state", "migrate", "--to", state_db)
    assert refused.exit_code == 78 and "already holds a state" in refused.output
    assert env.mariadb.password not in refused.output

    # The copy is the state: the rest goes out from the database, batch numbers and ids as they were.
    use_database(env, state_db)
    assert run_cli(env.config, "run-all").exit_code == 0
    assert counts(state_db) == {"sent": 18, "invalid": 1}
    assert len(env.accepted()) == 18 and max(Counter(m["messageKey"] for m in env.accepted()).values()) == 1
    history = json.loads(run_cli(env.config, "history", "--json").output)
    assert [r["command"] for r in history] == ["run-all", "sync", "run-all"]


def test_state_migrate_refuses_a_database_holding_other_tables(env: Env, state_db: str) -> None:
    use_file(env)
    conn = Target.from_url(state_db).connect()
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY)")
    conn.close()
    assert run_cli(env.config, "run-all").exit_code == 0  # a SQLite state to copy (empty is fine)
    refused = run_cli(env.config, "state", "migrate", "--to", state_db)
    assert refused.exit_code == 78 and "holds table orders" in refused.output
    assert len(refused.output.strip().splitlines()) == 1


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.mark.services
def test_a_mysql_server_that_requires_tls_gets_it_on_loopback_too(tmp_path: Path) -> None:
    """The state and the source encrypt whenever the server offers TLS (PyMySQL's default, kept while its cost
    at every connect was cut), loopback included: a server that refuses anything else is still reached."""
    cert, key = _self_signed(tmp_path)
    try:
        db = services.start_mariadb(f"--ssl-cert={cert}", f"--ssl-key={key}", "--require-secure-transport=ON")
    except (FileNotFoundError, PermissionError) as exc:
        skip_or_fail_in_ci(f"!!! MariaDB unavailable, integration test SKIPPED: {exc}")
    try:
        conn = Target.from_url(db.url).connect()
        with conn.cursor() as cur:
            cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            assert cur.fetchone()[1], "the state's connection is not encrypted"
        conn.close()
        MySQLSource(db.url, QUERY, None, 5.0, 100).close()  # connected, so over TLS: the server takes nothing else
        with pytest.raises(pymysql.err.OperationalError, match=r"insecure transport|Access denied"):
            pymysql.connect(host="127.0.0.1", port=db.port, user=db.user, password=db.password, ssl_disabled=True)
    finally:
        db.stop()
