//! The `InventoryBatch` actor: one per medication batch at a pharmacy, the single writer of its
//! units. Units are on hand until they are dispensed, adjusted (with a reason) or removed; some of
//! the units on hand are reserved for prescriptions. The actor never lets reserved exceed on hand,
//! nor on hand go below zero, and never reserves from a batch that is expired or recalled.
//!
//! Prescriptions draw first-expiry-first-out across batches (see `pharmacy`): they ask the batches
//! of their medication, earliest expiry first, each for what it can give. Each batch answers from
//! its own committed state, one request at a time, so concurrent prescriptions can never take the
//! same unit and a later batch is only touched once the earlier ones had nothing left.
//!
//! Every change is one transaction: the batch row (read model), reservation and dispense rows, the
//! event on the pharmacy's stock topic, the audit entry, a low-stock alert when the medication's
//! available units at the pharmacy fall to its reorder point, and every N events a snapshot.

use std::collections::BTreeMap;

use actix::prelude::*;
use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool, Row};
use tracing::{info, info_span, Instrument};
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::domain::{Caller, TenantSlug};
use crate::durable::{self, Core, DurableActor, DurableState, Reply};
use crate::error::ActorError;
use crate::metrics::ActorMetrics;
use crate::store::{self, Committed, EventDraft};
use crate::topics;

pub const ACTOR: &str = "inventory";

fn invalid(field: &'static str, detail: impl Into<String>) -> ActorError {
    ActorError::Invalid { field, detail: detail.into() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Active,
    Recalled,
    Removed,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Active => "active",
            BatchStatus::Recalled => "recalled",
            BatchStatus::Removed => "removed",
        }
    }
}

/// Why units were added or taken away outside of dispensing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustReason {
    /// A stock count found a different number.
    Count,
    Damage,
    Theft,
    /// Written off because it expired.
    Expired,
    /// A receiving or data-entry mistake put right.
    Correction,
}

/// A batch number as printed on the pack: 1 to 40 of letters, digits, `-`, `/`, `.`.
pub fn parse_batch_number(value: &str) -> Result<String, ActorError> {
    let value = value.trim();
    let ok = (1..=40).contains(&value.len()) && value.chars().all(|c| c.is_ascii_alphanumeric() || "-/.".contains(c));
    if ok {
        Ok(value.to_uppercase())
    } else {
        Err(invalid("batch_number", format!("{value:?} is not a batch number (1 to 40 letters, digits, '-', '/', '.')")))
    }
}

/// A batch as its actor holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub id: Uuid,
    pub pharmacy_id: Uuid,
    pub medication_id: Uuid,
    pub batch_number: String,
    pub expiry_date: NaiveDate,
    pub location: Option<String>,
    pub on_hand: i64,
    /// Units held per prescription.
    pub reservations: BTreeMap<Uuid, i64>,
    pub status: BatchStatus,
    pub version: i64,
    pub received_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Batch {
    pub fn reserved(&self) -> i64 {
        self.reservations.values().sum()
    }

    /// Units that may still be reserved: none once expired (on or after the expiry date) or recalled.
    pub fn available(&self, today: NaiveDate) -> i64 {
        if self.status == BatchStatus::Active && today < self.expiry_date {
            self.on_hand - self.reserved()
        } else {
            0
        }
    }
}

/// What a batch event says happened; `data` of its envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum BatchChange {
    Received,
    Adjusted { delta: i64, reason: AdjustReason, note: Option<String> },
    Reserved { prescription_id: Uuid, quantity: i64 },
    Released { prescription_id: Uuid, quantity: i64 },
    Dispensed { prescription_id: Uuid, quantity: i64, dispense_id: Uuid },
    Recalled { reason: String, released: BTreeMap<Uuid, i64> },
    Removed { reason: String, quantity: i64 },
}

impl BatchChange {
    fn event_type(&self) -> &'static str {
        match self {
            BatchChange::Received => BATCH_RECEIVED,
            BatchChange::Adjusted { .. } => BATCH_ADJUSTED,
            BatchChange::Reserved { .. } => BATCH_RESERVED,
            BatchChange::Released { .. } => BATCH_RELEASED,
            BatchChange::Dispensed { .. } => BATCH_DISPENSED,
            BatchChange::Recalled { .. } => BATCH_RECALLED,
            BatchChange::Removed { .. } => BATCH_REMOVED,
        }
    }
}

pub const BATCH_RECEIVED: &str = "batch.received";
pub const BATCH_ADJUSTED: &str = "batch.adjusted";
pub const BATCH_RESERVED: &str = "batch.reserved";
pub const BATCH_RELEASED: &str = "batch.released";
pub const BATCH_DISPENSED: &str = "batch.dispensed";
pub const BATCH_RECALLED: &str = "batch.recalled";
pub const BATCH_REMOVED: &str = "batch.removed";

/// The state after `change`: the one definition of what each change means (live and in recovery).
pub fn apply_change(batch: &Batch, change: &BatchChange, at: DateTime<Utc>) -> Result<Batch, String> {
    let mut next = batch.clone();
    match change {
        BatchChange::Received => {}
        BatchChange::Adjusted { delta, .. } => next.on_hand += delta,
        BatchChange::Reserved { prescription_id, quantity } => *next.reservations.entry(*prescription_id).or_default() += quantity,
        BatchChange::Released { prescription_id, quantity } | BatchChange::Dispensed { prescription_id, quantity, .. } => {
            let held = next.reservations.get(prescription_id).copied().unwrap_or(0);
            if held < *quantity {
                return Err(format!("{quantity} units of prescription {prescription_id} taken but only {held} held"));
            }
            if held == *quantity {
                next.reservations.remove(prescription_id);
            } else {
                next.reservations.insert(*prescription_id, held - quantity);
            }
            if matches!(change, BatchChange::Dispensed { .. }) {
                next.on_hand -= quantity;
            }
        }
        BatchChange::Recalled { .. } => {
            next.reservations.clear();
            next.status = BatchStatus::Recalled;
        }
        BatchChange::Removed { quantity, .. } => {
            next.on_hand -= quantity;
            next.status = BatchStatus::Removed;
        }
    }
    if next.on_hand < 0 || next.reserved() > next.on_hand {
        return Err(format!("batch {} would hold {} on hand with {} reserved", batch.id, next.on_hand, next.reserved()));
    }
    next.version += 1;
    next.updated_at = at;
    Ok(next)
}

/// Replays a stored event onto the state it follows.
pub fn apply(state: Option<Batch>, stream_seq: i64, event_type: &str, data: &Value) -> Result<Batch, String> {
    if event_type == BATCH_RECEIVED {
        let mut batch: Batch = serde_json::from_value(data["batch"].clone()).map_err(|e| format!("bad {event_type}: {e}"))?;
        batch.version = stream_seq;
        return Ok(batch);
    }
    let batch = state.ok_or_else(|| format!("{event_type} before {BATCH_RECEIVED}"))?;
    let change: BatchChange = serde_json::from_value(data["change"].clone()).map_err(|e| format!("bad {event_type}: {e}"))?;
    let at: DateTime<Utc> = serde_json::from_value(data["at"].clone()).map_err(|e| format!("bad {event_type} time: {e}"))?;
    let mut next = apply_change(&batch, &change, at)?;
    next.version = stream_seq;
    Ok(next)
}

pub fn stream_name(batch_id: Uuid) -> String {
    format!("batch/{batch_id}")
}

/// The event data of a change: the change, when, and the batch's numbers after it (what a stock
/// board needs to update one row without asking).
fn event_data(change: &BatchChange, next: &Batch) -> Value {
    json!({
        "change": change, "at": next.updated_at, "batch_id": next.id, "pharmacy_id": next.pharmacy_id,
        "medication_id": next.medication_id, "batch_number": next.batch_number, "expiry_date": next.expiry_date,
        "on_hand": next.on_hand, "reserved": next.reserved(), "status": next.status,
    })
}

pub async fn recover(pool: &PgPool, tenant_id: Uuid, batch_id: Uuid) -> Result<Option<Batch>, ActorError> {
    let history = store::load_stream(pool, tenant_id, &stream_name(batch_id)).await?;
    let unreadable = |e: String| ActorError::Unavailable(format!("batch {batch_id} history unreadable: {e}"));
    let mut state: Option<Batch> = match history.snapshot {
        Some((seq, value)) => {
            let mut batch: Batch = serde_json::from_value(value).map_err(|e| unreadable(e.to_string()))?;
            batch.version = seq;
            Some(batch)
        }
        None => None,
    };
    for event in &history.events {
        state = Some(apply(state, event.stream_seq, &event.event_type, &event.data).map_err(unreadable)?);
    }
    Ok(state)
}

// ---------------------------------------------------------------------------------------------
// Persistence

async fn write_batch_row(conn: &mut PgConnection, tenant_id: Uuid, batch: &Batch) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO inventory_batches (id, tenant_id, pharmacy_id, medication_id, batch_number, expiry_date, on_hand, reserved,
                                        status, location, version, received_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (id) DO UPDATE SET on_hand = EXCLUDED.on_hand, reserved = EXCLUDED.reserved, status = EXCLUDED.status,
                                        version = EXCLUDED.version, updated_at = EXCLUDED.updated_at",
    )
    .bind(batch.id)
    .bind(tenant_id)
    .bind(batch.pharmacy_id)
    .bind(batch.medication_id)
    .bind(&batch.batch_number)
    .bind(batch.expiry_date)
    .bind(batch.on_hand as i32)
    .bind(batch.reserved() as i32)
    .bind(batch.status.as_str())
    .bind(&batch.location)
    .bind(batch.version)
    .bind(batch.received_at)
    .bind(batch.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_reservation(conn: &mut PgConnection, tenant_id: Uuid, batch: &Batch, prescription_id: Uuid) -> Result<(), sqlx::Error> {
    match batch.reservations.get(&prescription_id) {
        Some(quantity) => {
            sqlx::query(
                "INSERT INTO reservations (prescription_id, batch_id, tenant_id, quantity) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (prescription_id, batch_id) DO UPDATE SET quantity = EXCLUDED.quantity",
            )
            .bind(prescription_id)
            .bind(batch.id)
            .bind(tenant_id)
            .bind(*quantity as i32)
            .execute(conn)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM reservations WHERE prescription_id = $1 AND batch_id = $2")
                .bind(prescription_id)
                .bind(batch.id)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

/// Raises a low-stock alert (once, until acknowledged) when the medication's available units at
/// the pharmacy are at or below its reorder point; publishes it on the stock topic.
pub(crate) async fn check_low_stock(conn: &mut PgConnection, tenant_id: Uuid, tenant: &TenantSlug, pharmacy_id: Uuid, medication_id: Uuid) -> Result<(), ActorError> {
    let row = sqlx::query(
        "SELECT r.reorder_point,
                COALESCE((SELECT sum(b.on_hand - b.reserved) FROM inventory_batches b
                          WHERE b.tenant_id = $1 AND b.pharmacy_id = $2 AND b.medication_id = $3
                            AND b.status = 'active' AND b.expiry_date > current_date), 0)::bigint AS available
         FROM reorder_points r WHERE r.tenant_id = $1 AND r.pharmacy_id = $2 AND r.medication_id = $3",
    )
    .bind(tenant_id)
    .bind(pharmacy_id)
    .bind(medication_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(()) };
    let (reorder_point, available): (i32, i64) = (row.get("reorder_point"), row.get("available"));
    if available > i64::from(reorder_point) {
        return Ok(());
    }
    let alert_id = Uuid::new_v4();
    let detail = json!({"available": available, "reorder_point": reorder_point});
    let inserted = sqlx::query(
        "INSERT INTO stock_alerts (id, tenant_id, pharmacy_id, medication_id, kind, detail, status, raised_at)
         VALUES ($1, $2, $3, $4, 'low_stock', $5, 'open', now()) ON CONFLICT DO NOTHING",
    )
    .bind(alert_id)
    .bind(tenant_id)
    .bind(pharmacy_id)
    .bind(medication_id)
    .bind(&detail)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 1 {
        let data = json!({"id": alert_id, "kind": "low_stock", "pharmacy_id": pharmacy_id, "medication_id": medication_id, "detail": detail});
        store::publish_copy(conn, tenant_id, &topics::stock_topic(tenant, pharmacy_id), "stock.alert", &data).await?;
    }
    Ok(())
}

struct Plan {
    change: BatchChange,
    next: Batch,
    audit: AuditRecord,
    /// Dispensing writes a dispense row: (dispense id, patient, unit price, by).
    dispense: Option<(Uuid, Uuid, String, Uuid)>,
    first: bool,
}

async fn commit_plan(pool: &PgPool, tenant_id: Uuid, tenant: &TenantSlug, plan: &Plan, snapshot_every: i64, metrics: &ActorMetrics) -> Result<Committed, ActorError> {
    let mut tx = pool.begin().await?;
    let next = &plan.next;
    match write_batch_row(&mut tx, tenant_id, next).await {
        Err(sqlx::Error::Database(db)) if plan.first && db.is_unique_violation() => {
            return Err(ActorError::Conflict(format!("batch {} of that medication was already received at this pharmacy", next.batch_number)));
        }
        other => other?,
    }
    match &plan.change {
        BatchChange::Reserved { prescription_id, .. } | BatchChange::Released { prescription_id, .. } => {
            write_reservation(&mut tx, tenant_id, next, *prescription_id).await?;
        }
        BatchChange::Dispensed { prescription_id, quantity, dispense_id } => {
            write_reservation(&mut tx, tenant_id, next, *prescription_id).await?;
            let (_, patient_id, unit_price, by) = plan.dispense.as_ref().expect("a dispense plan names its patient");
            sqlx::query(
                "INSERT INTO dispenses (id, tenant_id, prescription_id, patient_id, batch_id, medication_id, quantity, unit_price, dispensed_by, dispensed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric(12,2), $9, $10)",
            )
            .bind(dispense_id)
            .bind(tenant_id)
            .bind(prescription_id)
            .bind(patient_id)
            .bind(next.id)
            .bind(next.medication_id)
            .bind(*quantity as i32)
            .bind(unit_price)
            .bind(by)
            .bind(next.updated_at)
            .execute(&mut *tx)
            .await?;
        }
        BatchChange::Recalled { .. } => {
            sqlx::query("DELETE FROM reservations WHERE batch_id = $1").bind(next.id).execute(&mut *tx).await?;
            let (alert_id, detail) = (Uuid::new_v4(), json!({"reason": plan.audit.detail["reason"], "batch_number": next.batch_number}));
            sqlx::query(
                "INSERT INTO stock_alerts (id, tenant_id, pharmacy_id, medication_id, batch_id, kind, detail, status, raised_at)
                 VALUES ($1, $2, $3, $4, $5, 'recall', $6, 'open', now())",
            )
            .bind(alert_id)
            .bind(tenant_id)
            .bind(next.pharmacy_id)
            .bind(next.medication_id)
            .bind(next.id)
            .bind(&detail)
            .execute(&mut *tx)
            .await?;
            let data = json!({"id": alert_id, "kind": "recall", "pharmacy_id": next.pharmacy_id, "medication_id": next.medication_id, "batch_id": next.id, "detail": detail});
            store::publish_copy(&mut tx, tenant_id, &topics::stock_topic(tenant, next.pharmacy_id), "stock.alert", &data).await?;
        }
        _ => {}
    }
    check_low_stock(&mut tx, tenant_id, tenant, next.pharmacy_id, next.medication_id).await?;
    let draft = EventDraft {
        stream: stream_name(next.id),
        expected_version: next.version - 1,
        topic: topics::stock_topic(tenant, next.pharmacy_id),
        event_type: plan.change.event_type(),
        data: if plan.first { json!({"batch": next, "at": next.updated_at}) } else { event_data(&plan.change, next) },
    };
    let snapshot = (next.version % snapshot_every.max(1) == 0).then(|| json!(next));
    store::commit_command(tx, tenant_id, &draft, &plan.audit, snapshot.as_ref(), metrics, ACTOR).await
}

/// A batch to receive at a pharmacy.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub pharmacy_id: Uuid,
    pub medication_id: Uuid,
    pub batch_number: String,
    pub expiry_date: NaiveDate,
    pub quantity: i64,
    pub location: Option<String>,
}

impl NewBatch {
    pub fn new(pharmacy_id: Uuid, medication_id: Uuid, batch_number: &str, expiry_date: NaiveDate, quantity: i64, location: Option<String>) -> Result<NewBatch, ActorError> {
        let batch_number = parse_batch_number(batch_number)?;
        if !(1..=1_000_000).contains(&quantity) {
            return Err(invalid("quantity", "quantity must be between 1 and 1,000,000"));
        }
        let location = location.map(|l| l.trim().to_owned()).filter(|l| !l.is_empty());
        if location.as_ref().is_some_and(|l| l.chars().count() > 80) {
            return Err(invalid("location", "location is at most 80 characters"));
        }
        Ok(NewBatch { pharmacy_id, medication_id, batch_number, expiry_date, quantity, location })
    }

    fn build(&self) -> Batch {
        let at = Utc::now().trunc_subsecs(6);
        Batch {
            id: Uuid::new_v4(),
            pharmacy_id: self.pharmacy_id,
            medication_id: self.medication_id,
            batch_number: self.batch_number.clone(),
            expiry_date: self.expiry_date,
            location: self.location.clone(),
            on_hand: self.quantity,
            reservations: BTreeMap::new(),
            status: BatchStatus::Active,
            version: 1,
            received_at: at,
            updated_at: at,
        }
    }
}

/// Checks that the pharmacy and the medication belong to the tenant.
pub async fn check_refs(pool: &PgPool, tenant_id: Uuid, pharmacy_id: Uuid, medication_id: Uuid) -> Result<(), ActorError> {
    let (pharmacy, medication): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM facilities WHERE id = $1 AND tenant_id = $3),
                EXISTS (SELECT 1 FROM medications WHERE id = $2 AND tenant_id = $3)",
    )
    .bind(pharmacy_id)
    .bind(medication_id)
    .bind(tenant_id)
    .fetch_one(pool)
    .await?;
    if !pharmacy {
        return Err(invalid("pharmacy_id", "no facility with that id in this tenant"));
    }
    if !medication {
        return Err(invalid("medication_id", "no medication with that id in this tenant"));
    }
    Ok(())
}

/// Receives a new batch (its first event). Called by the tenant supervisor, which then starts the
/// batch's actor.
pub(crate) async fn receive(pool: &PgPool, tenant_id: Uuid, tenant: &TenantSlug, caller: &Caller, new: &NewBatch, snapshot_every: i64, metrics: &ActorMetrics) -> Result<Batch, ActorError> {
    check_refs(pool, tenant_id, new.pharmacy_id, new.medication_id).await?;
    let batch = new.build();
    let plan = Plan {
        change: BatchChange::Received,
        audit: AuditRecord::by_caller(caller, "batch.receive", "batch", batch.id).detail(json!({
            "pharmacy_id": batch.pharmacy_id, "medication_id": batch.medication_id, "batch_number": batch.batch_number,
            "expiry_date": batch.expiry_date, "quantity": batch.on_hand,
        })),
        next: batch,
        dispense: None,
        first: true,
    };
    commit_plan(pool, tenant_id, tenant, &plan, snapshot_every, metrics).await?;
    Ok(plan.next)
}

/// Receives many batches in one transaction (an upload): rows, first events, audit entries, and
/// one low-stock check per medication touched. Batches already received (same pharmacy, medication
/// and batch number) are skipped, so the same file twice does not double the stock. Returns the
/// batches created and the numbers of those skipped.
pub async fn receive_many(pool: &PgPool, tenant_id: Uuid, tenant: &TenantSlug, caller: &Caller, batches: &[NewBatch]) -> Result<(Vec<Batch>, Vec<usize>), ActorError> {
    let mut tx = pool.begin().await?;
    let built: Vec<Batch> = batches.iter().map(NewBatch::build).collect();
    // Insert what is new in one statement; the conflict target is the batch's identity.
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO inventory_batches (id, tenant_id, pharmacy_id, medication_id, batch_number, expiry_date, on_hand, reserved,
                                        status, location, version, received_at, updated_at)
         SELECT id, $1, pharmacy_id, medication_id, batch_number, expiry_date, on_hand, 0, 'active', location, 1, $8, $8
         FROM UNNEST($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::date[], $7::int[], $9::text[])
              AS b (id, pharmacy_id, medication_id, batch_number, expiry_date, on_hand, location)
         ON CONFLICT (tenant_id, pharmacy_id, batch_number, medication_id) DO NOTHING
         RETURNING id",
    )
    .bind(tenant_id)
    .bind(built.iter().map(|b| b.id).collect::<Vec<_>>())
    .bind(built.iter().map(|b| b.pharmacy_id).collect::<Vec<_>>())
    .bind(built.iter().map(|b| b.medication_id).collect::<Vec<_>>())
    .bind(built.iter().map(|b| b.batch_number.clone()).collect::<Vec<_>>())
    .bind(built.iter().map(|b| b.expiry_date).collect::<Vec<_>>())
    .bind(built.iter().map(|b| b.on_hand as i32).collect::<Vec<_>>())
    .bind(built.first().map_or_else(Utc::now, |b| b.received_at))
    .bind(built.iter().map(|b| b.location.clone()).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    let inserted: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
    let (mut created, mut skipped) = (Vec::new(), Vec::new());
    for (index, batch) in built.into_iter().enumerate() {
        if inserted.contains(&batch.id) {
            created.push(batch);
        } else {
            skipped.push(index);
        }
    }
    let mut by_pharmacy: BTreeMap<Uuid, Vec<(String, Value)>> = BTreeMap::new();
    for batch in &created {
        by_pharmacy.entry(batch.pharmacy_id).or_default().push((stream_name(batch.id), json!({"batch": batch, "at": batch.updated_at})));
    }
    for (pharmacy_id, streams) in &by_pharmacy {
        store::append_new_streams(&mut tx, tenant_id, &topics::stock_topic(tenant, *pharmacy_id), BATCH_RECEIVED, streams).await?;
    }
    let records: Vec<AuditRecord> = created
        .iter()
        .map(|batch| {
            AuditRecord::by_caller(caller, "batch.receive", "batch", batch.id).detail(json!({
                "pharmacy_id": batch.pharmacy_id, "medication_id": batch.medication_id, "batch_number": batch.batch_number,
                "expiry_date": batch.expiry_date, "quantity": batch.on_hand, "via": "upload",
            }))
        })
        .collect();
    let touched: std::collections::BTreeSet<(Uuid, Uuid)> = created.iter().map(|b| (b.pharmacy_id, b.medication_id)).collect();
    for (pharmacy_id, medication_id) in touched {
        check_low_stock(&mut tx, tenant_id, tenant, pharmacy_id, medication_id).await?;
    }
    crate::audit::append_many(&mut tx, tenant_id, &records).await?;
    tx.commit().await?;
    Ok((created, skipped))
}

// ---------------------------------------------------------------------------------------------
// The actor

pub struct InventoryBatchActor {
    core: Core<Batch>,
}

impl DurableState for Batch {
    fn recover(pool: PgPool, tenant_id: Uuid, id: Uuid) -> impl std::future::Future<Output = Result<Option<Batch>, ActorError>> + Send + 'static {
        async move { recover(&pool, tenant_id, id).await }
    }
}

impl InventoryBatchActor {
    pub(crate) fn new(tenant_id: Uuid, tenant: TenantSlug, state: Batch, pool: PgPool, snapshot_every: i64, metrics: ActorMetrics) -> Self {
        InventoryBatchActor { core: Core::new(tenant_id, tenant, state.id, state, pool, snapshot_every, metrics) }
    }

    fn plan(&self, change: BatchChange, audit: AuditRecord) -> Result<Plan, ActorError> {
        let batch = self.current()?;
        let next = apply_change(batch, &change, Utc::now().trunc_subsecs(6)).map_err(ActorError::Conflict)?;
        Ok(Plan { change, next, audit, dispense: None, first: false })
    }

    fn execute<T: 'static>(&mut self, plan: Plan, reply: impl FnOnce(&Batch) -> T + 'static) -> Reply<Self, T> {
        let core = &self.core;
        let (pool, tenant_id, tenant, every, metrics) = (core.pool.clone(), core.tenant_id, core.tenant.clone(), core.snapshot_every, core.metrics.clone());
        let span = info_span!("command", tenant = %core.tenant, actor = ACTOR, batch_id = %core.id, event = plan.change.event_type());
        let commit = async move {
            let committed = commit_plan(&pool, tenant_id, &tenant, &plan, every, &metrics).await?;
            Ok((plan.next, committed))
        }
        .instrument(span);
        durable::commit_then_install(self, commit, move |actor: &mut Self, next: Batch, _| {
            let answer = reply(&next);
            actor.core.state = Some(next);
            answer
        })
    }

    fn run<T: 'static>(&mut self, planned: Result<Plan, ActorError>, reply: impl FnOnce(&Batch) -> T + 'static) -> Reply<Self, T> {
        match planned {
            Ok(plan) => self.execute(plan, reply),
            Err(error) => durable::refuse(self, error),
        }
    }
}

impl Actor for InventoryBatchActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        durable::start(self, ctx);
    }
}

impl actix::Supervised for InventoryBatchActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        durable::restarting(self);
    }
}

impl DurableActor for InventoryBatchActor {
    type State = Batch;
    const KIND: &'static str = ACTOR;

    fn core(&self) -> &Core<Batch> {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Core<Batch> {
        &mut self.core
    }

    /// A conflict the actor did not foresee means its state is not what was committed: reload.
    fn commit_failed(&mut self, error: &ActorError, ctx: &mut Context<Self>) {
        if matches!(error, ActorError::Conflict(_)) {
            info!(tenant = %self.core.tenant, actor = ACTOR, batch_id = %self.core.id, "batch changed elsewhere; reloading");
            durable::reload(self, ctx);
        }
    }
}

#[derive(Message)]
#[rtype(result = "Result<Batch, ActorError>")]
pub struct GetBatch;

impl Handler<GetBatch> for InventoryBatchActor {
    type Result = Result<Batch, ActorError>;
    fn handle(&mut self, _msg: GetBatch, _ctx: &mut Context<Self>) -> Self::Result {
        self.current().cloned()
    }
}

/// Reserves up to `quantity` units for a prescription; answers with how many it reserved (0 when
/// the batch is expired, recalled, removed or empty).
#[derive(Message)]
#[rtype(result = "Result<i64, ActorError>")]
pub struct Reserve {
    pub caller: Caller,
    pub prescription_id: Uuid,
    pub patient_id: Uuid,
    pub quantity: i64,
}

impl Handler<Reserve> for InventoryBatchActor {
    type Result = Reply<Self, i64>;

    fn handle(&mut self, msg: Reserve, _ctx: &mut Context<Self>) -> Self::Result {
        let available = match self.current() {
            Ok(batch) => batch.available(Utc::now().date_naive()),
            Err(error) => return durable::refuse(self, error),
        };
        let quantity = msg.quantity.min(available);
        if quantity <= 0 {
            return durable::answer(0);
        }
        let change = BatchChange::Reserved { prescription_id: msg.prescription_id, quantity };
        let audit = AuditRecord::by_caller(&msg.caller, "batch.reserve", "batch", self.core.id)
            .patient(Some(msg.patient_id))
            .detail(json!({"prescription_id": msg.prescription_id, "quantity": quantity}));
        let planned = self.plan(change, audit);
        self.run(planned, move |_| quantity)
    }
}

/// Releases what a prescription holds here (all of it, or `quantity`); answers with the units released.
#[derive(Message)]
#[rtype(result = "Result<i64, ActorError>")]
pub struct Release {
    pub caller: Caller,
    pub prescription_id: Uuid,
    pub patient_id: Uuid,
    pub quantity: Option<i64>,
}

impl Handler<Release> for InventoryBatchActor {
    type Result = Reply<Self, i64>;

    fn handle(&mut self, msg: Release, _ctx: &mut Context<Self>) -> Self::Result {
        let held = match self.current() {
            Ok(batch) => batch.reservations.get(&msg.prescription_id).copied().unwrap_or(0),
            Err(error) => return durable::refuse(self, error),
        };
        let quantity = msg.quantity.unwrap_or(held).min(held);
        if quantity <= 0 {
            return durable::answer(0);
        }
        let change = BatchChange::Released { prescription_id: msg.prescription_id, quantity };
        let audit = AuditRecord::by_caller(&msg.caller, "batch.release", "batch", self.core.id)
            .patient(Some(msg.patient_id))
            .detail(json!({"prescription_id": msg.prescription_id, "quantity": quantity}));
        let planned = self.plan(change, audit);
        self.run(planned, move |_| quantity)
    }
}

/// Turns up to `quantity` units a prescription holds here into a dispense; answers with the units
/// dispensed.
#[derive(Message)]
#[rtype(result = "Result<i64, ActorError>")]
pub struct Dispense {
    pub caller: Caller,
    pub prescription_id: Uuid,
    pub patient_id: Uuid,
    pub quantity: i64,
    /// The medication's unit price as an exact decimal string ("12.50").
    pub unit_price: String,
}

impl Handler<Dispense> for InventoryBatchActor {
    type Result = Reply<Self, i64>;

    fn handle(&mut self, msg: Dispense, _ctx: &mut Context<Self>) -> Self::Result {
        let held = match self.current() {
            Ok(batch) => batch.reservations.get(&msg.prescription_id).copied().unwrap_or(0),
            Err(error) => return durable::refuse(self, error),
        };
        let quantity = msg.quantity.min(held);
        if quantity <= 0 {
            return durable::answer(0);
        }
        let dispense_id = Uuid::new_v4();
        let change = BatchChange::Dispensed { prescription_id: msg.prescription_id, quantity, dispense_id };
        let audit = AuditRecord::by_caller(&msg.caller, "batch.dispense", "batch", self.core.id)
            .patient(Some(msg.patient_id))
            .detail(json!({"prescription_id": msg.prescription_id, "quantity": quantity, "dispense_id": dispense_id}));
        let planned = self.plan(change, audit).map(|mut plan| {
            plan.dispense = Some((dispense_id, msg.patient_id, msg.unit_price.clone(), msg.caller.principal.user_id));
            plan
        });
        self.run(planned, move |_| quantity)
    }
}

/// Adds or takes away units with a reason (a count, damage, theft, expiry write-off, correction).
#[derive(Message)]
#[rtype(result = "Result<Batch, ActorError>")]
pub struct Adjust {
    pub caller: Caller,
    pub delta: i64,
    pub reason: AdjustReason,
    pub note: Option<String>,
}

impl Handler<Adjust> for InventoryBatchActor {
    type Result = Reply<Self, Batch>;

    fn handle(&mut self, msg: Adjust, _ctx: &mut Context<Self>) -> Self::Result {
        let planned = (|| {
            let batch = self.current()?;
            if msg.delta == 0 {
                return Err(invalid("delta", "an adjustment changes the count: delta must not be 0"));
            }
            if batch.status != BatchStatus::Active && msg.delta > 0 {
                return Err(ActorError::Conflict(format!("the batch is {}; units cannot be added", batch.status.as_str())));
            }
            let unreserved = batch.on_hand - batch.reserved();
            if -msg.delta > unreserved {
                return Err(ActorError::Conflict(format!(
                    "only {unreserved} units are not reserved; release reservations before taking away {}",
                    -msg.delta
                )));
            }
            let note = msg.note.as_ref().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
            if note.as_ref().is_some_and(|n| n.chars().count() > 300) {
                return Err(invalid("note", "note is at most 300 characters"));
            }
            let audit = AuditRecord::by_caller(&msg.caller, "batch.adjust", "batch", self.core.id)
                .detail(json!({"delta": msg.delta, "reason": msg.reason, "note": note}));
            self.plan(BatchChange::Adjusted { delta: msg.delta, reason: msg.reason, note }, audit)
        })();
        self.run(planned, Batch::clone)
    }
}

/// Recalls the batch: none of it may be reserved or dispensed any more; what prescriptions held
/// here is released. Answers with the affected prescriptions and their units.
#[derive(Message)]
#[rtype(result = "Result<BTreeMap<Uuid, i64>, ActorError>")]
pub struct Recall {
    pub caller: Caller,
    pub reason: String,
}

impl Handler<Recall> for InventoryBatchActor {
    type Result = Reply<Self, BTreeMap<Uuid, i64>>;

    fn handle(&mut self, msg: Recall, _ctx: &mut Context<Self>) -> Self::Result {
        let planned = (|| {
            let batch = self.current()?;
            if batch.status == BatchStatus::Recalled {
                return Err(ActorError::Conflict("the batch is already recalled".to_owned()));
            }
            let reason = msg.reason.trim();
            if reason.is_empty() || reason.chars().count() > 300 {
                return Err(invalid("reason", "give a reason of 1 to 300 characters"));
            }
            let released = batch.reservations.clone();
            let audit = AuditRecord::by_caller(&msg.caller, "batch.recall", "batch", self.core.id)
                .detail(json!({"reason": reason, "affected_prescriptions": released}));
            Ok((released.clone(), self.plan(BatchChange::Recalled { reason: reason.to_owned(), released }, audit)?))
        })();
        match planned {
            Ok((released, plan)) => self.execute(plan, move |_| released),
            Err(error) => durable::refuse(self, error),
        }
    }
}

/// Removes what is left of the batch from stock (disposal, return to supplier). Refused while
/// prescriptions hold units here.
#[derive(Message)]
#[rtype(result = "Result<Batch, ActorError>")]
pub struct Remove {
    pub caller: Caller,
    pub reason: String,
}

impl Handler<Remove> for InventoryBatchActor {
    type Result = Reply<Self, Batch>;

    fn handle(&mut self, msg: Remove, _ctx: &mut Context<Self>) -> Self::Result {
        let planned = (|| {
            let batch = self.current()?;
            if batch.status == BatchStatus::Removed {
                return Err(ActorError::Conflict("the batch is already removed".to_owned()));
            }
            if batch.reserved() > 0 {
                return Err(ActorError::Conflict(format!("{} units are reserved for prescriptions; release them first", batch.reserved())));
            }
            let reason = msg.reason.trim();
            if reason.is_empty() || reason.chars().count() > 300 {
                return Err(invalid("reason", "give a reason of 1 to 300 characters"));
            }
            let audit = AuditRecord::by_caller(&msg.caller, "batch.remove", "batch", self.core.id)
                .detail(json!({"reason": reason, "quantity": batch.on_hand}));
            self.plan(BatchChange::Removed { reason: reason.to_owned(), quantity: batch.on_hand }, audit)
        })();
        self.run(planned, Batch::clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(on_hand: i64, expiry: &str) -> Batch {
        let at = Utc::now();
        Batch {
            id: Uuid::from_u128(1),
            pharmacy_id: Uuid::from_u128(2),
            medication_id: Uuid::from_u128(3),
            batch_number: "B-1".into(),
            expiry_date: expiry.parse().unwrap(),
            location: None,
            on_hand,
            reservations: BTreeMap::new(),
            status: BatchStatus::Active,
            version: 1,
            received_at: at,
            updated_at: at,
        }
    }

    #[test]
    fn reserved_units_are_not_available_and_expired_or_recalled_batches_offer_nothing() {
        let b = batch(10, "2030-01-01");
        let today: NaiveDate = "2029-12-31".parse().unwrap();
        let p = Uuid::from_u128(9);
        let b = apply_change(&b, &BatchChange::Reserved { prescription_id: p, quantity: 4 }, Utc::now()).unwrap();
        assert_eq!((b.reserved(), b.available(today)), (4, 6));
        assert_eq!(b.available("2030-01-01".parse().unwrap()), 0, "expired on its expiry date");
        let recalled = apply_change(&b, &BatchChange::Recalled { reason: "contamination".into(), released: b.reservations.clone() }, Utc::now()).unwrap();
        assert_eq!((recalled.available(today), recalled.reserved(), recalled.on_hand), (0, 0, 10));
    }

    #[test]
    fn dispensing_takes_reserved_units_and_never_more_than_held() {
        let p = Uuid::from_u128(9);
        let b = apply_change(&batch(5, "2030-01-01"), &BatchChange::Reserved { prescription_id: p, quantity: 3 }, Utc::now()).unwrap();
        let d = apply_change(&b, &BatchChange::Dispensed { prescription_id: p, quantity: 2, dispense_id: Uuid::nil() }, Utc::now()).unwrap();
        assert_eq!((d.on_hand, d.reserved()), (3, 1));
        assert!(apply_change(&d, &BatchChange::Dispensed { prescription_id: p, quantity: 2, dispense_id: Uuid::nil() }, Utc::now()).is_err());
        assert!(apply_change(&d, &BatchChange::Adjusted { delta: -4, reason: AdjustReason::Damage, note: None }, Utc::now()).is_err());
        assert!(apply_change(&d, &BatchChange::Reserved { prescription_id: p, quantity: 3 }, Utc::now()).is_err(), "reserved never exceeds on hand");
    }

    #[test]
    fn events_replay_to_the_same_batch() {
        let received = batch(20, "2031-06-30");
        let p = Uuid::from_u128(7);
        let mut live = received.clone();
        let mut log = vec![(BATCH_RECEIVED, json!({"batch": received, "at": received.updated_at}))];
        for change in [
            BatchChange::Reserved { prescription_id: p, quantity: 5 },
            BatchChange::Dispensed { prescription_id: p, quantity: 3, dispense_id: Uuid::nil() },
            BatchChange::Adjusted { delta: -2, reason: AdjustReason::Count, note: Some("shelf count".into()) },
            BatchChange::Released { prescription_id: p, quantity: 2 },
        ] {
            live = apply_change(&live, &change, Utc::now().trunc_subsecs(6)).unwrap();
            log.push((change.event_type(), event_data(&change, &live)));
        }
        let mut state = None;
        for (seq, (kind, data)) in log.iter().enumerate() {
            state = Some(apply(state, seq as i64 + 1, kind, data).unwrap());
        }
        let state = state.unwrap();
        assert_eq!((state.on_hand, state.reserved(), state.version), (15, 0, 5));
        assert_eq!(state.on_hand, live.on_hand);
    }

    #[test]
    fn batch_numbers_are_printed_codes() {
        assert_eq!(parse_batch_number(" ab-12/3 ").unwrap(), "AB-12/3");
        assert!(parse_batch_number("").is_err());
        assert!(parse_batch_number("has space").is_err());
        assert!(parse_batch_number(&"9".repeat(41)).is_err());
    }
}
