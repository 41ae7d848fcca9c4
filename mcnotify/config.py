"""Settings: TOML file, then `MCNOTIFY_<SECTION>_<KEY>` environment overrides, then `<key>_file` secrets.

Every mistake is reported as one line naming the key; the result is a frozen, validated `Settings`.
"""

from __future__ import annotations

import difflib
import errno
import ipaddress
import logging
import os
import re
import stat
import string
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, cast, get_args, get_type_hints, overload
from urllib.parse import SplitResult, unquote, urlsplit

from mcnotify import message_keys
from mcnotify.errors import ConfigError
from mcnotify.redact import scrub

DEFAULT_CONFIG_PATH = Path("/etc/mcnotify/config.toml")

Checker = Callable[[Any], str | None]  # returns an error text or None


@dataclass(frozen=True)
class Key:
    type: type
    default: Any = None
    required: bool = False
    secret: bool = False
    check: Checker | None = None
    # Validates and returns the value to use instead (a URL as the HTTP library reads it); ValueError says why not.
    parse: Callable[[Any], Any] | None = None


def _one_of(*choices: str) -> Checker:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _between(lo: float, hi: float) -> Checker:
    return lambda v: None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}"


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# Characters on which URL parsers disagree about the host (urllib3, which requests uses, ends the host at a
# backslash; urllib.parse does not) or which they drop or re-encode silently.
_AMBIGUOUS = re.compile(r"[\x00-\x20\x7f-\x9f\\]|\s")
HTTPS_RULE = "must be an https:// URL (http:// only for a loopback sandbox)"


def parse_http_url(value: str, *, query: bool = False) -> str:
    """`value` exactly as requests will use it, or ValueError saying why not.

    Parsed once with urllib3's parser (the one requests uses), so "loopback" is decided on the very host
    requests connects to; anything a second parser could read differently is refused: userinfo, backslashes,
    whitespace and control characters, a #fragment (and a ?query unless `query`, since paths are appended)."""
    from urllib3.exceptions import LocationParseError  # only here: importing urllib3 costs ~45 ms
    from urllib3.util.url import parse_url

    if _AMBIGUOUS.search(value):
        raise ValueError("must be a plain URL: no spaces, control characters or backslashes")
    try:
        url = parse_url(value)
    except LocationParseError:
        raise ValueError("is not a valid URL") from None
    if url.auth is not None:
        raise ValueError("may not contain user:password@ (userinfo)")
    if url.fragment is not None:
        raise ValueError("may not contain a #fragment")
    if url.query is not None and not query:
        raise ValueError("may not contain a ?query")
    if not url.host or not (url.scheme == "https" or (url.scheme == "http" and is_loopback(url.host))):
        raise ValueError(HTTPS_RULE)
    return str(url.url)


def check_https_url(value: str) -> str | None:
    """MC traffic must use HTTPS; plain HTTP only to a loopback sandbox. The problem, or None."""
    try:
        parse_http_url(value)
    except ValueError as exc:
        return str(exc)
    return None


def _http_url(value: str) -> str:
    return parse_http_url(value)


def _http_url_with_query(value: str) -> str:
    return parse_http_url(value, query=True)


def _check_key_prefix(value: str) -> str | None:
    return message_keys.prefix_problem(value)


def _split_url(value: str) -> SplitResult | None:
    """The URL's parts, or None where urllib cannot read it (an unclosed `[` of an IPv6 host raises)."""
    try:
        return urlsplit(value)
    except ValueError:
        return None


UNREADABLE_URL = "is not a URL that can be read (an IPv6 host must be in [ ], closed)"
MYSQL_URL = "mysql://user:password@host:port/database"
_MYSQL_SCHEMES = ("mysql", "mysql+pymysql")


def _userinfo_problem(value: str) -> str | None:
    """A user or password that a URL parser would split: part of it read as the host, the port or an IPv6
    bracket, and then printed in an error."""
    _, userinfo, _ = _split_userinfo(value)
    if userinfo is not None and any(c in userinfo for c in "/?#[]"):
        return (
            "has / ? # [ or ] in its user or password: percent-encode them"
            " (/ as %2F, ? as %3F, # as %23, [ as %5B, ] as %5D)"
        )
    return None


def _port_problem(parts: SplitResult) -> str | None:
    try:
        parts.port  # noqa: B018  # reading it is the check: urllib raises for a port that is no number 0-65535
    except ValueError:
        return f"must have a numeric port from 0 to 65535 ({MYSQL_URL})"
    return None


def _mysql_url_problem(value: str, parts: SplitResult | None) -> str | None:
    """What the source's and the state's mysql:// URLs share: a user and password a parser reads whole, a URL
    urllib can split, a numeric port if any."""
    return _userinfo_problem(value) or (UNREADABLE_URL if parts is None else _port_problem(parts))


def _check_source_url(value: str) -> str | None:
    parts = _split_url(value)
    if parts is not None and parts.scheme == "sqlite":
        return None
    if parts is not None and parts.scheme not in _MYSQL_SCHEMES:
        return "must start with mysql:// or sqlite:///"
    return _mysql_url_problem(value, parts)


def check_state_url(value: str) -> str | None:
    parts = _split_url(value)
    if parts is not None and parts.scheme not in _MYSQL_SCHEMES:
        return f"must be {MYSQL_URL} (MariaDB >= 10.6 or MySQL >= 8.0)"
    if problem := _mysql_url_problem(value, parts):
        return problem
    assert parts is not None
    if not parts.hostname:
        return f"must name a host and a numeric port ({MYSQL_URL})"
    if not parts.path.strip("/"):
        return f"must name the database ({MYSQL_URL})"
    return None


def _check_region(value: str) -> str | None:
    import phonenumbers

    return None if value.upper() in phonenumbers.SUPPORTED_REGIONS else "is not a known region code such as TW or US"


def key(
    default: Any = None,
    *,
    required: bool = False,
    secret: bool = False,
    check: Checker | None = None,
    parse: Callable[[Any], Any] | None = None,
) -> Any:
    """A config key: a dataclass field whose metadata tells validation how to read it (the type comes from the
    field's annotation)."""
    return field(
        default=default, metadata={"key": {"required": required, "secret": secret, "check": check, "parse": parse}}
    )


class Section(Mapping[str, Any]):
    """One validated, frozen section: read it by attribute (`settings.email.batch_size`, an int to mypy). It
    is also a read-only mapping (`section["batch_size"]`) for generic code such as `config check`."""

    def __getitem__(self, name: str) -> Any:
        if name not in self._names():
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]  # subclasses are dataclasses


@dataclass(frozen=True)
class StateSettings(Section):
    """[state]"""

    # SQLite, the default: the state file. Exactly one of path and url; neither means this default path.
    path: str | None = key()
    # MariaDB/MySQL instead: mysql://user:password@host:port/database (the password may come from password_file
    # or MCNOTIFY_STATE_PASSWORD instead of the URL).
    url: str | None = key(check=check_state_url)
    password: str | None = key(secret=True)
    connect_timeout: float = key(10.0, check=_between(0.1, 600))
    # Seconds a run's lease on the database lasts without a heartbeat: how soon another process takes over from
    # one that died (the heartbeat renews it every lease/3 seconds).
    lease: float = key(15.0, check=_between(3, 3600))


DEFAULT_STATE_PATH = "/var/lib/mcnotify/state.db"


@dataclass(frozen=True)
class SourceSettings(Section):
    """[source]"""

    url: str = key(required=True, check=_check_source_url)
    query: str = key(required=True)
    batch_limit: int = key(50_000, check=_between(1, 10_000_000))
    cursor_column: str = key("notification_id")
    overlap: int = key(1000, check=_between(0, 10_000_000))
    password: str | None = key(secret=True)
    fetch_size: int = key(5000, check=_between(1, 1_000_000))
    parallel_after: int = key(20_000, check=_between(0, 100_000_000))
    connect_timeout: float = key(10.0, check=_between(0.1, 600))
    poll_interval: float = key(1.0, check=_between(0.05, 3600))  # run-all --follow: seconds between reads
    # Hours: a row whose created_at is older is recorded `expired`, never sent (0: off).
    max_age: float = key(48.0, check=_between(0, 100_000))


@dataclass(frozen=True)
class MarketingCloudSettings(Section):
    """[marketing_cloud]"""

    auth_url: str = key(required=True, parse=_http_url)
    client_id: str = key(required=True)
    client_secret: str = key(required=True, secret=True)
    account_id: str | None = key()
    scope: str | None = key()
    timeout: float = key(30.0, check=_between(0.1, 600))
    max_attempts: int = key(5, check=_between(1, 20))
    backoff_max: float = key(60.0, check=_between(0, 3600))
    idle_close: float = key(4.0, check=_between(0, 60))
    token_margin: float = key(120.0, check=_between(0, 3600))


@dataclass(frozen=True)
class SftpSettings(Section):
    """[sftp]"""

    host: str = key(required=True)
    port: int = key(22, check=_between(1, 65535))
    username: str = key(required=True)
    key_file: str | None = key()
    key_passphrase: str | None = key(secret=True)
    password: str | None = key(secret=True)
    known_hosts: str = key(required=True)
    remote_dir: str = key("/Import")
    file_name: str = key("mcnotify-subscribers.csv")
    timeout: float = key(30.0, check=_between(0.1, 600))


@dataclass(frozen=True)
class ImportSettings(Section):
    """[import]"""

    mode: str = key("import-definition", check=_one_of("import-definition", "fixed-delay"))
    definition_key: str | None = key()
    poll_interval: float = key(15.0, check=_between(0.01, 3600))
    timeout: float = key(1800.0, check=_between(0.1, 86400))
    delay: float = key(120.0, check=_between(0, 86400))
    clock_skew: float = key(5.0, check=_between(0, 3600))


@dataclass(frozen=True)
class EmailSettings(Section):
    """[email]"""

    api: str = key("transactional", check=_one_of("transactional", "triggered-send"))
    batch_size: int = key(500, check=_between(1, 2000))
    concurrency: int = key(5, check=_between(1, 64))
    rate_limit: float = key(0.0, check=_between(0, 1_000_000))
    from_name_attribute: str = key("SenderDisplayName")
    from_address: str | None = key()
    message_key_prefix: str = key("mcn", check=_check_key_prefix)
    # new-contacts: an email whose subscriber MC already holds with that address goes at once; only new and
    # changed contacts wait for their import. always: every email waits for its batch's import (as before
    # 0.2). never: nothing waits (only for definitions with autoAddSubscriber/updateSubscriber on).
    wait_for_import: str = key("new-contacts", check=_one_of("new-contacts", "always", "never"))


@dataclass(frozen=True)
class SmsSettings(Section):
    """[sms]"""

    api: str = key("transactional", check=_one_of("transactional"))
    default_region: str = key("TW", check=_check_region)
    batch_size: int = key(500, check=_between(1, 2000))
    concurrency: int = key(5, check=_between(1, 64))
    rate_limit: float = key(0.0, check=_between(0, 1_000_000))
    # MC's transactional SMS does not use the email subscriber, so SMS need not wait for the import.
    wait_for_import: bool = key(False)


@dataclass(frozen=True)
class AlertsSettings(Section):
    """[alerts]"""

    slack_webhook: str | None = key(secret=True, parse=_http_url_with_query)
    ping_url: str | None = key(parse=_http_url)
    smtp_host: str | None = key()
    smtp_port: int = key(587, check=_between(1, 65535))
    smtp_security: str = key("starttls", check=_one_of("starttls", "ssl", "none"))
    smtp_username: str | None = key()
    smtp_password: str | None = key(secret=True)
    smtp_from: str = key("mcnotify@localhost")
    smtp_to: str | None = key()
    on_recovery: bool = key(False)
    after: float = key(300.0, check=_between(0, 86400))  # run-all --follow: alert once a failure lasts this long
    repeat_after: float = key(3600.0, check=_between(0, 7 * 86400))  # the same failure again: alert again after
    timeout: float = key(10.0, check=_between(0.1, 300))


@dataclass(frozen=True)
class MetricsSettings(Section):
    """[metrics]"""

    textfile: str | None = key()


SECTIONS: dict[str, type[Section]] = {
    "state": StateSettings,
    "source": SourceSettings,
    "marketing_cloud": MarketingCloudSettings,
    "sftp": SftpSettings,
    "import": ImportSettings,
    "email": EmailSettings,
    "sms": SmsSettings,
    "alerts": AlertsSettings,
    "metrics": MetricsSettings,
}


def _schema_of(cls: type[Section]) -> dict[str, Key]:
    hints = get_type_hints(cls)
    out = {}
    for f in fields(cls):  # type: ignore[arg-type]
        want = hints[f.name]
        base = next((t for t in get_args(want) if t is not type(None)), want)  # `str | None` -> str
        out[f.name] = Key(base, f.default, **f.metadata["key"])
    return out


# Derived from the dataclasses: what validation, env overrides and `*_file` handling read.
SCHEMA: dict[str, dict[str, Key]] = {name: _schema_of(cls) for name, cls in SECTIONS.items()}

TEMPLATE_SCHEMA: dict[str, Key] = {
    "channel": Key(str, required=True, check=_one_of("email", "sms")),
    "definition_key": Key(str, required=True),
    "from_name": Key(str),
}


@dataclass(frozen=True)
class Template:
    name: str
    channel: str
    definition_key: str
    from_name: str | None = None


@dataclass(frozen=True)
class Settings:
    """Validated settings; `section(name)` gives a read-only mapping of one section's keys."""

    values: Mapping[str, Section]
    templates: Mapping[str, Template]
    path: Path | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @overload
    def section(self, name: Literal["state"]) -> StateSettings: ...
    @overload
    def section(self, name: Literal["source"]) -> SourceSettings: ...
    @overload
    def section(self, name: Literal["marketing_cloud"]) -> MarketingCloudSettings: ...
    @overload
    def section(self, name: Literal["sftp"]) -> SftpSettings: ...
    @overload
    def section(self, name: Literal["import"]) -> ImportSettings: ...
    @overload
    def section(self, name: Literal["email"]) -> EmailSettings: ...
    @overload
    def section(self, name: Literal["sms"]) -> SmsSettings: ...
    @overload
    def section(self, name: Literal["alerts"]) -> AlertsSettings: ...
    @overload
    def section(self, name: Literal["metrics"]) -> MetricsSettings: ...
    @overload
    def section(self, name: str) -> Section: ...
    def section(self, name: str) -> Section:
        """A section by name (generic code: `config check`, a channel's settings); typed for a literal name."""
        return self.values[name]

    def channel(self, name: str) -> EmailSettings | SmsSettings:
        """A sending channel's section (both have api, batch_size, concurrency, rate_limit, wait_for_import)."""
        if name not in ("email", "sms"):
            raise KeyError(name)
        return self.email if name == "email" else self.sms

    # One typed attribute per section: a misspelt key is a mypy error, a value has its own type.
    @property
    def state(self) -> StateSettings:
        return cast(StateSettings, self.values["state"])

    @property
    def source(self) -> SourceSettings:
        return cast(SourceSettings, self.values["source"])

    @property
    def marketing_cloud(self) -> MarketingCloudSettings:
        return cast(MarketingCloudSettings, self.values["marketing_cloud"])

    @property
    def sftp(self) -> SftpSettings:
        return cast(SftpSettings, self.values["sftp"])

    @property
    def import_(self) -> ImportSettings:
        return cast(ImportSettings, self.values["import"])

    @property
    def email(self) -> EmailSettings:
        return cast(EmailSettings, self.values["email"])

    @property
    def sms(self) -> SmsSettings:
        return cast(SmsSettings, self.values["sms"])

    @property
    def alerts(self) -> AlertsSettings:
        return cast(AlertsSettings, self.values["alerts"])

    @property
    def metrics(self) -> MetricsSettings:
        return cast(MetricsSettings, self.values["metrics"])

    @property
    def state_path(self) -> Path:
        """The SQLite state file (only meaningful when `state_url` is None)."""
        return Path(self.values["state"]["path"] or DEFAULT_STATE_PATH)

    @property
    def state_url(self) -> str | None:
        """The MariaDB/MySQL state's URL, or None for the SQLite file."""
        url: str | None = self.values["state"]["url"]
        return url

    @property
    def state_location(self) -> str:
        """Where the state lives, for messages, whichever the backend: never a password."""
        url = self.state_url
        return str(self.state_path) if url is None else hide_userinfo(url)

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data with every secret replaced, for `config check`."""
        out: dict[str, Any] = {}
        for sec, keys in self.values.items():
            out[sec] = {}
            for key, value in keys.items():
                secret = SCHEMA[sec][key].secret
                out[sec][key] = "***" if secret and value else value
        out["source"]["url"] = redact_url(out["source"]["url"])
        if out["state"]["url"]:
            out["state"]["url"] = redact_url(out["state"]["url"])
        for sec, key in (("marketing_cloud", "auth_url"), ("alerts", "ping_url")):
            if out[sec][key]:
                out[sec][key] = hide_userinfo(out[sec][key])
        out["templates"] = {n: t.__dict__ for n, t in self.templates.items()}
        return out


def _split_userinfo(url: str) -> tuple[str, str | None, str]:
    """(`scheme://`, userinfo or None, the rest). Userinfo is read generously (everything before the last `@`)
    so that no parser's idea of it can escape masking; at worst a little more is masked."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    else:
        head += sep
    userinfo, at, after = rest.rpartition("@")
    return (head, userinfo, after) if at else (head, None, rest)


def hide_userinfo(text: str) -> str:
    """`text` with any URL userinfo replaced by ***: what error messages may show of a URL."""
    head, userinfo, rest = _split_userinfo(text)
    return text if userinfo is None else f"{head}***@{rest}"


def redact_url(url: str) -> str:
    """For `config check`: a URL's password masked; a plain user name before it is kept."""
    head, userinfo, rest = _split_userinfo(url)
    if userinfo is None:
        return url
    user, colon, _ = userinfo.partition(":")
    if colon and re.fullmatch(r"[A-Za-z0-9._~%+-]+", user):
        return f"{head}{user}:***@{rest}"
    return f"{head}***@{rest}"


def url_secrets(url: str, bare_user_is_secret: bool | None = None) -> list[str]:
    """The parts of a URL's userinfo that must be scrubbed from text (raw and percent-decoded). A userinfo with
    no colon may be a token (scrubbed), or a user name whose password comes from elsewhere (kept: masking every
    "mcnotify" in paths, such as /etc/mcnotify/credentials, helps nobody). Unless told, the scheme decides: a
    database URL (mysql://) names a user."""
    if "://" not in url:  # not a URL: an address such as smtp_from's mcnotify@localhost has no userinfo
        return []
    _, userinfo, _ = _split_userinfo(url)
    if not userinfo:
        return []
    if bare_user_is_secret is None:
        bare_user_is_secret = not url.strip().lower().startswith(("mysql://", "mysql+pymysql://", "mariadb://"))
    _, colon, password = userinfo.partition(":")
    if not colon and not bare_user_is_secret:
        return []
    found = [userinfo, password] if colon else [userinfo]
    return [v for f in found if f for v in (f, unquote(f))]


def _shown(raw: Any) -> str:
    """A non-secret value as an error message may show it: scalars as written, URL userinfo masked."""
    if isinstance(raw, str):
        return repr(hide_userinfo(raw))
    if isinstance(raw, bool | int | float):
        return repr(raw)
    return _type_name(raw)


def _type_name(raw: Any) -> str:
    kinds = {bool: "true/false", int: "a whole number", float: "a number", str: "a string"}
    return next(
        (name for t, name in kinds.items() if isinstance(raw, t)), "a list" if isinstance(raw, list) else "a table"
    )


def _got(raw: Any, secret: bool) -> str:
    # A secret's value is never shown, not even when it is wrong: only what kind of value it was.
    return f", got {_type_name(raw)} (the value of a secret is not shown)" if secret else f", got {_shown(raw)}"


def _coerce(raw: Any, want: type, where: str, secret: bool = False) -> Any:
    if want is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where} must be true or false{_got(raw, secret)}")
    if want is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str):
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 in an environment variable (surrogate escapes)
            raise ConfigError(f"{where} holds bytes that are not UTF-8") from None
    if isinstance(raw, want) and not (want is int and isinstance(raw, bool)):
        return raw
    if isinstance(raw, str):  # from the environment
        try:
            return want(raw)
        except ValueError:
            pass
    name = {str: "a string", int: "a whole number", float: "a number"}.get(want, want.__name__)
    quote = " (in quotes)" if want is str and isinstance(raw, int | float) else ""
    raise ConfigError(f"{where} must be {name}{quote}{_got(raw, secret)}")


def _warn_if_readable(path: str, what: str) -> None:
    """A file holding a secret that other users can read deserves the same warning as such a config file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & 0o077:
        logging.getLogger(__name__).warning(
            "%s (%s) holds a secret and is readable by other users (mode %04o): chmod 600 it",
            what,
            path,
            stat.S_IMODE(mode),
        )


# Where credentials are found outside systemd (a shell, cron, `sudo -u mcnotify mcnotify status`): the same
# folder the units' LoadCredential= lines read from, so one file serves every unit and every shell.
CREDENTIALS_FALLBACK = Path("/etc/mcnotify/credentials")
# The explicit ways to name a credential: `credential:NAME`, or `%d/NAME` as in a unit file (%d is systemd's
# specifier for $CREDENTIALS_DIRECTORY). A bare relative name is a credential too, but see _credential_name.
CREDENTIAL_PREFIXES = ("credential:", "%d/")


def credential_dirs(environ: Mapping[str, str]) -> list[tuple[str, Path]]:
    """Where a credential is looked for, in order, with how each place is named in errors.

    $CREDENTIALS_DIRECTORY first (systemd sets it per unit, so a fixed /run/credentials/UNIT path would only work
    in one unit), then the readable fallback folder (MCNOTIFY_CREDENTIALS_DIR, default /etc/mcnotify/credentials)."""
    found: list[tuple[str, Path]] = []
    if unit_dir := environ.get("CREDENTIALS_DIRECTORY"):
        found.append((f"$CREDENTIALS_DIRECTORY ({unit_dir})", Path(unit_dir)))
    fallback = environ.get("MCNOTIFY_CREDENTIALS_DIR") or str(CREDENTIALS_FALLBACK)
    found.append((fallback, Path(fallback)))
    return found


def _credential_name(value: str) -> tuple[str, bool] | None:
    """(name, explicit) when `value` names a credential rather than a path; None for a path.

    Absolute paths and paths starting with `.` or `~` are paths. `explicit` is False for a bare relative name:
    such a value may be the secret itself, pasted into the *_file key by mistake, so it is never shown."""
    for prefix in CREDENTIAL_PREFIXES:
        if value.startswith(prefix):
            return value[len(prefix) :], True
    if value.startswith(("/", ".", "~")) or "/" in value:  # a folder in it: a (relative) path, not a name
        return None
    return value, False


def resolve_file(value: str, where: str, environ: Mapping[str, str]) -> str:
    """The path a `*_file` (or `[sftp] key_file`) value names: a path as written, a credential where it is found.

    A credential missing from every place is a configuration error naming the credential and each place."""
    named = _credential_name(value)
    if named is None:
        return str(Path(value).expanduser())
    name, explicit = named
    shown = f"credential {name!r}" if explicit else 'the credential (a bare name, not shown; write "credential:NAME")'
    if not name or "/" in name or name in (".", ".."):  # systemd credential names are plain file names
        raise ConfigError(f"{where}: {shown} is not a credential name (a file name such as mc_client_secret)")
    places = credential_dirs(environ)
    for _, folder in places:
        candidate = folder / name
        if os.path.lexists(candidate):
            return str(candidate)
    unset = "" if "CREDENTIALS_DIRECTORY" in environ else " ($CREDENTIALS_DIRECTORY is not set)"
    raise ConfigError(f"{where}: {shown} not found in {' nor '.join(label for label, _ in places)}{unset}")


def _read_secret_file(value: str, where: str, secret: bool, environ: Mapping[str, str]) -> str:
    path = resolve_file(value, where, environ)
    try:
        content = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        # A relative "path" may be the secret itself, put in the *_file key by mistake: do not echo it.
        shown = path if value.startswith(("/", ".", "~", *CREDENTIAL_PREFIXES)) else "the file it names (not shown)"
        hint = ""
        if value.startswith("/run/credentials/") and exc.errno == errno.ENOENT:
            # The old documented form: it only exists inside the one unit it names.
            hint = f' (write "credential:{Path(value).name}" to find it in every unit and from a shell)'
        raise ConfigError(f"{where}: cannot read {shown}: {exc.strerror}{hint}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: the file is not UTF-8 text") from None
    if secret:
        _warn_if_readable(path, where)
    return content


def _env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    # Longest section names first so MARKETING_CLOUD wins over a hypothetical MARKETING.
    sections = sorted(SCHEMA, key=len, reverse=True)
    for var, value in environ.items():
        if not var.startswith("MCNOTIFY_"):
            continue
        rest = var[len("MCNOTIFY_") :].lower()
        for sec in sections:
            if rest.startswith(sec + "_"):
                key = rest[len(sec) + 1 :]
                if key in SCHEMA[sec] or (key.endswith("_file") and key[: -len("_file")] in SCHEMA[sec]):
                    body = raw.setdefault(sec, {})
                    body[key] = value
                    # The environment wins over the file, whichever form each uses: MCNOTIFY_SOURCE_PASSWORD
                    # replaces a `password_file` of the config (and MCNOTIFY_SOURCE_PASSWORD_FILE a `password`).
                    other = key[: -len("_file")] if key.endswith("_file") else f"{key}_file"
                    if f"MCNOTIFY_{sec}_{other}".upper() not in environ:
                        body.pop(other, None)
                break


def _build_section(
    sec: str, schema: Mapping[str, Key], given: Mapping[str, Any], label: str, environ: Mapping[str, str]
) -> dict[str, Any]:
    if not isinstance(given, Mapping):
        raise ConfigError(f"{label} must be a table")
    out: dict[str, Any] = {}
    for key in given:
        base = key[: -len("_file")] if key.endswith("_file") and key not in schema else key
        if base not in schema:
            hint = difflib.get_close_matches(key, list(schema), n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(f"unknown key '{key}' in {label}{extra}")
    for key, spec in schema.items():
        where = f"{label} {key}"
        value = given.get(key)
        file_key = f"{key}_file"
        if file_key in given:
            file_path = _coerce(given[file_key], str, f"{label} {file_key}")
            value = _read_secret_file(file_path, f"{label} {file_key}", spec.secret, environ)
            if not value and spec.required:  # say which file, not only that the key is missing
                raise ConfigError(f"{label} {file_key}: the file it names is empty")
        if value is None or value == "":
            if spec.required:
                raise ConfigError(f"{where} is required")
            out[key] = spec.default
            continue
        value = _coerce(value, spec.type, where, spec.secret)
        if spec.parse:
            try:
                value = spec.parse(value)
            except ValueError as exc:
                raise ConfigError(f"{where} {exc}{_got(value, spec.secret)}") from None
        if spec.check and (problem := spec.check(value)):
            raise ConfigError(f"{where} {problem}{_got(value, spec.secret)}")
        out[key] = value
    return out


def _check_format(fmt: str, where: str) -> None:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"{where} is not a valid format string: {exc}") from None
    for name in names:
        if not name.isidentifier():
            raise ConfigError(f"{where} may only use {{column}} placeholders, got {{{name}}}")


_SECRET_NAMES = sorted({k for keys in SCHEMA.values() for k, spec in keys.items() if spec.secret})
_PLAIN_NAMES = {k for keys in (*SCHEMA.values(), TEMPLATE_SCHEMA) for k in keys} - set(_SECRET_NAMES)
_SECRET_WORDS = ("pass", "pwd", "secret", "token", "hook", "cred", "phrase", "private")


def _looks_secret(key: str) -> bool:
    """A secret key, or an unknown one that looks like a misspelling of one (`pasword`, `client_secrt`)."""
    key = key.lower().removesuffix("_file")
    if key in _PLAIN_NAMES:  # token_margin is not a secret
        return False
    return (
        key in _SECRET_NAMES
        or any(word in key for word in _SECRET_WORDS)
        or bool(difflib.get_close_matches(key, _SECRET_NAMES, n=1, cutoff=0.75))
    )


def _secretish_values(data: Mapping[str, Any]) -> list[str]:
    """Every value of the raw config that might be a secret: values of secret-looking keys, URL userinfo."""
    found: list[str] = []

    def walk(body: Mapping[str, Any]) -> None:
        for key, value in body.items():
            if isinstance(value, Mapping):
                walk(value)
            elif isinstance(value, str | int | float) and not isinstance(value, bool):
                text = str(value)
                # A *_file key holds a path, shown in errors; unless it does not look like one (the secret itself?)
                is_path = str(key).endswith("_file") and text.startswith(("/", ".", "~", *CREDENTIAL_PREFIXES))
                if _looks_secret(str(key)) and not is_path:
                    found.append(text)
                found.extend(url_secrets(text))

    walk(data)
    return sorted(set(found), key=len, reverse=True)


def parse(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None, path: Path | None = None) -> Settings:
    data: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    env = os.environ if environ is None else environ
    _env_overrides(data, env)
    try:
        return _parse(data, path, env)
    except ConfigError as exc:
        # Belt and braces: the messages above never format a secret, and this makes sure none slips through.
        raise ConfigError(scrub(str(exc), _secretish_values(data))) from None


def _parse(data: dict[str, Any], path: Path | None, environ: Mapping[str, str]) -> Settings:
    for sec in data:
        if sec not in SCHEMA and sec != "templates":
            hint = difflib.get_close_matches(sec, [*SCHEMA, "templates"], n=1)
            extra = f" (did you mean [{hint[0]}]?)" if hint else ""
            raise ConfigError(f"unknown section [{sec}]{extra}")
    values = {sec: _build_section(sec, keys, data.get(sec, {}), f"[{sec}]", environ) for sec, keys in SCHEMA.items()}

    templates: dict[str, Template] = {}
    raw_templates = data.get("templates", {})
    if not isinstance(raw_templates, Mapping) or not raw_templates:
        raise ConfigError("[templates] needs at least one [templates.NAME] table")
    for name, body in raw_templates.items():
        t = _build_section("templates", TEMPLATE_SCHEMA, body, f"[templates.{name}]", environ)
        if t["from_name"]:
            _check_format(t["from_name"], f"[templates.{name}] from_name")
        templates[name] = Template(name, t["channel"], t["definition_key"], t["from_name"])

    imp, sftp = values["import"], values["sftp"]
    if imp["mode"] == "import-definition" and not imp["definition_key"]:
        raise ConfigError("[import] definition_key is required when mode = 'import-definition'")
    if not sftp["password"] and not sftp["key_file"]:
        raise ConfigError("[sftp] needs key_file or password")
    smtp_host, security = values["alerts"]["smtp_host"], values["alerts"]["smtp_security"]
    if smtp_host and security == "none" and not is_loopback(smtp_host):
        raise ConfigError("[alerts] smtp_security = 'none' is only allowed for a loopback smtp_host")
    if any(c in sftp["file_name"] for c in '\\/:*<>|?"'):
        raise ConfigError('[sftp] file_name may not contain \\ / : * < > | ? " (MC SFTP rule)')
    if "%(after)s" not in values["source"]["query"] or "%(limit)s" not in values["source"]["query"]:
        raise ConfigError("[source] query must use both %(after)s and %(limit)s")

    if sftp["key_file"]:
        # The SFTP key lives with the other credentials: `credential:sftp_key` works in every unit and a shell.
        sftp["key_file"] = resolve_file(sftp["key_file"], "[sftp] key_file", environ)
        _warn_if_readable(sftp["key_file"], "[sftp] key_file")

    secrets = [v for sec, keys in SCHEMA.items() for k, spec in keys.items() if spec.secret and (v := values[sec][k])]
    secrets += url_secrets(values["source"]["url"])
    state = values["state"]
    if state["url"]:
        if state["path"]:
            raise ConfigError("[state] has both path and url: give one (path for SQLite, url for MariaDB/MySQL)")
        secrets += url_secrets(state["url"], bare_user_is_secret=False)
    else:
        state["path"] = state["path"] or DEFAULT_STATE_PATH
    if webhook := values["alerts"]["slack_webhook"]:
        # An HTTP error may quote only the path of the webhook, and the path is what makes it a secret.
        path_part = "/" + webhook.partition("://")[2].partition("/")[2]
        if len(path_part) >= 8:
            secrets.append(path_part)
    return Settings(
        values={sec: SECTIONS[sec](**body) for sec, body in values.items()},
        templates=templates,
        path=path,
        secrets=tuple(sorted(set(secrets), key=len, reverse=True)),
    )


def load(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (set --config or MCNOTIFY_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line} holds bytes that are not UTF-8 (TOML files are UTF-8)") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    settings = parse(raw, environ, path)
    _warn_if_exposed(path, raw)
    return settings


def load_alerts_only(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Only [alerts] (with its env overrides and `*_file` secrets), for `mcnotify alert` when the whole config
    does not load: a configuration mistake is still alerted. Other sections are absent."""
    environ = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        raw = {}
    raw = {"alerts": dict(raw.get("alerts") or {}) if isinstance(raw.get("alerts"), Mapping) else {}}
    _env_overrides(raw, environ)
    alerts = _build_section("alerts", SCHEMA["alerts"], raw.get("alerts", {}), "[alerts]", environ)
    secrets = [v for k, spec in SCHEMA["alerts"].items() if spec.secret and (v := alerts[k])]
    return Settings(values={"alerts": AlertsSettings(**alerts)}, templates={}, path=path, secrets=tuple(secrets))


def _warn_if_exposed(path: Path, raw: Mapping[str, Any]) -> None:
    """Secrets written into a file that others can read deserve a warning (use *_file keys or chmod 600)."""
    inline = [
        f"[{sec}] {key}"
        for sec, keys in SCHEMA.items()
        for key, spec in keys.items()
        if spec.secret and isinstance(raw.get(sec), Mapping) and raw[sec].get(key)
    ]
    for sec in ("source", "state"):
        url = raw.get(sec, {}).get("url", "") if isinstance(raw.get(sec), Mapping) else ""
        if isinstance(url, str) and url_secrets(url):
            inline.append(f"[{sec}] url (password)")
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if inline and mode & 0o077:
        logging.getLogger(__name__).warning(
            "config %s holds secrets (%s) and is readable by other users: chmod 600 it, or use *_file keys",
            path,
            ", ".join(inline),
        )
