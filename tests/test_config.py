from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcnotify.config import load, parse
from mcnotify.errors import ConfigError
from tests.helpers import QUERY, TEMPLATES, dump_toml, run_cli


def base() -> dict[str, Any]:
    return {
        "state": {"path": "/tmp/x/state.db"},
        "source": {"url": "mysql://app:db-secret-pw@db.internal:3306/app", "query": QUERY},
        "marketing_cloud": {
            "auth_url": "https://mcabc.auth.marketingcloudapis.com/",
            "client_id": "cid",
            "client_secret": "top-secret-value",
        },
        "sftp": {
            "host": "mcabc.ftp.marketingcloudops.com",
            "username": "u",
            "password": "sftp-secret-pw",
            "known_hosts": "/etc/mcnotify/known_hosts",
        },
        "import": {"definition_key": "subs"},
        "templates": dict(TEMPLATES),
    }


def test_defaults_and_types() -> None:
    s = parse(base(), environ={})
    assert s.section("email")["batch_size"] == 500 and s.section("email")["concurrency"] == 5
    assert s.section("sftp")["port"] == 22 and s.section("sftp")["remote_dir"] == "/Import"
    assert s.templates["envelope-received"].from_name == "{sender_name} via EZTABLE"
    assert set(s.secrets) >= {"top-secret-value", "sftp-secret-pw", "db-secret-pw"}


def test_environment_overrides_and_secret_files(tmp_path: Path) -> None:
    secret = tmp_path / "client_secret"
    secret.write_text("from-a-file\n")
    env = {
        "MCNOTIFY_MARKETING_CLOUD_CLIENT_SECRET_FILE": str(secret),
        "MCNOTIFY_EMAIL_BATCH_SIZE": "100",
        "MCNOTIFY_SFTP_PORT": "2222",
        "MCNOTIFY_STATE_PATH": "/srv/state.db",
        "MCNOTIFY_UNRELATED": "x",
    }
    s = parse(base(), environ=env)
    assert s.section("marketing_cloud")["client_secret"] == "from-a-file"
    assert s.section("email")["batch_size"] == 100 and s.section("sftp")["port"] == 2222
    assert str(s.state_path) == "/srv/state.db"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["marketing_cloud"].pop("client_id"), "[marketing_cloud] client_id is required"),
        (lambda c: c["email"].update(batch_size=5000), "[email] batch_size must be between 1 and 2000"),
        (lambda c: c["email"].update(batch_size="lots"), "[email] batch_size must be a whole number"),
        (lambda c: c["sftp"].update(hots="x"), "unknown key 'hots' in [sftp] (did you mean 'host'?)"),
        (lambda c: c.update(emial={}), "unknown section [emial] (did you mean [email]?)"),
        (lambda c: c["marketing_cloud"].update(auth_url="http://mc.example.com/"), "must be an https:// URL"),
        (lambda c: c["templates"].update(x={"channel": "fax", "definition_key": "k"}), "channel must be one of"),
        (lambda c: c["source"].update(query="SELECT 1"), "must use both %(after)s and %(limit)s"),
        (lambda c: c["sms"].update(default_region="XX"), "not a known region code"),
        (lambda c: c["sftp"].pop("password"), "[sftp] needs key_file or password"),
        (lambda c: c["import"].pop("definition_key"), "definition_key is required"),
        (lambda c: c["sftp"].update(password_file="/nonexistent/pw"), "cannot read /nonexistent/pw"),
        (lambda c: c["source"].update(url="mysql://u:p@[::1/app"), "[source] url is not a URL that can be read"),
        (lambda c: c["source"].update(url="mysql://u:p@h:99999/app"), "[source] url must have a numeric port"),
        (lambda c: c["source"].update(url="mysql://u:p[w@h/app"), "[source] url has / ? # [ or ] in its user or"),
    ],
)
def test_each_mistake_is_one_clear_error(change: Any, message: str) -> None:
    config = base()
    config.setdefault("email", {})
    config.setdefault("sms", {})
    change(config)
    with pytest.raises(ConfigError) as info:
        parse(config, environ={})
    assert message in str(info.value)


def test_loopback_http_is_allowed_for_the_sandbox() -> None:
    config = base()
    config["marketing_cloud"]["auth_url"] = "http://127.0.0.1:8080/"
    assert parse(config, environ={}).section("marketing_cloud")["auth_url"].startswith("http://127.0.0.1")


def test_bad_config_exits_78_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    config = base()
    config["email"] = {"concurrency": 0}
    path.write_text(dump_toml(config))
    for command in (["run-all"], ["sync", "--dry-run"], ["config", "check"], ["status"]):
        result = run_cli(path, *command)
        assert result.exit_code == 78
        assert result.output.strip() == "mcnotify: error: [email] concurrency must be between 1 and 64, got 0"
    path.write_text("[state\npath=1")
    result = run_cli(path, "run-all")
    assert result.exit_code == 78 and "invalid TOML" in result.output and len(result.output.splitlines()) == 1
    missing = run_cli(tmp_path / "nope.toml", "run-all")
    assert missing.exit_code == 78 and "config file not found" in missing.output


def test_config_check_redacts_secrets(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(base()))
    result = run_cli(path, "config", "check")
    assert result.exit_code == 0
    for secret in ("top-secret-value", "sftp-secret-pw", "db-secret-pw"):
        assert secret not in result.output
    assert "mysql://app:***@db.internal:3306/app" in result.output
    as_json = run_cli(path, "config", "check", "--json")
    assert "top-secret-value" not in as_json.output and '"client_secret": "***"' in as_json.output


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(base()))
    assert load(path, environ={}).path == path


# -- [state] url: the MariaDB/MySQL state ------------------------------------------------------------------------
def test_state_defaults_to_the_sqlite_file_and_url_selects_the_database(tmp_path: Path) -> None:
    raw = base()
    del raw["state"]
    s = parse(raw, environ={})
    assert str(s.state_path) == "/var/lib/mcnotify/state.db" and s.state_url is None
    assert s.state_location == "/var/lib/mcnotify/state.db"
    raw["state"] = {"url": "mysql://mcn:state-Secret-pw@db.internal:3306/mcnotify"}
    s = parse(raw, environ={})
    assert s.state_url == "mysql://mcn:state-Secret-pw@db.internal:3306/mcnotify"
    assert s.state_location == "mysql://***@db.internal:3306/mcnotify"
    assert "state-Secret-pw" in s.secrets
    assert s.redacted()["state"]["url"] == "mysql://mcn:***@db.internal:3306/mcnotify"
    password = tmp_path / "state_pw"
    password.write_text("from-the-file\n")
    password.chmod(0o600)
    s = parse(raw, environ={"MCNOTIFY_STATE_PASSWORD_FILE": str(password)})
    assert s.state.password == "from-the-file" and "from-the-file" in s.secrets
    assert s.redacted()["state"]["password"] == "***"


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"path": "/srv/state.db", "url": "mysql://u:pw-Hidden-1@h/db"}, "[state] has both path and url"),
        ({"url": "postgres://u:pw-Hidden-1@h/db"}, "[state] url must be mysql://"),
        ({"url": "mysql://u:pw-Hidden-1@h:3306/"}, "[state] url must name the database"),
        ({"url": "mysql://u:pw-Hidden-1@[::1:3306/db"}, "[state] url is not a URL that can be read"),
        ({"url": "mysql://u:pw-Hidden-[1@db:3306/db"}, "[state] url has / ? # [ or ] in its user or password"),
        ({"url": "mysql://u:pw-Hidden-1@db:port/db"}, "[state] url must have a numeric port from 0 to 65535"),
    ],
)
def test_state_url_mistakes_are_one_line_config_errors(state: dict[str, Any], message: str) -> None:
    raw = base()
    raw["state"] = state
    with pytest.raises(ConfigError) as caught:
        parse(raw, environ={})
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert "pw-Hidden-1" not in str(caught.value)


def test_config_check_hides_the_state_password(tmp_path: Path) -> None:
    raw = base()
    raw["state"] = {"url": "mysql://mcn:state-Secret-pw@db.internal:3306/mcnotify"}
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(raw))
    path.chmod(0o600)
    result = run_cli(path, "config", "check")
    assert result.exit_code == 0, result.output
    assert "state-Secret-pw" not in result.output and "mysql://mcn:***@db.internal:3306/mcnotify" in result.output
    raw["state"]["path"] = "/srv/state.db"
    path.write_text(dump_toml(raw))
    result = run_cli(path, "config", "check")
    assert result.exit_code == 78 and "state-Secret-pw" not in result.output


@pytest.mark.parametrize("password", ["Hunter2secret/xyz", "pw?x", "pw#x"])
def test_a_state_url_password_that_a_parser_would_split_is_refused_without_showing_it(password: str) -> None:
    from mcnotify.config import check_state_url

    problem = check_state_url(f"mysql://u:{password}@127.0.0.1:3306/db")
    assert problem is not None and "percent-encode" in problem
    assert "Hunter2" not in problem and "xyz" not in problem


def test_a_state_url_user_without_a_password_is_not_treated_as_a_secret() -> None:
    from mcnotify.config import url_secrets

    assert url_secrets("mysql://mcnotify@127.0.0.1/state", bare_user_is_secret=False) == []
    assert "pw" in url_secrets("mysql://mcnotify:pw@127.0.0.1/state", bare_user_is_secret=False)


def test_a_source_url_user_name_is_shown_but_its_password_never(tmp_path: Path) -> None:
    """A mysql:// source URL's bare user is a user name (its password comes from password_file): masking it
    turned the credentials folder of every message into /etc/***/credentials. A userinfo of another scheme may
    be a token, and stays masked."""
    from mcnotify.config import url_secrets

    assert url_secrets("mysql://mcnotify@db.internal:3306/app") == []
    assert set(url_secrets("mysql://mcnotify:s3cr%2Ft@db/app")) >= {"s3cr%2Ft", "s3cr/t"}
    assert set(url_secrets("https://tok3n@example.com/x")) == {"tok3n"}
    config = tmp_path / "c.toml"
    text = (Path(__file__).parent.parent / "config.example.toml").read_text()
    config.write_text(text.replace('path = "/var/lib/mcnotify/state.db"', f'path = "{tmp_path / "s.db"}"'))
    config.chmod(0o600)
    result = run_cli(config, "status")
    assert result.exit_code == 78
    assert "/etc/mcnotify/credentials" in result.output and "***" not in result.output, result.output
