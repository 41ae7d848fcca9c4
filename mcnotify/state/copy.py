"""`mcnotify state migrate --to mysql://…`: an existing SQLite state copied into an empty MariaDB/MySQL
database, table by table in one transaction, every id kept (batch numbers, seqs and run ids stay what the
operator has seen in `status` and `history`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mcnotify.errors import ConfigError, McnotifyError
from mcnotify.state.mysql import MySQLStore, Target
from mcnotify.state.mysql_schema import COORDINATION, TABLES
from mcnotify.state.store import StateStore

CHUNK = 2000  # rows per INSERT: pymysql packs an executemany into multi-row statements of up to ~1 MB


def _refuse_unless_empty(target: Target) -> None:
    """An empty database (no tables), or one holding only mcnotify's empty schema, is a copy's target; any
    other table or any row would be mixed with the copy, so it is refused (before anything is created in it)."""
    conn = target.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            tables = {str(r[0]) for r in cur.fetchall()}
            foreign = sorted(tables - {*TABLES, *COORDINATION})
            if foreign:
                raise ConfigError(
                    f"state database {target.location} is not empty (it holds table {foreign[0]});"
                    " nothing copied: give an empty database"
                )
            for table in sorted(tables & {*TABLES}):
                cur.execute(f"SELECT 1 FROM `{table}` LIMIT 1")
                if cur.fetchone() is not None:
                    raise ConfigError(
                        f"state database {target.location} already holds a state (table {table} has rows);"
                        " nothing copied"
                    )
    finally:
        conn.close()


def copy_to_mysql(
    path: Path, url: str, password: str | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, int]:
    """Copy the SQLite state at `path` into the empty database at `url`; returns {table: rows copied}.
    Holds the SQLite state's run lock throughout, so no run changes it while it is read."""
    if not path.is_file():
        raise McnotifyError(f"state file {path} does not exist: nothing to copy")
    source = StateStore(path)  # migrated to the current schema, as the target's
    try:
        source.lock()
        target = Target.from_url(url, password)
        _refuse_unless_empty(target)
        target_store = MySQLStore(target)  # creates the schema when there is none
        try:
            counts: dict[str, int] = {}
            conn = target_store.conn
            with target_store.transaction():
                for table in TABLES:
                    cursor = source.conn.execute(f"SELECT * FROM {table}")
                    columns = [d[0] for d in cursor.description]
                    names = ", ".join(f"`{c}`" for c in columns)
                    insert = f"INSERT INTO `{table}` ({names}) VALUES ({', '.join('?' * len(columns))})"
                    counts[table] = 0
                    while rows := cursor.fetchmany(CHUNK):
                        conn.executemany(insert, [tuple(r) for r in rows])
                        counts[table] += len(rows)
                    if progress:
                        progress(f"{table}: {counts[table]} rows")
            return counts
        finally:
            target_store.close()
    finally:
        source.close()
