//! External-broker mode: the hub is an MQTT client (rumqttc) of a broker such as mosquitto. It
//! subscribes to every unit's telemetry (`medhub/+/ambulance/+/gps|vitals|status`) and publishes
//! commands at QoS 1. The broker authenticates devices and confines them to their topics (its
//! password and ACL files, [`crate::mosquitto`]), so here a message's device is known from its
//! topic: the unit's active device (a monitor for vitals, its tracker otherwise).
//!
//! The client's event loop only reads and routes: messages go to a few lanes (by unit, so each
//! unit's messages stay in order) that validate and deliver them, each behind a bounded queue. A
//! slow delivery holds up its lane at worst, never the connection; a full lane drops and counts.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use uuid::Uuid;

use medhub_actors::devices::DeviceIdentity;
use medhub_actors::{ActorError, TenantSlug};

use crate::ingest::{Ingest, LogThrottle, Verdict};
use crate::metrics::CommandOutcome;
use crate::payload::RejectReason;
use crate::topics::{parse_telemetry_topic, telemetry_filters, Telemetry, TelemetryTopic};
use crate::GatewayError;

/// Lanes validating and delivering messages in parallel.
const LANES: usize = 4;
/// Messages waiting per lane before new ones are dropped.
const LANE_CAPACITY: usize = 4096;
/// Largest packet the hub's client reads: payloads over the configured maximum are refused and
/// counted by the lanes, rather than breaking the hub's connection (mosquitto's own
/// `max_packet_size` should stop them at the broker first).
const CLIENT_MAX_INCOMING: usize = 16 * 1024 * 1024;
/// How long a unit's device is remembered (and an unknown unit, for a shorter time).
const KNOWN_UNIT_FOR: Duration = Duration::from_secs(60);
const UNKNOWN_UNIT_FOR: Duration = Duration::from_secs(10);

/// A parsed `mqtt://user:password@host:port` URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mqtt://{}{}:{}", self.username.as_deref().map(|u| format!("{u}@")).unwrap_or_default(), self.host, self.port)
    }
}

pub(crate) fn parse_url(url: &str) -> Result<BrokerUrl, GatewayError> {
    let bad = |detail: &str| GatewayError::BrokerUrl(format!("{detail} (expected mqtt://user:password@host:port)"));
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| if url.starts_with("mqtts://") { bad("TLS (mqtts://) is not built in: reach the broker over a TLS tunnel") } else { bad("the scheme must be mqtt://") })?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#']) {
        return Err(bad("no path or query is allowed"));
    }
    let (login, address) = match rest.rsplit_once('@') {
        Some((login, address)) => (Some(login), address),
        None => (None, rest),
    };
    let (username, password) = match login {
        Some(login) => {
            let (user, password) = login.split_once(':').map_or((login, None), |(user, password)| (user, Some(password)));
            let user = percent_decode(user).ok_or_else(|| bad("bad %-escape in the username"))?;
            let password = match password {
                Some(password) => Some(percent_decode(password).ok_or_else(|| bad("bad %-escape in the password"))?),
                None => None,
            };
            (Some(user), password)
        }
        None => (None, None),
    };
    let (host, port) = if let Some(bracketed) = address.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(|| bad("unclosed [ in the host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match address.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    if host.is_empty() {
        return Err(bad("the host is missing"));
    }
    let port = match port {
        Some(port) => port.parse::<u16>().ok().filter(|port| *port > 0).ok_or_else(|| bad("the port must be 1 to 65535"))?,
        None => 1883,
    };
    Ok(BrokerUrl { host: host.to_owned(), port, username, password })
}

/// `%XX` escapes decoded; `None` if one is broken or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What the running client shares with [`crate::GatewayHandle`].
pub(crate) struct Shared {
    client: AsyncClient,
    connected: AtomicBool,
    /// Bumped when a device is deactivated: the lanes forget the devices they remembered.
    device_epoch: AtomicU64,
    ingest: Arc<Ingest>,
}

impl Shared {
    pub fn send_command(&self, topic: String, payload: Bytes) -> Result<(), ActorError> {
        let metrics = self.ingest.metrics();
        if !self.connected.load(Ordering::Acquire) {
            metrics.command(CommandOutcome::NoSubscriber);
            return Err(ActorError::Unavailable("the hub is not connected to the MQTT broker; the command was not sent".to_owned()));
        }
        match self.client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
            Ok(()) => {
                metrics.command(CommandOutcome::Queued);
                Ok(())
            }
            Err(error) => {
                metrics.command(CommandOutcome::Overloaded);
                Err(ActorError::Unavailable(format!("the command could not be queued for the MQTT broker ({error}); retry")))
            }
        }
    }

    pub fn forget_devices(&self) {
        self.device_epoch.fetch_add(1, Ordering::AcqRel);
    }
}

/// Connects (in the background, retrying) and returns what the handle needs plus the task to
/// run until shutdown.
pub(crate) fn start(
    url: &BrokerUrl,
    ingest: Arc<Ingest>,
    pool: PgPool,
    max_packet_bytes: usize,
    shutdown: watch::Receiver<bool>,
) -> (Arc<Shared>, impl std::future::Future<Output = ()> + Send + 'static) {
    let client_id = format!("medhub-hub-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let mut options = MqttOptions::new(client_id, url.host.clone(), url.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    options.set_max_packet_size(CLIENT_MAX_INCOMING.max(max_packet_bytes), max_packet_bytes.max(64 * 1024));
    if let Some(username) = &url.username {
        options.set_credentials(username.clone(), url.password.clone().unwrap_or_default());
    }
    let (client, eventloop) = AsyncClient::new(options, 1024);
    let shared = Arc::new(Shared { client, connected: AtomicBool::new(false), device_epoch: AtomicU64::new(0), ingest: ingest.clone() });
    let broker = format!("{}:{}", url.host, url.port);
    let task = run(eventloop, shared.clone(), pool, broker, shutdown);
    (shared, task)
}

struct Job {
    topic: TelemetryTopic,
    payload: Bytes,
}

async fn run(mut eventloop: rumqttc::EventLoop, shared: Arc<Shared>, pool: PgPool, broker: String, mut shutdown: watch::Receiver<bool>) {
    let mut lanes = Vec::with_capacity(LANES);
    let mut lane_tasks = Vec::with_capacity(LANES);
    for _ in 0..LANES {
        let (sender, receiver) = mpsc::channel(LANE_CAPACITY);
        lanes.push(sender);
        lane_tasks.push(tokio::spawn(lane(receiver, shared.clone(), pool.clone())));
    }
    let metrics = shared.ingest.metrics().clone();
    let mut log = LogThrottle::new(5, Duration::from_secs(30));
    let mut backoff = Duration::from_millis(500);
    loop {
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(500);
                    // A clean session forgets subscriptions: subscribe on every (re)connect.
                    for filter in telemetry_filters() {
                        if let Err(error) = shared.client.try_subscribe(filter, QoS::AtLeastOnce) {
                            error!(%error, "cannot subscribe to device telemetry on the MQTT broker");
                        }
                    }
                    shared.connected.store(true, Ordering::Release);
                    metrics.broker_connected.set(1);
                    info!(broker, "connected to the MQTT broker");
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                        error!(broker, "the MQTT broker refused the hub's telemetry subscription: its ACL must let the hub's user read medhub/+/ambulance/+/#");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => route(&lanes, &shared, &mut log, &publish.topic, publish.payload),
                Ok(_) => {}
                Err(error) => {
                    shared.connected.store(false, Ordering::Release);
                    metrics.broker_connected.set(0);
                    if let Some(suppressed) = log.allow(Instant::now()) {
                        warn!(broker, %error, suppressed, retry_in_ms = backoff.as_millis() as u64, "MQTT broker connection failed; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    shared.connected.store(false, Ordering::Release);
    metrics.broker_connected.set(0);
    let _ = shared.client.try_disconnect();
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(event) = eventloop.poll().await {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    drop(lanes);
    for task in lane_tasks {
        let _ = task.await;
    }
    info!(broker, "disconnected from the MQTT broker");
}

fn route(lanes: &[mpsc::Sender<Job>], shared: &Shared, log: &mut LogThrottle, topic: &str, payload: Bytes) {
    let metrics = shared.ingest.metrics();
    let Some(parsed) = parse_telemetry_topic(topic) else {
        metrics.rejected(RejectReason::UnknownUnit);
        if let Some(suppressed) = log.allow(Instant::now()) {
            let topic: String = topic.chars().take(200).collect();
            warn!(topic, suppressed, "device message rejected: the topic names no valid tenant and unit");
        }
        return;
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    parsed.unit_id.hash(&mut hasher);
    let lane = &lanes[(hasher.finish() % lanes.len() as u64) as usize];
    if lane.try_send(Job { topic: parsed, payload }).is_err() {
        metrics.rejected(RejectReason::Overloaded);
        if let Some(suppressed) = log.allow(Instant::now()) {
            warn!(suppressed, "device message dropped: the hub is behind on validating device messages");
        }
    }
}

/// Validates and delivers the messages of the units hashed to this lane, in order.
async fn lane(mut jobs: mpsc::Receiver<Job>, shared: Arc<Shared>, pool: PgPool) {
    let mut devices: HashMap<(TenantSlug, Uuid, Telemetry), (Option<DeviceIdentity>, Instant)> = HashMap::new();
    let mut epoch = shared.device_epoch.load(Ordering::Acquire);
    let mut log = LogThrottle::new(10, Duration::from_secs(10));
    while let Some(job) = jobs.recv().await {
        let current = shared.device_epoch.load(Ordering::Acquire);
        if current != epoch || devices.len() > 100_000 {
            devices.clear();
            epoch = current;
        }
        let key = (job.topic.tenant.clone(), job.topic.unit_id, job.topic.kind);
        let remembered = devices.get(&key).filter(|(identity, at)| at.elapsed() < if identity.is_some() { KNOWN_UNIT_FOR } else { UNKNOWN_UNIT_FOR });
        let identity = match remembered {
            Some((identity, _)) => identity.clone(),
            None => match unit_device(&pool, &job.topic).await {
                Ok(identity) => {
                    devices.insert(key, (identity.clone(), Instant::now()));
                    identity
                }
                Err(error) => {
                    shared.ingest.metrics().rejected(RejectReason::HubUnavailable);
                    if let Some(suppressed) = log.allow(Instant::now()) {
                        warn!(tenant = %job.topic.tenant, unit_id = %job.topic.unit_id, %error, suppressed, "device message dropped: cannot look up the unit's device");
                    }
                    continue;
                }
            },
        };
        let Some(identity) = identity else {
            shared.ingest.metrics().rejected(RejectReason::UnknownUnit);
            if let Some(suppressed) = log.allow(Instant::now()) {
                warn!(tenant = %job.topic.tenant, unit_id = %job.topic.unit_id, suppressed, "device message rejected: the unit has no active device");
            }
            continue;
        };
        match shared.ingest.take(&identity, job.topic.kind, &job.payload).await {
            Verdict::Taken => {}
            Verdict::Refused(rejection) | Verdict::Unavailable(rejection) => {
                if let Some(suppressed) = log.allow(Instant::now()) {
                    warn!(tenant = %identity.tenant, unit_id = %identity.unit_id, device_id = %identity.device_id, reason = rejection.reason.as_str(),
                          field = rejection.field, suppressed, "device message rejected: {} message: {}", job.topic.kind.as_str(), rejection.detail);
                }
            }
        }
    }
}

/// The active device that speaks for a unit's topic: its monitor for vitals, its tracker for the
/// rest, else any of its devices.
async fn unit_device(pool: &PgPool, topic: &TelemetryTopic) -> Result<Option<DeviceIdentity>, sqlx::Error> {
    let preferred = if topic.kind == Telemetry::Vitals { "monitor" } else { "ambulance" };
    let row = sqlx::query(
        "SELECT d.id, d.tenant_id FROM devices d JOIN tenants t ON t.id = d.tenant_id
         WHERE t.slug = $1 AND d.unit_id = $2 AND d.active
         ORDER BY (d.kind = $3) DESC, d.created_at LIMIT 1",
    )
    .bind(topic.tenant.as_str())
    .bind(topic.unit_id)
    .bind(preferred)
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(DeviceIdentity { tenant_id: row.try_get("tenant_id")?, tenant: topic.tenant.clone(), device_id: row.try_get("id")?, unit_id: topic.unit_id })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_carry_login_host_and_port() {
        let url = parse_url("mqtt://medhub-hub:p%40ss%3Aword@broker.example:1884").unwrap();
        assert_eq!(url.host, "broker.example");
        assert_eq!(url.port, 1884);
        assert_eq!(url.username.as_deref(), Some("medhub-hub"));
        assert_eq!(url.password.as_deref(), Some("p@ss:word"));
        let url = parse_url("tcp://127.0.0.1").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.username), ("127.0.0.1", 1883, None));
        assert_eq!(parse_url("mqtt://[::1]:1883/").unwrap().host, "::1");
        assert!(!format!("{:?}", parse_url("mqtt://u:secret@h").unwrap()).contains("secret"));
        for bad in ["http://h:1883", "mqtts://h", "mqtt://", "mqtt://h:0", "mqtt://h:99999", "mqtt://h/topic", "mqtt://u:%zz@h"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
