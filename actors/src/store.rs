//! Persistence every actor commits through: the event log, topic sequences, snapshots, and the
//! single function that turns a command's transaction into an acknowledged fact.
//!
//! [`commit_command`] appends the domain event (taking the next number of its actor's stream and of
//! its live topic), the audit entry and, every N events, a snapshot, then commits. The event's
//! envelope is sent with `pg_notify` inside the same transaction: PostgreSQL delivers it only if the
//! transaction commits, and in commit order, which the topic's row lock makes equal to seq order.
//!
//! Every append first passes the tenant's lease fence ([`lease::check_fence`]): a node that lost the
//! tenant to another node commits nothing more for it.
//!
//! Lock order, for every transaction that writes events and audit entries: the tenant's lease row
//! (shared), then topic rows (in name order when there are several), the tenant's audit chain head
//! last. Two transactions that
//! took them the other way round would deadlock under load.

use std::time::Instant;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::audit::{self, AuditRecord};
use crate::error::ActorError;
use crate::lease;
use crate::metrics::ActorMetrics;

/// The PostgreSQL notification channel committed events are announced on.
pub const EVENTS_CHANNEL: &str = "medhub_events";

/// PostgreSQL refuses notification payloads of 8000 bytes or more; larger envelopes are announced
/// by reference and read back from the event log.
const MAX_INLINE_PAYLOAD: usize = 7800;

/// A domain event about to be committed.
#[derive(Debug, Clone)]
pub struct EventDraft {
    /// The actor's stream, e.g. `facility/<uuid>`.
    pub stream: String,
    /// The stream version the actor's state is at; the event becomes version + 1.
    pub expected_version: i64,
    /// The live topic it is published on, e.g. `tenant/demo/beds`.
    pub topic: String,
    pub event_type: &'static str,
    pub data: Value,
}

/// What the database acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub stream_seq: i64,
    pub topic_seq: i64,
    pub at: DateTime<Utc>,
}

/// The wire form of an event, `{type, topic, seq, ts, data}`, as WebSocket clients receive it.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub kind: String,
    pub topic: String,
    pub seq: i64,
    pub ts: String,
    pub data: Value,
}

pub fn format_ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Appends the event, the audit entry and (when given) the snapshot of the state after the event,
/// then commits. Returns only once PostgreSQL has committed: the caller may then acknowledge.
pub async fn commit_command(
    mut tx: Transaction<'static, Postgres>,
    tenant_id: Uuid,
    draft: &EventDraft,
    audit_record: &AuditRecord,
    snapshot_after: Option<&Value>,
    metrics: &ActorMetrics,
    actor: &str,
) -> Result<Committed, ActorError> {
    let started = Instant::now();
    let committed = append_event(&mut tx, tenant_id, draft).await?;
    if let Some(state) = snapshot_after {
        save_snapshot(&mut tx, tenant_id, &draft.stream, committed.stream_seq, state).await?;
    }
    audit::append(&mut tx, tenant_id, audit_record).await?;
    tx.commit().await?;
    metrics.commit_seconds.with_label_values(&[actor]).observe(started.elapsed().as_secs_f64());
    Ok(committed)
}

/// Appends one event to its stream and topic and announces it (delivered on commit).
pub async fn append_event(conn: &mut PgConnection, tenant_id: Uuid, draft: &EventDraft) -> Result<Committed, ActorError> {
    lease::check_fence(conn, tenant_id).await?;
    let at = Utc::now().trunc_subsecs(6);
    // The upsert takes the topic's row lock until commit: commits of one topic are serialised.
    let topic_seq: i64 = sqlx::query_scalar(
        "INSERT INTO topic_seqs (topic, seq) VALUES ($1, 1)
         ON CONFLICT (topic) DO UPDATE SET seq = topic_seqs.seq + 1 RETURNING seq",
    )
    .bind(&draft.topic)
    .fetch_one(&mut *conn)
    .await?;
    // A topic's own stream (copies, see `publish_copy`) is numbered by the topic.
    let stream_seq = if draft.stream == draft.topic { topic_seq } else { draft.expected_version + 1 };
    let inserted = sqlx::query(
        "INSERT INTO events (tenant_id, stream, stream_seq, topic, topic_seq, event_type, data, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(tenant_id)
    .bind(&draft.stream)
    .bind(stream_seq)
    .bind(&draft.topic)
    .bind(topic_seq)
    .bind(draft.event_type)
    .bind(&draft.data)
    .bind(at)
    .execute(&mut *conn)
    .await;
    if let Err(sqlx::Error::Database(db)) = &inserted {
        if db.is_unique_violation() {
            return Err(ActorError::Conflict(format!(
                "{} changed underneath this actor (version {stream_seq} already exists); retry",
                draft.stream
            )));
        }
    }
    inserted?;
    let envelope = Envelope {
        kind: draft.event_type.to_owned(),
        topic: draft.topic.clone(),
        seq: topic_seq,
        ts: format_ts(at),
        data: draft.data.clone(),
    };
    let mut payload = serde_json::to_string(&envelope).expect("envelopes serialise");
    if payload.len() > MAX_INLINE_PAYLOAD {
        payload = json!({"topic": draft.topic, "seq": topic_seq, "by_reference": true}).to_string();
    }
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(EVENTS_CHANNEL)
        .bind(payload)
        .execute(&mut *conn)
        .await?;
    Ok(Committed { stream_seq, topic_seq, at })
}

/// Publishes a copy of an event on a further topic (e.g. a patient's own feed), in the caller's
/// transaction. Copies form a stream of their own, named after the topic.
pub async fn publish_copy(conn: &mut PgConnection, tenant_id: Uuid, topic: &str, event_type: &'static str, data: &Value) -> Result<Committed, ActorError> {
    let draft = EventDraft { stream: topic.to_owned(), expected_version: 0, topic: topic.to_owned(), event_type, data: data.clone() };
    append_event(conn, tenant_id, &draft).await
}

/// Appends the first event of many new streams, all on one topic, in one statement (a bulk
/// upload). Only the last event is announced: the broker and every subscriber fill the run before it
/// from the event log, as they fill any gap, so a large upload does not flood the notification queue.
pub async fn append_new_streams(conn: &mut PgConnection, tenant_id: Uuid, topic: &str, event_type: &'static str, streams: &[(String, Value)]) -> Result<Vec<i64>, ActorError> {
    if streams.is_empty() {
        return Ok(Vec::new());
    }
    lease::check_fence(conn, tenant_id).await?;
    let at = Utc::now().trunc_subsecs(6);
    let count = streams.len() as i64;
    let last: i64 = sqlx::query_scalar(
        "INSERT INTO topic_seqs (topic, seq) VALUES ($1, $2)
         ON CONFLICT (topic) DO UPDATE SET seq = topic_seqs.seq + $2 RETURNING seq",
    )
    .bind(topic)
    .bind(count)
    .fetch_one(&mut *conn)
    .await?;
    let seqs: Vec<i64> = ((last - count + 1)..=last).collect();
    sqlx::query(
        "INSERT INTO events (tenant_id, stream, stream_seq, topic, topic_seq, event_type, data, created_at)
         SELECT $1, stream, 1, $2, topic_seq, $3, data, $4 FROM UNNEST($5::text[], $6::bigint[], $7::jsonb[]) AS e (stream, topic_seq, data)",
    )
    .bind(tenant_id)
    .bind(topic)
    .bind(event_type)
    .bind(at)
    .bind(streams.iter().map(|(stream, _)| stream.clone()).collect::<Vec<_>>())
    .bind(&seqs)
    .bind(streams.iter().map(|(_, data)| data.clone()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    let (_, data) = streams.last().expect("not empty");
    let envelope = Envelope { kind: event_type.to_owned(), topic: topic.to_owned(), seq: last, ts: format_ts(at), data: data.clone() };
    let mut payload = serde_json::to_string(&envelope).expect("envelopes serialise");
    if payload.len() > MAX_INLINE_PAYLOAD {
        payload = json!({"topic": topic, "seq": last, "by_reference": true}).to_string();
    }
    sqlx::query("SELECT pg_notify($1, $2)").bind(EVENTS_CHANNEL).bind(payload).execute(&mut *conn).await?;
    Ok(seqs)
}

pub async fn save_snapshot(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    stream: &str,
    stream_seq: i64,
    state: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO snapshots (stream, tenant_id, stream_seq, state) VALUES ($1, $2, $3, $4)
         ON CONFLICT (stream) DO UPDATE SET stream_seq = EXCLUDED.stream_seq, state = EXCLUDED.state, created_at = now()
         WHERE snapshots.stream_seq < EXCLUDED.stream_seq",
    )
    .bind(stream)
    .bind(tenant_id)
    .bind(stream_seq)
    .bind(state)
    .execute(conn)
    .await?;
    Ok(())
}

/// An event as read back for recovery.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub stream_seq: i64,
    pub event_type: String,
    pub data: Value,
}

/// What an actor recovers from: its latest snapshot (if any) and every event after it.
#[derive(Debug, Clone)]
pub struct StreamHistory {
    pub snapshot: Option<(i64, Value)>,
    pub events: Vec<StoredEvent>,
}

pub async fn load_stream(pool: &PgPool, tenant_id: Uuid, stream: &str) -> Result<StreamHistory, sqlx::Error> {
    let snapshot: Option<(i64, Value)> =
        sqlx::query_as("SELECT stream_seq, state FROM snapshots WHERE stream = $1 AND tenant_id = $2")
            .bind(stream)
            .bind(tenant_id)
            .fetch_optional(pool)
            .await?;
    let after = snapshot.as_ref().map_or(0, |(seq, _)| *seq);
    let events = sqlx::query(
        "SELECT stream_seq, event_type, data FROM events
         WHERE stream = $1 AND tenant_id = $2 AND stream_seq > $3 ORDER BY stream_seq",
    )
    .bind(stream)
    .bind(tenant_id)
    .bind(after)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| StoredEvent { stream_seq: row.get(0), event_type: row.get(1), data: row.get(2) })
    .collect();
    Ok(StreamHistory { snapshot, events })
}

/// The envelopes of `topic` with `after < seq <= up_to`, in order, at most `limit` of them.
pub async fn events_after(
    pool: &PgPool,
    topic: &str,
    after: i64,
    up_to: Option<i64>,
    limit: i64,
) -> Result<Vec<Envelope>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT event_type, topic_seq, created_at, data FROM events
         WHERE topic = $1 AND topic_seq > $2 AND ($3::bigint IS NULL OR topic_seq <= $3)
         ORDER BY topic_seq LIMIT $4",
    )
    .bind(topic)
    .bind(after)
    .bind(up_to)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Envelope {
            kind: row.get(0),
            topic: topic.to_owned(),
            seq: row.get(1),
            ts: format_ts(row.get(2)),
            data: row.get(3),
        })
        .collect())
}

/// The last seq handed out on `topic` (0 when nothing was ever published there).
pub async fn topic_head(conn: &mut PgConnection, topic: &str) -> Result<i64, sqlx::Error> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM topic_seqs WHERE topic = $1")
        .bind(topic)
        .fetch_optional(conn)
        .await?;
    Ok(seq.unwrap_or(0))
}
