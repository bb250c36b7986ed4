//! Ambulance units: `/api/ambulances` (register, list, status, track). Status changes go to the
//! unit's `Ambulance` actor; positions arrive from the unit's device over MQTT, not through here.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::json;

use medhub_actors::ambulance::{self, GetUnit, SetStatus, UnitStatus};
use medhub_actors::tenant::RegisterAmbulance;
use medhub_actors::Role;

use super::error::ApiError;
use super::extract::{path_id, Authenticated, Body};
use crate::server::AppState;

const WATCHERS: &[Role] = &[Role::Admin, Role::Dispatcher, Role::Doctor, Role::Nurse];
const DISPATCH: &[Role] = &[Role::Admin, Role::Dispatcher];

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/ambulances", web::post().to(register))
        .route("/api/ambulances", web::get().to(list))
        .route("/api/ambulances/{id}", web::get().to(get))
        .route("/api/ambulances/{id}/status", web::put().to(set_status))
        .route("/api/ambulances/{id}/track", web::get().to(track));
}

fn unit_json(unit: &ambulance::Unit) -> serde_json::Value {
    json!({
        "id": unit.id, "call_sign": unit.call_sign, "status": unit.status, "incident_id": unit.incident_id,
        "destination_id": unit.destination_id, "position": unit.position, "version": unit.version,
        "vitals": unit.vitals.as_ref().map(|(vitals, news2)| json!({"vitals": vitals, "news2": news2})),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    call_sign: String,
}

async fn register(state: web::Data<AppState>, caller: Authenticated, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin], "register ambulances")?;
    let body: RegisterBody = body.parse()?;
    let principal = caller.principal();
    let supervisor = state.runtime.tenant(principal.tenant_id, &principal.tenant_slug)?;
    let unit = supervisor.send(RegisterAmbulance { caller: caller.0.clone(), call_sign: body.call_sign }).await??;
    Ok(HttpResponse::Created().json(unit_json(&unit)))
}

async fn list(state: web::Data<AppState>, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    caller.require(WATCHERS, "see ambulances")?;
    Ok(HttpResponse::Ok().json(json!({"ambulances": ambulance::list_units(&state.pool, caller.principal().tenant_id).await?})))
}

async fn actor_of(state: &AppState, caller: &Authenticated, path: &str) -> Result<actix::Addr<ambulance::AmbulanceActor>, ApiError> {
    let id = path_id(path, "ambulance")?;
    let principal = caller.principal();
    Ok(state.runtime.ambulance(principal.tenant_id, &principal.tenant_slug, id).await?)
}

async fn get(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(WATCHERS, "see ambulances")?;
    let unit = actor_of(&state, &caller, &path).await?.send(GetUnit).await??;
    Ok(HttpResponse::Ok().json(unit_json(&unit)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: String,
    reason: Option<String>,
}

async fn set_status(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(DISPATCH, "change a unit's status")?;
    let actor = actor_of(&state, &caller, &path).await?;
    let body: StatusBody = body.parse()?;
    let status = UnitStatus::parse(&body.status)
        .ok_or_else(|| ApiError::invalid("status", "status is available, dispatched, en_route, on_scene, transporting, at_hospital or out_of_service"))?;
    let reason = body.reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()).unwrap_or_else(|| "set by dispatcher".to_owned());
    if reason.chars().count() > 300 {
        return Err(ApiError::invalid("reason", "reason is at most 300 characters"));
    }
    let unit = actor
        .send(SetStatus { caller: Some(caller.0.clone()), status, incident_id: None, destination: None, reason })
        .await
        ??;
    Ok(HttpResponse::Ok().json(unit_json(&unit)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrackQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: Option<i64>,
}

/// The unit's positions between `from` and `to` (default: the last hour), oldest first.
async fn track(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, query: web::Query<TrackQuery>) -> Result<HttpResponse, ApiError> {
    caller.require(WATCHERS, "see ambulance tracks")?;
    let unit_id = path_id(&path, "ambulance")?;
    let to = query.to.unwrap_or_else(Utc::now);
    let from = query.from.unwrap_or(to - Duration::hours(1));
    if to <= from {
        return Err(ApiError::invalid("to", "to must be after from"));
    }
    let limit = query.limit.unwrap_or(10_000);
    if !(1..=100_000).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 100000"));
    }
    // Another tenant's unit is not found (its actor is never started for this tenant).
    let principal = caller.principal();
    state.runtime.ambulance(principal.tenant_id, &principal.tenant_slug, unit_id).await?;
    let points = ambulance::track(&state.pool, principal.tenant_id, unit_id, from, to, limit).await?;
    Ok(HttpResponse::Ok().json(json!({"unit_id": unit_id, "from": from, "to": to, "points": points})))
}
