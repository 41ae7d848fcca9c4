"""A hostile Marketing Cloud: random faults, a short token lifetime. Everything still arrives exactly once."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from tests.conftest import Env
from tests.helpers import event_rows, people, run_cli

KINDS = ("429", "500", "503", "reset", "slow", "accepted-then-500")


@pytest.mark.sandbox(fault_rate=0.15, fault_kinds=KINDS, slow_seconds=1.5, seed=7)
def test_fifteen_percent_faults_still_deliver_everything_exactly_once(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(300)))
    env.write(
        marketing_cloud={"timeout": 1.0, "max_attempts": 8, "backoff_max": 0.3},
        email={"batch_size": 20, "concurrency": 4},
        sms={"batch_size": 20},
    )
    for _ in range(3):  # a run may still give up on a long streak of faults; the next one carries on
        result = run_cli(env.config, "run-all")
        if result.exit_code == 0:
            break
    assert result.exit_code == 0, result.output
    accepted = Counter(m["messageKey"] for m in env.accepted())
    assert len(accepted) == 900 and set(accepted.values()) == {1}
    faults = Counter(status for _, _, status in env.sandbox.account.requests if status >= 429)
    assert faults[429] and faults[500] and faults[503], faults


@pytest.mark.sandbox(token_lifetime=3.0, latency=0.05)
def test_short_token_lifetime_gets_about_one_token_per_lifetime(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(400)))
    env.write(email={"batch_size": 10, "concurrency": 1}, sms={"batch_size": 10, "concurrency": 1})
    started = time.monotonic()
    result = run_cli(env.config, "run-all")
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert len(env.accepted()) == 1200
    calls = sum(1 for _, path, _ in env.sandbox.account.requests if path.startswith("/messaging"))
    tokens = env.sandbox.account.token_requests
    # Refreshed shortly before each expiry: MC reports the lifetime short (the sandbox, like MC, in whole
    # seconds: 90 % of 3 s -> 2 s) and we refresh a margin earlier still (a quarter of that, 0.5 s), so one
    # token per 1.5 s at most; never one per request or per run.
    assert elapsed > 5 and 2 <= tokens <= elapsed / 1.5 + 1, (tokens, elapsed)
    assert calls > 10 * tokens
    assert not [s for _, _, s in env.sandbox.account.requests if s == 401]


def test_repeated_429_lowers_concurrency_once_logged_and_loses_nothing(env: Env, app_db: Any) -> None:
    app_db(event_rows(1, people(100)))
    env.write(email={"batch_size": 5, "concurrency": 8}, marketing_cloud={"max_attempts": 10})
    env.sandbox.account.inject("429", times=8, path_prefix="/messaging/v1/email")
    result = run_cli(env.config, "run-all")
    assert result.exit_code == 0, result.output
    assert result.output.count("concurrency lowered") == 1
    accepted = Counter(m["messageKey"] for m in env.accepted())
    assert len(accepted) == 300 and set(accepted.values()) == {1}
