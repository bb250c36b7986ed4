//! The `VideoSession` actor: one per video consult, the single writer of who is in the consult's
//! room, its state, its chat and the record the doctor writes at the end.
//!
//! A consult belongs to a video appointment and is opened by that appointment's doctor (on demand,
//! when they open the consult room: an appointment booked weeks ahead costs nothing until then,
//! and opening twice gives the same consult). It is `waiting` until the doctor is in the room with
//! someone else, then `in_progress` (even if someone drops out for a while), and `ended` once the
//! doctor ends it with the consult record. Ending first completes the appointment through the
//! doctor's `DoctorSchedule` actor (naming this consult in its `appointment.completed` event), then
//! commits the record here; the hub then closes every peer connection of the room.
//!
//! Members are the appointment's doctor, the patient (the patient-role user linked to the patient
//! record) and guests the doctor invited (any non-patient user of the tenant: an interpreter, a
//! specialist). The edge (HTTP, WebSocket signaling) resolves who a caller is in the consult with
//! [`member`] and the actor trusts it.
//!
//! Presence: the WebSocket signaling tells the actor when a member's media connection joins and
//! leaves. A connection that drops without `leave` makes its member `reconnecting`; they may rejoin,
//! and after the reconnect grace period they are `left`. Each join carries an attachment number so
//! that a stale connection's late drop never marks a member who already rejoined elsewhere; after a
//! hub restart, members still recorded as connected have no attachment and become `reconnecting`.
//!
//! Like every durable actor, each command commits its projection, its event (on
//! `tenant/{t}/consult/{session}`) and its audit entry (naming the session and the patient) in one
//! transaction before it is acknowledged; state, including the recent chat, is rebuilt from
//! snapshot + events after a restart.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool, Row};
use tracing::{info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::audit::{self, AuditRecord};
use crate::domain::{enum_name, Caller, Principal, Role, TenantSlug};
use crate::durable::{self, Core, DurableActor, DurableState, Reply};
use crate::error::ActorError;
use crate::metrics::ActorMetrics;
use crate::schedule::{self, CompleteAppointment};
use crate::store::{self, Committed, EventDraft};
use crate::tenant::{ScheduleAddr, TenantSupervisor};
use crate::topics;

pub const ACTOR: &str = "consult";

/// How many of the latest chat messages the actor keeps (and a new subscriber's snapshot shows);
/// the whole chat is in `consult_messages`.
pub const RECENT_MESSAGES: usize = 50;
/// Longest chat message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4000;
/// Longest part of a consult record, in characters.
pub const MAX_RECORD_CHARS: usize = 8000;

fn invalid(field: &'static str, detail: impl Into<String>) -> ActorError {
    ActorError::Invalid { field, detail: detail.into() }
}

/// How the tenant's consult actors behave (from the hub's configuration).
#[derive(Debug, Clone, Copy)]
pub struct ConsultConfig {
    /// How long a member whose connection dropped shows as `reconnecting` before `left`.
    pub reconnect_grace: Duration,
}

impl Default for ConsultConfig {
    fn default() -> Self {
        ConsultConfig { reconnect_grace: Duration::from_secs(30) }
    }
}

// ---------------------------------------------------------------------------------------------
// Domain values

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsultState {
    Waiting,
    InProgress,
    Ended,
}

impl ConsultState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsultState::Waiting => "waiting",
            ConsultState::InProgress => "in_progress",
            ConsultState::Ended => "ended",
        }
    }

    pub const ALL: [ConsultState; 3] = [ConsultState::Waiting, ConsultState::InProgress, ConsultState::Ended];
}

/// Who someone is in a consult.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsultRole {
    Doctor,
    Patient,
    Guest,
}

/// A member's media connection as the hub last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// A member who has not joined yet.
    Invited,
    Connected,
    /// The connection dropped without `leave`; they may rejoin.
    Reconnecting,
    Left,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Participant {
    pub user_id: Uuid,
    pub role: ConsultRole,
    pub display_name: String,
    pub connection: Presence,
    pub invited_by: Option<Uuid>,
    pub invited_at: Option<DateTime<Utc>>,
    pub first_joined_at: Option<DateTime<Utc>>,
    pub last_joined_at: Option<DateTime<Utc>>,
    pub left_at: Option<DateTime<Utc>>,
    pub joins: i32,
    /// Time in the room over every finished stay (the current one counts from `last_joined_at`).
    pub seconds_in_room: f64,
    pub audio: bool,
    pub video: bool,
}

impl Participant {
    fn new(member: &Member) -> Participant {
        Participant {
            user_id: member.user_id,
            role: member.role,
            display_name: member.display_name.clone(),
            connection: Presence::Invited,
            invited_by: None,
            invited_at: None,
            first_joined_at: None,
            last_joined_at: None,
            left_at: None,
            joins: 0,
            seconds_in_room: 0.0,
            audio: true,
            video: true,
        }
    }

    /// Ends the current stay at `at` (adds it to the time in the room).
    fn end_stay(&mut self, at: DateTime<Utc>) {
        if self.connection == Presence::Connected {
            if let Some(since) = self.last_joined_at {
                self.seconds_in_room += (at - since).num_milliseconds().max(0) as f64 / 1000.0;
            }
            self.left_at = Some(at);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub id: Uuid,
    /// 1, 2, 3... within the consult, in commit order.
    pub seq: i64,
    pub sender_user_id: Uuid,
    pub sender_role: ConsultRole,
    pub sender_name: String,
    pub body: String,
    pub sent_at: DateTime<Utc>,
}

/// A chat message's text: 1 to 4000 characters once trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBody(String);

impl MessageBody {
    pub fn parse(text: &str) -> Result<MessageBody, ActorError> {
        let text = text.trim();
        if text.is_empty() || text.chars().count() > MAX_MESSAGE_CHARS {
            return Err(invalid("body", format!("a message is 1 to {MAX_MESSAGE_CHARS} characters")));
        }
        Ok(MessageBody(text.to_owned()))
    }
}

/// What the doctor writes at the end of a consult.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsultRecord {
    pub chief_complaint: String,
    pub assessment: String,
    pub plan: String,
    /// When and how to follow up; `None` when no follow-up is needed.
    pub follow_up: Option<String>,
}

impl ConsultRecord {
    pub fn new(chief_complaint: &str, assessment: &str, plan: &str, follow_up: Option<&str>) -> Result<ConsultRecord, ActorError> {
        let part = |field: &'static str, value: &str| -> Result<String, ActorError> {
            let value = value.trim();
            if value.is_empty() || value.chars().count() > MAX_RECORD_CHARS {
                return Err(invalid(field, format!("{field} is 1 to {MAX_RECORD_CHARS} characters")));
            }
            Ok(value.to_owned())
        };
        let follow_up = match follow_up.map(str::trim).filter(|text| !text.is_empty()) {
            Some(text) => Some(part("follow_up", text)?),
            None => None,
        };
        Ok(ConsultRecord {
            chief_complaint: part("chief_complaint", chief_complaint)?,
            assessment: part("assessment", assessment)?,
            plan: part("plan", plan)?,
            follow_up,
        })
    }
}

/// Someone who may be in a consult, as the edge resolved them ([`member`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user_id: Uuid,
    pub role: ConsultRole,
    pub display_name: String,
}

/// The actor's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consult {
    pub id: Uuid,
    pub appointment_id: Uuid,
    pub doctor_id: Uuid,
    pub doctor_user_id: Uuid,
    pub patient_id: Uuid,
    pub state: ConsultState,
    pub opened_by: Uuid,
    pub opened_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// By user id.
    pub participants: BTreeMap<Uuid, Participant>,
    /// The latest [`RECENT_MESSAGES`] messages, oldest first.
    pub recent_messages: Vec<ChatMessage>,
    pub message_count: i64,
    pub record: Option<ConsultRecord>,
    /// What became of the appointment when the consult ended (`completed`, or what it already was).
    pub appointment_status: Option<String>,
    pub version: i64,
}

impl Consult {
    pub fn topic(&self, tenant: &TenantSlug) -> String {
        topics::consult_topic(tenant, self.id)
    }

    fn refuse_if_ended(&self) -> Result<(), ActorError> {
        if self.state == ConsultState::Ended {
            return Err(ActorError::Conflict("this consult has ended".to_owned()));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Pure rules: what each command changes. The event carries the outcome, so replay is trivial.

/// What one event changes; every field present is applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Change {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<Participant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participants: Option<Vec<Participant>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ConsultState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<ConsultRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<ChatMessage>,
}

/// The consult starts once the doctor is in the room with someone else.
fn started(consult: &Consult) -> bool {
    let connected = |role: Option<ConsultRole>| {
        consult.participants.values().any(|p| p.connection == Presence::Connected && role.is_none_or(|role| p.role == role))
    };
    let others = consult.participants.values().filter(|p| p.connection == Presence::Connected && p.role != ConsultRole::Doctor).count();
    connected(Some(ConsultRole::Doctor)) && others > 0
}

/// A member's media connection joins the room.
pub fn decide_join(consult: &Consult, member: &Member, at: DateTime<Utc>) -> Result<Change, ActorError> {
    consult.refuse_if_ended()?;
    let mut participant = consult.participants.get(&member.user_id).cloned().unwrap_or_else(|| Participant::new(member));
    if participant.connection != Presence::Connected {
        participant.joins += 1;
        participant.last_joined_at = Some(at);
    }
    participant.first_joined_at.get_or_insert(at);
    participant.connection = Presence::Connected;
    participant.left_at = None;
    let mut change = Change { participant: Some(participant.clone()), ..Change::default() };
    if consult.state == ConsultState::Waiting {
        let mut next = consult.clone();
        next.participants.insert(participant.user_id, participant);
        if started(&next) {
            change.state = Some(ConsultState::InProgress);
            change.started_at = Some(at);
        }
    }
    Ok(change)
}

/// A member's connection leaves (`dropped`: it went away without saying so). `None`: nothing
/// to record (they were not in the room).
pub fn decide_leave(consult: &Consult, user_id: Uuid, dropped: bool, at: DateTime<Utc>) -> Option<Change> {
    let mut participant = consult.participants.get(&user_id)?.clone();
    let next = match (participant.connection, dropped) {
        (Presence::Connected, true) => Presence::Reconnecting,
        (Presence::Connected | Presence::Reconnecting, false) => Presence::Left,
        _ => return None,
    };
    participant.end_stay(at);
    participant.connection = next;
    Some(Change { participant: Some(participant), ..Change::default() })
}

/// Whom the reconnect sweep moves next: a member recorded as connected whose connection this
/// process does not hold (it dropped, or the hub restarted) becomes `reconnecting`; one
/// reconnecting for longer than `grace` is `left`.
pub fn decide_sweep(consult: &Consult, attached: &HashMap<Uuid, u64>, grace: Duration, now: DateTime<Utc>) -> Option<Change> {
    if consult.state == ConsultState::Ended {
        return None;
    }
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    consult.participants.values().find_map(|p| match p.connection {
        Presence::Connected if !attached.contains_key(&p.user_id) => decide_leave(consult, p.user_id, true, now),
        Presence::Reconnecting if p.left_at.is_none_or(|since| since + grace <= now) => {
            let mut participant = p.clone();
            participant.connection = Presence::Left;
            Some(Change { participant: Some(participant), ..Change::default() })
        }
        _ => None,
    })
}

/// The doctor invites a guest.
pub fn decide_invite(consult: &Consult, guest: &Member, by: Uuid, at: DateTime<Utc>) -> Result<Option<Change>, ActorError> {
    consult.refuse_if_ended()?;
    if guest.role != ConsultRole::Guest {
        return Err(invalid("user_id", "the doctor and the patient are in the consult already"));
    }
    if let Some(existing) = consult.participants.get(&guest.user_id) {
        return match existing.role {
            ConsultRole::Guest => Ok(None),
            _ => Err(invalid("user_id", "the doctor and the patient are in the consult already")),
        };
    }
    if consult.participants.values().filter(|p| p.role == ConsultRole::Guest).count() >= 8 {
        return Err(ActorError::Conflict("a consult has at most 8 guests".to_owned()));
    }
    let mut participant = Participant::new(guest);
    participant.invited_by = Some(by);
    participant.invited_at = Some(at);
    Ok(Some(Change { participant: Some(participant), ..Change::default() }))
}

/// A member turns their microphone or camera on or off. `None`: nothing changes.
pub fn decide_mute(consult: &Consult, user_id: Uuid, audio: bool, video: bool) -> Result<Option<Change>, ActorError> {
    consult.refuse_if_ended()?;
    let mut participant = consult.participants.get(&user_id).cloned().ok_or(ActorError::NotFound("participant"))?;
    if participant.audio == audio && participant.video == video {
        return Ok(None);
    }
    participant.audio = audio;
    participant.video = video;
    Ok(Some(Change { participant: Some(participant), ..Change::default() }))
}

/// A member posts a chat message.
pub fn decide_message(consult: &Consult, sender: &Member, body: &MessageBody, id: Uuid, at: DateTime<Utc>) -> Result<Change, ActorError> {
    consult.refuse_if_ended()?;
    let message = ChatMessage {
        id,
        seq: consult.message_count + 1,
        sender_user_id: sender.user_id,
        sender_role: sender.role,
        sender_name: sender.display_name.clone(),
        body: body.0.clone(),
        sent_at: at,
    };
    Ok(Change { message: Some(message), ..Change::default() })
}

/// The doctor ends the consult: everyone in the room leaves.
pub fn decide_end(consult: &Consult, record: &ConsultRecord, appointment_status: &str, at: DateTime<Utc>) -> Result<Change, ActorError> {
    consult.refuse_if_ended()?;
    let participants = consult
        .participants
        .values()
        .map(|p| {
            let mut p = p.clone();
            if matches!(p.connection, Presence::Connected | Presence::Reconnecting) {
                p.end_stay(at);
                p.connection = Presence::Left;
            }
            p
        })
        .collect();
    Ok(Change {
        participants: Some(participants),
        state: Some(ConsultState::Ended),
        ended_at: Some(at),
        record: Some(record.clone()),
        appointment_status: Some(appointment_status.to_owned()),
        ..Change::default()
    })
}

pub const CONSULT_OPENED: &str = "consult.opened";
pub const CONSULT_GUEST_INVITED: &str = "consult.guest_invited";
pub const CONSULT_PARTICIPANT_JOINED: &str = "consult.participant_joined";
pub const CONSULT_PARTICIPANT_LEFT: &str = "consult.participant_left";
pub const CONSULT_PARTICIPANT_MUTED: &str = "consult.participant_muted";
pub const CONSULT_MESSAGE: &str = "consult.message";
pub const CONSULT_ENDED: &str = "consult.ended";

const CHANGE_EVENTS: &[&str] =
    &[CONSULT_GUEST_INVITED, CONSULT_PARTICIPANT_JOINED, CONSULT_PARTICIPANT_LEFT, CONSULT_PARTICIPANT_MUTED, CONSULT_MESSAGE, CONSULT_ENDED];

/// Applies a stored event to the state it follows: used live (after commit) and in recovery.
pub fn apply(state: Option<Consult>, stream_seq: i64, event_type: &str, data: &Value) -> Result<Consult, String> {
    if event_type == CONSULT_OPENED {
        let mut consult: Consult = serde_json::from_value(data.clone()).map_err(|e| format!("bad {event_type} event: {e}"))?;
        consult.version = stream_seq;
        return Ok(consult);
    }
    if !CHANGE_EVENTS.contains(&event_type) {
        return Err(format!("unknown consult event {event_type}"));
    }
    let mut consult = state.ok_or_else(|| format!("{event_type} before {CONSULT_OPENED}"))?;
    let change: Change = serde_json::from_value(data.clone()).map_err(|e| format!("bad {event_type} event: {e}"))?;
    apply_change(&mut consult, change);
    consult.version = stream_seq;
    Ok(consult)
}

fn apply_change(consult: &mut Consult, change: Change) {
    for participant in change.participant.into_iter().chain(change.participants.into_iter().flatten()) {
        consult.participants.insert(participant.user_id, participant);
    }
    if let Some(state) = change.state {
        consult.state = state;
    }
    if let Some(at) = change.started_at {
        consult.started_at = Some(at);
    }
    if let Some(at) = change.ended_at {
        consult.ended_at = Some(at);
    }
    if let Some(record) = change.record {
        consult.record = Some(record);
    }
    if let Some(status) = change.appointment_status {
        consult.appointment_status = Some(status);
    }
    if let Some(message) = change.message {
        consult.message_count = message.seq;
        consult.recent_messages.push(message);
        let excess = consult.recent_messages.len().saturating_sub(RECENT_MESSAGES);
        consult.recent_messages.drain(..excess);
    }
}

/// The event's data: the change plus the session it is about.
fn event_data(consult_id: Uuid, change: &Change) -> Value {
    let mut data = json!(change);
    data["session_id"] = json!(consult_id);
    data
}

pub fn stream_name(session_id: Uuid) -> String {
    format!("consult/{session_id}")
}

// ---------------------------------------------------------------------------------------------
// Persistence

/// Rebuilds a consult from its snapshot and later events; `None` if no such consult in the tenant.
pub async fn recover(pool: &PgPool, tenant_id: Uuid, session_id: Uuid) -> Result<Option<Consult>, ActorError> {
    let history = store::load_stream(pool, tenant_id, &stream_name(session_id)).await?;
    let unreadable = |e: String| ActorError::Unavailable(format!("consult {session_id} history unreadable: {e}"));
    let mut state: Option<Consult> = match history.snapshot {
        Some((seq, value)) => {
            let mut consult: Consult = serde_json::from_value(value).map_err(|e| unreadable(e.to_string()))?;
            consult.version = seq;
            Some(consult)
        }
        None => None,
    };
    for event in &history.events {
        state = Some(apply(state, event.stream_seq, &event.event_type, &event.data).map_err(unreadable)?);
    }
    Ok(state)
}

/// What one command commits.
struct Plan {
    draft: EventDraft,
    audit: AuditRecord,
    next: Consult,
    /// Further topics that get a copy of the event (users' own feeds), in name order.
    copies: Vec<String>,
    opened: bool,
    change: Change,
}

async fn write_participant(conn: &mut PgConnection, tenant_id: Uuid, session_id: Uuid, p: &Participant) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO consult_participants (session_id, user_id, tenant_id, role, display_name, connection, invited_by, invited_at,
                                           first_joined_at, last_joined_at, left_at, joins, seconds_in_room, audio, video)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (session_id, user_id) DO UPDATE SET
             connection = EXCLUDED.connection, first_joined_at = EXCLUDED.first_joined_at, last_joined_at = EXCLUDED.last_joined_at,
             left_at = EXCLUDED.left_at, joins = EXCLUDED.joins, seconds_in_room = EXCLUDED.seconds_in_room,
             audio = EXCLUDED.audio, video = EXCLUDED.video",
    )
    .bind(session_id)
    .bind(p.user_id)
    .bind(tenant_id)
    .bind(enum_name(&p.role))
    .bind(&p.display_name)
    .bind(enum_name(&p.connection))
    .bind(p.invited_by)
    .bind(p.invited_at)
    .bind(p.first_joined_at)
    .bind(p.last_joined_at)
    .bind(p.left_at)
    .bind(p.joins)
    .bind(p.seconds_in_room)
    .bind(p.audio)
    .bind(p.video)
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_projection(conn: &mut PgConnection, tenant_id: Uuid, plan: &Plan) -> Result<(), sqlx::Error> {
    let c = &plan.next;
    if plan.opened {
        sqlx::query(
            "INSERT INTO consult_sessions (id, tenant_id, appointment_id, doctor_id, doctor_user_id, patient_id, state,
                                           opened_by, opened_at, version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(c.id)
        .bind(tenant_id)
        .bind(c.appointment_id)
        .bind(c.doctor_id)
        .bind(c.doctor_user_id)
        .bind(c.patient_id)
        .bind(c.state.as_str())
        .bind(c.opened_by)
        .bind(c.opened_at)
        .bind(c.version)
        .execute(&mut *conn)
        .await?;
        for participant in c.participants.values() {
            write_participant(conn, tenant_id, c.id, participant).await?;
        }
        return Ok(());
    }
    let change = &plan.change;
    for participant in change.participant.iter().chain(change.participants.iter().flatten()) {
        write_participant(conn, tenant_id, c.id, participant).await?;
    }
    if let Some(m) = &change.message {
        sqlx::query(
            "INSERT INTO consult_messages (id, tenant_id, session_id, seq, sender_user_id, sender_role, sender_name, body, sent_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(m.id)
        .bind(tenant_id)
        .bind(c.id)
        .bind(m.seq)
        .bind(m.sender_user_id)
        .bind(enum_name(&m.sender_role))
        .bind(&m.sender_name)
        .bind(&m.body)
        .bind(m.sent_at)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "UPDATE consult_sessions SET state = $2, started_at = $3, ended_at = $4, record = $5, message_count = $6, version = $7
         WHERE id = $1",
    )
    .bind(c.id)
    .bind(c.state.as_str())
    .bind(c.started_at)
    .bind(c.ended_at)
    .bind(c.record.as_ref().map(|record| json!(record)))
    .bind(c.message_count)
    .bind(c.version)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Commits a plan in one transaction: projection, copies on users' own feeds (first: every
/// command takes topic locks in the same order), the event on the consult's topic, the audit
/// entry and, every N events, a snapshot.
async fn commit_plan(pool: &PgPool, tenant_id: Uuid, plan: &Plan, snapshot_every: i64, metrics: &ActorMetrics) -> Result<Committed, ActorError> {
    let mut tx = pool.begin().await?;
    write_projection(&mut tx, tenant_id, plan).await?;
    for topic in &plan.copies {
        store::publish_copy(&mut tx, tenant_id, topic, plan.draft.event_type, &plan.draft.data).await?;
    }
    let snapshot = (plan.next.version % snapshot_every.max(1) == 0).then(|| json!(plan.next));
    store::commit_command(tx, tenant_id, &plan.draft, &plan.audit, snapshot.as_ref(), metrics, ACTOR).await
}

/// The consult of an appointment, if one was opened.
pub async fn session_for_appointment(pool: &PgPool, tenant_id: Uuid, appointment_id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM consult_sessions WHERE appointment_id = $1 AND tenant_id = $2")
        .bind(appointment_id)
        .bind(tenant_id)
        .fetch_optional(pool)
        .await
}

/// What opening a consult found.
#[derive(Debug, Clone)]
pub enum Opened {
    Created(Box<Consult>),
    /// The appointment's consult was opened before.
    Existing(Uuid),
}

/// Opens the consult of a video appointment (its doctor only). Called by the tenant supervisor,
/// which then starts the consult's actor with the returned state.
pub(crate) async fn open(
    pool: &PgPool,
    tenant_id: Uuid,
    tenant: &TenantSlug,
    caller: &Caller,
    appointment_id: Uuid,
    snapshot_every: i64,
    metrics: &ActorMetrics,
) -> Result<Opened, ActorError> {
    if let Some(id) = session_for_appointment(pool, tenant_id, appointment_id).await? {
        return Ok(Opened::Existing(id));
    }
    let appointment = schedule::get_appointment(pool, tenant_id, appointment_id).await?.ok_or(ActorError::NotFound("appointment"))?;
    let doctor: (Uuid, String) = sqlx::query_as("SELECT d.user_id, u.display_name FROM doctors d JOIN users u ON u.id = d.user_id WHERE d.id = $1")
        .bind(appointment.doctor_id)
        .fetch_one(pool)
        .await?;
    if caller.principal.user_id != doctor.0 {
        return Err(ActorError::Forbidden("only the appointment's doctor opens its consult".to_owned()));
    }
    if appointment.kind != "video" {
        return Err(ActorError::Conflict("this is an in-person appointment; only a video appointment has a video consult".to_owned()));
    }
    if !matches!(appointment.status.as_str(), "booked" | "checked_in") {
        return Err(ActorError::Conflict(format!("the appointment is {}; a consult opens for a booked or checked-in appointment", appointment.status)));
    }
    let patient_user: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT u.id, u.display_name FROM patients p JOIN users u ON u.id = p.user_id WHERE p.id = $1 AND p.tenant_id = $2",
    )
    .bind(appointment.patient_id)
    .bind(tenant_id)
    .fetch_optional(pool)
    .await?;
    let at = Utc::now().trunc_subsecs(6);
    let mut participants = BTreeMap::new();
    let doctor_member = Member { user_id: doctor.0, role: ConsultRole::Doctor, display_name: doctor.1 };
    participants.insert(doctor.0, Participant::new(&doctor_member));
    if let Some((user_id, display_name)) = &patient_user {
        participants.insert(*user_id, Participant::new(&Member { user_id: *user_id, role: ConsultRole::Patient, display_name: display_name.clone() }));
    }
    let consult = Consult {
        id: Uuid::new_v4(),
        appointment_id,
        doctor_id: appointment.doctor_id,
        doctor_user_id: doctor.0,
        patient_id: appointment.patient_id,
        state: ConsultState::Waiting,
        opened_by: caller.principal.user_id,
        opened_at: at,
        started_at: None,
        ended_at: None,
        participants,
        recent_messages: Vec::new(),
        message_count: 0,
        record: None,
        appointment_status: None,
        version: 1,
    };
    let plan = Plan {
        draft: EventDraft {
            stream: stream_name(consult.id),
            expected_version: 0,
            topic: consult.topic(tenant),
            event_type: CONSULT_OPENED,
            data: json!(consult),
        },
        audit: AuditRecord::by_caller(caller, "consult.open", "consult", consult.id)
            .patient(Some(consult.patient_id))
            .detail(json!({"appointment_id": appointment_id, "doctor_id": consult.doctor_id})),
        copies: patient_user.iter().map(|(user_id, _)| topics::user_topic(tenant, *user_id)).collect(),
        opened: true,
        change: Change::default(),
        next: consult,
    };
    match commit_plan(pool, tenant_id, &plan, snapshot_every, metrics).await {
        Err(ActorError::Database(sqlx::Error::Database(db))) if db.is_unique_violation() => {
            // Opened at the same moment by another request: that one is the consult.
            let id = session_for_appointment(pool, tenant_id, appointment_id).await?;
            id.map(Opened::Existing).ok_or_else(|| ActorError::Conflict("the consult is being opened; retry".to_owned()))
        }
        Err(error) => Err(error),
        Ok(_) => {
            info!(tenant = %tenant, session_id = %plan.next.id, %appointment_id, "consult opened");
            Ok(Opened::Created(Box::new(plan.next)))
        }
    }
}

/// Who `principal` is in `consult`: the doctor, the patient (the user linked to the patient
/// record, looked up now, so a link made after opening counts), an invited guest, or nobody.
pub async fn member(pool: &PgPool, consult: &Consult, principal: &Principal) -> Result<Option<Member>, sqlx::Error> {
    let user_id = principal.user_id;
    if let Some(p) = consult.participants.get(&user_id) {
        if p.role != ConsultRole::Patient {
            return Ok(Some(Member { user_id, role: p.role, display_name: p.display_name.clone() }));
        }
    }
    if principal.role != Role::Patient {
        return Ok(None);
    }
    let linked: Option<String> = sqlx::query_scalar(
        "SELECT u.display_name FROM patients p JOIN users u ON u.id = p.user_id
         WHERE p.id = $1 AND p.tenant_id = $2 AND p.user_id = $3",
    )
    .bind(consult.patient_id)
    .bind(principal.tenant_id)
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    Ok(linked.map(|display_name| Member { user_id, role: ConsultRole::Patient, display_name }))
}

/// Who a user is in a consult, from the read model (for topic subscriptions, without the actor).
pub async fn member_role(pool: &PgPool, tenant_id: Uuid, session_id: Uuid, user_id: Uuid) -> Result<Option<ConsultRole>, sqlx::Error> {
    let role: Option<Option<String>> = sqlx::query_scalar(
        "SELECT CASE
                    WHEN s.doctor_user_id = $3 THEN 'doctor'
                    WHEN EXISTS (SELECT 1 FROM patients p WHERE p.id = s.patient_id AND p.user_id = $3) THEN 'patient'
                    WHEN EXISTS (SELECT 1 FROM consult_participants cp WHERE cp.session_id = s.id AND cp.user_id = $3 AND cp.role = 'guest') THEN 'guest'
                END
         FROM consult_sessions s WHERE s.id = $1 AND s.tenant_id = $2",
    )
    .bind(session_id)
    .bind(tenant_id)
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    Ok(role.flatten().and_then(|role| serde_json::from_value(Value::String(role)).ok()))
}

/// A user the doctor may invite: an active, non-patient user of the tenant.
pub async fn guest(pool: &PgPool, tenant_id: Uuid, user_id: Uuid) -> Result<Member, ActorError> {
    let user: Option<(String, String)> = sqlx::query_as("SELECT display_name, role FROM users WHERE id = $1 AND tenant_id = $2 AND active")
        .bind(user_id)
        .bind(tenant_id)
        .fetch_optional(pool)
        .await?;
    match user {
        None => Err(invalid("user_id", "no active user with that id in this tenant")),
        Some((_, role)) if role == Role::Patient.as_str() => {
            Err(invalid("user_id", "a guest is a member of staff (an interpreter, a specialist); a patient-role user cannot be invited"))
        }
        Some((display_name, _)) => Ok(Member { user_id, role: ConsultRole::Guest, display_name }),
    }
}

// ---------------------------------------------------------------------------------------------
// Read models

const MESSAGE_COLUMNS: &str = "id, seq, sender_user_id, sender_role, sender_name, body, sent_at";

fn message_from_row(row: &sqlx::postgres::PgRow) -> ChatMessage {
    ChatMessage {
        id: row.get("id"),
        seq: row.get("seq"),
        sender_user_id: row.get("sender_user_id"),
        sender_role: serde_json::from_value(Value::String(row.get("sender_role"))).unwrap_or(ConsultRole::Guest),
        sender_name: row.get("sender_name"),
        body: row.get("body"),
        sent_at: row.get("sent_at"),
    }
}

/// A page of a consult's chat (messages with seq > `after`, oldest first), audited as a read of
/// the patient's data: the audit entry commits before the messages leave the hub.
pub async fn chat_history(pool: &PgPool, caller: &Caller, consult: &Consult, after: i64, limit: i64) -> Result<Vec<ChatMessage>, ActorError> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM consult_messages WHERE session_id = $1 AND tenant_id = $2 AND seq > $3 ORDER BY seq LIMIT $4"
    ))
    .bind(consult.id)
    .bind(caller.principal.tenant_id)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let messages: Vec<ChatMessage> = rows.iter().map(message_from_row).collect();
    let record = AuditRecord::by_caller(caller, "consult.chat_read", "consult", consult.id)
        .patient(Some(consult.patient_id))
        .detail(json!({"session_id": consult.id, "after": after, "messages": messages.len()}));
    audit::append(&mut tx, caller.principal.tenant_id, &record).await?;
    tx.commit().await?;
    Ok(messages)
}

/// The live topic's snapshot: the consult's state, its participants and the recent chat, with the
/// topic's seq, read in one snapshot.
pub async fn topic_snapshot(pool: &PgPool, tenant_id: Uuid, topic: &str, session_id: Uuid) -> Result<(i64, Value), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let seq = store::topic_head(&mut tx, topic).await?;
    let session = sqlx::query(
        "SELECT id, appointment_id, doctor_id, patient_id, state, opened_at, started_at, ended_at, record, message_count
         FROM consult_sessions WHERE id = $1 AND tenant_id = $2",
    )
    .bind(session_id)
    .bind(tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(session) = session else {
        tx.commit().await?;
        return Ok((seq, json!({"seq": seq, "session": null, "participants": [], "messages": []})));
    };
    let participants: Vec<Value> = sqlx::query(
        "SELECT user_id, role, display_name, connection, invited_by, invited_at, first_joined_at, last_joined_at, left_at,
                joins, seconds_in_room, audio, video
         FROM consult_participants WHERE session_id = $1 ORDER BY role, display_name",
    )
    .bind(session_id)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|row| {
        json!({
            "user_id": row.get::<Uuid, _>("user_id"), "role": row.get::<String, _>("role"),
            "display_name": row.get::<String, _>("display_name"), "connection": row.get::<String, _>("connection"),
            "invited_by": row.get::<Option<Uuid>, _>("invited_by"), "invited_at": row.get::<Option<DateTime<Utc>>, _>("invited_at"),
            "first_joined_at": row.get::<Option<DateTime<Utc>>, _>("first_joined_at"),
            "last_joined_at": row.get::<Option<DateTime<Utc>>, _>("last_joined_at"),
            "left_at": row.get::<Option<DateTime<Utc>>, _>("left_at"), "joins": row.get::<i32, _>("joins"),
            "seconds_in_room": row.get::<f64, _>("seconds_in_room"), "audio": row.get::<bool, _>("audio"),
            "video": row.get::<bool, _>("video"),
        })
    })
    .collect();
    let mut messages: Vec<ChatMessage> = sqlx::query(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM consult_messages WHERE session_id = $1 ORDER BY seq DESC LIMIT {RECENT_MESSAGES}"
    ))
    .bind(session_id)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(message_from_row)
    .collect();
    messages.reverse();
    tx.commit().await?;
    let session = json!({
        "id": session.get::<Uuid, _>("id"), "appointment_id": session.get::<Uuid, _>("appointment_id"),
        "doctor_id": session.get::<Uuid, _>("doctor_id"), "patient_id": session.get::<Uuid, _>("patient_id"),
        "state": session.get::<String, _>("state"), "opened_at": session.get::<DateTime<Utc>, _>("opened_at"),
        "started_at": session.get::<Option<DateTime<Utc>>, _>("started_at"), "ended_at": session.get::<Option<DateTime<Utc>>, _>("ended_at"),
        "record": session.get::<Option<Value>, _>("record"), "message_count": session.get::<i64, _>("message_count"),
    });
    Ok((seq, json!({"seq": seq, "session": session, "participants": participants, "messages": messages})))
}

/// How many of the tenants' consults are in each state (for `/metrics`).
pub async fn count_by_state(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT state, count(*) FROM consult_sessions GROUP BY state").fetch_all(pool).await
}

// ---------------------------------------------------------------------------------------------
// The actor

pub struct VideoSessionActor {
    core: Core<Consult>,
    /// For the doctor's schedule actor, when the consult ends.
    supervisor: Addr<TenantSupervisor>,
    config: ConsultConfig,
    /// The media connection this process holds per member (its attachment number).
    attached: HashMap<Uuid, u64>,
}

impl DurableState for Consult {
    fn recover(pool: PgPool, tenant_id: Uuid, id: Uuid) -> impl std::future::Future<Output = Result<Option<Consult>, ActorError>> + Send + 'static {
        async move { recover(&pool, tenant_id, id).await }
    }
}

impl VideoSessionActor {
    pub(crate) fn new(core: Core<Consult>, supervisor: Addr<TenantSupervisor>, config: ConsultConfig) -> Self {
        VideoSessionActor { core, supervisor, config, attached: HashMap::new() }
    }

    /// Plans the event `event_type` for `change`, audited as `action` by `caller` (or the hub).
    fn plan(&self, consult: &Consult, event_type: &'static str, change: Change, audit: AuditRecord, copies: Vec<String>) -> Result<Plan, ActorError> {
        let data = event_data(consult.id, &change);
        let next = apply(Some(consult.clone()), consult.version + 1, event_type, &data).map_err(ActorError::Unavailable)?;
        Ok(Plan {
            draft: EventDraft {
                stream: stream_name(consult.id),
                expected_version: consult.version,
                topic: consult.topic(&self.core.tenant),
                event_type,
                data,
            },
            audit: audit.patient(Some(consult.patient_id)),
            next,
            copies,
            opened: false,
            change,
        })
    }

    /// Commits `plan` and installs its state; answers with `reply(new state)`.
    fn execute<T: 'static>(&mut self, plan: Plan, reply: impl FnOnce(&mut Self, &Consult, &Committed) -> T + 'static) -> Reply<Self, T> {
        let core = &self.core;
        let (pool, tenant_id, every, metrics) = (core.pool.clone(), core.tenant_id, core.snapshot_every, core.metrics.clone());
        let span = info_span!("command", tenant = %core.tenant, actor = ACTOR, session_id = %core.id, event = plan.draft.event_type);
        let commit = async move {
            let committed = commit_plan(&pool, tenant_id, &plan, every, &metrics).await?;
            Ok((plan.next, committed))
        }
        .instrument(span);
        durable::commit_then_install(self, commit, move |actor: &mut Self, next: Consult, committed| {
            let answer = reply(actor, &next, committed);
            actor.core.state = Some(next);
            answer
        })
    }

    fn caller_audit(caller: &Caller, action: &str, session_id: Uuid, detail: Value) -> AuditRecord {
        AuditRecord::by_caller(caller, action, "consult", session_id).detail(detail)
    }
}

impl Actor for VideoSessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        durable::start(self, ctx);
        let every = (self.config.reconnect_grace / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
        ctx.run_interval(every, |actor, ctx| {
            let due = actor.core.state.as_ref().is_some_and(|consult| {
                decide_sweep(consult, &actor.attached, actor.config.reconnect_grace, Utc::now()).is_some()
            });
            if due {
                ctx.notify(Sweep);
            }
        });
    }
}

impl actix::Supervised for VideoSessionActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        durable::restarting(self);
    }
}

impl DurableActor for VideoSessionActor {
    type State = Consult;
    const KIND: &'static str = ACTOR;

    fn core(&self) -> &Core<Consult> {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Core<Consult> {
        &mut self.core
    }

    /// A conflict on the stream means another process wrote this consult: reload.
    fn commit_failed(&mut self, error: &ActorError, ctx: &mut Context<Self>) {
        if matches!(error, ActorError::Conflict(_)) {
            warn!(tenant = %self.core.tenant, actor = ACTOR, session_id = %self.core.id, "consult changed elsewhere; reloading");
            durable::reload(self, ctx);
        }
    }
}

/// The consult as it is now.
#[derive(Message)]
#[rtype(result = "Result<Consult, ActorError>")]
pub struct GetConsult;

impl Handler<GetConsult> for VideoSessionActor {
    type Result = Result<Consult, ActorError>;
    fn handle(&mut self, _msg: GetConsult, _ctx: &mut Context<Self>) -> Self::Result {
        self.current().cloned()
    }
}

/// A member's media connection joined the room; `attachment` names that connection (see the
/// module doc).
#[derive(Message)]
#[rtype(result = "Result<Consult, ActorError>")]
pub struct Join {
    pub caller: Caller,
    pub member: Member,
    pub attachment: u64,
}

impl Handler<Join> for VideoSessionActor {
    type Result = Reply<Self, Consult>;

    fn handle(&mut self, msg: Join, _ctx: &mut Context<Self>) -> Self::Result {
        let planned = (|| {
            let consult = self.current()?;
            let change = decide_join(consult, &msg.member, Utc::now().trunc_subsecs(6))?;
            let audit = Self::caller_audit(&msg.caller, "consult.join", consult.id, json!({"role": msg.member.role, "attachment": msg.attachment}));
            self.plan(consult, CONSULT_PARTICIPANT_JOINED, change, audit, Vec::new())
        })();
        let (user_id, attachment) = (msg.member.user_id, msg.attachment);
        match planned {
            Ok(plan) => self.execute(plan, move |actor, next, _| {
                actor.attached.insert(user_id, attachment);
                next.clone()
            }),
            Err(error) => durable::refuse(self, error),
        }
    }
}

/// A member's media connection left (`dropped`: the socket went away without `leave`). Ignored
/// when that connection is no longer the member's current one.
#[derive(Message)]
#[rtype(result = "Result<Option<Consult>, ActorError>")]
pub struct Leave {
    pub caller: Caller,
    pub attachment: u64,
    pub dropped: bool,
}

impl Handler<Leave> for VideoSessionActor {
    type Result = Reply<Self, Option<Consult>>;

    fn handle(&mut self, msg: Leave, _ctx: &mut Context<Self>) -> Self::Result {
        let user_id = msg.caller.principal.user_id;
        if self.attached.get(&user_id) != Some(&msg.attachment) {
            return durable::answer(None);
        }
        let planned = (|| {
            let consult = self.current()?;
            let Some(change) = decide_leave(consult, user_id, msg.dropped, Utc::now().trunc_subsecs(6)) else { return Ok(None) };
            let audit = Self::caller_audit(&msg.caller, "consult.leave", consult.id, json!({"dropped": msg.dropped}));
            self.plan(consult, CONSULT_PARTICIPANT_LEFT, change, audit, Vec::new()).map(Some)
        })();
        match planned {
            Ok(Some(plan)) => self.execute(plan, move |actor, next, _| {
                actor.attached.remove(&user_id);
                Some(next.clone())
            }),
            Ok(None) => {
                self.attached.remove(&user_id);
                durable::answer(None)
            }
            Err(error) => durable::refuse(self, error),
        }
    }
}

/// Moves the next member whose connection is gone (see [`decide_sweep`]); runs again while
/// there are more.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
struct Sweep;

impl Handler<Sweep> for VideoSessionActor {
    type Result = Reply<Self, ()>;

    fn handle(&mut self, _msg: Sweep, _ctx: &mut Context<Self>) -> Self::Result {
        let planned = (|| {
            let consult = self.current()?;
            let Some(change) = decide_sweep(consult, &self.attached, self.config.reconnect_grace, Utc::now().trunc_subsecs(6)) else {
                return Ok(None);
            };
            let participant = change.participant.as_ref().expect("a sweep moves one participant");
            let audit = AuditRecord::by_system("consult.leave", "consult", consult.id)
                .detail(json!({"user_id": participant.user_id, "connection": participant.connection}));
            self.plan(consult, CONSULT_PARTICIPANT_LEFT, change, audit, Vec::new()).map(Some)
        })();
        match planned {
            Ok(Some(plan)) => self.execute(plan, |_, next, _| {
                let _ = next;
            }),
            Ok(None) => durable::answer(()),
            Err(error) => durable::refuse(self, error),
        }
    }
}

/// A member turns their microphone (`audio`) or camera (`video`) on or off.
#[derive(Message)]
#[rtype(result = "Result<Consult, ActorError>")]
pub struct Mute {
    pub caller: Caller,
    pub audio: bool,
    pub video: bool,
}

impl Handler<Mute> for VideoSessionActor {
    type Result = Reply<Self, Consult>;

    fn handle(&mut self, msg: Mute, _ctx: &mut Context<Self>) -> Self::Result {
        let planned = (|| {
            let consult = self.current()?;
            let Some(change) = decide_mute(consult, msg.caller.principal.user_id, msg.audio, msg.video)? else { return Ok(None) };
            let audit = Self::caller_audit(&msg.caller, "consult.mute", consult.id, json!({"audio": msg.audio, "video": msg.video}));
            self.plan(consult, CONSULT_PARTICIPANT_MUTED, change, audit, Vec::new()).map(Some)
        })();
        match planned {
            Ok(Some(plan)) => self.execute(plan, |_, next, _| next.clone()),
            Ok(None) => match self.current() {
                Ok(consult) => durable::answer(consult.clone()),
                Err(error) => durable::refuse(self, error),
            },
            Err(error) => durable::refuse(self, error),
        }
    }
}

/// The doctor invites a guest (resolved with [`guest`]). Inviting someone again changes nothing.
#[derive(Message)]
#[rtype(result = "Result<Participant, ActorError>")]
pub struct Invite {
    pub caller: Caller,
    pub guest: Member,
}

impl Handler<Invite> for VideoSessionActor {
    type Result = Reply<Self, Participant>;

    fn handle(&mut self, msg: Invite, _ctx: &mut Context<Self>) -> Self::Result {
        let guest_id = msg.guest.user_id;
        let planned = (|| {
            let consult = self.current()?;
            let Some(change) = decide_invite(consult, &msg.guest, msg.caller.principal.user_id, Utc::now().trunc_subsecs(6))? else {
                return Ok(Err(consult.participants[&guest_id].clone()));
            };
            let audit = Self::caller_audit(&msg.caller, "consult.invite", consult.id, json!({"guest_user_id": guest_id}));
            let copies = vec![topics::user_topic(&self.core.tenant, guest_id)];
            self.plan(consult, CONSULT_GUEST_INVITED, change, audit, copies).map(Ok)
        })();
        match planned {
            Ok(Ok(plan)) => self.execute(plan, move |_, next, _| next.participants[&guest_id].clone()),
            Ok(Err(existing)) => durable::answer(existing),
            Err(error) => durable::refuse(self, error),
        }
    }
}

/// A member posts a chat message; answers with the message and its seq on the consult's topic.
#[derive(Message)]
#[rtype(result = "Result<(ChatMessage, i64), ActorError>")]
pub struct PostMessage {
    pub caller: Caller,
    pub sender: Member,
    pub body: MessageBody,
}

impl Handler<PostMessage> for VideoSessionActor {
    type Result = Reply<Self, (ChatMessage, i64)>;

    fn handle(&mut self, msg: PostMessage, _ctx: &mut Context<Self>) -> Self::Result {
        let planned = (|| {
            let consult = self.current()?;
            let change = decide_message(consult, &msg.sender, &msg.body, Uuid::new_v4(), Utc::now().trunc_subsecs(6))?;
            let message = change.message.as_ref().expect("a message");
            // The audit entry names the message, not its words: the chat itself is in the record.
            let audit = Self::caller_audit(&msg.caller, "consult.message", consult.id, json!({
                "session_id": consult.id, "message_id": message.id, "seq": message.seq, "characters": message.body.chars().count(),
            }));
            self.plan(consult, CONSULT_MESSAGE, change, audit, Vec::new())
        })();
        match planned {
            Ok(plan) => self.execute(plan, |_, next, committed| {
                (next.recent_messages.last().cloned().expect("the message just posted"), committed.topic_seq)
            }),
            Err(error) => durable::refuse(self, error),
        }
    }
}

/// The doctor ends the consult with its record: the appointment is completed through the doctor's
/// schedule actor, then the record and everyone's leaving are committed here.
#[derive(Message)]
#[rtype(result = "Result<Consult, ActorError>")]
pub struct End {
    pub caller: Caller,
    pub record: ConsultRecord,
}

impl Handler<End> for VideoSessionActor {
    type Result = Reply<Self, Consult>;

    fn handle(&mut self, msg: End, _ctx: &mut Context<Self>) -> Self::Result {
        let consult = match self.current().and_then(|consult| consult.refuse_if_ended().map(|()| consult.clone())) {
            Ok(consult) => consult,
            Err(error) => return durable::refuse(self, error),
        };
        if msg.caller.principal.user_id != consult.doctor_user_id {
            return durable::refuse(self, ActorError::Forbidden("only the consult's doctor ends it".to_owned()));
        }
        let core = &self.core;
        let (pool, tenant_id, tenant, every, metrics) = (core.pool.clone(), core.tenant_id, core.tenant.clone(), core.snapshot_every, core.metrics.clone());
        let supervisor = self.supervisor.clone();
        // Planned after the appointment is completed: the plan needs its outcome. The actor holds
        // its mailbox meanwhile, so the consult cannot change under it.
        let plan_end = {
            let (consult, caller, record) = (consult.clone(), msg.caller.clone(), msg.record.clone());
            let tenant = tenant.clone();
            move |appointment_status: &str| -> Result<Plan, ActorError> {
                let change = decide_end(&consult, &record, appointment_status, Utc::now().trunc_subsecs(6))?;
                let data = event_data(consult.id, &change);
                let next = apply(Some(consult.clone()), consult.version + 1, CONSULT_ENDED, &data).map_err(ActorError::Unavailable)?;
                let patient_feeds = next.participants.values().filter(|p| p.role == ConsultRole::Patient).map(|p| topics::user_topic(&tenant, p.user_id));
                let mut copies: Vec<String> = patient_feeds.collect();
                copies.sort();
                Ok(Plan {
                    draft: EventDraft {
                        stream: stream_name(consult.id),
                        expected_version: consult.version,
                        topic: consult.topic(&tenant),
                        event_type: CONSULT_ENDED,
                        data,
                    },
                    audit: AuditRecord::by_caller(&caller, "consult.end", "consult", consult.id)
                        .patient(Some(consult.patient_id))
                        .detail(json!({"appointment_id": consult.appointment_id, "appointment_status": appointment_status})),
                    next,
                    copies,
                    opened: false,
                    change,
                })
            }
        };
        let span = info_span!("command", tenant = %tenant, actor = ACTOR, session_id = %consult.id, event = CONSULT_ENDED);
        let commit = async move {
            let schedule = supervisor.send(ScheduleAddr(consult.doctor_id)).await??;
            let completed = schedule
                .send(CompleteAppointment {
                    caller: msg.caller.clone(),
                    appointment_id: consult.appointment_id,
                    outcome: json!({"consult_session_id": consult.id}),
                })
                .await?;
            let appointment_status = match completed {
                Ok(_) => "completed".to_owned(),
                // Already completed (a retried end), cancelled or missed: the record is kept all the same.
                Err(ActorError::Conflict(_)) => schedule::get_appointment(&pool, tenant_id, consult.appointment_id)
                    .await?
                    .map(|appointment| appointment.status)
                    .ok_or(ActorError::NotFound("appointment"))?,
                Err(error) => return Err(error),
            };
            let plan = plan_end(&appointment_status)?;
            let committed = commit_plan(&pool, tenant_id, &plan, every, &metrics).await?;
            info!(tenant = %tenant, session_id = %consult.id, %appointment_status, "consult ended");
            Ok((plan.next, committed))
        }
        .instrument(span);
        durable::commit_then_install(self, commit, |actor: &mut Self, next: Consult, _| {
            actor.attached.clear();
            actor.core.state = Some(next.clone());
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn member(n: u128, role: ConsultRole) -> Member {
        Member { user_id: Uuid::from_u128(n), role, display_name: format!("user {n}") }
    }

    fn consult() -> Consult {
        let doctor = member(1, ConsultRole::Doctor);
        let patient = member(2, ConsultRole::Patient);
        Consult {
            id: Uuid::from_u128(100),
            appointment_id: Uuid::from_u128(101),
            doctor_id: Uuid::from_u128(102),
            doctor_user_id: doctor.user_id,
            patient_id: Uuid::from_u128(103),
            state: ConsultState::Waiting,
            opened_by: doctor.user_id,
            opened_at: at(0),
            started_at: None,
            ended_at: None,
            participants: [(doctor.user_id, Participant::new(&doctor)), (patient.user_id, Participant::new(&patient))].into(),
            recent_messages: Vec::new(),
            message_count: 0,
            record: None,
            appointment_status: None,
            version: 1,
        }
    }

    /// Decides and applies, as the actor does.
    fn commit(consult: Consult, event_type: &str, change: Change) -> Consult {
        let version = consult.version + 1;
        apply(Some(consult), version, event_type, &event_data(Uuid::from_u128(100), &change)).unwrap()
    }

    #[test]
    fn a_consult_starts_when_the_doctor_is_in_the_room_with_the_patient() {
        let c = consult();
        let patient_in = commit(c.clone(), CONSULT_PARTICIPANT_JOINED, decide_join(&c, &member(2, ConsultRole::Patient), at(10)).unwrap());
        assert_eq!(patient_in.state, ConsultState::Waiting, "the patient waits for the doctor");
        let doctor_in = commit(patient_in.clone(), CONSULT_PARTICIPANT_JOINED, decide_join(&patient_in, &member(1, ConsultRole::Doctor), at(20)).unwrap());
        assert_eq!(doctor_in.state, ConsultState::InProgress);
        assert_eq!(doctor_in.started_at, Some(at(20)));
        assert_eq!(doctor_in.participants[&Uuid::from_u128(2)].joins, 1);
        // The patient dropping out does not put the consult back to waiting.
        let dropped = commit(doctor_in.clone(), CONSULT_PARTICIPANT_LEFT, decide_leave(&doctor_in, Uuid::from_u128(2), true, at(80)).unwrap());
        assert_eq!(dropped.state, ConsultState::InProgress);
        let patient = &dropped.participants[&Uuid::from_u128(2)];
        assert_eq!(patient.connection, Presence::Reconnecting);
        assert_eq!(patient.seconds_in_room, 70.0);
    }

    #[test]
    fn a_dropped_member_reconnects_or_is_left_after_the_grace_period() {
        let c = consult();
        let joined = commit(c.clone(), CONSULT_PARTICIPANT_JOINED, decide_join(&c, &member(2, ConsultRole::Patient), at(0)).unwrap());
        let mut attached = HashMap::from([(Uuid::from_u128(2), 7)]);
        let grace = Duration::from_secs(30);
        assert!(decide_sweep(&joined, &attached, grace, at(5)).is_none(), "an attached member stays connected");
        attached.clear();
        // Not attached (the hub restarted): reconnecting, then left once the grace is over.
        let change = decide_sweep(&joined, &attached, grace, at(10)).unwrap();
        let reconnecting = commit(joined, CONSULT_PARTICIPANT_LEFT, change);
        assert_eq!(reconnecting.participants[&Uuid::from_u128(2)].connection, Presence::Reconnecting);
        assert!(decide_sweep(&reconnecting, &attached, grace, at(39)).is_none());
        let change = decide_sweep(&reconnecting, &attached, grace, at(40)).unwrap();
        let left = commit(reconnecting.clone(), CONSULT_PARTICIPANT_LEFT, change);
        assert_eq!(left.participants[&Uuid::from_u128(2)].connection, Presence::Left);
        assert_eq!(left.participants[&Uuid::from_u128(2)].seconds_in_room, 10.0);
        // Rejoining within the grace: connected again, a second join.
        let back = commit(reconnecting.clone(), CONSULT_PARTICIPANT_JOINED, decide_join(&reconnecting, &member(2, ConsultRole::Patient), at(20)).unwrap());
        let patient = &back.participants[&Uuid::from_u128(2)];
        assert_eq!((patient.connection, patient.joins, patient.left_at), (Presence::Connected, 2, None));
    }

    #[test]
    fn guests_are_invited_once_and_the_doctor_and_patient_cannot_be() {
        let c = consult();
        let guest = member(3, ConsultRole::Guest);
        let invited = commit(c.clone(), CONSULT_GUEST_INVITED, decide_invite(&c, &guest, Uuid::from_u128(1), at(1)).unwrap().unwrap());
        assert_eq!(invited.participants[&guest.user_id].connection, Presence::Invited);
        assert_eq!(invited.participants[&guest.user_id].invited_by, Some(Uuid::from_u128(1)));
        assert!(decide_invite(&invited, &guest, Uuid::from_u128(1), at(2)).unwrap().is_none(), "inviting again changes nothing");
        let as_guest = Member { role: ConsultRole::Guest, ..member(2, ConsultRole::Patient) };
        assert!(matches!(decide_invite(&invited, &as_guest, Uuid::from_u128(1), at(2)), Err(ActorError::Invalid { field: "user_id", .. })));
    }

    #[test]
    fn chat_keeps_the_latest_messages_and_counts_them_all() {
        let mut c = consult();
        let sender = member(1, ConsultRole::Doctor);
        for n in 0..(RECENT_MESSAGES + 5) {
            let body = MessageBody::parse(&format!("  message {n} ")).unwrap();
            let change = decide_message(&c, &sender, &body, Uuid::new_v4(), at(n as i64)).unwrap();
            c = commit(c, CONSULT_MESSAGE, change);
        }
        assert_eq!(c.message_count, RECENT_MESSAGES as i64 + 5);
        assert_eq!(c.recent_messages.len(), RECENT_MESSAGES);
        assert_eq!(c.recent_messages[0].body, "message 5");
        assert_eq!(c.recent_messages.last().unwrap().seq, RECENT_MESSAGES as i64 + 5);
        assert!(MessageBody::parse("   ").is_err());
        assert!(MessageBody::parse(&"x".repeat(MAX_MESSAGE_CHARS + 1)).is_err());
    }

    #[test]
    fn ending_takes_everyone_out_and_nothing_happens_after() {
        let c = consult();
        let joined = commit(c.clone(), CONSULT_PARTICIPANT_JOINED, decide_join(&c, &member(1, ConsultRole::Doctor), at(0)).unwrap());
        let record = ConsultRecord::new("cough", "viral bronchitis", "rest, fluids", Some("  ")).unwrap();
        assert_eq!(record.follow_up, None);
        let ended = commit(joined.clone(), CONSULT_ENDED, decide_end(&joined, &record, "completed", at(600)).unwrap());
        assert_eq!(ended.state, ConsultState::Ended);
        assert_eq!(ended.record.as_ref(), Some(&record));
        assert_eq!(ended.appointment_status.as_deref(), Some("completed"));
        let doctor = &ended.participants[&Uuid::from_u128(1)];
        assert_eq!((doctor.connection, doctor.seconds_in_room), (Presence::Left, 600.0));
        assert!(decide_join(&ended, &member(2, ConsultRole::Patient), at(601)).is_err());
        let body = MessageBody::parse("hello?").unwrap();
        assert!(decide_message(&ended, &member(2, ConsultRole::Patient), &body, Uuid::nil(), at(601)).is_err());
        assert!(decide_end(&ended, &record, "completed", at(602)).is_err());
        assert!(ConsultRecord::new("", "a", "p", None).is_err());
    }

    #[test]
    fn events_replay_to_the_same_consult() {
        let c = consult();
        let mut log = vec![(CONSULT_OPENED, json!(c))];
        let mut state = c.clone();
        let joined = decide_join(&state, &member(1, ConsultRole::Doctor), at(1)).unwrap();
        log.push((CONSULT_PARTICIPANT_JOINED, event_data(c.id, &joined)));
        state = commit(state, CONSULT_PARTICIPANT_JOINED, joined);
        let muted = decide_mute(&state, Uuid::from_u128(1), false, true).unwrap().unwrap();
        log.push((CONSULT_PARTICIPANT_MUTED, event_data(c.id, &muted)));
        state = commit(state, CONSULT_PARTICIPANT_MUTED, muted);
        let body = MessageBody::parse("hello").unwrap();
        let message = decide_message(&state, &member(1, ConsultRole::Doctor), &body, Uuid::from_u128(9), at(2)).unwrap();
        log.push((CONSULT_MESSAGE, event_data(c.id, &message)));
        state = commit(state, CONSULT_MESSAGE, message);
        let mut replayed = None;
        for (seq, (kind, data)) in log.iter().enumerate() {
            replayed = Some(apply(replayed, seq as i64 + 1, kind, data).unwrap());
        }
        assert_eq!(replayed.unwrap(), state);
        assert!(!state.participants[&Uuid::from_u128(1)].audio);
        assert!(apply(Some(state), 9, "consult.unknown", &json!({})).is_err());
    }
}
