//! Consult rooms: the hub's side of video-consult media. It implements realtime's
//! [`ConsultSignaling`]: who may join a consult's room (its doctor, its patient, invited guests;
//! anyone else is refused here and never reaches media), the SFU peer each joined connection holds,
//! the relay of answers and ICE candidates to it and of its offers, candidates and state back to
//! that connection, and the presence the consult's `VideoSession` actor records (joined, left,
//! reconnecting when a socket drops without `leave`).
//!
//! One peer per member per room: joining from a second connection closes the first one's peer
//! (that connection is told `signal {kind: state, state: closed}`). Each join gets an attachment
//! number that the actor keeps, so the first connection's late leave changes nothing.
//!
//! The SFU may be missing (its sockets could not be opened): then joins are refused `unavailable`
//! after the membership check, and the rest of the hub, consult chat included, works on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::Addr;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde_json::{json, Value};
use sqlx::PgPool;
use tracing::{info, warn};
use uuid::Uuid;

use medhub_actors::audit::{self, AuditRecord, Outcome};
use medhub_actors::consult::{self, ConsultState, GetConsult, Join, Leave, Mute, VideoSessionActor};
use medhub_actors::runtime::ActorRuntime;
use medhub_actors::topics::Topic;
use medhub_actors::{ActorError, Caller, Principal};
use medhub_media::{ParticipantStats, Peer, SignalIn, SignalOut, Sfu};
use medhub_realtime::{ConsultSignaling, JoinedRoom, SignalOutbox, SignalingFuture, SignalingPeer, SignalingRefusal};

/// The hub's consult metrics (the SFU registers its own media metrics).
#[derive(Clone)]
pub struct ConsultMetrics {
    /// Consults by state, all tenants (refreshed from the database on every scrape).
    pub consults: IntGaugeVec,
    /// Media connections this hub holds in consult rooms.
    pub peers: IntGauge,
    /// Joins by outcome: `joined`, `refused`, `failed`.
    pub joins: IntCounterVec,
}

impl ConsultMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<ConsultMetrics> {
        let consults = IntGaugeVec::new(Opts::new("medhub_consults", "Video consults by state"), &["state"])?;
        let peers = IntGauge::new("medhub_consult_peers", "Media connections held in consult rooms by this hub")?;
        let joins = IntCounterVec::new(Opts::new("medhub_consult_joins_total", "Consult room joins by outcome"), &["outcome"])?;
        registry.register(Box::new(consults.clone()))?;
        registry.register(Box::new(peers.clone()))?;
        registry.register(Box::new(joins.clone()))?;
        Ok(ConsultMetrics { consults, peers, joins })
    }

    /// Refreshes the consults-by-state gauge from the database.
    pub async fn refresh(&self, pool: &PgPool) {
        match consult::count_by_state(pool).await {
            Ok(counts) => {
                for state in ConsultState::ALL {
                    let count = counts.iter().find(|(name, _)| name == state.as_str()).map_or(0, |(_, count)| *count);
                    self.consults.with_label_values(&[state.as_str()]).set(count);
                }
            }
            Err(e) => warn!(error = %e, "cannot count consults for the metrics"),
        }
    }
}

/// A member's peer in a room; taken (and left) by whoever ends it first.
type PeerSlot = Arc<tokio::sync::Mutex<Option<Peer>>>;

struct Attachment {
    number: u64,
    peer: PeerSlot,
}

/// Every consult room this hub carries media for (cheap to clone: every clone is the same rooms).
#[derive(Clone)]
pub struct ConsultRooms {
    runtime: Arc<ActorRuntime>,
    pool: PgPool,
    sfu: Option<Sfu>,
    /// The current attachment of each (room, member).
    attachments: Arc<Mutex<HashMap<(Uuid, Uuid), Attachment>>>,
    next_attachment: Arc<AtomicU64>,
    metrics: ConsultMetrics,
}

fn refusal(error: &'static str, detail: impl Into<String>) -> SignalingRefusal {
    SignalingRefusal { error, detail: detail.into() }
}

fn actor_refusal(error: ActorError) -> SignalingRefusal {
    match error {
        ActorError::NotFound(what) => refusal("not_found", format!("{what} not found")),
        ActorError::Conflict(detail) => refusal("conflict", detail),
        ActorError::Forbidden(detail) => refusal("forbidden", detail),
        ActorError::Invalid { detail, .. } => refusal("invalid_message", detail),
        other => refusal("unavailable", other.to_string()),
    }
}

impl ConsultRooms {
    pub fn new(runtime: Arc<ActorRuntime>, pool: PgPool, sfu: Option<Sfu>, metrics: ConsultMetrics) -> ConsultRooms {
        ConsultRooms { runtime, pool, sfu, attachments: Arc::default(), next_attachment: Arc::new(AtomicU64::new(1)), metrics }
    }

    pub fn metrics(&self) -> &ConsultMetrics {
        &self.metrics
    }

    /// Closes every peer connection of a consult's room (it ended).
    pub async fn close_room(&self, session_id: Uuid) {
        // The SFU first: it hangs everyone up at once, without renegotiating anyone for the others
        // leaving; the peers taken below are then closed already.
        if let Some(sfu) = &self.sfu {
            sfu.close_room(session_id).await;
        }
        let slots: Vec<PeerSlot> = {
            let mut attachments = self.attachments.lock().expect("attachments lock");
            let keys: Vec<(Uuid, Uuid)> = attachments.keys().filter(|(room, _)| *room == session_id).copied().collect();
            keys.iter().filter_map(|key| attachments.remove(key)).map(|attachment| attachment.peer).collect()
        };
        for slot in slots {
            if let Some(peer) = slot.lock().await.take() {
                peer.leave().await;
                self.metrics.peers.dec();
            }
        }
        info!(%session_id, "consult room closed");
    }

    /// Media statistics of each participant in the room (empty without media).
    pub fn room_stats(&self, session_id: Uuid) -> Vec<ParticipantStats> {
        self.sfu.as_ref().map(|sfu| sfu.room_stats(session_id)).unwrap_or_default()
    }

    async fn join_room(&self, principal: Principal, source_addr: Option<String>, topic: String, outbox: SignalOutbox) -> Result<JoinedRoom, SignalingRefusal> {
        let parsed = Topic::parse(&topic).map_err(|r| refusal(r.error, r.detail))?;
        let Topic::Consult { session_id, .. } = parsed else {
            return Err(refusal("invalid_message", "join is for consult topics: tenant/{t}/consult/{session}"));
        };
        parsed.authorize(&principal).map_err(|r| refusal(r.error, r.detail))?;
        let actor = self.runtime.consult(principal.tenant_id, &principal.tenant_slug, session_id).await.map_err(actor_refusal)?;
        let consult = actor.send(GetConsult).await.map_err(|e| actor_refusal(e.into()))?.map_err(actor_refusal)?;
        let caller = Caller { principal, source_addr };
        let member = consult::member(&self.pool, &consult, &caller.principal).await.map_err(|e| actor_refusal(e.into()))?;
        let Some(member) = member else {
            let detail = "only the consult's doctor, its patient and invited guests may join";
            let record = AuditRecord::by_caller(&caller, "consult.join", "consult", session_id)
                .patient(Some(consult.patient_id))
                .outcome(Outcome::Denied)
                .detail(json!({"reason": detail}));
            if let Err(e) = audit::record(&self.pool, caller.principal.tenant_id, &record).await {
                warn!(error = %e, "cannot record a refused consult join");
            }
            info!(%session_id, user = %caller.principal.user_id, "consult join refused: not a member");
            return Err(refusal("forbidden", detail));
        };
        if consult.state == ConsultState::Ended {
            return Err(refusal("ended", "this consult has ended"));
        }
        let Some(sfu) = &self.sfu else {
            self.metrics.joins.with_label_values(&["failed"]).inc();
            return Err(refusal("unavailable", "media is not available on this hub (see its log); chat still works"));
        };
        let user_id = member.user_id;
        let key = (session_id, user_id);
        // One peer per member: a join from another connection replaces the previous one.
        let previous = self.attachments.lock().expect("attachments lock").remove(&key);
        if let Some(previous) = previous {
            if let Some(peer) = previous.peer.lock().await.take() {
                peer.leave().await;
                self.metrics.peers.dec();
            }
        }
        let (peer, signals) = match sfu.join(session_id, user_id).await {
            Ok(joined) => joined,
            Err(e) => {
                self.metrics.joins.with_label_values(&["failed"]).inc();
                warn!(%session_id, user = %user_id, error = %e, "the SFU refused a join");
                return Err(refusal("unavailable", format!("cannot join the media room: {e}")));
            }
        };
        let attachment = self.next_attachment.fetch_add(1, Ordering::Relaxed);
        let joined = actor.send(Join { caller: caller.clone(), member: member.clone(), attachment }).await;
        if let Err(error) = joined.map_err(ActorError::from).and_then(|result| result) {
            peer.leave().await;
            self.metrics.joins.with_label_values(&["failed"]).inc();
            return Err(actor_refusal(error));
        }
        let slot: PeerSlot = Arc::new(tokio::sync::Mutex::new(Some(peer)));
        self.attachments.lock().expect("attachments lock").insert(key, Attachment { number: attachment, peer: slot.clone() });
        self.metrics.peers.inc();
        self.metrics.joins.with_label_values(&["joined"]).inc();
        let leaving = Arc::new(AtomicBool::new(false));
        actix_web::rt::spawn(relay_to_client(signals, outbox, Arc::from(topic.as_str()), leaving.clone()));
        info!(%session_id, user = %user_id, role = ?member.role, attachment, "joined the consult room");
        Ok(JoinedRoom {
            peer: Box::new(RoomPeer {
                actor,
                caller,
                session_id,
                attachment,
                slot,
                leaving,
                attachments: self.attachments.clone(),
                metrics: self.metrics.clone(),
            }),
            info: json!({"session_id": session_id, "participant": user_id, "role": member.role}),
        })
    }
}

/// Sends what the SFU says to one peer to that peer's connection; when the SFU stops talking
/// (the room closed, or the peer was replaced) without the client having left, tells it `closed`.
async fn relay_to_client(mut signals: tokio::sync::mpsc::Receiver<SignalOut>, outbox: SignalOutbox, topic: Arc<str>, leaving: Arc<AtomicBool>) {
    let mut told_closed = false;
    while let Some(signal) = signals.recv().await {
        told_closed = matches!(&signal, SignalOut::State { state } if state == "closed");
        let message = serde_json::to_value(&signal).unwrap_or_else(|e| json!({"kind": "state", "state": format!("unreadable signal: {e}")}));
        if outbox.send((topic.clone(), message)).await.is_err() {
            return; // the connection is gone
        }
    }
    if !leaving.load(Ordering::SeqCst) && !told_closed {
        let _ = outbox.send((topic, json!({"kind": "state", "state": "closed"}))).await;
    }
}

impl ConsultSignaling for ConsultRooms {
    fn join(&self, principal: Principal, source_addr: Option<String>, topic: String, outbox: SignalOutbox) -> SignalingFuture<'static, Result<JoinedRoom, SignalingRefusal>> {
        let rooms = self.clone();
        Box::pin(async move {
            let joined = rooms.join_room(principal, source_addr, topic, outbox).await;
            if joined.as_ref().is_err_and(|refusal| refusal.error == "forbidden") {
                rooms.metrics.joins.with_label_values(&["refused"]).inc();
            }
            joined
        })
    }
}

/// One connection's place in one room.
struct RoomPeer {
    actor: Addr<VideoSessionActor>,
    caller: Caller,
    session_id: Uuid,
    attachment: u64,
    slot: PeerSlot,
    leaving: Arc<AtomicBool>,
    attachments: Arc<Mutex<HashMap<(Uuid, Uuid), Attachment>>>,
    metrics: ConsultMetrics,
}

impl SignalingPeer for RoomPeer {
    fn signal(&self, message: Value) -> SignalingFuture<'_, Result<(), SignalingRefusal>> {
        Box::pin(async move {
            let signal: SignalIn = serde_json::from_value(message).map_err(|e| {
                refusal("invalid_message", format!("a signal is {{kind: \"answer\", sdp}} or {{kind: \"candidate\", candidate}}: {e}"))
            })?;
            let slot = self.slot.lock().await;
            let Some(peer) = slot.as_ref() else {
                return Err(refusal("closed", "your media connection was closed (the consult ended, or you joined from elsewhere)"));
            };
            peer.signal(signal).await.map_err(|e| refusal("media", e.to_string()))
        })
    }

    fn mute(&self, audio: bool, video: bool) -> SignalingFuture<'_, Result<(), SignalingRefusal>> {
        Box::pin(async move {
            let muted = self.actor.send(Mute { caller: self.caller.clone(), audio, video }).await;
            muted.map_err(ActorError::from).and_then(|result| result).map(|_| ()).map_err(actor_refusal)
        })
    }

    fn leave(self: Box<Self>, dropped: bool) -> SignalingFuture<'static, ()> {
        Box::pin(async move {
            self.leaving.store(true, Ordering::SeqCst);
            {
                let mut attachments = self.attachments.lock().expect("attachments lock");
                let key = (self.session_id, self.caller.principal.user_id);
                if attachments.get(&key).is_some_and(|current| current.number == self.attachment) {
                    attachments.remove(&key);
                }
            }
            if let Some(peer) = self.slot.lock().await.take() {
                peer.leave().await;
                self.metrics.peers.dec();
            }
            let left = self.actor.send(Leave { caller: self.caller.clone(), attachment: self.attachment, dropped }).await;
            if let Err(error) = left.map_err(ActorError::from).and_then(|result| result) {
                warn!(session_id = %self.session_id, error = %error, "cannot record leaving the consult room");
            }
        })
    }
}
