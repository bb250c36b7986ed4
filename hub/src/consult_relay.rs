//! Video consults across hub nodes: a consult's room (its SFU peers and presence) lives on the node
//! that serves the consult's tenant, next to the consult's actor. A participant whose WebSocket
//! reached another node joins through [`ClusterSignaling`]: that node opens an internal WebSocket
//! to the owner (`/internal/consult-signaling`, signed like every node-to-node request), and relays
//! the participant's `signal`, `mute` and `leave` to the owner's room and the room's offers,
//! candidates and state back. Media itself flows between the browser and the owner's SFU directly.
//!
//! The internal protocol, one JSON object per text message:
//! - to the owner: `{"join": {principal, source_addr, topic}}` first, then `{"id", "signal": {...}}`,
//!   `{"id", "mute": {audio, video}}`, `{"leave": {dropped}}`;
//! - from the owner: `{"joined": info}` or `{"refused": {error, detail}}`, then
//!   `{"id", "ok": true}` / `{"id", "error": {error, detail}}` answers and `{"out": {topic, message}}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::AggregatedMessage;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use medhub_actors::Principal;
use medhub_realtime::{ConsultSignaling, JoinedRoom, SignalOutbox, SignalingFuture, SignalingPeer, SignalingRefusal};

use crate::api::error::ApiError;
use crate::cluster::{Cluster, Owner, Route};
use crate::consult_signaling::ConsultRooms;

/// Where a node opens a participant's relay to the consult's node.
pub const CONSULT_SIGNALING_PATH: &str = "/internal/consult-signaling";
/// How long a relayed signaling call may wait for the owner's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest relayed message (an SDP offer with many candidates is a few tens of kilobytes).
const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Consult signaling for a node among several: here when this node serves the tenant, else
/// relayed to the node that does.
pub struct ClusterSignaling {
    local: ConsultRooms,
    cluster: Arc<Cluster>,
}

impl ClusterSignaling {
    pub fn new(local: ConsultRooms, cluster: Arc<Cluster>) -> ClusterSignaling {
        ClusterSignaling { local, cluster }
    }
}

impl ConsultSignaling for ClusterSignaling {
    fn join(&self, principal: Principal, source_addr: Option<String>, topic: String, outbox: SignalOutbox) -> SignalingFuture<'static, Result<JoinedRoom, SignalingRefusal>> {
        let (local, cluster) = (self.local.clone(), self.cluster.clone());
        Box::pin(async move {
            match cluster.route(principal.tenant_id).await {
                Ok(Route::Forward(owner)) => join_remote(&cluster, &owner, principal, source_addr, topic, outbox).await,
                Ok(Route::Here) => local.join(principal, source_addr, topic, outbox).await,
                Err(e) => Err(SignalingRefusal { error: "unavailable", detail: format!("cannot tell which hub node serves this consult: {e}; retry") }),
            }
        })
    }
}

/// The refusal codes a relayed refusal may carry (anything else reads as `unavailable`).
fn known_code(code: &str) -> &'static str {
    ["forbidden", "not_found", "ended", "unavailable", "invalid_message", "conflict", "not_owner"]
        .into_iter()
        .find(|known| *known == code)
        .unwrap_or("unavailable")
}

fn refusal_from(value: &Value) -> SignalingRefusal {
    SignalingRefusal {
        error: known_code(value["error"].as_str().unwrap_or_default()),
        detail: value["detail"].as_str().unwrap_or("refused by the hub node that serves this consult").to_owned(),
    }
}

fn unavailable(detail: impl Into<String>) -> SignalingRefusal {
    SignalingRefusal { error: "unavailable", detail: detail.into() }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<(), SignalingRefusal>>>>>;

/// A participant's place in a room on another node.
struct RemotePeer {
    to_owner: mpsc::UnboundedSender<Value>,
    pending: Pending,
    next_id: AtomicU64,
    owner: String,
}

impl RemotePeer {
    async fn call(&self, request: Value) -> Result<(), SignalingRefusal> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        self.pending.lock().expect("pending calls lock").insert(id, answer);
        let mut message = request;
        message["id"] = json!(id);
        if self.to_owner.send(message).is_err() {
            self.pending.lock().expect("pending calls lock").remove(&id);
            return Err(unavailable(format!("the connection to hub node {} that serves this consult is gone; join again", self.owner)));
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, answered).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unavailable(format!("hub node {} that serves this consult went away; join again", self.owner))),
            Err(_) => {
                self.pending.lock().expect("pending calls lock").remove(&id);
                Err(unavailable(format!("hub node {} that serves this consult did not answer in time", self.owner)))
            }
        }
    }
}

impl SignalingPeer for RemotePeer {
    fn signal(&self, message: Value) -> SignalingFuture<'_, Result<(), SignalingRefusal>> {
        Box::pin(self.call(json!({"signal": message})))
    }

    fn mute(&self, audio: bool, video: bool) -> SignalingFuture<'_, Result<(), SignalingRefusal>> {
        Box::pin(self.call(json!({"mute": {"audio": audio, "video": video}})))
    }

    fn leave(self: Box<Self>, dropped: bool) -> SignalingFuture<'static, ()> {
        // The writer sends it and closes; the owner leaves the room either way when the relay ends.
        let _ = self.to_owner.send(json!({"leave": {"dropped": dropped}}));
        Box::pin(async {})
    }
}

/// Joins the room on `owner` through an internal WebSocket, and relays from then on.
async fn join_remote(
    cluster: &Cluster,
    owner: &Owner,
    principal: Principal,
    source_addr: Option<String>,
    topic: String,
    outbox: SignalOutbox,
) -> Result<JoinedRoom, SignalingRefusal> {
    let base = owner.url.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
    let mut request = format!("{base}{CONSULT_SIGNALING_PATH}").into_client_request().map_err(|e| unavailable(e.to_string()))?;
    for (name, value) in cluster.node_headers(&actix_web::http::Method::GET, CONSULT_SIGNALING_PATH) {
        let value = value.parse().map_err(|_| unavailable("unusable node signature header"))?;
        request.headers_mut().insert(name, value);
    }
    let connected = tokio::time::timeout(ANSWER_TIMEOUT, tokio_tungstenite::connect_async(request)).await;
    let (socket, _) = match connected {
        Ok(Ok(socket)) => socket,
        Ok(Err(e)) => return Err(unavailable(format!("cannot reach hub node {} that serves this consult: {e}; retry", owner.node_id))),
        Err(_) => return Err(unavailable(format!("hub node {} that serves this consult did not answer in time; retry", owner.node_id))),
    };
    let (mut sink, mut stream) = socket.split();
    let join = json!({"join": {
        "user_id": principal.user_id, "tenant_id": principal.tenant_id, "tenant_slug": principal.tenant_slug.as_str(),
        "role": principal.role.as_str(), "session_id": principal.session_id, "source_addr": source_addr, "topic": topic,
    }});
    sink.send(Message::text(join.to_string())).await.map_err(|e| unavailable(format!("the relay to hub node {} failed: {e}", owner.node_id)))?;
    let first = tokio::time::timeout(ANSWER_TIMEOUT, next_json(&mut stream))
        .await
        .map_err(|_| unavailable(format!("hub node {} that serves this consult did not answer the join in time", owner.node_id)))?
        .ok_or_else(|| unavailable(format!("hub node {} closed the relay before answering the join", owner.node_id)))?;
    if let Some(refused) = first.get("refused") {
        return Err(refusal_from(refused));
    }
    let info = first.get("joined").cloned().ok_or_else(|| unavailable("the serving node answered the join with something else"))?;
    info!(node = %cluster.node_id(), owner = %owner.node_id, topic = %topic, "joined a consult room on the node that serves it");

    let pending: Pending = Arc::default();
    let (to_owner, mut outgoing) = mpsc::unbounded_channel::<Value>();
    let left = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let leaving_flag = left.clone();
    // Writer: the participant's calls, then a close after `leave` (or when the peer is dropped).
    actix_web::rt::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            let leaving = message.get("leave").is_some();
            if leaving {
                leaving_flag.store(true, Ordering::SeqCst);
            }
            if sink.send(Message::text(message.to_string())).await.is_err() || leaving {
                break;
            }
        }
        let _ = sink.close().await;
    });
    // Reader: answers to calls, and what the room says to the participant.
    let answers = pending.clone();
    let owner_id = owner.node_id.clone();
    let room_topic: Arc<str> = Arc::from(topic.as_str());
    actix_web::rt::spawn(async move {
        while let Some(message) = next_json(&mut stream).await {
            if let Some(out) = message.get("out") {
                let topic: Arc<str> = Arc::from(out["topic"].as_str().unwrap_or_default());
                if outbox.send((topic, out["message"].clone())).await.is_err() {
                    break;
                }
            } else if let Some(id) = message["id"].as_u64() {
                let result = match message.get("error") {
                    Some(error) => Err(refusal_from(error)),
                    None => Ok(()),
                };
                if let Some(answer) = answers.lock().expect("pending calls lock").remove(&id) {
                    let _ = answer.send(result);
                }
            }
        }
        // Calls still waiting learn that the relay is gone (their senders drop here).
        answers.lock().expect("pending calls lock").clear();
        if left.load(Ordering::SeqCst) {
            debug!(owner = %owner_id, "consult relay to the serving node ended after leave");
        } else {
            // The serving node went away: the participant's media is gone with it; tell them, as
            // the room itself would, so that the console offers to join again.
            warn!(owner = %owner_id, topic = %room_topic, "consult relay to the serving node broke; the participant must join again");
            let _ = outbox.send((room_topic, json!({"kind": "state", "state": "failed"}))).await;
        }
    });
    let peer = RemotePeer { to_owner, pending, next_id: AtomicU64::new(1), owner: owner.node_id.clone() };
    Ok(JoinedRoom { peer: Box::new(peer), info })
}

/// The next JSON text message of the relay, or `None` once it closed.
async fn next_json<S>(stream: &mut S) -> Option<Value>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(Message::Text(text)) => match serde_json::from_str(text.as_str()) {
                Ok(value) => return Some(value),
                Err(e) => warn!(error = %e, "unreadable message on a consult relay; ignored"),
            },
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
    None
}

#[derive(Deserialize)]
struct JoinRequest {
    user_id: uuid::Uuid,
    tenant_id: uuid::Uuid,
    tenant_slug: String,
    role: String,
    session_id: uuid::Uuid,
    source_addr: Option<String>,
    topic: String,
}

impl JoinRequest {
    fn principal(&self) -> Option<Principal> {
        Some(Principal {
            user_id: self.user_id,
            tenant_id: self.tenant_id,
            tenant_slug: medhub_actors::TenantSlug::parse(&self.tenant_slug).ok()?,
            role: medhub_actors::Role::parse(&self.role)?,
            session_id: self.session_id,
        })
    }
}

/// `GET /internal/consult-signaling`: the owner's end of a relay (see the module documentation).
/// Only hub nodes may open it: the participant was authenticated by the node they reached.
pub async fn relay_endpoint(req: HttpRequest, body: web::Payload, cluster: web::Data<Cluster>, rooms: web::Data<ConsultRooms>) -> Result<HttpResponse, ApiError> {
    if !cluster.accept_node_request(&req)? {
        return Err(ApiError::Unauthorized("only hub nodes may relay consult signaling".into()));
    }
    let (response, mut session, stream) = actix_ws::handle(&req, body).map_err(|e| ApiError::invalid("upgrade", e.to_string()))?;
    let mut stream = stream.max_frame_size(MAX_MESSAGE_BYTES).aggregate_continuations();
    let rooms = rooms.into_inner();
    actix_web::rt::spawn(async move {
        let first = loop {
            match stream.next().await {
                Some(Ok(AggregatedMessage::Text(text))) => break serde_json::from_str::<Value>(&text).ok(),
                Some(Ok(AggregatedMessage::Ping(bytes))) => {
                    let _ = session.pong(&bytes).await;
                }
                Some(Ok(_)) => continue,
                _ => return,
            }
        };
        let join: Option<JoinRequest> = first.and_then(|message| serde_json::from_value(message.get("join")?.clone()).ok());
        let Some((join, principal)) = join.and_then(|join| join.principal().map(|principal| (join, principal))) else {
            let _ = session.text(json!({"refused": {"error": "invalid_message", "detail": "a relay starts with join"}}).to_string()).await;
            let _ = session.close(None).await;
            return;
        };
        let (outbox, mut room_says) = mpsc::channel(256);
        let topic = join.topic.clone();
        let peer = match rooms.join(principal, join.source_addr.clone(), join.topic.clone(), outbox).await {
            Ok(joined) => {
                if session.text(json!({"joined": joined.info}).to_string()).await.is_err() {
                    joined.peer.leave(true).await;
                    return;
                }
                joined.peer
            }
            Err(refused) => {
                let _ = session.text(json!({"refused": {"error": refused.error, "detail": refused.detail}}).to_string()).await;
                let _ = session.close(None).await;
                return;
            }
        };
        debug!(topic = %topic, "serving a consult participant relayed by another node");
        let mut dropped = true;
        loop {
            tokio::select! {
                said = room_says.recv() => {
                    let Some((topic, message)) = said else { break };
                    if session.text(json!({"out": {"topic": &*topic, "message": message}}).to_string()).await.is_err() {
                        break;
                    }
                }
                frame = stream.next() => {
                    let message = match frame {
                        Some(Ok(AggregatedMessage::Text(text))) => serde_json::from_str::<Value>(&text).unwrap_or_default(),
                        Some(Ok(AggregatedMessage::Ping(bytes))) => {
                            let _ = session.pong(&bytes).await;
                            continue;
                        }
                        Some(Ok(AggregatedMessage::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => continue,
                    };
                    if let Some(leave) = message.get("leave") {
                        dropped = leave["dropped"].as_bool().unwrap_or(false);
                        break;
                    }
                    let result = if let Some(signal) = message.get("signal") {
                        peer.signal(signal.clone()).await
                    } else if let Some(mute) = message.get("mute") {
                        peer.mute(mute["audio"].as_bool().unwrap_or(false), mute["video"].as_bool().unwrap_or(false)).await
                    } else {
                        Err(SignalingRefusal { error: "invalid_message", detail: "a relay message is signal, mute or leave".into() })
                    };
                    let answer = match result {
                        Ok(()) => json!({"id": message["id"], "ok": true}),
                        Err(refused) => json!({"id": message["id"], "error": {"error": refused.error, "detail": refused.detail}}),
                    };
                    if session.text(answer.to_string()).await.is_err() {
                        break;
                    }
                }
            }
        }
        peer.leave(dropped).await;
        let _ = session.close(None).await;
    });
    Ok(response)
}
