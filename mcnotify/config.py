"""Settings: TOML file, then `MCNOTIFY_<SECTION>_<KEY>` environment overrides, then `<key>_file` secrets.

Every mistake is reported as one line naming the key; the result is a frozen, validated `Settings`.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import string
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mcnotify.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/mcnotify/config.toml")

Checker = Callable[[Any], str | None]  # returns an error text or None


@dataclass(frozen=True)
class Key:
    type: type
    default: Any = None
    required: bool = False
    secret: bool = False
    check: Checker | None = None


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


def check_https_url(value: str) -> str | None:
    """MC traffic must use HTTPS; plain HTTP only to a loopback sandbox."""
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return None
    return "must be an https:// URL (http:// only for a loopback sandbox)"


def _check_source_url(value: str) -> str | None:
    scheme = urlsplit(value).scheme
    if scheme in ("mysql", "mysql+pymysql", "sqlite"):
        return None
    return "must start with mysql:// or sqlite:///"


def _check_region(value: str) -> str | None:
    import phonenumbers

    return None if value.upper() in phonenumbers.SUPPORTED_REGIONS else "is not a known region code such as TW or US"


SCHEMA: dict[str, dict[str, Key]] = {
    "state": {"path": Key(str, "/var/lib/mcnotify/state.db")},
    "source": {
        "url": Key(str, required=True, check=_check_source_url),
        "query": Key(str, required=True),
        "batch_limit": Key(int, 50_000, check=_between(1, 10_000_000)),
        "cursor_column": Key(str, "notification_id"),
        "overlap": Key(int, 1000, check=_between(0, 10_000_000)),
        "password": Key(str, secret=True),
        "fetch_size": Key(int, 5000, check=_between(1, 1_000_000)),
        "parallel_after": Key(int, 20_000, check=_between(0, 100_000_000)),
        "connect_timeout": Key(float, 10.0, check=_between(0.1, 600)),
        # Hours: a row whose created_at is older is recorded `expired`, never sent (0: off).
        "max_age": Key(float, 48.0, check=_between(0, 100_000)),
    },
    "marketing_cloud": {
        "auth_url": Key(str, required=True, check=check_https_url),
        "client_id": Key(str, required=True),
        "client_secret": Key(str, required=True, secret=True),
        "account_id": Key(str),
        "scope": Key(str),
        "timeout": Key(float, 30.0, check=_between(0.1, 600)),
        "max_attempts": Key(int, 5, check=_between(1, 20)),
        "backoff_max": Key(float, 60.0, check=_between(0, 3600)),
        "idle_close": Key(float, 4.0, check=_between(0, 60)),
        "token_margin": Key(float, 120.0, check=_between(0, 3600)),
    },
    "sftp": {
        "host": Key(str, required=True),
        "port": Key(int, 22, check=_between(1, 65535)),
        "username": Key(str, required=True),
        "key_file": Key(str),
        "key_passphrase": Key(str, secret=True),
        "password": Key(str, secret=True),
        "known_hosts": Key(str, required=True),
        "remote_dir": Key(str, "/Import"),
        "file_name": Key(str, "mcnotify-subscribers.csv"),
        "timeout": Key(float, 30.0, check=_between(0.1, 600)),
    },
    "import": {
        "mode": Key(str, "import-definition", check=_one_of("import-definition", "fixed-delay")),
        "definition_key": Key(str),
        "poll_interval": Key(float, 15.0, check=_between(0.01, 3600)),
        "timeout": Key(float, 1800.0, check=_between(0.1, 86400)),
        "delay": Key(float, 120.0, check=_between(0, 86400)),
    },
    "email": {
        "api": Key(str, "transactional", check=_one_of("transactional", "triggered-send")),
        "batch_size": Key(int, 500, check=_between(1, 2000)),
        "concurrency": Key(int, 5, check=_between(1, 64)),
        "rate_limit": Key(float, 0.0, check=_between(0, 1_000_000)),
        "from_name_attribute": Key(str, "SenderDisplayName"),
        "from_address": Key(str),
        "message_key_prefix": Key(str, "mcn"),
    },
    "sms": {
        "api": Key(str, "transactional", check=_one_of("transactional")),
        "default_region": Key(str, "TW", check=_check_region),
        "batch_size": Key(int, 500, check=_between(1, 2000)),
        "concurrency": Key(int, 5, check=_between(1, 64)),
        "rate_limit": Key(float, 0.0, check=_between(0, 1_000_000)),
    },
}

SCHEMA["alerts"] = {
    "slack_webhook": Key(str, secret=True, check=check_https_url),
    "ping_url": Key(str, check=check_https_url),
    "smtp_host": Key(str),
    "smtp_port": Key(int, 587, check=_between(1, 65535)),
    "smtp_security": Key(str, "starttls", check=_one_of("starttls", "ssl", "none")),
    "smtp_username": Key(str),
    "smtp_password": Key(str, secret=True),
    "smtp_from": Key(str, "mcnotify@localhost"),
    "smtp_to": Key(str),
    "on_recovery": Key(bool, False),
    "timeout": Key(float, 10.0, check=_between(0.1, 300)),
}
SCHEMA["metrics"] = {"textfile": Key(str)}

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

    values: Mapping[str, Mapping[str, Any]]
    templates: Mapping[str, Template]
    path: Path | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def section(self, name: str) -> Mapping[str, Any]:
        return self.values[name]

    @property
    def state_path(self) -> Path:
        return Path(self.values["state"]["path"])

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data with every secret replaced, for `config check`."""
        out: dict[str, Any] = {}
        for sec, keys in self.values.items():
            out[sec] = {}
            for key, value in keys.items():
                secret = SCHEMA[sec][key].secret
                out[sec][key] = "***" if secret and value else value
        out["source"]["url"] = redact_url(out["source"]["url"])
        out["templates"] = {n: t.__dict__ for n, t in self.templates.items()}
        return out


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _coerce(raw: Any, want: type, where: str) -> Any:
    if want is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where} must be true or false, got {raw!r}")
    if want is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, want) and not (want is int and isinstance(raw, bool)):
        return raw
    if isinstance(raw, str):  # from the environment
        try:
            return want(raw)
        except ValueError:
            pass
    name = {str: "a string", int: "a whole number", float: "a number"}.get(want, want.__name__)
    raise ConfigError(f"{where} must be {name}, got {raw!r}")


def _read_secret_file(path: str, where: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None


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
                    raw.setdefault(sec, {})[key] = value
                break


def _build_section(sec: str, schema: Mapping[str, Key], given: Mapping[str, Any], label: str) -> dict[str, Any]:
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
            value = _read_secret_file(file_path, f"{label} {file_key}")
        if value is None or value == "":
            if spec.required:
                raise ConfigError(f"{where} is required")
            out[key] = spec.default
            continue
        value = _coerce(value, spec.type, where)
        if spec.check and (problem := spec.check(value)):
            raise ConfigError(f"{where} {problem}, got {value!r}")
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


def parse(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None, path: Path | None = None) -> Settings:
    data: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    _env_overrides(data, os.environ if environ is None else environ)
    for sec in data:
        if sec not in SCHEMA and sec != "templates":
            hint = difflib.get_close_matches(sec, [*SCHEMA, "templates"], n=1)
            extra = f" (did you mean [{hint[0]}]?)" if hint else ""
            raise ConfigError(f"unknown section [{sec}]{extra}")
    values = {sec: _build_section(sec, keys, data.get(sec, {}), f"[{sec}]") for sec, keys in SCHEMA.items()}

    templates: dict[str, Template] = {}
    raw_templates = data.get("templates", {})
    if not isinstance(raw_templates, Mapping) or not raw_templates:
        raise ConfigError("[templates] needs at least one [templates.NAME] table")
    for name, body in raw_templates.items():
        t = _build_section("templates", TEMPLATE_SCHEMA, body, f"[templates.{name}]")
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

    secrets = [v for sec, keys in SCHEMA.items() for k, spec in keys.items() if spec.secret and (v := values[sec][k])]
    url_password = urlsplit(values["source"]["url"]).password
    if url_password:
        secrets += [url_password, unquote(url_password)]
    return Settings(
        values=values,
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
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    settings = parse(raw, environ, path)
    _warn_if_exposed(path, raw)
    return settings


def _warn_if_exposed(path: Path, raw: Mapping[str, Any]) -> None:
    """Secrets written into a file that others can read deserve a warning (use *_file keys or chmod 600)."""
    inline = [
        f"[{sec}] {key}"
        for sec, keys in SCHEMA.items()
        for key, spec in keys.items()
        if spec.secret and isinstance(raw.get(sec), Mapping) and raw[sec].get(key)
    ]
    url = raw.get("source", {}).get("url", "") if isinstance(raw.get("source"), Mapping) else ""
    if isinstance(url, str) and urlsplit(url).password:
        inline.append("[source] url (password)")
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
