//! The webhook subscriptions and outbox, written once over a backend's
//! [`Conn`](crate::Conn): subscriptions, deliveries fanned out in one
//! statement, claimed under a lease in one statement (so two processes
//! never claim the same delivery), attempts recorded by their claimer.

use std::sync::LazyLock;
use std::time::SystemTime;

use tokengate_store::{
    Attempt, Delivery, DeliveryState, EventType, LEASE, StoreError, Webhook, WebhookEvent,
};

use crate::{Backend, Work};
use crate::{Dialect, Kind, Unreadable, Value, from_millis, millis};

/// Every statement of the webhook tables, in one dialect.
struct Statements {
    add: String,
    list: String,
    remove: String,
    fail_removed: String,
    enqueue: String,
    claim: String,
    finish: String,
    log: String,
    prune: String,
}

const DELIVERY: &str = "id, webhook_id, event_id, event_type, body, created_ms, attempts, state, \
    next_ms, last_status, last_error";

const DELIVERY_KINDS: &[Kind] = &[
    Kind::Int,
    Kind::Text,
    Kind::Text,
    Kind::Text,
    Kind::Text,
    Kind::Int,
    Kind::Int,
    Kind::Text,
    Kind::Int,
    Kind::Int,
    Kind::Text,
];

impl Statements {
    fn new(dialect: Dialect) -> Self {
        let d = |sql: &str| dialect.text(sql);
        Self {
            add: d(
                "INSERT INTO {webhooks} (id, url, events, secret, created_ms) \
                    VALUES ($1, $2, $3, $4, $5)",
            ),
            list: d(
                "SELECT id, url, events, secret, created_ms FROM {webhooks} \
                     ORDER BY created_ms, id",
            ),
            remove: d("DELETE FROM {webhooks} WHERE id = $1 RETURNING id"),
            fail_removed: d("UPDATE {deliveries} SET state = 'failed', \
                             last_error = 'webhook removed' \
                             WHERE webhook_id = $1 AND state = 'pending'"),
            enqueue: d("INSERT INTO {deliveries} \
                        (webhook_id, event_id, event_type, body, created_ms, state, next_ms) \
                        SELECT id, $1, $2, $3, $4, 'pending', $4 FROM {webhooks} \
                        WHERE (' ' || events || ' ') LIKE $5 \
                        ON CONFLICT (webhook_id, event_id) DO NOTHING RETURNING id"),
            claim: d(&format!(
                "UPDATE {{deliveries}} SET lease_ms = $2, claimed_by = $3 \
                 WHERE id IN (SELECT id FROM {{deliveries}} \
                 WHERE state = 'pending' AND next_ms <= $1 AND lease_ms <= $1 \
                 ORDER BY next_ms, id LIMIT $4{{skip_locked}}) \
                 AND state = 'pending' AND lease_ms <= $1 RETURNING {DELIVERY}"
            )),
            finish: d(
                "UPDATE {deliveries} SET attempts = attempts + 1, state = $3, \
                       next_ms = $4, lease_ms = 0, last_status = $5, last_error = $6 \
                       WHERE id = $1 AND claimed_by = $2 RETURNING id",
            ),
            prune: d(
                "DELETE FROM {deliveries} WHERE state <> 'pending' AND next_ms < $1 \
                      RETURNING id",
            ),
            log: d(&format!(
                "SELECT {DELIVERY} FROM {{deliveries}} \
                 WHERE ($1{{int}} = 0 OR (state <> 'delivered' AND last_error IS NOT NULL)) \
                 ORDER BY id DESC LIMIT $2"
            )),
        }
    }

    fn of(dialect: Dialect) -> &'static Self {
        static SQLITE: LazyLock<Statements> = LazyLock::new(|| Statements::new(Dialect::SQLITE));
        static POSTGRES: LazyLock<Statements> =
            LazyLock::new(|| Statements::new(Dialect::POSTGRES));
        if dialect == Dialect::POSTGRES {
            &POSTGRES
        } else {
            &SQLITE
        }
    }
}

fn text(value: impl Into<Option<String>>) -> Value {
    Value::Text(value.into())
}

fn int(n: i64) -> Value {
    Value::Int(Some(n))
}

fn limit(n: usize) -> Value {
    int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Reads column `i` of `row` as text.
fn read_text(row: &mut [Value], i: usize, column: &'static str) -> Result<String, StoreError> {
    match std::mem::replace(&mut row[i], Value::Int(None)) {
        Value::Text(Some(text)) => Ok(text),
        other => Err(StoreError::unavailable(Unreadable::value(column, other))),
    }
}

fn read_int(row: &[Value], i: usize) -> Option<i64> {
    match row[i] {
        Value::Int(n) => n,
        _ => None,
    }
}

fn unreadable(column: &'static str, value: &str) -> StoreError {
    StoreError::unavailable(Unreadable::value(column, value))
}

fn delivery(mut row: Vec<Value>) -> Result<Delivery, StoreError> {
    let kind = read_text(&mut row, 3, "event_type")?;
    let state = read_text(&mut row, 7, "state")?;
    Ok(Delivery {
        id: read_int(&row, 0).unwrap_or(0),
        webhook_id: read_text(&mut row, 1, "webhook_id")?,
        event_id: read_text(&mut row, 2, "event_id")?,
        kind: kind.parse().map_err(|_| unreadable("event_type", &kind))?,
        body: read_text(&mut row, 4, "body")?,
        created: from_millis(read_int(&row, 5).unwrap_or(0)),
        attempts: u32::try_from(read_int(&row, 6).unwrap_or(0)).unwrap_or(u32::MAX),
        state: DeliveryState::parse(&state).ok_or_else(|| unreadable("state", &state))?,
        next_at: from_millis(read_int(&row, 8).unwrap_or(0)),
        last_status: read_int(&row, 9).and_then(|s| u16::try_from(s).ok()),
        last_error: match std::mem::replace(&mut row[10], Value::Int(None)) {
            Value::Text(text) => text,
            _ => None,
        },
    })
}

/// See `TokenAdmin::add_webhook`.
pub async fn add_webhook(b: &impl Backend, webhook: &Webhook) -> Result<(), StoreError> {
    let sql = Statements::of(b.dialect());
    let events: Vec<&str> = webhook.events.iter().map(|e| e.as_str()).collect();
    let values = vec![
        text(webhook.id.clone()),
        text(webhook.url.clone()),
        text(events.join(" ")),
        text(webhook.secret.clone()),
        int(millis(webhook.created_at)),
    ];
    b.run(Work::single(move |c| c.execute(&sql.add, values)))
        .await
}

/// See `TokenAdmin::webhooks`.
pub async fn webhooks(b: &impl Backend) -> Result<Vec<Webhook>, StoreError> {
    let sql = Statements::of(b.dialect());
    let kinds = &[Kind::Text, Kind::Text, Kind::Text, Kind::Text, Kind::Int];
    b.run(Work::single(move |c| {
        Box::pin(async move {
            let rows = c.rows(&sql.list, Vec::new(), kinds).await?;
            rows.into_iter()
                .map(|mut row| {
                    let events = read_text(&mut row, 2, "events")?;
                    Ok(Webhook {
                        id: read_text(&mut row, 0, "id")?,
                        url: read_text(&mut row, 1, "url")?,
                        events: events
                            .split_ascii_whitespace()
                            .map(|e| e.parse::<EventType>().map_err(|_| unreadable("events", e)))
                            .collect::<Result<_, _>>()?,
                        secret: read_text(&mut row, 3, "secret")?,
                        created_at: from_millis(read_int(&row, 4).unwrap_or(0)),
                    })
                })
                .collect()
        })
    }))
    .await
}

/// See `TokenAdmin::remove_webhook`.
pub async fn remove_webhook(b: &impl Backend, id: &str) -> Result<bool, StoreError> {
    let sql = Statements::of(b.dialect());
    let id = id.to_owned();
    b.run(Work::transaction(move |c| {
        Box::pin(async move {
            let gone = c
                .column(&sql.remove, vec![text(id.clone())], Kind::Text)
                .await?;
            c.execute(&sql.fail_removed, vec![text(id)]).await?;
            Ok(!gone.is_empty())
        })
    }))
    .await
}

/// See `TokenAdmin::enqueue_event`: one statement fans the event out.
pub async fn enqueue_event(b: &impl Backend, event: &WebhookEvent) -> Result<usize, StoreError> {
    let sql = Statements::of(b.dialect());
    let values = vec![
        text(event.id.clone()),
        text(event.kind.as_str().to_owned()),
        text(event.body.clone()),
        int(millis(event.created)),
        text(format!("% {} %", event.kind.as_str())),
    ];
    b.run(Work::single(move |c| {
        Box::pin(async move { Ok(c.column(&sql.enqueue, values, Kind::Int).await?.len()) })
    }))
    .await
}

/// See `TokenAdmin::claim_deliveries`: one statement marks and returns them.
pub async fn claim_deliveries(
    b: &impl Backend,
    now: SystemTime,
    claimer: &str,
    most: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let sql = Statements::of(b.dialect());
    let values = vec![
        int(millis(now)),
        int(millis(now + LEASE)),
        text(claimer.to_owned()),
        limit(most),
    ];
    b.run(Work::single(move |c| {
        Box::pin(async move {
            let rows = c.rows(&sql.claim, values, DELIVERY_KINDS).await?;
            let mut claimed = rows
                .into_iter()
                .map(delivery)
                .collect::<Result<Vec<_>, _>>()?;
            claimed.sort_by_key(|d| (d.next_at, d.id));
            Ok(claimed)
        })
    }))
    .await
}

/// See `TokenAdmin::finish_delivery`.
pub async fn finish_delivery(
    b: &impl Backend,
    id: i64,
    claimer: &str,
    attempt: &Attempt,
) -> Result<bool, StoreError> {
    let sql = Statements::of(b.dialect());
    let values = vec![
        int(id),
        text(claimer.to_owned()),
        text(attempt.state.as_str().to_owned()),
        int(millis(attempt.next_at)),
        Value::Int(attempt.status.map(i64::from)),
        text(attempt.error.clone()),
    ];
    b.run(Work::single(move |c| {
        Box::pin(async move { Ok(!c.column(&sql.finish, values, Kind::Int).await?.is_empty()) })
    }))
    .await
}

/// See `TokenAdmin::prune_deliveries`.
pub async fn prune_deliveries(b: &impl Backend, before: SystemTime) -> Result<u64, StoreError> {
    let sql = Statements::of(b.dialect());
    let values = vec![int(millis(before))];
    b.run(Work::single(move |c| {
        Box::pin(async move {
            let gone = c.column(&sql.prune, values, Kind::Int).await?;
            Ok(gone.len() as u64)
        })
    }))
    .await
}

/// See `TokenAdmin::deliveries`.
pub async fn deliveries(
    b: &impl Backend,
    failed_only: bool,
    most: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let sql = Statements::of(b.dialect());
    let values = vec![int(i64::from(failed_only)), limit(most)];
    b.run(Work::single(move |c| {
        Box::pin(async move {
            let rows = c.rows(&sql.log, values, DELIVERY_KINDS).await?;
            rows.into_iter().map(delivery).collect()
        })
    }))
    .await
}
