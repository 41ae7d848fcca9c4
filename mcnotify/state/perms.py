"""The state file holds contacts and a token: it is created 0600 in a 0700 folder, and an existing one (with
SQLite's -wal/-shm/-journal files beside it) is tightened when others could read it."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)
COMPANIONS = ("", "-wal", "-shm", "-journal")


def create_private(path: Path) -> None:
    """Make the folder (0700) and an empty state file (0600) unless they exist, then tighten what exists."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        # Created private before SQLite opens it: SQLite gives its -wal/-shm files the database file's mode.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    tighten(path)


def tighten(path: Path) -> None:
    """chmod 0600 the state file and its companions when group or others have any access."""
    for suffix in COMPANIONS:
        name = Path(f"{path}{suffix}")
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
        except OSError:
            continue
        if not mode & 0o077:
            continue
        try:
            os.chmod(name, mode & 0o700)
        except OSError as exc:
            log.warning(
                "state file %s is readable by other users (mode %04o) and cannot be made private: %s",
                name,
                mode,
                exc.strerror,
            )
        else:
            log.warning("state file %s was readable by other users (mode %04o): made it %04o", name, mode, mode & 0o700)
