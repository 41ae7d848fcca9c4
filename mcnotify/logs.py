"""Log set-up: plain lines, journald lines with <N> priority prefixes, or JSON lines; contacts masked and
secrets scrubbed in every record. The CLI may add a prettier handler for terminals."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

from mcnotify.redact import mask_email, mask_phone, scrub

EMAIL = re.compile(r"[^\s@<>\"',;:()\[\]]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
PHONE = re.compile(r"(?<![\w-])\+?\d[\d ()-]{6,}\d(?![\w-])")
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
# Every line a step logs starts with the step's name (and the batch it is about): "send-email: batch 3: ...".
STEP_PREFIX = re.compile(
    r"(?P<step>sync|wait-import|send-email|send-sms|run-all|follow|retry|skip)(?: \(dry run\))?:"
    r"(?: batch (?P<batch>\d+)\b)?"
)
# What a LogRecord has of its own; anything else on a record came from `extra=` and goes into a JSON line.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_run: dict[str, str] = {}  # the command this process runs (one per process), for JSON lines


def set_command(command: str) -> None:
    """The run's command (e.g. run-all), added to every JSON line from here on."""
    _run["command"] = command


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
        for key, value in vars(record).items():  # `extra=` fields (an error's text) are scrubbed too
            if key not in _RECORD_FIELDS and isinstance(value, str):
                setattr(record, key, self._clean(value))
        if not hasattr(record, "step") and (m := STEP_PREFIX.match(message)):
            record.step = m["step"]
            if m["batch"] and not hasattr(record, "batch"):
                record.batch = int(m["batch"])
        return True

    def _clean(self, text: str) -> str:
        if self.mask_contacts:
            text = EMAIL.sub(lambda m: mask_email(m.group(0)), text)
            text = PHONE.sub(lambda m: mask_phone(re.sub(r"\D", "", m.group(0))), text)
        return scrub(text, self.secrets)


class JournalFormatter(logging.Formatter):
    """systemd reads a leading <N> as the line's syslog priority."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{SYSLOG_PRIORITY.get(record.levelno, 6)}>{record.getMessage()}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the run's command, and what the line is about
    where known (step, batch, counts, error, attempt, ...: a record's `extra=` fields)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}
        return json_line(record.levelname.lower(), record.getMessage(), record.name, record.created, **fields)


def json_line(level: str, message: str, logger: str = "mcnotify", created: float | None = None, **fields: Any) -> str:
    created = time.time() if created is None else created
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"
    line = {"time": stamp, "level": level, "logger": logger, "message": message, **_run, **fields}
    # ASCII: a line stays valid JSON whatever stderr's encoding (an ascii locale escapes what it cannot write).
    return json.dumps(line, default=str)


def retry_logger(logger: logging.Logger, what: str, attempts: int) -> Callable[[Any], None]:
    """A tenacity `before_sleep`: one INFO line a retry saying what failed, attempt n of m, and the wait."""

    def before_sleep(state: Any) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = float(state.next_action.sleep) if state.next_action else 0.0
        log_retry(logger, what, str(exc) if exc else "failed", state.attempt_number, attempts, wait)

    return before_sleep


def log_retry(logger: logging.Logger, what: str, error: str, attempt: int, attempts: int, wait: float) -> None:
    logger.info(
        "%s: %s; attempt %d of %d failed, retrying in %.1f s",
        what,
        error,
        attempt,
        attempts,
        wait,
        extra={"error": error, "attempt": attempt, "attempts": attempts, "wait": round(wait, 3)},
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
    _run.clear()
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
