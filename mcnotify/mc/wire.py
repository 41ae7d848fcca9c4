"""HTTP requests that a stop request can cut short, and that know whether they were sent.

A blocking socket read cannot be interrupted by a flag, so each request runs in a helper thread (see
`mcnotify.stop.run`) while the caller watches STOP. The session's connections report, per request, the moment
a byte is about to be written to a connected socket: before that, a stop abandons the request as certainly
not sent; after it, the request gets the stop grace for its reply and is then abandoned as maybe sent, its
socket shut down so the helper thread ends too.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from mcnotify import stop

log = logging.getLogger(__name__)
_current = threading.local()  # the Flight of the request this (helper) thread is making


class Flight:
    """One request's progress, written by the helper thread, read by the waiting one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hooked = False  # the request went through our connection classes
        self.sent = False  # a byte is about to be (or was) written to a connected socket
        self.cancelled = False
        self.sock: socket.socket | None = None

    def start_sending(self, sock: socket.socket | None) -> None:
        with self._lock:
            if self.cancelled:
                raise ConnectionAbortedError("request cancelled by a stop request before it was sent")
            self.hooked, self.sent, self.sock = True, True, sock

    def cancel_unsent(self) -> bool:
        """True when nothing was sent; from now on nothing will be. False when it may have gone out (or when the
        request did not pass through our connections, e.g. a proxy: then nobody can tell)."""
        with self._lock:
            if self.hooked and not self.sent:
                self.cancelled = True
            return self.cancelled

    def abort(self) -> None:
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the helper thread's blocked read or write


def _flight() -> Flight | None:
    return getattr(_current, "flight", None)


class _Tracked:
    """Mixin for urllib3 connections: report connecting and the first write."""

    sock: socket.socket | None

    def connect(self) -> None:
        flight = _flight()
        if flight is not None:
            flight.hooked = True  # connecting: nothing sent yet
        super().connect()  # type: ignore[misc]
        if flight is not None:
            flight.sock = self.sock

    def send(self, data: Any) -> None:
        if self.sock is None:
            self.connect()  # http.client would connect here; do it first so a failed connect is not "sent"
        flight = _flight()
        if flight is not None:
            flight.start_sending(self.sock)
        super().send(data)  # type: ignore[misc]


class _HTTPConnection(_Tracked, HTTPConnection):
    pass


class _HTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        flight = _flight()
        proxies = kwargs.get("proxies") or (args[4] if len(args) > 4 else None) or {}
        if flight is not None and request.url and not select_proxy(request.url, proxies):
            # From here on only our connections write: until one says "sending", nothing has gone out.
            # (Through a proxy our connections are not used, so the request stays "maybe sent".)
            flight.hooked = True
        return super().send(request, *args, **kwargs)


def new_session() -> requests.Session:
    session = requests.Session()
    session.mount("https://", _Adapter())
    session.mount("http://", _Adapter())
    return session


def request(session: requests.Session, method: str, url: str, *, what: str, **kwargs: Any) -> requests.Response:
    """`session.request(...)`, cut short by a stop request: raises mcnotify.stop.Abandoned (a Stopped) with
    `maybe_sent` telling whether MC may have received it. The session must not be reused after that."""
    flight = Flight()

    def go() -> requests.Response:
        _current.flight = flight
        try:
            return session.request(method, url, **kwargs)
        finally:
            _current.flight = None

    started = time.monotonic()
    try:
        resp: requests.Response = stop.run(go, what=what, abandon=flight.abort, cancel_unsent=flight.cancel_unsent)
    except Exception as exc:
        log.debug("%s: no answer after %.0f ms (%s)", what, (time.monotonic() - started) * 1000, type(exc).__name__)
        raise
    # Method and path only (what): never a header, a body (contacts, secrets) or a query string.
    log.debug("%s: HTTP %d in %.0f ms", what, resp.status_code, (time.monotonic() - started) * 1000)
    return resp
