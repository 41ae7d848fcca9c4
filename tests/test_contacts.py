from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcnotify.contacts import normalise_phone, validate_email


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Bob@Example.COM", "Bob@example.com"),
        ("  luffy@example.com ", "luffy@example.com"),
        ("a+tag@sub.example.co.uk", "a+tag@sub.example.co.uk"),
    ],
)
def test_valid_emails_are_normalised(raw: str, expected: str) -> None:
    assert validate_email(raw) == (expected, None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("a@@b.com", "exactly one @"),
        ("a@b@c.com", "exactly one @"),
        ("a@example", "top-level domain"),
        ("a@example.c", "top-level domain"),
        ("a b@c.com", "spaces"),
        ("tab\t@c.com", "spaces"),
        ("測試@example.com", "multibyte"),
        ("a@bücher.de", "multibyte"),
        ("", "missing"),
        (None, "missing"),
        ("x" * 101 + "@a.com", "local part longer"),
        ("a@" + "b" * 250 + ".com", "longer than 254"),
        ("noat.example.com", "exactly one @"),
        ("a@b.com.", "top-level domain"),
        ("a.@b.com", "invalid"),
    ],
)
def test_emails_mc_would_reject_are_invalid(raw: str | None, reason: str) -> None:
    value, problem = validate_email(raw)
    assert value is None and problem is not None and reason in problem


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("0912-345-678", "TW", "886912345678"),
        ("+886 912 345 678", "TW", "886912345678"),
        ("(02) 2345-6789", "TW", "886223456789"),
        ("+1 (415) 555-2671", "TW", "14155552671"),
        ("415.555.2671", "US", "14155552671"),
        ("886912345678", "TW", "886912345678"),
    ],
)
def test_phones_become_digits_with_country_code(raw: str, region: str, expected: str) -> None:
    assert normalise_phone(raw, region) == (expected, None)


@pytest.mark.parametrize("raw", ["12345", "abc", "", None, "0912\x00345678", "+999 1234"])
def test_bad_phones_are_invalid(raw: str | None) -> None:
    value, problem = normalise_phone(raw, "TW")
    assert value is None and problem


@given(st.one_of(st.none(), st.text(), st.integers(), st.binary()))
def test_validation_never_raises(raw: object) -> None:
    validate_email(raw)
    normalise_phone(raw, "TW")
