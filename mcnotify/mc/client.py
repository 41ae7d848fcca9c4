"""One HTTP client for MC's REST and SOAP endpoints: bearer token, timeouts, retries, keep-alive hygiene.

- Every request has a timeout.
- MC closes keep-alive connections idle for 5 s; each thread drops its pooled connections once they have idled
  `idle_close` seconds, and a request that still meets a closed connection is retried.
- 429 / 5xx / connection failures are retried with exponential backoff, honouring Retry-After. A request that
  is not idempotent is only retried when it certainly never reached MC.
- A 401 drops the token, fetches a new one and retries once.
- A stop request (SIGTERM, Ctrl-C) cuts every wait short: a backoff sleep, a request not yet sent (Stopped),
  a request already sent once the stop grace is over (Stopped if idempotent, else OutcomeUnknown).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from tenacity import RetryCallState

from mcnotify import retrying, stop
from mcnotify.config import MarketingCloudSettings
from mcnotify.errors import AuthExpired, ServiceUnavailable, TransientMcError
from mcnotify.mc import wire
from mcnotify.mc.auth import TokenProvider

log = logging.getLogger(__name__)


class OutcomeUnknown(Exception):
    """A non-idempotent request may or may not have reached MC."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # parsed JSON, or text for SOAP
    headers: Mapping[str, str]


def _retry_after(resp: requests.Response, body: Any) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None and isinstance(body, dict):
        value = body.get("retryAfter")
    try:
        return None if value is None else max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request cannot have reached the server (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    text = repr(exc)
    return isinstance(exc, requests.ConnectionError) and ("NewConnectionError" in text or "NameResolution" in text)


class McClient:
    def __init__(
        self,
        section: MarketingCloudSettings,
        tokens: TokenProvider,
        sleep: Callable[[float], None] = stop.sleep,
        on_throttle: Callable[[], None] | None = None,
    ) -> None:
        self._section = section
        self.tokens = tokens
        self._sleep = sleep
        self._local = threading.local()
        self._sessions: set[requests.Session] = set()  # every thread's, so that close() closes them all
        self._sessions_lock = threading.Lock()
        self.on_throttle = on_throttle  # called on every 429, e.g. to lower concurrency
        self.retries = 0

    # Each thread gets its own session, so "idle for N seconds" is true of the connection it pools.
    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        now = time.monotonic()
        last = getattr(self._local, "last_used", 0.0)
        if session is not None and now - last >= self._section.idle_close:
            session.close()
        if session is None:
            session = wire.new_session()
            self._local.session = session
            with self._sessions_lock:
                self._sessions.add(session)
        self._local.last_used = now
        return session

    def close(self) -> None:
        """Close every thread's session (the send pool's threads each opened one), not only this thread's."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, set()
        for session in sessions:
            session.close()
        self._local.session = None

    def _backoff(self, attempt: int, hint: float | None) -> float:
        cap = self._section.backoff_max
        if hint is not None:
            return min(hint, cap)
        return float(min(cap, 0.5 * 2**attempt) * (0.5 + random.random() / 2))

    def _wait(self, state: RetryCallState) -> float:
        """Exponential backoff with jitter, or MC's Retry-After when it sent one (capped by backoff_max)."""
        exc = state.outcome.exception() if state.outcome else None
        hint = exc.retry_after if isinstance(exc, TransientMcError) else None
        return self._backoff(state.attempt_number, hint)

    def call(
        self,
        method: str,
        path: str,
        *,
        api: str = "rest",
        json: Any = None,
        soap: tuple[str, Callable[[str], str]] | None = None,
        check: Callable[[int, Any], None] | None = None,
        idempotent: bool = True,
        before_send: Callable[[], None] | None = None,
    ) -> Reply:
        """Send one request. `soap` is (SOAPAction, envelope builder taking the token). `check(status, body)`
        raises for an answer that is an error (AuthExpired, TransientMcError, McApiError); the default reads
        REST's status codes (SOAP passes its fault reader). `before_send` runs right before each attempt goes
        out, once the token is in hand; what it raises stops the request unsent."""
        refreshed = False

        def attempt() -> Reply:
            nonlocal refreshed
            stop.check()  # e.g. after a backoff sleep that a stop request cut short
            token = self.tokens.get()
            base = token.rest_url if api == "rest" else token.soap_url
            url = base + path.lstrip("/")
            headers = {"Authorization": f"Bearer {token.access_token}"} if api == "rest" else {}
            data = None
            if soap is not None:
                action, build = soap
                headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": action}
                data = build(token.access_token).encode("utf-8")
            session = self._session()
            if before_send is not None:
                before_send()
            try:
                resp = wire.request(
                    session,
                    method,
                    url,
                    what=f"MC request {method} {urlsplit(url).path}",
                    json=json,
                    data=data,
                    headers=headers,
                    timeout=self._section.timeout,
                )
            except stop.Abandoned as exc:
                self._local.session = None  # its connection may still be in use by the abandoned helper thread
                if exc.maybe_sent and not idempotent:
                    raise OutcomeUnknown(
                        f"MC {urlsplit(url).netloc} gave no reply within {stop.GRACE:g} s of the stop request"
                    ) from None
                raise
            except requests.RequestException as exc:
                problem = f"MC {urlsplit(url).netloc} unreachable ({type(exc).__name__})"
                if not idempotent and not _never_sent(exc):
                    raise OutcomeUnknown(problem) from None
                self.close_thread_session()
                raise TransientMcError(problem) from None
            body = self._parse(resp, soap is not None)
            try:
                if check is not None:
                    check(resp.status_code, body)
                else:
                    self._raise_for_status(resp, body)
            except AuthExpired:
                if refreshed:
                    raise
                refreshed = True
                log.info("MC refused the token; fetching a new one and retrying once")
                self.tokens.invalidate(token)
                return attempt()
            except TransientMcError as exc:
                if exc.status == 429 and self.on_throttle:
                    self.on_throttle()
                # A 5xx after the body was sent may mean MC acted on it: only safe to repeat when idempotent.
                if not idempotent and exc.status not in (429, 503):
                    raise OutcomeUnknown(str(exc)) from None
                raise
            return Reply(resp.status_code, body, resp.headers)

        attempts = self._section.max_attempts

        def counted(_: RetryCallState) -> None:
            self.retries += 1

        policy = retrying.policy(
            f"MC {method} /{urlsplit(path).path.lstrip('/')}",
            attempts,
            TransientMcError,
            logger=log,
            wait=self._wait,
            sleep=self._sleep,
            on_retry=counted,
        )
        try:
            return policy(attempt)
        except TransientMcError as exc:
            raise ServiceUnavailable(f"{exc} (gave up after {attempts} attempts)") from None

    def close_thread_session(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()

    @staticmethod
    def _parse(resp: requests.Response, soap: bool) -> Any:
        if soap:
            return resp.text
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return resp.text

    @staticmethod
    def _raise_for_status(resp: requests.Response, body: Any) -> None:
        code = resp.status_code
        if code == 401:
            raise AuthExpired("MC answered 401 Not Authorized", code)
        if code == 429 or code >= 500:
            detail = body.get("message") if isinstance(body, dict) else None
            kind = "" if isinstance(body, dict) else " (not JSON)"
            raise TransientMcError(
                f"MC answered HTTP {code}{kind}" + (f": {detail}" if detail else ""),
                code,
                str(body.get("errorcode")) if isinstance(body, dict) else None,
                _retry_after(resp, body),
            )
