//! Numbered migrations, recorded in `tokengate_migrations`, applied under
//! an advisory lock so that instances starting together migrate once.

use tokio_postgres::Client;

/// Each entry moves the schema one version up.
const MIGRATIONS: &[&str] = &[
    // 1: tokens, unique by id and by (hash, key id); the pepper check value
    // of each key id (never a pepper); the scope catalogue.
    "CREATE TABLE tokengate_tokens (
        id text PRIMARY KEY,
        key_id bigint NOT NULL,
        hash bytea NOT NULL,
        name text NOT NULL,
        subject text NOT NULL,
        scopes text[] NOT NULL,
        audiences text[] NOT NULL,
        created_at timestamptz NOT NULL,
        expires_at timestamptz,
        revoked_at timestamptz,
        last_used_at timestamptz,
        allowed_networks text[] NOT NULL,
        rate_count bigint,
        rate_period_ms bigint,
        rate_burst bigint,
        rotated_from text,
        metadata jsonb NOT NULL,
        UNIQUE (hash, key_id)
    );
    CREATE INDEX tokengate_tokens_by_subject ON tokengate_tokens (subject);
    CREATE TABLE tokengate_peppers (
        key_id bigint PRIMARY KEY,
        check_value text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE tokengate_scopes (
        scope text PRIMARY KEY,
        registered_at timestamptz NOT NULL DEFAULT now()
    );",
    // 2: a token can be disabled (reversibly) until enabled again.
    "ALTER TABLE tokengate_tokens ADD COLUMN disabled_at timestamptz;",
    // 3: usage-limited tokens: the limit, its refill, and the count left
    // in its window (all NULL, the window 0, for unlimited uses).
    "ALTER TABLE tokengate_tokens ADD COLUMN uses_limit bigint,
        ADD COLUMN uses_refill bigint,
        ADD COLUMN uses_refill_ms bigint,
        ADD COLUMN uses_remaining bigint,
        ADD COLUMN uses_window bigint NOT NULL DEFAULT 0,
        ADD COLUMN uses_generation bigint NOT NULL DEFAULT 0,
        ADD COLUMN version bigint NOT NULL DEFAULT 0;",
    // 4: a retired pepper stays recorded (its key id is never reused) and
    // verifies nothing from then on, on every instance.
    "ALTER TABLE tokengate_peppers ADD COLUMN retired_at timestamptz;",
    // 6: a token bound to a DPoP key or a client certificate
    // (`jkt:<base64url>`, `x5t#S256:<base64url>`); NULL for a bearer token.
    "ALTER TABLE tokengate_tokens ADD COLUMN binding text;",
    // 7: a token's second and later rate quotas (`count/period_ms/burst`;
    // the first keeps its three columns).
    "ALTER TABLE tokengate_tokens ADD COLUMN rate_more text[] NOT NULL DEFAULT '{}';",
    // 8: per-token usage: requests by hour (seconds since the epoch) and
    // outcome (`admitted` or a refusal's reason), and each hour's last
    // client address; pruned by hour.
    "CREATE TABLE tokengate_usage (
        token_id text NOT NULL,
        hour bigint NOT NULL,
        outcome text NOT NULL,
        requests bigint NOT NULL,
        PRIMARY KEY (token_id, hour, outcome)
    );
    CREATE INDEX tokengate_usage_by_hour ON tokengate_usage (hour);
    CREATE TABLE tokengate_usage_clients (
        token_id text NOT NULL,
        hour bigint NOT NULL,
        client text NOT NULL,
        seen_ms bigint NOT NULL,
        PRIMARY KEY (token_id, hour)
    );",
    // 9: lifecycle webhooks: the subscriptions (events space-separated),
    // and the outbox of deliveries (times in ms since the epoch; a claim
    // holds a delivery until lease_ms; an event once per webhook).
    "CREATE TABLE tokengate_webhooks (
        id text PRIMARY KEY,
        url text NOT NULL,
        events text NOT NULL,
        secret text NOT NULL,
        created_ms bigint NOT NULL
    );
    CREATE TABLE tokengate_webhook_deliveries (
        id bigserial PRIMARY KEY,
        webhook_id text NOT NULL,
        event_id text NOT NULL,
        event_type text NOT NULL,
        body text NOT NULL,
        created_ms bigint NOT NULL,
        attempts bigint NOT NULL DEFAULT 0,
        state text NOT NULL,
        next_ms bigint NOT NULL,
        lease_ms bigint NOT NULL DEFAULT 0,
        claimed_by text NOT NULL DEFAULT '',
        last_status bigint,
        last_error text
    );
    CREATE INDEX tokengate_webhook_deliveries_due
        ON tokengate_webhook_deliveries (state, next_ms);
    CREATE UNIQUE INDEX tokengate_webhook_deliveries_once
        ON tokengate_webhook_deliveries (webhook_id, event_id);",
];

/// The schema version this build writes.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// The advisory lock every migrating instance takes: `tokengate` in ASCII.
const LOCK: i64 = 0x746f_6b65_6e67_6174;

/// Brings the database to [`VERSION`], or fails if it is newer.
///
/// One transaction takes a transaction-scoped advisory lock, then reads the
/// version and applies each missing migration: of several instances
/// starting at once, one migrates and the others wait on the lock, then
/// find the schema current. A failed migration leaves nothing behind.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), MigrateError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1::bigint)", &[&LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tokengate_migrations (
            version bigint PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM tokengate_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    if current > VERSION {
        return Err(MigrateError::Newer {
            found: current,
            supported: VERSION,
        });
    }
    for (version, sql) in (1_i64..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(current).unwrap_or(0))
    {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO tokengate_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Why the schema could not be brought up to date.
pub(crate) type MigrateError = tokengate_sql::MigrateError<tokio_postgres::Error>;
