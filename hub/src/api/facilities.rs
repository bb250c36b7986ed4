//! Facilities and their bed board: `/api/facilities`, `/api/facilities/{id}`, wards, bed status,
//! and the tenant-wide `/api/beds`. Writes go to the facility's actor; lists read the projection.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use medhub_actors::audit::{self, AuditRecord, Outcome};
use medhub_actors::facility::{
    self, AddWard, BedStatus, ChangeBedStatus, FacilityKind, GetFacility, InjectPanic, NewFacility, NewWard, WardKind,
};
use medhub_actors::tenant::CreateFacility;
use medhub_actors::topics::beds_topic;
use medhub_actors::{GeoPoint, Role};

use super::error::ApiError;
use super::extract::{path_id, Authenticated, Body};
use crate::server::AppState;

/// Who may see wards and beds, and who may change a bed.
const BED_READERS: &[Role] = &[Role::Admin, Role::Dispatcher, Role::Doctor, Role::Nurse];
const BED_WRITERS: &[Role] = &[Role::Nurse, Role::Admin];

pub fn routes(cfg: &mut web::ServiceConfig, fault_injection: bool) {
    cfg.route("/api/facilities", web::get().to(list))
        .route("/api/facilities", web::post().to(create))
        .route("/api/facilities/{id}", web::get().to(get))
        .route("/api/facilities/{id}/wards", web::post().to(add_ward))
        .route("/api/facilities/{id}/beds/{bed_id}/status", web::put().to(change_bed_status))
        .route("/api/beds", web::get().to(board));
    if fault_injection {
        cfg.route("/api/facilities/{id}/fault/panic", web::post().to(inject_panic));
    }
}

async fn list(state: web::Data<AppState>, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(facility::list_facilities(&state.pool, caller.principal().tenant_id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WardBody {
    name: String,
    kind: WardKind,
    #[serde(default)]
    beds: Vec<String>,
}

impl WardBody {
    fn parse(self) -> Result<NewWard, ApiError> {
        Ok(NewWard::new(&self.name, self.kind, self.beds)?)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FacilityBody {
    name: String,
    kind: FacilityKind,
    location: GeoPoint,
    timezone: String,
    #[serde(default)]
    wards: Vec<WardBody>,
}

async fn create(state: web::Data<AppState>, caller: Authenticated, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin], "create facilities")?;
    let body: FacilityBody = body.parse()?;
    let wards = body.wards.into_iter().map(WardBody::parse).collect::<Result<Vec<_>, _>>()?;
    let new = NewFacility::new(&body.name, body.kind, body.location, &body.timezone, wards)?;
    let principal = caller.principal();
    let supervisor = state.runtime.tenant(principal.tenant_id, &principal.tenant_slug)?;
    let created = supervisor.send(CreateFacility { caller: caller.0.clone(), facility: new }).await??;
    Ok(HttpResponse::Created().json(created))
}

async fn get(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(BED_READERS, "see wards and beds")?;
    let facility_id = path_id(&path, "facility")?;
    let principal = caller.principal();
    let actor = state.runtime.facility(principal.tenant_id, &principal.tenant_slug, facility_id).await?;
    let facility = actor.send(GetFacility).await??;
    Ok(HttpResponse::Ok().json(facility))
}

async fn add_ward(
    state: web::Data<AppState>,
    caller: Authenticated,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin], "add wards")?;
    let facility_id = path_id(&path, "facility")?;
    let ward = body.parse::<WardBody>()?.parse()?;
    let principal = caller.principal();
    let actor = state.runtime.facility(principal.tenant_id, &principal.tenant_slug, facility_id).await?;
    let facility = actor.send(AddWard { caller: caller.0.clone(), ward }).await??;
    Ok(HttpResponse::Created().json(facility))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BedStatusBody {
    status: BedStatus,
    #[serde(default)]
    patient_id: Option<Uuid>,
    /// The bed is held for an incoming ambulance patient and the caller ends that hold on purpose.
    #[serde(default)]
    release_reservation: bool,
}

async fn change_bed_status(
    state: web::Data<AppState>,
    caller: Authenticated,
    path: web::Path<(String, String)>,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let (facility_id, bed_id) = (path_id(&path.0, "facility")?, path_id(&path.1, "bed")?);
    if let Err(refused) = caller.require(BED_WRITERS, "change beds") {
        let record = AuditRecord::by_caller(&caller.0, "bed.status_change", "bed", bed_id)
            .outcome(Outcome::Denied)
            .detail(json!({"facility_id": facility_id, "reason": refused.to_string()}));
        audit::record(&state.pool, caller.principal().tenant_id, &record).await?;
        return Err(refused);
    }
    let body: BedStatusBody = body.parse()?;
    let principal = caller.principal();
    let actor = state.runtime.facility(principal.tenant_id, &principal.tenant_slug, facility_id).await?;
    let changed = actor
        .send(ChangeBedStatus {
            caller: caller.0.clone(),
            bed_id,
            status: body.status,
            patient_id: body.patient_id,
            release_reservation: body.release_reservation,
        })
        .await
        ??;
    Ok(HttpResponse::Ok().json(changed))
}

async fn board(state: web::Data<AppState>, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    caller.require(BED_READERS, "see the bed board")?;
    let principal = caller.principal();
    let (seq, facilities) = facility::bed_board(&state.pool, principal.tenant_id, &beds_topic(&principal.tenant_slug)).await?;
    Ok(HttpResponse::Ok().json(json!({"seq": seq, "facilities": facilities})))
}

/// Fault injection (only with `--enable-fault-injection`): makes the facility's actor panic in
/// the middle of a command, to exercise supervision.
async fn inject_panic(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin], "inject faults")?;
    let facility_id = path_id(&path, "facility")?;
    let principal = caller.principal();
    let actor = state.runtime.facility(principal.tenant_id, &principal.tenant_slug, facility_id).await?;
    actor.send(InjectPanic).await??;
    Ok(HttpResponse::NoContent().finish())
}
