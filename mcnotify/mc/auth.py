"""OAuth2 client-credentials token, shared by threads and reused across runs via the state's token cache.

MC asks for at most one token per ~20 minutes; we refresh only shortly before `expires_in` runs out, when MC
answers 401 for the very token we hold, or when the credentials it was issued for changed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable

import requests

from mcnotify import retrying, stop
from mcnotify.config import MarketingCloudSettings, hide_userinfo, parse_http_url
from mcnotify.errors import ConfigError, McApiError, ServiceUnavailable, TransientMcError
from mcnotify.mc import wire
from mcnotify.state.interface import TokenCache
from mcnotify.state.tokens import Token

log = logging.getLogger(__name__)


def normalise_base_url(url: str) -> str:
    """A base URL (auth, or the REST/SOAP URL MC returns) as requests will read it, ending in `/`; ValueError
    when it is not https (or http to loopback) or could be read two ways (see config.parse_http_url)."""
    url = url.strip()
    if "://" not in url:
        url = "https://" + url
    return parse_http_url(url).rstrip("/") + "/"


def issued_for(section: MarketingCloudSettings) -> str:
    """What a token is issued for: an HMAC keyed by the client secret over the auth URL, client id, business
    unit and scope. Any change means another token; the state file never holds the secret or a plain hash."""
    what = json.dumps(
        [
            "mcnotify-token-v1",
            str(section.auth_url).strip().rstrip("/"),
            section.client_id,
            section.get("account_id") or "",
            section.get("scope") or "",
        ]
    )
    return hmac.new(str(section.client_secret).encode(), what.encode(), hashlib.sha256).hexdigest()


class TokenProvider:
    def __init__(
        self,
        section: MarketingCloudSettings,
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
        self._refused: str | None = None  # the access token MC last refused (never taken from the cache again)
        self._issued_for = issued_for(section)
        self.requests_made = 0

    def _fresh(self, token: Token | None) -> bool:
        if token is None:
            return False
        lifetime = token.expires_at - token.obtained_at
        margin = min(self._section.token_margin, lifetime / 4)
        return self._clock() < token.expires_at - margin

    def get(self) -> Token:
        with self._lock:
            if not self._fresh(self._token):
                cached = self._cache.load(self._issued_for)
                # Another process sharing the state may have replaced a token MC refused: use its new one.
                usable = self._fresh(cached) and cached is not None and cached.access_token != self._refused
                self._token = cached if usable else self._request()
                if self._token is not cached:
                    self._cache.save(self._token, self._issued_for)
            assert self._token is not None
            return self._token

    def refresh(self) -> Token:
        """A new token, whatever is cached: proof that the credentials work now (doctor)."""
        with self._lock:
            self._token = self._request()
            self._cache.save(self._token, self._issued_for)
            return self._token

    def invalidate(self, token: Token) -> None:
        """MC refused `token`: drop it, unless another thread already replaced it."""
        with self._lock:
            if self._token is not None and self._token.access_token == token.access_token:
                self._token = None
                self._refused = token.access_token
                # Only the refused token: one that another process already got in its place stays for all.
                cached = self._cache.load(self._issued_for)
                if cached is None or cached.access_token == token.access_token:
                    self._cache.save(None)

    def _request(self) -> Token:
        s = self._section
        try:
            url = normalise_base_url(s.auth_url) + "v2/token"
        except ValueError as exc:
            raise ConfigError(f"[marketing_cloud] auth_url {exc}") from None
        body = {
            "grant_type": "client_credentials",
            "client_id": s.client_id,
            "client_secret": s.client_secret,
        }
        if s.account_id:
            body["account_id"] = s.account_id
        if s.scope:
            body["scope"] = s.scope
        host = url.partition("://")[2].partition("/")[0]  # checked: no userinfo
        plain_http = url.startswith("http://")  # allowed only to loopback

        def post() -> requests.Response:
            stop.check()
            self.requests_made += 1
            try:
                with self._session_factory() as session:
                    if plain_http:
                        # No proxy from the environment: the secret would cross the network in plain text.
                        session.trust_env = False
                    # A stop request abandons it (Stopped): asking for a token again later is harmless.
                    resp = wire.request(session, "POST", url, what="MC token request", json=body, timeout=s.timeout)
            except requests.RequestException as exc:
                raise TransientMcError(f"MC auth {host} unreachable: {type(exc).__name__}") from None
            if resp.status_code == 429 or resp.status_code >= 500:
                raise TransientMcError(f"MC auth {host} answered HTTP {resp.status_code}", resp.status_code)
            return resp

        try:
            resp = retrying.call(
                post,
                "MC token request",
                s.max_attempts,
                TransientMcError,
                logger=log,
                max_wait=s.backoff_max,
            )
        except TransientMcError as exc:
            raise ServiceUnavailable(f"{exc} after {s.max_attempts} attempts") from None
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
        urls = []
        for name in ("rest_instance_url", "soap_instance_url"):
            value = data.get(name)
            try:
                # The same parser and rules as auth_url; the checked URL is the one used from here on.
                urls.append(normalise_base_url(value if isinstance(value, str) else ""))
            except ValueError as exc:
                shown = hide_userinfo(value)[:200] if isinstance(value, str) else type(value).__name__
                raise McApiError(f"MC token response has an unsafe {name}: it {exc}, got {shown!r}") from None
        now = self._clock()
        return Token(data["access_token"], urls[0], urls[1], now, now + float(data.get("expires_in", 1080)))
