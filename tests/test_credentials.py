"""Secrets the systemd way: `credential:NAME` is found in $CREDENTIALS_DIRECTORY in every unit, and in the
readable fallback folder from a shell; the units all load the same credentials the example config names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mcnotify.config import parse
from mcnotify.errors import ConfigError
from tests.helpers import QUERY, TEMPLATES, dump_toml

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"


def base(**sections: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "state": {"path": "/tmp/x/state.db"},
        "source": {"url": "mysql://app@db.internal:3306/app", "query": QUERY},
        "marketing_cloud": {
            "auth_url": "https://mcabc.auth.marketingcloudapis.com/",
            "client_id": "cid",
            "client_secret_file": "credential:mc_client_secret",
        },
        "sftp": {"host": "h", "username": "u", "password": "sftp-pw", "known_hosts": "/etc/mcnotify/known_hosts"},
        "import": {"definition_key": "subs"},
        "templates": dict(TEMPLATES),
    }
    for name, body in sections.items():
        config[name].update(body)
    return config


def folder(path: Path, **files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
        (path / name).chmod(0o600)
    return path


def test_a_credential_is_found_in_the_units_folder_first(tmp_path: Path) -> None:
    unit = folder(tmp_path / "run" / "mcnotify-sync.service", mc_client_secret="from-the-unit\n")
    shell = folder(tmp_path / "etc", mc_client_secret="from-etc\n")
    env = {"CREDENTIALS_DIRECTORY": str(unit), "MCNOTIFY_CREDENTIALS_DIR": str(shell)}
    assert parse(base(), environ=env).section("marketing_cloud")["client_secret"] == "from-the-unit"
    # From a shell (no $CREDENTIALS_DIRECTORY) the same config reads the fallback folder.
    env.pop("CREDENTIALS_DIRECTORY")
    assert parse(base(), environ=env).section("marketing_cloud")["client_secret"] == "from-etc"
    # A unit that did not load this credential still finds it in the readable folder.
    env["CREDENTIALS_DIRECTORY"] = str(folder(tmp_path / "other"))
    assert parse(base(), environ=env).section("marketing_cloud")["client_secret"] == "from-etc"


@pytest.mark.parametrize("written", ["credential:mc_client_secret", "%d/mc_client_secret", "mc_client_secret"])
def test_every_credential_spelling_resolves(tmp_path: Path, written: str) -> None:
    unit = folder(tmp_path / "creds", mc_client_secret="s3cret\n", sftp_key="KEY")
    config = base(marketing_cloud={"client_secret_file": written}, sftp={"key_file": "credential:sftp_key"})
    settings = parse(config, environ={"CREDENTIALS_DIRECTORY": str(unit)})
    assert settings.section("marketing_cloud")["client_secret"] == "s3cret"
    assert settings.section("sftp")["key_file"] == str(unit / "sftp_key")


def test_absolute_paths_are_read_as_written(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere"
    secret.write_text("plain\n")
    config = base(marketing_cloud={"client_secret_file": str(secret)})
    assert parse(config, environ={}).section("marketing_cloud")["client_secret"] == "plain"


def test_a_missing_credential_names_it_and_both_places(tmp_path: Path) -> None:
    unit, shell = folder(tmp_path / "unit"), folder(tmp_path / "etc")
    env = {"CREDENTIALS_DIRECTORY": str(unit), "MCNOTIFY_CREDENTIALS_DIR": str(shell)}
    with pytest.raises(ConfigError) as caught:
        parse(base(), environ=env)
    assert str(caught.value) == (
        f"[marketing_cloud] client_secret_file: credential 'mc_client_secret' not found in "
        f"$CREDENTIALS_DIRECTORY ({unit}) nor {shell}"
    )
    with pytest.raises(ConfigError, match=r"\(\$CREDENTIALS_DIRECTORY is not set\)"):
        parse(base(), environ={"MCNOTIFY_CREDENTIALS_DIR": str(shell)})


def test_a_bare_name_that_may_be_the_secret_is_never_shown(tmp_path: Path) -> None:
    pasted = "Zq8w-actual-client-secret"
    config = base(marketing_cloud={"client_secret_file": pasted})
    with pytest.raises(ConfigError) as caught:
        parse(config, environ={"MCNOTIFY_CREDENTIALS_DIR": str(folder(tmp_path / "etc"))})
    assert pasted not in str(caught.value) and "not found" in str(caught.value)


def test_the_old_per_unit_path_says_what_to_write_instead() -> None:
    config = base(marketing_cloud={"client_secret_file": "/run/credentials/mcnotify.service/mc_client_secret"})
    with pytest.raises(ConfigError, match=r'write "credential:mc_client_secret" to find it in every unit'):
        parse(config, environ={})


@pytest.mark.parametrize("name", ["../../etc/shadow", "sub/x", "..", "%d/../x"])
def test_a_credential_name_cannot_leave_its_folder(tmp_path: Path, name: str) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x").write_text("secret-in-a-subfolder\n")
    value = name if name.startswith("%d/") else f"credential:{name}"
    config = base(marketing_cloud={"client_secret_file": value})
    with pytest.raises(ConfigError, match="is not a credential name"):
        parse(config, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_a_shell_without_the_credential_gets_one_line_and_exit_78(tmp_path: Path) -> None:
    """As README step 6 runs it from a shell: `mcnotify config check` with the credential nowhere."""
    config = tmp_path / "config.toml"
    config.write_text(dump_toml(base()))
    config.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    env["MCNOTIFY_CREDENTIALS_DIR"] = str(folder(tmp_path / "etc"))
    run = subprocess.run(
        [sys.executable, "-m", "mcnotify", "--config", str(config), "config", "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 78, run.stderr
    assert run.stderr.strip().splitlines() == [
        f"mcnotify: error: [marketing_cloud] client_secret_file: credential 'mc_client_secret' not found in "
        f"{tmp_path / 'etc'} ($CREDENTIALS_DIRECTORY is not set)"
    ]
    # The same command as a unit runs it: the credential is in the unit's own folder.
    env["CREDENTIALS_DIRECTORY"] = str(folder(tmp_path / "unit", mc_client_secret="from-the-unit"))
    run = subprocess.run(
        [sys.executable, "-m", "mcnotify", "--config", str(config), "config", "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "from-the-unit" not in run.stdout + run.stderr


def _credential_lines(unit: Path) -> list[str]:
    return [line for line in unit.read_text().splitlines() if line.startswith("LoadCredential=")]


def test_every_unit_loads_the_same_credentials_the_example_names() -> None:
    services = sorted(UNITS.glob("*.service"))
    assert len(services) >= 7
    expected = _credential_lines(UNITS / "mcnotify.service")
    for service in services:
        assert _credential_lines(service) == expected, service.name
    # Each credential the example config uses is loaded, from the folder a shell reads too.
    example = (ROOT / "config.example.toml").read_text()
    used = set(re.findall(r'^[a-z_]+_file = "credential:([A-Za-z0-9_.-]+)"', example, re.MULTILINE))
    used |= set(re.findall(r'^key_file = "credential:([A-Za-z0-9_.-]+)"', example, re.MULTILINE))
    assert used >= {"mc_client_secret", "mysql_password", "sftp_key"}
    assert sorted(expected) == sorted(f"LoadCredential={n}:/etc/mcnotify/credentials/{n}" for n in used)


def test_an_empty_credential_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "mc_client_secret").write_text("\n")
    config = base(marketing_cloud={"client_secret_file": "credential:mc_client_secret"})
    with pytest.raises(ConfigError, match=r"client_secret_file: the file it names is empty"):
        parse(config, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
