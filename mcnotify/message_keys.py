"""What makes a messageKey acceptable to MC: at most 100 characters, none of them restricted.

A key is fixed when its notification is claimed, so a bad one would fail every send for good. The prefix is
bounded so that even the longest key mcnotify builds (`{prefix}-email-h{40 hex}`) fits.
"""

from __future__ import annotations

import functools
import re

from mcnotify.errors import ConfigError

MAX_LENGTH = 100  # MC's limit on messageKey
HASH_CHARS = 40  # hex digits of the id's sha256 in a hashed key
CHANNELS = ("email", "sms")
# The hashed form is the longest a valid prefix can produce: `-{channel}-h{hash}`.
MAX_PREFIX = MAX_LENGTH - max(len(f"-{c}-h") for c in CHANNELS) - HASH_CHARS
SAFE_CHARS = "A-Za-z0-9_.-"  # letters, digits and _ . - only: nothing MC could restrict or a URL could mangle
_SAFE = re.compile(rf"[{SAFE_CHARS}]+")  # the state applies the same rule to stored keys (bad_message_keys)


def prefix_problem(prefix: str) -> str | None:
    """Why `email.message_key_prefix` cannot be used, or None."""
    if len(prefix) > MAX_PREFIX or not _SAFE.fullmatch(prefix):
        return (
            f"must be 1 to {MAX_PREFIX} characters of A-Z a-z 0-9 _ . - "
            f"(messageKeys built from it must fit MC's {MAX_LENGTH} characters)"
        )
    return None


@functools.lru_cache(maxsize=16)
def check_prefix(prefix: str) -> None:
    """ConfigError for a prefix config validation would refuse: a key built from it is never stored. Cached,
    since it runs for every claimed row."""
    if problem := prefix_problem(prefix):
        raise ConfigError(f"[email] message_key_prefix {problem}")


def key_problem(key: str) -> str | None:
    """Why MC would refuse `key` as a messageKey, or None."""
    if len(key) > MAX_LENGTH:
        return f"messageKey is {len(key)} characters, over MC's {MAX_LENGTH}"
    if not _SAFE.fullmatch(key):
        return "messageKey has characters other than A-Z a-z 0-9 _ . -"
    return None
