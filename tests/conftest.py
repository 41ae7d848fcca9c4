from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mcnotify.sandbox import Sandbox
from mcnotify.sandbox.model import SandboxSettings
from mcnotify.state import StateStore, Store
from tests import services
from tests.helpers import QUERY, TEMPLATES, dump_toml

IN_CI = os.environ.get("CI") == "true"
# The backend the end-to-end fixture `env` configures: sqlite (the file, by default) or mysql (a fresh database
# on the private MariaDB). CI runs the pipeline tests once more with MCNOTIFY_TEST_STATE=mysql.
STATE_BACKEND = os.environ.get("MCNOTIFY_TEST_STATE", "sqlite")
# For a test that reads or tampers with the SQLite file itself (its bytes, its flock, raw sqlite3).
sqlite_only = pytest.mark.skipif(STATE_BACKEND != "sqlite", reason="the SQLite state file itself")
# Fixtures that start MariaDB or sshd (directly or through another fixture), or the demo's sandbox that runs
# whole pipelines over its SFTP server (test modules' `demo` and `alerting`): a test using one is marked
# `services`, so `make test-fast` (-m "not services") runs in seconds without them.
SERVICE_FIXTURES = frozenset({"mariadb", "sshd", "app_db", "env", "demo", "alerting", "state_db"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())) or params.get("make_store") == "mysql":
            item.add_marker(pytest.mark.services)


def skip_or_fail_in_ci(message: str) -> None:
    """Skip loudly; under CI=true (where .ci/run installs what the tests need) fail instead."""
    if IN_CI:
        pytest.fail(f"{message} (CI=true: .ci/run installs it, so missing is a failure)", pytrace=False)
    pytest.skip(message)


def _unavailable(what: str, exc: Exception) -> None:
    skip_or_fail_in_ci(f"!!! {what} unavailable, integration tests SKIPPED: {exc}")


@pytest.fixture(scope="session")
def mariadb() -> Iterator[services.MariaDB]:
    try:
        db = services.start_mariadb()
    except (FileNotFoundError, PermissionError) as exc:
        _unavailable("MariaDB", exc)
    yield db
    db.stop()


@pytest.fixture(scope="session")
def sshd() -> Iterator[services.Sshd]:
    try:
        server = services.start_sshd()
    except (FileNotFoundError, PermissionError) as exc:
        _unavailable("OpenSSH sshd", exc)
    yield server
    server.stop()


@pytest.fixture
def state_db(mariadb: services.MariaDB) -> Iterator[str]:
    """A fresh, empty database for one test's state on the private MariaDB: its mysql:// URL."""
    name = f"state_{uuid.uuid4().hex[:12]}"
    with mariadb.admin() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        cur.execute(f"GRANT ALL ON {name}.* TO '{mariadb.user}'@'127.0.0.1'")
    yield f"mysql://{mariadb.user}:{mariadb.password}@127.0.0.1:{mariadb.port}/{name}"
    with mariadb.admin() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture(params=["sqlite", "mysql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Store]]:
    """Opens the test's state on each backend in turn: `make_store()` (read_only=... as the store takes it).
    The MySQL one is a fresh database on the private MariaDB."""
    opened: list[Store] = []
    url = request.getfixturevalue("state_db") if request.param == "mysql" else None

    def make(read_only: bool = False) -> Store:
        if url is None:
            store: Store = StateStore(tmp_path / "state.db", read_only=read_only)
        else:
            from mcnotify.state.mysql import MySQLStore, Target

            store = MySQLStore(Target.from_url(url), read_only=read_only, lease=3.0)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def app_db(mariadb: services.MariaDB) -> Callable[[list[tuple[Any, ...]]], None]:
    """A fresh `notifications` table; returns an insert function."""
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS notifications")
        cur.execute(
            "CREATE TABLE notifications (notification_id BIGINT PRIMARY KEY, template VARCHAR(64),"
            " subscriber_key VARCHAR(300), email VARCHAR(400), phone VARCHAR(64), sender_name TEXT,"
            " receiver_name TEXT, amount INT) CHARACTER SET utf8mb4"
        )

    def insert(rows: list[tuple[Any, ...]]) -> None:
        with mariadb.connect() as conn, conn.cursor() as cur:
            cur.executemany("INSERT INTO notifications VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)

    return insert


@dataclass
class Env:
    """Everything one integration test needs: MariaDB source, sshd SFTP, sandbox MC, and a config file."""

    tmp: Path
    sandbox: Sandbox
    sshd: services.Sshd
    mariadb: services.MariaDB
    config: Path
    values: dict[str, Any]

    @property
    def state_path(self) -> Path:
        return Path(self.values["state"]["path"])

    @property
    def state(self) -> Path | str:
        """Where the state is, whichever the backend: the file, or the database's URL (see read_state)."""
        url: str | None = self.values["state"].get("url")
        return url if url else self.state_path

    @property
    def import_dir(self) -> Path:
        return self.sshd.root / "Import"

    def accepted(self) -> list[dict[str, Any]]:
        return list(self.sandbox.account.snapshot()["accepted"])

    def write(self, **sections: dict[str, Any]) -> Path:
        for name, body in sections.items():
            self.values.setdefault(name, {}).update(body)
        self.config.write_text(dump_toml(self.values))
        self.config.chmod(0o600)  # it holds secrets
        return self.config


@pytest.fixture
def sandbox_settings(request: pytest.FixtureRequest) -> SandboxSettings:
    """Override per test with @pytest.mark.sandbox(field=value, ...)."""
    marker = request.node.get_closest_marker("sandbox")
    return SandboxSettings(
        **{"client_secret": "mc-Secret-0123456789", "import_lag": 0.4, **(marker.kwargs if marker else {})}
    )


@pytest.fixture
def env(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sshd: services.Sshd,
    mariadb: services.MariaDB,
    app_db: Any,
    sandbox_settings: SandboxSettings,
) -> Iterator[Env]:
    for leftover in sshd.root.joinpath("Import").iterdir():
        leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover)
    box = Sandbox(tmp_path / "mc", sandbox_settings, builtin_sftp=False, sftp_root=sshd.root).start()
    values: dict[str, Any] = {
        "state": (
            {"url": request.getfixturevalue("state_db")}
            if STATE_BACKEND == "mysql"
            else {"path": str(tmp_path / "state" / "state.db")}
        ),
        "source": {"url": mariadb.url, "query": QUERY, "batch_limit": 50000},
        "marketing_cloud": {
            "auth_url": box.url,
            "client_id": sandbox_settings.client_id,
            "client_secret": sandbox_settings.client_secret,
            "timeout": 5.0,
            "backoff_max": 0.5,
        },
        "sftp": {
            "host": "127.0.0.1",
            "port": sshd.port,
            "username": sshd.user,
            "key_file": str(sshd.client_key),
            "known_hosts": str(sshd.known_hosts),
            "remote_dir": "/Import",
            "timeout": 10.0,
        },
        "import": {
            "mode": "import-definition",
            "definition_key": "mcnotify-subscribers",
            "poll_interval": 0.1,
            "timeout": 30.0,
        },
        "email": {"api": "transactional", "batch_size": 50, "concurrency": 4},
        "sms": {"default_region": "TW"},
        "templates": dict(TEMPLATES),
    }
    e = Env(tmp_path, box, sshd, mariadb, tmp_path / "config.toml", values)
    e.write()
    yield e
    box.stop()
