"""Smaller pieces: CSV writing, message keys, MC response parsing, the sandbox's own rules, the demo."""

from __future__ import annotations

import csv
import io
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from mcnotify.config import MarketingCloudSettings
from mcnotify.errors import ConfigError, McApiError, McnotifyError, ServiceUnavailable, TransientMcError
from mcnotify.mc import rest, soap
from mcnotify.mc.auth import TokenProvider
from mcnotify.mc.client import McClient
from mcnotify.sandbox import Sandbox
from mcnotify.sandbox.model import SandboxSettings
from mcnotify.state import StateStore
from mcnotify.state.tokens import SqliteTokenCache
from mcnotify.steps.classify import message_key
from mcnotify.steps.sync import write_csv
from tests.helpers import run_cli

csv_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))


@given(st.lists(st.tuples(csv_text, csv_text), max_size=20))
def test_csv_round_trips_any_text(rows: list[tuple[str, str]]) -> None:
    buffer = io.StringIO(newline="")
    write_csv(rows, buffer)
    parsed = list(csv.reader(io.StringIO(buffer.getvalue(), newline="")))
    assert parsed[0] == ["SubscriberKey", "EmailAddress"]
    assert [tuple(r) for r in parsed[1:]] == rows


@given(st.text(min_size=1, max_size=500), st.sampled_from(["email", "sms"]))
def test_message_keys_are_stable_unique_and_short(nid: str, channel: str) -> None:
    key = message_key("mcn", channel, nid)
    assert key == message_key("mcn", channel, nid) and len(key) <= 100
    assert key != message_key("mcn", channel, nid + "0")
    assert key != message_key("mcn", "sms" if channel == "email" else "email", nid)


# -- MC client against the sandbox over real HTTP ------------------------------------------------------------
@pytest.fixture
def box(tmp_path: Path) -> Any:
    sandbox = Sandbox(
        tmp_path, SandboxSettings(client_secret="s3cret-value", import_lag=0.2, require_subscribers=False)
    ).start()
    yield sandbox
    sandbox.stop()


def client_for(box: Sandbox, tmp_path: Path, **over: Any) -> McClient:
    values = {
        "auth_url": box.url,
        "client_id": "sandbox-client",
        "client_secret": "s3cret-value",
        "account_id": None,
        "scope": None,
        "timeout": 2.0,
        "max_attempts": 3,
        "backoff_max": 0.2,
        "idle_close": 4.0,
        "token_margin": 120.0,
        **over,
    }
    section = MarketingCloudSettings(**values)
    store = StateStore(tmp_path / "state.db")
    store.close()
    return McClient(section, TokenProvider(section, SqliteTokenCache(tmp_path / "state.db")))


def test_partial_failure_inside_a_202_is_read_per_recipient(box: Sandbox, tmp_path: Path) -> None:
    client = client_for(box, tmp_path)
    recipients = [
        rest.Recipient("k1", "c1", "ok@example.com"),
        rest.Recipient("k2", "c2", "bad@@example.com"),
        rest.Recipient("k3", "c3", ""),
    ]
    verdicts = rest.send_transactional(client, "email", "red-envelope-received", recipients)
    assert verdicts["k1"].accepted
    assert not verdicts["k2"].accepted and verdicts["k2"].code == "109121"
    assert not verdicts["k3"].accepted and verdicts["k3"].code == "109106"
    again = rest.send_transactional(client, "email", "red-envelope-received", recipients[:1])
    assert again["k1"].accepted and again["k1"].duplicate
    assert len(box.account.accepted) == 1


def test_unknown_definition_fails_every_recipient(box: Sandbox, tmp_path: Path) -> None:
    client = client_for(box, tmp_path)
    verdicts = rest.send_transactional(client, "sms", "nope", [rest.Recipient("k", "c", "886912345678")])
    assert not verdicts["k"].accepted and verdicts["k"].code == "109111"


def test_bad_client_secret_is_a_config_error(box: Sandbox, tmp_path: Path) -> None:
    client = client_for(box, tmp_path, client_secret="wrong")
    with pytest.raises(ConfigError, match=r"invalid_client|Invalid client ID"):
        rest.send_transactional(client, "sms", "red-envelope-sms", [rest.Recipient("k", "c", "886912345678")])


def test_persistent_5xx_gives_up_as_unavailable(box: Sandbox, tmp_path: Path) -> None:
    client = client_for(box, tmp_path)
    box.account.inject("503", times=10, path_prefix="/messaging")
    with pytest.raises(ServiceUnavailable, match="503"):
        rest.send_transactional(client, "sms", "red-envelope-sms", [rest.Recipient("k", "c", "886912345678")])
    assert box.account.accepted == []


def test_html_instead_of_json_is_a_clear_error(box: Sandbox, tmp_path: Path) -> None:
    client = client_for(box, tmp_path, max_attempts=1)
    box.account.inject("html", times=1, path_prefix="/messaging")
    with pytest.raises(ServiceUnavailable, match="not JSON"):
        rest.send_transactional(client, "sms", "red-envelope-sms", [rest.Recipient("k", "c", "886912345678")])


def test_sandbox_closes_idle_keep_alive_connections_and_client_copes(box: Sandbox, tmp_path: Path) -> None:
    # With idle_close disabled the pooled connection is stale after 5 s; the retry must still deliver once.
    client = client_for(box, tmp_path, idle_close=60.0)
    send = rest.send_transactional
    assert send(client, "sms", "red-envelope-sms", [rest.Recipient("a", "c", "886912345678")])["a"].accepted
    import time

    time.sleep(5.5)
    assert send(client, "sms", "red-envelope-sms", [rest.Recipient("b", "c", "886912345678")])["b"].accepted
    assert [m["messageKey"] for m in box.account.accepted] == ["a", "b"]


def test_soap_import_flow_and_expired_token(box: Sandbox, tmp_path: Path) -> None:
    client = client_for(box, tmp_path)
    (box.sftp_root / "Import" / "mcnotify-subscribers.csv").write_text(
        "SubscriberKey,EmailAddress\r\nk1,a@example.com\r\nk2,bad@@example.com\r\nk3,c@example.c\r\n"
    )
    task = soap.start_import(client, "mcnotify-subscribers")
    assert soap.import_summary(client, task) is None  # no summary row right after the start
    box.account.expire_tokens()
    import time

    time.sleep(0.3)
    summary = soap.import_summary(client, task)  # refreshes the token once
    assert summary is not None and summary.status == "Completed"
    assert (summary.total, summary.ok, summary.errors) == (3, 1, 2)
    assert box.account.subscribers == {"k1": "a@example.com"}
    assert box.account.token_requests == 2
    with pytest.raises(McApiError, match="not found"):
        soap.start_import(client, "no-such-definition")


def test_soap_fault_parsing() -> None:
    fault = (
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
        "<faultcode>s:Server</faultcode><faultstring>Rate Limited</faultstring></s:Fault></s:Body></s:Envelope>"
    )
    with pytest.raises(TransientMcError, match="throttled"):
        soap.check_fault(500, fault)
    soap.check_fault(200, "<ok/>")


def test_token_endpoint_follows_mc_shapes(box: Sandbox) -> None:
    bad_grant = requests.post(box.url + "v2/token", json={"grant_type": "password"}, timeout=5)
    assert bad_grant.status_code == 400 and bad_grant.json()["error"] == "unsupported_grant_type"
    ok = requests.post(
        box.url + "v2/token",
        json={"grant_type": "client_credentials", "client_id": "sandbox-client", "client_secret": "s3cret-value"},
        timeout=5,
    ).json()
    assert ok["token_type"] == "Bearer" and ok["expires_in"] == 1080
    unauth = requests.post(box.url + "messaging/v1/sms/messages/", json={}, timeout=5)
    assert unauth.status_code == 401 and unauth.json()["message"] == "Not Authorized"


# -- state ------------------------------------------------------------------------------------------------
def test_state_file_and_folder_are_private(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "new" / "state.db")
    store.close()
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "new" / "state.db").st_mode) == 0o600


def test_state_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    # Raw SQL on purpose: a file stamped by a newer release.
    store.conn.execute("PRAGMA user_version = 99")
    store.close()
    with pytest.raises(McnotifyError, match="newer mcnotify"):
        StateStore(tmp_path / "s.db")


# -- the demo and the built-in SFTP server ----------------------------------------------------------------------
def test_demo_runs_the_real_pipeline(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "unused.toml", "demo")
    assert result.exit_code == 0, result.output
    assert "second run-all: 0 sent" in result.output
    assert "Luffy via EZTABLE" in result.output and "quarantined" in result.output
    assert "send-email: 19 sent" in result.output and "send-sms: 11 sent" in result.output


def test_sqlite_source_and_builtin_sftp_sandbox(tmp_path: Path) -> None:
    from mcnotify.sandbox import demo

    box, config, _rows = demo.prepare(tmp_path)
    try:
        dry = run_cli(config, "sync", "--dry-run")
        assert dry.exit_code == 0 and "39 new notifications, 8 invalid, 1 expired" in dry.output
        assert run_cli(config, "sync").exit_code == 0
        uploaded = (tmp_path / "sftp" / "Import" / "mcnotify-subscribers.csv").read_bytes()
        assert uploaded.startswith(b"SubscriberKey,EmailAddress\r\n") and b"nami.new@example.com" in uploaded
        assert not list((tmp_path / "sftp" / "Import").glob("*.part"))
    finally:
        box.stop()


def test_watermark_values_stay_comparable_across_runs() -> None:
    import datetime
    import decimal

    from mcnotify.steps.classify import cursor_value

    assert cursor_value(decimal.Decimal("120")) == 120 and cursor_value(decimal.Decimal("120")) > 99
    earlier = cursor_value(datetime.datetime(2026, 11, 23, 9, 5))
    later = cursor_value(datetime.datetime(2026, 11, 23, 10, 0))
    assert isinstance(earlier, str) and later > earlier
    assert cursor_value(7) == 7
