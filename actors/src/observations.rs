//! Vital-sign observations: every set of vitals a unit's monitor sends, stored with its NEWS2
//! score and linked to the unit's incident at the time and to that incident's patient (if known),
//! so that the receiving doctor reads the whole journey, not just the latest reading.
//!
//! Writing: vitals arrive at up to about one a second per unit. The `Ambulance` actor hands each
//! accepted reading to the [`ObservationWriter`] (part of the unit's telemetry writer,
//! [`crate::ambulance::TrackWriter`]) and answers the device only once the reading is committed
//! (its other messages are not held up meanwhile), because an acknowledged reading must survive
//! even a kill -9. The writer group-commits: it takes the first queued reading and whatever else is
//! queued by then (up to [`BATCH_MAX`]), writes them in one transaction (one multi-row insert, plus
//! one audit entry per unit and incident (or patient) in the batch, `observations.recorded`, with
//! the count and time range), and then answers each reading. Nothing waits for company: a lone
//! reading is written at once, and under load batches grow by themselves while the previous one
//! commits. Unlike GPS fixes, an observation is never shed: a reading is refused as unavailable when
//! the buffer is full, or when its batch cannot be written, so the device is not acknowledged and
//! sends it again. A batch the database refuses for good is written again one reading at a time, so
//! that one bad reading cannot keep every other unit's readings out.
//!
//! Reading: by incident ([`for_incident`], for the staff who follow incidents) and by patient
//! ([`for_patient`], for those who may read the patient's record), oldest first. Every read, and
//! every refusal, is in the audit trail (`observations.read`), naming the patient; entries hold no
//! vitals.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info_span, warn, Instrument};
use uuid::Uuid;

use crate::ambulance::BatchQueue;
use crate::audit::{self, AuditRecord, Outcome};
use crate::domain::{Caller, Role};
use crate::error::ActorError;
use crate::news2::{News2, Vitals};
use crate::patients::{self, ReadAccess};

/// Who may read an incident's observations: those who follow incidents.
pub const INCIDENT_READERS: &[Role] = &[Role::Admin, Role::Dispatcher, Role::Doctor, Role::Nurse];

/// How many readings one batch holds at most: bounds one transaction when the writer has fallen
/// behind. Below it, a batch is whatever queued while the previous one committed.
const BATCH_MAX: usize = 2_000;

fn invalid(field: &'static str, detail: impl Into<String>) -> ActorError {
    ActorError::Invalid { field, detail: detail.into() }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// One accepted reading, as the unit's actor hands it over.
#[derive(Debug, Clone)]
pub struct Observation {
    pub tenant_id: Uuid,
    pub id: Uuid,
    pub unit_id: Uuid,
    /// The unit's incident when the reading arrived; its patient is looked up when written.
    pub incident_id: Option<Uuid>,
    pub vitals: Vitals,
    pub news2: News2,
    pub received_at: DateTime<Utc>,
}

#[derive(Clone)]
struct WriterMetrics {
    written: prometheus::IntCounter,
    refused: prometheus::IntCounter,
    failed: prometheus::IntCounter,
    write_errors: prometheus::IntCounter,
    batch_size: prometheus::Histogram,
    commit_seconds: prometheus::Histogram,
}

impl WriterMetrics {
    fn register(registry: &prometheus::Registry) -> prometheus::Result<WriterMetrics> {
        let counter = |name: &str, help: &str| -> prometheus::Result<prometheus::IntCounter> {
            let counter = prometheus::IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| -> prometheus::Result<prometheus::Histogram> {
            let histogram = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(name, help).buckets(buckets))?;
            registry.register(Box::new(histogram.clone()))?;
            Ok(histogram)
        };
        Ok(WriterMetrics {
            written: counter("medhub_observations_written_total", "Vital-sign observations written (each acknowledged only after its commit)")?,
            refused: counter("medhub_observations_refused_total", "Vital-sign readings refused (and so not acknowledged) because the observation buffer was full")?,
            failed: counter("medhub_observations_failed_total", "Vital-sign readings not written because their batch failed (refused as unavailable: the device sends them again)")?,
            write_errors: counter("medhub_observation_write_errors_total", "Failed attempts to write a batch of observations")?,
            batch_size: histogram(
                "medhub_observation_batch_size",
                "Readings per observation group commit (grows with load)",
                vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0],
            )?,
            commit_seconds: histogram(
                "medhub_observation_commit_seconds",
                "Time to write and commit one batch of observations",
                vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )?,
        })
    }
}

/// A reading waiting in the buffer, with where to say whether it was committed.
struct Queued {
    observation: Observation,
    committed: oneshot::Sender<Result<(), ActorError>>,
}

/// A queued reading's outcome, to await before acknowledging it.
pub struct Committing(oneshot::Receiver<Result<(), ActorError>>);

impl Committing {
    /// Resolves once the reading and its audit entry are committed, or with why they were not (an
    /// unavailable error: the device should send the reading again).
    pub async fn committed(self) -> Result<(), ActorError> {
        self.0.await.unwrap_or_else(|_| Err(ActorError::Unavailable("the hub stopped before storing the reading; send it again".to_owned())))
    }
}

/// Queues observations for the group-commit writer task.
#[derive(Clone)]
pub struct ObservationWriter {
    buffer: mpsc::Sender<Queued>,
    metrics: WriterMetrics,
}

impl ObservationWriter {
    /// Starts the writer task (inside a running actix system). It writes what is queued and ends
    /// once `closing` turns true (or its sender is dropped); await the handle to know it is done.
    pub(crate) fn start(
        pool: PgPool,
        capacity: usize,
        registry: &prometheus::Registry,
        closing: watch::Receiver<bool>,
    ) -> prometheus::Result<(ObservationWriter, tokio::task::JoinHandle<()>)> {
        let metrics = WriterMetrics::register(registry)?;
        let (buffer, receiver) = mpsc::channel::<Queued>(capacity.max(1));
        let task_metrics = metrics.clone();
        let task = actix::spawn(
            async move {
                let mut queue = BatchQueue::new(receiver, closing);
                loop {
                    let batch = queue.next_queued(BATCH_MAX).await;
                    if batch.is_empty() {
                        break;
                    }
                    commit_and_answer(&pool, batch, &task_metrics).await;
                }
            }
            .instrument(info_span!("observation_writer")),
        );
        Ok((ObservationWriter { buffer, metrics }, task))
    }

    /// Queues a reading; await the returned [`Committing`] before acknowledging it. A full buffer
    /// (the database is behind) or a closed one (shutting down) refuses it at once: the device is
    /// not acknowledged and sends it again.
    pub fn record(&self, observation: Observation) -> Result<Committing, ActorError> {
        let (committed, outcome) = oneshot::channel();
        match self.buffer.try_send(Queued { observation, committed }) {
            Ok(()) => Ok(Committing(outcome)),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.refused.inc();
                Err(ActorError::Unavailable("the hub is behind writing vital signs; send the reading again shortly".to_owned()))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.refused.inc();
                Err(ActorError::Unavailable("the hub is shutting down; send the reading again to the next one".to_owned()))
            }
        }
    }
}

/// An error that retrying cannot fix: the data itself was refused (classes 22 and 23).
fn is_permanent(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    }
}

/// What a reading whose batch failed is answered: unavailable, so the device keeps it and sends it
/// again (its resend is the retry). The database's error is logged here, not told to the device.
fn not_stored() -> ActorError {
    ActorError::Unavailable("the hub could not store the vital signs just now; send the reading again".to_owned())
}

/// Writes one group in one transaction and answers each of its readings. When the database refuses
/// the group for good, each reading is written alone, so only the culprit is refused.
async fn commit_and_answer(pool: &PgPool, batch: Vec<Queued>, metrics: &WriterMetrics) {
    let (observations, answers): (Vec<Observation>, Vec<oneshot::Sender<Result<(), ActorError>>>) =
        batch.into_iter().map(|queued| (queued.observation, queued.committed)).unzip();
    let error = match timed_write(pool, &observations, metrics).await {
        Ok(()) => {
            metrics.written.inc_by(observations.len() as u64);
            for answer in answers {
                let _ = answer.send(Ok(())); // the device may have gone: what matters is written
            }
            return;
        }
        Err(error) => error,
    };
    metrics.write_errors.inc();
    if is_permanent(&error) && observations.len() > 1 {
        warn!(error = %error, observations = observations.len(), "the database refused a batch of vital-sign observations; writing them one by one");
        for (observation, answer) in observations.into_iter().zip(answers) {
            let outcome = timed_write(pool, std::slice::from_ref(&observation), metrics).await;
            match &outcome {
                Ok(()) => metrics.written.inc(),
                Err(error) => {
                    metrics.write_errors.inc();
                    metrics.failed.inc();
                    error!(error = %error, unit_id = %observation.unit_id, observation_id = %observation.id,
                           "the database refused a vital-sign observation; the device was not acknowledged and will send it again");
                }
            }
            let _ = answer.send(outcome.map_err(|_| not_stored()));
        }
        return;
    }
    metrics.failed.inc_by(observations.len() as u64);
    if is_permanent(&error) {
        error!(error = %error, observations = observations.len(), "the database refused a vital-sign observation; the device was not acknowledged and will send it again");
    } else {
        warn!(error = %error, observations = observations.len(), "cannot write a batch of vital-sign observations; the devices were not acknowledged and will send them again");
    }
    for answer in answers {
        let _ = answer.send(Err(not_stored()));
    }
}

/// [`write_batch`], measured.
async fn timed_write(pool: &PgPool, batch: &[Observation], metrics: &WriterMetrics) -> Result<(), sqlx::Error> {
    let started = Instant::now();
    let outcome = write_batch(pool, batch).await;
    metrics.batch_size.observe(batch.len() as f64);
    metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
    outcome
}

/// One audit entry per tenant, unit, incident and patient in a batch: how many readings and the
/// time they span.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    tenant_id: Uuid,
    unit_id: Uuid,
    incident_id: Option<Uuid>,
    patient_id: Option<Uuid>,
    count: usize,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

impl Recorded {
    fn audit_record(&self) -> AuditRecord {
        let (resource_type, resource_id) = match self.incident_id {
            Some(incident) => ("incident", incident),
            None => ("ambulance", self.unit_id),
        };
        let mut record = AuditRecord::by_system("observations.recorded", resource_type, resource_id).patient(self.patient_id).detail(json!({
            "count": self.count, "from": self.from, "to": self.to, "unit_id": self.unit_id, "incident_id": self.incident_id,
        }));
        record.actor_kind = "device";
        record.actor_id = self.unit_id.to_string();
        record
    }
}

/// Groups a batch for its audit entries, in the order the groups first appear.
fn recorded_groups(batch: &[Observation], patients: &[Option<Uuid>]) -> Vec<Recorded> {
    let mut groups: Vec<Recorded> = Vec::new();
    let mut index: HashMap<(Uuid, Uuid, Option<Uuid>, Option<Uuid>), usize> = HashMap::new();
    for (observation, patient_id) in batch.iter().zip(patients) {
        let at = observation.vitals.measured_at;
        let key = (observation.tenant_id, observation.unit_id, observation.incident_id, *patient_id);
        match index.get(&key) {
            Some(&i) => {
                let group = &mut groups[i];
                group.count += 1;
                group.from = group.from.min(at);
                group.to = group.to.max(at);
            }
            None => {
                index.insert(key, groups.len());
                groups.push(Recorded {
                    tenant_id: observation.tenant_id,
                    unit_id: observation.unit_id,
                    incident_id: observation.incident_id,
                    patient_id: *patient_id,
                    count: 1,
                    from: at,
                    to: at,
                });
            }
        }
    }
    groups
}

fn band_name(news2: &News2) -> String {
    serde_json::to_value(news2.band()).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// One transaction: the incidents' patients, the rows, and the audit entries.
async fn write_batch(pool: &PgPool, batch: &[Observation]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut incidents: Vec<Uuid> = batch.iter().filter_map(|o| o.incident_id).collect();
    incidents.sort_unstable();
    incidents.dedup();
    let mut patient_of: HashMap<Uuid, (Uuid, Option<Uuid>)> = HashMap::new();
    if !incidents.is_empty() {
        for row in sqlx::query("SELECT id, tenant_id, patient_id FROM incidents WHERE id = ANY($1)").bind(&incidents).fetch_all(&mut *tx).await? {
            patient_of.insert(row.get("id"), (row.get("tenant_id"), row.get("patient_id")));
        }
    }
    let patients: Vec<Option<Uuid>> = batch
        .iter()
        .map(|o| o.incident_id.and_then(|incident| patient_of.get(&incident)).filter(|(tenant, _)| *tenant == o.tenant_id).and_then(|(_, patient)| *patient))
        .collect();
    let vitals = |f: &dyn Fn(&Vitals) -> f64| batch.iter().map(|o| f(&o.vitals)).collect::<Vec<f64>>();
    sqlx::query(
        "INSERT INTO observations (tenant_id, id, incident_id, patient_id, unit_id, measured_at, respiration_rate, spo2, on_oxygen,
                                   systolic_bp, pulse, consciousness, temperature, news2_score, news2_band, spo2_scale,
                                   news2_parameters, received_at)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::timestamptz[], $7::float8[], $8::float8[],
                              $9::bool[], $10::float8[], $11::float8[], $12::text[], $13::float8[], $14::int2[], $15::text[],
                              $16::int2[], $17::jsonb[], $18::timestamptz[])",
    )
    .bind(batch.iter().map(|o| o.tenant_id).collect::<Vec<_>>())
    .bind(batch.iter().map(|o| o.id).collect::<Vec<_>>())
    .bind(batch.iter().map(|o| o.incident_id).collect::<Vec<_>>())
    .bind(&patients)
    .bind(batch.iter().map(|o| o.unit_id).collect::<Vec<_>>())
    .bind(batch.iter().map(|o| o.vitals.measured_at).collect::<Vec<_>>())
    .bind(vitals(&|v| v.respiration_rate.per_minute()))
    .bind(vitals(&|v| v.spo2.percent()))
    .bind(batch.iter().map(|o| o.vitals.on_oxygen.0).collect::<Vec<_>>())
    .bind(vitals(&|v| v.systolic_bp.mmhg()))
    .bind(vitals(&|v| v.pulse.per_minute()))
    .bind(batch.iter().map(|o| o.vitals.consciousness.as_str().to_owned()).collect::<Vec<_>>())
    .bind(vitals(&|v| v.temperature.celsius()))
    .bind(batch.iter().map(|o| i16::from(o.news2.score())).collect::<Vec<_>>())
    .bind(batch.iter().map(|o| band_name(&o.news2)).collect::<Vec<_>>())
    .bind(batch.iter().map(|o| i16::from(u8::from(o.news2.spo2_scale()))).collect::<Vec<_>>())
    .bind(batch.iter().map(|o| json!(o.news2.parameters())).collect::<Vec<_>>())
    .bind(batch.iter().map(|o| o.received_at).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    // Each tenant's chain head is locked once, tenants in a fixed order.
    let mut by_tenant: BTreeMap<Uuid, Vec<AuditRecord>> = BTreeMap::new();
    for group in recorded_groups(batch, &patients) {
        by_tenant.entry(group.tenant_id).or_default().push(group.audit_record());
    }
    for (tenant_id, records) in &by_tenant {
        audit::append_many(&mut tx, *tenant_id, records).await?;
    }
    tx.commit().await
}

// ---------------------------------------------------------------------------------------------
// Reading

/// The columns [`vitals_and_score`] reads (also selected by the map snapshot).
pub(crate) const VITALS_COLUMNS: &str =
    "measured_at, respiration_rate, spo2, on_oxygen, systolic_bp, pulse, consciousness, temperature, news2_score, news2_band, spo2_scale, news2_parameters";

/// The vitals and their score from a row holding [`VITALS_COLUMNS`], shaped as the live
/// `unit.vitals` update carries them; `None` when the row has none (an outer join).
pub(crate) fn vitals_and_score(row: &PgRow) -> Result<Option<(Value, Value)>, sqlx::Error> {
    let Some(measured_at) = row.try_get::<Option<DateTime<Utc>>, _>("measured_at")? else {
        return Ok(None);
    };
    let vitals = json!({
        "respiration_rate": row.try_get::<f64, _>("respiration_rate")?,
        "spo2": row.try_get::<f64, _>("spo2")?,
        "on_oxygen": row.try_get::<bool, _>("on_oxygen")?,
        "systolic_bp": row.try_get::<f64, _>("systolic_bp")?,
        "pulse": row.try_get::<f64, _>("pulse")?,
        "consciousness": row.try_get::<String, _>("consciousness")?,
        "temperature": row.try_get::<f64, _>("temperature")?,
        "measured_at": measured_at,
    });
    let news2 = json!({
        "score": row.try_get::<i16, _>("news2_score")?,
        "band": row.try_get::<String, _>("news2_band")?,
        "spo2_scale": row.try_get::<i16, _>("spo2_scale")?,
        "parameters": row.try_get::<Value, _>("news2_parameters")?,
    });
    Ok(Some((vitals, news2)))
}

/// Which observations a read wants: measured in `[from, to)`, at most `limit` (the latest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservationQuery {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: i64,
}

pub const DEFAULT_LIMIT: i64 = 1_000;
pub const MAX_LIMIT: i64 = 10_000;

impl ObservationQuery {
    /// Parses the query string's `from`, `to` (RFC 3339) and `limit` (1 to [`MAX_LIMIT`]).
    pub fn parse(from: Option<&str>, to: Option<&str>, limit: Option<&str>) -> Result<ObservationQuery, ActorError> {
        let time = |field: &'static str, text: Option<&str>| -> Result<Option<DateTime<Utc>>, ActorError> {
            text.map(|text| {
                DateTime::parse_from_rfc3339(text.trim())
                    .map(|at| at.with_timezone(&Utc))
                    .map_err(|_| invalid(field, format!("{field} must be an RFC 3339 time such as \"2026-05-01T10:15:00Z\", not {text:?}")))
            })
            .transpose()
        };
        let (from, to) = (time("from", from)?, time("to", to)?);
        if let (Some(from), Some(to)) = (from, to) {
            if to <= from {
                return Err(invalid("to", "to must be after from"));
            }
        }
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| invalid("limit", format!("limit must be a whole number from 1 to {MAX_LIMIT}, not {text:?}")))?,
        };
        Ok(ObservationQuery { from, to, limit })
    }
}

/// What a read returns: the observations oldest first, and whether older ones in the range were
/// left out by the limit (ask again with `to` set to the first one's `measured_at`).
#[derive(Debug, Clone)]
pub struct ObservationPage {
    pub observations: Vec<Value>,
    pub more: bool,
}

/// The latest `limit` observations of an incident or a patient within the range, oldest first.
async fn select(conn: &mut sqlx::PgConnection, tenant_id: Uuid, column: &str, id: Uuid, query: &ObservationQuery) -> Result<ObservationPage, sqlx::Error> {
    let sql = format!(
        "SELECT * FROM (
             SELECT id, incident_id, patient_id, unit_id, received_at, {VITALS_COLUMNS} FROM observations
             WHERE tenant_id = $1 AND {column} = $2 AND ($3::timestamptz IS NULL OR measured_at >= $3) AND ($4::timestamptz IS NULL OR measured_at < $4)
             ORDER BY measured_at DESC, received_at DESC, id DESC LIMIT $5
         ) latest ORDER BY measured_at, received_at, id"
    );
    let rows = sqlx::query(&sql).bind(tenant_id).bind(id).bind(query.from).bind(query.to).bind(query.limit + 1).fetch_all(conn).await?;
    let more = rows.len() as i64 > query.limit;
    let mut observations = Vec::with_capacity(rows.len());
    for row in rows.iter().skip(usize::from(more)) {
        let (vitals, news2) = vitals_and_score(row)?.unwrap_or_default();
        observations.push(json!({
            "id": row.try_get::<Uuid, _>("id")?,
            "incident_id": row.try_get::<Option<Uuid>, _>("incident_id")?,
            "patient_id": row.try_get::<Option<Uuid>, _>("patient_id")?,
            "unit_id": row.try_get::<Uuid, _>("unit_id")?,
            "measured_at": vitals["measured_at"],
            "received_at": row.try_get::<DateTime<Utc>, _>("received_at")?,
            "vitals": vitals,
            "news2": news2,
        }));
    }
    Ok(ObservationPage { observations, more })
}

fn read_record(caller: &Caller, resource_type: &str, id: Uuid, patient_id: Option<Uuid>) -> AuditRecord {
    AuditRecord::by_caller(caller, "observations.read", resource_type, id).patient(patient_id)
}

fn read_detail(query: &ObservationQuery, page: &ObservationPage) -> Value {
    json!({"count": page.observations.len(), "from": query.from, "to": query.to, "more": page.more})
}

/// Records, in its own transaction, that the caller was refused an observations read.
async fn record_refusal(pool: &PgPool, caller: &Caller, resource_type: &str, id: Uuid, patient_id: Option<Uuid>, reason: &str) -> Result<(), ActorError> {
    let record = read_record(caller, resource_type, id, patient_id).outcome(Outcome::Denied).detail(json!({"reason": reason}));
    audit::record(pool, caller.principal.tenant_id, &record).await?;
    Ok(())
}

/// An incident's observations, for those who follow incidents ([`INCIDENT_READERS`]); another
/// tenant's incident is not found. The read is audited (naming the incident's patient) before the
/// data is handed back.
#[tracing::instrument(name = "observations.read", skip_all, fields(tenant = %caller.principal.tenant_slug, incident = %incident_id))]
pub async fn for_incident(pool: &PgPool, caller: &Caller, incident_id: Uuid, query: &ObservationQuery) -> Result<ObservationPage, ActorError> {
    if !caller.principal.has_role(INCIDENT_READERS) {
        let reason = format!("role {} may not read an incident's observations", caller.principal.role);
        record_refusal(pool, caller, "incident", incident_id, None, &reason).await?;
        return Err(ActorError::Forbidden(reason));
    }
    let tenant_id = caller.principal.tenant_id;
    let mut tx = pool.begin().await?;
    let incident: Option<Option<Uuid>> = sqlx::query_scalar("SELECT patient_id FROM incidents WHERE id = $1 AND tenant_id = $2")
        .bind(incident_id)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(patient_id) = incident else {
        return Err(ActorError::NotFound("incident"));
    };
    let page = select(&mut tx, tenant_id, "incident_id", incident_id, query).await?;
    audit::append(&mut tx, tenant_id, &read_record(caller, "incident", incident_id, patient_id).detail(read_detail(query, &page))).await?;
    tx.commit().await?;
    Ok(page)
}

/// A patient's observations, for those who may read the patient's record (the tenant's clinical
/// staff, or the patient themself): a role that may not is refused, a patient asking for another
/// patient is told it does not exist. Refusals and reads are audited.
#[tracing::instrument(name = "observations.read", skip_all, fields(tenant = %caller.principal.tenant_slug, patient = %patient_id))]
pub async fn for_patient(pool: &PgPool, caller: &Caller, patient_id: Uuid, query: &ObservationQuery) -> Result<ObservationPage, ActorError> {
    let access = patients::read_access(caller.principal.role);
    if access == ReadAccess::Nothing {
        let reason = format!("role {} may not read patient records", caller.principal.role);
        record_refusal(pool, caller, "patient", patient_id, Some(patient_id), &reason).await?;
        return Err(ActorError::Forbidden(reason));
    }
    let tenant_id = caller.principal.tenant_id;
    let mut tx = pool.begin().await?;
    let linked_user: Option<Option<Uuid>> = sqlx::query_scalar("SELECT user_id FROM patients WHERE id = $1 AND tenant_id = $2")
        .bind(patient_id)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(linked_user) = linked_user else {
        return Err(ActorError::NotFound("patient"));
    };
    if access == ReadAccess::OwnRecord && linked_user != Some(caller.principal.user_id) {
        let record = read_record(caller, "patient", patient_id, Some(patient_id))
            .outcome(Outcome::Denied)
            .detail(json!({"reason": "a patient may read only their own observations"}));
        audit::append(&mut tx, tenant_id, &record).await?;
        tx.commit().await?;
        return Err(ActorError::NotFound("patient"));
    }
    let page = select(&mut tx, tenant_id, "patient_id", patient_id, query).await?;
    audit::append(&mut tx, tenant_id, &read_record(caller, "patient", patient_id, Some(patient_id)).detail(read_detail(query, &page))).await?;
    tx.commit().await?;
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::news2::{self, SpO2Scale};

    fn reading(tenant: Uuid, unit: Uuid, incident: Option<Uuid>, second: i64) -> Observation {
        let at = DateTime::parse_from_rfc3339("2026-05-01T10:00:00Z").unwrap().with_timezone(&Utc) + chrono::Duration::seconds(second);
        let vitals = Vitals::from_json(&json!({"respiration_rate": 18, "spo2": 96, "on_oxygen": false, "systolic_bp": 120, "pulse": 80,
                                               "consciousness": "alert", "temperature": 37.0, "measured_at": at.to_rfc3339()}))
        .unwrap();
        Observation { tenant_id: tenant, id: Uuid::new_v4(), unit_id: unit, incident_id: incident, vitals, news2: news2::score(&vitals, SpO2Scale::Scale1), received_at: at }
    }

    #[test]
    fn a_batch_is_audited_once_per_unit_and_incident_with_its_count_and_time_range() {
        let (tenant, other_tenant, unit, other_unit) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let (incident, patient) = (Uuid::new_v4(), Uuid::new_v4());
        let batch = vec![
            reading(tenant, unit, Some(incident), 2),
            reading(other_tenant, other_unit, None, 1),
            reading(tenant, unit, Some(incident), 0),
            reading(tenant, unit, Some(incident), 5),
        ];
        let patients = [Some(patient), None, Some(patient), Some(patient)];
        let groups = recorded_groups(&batch, &patients);
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].count, groups[0].patient_id, groups[0].incident_id), (3, Some(patient), Some(incident)));
        assert_eq!((groups[0].to - groups[0].from).num_seconds(), 5);
        let record = groups[0].audit_record();
        assert_eq!((record.action.as_str(), record.resource_type.as_str(), record.actor_kind), ("observations.recorded", "incident", "device"));
        assert_eq!(record.resource_id, Some(incident.to_string()));
        assert_eq!(record.patient_id, Some(patient));
        assert_eq!(record.detail["count"], 3);
        let idle = groups[1].audit_record();
        assert_eq!((idle.resource_type.as_str(), idle.resource_id.clone()), ("ambulance", Some(other_unit.to_string())));
        assert_eq!(idle.patient_id, None);
    }

    #[tokio::test]
    async fn a_group_commit_takes_what_is_queued_without_waiting_for_more() {
        use std::time::Duration;
        let at_once = Duration::from_millis(200);
        let (sender, receiver) = mpsc::channel(10);
        let (closing, closed) = watch::channel(false);
        let mut queue = BatchQueue::new(receiver, closed);
        for reading in 0..5 {
            sender.try_send(reading).unwrap();
        }
        assert_eq!(tokio::time::timeout(at_once, queue.next_queued(3)).await.unwrap(), [0, 1, 2], "what is queued, up to the cap");
        assert_eq!(tokio::time::timeout(at_once, queue.next_queued(10)).await.unwrap(), [3, 4]);
        sender.try_send(5).unwrap();
        assert_eq!(tokio::time::timeout(at_once, queue.next_queued(10)).await.unwrap(), [5], "a lone reading does not wait for company");
        // Closing: what was queued is still written, then the writer is told to end.
        sender.try_send(6).unwrap();
        closing.send_replace(true);
        assert_eq!(queue.next_queued(10).await, [6]);
        assert!(queue.next_queued(10).await.is_empty());
        assert!(sender.try_send(7).is_err(), "nothing new is taken once closing");
    }

    #[tokio::test]
    async fn a_reading_the_writer_never_answered_is_unavailable_so_the_device_resends_it() {
        let (answer, outcome) = oneshot::channel();
        drop(answer);
        assert!(matches!(Committing(outcome).committed().await, Err(ActorError::Unavailable(_))));
    }

    #[test]
    fn queries_name_the_field_they_cannot_use() {
        assert_eq!(ObservationQuery::parse(None, None, None).unwrap(), ObservationQuery { from: None, to: None, limit: DEFAULT_LIMIT });
        let field = |result: Result<ObservationQuery, ActorError>| match result {
            Err(ActorError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        };
        assert_eq!(field(ObservationQuery::parse(Some("yesterday"), None, None)), "from");
        assert_eq!(field(ObservationQuery::parse(None, Some("2026-13-01T00:00:00Z"), None)), "to");
        assert_eq!(field(ObservationQuery::parse(Some("2026-05-01T10:00:00Z"), Some("2026-05-01T09:00:00Z"), None)), "to");
        assert_eq!(field(ObservationQuery::parse(None, None, Some("0"))), "limit");
        assert_eq!(field(ObservationQuery::parse(None, None, Some("ten"))), "limit");
        assert_eq!(field(ObservationQuery::parse(None, None, Some("10001"))), "limit");
        let ok = ObservationQuery::parse(Some("2026-05-01T10:00:00+03:00"), None, Some("5")).unwrap();
        assert_eq!((ok.from.unwrap().to_rfc3339(), ok.limit), ("2026-05-01T07:00:00+00:00".to_owned(), 5));
    }
}
