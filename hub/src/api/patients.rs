//! Patient records over HTTP: `/api/patients` (register, search), `/api/patients/{id}` (read,
//! change), the patient's vital-sign observations at `/api/patients/{id}/observations`, and the
//! same record as a FHIR R4 Patient resource at `/fhir/Patient/{id}`.
//!
//! Who may do what, and the audit entry every read and change leaves, are decided in
//! [`medhub_actors::patients`]; this file checks the role first (recording a refusal, before a
//! body is even parsed), parses bodies straight into the domain's types (so a bad value is a 400
//! naming its field, e.g. `emergency_contacts[0].phone`) and shapes the answers.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use chrono::SecondsFormat;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use uuid::Uuid;

use medhub_actors::patients::{
    self, Address, BirthDate, EmergencyContact, Mrn, NewPatient, Patient, PatientDetails, PatientName, PatientQuery,
    PatientUpdate, Phone, ReadPurpose, Sex, CLINICAL_STAFF, RECORD_READERS,
};
use medhub_actors::observations::{self, ObservationQuery};
use medhub_actors::{Role, TenantSlug};

use super::error::ApiError;
use super::extract::{path_id, Authenticated, Body};
use crate::server::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/patients", web::post().to(create))
        .route("/api/patients", web::get().to(search))
        .route("/api/patients/{id}", web::get().to(get))
        .route("/api/patients/{id}", web::put().to(update))
        .route("/api/patients/{id}/observations", web::get().to(observations))
        .route("/fhir/Patient/{id}", web::get().to(get_fhir));
}

/// 403 unless the caller has one of `roles`; the refusal is recorded, naming the patient asked for.
async fn require(
    state: &AppState,
    caller: &Authenticated,
    roles: &[Role],
    doing: &str,
    action: &str,
    patient_id: Option<Uuid>,
) -> Result<(), ApiError> {
    if let Err(refused) = caller.require(roles, doing) {
        patients::record_refusal(&state.pool, &caller.0, action, patient_id, &refused.to_string()).await?;
        return Err(refused);
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPatientBody {
    #[serde(default)]
    mrn: Option<Mrn>,
    given_name: String,
    family_name: String,
    birth_date: BirthDate,
    sex: Sex,
    #[serde(default)]
    phone: Option<Phone>,
    #[serde(default)]
    address: Option<Address>,
    #[serde(default)]
    emergency_contacts: Vec<EmergencyContact>,
    #[serde(default)]
    user_id: Option<Uuid>,
}

/// `null` and absent mean different things for `user_id` in an update: unlink, and leave as is.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatientUpdateBody {
    version: i64,
    #[serde(default)]
    mrn: Option<Mrn>,
    given_name: String,
    family_name: String,
    birth_date: BirthDate,
    sex: Sex,
    #[serde(default)]
    phone: Option<Phone>,
    #[serde(default)]
    address: Option<Address>,
    #[serde(default)]
    emergency_contacts: Vec<EmergencyContact>,
    #[serde(default, deserialize_with = "present")]
    user_id: Option<Option<Uuid>>,
}

async fn create(state: web::Data<AppState>, caller: Authenticated, body: Body) -> Result<HttpResponse, ApiError> {
    require(&state, &caller, CLINICAL_STAFF, "register patients", "patient.create", None).await?;
    let body: NewPatientBody = body.parse()?;
    let name = PatientName::new(&body.given_name, &body.family_name)?;
    let details = PatientDetails::new(name, body.birth_date, body.sex, body.phone, body.address, body.emergency_contacts)?;
    let patient = patients::create(&state.pool, &caller.0, NewPatient { mrn: body.mrn, details, user_id: body.user_id }).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/patients/{}", patient.id)))
        .insert_header(("Cache-Control", "no-store"))
        .json(patient))
}

async fn get(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path, "patient")?;
    require(&state, &caller, RECORD_READERS, "read patient records", ReadPurpose::Record.action(), Some(id)).await?;
    let patient = patients::get(&state.pool, &caller.0, id, ReadPurpose::Record).await?;
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(patient))
}

async fn update(
    state: web::Data<AppState>,
    caller: Authenticated,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path, "patient")?;
    require(&state, &caller, CLINICAL_STAFF, "change patient records", "patient.update", Some(id)).await?;
    let body: PatientUpdateBody = body.parse()?;
    let name = PatientName::new(&body.given_name, &body.family_name)?;
    let details = PatientDetails::new(name, body.birth_date, body.sex, body.phone, body.address, body.emergency_contacts)?;
    let change = PatientUpdate { expected_version: body.version, mrn: body.mrn, details, user_id: body.user_id };
    let patient = patients::update(&state.pool, &caller.0, id, change).await?;
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(patient))
}

const OBSERVATION_FILTERS: &[&str] = &["from", "to", "limit"];

/// `from`, `to` and `limit` of an observations read; anything else is a 400 naming it.
fn observation_query(query: &HashMap<String, String>) -> Result<ObservationQuery, ApiError> {
    if let Some(unknown) = query.keys().find(|key| !OBSERVATION_FILTERS.contains(&key.as_str())) {
        return Err(ApiError::invalid(unknown.clone(), format!("unknown parameter; use {}", OBSERVATION_FILTERS.join(", "))));
    }
    let value = |key: &str| query.get(key).map(String::as_str);
    Ok(ObservationQuery::parse(value("from"), value("to"), value("limit"))?)
}

/// Whose vital-sign observations a read asks for (the id from the path).
#[derive(Debug, Clone, Copy)]
pub(crate) enum ObservationsOf {
    Incident(Uuid),
    Patient(Uuid),
}

/// Answers an observations read, for an incident's or a patient's endpoint alike: the query's
/// `from`, `to` and `limit` (the latest `limit` measured in `[from, to)`), the page oldest first
/// (read and audited by [`medhub_actors::observations`], which also decides who may), never cached.
pub(crate) async fn observations_answer(
    state: &AppState,
    caller: &Authenticated,
    of: ObservationsOf,
    query: &HashMap<String, String>,
) -> Result<HttpResponse, ApiError> {
    let parsed = observation_query(query)?;
    let (key, id, page) = match of {
        ObservationsOf::Incident(id) => ("incident_id", id, observations::for_incident(&state.pool, &caller.0, id, &parsed).await?),
        ObservationsOf::Patient(id) => ("patient_id", id, observations::for_patient(&state.pool, &caller.0, id, &parsed).await?),
    };
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({key: id, "from": parsed.from, "to": parsed.to, "observations": page.observations, "more": page.more})))
}

/// The vital signs recorded for the patient on their way in, for those who may read the
/// patient's record; a refused role is recorded before the query is even parsed.
async fn observations(
    state: web::Data<AppState>,
    caller: Authenticated,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path, "patient")?;
    require(&state, &caller, RECORD_READERS, "read patient records", "observations.read", Some(id)).await?;
    observations_answer(&state, &caller, ObservationsOf::Patient(id), &query).await
}

const SEARCH_FILTERS: &[&str] = &["q", "mrn", "phone"];

async fn search(
    state: web::Data<AppState>,
    caller: Authenticated,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    require(&state, &caller, CLINICAL_STAFF, "search patient records", "patient.search", None).await?;
    if let Some(unknown) = query.keys().find(|key| !SEARCH_FILTERS.contains(&key.as_str())) {
        return Err(ApiError::invalid(unknown.clone(), format!("unknown filter; use {}", SEARCH_FILTERS.join(", "))));
    }
    let filter = |key: &str| query.get(key).map(String::as_str);
    let parsed = PatientQuery::parse(filter("q"), filter("mrn"), filter("phone"))?;
    let found = patients::search(&state.pool, &caller.0, &parsed).await?;
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(found))
}

async fn get_fhir(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path, "patient")?;
    require(&state, &caller, RECORD_READERS, "read patient records", ReadPurpose::Fhir.action(), Some(id)).await?;
    let patient = patients::get(&state.pool, &caller.0, id, ReadPurpose::Fhir).await?;
    let resource = fhir_patient(&patient, &caller.principal().tenant_slug);
    Ok(HttpResponse::Ok()
        .content_type("application/fhir+json")
        .insert_header(("Cache-Control", "no-store"))
        .body(resource.to_string()))
}

/// The FHIR identifier system of a tenant's medical record numbers.
pub(crate) fn mrn_system(tenant: &TenantSlug) -> String {
    format!("urn:medhub:{tenant}:mrn")
}

/// A record as a FHIR R4 Patient resource.
pub(crate) fn fhir_patient(patient: &Patient, tenant: &TenantSlug) -> Value {
    let phone = |phone: &Phone| json!({"system": "phone", "value": phone.as_str()});
    let mut resource = json!({
        "resourceType": "Patient",
        "id": patient.id,
        "meta": {
            "versionId": patient.version.to_string(),
            "lastUpdated": patient.updated_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        },
        "identifier": [{
            "use": "usual",
            "type": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR", "display": "Medical record number"}],
                "text": "Medical record number",
            },
            "system": mrn_system(tenant),
            "value": patient.mrn.as_str(),
        }],
        "name": [{
            "use": "official",
            "text": format!("{} {}", patient.name.given, patient.name.family),
            "family": patient.name.family.as_str(),
            "given": patient.name.given.as_str().split_whitespace().collect::<Vec<_>>(),
        }],
        "gender": patient.sex.as_str(),
        "birthDate": patient.birth_date.to_string(),
    });
    if let Some(number) = &patient.phone {
        resource["telecom"] = json!([phone(number)]);
    }
    if let Some(address) = &patient.address {
        let mut fhir_address = json!({
            "use": "home",
            "line": [address.line.as_str()],
            "city": address.city.as_str(),
            "country": address.country.as_str(),
        });
        if let Some(postal_code) = &address.postal_code {
            fhir_address["postalCode"] = json!(postal_code.as_str());
        }
        if let Some(location) = &address.location {
            fhir_address["extension"] = json!([{
                "url": "http://hl7.org/fhir/StructureDefinition/geolocation",
                "extension": [
                    {"url": "latitude", "valueDecimal": location.lat()},
                    {"url": "longitude", "valueDecimal": location.lon()},
                ],
            }]);
        }
        resource["address"] = json!([fhir_address]);
    }
    if !patient.emergency_contacts.is_empty() {
        let contacts: Vec<Value> = patient
            .emergency_contacts
            .iter()
            .map(|contact| {
                json!({
                    "relationship": [{"text": contact.relationship.as_str()}],
                    "name": {"text": contact.name.as_str()},
                    "telecom": [phone(&contact.phone)],
                })
            })
            .collect();
        resource["contact"] = json!(contacts);
    }
    resource
}
