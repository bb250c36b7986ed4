//! The `Ambulance` actor: one per unit, the single writer of its status, current incident and
//! destination, and the holder of its latest position and vitals.
//!
//! Status changes are durable: each is an event on the tenant's map topic (`tenant/{t}/map`),
//! committed with its audit entry before the actor answers, following the unit's status machine
//! (available → dispatched → en route → on scene → transporting → at hospital → available, and out
//! of service from and back to available). Positions are telemetry: the latest lives in the actor
//! and goes to map subscribers at once as live-only updates, and every fix is written to the unit's
//! track by the [`TrackWriter`] in batches (one multi-row insert per batch), through a bounded
//! buffer that sheds (and counts) fixes rather than slow the units down. Vital signs are scored
//! (NEWS2), pushed live, and stored as observations of the unit's incident and its patient by the
//! same writer ([`crate::observations`]), which never sheds them: a reading is answered (and so
//! acknowledged to the device) only once committed with its audit entry, and one it cannot queue or
//! commit is refused, so the device sends it again. [`TrackWriter::close`] drains both on shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, watch};
use tracing::{info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::devices::GpsFix;
use crate::dispatch::UnitProgress;
use crate::domain::{Caller, GeoPoint, TenantSlug};
use crate::durable::{self, Core, DurableActor, DurableState, Reply};
use crate::error::ActorError;
use crate::live::LiveFeed;
use crate::metrics::ActorMetrics;
use crate::news2::{self, News2, RiskBand, SpO2Scale, Vitals};
use crate::observations::{self, Committing, Observation, ObservationWriter};
use crate::store::{self, EventDraft};
use crate::topics;

pub const ACTOR: &str = "ambulance";

fn invalid(field: &'static str, detail: impl Into<String>) -> ActorError {
    ActorError::Invalid { field, detail: detail.into() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitStatus {
    Available,
    Dispatched,
    EnRoute,
    OnScene,
    Transporting,
    AtHospital,
    OutOfService,
}

impl UnitStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitStatus::Available => "available",
            UnitStatus::Dispatched => "dispatched",
            UnitStatus::EnRoute => "en_route",
            UnitStatus::OnScene => "on_scene",
            UnitStatus::Transporting => "transporting",
            UnitStatus::AtHospital => "at_hospital",
            UnitStatus::OutOfService => "out_of_service",
        }
    }

    pub fn parse(value: &str) -> Option<UnitStatus> {
        use UnitStatus::*;
        [Available, Dispatched, EnRoute, OnScene, Transporting, AtHospital, OutOfService].into_iter().find(|s| s.as_str() == value)
    }

    /// The unit's status machine: which status may follow which.
    pub fn may_become(self, next: UnitStatus) -> bool {
        use UnitStatus::*;
        matches!(
            (self, next),
            (Available, Dispatched)
                | (Available, OutOfService)
                | (OutOfService, Available)
                | (Dispatched, EnRoute)
                | (Dispatched, Available) // dispatch withdrawn or not acknowledged
                | (EnRoute, OnScene)
                | (EnRoute, Available) // incident cancelled
                | (OnScene, Transporting)
                | (OnScene, Available) // treated on scene, no transport
                | (Transporting, AtHospital)
                | (AtHospital, Available)
        )
    }
}

/// A unit as its actor holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    pub id: Uuid,
    pub call_sign: String,
    pub status: UnitStatus,
    pub incident_id: Option<Uuid>,
    pub destination_id: Option<Uuid>,
    /// Where the destination is (for the arrival geofence).
    #[serde(default)]
    pub destination_point: Option<GeoPoint>,
    pub position: Option<GpsFix>,
    /// The latest vital signs from the unit's monitor and their score (telemetry: not persisted
    /// with the state; re-scored from the next reading after a restart).
    #[serde(skip)]
    pub vitals: Option<(Vitals, News2)>,
    pub version: i64,
}

/// A call sign: 2 to 20 of letters, digits, `-` (stored upper case).
pub fn parse_call_sign(value: &str) -> Result<String, ActorError> {
    let value = value.trim();
    if (2..=20).contains(&value.len()) && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        Ok(value.to_uppercase())
    } else {
        Err(invalid("call_sign", format!("{value:?} is not a call sign (2 to 20 letters, digits or '-')")))
    }
}

pub const UNIT_REGISTERED: &str = "unit.registered";
pub const UNIT_STATUS_CHANGED: &str = "unit.status_changed";
/// Live-only updates on the map topic.
pub const UNIT_POSITION: &str = "unit.position";
pub const UNIT_VITALS: &str = "unit.vitals";

/// The data of a status change event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusChanged {
    pub unit_id: Uuid,
    pub call_sign: String,
    pub from: UnitStatus,
    pub to: UnitStatus,
    pub incident_id: Option<Uuid>,
    pub destination_id: Option<Uuid>,
    #[serde(default)]
    pub destination_point: Option<GeoPoint>,
    pub reason: String,
    pub at: DateTime<Utc>,
}

pub fn apply(state: Option<Unit>, stream_seq: i64, event_type: &str, data: &Value) -> Result<Unit, String> {
    match event_type {
        UNIT_REGISTERED => {
            let mut unit: Unit = serde_json::from_value(data["unit"].clone()).map_err(|e| format!("bad {event_type}: {e}"))?;
            unit.version = stream_seq;
            Ok(unit)
        }
        UNIT_STATUS_CHANGED => {
            let mut unit = state.ok_or("status change before registration")?;
            let change: StatusChanged = serde_json::from_value(data.clone()).map_err(|e| format!("bad {event_type}: {e}"))?;
            unit.status = change.to;
            unit.incident_id = change.incident_id;
            unit.destination_id = change.destination_id;
            unit.destination_point = change.destination_point;
            unit.version = stream_seq;
            Ok(unit)
        }
        other => Err(format!("unknown ambulance event {other}")),
    }
}

pub fn stream_name(unit_id: Uuid) -> String {
    format!("ambulance/{unit_id}")
}

pub async fn recover(pool: &PgPool, tenant_id: Uuid, unit_id: Uuid) -> Result<Option<Unit>, ActorError> {
    let history = store::load_stream(pool, tenant_id, &stream_name(unit_id)).await?;
    let unreadable = |e: String| ActorError::Unavailable(format!("ambulance {unit_id} history unreadable: {e}"));
    let mut state: Option<Unit> = match history.snapshot {
        Some((seq, value)) => {
            let mut unit: Unit = serde_json::from_value(value).map_err(|e| unreadable(e.to_string()))?;
            unit.version = seq;
            Some(unit)
        }
        None => None,
    };
    for event in &history.events {
        state = Some(apply(state, event.stream_seq, &event.event_type, &event.data).map_err(unreadable)?);
    }
    // The latest position outlives restarts in the read model (the track writer keeps it).
    if let Some(unit) = state.as_mut() {
        unit.position = last_position(pool, unit_id).await?;
    }
    Ok(state)
}

async fn last_position(pool: &PgPool, unit_id: Uuid) -> Result<Option<GpsFix>, sqlx::Error> {
    let row = sqlx::query("SELECT lat, lon, speed, heading, accuracy, fix_time FROM ambulance_positions WHERE unit_id = $1 ORDER BY fix_time DESC LIMIT 1")
        .bind(unit_id)
        .fetch_optional(pool)
        .await?;
    Ok(row.and_then(|row| {
        Some(GpsFix {
            position: GeoPoint::new(row.get("lat"), row.get("lon")).ok()?,
            speed_mps: row.get("speed"),
            heading_deg: row.get("heading"),
            accuracy_m: row.get("accuracy"),
            fix_time: row.get("fix_time"),
        })
    }))
}

async fn write_unit_row(conn: &mut sqlx::PgConnection, tenant_id: Uuid, unit: &Unit) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ambulances (id, tenant_id, call_sign, status, incident_id, destination_id, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, incident_id = EXCLUDED.incident_id,
                                        destination_id = EXCLUDED.destination_id, version = EXCLUDED.version",
    )
    .bind(unit.id)
    .bind(tenant_id)
    .bind(&unit.call_sign)
    .bind(unit.status.as_str())
    .bind(unit.incident_id)
    .bind(unit.destination_id)
    .bind(unit.version)
    .execute(conn)
    .await?;
    Ok(())
}

/// Registers a unit (its first event). Called by the tenant supervisor, which starts its actor.
pub(crate) async fn register(pool: &PgPool, tenant_id: Uuid, tenant: &TenantSlug, caller: &Caller, call_sign: &str, metrics: &ActorMetrics) -> Result<Unit, ActorError> {
    let unit = Unit {
        id: Uuid::new_v4(),
        call_sign: parse_call_sign(call_sign)?,
        status: UnitStatus::Available,
        incident_id: None,
        destination_id: None,
        destination_point: None,
        position: None,
        vitals: None,
        version: 1,
    };
    let mut tx = pool.begin().await?;
    match write_unit_row(&mut tx, tenant_id, &unit).await {
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => return Err(ActorError::Conflict(format!("call sign {} is taken", unit.call_sign))),
        other => other?,
    }
    let draft = EventDraft {
        stream: stream_name(unit.id),
        expected_version: 0,
        topic: topics::map_topic(tenant),
        event_type: UNIT_REGISTERED,
        data: json!({"unit": unit}),
    };
    let audit = AuditRecord::by_caller(caller, "ambulance.register", "ambulance", unit.id).detail(json!({"call_sign": unit.call_sign}));
    store::commit_command(tx, tenant_id, &draft, &audit, None, metrics, ACTOR).await?;
    info!(tenant = %tenant, unit_id = %unit.id, call_sign = %unit.call_sign, "ambulance registered");
    Ok(unit)
}

// ---------------------------------------------------------------------------------------------
// The track writer

/// One fix to persist.
#[derive(Debug, Clone)]
pub struct TrackPoint {
    pub tenant_id: Uuid,
    pub unit_id: Uuid,
    pub fix: GpsFix,
}

/// A writer task's queue: waits for a first item, then takes what else is queued (up to a batch's
/// size or for a short while). Once the owner closes it, it stops taking new items, drains what was
/// queued, and then yields empty batches: the task's signal to end.
pub(crate) struct BatchQueue<T> {
    receiver: mpsc::Receiver<T>,
    closing: watch::Receiver<bool>,
    closed: bool,
}

impl<T> BatchQueue<T> {
    pub(crate) fn new(mut receiver: mpsc::Receiver<T>, closing: watch::Receiver<bool>) -> BatchQueue<T> {
        let closed = *closing.borrow();
        if closed {
            receiver.close();
        }
        BatchQueue { receiver, closing, closed }
    }

    async fn next(&mut self) -> Option<T> {
        if !self.closed {
            tokio::select! {
                item = self.receiver.recv() => return item,
                // Closing (or the owner gone): refuse new items, keep the queued ones.
                _ = self.closing.changed() => {
                    self.closed = true;
                    self.receiver.close();
                }
            }
        }
        self.receiver.recv().await
    }

    /// The next group commit: waits for a first item, then takes whatever else is queued already
    /// (up to `max`) without waiting for more. Empty only when the queue is closed and drained.
    pub(crate) async fn next_queued(&mut self, max: usize) -> Vec<T> {
        let mut batch = Vec::new();
        let Some(first) = self.next().await else {
            return batch;
        };
        batch.push(first);
        while batch.len() < max {
            match self.receiver.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        batch
    }

    /// The next batch: empty only when the queue is closed and drained.
    pub(crate) async fn next_batch(&mut self, max: usize, linger: Duration) -> Vec<T> {
        let mut batch = Vec::new();
        let Some(first) = self.next().await else {
            return batch;
        };
        batch.push(first);
        let deadline = tokio::time::sleep(linger);
        tokio::pin!(deadline);
        while batch.len() < max {
            tokio::select! {
                more = self.next() => match more {
                    Some(item) => batch.push(item),
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        batch
    }
}

/// The units' telemetry writer: positions to their tracks in batches (a bounded buffer, drained
/// into one multi-row insert at most every 200 ms or 1,000 fixes), and vital signs to observations
/// (the [`ObservationWriter`]). [`TrackWriter::close`] drains both before the hub stops.
#[derive(Clone)]
pub struct TrackWriter {
    buffer: mpsc::Sender<TrackPoint>,
    dropped: prometheus::IntCounter,
    observations: ObservationWriter,
    closing: Arc<watch::Sender<bool>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl TrackWriter {
    /// Starts the writer tasks (inside a running actix system); they end on [`TrackWriter::close`].
    pub fn start(pool: PgPool, capacity: usize, registry: &prometheus::Registry) -> prometheus::Result<TrackWriter> {
        let dropped = prometheus::IntCounter::new("medhub_track_fixes_dropped_total", "GPS fixes not written because the track buffer was full")?;
        let written = prometheus::IntCounter::new("medhub_track_fixes_written_total", "GPS fixes written to unit tracks")?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(written.clone()))?;
        let (closing, closed) = watch::channel(false);
        let (buffer, receiver) = mpsc::channel::<TrackPoint>(capacity.max(1));
        let track_pool = pool.clone();
        let mut queue = BatchQueue::new(receiver, closed.clone());
        let track_task = actix::spawn(async move {
            loop {
                let batch = queue.next_batch(1000, Duration::from_millis(200)).await;
                if batch.is_empty() {
                    break;
                }
                match write_batch(&track_pool, &batch).await {
                    Ok(()) => written.inc_by(batch.len() as u64),
                    Err(e) => warn!(error = %e, fixes = batch.len(), "cannot write a batch of track points; they are lost"),
                }
            }
        });
        let (observations, observation_task) = ObservationWriter::start(pool, OBSERVATION_BUFFER, registry, closed)?;
        Ok(TrackWriter { buffer, dropped, observations, closing: Arc::new(closing), tasks: Arc::new(Mutex::new(vec![track_task, observation_task])) })
    }

    /// Queues a fix; when the buffer is full the fix is dropped and counted (the latest position
    /// still lives in the unit's actor).
    pub fn record(&self, point: TrackPoint) {
        if self.buffer.try_send(point).is_err() {
            self.dropped.inc();
        }
    }

    /// Queues a vitals reading as an observation (await the [`Committing`] before acknowledging
    /// it); refuses it (unavailable: the device sends it again) when it cannot be queued.
    pub fn record_observation(&self, observation: Observation) -> Result<Committing, ActorError> {
        self.observations.record(observation)
    }

    /// Stops taking telemetry, writes what is queued, and returns once it is written. Call after
    /// the actors stopped and before the database pool closes.
    pub async fn close(&self) {
        self.closing.send_replace(true);
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("track writer tasks lock"));
        for task in tasks {
            if let Err(e) = task.await {
                warn!(error = %e, "a telemetry writer task failed while draining");
            }
        }
    }
}

/// How many vitals readings may wait to be written before new ones are refused.
const OBSERVATION_BUFFER: usize = 20_000;

async fn write_batch(pool: &PgPool, batch: &[TrackPoint]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO ambulance_positions (tenant_id, unit_id, fix_time, lat, lon, speed, heading, accuracy)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::float8[], $5::float8[], $6::float8[], $7::float8[], $8::float8[])",
    )
    .bind(batch.iter().map(|p| p.tenant_id).collect::<Vec<_>>())
    .bind(batch.iter().map(|p| p.unit_id).collect::<Vec<_>>())
    .bind(batch.iter().map(|p| p.fix.fix_time).collect::<Vec<_>>())
    .bind(batch.iter().map(|p| p.fix.position.lat()).collect::<Vec<_>>())
    .bind(batch.iter().map(|p| p.fix.position.lon()).collect::<Vec<_>>())
    .bind(batch.iter().map(|p| p.fix.speed_mps).collect::<Vec<_>>())
    .bind(batch.iter().map(|p| p.fix.heading_deg).collect::<Vec<_>>())
    .bind(batch.iter().map(|p| p.fix.accuracy_m).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

// ---------------------------------------------------------------------------------------------
// The actor

pub struct AmbulanceActor {
    core: Core<Unit>,
    live: Arc<dyn LiveFeed>,
    track: TrackWriter,
    /// The tenant's dispatch actor, told of every status change.
    dispatch: Recipient<UnitProgress>,
    geofence_m: f64,
}

impl DurableState for Unit {
    fn recover(pool: PgPool, tenant_id: Uuid, id: Uuid) -> impl std::future::Future<Output = Result<Option<Unit>, ActorError>> + Send + 'static {
        async move { recover(&pool, tenant_id, id).await }
    }
}

impl AmbulanceActor {
    pub(crate) fn new(core: Core<Unit>, live: Arc<dyn LiveFeed>, track: TrackWriter, dispatch: Recipient<UnitProgress>, geofence_m: f64) -> Self {
        AmbulanceActor { core, live, track, dispatch, geofence_m }
    }

    fn change_status(&mut self, to: UnitStatus, incident_id: Option<Uuid>, destination: Option<(Uuid, GeoPoint)>, reason: String, audit: AuditRecord) -> Reply<Self, Unit> {
        let (destination_id, destination_point) = (destination.map(|d| d.0), destination.map(|d| d.1));
        let unit = match self.current() {
            Ok(unit) => unit.clone(),
            Err(error) => return durable::refuse(self, error),
        };
        if unit.status == to && unit.incident_id == incident_id && unit.destination_id == destination_id && unit.destination_point == destination_point {
            return durable::answer(unit);
        }
        if unit.status != to && !unit.status.may_become(to) {
            return durable::refuse(self, ActorError::Conflict(format!("a unit that is {} cannot become {}", unit.status.as_str(), to.as_str())));
        }
        let change = StatusChanged {
            unit_id: unit.id,
            call_sign: unit.call_sign.clone(),
            from: unit.status,
            to,
            incident_id,
            destination_id,
            destination_point,
            reason,
            at: Utc::now().trunc_subsecs(6),
        };
        let data = json!(change);
        let mut next = match apply(Some(unit.clone()), unit.version + 1, UNIT_STATUS_CHANGED, &data) {
            Ok(next) => next,
            Err(e) => return durable::refuse(self, ActorError::Unavailable(e)),
        };
        next.position = unit.position;
        next.vitals = unit.vitals.clone();
        let core = &self.core;
        let (pool, tenant_id, tenant, every, metrics) = (core.pool.clone(), core.tenant_id, core.tenant.clone(), core.snapshot_every, core.metrics.clone());
        let span = info_span!("command", tenant = %core.tenant, actor = ACTOR, unit_id = %core.id, event = UNIT_STATUS_CHANGED);
        let commit = async move {
            let mut tx = pool.begin().await?;
            write_unit_row(&mut tx, tenant_id, &next).await?;
            let draft = EventDraft { stream: stream_name(next.id), expected_version: next.version - 1, topic: topics::map_topic(&tenant), event_type: UNIT_STATUS_CHANGED, data };
            let snapshot = (next.version % every.max(1) == 0).then(|| json!(next));
            let committed = store::commit_command(tx, tenant_id, &draft, &audit, snapshot.as_ref(), &metrics, ACTOR).await?;
            Ok((next, committed))
        }
        .instrument(span);
        durable::commit_then_install(self, commit, |actor: &mut Self, next: Unit, _| {
            actor.dispatch.do_send(UnitProgress { unit_id: next.id, incident_id: next.incident_id, status: next.status });
            actor.core.state = Some(next.clone());
            next
        })
    }
}

impl Actor for AmbulanceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        durable::start(self, ctx);
    }
}

impl actix::Supervised for AmbulanceActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        durable::restarting(self);
    }
}

impl DurableActor for AmbulanceActor {
    type State = Unit;
    const KIND: &'static str = ACTOR;

    fn core(&self) -> &Core<Unit> {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Core<Unit> {
        &mut self.core
    }
}

#[derive(Message)]
#[rtype(result = "Result<Unit, ActorError>")]
pub struct GetUnit;

impl Handler<GetUnit> for AmbulanceActor {
    type Result = Result<Unit, ActorError>;
    fn handle(&mut self, _msg: GetUnit, _ctx: &mut Context<Self>) -> Self::Result {
        self.current().cloned()
    }
}

/// A GPS fix from the unit: kept as the latest (unless older than it), pushed live to the map,
/// queued for the track. Never waits on the database.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct PositionFix(pub GpsFix);

impl Handler<PositionFix> for AmbulanceActor {
    type Result = Result<(), ActorError>;

    fn handle(&mut self, PositionFix(fix): PositionFix, ctx: &mut Context<Self>) -> Self::Result {
        let (tenant_id, topic) = (self.core.tenant_id, topics::map_topic(&self.core.tenant));
        let unit = self.core.state.as_mut().ok_or_else(|| ActorError::Unavailable("the ambulance is loading; retry shortly".to_owned()))?;
        self.track.record(TrackPoint { tenant_id, unit_id: unit.id, fix });
        if unit.position.is_some_and(|latest| latest.fix_time > fix.fix_time) {
            return Ok(()); // a late fix joins the track but does not move the unit back
        }
        unit.position = Some(fix);
        let data = json!({"unit_id": unit.id, "call_sign": unit.call_sign, "status": unit.status, "lat": fix.position.lat(), "lon": fix.position.lon(),
                          "speed": fix.speed_mps, "heading": fix.heading_deg, "accuracy": fix.accuracy_m, "fix_time": fix.fix_time});
        self.live.publish(&topic, UNIT_POSITION, &unit.id.to_string(), &data);
        // Arrival: a transporting unit inside its destination's geofence is at the hospital.
        if let (UnitStatus::Transporting, Some(destination)) = (unit.status, unit.destination_point) {
            let metres = crate::schedule::distance_km(fix.position, destination) * 1000.0;
            if metres <= self.geofence_m {
                ctx.notify(SetStatus { caller: None, status: UnitStatus::AtHospital, incident_id: None, destination: None, reason: format!("arrived ({metres:.0} m from the destination)") });
            }
        }
        Ok(())
    }
}

/// A set of vital signs from the unit's monitor: scored (NEWS2), shown live at once, and answered
/// once stored as an observation of the unit's incident (so the device is acknowledged only for a
/// committed reading). The actor goes on with its other messages (GPS fixes above all) while the
/// reading commits.
#[derive(Message)]
#[rtype(result = "Result<News2, ActorError>")]
pub struct VitalsReading(pub Box<Vitals>);

impl Handler<VitalsReading> for AmbulanceActor {
    type Result = ResponseFuture<Result<News2, ActorError>>;

    fn handle(&mut self, VitalsReading(vitals): VitalsReading, _ctx: &mut Context<Self>) -> Self::Result {
        match self.take_vitals(*vitals) {
            Ok((scored, committing)) => Box::pin(async move { committing.committed().await.map(|()| scored) }),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }
}

impl AmbulanceActor {
    /// Scores a reading, queues it for the observation writer, and shows it live (raising the
    /// pre-arrival alert if it calls for one); what to await before answering.
    fn take_vitals(&mut self, vitals: Vitals) -> Result<(News2, Committing), ActorError> {
        let (tenant_id, topic) = (self.core.tenant_id, topics::map_topic(&self.core.tenant));
        let unit = self.core.state.as_mut().ok_or_else(|| ActorError::Unavailable("the ambulance is loading; retry shortly".to_owned()))?;
        let scored = news2::score(&vitals, SpO2Scale::Scale1);
        // Queued first: a reading that cannot be queued is refused whole (the device resends it).
        let committing = self.track.record_observation(Observation {
            tenant_id,
            id: Uuid::new_v4(),
            unit_id: unit.id,
            incident_id: unit.incident_id,
            vitals,
            news2: scored,
            received_at: Utc::now(),
        })?;
        let data = json!({"unit_id": unit.id, "incident_id": unit.incident_id, "vitals": vitals, "news2": scored});
        let previous_band = unit.vitals.as_ref().map(|(_, before)| before.band());
        unit.vitals = Some((vitals, scored));
        self.live.publish(&topic, UNIT_VITALS, &unit.id.to_string(), &data);
        // A patient on the way whose score reaches medium or high: tell the receiving facility now
        // (again only when the band rises, not on every reading).
        let rising = previous_band.is_none_or(|before| scored.band() > before);
        if let (true, true, Some(destination), Some(point)) = (scored.band() >= RiskBand::Medium, rising, unit.destination_id, unit.destination_point) {
            let eta_minutes = unit.position.map(|fix| crate::schedule::distance_km(fix.position, point) / ARRIVAL_SPEED_KMH * 60.0);
            let alert = json!({
                "unit_id": unit.id, "call_sign": unit.call_sign, "incident_id": unit.incident_id, "facility_id": destination,
                "news2": scored, "vitals": vitals, "eta_minutes": eta_minutes.map(|m| (m * 10.0).round() / 10.0),
            });
            let (pool, tenant_id, tenant, unit_id) = (self.core.pool.clone(), self.core.tenant_id, self.core.tenant.clone(), unit.id);
            actix::spawn(
                async move {
                    if let Err(e) = raise_arrival_alert(&pool, tenant_id, &tenant, unit_id, destination, &alert).await {
                        warn!(error = %e, "pre-arrival alert not raised");
                    }
                }
                .instrument(info_span!("arrival_alert", tenant = %self.core.tenant, %unit_id)),
            );
        }
        Ok((scored, committing))
    }
}

/// The speed pre-arrival estimates assume (km/h).
const ARRIVAL_SPEED_KMH: f64 = 40.0;

/// Publishes a pre-arrival alert on the destination facility's arrivals topic, audited.
async fn raise_arrival_alert(pool: &PgPool, tenant_id: Uuid, tenant: &TenantSlug, unit_id: Uuid, facility_id: Uuid, alert: &Value) -> Result<(), ActorError> {
    let patient: Option<Uuid> = match alert["incident_id"].as_str().and_then(|id| id.parse::<Uuid>().ok()) {
        Some(incident) => sqlx::query_scalar("SELECT patient_id FROM incidents WHERE id = $1").bind(incident).fetch_optional(pool).await?.flatten(),
        None => None,
    };
    let mut tx = pool.begin().await?;
    store::publish_copy(&mut tx, tenant_id, &topics::arrivals_topic(tenant, facility_id), ARRIVAL_ALERT, alert).await?;
    let mut record = AuditRecord::by_system("arrival.alert", "ambulance", unit_id).patient(patient).detail(json!({
        "facility_id": facility_id, "incident_id": alert["incident_id"], "news2": alert["news2"]["score"], "band": alert["news2"]["band"],
    }));
    record.actor_kind = "device";
    record.actor_id = unit_id.to_string();
    crate::audit::append(&mut tx, tenant_id, &record).await?;
    tx.commit().await?;
    Ok(())
}

/// The durable pre-arrival alert on `tenant/{t}/facility/{id}/arrivals`.
pub const ARRIVAL_ALERT: &str = "arrival.alert";

/// Sets the unit's status (a dispatcher, or the crew through their device).
#[derive(Message)]
#[rtype(result = "Result<Unit, ActorError>")]
pub struct SetStatus {
    /// `None`: the unit's own device reported it.
    pub caller: Option<Caller>,
    pub status: UnitStatus,
    pub incident_id: Option<Uuid>,
    pub destination: Option<(Uuid, GeoPoint)>,
    pub reason: String,
}

impl Handler<SetStatus> for AmbulanceActor {
    type Result = Reply<Self, Unit>;

    fn handle(&mut self, msg: SetStatus, _ctx: &mut Context<Self>) -> Self::Result {
        let unit_id = self.core.id;
        let audit = match &msg.caller {
            Some(caller) => AuditRecord::by_caller(caller, "ambulance.status", "ambulance", unit_id),
            None => {
                let mut record = AuditRecord::by_system("ambulance.status", "ambulance", unit_id);
                record.actor_kind = "device";
                record.actor_id = unit_id.to_string();
                record
            }
        }
        .detail(json!({"to": msg.status.as_str(), "incident_id": msg.incident_id, "reason": msg.reason}));
        // Keep the incident and destination unless the new status ends the mission.
        let (incident, destination) = match (msg.status, self.core.state.as_ref()) {
            (UnitStatus::Available | UnitStatus::OutOfService, _) => (None, None),
            (_, Some(unit)) => {
                let kept = unit.destination_id.zip(unit.destination_point);
                (msg.incident_id.or(unit.incident_id), msg.destination.or(kept))
            }
            (_, None) => (msg.incident_id, msg.destination),
        };
        self.change_status(msg.status, incident, destination, msg.reason, audit)
    }
}

// ---------------------------------------------------------------------------------------------
// Read models

/// A unit on the map.
#[derive(Debug, Clone, Serialize)]
pub struct UnitRow {
    pub id: Uuid,
    pub call_sign: String,
    pub status: String,
    pub incident_id: Option<Uuid>,
    pub destination_id: Option<Uuid>,
}

pub async fn list_units(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<UnitRow>, sqlx::Error> {
    let rows = sqlx::query("SELECT id, call_sign, status, incident_id, destination_id FROM ambulances WHERE tenant_id = $1 ORDER BY call_sign")
        .bind(tenant_id)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .iter()
        .map(|row| UnitRow { id: row.get("id"), call_sign: row.get("call_sign"), status: row.get("status"), incident_id: row.get("incident_id"), destination_id: row.get("destination_id") })
        .collect())
}

/// A unit's track between two instants, oldest first (at most `limit` fixes).
pub async fn track(pool: &PgPool, tenant_id: Uuid, unit_id: Uuid, from: DateTime<Utc>, to: DateTime<Utc>, limit: i64) -> Result<Vec<Value>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT fix_time, lat, lon, speed, heading, accuracy FROM ambulance_positions
         WHERE tenant_id = $1 AND unit_id = $2 AND fix_time >= $3 AND fix_time < $4 ORDER BY fix_time LIMIT $5",
    )
    .bind(tenant_id)
    .bind(unit_id)
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|row| {
            json!({"fix_time": row.get::<DateTime<Utc>, _>("fix_time"), "lat": row.get::<f64, _>("lat"), "lon": row.get::<f64, _>("lon"),
                   "speed": row.get::<f64, _>("speed"), "heading": row.get::<f64, _>("heading"), "accuracy": row.get::<f64, _>("accuracy")})
        })
        .collect())
}

/// The map as a new subscriber starts from: every unit with its latest position and the latest
/// vitals of its current incident (`vitals` and `news2` as the live `unit.vitals` update carries
/// them; a unit without an incident shows readings of the last 30 minutes only), and every facility
/// with its free emergency beds; and the map topic's seq it reflects.
pub async fn map_snapshot(pool: &PgPool, tenant_id: Uuid, topic: &str) -> Result<(i64, Value), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let seq = store::topic_head(&mut tx, topic).await?;
    let vitals_columns = observations::VITALS_COLUMNS;
    let units = sqlx::query(&format!(
        "SELECT a.id, a.call_sign, a.status, a.incident_id, a.destination_id, p.lat, p.lon, p.speed, p.heading, p.fix_time, o.*
         FROM ambulances a LEFT JOIN LATERAL (
             SELECT lat, lon, speed, heading, fix_time FROM ambulance_positions WHERE unit_id = a.id ORDER BY fix_time DESC LIMIT 1
         ) p ON true
         LEFT JOIN LATERAL (
             -- One branch runs: the current incident's readings (its index), or the idle unit's
             -- recent ones (a bounded range of the unit's index).
             (SELECT {vitals_columns} FROM observations
              WHERE a.incident_id IS NOT NULL AND tenant_id = a.tenant_id AND incident_id = a.incident_id AND unit_id = a.id
              ORDER BY measured_at DESC LIMIT 1)
             UNION ALL
             (SELECT {vitals_columns} FROM observations
              WHERE a.incident_id IS NULL AND unit_id = a.id AND incident_id IS NULL AND measured_at > now() - interval '30 minutes'
              ORDER BY measured_at DESC LIMIT 1)
         ) o ON true
         WHERE a.tenant_id = $1 ORDER BY a.call_sign"
    ))
    .bind(tenant_id)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|row| {
        let (vitals, news2) = observations::vitals_and_score(row)?.unzip();
        Ok(json!({"unit_id": row.get::<Uuid, _>("id"), "call_sign": row.get::<String, _>("call_sign"), "status": row.get::<String, _>("status"),
               "incident_id": row.get::<Option<Uuid>, _>("incident_id"), "destination_id": row.get::<Option<Uuid>, _>("destination_id"),
               "lat": row.get::<Option<f64>, _>("lat"), "lon": row.get::<Option<f64>, _>("lon"), "speed": row.get::<Option<f64>, _>("speed"),
               "heading": row.get::<Option<f64>, _>("heading"), "fix_time": row.get::<Option<DateTime<Utc>>, _>("fix_time"),
               "vitals": vitals, "news2": news2}))
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let facilities = sqlx::query(
        "SELECT f.id, f.name, f.latitude, f.longitude,
                count(b.id) FILTER (WHERE b.status = 'free' AND w.kind = 'emergency') AS free_emergency_beds
         FROM facilities f LEFT JOIN wards w ON w.facility_id = f.id LEFT JOIN beds b ON b.ward_id = w.id
         WHERE f.tenant_id = $1 GROUP BY f.id ORDER BY f.name",
    )
    .bind(tenant_id)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|row| {
        json!({"id": row.get::<Uuid, _>("id"), "name": row.get::<String, _>("name"), "lat": row.get::<f64, _>("latitude"),
               "lon": row.get::<f64, _>("longitude"), "free_emergency_beds": row.get::<i64, _>("free_emergency_beds")})
    })
    .collect::<Vec<_>>();
    tx.commit().await?;
    Ok((seq, json!({"seq": seq, "units": units, "facilities": facilities})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_machine_follows_a_mission_and_nothing_else() {
        use UnitStatus::*;
        let mission = [Available, Dispatched, EnRoute, OnScene, Transporting, AtHospital, Available];
        assert!(mission.windows(2).all(|w| w[0].may_become(w[1])));
        assert!(!Available.may_become(Transporting));
        assert!(!Transporting.may_become(Dispatched));
        assert!(!OutOfService.may_become(Dispatched));
        assert!(Available.may_become(OutOfService) && OutOfService.may_become(Available));
        for status in mission {
            assert_eq!(UnitStatus::parse(status.as_str()), Some(status));
        }
    }

    #[test]
    fn call_signs_are_short_codes() {
        assert_eq!(parse_call_sign(" amb-07 ").unwrap(), "AMB-07");
        assert!(parse_call_sign("A").is_err());
        assert!(parse_call_sign("has space").is_err());
    }

    #[test]
    fn status_events_replay() {
        let unit = Unit { id: Uuid::nil(), call_sign: "AMB-1".into(), status: UnitStatus::Available, incident_id: None, destination_id: None, destination_point: None, position: None, vitals: None, version: 1 };
        let incident = Uuid::from_u128(7);
        let change = StatusChanged { unit_id: unit.id, call_sign: "AMB-1".into(), from: UnitStatus::Available, to: UnitStatus::Dispatched, incident_id: Some(incident), destination_id: None, destination_point: None, reason: "dispatch".into(), at: Utc::now() };
        let state = apply(Some(apply(None, 1, UNIT_REGISTERED, &json!({"unit": unit})).unwrap()), 2, UNIT_STATUS_CHANGED, &json!(change)).unwrap();
        assert_eq!((state.status, state.incident_id, state.version), (UnitStatus::Dispatched, Some(incident), 2));
    }
}
