"""Masking for contacts and scrubbing of secrets from any text we print or store."""

from __future__ import annotations

from collections.abc import Iterable


def mask_email(value: str | None) -> str:
    if not value or "@" not in value:
        return "***" if value else ""
    local, _, domain = value.rpartition("@")
    return f"{local[:1]}***@{domain}"


def mask_phone(value: str | None) -> str:
    if not value:
        return ""
    return "*" * max(0, len(value) - 3) + value[-3:]


def mask_contact(channel: str | None, value: str | None) -> str:
    return mask_phone(value) if channel == "sms" else mask_email(value)


def scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text
