"""Marketing Cloud's documented rules, written down independently of the client (see docs/marketing-cloud.md).

The sandbox judges what the client sends by these, never by what the client happens to do.
"""

from __future__ import annotations

# §7: import-time email syntax check.
MAX_EMAIL = 254
MAX_LOCAL = 100
MAX_SUBSCRIBER_KEY = 254
MAX_MESSAGE_KEY = 100
MAX_RECIPIENTS = 2000
MESSAGE_KEY_WINDOW = 72 * 3600  # §3.3: design for the longer, 72 h, window
BAD_FILENAME_CHARS = set('\\/:*<>|?"')


def import_email_problem(email: str) -> str | None:
    if not email:
        return "missing email address"
    if not email.isascii():
        return "multibyte characters"
    if any(c.isspace() for c in email):
        return "spaces"
    if email.count("@") == 0:
        return "no @"
    if email.count("@") >= 2:
        return "two or more @"
    local, domain = email.split("@")
    if not local or not domain:
        return "empty local part or domain"
    if "." not in domain or len(domain.rsplit(".", 1)[1]) < 2:
        return "missing or one-character top-level domain"
    if len(local) > MAX_LOCAL or len(email) > MAX_EMAIL:
        return "too long"
    return None


def sms_to_problem(to: str) -> str | None:
    if not to or not to.isdigit():
        return "phone must be digits with country code"
    if not 8 <= len(to) <= 15:
        return "phone has the wrong length"
    return None


# §3.4 response-level codes used by the sandbox.
ERR_RESPONSES_HAVE_ERRORS = 109001
ERR_TOO_MANY = 109101
ERR_NO_SUBSCRIBERS = 109102
ERR_MISSING_KEY_FIELD = 109105
ERR_MISSING_TO = 109106
ERR_MISSING_DEFINITION = 109107
ERR_BAD_MESSAGE_KEY = 109108
ERR_BAD_SUBSCRIBER_KEY = 109109
ERR_DUPLICATE_MESSAGE_KEY = 109110
ERR_BAD_DEFINITION = 109111
ERR_BAD_TO = 109121
