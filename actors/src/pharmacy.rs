//! Prescriptions against live stock: prescribing (with availability and alternatives), reserving
//! first-expiry-first-out across a pharmacy's batches, dispensing (whole or partial), refills,
//! cancelling; and the pharmacy's read models (stock board, availability, alerts) and expiry sweep.
//!
//! The units themselves belong to the `InventoryBatch` actors; this module coordinates them. One
//! prescription is worked on by one task at a time (a per-prescription lock in the runtime), so
//! two pharmacists pressing "dispense" at once cannot give out a fill twice. A prescription's
//! status changes commit with their audit entry and notify the prescriber, the patient and the
//! pharmacy live.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::audit::{self, AuditRecord};
use crate::domain::{Caller, GeoPoint, Role, TenantSlug};
use crate::error::ActorError;
use crate::inventory::{Dispense, Release, Reserve};
use crate::runtime::ActorRuntime;
use crate::store;
use crate::topics;

fn invalid(field: &'static str, detail: impl Into<String>) -> ActorError {
    ActorError::Invalid { field, detail: detail.into() }
}

/// One lock per prescription being worked on (weakly held: unused locks go away).
#[derive(Default)]
pub struct PrescriptionLocks {
    locks: Mutex<HashMap<Uuid, Weak<tokio::sync::Mutex<()>>>>,
}

impl PrescriptionLocks {
    fn lock_for(&self, id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("prescription lock table");
        if let Some(lock) = locks.get(&id).and_then(Weak::upgrade) {
            return lock;
        }
        locks.retain(|_, lock| lock.strong_count() > 0);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(id, Arc::downgrade(&lock));
        lock
    }
}

// ---------------------------------------------------------------------------------------------
// Read models

#[derive(Debug, Clone, Serialize)]
pub struct MedicationInfo {
    pub id: Uuid,
    pub name: String,
    pub generic_name: String,
    pub atc_code: String,
    pub form: String,
    pub strength: String,
    pub unit: String,
    pub unit_price: String,
}

const MEDICATION_COLUMNS: &str = "m.id, m.name, m.generic_name, m.atc_code, m.form, m.strength, m.unit, m.unit_price::text AS unit_price";

fn medication_row(row: &sqlx::postgres::PgRow) -> MedicationInfo {
    MedicationInfo {
        id: row.get("id"),
        name: row.get("name"),
        generic_name: row.get("generic_name"),
        atc_code: row.get("atc_code"),
        form: row.get("form"),
        strength: row.get("strength"),
        unit: row.get("unit"),
        unit_price: row.get("unit_price"),
    }
}

pub async fn get_medication(pool: &PgPool, tenant_id: Uuid, id: Uuid) -> Result<Option<MedicationInfo>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {MEDICATION_COLUMNS} FROM medications m WHERE m.id = $1 AND m.tenant_id = $2"))
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(medication_row))
}

/// Medications by name or generic name prefix, or ATC code prefix (at most 50).
pub async fn search_medications(pool: &PgPool, tenant_id: Uuid, query: &str) -> Result<Vec<MedicationInfo>, sqlx::Error> {
    let pattern = format!("{}%", query.trim().to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    let rows = sqlx::query(&format!(
        "SELECT {MEDICATION_COLUMNS} FROM medications m WHERE m.tenant_id = $1
           AND (lower(m.name) LIKE $2 OR lower(m.generic_name) LIKE $2 OR lower(m.atc_code) LIKE $2)
         ORDER BY m.generic_name, m.name LIMIT 50"
    ))
    .bind(tenant_id)
    .bind(pattern)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(medication_row).collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchRow {
    pub id: Uuid,
    pub medication: MedicationInfo,
    pub batch_number: String,
    pub expiry_date: NaiveDate,
    pub on_hand: i32,
    pub reserved: i32,
    pub status: String,
    pub location: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlertRow {
    pub id: Uuid,
    pub kind: String,
    pub medication_id: Uuid,
    pub batch_id: Option<Uuid>,
    pub horizon_days: Option<i32>,
    pub detail: Value,
    pub status: String,
    pub raised_at: DateTime<Utc>,
}

/// A pharmacy's stock as the board shows it, and the seq of its topic it reflects.
#[derive(Debug, Clone, Serialize)]
pub struct StockBoard {
    pub seq: i64,
    pub pharmacy_id: Uuid,
    pub batches: Vec<BatchRow>,
    pub reorder_points: BTreeMap<Uuid, i32>,
    pub alerts: Vec<AlertRow>,
}

pub async fn stock_board(pool: &PgPool, tenant_id: Uuid, pharmacy_id: Uuid, topic: &str) -> Result<StockBoard, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let seq = store::topic_head(&mut tx, topic).await?;
    let rows = sqlx::query(&format!(
        "SELECT b.id AS batch_id, b.batch_number, b.expiry_date, b.on_hand, b.reserved, b.status, b.location, b.updated_at, {MEDICATION_COLUMNS}
         FROM inventory_batches b JOIN medications m ON m.id = b.medication_id
         WHERE b.tenant_id = $1 AND b.pharmacy_id = $2 AND (b.status <> 'removed' OR b.updated_at > now() - interval '1 day')
         ORDER BY m.generic_name, m.name, b.expiry_date, b.batch_number"
    ))
    .bind(tenant_id)
    .bind(pharmacy_id)
    .fetch_all(&mut *tx)
    .await?;
    let batches = rows
        .iter()
        .map(|row| BatchRow {
            id: row.get("batch_id"),
            medication: medication_row(row),
            batch_number: row.get("batch_number"),
            expiry_date: row.get("expiry_date"),
            on_hand: row.get("on_hand"),
            reserved: row.get("reserved"),
            status: row.get("status"),
            location: row.get("location"),
            updated_at: row.get("updated_at"),
        })
        .collect();
    let reorder_points = sqlx::query_as::<_, (Uuid, i32)>("SELECT medication_id, reorder_point FROM reorder_points WHERE tenant_id = $1 AND pharmacy_id = $2")
        .bind(tenant_id)
        .bind(pharmacy_id)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    let alerts = open_alerts(&mut tx, tenant_id, pharmacy_id).await?;
    tx.commit().await?;
    Ok(StockBoard { seq, pharmacy_id, batches, reorder_points, alerts })
}

async fn open_alerts(conn: &mut PgConnection, tenant_id: Uuid, pharmacy_id: Uuid) -> Result<Vec<AlertRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, kind, medication_id, batch_id, horizon_days, detail, status, raised_at FROM stock_alerts
         WHERE tenant_id = $1 AND pharmacy_id = $2 AND status = 'open' ORDER BY raised_at DESC LIMIT 500",
    )
    .bind(tenant_id)
    .bind(pharmacy_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .iter()
        .map(|row| AlertRow {
            id: row.get("id"),
            kind: row.get("kind"),
            medication_id: row.get("medication_id"),
            batch_id: row.get("batch_id"),
            horizon_days: row.get("horizon_days"),
            detail: row.get("detail"),
            status: row.get("status"),
            raised_at: row.get("raised_at"),
        })
        .collect())
}

/// Available units (on hand − reserved, active, unexpired) of a medication at a pharmacy.
pub async fn available_units(pool: &PgPool, tenant_id: Uuid, pharmacy_id: Uuid, medication_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(on_hand - reserved), 0)::bigint FROM inventory_batches
         WHERE tenant_id = $1 AND pharmacy_id = $2 AND medication_id = $3 AND status = 'active' AND expiry_date > current_date",
    )
    .bind(tenant_id)
    .bind(pharmacy_id)
    .bind(medication_id)
    .fetch_one(pool)
    .await
}

#[derive(Debug, Clone, Serialize)]
pub struct Alternative {
    pub medication: MedicationInfo,
    pub available: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PharmacyStock {
    pub pharmacy_id: Uuid,
    pub name: String,
    pub location: GeoPoint,
    pub distance_km: f64,
    pub available: i64,
}

/// What to offer when a medication is short at a pharmacy: products with the same active
/// ingredient in stock there, then other substances of the same ATC level-4 group in stock there,
/// and the tenant's other pharmacies that have the medication itself, nearest first.
#[derive(Debug, Clone, Serialize)]
pub struct Alternatives {
    pub same_ingredient: Vec<Alternative>,
    pub same_atc_group: Vec<Alternative>,
    pub nearest_pharmacies: Vec<PharmacyStock>,
}

pub async fn alternatives(pool: &PgPool, tenant_id: Uuid, medication: &MedicationInfo, pharmacy_id: Uuid) -> Result<Alternatives, sqlx::Error> {
    let in_stock_here = |filter: &'static str| {
        format!(
            "SELECT {MEDICATION_COLUMNS}, sum(b.on_hand - b.reserved)::bigint AS available
             FROM medications m JOIN inventory_batches b ON b.medication_id = m.id
             WHERE m.tenant_id = $1 AND b.pharmacy_id = $2 AND m.id <> $3 AND {filter}
               AND b.status = 'active' AND b.expiry_date > current_date
             GROUP BY m.id HAVING sum(b.on_hand - b.reserved) > 0 ORDER BY m.generic_name, m.name LIMIT 20"
        )
    };
    let read = |rows: Vec<sqlx::postgres::PgRow>| rows.iter().map(|row| Alternative { medication: medication_row(row), available: row.get("available") }).collect::<Vec<_>>();
    let same_ingredient = read(
        sqlx::query(&in_stock_here("lower(m.generic_name) = lower($4)"))
            .bind(tenant_id)
            .bind(pharmacy_id)
            .bind(medication.id)
            .bind(&medication.generic_name)
            .fetch_all(pool)
            .await?,
    );
    let group: String = medication.atc_code.chars().take(5).collect();
    let same_atc_group = read(
        sqlx::query(&in_stock_here("left(m.atc_code, 5) = $4 AND lower(m.generic_name) <> lower($5)"))
            .bind(tenant_id)
            .bind(pharmacy_id)
            .bind(medication.id)
            .bind(group)
            .bind(&medication.generic_name)
            .fetch_all(pool)
            .await?,
    );
    let here: Option<(f64, f64)> = sqlx::query_as("SELECT latitude, longitude FROM facilities WHERE id = $1 AND tenant_id = $2")
        .bind(pharmacy_id)
        .bind(tenant_id)
        .fetch_optional(pool)
        .await?;
    let origin = here.and_then(|(lat, lon)| GeoPoint::new(lat, lon).ok());
    let rows = sqlx::query(
        "SELECT f.id, f.name, f.latitude, f.longitude, sum(b.on_hand - b.reserved)::bigint AS available
         FROM inventory_batches b JOIN facilities f ON f.id = b.pharmacy_id
         WHERE b.tenant_id = $1 AND b.medication_id = $2 AND b.pharmacy_id <> $3
           AND b.status = 'active' AND b.expiry_date > current_date
         GROUP BY f.id HAVING sum(b.on_hand - b.reserved) > 0",
    )
    .bind(tenant_id)
    .bind(medication.id)
    .bind(pharmacy_id)
    .fetch_all(pool)
    .await?;
    let mut nearest_pharmacies: Vec<PharmacyStock> = rows
        .iter()
        .filter_map(|row| {
            let location = GeoPoint::new(row.get("latitude"), row.get("longitude")).ok()?;
            let distance_km = origin.map_or(0.0, |origin| (crate::schedule::distance_km(origin, location) * 100.0).round() / 100.0);
            Some(PharmacyStock { pharmacy_id: row.get("id"), name: row.get("name"), location, distance_km, available: row.get("available") })
        })
        .collect();
    nearest_pharmacies.sort_by(|a, b| a.distance_km.total_cmp(&b.distance_km));
    Ok(Alternatives { same_ingredient, same_atc_group, nearest_pharmacies })
}

// ---------------------------------------------------------------------------------------------
// Prescriptions

#[derive(Debug, Clone, Serialize)]
pub struct Prescription {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub prescriber_id: Uuid,
    pub medication_id: Uuid,
    pub pharmacy_id: Uuid,
    pub dose: String,
    pub frequency: String,
    pub duration_days: i32,
    pub quantity: i32,
    pub refills: i32,
    pub refills_used: i32,
    pub status: String,
    pub notes: Option<String>,
    /// Units held for this fill now, and units already given out in this fill.
    pub reserved: i64,
    pub dispensed_in_fill: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const PRESCRIPTION_QUERY: &str = "SELECT p.id, p.patient_id, p.prescriber_id, p.medication_id, p.pharmacy_id, p.dose, p.frequency,
        p.duration_days, p.quantity, p.refills, p.refills_used, p.status, p.notes, p.created_at, p.updated_at,
        COALESCE((SELECT sum(r.quantity) FROM reservations r WHERE r.prescription_id = p.id), 0)::bigint AS reserved,
        COALESCE((SELECT sum(d.quantity) FROM dispenses d WHERE d.prescription_id = p.id), 0)::bigint AS dispensed_total
     FROM prescriptions p";

fn prescription(row: &sqlx::postgres::PgRow) -> Prescription {
    let quantity: i32 = row.get("quantity");
    let refills_used: i32 = row.get("refills_used");
    let dispensed_total: i64 = row.get("dispensed_total");
    Prescription {
        id: row.get("id"),
        patient_id: row.get("patient_id"),
        prescriber_id: row.get("prescriber_id"),
        medication_id: row.get("medication_id"),
        pharmacy_id: row.get("pharmacy_id"),
        dose: row.get("dose"),
        frequency: row.get("frequency"),
        duration_days: row.get("duration_days"),
        quantity,
        refills: row.get("refills"),
        refills_used,
        status: row.get("status"),
        notes: row.get("notes"),
        reserved: row.get("reserved"),
        dispensed_in_fill: dispensed_total - i64::from(quantity) * i64::from(refills_used),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

pub async fn get_prescription(pool: &PgPool, tenant_id: Uuid, id: Uuid) -> Result<Option<Prescription>, sqlx::Error> {
    let row = sqlx::query(&format!("{PRESCRIPTION_QUERY} WHERE p.id = $1 AND p.tenant_id = $2")).bind(id).bind(tenant_id).fetch_optional(pool).await?;
    Ok(row.as_ref().map(prescription))
}

/// Prescriptions by patient, pharmacy and status, newest first.
pub async fn list_prescriptions(pool: &PgPool, tenant_id: Uuid, patient_id: Option<Uuid>, pharmacy_id: Option<Uuid>, statuses: &[&str], limit: i64) -> Result<Vec<Prescription>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "{PRESCRIPTION_QUERY} WHERE p.tenant_id = $1 AND ($2::uuid IS NULL OR p.patient_id = $2) AND ($3::uuid IS NULL OR p.pharmacy_id = $3)
           AND (cardinality($4::text[]) = 0 OR p.status = ANY ($4)) ORDER BY p.created_at DESC LIMIT $5"
    ))
    .bind(tenant_id)
    .bind(patient_id)
    .bind(pharmacy_id)
    .bind(statuses.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(prescription).collect())
}

/// A validated prescription.
#[derive(Debug, Clone)]
pub struct NewPrescription {
    pub patient_id: Uuid,
    pub medication_id: Uuid,
    pub pharmacy_id: Uuid,
    pub dose: String,
    pub frequency: String,
    pub duration_days: i32,
    pub quantity: i32,
    pub refills: i32,
    pub notes: Option<String>,
}

impl NewPrescription {
    #[allow(clippy::too_many_arguments)]
    pub fn new(patient_id: Uuid, medication_id: Uuid, pharmacy_id: Uuid, dose: &str, frequency: &str, duration_days: i32, quantity: i32, refills: i32, notes: Option<String>) -> Result<NewPrescription, ActorError> {
        let text = |field: &'static str, value: &str| {
            let value = value.trim();
            if value.is_empty() || value.chars().count() > 120 {
                Err(invalid(field, format!("{field} is 1 to 120 characters, e.g. \"500 mg\" or \"three times a day\"")))
            } else {
                Ok(value.to_owned())
            }
        };
        if !(1..=3650).contains(&duration_days) {
            return Err(invalid("duration_days", "duration_days is between 1 and 3650"));
        }
        if !(1..=10_000).contains(&quantity) {
            return Err(invalid("quantity", "quantity is between 1 and 10,000 units"));
        }
        if !(0..=12).contains(&refills) {
            return Err(invalid("refills", "refills is between 0 and 12"));
        }
        let notes = notes.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
        if notes.as_ref().is_some_and(|n| n.chars().count() > 1000) {
            return Err(invalid("notes", "notes are at most 1000 characters"));
        }
        Ok(NewPrescription {
            patient_id,
            medication_id,
            pharmacy_id,
            dose: text("dose", dose)?,
            frequency: text("frequency", frequency)?,
            duration_days,
            quantity,
            refills,
            notes,
        })
    }
}

/// The users to tell about a prescription: its prescriber and the patient's own user (if linked).
async fn watchers(conn: &mut PgConnection, tenant: &TenantSlug, p: &Prescription) -> Result<Vec<String>, sqlx::Error> {
    let patient_user: Option<Option<Uuid>> = sqlx::query_scalar("SELECT user_id FROM patients WHERE id = $1").bind(p.patient_id).fetch_optional(&mut *conn).await?;
    let mut topics_to_tell = vec![topics::user_topic(tenant, p.prescriber_id)];
    if let Some(Some(user)) = patient_user {
        if user != p.prescriber_id {
            topics_to_tell.push(topics::user_topic(tenant, user));
        }
    }
    topics_to_tell.sort();
    topics_to_tell.push(topics::stock_topic(tenant, p.pharmacy_id));
    Ok(topics_to_tell)
}

/// Commits a prescription's new status with its audit entry and tells its watchers.
async fn settle(pool: &PgPool, caller: &Caller, id: Uuid, status: &str, refills_used: Option<i32>, event: &'static str, detail: Value) -> Result<Prescription, ActorError> {
    let tenant_id = caller.principal.tenant_id;
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE prescriptions SET status = $2, refills_used = COALESCE($3, refills_used), updated_at = $4 WHERE id = $1 AND tenant_id = $5")
        .bind(id)
        .bind(status)
        .bind(refills_used)
        .bind(Utc::now().trunc_subsecs(6))
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query(&format!("{PRESCRIPTION_QUERY} WHERE p.id = $1")).bind(id).fetch_one(&mut *tx).await?;
    let current = prescription(&row);
    let data = json!({"prescription": current, "detail": detail});
    for topic in watchers(&mut tx, &caller.principal.tenant_slug, &current).await? {
        store::publish_copy(&mut tx, tenant_id, &topic, event, &data).await?;
    }
    let record = AuditRecord::by_caller(caller, event, "prescription", id).patient(Some(current.patient_id)).detail(detail);
    audit::append(&mut tx, tenant_id, &record).await?;
    tx.commit().await?;
    Ok(current)
}

/// What prescribing answered: the prescription, what is reserved for it, and when short, what
/// else could serve.
#[derive(Debug, Clone, Serialize)]
pub struct Prescribed {
    pub prescription: Prescription,
    pub available_before: i64,
    pub reserved: i64,
    pub short: i64,
    pub alternatives: Option<Alternatives>,
}

/// Prescribes (a doctor) and reserves what the pharmacy has, first expiry first.
pub async fn prescribe(runtime: &ActorRuntime, pool: &PgPool, caller: &Caller, new: NewPrescription) -> Result<Prescribed, ActorError> {
    if caller.principal.role != Role::Doctor {
        return Err(ActorError::Forbidden(format!("role {} may not prescribe", caller.principal.role)));
    }
    let tenant_id = caller.principal.tenant_id;
    let medication = get_medication(pool, tenant_id, new.medication_id).await?.ok_or_else(|| invalid("medication_id", "no medication with that id in this tenant"))?;
    let (patient, pharmacy): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM patients WHERE id = $1 AND tenant_id = $3), EXISTS (SELECT 1 FROM facilities WHERE id = $2 AND tenant_id = $3)",
    )
    .bind(new.patient_id)
    .bind(new.pharmacy_id)
    .bind(tenant_id)
    .fetch_one(pool)
    .await?;
    if !patient {
        return Err(invalid("patient_id", "no patient with that id in this tenant"));
    }
    if !pharmacy {
        return Err(invalid("pharmacy_id", "no pharmacy (facility) with that id in this tenant"));
    }
    let available_before = available_units(pool, tenant_id, new.pharmacy_id, new.medication_id).await?;
    let id = Uuid::new_v4();
    let at = Utc::now().trunc_subsecs(6);
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO prescriptions (id, tenant_id, patient_id, prescriber_id, medication_id, pharmacy_id, dose, frequency, duration_days,
                                    quantity, refills, status, notes, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'active', $12, $13, $13)",
    )
    .bind(id)
    .bind(tenant_id)
    .bind(new.patient_id)
    .bind(caller.principal.user_id)
    .bind(new.medication_id)
    .bind(new.pharmacy_id)
    .bind(&new.dose)
    .bind(&new.frequency)
    .bind(new.duration_days)
    .bind(new.quantity)
    .bind(new.refills)
    .bind(&new.notes)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    let row = sqlx::query(&format!("{PRESCRIPTION_QUERY} WHERE p.id = $1")).bind(id).fetch_one(&mut *tx).await?;
    let created = prescription(&row);
    let data = json!({"prescription": created, "medication": medication});
    for topic in watchers(&mut tx, &caller.principal.tenant_slug, &created).await? {
        store::publish_copy(&mut tx, tenant_id, &topic, "prescription.created", &data).await?;
    }
    let record = AuditRecord::by_caller(caller, "prescription.create", "prescription", id)
        .patient(Some(new.patient_id))
        .detail(json!({"medication_id": new.medication_id, "pharmacy_id": new.pharmacy_id, "quantity": new.quantity, "refills": new.refills}));
    audit::append(&mut tx, tenant_id, &record).await?;
    tx.commit().await?;

    let reserved = reserve(runtime, pool, caller, id).await?;
    let short = i64::from(new.quantity) - reserved;
    let alternatives = if short > 0 { Some(alternatives(pool, tenant_id, &medication, new.pharmacy_id).await?) } else { None };
    let prescription = get_prescription(pool, tenant_id, id).await?.ok_or(ActorError::NotFound("prescription"))?;
    Ok(Prescribed { prescription, available_before, reserved, short, alternatives })
}

/// Tops up the reservation of the current fill, first expiry first; answers with the units now
/// reserved for it.
pub async fn reserve(runtime: &ActorRuntime, pool: &PgPool, caller: &Caller, id: Uuid) -> Result<i64, ActorError> {
    let lock = runtime.prescription_locks().lock_for(id);
    let _held = lock.lock().await;
    reserve_locked(runtime, pool, caller, id).await
}

async fn reserve_locked(runtime: &ActorRuntime, pool: &PgPool, caller: &Caller, id: Uuid) -> Result<i64, ActorError> {
    let principal = &caller.principal;
    let p = get_prescription(pool, principal.tenant_id, id).await?.ok_or(ActorError::NotFound("prescription"))?;
    if !matches!(p.status.as_str(), "active" | "partially_dispensed") {
        return Ok(p.reserved);
    }
    let mut missing = i64::from(p.quantity) - p.dispensed_in_fill - p.reserved;
    let mut reserved = p.reserved;
    if missing <= 0 {
        return Ok(reserved);
    }
    let batches: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM inventory_batches WHERE tenant_id = $1 AND pharmacy_id = $2 AND medication_id = $3
           AND status = 'active' AND expiry_date > current_date AND on_hand > reserved
         ORDER BY expiry_date, received_at, id",
    )
    .bind(principal.tenant_id)
    .bind(p.pharmacy_id)
    .bind(p.medication_id)
    .fetch_all(pool)
    .await?;
    for batch_id in batches {
        let actor = runtime.batch(principal.tenant_id, &principal.tenant_slug, batch_id).await?;
        let got = actor.send(Reserve { caller: caller.clone(), prescription_id: id, patient_id: p.patient_id, quantity: missing }).await??;
        reserved += got;
        missing -= got;
        if missing == 0 {
            break;
        }
    }
    Ok(reserved)
}

/// What a dispense gave out.
#[derive(Debug, Clone, Serialize)]
pub struct Dispensed {
    pub prescription: Prescription,
    pub dispensed: i64,
    /// Units per batch, in the order they were taken (earliest expiry first).
    pub from_batches: Vec<(Uuid, i64)>,
}

/// Gives out `quantity` units (default: the rest of the fill), reserving first what is not yet
/// held; earliest expiry first. Refused with a conflict when nothing can be given.
pub async fn dispense(runtime: &ActorRuntime, pool: &PgPool, caller: &Caller, id: Uuid, quantity: Option<i64>) -> Result<Dispensed, ActorError> {
    let principal = &caller.principal;
    let lock = runtime.prescription_locks().lock_for(id);
    let _held = lock.lock().await;
    let p = get_prescription(pool, principal.tenant_id, id).await?.ok_or(ActorError::NotFound("prescription"))?;
    if !matches!(p.status.as_str(), "active" | "partially_dispensed") {
        return Err(ActorError::Conflict(format!("the prescription is {}; nothing to dispense", p.status)));
    }
    let remaining = i64::from(p.quantity) - p.dispensed_in_fill;
    let want = match quantity {
        Some(q) if q <= 0 => return Err(invalid("quantity", "quantity must be positive")),
        Some(q) if q > remaining => return Err(invalid("quantity", format!("only {remaining} units of this fill are left to dispense"))),
        Some(q) => q,
        None => remaining,
    };
    if p.reserved < want {
        reserve_locked(runtime, pool, caller, id).await?;
    }
    let price: String = sqlx::query_scalar("SELECT unit_price::text FROM medications WHERE id = $1").bind(p.medication_id).fetch_one(pool).await?;
    let holding: Vec<Uuid> = sqlx::query_scalar(
        "SELECT r.batch_id FROM reservations r JOIN inventory_batches b ON b.id = r.batch_id
         WHERE r.prescription_id = $1 ORDER BY b.expiry_date, b.received_at, b.id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let (mut left, mut from_batches) = (want, Vec::new());
    for batch_id in holding {
        let actor = runtime.batch(principal.tenant_id, &principal.tenant_slug, batch_id).await?;
        let given = actor
            .send(Dispense { caller: caller.clone(), prescription_id: id, patient_id: p.patient_id, quantity: left, unit_price: price.clone() })
            .await??;
        if given > 0 {
            from_batches.push((batch_id, given));
            left -= given;
        }
        if left == 0 {
            break;
        }
    }
    let dispensed = want - left;
    if dispensed == 0 {
        return Err(ActorError::Conflict("out of stock: nothing could be reserved or dispensed for this prescription at its pharmacy".to_owned()));
    }
    let complete = p.dispensed_in_fill + dispensed == i64::from(p.quantity);
    let status = if complete { "dispensed" } else { "partially_dispensed" };
    let prescription = settle(pool, caller, id, status, None, "prescription.dispensed", json!({"quantity": dispensed, "from_batches": from_batches, "fill_complete": complete})).await?;
    Ok(Dispensed { prescription, dispensed, from_batches })
}

/// Releases everything the prescription holds and cancels it.
pub async fn cancel(runtime: &ActorRuntime, pool: &PgPool, caller: &Caller, id: Uuid, reason: &str) -> Result<Prescription, ActorError> {
    let principal = &caller.principal;
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > 300 {
        return Err(invalid("reason", "give a reason of 1 to 300 characters"));
    }
    let lock = runtime.prescription_locks().lock_for(id);
    let _held = lock.lock().await;
    let p = get_prescription(pool, principal.tenant_id, id).await?.ok_or(ActorError::NotFound("prescription"))?;
    if matches!(p.status.as_str(), "dispensed" | "cancelled") {
        return Err(ActorError::Conflict(format!("the prescription is already {}", p.status)));
    }
    release_all(runtime, pool, caller, &p).await?;
    settle(pool, caller, id, "cancelled", None, "prescription.cancelled", json!({"reason": reason, "released": p.reserved})).await
}

async fn release_all(runtime: &ActorRuntime, pool: &PgPool, caller: &Caller, p: &Prescription) -> Result<(), ActorError> {
    let principal = &caller.principal;
    let holding: Vec<Uuid> = sqlx::query_scalar("SELECT batch_id FROM reservations WHERE prescription_id = $1").bind(p.id).fetch_all(pool).await?;
    for batch_id in holding {
        let actor = runtime.batch(principal.tenant_id, &principal.tenant_slug, batch_id).await?;
        actor.send(Release { caller: caller.clone(), prescription_id: p.id, patient_id: p.patient_id, quantity: None }).await??;
    }
    Ok(())
}

/// Starts the next fill of a fully dispensed prescription and reserves for it.
pub async fn refill(runtime: &ActorRuntime, pool: &PgPool, caller: &Caller, id: Uuid) -> Result<Prescription, ActorError> {
    let principal = &caller.principal;
    let lock = runtime.prescription_locks().lock_for(id);
    let _held = lock.lock().await;
    let p = get_prescription(pool, principal.tenant_id, id).await?.ok_or(ActorError::NotFound("prescription"))?;
    if p.status != "dispensed" {
        return Err(ActorError::Conflict(format!("only a fully dispensed prescription is refilled; this one is {}", p.status)));
    }
    if p.refills_used >= p.refills {
        return Err(ActorError::Conflict(format!("all {} refills are used", p.refills)));
    }
    settle(pool, caller, id, "active", Some(p.refills_used + 1), "prescription.refilled", json!({"refill": p.refills_used + 1})).await?;
    reserve_locked(runtime, pool, caller, id).await?;
    get_prescription(pool, principal.tenant_id, id).await?.ok_or(ActorError::NotFound("prescription"))
}

/// Open prescriptions holding units of a batch (for a recall's report).
pub async fn prescriptions_of(pool: &PgPool, tenant_id: Uuid, ids: &[Uuid]) -> Result<Vec<Prescription>, sqlx::Error> {
    let rows = sqlx::query(&format!("{PRESCRIPTION_QUERY} WHERE p.tenant_id = $1 AND p.id = ANY ($2) ORDER BY p.created_at"))
        .bind(tenant_id)
        .bind(ids)
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(prescription).collect())
}

// ---------------------------------------------------------------------------------------------
// Alerts

/// Raises expiry alerts: once per batch and horizon (e.g. 90, 30, 7 days before its expiry date)
/// for batches still holding stock; each published on the pharmacy's stock topic.
pub async fn sweep_expiry(pool: &PgPool, horizons: &[i32]) -> Result<usize, sqlx::Error> {
    let mut raised = 0;
    for horizon in horizons {
        let due = sqlx::query(
            "SELECT b.id, b.tenant_id, t.slug, b.pharmacy_id, b.medication_id, b.batch_number, b.expiry_date, b.on_hand
             FROM inventory_batches b JOIN tenants t ON t.id = b.tenant_id
             WHERE b.status = 'active' AND b.on_hand > 0 AND b.expiry_date <= current_date + $1
               AND NOT EXISTS (SELECT 1 FROM stock_alerts a WHERE a.batch_id = b.id AND a.kind = 'expiry' AND a.horizon_days <= $1)
             LIMIT 500",
        )
        .bind(horizon)
        .fetch_all(pool)
        .await?;
        for row in due {
            let Ok(tenant) = TenantSlug::parse(row.get::<String, _>("slug").as_str()) else { continue };
            let (tenant_id, pharmacy_id): (Uuid, Uuid) = (row.get("tenant_id"), row.get("pharmacy_id"));
            let expiry: NaiveDate = row.get("expiry_date");
            let days_left = (expiry - Utc::now().date_naive()).num_days();
            let detail = json!({"batch_number": row.get::<String, _>("batch_number"), "expiry_date": expiry, "days_left": days_left, "on_hand": row.get::<i32, _>("on_hand")});
            let id = Uuid::new_v4();
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO stock_alerts (id, tenant_id, pharmacy_id, medication_id, batch_id, kind, horizon_days, detail, status, raised_at)
                 VALUES ($1, $2, $3, $4, $5, 'expiry', $6, $7, 'open', now()) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(tenant_id)
            .bind(pharmacy_id)
            .bind(row.get::<Uuid, _>("medication_id"))
            .bind(row.get::<Uuid, _>("id"))
            .bind(horizon)
            .bind(&detail)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 1 {
                let data = json!({"id": id, "kind": "expiry", "pharmacy_id": pharmacy_id, "medication_id": row.get::<Uuid, _>("medication_id"),
                                  "batch_id": row.get::<Uuid, _>("id"), "horizon_days": horizon, "detail": detail});
                if let Err(e) = store::publish_copy(&mut tx, tenant_id, &topics::stock_topic(&tenant, pharmacy_id), "stock.alert", &data).await {
                    tracing::warn!(error = %e, "cannot publish an expiry alert");
                    continue;
                }
                audit::append(&mut tx, tenant_id, &AuditRecord::by_system("stock.alert", "batch", row.get::<Uuid, _>("id")).detail(data)).await?;
                raised += 1;
            }
            tx.commit().await?;
        }
    }
    Ok(raised)
}

/// Acknowledges an open alert (a pharmacist saw it).
pub async fn acknowledge_alert(pool: &PgPool, caller: &Caller, alert_id: Uuid) -> Result<(), ActorError> {
    let tenant_id = caller.principal.tenant_id;
    let mut tx = pool.begin().await?;
    let pharmacy: Option<Uuid> = sqlx::query_scalar(
        "UPDATE stock_alerts SET status = 'acknowledged', acknowledged_by = $3, acknowledged_at = now()
         WHERE id = $1 AND tenant_id = $2 AND status = 'open' RETURNING pharmacy_id",
    )
    .bind(alert_id)
    .bind(tenant_id)
    .bind(caller.principal.user_id)
    .fetch_optional(&mut *tx)
    .await?;
    let pharmacy = pharmacy.ok_or(ActorError::NotFound("open alert"))?;
    store::publish_copy(&mut tx, tenant_id, &topics::stock_topic(&caller.principal.tenant_slug, pharmacy), "stock.alert_acknowledged", &json!({"id": alert_id})).await?;
    audit::append(&mut tx, tenant_id, &AuditRecord::by_caller(caller, "stock.alert_acknowledge", "stock_alert", alert_id)).await?;
    tx.commit().await?;
    Ok(())
}

/// Sets a medication's reorder point at a pharmacy (and checks it against the stock at once).
pub async fn set_reorder_point(pool: &PgPool, caller: &Caller, pharmacy_id: Uuid, medication_id: Uuid, reorder_point: i32) -> Result<(), ActorError> {
    if !(0..=1_000_000).contains(&reorder_point) {
        return Err(invalid("reorder_point", "reorder_point is between 0 and 1,000,000"));
    }
    let tenant_id = caller.principal.tenant_id;
    crate::inventory::check_refs(pool, tenant_id, pharmacy_id, medication_id).await?;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO reorder_points (tenant_id, pharmacy_id, medication_id, reorder_point) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, pharmacy_id, medication_id) DO UPDATE SET reorder_point = EXCLUDED.reorder_point",
    )
    .bind(tenant_id)
    .bind(pharmacy_id)
    .bind(medication_id)
    .bind(reorder_point)
    .execute(&mut *tx)
    .await?;
    crate::inventory::check_low_stock(&mut tx, tenant_id, &caller.principal.tenant_slug, pharmacy_id, medication_id).await?;
    let record = AuditRecord::by_caller(caller, "stock.reorder_point", "medication", medication_id).detail(json!({"pharmacy_id": pharmacy_id, "reorder_point": reorder_point}));
    audit::append(&mut tx, tenant_id, &record).await?;
    tx.commit().await?;
    Ok(())
}
