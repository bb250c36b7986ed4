//! Devices (unit trackers and monitors that speak MQTT): `POST /api/devices` registers one and
//! answers its generated credentials once, `GET /api/devices` lists the tenant's devices,
//! `POST /api/devices/{id}/deactivate` shuts one out (its live connection too). Admins only;
//! registrations and deactivations are audited.
//!
//! With `--enable-fault-injection`, `POST /api/devices/test-command` sends a command to a unit
//! through the gateway, so tests can watch QoS 1 delivery from outside the hub.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use medhub_actors::audit::{self, AuditRecord, Outcome};
use medhub_actors::devices::UnitCommands;
use medhub_actors::{ActorError, Role};
use medhub_device_gateway::{self as gateway, command_topic, DeviceError, DeviceKind, GatewayHandle, NewDevice};

use super::error::ApiError;
use super::extract::{path_id, Authenticated, Body};
use crate::server::AppState;

pub fn routes(cfg: &mut web::ServiceConfig, fault_injection: bool) {
    cfg.route("/api/devices", web::post().to(register))
        .route("/api/devices", web::get().to(list))
        .route("/api/devices/{id}/deactivate", web::post().to(deactivate));
    if fault_injection {
        cfg.route("/api/devices/test-command", web::post().to(test_command));
    }
}

impl From<DeviceError> for ApiError {
    fn from(e: DeviceError) -> ApiError {
        match e {
            DeviceError::Invalid { field, detail } => ApiError::invalid(field, detail),
            DeviceError::NotFound => ApiError::not_found("device"),
            DeviceError::Database(db) => db.into(),
        }
    }
}

/// Refuses a non-admin, recording the attempt: who tried to add or remove a device matters.
async fn require_admin(state: &AppState, caller: &Authenticated, action: &str, resource_id: Option<Uuid>, doing: &str) -> Result<(), ApiError> {
    let Err(refused) = caller.require(&[Role::Admin], doing) else {
        return Ok(());
    };
    let mut record = AuditRecord::by_caller(&caller.0, action, "device", "").outcome(Outcome::Denied).detail(json!({"reason": refused.to_string()}));
    record.resource_id = resource_id.map(|id| id.to_string());
    audit::record(&state.pool, caller.principal().tenant_id, &record).await?;
    Err(refused)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    unit_id: Uuid,
    kind: DeviceKind,
    name: String,
}

async fn register(state: web::Data<AppState>, caller: Authenticated, body: Body) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &caller, "device.register", None, "register devices").await?;
    let body: RegisterBody = body.parse()?;
    let new = NewDevice::new(body.unit_id, body.kind, &body.name)?;
    // A device speaks for a unit that exists (in this tenant: another tenant's is not found).
    let principal = caller.principal();
    match state.runtime.ambulance(principal.tenant_id, &principal.tenant_slug, body.unit_id).await {
        Ok(_) => {}
        Err(ActorError::NotFound(_)) => {
            return Err(ApiError::invalid("unit_id", format!("{} is not an ambulance unit of this tenant; register the unit first", body.unit_id)));
        }
        Err(other) => return Err(other.into()),
    }
    let registered = gateway::register_device(&state.pool, &caller.0, new).await?;
    Ok(HttpResponse::Created().json(registered))
}

async fn list(state: web::Data<AppState>, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin], "see devices")?;
    let devices = gateway::list_devices(&state.pool, caller.principal().tenant_id).await?;
    Ok(HttpResponse::Ok().json(json!({"devices": devices})))
}

async fn deactivate(
    state: web::Data<AppState>,
    devices: web::Data<GatewayHandle>,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let device_id = path_id(&path, "device")?;
    require_admin(&state, &caller, "device.deactivate", Some(device_id), "deactivate devices").await?;
    let device = gateway::deactivate_device(&state.pool, &caller.0, device_id).await?;
    devices.forget_device(device.id, &device.username);
    Ok(HttpResponse::Ok().json(device))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCommandBody {
    unit_id: Uuid,
    payload: Value,
}

/// Fault injection (only with `--enable-fault-injection`): publishes `payload` on the unit's
/// command topic, as the dispatcher would.
async fn test_command(devices: web::Data<GatewayHandle>, caller: Authenticated, body: Body) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin], "send test commands")?;
    let body: TestCommandBody = body.parse()?;
    let tenant = &caller.principal().tenant_slug;
    devices.send(tenant, body.unit_id, body.payload).await?;
    Ok(HttpResponse::Accepted().json(json!({"topic": command_topic(tenant, body.unit_id)})))
}
