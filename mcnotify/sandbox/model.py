"""The sandbox's Marketing Cloud account: tokens, subscribers, import definitions and tasks, accepted messages,
and scripted faults. Thread-safe; the HTTP and SFTP fronts only translate to and from it."""

from __future__ import annotations

import csv
import io
import json
import random
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mcnotify.sandbox import rules


@dataclass
class ImportTask:
    id: str
    definition_key: str
    started_at: float
    ready_at: float
    status: str = "New"
    total: int = 0
    ok: int = 0
    errors: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    started_wall: float = field(default_factory=time.time)  # Unix time of the start, MC's StartDate


@dataclass
class Fault:
    kind: str  # 429, 500, 503, reset, slow, accepted-then-500, expire-token, html
    path_prefix: str = "/"
    remaining: int = 1


@dataclass
class SandboxSettings:
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    token_lifetime: float = 1200.0  # real lifetime; MC reports 120 s less in expires_in
    import_lag: float = 1.0
    require_subscribers: bool = True
    latency: float = 0.0
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = ("429", "500", "503", "reset", "accepted-then-500")
    slow_seconds: float = 3.0
    email_definitions: tuple[str, ...] = ("red-envelope-received", "red-envelope-sent")
    sms_definitions: tuple[str, ...] = ("red-envelope-sms",)
    triggered_definitions: tuple[str, ...] = ("red-envelope-received", "red-envelope-sent")
    import_definitions: dict[str, str] = field(
        default_factory=lambda: {"mcnotify-subscribers": "mcnotify-subscribers.csv"}
    )
    seed: int | None = None
    # A scheduled automation that imports each definition's file when it has changed (what fixed-delay mode
    # relies on in a real account); None: imports only start through SOAP Perform.
    scheduled_import_every: float | None = None


class Account:
    def __init__(self, settings: SandboxSettings, import_root: Path) -> None:
        self.settings = settings
        self.import_root = import_root  # the SFTP root: holds Import/, Export/, Reports/
        for folder in ("Import", "Export", "Reports"):
            (import_root / folder).mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self.token_requests = 0
        self.subscribers: dict[str, str] = {}
        self.tasks: dict[str, ImportTask] = {}
        self.accepted: list[dict[str, Any]] = []
        self.used_keys: dict[str, float] = {}
        self.requests: deque[tuple[str, str, int]] = deque(maxlen=10_000)  # (method, path, status)
        self.faults: list[Fault] = []
        self.random = random.Random(settings.seed)
        self.record_path: Path | None = None  # when set, every accepted message is appended as a JSON line
        self._record_file: TextIO | None = None  # (opened once: not once a message; flushed once a request)
        self._stop = threading.Event()
        if settings.scheduled_import_every:
            threading.Thread(target=self._schedule, name="sandbox-automation", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        with self.lock:
            if self._record_file is not None:
                self._record_file.close()
                self._record_file = None

    def _schedule(self) -> None:
        seen: dict[str, float] = {}
        interval = float(self.settings.scheduled_import_every or 1)
        while not self._stop.wait(interval):
            for key, name in self.settings.import_definitions.items():
                try:
                    mtime = (self.import_root / "Import" / name).stat().st_mtime
                except OSError:
                    continue
                if seen.get(key) != mtime:
                    seen[key] = mtime
                    now = time.monotonic()
                    task = ImportTask(str(uuid.uuid4()), key, now, now)
                    with self.lock:
                        self.tasks[task.id] = task
                    self._run_import(task)

    # -- tokens --------------------------------------------------------------------------------------------
    def issue_token(self) -> tuple[str, float]:
        with self.lock:
            self.token_requests += 1
            token = secrets.token_urlsafe(48)
            self.tokens[token] = time.monotonic() + self.settings.token_lifetime
            lifetime = self.settings.token_lifetime
            reported = lifetime - 120 if lifetime > 240 else lifetime * 0.9
            return token, reported

    def token_valid(self, token: str | None) -> bool:
        with self.lock:
            expiry = self.tokens.get(token or "")
            return expiry is not None and time.monotonic() < expiry

    def expire_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    # -- faults --------------------------------------------------------------------------------------------
    def inject(self, kind: str, times: int = 1, path_prefix: str = "/") -> None:
        with self.lock:
            self.faults.append(Fault(kind, path_prefix, times))

    def take_fault(self, path: str) -> str | None:
        with self.lock:
            for fault in self.faults:
                if path.startswith(fault.path_prefix) and fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self.faults.remove(fault)
                    return fault.kind
            if self.settings.fault_rate and self.random.random() < self.settings.fault_rate:
                return self.random.choice(self.settings.fault_kinds)
        return None

    # -- imports -------------------------------------------------------------------------------------------
    def start_import(self, definition_key: str) -> ImportTask | None:
        with self.lock:
            if definition_key not in self.settings.import_definitions:
                return None
            now = time.monotonic()
            task = ImportTask(str(uuid.uuid4()), definition_key, now, now + self.settings.import_lag)
            self.tasks[task.id] = task
        timer = threading.Timer(self.settings.import_lag, self._run_import, args=(task,))
        timer.daemon = True
        timer.start()
        return task

    def _run_import(self, task: ImportTask) -> None:
        path = self.import_root / "Import" / self.settings.import_definitions[task.definition_key]
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            with self.lock:
                task.status = "Error"
            return
        reader = csv.reader(io.StringIO(text, newline=""))
        header = [h.strip().lower() for h in next(reader, [])]
        if "subscriberkey" not in header or "emailaddress" not in header:
            with self.lock:
                task.status = "Error"
            return
        key_col, email_col = header.index("subscriberkey"), header.index("emailaddress")
        seen: set[str] = set()
        updates: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            task.total += 1
            if len(row) != len(header):
                task.errors += 1
                task.rejected.append((line, "wrong number of fields"))
                continue
            key, email = row[key_col], row[email_col]
            problem = rules.import_email_problem(email)
            if not key or len(key) > rules.MAX_SUBSCRIBER_KEY:
                problem = "bad subscriber key"
            if problem:
                task.errors += 1
                task.rejected.append((line, problem))
                continue
            if key in seen:
                task.duplicates += 1
            seen.add(key)
            updates[key] = email
            task.ok += 1
        with self.lock:
            self.subscribers.update(updates)
            task.status = "Completed"

    def task_view(self, task_id: str) -> ImportTask | None:
        """None while MC has no summary row yet (the first part of the lag), as the docs warn."""
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return None
            now = time.monotonic()
            if task.status == "New" and now < task.started_at + self.settings.import_lag * 0.3:
                return None
            if task.status == "New":
                task.status = "Processing"
            return task

    def runs_of(self, definition_key: str) -> list[ImportTask]:
        """An import definition's runs that have a summary row yet, oldest first (what a Retrieve filtered
        by ImportDefinitionCustomerKey lists)."""
        with self.lock:
            ids = [t.id for t in self.tasks.values() if t.definition_key == definition_key]
        return [task for task_id in ids if (task := self.task_view(task_id)) is not None]

    # -- messages ------------------------------------------------------------------------------------------
    def key_used(self, key: str) -> bool:
        with self.lock:
            at = self.used_keys.get(key)
            return at is not None and time.time() - at < rules.MESSAGE_KEY_WINDOW

    def accept(self, record: dict[str, Any]) -> None:
        with self.lock:
            key = record.get("messageKey")
            if key:
                self.used_keys[key] = time.time()
            record["acceptedAt"] = time.time()
            self.accepted.append(record)
            if self.record_path is not None:
                if self._record_file is None:
                    self._record_file = self.record_path.open("a", encoding="utf-8")
                self._record_file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def flush_record(self) -> None:
        """The accepted messages of a request, on disk before its reply goes out."""
        with self.lock:
            if self._record_file is not None:
                self._record_file.flush()

    def subscriber_problem(self, contact_key: str, email: str) -> tuple[int, str] | None:
        if not self.settings.require_subscribers:
            return None
        with self.lock:
            known = self.subscribers.get(contact_key)
        if known is None:
            return 13, "SubscriberKeyMismatch: no subscriber with this key"
        if known.lower() != email.lower():
            return 14, "EmailAddressMismatch: the subscriber has another email address"
        return None

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "accepted": list(self.accepted),
                "subscribers": dict(self.subscribers),
                "token_requests": self.token_requests,
                "imports": [t.__dict__ for t in self.tasks.values()],
                "requests": len(self.requests),
            }
