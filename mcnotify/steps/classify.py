"""Classify source rows: each row becomes a notification (pending, invalid with the reason, or expired) with
its messageKey fixed once; cursor values are checked as they are read, page by page. Used by sync and by its
reading process (sync_worker) alike."""

from __future__ import annotations

import datetime
import decimal
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from mcnotify.config import Settings
from mcnotify.errors import ConfigError
from mcnotify.message_keys import MAX_LENGTH as MAX_MESSAGE_KEY
from mcnotify.message_keys import check_prefix
from mcnotify.source import CREATED_AT, NOT_TEXT, REQUIRED_COLUMNS, Source
from mcnotify.state.store import INVALID, PENDING, NewNotification

# A row older than source.max_age: recorded with the reason, never uploaded or sent.
EXPIRED = "expired"
# Added by pages() to a row whose cursor cannot be ordered with the others (text among numbers, NULL).
CURSOR_PROBLEM = "\x00mcnotify:cursor"
MAX_SUBSCRIBER_KEY = 254
CHUNK = 2000
Chunk = tuple[list[NewNotification], Any, int]  # classified rows, highest cursor, rows read
_PLAIN_ID = re.compile(r"[0-9]{1,60}")  # fullmatch: `$` would also accept a trailing newline


def message_key(prefix: str, channel: str, notification_id: str) -> str:
    """Stable, unique per (prefix, channel, id), at most 100 characters: MC's idempotency key.

    Plain `{prefix}-{channel}-{id}` for a numeric id while that fits; otherwise the id's hash, which fits for
    every prefix config validation accepts (mcnotify.message_keys.MAX_PREFIX). 'h' keeps the two forms apart."""
    check_prefix(prefix)  # a key MC would refuse is never built, even if a caller skipped config validation
    if _PLAIN_ID.fullmatch(notification_id):
        key = f"{prefix}-{channel}-{notification_id}"
        if len(key) <= MAX_MESSAGE_KEY:
            return key
    digest = hashlib.sha256(notification_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return f"{prefix}-{channel}-h{digest}"


_SCALARS = frozenset((str, int, float, bool))
# One encoder for every row: json.dumps with a non-default option builds a new one per call (0.8 µs a row).
_attributes_json = json.JSONEncoder(ensure_ascii=False).encode


def _plain(value: Any) -> Any:
    """Source values as JSON-safe scalars, unchanged where they already are."""
    if value is None or type(value) in _SCALARS:
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def cursor_value(value: Any) -> Any:
    """The watermark as JSON keeps it, comparable with what an earlier run stored: numbers stay numbers
    (a DECIMAL id too), dates and times become ISO text, which sorts like the values."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return _plain(value)


def cursor_kind(value: Any) -> str | None:
    """Cursors of one kind can be ordered: numbers, or text (dates become ISO text)."""
    if value is None:
        return None
    return "number" if isinstance(value, int | float) else "text"


def is_higher(value: Any, than: Any) -> bool:
    try:
        return bool(value > than)
    except TypeError:  # another kind: never a step up
        return False


def shown_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class CursorOrder:
    """Checks the cursor of each row as it is read: one kind throughout (the watermark's, or the first row's),
    never going down within a page. A row of another kind is marked for quarantine (it cannot move the
    watermark, and rows before it are not held back); a cursor that goes down means the query's ORDER BY is
    wrong, and rows past a moved watermark would be lost: that stops the sync."""

    def __init__(self, column: str, kind: str | None) -> None:
        self.column = column
        self.kind = kind
        self.previous: Any = None  # the last orderable cursor of this page (as cursor_value gives it)
        self.previous_id: Any = None  # and its row's notification_id
        self.last: Any = None  # the same, as the source returned it: the next page continues from it

    def new_page(self) -> None:
        self.previous = self.previous_id = None

    def check(self, row: dict[str, Any]) -> None:
        raw = row[self.column]
        value = cursor_value(raw)
        kind = cursor_kind(value)
        if kind is None or (self.kind is not None and kind != self.kind):
            what = "is NULL" if kind is None else f"{shown_value(value)} is {kind} among {self.kind}s"
            row[CURSOR_PROBLEM] = f"cursor {self.column} {what}: it cannot be ordered with the others"
            return
        self.kind = kind
        previous, previous_id = self.previous, self.previous_id
        nid = row.get("notification_id")
        if previous is not None and value == previous and nid != previous_id:
            # Two rows share a cursor: `> after` skips the second when a page ends between them.
            raise ConfigError(
                f"[source] cursor_column {self.column} is not unique: {shown_value(value)} is the cursor of two rows;"
                " rows sharing a cursor across pages would be lost, so sync stopped and the watermark stays where"
                " it was (use a unique, increasing column such as the id)"
            )
        # Numbers and dates compare the same here as in the database. Plain text does not (a collation may put
        # 'é' before 'f', or '_' before 'a'), so for text the order is the database's word.
        orderable = kind == "number" or isinstance(raw, datetime.date | datetime.time)
        if previous is not None and orderable and value < previous:
            raise ConfigError(
                f"[source] query is not ordered by {self.column} ascending: it returned {shown_value(value)} after "
                f"{shown_value(previous)} (ORDER BY ... DESC?); rows would be lost, so sync stopped and the watermark"
                " stays where it was"
            )
        self.previous, self.previous_id, self.last = value, nid, raw


def event_time(value: Any) -> float | None:
    """The query's created_at as a Unix time: a datetime (naive ones in this host's time zone), a date, ISO
    text, or a number of seconds (milliseconds when it is too large for seconds). None if not a time."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, decimal.Decimal):
        value = float(value)
    if isinstance(value, int | float):
        return value / 1000 if value > 1e11 else float(value)
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        value = datetime.datetime.combine(value, datetime.time())
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text) / 1000 if float(text) > 1e11 else float(text)
        except ValueError:
            pass
        try:
            value = datetime.datetime.fromisoformat(text)
        except ValueError:
            return None
    if isinstance(value, datetime.datetime):
        return value.timestamp()  # naive: local time
    return None


class _NoneAsBlank:
    """A row's columns for str.format_map, NULL shown as nothing, without copying the row."""

    __slots__ = ("columns",)

    def __init__(self, columns: Mapping[str, Any]) -> None:
        self.columns = columns

    def __getitem__(self, key: str) -> Any:
        value = self.columns[key]
        return "" if value is None else value


def render_from_name(fmt: str | None, attributes: Mapping[str, Any], template: str) -> str | None:
    if not fmt:
        return None
    try:
        # The wrapper (NULL shown as nothing) costs a call per field: only rows with a NULL need it.
        return fmt.format_map(_NoneAsBlank(attributes) if None in attributes.values() else attributes)
    except KeyError as exc:
        raise ConfigError(
            f"[templates.{template}] from_name uses {{{exc.args[0]}}} but the source query returns no such column"
        ) from None


_REQUIRED = frozenset(REQUIRED_COLUMNS)
_NOT_ATTRIBUTES = _REQUIRED | {NOT_TEXT, CURSOR_PROBLEM}


class Classifier:
    """Source rows -> notifications, pending or invalid with the reason. Built once per sync, so each row
    pays only for its own checks (a large sync classifies a million rows)."""

    def __init__(self, settings: Settings) -> None:
        from mcnotify.contacts import normalise_phone, validate_email  # heavy; only needed when there are rows

        self._templates = dict(settings.templates)
        self._cursor_column = settings.source.cursor_column
        self._region = settings.sms.default_region
        self._key_prefix = settings.email.message_key_prefix
        self._validate_email = validate_email
        self._normalise_phone = normalise_phone
        max_age = settings.source.max_age
        self._max_age = max_age
        # One clock for the whole run: a row's fate does not depend on how far the read has got.
        self._oldest = time.time() - max_age * 3600 if max_age > 0 else None

    def __call__(self, row: Mapping[str, Any]) -> NewNotification:
        nid = str(_plain(row["notification_id"]))
        template_name = str(_plain(row["template"]) or "")
        columns = {
            k: v if v is None or type(v) in _SCALARS else _plain(v) for k, v in row.items() if k not in _NOT_ATTRIBUTES
        }
        attributes = _attributes_json(columns)
        template = self._templates.get(template_name)
        raw_key = row["subscriber_key"]
        key = None if raw_key is None else str(_plain(raw_key)).strip()
        channel = template.channel if template else None
        raw_contact = row["phone"] if channel == "sms" else row["email"]
        raw_text = None if raw_contact is None else str(_plain(raw_contact))
        cursor_problem = row.get(CURSOR_PROBLEM)
        cursor = None if cursor_problem else row.get(self._cursor_column)
        not_text = row.get(NOT_TEXT) or ()

        address: str | None = None
        reason: str | None = None
        if cursor_problem:
            reason = cursor_problem
        elif not_text and (bad := self._bad_text(not_text, channel)):
            reason = f"{bad} is not valid UTF-8"
        elif template is None:
            reason = f"unknown template {template_name!r}"
        elif not key:
            reason = "subscriber key missing"
        elif len(key) > MAX_SUBSCRIBER_KEY:
            reason = f"subscriber key longer than {MAX_SUBSCRIBER_KEY} characters"
        elif "\x00" in key:
            reason = "subscriber key contains a NUL byte"
        elif template.channel == "email":
            # The decoded text, never the raw value: bytes would be validated as "b'...'".
            address, reason = self._validate_email(raw_text)
        else:
            address, reason = self._normalise_phone(raw_text, self._region)
        if reason or template is None:  # (a missing template always has a reason)
            return NewNotification(
                nid, template_name, channel, key, None, raw_text, attributes, None, INVALID, reason, None, cursor
            )
        if self._oldest is not None and (expired := self._expired(row)):
            return NewNotification(
                nid, template_name, channel, key, address, raw_text, attributes, None, EXPIRED, expired, None, cursor
            )
        return NewNotification(
            nid,
            template_name,
            template.channel,
            key,
            address,
            raw_text,
            attributes,
            render_from_name(template.from_name, columns, template_name),
            PENDING,
            None,
            message_key(self._key_prefix, template.channel, nid),
            cursor,
            event_time(row[CREATED_AT]) if CREATED_AT in row else None,
        )

    @staticmethod
    def _bad_text(columns: tuple[str, ...], channel: str | None) -> str | None:
        """The first column the notification depends on whose bytes were not valid text. Other columns keep
        their text with the bad bytes replaced."""
        contact = "phone" if channel == "sms" else "email"
        for name in ("notification_id", "template", "subscriber_key", contact):
            if name in columns:
                return name
        return None

    def _expired(self, row: Mapping[str, Any]) -> str | None:
        assert self._oldest is not None
        at = event_time(row.get(CREATED_AT))
        if at is None or at >= self._oldest:
            return None
        created = datetime.datetime.fromtimestamp(at).isoformat(sep=" ", timespec="seconds")
        return f"older than source.max_age ({self._max_age:g} h): {CREATED_AT} {created}"


def pages(source: Source, after: Any, limit: int, order: CursorOrder) -> Iterator[dict[str, Any] | None]:
    """Every row after `after`, fetched in pages of `limit`, each page continuing from the last cursor; None
    after each page, once all of it is known to be in order (only then may the watermark move past it)."""
    while True:
        count, start = 0, after
        order.new_page()
        for row in source.rows(after, limit):
            count += 1
            if order.column not in row:
                raise ConfigError(f"[source] cursor_column {order.column!r} is not a column of the query")
            order.check(row)
            yield row
        if order.last is not None:
            after = order.last
        yield None
        if count < limit or after == start:
            return


def classified_chunks(
    settings: Settings,
    rows: Iterable[dict[str, Any] | None],
    known: Callable[[list[str]], set[str]] | None = None,
) -> Iterator[Chunk]:
    """Source rows, classified, in chunks; each with the highest cursor the watermark may now cover (None
    until a whole page is read) and the number of rows it read. `known(ids)`: the ids already claimed, which
    are not classified again (each sync re-reads `overlap` rows below the watermark)."""
    cursor_column = settings.source.cursor_column
    classify: Classifier | None = None  # built at the first row: nothing new, nothing heavy imported
    buffer: list[dict[str, Any]] = []
    top, count, good = None, 0, None

    def classified() -> list[NewNotification]:
        nonlocal classify
        skip = known([str(_plain(r["notification_id"])) for r in buffer]) if known and buffer else set()
        out = []
        for r in buffer:
            if skip and str(_plain(r["notification_id"])) in skip:
                continue
            classify = classify or Classifier(settings)
            out.append(classify(r))
        return out

    for row in rows:
        if row is None:  # a page ended: everything in it is in order
            top = good if good is not None else top
            continue
        count += 1
        if CURSOR_PROBLEM not in row:
            good = row[cursor_column]
        if row["notification_id"] is not None:
            buffer.append(row)
        else:  # nothing to record it under: say so rather than drop it silently
            logging.getLogger("mcnotify").warning(
                "sync: a source row with %s %s has no notification_id; it cannot be recorded and is skipped",
                cursor_column,
                shown_value(row.get(cursor_column)),
            )
        if count >= CHUNK:
            yield classified(), top, count
            buffer, top, count = [], None, 0
    if count or top is not None:
        yield classified(), top, count
