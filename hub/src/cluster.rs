//! Routing between hub nodes: a request for a tenant this node does not serve is sent to the node
//! that does, and its answer is returned as if this node had given it. Clients (and the load
//! balancer in front of the nodes) never need to know which node owns what.
//!
//! Who serves a tenant is decided by its lease in PostgreSQL (see `medhub_actors::lease`); where a
//! node is reached is in `hub_nodes`, which every node keeps fresh with its lease renewals. For a
//! request naming a tenant (its access token does), [`route_to_owner`]:
//! - serves it here when this node holds the lease, nobody does (this node takes it), or the
//!   holder went silent (its lease expires within a TTL and this node takes it over: the request
//!   waits for that inside the tenant's supervisor);
//! - otherwise forwards it to the holder over HTTP, signed with a key only hub nodes know (derived
//!   from the token signing key they share through the database). The owner serves a signed
//!   request itself, never forwards it again, and audits the original client's address.
//!
//! Failures: an owner that cannot be reached before the request was sent (connection refused: it
//! died) is asked again after a short wait, until its lease has been taken over (by this node or
//! another), so a failover costs a client a slower answer, not an error. A request that reached
//! the owner but got no answer may or may not have been applied: that is answered 502
//! `outcome_unknown`, never as a refusal. A node that finds it lost the tenant while serving a
//! request (`not_owner`: nothing was done) sends it on to the new owner.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use serde_json::json;
use sha2::Sha256;
use sqlx::PgPool;
use tracing::{debug, info, warn};
use uuid::Uuid;

use medhub_actors::devices::{DeviceIdentity, DeviceMessage, DeviceSink};
use medhub_actors::lease::{self, Holder, LeaseNode};
use medhub_actors::ActorError;

use crate::api::error::ApiError;

use crate::server::AppState;

/// Set by the API on a `not_owner` answer: nothing was done, the request may go to the owner.
pub const NOT_OWNER_HEADER: &str = "x-medhub-not-owner";
/// On a forwarded request: the forwarding node, when it signed, and the signature.
const FORWARDED_BY: &str = "x-medhub-forwarded-by";
const FORWARDED_AT: &str = "x-medhub-forwarded-at";
const FORWARDED_SIGNATURE: &str = "x-medhub-forwarded-signature";
/// On a forwarded request: the original client's address (for the audit trail).
const CLIENT_ADDR: &str = "x-medhub-client-addr";
/// On a forwarded answer: the node that served it.
const SERVED_BY: &str = "x-medhub-served-by";

/// How long a signed request stays valid (nodes' clocks may differ a little).
const SIGNATURE_WINDOW_SECS: i64 = 30;
/// How long a known owner is trusted without asking the database again.
const ROUTE_CACHE: Duration = Duration::from_secs(1);
/// Largest request body forwarded (the API itself takes at most 256 KiB).
const MAX_FORWARDED_BODY: usize = 1024 * 1024;
/// Between attempts to reach an owner that refused the connection.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

type HmacSha256 = Hmac<Sha256>;

/// This node's view of the cluster, shared by every request.
pub struct Cluster {
    node_id: String,
    lease: LeaseNode,
    pool: PgPool,
    ttl: Duration,
    key: Vec<u8>,
    client: reqwest::Client,
    /// Tenants known to be served elsewhere, and since when we know.
    routes: Mutex<HashMap<Uuid, (Owner, Instant)>>,
    metrics: ClusterMetrics,
}

/// Another node, serving a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node_id: String,
    pub url: String,
}

/// Where a request is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Here,
    Forward(Owner),
}

/// A request that could not be forwarded.
#[derive(Debug)]
enum ForwardError {
    /// The owner was never reached: nothing was done, trying again is safe.
    NotSent(String),
    /// The owner may have served it; nobody knows.
    Unknown(String),
}

#[derive(Clone)]
struct ClusterMetrics {
    forwarded: IntCounterVec,
    forward_seconds: Histogram,
    received: IntCounter,
    rejected_signatures: IntCounter,
}

impl ClusterMetrics {
    fn register(registry: &Registry) -> prometheus::Result<ClusterMetrics> {
        let metrics = ClusterMetrics {
            forwarded: IntCounterVec::new(
                Opts::new("medhub_cluster_forwarded_total", "Requests forwarded to the node that serves their tenant, by outcome"),
                &["outcome"],
            )?,
            forward_seconds: Histogram::with_opts(
                HistogramOpts::new("medhub_cluster_forward_seconds", "Time to get a forwarded request answered by its tenant's node")
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
            received: IntCounter::new("medhub_cluster_forwarded_in_total", "Requests other nodes forwarded to this one")?,
            rejected_signatures: IntCounter::new(
                "medhub_cluster_rejected_signatures_total",
                "Requests claiming to come from a hub node whose signature did not verify",
            )?,
        };
        registry.register(Box::new(metrics.forwarded.clone()))?;
        registry.register(Box::new(metrics.forward_seconds.clone()))?;
        registry.register(Box::new(metrics.received.clone()))?;
        registry.register(Box::new(metrics.rejected_signatures.clone()))?;
        Ok(metrics)
    }
}

impl Cluster {
    /// `signing_key` is the access-token key every node reads from the database: the node-to-node
    /// key is derived from it, so only processes with database access can sign.
    pub fn new(lease: LeaseNode, pool: PgPool, signing_key: &[u8], registry: &Registry) -> anyhow::Result<Cluster> {
        let mut derive = HmacSha256::new_from_slice(signing_key).expect("HMAC takes keys of any length");
        derive.update(b"medhub node-to-node requests v1");
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            // A forwarded command waits like a local one would (a booking may wait on its actor).
            .timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Cluster {
            node_id: lease.config().node_id.clone(),
            ttl: lease.config().ttl,
            lease,
            pool,
            key: derive.finalize().into_bytes().to_vec(),
            client,
            routes: Mutex::new(HashMap::new()),
            metrics: ClusterMetrics::register(registry)?,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's leases were renewed within a TTL (see `/readyz`).
    pub fn leases_current(&self) -> bool {
        self.lease.leases_current()
    }

    /// Where the tenant's requests are served right now.
    pub async fn route(&self, tenant_id: Uuid) -> Result<Route, sqlx::Error> {
        if lease::held_token(tenant_id).is_some() {
            return Ok(Route::Here);
        }
        if let Some((owner, since)) = self.routes.lock().expect("route cache lock").get(&tenant_id) {
            if since.elapsed() < ROUTE_CACHE {
                return Ok(Route::Forward(owner.clone()));
            }
        }
        let route = match lease::holder(&self.pool, tenant_id, self.ttl).await? {
            Holder::Node { node_id, url } if node_id != self.node_id => Route::Forward(Owner { node_id, url }),
            // Nobody, this node, or a silent holder whose lease this node will take over.
            _ => Route::Here,
        };
        let mut routes = self.routes.lock().expect("route cache lock");
        match &route {
            Route::Forward(owner) => routes.insert(tenant_id, (owner.clone(), Instant::now())),
            Route::Here => routes.remove(&tenant_id),
        };
        Ok(route)
    }

    pub fn forget(&self, tenant_id: Uuid) {
        self.routes.lock().expect("route cache lock").remove(&tenant_id);
    }

    /// What a node signs: who, when, and which request (the body travels over the same
    /// connection; the signature keeps a forged or replayed request from passing as a node's).
    fn mac(&self, node: &str, at: i64, method: &Method, path_and_query: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(format!("{node}\n{at}\n{method}\n{path_and_query}").as_bytes());
        mac
    }

    fn signature(&self, node: &str, at: i64, method: &Method, path_and_query: &str) -> String {
        hex::encode(self.mac(node, at, method, path_and_query).finalize().into_bytes())
    }

    /// The forwarding node's id when the request carries a valid node signature; `Err` when it
    /// claims to be forwarded but the signature does not hold; `Ok(None)` for a client's request.
    fn verify(&self, req: &HttpRequest) -> Result<Option<String>, &'static str> {
        let headers = req.headers();
        let Some(node) = headers.get(FORWARDED_BY) else { return Ok(None) };
        let text = |value: Option<&HeaderValue>| value.and_then(|value| value.to_str().ok()).map(str::to_owned);
        let (Some(node), Some(at), Some(signature)) = (text(Some(node)), text(headers.get(FORWARDED_AT)), text(headers.get(FORWARDED_SIGNATURE)))
        else {
            return Err("incomplete node signature");
        };
        let at: i64 = at.parse().map_err(|_| "unreadable node signature time")?;
        if (chrono::Utc::now().timestamp() - at).abs() > SIGNATURE_WINDOW_SECS {
            return Err("node signature expired");
        }
        let path_and_query = req.uri().path_and_query().map_or(req.path(), |pq| pq.as_str());
        let given = hex::decode(&signature).map_err(|_| "unreadable node signature")?;
        // Constant-time comparison.
        self.mac(&node, at, req.method(), path_and_query).verify_slice(&given).map_err(|_| "node signature does not verify")?;
        Ok(Some(node))
    }

    /// Sends the request to `owner` and returns its answer.
    async fn forward(&self, owner: &Owner, req: &HttpRequest, body: Bytes) -> Result<HttpResponse, ForwardError> {
        let path_and_query = req.uri().path_and_query().map_or(req.path(), |pq| pq.as_str()).to_owned();
        let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).map_err(|e| ForwardError::NotSent(e.to_string()))?;
        let mut outgoing = self.client.request(method, format!("{}{path_and_query}", owner.url));
        for (name, value) in req.headers() {
            if forwardable(name) {
                outgoing = outgoing.header(name.as_str(), value.as_bytes());
            }
        }
        if let Some(addr) = crate::api::extract::source_addr(req) {
            outgoing = outgoing.header(CLIENT_ADDR, addr);
        }
        for (name, value) in self.node_headers(req.method(), &path_and_query) {
            outgoing = outgoing.header(name, value);
        }
        let outgoing = outgoing.body(body);
        let started = Instant::now();
        let answer = outgoing.send().await.map_err(|e| {
            if e.is_connect() {
                ForwardError::NotSent(e.to_string())
            } else {
                ForwardError::Unknown(e.to_string())
            }
        })?;
        let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut response = HttpResponse::build(status);
        for (name, value) in answer.headers() {
            if forwardable_answer(name.as_str()) {
                response.append_header((name.as_str(), value.as_bytes()));
            }
        }
        let body = answer.bytes().await.map_err(|e| ForwardError::Unknown(format!("the answer was cut off: {e}")))?;
        self.metrics.forward_seconds.observe(started.elapsed().as_secs_f64());
        response.insert_header((SERVED_BY, owner.node_id.as_str()));
        Ok(response.body(body))
    }
}

impl Cluster {
    /// Hands a device's message to the node that serves its tenant (see `device_sink`), and
    /// returns that node's verdict: the device is acknowledged only once the owner committed.
    pub async fn deliver_remote(&self, owner: &Owner, from: &DeviceIdentity, message: &DeviceMessage) -> Result<(), ActorError> {
        let body = serde_json::to_vec(&json!({"from": from, "message": message})).map_err(|e| ActorError::Unavailable(e.to_string()))?;
        let started = Instant::now();
        let mut request = self.client.post(format!("{}{DEVICE_MESSAGES_PATH}", owner.url)).header("content-type", "application/json");
        for (name, value) in self.node_headers(&Method::POST, DEVICE_MESSAGES_PATH) {
            request = request.header(name, value);
        }
        let sent = request.body(body).send().await;
        let answer = match sent {
            Ok(answer) => answer,
            Err(e) => {
                self.forget_owner(owner);
                let outcome = if e.is_connect() { "unreachable" } else { "outcome_unknown" };
                self.metrics.forwarded.with_label_values(&[outcome]).inc();
                // Either way the device is not acknowledged and sends again: at least once.
                return Err(ActorError::Unavailable(format!("hub node {} that serves this unit's tenant did not answer: {e}", owner.node_id)));
            }
        };
        let status = answer.status().as_u16();
        let not_owner = answer.headers().contains_key(NOT_OWNER_HEADER);
        let body: serde_json::Value = answer.json().await.unwrap_or_default();
        self.metrics.forward_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.forwarded.with_label_values(&["answered"]).inc();
        let detail = body["detail"].as_str().unwrap_or("refused by the node that serves this unit's tenant").to_owned();
        match status {
            200..=299 => Ok(()),
            400 | 422 => Err(ActorError::Invalid { field: "payload", detail }),
            403 => Err(ActorError::Forbidden(detail)),
            404 => Err(ActorError::NotFound("unit")),
            409 => Err(ActorError::Conflict(detail)),
            503 if not_owner => {
                self.forget_owner(owner);
                Err(ActorError::NotOwner(detail))
            }
            _ => Err(ActorError::Unavailable(detail)),
        }
    }

    fn forget_owner(&self, owner: &Owner) {
        self.routes.lock().expect("route cache lock").retain(|_, (known, _)| known != owner);
    }
}

impl Cluster {
    /// The headers that sign a node-to-node request (`path_and_query` as sent): every request
    /// this node sends to another one carries them.
    pub fn node_headers(&self, method: &Method, path_and_query: &str) -> [(&'static str, String); 3] {
        let at = chrono::Utc::now().timestamp();
        [
            (FORWARDED_BY, self.node_id.clone()),
            (FORWARDED_AT, at.to_string()),
            (FORWARDED_SIGNATURE, self.signature(&self.node_id, at, method, path_and_query)),
        ]
    }

    /// For the node-only endpoints: true when the request is signed by a hub node, false when it
    /// is not signed at all; a forged or stale signature is refused (and counted).
    pub fn accept_node_request(&self, req: &HttpRequest) -> Result<bool, ApiError> {
        match self.verify(req) {
            Ok(Some(_)) => {
                self.metrics.received.inc();
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(why) => {
                self.metrics.rejected_signatures.inc();
                warn!(path = %req.path(), why, "refused a request with a forged or stale node signature");
                Err(ApiError::Unauthorized(format!("invalid hub node signature: {why}")))
            }
        }
    }
}

/// Where nodes hand each other device messages.
pub const DEVICE_MESSAGES_PATH: &str = "/internal/device-messages";

#[derive(serde::Deserialize)]
struct ForwardedDeviceMessage {
    from: DeviceIdentity,
    message: DeviceMessage,
}

/// `POST /internal/device-messages`: a device message another node received for a tenant this
/// node serves. Only hub nodes may call it (signed); answered like the API (204, or an error
/// whose status the sending node maps back for the device's verdict).
pub async fn device_message(req: HttpRequest, body: Bytes, cluster: web::Data<Cluster>, sink: web::Data<crate::device_sink::ActorSink>) -> Result<HttpResponse, ApiError> {
    if !cluster.accept_node_request(&req)? {
        return Err(ApiError::Unauthorized("only hub nodes may hand over device messages".into()));
    }
    let forwarded: ForwardedDeviceMessage = serde_json::from_slice(&body).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    sink.deliver(forwarded.from, forwarded.message).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Hop-by-hop headers and those the client recomputes are not copied to the owner.
fn forwardable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host" | "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "te" | "trailer" | "upgrade" | "content-length"
            | FORWARDED_BY | FORWARDED_AT | FORWARDED_SIGNATURE | CLIENT_ADDR
    )
}

fn forwardable_answer(name: &str) -> bool {
    !matches!(name, "connection" | "keep-alive" | "transfer-encoding" | "content-length" | "date" | SERVED_BY)
}

/// The original client's address of a request another node forwarded (set by [`route_to_owner`]).
#[derive(Debug, Clone)]
pub struct ForwardedFor(pub String);

/// The tenant a request is for, from its access token; `None` for requests without one (login,
/// public routes), which are served here.
fn request_tenant(state: &AppState, headers: &HeaderMap) -> Option<Uuid> {
    let token = headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")?.trim();
    state.auth.token_tenant(token)
}

/// The routing middleware for the API (see the module documentation).
pub async fn route_to_owner(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, BoxBody>>, actix_web::Error> {
    let (Some(cluster), Some(state)) = (req.app_data::<web::Data<Cluster>>().cloned(), req.app_data::<web::Data<AppState>>().cloned())
    else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    if !(req.path().starts_with("/api/") || req.path().starts_with("/fhir/")) {
        // The console, WebSockets (served by every node from the event bus), health and metrics.
        return Ok(next.call(req).await?.map_into_left_body());
    }
    match cluster.verify(req.request()) {
        Ok(Some(node)) => {
            // Sent by another node: served here, whatever this node thinks of the lease (a
            // refusal goes back to that node, which asks again).
            cluster.metrics.received.inc();
            let client = req.headers().get(CLIENT_ADDR).and_then(|value| value.to_str().ok()).map(str::to_owned);
            debug!(from_node = %node, path = %req.path(), "serving a request another node forwarded");
            if let Some(client) = client {
                req.extensions_mut().insert(ForwardedFor(client));
            }
            return Ok(next.call(req).await?.map_into_left_body());
        }
        Ok(None) => {}
        Err(why) => {
            cluster.metrics.rejected_signatures.inc();
            warn!(path = %req.path(), why, "refused a request with a forged or stale node signature");
            let response = HttpResponse::Unauthorized().json(json!({"error": "unauthorized", "detail": format!("invalid hub node signature: {why}")}));
            return Ok(req.into_response(response).map_into_right_body());
        }
    }
    let Some(tenant_id) = request_tenant(&state, req.headers()) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };

    // The body is kept, so that the request can still go to the owner if this node finds out it
    // does not serve the tenant only once it tries.
    let (http_req, mut payload) = req.into_parts();
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > MAX_FORWARDED_BODY {
            let response = HttpResponse::PayloadTooLarge()
                .json(json!({"error": "invalid_body", "field": "body", "detail": format!("the body is larger than {MAX_FORWARDED_BODY} bytes")}));
            return Ok(ServiceResponse::new(http_req, response).map_into_right_body());
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();
    let deadline = Instant::now() + cluster.ttl * 2 + Duration::from_secs(2);
    let mut http_req = http_req;
    let mut next = Some(next);
    let mut route = cluster.route(tenant_id).await.map_err(crate::api::error::ApiError::from)?;
    loop {
        match route {
            Route::Here => {
                let Some(next) = next.take() else {
                    // Served here once already and refused as not the owner, and still nobody
                    // else serves it: let the client retry.
                    let response = HttpResponse::ServiceUnavailable()
                        .insert_header(("Retry-After", "1"))
                        .json(json!({"error": "unavailable", "detail": "the tenant is moving between hub nodes; nothing was done, retry"}));
                    return Ok(ServiceResponse::new(http_req, response).map_into_right_body());
                };
                // The request itself (not a clone: the router needs it unshared) goes in, and
                // comes back with the answer.
                let res = next.call(ServiceRequest::from_parts(http_req, Payload::from(body.clone()))).await?;
                if res.status() != StatusCode::SERVICE_UNAVAILABLE || !res.headers().contains_key(NOT_OWNER_HEADER) {
                    return Ok(res.map_into_left_body());
                }
                // Another node took the tenant meanwhile: nothing was done here.
                cluster.forget(tenant_id);
                route = cluster.route(tenant_id).await.map_err(crate::api::error::ApiError::from)?;
                if route == Route::Here {
                    return Ok(res.map_into_left_body());
                }
                let (request, _refused) = res.into_parts();
                http_req = request;
            }
            Route::Forward(owner) => match cluster.forward(&owner, &http_req, body.clone()).await {
                Ok(response) => {
                    cluster.metrics.forwarded.with_label_values(&["answered"]).inc();
                    return Ok(ServiceResponse::new(http_req, response).map_into_right_body());
                }
                Err(ForwardError::NotSent(error)) => {
                    cluster.forget(tenant_id);
                    if Instant::now() >= deadline {
                        cluster.metrics.forwarded.with_label_values(&["unreachable"]).inc();
                        warn!(tenant_id = %tenant_id, owner = %owner.node_id, error, "the tenant's node cannot be reached; gave up");
                        let response = HttpResponse::ServiceUnavailable().insert_header(("Retry-After", "1")).json(json!({
                            "error": "unavailable",
                            "detail": format!("hub node {} that serves this tenant cannot be reached; nothing was done, retry", owner.node_id),
                        }));
                        return Ok(ServiceResponse::new(http_req, response).map_into_right_body());
                    }
                    info!(tenant_id = %tenant_id, owner = %owner.node_id, error, "the tenant's node refused the connection; asking again (failover)");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    route = cluster.route(tenant_id).await.map_err(crate::api::error::ApiError::from)?;
                }
                Err(ForwardError::Unknown(error)) => {
                    cluster.forget(tenant_id);
                    cluster.metrics.forwarded.with_label_values(&["outcome_unknown"]).inc();
                    warn!(tenant_id = %tenant_id, owner = %owner.node_id, error, "lost the tenant's node while it served a forwarded request");
                    let response = HttpResponse::BadGateway().json(json!({
                        "error": "outcome_unknown",
                        "detail": format!(
                            "hub node {} that serves this tenant stopped answering while it handled the request: it may or may not have been applied; check before retrying",
                            owner.node_id
                        ),
                    }));
                    return Ok(ServiceResponse::new(http_req, response).map_into_right_body());
                }
            },
        }
    }
}
