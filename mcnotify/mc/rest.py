"""MC REST messaging: transactional email/SMS batches and triggered sends, with per-recipient verdicts.

A 202 is not success: MC reports per-recipient errors inside it, so every verdict is read from the body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from mcnotify.errors import McApiError
from mcnotify.mc import DUPLICATE_MESSAGE_KEY
from mcnotify.mc.client import McClient, Reply
from mcnotify.message_keys import key_problem

KEY_REFUSED = "mcnotify-message-key"  # error code recorded for a messageKey MC would refuse
PATHS = {"email": "messaging/v1/email/messages/", "sms": "messaging/v1/sms/messages/"}


@dataclass(frozen=True)
class Recipient:
    message_key: str
    contact_key: str
    to: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    code: str | None = None
    message: str | None = None
    duplicate: bool = False


def transactional_body(definition_key: str, recipients: list[Recipient]) -> dict[str, Any]:
    return {
        "definitionKey": definition_key,
        "recipients": [
            {"contactKey": r.contact_key, "to": r.to, "messageKey": r.message_key, "attributes": r.attributes}
            for r in recipients
        ],
    }


def _code(value: Any) -> str | None:
    return None if value in (None, 0, "0", "") else str(value)


def send_transactional(
    client: McClient, channel: str, definition_key: str, recipients: list[Recipient]
) -> dict[str, Verdict]:
    """One batch call; returns a verdict per messageKey. Safe to repeat: keys make it idempotent."""
    # Keys are fixed at claim time; one MC would refuse (claimed under an over-long prefix by an older mcnotify)
    # is never sent but recorded failed with the reason, so it cannot fail the batch's other recipients.
    refused: dict[str, Verdict] = {}
    for r in recipients:
        if problem := key_problem(r.message_key):
            refused[r.message_key] = Verdict(False, KEY_REFUSED, f"{problem}: not sent")
    if refused:
        recipients = [r for r in recipients if r.message_key not in refused]
        if not recipients:
            return refused
        return {**refused, **send_transactional(client, channel, definition_key, recipients)}
    reply = client.call("POST", PATHS[channel], json=transactional_body(definition_key, recipients))
    body = reply.body
    if not isinstance(body, dict):
        raise McApiError(f"MC answered HTTP {reply.status} with no JSON body to the {channel} send", reply.status)
    top_code = _code(body.get("errorcode"))
    top_message = body.get("message")
    if reply.status == 400 or reply.status == 403 or reply.status >= 300:
        if top_code == DUPLICATE_MESSAGE_KEY and len(recipients) == 1:
            return {recipients[0].message_key: Verdict(True, top_code, top_message, duplicate=True)}
        if reply.status == 403:
            raise McApiError(f"MC refused the {channel} send (HTTP 403): {top_message or 'forbidden'}", 403, top_code)
        # The whole request was refused: every recipient carries the request's error.
        return {r.message_key: Verdict(False, top_code or str(reply.status), top_message) for r in recipients}
    by_key = {str(item.get("messageKey")): item for item in body.get("responses") or [] if isinstance(item, dict)}
    verdicts: dict[str, Verdict] = {}
    for r in recipients:
        item = by_key.get(r.message_key)
        if item is None:
            if top_code is None:
                verdicts[r.message_key] = Verdict(True)
            else:
                verdicts[r.message_key] = Verdict(False, top_code, top_message or "no response for this recipient")
            continue
        code = _code(item.get("errorcode"))
        if code is None:
            verdicts[r.message_key] = Verdict(True)
        elif code == DUPLICATE_MESSAGE_KEY:
            verdicts[r.message_key] = Verdict(True, code, item.get("message"), duplicate=True)
        else:
            verdicts[r.message_key] = Verdict(False, code, item.get("message"))
    return verdicts


def triggered_send_body(recipient: Recipient, from_name: str | None, from_address: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "To": {
            "Address": recipient.to,
            "SubscriberKey": recipient.contact_key,
            "ContactAttributes": {"SubscriberAttributes": recipient.attributes},
        },
        "Options": {"RequestType": "SYNC"},
    }
    sender = {k: v for k, v in (("Name", from_name), ("Address", from_address)) if v}
    if sender:
        body["From"] = sender
    return body


def post_triggered(
    client: McClient,
    definition_key: str,
    recipient: Recipient,
    from_name: str | None,
    from_address: str | None,
) -> Reply:
    """One recipient per call. Not idempotent: the client never repeats it once it may have reached MC. Any
    McnotifyError from here means MC did not act on it; OutcomeUnknown means it may have."""
    path = f"messaging/v1/messageDefinitionSends/key:{quote(definition_key, safe='')}/send"
    return client.call("POST", path, json=triggered_send_body(recipient, from_name, from_address), idempotent=False)


def triggered_verdict(reply: Reply) -> Verdict:
    """MC's answer to one triggered send: a 202 is not success, `hasErrors` decides."""
    body = reply.body
    if not isinstance(body, dict):
        raise McApiError(f"MC answered HTTP {reply.status} with no JSON body to the triggered send", reply.status)
    if reply.status >= 300:
        code = _code(body.get("errorcode")) or str(reply.status)
        return Verdict(False, code, body.get("message") or "refused")
    responses = body.get("responses") or [body]
    item = responses[0] if responses and isinstance(responses[0], dict) else body
    if not item.get("hasErrors"):
        return Verdict(True)
    errors = item.get("messageErrors") or []
    if errors and isinstance(errors[0], dict):
        return Verdict(False, _code(errors[0].get("messageErrorCode")), errors[0].get("messageErrorStatus"))
    messages = item.get("messages") or ["hasErrors"]
    return Verdict(False, None, "; ".join(str(m) for m in messages))


def send_triggered(
    client: McClient,
    definition_key: str,
    recipient: Recipient,
    from_name: str | None,
    from_address: str | None,
) -> Verdict:
    """post_triggered, then its verdict."""
    return triggered_verdict(post_triggered(client, definition_key, recipient, from_name, from_address))
