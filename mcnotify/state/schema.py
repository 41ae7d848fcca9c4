"""State file schema. Each entry of MIGRATIONS moves `PRAGMA user_version` up by one."""

MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

    CREATE TABLE batches (
        id INTEGER PRIMARY KEY,
        created_at REAL NOT NULL,
        status TEXT NOT NULL,          -- claiming, claimed, importing, imported, done
        rows INTEGER NOT NULL DEFAULT 0,
        invalid INTEGER NOT NULL DEFAULT 0,
        conflicts INTEGER NOT NULL DEFAULT 0,
        csv_rows INTEGER,
        remote_path TEXT,
        uploaded_at REAL,
        import_task_id TEXT,
        import_status TEXT,            -- MC's ImportStatus, or skipped / assumed (fixed-delay)
        import_total INTEGER,
        import_ok INTEGER,
        import_errors INTEGER,
        import_duplicates INTEGER,
        import_done_at REAL
    );
    CREATE INDEX batches_status ON batches (status);

    CREATE TABLE steps (
        batch_id INTEGER NOT NULL REFERENCES batches (id),
        step TEXT NOT NULL,
        status TEXT NOT NULL,          -- running, done, failed, skipped
        started_at REAL,
        finished_at REAL,
        detail TEXT,
        PRIMARY KEY (batch_id, step)
    );

    CREATE TABLE notifications (
        seq INTEGER PRIMARY KEY,       -- arrival order; 'newest wins' compares it
        notification_id TEXT NOT NULL UNIQUE,
        batch_id INTEGER NOT NULL REFERENCES batches (id),
        template TEXT NOT NULL,
        channel TEXT,                  -- email / sms; NULL for a template the config does not know
        subscriber_key TEXT,
        address TEXT,                  -- normalised email or phone
        raw_contact TEXT,              -- what the source gave, kept for `invalid` reports
        attributes TEXT NOT NULL,      -- JSON object of the other source columns
        from_name TEXT,
        status TEXT NOT NULL,          -- pending, invalid, sending, sent, failed, unknown
        reason TEXT,
        error_code TEXT,
        message_key TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        updated_at REAL
    );
    CREATE INDEX notifications_work ON notifications (batch_id, channel, status);

    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        command TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        exit_code INTEGER,
        error TEXT,
        counts TEXT
    );
    CREATE INDEX runs_started ON runs (started_at);

    -- The one secret the state keeps; never included in dumps.
    CREATE TABLE token (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        access_token TEXT NOT NULL,
        rest_url TEXT NOT NULL,
        soap_url TEXT NOT NULL,
        obtained_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    """,
    # 2: one email per subscriber key per batch is worked out in SQL, so a million-row batch is never in memory.
    """
    CREATE INDEX notifications_subscriber ON notifications (batch_id, channel, subscriber_key, seq);
    CREATE INDEX notifications_send ON notifications (batch_id, channel, template, status, seq);
    CREATE INDEX runs_command ON runs (command, id);
    """,
    # 3: the token remembers what it was issued for (an HMAC keyed by the client secret over auth_url, client_id,
    # account_id and scope; never the secret), so changed credentials never reuse it.
    """
    ALTER TABLE token ADD COLUMN issued_for TEXT;
    """,
    # 4: the contacts MC holds (subscriber key -> the email it has), so an email to a known member need not wait
    # for an import. Seeded from the imports that completed before this release.
    """
    CREATE TABLE contacts (
        subscriber_key TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        learned_from TEXT NOT NULL,    -- "import of batch N" or "triggered send"
        updated_at REAL NOT NULL
    );
    -- How often MC refused a notification for a contact it did not hold, and it was uploaded again (bounded).
    ALTER TABLE notifications ADD COLUMN requeued INTEGER NOT NULL DEFAULT 0;
    -- Event time (the source's created_at) and when MC accepted it: the latency a member feels.
    ALTER TABLE notifications ADD COLUMN event_at REAL;
    ALTER TABLE notifications ADD COLUMN sent_at REAL;
    CREATE INDEX notifications_sent_at ON notifications (sent_at) WHERE sent_at IS NOT NULL;
    -- The notifications still to send, small at any time: cross-batch address changes start from here.
    CREATE INDEX notifications_pending ON notifications (channel, batch_id) WHERE status = 'pending';
    INSERT OR REPLACE INTO contacts (subscriber_key, email, learned_from, updated_at)
        SELECT n.subscriber_key, n.address, 'import of batch ' || n.batch_id, COALESCE(b.import_done_at, 0)
        FROM notifications AS n JOIN batches AS b ON b.id = n.batch_id
        WHERE n.channel = 'email' AND n.status NOT IN ('invalid', 'expired') AND n.address IS NOT NULL
          AND b.import_status = 'Completed'
        ORDER BY n.seq;
    """,
]
