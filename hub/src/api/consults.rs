//! Video consults over HTTP: open (or find) the consult of a video appointment, read it, invite a
//! guest, the chat (history and posting), the media stats and ending it with the consult record.
//! Media and presence go over the WebSocket (see `consult_signaling`); this is everything else.
//!
//! Access: only the consult's members, who are the appointment's doctor, its patient (the
//! patient-role user linked to the patient record) and the guests the doctor invited. Anyone else
//! is refused like any other resource: a patient is told "not found" (as for another patient's
//! appointment), staff are told 403, and another tenant's consult is simply not found. Refusals
//! are audited. Every answer that shows the consult (its record, its chat) is an audited read of
//! the patient's data.

use actix::Addr;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use medhub_actors::audit::{self, AuditRecord, Outcome};
use medhub_actors::consult::{
    self, Consult, ConsultRecord, ConsultRole, End, GetConsult, Invite, Member, MessageBody, Opened, PostMessage, VideoSessionActor,
};
use medhub_actors::schedule;
use medhub_actors::tenant::OpenConsult;
use medhub_actors::{ActorError, Caller, Role, TenantSlug};

use super::error::ApiError;
use super::extract::{path_id, Authenticated, Body};
use crate::server::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/appointments/{id}/consult", web::post().to(open))
        .route("/api/appointments/{id}/consult", web::get().to(get_for_appointment))
        .route("/api/consults/{id}", web::get().to(get))
        .route("/api/consults/{id}/guests", web::post().to(invite))
        .route("/api/consults/{id}/messages", web::get().to(chat_history))
        .route("/api/consults/{id}/messages", web::post().to(post_message))
        .route("/api/consults/{id}/stats", web::get().to(stats))
        .route("/api/consults/{id}/end", web::post().to(end));
}

/// Records a refusal in the audit trail and returns it.
async fn refused(state: &AppState, caller: &Caller, action: &str, session_id: Uuid, patient_id: Uuid, refusal: ApiError) -> ApiError {
    let record = AuditRecord::by_caller(caller, action, "consult", session_id)
        .patient(Some(patient_id))
        .outcome(Outcome::Denied)
        .detail(json!({"reason": refusal.to_string()}));
    match audit::record(&state.pool, caller.principal.tenant_id, &record).await {
        Ok(_) => refusal,
        Err(e) => e.into(),
    }
}

/// How a non-member is refused: a patient learns nothing (not found), staff are forbidden.
fn not_a_member(caller: &Authenticated, doing: &str) -> ApiError {
    if caller.principal().role == Role::Patient {
        ApiError::not_found("consult")
    } else {
        ApiError::Forbidden(format!("only the consult's doctor, its patient and invited guests may {doing}"))
    }
}

/// The consult's actor, its state, and who the caller is in it; refused (and audited) for anyone
/// else.
async fn consult_for(
    state: &AppState,
    caller: &Authenticated,
    session_id: Uuid,
    action: &str,
    doing: &str,
) -> Result<(Addr<VideoSessionActor>, Consult, Member), ApiError> {
    let principal = caller.principal();
    let actor = match state.runtime.consult(principal.tenant_id, &principal.tenant_slug, session_id).await {
        Err(ActorError::NotFound(_)) => return Err(ApiError::not_found("consult")),
        other => other?,
    };
    let consult = actor.send(GetConsult).await??;
    match consult::member(&state.pool, &consult, principal).await? {
        Some(member) => Ok((actor, consult, member)),
        None => Err(refused(state, &caller.0, action, session_id, consult.patient_id, not_a_member(caller, doing)).await),
    }
}

/// Only the doctor may do this.
async fn require_doctor(state: &AppState, caller: &Authenticated, consult: &Consult, member: &Member, action: &str, doing: &str) -> Result<(), ApiError> {
    if member.role == ConsultRole::Doctor {
        return Ok(());
    }
    let refusal = ApiError::Forbidden(format!("only the consult's doctor may {doing}"));
    Err(refused(state, &caller.0, action, consult.id, consult.patient_id, refusal).await)
}

/// The consult as members see it (the chat is read separately), naming the caller's role.
fn consult_json(tenant: &TenantSlug, consult: &Consult, member: &Member) -> Value {
    json!({
        "id": consult.id, "topic": consult.topic(tenant), "appointment_id": consult.appointment_id,
        "doctor_id": consult.doctor_id, "patient_id": consult.patient_id, "state": consult.state,
        "opened_at": consult.opened_at, "started_at": consult.started_at, "ended_at": consult.ended_at,
        "participants": consult.participants.values().collect::<Vec<_>>(), "message_count": consult.message_count,
        "record": consult.record, "appointment_status": consult.appointment_status, "version": consult.version,
        "you": {"user_id": member.user_id, "role": member.role},
    })
}

/// Shows the consult, auditing the read (it names the patient and may hold their record).
async fn show(state: &AppState, caller: &Authenticated, consult: &Consult, member: &Member, status: actix_web::http::StatusCode) -> Result<HttpResponse, ApiError> {
    let record = AuditRecord::by_caller(&caller.0, "consult.read", "consult", consult.id)
        .patient(Some(consult.patient_id))
        .detail(json!({"appointment_id": consult.appointment_id, "state": consult.state}));
    audit::record(&state.pool, caller.principal().tenant_id, &record).await?;
    Ok(HttpResponse::build(status).insert_header(("Cache-Control", "no-store")).json(consult_json(&caller.principal().tenant_slug, consult, member)))
}

/// `POST /api/appointments/{id}/consult`: the appointment's doctor opens its consult (201), or
/// gets the one already open (200).
async fn open(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let appointment_id = path_id(&path, "appointment")?;
    let principal = caller.principal();
    let appointment = schedule::get_appointment(&state.pool, principal.tenant_id, appointment_id).await?.ok_or_else(|| ApiError::not_found("appointment"))?;
    let doctor_user: Option<Uuid> = sqlx::query_scalar("SELECT user_id FROM doctors WHERE id = $1").bind(appointment.doctor_id).fetch_optional(&state.pool).await?;
    if doctor_user != Some(principal.user_id) {
        let refusal = if principal.role == Role::Patient {
            ApiError::not_found("appointment")
        } else {
            ApiError::Forbidden("only the appointment's doctor opens its consult".to_owned())
        };
        let record = AuditRecord::by_caller(&caller.0, "consult.open", "appointment", appointment_id)
            .patient(Some(appointment.patient_id))
            .outcome(Outcome::Denied)
            .detail(json!({"reason": refusal.to_string()}));
        audit::record(&state.pool, principal.tenant_id, &record).await?;
        return Err(refusal);
    }
    let supervisor = state.runtime.tenant(principal.tenant_id, &principal.tenant_slug)?;
    let opened = supervisor.send(OpenConsult { caller: caller.0.clone(), appointment_id }).await??;
    let (session_id, status) = match opened {
        Opened::Created(consult) => (consult.id, actix_web::http::StatusCode::CREATED),
        Opened::Existing(id) => (id, actix_web::http::StatusCode::OK),
    };
    let (_, consult, member) = consult_for(&state, &caller, session_id, "consult.read", "read this consult").await?;
    show(&state, &caller, &consult, &member, status).await
}

/// `GET /api/appointments/{id}/consult`: the appointment's consult, once its doctor opened it.
async fn get_for_appointment(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let appointment_id = path_id(&path, "appointment")?;
    let principal = caller.principal();
    let session_id = consult::session_for_appointment(&state.pool, principal.tenant_id, appointment_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no consult for that appointment (its doctor opens it)".to_owned()))?;
    let (_, consult, member) = consult_for(&state, &caller, session_id, "consult.read", "read this consult").await?;
    show(&state, &caller, &consult, &member, actix_web::http::StatusCode::OK).await
}

async fn get(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let session_id = path_id(&path, "consult")?;
    let (_, consult, member) = consult_for(&state, &caller, session_id, "consult.read", "read this consult").await?;
    show(&state, &caller, &consult, &member, actix_web::http::StatusCode::OK).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    user_id: Uuid,
}

/// `POST /api/consults/{id}/guests`: the doctor invites a member of staff of the tenant.
async fn invite(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    let session_id = path_id(&path, "consult")?;
    let (actor, consult, member) = consult_for(&state, &caller, session_id, "consult.invite", "invite guests").await?;
    require_doctor(&state, &caller, &consult, &member, "consult.invite", "invite guests").await?;
    let body: InviteBody = body.parse()?;
    let guest = consult::guest(&state.pool, caller.principal().tenant_id, body.user_id).await?;
    let participant = actor.send(Invite { caller: caller.0.clone(), guest }).await??;
    Ok(HttpResponse::Created().json(participant))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

/// `GET /api/consults/{id}/messages?after=&limit=`: the chat, oldest first (an audited read).
async fn chat_history(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, query: web::Query<HistoryQuery>) -> Result<HttpResponse, ApiError> {
    let session_id = path_id(&path, "consult")?;
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(100);
    if after < 0 {
        return Err(ApiError::invalid("after", "after is a message seq, 0 or more"));
    }
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 500"));
    }
    let (_, consult, _) = consult_for(&state, &caller, session_id, "consult.chat_read", "read this consult's chat").await?;
    let messages = consult::chat_history(&state.pool, &caller.0, &consult, after, limit).await?;
    let next_after = (messages.len() as i64 == limit).then(|| messages.last().map(|m| m.seq)).flatten();
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({"session_id": session_id, "messages": messages, "next_after": next_after})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBodyJson {
    body: String,
}

/// `POST /api/consults/{id}/messages`: a member posts to the chat; everyone on the consult's topic
/// gets it live.
async fn post_message(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    let session_id = path_id(&path, "consult")?;
    let (actor, _, member) = consult_for(&state, &caller, session_id, "consult.message", "post to this consult's chat").await?;
    let body: MessageBodyJson = body.parse()?;
    let text = MessageBody::parse(&body.body)?;
    let (message, seq) = actor.send(PostMessage { caller: caller.0.clone(), sender: member, body: text }).await??;
    Ok(HttpResponse::Created().json(json!({"message": message, "seq": seq})))
}

/// `GET /api/consults/{id}/stats`: each participant's presence and media statistics (the doctor).
async fn stats(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let session_id = path_id(&path, "consult")?;
    let (_, consult, member) = consult_for(&state, &caller, session_id, "consult.stats", "read this consult's statistics").await?;
    require_doctor(&state, &caller, &consult, &member, "consult.stats", "read the consult's statistics").await?;
    let media = state.consult_rooms.room_stats(session_id);
    let participants: Vec<Value> = consult
        .participants
        .values()
        .map(|p| {
            json!({
                "user_id": p.user_id, "role": p.role, "display_name": p.display_name, "connection": p.connection,
                "audio": p.audio, "video": p.video, "joins": p.joins, "seconds_in_room": p.seconds_in_room,
                "media": media.iter().find(|stats| stats.participant == p.user_id),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"session_id": session_id, "state": consult.state, "participants": participants})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndBody {
    chief_complaint: String,
    assessment: String,
    plan: String,
    #[serde(default)]
    follow_up: Option<String>,
}

/// `POST /api/consults/{id}/end`: the doctor ends the consult with its record; the appointment is
/// completed and every peer connection of the room is closed.
async fn end(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    let session_id = path_id(&path, "consult")?;
    let (actor, consult, member) = consult_for(&state, &caller, session_id, "consult.end", "end this consult").await?;
    require_doctor(&state, &caller, &consult, &member, "consult.end", "end the consult").await?;
    let body: EndBody = body.parse()?;
    let record = ConsultRecord::new(&body.chief_complaint, &body.assessment, &body.plan, body.follow_up.as_deref())?;
    let ended = actor.send(End { caller: caller.0.clone(), record }).await??;
    state.consult_rooms.close_room(session_id).await;
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(consult_json(&caller.principal().tenant_slug, &ended, &member)))
}
