"""Connecting to MySQL/MariaDB (the source, the state) with PyMySQL's default TLS, minus its start-up cost.

Given no TLS options, PyMySQL encrypts when the server offers TLS and verifies nothing (its "preferred" mode).
It builds that context with `ssl.create_default_context()`, which loads the system's CA store (about 25 ms at
every connect, twice in every run) only to leave it unused. The same context without the store costs under a
millisecond: same protocol floor, same options, no verification, exactly as before."""

from __future__ import annotations

import ssl
from functools import cache
from typing import Any

import pymysql.connections


@cache
def _preferred_tls() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Connection(pymysql.connections.Connection):  # type: ignore[misc]  # pymysql has no type hints
    """PyMySQL's connection; only the context of its preferred mode (no TLS options given) is built cheaply."""

    def _create_ssl_ctx(self, sslp: Any) -> ssl.SSLContext:
        if isinstance(sslp, dict) and not sslp:
            return _preferred_tls()
        context: ssl.SSLContext = super()._create_ssl_ctx(sslp)
        return context


def connect(**params: Any) -> pymysql.connections.Connection[Any]:
    return Connection(**params)
