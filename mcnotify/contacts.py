"""Email and phone validation: email-validator and phonenumbers, plus Marketing Cloud's own import rules.

Each function returns (normalised value, None) or (None, reason) and never raises.
"""

from __future__ import annotations

import functools

import email_validator
import phonenumbers

MAX_EMAIL = 254  # MC EmailAddress field
MAX_LOCAL = 100


# Members get many notifications, so the same address comes back again and again; validating it once per
# process turns the costliest step of a sync into a dictionary look-up. Bounded, so memory stays flat.
CACHE_SIZE = 100_000


def validate_email(raw: object) -> tuple[str | None, str | None]:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None, "email missing"
    return _validate_email(raw.strip() if isinstance(raw, str) else str(raw).strip())


@functools.lru_cache(maxsize=CACHE_SIZE)
def _validate_email(value: str) -> tuple[str | None, str | None]:
    # MC's import rules, checked first because their reasons are the ones MC would give.
    if any(ch.isspace() for ch in value):
        return None, "email contains spaces"
    if "\x00" in value:
        return None, "email contains a NUL byte"
    if not value.isascii():
        return None, "email contains multibyte characters"
    if value.count("@") != 1:
        return None, "email must contain exactly one @"
    local, domain = value.split("@")
    if len(value) > MAX_EMAIL:
        return None, f"email longer than {MAX_EMAIL} characters"
    if len(local) > MAX_LOCAL:
        return None, f"email local part longer than {MAX_LOCAL} characters"
    tld = domain.rsplit(".", 1)[-1] if "." in domain else ""
    if len(tld) < 2:
        return None, "email domain has no top-level domain of two or more letters"
    try:
        result = email_validator.validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except email_validator.EmailNotValidError as exc:
        return None, f"email invalid: {exc}"
    except Exception as exc:  # never let a library surprise crash a batch
        return None, f"email invalid: {type(exc).__name__}"
    return result.normalized, None


def normalise_phone(raw: object, default_region: str) -> tuple[str | None, str | None]:
    """Digits with country code, no '+', as MC's SMS APIs want: 0912-345-678 (TW) -> 886912345678."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None, "phone missing"
    return _normalise_phone(str(raw).strip(), default_region.upper())


@functools.lru_cache(maxsize=CACHE_SIZE)
def _normalise_phone(text: str, default_region: str) -> tuple[str | None, str | None]:
    if "\x00" in text:
        return None, "phone contains a NUL byte"
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        return None, f"phone invalid: {exc._msg}"
    except Exception as exc:
        return None, f"phone invalid: {type(exc).__name__}"
    if not phonenumbers.is_valid_number(number):
        return None, "phone is not a valid number"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).lstrip("+"), None
