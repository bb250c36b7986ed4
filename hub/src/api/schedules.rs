//! Doctors, their availability, and appointments: `/api/doctors`, `/api/appointments` (and the
//! older `POST /v1/appointments`). Writes go to the doctor's `DoctorSchedule` actor; lists read the
//! projection. Every read that returns appointments is audited once per patient it names.

use std::collections::{BTreeSet, HashMap};

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use medhub_actors::audit::{self, AuditRecord, Outcome};
use medhub_actors::schedule::{
    self, AddTimeOff, Advance, AppointmentFilter, AppointmentKind, AppointmentRecord, AppointmentStatus, Availability, Book, Cancel,
    GetSchedule, NewDoctor, NextFreeSlot, RemoveTimeOff, Reschedule, SetHours, Transition, WorkingHours,
};
use medhub_actors::tenant::RegisterDoctor;
use medhub_actors::{ActorError, Caller, GeoPoint, Role};

use super::error::ApiError;
use super::extract::{path_id, Authenticated, Body};
use crate::server::AppState;

/// Who may book for any patient, and read any appointment.
const FRONT_DESK: &[Role] = &[Role::Admin, Role::Nurse, Role::Doctor];

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/doctors", web::get().to(list_doctors))
        .route("/api/doctors", web::post().to(register_doctor))
        .route("/api/doctors/{id}", web::get().to(get_doctor))
        .route("/api/doctors/{id}/hours", web::put().to(set_hours))
        .route("/api/doctors/{id}/time-off", web::post().to(add_time_off))
        .route("/api/doctors/{id}/time-off/{time_off_id}", web::delete().to(remove_time_off))
        .route("/api/doctors/{id}/availability", web::get().to(availability))
        .route("/api/appointments", web::get().to(list_appointments))
        .route("/api/appointments", web::post().to(book))
        .route("/v1/appointments", web::post().to(book))
        .route("/api/appointments/{id}", web::get().to(get_appointment))
        .route("/api/appointments/{id}/reschedule", web::post().to(reschedule))
        .route("/api/appointments/{id}/cancel", web::post().to(cancel))
        .route("/api/appointments/{id}/check-in", web::post().to(check_in))
        .route("/api/appointments/{id}/no-show", web::post().to(no_show))
        .route("/api/appointments/{id}/complete", web::post().to(complete));
}

// ---------------------------------------------------------------------------------------------
// Doctors

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    user_id: Uuid,
    specialties: Vec<String>,
    facility_id: Uuid,
    consult_minutes: i32,
    working_hours: Vec<WorkingHours>,
}

async fn register_doctor(state: web::Data<AppState>, caller: Authenticated, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin], "register doctors")?;
    let body: RegisterBody = body.parse()?;
    let doctor = NewDoctor::new(body.user_id, body.specialties, body.facility_id, body.consult_minutes, body.working_hours)?;
    let principal = caller.principal();
    let supervisor = state.runtime.tenant(principal.tenant_id, &principal.tenant_slug)?;
    let schedule = supervisor.send(RegisterDoctor { caller: caller.0.clone(), doctor }).await??;
    Ok(HttpResponse::Created().json(doctor_json(&schedule)))
}

fn doctor_json(schedule: &schedule::Schedule) -> Value {
    json!({
        "id": schedule.profile.id, "user_id": schedule.profile.user_id, "display_name": schedule.profile.display_name,
        "specialties": schedule.profile.specialties, "facility_id": schedule.profile.facility_id,
        "timezone": schedule.profile.timezone, "consult_minutes": schedule.profile.consult_minutes,
        "working_hours": schedule.profile.working_hours, "time_off": schedule.time_off, "version": schedule.version,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DoctorQuery {
    specialty: Option<String>,
    /// `lat,lon`: nearest first, with the distance.
    near: Option<String>,
    limit: Option<usize>,
}

fn parse_near(near: &str) -> Result<GeoPoint, ApiError> {
    let bad = |detail: String| ApiError::invalid("near", detail);
    let (lat, lon) = near.split_once(',').ok_or_else(|| bad("near is \"lat,lon\", e.g. near=-1.29,36.82".into()))?;
    let (lat, lon): (f64, f64) = (
        lat.trim().parse().map_err(|_| bad(format!("{lat:?} is not a latitude")))?,
        lon.trim().parse().map_err(|_| bad(format!("{lon:?} is not a longitude")))?,
    );
    GeoPoint::new(lat, lon).map_err(bad)
}

/// Doctors of the tenant (any role may look), by specialty, nearest first from `near`, each with
/// the next free slot within two weeks.
async fn list_doctors(state: web::Data<AppState>, caller: Authenticated, query: web::Query<DoctorQuery>) -> Result<HttpResponse, ApiError> {
    let near = query.near.as_deref().map(parse_near).transpose()?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 100"));
    }
    let principal = caller.principal();
    let doctors = schedule::list_doctors(&state.pool, principal.tenant_id, query.specialty.as_deref().map(str::trim)).await?;
    let mut found: Vec<(Option<f64>, schedule::DoctorSummary)> =
        doctors.into_iter().map(|doctor| (near.map(|point| schedule::distance_km(point, doctor.location)), doctor)).collect();
    if near.is_some() {
        found.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    }
    found.truncate(limit);
    let mut answer = Vec::with_capacity(found.len());
    for (distance_km, doctor) in found {
        let actor = state.runtime.schedule(principal.tenant_id, &principal.tenant_slug, doctor.id).await?;
        let next = actor.send(NextFreeSlot { days: 14 }).await??;
        let mut entry = json!(doctor);
        entry["distance_km"] = json!(distance_km.map(|km| (km * 100.0).round() / 100.0));
        entry["next_free_slot"] = json!(next);
        answer.push(entry);
    }
    Ok(HttpResponse::Ok().json(json!({"doctors": answer})))
}

async fn get_doctor(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let doctor_id = path_id(&path, "doctor")?;
    let principal = caller.principal();
    let actor = state.runtime.schedule(principal.tenant_id, &principal.tenant_slug, doctor_id).await?;
    let schedule = actor.send(GetSchedule).await??;
    Ok(HttpResponse::Ok().json(doctor_json(&schedule)))
}

/// Admins, or the doctor themself, may change a doctor's hours and time off.
async fn own_schedule(state: &AppState, caller: &Authenticated, doctor_id: Uuid) -> Result<actix::Addr<schedule::DoctorScheduleActor>, ApiError> {
    let principal = caller.principal();
    let actor = state.runtime.schedule(principal.tenant_id, &principal.tenant_slug, doctor_id).await?;
    if principal.role != Role::Admin {
        let schedule = actor.send(GetSchedule).await??;
        if principal.role != Role::Doctor || schedule.profile.user_id != principal.user_id {
            return Err(ApiError::Forbidden("only an admin or the doctor themself may change a doctor's hours and time off".into()));
        }
    }
    Ok(actor)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoursBody {
    working_hours: Vec<WorkingHours>,
    consult_minutes: i32,
}

async fn set_hours(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    let doctor_id = path_id(&path, "doctor")?;
    let actor = own_schedule(&state, &caller, doctor_id).await?;
    let body: HoursBody = body.parse()?;
    let schedule = actor
        .send(SetHours { caller: caller.0.clone(), working_hours: body.working_hours, consult_minutes: body.consult_minutes })
        .await
        ??;
    Ok(HttpResponse::Ok().json(doctor_json(&schedule)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeOffBody {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    reason: String,
}

async fn add_time_off(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    let doctor_id = path_id(&path, "doctor")?;
    let actor = own_schedule(&state, &caller, doctor_id).await?;
    let body: TimeOffBody = body.parse()?;
    let off = actor
        .send(AddTimeOff { caller: caller.0.clone(), start: body.start, end: body.end, reason: body.reason })
        .await
        ??;
    Ok(HttpResponse::Created().json(off))
}

async fn remove_time_off(state: web::Data<AppState>, caller: Authenticated, path: web::Path<(String, String)>) -> Result<HttpResponse, ApiError> {
    let (doctor_id, time_off_id) = (path_id(&path.0, "doctor")?, path_id(&path.1, "time off")?);
    let actor = own_schedule(&state, &caller, doctor_id).await?;
    actor.send(RemoveTimeOff { caller: caller.0.clone(), time_off_id }).await??;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AvailabilityQuery {
    from: Option<String>,
    to: Option<String>,
}

fn parse_date(field: &'static str, value: &str) -> Result<NaiveDate, ApiError> {
    value.parse().map_err(|_| ApiError::invalid(field, format!("{field} is a date as YYYY-MM-DD, not {value:?}")))
}

/// Free slots on the local days `from..=to` of the doctor's facility (default: the next 7 days).
async fn availability(
    state: web::Data<AppState>,
    caller: Authenticated,
    path: web::Path<String>,
    query: web::Query<AvailabilityQuery>,
) -> Result<HttpResponse, ApiError> {
    let doctor_id = path_id(&path, "doctor")?;
    let principal = caller.principal();
    let actor = state.runtime.schedule(principal.tenant_id, &principal.tenant_slug, doctor_id).await?;
    let schedule = actor.send(GetSchedule).await??;
    let today = Utc::now().with_timezone(&schedule.zone()).date_naive();
    let from = query.from.as_deref().map(|v| parse_date("from", v)).transpose()?.unwrap_or(today);
    let to = query.to.as_deref().map(|v| parse_date("to", v)).transpose()?.unwrap_or(from + Duration::days(6));
    let slots = actor.send(Availability { from, to }).await??;
    Ok(HttpResponse::Ok().json(json!({
        "doctor_id": doctor_id, "timezone": schedule.profile.timezone, "from": from, "to": to,
        "consult_minutes": schedule.profile.consult_minutes, "slots": slots,
    })))
}

// ---------------------------------------------------------------------------------------------
// Appointments

/// The patient record linked to a patient-role user, if any.
async fn linked_patient(pool: &PgPool, tenant_id: Uuid, user_id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM patients WHERE user_id = $1 AND tenant_id = $2").bind(user_id).bind(tenant_id).fetch_optional(pool).await
}

/// Records a refusal in the audit trail and returns it.
async fn refused(state: &AppState, caller: &Caller, action: &str, resource: Uuid, patient: Option<Uuid>, refusal: ApiError) -> ApiError {
    let record = AuditRecord::by_caller(caller, action, "appointment", resource)
        .patient(patient)
        .outcome(Outcome::Denied)
        .detail(json!({"reason": refusal.to_string()}));
    match audit::record(&state.pool, caller.principal.tenant_id, &record).await {
        Ok(_) => refusal,
        Err(e) => e.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BookBody {
    doctor_id: Uuid,
    patient_id: Uuid,
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
    #[serde(default = "in_person")]
    kind: AppointmentKind,
    reason: Option<String>,
}

fn in_person() -> AppointmentKind {
    AppointmentKind::InPerson
}

fn check_reason(reason: Option<String>) -> Result<Option<String>, ApiError> {
    match reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()) {
        Some(reason) if reason.chars().count() > 500 => Err(ApiError::invalid("reason", "reason is at most 500 characters")),
        other => Ok(other),
    }
}

async fn book(state: web::Data<AppState>, caller: Authenticated, body: Body) -> Result<HttpResponse, ApiError> {
    let principal = caller.principal();
    let may_book_for_anyone = principal.has_role(FRONT_DESK);
    if !may_book_for_anyone && principal.role != Role::Patient {
        return Err(ApiError::Forbidden(format!("role {} may not book appointments", principal.role)));
    }
    let body: BookBody = body.parse()?;
    let reason = check_reason(body.reason)?;
    if !may_book_for_anyone && linked_patient(&state.pool, principal.tenant_id, principal.user_id).await? != Some(body.patient_id) {
        let refusal = ApiError::Forbidden("a patient may book only for themself".into());
        return Err(refused(&state, &caller.0, "appointment.book", body.doctor_id, Some(body.patient_id), refusal).await);
    }
    let actor = match state.runtime.schedule(principal.tenant_id, &principal.tenant_slug, body.doctor_id).await {
        Err(ActorError::NotFound(_)) => return Err(ApiError::invalid("doctor_id", "no doctor with that id in this tenant")),
        other => other?,
    };
    let booked = actor
        .send(Book {
            caller: caller.0.clone(),
            patient_id: body.patient_id,
            start: body.start,
            end: body.end,
            kind: body.kind,
            reason,
        })
        .await
        ??;
    Ok(HttpResponse::Created().json(booked))
}

/// An appointment the caller may act on, and the actor of its doctor. Patients may touch only
/// their own appointments (another's is not found); dispatchers and pharmacists none.
async fn appointment_for(
    state: &AppState,
    caller: &Authenticated,
    id: Uuid,
    roles: &[Role],
    doing: &str,
) -> Result<(AppointmentRecord, actix::Addr<schedule::DoctorScheduleActor>), ApiError> {
    let principal = caller.principal();
    let own_patient_allowed = roles.contains(&Role::Patient);
    if !principal.has_role(roles) {
        let refusal = ApiError::Forbidden(format!("role {} may not {doing}", principal.role));
        return Err(refused(state, &caller.0, doing, id, None, refusal).await);
    }
    let appointment = schedule::get_appointment(&state.pool, principal.tenant_id, id).await?.ok_or_else(|| ApiError::not_found("appointment"))?;
    if principal.role == Role::Patient
        && (!own_patient_allowed || linked_patient(&state.pool, principal.tenant_id, principal.user_id).await? != Some(appointment.patient_id))
    {
        return Err(ApiError::not_found("appointment"));
    }
    let actor = state.runtime.schedule(principal.tenant_id, &principal.tenant_slug, appointment.doctor_id).await?;
    Ok((appointment, actor))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RescheduleBody {
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
}

const WITH_PATIENT: &[Role] = &[Role::Admin, Role::Nurse, Role::Doctor, Role::Patient];

async fn reschedule(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path, "appointment")?;
    let (_, actor) = appointment_for(&state, &caller, id, WITH_PATIENT, "reschedule appointments").await?;
    let body: RescheduleBody = body.parse()?;
    let moved = actor
        .send(Reschedule { caller: caller.0.clone(), appointment_id: id, start: body.start, end: body.end })
        .await
        ??;
    Ok(HttpResponse::Ok().json(moved))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: String,
}

async fn cancel(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path, "appointment")?;
    let (_, actor) = appointment_for(&state, &caller, id, WITH_PATIENT, "cancel appointments").await?;
    let body: CancelBody = body.parse()?;
    let cancelled = actor.send(Cancel { caller: caller.0.clone(), appointment_id: id, reason: body.reason }).await??;
    Ok(HttpResponse::Ok().json(cancelled))
}

async fn advance(state: &AppState, caller: &Authenticated, id: Uuid, transition: Transition, roles: &[Role], doing: &str) -> Result<HttpResponse, ApiError> {
    let (_, actor) = appointment_for(state, caller, id, roles, doing).await?;
    let changed = actor.send(Advance { caller: caller.0.clone(), appointment_id: id, transition }).await??;
    Ok(HttpResponse::Ok().json(changed))
}

async fn check_in(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    advance(&state, &caller, path_id(&path, "appointment")?, Transition::CheckIn, FRONT_DESK, "check patients in").await
}

async fn no_show(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    advance(&state, &caller, path_id(&path, "appointment")?, Transition::NoShow, FRONT_DESK, "mark no-shows").await
}

async fn complete(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    advance(&state, &caller, path_id(&path, "appointment")?, Transition::Complete, &[Role::Admin, Role::Doctor], "complete appointments").await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppointmentQuery {
    doctor_id: Option<Uuid>,
    patient_id: Option<Uuid>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    status: Option<String>,
    limit: Option<i64>,
}

/// Appointments by doctor, patient, time and status, with patient and doctor names. Patients see
/// only their own. Each patient named in the answer gets an audit entry.
async fn list_appointments(state: web::Data<AppState>, caller: Authenticated, query: web::Query<AppointmentQuery>) -> Result<HttpResponse, ApiError> {
    let principal = caller.principal();
    if !principal.has_role(WITH_PATIENT) {
        return Err(ApiError::Forbidden(format!("role {} may not read appointments", principal.role)));
    }
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 1000"));
    }
    let status = query
        .status
        .as_deref()
        .map(|s| AppointmentStatus::parse(s).ok_or_else(|| ApiError::invalid("status", "status is booked, checked_in, completed, cancelled or no_show")))
        .transpose()?;
    let mut patient_id = query.patient_id;
    if principal.role == Role::Patient {
        let own = linked_patient(&state.pool, principal.tenant_id, principal.user_id).await?;
        match (own, patient_id) {
            (Some(own), None) => patient_id = Some(own),
            (Some(own), Some(asked)) if own == asked => {}
            _ => return Ok(HttpResponse::Ok().json(json!({"appointments": []}))),
        }
    }
    let filter = AppointmentFilter { doctor_id: query.doctor_id, patient_id, from: query.from, to: query.to, status, limit };
    let appointments = schedule::list_appointments(&state.pool, principal.tenant_id, &filter).await?;
    let answer = with_names(&state.pool, &caller.0, "appointment.list", appointments).await?;
    Ok(HttpResponse::Ok().json(json!({"appointments": answer})))
}

async fn get_appointment(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path, "appointment")?;
    let (appointment, _) = appointment_for(&state, &caller, id, WITH_PATIENT, "read appointments").await?;
    let mut answer = with_names(&state.pool, &caller.0, "appointment.read", vec![appointment]).await?;
    Ok(HttpResponse::Ok().json(answer.remove(0)))
}

/// Adds patient and doctor names, auditing one read per patient named (in one transaction,
/// committed before the names leave the hub).
async fn with_names(pool: &PgPool, caller: &Caller, action: &str, appointments: Vec<AppointmentRecord>) -> Result<Vec<Value>, ApiError> {
    let patients: BTreeSet<Uuid> = appointments.iter().map(|a| a.patient_id).collect();
    let doctors: BTreeSet<Uuid> = appointments.iter().map(|a| a.doctor_id).collect();
    let patient_ids: Vec<Uuid> = patients.iter().copied().collect();
    let doctor_ids: Vec<Uuid> = doctors.into_iter().collect();
    let patient_names: HashMap<Uuid, String> =
        sqlx::query_as("SELECT id, given_name || ' ' || family_name FROM patients WHERE id = ANY($1) AND tenant_id = $2")
            .bind(&patient_ids)
            .bind(caller.principal.tenant_id)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let doctor_names: HashMap<Uuid, String> = sqlx::query_as("SELECT id, display_name FROM doctors WHERE id = ANY($1) AND tenant_id = $2")
        .bind(&doctor_ids)
        .bind(caller.principal.tenant_id)
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
    if !patient_ids.is_empty() {
        let mut tx = pool.begin().await?;
        for patient in &patient_ids {
            let shown: Vec<Uuid> = appointments.iter().filter(|a| a.patient_id == *patient).map(|a| a.id).collect();
            let record = AuditRecord::by_caller(caller, action, "patient", patient).patient(Some(*patient)).detail(json!({"appointments": shown}));
            audit::append(&mut tx, caller.principal.tenant_id, &record).await?;
        }
        tx.commit().await?;
    }
    Ok(appointments
        .into_iter()
        .map(|a| {
            let mut entry = json!(a);
            entry["patient_name"] = json!(patient_names.get(&a.patient_id));
            entry["doctor_name"] = json!(doctor_names.get(&a.doctor_id));
            entry
        })
        .collect())
}
