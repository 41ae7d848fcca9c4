"""Email and phone validation: email-validator and phonenumbers, plus Marketing Cloud's own import rules.

Each function returns (normalised value, None) or (None, reason) and never raises.
"""

from __future__ import annotations

import functools
import re

import email_validator
import phonenumbers

MAX_EMAIL = 254  # MC EmailAddress field
MAX_LOCAL = 100
_SPACE = re.compile(r"\s")


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
    if _SPACE.search(value):
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
        return library_verdict(value)
    except Exception as exc:  # never let a library surprise crash a batch
        return None, f"email invalid: {type(exc).__name__}"


def full_verdict(value: str) -> tuple[str | None, str | None]:
    """email-validator's own verdict, the reference for `library_verdict`."""
    try:
        result = email_validator.validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except email_validator.EmailNotValidError as exc:
        return None, f"email invalid: {exc}"
    return result.normalized, None


try:  # email-validator's building blocks, to check each distinct domain once (pinned version; see below)
    from email_validator import syntax as _syntax
    from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES as _CASELESS
    from email_validator.rfc_constants import EMAIL_MAX_LENGTH as _MAX_LENGTH
    from email_validator.types import ValidatedEmail as _ValidatedEmail
except ImportError:  # pragma: no cover - another email-validator release: use the plain call
    _syntax = None  # type: ignore[assignment]


@functools.lru_cache(maxsize=20_000)
def _domain_verdict(domain: str) -> tuple[str, str] | str:
    try:
        info = _syntax.validate_email_domain_name(domain, test_environment=False, globally_deliverable=True)
    except email_validator.EmailNotValidError as exc:
        return str(exc)
    return info["domain"], info["ascii_domain"]


def library_verdict(value: str) -> tuple[str | None, str | None]:
    """For `value` in ASCII with exactly one "@" (validate_email checks that first): the same verdict as
    `full_verdict`, with the domain's checks (70 % of the cost, IDNA rules applied character by character) done
    once per distinct domain. It follows email_validator.validate_email step by step; anything unusual (display
    name, quoted local part, domain literal) goes to the plain call, and a property test holds the two to the
    same answers."""
    if _syntax is None:
        return full_verdict(value)
    try:
        if '"' in value or "<" in value:  # display names and quoting need email-validator's parser
            display_name, original_local, local, quoted, domain = _syntax.split_email(value)
        else:  # ASCII with one "@" and neither: what split_email returns, without its per-character walk
            original_local, _, domain = value.partition("@")
            display_name, local, quoted = None, original_local, False
        if display_name is not None or quoted or not domain or domain.startswith("["):
            return full_verdict(value)
        info = _syntax.validate_email_local_part(
            local, allow_smtputf8=False, allow_empty_local=False, quoted_local_part=False, strict=False
        )
    except email_validator.EmailNotValidError as exc:
        return None, f"email invalid: {exc}"
    verdict = _domain_verdict(domain)
    if isinstance(verdict, str):
        return None, f"email invalid: {verdict}"
    ret = _ValidatedEmail()
    ret.original = original_local + "@" + domain
    ret.local_part, ret.ascii_local_part = info["local_part"], info["ascii_local_part"]
    if ret.ascii_local_part is not None and ret.ascii_local_part.lower() in _CASELESS and ret.local_part:
        ret.ascii_local_part, ret.local_part = ret.ascii_local_part.lower(), ret.local_part.lower()
    ret.domain, ret.ascii_domain = verdict
    ret.normalized = ret.local_part + "@" + ret.domain
    if len(value) > _MAX_LENGTH:  # ASCII: no form of the address is longer than the input, so only then
        try:
            _syntax.validate_email_length(ret)
        except email_validator.EmailNotValidError as exc:
            return None, f"email invalid: {exc}"
    return ret.normalized, None


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
