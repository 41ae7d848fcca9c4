"""Log set-up: plain lines, journald lines with <N> priority prefixes, or JSON lines; contacts masked and
secrets scrubbed in every record. The CLI may add a prettier handler for terminals."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import IO

from mcnotify.redact import mask_email, mask_phone, scrub

EMAIL = re.compile(r"[^\s@<>\"',;:()\[\]]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
PHONE = re.compile(r"(?<![\w-])\+?\d[\d ()-]{6,}\d(?![\w-])")
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class RedactingFilter(logging.Filter):
    """Masks emails and phone numbers (unless told not to) and removes known secrets from each record."""

    def __init__(self, mask_contacts: bool = True) -> None:
        super().__init__()
        self.mask_contacts = mask_contacts
        self.secrets: tuple[str, ...] = ()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.mask_contacts:
            message = EMAIL.sub(lambda m: mask_email(m.group(0)), message)
            message = PHONE.sub(lambda m: mask_phone(re.sub(r"\D", "", m.group(0))), message)
        message = scrub(message, self.secrets)
        record.msg, record.args = message, None
        return True


class JournalFormatter(logging.Formatter):
    """systemd reads a leading <N> as the line's syslog priority."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{SYSLOG_PRIORITY.get(record.levelno, 6)}>{record.getMessage()}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            },
            ensure_ascii=False,
        )


def log_format(json_lines: bool, stream: IO[str]) -> str:
    if json_lines:
        return "json"
    if os.environ.get("JOURNAL_STREAM"):
        return "journal"
    return "terminal" if stream.isatty() else "plain"


def setup(
    level: int,
    json_lines: bool = False,
    mask_contacts: bool = True,
    terminal_handler: logging.Handler | None = None,
    stream: IO[str] | None = None,
) -> RedactingFilter:
    """Configure the root logger; returns the filter so the caller can hand it the secrets once known."""
    stream = stream or sys.stderr
    kind = log_format(json_lines, stream)
    if kind == "terminal" and terminal_handler is not None:
        handler = terminal_handler
    else:
        handler = logging.StreamHandler(stream)
        if kind == "json":
            handler.setFormatter(JsonFormatter())
        elif kind == "journal":
            handler.setFormatter(JournalFormatter())
        else:
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    redactor = RedactingFilter(mask_contacts)
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("paramiko", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return redactor


def set_secrets(redactor: RedactingFilter | None, secrets: Iterable[str]) -> None:
    if redactor is not None:
        redactor.secrets = tuple(secrets)
