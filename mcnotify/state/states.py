"""The states a batch, a notification and a step can be in: one spelling, shared by the code and the SQL."""

from __future__ import annotations

from enum import StrEnum


class BatchStatus(StrEnum):
    CLAIMING = "claiming"  # rows are being claimed into it
    CLAIMED = "claimed"  # conflicts resolved; its subscriber file is next
    UPLOADED = "uploaded"  # the subscriber file is on MC's SFTP
    IMPORTING = "importing"  # MC's import was started (or is awaited)
    IMPORTED = "imported"  # the import completed, was skipped or is assumed: emails may go
    DONE = "done"  # nothing left to send


# The batches whose subscriber file has not reached MC's contacts yet.
NOT_YET_IMPORTED = (BatchStatus.CLAIMING, BatchStatus.CLAIMED, BatchStatus.UPLOADED, BatchStatus.IMPORTING)


class Delivery(StrEnum):
    """A notification's status. 'sending' is written before a request whose outcome a crash could hide."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"  # MC refused it for good
    UNKNOWN = "unknown"  # a request whose answer was lost
    INVALID = "invalid"  # its contact cannot be sent to
    EXPIRED = "expired"  # older than source.max_age when claimed
    SKIPPED = "skipped"  # by an operator


# Still to send (a 'sending' row is re-checked before anything goes again).
OPEN = (Delivery.PENDING, Delivery.SENDING)
# Never sent to: their address is no contact MC needs.
UNSENDABLE = (Delivery.INVALID, Delivery.EXPIRED)


class StepStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"  # its process ended without saying how
    STOPPED = "stopped"  # a stop request ended it
    WAITING = "waiting"  # the run ended before it could finish (a claim waiting for the import); resumed next


def sql_list(values: tuple[StrEnum, ...]) -> str:
    """`('a', 'b')` for an SQL IN: the enums' own values, never outside input."""
    return "(" + ", ".join(f"'{v.value}'" for v in values) + ")"


FOLLOWER_META = "follower"  # meta key: who follows, since when, its last cycle, what it waits for (a state file)
