//! One WebSocket connection at `GET /ws`: authenticate, subscribe, receive, stay alive, and carry
//! the media signaling of video consults.
//!
//! Protocol (JSON text frames; see docs/api.md):
//! client → `auth {token}`, `subscribe {topic, since?}`, `unsubscribe {topic}`, `ping`, and on a
//! consult topic `join {topic}`, `signal {topic, kind: answer|candidate, sdp?, candidate?}`,
//! `mute {topic, audio, video}`, `leave {topic}`;
//! server → `ready`, `subscribed`, `snapshot`, event envelopes `{type, topic, seq, ts, data}`,
//! `unsubscribed`, `pong`, `joined`, `signal {topic, kind: offer|candidate|state, ...}`, `muted`,
//! `left`, `error {error, topic?, detail}`.
//!
//! Signaling stays generic here: a [`ConsultSignaling`] (the hub's) decides who may join, talks to
//! the media side and hands back a [`SignalingPeer`]; this module only relays. A connection that
//! ends while joined leaves its rooms as `dropped`, so the member shows as reconnecting.
//!
//! Every subscribe is checked against the caller's tenant and role, and for a consult its membership
//! ([`Topic::authorize_member`]). A subscription starts with a snapshot, or with exactly the
//! events after `since` read from the event log; live events are then delivered strictly in seq
//! order: duplicates are dropped and a gap is filled from the log before the event after it is sent.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, info_span, warn, Instrument};

use medhub_actors::store::{self, format_ts};
use medhub_actors::topics::Topic;
use medhub_actors::Principal;

use crate::broker::{Broker, Delivery, LiveBatch};
use crate::metrics::RealtimeMetrics;

/// A verified access token.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub principal: Principal,
    pub expires_at: DateTime<Utc>,
    /// What `ready` tells the client about itself.
    pub user: Value,
}

/// Verifies access tokens; implemented by the hub (signature, expiry, live session).
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, token: String) -> Pin<Box<dyn Future<Output = Result<Authenticated, String>> + Send>>;
    /// Whether the login session is still live (not logged out, expired or disabled): `Err` when
    /// that cannot be told right now.
    fn session_alive(&self, session_id: uuid::Uuid) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send>>;
}

/// Why a signaling request was refused, as told to the client: `error {error, topic, detail}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalingRefusal {
    /// `forbidden`, `not_found`, `ended`, `unavailable`, `invalid_message`...
    pub error: &'static str,
    pub detail: String,
}

/// What the media side says to one client: `(topic, {kind: offer|candidate|state, ...})`, sent to
/// it as `signal {topic, kind, ...}`.
pub type SignalOutbox = mpsc::Sender<(Arc<str>, Value)>;

/// A successful `join`: the peer to relay to, and what `joined` tells the client.
pub struct JoinedRoom {
    pub peer: Box<dyn SignalingPeer>,
    pub info: Value,
}

/// What a signaling call hands back: a boxed future that may borrow the peer for `'a`. It runs on
/// the connection's own task, so it need not be `Send`.
pub type SignalingFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// The media signaling of consult topics; implemented by the hub (membership, the SFU, presence).
pub trait ConsultSignaling: Send + Sync + 'static {
    /// Joins `topic`'s room as `principal` (connected from `source_addr`); what the media side
    /// says to this client goes to `outbox`. A refused caller never reaches media.
    fn join(&self, principal: Principal, source_addr: Option<String>, topic: String, outbox: SignalOutbox) -> SignalingFuture<'static, Result<JoinedRoom, SignalingRefusal>>;
}

/// One connection's place in one room.
pub trait SignalingPeer {
    /// An answer (`{kind: "answer", sdp}`) or an ICE candidate (`{kind: "candidate", candidate}`).
    fn signal(&self, message: Value) -> SignalingFuture<'_, Result<(), SignalingRefusal>>;
    fn mute(&self, audio: bool, video: bool) -> SignalingFuture<'_, Result<(), SignalingRefusal>>;
    /// Leaves the room; `dropped` when the connection went away without `leave`.
    fn leave(self: Box<Self>, dropped: bool) -> SignalingFuture<'static, ()>;
}

#[derive(Debug, Clone)]
pub struct RealtimeConfig {
    /// Deliveries a connection may have queued before it is cut off as too slow.
    pub queue_capacity: usize,
    pub heartbeat_interval: Duration,
    /// How often an open connection checks that its login session is still live, so that a
    /// logout (or a disabled account) cuts its live updates within this time.
    pub session_check_interval: Duration,
    /// A client silent (no message, no pong) for this long is disconnected.
    pub client_timeout: Duration,
    /// How long a new connection has to send `auth`.
    pub auth_timeout: Duration,
    /// At most this many missed events are replayed on `since`; beyond it, a snapshot.
    pub replay_limit: i64,
    /// Largest accepted client message, in bytes.
    pub max_message_bytes: usize,
}

/// Everything the endpoint needs, shared by all connections.
pub struct Realtime {
    pub broker: Arc<Broker>,
    pub pool: PgPool,
    pub authenticator: Arc<dyn Authenticator>,
    pub config: RealtimeConfig,
    pub metrics: RealtimeMetrics,
    pub shutdown: watch::Receiver<bool>,
    /// Consult media signaling; `None`: `join` is answered `unavailable`.
    pub signaling: Option<Arc<dyn ConsultSignaling>>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Auth { token: String },
    Subscribe { topic: String, since: Option<i64> },
    Unsubscribe { topic: String },
    Ping,
    Join { topic: String },
    Signal { topic: String, kind: String, sdp: Option<String>, candidate: Option<Value> },
    Mute { topic: String, audio: bool, video: bool },
    Leave { topic: String },
}

/// `GET /ws`: upgrades and runs the connection on this worker.
pub async fn ws_endpoint(req: HttpRequest, body: web::Payload, realtime: web::Data<Realtime>) -> actix_web::Result<HttpResponse> {
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(realtime.config.max_message_bytes)
        .aggregate_continuations()
        .max_continuation_size(realtime.config.max_message_bytes);
    let peer = req.peer_addr().map(|addr| addr.to_string()).unwrap_or_default();
    let source_addr = req.peer_addr().map(|addr| addr.ip().to_string());
    let realtime = realtime.into_inner();
    let span = info_span!("ws", %peer, tenant = tracing::field::Empty, user = tracing::field::Empty);
    actix_web::rt::spawn(run_connection(realtime, session, stream, source_addr).instrument(span));
    Ok(response)
}

/// What a connection's loop decided to do next.
enum Next {
    Continue,
    Close(Option<CloseReason>),
}

struct Connection {
    realtime: Arc<Realtime>,
    session: Session,
    auth: Option<Authenticated>,
    /// Subscribed topics and the seq last sent on each.
    subscriptions: HashMap<Arc<str>, i64>,
    broker_connection: crate::broker::Connection,
    session_checked: Instant,
    /// Consult rooms this connection joined, by topic.
    rooms: HashMap<Arc<str>, Box<dyn SignalingPeer>>,
    signal_outbox: SignalOutbox,
    /// The client's address (for the audit trail of what it does in consult rooms).
    source_addr: Option<String>,
}

/// Signaling messages a connection may have waiting for it.
const SIGNAL_QUEUE: usize = 256;

async fn run_connection(realtime: Arc<Realtime>, session: Session, mut stream: actix_ws::AggregatedMessageStream, source_addr: Option<String>) {
    realtime.metrics.connections.inc();
    let (broker_connection, mut deliveries) = realtime.broker.connect(realtime.config.queue_capacity);
    let kick = broker_connection.kick.clone();
    let live = broker_connection.live.clone();
    let mut shutdown = realtime.shutdown.clone();
    let (signal_outbox, mut signals) = mpsc::channel(SIGNAL_QUEUE);
    let mut connection = Connection {
        realtime: realtime.clone(),
        session,
        auth: None,
        subscriptions: HashMap::new(),
        broker_connection,
        session_checked: Instant::now(),
        rooms: HashMap::new(),
        signal_outbox,
        source_addr,
    };
    let mut heartbeat = tokio::time::interval(realtime.config.heartbeat_interval);
    heartbeat.tick().await;
    let auth_deadline = tokio::time::sleep(realtime.config.auth_timeout);
    tokio::pin!(auth_deadline);
    let mut last_heard = Instant::now();

    let close = loop {
        let next = tokio::select! {
            message = stream.recv() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(AggregatedMessage::Text(text))) => connection.on_text(&text).await,
                    Some(Ok(AggregatedMessage::Ping(bytes))) => match connection.session.pong(&bytes).await {
                        Ok(()) => Next::Continue,
                        Err(_) => Next::Close(None),
                    },
                    Some(Ok(AggregatedMessage::Pong(_))) => Next::Continue,
                    Some(Ok(AggregatedMessage::Binary(_))) => {
                        connection.send_error("invalid_message", None, "binary frames are not part of this protocol; send JSON text").await
                    }
                    Some(Ok(AggregatedMessage::Close(reason))) => {
                        debug!(?reason, "client closed");
                        Next::Close(None)
                    }
                    Some(Err(actix_ws::ProtocolError::Io(e))) => {
                        // The connection broke without a close frame (a phone lost its network,
                        // a tab was killed): routine, and the client resumes with `since`.
                        debug!(error = %e, "client connection broke without closing");
                        Next::Close(None)
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "websocket protocol error");
                        Next::Close(Some(CloseReason { code: CloseCode::Protocol, description: Some(e.to_string()) }))
                    }
                    None => break None,
                }
            }
            // A client that stops reading blocks the write; the broker's kick ends the wait.
            Some(delivery) = deliveries.recv() => tokio::select! {
                next = connection.deliver(delivery) => next,
                _ = kick.raised() => connection.too_slow().await,
            },
            // Live-only updates: a frame per topic with the latest per unit, however far the
            // client is behind.
            _ = live.ready() => tokio::select! {
                next = connection.deliver_live(live.take()) => next,
                _ = kick.raised() => connection.too_slow().await,
            },
            Some((topic, message)) = signals.recv() => tokio::select! {
                next = connection.relay_signal(&topic, message) => next,
                _ = tokio::time::sleep(SEND_GRACE) => connection.too_slow().await,
            },
            _ = kick.raised() => connection.too_slow().await,
            _ = heartbeat.tick() => connection.on_heartbeat(last_heard).await,
            _ = &mut auth_deadline, if connection.auth.is_none() => {
                let _ = connection.send(json!({"type": "error", "error": "unauthorized",
                    "detail": "send {\"type\": \"auth\", \"token\": ...} first"})).await;
                Next::Close(Some(CloseReason { code: CloseCode::Policy, description: Some("authentication timeout".into()) }))
            }
            _ = shutdown.changed() => Next::Close(Some(CloseReason {
                code: CloseCode::Away, description: Some("server shutting down; reconnect shortly".into()) })),
        };
        if let Next::Close(reason) = next {
            break reason;
        }
    };
    realtime.broker.disconnect(connection.broker_connection.id);
    realtime.metrics.connections.dec();
    // Rooms left without `leave`: the members show as reconnecting and may come back.
    for (topic, peer) in connection.rooms.drain() {
        if tokio::time::timeout(SEND_GRACE, peer.leave(true)).await.is_err() {
            warn!(%topic, "leaving a consult room took too long");
        }
    }
    // A client that does not read cannot take a close frame either; do not wait for it forever.
    let _ = tokio::time::timeout(SEND_GRACE, connection.session.close(close)).await;
    debug!("connection ended");
}

/// How long a message to a stalled client may wait before the connection is given up.
const SEND_GRACE: Duration = Duration::from_secs(5);

fn outcome(sent: Result<(), actix_ws::Closed>) -> Next {
    match sent {
        Ok(()) => Next::Continue,
        Err(_) => Next::Close(None),
    }
}

impl Connection {
    async fn send(&mut self, message: Value) -> Result<(), actix_ws::Closed> {
        self.session.text(message.to_string()).await
    }

    async fn send_error(&mut self, error: &str, topic: Option<&str>, detail: &str) -> Next {
        let mut message = json!({"type": "error", "error": error, "detail": detail});
        if let Some(topic) = topic {
            message["topic"] = json!(topic);
        }
        outcome(self.send(message).await)
    }

    /// The broker gave up on this client: tell it (if it reads again soon) and disconnect.
    async fn too_slow(&mut self) -> Next {
        info!("client fell too far behind the live stream; disconnecting");
        let told = json!({"type": "error", "error": "too_slow",
            "detail": "you fell too far behind the live stream; reconnect and resubscribe with since"});
        let _ = tokio::time::timeout(SEND_GRACE, self.send(told)).await;
        Next::Close(Some(CloseReason { code: CloseCode::Policy, description: Some("too slow".into()) }))
    }

    async fn on_heartbeat(&mut self, last_heard: Instant) -> Next {
        if last_heard.elapsed() > self.realtime.config.client_timeout {
            info!("client silent too long; closing");
            return Next::Close(Some(CloseReason { code: CloseCode::Away, description: Some("heartbeat timeout".into()) }));
        }
        if let Some(auth) = &self.auth {
            if auth.expires_at <= Utc::now() {
                let _ = self.send_error("token_expired", None, "your access token expired; reconnect with a fresh one").await;
                return Next::Close(Some(CloseReason { code: CloseCode::Policy, description: Some("token expired".into()) }));
            }
            if self.session_checked.elapsed() >= self.realtime.config.session_check_interval {
                let session_id = auth.principal.session_id;
                match self.realtime.authenticator.session_alive(session_id).await {
                    Ok(true) => self.session_checked = Instant::now(),
                    Ok(false) => {
                        info!(%session_id, "login session ended; closing its live connection");
                        let _ = self.send_error("session_ended", None, "your session ended (logged out, expired or disabled); log in again").await;
                        return Next::Close(Some(CloseReason { code: CloseCode::Policy, description: Some("session ended".into()) }));
                    }
                    Err(e) => warn!(error = %e, "cannot check the login session; will retry"),
                }
            }
        }
        let sent = self.session.ping(b"medhub").await;
        outcome(sent)
    }

    async fn on_text(&mut self, text: &str) -> Next {
        let message: ClientMessage = match serde_json::from_str(text) {
            Ok(message) => message,
            Err(e) => return self.send_error("invalid_message", None, &format!("unreadable message: {e}")).await,
        };
        match message {
            ClientMessage::Ping => {
                let sent = self.send(json!({"type": "pong"})).await;
                outcome(sent)
            }
            ClientMessage::Auth { token } => self.on_auth(token).await,
            ClientMessage::Subscribe { topic, since } => match self.auth.clone() {
                Some(auth) => self.on_subscribe(&auth.principal, &topic, since).await,
                None => self.send_error("unauthorized", Some(&topic), "send auth before subscribing").await,
            },
            ClientMessage::Unsubscribe { topic } => {
                self.realtime.broker.unsubscribe(self.broker_connection.id, &topic);
                self.subscriptions.remove(topic.as_str());
                let sent = self.send(json!({"type": "unsubscribed", "topic": topic})).await;
                outcome(sent)
            }
            ClientMessage::Join { topic } => match self.auth.clone() {
                Some(auth) => self.on_join(auth.principal, topic).await,
                None => self.send_error("unauthorized", Some(&topic), "send auth before joining").await,
            },
            ClientMessage::Signal { topic, kind, sdp, candidate } => {
                let mut message = json!({"kind": kind});
                if let Some(sdp) = sdp {
                    message["sdp"] = json!(sdp);
                }
                if let Some(candidate) = candidate {
                    message["candidate"] = candidate;
                }
                let Some(peer) = self.rooms.get(topic.as_str()) else {
                    return self.send_error("not_joined", Some(&topic), "send join for this topic first").await;
                };
                match peer.signal(message).await {
                    Ok(()) => Next::Continue,
                    Err(refusal) => self.send_error(refusal.error, Some(&topic), &refusal.detail).await,
                }
            }
            ClientMessage::Mute { topic, audio, video } => {
                let Some(peer) = self.rooms.get(topic.as_str()) else {
                    return self.send_error("not_joined", Some(&topic), "send join for this topic first").await;
                };
                match peer.mute(audio, video).await {
                    Ok(()) => outcome(self.send(json!({"type": "muted", "topic": topic, "audio": audio, "video": video})).await),
                    Err(refusal) => self.send_error(refusal.error, Some(&topic), &refusal.detail).await,
                }
            }
            ClientMessage::Leave { topic } => {
                let Some(peer) = self.rooms.remove(topic.as_str()) else {
                    return self.send_error("not_joined", Some(&topic), "this connection is not in that room").await;
                };
                peer.leave(false).await;
                outcome(self.send(json!({"type": "left", "topic": topic})).await)
            }
        }
    }

    async fn on_join(&mut self, principal: Principal, topic: String) -> Next {
        if self.rooms.contains_key(topic.as_str()) {
            return self.send_error("already_joined", Some(&topic), "this connection is in that room already; send leave first to rejoin").await;
        }
        let Some(signaling) = self.realtime.signaling.clone() else {
            return self.send_error("unavailable", Some(&topic), "video consults are not available on this hub").await;
        };
        match signaling.join(principal, self.source_addr.clone(), topic.clone(), self.signal_outbox.clone()).await {
            Ok(JoinedRoom { peer, info }) => {
                self.rooms.insert(Arc::from(topic.as_str()), peer);
                let mut joined = json!({"type": "joined", "topic": topic});
                if let (Value::Object(joined), Value::Object(info)) = (&mut joined, info) {
                    joined.extend(info);
                }
                outcome(self.send(joined).await)
            }
            Err(refusal) => {
                info!(topic = %topic, reason = refusal.error, "consult join refused");
                self.send_error(refusal.error, Some(&topic), &refusal.detail).await
            }
        }
    }

    /// What the media side says to this client, as `signal {topic, kind, ...}`.
    async fn relay_signal(&mut self, topic: &str, message: Value) -> Next {
        let mut envelope = json!({"type": "signal", "topic": topic});
        if let (Value::Object(envelope), Value::Object(message)) = (&mut envelope, message) {
            envelope.extend(message);
        }
        outcome(self.send(envelope).await)
    }

    async fn on_auth(&mut self, token: String) -> Next {
        match self.realtime.authenticator.authenticate(token).await {
            Ok(auth) => {
                if let Some(current) = &self.auth {
                    if current.principal.user_id != auth.principal.user_id {
                        return self.send_error("unauthorized", None, "a connection cannot change its user; open a new one").await;
                    }
                }
                let span = tracing::Span::current();
                span.record("tenant", auth.principal.tenant_slug.as_str());
                span.record("user", auth.principal.user_id.to_string());
                let ready = json!({"type": "ready", "user": auth.user, "expires_at": format_ts(auth.expires_at)});
                self.auth = Some(auth);
                let sent = self.send(ready).await;
                outcome(sent)
            }
            Err(detail) => {
                let _ = self.send_error("unauthorized", None, &detail).await;
                if self.auth.is_none() {
                    Next::Close(Some(CloseReason { code: CloseCode::Policy, description: Some("unauthorized".into()) }))
                } else {
                    Next::Continue
                }
            }
        }
    }

    async fn on_subscribe(&mut self, principal: &Principal, name: &str, since: Option<i64>) -> Next {
        let topic = match Topic::parse(name) {
            Ok(topic) => topic.authorize_member(&self.realtime.pool, principal).await.map(|()| topic),
            Err(refusal) => Err(refusal),
        };
        let topic = match topic {
            Ok(topic) => topic,
            Err(refusal) => {
                self.realtime.metrics.refused_subscriptions.with_label_values(&[refusal.error]).inc();
                info!(topic = name, reason = refusal.error, "subscription refused");
                return self.send_error(refusal.error, Some(name), &refusal.detail).await;
            }
        };
        let key: Arc<str> = Arc::from(topic.name().as_str());
        // Register first: live events queue up while the backlog is read, and the seq check in
        // `deliver` drops whatever the backlog already covered.
        self.realtime.broker.subscribe(&self.broker_connection, &key);
        let start = match since {
            Some(since) if since >= 0 => self.backlog(&key, since).await,
            _ => Ok(None),
        };
        let sent = match start {
            Ok(Some((backlog, last))) => {
                self.subscriptions.insert(key.clone(), last);
                let mut sent = self.send(json!({"type": "subscribed", "topic": &*key, "seq": last, "since": since})).await;
                for envelope in backlog {
                    if sent.is_err() {
                        break;
                    }
                    self.realtime.metrics.events_sent.inc();
                    sent = self.session.text(envelope).await;
                }
                sent
            }
            Ok(None) => match topic.snapshot(&self.realtime.pool, principal).await {
                Ok((seq, data)) => {
                    self.subscriptions.insert(key.clone(), seq);
                    let sent = self.send(json!({"type": "subscribed", "topic": &*key, "seq": seq})).await;
                    match sent {
                        Ok(()) => self.send(json!({"type": "snapshot", "topic": &*key, "seq": seq,
                                                   "ts": format_ts(Utc::now()), "data": data})).await,
                        Err(closed) => Err(closed),
                    }
                }
                Err(e) => return self.unavailable(&key, e).await,
            },
            Err(e) => return self.unavailable(&key, e).await,
        };
        outcome(sent)
    }

    /// The serialised events after `since`, and the last seq among them; `None` when a snapshot
    /// is the better start (too many missed, or `since` is ahead of the topic).
    async fn backlog(&self, topic: &str, since: i64) -> Result<Option<(Vec<String>, i64)>, sqlx::Error> {
        let limit = self.realtime.config.replay_limit;
        let envelopes = store::events_after(&self.realtime.pool, topic, since, None, limit + 1).await?;
        if envelopes.len() as i64 > limit {
            return Ok(None);
        }
        if envelopes.is_empty() {
            let mut conn = self.realtime.pool.acquire().await?;
            if store::topic_head(&mut conn, topic).await? < since {
                return Ok(None);
            }
        }
        let last = envelopes.last().map_or(since, |e| e.seq);
        let serialised = envelopes.iter().map(|e| serde_json::to_string(e).expect("envelopes serialise")).collect();
        Ok(Some((serialised, last)))
    }

    async fn unavailable(&mut self, topic: &Arc<str>, error: sqlx::Error) -> Next {
        warn!(topic = %topic, error = %error, "cannot start subscription");
        self.realtime.broker.unsubscribe(self.broker_connection.id, topic);
        self.send_error("unavailable", Some(topic), "the hub cannot read this topic right now; retry").await
    }

    /// Live-only frames (telemetry): no order to keep, nothing to fill. A client that does not
    /// take one within the grace period has stalled: no queue fills up to tell, since newer
    /// updates replace older ones, so the wait itself decides.
    async fn deliver_live(&mut self, (frames, merged_away): (Vec<Arc<LiveBatch>>, u64)) -> Next {
        self.realtime.metrics.live_coalesced.inc_by(merged_away);
        for frame in frames {
            if !self.subscriptions.contains_key(&frame.topic) {
                continue;
            }
            self.realtime.metrics.events_sent.inc();
            match tokio::time::timeout(SEND_GRACE, self.session.text(&*frame.frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Next::Close(None),
                Err(_) => return self.too_slow().await,
            }
        }
        Next::Continue
    }

    async fn deliver(&mut self, delivery: Delivery) -> Next {
        let Some(&last) = self.subscriptions.get(&delivery.topic) else { return Next::Continue };
        if delivery.seq <= last {
            return Next::Continue;
        }
        if delivery.seq > last + 1 {
            self.realtime.metrics.gap_fills.inc();
            match store::events_after(&self.realtime.pool, &delivery.topic, last, Some(delivery.seq - 1), i64::MAX).await {
                Ok(missing) => {
                    for envelope in missing {
                        self.realtime.metrics.events_sent.inc();
                        let sent = self.session.text(serde_json::to_string(&envelope).expect("envelopes serialise")).await;
                        if sent.is_err() {
                            return Next::Close(None);
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot fill a gap; asking the client to resubscribe");
                    let _ = self.send_error("resubscribe", Some(&delivery.topic), "missed events could not be read; resubscribe with since").await;
                    return Next::Close(Some(CloseReason { code: CloseCode::Again, description: None }));
                }
            }
        }
        self.subscriptions.insert(delivery.topic.clone(), delivery.seq);
        self.realtime.metrics.events_sent.inc();
        let sent = self.session.text(&*delivery.json).await;
        outcome(sent)
    }
}
