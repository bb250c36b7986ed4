//! The pharmacy: medications, the stock of each pharmacy (batches, reorder points, alerts), the
//! inventory upload, and prescriptions (prescribe, dispense, cancel, refill). Writes to a batch go
//! to its `InventoryBatch` actor; prescriptions coordinate those actors (see `medhub_actors::pharmacy`).

use std::collections::{BTreeSet, HashMap, HashSet};

use actix_web::{web, HttpResponse};
use chrono::{NaiveDate, Utc};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use medhub_actors::audit::{self, AuditRecord, Outcome};
use medhub_actors::inventory::{self, Adjust, AdjustReason, GetBatch, NewBatch, Recall, Remove};
use medhub_actors::pharmacy::{self, NewPrescription};
use medhub_actors::tenant::ReceiveBatch;
use medhub_actors::{store, topics, ActorError, Caller, Role};

use super::error::ApiError;
use super::extract::{path_id, Authenticated, Body};
use crate::server::AppState;

const STOCK_KEEPERS: &[Role] = &[Role::Pharmacist, Role::Admin];
const STOCK_READERS: &[Role] = &[Role::Pharmacist, Role::Admin, Role::Doctor];
const PRESCRIPTION_READERS: &[Role] = &[Role::Pharmacist, Role::Admin, Role::Doctor, Role::Nurse, Role::Patient];

/// Largest inventory upload accepted.
const MAX_UPLOAD_BYTES: usize = 16 * 1024 * 1024;
/// Rows applied per transaction (and per progress report).
const UPLOAD_CHUNK: usize = 1000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/medications", web::get().to(search_medications))
        .route("/api/medications/{id}", web::get().to(get_medication))
        .route("/api/pharmacies/{id}/stock", web::get().to(stock_board))
        .route("/api/pharmacies/{id}/availability", web::get().to(availability))
        .route("/api/pharmacies/{id}/reorder-points/{medication_id}", web::put().to(set_reorder_point))
        .route("/api/stock-alerts/{id}/acknowledge", web::post().to(acknowledge_alert))
        .route("/api/inventory", web::post().to(receive))
        .service(
            web::resource("/api/inventory/upload")
                .app_data(web::PayloadConfig::new(MAX_UPLOAD_BYTES))
                .route(web::post().to(upload)),
        )
        .route("/api/inventory/{id}", web::get().to(get_batch))
        .route("/api/inventory/{id}", web::put().to(adjust))
        .route("/api/inventory/{id}", web::delete().to(remove))
        .route("/api/inventory/{id}/recall", web::post().to(recall))
        .route("/api/prescriptions", web::post().to(prescribe))
        .route("/api/prescriptions", web::get().to(list_prescriptions))
        .route("/api/prescriptions/{id}", web::get().to(get_prescription))
        .route("/api/prescriptions/{id}/dispense", web::post().to(dispense))
        .route("/api/prescriptions/{id}/cancel", web::post().to(cancel))
        .route("/api/prescriptions/{id}/refill", web::post().to(refill));
}

// ---------------------------------------------------------------------------------------------
// Medications and stock

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MedicationQuery {
    q: String,
}

async fn search_medications(state: web::Data<AppState>, caller: Authenticated, query: web::Query<MedicationQuery>) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Pharmacist, Role::Admin, Role::Doctor, Role::Nurse], "look up medications")?;
    if query.q.trim().is_empty() {
        return Err(ApiError::invalid("q", "give a name, generic name or ATC code prefix"));
    }
    let found = pharmacy::search_medications(&state.pool, caller.principal().tenant_id, &query.q).await?;
    Ok(HttpResponse::Ok().json(json!({"medications": found})))
}

async fn get_medication(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Pharmacist, Role::Admin, Role::Doctor, Role::Nurse], "look up medications")?;
    let id = path_id(&path, "medication")?;
    let found = pharmacy::get_medication(&state.pool, caller.principal().tenant_id, id).await?.ok_or_else(|| ApiError::not_found("medication"))?;
    Ok(HttpResponse::Ok().json(found))
}

/// The pharmacy (a facility) of the caller's tenant, or 404.
async fn pharmacy_of(state: &AppState, caller: &Authenticated, path: &str) -> Result<Uuid, ApiError> {
    let id = path_id(path, "pharmacy")?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM facilities WHERE id = $1 AND tenant_id = $2)")
        .bind(id)
        .bind(caller.principal().tenant_id)
        .fetch_one(&state.pool)
        .await?;
    if exists {
        Ok(id)
    } else {
        Err(ApiError::not_found("pharmacy"))
    }
}

async fn stock_board(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(STOCK_READERS, "see stock")?;
    let pharmacy_id = pharmacy_of(&state, &caller, &path).await?;
    let principal = caller.principal();
    let board = pharmacy::stock_board(&state.pool, principal.tenant_id, pharmacy_id, &topics::stock_topic(&principal.tenant_slug, pharmacy_id)).await?;
    Ok(HttpResponse::Ok().json(board))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AvailabilityQuery {
    medication_id: Uuid,
    quantity: Option<i64>,
}

/// How many units of a medication a pharmacy can give now, and (when short of `quantity`) what
/// else could serve.
async fn availability(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, query: web::Query<AvailabilityQuery>) -> Result<HttpResponse, ApiError> {
    caller.require(STOCK_READERS, "see stock")?;
    let pharmacy_id = pharmacy_of(&state, &caller, &path).await?;
    let tenant_id = caller.principal().tenant_id;
    let medication = pharmacy::get_medication(&state.pool, tenant_id, query.medication_id)
        .await?
        .ok_or_else(|| ApiError::invalid("medication_id", "no medication with that id in this tenant"))?;
    let available = pharmacy::available_units(&state.pool, tenant_id, pharmacy_id, medication.id).await?;
    let wanted = query.quantity.unwrap_or(1).max(1);
    let alternatives = if available < wanted { Some(pharmacy::alternatives(&state.pool, tenant_id, &medication, pharmacy_id).await?) } else { None };
    Ok(HttpResponse::Ok().json(json!({"medication": medication, "pharmacy_id": pharmacy_id, "available": available, "alternatives": alternatives})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReorderBody {
    reorder_point: i32,
}

async fn set_reorder_point(state: web::Data<AppState>, caller: Authenticated, path: web::Path<(String, String)>, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(STOCK_KEEPERS, "set reorder points")?;
    let pharmacy_id = pharmacy_of(&state, &caller, &path.0).await?;
    let medication_id = path_id(&path.1, "medication")?;
    let body: ReorderBody = body.parse()?;
    pharmacy::set_reorder_point(&state.pool, &caller.0, pharmacy_id, medication_id, body.reorder_point).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn acknowledge_alert(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(STOCK_KEEPERS, "acknowledge stock alerts")?;
    let id = path_id(&path, "alert")?;
    pharmacy::acknowledge_alert(&state.pool, &caller.0, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

// ---------------------------------------------------------------------------------------------
// Batches

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiveBody {
    pharmacy_id: Uuid,
    medication_id: Uuid,
    batch_number: String,
    expiry_date: NaiveDate,
    quantity: i64,
    location: Option<String>,
}

async fn receive(state: web::Data<AppState>, caller: Authenticated, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(STOCK_KEEPERS, "receive stock")?;
    let body: ReceiveBody = body.parse()?;
    if body.expiry_date <= Utc::now().date_naive() {
        return Err(ApiError::invalid("expiry_date", "the batch has already expired"));
    }
    let batch = NewBatch::new(body.pharmacy_id, body.medication_id, &body.batch_number, body.expiry_date, body.quantity, body.location)?;
    let principal = caller.principal();
    let supervisor = state.runtime.tenant(principal.tenant_id, &principal.tenant_slug)?;
    let received = supervisor.send(ReceiveBatch { caller: caller.0.clone(), batch }).await??;
    Ok(HttpResponse::Created().json(batch_json(&received)))
}

fn batch_json(batch: &inventory::Batch) -> serde_json::Value {
    json!({
        "id": batch.id, "pharmacy_id": batch.pharmacy_id, "medication_id": batch.medication_id, "batch_number": batch.batch_number,
        "expiry_date": batch.expiry_date, "location": batch.location, "on_hand": batch.on_hand, "reserved": batch.reserved(),
        "available": batch.available(Utc::now().date_naive()), "reservations": batch.reservations, "status": batch.status,
        "version": batch.version, "received_at": batch.received_at, "updated_at": batch.updated_at,
    })
}

async fn batch_actor(state: &AppState, caller: &Authenticated, path: &str) -> Result<actix::Addr<inventory::InventoryBatchActor>, ApiError> {
    let id = path_id(path, "batch")?;
    let principal = caller.principal();
    Ok(state.runtime.batch(principal.tenant_id, &principal.tenant_slug, id).await?)
}

async fn get_batch(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(STOCK_READERS, "see stock")?;
    let batch = batch_actor(&state, &caller, &path).await?.send(GetBatch).await??;
    Ok(HttpResponse::Ok().json(batch_json(&batch)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdjustBody {
    delta: i64,
    reason: AdjustReason,
    note: Option<String>,
}

/// `PUT /api/inventory/{id}`: adjusts the count with a reason.
async fn adjust(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(STOCK_KEEPERS, "adjust stock")?;
    let actor = batch_actor(&state, &caller, &path).await?;
    let body: AdjustBody = body.parse()?;
    let batch = actor.send(Adjust { caller: caller.0.clone(), delta: body.delta, reason: body.reason, note: body.note }).await??;
    Ok(HttpResponse::Ok().json(batch_json(&batch)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: String,
}

/// `DELETE /api/inventory/{id}` `{reason}`: removes what is left of the batch from stock.
async fn remove(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(STOCK_KEEPERS, "remove stock")?;
    let actor = batch_actor(&state, &caller, &path).await?;
    let body: ReasonBody = body.parse()?;
    let batch = actor.send(Remove { caller: caller.0.clone(), reason: body.reason }).await??;
    Ok(HttpResponse::Ok().json(batch_json(&batch)))
}

/// Recalls a batch: its stock leaves availability; the answer lists the open prescriptions that
/// held units of it (they are released and need stock from elsewhere).
async fn recall(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(STOCK_KEEPERS, "recall batches")?;
    let actor = batch_actor(&state, &caller, &path).await?;
    let body: ReasonBody = body.parse()?;
    let released = actor.send(Recall { caller: caller.0.clone(), reason: body.reason }).await??;
    let batch = actor.send(GetBatch).await??;
    let ids: Vec<Uuid> = released.keys().copied().collect();
    let affected = pharmacy::prescriptions_of(&state.pool, caller.principal().tenant_id, &ids).await?;
    let affected: Vec<serde_json::Value> = affected
        .into_iter()
        .map(|p| {
            let units = released.get(&p.id).copied().unwrap_or(0);
            json!({"prescription": p, "released_units": units})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"batch": batch_json(&batch), "affected_prescriptions": affected})))
}

// ---------------------------------------------------------------------------------------------
// The inventory upload

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    pharmacy_id: Uuid,
}

/// Splits one CSV line into fields: commas separate, double quotes enclose (`""` is a quote).
fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let (mut fields, mut field, mut quoted, mut chars) = (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed".to_owned());
    }
    fields.push(field);
    Ok(fields.into_iter().map(|f| f.trim().to_owned()).collect())
}

const UPLOAD_COLUMNS: [&str; 5] = ["medication", "batch_number", "expiry_date", "quantity", "location"];

/// `POST /api/inventory/upload?pharmacy_id=` with a CSV body: columns `medication` (name as in
/// the formulary, or id), `batch_number`, `expiry_date` (YYYY-MM-DD), `quantity`, `location`
/// (optional). Each row is checked on its own; valid rows are applied (1,000 per transaction) and
/// rejected ones listed with their line number and reason. A batch already received is skipped,
/// so uploading the same file again changes nothing. Files of more than 1,000 rows report
/// progress on the uploader's own topic (`upload.progress`).
async fn upload(state: web::Data<AppState>, caller: Authenticated, query: web::Query<UploadQuery>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    caller.require(STOCK_KEEPERS, "upload stock")?;
    let principal = caller.principal().clone();
    let pharmacy_id = pharmacy_of(&state, &caller, &query.pharmacy_id.to_string()).await?;
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::BadRequest { code: "invalid_body", field: None, detail: "the upload is not UTF-8 text".into() })?;
    let mut lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
    let header = lines.next().ok_or_else(|| ApiError::BadRequest { code: "invalid_body", field: None, detail: "the upload is empty".into() })?;
    let columns = split_csv_line(header.1.trim_start_matches('\u{feff}')).map_err(|e| ApiError::BadRequest { code: "invalid_body", field: None, detail: e })?;
    let position: HashMap<&str, usize> = columns.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    for required in &UPLOAD_COLUMNS[..4] {
        if !position.contains_key(required) {
            return Err(ApiError::BadRequest {
                code: "invalid_body",
                field: Some((*required).to_owned()),
                detail: format!("the header must name the columns {}; {required:?} is missing", UPLOAD_COLUMNS.join(", ")),
            });
        }
    }
    let medications: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, lower(name) FROM medications WHERE tenant_id = $1").bind(principal.tenant_id).fetch_all(&state.pool).await?;
    let by_name: HashMap<String, Uuid> = medications.iter().map(|(id, name)| (name.clone(), *id)).collect();
    let known_ids: HashSet<Uuid> = medications.iter().map(|(id, _)| *id).collect();
    let today = Utc::now().date_naive();

    let mut valid: Vec<(usize, NewBatch)> = Vec::new();
    let mut rejected: Vec<serde_json::Value> = Vec::new();
    let mut seen: HashMap<(Uuid, String), usize> = HashMap::new();
    for (index, line) in lines {
        let line_number = index + 1;
        let parsed = (|| -> Result<NewBatch, String> {
            let fields = split_csv_line(line)?;
            if fields.len() != columns.len() {
                return Err(format!("{} fields where the header has {}", fields.len(), columns.len()));
            }
            let field = |name: &str| position.get(name).map(|i| fields[*i].as_str()).unwrap_or("");
            let medication = field("medication");
            let medication_id = match Uuid::parse_str(medication) {
                Ok(id) if known_ids.contains(&id) => id,
                _ => *by_name.get(&medication.to_lowercase()).ok_or_else(|| format!("unknown medication {medication:?}"))?,
            };
            let expiry: NaiveDate = field("expiry_date").parse().map_err(|_| format!("expiry_date {:?} is not a date as YYYY-MM-DD", field("expiry_date")))?;
            if expiry <= today {
                return Err(format!("expiry_date {expiry} has passed"));
            }
            let quantity: i64 = field("quantity").parse().map_err(|_| format!("quantity {:?} is not a whole number", field("quantity")))?;
            let location = Some(field("location").to_owned());
            NewBatch::new(pharmacy_id, medication_id, field("batch_number"), expiry, quantity, location).map_err(|e| e.to_string())
        })();
        match parsed {
            Ok(batch) => match seen.get(&(batch.medication_id, batch.batch_number.clone())) {
                Some(first) => rejected.push(json!({"line": line_number, "reason": format!("duplicate batch {} (first on line {first})", batch.batch_number)})),
                None => {
                    seen.insert((batch.medication_id, batch.batch_number.clone()), line_number);
                    valid.push((line_number, batch));
                }
            },
            Err(reason) => rejected.push(json!({"line": line_number, "reason": reason})),
        }
    }

    let upload_id = Uuid::new_v4();
    let total = valid.len();
    let (mut applied, mut already) = (0usize, Vec::new());
    for (chunk_number, chunk) in valid.chunks(UPLOAD_CHUNK).enumerate() {
        let batches: Vec<NewBatch> = chunk.iter().map(|(_, batch)| batch.clone()).collect();
        let (created, skipped) = inventory::receive_many(&state.pool, principal.tenant_id, &principal.tenant_slug, &caller.0, &batches).await?;
        applied += created.len();
        already.extend(skipped.into_iter().map(|i| chunk[i].0));
        if total > UPLOAD_CHUNK {
            report_progress(&state, &caller.0, upload_id, ((chunk_number + 1) * UPLOAD_CHUNK).min(total), total).await?;
        }
    }
    let record = AuditRecord::by_caller(&caller.0, "inventory.upload", "pharmacy", pharmacy_id)
        .outcome(if rejected.is_empty() { Outcome::Success } else { Outcome::Failed })
        .detail(json!({"upload_id": upload_id, "applied": applied, "already_received": already.len(), "rejected": rejected.len()}));
    audit::record(&state.pool, principal.tenant_id, &record).await?;
    Ok(HttpResponse::Ok().json(json!({
        "upload_id": upload_id, "pharmacy_id": pharmacy_id, "applied": applied,
        "already_received": already, "rejected": rejected,
    })))
}

async fn report_progress(state: &AppState, caller: &Caller, upload_id: Uuid, processed: usize, total: usize) -> Result<(), ApiError> {
    let principal = &caller.principal;
    let mut tx = state.pool.begin().await?;
    let topic = topics::user_topic(&principal.tenant_slug, principal.user_id);
    store::publish_copy(&mut tx, principal.tenant_id, &topic, "upload.progress", &json!({"upload_id": upload_id, "processed": processed, "total": total})).await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Prescriptions

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrescribeBody {
    patient_id: Uuid,
    medication_id: Uuid,
    pharmacy_id: Uuid,
    dose: String,
    frequency: String,
    duration_days: i32,
    quantity: i32,
    #[serde(default)]
    refills: i32,
    notes: Option<String>,
}

async fn prescribe(state: web::Data<AppState>, caller: Authenticated, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Doctor], "prescribe")?;
    let b: PrescribeBody = body.parse()?;
    let new = NewPrescription::new(b.patient_id, b.medication_id, b.pharmacy_id, &b.dose, &b.frequency, b.duration_days, b.quantity, b.refills, b.notes)?;
    let prescribed = pharmacy::prescribe(&state.runtime, &state.pool, &caller.0, new).await?;
    Ok(HttpResponse::Created().json(prescribed))
}

/// The patient record linked to a patient-role user, if any.
async fn own_patient(state: &AppState, caller: &Authenticated) -> Result<Option<Uuid>, ApiError> {
    let principal = caller.principal();
    Ok(sqlx::query_scalar("SELECT id FROM patients WHERE user_id = $1 AND tenant_id = $2").bind(principal.user_id).bind(principal.tenant_id).fetch_optional(&state.pool).await?)
}

/// Audits one read per patient named in an answer, before it leaves the hub.
async fn audit_reads(state: &AppState, caller: &Caller, action: &str, patients: BTreeSet<Uuid>) -> Result<(), ApiError> {
    if patients.is_empty() {
        return Ok(());
    }
    let records: Vec<AuditRecord> = patients.into_iter().map(|p| AuditRecord::by_caller(caller, action, "patient", p).patient(Some(p))).collect();
    let mut tx = state.pool.begin().await?;
    audit::append_many(&mut tx, caller.principal.tenant_id, &records).await?;
    tx.commit().await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrescriptionQuery {
    patient_id: Option<Uuid>,
    pharmacy_id: Option<Uuid>,
    /// Comma-separated statuses: active, partially_dispensed, dispensed, cancelled.
    status: Option<String>,
    limit: Option<i64>,
}

async fn list_prescriptions(state: web::Data<AppState>, caller: Authenticated, query: web::Query<PrescriptionQuery>) -> Result<HttpResponse, ApiError> {
    caller.require(PRESCRIPTION_READERS, "read prescriptions")?;
    let limit = query.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 1000"));
    }
    let statuses: Vec<&str> = query.status.as_deref().map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()).unwrap_or_default();
    if let Some(bad) = statuses.iter().find(|s| !["active", "partially_dispensed", "dispensed", "cancelled"].contains(s)) {
        return Err(ApiError::invalid("status", format!("{bad:?} is not a prescription status")));
    }
    let mut patient_id = query.patient_id;
    if caller.principal().role == Role::Patient {
        match (own_patient(&state, &caller).await?, patient_id) {
            (Some(own), None) => patient_id = Some(own),
            (Some(own), Some(asked)) if own == asked => {}
            _ => return Ok(HttpResponse::Ok().json(json!({"prescriptions": []}))),
        }
    }
    let found = pharmacy::list_prescriptions(&state.pool, caller.principal().tenant_id, patient_id, query.pharmacy_id, &statuses, limit).await?;
    audit_reads(&state, &caller.0, "prescription.list", found.iter().map(|p| p.patient_id).collect()).await?;
    Ok(HttpResponse::Ok().json(json!({"prescriptions": found})))
}

async fn prescription_for(state: &AppState, caller: &Authenticated, path: &str) -> Result<pharmacy::Prescription, ApiError> {
    let id = path_id(path, "prescription")?;
    let found = pharmacy::get_prescription(&state.pool, caller.principal().tenant_id, id).await?.ok_or_else(|| ApiError::not_found("prescription"))?;
    if caller.principal().role == Role::Patient && own_patient(state, caller).await? != Some(found.patient_id) {
        return Err(ApiError::not_found("prescription"));
    }
    Ok(found)
}

async fn get_prescription(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(PRESCRIPTION_READERS, "read prescriptions")?;
    let found = prescription_for(&state, &caller, &path).await?;
    audit_reads(&state, &caller.0, "prescription.read", BTreeSet::from([found.patient_id])).await?;
    Ok(HttpResponse::Ok().json(found))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DispenseBody {
    quantity: Option<i64>,
}

async fn dispense(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Pharmacist], "dispense")?;
    let found = prescription_for(&state, &caller, &path).await?;
    let body: DispenseBody = body.parse_or_default()?;
    match pharmacy::dispense(&state.runtime, &state.pool, &caller.0, found.id, body.quantity).await {
        Ok(dispensed) => Ok(HttpResponse::Ok().json(dispensed)),
        Err(refused @ ActorError::Conflict(_)) => {
            let record = AuditRecord::by_caller(&caller.0, "prescription.dispense", "prescription", found.id)
                .patient(Some(found.patient_id))
                .outcome(Outcome::Failed)
                .detail(json!({"reason": refused.to_string()}));
            audit::record(&state.pool, caller.principal().tenant_id, &record).await?;
            Err(refused.into())
        }
        Err(other) => Err(other.into()),
    }
}

async fn cancel(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Doctor, Role::Pharmacist, Role::Admin], "cancel prescriptions")?;
    let found = prescription_for(&state, &caller, &path).await?;
    let body: ReasonBody = body.parse()?;
    let cancelled = pharmacy::cancel(&state.runtime, &state.pool, &caller.0, found.id, &body.reason).await?;
    Ok(HttpResponse::Ok().json(cancelled))
}

async fn refill(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Doctor, Role::Pharmacist], "refill prescriptions")?;
    let found = prescription_for(&state, &caller, &path).await?;
    let refilled = pharmacy::refill(&state.runtime, &state.pool, &caller.0, found.id).await?;
    Ok(HttpResponse::Ok().json(refilled))
}

#[cfg(test)]
mod tests {
    use super::split_csv_line;

    #[test]
    fn csv_lines_split_on_commas_outside_quotes() {
        assert_eq!(split_csv_line("a, b ,c").unwrap(), ["a", "b", "c"]);
        assert_eq!(split_csv_line("\"Amoxicillin, 500 mg\",B1,,").unwrap(), ["Amoxicillin, 500 mg", "B1", "", ""]);
        assert_eq!(split_csv_line("\"say \"\"hi\"\"\",x").unwrap(), ["say \"hi\"", "x"]);
        assert!(split_csv_line("\"open,x").is_err());
    }
}
