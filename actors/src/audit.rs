//! The audit trail: who did what to which record, when, from where, and with what outcome.
//!
//! Entries are append-only (the database refuses UPDATE, DELETE and TRUNCATE) and hash-chained per
//! tenant: `hash = SHA-256(prev_hash || canonical content)`, where the canonical content is the JSON
//! array built by [`canonical_content`]. Changing, removing or reordering any entry breaks the chain
//! at that entry, which [`verify_chain`] reports. Appending takes the tenant's chain head with a row
//! lock inside the caller's transaction, so an entry commits exactly when the change it records does.

use chrono::{DateTime, SubsecRound, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use crate::domain::Caller;

/// The hash that precedes a tenant's first entry.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Denied,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// One thing to record. Build it with [`AuditRecord::by_caller`] or [`AuditRecord::by_system`].
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub actor_kind: &'static str,
    pub actor_id: String,
    pub actor_role: Option<String>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub patient_id: Option<Uuid>,
    pub source_addr: Option<String>,
    pub outcome: Outcome,
    pub detail: Value,
}

impl AuditRecord {
    pub fn by_caller(caller: &Caller, action: &str, resource_type: &str, resource_id: impl ToString) -> AuditRecord {
        AuditRecord {
            actor_kind: "user",
            actor_id: caller.principal.user_id.to_string(),
            actor_role: Some(caller.principal.role.as_str().to_owned()),
            action: action.to_owned(),
            resource_type: resource_type.to_owned(),
            resource_id: Some(resource_id.to_string()),
            patient_id: None,
            source_addr: caller.source_addr.clone(),
            outcome: Outcome::Success,
            detail: json!({}),
        }
    }

    pub fn by_system(action: &str, resource_type: &str, resource_id: impl ToString) -> AuditRecord {
        AuditRecord {
            actor_kind: "system",
            actor_id: "hub".to_owned(),
            actor_role: None,
            action: action.to_owned(),
            resource_type: resource_type.to_owned(),
            resource_id: Some(resource_id.to_string()),
            patient_id: None,
            source_addr: None,
            outcome: Outcome::Success,
            detail: json!({}),
        }
    }

    pub fn patient(mut self, patient_id: Option<Uuid>) -> Self {
        self.patient_id = patient_id;
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// The exact bytes an entry's hash covers. Keep this stable: changing it invalidates every chain.
/// The timestamp is hashed as microseconds since the epoch (PostgreSQL's precision), `detail` as
/// compact JSON with sorted keys (how both serde_json and jsonb hand it back).
pub fn canonical_content(tenant_id: Uuid, seq: i64, at: DateTime<Utc>, record: &AuditRecord) -> Vec<u8> {
    let content = json!([
        tenant_id.to_string(),
        seq,
        at.timestamp_micros(),
        record.actor_kind,
        record.actor_id,
        record.actor_role,
        record.action,
        record.resource_type,
        record.resource_id,
        record.patient_id.map(|id| id.to_string()),
        record.source_addr,
        record.outcome.as_str(),
        record.detail,
    ]);
    serde_json::to_vec(&content).expect("JSON values always serialise")
}

pub fn chain_hash(prev_hash: &[u8], content: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(content);
    hasher.finalize().into()
}

/// Creates the tenant's chain head; called once, in the transaction that creates the tenant.
pub async fn start_chain(conn: &mut PgConnection, tenant_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO audit_heads (tenant_id, seq, hash) VALUES ($1, 0, $2) ON CONFLICT DO NOTHING")
        .bind(tenant_id)
        .bind(&GENESIS_HASH[..])
        .execute(conn)
        .await?;
    Ok(())
}

/// Appends `record` to the tenant's chain inside the caller's transaction and returns its seq.
/// The head row stays locked until that transaction ends, so keep the rest of it short.
pub async fn append(conn: &mut PgConnection, tenant_id: Uuid, record: &AuditRecord) -> Result<i64, sqlx::Error> {
    let head = sqlx::query("SELECT seq, hash FROM audit_heads WHERE tenant_id = $1 FOR UPDATE")
        .bind(tenant_id)
        .fetch_one(&mut *conn)
        .await?;
    let seq: i64 = head.get::<i64, _>("seq") + 1;
    let prev_hash: Vec<u8> = head.get("hash");
    // Truncated to microseconds so the hashed instant is exactly the stored one.
    let at = Utc::now().trunc_subsecs(6);
    let hash = chain_hash(&prev_hash, &canonical_content(tenant_id, seq, at, record));
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, seq, at, actor_kind, actor_id, actor_role, action, resource_type,
                                resource_id, patient_id, source_addr, outcome, detail, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(tenant_id)
    .bind(seq)
    .bind(at)
    .bind(record.actor_kind)
    .bind(&record.actor_id)
    .bind(&record.actor_role)
    .bind(&record.action)
    .bind(&record.resource_type)
    .bind(&record.resource_id)
    .bind(record.patient_id)
    .bind(&record.source_addr)
    .bind(record.outcome.as_str())
    .bind(&record.detail)
    .bind(&prev_hash)
    .bind(&hash[..])
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE audit_heads SET seq = $2, hash = $3 WHERE tenant_id = $1")
        .bind(tenant_id)
        .bind(seq)
        .bind(&hash[..])
        .execute(&mut *conn)
        .await?;
    Ok(seq)
}

/// Appends many entries to the tenant's chain in one statement, in order, inside the caller's
/// transaction (a bulk upload, a search that names many patients). Returns the last seq.
pub async fn append_many(conn: &mut PgConnection, tenant_id: Uuid, records: &[AuditRecord]) -> Result<i64, sqlx::Error> {
    let head = sqlx::query("SELECT seq, hash FROM audit_heads WHERE tenant_id = $1 FOR UPDATE")
        .bind(tenant_id)
        .fetch_one(&mut *conn)
        .await?;
    let mut seq: i64 = head.get("seq");
    let mut prev_hash: Vec<u8> = head.get("hash");
    if records.is_empty() {
        return Ok(seq);
    }
    let at = Utc::now().trunc_subsecs(6);
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        seq += 1;
        let hash = chain_hash(&prev_hash, &canonical_content(tenant_id, seq, at, record));
        rows.push((seq, std::mem::replace(&mut prev_hash, hash.to_vec()), hash.to_vec()));
    }
    let column = |f: &dyn Fn(&AuditRecord) -> Option<String>| records.iter().map(f).collect::<Vec<Option<String>>>();
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, seq, at, actor_kind, actor_id, actor_role, action, resource_type,
                                resource_id, patient_id, source_addr, outcome, detail, prev_hash, hash)
         SELECT $1, seq, $2, actor_kind, actor_id, actor_role, action, resource_type, resource_id, patient_id,
                source_addr, outcome, detail, prev_hash, hash
         FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::uuid[],
                     $11::text[], $12::text[], $13::jsonb[], $14::bytea[], $15::bytea[])
              AS entry (seq, actor_kind, actor_id, actor_role, action, resource_type, resource_id, patient_id,
                        source_addr, outcome, detail, prev_hash, hash)",
    )
    .bind(tenant_id)
    .bind(at)
    .bind(rows.iter().map(|(seq, _, _)| *seq).collect::<Vec<i64>>())
    .bind(column(&|r| Some(r.actor_kind.to_owned())))
    .bind(column(&|r| Some(r.actor_id.clone())))
    .bind(column(&|r| r.actor_role.clone()))
    .bind(column(&|r| Some(r.action.clone())))
    .bind(column(&|r| Some(r.resource_type.clone())))
    .bind(column(&|r| r.resource_id.clone()))
    .bind(records.iter().map(|r| r.patient_id).collect::<Vec<Option<Uuid>>>())
    .bind(column(&|r| r.source_addr.clone()))
    .bind(column(&|r| Some(r.outcome.as_str().to_owned())))
    .bind(records.iter().map(|r| r.detail.clone()).collect::<Vec<Value>>())
    .bind(rows.iter().map(|(_, prev, _)| prev.clone()).collect::<Vec<Vec<u8>>>())
    .bind(rows.iter().map(|(_, _, hash)| hash.clone()).collect::<Vec<Vec<u8>>>())
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE audit_heads SET seq = $2, hash = $3 WHERE tenant_id = $1")
        .bind(tenant_id)
        .bind(seq)
        .bind(&prev_hash)
        .execute(&mut *conn)
        .await?;
    Ok(seq)
}

/// Appends one entry in a transaction of its own (for things that change nothing else:
/// a refused request, a failed login, a read of patient data).
pub async fn record(pool: &PgPool, tenant_id: Uuid, record: &AuditRecord) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let seq = append(&mut tx, tenant_id, record).await?;
    tx.commit().await?;
    Ok(seq)
}

/// An entry as stored, for `GET /api/audit`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor_kind: String,
    pub actor_id: String,
    pub actor_role: Option<String>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub patient_id: Option<Uuid>,
    pub source_addr: Option<String>,
    pub outcome: String,
    pub detail: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// Filters for [`search`]; every one is optional and they combine with AND.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor_id: Option<String>,
    pub patient_id: Option<Uuid>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Only entries older than this seq (the previous page's `next_before_seq`).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

/// A page of a tenant's entries, newest first, and the cursor for the next page.
pub async fn search(pool: &PgPool, tenant_id: Uuid, filter: &AuditFilter) -> Result<(Vec<AuditEntry>, Option<i64>), sqlx::Error> {
    let mut query: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT seq, at, actor_kind, actor_id, actor_role, action, resource_type, resource_id, patient_id,
                source_addr, outcome, detail, prev_hash, hash FROM audit_log WHERE tenant_id = ",
    );
    query.push_bind(tenant_id);
    if let Some(actor_id) = &filter.actor_id {
        query.push(" AND actor_id = ").push_bind(actor_id.clone());
    }
    if let Some(patient_id) = filter.patient_id {
        query.push(" AND patient_id = ").push_bind(patient_id);
    }
    if let Some(action) = &filter.action {
        query.push(" AND action = ").push_bind(action.clone());
    }
    if let Some(resource_type) = &filter.resource_type {
        query.push(" AND resource_type = ").push_bind(resource_type.clone());
    }
    if let Some(resource_id) = &filter.resource_id {
        query.push(" AND resource_id = ").push_bind(resource_id.clone());
    }
    if let Some(from) = filter.from {
        query.push(" AND at >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        query.push(" AND at < ").push_bind(to);
    }
    if let Some(before) = filter.before_seq {
        query.push(" AND seq < ").push_bind(before);
    }
    // One more than asked tells whether another page exists.
    query.push(" ORDER BY seq DESC LIMIT ").push_bind(filter.limit + 1);
    let rows = query.build().fetch_all(pool).await?;
    let mut entries: Vec<AuditEntry> = rows
        .iter()
        .map(|row| AuditEntry {
            seq: row.get("seq"),
            at: row.get("at"),
            actor_kind: row.get("actor_kind"),
            actor_id: row.get("actor_id"),
            actor_role: row.get("actor_role"),
            action: row.get("action"),
            resource_type: row.get("resource_type"),
            resource_id: row.get("resource_id"),
            patient_id: row.get("patient_id"),
            source_addr: row.get("source_addr"),
            outcome: row.get("outcome"),
            detail: row.get("detail"),
            prev_hash: hex::encode(row.get::<Vec<u8>, _>("prev_hash")),
            hash: hex::encode(row.get::<Vec<u8>, _>("hash")),
        })
        .collect();
    let next_before_seq = if entries.len() as i64 > filter.limit {
        entries.truncate(filter.limit as usize);
        entries.last().map(|entry| entry.seq)
    } else {
        None
    };
    Ok((entries, next_before_seq))
}

/// The first entry at which a tenant's chain no longer holds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BrokenLink {
    pub seq: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub entries_checked: i64,
    pub head_seq: i64,
    pub first_broken: Option<BrokenLink>,
}

/// Walks the tenant's whole chain in order, recomputing every hash, and reports the first entry
/// whose content, link to its predecessor or position does not hold. Streams rows, so the memory
/// it needs does not grow with the trail.
pub async fn verify_chain(pool: &PgPool, tenant_id: Uuid) -> Result<VerifyReport, sqlx::Error> {
    let head: Option<(i64, Vec<u8>)> = sqlx::query_as("SELECT seq, hash FROM audit_heads WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_optional(pool)
        .await?;
    let (head_seq, head_hash) = head.unwrap_or((0, GENESIS_HASH.to_vec()));

    let mut rows = sqlx::query(
        "SELECT seq, at, actor_kind, actor_id, actor_role, action, resource_type, resource_id, patient_id,
                source_addr, outcome, detail, prev_hash, hash
         FROM audit_log WHERE tenant_id = $1 ORDER BY seq",
    )
    .bind(tenant_id)
    .fetch(pool);

    let mut expected_seq = 1i64;
    let mut prev_hash = GENESIS_HASH.to_vec();
    let mut checked = 0i64;
    let mut first_broken = None;
    while let Some(row) = rows.try_next().await? {
        let seq: i64 = row.get("seq");
        checked += 1;
        let stored_prev: Vec<u8> = row.get("prev_hash");
        let stored_hash: Vec<u8> = row.get("hash");
        let outcome = match row.get::<String, _>("outcome").as_str() {
            "success" => Outcome::Success,
            "denied" => Outcome::Denied,
            _ => Outcome::Failed,
        };
        let actor_kind = match row.get::<String, _>("actor_kind").as_str() {
            "user" => "user",
            "device" => "device",
            _ => "system",
        };
        let record = AuditRecord {
            actor_kind,
            actor_id: row.get("actor_id"),
            actor_role: row.get("actor_role"),
            action: row.get("action"),
            resource_type: row.get("resource_type"),
            resource_id: row.get("resource_id"),
            patient_id: row.get("patient_id"),
            source_addr: row.get("source_addr"),
            outcome,
            detail: row.get("detail"),
        };
        let at: DateTime<Utc> = row.get("at");
        let reason = if seq != expected_seq {
            Some(format!("entry {expected_seq} is missing (found {seq} next)"))
        } else if stored_prev != prev_hash {
            Some(format!("prev_hash does not match the hash of entry {}", seq - 1))
        } else if chain_hash(&stored_prev, &canonical_content(tenant_id, seq, at, &record))[..] != stored_hash[..] {
            Some("content does not match its hash (the entry was altered)".to_owned())
        } else {
            None
        };
        if let Some(reason) = reason {
            first_broken = Some(BrokenLink { seq: seq.min(expected_seq), reason });
            break;
        }
        prev_hash = stored_hash;
        expected_seq += 1;
    }
    drop(rows);
    if first_broken.is_none() && (expected_seq - 1 != head_seq || prev_hash != head_hash) {
        first_broken = Some(BrokenLink {
            seq: expected_seq,
            reason: format!(
                "the chain ends at entry {} but its head says {head_seq} (entries were removed from the end)",
                expected_seq - 1
            ),
        });
    }
    Ok(VerifyReport { ok: first_broken.is_none(), entries_checked: checked, head_seq, first_broken })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AuditRecord {
        AuditRecord::by_system("bed.status_changed", "bed", "b-1").detail(json!({"to": "free", "from": "cleaning"}))
    }

    #[test]
    fn canonical_content_is_deterministic_and_covers_every_field() {
        let tenant = Uuid::nil();
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let base = canonical_content(tenant, 7, at, &sample());
        assert_eq!(base, canonical_content(tenant, 7, at, &sample()));
        assert_ne!(base, canonical_content(tenant, 8, at, &sample()));
        assert_ne!(base, canonical_content(tenant, 7, at, &sample().outcome(Outcome::Denied)));
        assert_ne!(base, canonical_content(tenant, 7, at, &sample().patient(Some(Uuid::from_u128(1)))));
        let later = DateTime::from_timestamp_micros(1_700_000_000_123_457).unwrap();
        assert_ne!(base, canonical_content(tenant, 7, later, &sample()));
    }

    #[test]
    fn detail_key_order_does_not_change_the_hash() {
        let tenant = Uuid::nil();
        let at = DateTime::from_timestamp_micros(0).unwrap();
        let reordered: Value = serde_json::from_str(r#"{"from": "cleaning", "to": "free"}"#).unwrap();
        assert_eq!(
            canonical_content(tenant, 1, at, &sample()),
            canonical_content(tenant, 1, at, &sample().detail(reordered))
        );
    }

    #[test]
    fn each_hash_depends_on_the_previous_one() {
        let a = chain_hash(&GENESIS_HASH, b"one");
        let b = chain_hash(&a, b"two");
        assert_ne!(b, chain_hash(&GENESIS_HASH, b"two"));
    }
}
