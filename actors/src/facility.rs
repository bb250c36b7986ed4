//! The `Facility` actor: one per hospital or clinic, the single writer of its wards and beds.
//!
//! The state machine is plain data and functions ([`Facility`], [`decide_bed_change`], [`apply`]),
//! tested without a runtime. The actor around it commits each change (projection rows, event,
//! audit entry, periodic snapshot) in one transaction before it answers and only then installs the
//! new state. Its handlers are atomic (the next message waits until the commit is done), and a
//! panic anywhere in a handler is caught: the caller gets [`ActorError::Crashed`], the actor stops
//! and its supervisor restarts it, which rebuilds the state from snapshot + later events.
//!
//! Emergency beds can be held for an incoming ambulance patient ([`ReserveEmergencyBed`], sent by
//! the dispatch actor when it chooses this facility as a unit's destination): the bed is then
//! `reserved` for that incident, counted apart from free beds, until the patient is admitted into
//! it, dispatch releases it ([`ReleaseReservation`]: the incident was cancelled or closed without
//! that), or staff end the hold explicitly. Any change of the facility's free emergency beds is
//! also published on the tenant's map topic (`facility.capacity`), in the same transaction, so
//! the dispatchers' map stays current.

use std::panic::AssertUnwindSafe;

use actix::prelude::*;
use chrono::{DateTime, SubsecRound, Utc};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool, Row};
use tracing::{info, info_span, Instrument};
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::domain::{enum_name, Caller, GeoPoint, TenantSlug};
use crate::durable::{self, Core, DurableActor, DurableState, Reply};
use crate::error::ActorError;
use crate::metrics::ActorMetrics;
use crate::store::{self, Committed, EventDraft};
use crate::topics;

pub const ACTOR: &str = "facility";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BedStatus {
    Free,
    Occupied,
    /// Held for an incoming ambulance patient (see [`ReserveEmergencyBed`]).
    Reserved,
    Cleaning,
    OutOfService,
}

impl BedStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BedStatus::Free => "free",
            BedStatus::Occupied => "occupied",
            BedStatus::Reserved => "reserved",
            BedStatus::Cleaning => "cleaning",
            BedStatus::OutOfService => "out_of_service",
        }
    }

    pub fn parse(value: &str) -> Option<BedStatus> {
        [BedStatus::Free, BedStatus::Occupied, BedStatus::Reserved, BedStatus::Cleaning, BedStatus::OutOfService]
            .into_iter()
            .find(|status| status.as_str() == value)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FacilityKind {
    Hospital,
    Clinic,
    HealthCentre,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WardKind {
    Emergency,
    Icu,
    General,
    Maternity,
    Paediatric,
    Surgical,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bed {
    pub id: Uuid,
    pub label: String,
    pub status: BedStatus,
    pub patient_id: Option<Uuid>,
    /// While `reserved`: the incident whose incoming patient the bed is held for.
    #[serde(default)]
    pub reserved_for: Option<Uuid>,
    /// While `reserved`: that incident's patient, when it names one (only they are admitted into
    /// the bed without ending the hold explicitly).
    #[serde(default)]
    pub reserved_patient_id: Option<Uuid>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ward {
    pub id: Uuid,
    pub name: String,
    pub kind: WardKind,
    pub beds: Vec<Bed>,
}

/// A facility as its actor holds it and as `GET /api/facilities/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Facility {
    pub id: Uuid,
    pub name: String,
    pub kind: FacilityKind,
    pub location: GeoPoint,
    pub timezone: String,
    /// The facility's stream version: the number of events it has committed.
    pub version: i64,
    pub wards: Vec<Ward>,
}

impl Facility {
    fn bed(&self, bed_id: Uuid) -> Option<(&Ward, &Bed)> {
        self.beds().find(|(_, bed)| bed.id == bed_id)
    }

    fn beds(&self) -> impl Iterator<Item = (&Ward, &Bed)> {
        self.wards.iter().flat_map(|ward| ward.beds.iter().map(move |bed| (ward, bed)))
    }

    /// The bed held for `incident_id`, if any.
    pub fn reserved_for(&self, incident_id: Uuid) -> Option<(&Ward, &Bed)> {
        self.beds().find(|(_, bed)| bed.status == BedStatus::Reserved && bed.reserved_for == Some(incident_id))
    }

    /// Free beds in emergency wards: what an incoming ambulance patient can be given.
    pub fn free_emergency_beds(&self) -> usize {
        self.beds().filter(|(ward, bed)| ward.kind == WardKind::Emergency && bed.status == BedStatus::Free).count()
    }
}

/// A validated ward to add: a name, a kind and 0..=500 unique bed labels.
#[derive(Debug, Clone)]
pub struct NewWard {
    pub name: String,
    pub kind: WardKind,
    pub beds: Vec<String>,
}

impl NewWard {
    pub fn new(name: &str, kind: WardKind, beds: Vec<String>) -> Result<NewWard, ActorError> {
        let name = non_empty("name", name, 120)?;
        if beds.len() > 500 {
            return Err(invalid("beds", "a ward holds at most 500 beds"));
        }
        let mut labels = Vec::with_capacity(beds.len());
        for label in beds {
            let label = non_empty("beds", &label, 40)?;
            if labels.contains(&label) {
                return Err(invalid("beds", format!("bed label {label:?} appears twice")));
            }
            labels.push(label);
        }
        Ok(NewWard { name, kind, beds: labels })
    }

    fn build(&self, at: DateTime<Utc>) -> Ward {
        Ward {
            id: Uuid::new_v4(),
            name: self.name.clone(),
            kind: self.kind,
            beds: self
                .beds
                .iter()
                .map(|label| Bed {
                    id: Uuid::new_v4(),
                    label: label.clone(),
                    status: BedStatus::Free,
                    patient_id: None,
                    reserved_for: None,
                    reserved_patient_id: None,
                    updated_at: at,
                })
                .collect(),
        }
    }
}

/// A validated facility to create.
#[derive(Debug, Clone)]
pub struct NewFacility {
    pub name: String,
    pub kind: FacilityKind,
    pub location: GeoPoint,
    pub timezone: String,
    pub wards: Vec<NewWard>,
}

impl NewFacility {
    pub fn new(name: &str, kind: FacilityKind, location: GeoPoint, timezone: &str, wards: Vec<NewWard>) -> Result<NewFacility, ActorError> {
        let name = non_empty("name", name, 200)?;
        let timezone = parse_timezone(timezone)?;
        if wards.len() > 100 {
            return Err(invalid("wards", "a facility holds at most 100 wards"));
        }
        Ok(NewFacility { name, kind, location, timezone, wards })
    }
}

fn invalid(field: &'static str, detail: impl Into<String>) -> ActorError {
    ActorError::Invalid { field, detail: detail.into() }
}

fn non_empty(field: &'static str, value: &str, max: usize) -> Result<String, ActorError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid(field, format!("{field} must not be empty")));
    }
    if value.chars().count() > max {
        return Err(invalid(field, format!("{field} must be at most {max} characters")));
    }
    Ok(value.to_owned())
}

/// An IANA time zone name such as `Africa/Nairobi` or `UTC` (checked for form; the zone
/// database itself is consulted where schedules need it).
fn parse_timezone(value: &str) -> Result<String, ActorError> {
    let well_formed = !value.is_empty()
        && value.len() <= 64
        && value.split('/').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
        })
        && value.chars().next().is_some_and(|c| c.is_ascii_uppercase());
    if well_formed {
        Ok(value.to_owned())
    } else {
        Err(invalid("timezone", format!("{value:?} is not an IANA time zone name such as \"Africa/Nairobi\" or \"UTC\"")))
    }
}

/// The event a bed change commits: the `data` of a `bed.status_changed` envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BedStatusChanged {
    pub facility_id: Uuid,
    pub ward_id: Uuid,
    pub bed_id: Uuid,
    pub label: String,
    pub from: BedStatus,
    pub to: BedStatus,
    pub patient_id: Option<Uuid>,
    /// For `reserved`: the incident the bed is now held for.
    #[serde(default)]
    pub reserved_for: Option<Uuid>,
    /// For `reserved`: that incident's patient, when known.
    #[serde(default)]
    pub reserved_patient_id: Option<Uuid>,
    /// The hold this change ended (the bed was reserved for that incident), if any.
    #[serde(default)]
    pub ended_reservation: Option<Uuid>,
    /// The user who changed it; nil when the hub did (dispatch holding or releasing a bed).
    pub changed_by: Uuid,
    pub at: DateTime<Utc>,
}

pub const FACILITY_CREATED: &str = "facility.created";
pub const WARD_ADDED: &str = "ward.added";
pub const BED_STATUS_CHANGED: &str = "bed.status_changed";
/// On the tenant's map topic: a facility's free emergency beds changed (`{facility_id, name, lat,
/// lon, free_emergency_beds}`).
pub const FACILITY_CAPACITY: &str = "facility.capacity";

/// Decides what a staff request to set a bed's status means for the facility as it is now:
/// `Ok(None)` when nothing changes, the event to commit, or why it is refused.
///
/// A bed held for an incoming ambulance patient (`reserved`) is not given away silently: staff
/// may admit the incoming patient into it (any patient when the incident names none), which ends
/// the hold; anything else (another patient, free, cleaning, out of service) is refused unless the
/// request says `release_reservation`, and the event and audit entry then name the hold it ended.
/// Beds are reserved only by dispatch ([`decide_reservation`]), never by hand.
pub fn decide_bed_change(
    facility: &Facility,
    bed_id: Uuid,
    to: BedStatus,
    patient_id: Option<Uuid>,
    release_reservation: bool,
    changed_by: Uuid,
    at: DateTime<Utc>,
) -> Result<Option<BedStatusChanged>, ActorError> {
    let (ward, bed) = facility.bed(bed_id).ok_or(ActorError::NotFound("bed"))?;
    if to == BedStatus::Reserved {
        return Err(invalid(
            "status",
            "beds are reserved by dispatch for an incoming ambulance patient, not by hand; choose free, occupied, cleaning or out_of_service",
        ));
    }
    match (to, patient_id) {
        (BedStatus::Occupied, None) => {
            return Err(invalid("patient_id", "a patient_id is required to mark a bed occupied"))
        }
        (status, Some(_)) if status != BedStatus::Occupied => {
            return Err(invalid("patient_id", "only an occupied bed holds a patient; leave patient_id out"))
        }
        _ => {}
    }
    if bed.status == to {
        if bed.patient_id == patient_id {
            return Ok(None);
        }
        return Err(ActorError::Conflict(format!(
            "bed {} is occupied by another patient; discharge first (set it free or cleaning)",
            bed.label
        )));
    }
    if let Some(patient) = patient_id {
        let elsewhere = facility.wards.iter().flat_map(|w| w.beds.iter()).find(|b| b.id != bed_id && b.patient_id == Some(patient));
        if let Some(other) = elsewhere {
            return Err(ActorError::Conflict(format!("that patient already occupies bed {}; discharge them there first", other.label)));
        }
    }
    if bed.status == BedStatus::Occupied && to == BedStatus::OutOfService {
        return Err(ActorError::Conflict(format!(
            "bed {} is occupied; discharge the patient before taking it out of service",
            bed.label
        )));
    }
    let ended_reservation = if bed.status == BedStatus::Reserved { bed.reserved_for } else { None };
    if let (Some(incident), false) = (ended_reservation, release_reservation) {
        let admits_the_incoming_patient =
            to == BedStatus::Occupied && bed.reserved_patient_id.is_none_or(|expected| Some(expected) == patient_id);
        if !admits_the_incoming_patient {
            let what = if to == BedStatus::Occupied { "admitting another patient into it" } else { "changing it" };
            return Err(ActorError::Conflict(format!(
                "bed {} is held for the incoming patient of incident {incident}; {what} ends that hold: repeat with \
                 release_reservation: true to do so deliberately, or choose another bed",
                bed.label
            )));
        }
    }
    Ok(Some(BedStatusChanged {
        facility_id: facility.id,
        ward_id: ward.id,
        bed_id,
        label: bed.label.clone(),
        from: bed.status,
        to,
        patient_id,
        reserved_for: None,
        reserved_patient_id: None,
        ended_reservation,
        changed_by,
        at,
    }))
}

/// Decides which bed to hold for an incident's incoming patient: `Ok(None)` when a bed here is
/// already held for it (nothing to commit), else the first free bed of an emergency ward (wards
/// and beds in board order), or a conflict when none is free.
pub fn decide_reservation(
    facility: &Facility,
    incident_id: Uuid,
    patient_id: Option<Uuid>,
    changed_by: Uuid,
    at: DateTime<Utc>,
) -> Result<Option<BedStatusChanged>, ActorError> {
    if facility.reserved_for(incident_id).is_some() {
        return Ok(None);
    }
    let (ward, bed) = facility
        .beds()
        .find(|(ward, bed)| ward.kind == WardKind::Emergency && bed.status == BedStatus::Free)
        .ok_or_else(|| ActorError::Conflict(format!("{} has no free emergency bed", facility.name)))?;
    Ok(Some(BedStatusChanged {
        facility_id: facility.id,
        ward_id: ward.id,
        bed_id: bed.id,
        label: bed.label.clone(),
        from: bed.status,
        to: BedStatus::Reserved,
        patient_id: None,
        reserved_for: Some(incident_id),
        reserved_patient_id: patient_id,
        ended_reservation: None,
        changed_by,
        at,
    }))
}

/// Decides what releasing an incident's hold means: the held bed becomes free again, or nothing
/// happens when no bed here is held for it (never held, already released, or the patient was
/// admitted into it).
pub fn decide_release(facility: &Facility, incident_id: Uuid, changed_by: Uuid, at: DateTime<Utc>) -> Option<BedStatusChanged> {
    let (ward, bed) = facility.reserved_for(incident_id)?;
    Some(BedStatusChanged {
        facility_id: facility.id,
        ward_id: ward.id,
        bed_id: bed.id,
        label: bed.label.clone(),
        from: bed.status,
        to: BedStatus::Free,
        patient_id: None,
        reserved_for: None,
        reserved_patient_id: None,
        ended_reservation: Some(incident_id),
        changed_by,
        at,
    })
}

/// Applies a stored event to the state it follows; the single definition of what each event
/// means, used both live (after commit) and in recovery.
pub fn apply(state: Option<Facility>, stream_seq: i64, event_type: &str, data: &Value) -> Result<Facility, String> {
    match event_type {
        FACILITY_CREATED | WARD_ADDED => {
            let mut facility: Facility =
                serde_json::from_value(data.clone()).map_err(|e| format!("bad {event_type} event: {e}"))?;
            facility.version = stream_seq;
            Ok(facility)
        }
        BED_STATUS_CHANGED => {
            let mut facility = state.ok_or("bed.status_changed before facility.created")?;
            let change: BedStatusChanged =
                serde_json::from_value(data.clone()).map_err(|e| format!("bad {event_type} event: {e}"))?;
            let bed = facility
                .wards
                .iter_mut()
                .flat_map(|ward| ward.beds.iter_mut())
                .find(|bed| bed.id == change.bed_id)
                .ok_or_else(|| format!("bed {} not in facility", change.bed_id))?;
            bed.status = change.to;
            bed.patient_id = change.patient_id;
            bed.reserved_for = change.reserved_for;
            bed.reserved_patient_id = change.reserved_patient_id;
            bed.updated_at = change.at;
            facility.version = stream_seq;
            Ok(facility)
        }
        other => Err(format!("unknown facility event {other}")),
    }
}

pub fn stream_name(facility_id: Uuid) -> String {
    format!("facility/{facility_id}")
}

/// Rebuilds a facility from its latest snapshot and the events after it; `None` if it does not
/// exist in this tenant.
pub async fn recover(pool: &PgPool, tenant_id: Uuid, facility_id: Uuid) -> Result<Option<Facility>, ActorError> {
    let history = store::load_stream(pool, tenant_id, &stream_name(facility_id)).await?;
    let mut state: Option<Facility> = match history.snapshot {
        Some((seq, value)) => {
            let mut facility: Facility = serde_json::from_value(value)
                .map_err(|e| ActorError::Unavailable(format!("facility {facility_id} snapshot unreadable: {e}")))?;
            facility.version = seq;
            Some(facility)
        }
        None => None,
    };
    for event in &history.events {
        state = Some(
            apply(state, event.stream_seq, &event.event_type, &event.data)
                .map_err(|e| ActorError::Unavailable(format!("facility {facility_id} history unreadable: {e}")))?,
        );
    }
    Ok(state)
}

/// The rows of the read model that one event changes.
enum ProjectionChange<'a> {
    Created(&'a Facility),
    WardAdded { facility: &'a Facility, ward: &'a Ward },
    Bed(&'a BedStatusChanged, i64),
}

async fn write_projection(conn: &mut PgConnection, tenant_id: Uuid, change: ProjectionChange<'_>) -> Result<(), sqlx::Error> {
    match change {
        ProjectionChange::Created(facility) => {
            sqlx::query(
                "INSERT INTO facilities (id, tenant_id, name, kind, latitude, longitude, timezone, version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(facility.id)
            .bind(tenant_id)
            .bind(&facility.name)
            .bind(enum_name(&facility.kind))
            .bind(facility.location.lat())
            .bind(facility.location.lon())
            .bind(&facility.timezone)
            .bind(facility.version)
            .execute(&mut *conn)
            .await?;
            for ward in &facility.wards {
                insert_ward(conn, tenant_id, facility, ward).await?;
            }
        }
        ProjectionChange::WardAdded { facility, ward } => {
            insert_ward(conn, tenant_id, facility, ward).await?;
            bump_version(conn, facility.id, facility.version).await?;
        }
        ProjectionChange::Bed(change, version) => {
            sqlx::query(
                "UPDATE beds SET status = $2, patient_id = $3, reserved_for = $4, reserved_patient_id = $5, updated_at = $6 WHERE id = $1",
            )
                .bind(change.bed_id)
                .bind(change.to.as_str())
                .bind(change.patient_id)
                .bind(change.reserved_for)
                .bind(change.reserved_patient_id)
                .bind(change.at)
                .execute(&mut *conn)
                .await?;
            bump_version(conn, change.facility_id, version).await?;
        }
    }
    Ok(())
}

async fn insert_ward(conn: &mut PgConnection, tenant_id: Uuid, facility: &Facility, ward: &Ward) -> Result<(), sqlx::Error> {
    let position = facility.wards.iter().position(|w| w.id == ward.id).unwrap_or(0) as i32;
    sqlx::query("INSERT INTO wards (id, tenant_id, facility_id, name, kind, position) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(ward.id)
        .bind(tenant_id)
        .bind(facility.id)
        .bind(&ward.name)
        .bind(enum_name(&ward.kind))
        .bind(position)
        .execute(&mut *conn)
        .await?;
    // One statement for the whole ward: a 500-bed ward is one round trip, not 500.
    let ids: Vec<Uuid> = ward.beds.iter().map(|bed| bed.id).collect();
    let labels: Vec<&str> = ward.beds.iter().map(|bed| bed.label.as_str()).collect();
    let positions: Vec<i32> = (0..ward.beds.len() as i32).collect();
    let statuses: Vec<&str> = ward.beds.iter().map(|bed| bed.status.as_str()).collect();
    let patients: Vec<Option<Uuid>> = ward.beds.iter().map(|bed| bed.patient_id).collect();
    let updated: Vec<DateTime<Utc>> = ward.beds.iter().map(|bed| bed.updated_at).collect();
    sqlx::query(
        "INSERT INTO beds (id, tenant_id, facility_id, ward_id, label, position, status, patient_id, updated_at)
         SELECT id, $2, $3, $4, label, position, status, patient_id, updated_at
         FROM UNNEST($1::uuid[], $5::text[], $6::int[], $7::text[], $8::uuid[], $9::timestamptz[])
              AS bed (id, label, position, status, patient_id, updated_at)",
    )
    .bind(&ids)
    .bind(tenant_id)
    .bind(facility.id)
    .bind(ward.id)
    .bind(&labels)
    .bind(&positions)
    .bind(&statuses)
    .bind(&patients)
    .bind(&updated)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn bump_version(conn: &mut PgConnection, facility_id: Uuid, version: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE facilities SET version = $2 WHERE id = $1")
        .bind(facility_id)
        .bind(version)
        .execute(conn)
        .await?;
    Ok(())
}

/// Everything a command commits, prepared against the current state before any I/O.
struct Plan {
    draft: EventDraft,
    audit: AuditRecord,
    next_state: Facility,
    projection: PlannedProjection,
    /// The `facility.capacity` event for the map topic (its name and data), when the command
    /// changes the facility's free emergency beds (or creates the facility).
    capacity: Option<(String, Value)>,
}

/// The map's `facility.capacity` event when `next` has a different number of free emergency beds
/// than `before` (`None`: the facility is new).
fn capacity_change(tenant: &TenantSlug, before: Option<&Facility>, next: &Facility) -> Option<(String, Value)> {
    let free = next.free_emergency_beds();
    if before.is_some_and(|before| before.free_emergency_beds() == free) {
        return None;
    }
    let data = json!({
        "facility_id": next.id, "name": next.name, "lat": next.location.lat(), "lon": next.location.lon(),
        "free_emergency_beds": free,
    });
    Some((topics::map_topic(tenant), data))
}

enum PlannedProjection {
    Created,
    WardAdded(Uuid),
    Bed(BedStatusChanged),
}

/// The index that keeps a patient in one bed across the tenant's facilities.
const ONE_BED_PER_PATIENT: &str = "beds_one_bed_per_patient";
/// The index that lets an incident hold one bed across the tenant's facilities.
const ONE_BED_PER_INCIDENT: &str = "beds_one_bed_per_incident";

/// Commits a plan: projection rows, event, the map's capacity event (if any), audit entry and
/// (every `snapshot_every` events) a snapshot, in one transaction. Shared by creation (in the
/// tenant supervisor) and the actor.
async fn commit_plan(pool: &PgPool, tenant_id: Uuid, plan: &Plan, snapshot_every: i64, metrics: &ActorMetrics) -> Result<Committed, ActorError> {
    let started = std::time::Instant::now();
    let mut tx = pool.begin().await?;
    let next = &plan.next_state;
    let change = match &plan.projection {
        PlannedProjection::Created => ProjectionChange::Created(next),
        PlannedProjection::WardAdded(ward_id) => ProjectionChange::WardAdded {
            facility: next,
            ward: next.wards.iter().find(|w| w.id == *ward_id).expect("planned ward is in the next state"),
        },
        PlannedProjection::Bed(change) => ProjectionChange::Bed(change, next.version),
    };
    match write_projection(&mut tx, tenant_id, change).await {
        Err(sqlx::Error::Database(db)) if db.constraint() == Some(ONE_BED_PER_PATIENT) => {
            return Err(ActorError::Conflict("that patient already occupies a bed in another facility; discharge them there first".to_owned()));
        }
        Err(sqlx::Error::Database(db)) if db.constraint() == Some(ONE_BED_PER_INCIDENT) => {
            return Err(ActorError::Conflict("that incident already holds a bed in another facility; release it there first".to_owned()));
        }
        other => other?,
    }
    let snapshot = (next.version % snapshot_every.max(1) == 0)
        .then(|| serde_json::to_value(next).expect("facilities serialise"));
    // As store::commit_command, with the capacity copy in between: topic rows are locked in name
    // order (`tenant/{t}/beds` before `tenant/{t}/map`), the audit chain head last.
    let committed = store::append_event(&mut tx, tenant_id, &plan.draft).await?;
    if let Some((topic, data)) = &plan.capacity {
        store::publish_copy(&mut tx, tenant_id, topic, FACILITY_CAPACITY, data).await?;
    }
    if let Some(state) = &snapshot {
        store::save_snapshot(&mut tx, tenant_id, &plan.draft.stream, committed.stream_seq, state).await?;
    }
    crate::audit::append(&mut tx, tenant_id, &plan.audit).await?;
    tx.commit().await?;
    metrics.commit_seconds.with_label_values(&[ACTOR]).observe(started.elapsed().as_secs_f64());
    Ok(committed)
}

fn plan_creation(tenant: &TenantSlug, caller: &Caller, new: &NewFacility) -> Plan {
    let at = Utc::now().trunc_subsecs(6);
    let facility = Facility {
        id: Uuid::new_v4(),
        name: new.name.clone(),
        kind: new.kind,
        location: new.location,
        timezone: new.timezone.clone(),
        version: 1,
        wards: new.wards.iter().map(|ward| ward.build(at)).collect(),
    };
    let beds: usize = facility.wards.iter().map(|w| w.beds.len()).sum();
    let capacity = capacity_change(tenant, None, &facility);
    Plan {
        draft: EventDraft {
            stream: stream_name(facility.id),
            expected_version: 0,
            topic: topics::beds_topic(tenant),
            event_type: FACILITY_CREATED,
            data: serde_json::to_value(&facility).expect("facilities serialise"),
        },
        audit: AuditRecord::by_caller(caller, "facility.create", "facility", facility.id)
            .detail(json!({"name": facility.name, "wards": facility.wards.len(), "beds": beds})),
        next_state: facility,
        projection: PlannedProjection::Created,
        capacity,
    }
}

/// Creates a facility (its first event) and returns it. Called by the tenant supervisor, which
/// then starts the facility's actor with this state.
pub(crate) async fn create(
    pool: &PgPool,
    tenant_id: Uuid,
    tenant: &TenantSlug,
    caller: &Caller,
    new: &NewFacility,
    snapshot_every: i64,
    metrics: &ActorMetrics,
) -> Result<Facility, ActorError> {
    let plan = plan_creation(tenant, caller, new);
    commit_plan(pool, tenant_id, &plan, snapshot_every, metrics).await?;
    info!(tenant = %tenant, facility_id = %plan.next_state.id, "facility created");
    Ok(plan.next_state)
}

// ---------------------------------------------------------------------------------------------
// The actor

pub struct FacilityActor {
    core: Core<Facility>,
}

impl DurableState for Facility {
    fn recover(pool: PgPool, tenant_id: Uuid, id: Uuid) -> impl std::future::Future<Output = Result<Option<Facility>, ActorError>> + Send + 'static {
        async move { recover(&pool, tenant_id, id).await }
    }
}

impl FacilityActor {
    pub(crate) fn new(tenant_id: Uuid, tenant: TenantSlug, state: Facility, pool: PgPool, snapshot_every: i64, metrics: ActorMetrics) -> FacilityActor {
        FacilityActor { core: Core::new(tenant_id, tenant, state.id, state, pool, snapshot_every, metrics) }
    }

    /// Commits `plan`, then installs its state and answers with `reply(new state, committed)`.
    fn execute<T: 'static>(&mut self, mut plan: Plan, reply: impl FnOnce(&Facility, &Committed) -> T + 'static) -> Reply<Self, T> {
        let core = &self.core;
        plan.capacity = capacity_change(&core.tenant, core.state.as_ref(), &plan.next_state);
        let (pool, tenant_id, snapshot_every, metrics) = (core.pool.clone(), core.tenant_id, core.snapshot_every, core.metrics.clone());
        let span = info_span!("command", tenant = %core.tenant, actor = ACTOR, facility_id = %core.id, event = plan.draft.event_type);
        let commit = async move {
            let committed = commit_plan(&pool, tenant_id, &plan, snapshot_every, &metrics).await?;
            Ok((plan.next_state, committed))
        }
        .instrument(span);
        durable::commit_then_install(self, commit, move |actor: &mut Self, next_state, committed| {
            let answer = reply(&next_state, committed);
            actor.core.state = Some(next_state);
            answer
        })
    }
}

impl DurableActor for FacilityActor {
    type State = Facility;
    const KIND: &'static str = ACTOR;

    fn core(&self) -> &Core<Facility> {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Core<Facility> {
        &mut self.core
    }
}

impl Actor for FacilityActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        durable::start(self, ctx);
    }
}

impl actix::Supervised for FacilityActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        durable::restarting(self);
    }
}

/// Returns the facility as it is now.
#[derive(Message)]
#[rtype(result = "Result<Facility, ActorError>")]
pub struct GetFacility;

impl Handler<GetFacility> for FacilityActor {
    type Result = Result<Facility, ActorError>;

    fn handle(&mut self, _msg: GetFacility, _ctx: &mut Context<Self>) -> Self::Result {
        self.current().cloned()
    }
}

/// Sets a bed's status (and the patient in it, for `occupied`), as staff do.
#[derive(Message)]
#[rtype(result = "Result<BedChanged, ActorError>")]
pub struct ChangeBedStatus {
    pub caller: Caller,
    pub bed_id: Uuid,
    pub status: BedStatus,
    pub patient_id: Option<Uuid>,
    /// The bed is held for an incoming ambulance patient and the caller ends that hold on purpose
    /// (see [`decide_bed_change`]).
    pub release_reservation: bool,
}

/// The answer to [`ChangeBedStatus`] and [`ReleaseReservation`]: the bed now, the facility
/// version, and the event's seq on the tenant's bed topic (`None` when nothing changed).
#[derive(Debug, Clone, Serialize)]
pub struct BedChanged {
    pub bed: Bed,
    pub facility_id: Uuid,
    pub version: i64,
    pub seq: Option<i64>,
}

impl FacilityActor {
    /// Commits a decided bed change with its audit entry and answers with `reply(the bed now,
    /// the facility now, committed)`.
    fn commit_bed_change<T: 'static>(
        &mut self,
        facility: &Facility,
        change: BedStatusChanged,
        audit: AuditRecord,
        reply: impl FnOnce(&Bed, &Facility, &Committed) -> T + 'static,
    ) -> Reply<Self, T> {
        let data = serde_json::to_value(&change).expect("events serialise");
        let next_state = match apply(Some(facility.clone()), facility.version + 1, BED_STATUS_CHANGED, &data) {
            Ok(next) => next,
            Err(detail) => return durable::refuse(self, ActorError::Unavailable(detail)),
        };
        let plan = Plan {
            draft: EventDraft {
                stream: stream_name(facility.id),
                expected_version: facility.version,
                topic: topics::beds_topic(&self.core.tenant),
                event_type: BED_STATUS_CHANGED,
                data,
            },
            audit,
            next_state,
            projection: PlannedProjection::Bed(change.clone()),
            capacity: None,
        };
        let bed_id = change.bed_id;
        self.execute(plan, move |next, committed| {
            let (_, bed) = next.bed(bed_id).expect("bed still exists after its change");
            reply(bed, next, committed)
        })
    }
}

impl Handler<ChangeBedStatus> for FacilityActor {
    type Result = Reply<Self, BedChanged>;

    fn handle(&mut self, msg: ChangeBedStatus, _ctx: &mut Context<Self>) -> Self::Result {
        let facility = match self.current() {
            Ok(facility) => facility.clone(),
            Err(error) => return durable::refuse(self, error),
        };
        let at = Utc::now().trunc_subsecs(6);
        let decided = durable::decide::<Self, _>(|| {
            decide_bed_change(&facility, msg.bed_id, msg.status, msg.patient_id, msg.release_reservation, msg.caller.principal.user_id, at)
        });
        let change = match decided {
            Ok(Ok(Some(change))) => change,
            Ok(Ok(None)) => {
                let (_, bed) = facility.bed(msg.bed_id).expect("decided against an existing bed");
                let unchanged = BedChanged { bed: bed.clone(), facility_id: facility.id, version: facility.version, seq: None };
                return durable::answer(unchanged);
            }
            Ok(Err(error)) => return durable::refuse(self, error),
            Err(()) => return durable::crash_now(),
        };
        let previous = facility.bed(change.bed_id).map(|(_, bed)| bed.clone());
        let mut detail = json!({
            "facility_id": facility.id, "label": change.label,
            "from": change.from.as_str(), "to": change.to.as_str(),
        });
        if let Some(incident) = change.ended_reservation {
            detail["ended_reservation"] = json!(incident);
        }
        let audit = AuditRecord::by_caller(&msg.caller, "bed.status_change", "bed", change.bed_id)
            .patient(change.patient_id.or_else(|| previous.as_ref().and_then(|bed| bed.patient_id.or(bed.reserved_patient_id))))
            .detail(detail);
        self.commit_bed_change(&facility, change, audit, |bed, next, committed| BedChanged {
            bed: bed.clone(),
            facility_id: next.id,
            version: next.version,
            seq: Some(committed.topic_seq),
        })
    }
}

/// Holds a free emergency bed for an incident's incoming patient. Sent by dispatch when it
/// chooses this facility as a unit's destination; refused with a conflict when no emergency bed
/// is free. Asking again for the same incident answers with the bed already held.
#[derive(Message)]
#[rtype(result = "Result<BedReserved, ActorError>")]
pub struct ReserveEmergencyBed {
    /// `None`: the hub's dispatch decided it on its own.
    pub caller: Option<Caller>,
    pub incident_id: Uuid,
    /// The incident's patient, when it names one.
    pub patient_id: Option<Uuid>,
}

/// The answer to [`ReserveEmergencyBed`]: where the patient goes and the bed held for them.
#[derive(Debug, Clone, Serialize)]
pub struct BedReserved {
    pub facility_id: Uuid,
    pub facility_name: String,
    pub location: GeoPoint,
    pub ward_id: Uuid,
    pub bed: Bed,
    /// The event's seq on the bed topic (`None`: the bed was already held for this incident).
    pub seq: Option<i64>,
}

/// An audit record by the caller, or by the hub when there is none.
fn bed_record(caller: &Option<Caller>, action: &str, bed_id: Uuid) -> AuditRecord {
    match caller {
        Some(caller) => AuditRecord::by_caller(caller, action, "bed", bed_id),
        None => AuditRecord::by_system(action, "bed", bed_id),
    }
}

impl Handler<ReserveEmergencyBed> for FacilityActor {
    type Result = Reply<Self, BedReserved>;

    fn handle(&mut self, msg: ReserveEmergencyBed, _ctx: &mut Context<Self>) -> Self::Result {
        let facility = match self.current() {
            Ok(facility) => facility.clone(),
            Err(error) => return durable::refuse(self, error),
        };
        let at = Utc::now().trunc_subsecs(6);
        let changed_by = msg.caller.as_ref().map_or(Uuid::nil(), |caller| caller.principal.user_id);
        let reserved = |facility: &Facility, ward_id: Uuid, bed: &Bed, seq: Option<i64>| BedReserved {
            facility_id: facility.id,
            facility_name: facility.name.clone(),
            location: facility.location,
            ward_id,
            bed: bed.clone(),
            seq,
        };
        let change = match durable::decide::<Self, _>(|| decide_reservation(&facility, msg.incident_id, msg.patient_id, changed_by, at)) {
            Ok(Ok(Some(change))) => change,
            Ok(Ok(None)) => {
                let (ward, bed) = facility.reserved_for(msg.incident_id).expect("decided against a held bed");
                return durable::answer(reserved(&facility, ward.id, bed, None));
            }
            Ok(Err(error)) => return durable::refuse(self, error),
            Err(()) => return durable::crash_now(),
        };
        let audit = bed_record(&msg.caller, "bed.reserve", change.bed_id)
            .patient(msg.patient_id)
            .detail(json!({"facility_id": facility.id, "label": change.label, "incident_id": msg.incident_id}));
        let ward_id = change.ward_id;
        self.commit_bed_change(&facility, change, audit, move |bed, next, committed| reserved(next, ward_id, bed, Some(committed.topic_seq)))
    }
}

/// Ends an incident's hold on a bed here: the bed is free again. Nothing happens (and nothing is
/// written) when no bed here is held for it: never held, already released, or the patient was
/// admitted into it; the answer is then `None`.
#[derive(Message)]
#[rtype(result = "Result<Option<BedChanged>, ActorError>")]
pub struct ReleaseReservation {
    /// `None`: the hub's dispatch decided it on its own (e.g. the incident closed).
    pub caller: Option<Caller>,
    pub incident_id: Uuid,
    /// Why, for the audit trail ("incident cancelled", "incident closed").
    pub reason: String,
}

impl Handler<ReleaseReservation> for FacilityActor {
    type Result = Reply<Self, Option<BedChanged>>;

    fn handle(&mut self, msg: ReleaseReservation, _ctx: &mut Context<Self>) -> Self::Result {
        let facility = match self.current() {
            Ok(facility) => facility.clone(),
            Err(error) => return durable::refuse(self, error),
        };
        let at = Utc::now().trunc_subsecs(6);
        let changed_by = msg.caller.as_ref().map_or(Uuid::nil(), |caller| caller.principal.user_id);
        let change = match durable::decide::<Self, _>(|| decide_release(&facility, msg.incident_id, changed_by, at)) {
            Ok(Some(change)) => change,
            Ok(None) => return durable::answer(None),
            Err(()) => return durable::crash_now(),
        };
        let patient = facility.reserved_for(msg.incident_id).and_then(|(_, bed)| bed.reserved_patient_id);
        let audit = bed_record(&msg.caller, "bed.reservation_release", change.bed_id).patient(patient).detail(json!({
            "facility_id": facility.id, "label": change.label, "incident_id": msg.incident_id, "reason": msg.reason,
        }));
        self.commit_bed_change(&facility, change, audit, |bed, next, committed| {
            Some(BedChanged { bed: bed.clone(), facility_id: next.id, version: next.version, seq: Some(committed.topic_seq) })
        })
    }
}

/// Adds a ward with its beds (all free).
#[derive(Message)]
#[rtype(result = "Result<Facility, ActorError>")]
pub struct AddWard {
    pub caller: Caller,
    pub ward: NewWard,
}

impl Handler<AddWard> for FacilityActor {
    type Result = Reply<Self, Facility>;

    fn handle(&mut self, msg: AddWard, _ctx: &mut Context<Self>) -> Self::Result {
        let facility = match self.current() {
            Ok(facility) => facility,
            Err(error) => return durable::refuse(self, error),
        };
        if facility.wards.iter().any(|ward| ward.name.eq_ignore_ascii_case(&msg.ward.name)) {
            return durable::refuse(self, ActorError::Conflict(format!("a ward named {:?} already exists here", msg.ward.name)));
        }
        if facility.wards.len() >= 100 {
            return durable::refuse(self, invalid("wards", "a facility holds at most 100 wards"));
        }
        let ward = msg.ward.build(Utc::now().trunc_subsecs(6));
        let mut next_state = facility.clone();
        next_state.wards.push(ward.clone());
        next_state.version += 1;
        let plan = Plan {
            draft: EventDraft {
                stream: stream_name(facility.id),
                expected_version: facility.version,
                topic: topics::beds_topic(&self.core.tenant),
                event_type: WARD_ADDED,
                data: serde_json::to_value(&next_state).expect("facilities serialise"),
            },
            audit: AuditRecord::by_caller(&msg.caller, "ward.add", "ward", ward.id)
                .detail(json!({"facility_id": facility.id, "name": ward.name, "beds": ward.beds.len()})),
            next_state,
            projection: PlannedProjection::WardAdded(ward.id),
            capacity: None,
        };
        self.execute(plan, |next, _| next.clone())
    }
}

/// Fault injection for supervision tests: opens a transaction, writes to it, then panics before
/// committing, as a bug in a handler would. Only reachable when the hub runs with fault injection
/// enabled.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct InjectPanic;

impl Handler<InjectPanic> for FacilityActor {
    type Result = AtomicResponse<Self, Result<(), ActorError>>;

    fn handle(&mut self, _msg: InjectPanic, _ctx: &mut Context<Self>) -> Self::Result {
        let (pool, facility_id) = (self.core.pool.clone(), self.core.id);
        if let Some(state) = self.core.state.as_mut() {
            // Corrupt the in-memory state too: recovery must not trust it.
            state.wards.clear();
        }
        let doomed = async move {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE beds SET status = 'out_of_service', patient_id = NULL, reserved_for = NULL, reserved_patient_id = NULL WHERE facility_id = $1",
            )
                .bind(facility_id)
                .execute(&mut *tx)
                .await?;
            panic!("injected fault: facility handler panicked mid-transaction");
            #[allow(unreachable_code)]
            Ok::<(), ActorError>(())
        };
        AtomicResponse::new(Box::pin(AssertUnwindSafe(doomed).catch_unwind().into_actor(self).map(
            |outcome, actor, ctx| match outcome {
                Ok(result) => result,
                Err(_panic) => durable::crashed(actor, ctx),
            },
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Read models

/// A facility with its bed counts, for lists.
#[derive(Debug, Clone, Serialize)]
pub struct FacilitySummary {
    pub id: Uuid,
    pub name: String,
    pub kind: FacilityKind,
    pub location: GeoPoint,
    pub timezone: String,
    pub version: i64,
    pub beds: BedCounts,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BedCounts {
    pub free: i64,
    pub occupied: i64,
    /// Held for incoming ambulance patients: not free.
    pub reserved: i64,
    pub cleaning: i64,
    pub out_of_service: i64,
}

pub async fn list_facilities(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<FacilitySummary>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT f.id, f.name, f.kind, f.latitude, f.longitude, f.timezone, f.version,
                count(b.id) FILTER (WHERE b.status = 'free') AS free,
                count(b.id) FILTER (WHERE b.status = 'occupied') AS occupied,
                count(b.id) FILTER (WHERE b.status = 'reserved') AS reserved,
                count(b.id) FILTER (WHERE b.status = 'cleaning') AS cleaning,
                count(b.id) FILTER (WHERE b.status = 'out_of_service') AS out_of_service
         FROM facilities f LEFT JOIN beds b ON b.facility_id = f.id
         WHERE f.tenant_id = $1 GROUP BY f.id ORDER BY f.name, f.id",
    )
    .bind(tenant_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(FacilitySummary {
                id: row.get("id"),
                name: row.get("name"),
                kind: from_name(row.get("kind"))?,
                location: location(row)?,
                timezone: row.get("timezone"),
                version: row.get("version"),
                beds: BedCounts {
                    free: row.get("free"),
                    occupied: row.get("occupied"),
                    reserved: row.get("reserved"),
                    cleaning: row.get("cleaning"),
                    out_of_service: row.get("out_of_service"),
                },
            })
        })
        .collect()
}

fn from_name<T: for<'de> Deserialize<'de>>(name: String) -> Result<T, sqlx::Error> {
    serde_json::from_value(Value::String(name)).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn location(row: &sqlx::postgres::PgRow) -> Result<GeoPoint, sqlx::Error> {
    GeoPoint::new(row.get("latitude"), row.get("longitude")).map_err(|e| sqlx::Error::Decode(e.into()))
}

/// The tenant's whole bed board from the read model, and the seq of the last bed-topic event it
/// reflects, read in one repeatable-read snapshot so the two agree.
pub async fn bed_board(pool: &PgPool, tenant_id: Uuid, topic: &str) -> Result<(i64, Vec<Facility>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let seq = store::topic_head(&mut tx, topic).await?;
    let facility_rows = sqlx::query(
        "SELECT id, name, kind, latitude, longitude, timezone, version FROM facilities
         WHERE tenant_id = $1 ORDER BY name, id",
    )
    .bind(tenant_id)
    .fetch_all(&mut *tx)
    .await?;
    let ward_rows = sqlx::query("SELECT id, facility_id, name, kind FROM wards WHERE tenant_id = $1 ORDER BY facility_id, position")
        .bind(tenant_id)
        .fetch_all(&mut *tx)
        .await?;
    let bed_rows = sqlx::query(
        "SELECT id, ward_id, label, status, patient_id, reserved_for, reserved_patient_id, updated_at FROM beds
         WHERE tenant_id = $1 ORDER BY ward_id, position",
    )
    .bind(tenant_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;

    let mut facilities = Vec::with_capacity(facility_rows.len());
    for row in &facility_rows {
        let id: Uuid = row.get("id");
        let mut wards = Vec::new();
        for ward_row in ward_rows.iter().filter(|w| w.get::<Uuid, _>("facility_id") == id) {
            let ward_id: Uuid = ward_row.get("id");
            let beds = bed_rows
                .iter()
                .filter(|b| b.get::<Uuid, _>("ward_id") == ward_id)
                .map(|b| {
                    Ok(Bed {
                        id: b.get("id"),
                        label: b.get("label"),
                        status: BedStatus::parse(b.get("status"))
                            .ok_or_else(|| sqlx::Error::Decode("unknown bed status".into()))?,
                        patient_id: b.get("patient_id"),
                        reserved_for: b.get("reserved_for"),
                        reserved_patient_id: b.get("reserved_patient_id"),
                        updated_at: b.get("updated_at"),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            wards.push(Ward { id: ward_id, name: ward_row.get("name"), kind: from_name(ward_row.get("kind"))?, beds });
        }
        facilities.push(Facility {
            id,
            name: row.get("name"),
            kind: from_name(row.get("kind"))?,
            location: location(row)?,
            timezone: row.get("timezone"),
            version: row.get("version"),
            wards,
        });
    }
    Ok((seq, facilities))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facility() -> Facility {
        let at = Utc::now();
        let ward = NewWard::new("Emergency", WardKind::Emergency, vec!["E1".into(), "E2".into()]).unwrap().build(at);
        Facility {
            id: Uuid::new_v4(),
            name: "Central".into(),
            kind: FacilityKind::Hospital,
            location: GeoPoint::new(-1.3, 36.8).unwrap(),
            timezone: "Africa/Nairobi".into(),
            version: 1,
            wards: vec![ward],
        }
    }

    fn change(f: &Facility, bed: usize, to: BedStatus, patient: Option<Uuid>) -> Result<Option<BedStatusChanged>, ActorError> {
        decide_bed_change(f, f.wards[0].beds[bed].id, to, patient, false, Uuid::nil(), Utc::now())
    }

    fn commit(f: Facility, event: BedStatusChanged) -> Facility {
        let version = f.version + 1;
        apply(Some(f), version, BED_STATUS_CHANGED, &serde_json::to_value(event).unwrap()).unwrap()
    }

    #[test]
    fn occupying_a_bed_needs_a_patient_and_records_them() {
        let f = facility();
        assert!(matches!(change(&f, 0, BedStatus::Occupied, None), Err(ActorError::Invalid { field: "patient_id", .. })));
        let patient = Uuid::new_v4();
        let event = change(&f, 0, BedStatus::Occupied, Some(patient)).unwrap().unwrap();
        assert_eq!((event.from, event.to), (BedStatus::Free, BedStatus::Occupied));
        let f = commit(f, event);
        assert_eq!(f.wards[0].beds[0].patient_id, Some(patient));
        assert_eq!(f.version, 2);
    }

    #[test]
    fn an_occupied_bed_cannot_go_out_of_service_or_take_a_second_patient() {
        let f = facility();
        let f = commit(f.clone(), change(&f, 0, BedStatus::Occupied, Some(Uuid::new_v4())).unwrap().unwrap());
        assert!(matches!(change(&f, 0, BedStatus::OutOfService, None), Err(ActorError::Conflict(_))));
        assert!(matches!(change(&f, 0, BedStatus::Occupied, Some(Uuid::new_v4())), Err(ActorError::Conflict(_))));
        let discharged = commit(f.clone(), change(&f, 0, BedStatus::Cleaning, None).unwrap().unwrap());
        assert_eq!(discharged.wards[0].beds[0].patient_id, None);
    }

    #[test]
    fn a_patient_lies_in_one_bed_at_a_time() {
        let f = facility();
        let patient = Uuid::new_v4();
        let f = commit(f.clone(), change(&f, 0, BedStatus::Occupied, Some(patient)).unwrap().unwrap());
        assert!(matches!(change(&f, 1, BedStatus::Occupied, Some(patient)), Err(ActorError::Conflict(_))));
        let moved = commit(f.clone(), change(&f, 0, BedStatus::Cleaning, None).unwrap().unwrap());
        assert!(change(&moved, 1, BedStatus::Occupied, Some(patient)).unwrap().is_some());
    }

    #[test]
    fn setting_the_current_status_changes_nothing() {
        let f = facility();
        assert!(change(&f, 1, BedStatus::Free, None).unwrap().is_none());
    }

    #[test]
    fn only_occupied_beds_hold_patients_and_unknown_beds_are_not_found() {
        let f = facility();
        assert!(matches!(change(&f, 1, BedStatus::Cleaning, Some(Uuid::new_v4())), Err(ActorError::Invalid { .. })));
        let unknown = decide_bed_change(&f, Uuid::new_v4(), BedStatus::Free, None, false, Uuid::nil(), Utc::now());
        assert!(matches!(unknown, Err(ActorError::NotFound("bed"))));
    }

    #[test]
    fn replaying_the_events_rebuilds_the_same_state() {
        let created = facility();
        let mut log = vec![(FACILITY_CREATED, serde_json::to_value(&created).unwrap())];
        let mut live = created.clone();
        for (bed, to) in [(0, BedStatus::Cleaning), (1, BedStatus::OutOfService), (0, BedStatus::Free)] {
            let event = change(&live, bed, to, None).unwrap().unwrap();
            log.push((BED_STATUS_CHANGED, serde_json::to_value(&event).unwrap()));
            live = commit(live, event);
        }
        let mut replayed = None;
        for (seq, (kind, data)) in log.iter().enumerate() {
            replayed = Some(apply(replayed, seq as i64 + 1, kind, data).unwrap());
        }
        assert_eq!(replayed.unwrap(), live);
    }

    /// The emergency facility plus a general ward (G1): only emergency beds are held for
    /// incoming ambulance patients.
    fn with_general_ward() -> Facility {
        let mut f = facility();
        f.wards.insert(0, NewWard::new("General", WardKind::General, vec!["G1".into()]).unwrap().build(Utc::now()));
        f
    }

    fn reserve(f: &Facility, incident: Uuid, patient: Option<Uuid>) -> Result<Option<BedStatusChanged>, ActorError> {
        decide_reservation(f, incident, patient, Uuid::nil(), Utc::now())
    }

    fn staff(f: &Facility, bed: Uuid, to: BedStatus, patient: Option<Uuid>, release: bool) -> Result<Option<BedStatusChanged>, ActorError> {
        decide_bed_change(f, bed, to, patient, release, Uuid::new_v4(), Utc::now())
    }

    #[test]
    fn a_reservation_holds_the_first_free_emergency_bed_and_counts_apart_from_free_ones() {
        let f = with_general_ward();
        assert_eq!(f.free_emergency_beds(), 2);
        let (incident, patient) = (Uuid::new_v4(), Uuid::new_v4());
        let event = reserve(&f, incident, Some(patient)).unwrap().unwrap();
        let e1 = f.wards[1].beds[0].id;
        assert_eq!((event.bed_id, event.from, event.to), (e1, BedStatus::Free, BedStatus::Reserved), "not the general ward's bed");
        let f = commit(f, event);
        let (_, held) = f.reserved_for(incident).unwrap();
        assert_eq!((held.id, held.status, held.reserved_for, held.reserved_patient_id, held.patient_id), (e1, BedStatus::Reserved, Some(incident), Some(patient), None));
        assert_eq!(f.free_emergency_beds(), 1, "a held bed is not free");
        // Asking again for the same incident holds nothing more.
        assert!(reserve(&f, incident, Some(patient)).unwrap().is_none());
        // A second incident gets the next bed; a third finds none.
        let f = commit(f.clone(), reserve(&f, Uuid::new_v4(), None).unwrap().unwrap());
        assert_eq!(f.free_emergency_beds(), 0);
        assert!(matches!(reserve(&f, Uuid::new_v4(), None), Err(ActorError::Conflict(_))));
    }

    #[test]
    fn busy_emergency_beds_are_not_held_and_staff_cannot_reserve_by_hand() {
        let f = with_general_ward();
        let f = commit(f.clone(), change_in(&f, 1, 0, BedStatus::Cleaning));
        let f = commit(f.clone(), change_in(&f, 1, 1, BedStatus::OutOfService));
        assert!(matches!(reserve(&f, Uuid::new_v4(), None), Err(ActorError::Conflict(_))), "the free general bed is no emergency bed");
        let by_hand = staff(&f, f.wards[0].beds[0].id, BedStatus::Reserved, None, false);
        assert!(matches!(by_hand, Err(ActorError::Invalid { field: "status", .. })));
    }

    fn change_in(f: &Facility, ward: usize, bed: usize, to: BedStatus) -> BedStatusChanged {
        staff(f, f.wards[ward].beds[bed].id, to, None, false).unwrap().unwrap()
    }

    #[test]
    fn releasing_frees_the_held_bed_once_and_is_a_no_op_otherwise() {
        let f = with_general_ward();
        let incident = Uuid::new_v4();
        assert!(decide_release(&f, incident, Uuid::nil(), Utc::now()).is_none(), "nothing held: nothing to write");
        let f = commit(f.clone(), reserve(&f, incident, None).unwrap().unwrap());
        let event = decide_release(&f, incident, Uuid::nil(), Utc::now()).unwrap();
        assert_eq!((event.from, event.to, event.ended_reservation), (BedStatus::Reserved, BedStatus::Free, Some(incident)));
        let f = commit(f, event);
        let bed = &f.wards[1].beds[0];
        assert_eq!((bed.status, bed.reserved_for, bed.reserved_patient_id), (BedStatus::Free, None, None));
        assert_eq!(f.free_emergency_beds(), 2);
        assert!(decide_release(&f, incident, Uuid::nil(), Utc::now()).is_none(), "released twice: the second changes nothing");
    }

    #[test]
    fn admitting_the_incoming_patient_ends_the_hold_but_nobody_else_takes_the_bed_silently() {
        let f = with_general_ward();
        let (incident, patient, stranger) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let f = commit(f.clone(), reserve(&f, incident, Some(patient)).unwrap().unwrap());
        let bed = f.wards[1].beds[0].id;
        for to in [BedStatus::Free, BedStatus::Cleaning, BedStatus::OutOfService] {
            assert!(matches!(staff(&f, bed, to, None, false), Err(ActorError::Conflict(_))), "{to:?} needs release_reservation");
        }
        assert!(matches!(staff(&f, bed, BedStatus::Occupied, Some(stranger), false), Err(ActorError::Conflict(_))), "another patient");
        // The incoming patient is admitted: the hold ends with it, and a later release is a no-op.
        let admitted = staff(&f, bed, BedStatus::Occupied, Some(patient), false).unwrap().unwrap();
        assert_eq!((admitted.from, admitted.ended_reservation), (BedStatus::Reserved, Some(incident)));
        let occupied = commit(f.clone(), admitted);
        let held = &occupied.wards[1].beds[0];
        assert_eq!((held.status, held.patient_id, held.reserved_for), (BedStatus::Occupied, Some(patient), None));
        assert!(decide_release(&occupied, incident, Uuid::nil(), Utc::now()).is_none());
        // Ending the hold deliberately is allowed, and the event says which hold it ended.
        let freed = staff(&f, bed, BedStatus::OutOfService, None, true).unwrap().unwrap();
        assert_eq!((freed.to, freed.ended_reservation), (BedStatus::OutOfService, Some(incident)));
        assert!(staff(&f, bed, BedStatus::Occupied, Some(stranger), true).unwrap().is_some());
    }

    #[test]
    fn an_incident_without_a_known_patient_lets_staff_admit_whoever_arrives() {
        let f = with_general_ward();
        let incident = Uuid::new_v4();
        let f = commit(f.clone(), reserve(&f, incident, None).unwrap().unwrap());
        let admitted = staff(&f, f.wards[1].beds[0].id, BedStatus::Occupied, Some(Uuid::new_v4()), false).unwrap().unwrap();
        assert_eq!(admitted.ended_reservation, Some(incident));
    }

    #[test]
    fn reservations_replay_and_old_events_without_them_still_read() {
        let created = with_general_ward();
        let incident = Uuid::new_v4();
        let held = reserve(&created, incident, None).unwrap().unwrap();
        let live = commit(created.clone(), held.clone());
        let replayed = apply(Some(apply(None, 1, FACILITY_CREATED, &serde_json::to_value(&created).unwrap()).unwrap()), 2, BED_STATUS_CHANGED, &serde_json::to_value(&held).unwrap()).unwrap();
        assert_eq!(replayed, live);
        // An event from before reservations existed has none of their fields.
        let mut old = serde_json::to_value(change_in(&created, 0, 0, BedStatus::Cleaning)).unwrap();
        for field in ["reserved_for", "reserved_patient_id", "ended_reservation"] {
            old.as_object_mut().unwrap().remove(field);
        }
        assert_eq!(apply(Some(created), 2, BED_STATUS_CHANGED, &old).unwrap().wards[0].beds[0].status, BedStatus::Cleaning);
    }

    #[test]
    fn the_map_hears_of_a_facility_when_its_free_emergency_beds_change_and_only_then() {
        let tenant = TenantSlug::parse("alpha").unwrap();
        let f = with_general_ward();
        let (topic, data) = capacity_change(&tenant, None, &f).expect("a new facility is announced");
        assert_eq!((topic.as_str(), data["free_emergency_beds"].as_u64()), ("tenant/alpha/map", Some(2)));
        let general = commit(f.clone(), change_in(&f, 0, 0, BedStatus::Cleaning));
        assert!(capacity_change(&tenant, Some(&f), &general).is_none(), "a general bed is not an emergency bed");
        let held = commit(f.clone(), reserve(&f, Uuid::new_v4(), None).unwrap().unwrap());
        let (_, data) = capacity_change(&tenant, Some(&f), &held).expect("a held bed is one free emergency bed less");
        assert_eq!((data["facility_id"].as_str(), data["free_emergency_beds"].as_u64()), (Some(f.id.to_string().as_str()), Some(1)));
    }

    #[test]
    fn input_is_checked_at_construction() {
        assert!(NewWard::new(" ", WardKind::General, vec![]).is_err());
        assert!(NewWard::new("W", WardKind::General, vec!["A".into(), "A".into()]).is_err());
        let here = GeoPoint::new(0.0, 0.0).unwrap();
        assert!(NewFacility::new("X", FacilityKind::Clinic, here, "Africa/Nairobi", vec![]).is_ok());
        assert!(NewFacility::new("X", FacilityKind::Clinic, here, "UTC", vec![]).is_ok());
        assert!(NewFacility::new("X", FacilityKind::Clinic, here, "nairobi time", vec![]).is_err());
        assert!(NewFacility::new("X", FacilityKind::Clinic, here, "../etc", vec![]).is_err());
    }
}
