"""Upload one file to MC's Enhanced SFTP: host key verified against known_hosts, temp name then rename.

paramiko blocks (connect, banner, auth, put) for up to `timeout` per step, so the work runs in a helper thread
(mcnotify.stop.run): a stop request gives an upload under way the stop grace to finish, then closes the
connection and raises Stopped. Uploading again later is harmless (temp name, then rename).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import posixpath
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

from mcnotify import retrying, stop
from mcnotify.config import SftpSettings
from mcnotify.errors import ConfigError, McnotifyError, ServiceUnavailable

log = logging.getLogger(__name__)
CONNECT_ATTEMPTS = 3

# paramiko's transport thread logs a traceback for every connection that fails or that a stop request cuts
# short; each of those reaches the operator as one line from here instead ("never a traceback").
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _stoppable(section: SftpSettings, what: str, work: Callable[[list[paramiko.SSHClient]], str]) -> str:
    clients: list[paramiko.SSHClient] = []  # closed from the waiting thread if a stop abandons the work

    def abandon() -> None:
        for client in clients:
            client.close()

    return stop.run(lambda: work(clients), what=f"{what} {section.host}", abandon=abandon)


def load_key(section: SftpSettings) -> paramiko.PKey | None:
    """The login key from [sftp] key_file, or None without one. A key that is missing, unreadable, not a key or
    locked by a wrong passphrase is a configuration error naming the file: retrying cannot cure it."""
    if not section.key_file:
        return None
    path = Path(section.key_file).expanduser()
    try:
        return paramiko.PKey.from_path(path, password=section.key_passphrase or None)
    except FileNotFoundError:
        raise ConfigError(f"[sftp] key_file {path}: no such file") from None
    except PermissionError:
        raise ConfigError(f"[sftp] key_file {path}: permission denied (mcnotify's user must read it)") from None
    except IsADirectoryError:
        raise ConfigError(f"[sftp] key_file {path}: is a directory, not a private key") from None
    except paramiko.PasswordRequiredException:
        raise ConfigError(f"[sftp] key_file {path} is encrypted: set [sftp] key_passphrase") from None
    except (paramiko.SSHException, ValueError, UnicodeError, TypeError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ConfigError(f"[sftp] key_file {path} is not a private key mcnotify can use ({reason})") from None
    except OSError as exc:
        raise ConfigError(f"[sftp] key_file {path}: {exc.strerror or exc}") from None


def _connect(section: SftpSettings, clients: list[paramiko.SSHClient]) -> paramiko.SSHClient:
    key = load_key(section)  # before any connection: a bad key is not an outage
    known_hosts = Path(section.known_hosts).expanduser()
    if not known_hosts.is_file():
        raise ConfigError(f"[sftp] known_hosts file not found: {known_hosts}")
    client = paramiko.SSHClient()
    clients.append(client)
    try:
        client.load_host_keys(str(known_hosts))
    except (OSError, paramiko.SSHException) as exc:
        raise ConfigError(f"[sftp] known_hosts {known_hosts} unreadable: {exc}") from None
    client.set_missing_host_key_policy(paramiko.RejectPolicy())  # never trust on first use
    host, port = section.host, section.port
    where = f"{host}:{port}"
    timeout = section.timeout

    def attempt() -> paramiko.SSHClient:
        started = time.monotonic()
        try:
            client.connect(
                host,
                port=port,
                username=section.username,
                password=section.password or None,
                pkey=key,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
                allow_agent=False,
                look_for_keys=False,
            )
            log.debug("SFTP %s: host key verified and logged in in %.0f ms", where, (time.monotonic() - started) * 1000)
            return client
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise McnotifyError(
                f"SFTP host key for {where} does not match {known_hosts}: server offered {exc.key.get_name()} "
                f"{fingerprint(exc.key)}, expected {fingerprint(exc.expected_key)}; refusing to connect"
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            # No retry: MC locks the account for 30 minutes after repeated bad logins.
            raise ConfigError(f"SFTP {where} refused the login for user {section.username!r}") from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise ConfigError(
                    f"SFTP host {where} is not in {known_hosts}; verify its key and add it "
                    f"(ssh-keyscan -p {port} {host})"
                ) from None
            raise _Unreachable(f"SSH error: {exc}") from None
        except (TimeoutError, OSError, EOFError) as exc:
            client.close()
            raise _Unreachable(f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}") from None

    try:
        return retrying.call(
            attempt, f"SFTP connect to {where}", CONNECT_ATTEMPTS, _Unreachable, logger=log, first_wait=2.0, max_wait=8
        )
    except _Unreachable as exc:
        raise ServiceUnavailable(f"SFTP {where} unreachable after {CONNECT_ATTEMPTS} attempts ({exc})") from None


class _Unreachable(Exception):
    """A connection attempt that failed in a way worth retrying (the network, not the key or the login)."""


def upload(
    section: SftpSettings, local_path: Path, remote_name: str, before_publish: Callable[[], None] | None = None
) -> str:
    """Upload `local_path` as `remote_dir/remote_name`; returns the remote path. Never leaves a partial file
    under the final name: MC may import whatever it finds there. `before_publish` runs between the upload (under
    a name of this upload's own) and the rename to the final name; if it raises, the upload is removed."""
    return _stoppable(
        section,
        "SFTP upload to",
        lambda clients: _upload(section, local_path, remote_name, clients, before_publish),
    )


def _upload(
    section: SftpSettings,
    local_path: Path,
    remote_name: str,
    clients: list[paramiko.SSHClient],
    before_publish: Callable[[], None] | None = None,
) -> str:
    remote_dir = section.remote_dir
    final = posixpath.join(remote_dir, remote_name)
    # A name of this upload's own: another process's upload of the same file (a follower that took the
    # pipeline over while this one was frozen) never writes into this one's, nor this one into its.
    partial = posixpath.join(remote_dir, f"{remote_name}.{secrets.token_hex(4)}.part")
    client = _connect(section, clients)
    try:
        sftp = client.open_sftp()
        sftp.get_channel().settimeout(section.timeout)  # type: ignore[union-attr]
        size = local_path.stat().st_size
        started = time.monotonic()
        try:
            _remove_stale_parts(sftp, remote_dir, remote_name)
            sftp.put(str(local_path), partial, confirm=True)
            if before_publish is not None:
                try:
                    before_publish()
                except BaseException:
                    with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
                        sftp.remove(partial)
                    raise
            try:
                sftp.posix_rename(partial, final)
            except OSError:
                # No posix-rename extension: plain SFTP rename refuses to overwrite.
                with contextlib.suppress(OSError):
                    sftp.remove(final)
                sftp.rename(partial, final)
            remote_size = sftp.stat(final).st_size
        except OSError as exc:
            raise McnotifyError(f"SFTP upload to {section.host}:{final} failed: {exc}") from None
        if remote_size != size:
            raise McnotifyError(f"SFTP upload to {final} is {remote_size} bytes, expected {size}")
        log.debug("SFTP: %d bytes uploaded to %s in %.0f ms", size, final, (time.monotonic() - started) * 1000)
        return final
    except (TimeoutError, paramiko.SSHException, EOFError) as exc:
        raise ServiceUnavailable(f"SFTP connection to {section.host} lost during upload: {exc}") from None
    finally:
        client.close()


STALE_PART = 3600.0  # seconds: an upload's own .part this old was left by a process killed mid-upload


def _remove_stale_parts(sftp: paramiko.SFTPClient, remote_dir: str, remote_name: str) -> None:
    """Partial uploads of this file that a killed process left behind (each upload has a name of its own, so
    none is ever reused), once they are an hour old: a live upload is never that slow to change its file."""
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in sftp.listdir_attr(remote_dir):
            name = entry.filename
            if (
                name.startswith(f"{remote_name}.")
                and name.endswith(".part")
                and now - (entry.st_mtime or now) > STALE_PART
            ):
                with contextlib.suppress(OSError):
                    sftp.remove(posixpath.join(remote_dir, name))
                    log.info("SFTP: removed %s, a partial upload left behind", name)


def check_login(section: SftpSettings) -> str:
    """Connect, verify the host key, log in and list remote_dir: for `doctor`."""

    def work(clients: list[paramiko.SSHClient]) -> str:
        client = _connect(section, clients)
        try:
            names = client.open_sftp().listdir(section.remote_dir)
            return f"{len(names)} entries in {section.remote_dir}"
        finally:
            client.close()

    return _stoppable(section, "SFTP login check on", work)
