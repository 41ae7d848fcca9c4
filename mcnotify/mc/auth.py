"""OAuth2 client-credentials token, shared by threads and reused across runs via the state file.

MC asks for at most one token per ~20 minutes; we refresh only shortly before `expires_in` runs out or when
MC answers 401 for the very token we hold.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from mcnotify import stop
from mcnotify.config import check_https_url
from mcnotify.errors import ConfigError, McApiError, ServiceUnavailable, TransientMcError
from mcnotify.mc import wire
from mcnotify.state.store import Token


def normalise_base_url(url: str) -> str:
    url = url.strip()
    if "://" not in url:
        url = "https://" + url
    return url.rstrip("/") + "/"


class TokenCache:
    """The token row of the state file, through a connection of its own so any thread may use it."""

    def __init__(self, state_path: Path | None) -> None:
        self._path = state_path

    def load(self) -> Token | None:
        if self._path is None:
            return None
        with sqlite3.connect(self._path, timeout=30) as conn:
            row = conn.execute(
                "SELECT access_token, rest_url, soap_url, obtained_at, expires_at FROM token WHERE id = 1"
            ).fetchone()
        return None if row is None else Token(*row)

    def save(self, token: Token | None) -> None:
        if self._path is None:
            return
        conn = sqlite3.connect(self._path, timeout=30)
        try:
            with conn:
                conn.execute("DELETE FROM token")
                if token is not None:
                    conn.execute(
                        "INSERT INTO token (id, access_token, rest_url, soap_url, obtained_at, expires_at)"
                        " VALUES (1, ?, ?, ?, ?, ?)",
                        (
                            token.access_token,
                            token.rest_url,
                            token.soap_url,
                            token.obtained_at,
                            token.expires_at,
                        ),
                    )
        finally:
            conn.close()


class TokenProvider:
    def __init__(
        self,
        section: Mapping[str, Any],
        cache: TokenCache,
        session_factory: Callable[[], requests.Session] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._section = section
        self._cache = cache
        self._session_factory = session_factory or wire.new_session  # wire: requests a stop can cut short
        self._clock = clock
        self._lock = threading.Lock()
        self._token: Token | None = None
        self.requests_made = 0

    def _fresh(self, token: Token | None) -> bool:
        if token is None:
            return False
        lifetime = token.expires_at - token.obtained_at
        margin = min(float(self._section["token_margin"]), lifetime / 4)
        return self._clock() < token.expires_at - margin

    def get(self) -> Token:
        with self._lock:
            if not self._fresh(self._token):
                cached = self._cache.load()
                self._token = cached if self._fresh(cached) else self._request()
                if self._token is not cached:
                    self._cache.save(self._token)
            assert self._token is not None
            return self._token

    def invalidate(self, token: Token) -> None:
        """MC refused `token`: drop it, unless another thread already replaced it."""
        with self._lock:
            if self._token is not None and self._token.access_token == token.access_token:
                self._token = None
                self._cache.save(None)

    def _request(self) -> Token:
        s = self._section
        url = normalise_base_url(s["auth_url"]) + "v2/token"
        body = {
            "grant_type": "client_credentials",
            "client_id": s["client_id"],
            "client_secret": s["client_secret"],
        }
        if s["account_id"]:
            body["account_id"] = s["account_id"]
        if s["scope"]:
            body["scope"] = s["scope"]
        host = urlsplit(url).netloc

        @retry(
            retry=retry_if_exception_type(TransientMcError),
            stop=stop_after_attempt(int(s["max_attempts"])),
            wait=wait_exponential(multiplier=1, max=float(s["backoff_max"])),
            sleep=stop.sleep,  # a stop request ends the backoff at once (Stopped)
            reraise=True,
        )
        def post() -> requests.Response:
            stop.check()
            self.requests_made += 1
            try:
                with self._session_factory() as session:
                    # A stop request abandons it (Stopped): asking for a token again later is harmless.
                    resp = wire.request(
                        session, "POST", url, what="MC token request", json=body, timeout=float(s["timeout"])
                    )
            except requests.RequestException as exc:
                raise TransientMcError(f"MC auth {host} unreachable: {type(exc).__name__}") from None
            if resp.status_code == 429 or resp.status_code >= 500:
                raise TransientMcError(f"MC auth {host} answered HTTP {resp.status_code}", resp.status_code)
            return resp

        try:
            resp = post()
        except TransientMcError as exc:
            raise ServiceUnavailable(f"{exc} after {s['max_attempts']} attempts") from None
        try:
            data = resp.json()
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError:
            raise McApiError(
                f"MC auth {host} answered HTTP {resp.status_code} with no JSON", resp.status_code
            ) from None
        if resp.status_code in (400, 401, 403):
            why = data.get("error_description") or data.get("error") or data.get("message") or "refused"
            raise ConfigError(f"MC refused the client credentials (HTTP {resp.status_code}): {why}")
        if resp.status_code != 200 or "access_token" not in data:
            raise McApiError(f"MC auth answered HTTP {resp.status_code} without a token", resp.status_code)
        rest_url = normalise_base_url(data.get("rest_instance_url") or "")
        soap_url = normalise_base_url(data.get("soap_instance_url") or "")
        for name, value in (("rest_instance_url", rest_url), ("soap_instance_url", soap_url)):
            if check_https_url(value):
                raise McApiError(f"MC token response has an unsafe {name} (https required): {value}")
        now = self._clock()
        return Token(data["access_token"], rest_url, soap_url, now, now + float(data.get("expires_in", 1080)))
