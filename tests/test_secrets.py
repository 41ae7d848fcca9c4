"""Config and secrets (issue 9, items 4, 10, 11, 12, 13): message-key prefixes, secrets never echoed, the https
rule decided on the host requests connects to, the token cache keyed on the credentials, a private state file."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import example, given
from hypothesis import strategies as st
from urllib3.util.url import parse_url

from mcnotify import doctor
from mcnotify.config import MarketingCloudSettings, parse
from mcnotify.errors import ConfigError, McApiError
from mcnotify.mc.auth import TokenProvider, issued_for
from mcnotify.message_keys import MAX_PREFIX, key_problem
from mcnotify.sandbox import Sandbox
from mcnotify.sandbox.model import SandboxSettings
from mcnotify.state import StateStore
from mcnotify.state.schema import MIGRATIONS
from mcnotify.state.tokens import NoTokenCache, SqliteTokenCache
from mcnotify.steps import Context
from mcnotify.steps.classify import message_key
from tests.conftest import Env, sqlite_only
from tests.helpers import QUERY, TEMPLATES, dump_toml, run_cli


def base() -> dict[str, Any]:
    return {
        "state": {"path": "/tmp/x/state.db"},
        "source": {"url": "mysql://app@db.internal:3306/app", "query": QUERY},
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
        "email": {},
        "alerts": {},
        "templates": dict(TEMPLATES),
    }


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(config))
    path.chmod(0o600)
    return path


def config_error(config: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(config, environ=environ or {})
    return str(info.value)


# -- 4: message keys ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prefix",
    [
        "p" * (MAX_PREFIX + 1),
        "production-eu-west-marketing-cloud-notifications-2025-v2",
        "mc n",
        "mcn/prod",
        "mcn\u00e9",
    ],
)
def test_a_prefix_that_could_break_message_keys_is_refused_by_config_check(tmp_path: Path, prefix: str) -> None:
    config = base()
    config["email"]["message_key_prefix"] = prefix
    result = run_cli(write_config(tmp_path, config), "config", "check")
    assert result.exit_code == 78, result.output
    assert "[email] message_key_prefix must be 1 to 52 characters of A-Z a-z 0-9 _ . -" in result.output


def test_the_longest_allowed_prefix_passes() -> None:
    config = base()
    config["email"]["message_key_prefix"] = "P-1_." + "x" * (MAX_PREFIX - 5)
    assert parse(config, environ={}).section("email")["message_key_prefix"].startswith("P-1_.")


@given(
    st.from_regex(rf"[A-Za-z0-9_.-]{{1,{MAX_PREFIX}}}", fullmatch=True),
    st.one_of(st.text(min_size=1, max_size=300), st.from_regex(r"[0-9]{1,60}", fullmatch=True)),
    st.sampled_from(["email", "sms"]),
)
@example("p" * MAX_PREFIX, "9" * 60, "email")  # the longest prefix with the longest plain id
@example("p" * MAX_PREFIX, "x" * 300, "email")
def test_every_key_of_every_valid_prefix_is_one_mc_accepts(prefix: str, nid: str, channel: str) -> None:
    parse({**base(), "email": {"message_key_prefix": prefix}}, environ={})  # the config accepts the prefix
    key = message_key(prefix, channel, nid)
    assert key_problem(key) is None, (key, len(key))
    assert key == message_key(prefix, channel, nid) and key != message_key(prefix, channel, nid + "0")


def test_message_key_never_builds_a_key_from_a_bad_prefix() -> None:
    with pytest.raises(ConfigError, match="message_key_prefix must be 1 to 52 characters"):
        message_key("p" * 60, "email", "1")


def test_a_stored_key_mc_would_refuse_is_not_sent_but_failed_with_the_reason(box: Sandbox, tmp_path: Path) -> None:
    from mcnotify.mc import rest
    from mcnotify.mc.client import McClient

    section = mc_section(box.url)
    client = McClient(section, TokenProvider(section, NoTokenCache()))
    bad = ["x" * 95 + "-email-1", "mcn prod-email-2"]  # claimed by an older mcnotify under a bad prefix
    recipients = [rest.Recipient(k, f"m-{i}", f"a{i}@example.com") for i, k in enumerate([*bad, "mcn-email-3"])]
    verdicts = rest.send_transactional(client, "email", "red-envelope-sent", recipients)
    client.close()
    assert verdicts["mcn-email-3"].accepted
    for key in bad:
        assert not verdicts[key].accepted and verdicts[key].code == rest.KEY_REFUSED
    assert verdicts[bad[0]].message == "messageKey is 103 characters, over MC's 100: not sent"
    assert [m["messageKey"] for m in box.account.snapshot()["accepted"]] == ["mcn-email-3"]


def test_doctor_reports_pending_notifications_whose_stored_key_mc_would_refuse(tmp_path: Path) -> None:
    # A state file written by an older mcnotify (schema 2) that claimed rows with an over-long prefix.
    path = tmp_path / "state.db"
    # Raw sqlite3: a file an older release wrote, built by hand.
    with sqlite3.connect(path) as conn:
        for number, script in enumerate(MIGRATIONS[:2], start=1):
            conn.executescript(f"{script}\nPRAGMA user_version={number};")
        conn.execute("INSERT INTO batches (id, created_at, status) VALUES (7, 0, 'imported')")
        conn.execute(
            "INSERT INTO notifications (notification_id, batch_id, template, channel, attributes, status, message_key)"
            " VALUES ('1', 7, 'envelope-sent', 'email', '{}', 'pending', ?)",
            ("x" * 95 + "-email-1",),
        )
    conn.close()
    store = StateStore(path)
    try:
        config = base()
        config["state"]["path"] = str(path)
        check = doctor._run("message keys", "hint", lambda: doctor._message_keys(Context(parse(config, {}), store)))
    finally:
        store.close()
    assert not check.ok
    assert "1 notifications waiting to be sent (first in batch 7) have a messageKey over 100" in check.detail


# -- 10: secrets are never echoed --------------------------------------------------------------------------------
LEAKS = [
    ("source", "password", 98765432101, "98765432101"),
    ("source", "password", 3.14159265, "3.14159265"),
    ("source", "url", "postgres://app:Pg-Secret-77@db.internal/app", "Pg-Secret-77"),
    ("source", "url", "mysql+bad://app:Pw-In-Url-1@db.internal/app", "Pw-In-Url-1"),
    ("alerts", "slack_webhook", "http://hooks.slack.com/services/T0/B0/SlackPathSecret1", "SlackPathSecret1"),
    ("alerts", "slack_webhook", "not a url SlackWordSecret", "SlackWordSecret"),
    ("alerts", "ping_url", "ftp://pinger:PingPw-55@hc.example.com/abc", "PingPw-55"),
    ("alerts", "ping_url", "https://pinger:PingPw-56@hc.example.com/abc", "PingPw-56"),
    ("alerts", "smtp_password", 20240101, "20240101"),
    ("marketing_cloud", "auth_url", "http://mcuser:AuthPw-99@mc.example.com/", "AuthPw-99"),
    ("marketing_cloud", "client_secrt", "Misspelt-Secret-1", "Misspelt-Secret-1"),
    ("sftp", "pasword", "Misspelt-Pw-2", "Misspelt-Pw-2"),
    ("sftp", "key_passphrse", 55667788, "55667788"),
    ("sftp", "pwd", "Odd-Name-Pw-4", "Odd-Name-Pw-4"),
    ("marketing_cloud", "client_secret_file", "Secret-Put-In-File-Key", "Secret-Put-In-File-Key"),
]


@pytest.mark.parametrize(("section", "key", "value", "secret"), LEAKS)
def test_config_errors_never_show_a_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, section: str, key: str, value: Any, secret: str
) -> None:
    config = base()
    config[section][key] = value
    caplog.set_level(logging.DEBUG)
    result = run_cli(write_config(tmp_path, config), "config", "check")
    assert result.exit_code == 78, result.output
    assert f"[{section}] {key}" in result.output or f"'{key}' in [{section}]" in result.output, result.output
    assert secret not in result.output and secret not in caplog.text
    assert secret not in config_error(config)


@pytest.mark.parametrize("value", [["List-Secret-3"], {"x": "List-Secret-3"}])
def test_a_secret_of_the_wrong_kind_is_not_shown(value: Any) -> None:
    config = base()
    config["marketing_cloud"]["client_secret"] = value
    message = config_error(config)
    assert message.startswith("[marketing_cloud] client_secret must be a string") and "List-Secret-3" not in message


@pytest.mark.parametrize(
    ("variable", "value", "secret"),
    [
        ("MCNOTIFY_SOURCE_URL", "sqlserver://app:Env-Url-Pw-1@db/app", "Env-Url-Pw-1"),
        ("MCNOTIFY_ALERTS_SLACK_WEBHOOK", "http://hooks.slack.com/services/T/B/EnvSlackSecret", "EnvSlackSecret"),
        ("MCNOTIFY_MARKETING_CLOUD_AUTH_URL", "https://u:Env-Auth-Pw@mc.example.com/", "Env-Auth-Pw"),
    ],
)
def test_environment_overrides_are_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, secret: str
) -> None:
    monkeypatch.setenv(variable, value)
    result = run_cli(write_config(tmp_path, base()), "config", "check")
    assert result.exit_code == 78 and secret not in result.output, result.output


def test_a_secret_file_holding_a_bad_value_is_not_echoed(tmp_path: Path) -> None:
    webhook = tmp_path / "webhook"
    webhook.write_text("http://hooks.slack.com/services/T/B/FileSlackSecret\n")
    webhook.chmod(0o600)
    config = base()
    config["alerts"]["slack_webhook_file"] = str(webhook)
    message = config_error(config)
    assert message.startswith("[alerts] slack_webhook must be an https:// URL") and "FileSlackSecret" not in message


def test_config_check_never_prints_url_userinfo(tmp_path: Path) -> None:
    config = base()
    # A password with a '/' fools urllib.parse, which then sees no password at all (and "Zq" as the port): refused,
    # without showing it; percent-encoded it is taken, and still not shown.
    config["source"]["url"] = "mysql://app:Zq/Secret9@db.internal:3306/app"
    refused = run_cli(write_config(tmp_path, config), "config", "check")
    assert refused.exit_code == 78 and "percent-encode" in refused.output, refused.output
    assert "Secret9" not in refused.output and "***@db.internal:3306/app" in refused.output
    config["source"]["url"] = "mysql://app:Zq%2FSecret9@db.internal:3306/app"
    result = run_cli(write_config(tmp_path, config), "config", "check")
    assert result.exit_code == 0, result.output
    assert "Secret9" not in result.output and "***@db.internal:3306/app" in result.output


def test_a_failing_slack_alert_never_logs_the_webhook_path(tmp_path: Path) -> None:
    config = base()
    config["alerts"]["slack_webhook"] = "http://127.0.0.1:9/services/T0000/B0000/SlackHookPath42"
    config["state"]["path"] = str(tmp_path / "state.db")  # its own: a shared one may remember an earlier alert
    result = run_cli(write_config(tmp_path, config), "alert", "--unit", "mcnotify.service")
    assert result.exit_code == 0 and "Slack alert failed" in result.output, result.output
    assert "SlackHookPath42" not in result.output


# -- 11: the https rule ------------------------------------------------------------------------------------------
AMBIGUOUS = [
    "http://mc-plain.invalid\\@127.0.0.1/",
    "http://mc-plain.invalid\\\\@127.0.0.1:8080/",
    "http://localhost\\@mc-plain.invalid/",
    "http://[::1]\\@mc-plain.invalid/",
    "http://user@127.0.0.1/",
    "http://mc-plain.invalid#@127.0.0.1/",
    "http://127.0.0.1/#frag",
    "http://127.0.0.1 @mc-plain.invalid/",
    "http://127.0.0.1\t/",
    "http://127.0.0.1\u3000/",
    "http://mc-plain.invalid/",
    "http://127.0.0.2.nip.io/",
    "https://u:p@mc.example.com/",
    "mc.example.com",
]


def test_the_example_really_connects_elsewhere() -> None:
    # Why the rule must use requests' own parser: urllib3 connects to mc-plain.invalid, in plain text.
    assert parse_url("http://mc-plain.invalid\\@127.0.0.1/").host == "mc-plain.invalid"


@pytest.mark.parametrize("url", AMBIGUOUS)
@pytest.mark.parametrize(("section", "key"), [("marketing_cloud", "auth_url"), ("alerts", "ping_url")])
def test_an_ambiguous_or_plain_http_url_is_refused(section: str, key: str, url: str) -> None:
    config = base()
    config[section][key] = url
    message = config_error(config)
    assert message.startswith(f"[{section}] {key} "), message
    assert "mc-plain.invalid\\" not in message and "u:p@" not in message


@pytest.mark.parametrize("url", AMBIGUOUS)
def test_an_ambiguous_slack_webhook_is_refused(url: str) -> None:
    config = base()
    config["alerts"]["slack_webhook"] = url
    assert config_error(config).startswith("[alerts] slack_webhook ")


@pytest.mark.parametrize(
    ("url", "used"),
    [
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/"),
        ("http://[::1]:9/mc/", "http://[::1]:9/mc/"),
        ("HTTP://LOCALHOST:8/", "http://localhost:8/"),
        ("https://mcabc.auth.marketingcloudapis.com", "https://mcabc.auth.marketingcloudapis.com"),
    ],
)
def test_the_url_used_is_the_one_checked(url: str, used: str) -> None:
    config = base()
    config["marketing_cloud"]["auth_url"] = url
    assert parse(config, environ={}).section("marketing_cloud")["auth_url"] == used


class FakeResponse:
    def __init__(self, data: dict[str, Any]) -> None:
        self.status_code = 200
        self._data = data

    def json(self) -> dict[str, Any]:
        return self._data


class FakeSession:
    """Answers the token request with the URLs under test; no network."""

    def __init__(self, rest_url: Any) -> None:
        self.rest_url = rest_url

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def request(self, method: str, url: str, **kwargs: Any) -> FakeResponse:
        return self.post(url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> FakeResponse:
        return FakeResponse(
            {
                "access_token": "tok",
                "expires_in": 1080,
                "rest_instance_url": self.rest_url,
                "soap_instance_url": "https://mcabc.soap.marketingcloudapis.com/",
            }
        )


def mc_section(url: str, secret: str = "s3cret-value", **over: Any) -> MarketingCloudSettings:
    return MarketingCloudSettings(
        **{
            "auth_url": url,
            "client_id": "sandbox-client",
            "client_secret": secret,
            "account_id": None,
            "scope": None,
            "timeout": 2.0,
            "max_attempts": 2,
            "backoff_max": 0.1,
            "idle_close": 4.0,
            "token_margin": 120.0,
            **over,
        }
    )


@pytest.mark.parametrize(
    "rest_url",
    [
        "http://mc-plain.invalid\\@127.0.0.1/",
        "http://mc-plain.invalid/",
        "https://user:RestPw-1@mc.rest.example.com/",
        "https://mc.rest.example.com/#x",
        "https://mc.rest.example.com/ x",
    ],
)
def test_an_unsafe_rest_url_from_mc_is_refused(rest_url: str) -> None:
    tokens = TokenProvider(mc_section("https://mc.auth.example.com/"), NoTokenCache(), lambda: FakeSession(rest_url))  # type: ignore[arg-type,return-value]
    with pytest.raises(McApiError, match="unsafe rest_instance_url") as info:
        tokens.get()
    assert "RestPw-1" not in str(info.value)


def test_a_safe_rest_url_from_mc_is_used_as_parsed() -> None:
    session = FakeSession("MC.rest.example.com")
    tokens = TokenProvider(mc_section("https://mc.auth.example.com/"), NoTokenCache(), lambda: session)  # type: ignore[arg-type,return-value]
    assert tokens.get().rest_url == "https://mc.rest.example.com/"


# -- 12 and 13: the token cache -----------------------------------------------------------------------------------
@pytest.fixture
def box(tmp_path: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(tmp_path / "mc", SandboxSettings(client_secret="s3cret-value", require_subscribers=False)).start()
    yield sandbox
    sandbox.stop()


def fresh_state(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "state.db"
    StateStore(path).close()
    return path


def test_a_plain_http_token_request_never_goes_through_a_proxy(
    box: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens: a proxied request fails
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    tokens = TokenProvider(mc_section(box.url), NoTokenCache())
    assert tokens.get().access_token and tokens.requests_made == 1


@pytest.mark.parametrize(
    "change",
    [
        {"client_secret": "a-wrong-secret"},
        {"client_id": "another-client"},
    ],
)
def test_a_cached_token_is_not_used_for_other_credentials(box: Sandbox, tmp_path: Path, change: dict[str, Any]) -> None:
    state = fresh_state(tmp_path)
    TokenProvider(mc_section(box.url), SqliteTokenCache(state)).get()
    changed = TokenProvider(mc_section(box.url, **change), SqliteTokenCache(state))
    with pytest.raises(ConfigError, match="MC refused the client credentials"):
        changed.get()
    assert changed.requests_made == 1


@pytest.mark.parametrize(
    "change",
    [{"account_id": "7281698"}, {"scope": "email_send"}, {"auth_url": "http://localhost:{port}/"}],
)
def test_a_new_business_unit_scope_or_auth_url_gets_its_own_token(
    box: Sandbox, tmp_path: Path, change: dict[str, Any]
) -> None:
    state = fresh_state(tmp_path)
    first = TokenProvider(mc_section(box.url), SqliteTokenCache(state)).get()
    port = str(parse_url(box.url).port)
    over = {k: v.replace("{port}", port) for k, v in change.items()}
    second = TokenProvider(mc_section(box.url, **over), SqliteTokenCache(state))
    assert second.get().access_token != first.access_token and second.requests_made == 1
    same = TokenProvider(mc_section(box.url, **over), SqliteTokenCache(state))  # unchanged credentials: reused
    assert same.get().access_token == second.get().access_token and same.requests_made == 0


def test_the_cache_key_is_not_the_secret_nor_its_plain_hash(box: Sandbox, tmp_path: Path) -> None:
    import hashlib

    state = fresh_state(tmp_path)
    TokenProvider(mc_section(box.url), SqliteTokenCache(state)).get()
    # Raw sqlite3: the whole file on disk is what must not hold the secret.
    with sqlite3.connect(state) as conn:
        dump = "\n".join(conn.iterdump())
        stored = conn.execute("SELECT issued_for FROM token").fetchone()[0]
    conn.close()
    assert stored == issued_for(mc_section(box.url))
    assert "s3cret-value" not in dump and hashlib.sha256(b"s3cret-value").hexdigest() not in dump


def test_doctor_proves_the_credentials_with_a_fresh_token(env: Env) -> None:
    assert run_cli(env.config, "doctor").exit_code == 0  # caches a token
    env.sandbox.settings.client_secret = "rotated-in-marketing-cloud"  # the old token is still cached and valid
    result = run_cli(env.config, "doctor")
    assert result.exit_code == 1, result.output
    assert "mc token" in result.output and "MC refused the client credentials" in result.output


def test_the_token_cache_never_recreates_a_deleted_state_file(box: Sandbox, tmp_path: Path) -> None:
    state = fresh_state(tmp_path)
    state.unlink()
    tokens = TokenProvider(mc_section(box.url), SqliteTokenCache(state))
    assert tokens.get().access_token
    assert not state.exists()


# -- 13: the state file is private ----------------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_an_existing_state_file_and_its_wal_are_made_private(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = fresh_state(tmp_path)
    holder = sqlite3.connect(path)  # keeps -wal and -shm in place
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("INSERT INTO meta (key, value) VALUES ('x', '1')")
    holder.commit()
    companions = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    for name in companions:
        name.chmod(0o644)
    StateStore(path).close()
    holder.close()
    assert [_mode(p) for p in companions if p.exists()] == [0o600] * len([p for p in companions if p.exists()])
    assert _mode(path) == 0o600
    assert f"state file {path} was readable by other users (mode 0644): made it 0600" in caplog.text


def test_the_state_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        StateStore(tmp_path / "new" / "state.db").close()
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new") == 0o700 and _mode(tmp_path / "new" / "state.db") == 0o600
    assert all(_mode(p) & 0o077 == 0 for p in (tmp_path / "new").iterdir())


def test_secret_files_readable_by_others_get_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "mc_client_secret"
    secret.write_text("Exposed-Secret-7\n")
    secret.chmod(0o644)
    config = base()
    config["marketing_cloud"]["client_secret_file"] = str(secret)
    caplog.set_level(logging.WARNING)
    assert parse(config, environ={}).section("marketing_cloud")["client_secret"] == "Exposed-Secret-7"
    assert (
        f"[marketing_cloud] client_secret_file ({secret}) holds a secret and is readable by other users" in caplog.text
    )
    assert "Exposed-Secret-7" not in caplog.text
    caplog.clear()
    secret.chmod(0o600)
    parse(config, environ={})
    assert "readable by other users" not in caplog.text


@sqlite_only
def test_every_command_keeps_the_state_private(env: Env, app_db: Any) -> None:
    run_cli(env.config, "run-all")
    env.state_path.chmod(0o644)
    assert run_cli(env.config, "status").exit_code == 0
    assert _mode(env.state_path) == 0o600


def test_requests_reads_the_checked_url_the_same_way() -> None:
    # The URL handed on is urllib3's own rendering; requests re-reads it to the same host.
    checked = parse({**base(), "marketing_cloud": {**base()["marketing_cloud"], "auth_url": "HTTP://[::1]:8/"}}, {})
    url = checked.section("marketing_cloud")["auth_url"] + "v2/token"
    assert requests.Request("POST", url).prepare().url == "http://[::1]:8/v2/token"
