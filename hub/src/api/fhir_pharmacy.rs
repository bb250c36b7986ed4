//! FHIR R4 views of the pharmacy: `Medication`, `MedicationRequest` (a prescription) and
//! `MedicationDispense` (units handed over), as `application/fhir+json`. Reads of the last two
//! are reads of patient data and are audited with the patient.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use medhub_actors::audit::{self, AuditRecord};
use medhub_actors::pharmacy::{self, MedicationInfo, Prescription};
use medhub_actors::Role;

use super::error::ApiError;
use super::extract::{path_id, Authenticated};
use crate::server::AppState;

const CLINICAL: &[Role] = &[Role::Pharmacist, Role::Admin, Role::Doctor, Role::Nurse];
const ATC_SYSTEM: &str = "http://www.whocc.no/atc";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/fhir/Medication/{id}", web::get().to(medication))
        .route("/fhir/MedicationRequest/{id}", web::get().to(medication_request))
        .route("/fhir/MedicationDispense/{id}", web::get().to(medication_dispense));
}

fn fhir(resource: Value) -> HttpResponse {
    HttpResponse::Ok().content_type("application/fhir+json").insert_header(("Cache-Control", "no-store")).json(resource)
}

pub(crate) fn fhir_medication(m: &MedicationInfo) -> Value {
    json!({
        "resourceType": "Medication",
        "id": m.id,
        "code": {"coding": [{"system": ATC_SYSTEM, "code": m.atc_code, "display": m.generic_name}], "text": m.name},
        "form": {"text": m.form},
        "ingredient": [{"itemCodeableConcept": {"text": m.generic_name}, "isActive": true}],
        "extension": [{"url": "urn:medhub:medication:strength", "valueString": m.strength}],
    })
}

/// FHIR's MedicationRequest status for a prescription's.
fn request_status(status: &str) -> &'static str {
    match status {
        "active" | "partially_dispensed" => "active",
        "dispensed" => "completed",
        _ => "cancelled",
    }
}

pub(crate) fn fhir_medication_request(p: &Prescription) -> Value {
    let mut resource = json!({
        "resourceType": "MedicationRequest",
        "id": p.id,
        "meta": {"lastUpdated": p.updated_at},
        "status": request_status(&p.status),
        "intent": "order",
        "medicationReference": {"reference": format!("Medication/{}", p.medication_id)},
        "subject": {"reference": format!("Patient/{}", p.patient_id)},
        "authoredOn": p.created_at,
        "requester": {"reference": format!("Practitioner/{}", p.prescriber_id)},
        "dosageInstruction": [{"text": format!("{}, {}, for {} days", p.dose, p.frequency, p.duration_days)}],
        "dispenseRequest": {
            "quantity": {"value": p.quantity},
            "numberOfRepeatsAllowed": p.refills,
            "expectedSupplyDuration": {"value": p.duration_days, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"},
            "performer": {"reference": format!("Location/{}", p.pharmacy_id)},
        },
    });
    if let Some(notes) = &p.notes {
        resource["note"] = json!([{"text": notes}]);
    }
    resource
}

async fn medication(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(CLINICAL, "look up medications")?;
    let id = path_id(&path, "medication")?;
    let found = pharmacy::get_medication(&state.pool, caller.principal().tenant_id, id).await?.ok_or_else(|| ApiError::not_found("medication"))?;
    Ok(fhir(fhir_medication(&found)))
}

async fn audit_read(state: &AppState, caller: &Authenticated, action: &str, resource: &str, id: Uuid, patient: Uuid) -> Result<(), ApiError> {
    let record = AuditRecord::by_caller(&caller.0, action, resource, id).patient(Some(patient));
    audit::record(&state.pool, caller.principal().tenant_id, &record).await?;
    Ok(())
}

async fn medication_request(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(CLINICAL, "read prescriptions")?;
    let id = path_id(&path, "prescription")?;
    let found = pharmacy::get_prescription(&state.pool, caller.principal().tenant_id, id).await?.ok_or_else(|| ApiError::not_found("prescription"))?;
    audit_read(&state, &caller, "prescription.read_fhir", "prescription", id, found.patient_id).await?;
    Ok(fhir(fhir_medication_request(&found)))
}

async fn medication_dispense(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(CLINICAL, "read dispenses")?;
    let id = path_id(&path, "dispense")?;
    let row: Option<(Uuid, Uuid, Uuid, Uuid, i32, Uuid, DateTime<Utc>, Uuid)> = sqlx::query_as(
        "SELECT d.prescription_id, d.patient_id, d.batch_id, d.medication_id, d.quantity, d.dispensed_by, d.dispensed_at, b.pharmacy_id
         FROM dispenses d JOIN inventory_batches b ON b.id = d.batch_id WHERE d.id = $1 AND d.tenant_id = $2",
    )
    .bind(id)
    .bind(caller.principal().tenant_id)
    .fetch_optional(&state.pool)
    .await?;
    let (prescription, patient, batch, medication, quantity, by, at, pharmacy) = row.ok_or_else(|| ApiError::not_found("dispense"))?;
    audit_read(&state, &caller, "dispense.read_fhir", "dispense", id, patient).await?;
    Ok(fhir(json!({
        "resourceType": "MedicationDispense",
        "id": id,
        "status": "completed",
        "medicationReference": {"reference": format!("Medication/{medication}")},
        "subject": {"reference": format!("Patient/{patient}")},
        "authorizingPrescription": [{"reference": format!("MedicationRequest/{prescription}")}],
        "performer": [{"actor": {"reference": format!("Practitioner/{by}")}}],
        "location": {"reference": format!("Location/{pharmacy}")},
        "quantity": {"value": quantity},
        "whenHandedOver": at,
        "extension": [{"url": "urn:medhub:dispense:batch", "valueString": batch.to_string()}],
    })))
}
