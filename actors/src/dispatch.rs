//! The `Dispatch` actor: one per tenant, the single writer of its incidents and of which unit
//! serves which. An incident (a call-taker's report or a patient's SOS) gets the available unit
//! with the shortest estimated time of arrival (great-circle distance over an assumed speed) and
//! a destination (the nearest facility with a free emergency bed). The unit is told over its
//! command topic and must acknowledge (report `ack` or `en_route`) within the configured time, or
//! the incident goes to the next unit. Every step is an event on the tenant's map topic (the
//! incident's timeline), committed with its audit entry. Handlers are atomic: a unit's reports
//! arriving in a burst are applied one after another, never against a stale copy.
//!
//! A dispatcher may instead ask for a proposal ([`DispatchMode::Propose`]): the incident is
//! `proposed` with the best unit named (and the next two as alternatives) but nothing is sent
//! until the dispatcher confirms ([`ConfirmDispatch`]), that unit or another one they pick.
//!
//! The destination holds an emergency bed for the incoming patient: dispatch asks the facility's
//! actor to reserve one ([`ReserveEmergencyBed`]); when that bed went meanwhile (the read model
//! said free, the actor knows better), the next-nearest facility is asked, a few times, and failing
//! all the unit goes without a destination. The held bed is in the incident (`reserved_bed_id`) and
//! in its `incident.dispatched` step; it stays through a reassignment to another unit, and is
//! released ([`ReleaseReservation`]) when the incident is cancelled, closed without the patient
//! having been admitted into it, or left without a unit; each such step says what became of it.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{PgPool, Row};
use tracing::{info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::ambulance::{AmbulanceActor, GetUnit, SetStatus, UnitStatus};
use crate::audit::AuditRecord;
use crate::devices::UnitCommands;
use crate::domain::{Caller, GeoPoint, TenantSlug};
use crate::error::ActorError;
use crate::facility::{BedReserved, ReleaseReservation, ReserveEmergencyBed};
use crate::metrics::ActorMetrics;
use crate::schedule::distance_km;
use crate::store::{self, EventDraft};
use crate::tenant::{AmbulanceAddr, FacilityAddr, TenantSupervisor};
use crate::topics;

pub const ACTOR: &str = "dispatch";

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// How long a unit has to acknowledge a dispatch before the next unit is asked.
    pub ack_timeout: Duration,
    /// The speed estimated times of arrival assume.
    pub speed_kmh: f64,
    /// Within this distance of its destination, a transporting unit has arrived.
    pub geofence_m: f64,
}

/// Where dispatch commands go; set once the device gateway runs (until then commands are logged).
#[derive(Clone, Default)]
pub struct CommandsSlot(Arc<OnceLock<Arc<dyn UnitCommands>>>);

impl CommandsSlot {
    pub fn set(&self, commands: Arc<dyn UnitCommands>) {
        let _ = self.0.set(commands);
    }

    fn get(&self) -> Option<Arc<dyn UnitCommands>> {
        self.0.get().cloned()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Critical,
    Urgent,
    Routine,
}

/// An incident as the dispatch actor holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    pub id: Uuid,
    pub status: String,
    pub priority: Priority,
    pub location: GeoPoint,
    pub description: String,
    pub patient_id: Option<Uuid>,
    pub unit_id: Option<Uuid>,
    pub destination_id: Option<Uuid>,
    /// The emergency bed held for the patient at the destination, while it is held.
    pub reserved_bed_id: Option<Uuid>,
    /// The unit proposed to the dispatcher, while the incident waits for their confirmation.
    pub proposed_unit_id: Option<Uuid>,
    pub tried_units: Vec<Uuid>,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Incident {
    fn is_open(&self) -> bool {
        !matches!(self.status.as_str(), "closed" | "cancelled")
    }

    /// The facility and bed held for this incident's patient, if any.
    fn held_bed(&self) -> Option<(Uuid, Uuid)> {
        self.destination_id.zip(self.reserved_bed_id)
    }
}

fn incident_row(row: &sqlx::postgres::PgRow) -> Result<Incident, sqlx::Error> {
    let priority: String = row.get("priority");
    Ok(Incident {
        id: row.get("id"),
        status: row.get("status"),
        priority: serde_json::from_value(Value::String(priority)).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        location: GeoPoint::new(row.get("latitude"), row.get("longitude")).map_err(|e| sqlx::Error::Decode(e.into()))?,
        description: row.get("description"),
        patient_id: row.get("patient_id"),
        unit_id: row.get("unit_id"),
        destination_id: row.get("destination_id"),
        reserved_bed_id: row.get("reserved_bed_id"),
        proposed_unit_id: row.get("proposed_unit_id"),
        tried_units: row.get("tried_units"),
        dispatched_at: row.get("dispatched_at"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

const INCIDENT_COLUMNS: &str =
    "id, status, priority, latitude, longitude, description, patient_id, unit_id, destination_id, reserved_bed_id, proposed_unit_id, tried_units, dispatched_at, created_at, updated_at";

pub async fn list_incidents(pool: &PgPool, tenant_id: Uuid, open_only: bool) -> Result<Vec<Incident>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE tenant_id = $1 AND (NOT $2 OR status NOT IN ('closed', 'cancelled'))
         ORDER BY created_at DESC LIMIT 500"
    ))
    .bind(tenant_id)
    .bind(open_only)
    .fetch_all(pool)
    .await?;
    rows.iter().map(incident_row).collect()
}

/// An incident's timeline: its events, oldest first.
pub async fn timeline(pool: &PgPool, tenant_id: Uuid, incident_id: Uuid) -> Result<Vec<Value>, sqlx::Error> {
    let rows = sqlx::query("SELECT event_type, data, created_at FROM events WHERE tenant_id = $1 AND stream = $2 ORDER BY stream_seq")
        .bind(tenant_id)
        .bind(format!("incident/{incident_id}"))
        .fetch_all(pool)
        .await?;
    Ok(rows
        .iter()
        .map(|row| json!({"type": row.get::<String, _>("event_type"), "at": row.get::<DateTime<Utc>, _>("created_at"), "data": row.get::<Value, _>("data")}))
        .collect())
}

/// The facilities with a free emergency bed (as the read model says), nearest first.
async fn nearest_destinations(pool: &PgPool, tenant_id: Uuid, from: GeoPoint) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT f.id, f.latitude, f.longitude FROM facilities f
         WHERE f.tenant_id = $1 AND EXISTS (SELECT 1 FROM beds b JOIN wards w ON w.id = b.ward_id
                                             WHERE b.facility_id = f.id AND w.kind = 'emergency' AND b.status = 'free')",
    )
    .bind(tenant_id)
    .fetch_all(pool)
    .await?;
    let mut found: Vec<(f64, Uuid)> = rows
        .iter()
        .filter_map(|row| Some((distance_km(from, GeoPoint::new(row.get("latitude"), row.get("longitude")).ok()?), row.get::<Uuid, _>("id"))))
        .collect();
    found.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(found.into_iter().map(|(_, id)| id).collect())
}

/// How many facilities dispatch asks for an emergency bed before it sends the unit without a
/// destination.
const RESERVATION_ATTEMPTS: usize = 3;

/// Where a unit takes the patient: a facility and the emergency bed held there for them.
#[derive(Debug, Clone)]
struct Destination {
    id: Uuid,
    name: String,
    location: GeoPoint,
    bed_id: Uuid,
    bed_label: String,
}

impl Destination {
    fn from_reservation(held: BedReserved) -> Destination {
        Destination { id: held.facility_id, name: held.facility_name, location: held.location, bed_id: held.bed.id, bed_label: held.bed.label }
    }

    /// The held bed as the incident's timeline and audit trail record it.
    fn reserved_bed(&self) -> Value {
        json!({"id": self.bed_id, "label": self.bed_label, "facility_id": self.id})
    }
}

/// Holds an emergency bed for the incident's patient at the nearest facility that still has one:
/// a facility whose last bed went since the read model was read refuses, and the next is asked
/// (at most [`RESERVATION_ATTEMPTS`] of them). `None`: no bed could be held.
async fn reserve_destination(pool: &PgPool, tenant_id: Uuid, supervisor: &Addr<TenantSupervisor>, incident: &Incident) -> Result<Option<Destination>, ActorError> {
    let nearest = nearest_destinations(pool, tenant_id, incident.location).await?;
    for facility_id in nearest.into_iter().take(RESERVATION_ATTEMPTS) {
        let reserved = async {
            let facility = supervisor.send(FacilityAddr(facility_id)).await??;
            let held = facility.send(ReserveEmergencyBed { caller: None, incident_id: incident.id, patient_id: incident.patient_id }).await??;
            Ok::<BedReserved, ActorError>(held)
        }
        .await;
        match reserved {
            Ok(held) => return Ok(Some(Destination::from_reservation(held))),
            Err(ActorError::Conflict(why)) => info!(incident_id = %incident.id, %facility_id, %why, "no emergency bed to hold there after all; asking the next facility"),
            Err(error) => warn!(incident_id = %incident.id, %facility_id, %error, "cannot hold an emergency bed there; asking the next facility"),
        }
    }
    Ok(None)
}

/// The destination whose bed the incident already holds (a reassignment keeps it).
async fn held_destination(pool: &PgPool, tenant_id: Uuid, incident: &Incident) -> Result<Option<Destination>, sqlx::Error> {
    let Some((facility_id, bed_id)) = incident.held_bed() else {
        return Ok(None);
    };
    let row = sqlx::query(
        "SELECT f.name, f.latitude, f.longitude, b.label FROM facilities f JOIN beds b ON b.facility_id = f.id
         WHERE f.tenant_id = $1 AND f.id = $2 AND b.id = $3",
    )
    .bind(tenant_id)
    .bind(facility_id)
    .bind(bed_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|row| {
        Some(Destination {
            id: facility_id,
            name: row.get("name"),
            location: GeoPoint::new(row.get("latitude"), row.get("longitude")).ok()?,
            bed_id,
            bed_label: row.get("label"),
        })
    }))
}

/// What became of a held bed when dispatch let go of it.
#[derive(Debug, Clone)]
struct Release {
    facility_id: Uuid,
    bed_id: Uuid,
    /// `Ok(true)`: freed; `Ok(false)`: no longer held (the patient was admitted into it, or staff
    /// ended the hold); `Err`: the facility could not be asked, so the bed may still be held.
    outcome: Result<bool, String>,
}

impl Release {
    /// Records the release in the incident: it no longer holds the bed (unless the release failed,
    /// so that a later cancel or closure tries again).
    fn apply_to(&self, incident: &mut Incident) {
        if self.outcome.is_ok() {
            incident.reserved_bed_id = None;
        } else {
            incident.destination_id = Some(self.facility_id);
            incident.reserved_bed_id = Some(self.bed_id);
        }
    }

    fn detail(&self) -> Value {
        let outcome = match &self.outcome {
            Ok(true) => "released",
            Ok(false) => "no_longer_held",
            Err(_) => "release_failed",
        };
        json!({"id": self.bed_id, "facility_id": self.facility_id, "outcome": outcome, "error": self.outcome.as_ref().err()})
    }
}

/// Releases the bed held at `facility_id` for the incident (a no-op when it is no longer held).
async fn release_bed(supervisor: &Addr<TenantSupervisor>, (facility_id, bed_id): (Uuid, Uuid), incident_id: Uuid, caller: Option<Caller>, reason: &str) -> Release {
    let released = async {
        let facility = supervisor.send(FacilityAddr(facility_id)).await??;
        let released = facility.send(ReleaseReservation { caller, incident_id, reason: reason.to_owned() }).await??;
        Ok::<bool, ActorError>(released.is_some())
    }
    .await;
    if let Err(error) = &released {
        warn!(%incident_id, %facility_id, %bed_id, %error, "the bed held for the incident could not be released; it stays held until staff or a later step free it");
    }
    Release { facility_id, bed_id, outcome: released.map_err(|e| e.to_string()) }
}

/// One step of an incident, committed: the row, the event on the map topic, the audit entry.
async fn commit_step(pool: &PgPool, tenant_id: Uuid, tenant: &TenantSlug, incident: &Incident, version: i64, event: &'static str, detail: Value, audit: AuditRecord, metrics: &ActorMetrics) -> Result<(), ActorError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO incidents (id, tenant_id, status, priority, latitude, longitude, description, patient_id, unit_id, destination_id,
                                tried_units, dispatched_at, created_by, created_at, updated_at, reserved_bed_id, proposed_unit_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, unit_id = EXCLUDED.unit_id, destination_id = EXCLUDED.destination_id,
                                        tried_units = EXCLUDED.tried_units, dispatched_at = EXCLUDED.dispatched_at, updated_at = EXCLUDED.updated_at,
                                        reserved_bed_id = EXCLUDED.reserved_bed_id, proposed_unit_id = EXCLUDED.proposed_unit_id",
    )
    .bind(incident.id)
    .bind(tenant_id)
    .bind(&incident.status)
    .bind(serde_json::to_value(incident.priority).ok().and_then(|v| v.as_str().map(str::to_owned)))
    .bind(incident.location.lat())
    .bind(incident.location.lon())
    .bind(&incident.description)
    .bind(incident.patient_id)
    .bind(incident.unit_id)
    .bind(incident.destination_id)
    .bind(&incident.tried_units)
    .bind(incident.dispatched_at)
    .bind(&audit.actor_id)
    .bind(incident.created_at)
    .bind(incident.updated_at)
    .bind(incident.reserved_bed_id)
    .bind(incident.proposed_unit_id)
    .execute(&mut *tx)
    .await?;
    let draft = EventDraft {
        stream: format!("incident/{}", incident.id),
        expected_version: version - 1,
        topic: topics::map_topic(tenant),
        event_type: event,
        data: json!({"incident": incident, "detail": detail}),
    };
    store::commit_command(tx, tenant_id, &draft, &audit.patient(incident.patient_id), None, metrics, ACTOR).await?;
    Ok(())
}

/// An available unit that could go, with its estimated time of arrival.
struct Candidate {
    eta_minutes: f64,
    km: f64,
    unit_id: Uuid,
    call_sign: String,
    actor: Addr<AmbulanceActor>,
}

/// The available units with a known position not yet tried for the incident, shortest ETA first;
/// `prefer` (when among them) goes first whatever its ETA.
async fn rank_units(pool: &PgPool, tenant_id: Uuid, supervisor: &Addr<TenantSupervisor>, incident: &Incident, speed_kmh: f64, prefer: Option<Uuid>) -> Result<Vec<Candidate>, ActorError> {
    let units: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM ambulances WHERE tenant_id = $1 AND status = 'available'")
        .bind(tenant_id)
        .fetch_all(pool)
        .await?;
    let mut candidates = Vec::new();
    for unit_id in units.into_iter().filter(|id| !incident.tried_units.contains(id)) {
        let actor: Addr<AmbulanceActor> = supervisor.send(AmbulanceAddr(unit_id)).await??;
        let unit = actor.send(GetUnit).await??;
        if let (UnitStatus::Available, Some(fix)) = (unit.status, unit.position) {
            let km = distance_km(fix.position, incident.location);
            candidates.push(Candidate { eta_minutes: km / speed_kmh.max(1.0) * 60.0, km, unit_id, call_sign: unit.call_sign.clone(), actor });
        }
    }
    candidates.sort_by(|a, b| a.eta_minutes.total_cmp(&b.eta_minutes));
    if let Some(at) = prefer.and_then(|wanted| candidates.iter().position(|c| c.unit_id == wanted)) {
        let preferred = candidates.remove(at);
        candidates.insert(0, preferred);
    }
    Ok(candidates)
}

/// How an incident gets its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DispatchMode {
    /// The best unit is dispatched at once.
    #[default]
    Auto,
    /// The best unit is proposed; the dispatcher confirms it or picks another.
    Propose,
}

/// What [`DispatchActor::dispatch_next`] found.
enum Choice {
    /// This unit took the incident, to this destination (none when no bed could be held).
    Unit { unit_id: Uuid, eta_minutes: f64, km: f64, destination: Option<Destination> },
    /// No unit took it; the bed it held (if any) was let go of.
    NoUnit { released: Option<Release> },
}

// ---------------------------------------------------------------------------------------------
// The actor

pub struct DispatchActor {
    tenant_id: Uuid,
    tenant: TenantSlug,
    pool: PgPool,
    metrics: ActorMetrics,
    config: DispatchConfig,
    commands: CommandsSlot,
    supervisor: Addr<TenantSupervisor>,
    /// Open incidents and the version (stream length) of each.
    incidents: HashMap<Uuid, (Incident, i64)>,
    loaded: bool,
    /// The fencing token of the tenant's lease this actor was started under (see `lease`).
    fence: Option<i64>,
}

impl DispatchActor {
    pub(crate) fn new(tenant_id: Uuid, tenant: TenantSlug, pool: PgPool, metrics: ActorMetrics, config: DispatchConfig, commands: CommandsSlot, supervisor: Addr<TenantSupervisor>) -> Self {
        DispatchActor { tenant_id, tenant, pool, metrics, config, commands, supervisor, incidents: HashMap::new(), loaded: false, fence: crate::lease::held_token(tenant_id) }
    }

    fn system_record(&self, action: &str, incident: Uuid) -> AuditRecord {
        AuditRecord::by_system(action, "incident", incident)
    }
}

impl Actor for DispatchActor {
    type Context = Context<Self>;

    /// Loads the open incidents; one still waiting for an acknowledgement gets its timer back.
    fn started(&mut self, ctx: &mut Context<Self>) {
        let (pool, tenant_id) = (self.pool.clone(), self.tenant_id);
        ctx.wait(
            async move {
                let open = list_incidents(&pool, tenant_id, true).await?;
                let mut loaded = Vec::new();
                for incident in open {
                    let version: i64 = sqlx::query_scalar("SELECT COALESCE(max(stream_seq), 0) FROM events WHERE stream = $1")
                        .bind(format!("incident/{}", incident.id))
                        .fetch_one(&pool)
                        .await?;
                    loaded.push((incident, version));
                }
                Ok::<_, sqlx::Error>(loaded)
            }
            .into_actor(self)
            .map(|loaded, actor, ctx| match loaded {
                Ok(loaded) => {
                    for (incident, version) in loaded {
                        if incident.status == "dispatched" {
                            let waited = incident.dispatched_at.map_or(Duration::ZERO, |at| (Utc::now() - at).to_std().unwrap_or_default());
                            actor.arm_ack_timer(incident.id, incident.unit_id, actor.config.ack_timeout.saturating_sub(waited), ctx);
                        }
                        actor.incidents.insert(incident.id, (incident, version));
                    }
                    actor.loaded = true;
                }
                Err(e) => warn!(tenant = %actor.tenant, error = %e, "cannot load open incidents; dispatch refuses commands until restart"),
            }),
        );
    }
}

impl actix::Supervised for DispatchActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.metrics.restarts.with_label_values(&[ACTOR]).inc();
        self.incidents.clear();
        self.loaded = false;
    }
}

impl DispatchActor {
    fn arm_ack_timer(&self, incident_id: Uuid, unit_id: Option<Uuid>, after: Duration, ctx: &mut Context<Self>) {
        if let Some(unit_id) = unit_id {
            ctx.notify_later(AckTimeout { incident_id, unit_id }, after);
        }
    }

    /// Commits a step and installs the incident; answers with it.
    fn step(&mut self, mut incident: Incident, event: &'static str, detail: Value, audit: AuditRecord) -> ResponseActFuture<Self, Result<Incident, ActorError>> {
        incident.updated_at = Utc::now().trunc_subsecs(6);
        let version = self.incidents.get(&incident.id).map_or(0, |(_, v)| *v) + 1;
        let (pool, tenant_id, tenant, metrics, fence) = (self.pool.clone(), self.tenant_id, self.tenant.clone(), self.metrics.clone(), self.fence);
        let span = info_span!("command", tenant = %self.tenant, actor = ACTOR, incident_id = %incident.id, event);
        let saved = incident.clone();
        Box::pin(
            crate::lease::with_fence(fence, async move { commit_step(&pool, tenant_id, &tenant, &saved, version, event, detail, audit, &metrics).await })
                .instrument(span)
                .into_actor(self)
                .map(move |committed, actor, _ctx| {
                    committed?;
                    if incident.is_open() {
                        actor.incidents.insert(incident.id, (incident.clone(), version));
                    } else {
                        actor.incidents.remove(&incident.id);
                    }
                    Ok(incident)
                }),
        )
    }

    /// Finds the available unit with the shortest ETA (not yet tried for this incident), holds an
    /// emergency bed at the destination (or keeps the one already held), marks the unit
    /// dispatched, commits the assignment, tells the unit, and arms the acknowledgement timer.
    /// With no unit to send, the incident is unassigned and lets go of any bed it held.
    fn dispatch_next(&mut self, incident_id: Uuid, caller: Option<Caller>, prefer: Option<Uuid>) -> ResponseActFuture<Self, Result<Incident, ActorError>> {
        let Some((incident, _)) = self.incidents.get(&incident_id).cloned() else {
            return Box::pin(fut::ready(Err(ActorError::NotFound("incident"))));
        };
        let (pool, tenant_id, supervisor, speed) = (self.pool.clone(), self.tenant_id, self.supervisor.clone(), self.config.speed_kmh);
        let choose = async move {
            let candidates = rank_units(&pool, tenant_id, &supervisor, &incident, speed, prefer).await?;
            if candidates.is_empty() {
                let released = match incident.held_bed() {
                    Some(held) => Some(release_bed(&supervisor, held, incident.id, None, "no unit to bring the patient").await),
                    None => None,
                };
                return Ok::<_, ActorError>(Choice::NoUnit { released });
            }
            let destination = match held_destination(&pool, tenant_id, &incident).await? {
                Some(held) => Some(held),
                None => reserve_destination(&pool, tenant_id, &supervisor, &incident).await?,
            };
            for Candidate { eta_minutes, km, unit_id, actor, .. } in candidates {
                let dispatched = actor
                    .send(SetStatus {
                        caller: caller.clone(),
                        status: UnitStatus::Dispatched,
                        incident_id: Some(incident.id),
                        destination: destination.as_ref().map(|d| (d.id, d.location)),
                        reason: format!("dispatched to incident {} ({:.1} km, ETA {:.0} min)", incident.id, km, eta_minutes),
                    })
                    .await;
                match dispatched {
                    Ok(Ok(_)) => return Ok(Choice::Unit { unit_id, eta_minutes, km, destination }),
                    // A unit that cannot take it (it changed meanwhile, or its actor is down):
                    // the next one is asked.
                    Ok(Err(error)) => info!(%unit_id, %error, "unit not dispatched; trying the next"),
                    Err(error) => warn!(%unit_id, %error, "unit unreachable; trying the next"),
                }
            }
            let released = match &destination {
                Some(d) => Some(release_bed(&supervisor, (d.id, d.bed_id), incident.id, None, "no unit to bring the patient").await),
                None => None,
            };
            Ok(Choice::NoUnit { released })
        };
        Box::pin(choose.into_actor(self).then(move |chosen, actor, ctx| {
            let Some((mut incident, _)) = actor.incidents.get(&incident_id).cloned() else {
                return Box::pin(fut::ready(Err(ActorError::NotFound("incident")))) as ResponseActFuture<Self, _>;
            };
            match chosen {
                Err(e) => Box::pin(fut::ready(Err(e))),
                Ok(Choice::NoUnit { released }) => {
                    incident.status = "unassigned".to_owned();
                    incident.unit_id = None;
                    incident.proposed_unit_id = None;
                    let mut detail = json!({"reason": "no available unit with a known position"});
                    if let Some(release) = &released {
                        release.apply_to(&mut incident);
                        detail["reserved_bed"] = release.detail();
                    }
                    let record = actor.system_record("incident.unassigned", incident.id);
                    actor.step(incident, "incident.unassigned", detail, record)
                }
                Ok(Choice::Unit { unit_id, eta_minutes, km, destination }) => {
                    incident.status = "dispatched".to_owned();
                    incident.unit_id = Some(unit_id);
                    incident.proposed_unit_id = None;
                    incident.tried_units.push(unit_id);
                    incident.dispatched_at = Some(Utc::now().trunc_subsecs(6));
                    incident.destination_id = destination.as_ref().map(|d| d.id);
                    incident.reserved_bed_id = destination.as_ref().map(|d| d.bed_id);
                    let command = json!({
                        "type": "dispatch", "incident_id": incident.id, "priority": incident.priority,
                        "lat": incident.location.lat(), "lon": incident.location.lon(), "description": incident.description,
                        "destination": destination.as_ref().map(|d| json!({"id": d.id, "name": d.name, "lat": d.location.lat(), "lon": d.location.lon(), "bed": d.bed_label})),
                    });
                    actor.send_command(unit_id, command);
                    actor.arm_ack_timer(incident.id, Some(unit_id), actor.config.ack_timeout, ctx);
                    let detail = json!({"unit_id": unit_id, "eta_minutes": (eta_minutes * 10.0).round() / 10.0, "distance_km": (km * 100.0).round() / 100.0,
                                        "destination": destination.as_ref().map(|d| json!({"id": d.id, "name": d.name})),
                                        "reserved_bed": destination.as_ref().map(Destination::reserved_bed)});
                    let record = actor.system_record("incident.dispatch", incident.id).detail(detail.clone());
                    actor.step(incident, "incident.dispatched", detail, record)
                }
            }
        }))
    }

    fn send_command(&self, unit_id: Uuid, payload: Value) {
        match self.commands.get() {
            Some(commands) => {
                let (tenant, span) = (self.tenant.clone(), info_span!("unit_command", tenant = %self.tenant, %unit_id));
                actix::spawn(
                    async move {
                        if let Err(e) = commands.send(&tenant, unit_id, payload).await {
                            warn!(error = %e, "dispatch command not sent; the acknowledgement timeout will move on");
                        }
                    }
                    .instrument(span),
                );
            }
            None => info!(tenant = %self.tenant, %unit_id, "no device gateway: dispatch command not sent"),
        }
    }
}

/// Opens an incident and dispatches the best unit at once, or proposes it ([`DispatchMode`]).
#[derive(Message)]
#[rtype(result = "Result<Incident, ActorError>")]
pub struct CreateIncident {
    pub caller: Caller,
    pub location: GeoPoint,
    pub priority: Priority,
    pub description: String,
    pub patient_id: Option<Uuid>,
    pub mode: DispatchMode,
}

impl Handler<CreateIncident> for DispatchActor {
    type Result = AtomicResponse<Self, Result<Incident, ActorError>>;

    /// Atomic: the next message waits until this one's commits are done (single writer).
    fn handle(&mut self, msg: CreateIncident, ctx: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(self.create_incident(msg, ctx))
    }
}

impl DispatchActor {
    fn create_incident(&mut self, msg: CreateIncident, _ctx: &mut Context<Self>) -> ResponseActFuture<Self, Result<Incident, ActorError>> {
        if !self.loaded {
            return Box::pin(fut::ready(Err(ActorError::Unavailable("dispatch is loading; retry shortly".to_owned()))));
        }
        let at = Utc::now().trunc_subsecs(6);
        let incident = Incident {
            id: Uuid::new_v4(),
            status: "open".to_owned(),
            priority: msg.priority,
            location: msg.location,
            description: msg.description.clone(),
            patient_id: msg.patient_id,
            unit_id: None,
            destination_id: None,
            reserved_bed_id: None,
            proposed_unit_id: None,
            tried_units: Vec::new(),
            dispatched_at: None,
            created_at: at,
            updated_at: at,
        };
        let id = incident.id;
        let record = AuditRecord::by_caller(&msg.caller, "incident.create", "incident", id)
            .detail(json!({"priority": msg.priority, "lat": msg.location.lat(), "lon": msg.location.lon()}));
        let (caller, mode) = (msg.caller.clone(), msg.mode);
        Box::pin(self.step(incident, "incident.created", json!({"description": msg.description, "dispatch": mode}), record).then(move |created, actor, _ctx| {
            match (created, mode) {
                (Ok(_), DispatchMode::Auto) => actor.dispatch_next(id, Some(caller), None),
                (Ok(_), DispatchMode::Propose) => actor.propose(id, caller),
                (Err(e), _) => Box::pin(fut::ready(Err(e))),
            }
        }))
    }

    /// Names the best unit (and the next two) without sending anything: the incident waits for
    /// the dispatcher's [`ConfirmDispatch`].
    fn propose(&mut self, incident_id: Uuid, caller: Caller) -> ResponseActFuture<Self, Result<Incident, ActorError>> {
        let Some((incident, _)) = self.incidents.get(&incident_id).cloned() else {
            return Box::pin(fut::ready(Err(ActorError::NotFound("incident"))));
        };
        let (pool, tenant_id, supervisor, speed) = (self.pool.clone(), self.tenant_id, self.supervisor.clone(), self.config.speed_kmh);
        let rank = async move { rank_units(&pool, tenant_id, &supervisor, &incident, speed, None).await };
        Box::pin(rank.into_actor(self).then(move |ranked, actor, _ctx| {
            let Some((mut incident, _)) = actor.incidents.get(&incident_id).cloned() else {
                return Box::pin(fut::ready(Err(ActorError::NotFound("incident")))) as ResponseActFuture<Self, _>;
            };
            let candidates = match ranked {
                Ok(candidates) => candidates,
                Err(e) => return Box::pin(fut::ready(Err(e))),
            };
            let option = |c: &Candidate| json!({"unit_id": c.unit_id, "call_sign": c.call_sign, "eta_minutes": (c.eta_minutes * 10.0).round() / 10.0, "distance_km": (c.km * 100.0).round() / 100.0});
            let Some(best) = candidates.first() else {
                incident.status = "unassigned".to_owned();
                let detail = json!({"reason": "no available unit with a known position"});
                let record = AuditRecord::by_caller(&caller, "incident.unassigned", "incident", incident.id).detail(detail.clone());
                return actor.step(incident, "incident.unassigned", detail, record);
            };
            incident.status = "proposed".to_owned();
            incident.proposed_unit_id = Some(best.unit_id);
            let mut detail = option(best);
            detail["alternatives"] = candidates.iter().skip(1).take(2).map(option).collect();
            let record = AuditRecord::by_caller(&caller, "incident.propose", "incident", incident.id).detail(detail.clone());
            actor.step(incident, "incident.proposed", detail, record)
        }))
    }
}

/// The dispatcher sends a unit to a proposed (or unassigned) incident: the one they name, or the
/// proposed one, or (when that one is no longer free) the best available now.
#[derive(Message)]
#[rtype(result = "Result<Incident, ActorError>")]
pub struct ConfirmDispatch {
    pub caller: Caller,
    pub incident_id: Uuid,
    pub unit_id: Option<Uuid>,
}

impl Handler<ConfirmDispatch> for DispatchActor {
    type Result = AtomicResponse<Self, Result<Incident, ActorError>>;

    /// Atomic: the next message waits until this one's commits are done (single writer).
    fn handle(&mut self, msg: ConfirmDispatch, _ctx: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(self.confirm_dispatch(msg))
    }
}

impl DispatchActor {
    fn confirm_dispatch(&mut self, msg: ConfirmDispatch) -> ResponseActFuture<Self, Result<Incident, ActorError>> {
        let Some((incident, _)) = self.incidents.get(&msg.incident_id) else {
            return Box::pin(fut::ready(Err(ActorError::NotFound("open incident"))));
        };
        if !matches!(incident.status.as_str(), "proposed" | "unassigned") {
            let detail = format!("the incident is {}; only a proposed or unassigned incident waits for a dispatcher", incident.status);
            return Box::pin(fut::ready(Err(ActorError::Conflict(detail))));
        }
        let Some(chosen) = msg.unit_id else {
            let prefer = incident.proposed_unit_id;
            return self.dispatch_next(msg.incident_id, Some(msg.caller), prefer);
        };
        // A unit the dispatcher named must be free to go: otherwise they are told, not overruled.
        let (pool, tenant_id, supervisor, speed, incident) = (self.pool.clone(), self.tenant_id, self.supervisor.clone(), self.config.speed_kmh, incident.clone());
        let check = async move { rank_units(&pool, tenant_id, &supervisor, &incident, speed, Some(chosen)).await };
        Box::pin(check.into_actor(self).then(move |ranked, actor, _ctx| match ranked {
            Ok(candidates) if candidates.first().is_some_and(|c| c.unit_id == chosen) => actor.dispatch_next(msg.incident_id, Some(msg.caller), Some(chosen)),
            Ok(_) => Box::pin(fut::ready(Err(ActorError::Conflict("that unit is not available (or has no position yet); pick another".to_owned())))),
            Err(e) => Box::pin(fut::ready(Err(e))),
        }))
    }
}

/// A unit's status changed (told by its actor): the incident it serves follows.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct UnitProgress {
    pub unit_id: Uuid,
    pub incident_id: Option<Uuid>,
    pub status: UnitStatus,
}

impl Handler<UnitProgress> for DispatchActor {
    type Result = AtomicResponse<Self, ()>;

    /// Atomic: the next message waits until this one's commits are done (single writer).
    fn handle(&mut self, msg: UnitProgress, ctx: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(self.follow_unit(msg, ctx))
    }
}

impl DispatchActor {
    fn follow_unit(&mut self, msg: UnitProgress, _ctx: &mut Context<Self>) -> ResponseActFuture<Self, ()> {
        let Some((incident, _)) = self.incidents.values().find(|(i, _)| i.unit_id == Some(msg.unit_id)).cloned() else {
            return Box::pin(fut::ready(()));
        };
        let (status, event) = match msg.status {
            UnitStatus::EnRoute => ("en_route", "incident.acknowledged"),
            UnitStatus::OnScene => ("on_scene", "incident.on_scene"),
            UnitStatus::Transporting => ("transporting", "incident.transporting"),
            UnitStatus::AtHospital => ("at_hospital", "incident.at_hospital"),
            UnitStatus::Available if incident.status == "at_hospital" || incident.status == "on_scene" => ("closed", "incident.closed"),
            _ => return Box::pin(fut::ready(())),
        };
        if incident.status == status {
            return Box::pin(fut::ready(()));
        }
        // The mission is over: a bed still held for the patient (they were not admitted into it)
        // is free again, and the closing step says so.
        let (supervisor, incident_id, held) = (self.supervisor.clone(), incident.id, incident.held_bed().filter(|_| status == "closed"));
        let release = async move {
            match held {
                Some(held) => Some(release_bed(&supervisor, held, incident_id, None, "incident closed").await),
                None => None,
            }
        };
        Box::pin(release.into_actor(self).then(move |released, actor, _ctx| {
            let Some((mut incident, _)) = actor.incidents.get(&incident_id).cloned() else {
                return Box::pin(fut::ready(())) as ResponseActFuture<Self, ()>;
            };
            incident.status = status.to_owned();
            let mut detail = json!({"unit_id": msg.unit_id});
            if let Some(release) = &released {
                release.apply_to(&mut incident);
                detail["reserved_bed"] = release.detail();
            }
            let record = actor.system_record(event, incident.id).detail(detail.clone());
            Box::pin(actor.step(incident, event, detail, record).map(|done, actor, _ctx| {
                if let Err(e) = done {
                    warn!(tenant = %actor.tenant, error = %e, "incident progress not recorded");
                }
            }))
        }))
    }
}

/// The acknowledgement time of a dispatch ran out (if the unit is still only "dispatched").
#[derive(Message)]
#[rtype(result = "()")]
struct AckTimeout {
    incident_id: Uuid,
    unit_id: Uuid,
}

impl Handler<AckTimeout> for DispatchActor {
    type Result = AtomicResponse<Self, ()>;

    /// Atomic: the next message waits until this one's commits are done (single writer).
    fn handle(&mut self, msg: AckTimeout, ctx: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(self.ack_timed_out(msg, ctx))
    }
}

impl DispatchActor {
    fn ack_timed_out(&mut self, msg: AckTimeout, _ctx: &mut Context<Self>) -> ResponseActFuture<Self, ()> {
        let still_waiting = self.incidents.get(&msg.incident_id).is_some_and(|(i, _)| i.status == "dispatched" && i.unit_id == Some(msg.unit_id));
        if !still_waiting {
            return Box::pin(fut::ready(()));
        }
        info!(tenant = %self.tenant, incident_id = %msg.incident_id, unit_id = %msg.unit_id, "no acknowledgement in time; asking the next unit");
        let supervisor = self.supervisor.clone();
        let release = async move {
            let actor: Addr<AmbulanceActor> = supervisor.send(AmbulanceAddr(msg.unit_id)).await??;
            actor
                .send(SetStatus { caller: None, status: UnitStatus::Available, incident_id: None, destination: None, reason: "dispatch not acknowledged in time".into() })
                .await??;
            Ok::<_, ActorError>(())
        };
        let incident_id = msg.incident_id;
        Box::pin(release.into_actor(self).then(move |released, actor, _ctx| {
            if let Err(e) = released {
                warn!(tenant = %actor.tenant, error = %e, "could not release the silent unit");
            }
            let Some((mut incident, _)) = actor.incidents.get(&incident_id).cloned() else {
                return Box::pin(fut::ready(())) as ResponseActFuture<Self, ()>;
            };
            incident.status = "open".to_owned();
            incident.unit_id = None;
            let record = actor.system_record("incident.reassign", incident.id).detail(json!({"silent_unit": msg.unit_id}));
            Box::pin(actor.step(incident, "incident.reassigning", json!({"silent_unit": msg.unit_id}), record).then(move |_, actor, _ctx| {
                actor.dispatch_next(incident_id, None, None).map(|result, actor: &mut Self, _ctx| {
                    if let Err(e) = result {
                        warn!(tenant = %actor.tenant, error = %e, "reassignment failed");
                    }
                })
            }))
        }))
    }
}

/// Cancels an open incident; its unit (if any) becomes available.
#[derive(Message)]
#[rtype(result = "Result<Incident, ActorError>")]
pub struct CancelIncident {
    pub caller: Caller,
    pub incident_id: Uuid,
    pub reason: String,
}

impl Handler<CancelIncident> for DispatchActor {
    type Result = AtomicResponse<Self, Result<Incident, ActorError>>;

    /// Atomic: the next message waits until this one's commits are done (single writer).
    fn handle(&mut self, msg: CancelIncident, ctx: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(self.cancel_incident(msg, ctx))
    }
}

impl DispatchActor {
    fn cancel_incident(&mut self, msg: CancelIncident, _ctx: &mut Context<Self>) -> ResponseActFuture<Self, Result<Incident, ActorError>> {
        let Some((incident, _)) = self.incidents.get(&msg.incident_id).cloned() else {
            return Box::pin(fut::ready(Err(ActorError::NotFound("open incident"))));
        };
        // The bed held for the patient first, so that the cancelled step can say what became of it.
        let (supervisor, caller, incident_id) = (self.supervisor.clone(), msg.caller.clone(), incident.id);
        let release = async move {
            match incident.held_bed() {
                Some(held) => Some(release_bed(&supervisor, held, incident_id, Some(caller), "incident cancelled").await),
                None => None,
            }
        };
        Box::pin(release.into_actor(self).then(move |released, actor, _ctx| {
            let Some((mut incident, _)) = actor.incidents.get(&incident_id).cloned() else {
                return Box::pin(fut::ready(Err(ActorError::NotFound("open incident")))) as ResponseActFuture<Self, _>;
            };
            let unit = incident.unit_id;
            if let Some(unit_id) = unit {
                actor.send_command(unit_id, json!({"type": "stand_down", "incident_id": incident.id}));
            }
            incident.status = "cancelled".to_owned();
            let mut detail = json!({"reason": msg.reason});
            if let Some(release) = &released {
                release.apply_to(&mut incident);
                detail["reserved_bed"] = release.detail();
            }
            let record = AuditRecord::by_caller(&msg.caller, "incident.cancel", "incident", incident.id).detail(detail.clone());
            let (supervisor, caller) = (actor.supervisor.clone(), msg.caller.clone());
            Box::pin(actor.step(incident, "incident.cancelled", detail, record).then(move |cancelled, actor, _ctx| {
                let release = async move {
                    if let (Ok(_), Some(unit_id)) = (&cancelled, unit) {
                        let unit: Addr<AmbulanceActor> = supervisor.send(AmbulanceAddr(unit_id)).await??;
                        let _ = unit
                            .send(SetStatus { caller: Some(caller), status: UnitStatus::Available, incident_id: None, destination: None, reason: "incident cancelled".into() })
                            .await?;
                    }
                    cancelled
                };
                release.into_actor(actor)
            }))
        }))
    }
}
