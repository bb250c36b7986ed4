//! Incidents: `POST /api/incidents` (a call-taker's report or a patient's SOS), the open list,
//! an incident's timeline, its vital-sign observations, and cancelling. The tenant's dispatch actor
//! assigns units.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use medhub_actors::dispatch::{self, CancelIncident, ConfirmDispatch, CreateIncident, DispatchMode, Priority};
use medhub_actors::{GeoPoint, Role};

use super::error::ApiError;
use super::extract::{path_id, Authenticated, Body};
use super::patients::{observations_answer, ObservationsOf};
use crate::server::AppState;

const WATCHERS: &[Role] = &[Role::Admin, Role::Dispatcher, Role::Doctor, Role::Nurse];

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/incidents", web::post().to(create))
        .route("/api/incidents", web::get().to(list))
        .route("/api/incidents/{id}/timeline", web::get().to(timeline))
        .route("/api/incidents/{id}/observations", web::get().to(observations))
        .route("/api/incidents/{id}/dispatch", web::post().to(confirm_dispatch))
        .route("/api/incidents/{id}/cancel", web::post().to(cancel));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentBody {
    location: GeoPoint,
    priority: Priority,
    description: String,
    patient_id: Option<Uuid>,
    /// `auto` (default): the best unit goes at once; `propose`: the dispatcher confirms first.
    #[serde(default)]
    dispatch: DispatchMode,
}

/// Dispatchers and admins report incidents; a patient may raise an SOS for themself.
async fn create(state: web::Data<AppState>, caller: Authenticated, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin, Role::Dispatcher, Role::Patient], "report incidents")?;
    let body: IncidentBody = body.parse()?;
    let description = body.description.trim().to_owned();
    if description.is_empty() || description.chars().count() > 1000 {
        return Err(ApiError::invalid("description", "describe the emergency in 1 to 1000 characters"));
    }
    let principal = caller.principal();
    let mut patient_id = body.patient_id;
    if principal.role == Role::Patient && body.dispatch == DispatchMode::Propose {
        return Err(ApiError::invalid("dispatch", "an SOS is dispatched at once; only dispatchers ask for a proposal"));
    }
    if principal.role == Role::Patient {
        let own: Option<Uuid> = sqlx::query_scalar("SELECT id FROM patients WHERE user_id = $1 AND tenant_id = $2")
            .bind(principal.user_id)
            .bind(principal.tenant_id)
            .fetch_optional(&state.pool)
            .await?;
        if patient_id.is_some() && patient_id != own {
            return Err(ApiError::Forbidden("a patient raises an SOS only for themself".into()));
        }
        patient_id = own;
    } else if let Some(id) = patient_id {
        let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM patients WHERE id = $1 AND tenant_id = $2)")
            .bind(id)
            .bind(principal.tenant_id)
            .fetch_one(&state.pool)
            .await?;
        if !known {
            return Err(ApiError::invalid("patient_id", "no patient with that id in this tenant"));
        }
    }
    let dispatch = state.runtime.dispatch(principal.tenant_id, &principal.tenant_slug).await?;
    let incident = dispatch
        .send(CreateIncident { caller: caller.0.clone(), location: body.location, priority: body.priority, description, patient_id, mode: body.dispatch })
        .await
        ??;
    Ok(HttpResponse::Created().json(incident))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list(state: web::Data<AppState>, caller: Authenticated, query: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    caller.require(WATCHERS, "see incidents")?;
    let incidents = dispatch::list_incidents(&state.pool, caller.principal().tenant_id, !query.all).await?;
    Ok(HttpResponse::Ok().json(json!({"incidents": incidents})))
}

async fn timeline(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(WATCHERS, "see incidents")?;
    let id = path_id(&path, "incident")?;
    let steps = dispatch::timeline(&state.pool, caller.principal().tenant_id, id).await?;
    if steps.is_empty() {
        return Err(ApiError::not_found("incident"));
    }
    Ok(HttpResponse::Ok().json(json!({"incident_id": id, "timeline": steps})))
}

/// The vital signs the incident's unit recorded (`from`, `to`, `limit`: the latest `limit` measured
/// in `[from, to)`), oldest first; the read is audited, naming the incident's patient.
async fn observations(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, query: web::Query<HashMap<String, String>>) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path, "incident")?;
    observations_answer(&state, &caller, ObservationsOf::Incident(id), &query).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    unit_id: Option<Uuid>,
}

/// The dispatcher confirms the proposed unit (empty body) or sends the one they pick (`unit_id`).
async fn confirm_dispatch(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin, Role::Dispatcher], "dispatch units")?;
    let id = path_id(&path, "incident")?;
    let body: ConfirmBody = body.parse_or_default()?;
    let principal = caller.principal();
    let dispatch = state.runtime.dispatch(principal.tenant_id, &principal.tenant_slug).await?;
    let incident = dispatch.send(ConfirmDispatch { caller: caller.0.clone(), incident_id: id, unit_id: body.unit_id }).await??;
    Ok(HttpResponse::Ok().json(incident))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: String,
}

async fn cancel(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin, Role::Dispatcher], "cancel incidents")?;
    let id = path_id(&path, "incident")?;
    let body: CancelBody = body.parse()?;
    let reason = body.reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > 300 {
        return Err(ApiError::invalid("reason", "give a reason of 1 to 300 characters"));
    }
    let principal = caller.principal();
    let dispatch = state.runtime.dispatch(principal.tenant_id, &principal.tenant_slug).await?;
    let incident = dispatch.send(CancelIncident { caller: caller.0.clone(), incident_id: id, reason }).await??;
    Ok(HttpResponse::Ok().json(incident))
}
