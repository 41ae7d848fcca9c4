"""Errors that carry the process exit code the CLI should end with (sysexits-style)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # a required service stayed unreachable after retries
EXIT_REFUSED = 65  # MC refused notifications for good (everything else in the run finished)
EXIT_TEMPORARY = 75  # try again later: lock held, import still pending
EXIT_CONFIG = 78


class McnotifyError(Exception):
    """A failure with a one-line, user-facing message."""

    exit_code = EXIT_FAILURE


class ConfigError(McnotifyError):
    exit_code = EXIT_CONFIG


class TemporaryError(McnotifyError):
    exit_code = EXIT_TEMPORARY


class LockHeld(TemporaryError):
    pass


class LeaseHeld(LockHeld):
    """The state database's run lease is held by a live process; the message names it."""


class PipelineLost(TemporaryError):
    """Another process took the import pipeline over (this one froze or lost the database past the lease): the
    cycle stops before writing or uploading anything more; the follower carries on sending."""


class StateDatabaseError(McnotifyError):
    """A statement against the state database (MariaDB/MySQL) failed; the transaction it was in was rolled back.
    `code`: the server's error number, when it gave one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ImportPending(TemporaryError):
    pass


class NotificationsRefused(McnotifyError):
    """MC refused some notifications for good (no such definition, a bad address MC will not take): the run
    finished everything else, then ends with this so that OnFailure= and the alert hooks fire."""

    exit_code = EXIT_REFUSED


class DryRunRefused(McnotifyError):
    """A dry run tried to act (send, upload, write the state): a bug, refused where the side effect happens."""


class Stopped(McnotifyError):
    """SIGTERM (systemd stop): in-flight work was finished and recorded; the next run resumes."""

    exit_code = 143


class ServiceUnavailable(McnotifyError):
    """Connection-level failure to MySQL, SFTP or MC that retries did not cure."""

    exit_code = EXIT_UNAVAILABLE


class McApiError(McnotifyError):
    """Marketing Cloud answered, but with an error we cannot retry away."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TransientMcError(McApiError):
    """Worth retrying: 5xx, 429, throttling faults. `retry_after` is MC's hint in seconds."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status, code)
        self.retry_after = retry_after


class AuthExpired(McApiError):
    """401 from MC: the token is no longer accepted."""
