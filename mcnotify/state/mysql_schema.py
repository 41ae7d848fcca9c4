"""The state's schema on MariaDB/MySQL: the same tables and the same numbered migrations as schema.py (SQLite),
translated. `schema_version` holds the number PRAGMA user_version holds on SQLite.

Translations: INTEGER PRIMARY KEY -> BIGINT AUTO_INCREMENT; REAL -> DOUBLE; text that is indexed -> VARCHAR
(lengths below; utf8mb4 index keys are limited to 3072 bytes), other text -> TEXT/LONGTEXT; partial indexes ->
plain ones (`notifications_pending` leads with status instead; since migration 8, `notifications_status`). Every
table is InnoDB, utf8mb4 with the binary collation: SQLite compares text byte for byte, and a case- or
accent-insensitive collation would make 'A@x.com' and 'a@x.com' one contact and two notification ids one. `key`
and `rows` are reserved words in MySQL 8: quoted with backticks wherever they appear."""

from __future__ import annotations

# Each entry is a list of statements (MySQL commits DDL implicitly: a migration cannot be one transaction, so
# they run under a named lock; an upgrade cut short runs the interrupted migration again, and a statement that
# finds its change made already, "exists" or "cannot drop", counts as done: each ALTER is one atomic statement).
_TABLE = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

MIGRATIONS: list[list[str]] = [
    [
        f"CREATE TABLE meta (`key` VARCHAR(255) NOT NULL PRIMARY KEY, value LONGTEXT NOT NULL) {_TABLE}",
        "CREATE TABLE batches ("
        " id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
        " created_at DOUBLE NOT NULL,"
        " status VARCHAR(32) NOT NULL,"
        " `rows` BIGINT NOT NULL DEFAULT 0,"
        " invalid BIGINT NOT NULL DEFAULT 0,"
        " conflicts BIGINT NOT NULL DEFAULT 0,"
        " csv_rows BIGINT,"
        " remote_path TEXT,"
        " uploaded_at DOUBLE,"
        " import_task_id TEXT,"
        " import_status TEXT,"
        " import_total BIGINT,"
        " import_ok BIGINT,"
        " import_errors BIGINT,"
        " import_duplicates BIGINT,"
        " import_done_at DOUBLE,"
        " INDEX batches_status (status)"
        f") {_TABLE}",
        "CREATE TABLE steps ("
        " batch_id BIGINT NOT NULL,"
        " step VARCHAR(64) NOT NULL,"
        " status VARCHAR(32) NOT NULL,"
        " started_at DOUBLE,"
        " finished_at DOUBLE,"
        " detail TEXT,"
        " PRIMARY KEY (batch_id, step),"
        " FOREIGN KEY (batch_id) REFERENCES batches (id)"
        f") {_TABLE}",
        "CREATE TABLE notifications ("
        " seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
        " notification_id VARCHAR(255) NOT NULL,"
        " batch_id BIGINT NOT NULL,"
        " template VARCHAR(255) NOT NULL,"
        " channel VARCHAR(32),"
        " subscriber_key VARCHAR(255),"
        " address TEXT,"
        " raw_contact TEXT,"
        " attributes LONGTEXT NOT NULL,"
        " from_name TEXT,"
        " status VARCHAR(32) NOT NULL,"
        " reason TEXT,"
        " error_code TEXT,"
        " message_key TEXT,"
        " attempts INT NOT NULL DEFAULT 0,"
        " updated_at DOUBLE,"
        " UNIQUE KEY notifications_id (notification_id),"
        " INDEX notifications_work (batch_id, channel, status),"
        " FOREIGN KEY (batch_id) REFERENCES batches (id)"
        f") {_TABLE}",
        "CREATE TABLE runs ("
        " id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
        " command VARCHAR(64) NOT NULL,"
        " host VARCHAR(255) NOT NULL,"
        " pid BIGINT NOT NULL,"
        " started_at DOUBLE NOT NULL,"
        " finished_at DOUBLE,"
        " exit_code INT,"
        " error TEXT,"
        " counts TEXT,"
        " INDEX runs_started (started_at)"
        f") {_TABLE}",
        # The one secret the state keeps; never included in dumps.
        "CREATE TABLE token ("
        " id INT NOT NULL PRIMARY KEY CHECK (id = 1),"
        " access_token TEXT NOT NULL,"
        " rest_url TEXT NOT NULL,"
        " soap_url TEXT NOT NULL,"
        " obtained_at DOUBLE NOT NULL,"
        " expires_at DOUBLE NOT NULL"
        f") {_TABLE}",
        # This backend's run lock (SQLite's is a flock on the file): one row per lease, renewed by heartbeat;
        # `generation` goes up with every new holder (the fencing token issue 13's shared pipeline will check).
        "CREATE TABLE leases ("
        " name VARCHAR(64) NOT NULL PRIMARY KEY,"
        " holder VARCHAR(255) NOT NULL,"
        " host VARCHAR(255) NOT NULL,"
        " pid BIGINT NOT NULL,"
        " generation BIGINT NOT NULL,"
        " acquired_at DOUBLE NOT NULL,"
        " heartbeat_at DOUBLE NOT NULL,"
        " expires_at DOUBLE NOT NULL"
        f") {_TABLE}",
    ],
    # 2: one email per subscriber key per batch is worked out in SQL.
    [
        "CREATE INDEX notifications_subscriber ON notifications (batch_id, channel, subscriber_key, seq)",
        "CREATE INDEX notifications_send ON notifications (batch_id, channel, template, status, seq)",
        "CREATE INDEX runs_command ON runs (command, id)",
    ],
    # 3: the token remembers what it was issued for (an HMAC, never the secret).
    ["ALTER TABLE token ADD COLUMN issued_for TEXT"],
    # 4: the contact ledger, requeue counts, event and accepted times.
    [
        "CREATE TABLE contacts ("
        " subscriber_key VARCHAR(255) NOT NULL PRIMARY KEY,"
        " email TEXT NOT NULL,"
        " learned_from TEXT NOT NULL,"
        " updated_at DOUBLE NOT NULL"
        f") {_TABLE}",
        "ALTER TABLE notifications ADD COLUMN requeued INT NOT NULL DEFAULT 0,"
        " ADD COLUMN event_at DOUBLE, ADD COLUMN sent_at DOUBLE",
        "CREATE INDEX notifications_sent_at ON notifications (sent_at)",
        # SQLite's partial index of pending rows, as a plain index that starts with the status.
        "CREATE INDEX notifications_pending ON notifications (status, channel, batch_id)",
        "REPLACE INTO contacts (subscriber_key, email, learned_from, updated_at)"
        " SELECT n.subscriber_key, n.address, CONCAT('import of batch ', n.batch_id), COALESCE(b.import_done_at, 0)"
        " FROM notifications AS n JOIN batches AS b ON b.id = n.batch_id"
        " WHERE n.channel = 'email' AND n.status NOT IN ('invalid', 'expired') AND n.address IS NOT NULL"
        "  AND b.import_status = 'Completed'"
        " ORDER BY n.seq",
    ],
    # 5 (this backend only: SQLite has one process): several followers on one database. Every live process
    # (host, pid, role, heartbeat); a send claim per notification (holder, expiry) so each is sent by one of them.
    [
        "CREATE TABLE processes ("
        " holder VARCHAR(255) NOT NULL PRIMARY KEY,"
        " host VARCHAR(255) NOT NULL,"
        " pid BIGINT NOT NULL,"
        " role VARCHAR(32) NOT NULL,"
        " started_at DOUBLE NOT NULL,"
        " heartbeat_at DOUBLE NOT NULL"
        f") {_TABLE}",
        "ALTER TABLE notifications ADD COLUMN claim_holder VARCHAR(255), ADD COLUMN claim_expires DOUBLE,"
        " ADD INDEX notifications_claim (claim_holder)",
    ],
    # 6: a process's connection to this database (its id and client address, as the server's processlist shows
    # them): one frozen mid-transaction holds row locks until that connection dies, so another process ends it
    # once its heartbeat is a lease old. And what each follower is doing, for `status` (one row each).
    [
        "ALTER TABLE processes ADD COLUMN conn_id BIGINT, ADD COLUMN conn_client VARCHAR(255), ADD COLUMN detail TEXT",
    ],
    # 7: fewer indexes for every claim and every recorded send to update. Claims are renewed and released by seq
    # (each process knows its own): no index on the holder. (batch, channel, status) is served by
    # notifications_pending (status, channel, batch) and, without a status, by the indexes that start with
    # (batch, channel).
    # The claim's columns become fixed-width and NOT NULL: claiming and releasing rewrite the row in place.
    # (Claims live a lease long: the upgrade drops those in flight, as a restart of the followers would.)
    [
        "ALTER TABLE notifications DROP INDEX notifications_claim, DROP INDEX notifications_work,"
        " DROP COLUMN claim_holder, DROP COLUMN claim_expires,"
        " ADD COLUMN claim_holder CHAR(16) CHARACTER SET ascii NOT NULL DEFAULT '',"
        " ADD COLUMN claim_expires DOUBLE NOT NULL DEFAULT 0"
    ],
    # 8: a send claim is a range of seqs, one row per page claimed, instead of a mark written on every row (that
    # write was most of what the database spent per message). `claim_locks` has one row per (batch, channel):
    # locked, it makes claiming those rows one process at a time (a few milliseconds each). A claim's template
    # is NULL when it covers every template of its batch and channel.
    [
        "CREATE TABLE claim_locks ("
        " batch_id BIGINT NOT NULL,"
        " channel VARCHAR(32) NOT NULL,"
        " PRIMARY KEY (batch_id, channel)"
        f") {_TABLE}",
        "CREATE TABLE claims ("
        " id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
        " batch_id BIGINT NOT NULL,"
        " channel VARCHAR(32) NOT NULL,"
        " template VARCHAR(255),"
        " lo BIGINT NOT NULL,"
        " hi BIGINT NOT NULL,"
        " holder CHAR(16) CHARACTER SET ascii NOT NULL,"
        " expires DOUBLE NOT NULL,"
        " INDEX claims_batch (batch_id, channel, lo)"
        f") {_TABLE}",
        "ALTER TABLE notifications DROP COLUMN claim_holder, DROP COLUMN claim_expires",
        # And fewer index entries for every recorded send to rewrite (most of what the database spends a message):
        # one index leads with the status, instead of two that hold it (`notifications_send`, whose pages it now
        # serves in the same order, and `notifications_pending`), and none on the send time (only `status` asks
        # for the last hour's sends, and it reads every row for its counts already). Queries by batch without a
        # status are served by notifications_subscriber (batch, channel, subscriber_key).
        "ALTER TABLE notifications DROP INDEX notifications_sent_at, DROP INDEX notifications_send,"
        " DROP INDEX notifications_pending,"
        " ADD INDEX notifications_status (status, channel, batch_id, template, seq)",
    ],
]

# The tables of the state, parents first (the order a copy inserts them in).
TABLES = ("meta", "batches", "steps", "notifications", "runs", "token", "contacts")
# This backend's own: the schema's version, and how the processes sharing the database coordinate.
COORDINATION = ("schema_version", "leases", "processes", "claim_locks", "claims")
