//! Numbered migrations, recorded in `PRAGMA user_version`.

use rusqlite::{Connection, TransactionBehavior};

/// Each entry moves the schema one version up.
const MIGRATIONS: &[&str] = &[
    // 1: tokens, indexed by id and by hash; the change feed.
    "CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        key_id INTEGER NOT NULL,
        hash BLOB NOT NULL,
        name TEXT NOT NULL,
        subject TEXT NOT NULL,
        scopes TEXT NOT NULL,
        audiences TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        revoked_at INTEGER,
        last_used_at INTEGER,
        allowed_networks TEXT NOT NULL,
        rate_count INTEGER,
        rate_period_ms INTEGER,
        rate_burst INTEGER,
        rotated_from TEXT,
        metadata TEXT NOT NULL
    );
    CREATE UNIQUE INDEX tokens_by_hash ON tokens (hash, key_id);
    CREATE INDEX tokens_by_subject ON tokens (subject);
    CREATE TABLE changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        token_id TEXT NOT NULL,
        key_id INTEGER NOT NULL,
        hash BLOB NOT NULL,
        kind TEXT NOT NULL,
        at INTEGER NOT NULL
    );",
    // 2: the pepper each key id stands for (a check value, never the
    // pepper), and the scope catalogue the servers register.
    "CREATE TABLE peppers (
        key_id INTEGER PRIMARY KEY,
        check_value TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE scopes (
        scope TEXT PRIMARY KEY,
        registered_at INTEGER NOT NULL
    );",
    // 3: a token can be disabled (reversibly) until enabled again.
    "ALTER TABLE tokens ADD COLUMN disabled_at INTEGER;",
    // 4: usage-limited tokens: the limit, its refill, and the count left
    // in its window and generation (all NULL, the window and generation 0,
    // for unlimited uses); and the record's version, which an update
    // writes over only as it was read.
    "ALTER TABLE tokens ADD COLUMN uses_limit INTEGER;
    ALTER TABLE tokens ADD COLUMN uses_refill INTEGER;
    ALTER TABLE tokens ADD COLUMN uses_refill_ms INTEGER;
    ALTER TABLE tokens ADD COLUMN uses_remaining INTEGER;
    ALTER TABLE tokens ADD COLUMN uses_window INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tokens ADD COLUMN uses_generation INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tokens ADD COLUMN version INTEGER NOT NULL DEFAULT 0;",
    // 5: a retired pepper stays recorded (its key id is never reused) and
    // verifies nothing from then on, in every process.
    "ALTER TABLE peppers ADD COLUMN retired_at INTEGER;",
    // 6: a token bound to a DPoP key or a client certificate
    // (`jkt:<base64url>`, `x5t#S256:<base64url>`); NULL for a bearer token.
    "ALTER TABLE tokens ADD COLUMN binding TEXT;",
    // 7: a token's second and later rate quotas (`count/period_ms/burst`,
    // space-separated; the first keeps its three columns).
    "ALTER TABLE tokens ADD COLUMN rate_more TEXT NOT NULL DEFAULT '';",
    // 8: per-token usage: requests by hour (seconds since the epoch) and
    // outcome (`admitted` or a refusal's reason), and each hour's last
    // client address; pruned by hour.
    "CREATE TABLE token_usage (
        token_id TEXT NOT NULL,
        hour INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        requests INTEGER NOT NULL,
        PRIMARY KEY (token_id, hour, outcome)
    ) WITHOUT ROWID;
    CREATE INDEX token_usage_by_hour ON token_usage (hour);
    CREATE TABLE token_usage_clients (
        token_id TEXT NOT NULL,
        hour INTEGER NOT NULL,
        client TEXT NOT NULL,
        seen_ms INTEGER NOT NULL,
        PRIMARY KEY (token_id, hour)
    ) WITHOUT ROWID;",
    // 9: lifecycle webhooks: the subscriptions (events space-separated),
    // and the outbox of deliveries (times in ms since the epoch; a claim
    // holds a delivery until lease_ms; an event once per webhook).
    "CREATE TABLE webhooks (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        events TEXT NOT NULL,
        secret TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE webhook_deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        webhook_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        body TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        next_ms INTEGER NOT NULL,
        lease_ms INTEGER NOT NULL DEFAULT 0,
        claimed_by TEXT NOT NULL DEFAULT '',
        last_status INTEGER,
        last_error TEXT
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_ms);
    CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (webhook_id, event_id);",
];

/// The schema version this build writes.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`VERSION`], or fails if it is newer.
///
/// The version is read and every missing migration applied in one
/// immediate transaction, which takes the write lock before reading: of
/// several processes opening a fresh database at once, one migrates and
/// the others wait (within the busy timeout), then find it current.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if current == VERSION {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if current > VERSION {
        return Err(MigrateError::Newer {
            found: current,
            supported: VERSION,
        });
    }
    let start = usize::try_from(current).unwrap_or(0);
    for sql in MIGRATIONS.iter().skip(start) {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Why the schema could not be brought up to date.
pub(crate) type MigrateError = tokengate_sql::MigrateError<rusqlite::Error>;
