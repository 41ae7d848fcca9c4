from __future__ import annotations

import pytest
from hypothesis import given, settings
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


ascii_part = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="@"), max_size=70)
domains = st.one_of(
    ascii_part,
    st.sampled_from(
        [
            "example.com",
            "Example.COM",
            "x.co",
            "a-b.tw",
            "gmail.com.",
            "-bad.com",
            "b_c.org",
            "[1.2.3.4]",
            "localhost",
            "x.123",
        ]
    ),
)


@settings(max_examples=1000)
@given(ascii_part, domains)
def test_fast_path_gives_email_validators_own_verdict(local: str, domain: str) -> None:
    from mcnotify.contacts import full_verdict, library_verdict

    address = f"{local}@{domain}"
    assert library_verdict(address) == full_verdict(address)


@pytest.mark.parametrize(
    "address",
    [
        "Postmaster@Example.com",
        "a.@x.com",
        "a..b@x.com",
        '"q"@x.com',
        "Name <a@b.com>",
        "a@" + "b" * 64 + ".com",
        "x" * 64 + "@" + "y" * 63 + ".com",
        "ABUSE@example.org",
        "user+tag@sub.example.co.uk",
    ],
)
def test_fast_path_agrees_on_known_cases(address: str) -> None:
    from mcnotify.contacts import full_verdict, library_verdict

    assert library_verdict(address) == full_verdict(address)
