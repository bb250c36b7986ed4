//! The `DoctorSchedule` actor: one per doctor, the single writer of that doctor's working hours,
//! time off and appointments.
//!
//! Two guards keep a doctor from being double-booked. The actor decides every booking against its
//! state (the appointments it holds are exactly the active ones: booked or checked in) and commits
//! before it answers, one command at a time. Below it, exclusion constraints in PostgreSQL refuse
//! overlapping active appointments per doctor and per patient, so even two hub processes on one
//! database cannot double-book; the actor maps that refusal to a conflict naming the appointment in
//! the way, and reloads its state (another process changed it).
//!
//! Time: appointments are instants (UTC). Working hours are wall-clock times in the doctor's
//! facility time zone and are turned into instants per calendar day with the IANA zone database, so
//! a day with a daylight-saving change has the hours it really has. A wall-clock time that does not
//! exist (the spring-forward gap) is read with the offset in force before the gap; an ambiguous one
//! (autumn) is its first occurrence.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use actix::prelude::*;
use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Offset, SubsecRound, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool, Row};
use tracing::{info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::domain::{enum_name, Caller, TenantSlug};
use crate::durable::{self, Core, DurableActor, DurableState, Reply};
use crate::error::ActorError;
use crate::metrics::ActorMetrics;
use crate::store::{self, Committed, EventDraft};
use crate::topics;

pub const ACTOR: &str = "schedule";

/// Longest appointment the hub accepts.
const MAX_APPOINTMENT: Duration = Duration::hours(8);
/// Widest availability window one request may ask for.
pub const MAX_AVAILABILITY_DAYS: i64 = 62;

fn invalid(field: &'static str, detail: impl Into<String>) -> ActorError {
    ActorError::Invalid { field, detail: detail.into() }
}

// ---------------------------------------------------------------------------------------------
// Domain values

/// A day of the week, spelled out in lower case on the wire (`"monday"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DayOfWeek {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

impl DayOfWeek {
    fn of(weekday: Weekday) -> DayOfWeek {
        match weekday {
            Weekday::Mon => DayOfWeek::Monday,
            Weekday::Tue => DayOfWeek::Tuesday,
            Weekday::Wed => DayOfWeek::Wednesday,
            Weekday::Thu => DayOfWeek::Thursday,
            Weekday::Fri => DayOfWeek::Friday,
            Weekday::Sat => DayOfWeek::Saturday,
            Weekday::Sun => DayOfWeek::Sunday,
        }
    }
}

/// A wall-clock time of day from `00:00` to `24:00` (the end of a day), to the minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClockTime(u16);

impl ClockTime {
    pub fn minutes(self) -> i64 {
        i64::from(self.0)
    }
}

impl FromStr for ClockTime {
    type Err = String;
    fn from_str(value: &str) -> Result<ClockTime, String> {
        let bad = || format!("{value:?} is not a time of day as HH:MM (00:00 to 24:00)");
        let (hours, minutes) = value.split_once(':').ok_or_else(bad)?;
        if hours.len() != 2 || minutes.len() != 2 {
            return Err(bad());
        }
        let (hours, minutes): (u16, u16) = (hours.parse().map_err(|_| bad())?, minutes.parse().map_err(|_| bad())?);
        if minutes >= 60 || hours > 24 || (hours == 24 && minutes != 0) {
            return Err(bad());
        }
        Ok(ClockTime(hours * 60 + minutes))
    }
}

impl fmt::Display for ClockTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl Serialize for ClockTime {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClockTime {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One block of weekly working hours, e.g. Monday 08:00 to 12:30, in the facility's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkingHours {
    pub weekday: DayOfWeek,
    pub start: ClockTime,
    pub end: ClockTime,
}

/// Checks a week of working hours: each block ends after it starts, and blocks of one day do not
/// overlap.
pub fn check_working_hours(hours: &[WorkingHours]) -> Result<(), ActorError> {
    if hours.len() > 70 {
        return Err(invalid("working_hours", "at most 70 blocks of working hours"));
    }
    for (i, block) in hours.iter().enumerate() {
        if block.end <= block.start {
            return Err(invalid("working_hours", format!("{:?} {}-{}: a block must end after it starts", block.weekday, block.start, block.end)));
        }
        if hours[..i].iter().any(|other| other.weekday == block.weekday && other.start < block.end && block.start < other.end) {
            return Err(invalid("working_hours", format!("{:?} {}-{} overlaps another block of that day", block.weekday, block.start, block.end)));
        }
    }
    Ok(())
}

pub fn check_consult_minutes(minutes: i32) -> Result<i32, ActorError> {
    if (5..=480).contains(&minutes) {
        Ok(minutes)
    } else {
        Err(invalid("consult_minutes", "consult_minutes must be between 5 and 480"))
    }
}

/// Parses an IANA time zone name (`Europe/London`).
pub fn parse_zone(name: &str) -> Result<Tz, ActorError> {
    name.parse::<Tz>().map_err(|_| invalid("timezone", format!("{name:?} is not an IANA time zone such as \"Africa/Nairobi\"")))
}

/// A period the doctor is not available (leave, training), in UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeOff {
    pub id: Uuid,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppointmentKind {
    InPerson,
    Video,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppointmentStatus {
    Booked,
    CheckedIn,
    Completed,
    Cancelled,
    NoShow,
}

impl AppointmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AppointmentStatus::Booked => "booked",
            AppointmentStatus::CheckedIn => "checked_in",
            AppointmentStatus::Completed => "completed",
            AppointmentStatus::Cancelled => "cancelled",
            AppointmentStatus::NoShow => "no_show",
        }
    }

    pub fn parse(value: &str) -> Option<AppointmentStatus> {
        use AppointmentStatus::*;
        [Booked, CheckedIn, Completed, Cancelled, NoShow].into_iter().find(|s| s.as_str() == value)
    }

    /// Booked and checked-in appointments hold their time; the others released it.
    pub fn is_active(self) -> bool {
        matches!(self, AppointmentStatus::Booked | AppointmentStatus::CheckedIn)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appointment {
    pub id: Uuid,
    pub doctor_id: Uuid,
    pub patient_id: Uuid,
    /// The patient-role user linked to the patient, who is told about changes live.
    pub patient_user_id: Option<Uuid>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub kind: AppointmentKind,
    pub status: AppointmentStatus,
    pub reason: Option<String>,
    pub booked_by: Uuid,
    #[serde(default)]
    pub reminder_sent: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Appointment {
    fn overlaps(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
        self.start < end && start < self.end
    }
}

/// Who the doctor is and when they work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoctorProfile {
    pub id: Uuid,
    pub user_id: Uuid,
    pub display_name: String,
    pub specialties: Vec<String>,
    pub facility_id: Uuid,
    pub timezone: String,
    pub consult_minutes: i32,
    pub working_hours: Vec<WorkingHours>,
}

/// The actor's state: the profile, time off, and the active appointments (booked or checked in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub profile: DoctorProfile,
    pub time_off: Vec<TimeOff>,
    pub appointments: BTreeMap<Uuid, Appointment>,
    pub version: i64,
}

/// A bookable slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Slot {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

// ---------------------------------------------------------------------------------------------
// Pure rules

/// The instant a wall-clock time in `tz` stands for (see the module doc for gaps and overlaps).
fn instant(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local).earliest() {
        Some(at) => at.with_timezone(&Utc),
        None => {
            // In a gap: use the offset in force a few hours before it.
            let before = tz.from_local_datetime(&(local - Duration::hours(3))).earliest().map(|at| at.offset().fix());
            match before {
                Some(offset) => (local - Duration::seconds(i64::from(offset.local_minus_utc()))).and_utc(),
                None => local.and_utc(),
            }
        }
    }
}

/// The doctor's working intervals on one local calendar day, as instants.
pub fn working_intervals(profile: &DoctorProfile, tz: Tz, date: NaiveDate) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let weekday = DayOfWeek::of(date.weekday());
    let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists as a naive time");
    let mut intervals: Vec<_> = profile
        .working_hours
        .iter()
        .filter(|block| block.weekday == weekday)
        .map(|block| {
            let start = instant(tz, midnight + Duration::minutes(block.start.minutes()));
            let end = instant(tz, midnight + Duration::minutes(block.end.minutes()));
            (start, end)
        })
        .filter(|(start, end)| end > start)
        .collect();
    intervals.sort();
    intervals
}

impl Schedule {
    pub fn zone(&self) -> Tz {
        self.profile.timezone.parse().unwrap_or(Tz::UTC)
    }

    fn local_date(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.zone()).date_naive()
    }

    /// Free slots (of the consult length, from the start of each working block) on the local days
    /// `from..=to`, not in the past, not in time off, not overlapping an active appointment.
    pub fn free_slots(&self, from: NaiveDate, to: NaiveDate, now: DateTime<Utc>) -> Vec<Slot> {
        let tz = self.zone();
        let step = Duration::minutes(i64::from(self.profile.consult_minutes));
        let mut slots = Vec::new();
        let mut date = from;
        while date <= to {
            for (block_start, block_end) in working_intervals(&self.profile, tz, date) {
                let mut start = block_start;
                while start + step <= block_end {
                    let end = start + step;
                    if start >= now && self.is_free(start, end, None) {
                        slots.push(Slot { start, end });
                    }
                    start = end;
                }
            }
            date = match date.succ_opt() {
                Some(next) => next,
                None => break,
            };
        }
        slots
    }

    /// The first free slot from `now` within `days` days.
    pub fn next_free_slot(&self, now: DateTime<Utc>, days: i64) -> Option<Slot> {
        let today = self.local_date(now);
        let mut date = today;
        while date <= today + Duration::days(days) {
            if let Some(slot) = self.free_slots(date, date, now).first() {
                return Some(*slot);
            }
            date = date.succ_opt()?;
        }
        None
    }

    fn is_free(&self, start: DateTime<Utc>, end: DateTime<Utc>, ignoring: Option<Uuid>) -> bool {
        self.time_off.iter().all(|off| !(off.start < end && start < off.end))
            && self.appointments.values().all(|a| Some(a.id) == ignoring || !a.overlaps(start, end))
    }

    fn within_working_hours(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
        let tz = self.zone();
        let date = self.local_date(start);
        [date.pred_opt(), Some(date)]
            .into_iter()
            .flatten()
            .flat_map(|day| working_intervals(&self.profile, tz, day))
            .any(|(block_start, block_end)| block_start <= start && end <= block_end)
    }

    /// Checks that `[start, end)` may be booked for `patient_id` (optionally moving appointment
    /// `moving`): the input makes sense, the time is within working hours and free.
    pub fn check_time(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        patient_id: Uuid,
        moving: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<(), ActorError> {
        if end <= start {
            return Err(invalid("end", "end must be after start"));
        }
        if end - start > MAX_APPOINTMENT {
            return Err(invalid("end", "an appointment lasts at most 8 hours"));
        }
        if start < now {
            return Err(invalid("start", "start is in the past"));
        }
        if !self.within_working_hours(start, end) {
            return Err(invalid(
                "start",
                format!("{} to {} is outside the doctor's working hours ({})", start.to_rfc3339(), end.to_rfc3339(), self.profile.timezone),
            ));
        }
        if let Some(off) = self.time_off.iter().find(|off| off.start < end && start < off.end) {
            return Err(invalid("start", format!("the doctor is away then ({})", off.reason)));
        }
        let taken = self.appointments.values().find(|a| Some(a.id) != moving && a.overlaps(start, end));
        if let Some(taken) = taken {
            let whose = if taken.patient_id == patient_id { "the patient already has" } else { "the doctor has" };
            return Err(ActorError::Taken {
                detail: format!("{whose} an appointment from {} to {}", taken.start.to_rfc3339(), taken.end.to_rfc3339()),
                conflicting: conflicting_json(taken),
            });
        }
        Ok(())
    }
}

fn conflicting_json(appointment: &Appointment) -> Value {
    json!({"id": appointment.id, "doctor_id": appointment.doctor_id, "start": appointment.start, "end": appointment.end})
}

/// What may happen to an active appointment next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    CheckIn,
    NoShow,
    Complete,
}

impl Transition {
    fn target(self) -> AppointmentStatus {
        match self {
            Transition::CheckIn => AppointmentStatus::CheckedIn,
            Transition::NoShow => AppointmentStatus::NoShow,
            Transition::Complete => AppointmentStatus::Completed,
        }
    }

    fn event_type(self) -> &'static str {
        match self {
            Transition::CheckIn => APPOINTMENT_CHECKED_IN,
            Transition::NoShow => APPOINTMENT_NO_SHOW,
            Transition::Complete => APPOINTMENT_COMPLETED,
        }
    }

    /// Check in and no-show apply to a booked appointment; completing, to a booked or checked-in one.
    fn allowed_from(self, status: AppointmentStatus) -> bool {
        match self {
            Transition::CheckIn | Transition::NoShow => status == AppointmentStatus::Booked,
            Transition::Complete => status.is_active(),
        }
    }
}

pub const DOCTOR_REGISTERED: &str = "doctor.registered";
pub const DOCTOR_HOURS_CHANGED: &str = "doctor.hours_changed";
pub const DOCTOR_TIME_OFF_ADDED: &str = "doctor.time_off_added";
pub const DOCTOR_TIME_OFF_REMOVED: &str = "doctor.time_off_removed";
pub const APPOINTMENT_BOOKED: &str = "appointment.booked";
pub const APPOINTMENT_RESCHEDULED: &str = "appointment.rescheduled";
pub const APPOINTMENT_CANCELLED: &str = "appointment.cancelled";
pub const APPOINTMENT_CHECKED_IN: &str = "appointment.checked_in";
pub const APPOINTMENT_NO_SHOW: &str = "appointment.no_show";
pub const APPOINTMENT_COMPLETED: &str = "appointment.completed";
pub const APPOINTMENT_REMINDER: &str = "appointment.reminder";

fn parse<T: for<'de> Deserialize<'de>>(event_type: &str, data: &Value) -> Result<T, String> {
    serde_json::from_value(data.clone()).map_err(|e| format!("bad {event_type} event: {e}"))
}

/// Applies a stored event to the state it follows: the one definition of what each event means,
/// used live (after commit) and in recovery.
pub fn apply(state: Option<Schedule>, stream_seq: i64, event_type: &str, data: &Value) -> Result<Schedule, String> {
    if event_type == DOCTOR_REGISTERED {
        let mut schedule: Schedule = parse(event_type, data)?;
        schedule.version = stream_seq;
        return Ok(schedule);
    }
    let mut schedule = state.ok_or_else(|| format!("{event_type} before {DOCTOR_REGISTERED}"))?;
    match event_type {
        DOCTOR_HOURS_CHANGED => {
            #[derive(Deserialize)]
            struct Hours {
                working_hours: Vec<WorkingHours>,
                consult_minutes: i32,
            }
            let hours: Hours = parse(event_type, data)?;
            schedule.profile.working_hours = hours.working_hours;
            schedule.profile.consult_minutes = hours.consult_minutes;
        }
        DOCTOR_TIME_OFF_ADDED => schedule.time_off.push(parse(event_type, data)?),
        DOCTOR_TIME_OFF_REMOVED => {
            let id: Uuid = parse(event_type, &data["id"])?;
            schedule.time_off.retain(|off| off.id != id);
        }
        APPOINTMENT_BOOKED | APPOINTMENT_RESCHEDULED | APPOINTMENT_CANCELLED | APPOINTMENT_CHECKED_IN | APPOINTMENT_NO_SHOW
        | APPOINTMENT_COMPLETED | APPOINTMENT_REMINDER => {
            let appointment: Appointment = parse(event_type, &data["appointment"])?;
            if appointment.status.is_active() {
                schedule.appointments.insert(appointment.id, appointment);
            } else {
                schedule.appointments.remove(&appointment.id);
            }
        }
        other => return Err(format!("unknown schedule event {other}")),
    }
    schedule.version = stream_seq;
    Ok(schedule)
}

pub fn stream_name(doctor_id: Uuid) -> String {
    format!("schedule/{doctor_id}")
}

// ---------------------------------------------------------------------------------------------
// Persistence

/// Rebuilds a schedule from its snapshot and later events; `None` if no such doctor in the tenant.
pub async fn recover(pool: &PgPool, tenant_id: Uuid, doctor_id: Uuid) -> Result<Option<Schedule>, ActorError> {
    let history = store::load_stream(pool, tenant_id, &stream_name(doctor_id)).await?;
    let unreadable = |e: String| ActorError::Unavailable(format!("schedule {doctor_id} history unreadable: {e}"));
    let mut state: Option<Schedule> = match history.snapshot {
        Some((seq, value)) => {
            let mut schedule: Schedule = serde_json::from_value(value).map_err(|e| unreadable(e.to_string()))?;
            schedule.version = seq;
            Some(schedule)
        }
        None => None,
    };
    for event in &history.events {
        state = Some(apply(state, event.stream_seq, &event.event_type, &event.data).map_err(unreadable)?);
    }
    Ok(state)
}

/// A patient as a booking needs them: in this tenant, and who to tell.
struct PatientRef {
    user_id: Option<Uuid>,
}

async fn patient_ref(conn: &mut PgConnection, tenant_id: Uuid, patient_id: Uuid) -> Result<Option<PatientRef>, sqlx::Error> {
    let user_id: Option<Option<Uuid>> = sqlx::query_scalar("SELECT user_id FROM patients WHERE id = $1 AND tenant_id = $2")
        .bind(patient_id)
        .bind(tenant_id)
        .fetch_optional(conn)
        .await?;
    Ok(user_id.map(|user_id| PatientRef { user_id }))
}

/// What one command commits.
struct Plan {
    draft: EventDraft,
    audit: AuditRecord,
    next: Schedule,
    projection: Projection,
}

enum Projection {
    Registered,
    Profile,
    Booked(Appointment),
    Updated { appointment: Appointment, cancel_reason: Option<String> },
}

async fn write_projection(conn: &mut PgConnection, tenant_id: Uuid, plan: &Plan) -> Result<(), sqlx::Error> {
    let profile = &plan.next.profile;
    match &plan.projection {
        Projection::Registered => {
            sqlx::query(
                "INSERT INTO doctors (id, tenant_id, user_id, display_name, specialties, facility_id, timezone,
                                      consult_minutes, working_hours, time_off, version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(profile.id)
            .bind(tenant_id)
            .bind(profile.user_id)
            .bind(&profile.display_name)
            .bind(&profile.specialties)
            .bind(profile.facility_id)
            .bind(&profile.timezone)
            .bind(profile.consult_minutes)
            .bind(json!(profile.working_hours))
            .bind(json!(plan.next.time_off))
            .bind(plan.next.version)
            .execute(&mut *conn)
            .await?;
            return Ok(());
        }
        Projection::Profile => {}
        Projection::Booked(a) => {
            sqlx::query(
                "INSERT INTO appointments (id, tenant_id, doctor_id, patient_id, starts_at, ends_at, kind, status, reason,
                                           booked_by, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(a.id)
            .bind(tenant_id)
            .bind(a.doctor_id)
            .bind(a.patient_id)
            .bind(a.start)
            .bind(a.end)
            .bind(enum_name(&a.kind))
            .bind(a.status.as_str())
            .bind(&a.reason)
            .bind(a.booked_by)
            .bind(a.created_at)
            .bind(a.updated_at)
            .execute(&mut *conn)
            .await?;
        }
        Projection::Updated { appointment: a, cancel_reason } => {
            sqlx::query(
                "UPDATE appointments SET starts_at = $2, ends_at = $3, status = $4, updated_at = $5,
                        cancel_reason = COALESCE($6, cancel_reason),
                        reminder_sent_at = CASE WHEN $7 THEN COALESCE(reminder_sent_at, $5) ELSE NULL END
                 WHERE id = $1",
            )
            .bind(a.id)
            .bind(a.start)
            .bind(a.end)
            .bind(a.status.as_str())
            .bind(a.updated_at)
            .bind(cancel_reason)
            .bind(a.reminder_sent)
            .execute(&mut *conn)
            .await?;
        }
    }
    sqlx::query(
        "UPDATE doctors SET working_hours = $2, consult_minutes = $3, time_off = $4, version = $5 WHERE id = $1",
    )
    .bind(profile.id)
    .bind(json!(profile.working_hours))
    .bind(profile.consult_minutes)
    .bind(json!(plan.next.time_off))
    .bind(plan.next.version)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The overlap constraints' names, as the database reports them.
const DOCTOR_OVERLAP: &str = "appointments_doctor_no_overlap";
const PATIENT_OVERLAP: &str = "appointments_patient_no_overlap";

/// Turns an exclusion-constraint refusal into a conflict naming the appointment in the way.
async fn overlap_conflict(pool: &PgPool, error: &sqlx::Error, appointment: &Appointment) -> Option<ActorError> {
    let sqlx::Error::Database(db) = error else { return None };
    let (column, whose) = match db.constraint() {
        Some(DOCTOR_OVERLAP) => ("doctor_id", "the doctor has"),
        Some(PATIENT_OVERLAP) => ("patient_id", "the patient already has"),
        _ => return None,
    };
    let key = if column == "doctor_id" { appointment.doctor_id } else { appointment.patient_id };
    let found: Option<(Uuid, Uuid, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(&format!(
        "SELECT id, doctor_id, starts_at, ends_at FROM appointments
         WHERE {column} = $1 AND id <> $2 AND status IN ('booked', 'checked_in')
           AND tstzrange(starts_at, ends_at) && tstzrange($3, $4) LIMIT 1"
    ))
    .bind(key)
    .bind(appointment.id)
    .bind(appointment.start)
    .bind(appointment.end)
    .fetch_optional(pool)
    .await
    .ok()
    .flatten();
    let conflicting = match found {
        Some((id, doctor_id, start, end)) => json!({"id": id, "doctor_id": doctor_id, "start": start, "end": end}),
        None => Value::Null,
    };
    Some(ActorError::Taken { detail: format!("{whose} an appointment at that time"), conflicting })
}

/// Commits a plan in one transaction: projection, the event on the doctor's schedule topic (and a
/// copy on the patient's own topic), the audit entry and, every N events, a snapshot.
async fn commit_plan(pool: &PgPool, tenant_id: Uuid, tenant: &TenantSlug, plan: &Plan, snapshot_every: i64, metrics: &ActorMetrics) -> Result<Committed, ActorError> {
    let mut tx = pool.begin().await?;
    if let Err(error) = write_projection(&mut tx, tenant_id, plan).await {
        drop(tx);
        let appointment = match &plan.projection {
            Projection::Booked(a) | Projection::Updated { appointment: a, .. } => Some(a),
            _ => None,
        };
        if let Some(appointment) = appointment {
            if let Some(conflict) = overlap_conflict(pool, &error, appointment).await {
                return Err(conflict);
            }
        }
        return Err(error.into());
    }
    // The patient's own feed first: every command takes topic locks in the same order.
    if let Some(user_id) = plan.draft.data["appointment"]["patient_user_id"].as_str().and_then(|id| id.parse::<Uuid>().ok()) {
        store::publish_copy(&mut tx, tenant_id, &topics::user_topic(tenant, user_id), plan.draft.event_type, &plan.draft.data).await?;
    }
    let snapshot = (plan.next.version % snapshot_every.max(1) == 0).then(|| json!(plan.next));
    store::commit_command(tx, tenant_id, &plan.draft, &plan.audit, snapshot.as_ref(), metrics, ACTOR).await
}

/// A doctor to register: a user of role doctor, working at a facility of the tenant.
#[derive(Debug, Clone)]
pub struct NewDoctor {
    pub user_id: Uuid,
    pub specialties: Vec<String>,
    pub facility_id: Uuid,
    pub consult_minutes: i32,
    pub working_hours: Vec<WorkingHours>,
}

impl NewDoctor {
    pub fn new(user_id: Uuid, specialties: Vec<String>, facility_id: Uuid, consult_minutes: i32, working_hours: Vec<WorkingHours>) -> Result<NewDoctor, ActorError> {
        let mut clean = Vec::new();
        for specialty in specialties {
            let specialty = specialty.trim().to_lowercase();
            if specialty.is_empty() || specialty.len() > 80 {
                return Err(invalid("specialties", "each specialty is 1 to 80 characters"));
            }
            if !clean.contains(&specialty) {
                clean.push(specialty);
            }
        }
        if clean.is_empty() || clean.len() > 20 {
            return Err(invalid("specialties", "give 1 to 20 specialties"));
        }
        check_working_hours(&working_hours)?;
        Ok(NewDoctor { user_id, specialties: clean, facility_id, consult_minutes: check_consult_minutes(consult_minutes)?, working_hours })
    }
}

/// Registers a doctor (the schedule's first event). Called by the tenant supervisor, which then
/// starts the schedule's actor with the returned state.
pub(crate) async fn register(
    pool: &PgPool,
    tenant_id: Uuid,
    tenant: &TenantSlug,
    caller: &Caller,
    new: &NewDoctor,
    snapshot_every: i64,
    metrics: &ActorMetrics,
) -> Result<Schedule, ActorError> {
    let user: Option<(String, String)> = sqlx::query_as("SELECT display_name, role FROM users WHERE id = $1 AND tenant_id = $2 AND active")
        .bind(new.user_id)
        .bind(tenant_id)
        .fetch_optional(pool)
        .await?;
    let display_name = match user {
        Some((name, role)) if role == "doctor" => name,
        Some((_, role)) => return Err(invalid("user_id", format!("that user's role is {role}; only a doctor has a schedule"))),
        None => return Err(invalid("user_id", "no active user with that id in this tenant")),
    };
    let timezone: Option<String> = sqlx::query_scalar("SELECT timezone FROM facilities WHERE id = $1 AND tenant_id = $2")
        .bind(new.facility_id)
        .bind(tenant_id)
        .fetch_optional(pool)
        .await?;
    let timezone = timezone.ok_or_else(|| invalid("facility_id", "no facility with that id in this tenant"))?;
    parse_zone(&timezone)?;
    let schedule = Schedule {
        profile: DoctorProfile {
            id: Uuid::new_v4(),
            user_id: new.user_id,
            display_name,
            specialties: new.specialties.clone(),
            facility_id: new.facility_id,
            timezone,
            consult_minutes: new.consult_minutes,
            working_hours: new.working_hours.clone(),
        },
        time_off: Vec::new(),
        appointments: BTreeMap::new(),
        version: 1,
    };
    let plan = Plan {
        draft: EventDraft {
            stream: stream_name(schedule.profile.id),
            expected_version: 0,
            topic: topics::schedule_topic(tenant, schedule.profile.id),
            event_type: DOCTOR_REGISTERED,
            data: json!(schedule),
        },
        audit: AuditRecord::by_caller(caller, "doctor.register", "doctor", schedule.profile.id)
            .detail(json!({"user_id": new.user_id, "facility_id": new.facility_id, "specialties": new.specialties})),
        next: schedule,
        projection: Projection::Registered,
    };
    match commit_plan(pool, tenant_id, tenant, &plan, snapshot_every, metrics).await {
        Err(ActorError::Database(sqlx::Error::Database(db))) if db.is_unique_violation() => {
            Err(ActorError::Conflict("that user already has a doctor profile".to_owned()))
        }
        Err(error) => Err(error),
        Ok(_) => {
            info!(tenant = %tenant, doctor_id = %plan.next.profile.id, "doctor registered");
            Ok(plan.next)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The actor

pub struct DoctorScheduleActor {
    core: Core<Schedule>,
}

impl DurableState for Schedule {
    fn recover(pool: PgPool, tenant_id: Uuid, id: Uuid) -> impl std::future::Future<Output = Result<Option<Schedule>, ActorError>> + Send + 'static {
        async move { recover(&pool, tenant_id, id).await }
    }
}

impl DoctorScheduleActor {
    pub(crate) fn new(tenant_id: Uuid, tenant: TenantSlug, state: Schedule, pool: PgPool, snapshot_every: i64, metrics: ActorMetrics) -> Self {
        DoctorScheduleActor { core: Core::new(tenant_id, tenant, state.profile.id, state, pool, snapshot_every, metrics) }
    }

    fn draft(&self, schedule: &Schedule, event_type: &'static str, data: Value) -> EventDraft {
        EventDraft {
            stream: stream_name(self.core.id),
            expected_version: schedule.version,
            topic: topics::schedule_topic(&self.core.tenant, self.core.id),
            event_type,
            data,
        }
    }

    /// Commits `plan` and installs its state; answers with `reply(new state)`.
    fn execute<T: 'static>(&mut self, plan: Plan, reply: impl FnOnce(&Schedule, &Committed) -> T + 'static) -> Reply<Self, T> {
        let core = &self.core;
        let (pool, tenant_id, tenant, every, metrics) = (core.pool.clone(), core.tenant_id, core.tenant.clone(), core.snapshot_every, core.metrics.clone());
        let span = info_span!("command", tenant = %core.tenant, actor = ACTOR, doctor_id = %self.core.id, event = plan.draft.event_type);
        let commit = async move {
            let committed = commit_plan(&pool, tenant_id, &tenant, &plan, every, &metrics).await?;
            Ok((plan.next, committed))
        }
        .instrument(span);
        durable::commit_then_install(self, commit, move |actor: &mut Self, next, committed| {
            let answer = reply(&next, committed);
            actor.core.state = Some(next);
            answer
        })
    }

    /// Plans an appointment change as event `event_type` with the appointment as it will be.
    fn plan_appointment(&self, schedule: &Schedule, caller: Option<&Caller>, event_type: &'static str, appointment: Appointment, extra: Value, cancel_reason: Option<String>) -> Result<Plan, ActorError> {
        let mut data = json!({"appointment": appointment});
        if let (Value::Object(data), Value::Object(extra)) = (&mut data, &extra) {
            data.extend(extra.clone());
        }
        let next = apply(Some(schedule.clone()), schedule.version + 1, event_type, &data).map_err(ActorError::Unavailable)?;
        let audit = match caller {
            Some(caller) => AuditRecord::by_caller(caller, event_type, "appointment", appointment.id),
            None => AuditRecord::by_system(event_type, "appointment", appointment.id),
        }
        .patient(Some(appointment.patient_id))
        .detail(json!({"doctor_id": appointment.doctor_id, "start": appointment.start, "end": appointment.end,
                       "status": appointment.status.as_str(), "extra": extra}));
        Ok(Plan {
            draft: self.draft(schedule, event_type, data),
            audit,
            next,
            projection: Projection::Updated { appointment, cancel_reason },
        })
    }

    fn active(&self, schedule: &Schedule, appointment_id: Uuid) -> Result<Appointment, ActorError> {
        schedule.appointments.get(&appointment_id).cloned().ok_or_else(|| {
            ActorError::Conflict("that appointment is no longer active (completed, cancelled or no-show)".to_owned())
        })
    }
}

impl Actor for DoctorScheduleActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        durable::start(self, ctx);
    }
}

impl actix::Supervised for DoctorScheduleActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        durable::restarting(self);
    }
}

impl DurableActor for DoctorScheduleActor {
    type State = Schedule;
    const KIND: &'static str = ACTOR;

    fn core(&self) -> &Core<Schedule> {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Core<Schedule> {
        &mut self.core
    }

    /// A conflict the actor did not foresee means the database knows more than it does (another
    /// hub process changed this doctor's schedule): reload before the next command.
    fn commit_failed(&mut self, error: &ActorError, ctx: &mut Context<Self>) {
        if matches!(error, ActorError::Conflict(_) | ActorError::Taken { .. }) {
            warn!(tenant = %self.core.tenant, actor = ACTOR, doctor_id = %self.core.id, "schedule changed elsewhere; reloading");
            durable::reload(self, ctx);
        }
    }
}

/// The schedule as it is now.
#[derive(Message)]
#[rtype(result = "Result<Schedule, ActorError>")]
pub struct GetSchedule;

impl Handler<GetSchedule> for DoctorScheduleActor {
    type Result = Result<Schedule, ActorError>;
    fn handle(&mut self, _msg: GetSchedule, _ctx: &mut Context<Self>) -> Self::Result {
        self.current().cloned()
    }
}

/// Free slots on the local days `from..=to`.
#[derive(Message)]
#[rtype(result = "Result<Vec<Slot>, ActorError>")]
pub struct Availability {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Handler<Availability> for DoctorScheduleActor {
    type Result = Result<Vec<Slot>, ActorError>;
    fn handle(&mut self, msg: Availability, _ctx: &mut Context<Self>) -> Self::Result {
        if msg.to < msg.from {
            return Err(invalid("to", "to must not be before from"));
        }
        if (msg.to - msg.from).num_days() >= MAX_AVAILABILITY_DAYS {
            return Err(invalid("to", format!("ask for at most {MAX_AVAILABILITY_DAYS} days at a time")));
        }
        Ok(self.current()?.free_slots(msg.from, msg.to, Utc::now()))
    }
}

/// The first free slot within `days` days from now.
#[derive(Message)]
#[rtype(result = "Result<Option<Slot>, ActorError>")]
pub struct NextFreeSlot {
    pub days: i64,
}

impl Handler<NextFreeSlot> for DoctorScheduleActor {
    type Result = Result<Option<Slot>, ActorError>;
    fn handle(&mut self, msg: NextFreeSlot, _ctx: &mut Context<Self>) -> Self::Result {
        Ok(self.current()?.next_free_slot(Utc::now(), msg.days))
    }
}

/// An acknowledged appointment change: the appointment now and the event's seq on the doctor's
/// schedule topic.
#[derive(Debug, Clone, Serialize)]
pub struct AppointmentChanged {
    pub appointment: Appointment,
    pub seq: i64,
}

/// Books an appointment. `end` defaults to start + the doctor's consult length.
#[derive(Message)]
#[rtype(result = "Result<AppointmentChanged, ActorError>")]
pub struct Book {
    pub caller: Caller,
    pub patient_id: Uuid,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
    pub kind: AppointmentKind,
    pub reason: Option<String>,
}

impl Handler<Book> for DoctorScheduleActor {
    type Result = Reply<Self, AppointmentChanged>;

    fn handle(&mut self, msg: Book, _ctx: &mut Context<Self>) -> Self::Result {
        let schedule = match self.current() {
            Ok(schedule) => schedule.clone(),
            Err(error) => return durable::refuse(self, error),
        };
        let now = Utc::now();
        let start = msg.start.trunc_subsecs(0);
        let end = msg.end.map(|end| end.trunc_subsecs(0)).unwrap_or(start + Duration::minutes(i64::from(schedule.profile.consult_minutes)));
        match durable::decide::<Self, _>(|| schedule.check_time(start, end, msg.patient_id, None, now)) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return durable::refuse(self, error),
            Err(()) => return durable::crash_now(),
        }
        let at = now.trunc_subsecs(6);
        let mut appointment = Appointment {
            id: Uuid::new_v4(),
            doctor_id: self.core.id,
            patient_id: msg.patient_id,
            patient_user_id: None,
            start,
            end,
            kind: msg.kind,
            status: AppointmentStatus::Booked,
            reason: msg.reason.clone(),
            booked_by: msg.caller.principal.user_id,
            reminder_sent: false,
            created_at: at,
            updated_at: at,
        };
        let core = &self.core;
        let (pool, tenant_id, tenant, every, metrics) = (core.pool.clone(), core.tenant_id, core.tenant.clone(), core.snapshot_every, core.metrics.clone());
        let (draft_base, caller, appointment_id) = (self.draft(&schedule, APPOINTMENT_BOOKED, Value::Null), msg.caller, appointment.id);
        let span = info_span!("command", tenant = %core.tenant, actor = ACTOR, doctor_id = %self.core.id, event = APPOINTMENT_BOOKED);
        // The patient is looked up inside the command: it must exist in this tenant, and its
        // linked user (if any) is told live.
        let commit = async move {
            let patient = {
                let mut conn = pool.acquire().await?;
                patient_ref(&mut conn, tenant_id, appointment.patient_id).await?
            };
            let patient = patient.ok_or_else(|| invalid("patient_id", "no patient with that id in this tenant"))?;
            appointment.patient_user_id = patient.user_id;
            let data = json!({"appointment": appointment});
            let next = apply(Some(schedule), draft_base.expected_version + 1, APPOINTMENT_BOOKED, &data).map_err(ActorError::Unavailable)?;
            let plan = Plan {
                draft: EventDraft { data, ..draft_base },
                audit: AuditRecord::by_caller(&caller, "appointment.book", "appointment", appointment.id)
                    .patient(Some(appointment.patient_id))
                    .detail(json!({"doctor_id": appointment.doctor_id, "start": appointment.start, "end": appointment.end,
                                   "kind": enum_name(&appointment.kind)})),
                next,
                projection: Projection::Booked(appointment),
            };
            let committed = commit_plan(&pool, tenant_id, &tenant, &plan, every, &metrics).await?;
            Ok((plan.next, committed))
        }
        .instrument(span);
        durable::commit_then_install(self, commit, move |actor: &mut Self, next: Schedule, committed| {
            let booked = next.appointments.get(&appointment_id).cloned().expect("the booked appointment is active");
            actor.core.state = Some(next);
            AppointmentChanged { appointment: booked, seq: committed.topic_seq }
        })
    }
}

/// Moves an active appointment to another time (same doctor). A taken time leaves it unchanged.
#[derive(Message)]
#[rtype(result = "Result<AppointmentChanged, ActorError>")]
pub struct Reschedule {
    pub caller: Caller,
    pub appointment_id: Uuid,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
}

impl Handler<Reschedule> for DoctorScheduleActor {
    type Result = Reply<Self, AppointmentChanged>;

    fn handle(&mut self, msg: Reschedule, _ctx: &mut Context<Self>) -> Self::Result {
        let planned = (|| {
            let schedule = self.current()?;
            let mut appointment = self.active(schedule, msg.appointment_id)?;
            if appointment.status != AppointmentStatus::Booked {
                return Err(ActorError::Conflict("only a booked appointment (not yet checked in) can be moved".to_owned()));
            }
            let start = msg.start.trunc_subsecs(0);
            let end = msg.end.map(|end| end.trunc_subsecs(0)).unwrap_or(start + (appointment.end - appointment.start));
            schedule.check_time(start, end, appointment.patient_id, Some(appointment.id), Utc::now())?;
            let from = json!({"start": appointment.start, "end": appointment.end});
            appointment.start = start;
            appointment.end = end;
            appointment.reminder_sent = false;
            appointment.updated_at = Utc::now().trunc_subsecs(6);
            self.plan_appointment(schedule, Some(&msg.caller), APPOINTMENT_RESCHEDULED, appointment, json!({"from": from}), None)
        })();
        self.run_appointment_plan(planned, msg.appointment_id)
    }
}

/// Cancels an active appointment, with a reason; its time becomes free.
#[derive(Message)]
#[rtype(result = "Result<AppointmentChanged, ActorError>")]
pub struct Cancel {
    pub caller: Caller,
    pub appointment_id: Uuid,
    pub reason: String,
}

impl Handler<Cancel> for DoctorScheduleActor {
    type Result = Reply<Self, AppointmentChanged>;

    fn handle(&mut self, msg: Cancel, _ctx: &mut Context<Self>) -> Self::Result {
        let planned = (|| {
            let schedule = self.current()?;
            let mut appointment = self.active(schedule, msg.appointment_id)?;
            let reason = msg.reason.trim();
            if reason.is_empty() || reason.chars().count() > 500 {
                return Err(invalid("reason", "give a reason of 1 to 500 characters"));
            }
            appointment.status = AppointmentStatus::Cancelled;
            appointment.updated_at = Utc::now().trunc_subsecs(6);
            self.plan_appointment(schedule, Some(&msg.caller), APPOINTMENT_CANCELLED, appointment, json!({"reason": reason}), Some(reason.to_owned()))
        })();
        self.run_appointment_plan(planned, msg.appointment_id)
    }
}

/// Checks a patient in, marks a no-show, or completes an appointment.
#[derive(Message)]
#[rtype(result = "Result<AppointmentChanged, ActorError>")]
pub struct Advance {
    pub caller: Caller,
    pub appointment_id: Uuid,
    pub transition: Transition,
}

impl Handler<Advance> for DoctorScheduleActor {
    type Result = Reply<Self, AppointmentChanged>;

    fn handle(&mut self, msg: Advance, _ctx: &mut Context<Self>) -> Self::Result {
        let planned = (|| {
            let schedule = self.current()?;
            let mut appointment = self.active(schedule, msg.appointment_id)?;
            if !msg.transition.allowed_from(appointment.status) {
                return Err(ActorError::Conflict(format!(
                    "a {} appointment cannot be marked {}",
                    appointment.status.as_str(),
                    msg.transition.target().as_str()
                )));
            }
            let now = Utc::now().trunc_subsecs(6);
            if msg.transition == Transition::NoShow && now < appointment.start {
                return Err(ActorError::Conflict("a patient can only miss an appointment once it has started".to_owned()));
            }
            appointment.status = msg.transition.target();
            appointment.updated_at = now;
            self.plan_appointment(schedule, Some(&msg.caller), msg.transition.event_type(), appointment, json!({}), None)
        })();
        self.run_appointment_plan(planned, msg.appointment_id)
    }
}

/// Completes an active (booked or checked-in) appointment with what the visit produced, carried
/// in the `appointment.completed` event as `outcome` (a video consult names its session here).
/// An appointment that is no longer active is a conflict: the caller decides what that means.
#[derive(Message)]
#[rtype(result = "Result<AppointmentChanged, ActorError>")]
pub struct CompleteAppointment {
    pub caller: Caller,
    pub appointment_id: Uuid,
    pub outcome: Value,
}

impl Handler<CompleteAppointment> for DoctorScheduleActor {
    type Result = Reply<Self, AppointmentChanged>;

    fn handle(&mut self, msg: CompleteAppointment, _ctx: &mut Context<Self>) -> Self::Result {
        let planned = (|| {
            let schedule = self.current()?;
            let mut appointment = self.active(schedule, msg.appointment_id)?;
            appointment.status = AppointmentStatus::Completed;
            appointment.updated_at = Utc::now().trunc_subsecs(6);
            self.plan_appointment(schedule, Some(&msg.caller), APPOINTMENT_COMPLETED, appointment, json!({"outcome": msg.outcome}), None)
        })();
        self.run_appointment_plan(planned, msg.appointment_id)
    }
}

/// Sends the reminder of a booked appointment (once), from the reminder sweep.
#[derive(Message)]
#[rtype(result = "Result<Option<i64>, ActorError>")]
pub struct SendReminder {
    pub appointment_id: Uuid,
    pub lead_seconds: i64,
}

impl Handler<SendReminder> for DoctorScheduleActor {
    type Result = Reply<Self, Option<i64>>;

    fn handle(&mut self, msg: SendReminder, _ctx: &mut Context<Self>) -> Self::Result {
        let schedule = match self.current() {
            Ok(schedule) => schedule,
            Err(error) => return durable::refuse(self, error),
        };
        let Some(mut appointment) = schedule.appointments.get(&msg.appointment_id).cloned() else {
            return durable::answer(None);
        };
        if appointment.reminder_sent || appointment.status != AppointmentStatus::Booked {
            return durable::answer(None);
        }
        appointment.reminder_sent = true;
        appointment.updated_at = Utc::now().trunc_subsecs(6);
        let planned = self.plan_appointment(schedule, None, APPOINTMENT_REMINDER, appointment, json!({"lead_seconds": msg.lead_seconds}), None);
        match planned {
            Ok(plan) => self.execute(plan, |_, committed| Some(committed.topic_seq)),
            Err(error) => durable::refuse(self, error),
        }
    }
}

impl DoctorScheduleActor {
    fn run_appointment_plan(&mut self, planned: Result<Plan, ActorError>, appointment_id: Uuid) -> Reply<Self, AppointmentChanged> {
        match planned {
            Ok(plan) => {
                let appointment: Appointment = serde_json::from_value(plan.draft.data["appointment"].clone()).expect("planned appointment");
                debug_assert_eq!(appointment.id, appointment_id);
                self.execute(plan, move |_, committed| AppointmentChanged { appointment, seq: committed.topic_seq })
            }
            Err(error) => durable::refuse(self, error),
        }
    }
}

/// Replaces the weekly working hours and consult length. Booked appointments stay as they are.
#[derive(Message)]
#[rtype(result = "Result<Schedule, ActorError>")]
pub struct SetHours {
    pub caller: Caller,
    pub working_hours: Vec<WorkingHours>,
    pub consult_minutes: i32,
}

impl Handler<SetHours> for DoctorScheduleActor {
    type Result = Reply<Self, Schedule>;

    fn handle(&mut self, msg: SetHours, _ctx: &mut Context<Self>) -> Self::Result {
        let planned = (|| {
            check_working_hours(&msg.working_hours)?;
            let consult_minutes = check_consult_minutes(msg.consult_minutes)?;
            let schedule = self.current()?;
            let data = json!({"working_hours": msg.working_hours, "consult_minutes": consult_minutes});
            let next = apply(Some(schedule.clone()), schedule.version + 1, DOCTOR_HOURS_CHANGED, &data).map_err(ActorError::Unavailable)?;
            Ok(Plan {
                draft: self.draft(schedule, DOCTOR_HOURS_CHANGED, data.clone()),
                audit: AuditRecord::by_caller(&msg.caller, "doctor.hours_change", "doctor", self.core.id).detail(data),
                next,
                projection: Projection::Profile,
            })
        })();
        match planned {
            Ok(plan) => self.execute(plan, |next, _| next.clone()),
            Err(error) => durable::refuse(self, error),
        }
    }
}

/// Adds time off. Refused while active appointments fall in it (move or cancel them first).
#[derive(Message)]
#[rtype(result = "Result<TimeOff, ActorError>")]
pub struct AddTimeOff {
    pub caller: Caller,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub reason: String,
}

impl Handler<AddTimeOff> for DoctorScheduleActor {
    type Result = Reply<Self, TimeOff>;

    fn handle(&mut self, msg: AddTimeOff, _ctx: &mut Context<Self>) -> Self::Result {
        let planned = (|| {
            let schedule = self.current()?;
            if msg.end <= msg.start {
                return Err(invalid("end", "end must be after start"));
            }
            if msg.end - msg.start > Duration::days(366) {
                return Err(invalid("end", "time off lasts at most a year; add it in parts"));
            }
            let reason = msg.reason.trim();
            if reason.is_empty() || reason.chars().count() > 200 {
                return Err(invalid("reason", "give a reason of 1 to 200 characters"));
            }
            if let Some(booked) = schedule.appointments.values().find(|a| a.overlaps(msg.start, msg.end)) {
                return Err(ActorError::Taken {
                    detail: "active appointments fall in that time; reschedule or cancel them first".to_owned(),
                    conflicting: conflicting_json(booked),
                });
            }
            let off = TimeOff { id: Uuid::new_v4(), start: msg.start.trunc_subsecs(0), end: msg.end.trunc_subsecs(0), reason: reason.to_owned() };
            let data = json!(off);
            let next = apply(Some(schedule.clone()), schedule.version + 1, DOCTOR_TIME_OFF_ADDED, &data).map_err(ActorError::Unavailable)?;
            Ok((off.clone(), Plan {
                draft: self.draft(schedule, DOCTOR_TIME_OFF_ADDED, data.clone()),
                audit: AuditRecord::by_caller(&msg.caller, "doctor.time_off_add", "doctor", self.core.id).detail(data),
                next,
                projection: Projection::Profile,
            }))
        })();
        match planned {
            Ok((off, plan)) => self.execute(plan, move |_, _| off),
            Err(error) => durable::refuse(self, error),
        }
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct RemoveTimeOff {
    pub caller: Caller,
    pub time_off_id: Uuid,
}

impl Handler<RemoveTimeOff> for DoctorScheduleActor {
    type Result = Reply<Self, ()>;

    fn handle(&mut self, msg: RemoveTimeOff, _ctx: &mut Context<Self>) -> Self::Result {
        let planned = (|| {
            let schedule = self.current()?;
            if !schedule.time_off.iter().any(|off| off.id == msg.time_off_id) {
                return Err(ActorError::NotFound("time off"));
            }
            let data = json!({"id": msg.time_off_id});
            let next = apply(Some(schedule.clone()), schedule.version + 1, DOCTOR_TIME_OFF_REMOVED, &data).map_err(ActorError::Unavailable)?;
            Ok(Plan {
                draft: self.draft(schedule, DOCTOR_TIME_OFF_REMOVED, data.clone()),
                audit: AuditRecord::by_caller(&msg.caller, "doctor.time_off_remove", "doctor", self.core.id).detail(data),
                next,
                projection: Projection::Profile,
            })
        })();
        match planned {
            Ok(plan) => self.execute(plan, |_, _| ()),
            Err(error) => durable::refuse(self, error),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Read models

/// An appointment as the read model holds it (including finished ones).
#[derive(Debug, Clone, Serialize)]
pub struct AppointmentRecord {
    pub id: Uuid,
    pub doctor_id: Uuid,
    pub patient_id: Uuid,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub kind: String,
    pub status: String,
    pub reason: Option<String>,
    pub cancel_reason: Option<String>,
    pub booked_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const APPOINTMENT_COLUMNS: &str =
    "a.id, a.doctor_id, a.patient_id, a.starts_at, a.ends_at, a.kind, a.status, a.reason, a.cancel_reason, a.booked_by, a.created_at, a.updated_at";

fn appointment_record(row: &sqlx::postgres::PgRow) -> AppointmentRecord {
    AppointmentRecord {
        id: row.get("id"),
        doctor_id: row.get("doctor_id"),
        patient_id: row.get("patient_id"),
        start: row.get("starts_at"),
        end: row.get("ends_at"),
        kind: row.get("kind"),
        status: row.get("status"),
        reason: row.get("reason"),
        cancel_reason: row.get("cancel_reason"),
        booked_by: row.get("booked_by"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

/// Whose appointments a live snapshot shows.
#[derive(Debug, Clone, Copy)]
pub enum AppointmentsOf {
    Doctor(Uuid),
    /// The patient linked to this user.
    PatientUser(Uuid),
}

/// A topic's seq and the active and upcoming appointments it covers, read in one snapshot.
pub async fn topic_snapshot(pool: &PgPool, tenant_id: Uuid, topic: &str, of: AppointmentsOf) -> Result<(i64, Vec<AppointmentRecord>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let seq = store::topic_head(&mut tx, topic).await?;
    let (filter, key) = match of {
        AppointmentsOf::Doctor(id) => ("a.doctor_id = $2", id),
        AppointmentsOf::PatientUser(id) => ("a.patient_id = (SELECT id FROM patients WHERE user_id = $2)", id),
    };
    let rows = sqlx::query(&format!(
        "SELECT {APPOINTMENT_COLUMNS} FROM appointments a
         WHERE a.tenant_id = $1 AND {filter} AND a.status IN ('booked', 'checked_in') ORDER BY a.starts_at LIMIT 500"
    ))
    .bind(tenant_id)
    .bind(key)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((seq, rows.iter().map(appointment_record).collect()))
}

/// Filters for [`list_appointments`]; they combine with AND.
#[derive(Debug, Clone, Default)]
pub struct AppointmentFilter {
    pub doctor_id: Option<Uuid>,
    pub patient_id: Option<Uuid>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub status: Option<AppointmentStatus>,
    pub limit: i64,
}

/// Appointments of the tenant, by start time.
pub async fn list_appointments(pool: &PgPool, tenant_id: Uuid, filter: &AppointmentFilter) -> Result<Vec<AppointmentRecord>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {APPOINTMENT_COLUMNS} FROM appointments a
         WHERE a.tenant_id = $1 AND ($2::uuid IS NULL OR a.doctor_id = $2) AND ($3::uuid IS NULL OR a.patient_id = $3)
           AND ($4::timestamptz IS NULL OR a.ends_at > $4) AND ($5::timestamptz IS NULL OR a.starts_at < $5)
           AND ($6::text IS NULL OR a.status = $6)
         ORDER BY a.starts_at, a.id LIMIT $7"
    ))
    .bind(tenant_id)
    .bind(filter.doctor_id)
    .bind(filter.patient_id)
    .bind(filter.from)
    .bind(filter.to)
    .bind(filter.status.map(AppointmentStatus::as_str))
    .bind(filter.limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(appointment_record).collect())
}

pub async fn get_appointment(pool: &PgPool, tenant_id: Uuid, id: Uuid) -> Result<Option<AppointmentRecord>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {APPOINTMENT_COLUMNS} FROM appointments a WHERE a.id = $1 AND a.tenant_id = $2"))
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(appointment_record))
}

/// A doctor's public profile from the read model, for lists and search.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorSummary {
    pub id: Uuid,
    pub user_id: Uuid,
    pub display_name: String,
    pub specialties: Vec<String>,
    pub facility_id: Uuid,
    pub facility_name: String,
    pub location: crate::GeoPoint,
    pub timezone: String,
    pub consult_minutes: i32,
}

/// The tenant's doctors, optionally of one specialty.
pub async fn list_doctors(pool: &PgPool, tenant_id: Uuid, specialty: Option<&str>) -> Result<Vec<DoctorSummary>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT d.id, d.user_id, d.display_name, d.specialties, d.facility_id, f.name AS facility_name,
                f.latitude, f.longitude, d.timezone, d.consult_minutes
         FROM doctors d JOIN facilities f ON f.id = d.facility_id
         WHERE d.tenant_id = $1 AND ($2::text IS NULL OR $2 = ANY (d.specialties))
         ORDER BY d.display_name, d.id",
    )
    .bind(tenant_id)
    .bind(specialty.map(str::to_lowercase))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(DoctorSummary {
                id: row.get("id"),
                user_id: row.get("user_id"),
                display_name: row.get("display_name"),
                specialties: row.get("specialties"),
                facility_id: row.get("facility_id"),
                facility_name: row.get("facility_name"),
                location: crate::GeoPoint::new(row.get("latitude"), row.get("longitude")).map_err(|e| sqlx::Error::Decode(e.into()))?,
                timezone: row.get("timezone"),
                consult_minutes: row.get("consult_minutes"),
            })
        })
        .collect()
}

/// Great-circle distance in kilometres (haversine, WGS84 mean radius).
pub fn distance_km(a: crate::GeoPoint, b: crate::GeoPoint) -> f64 {
    use geo::{Distance, Haversine, Point};
    Haversine.distance(Point::new(a.lon(), a.lat()), Point::new(b.lon(), b.lat())) / 1000.0
}

/// Appointments whose reminder is due: booked, not yet reminded, starting within `lead`.
pub async fn due_reminders(pool: &PgPool, lead: Duration, limit: i64) -> Result<Vec<(Uuid, String, Uuid, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.tenant_id, t.slug, a.doctor_id, a.id FROM appointments a JOIN tenants t ON t.id = a.tenant_id
         WHERE a.status = 'booked' AND a.reminder_sent_at IS NULL
           AND a.starts_at > now() AND a.starts_at <= now() + make_interval(secs => $1)
         ORDER BY a.starts_at LIMIT $2",
    )
    .bind(lead.num_seconds() as f64)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hours(spec: &[(DayOfWeek, &str, &str)]) -> Vec<WorkingHours> {
        spec.iter().map(|(day, start, end)| WorkingHours { weekday: *day, start: start.parse().unwrap(), end: end.parse().unwrap() }).collect()
    }

    fn schedule(timezone: &str, working_hours: Vec<WorkingHours>, consult_minutes: i32) -> Schedule {
        Schedule {
            profile: DoctorProfile {
                id: Uuid::from_u128(1),
                user_id: Uuid::from_u128(2),
                display_name: "Dr. Test".into(),
                specialties: vec!["general practice".into()],
                facility_id: Uuid::from_u128(3),
                timezone: timezone.into(),
                consult_minutes,
                working_hours,
            },
            time_off: Vec::new(),
            appointments: BTreeMap::new(),
            version: 1,
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn long_ago() -> DateTime<Utc> {
        utc("2020-01-01T00:00:00Z")
    }

    #[test]
    fn clock_times_read_hh_mm_up_to_the_end_of_the_day() {
        assert_eq!("08:30".parse::<ClockTime>().unwrap().minutes(), 510);
        assert_eq!("24:00".parse::<ClockTime>().unwrap().minutes(), 1440);
        for bad in ["8:30", "24:01", "12:60", "noon", "", "12-00"] {
            assert!(bad.parse::<ClockTime>().is_err(), "{bad}");
        }
    }

    #[test]
    fn working_hours_must_end_after_they_start_and_not_overlap() {
        assert!(check_working_hours(&hours(&[(DayOfWeek::Monday, "08:00", "12:00"), (DayOfWeek::Monday, "13:00", "17:00")])).is_ok());
        assert!(check_working_hours(&hours(&[(DayOfWeek::Monday, "12:00", "08:00")])).is_err());
        assert!(check_working_hours(&hours(&[(DayOfWeek::Monday, "08:00", "12:00"), (DayOfWeek::Monday, "11:00", "13:00")])).is_err());
    }

    /// London moves from GMT (UTC+0) to BST (UTC+1) at 01:00 UTC on Sunday 29 March 2026.
    #[test]
    fn a_london_morning_clinic_starts_an_hour_earlier_in_utc_after_the_clocks_go_forward() {
        let s = schedule("Europe/London", hours(&[(DayOfWeek::Friday, "09:00", "11:00"), (DayOfWeek::Monday, "09:00", "11:00")]), 30);
        let slots = s.free_slots(date("2026-03-27"), date("2026-03-30"), long_ago());
        let starts: Vec<String> = slots.iter().map(|slot| slot.start.to_rfc3339()).collect();
        assert_eq!(starts, [
            "2026-03-27T09:00:00+00:00", "2026-03-27T09:30:00+00:00", "2026-03-27T10:00:00+00:00", "2026-03-27T10:30:00+00:00",
            "2026-03-30T08:00:00+00:00", "2026-03-30T08:30:00+00:00", "2026-03-30T09:00:00+00:00", "2026-03-30T09:30:00+00:00",
        ]);
    }

    /// On the night the clocks go forward, 00:00 to 04:00 local is only three real hours.
    #[test]
    fn a_night_shift_across_the_spring_gap_has_the_hours_it_really_has() {
        let s = schedule("Europe/London", hours(&[(DayOfWeek::Sunday, "00:00", "04:00")]), 60);
        let slots = s.free_slots(date("2026-03-29"), date("2026-03-29"), long_ago());
        let starts: Vec<String> = slots.iter().map(|slot| slot.start.to_rfc3339()).collect();
        assert_eq!(starts, ["2026-03-29T00:00:00+00:00", "2026-03-29T01:00:00+00:00", "2026-03-29T02:00:00+00:00"]);
        // And in autumn (25 October 2026) the same shift has five.
        let autumn = s.free_slots(date("2026-10-25"), date("2026-10-25"), long_ago());
        assert_eq!(autumn.len(), 5);
        assert_eq!(autumn[0].start, utc("2026-10-24T23:00:00Z"));
    }

    /// New York goes from EST (UTC-5) to EDT (UTC-4) on 8 March 2026; a clinic starting inside
    /// the skipped hour starts at the first instant after it.
    #[test]
    fn new_york_hours_follow_eastern_time_and_a_start_in_the_gap_moves_past_it() {
        let s = schedule("America/New_York", hours(&[(DayOfWeek::Saturday, "08:00", "09:00"), (DayOfWeek::Sunday, "02:30", "04:00")]), 30);
        let slots = s.free_slots(date("2026-03-07"), date("2026-03-08"), long_ago());
        let starts: Vec<String> = slots.iter().map(|slot| slot.start.to_rfc3339()).collect();
        assert_eq!(starts, ["2026-03-07T13:00:00+00:00", "2026-03-07T13:30:00+00:00", "2026-03-08T07:30:00+00:00"]);
    }

    #[test]
    fn booked_time_off_and_past_slots_are_not_free() {
        let mut s = schedule("Africa/Nairobi", hours(&[(DayOfWeek::Wednesday, "08:00", "10:00")]), 30);
        // 2026-12-02 is a Wednesday; Nairobi is UTC+3.
        let booked = Appointment {
            id: Uuid::from_u128(10),
            doctor_id: s.profile.id,
            patient_id: Uuid::from_u128(20),
            patient_user_id: None,
            start: utc("2026-12-02T05:30:00Z"),
            end: utc("2026-12-02T06:00:00Z"),
            kind: AppointmentKind::InPerson,
            status: AppointmentStatus::Booked,
            reason: None,
            booked_by: Uuid::nil(),
            reminder_sent: false,
            created_at: long_ago(),
            updated_at: long_ago(),
        };
        s.appointments.insert(booked.id, booked.clone());
        s.time_off.push(TimeOff { id: Uuid::nil(), start: utc("2026-12-02T06:30:00Z"), end: utc("2026-12-02T07:00:00Z"), reason: "training".into() });
        let slots = s.free_slots(date("2026-12-02"), date("2026-12-02"), long_ago());
        let starts: Vec<_> = slots.iter().map(|slot| slot.start).collect();
        assert_eq!(starts, [utc("2026-12-02T05:00:00Z"), utc("2026-12-02T06:00:00Z")]);
        let later = s.free_slots(date("2026-12-02"), date("2026-12-02"), utc("2026-12-02T05:10:00Z"));
        assert_eq!(later.len(), 1, "slots that already started are gone");

        let patient = Uuid::from_u128(21);
        let taken = s.check_time(utc("2026-12-02T05:30:00Z"), utc("2026-12-02T06:00:00Z"), patient, None, long_ago());
        assert!(matches!(taken, Err(ActorError::Taken { .. })));
        let outside = s.check_time(utc("2026-12-02T07:30:00Z"), utc("2026-12-02T08:00:00Z"), patient, None, long_ago());
        assert!(matches!(outside, Err(ActorError::Invalid { field: "start", .. })));
        let away = s.check_time(utc("2026-12-02T06:30:00Z"), utc("2026-12-02T07:00:00Z"), patient, None, long_ago());
        assert!(matches!(away, Err(ActorError::Invalid { field: "start", .. })));
        let backwards = s.check_time(utc("2026-12-02T06:00:00Z"), utc("2026-12-02T05:00:00Z"), patient, None, long_ago());
        assert!(matches!(backwards, Err(ActorError::Invalid { field: "end", .. })));
        let past = s.check_time(utc("2026-12-02T05:00:00Z"), utc("2026-12-02T05:30:00Z"), patient, None, utc("2026-12-03T00:00:00Z"));
        assert!(matches!(past, Err(ActorError::Invalid { field: "start", .. })));
        // Moving the booked appointment onto its own time is fine.
        assert!(s.check_time(utc("2026-12-02T05:30:00Z"), utc("2026-12-02T06:00:00Z"), booked.patient_id, Some(booked.id), long_ago()).is_ok());
    }

    #[test]
    fn events_replay_to_the_same_schedule() {
        let s = schedule("UTC", hours(&[(DayOfWeek::Monday, "08:00", "12:00")]), 15);
        let appointment = Appointment {
            id: Uuid::from_u128(5),
            doctor_id: s.profile.id,
            patient_id: Uuid::from_u128(6),
            patient_user_id: None,
            start: utc("2026-12-07T08:00:00Z"),
            end: utc("2026-12-07T08:15:00Z"),
            kind: AppointmentKind::Video,
            status: AppointmentStatus::Booked,
            reason: None,
            booked_by: Uuid::nil(),
            reminder_sent: false,
            created_at: long_ago(),
            updated_at: long_ago(),
        };
        let mut cancelled = appointment.clone();
        cancelled.status = AppointmentStatus::Cancelled;
        let log = [
            (DOCTOR_REGISTERED, json!(s)),
            (APPOINTMENT_BOOKED, json!({"appointment": appointment})),
            (DOCTOR_HOURS_CHANGED, json!({"working_hours": hours(&[(DayOfWeek::Tuesday, "08:00", "09:00")]), "consult_minutes": 20})),
            (APPOINTMENT_CANCELLED, json!({"appointment": cancelled, "reason": "patient asked"})),
        ];
        let mut state = None;
        for (seq, (kind, data)) in log.iter().enumerate() {
            state = Some(apply(state, seq as i64 + 1, kind, data).unwrap());
            if seq == 1 {
                assert_eq!(state.as_ref().unwrap().appointments.len(), 1);
            }
        }
        let state = state.unwrap();
        assert!(state.appointments.is_empty(), "a cancelled appointment frees its time");
        assert_eq!(state.profile.consult_minutes, 20);
        assert_eq!(state.version, 4);
    }

    #[test]
    fn distances_are_great_circle_kilometres() {
        let nairobi = crate::GeoPoint::new(-1.2921, 36.8219).unwrap();
        let mombasa = crate::GeoPoint::new(-4.0435, 39.6682).unwrap();
        let km = distance_km(nairobi, mombasa);
        assert!((435.0..445.0).contains(&km), "{km}");
    }
}
