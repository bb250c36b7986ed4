//! External-broker mode: the hub is an MQTT 5 client (rumqttc) of a broker such as mosquitto. It
//! reads every unit's telemetry (`medhub/+/ambulance/+/gps|vitals|status`) through a shared
//! subscription and publishes commands at QoS 1. The broker authenticates devices and confines
//! them to their topics (its password and ACL files, [`crate::mosquitto`]), so here a message's
//! device is known from its topic: the unit's active device (a monitor for vitals, its tracker
//! otherwise).
//!
//! # Several hub nodes, one broker
//!
//! Every hub node subscribes to `$share/{group}/medhub/+/ambulance/+/...` ([`ShareGroup`]), so the
//! broker hands each device message to exactly one node of the group (mosquitto: to each in turn);
//! a node given a message of a tenant that another node serves has its sink hand it over. Each
//! node's client id is its node id plus a random suffix: two clients with one id would disconnect
//! each other for ever.
//!
//! # At least once: acknowledged after the hub took it
//!
//! The client acknowledges by hand: a QoS 1 message gets its PUBACK only once the hub's sink took
//! it (a vitals reading is committed by then) or refused it for good. The broker gives a node at
//! most [`RECEIVE_MAXIMUM`] unacknowledged messages, so a node that falls behind slows its share
//! of the stream rather than queueing without bound. PUBACKs go out as the lanes settle messages:
//! each unit's in the order they arrived, but two units' possibly not (MQTT 5 §4.6 asks for arrival
//! order; mosquitto matches a PUBACK by its packet id alone, and holding every acknowledgement
//! behind one unit whose tenant is unavailable would stall the node's whole share).
//!
//! The broker never resends a message on the connection that received it, so a message the hub
//! cannot take now (its tenant is moving between nodes, the database blinked) is tried again here,
//! with growing pauses, for [`RETRY_FOR`]. One still not taken then is acknowledged anyway, logged
//! and counted (`medhub_mqtt_undelivered_total`): lost, loudly, so that its lane moves on.
//!
//! The session is clean (it ends with the connection): a node that goes away stops receiving its
//! share at once, rather than the broker queueing that share for it. The price: what the broker had
//! sent a node that crashed, unacknowledged, is lost with its session (mosquitto 2.0 does not hand
//! it to another member of the group). A node that stops cleanly loses nothing: it leaves the group
//! first (UNSUBSCRIBE, so the other nodes get the next messages), finishes and acknowledges what it
//! holds, then disconnects.
//!
//! # Lanes
//!
//! The client's event loop only reads and routes: messages go to a few lanes (by unit, so each
//! unit's messages stay in order) that validate and deliver them. A slow delivery holds up its lane
//! at worst, never the connection.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{ConnAck, ConnectReturnCode, Filter, Packet, Publish, SubAck, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, info_span, warn, Instrument};
use uuid::Uuid;

use medhub_actors::devices::DeviceIdentity;
use medhub_actors::{ActorError, TenantSlug};

use crate::ingest::{Ingest, LogThrottle, Verdict};
use crate::metrics::CommandOutcome;
use crate::payload::RejectReason;
use crate::topics::{parse_telemetry_topic, ShareGroup, Telemetry, TelemetryTopic};
use crate::GatewayError;

/// Lanes validating and delivering messages in parallel.
const LANES: usize = 4;
/// Unacknowledged messages the broker may have sent this node at once (MQTT 5 Receive Maximum).
pub(crate) const RECEIVE_MAXIMUM: u16 = 1024;
/// Messages waiting per lane: all the broker may have in flight, so that no lane overflows while
/// the broker keeps to [`RECEIVE_MAXIMUM`].
const LANE_CAPACITY: usize = RECEIVE_MAXIMUM as usize;
/// Requests (acknowledgements, commands, subscriptions) waiting for the client's event loop.
const REQUEST_CAPACITY: usize = 4 * RECEIVE_MAXIMUM as usize;
/// Largest packet the hub's client reads: payloads over the configured maximum are refused and
/// counted by the lanes, rather than breaking the hub's connection (mosquitto's own
/// `max_packet_size` should stop them at the broker first).
const CLIENT_MAX_INCOMING: usize = 16 * 1024 * 1024;
/// How long a unit's device is remembered (and an unknown unit, for a shorter time).
const KNOWN_UNIT_FOR: Duration = Duration::from_secs(60);
const UNKNOWN_UNIT_FOR: Duration = Duration::from_secs(10);
/// How long a message the hub cannot take now is tried again before it is given up: several
/// tenant lease periods, so a tenant moving to another node does not lose what is in flight.
const RETRY_FOR: Duration = Duration::from_secs(30);
const FIRST_RETRY_AFTER: Duration = Duration::from_millis(250);
const LONGEST_RETRY_PAUSE: Duration = Duration::from_secs(4);
/// At shutdown, how long the broker has to confirm that the node left the group, then how long
/// the lanes have to finish what they hold (together within the gateway's 10 s).
const LEAVE_FOR: Duration = Duration::from_secs(2);
const DRAIN_FOR: Duration = Duration::from_secs(5);
const FIRST_RECONNECT_AFTER: Duration = Duration::from_millis(500);
const LONGEST_RECONNECT_PAUSE: Duration = Duration::from_secs(30);

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

/// How the hub's client joins the broker.
#[derive(Debug, Clone)]
pub(crate) struct ClientConfig {
    pub url: BrokerUrl,
    pub share_group: ShareGroup,
    pub client_id: String,
    pub max_packet_bytes: usize,
}

/// `medhub-hub-{node id}-{6 random hex digits}`: recognisable in the broker's log, and distinct
/// even when two running nodes were given one node id by mistake (a broker disconnects a client
/// when another connects with its id; two with one id would take turns for ever). Characters a
/// broker might refuse become `-`, and the node id is cut to 64 characters.
pub(crate) fn client_id(node_id: &str) -> String {
    let node: String =
        node_id.chars().take(64).map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' }).collect();
    format!("medhub-hub-{node}-{}", &Uuid::new_v4().simple().to_string()[..6])
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
    config: ClientConfig,
    ingest: Arc<Ingest>,
    pool: PgPool,
    shutdown: watch::Receiver<bool>,
) -> (Arc<Shared>, impl std::future::Future<Output = ()> + Send + 'static) {
    let mut options = MqttOptions::new(config.client_id.clone(), config.url.host.clone(), config.url.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_start(true);
    options.set_manual_acks(true);
    options.set_receive_maximum(Some(RECEIVE_MAXIMUM));
    options.set_max_packet_size(Some(CLIENT_MAX_INCOMING.max(config.max_packet_bytes) as u32));
    if let Some(username) = &config.url.username {
        options.set_credentials(username.clone(), config.url.password.clone().unwrap_or_default());
    }
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let shared = Arc::new(Shared { client, connected: AtomicBool::new(false), device_epoch: AtomicU64::new(0), ingest: ingest.clone() });
    let task = run(eventloop, shared.clone(), pool, config, shutdown);
    (shared, task)
}

/// A message for a lane, with what acknowledging it takes: the connection that brought it and its
/// packet id (`None` for QoS 0, which is never acknowledged).
struct Job {
    connection: u64,
    pkid: Option<u16>,
    topic: TelemetryTopic,
    payload: Bytes,
}

/// A lane is done with a message: `settled` (taken, refused for good, or given up: acknowledge it),
/// or abandoned at shutdown (leave it unacknowledged).
struct Finished {
    connection: u64,
    pkid: Option<u16>,
    settled: bool,
}

/// How far the client is on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Unsubscribed from the group; the broker confirmed `confirmed` filters so far.
    Leaving { until: Instant, confirmed: usize },
    /// Out of the group: finishing (and acknowledging) what the node holds, including what the
    /// broker had queued for it before it left.
    Draining { until: Instant },
    Stopped,
}

/// While draining, the node stops once it holds nothing and nothing came for this long.
const QUIET_FOR: Duration = Duration::from_millis(300);

async fn run(mut eventloop: EventLoop, shared: Arc<Shared>, pool: PgPool, config: ClientConfig, mut shutdown: watch::Receiver<bool>) {
    let (finished_sender, mut finished) = mpsc::unbounded_channel();
    let mut lanes = Vec::with_capacity(LANES);
    let mut lane_tasks = Vec::with_capacity(LANES);
    for _ in 0..LANES {
        let (sender, receiver) = mpsc::channel(LANE_CAPACITY);
        lanes.push(sender);
        let lane = Lane::new(shared.clone(), pool.clone(), finished_sender.clone(), shutdown.clone());
        lane_tasks.push(tokio::spawn(lane.run(receiver)));
    }
    drop(finished_sender);
    let broker = format!("{}:{}", config.url.host, config.url.port);
    let mut session = Session::new(shared.clone(), broker.clone(), config.share_group, lanes);
    let mut reconnect_after = FIRST_RECONNECT_AFTER;
    while session.phase != Phase::Stopped {
        // `poll` is never cancelled while the client serves: a request it had taken from the
        // client's queue (a PUBACK, a command) would be lost with it. The lanes' verdicts, the
        // shutdown signal and the shutdown's deadlines are handled while it runs.
        let woken = {
            let poll = eventloop.poll();
            tokio::pin!(poll);
            loop {
                let deadline = session.deadline();
                tokio::select! {
                    event = &mut poll, if session.polling() => break Some(event),
                    Some(message) = finished.recv() => session.finished(message),
                    _ = shutdown.changed(), if session.phase == Phase::Serving => session.leave(),
                    _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => session.deadline_passed(),
                    else => break None,
                }
                session.send_acknowledgements();
                if session.phase == Phase::Stopped {
                    break None;
                }
            }
        };
        match woken {
            Some(Ok(event)) => {
                if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                    reconnect_after = FIRST_RECONNECT_AFTER;
                }
                session.on_event(event);
            }
            Some(Err(error)) => {
                session.connection_lost(&error, reconnect_after);
                if session.phase == Phase::Serving {
                    tokio::select! {
                        _ = tokio::time::sleep(reconnect_after) => {}
                        _ = shutdown.changed() => session.leave(),
                    }
                    reconnect_after = (reconnect_after * 2).min(LONGEST_RECONNECT_PAUSE);
                }
            }
            None => {}
        }
        session.send_acknowledgements();
    }
    if session.online {
        let _ = shared.client.try_disconnect();
        // Let the acknowledgements queued before it and the DISCONNECT go out.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
    shared.connected.store(false, Ordering::Release);
    shared.ingest.metrics().broker_connected.set(0);
    // Idle by now, or still busy past the drain deadline (the gateway's runtime stops them anyway).
    drop(session);
    for task in lane_tasks {
        task.abort();
    }
    info!(broker, "disconnected from the MQTT broker");
}

/// The run loop's state: the connection, the acknowledgements due, how far shutdown went.
struct Session {
    shared: Arc<Shared>,
    broker: String,
    share_group: ShareGroup,
    filters: [String; 3],
    lanes: Vec<mpsc::Sender<Job>>,
    /// Messages handed to the lanes and not finished yet.
    outstanding: usize,
    last_arrival: Instant,
    /// Bumped whenever the connection is lost. A verdict on a message of an earlier connection is
    /// not acknowledged: the broker forgot that message with the session, and the packet id may
    /// already name another message on the new connection.
    connection: u64,
    online: bool,
    /// Acknowledgements the client's request queue had no room for yet.
    acknowledgements: VecDeque<u16>,
    phase: Phase,
    log: LogThrottle,
}

impl Session {
    fn new(shared: Arc<Shared>, broker: String, share_group: ShareGroup, lanes: Vec<mpsc::Sender<Job>>) -> Session {
        Session {
            shared,
            broker,
            filters: share_group.telemetry_filters(),
            share_group,
            lanes,
            outstanding: 0,
            last_arrival: Instant::now(),
            connection: 0,
            online: false,
            acknowledgements: VecDeque::new(),
            phase: Phase::Serving,
            log: LogThrottle::new(5, Duration::from_secs(30)),
        }
    }

    /// Whether to read from the broker: always while serving (reconnecting if need be), and on the
    /// way out only on the connection there is (a new one would not know the node is leaving).
    fn polling(&self) -> bool {
        match self.phase {
            Phase::Serving => true,
            Phase::Leaving { .. } | Phase::Draining { .. } => self.online,
            Phase::Stopped => false,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Leaving { until, .. } => Some(until),
            Phase::Draining { until } if self.outstanding == 0 => Some(until.min(self.last_arrival + QUIET_FOR)),
            Phase::Draining { until } => Some(until),
            Phase::Serving | Phase::Stopped => None,
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::ConnAck(connack)) => self.connected(&connack),
            Event::Incoming(Packet::SubAck(ack)) => self.subscribed(&ack),
            Event::Incoming(Packet::UnsubAck(_)) => {
                if let Phase::Leaving { until, confirmed } = self.phase {
                    self.phase = Phase::Leaving { until, confirmed: confirmed + 1 };
                    if confirmed + 1 >= self.filters.len() {
                        info!(broker = self.broker, share_group = %self.share_group, "left the shared subscription: the group's other hub nodes get the next device messages");
                        self.drain();
                    }
                }
            }
            Event::Incoming(Packet::Publish(publish)) => self.receive(publish),
            _ => {}
        }
    }

    fn connected(&mut self, connack: &ConnAck) {
        self.online = true;
        self.shared.connected.store(true, Ordering::Release);
        self.shared.ingest.metrics().broker_connected.set(1);
        info!(broker = self.broker, "connected to the MQTT broker");
        if connack.properties.as_ref().and_then(|properties| properties.shared_subscription_available) == Some(0) {
            error!(broker = self.broker, "the MQTT broker says it has no shared subscriptions: the hub needs them (mosquitto 1.6 or later, or another MQTT 5 broker)");
        }
        if self.phase != Phase::Serving {
            return;
        }
        // A clean session forgets subscriptions: subscribe on every (re)connect.
        let filters = self.filters.iter().map(|filter| Filter::new(filter.clone(), QoS::AtLeastOnce));
        if let Err(error) = self.shared.client.try_subscribe_many(filters) {
            error!(broker = self.broker, %error, "cannot subscribe to device telemetry on the MQTT broker");
        }
    }

    fn subscribed(&self, ack: &SubAck) {
        let refused: Vec<&SubscribeReasonCode> = ack.return_codes.iter().filter(|code| !matches!(code, SubscribeReasonCode::Success(_))).collect();
        if refused.contains(&&SubscribeReasonCode::SharedSubscriptionsNotSupported) {
            error!(broker = self.broker, codes = ?ack.return_codes, "the MQTT broker refused the hub's shared subscription: the hub receives no device telemetry; it needs a broker with MQTT 5 shared subscriptions (mosquitto 1.6 or later)");
        } else if !refused.is_empty() {
            error!(broker = self.broker, codes = ?ack.return_codes, filters = ?self.filters,
                   "the MQTT broker refused the hub's telemetry subscription: its ACL must let the hub's user read medhub/+/ambulance/+/#");
        } else {
            if ack.return_codes.contains(&SubscribeReasonCode::Success(QoS::AtMostOnce)) {
                warn!(broker = self.broker, "the MQTT broker granted the hub's subscription at QoS 0 only: device messages it loses are not sent again");
            }
            info!(broker = self.broker, share_group = %self.share_group, "subscribed to device telemetry (a shared subscription: each message goes to one hub node of the group)");
        }
    }

    /// Routes a message to its unit's lane; one that cannot be handled at all is acknowledged at
    /// once (nothing could make it acceptable later).
    fn receive(&mut self, publish: Publish) {
        self.last_arrival = Instant::now();
        let pkid = (publish.qos != QoS::AtMostOnce).then_some(publish.pkid);
        let metrics = self.shared.ingest.metrics().clone();
        let Some(topic) = std::str::from_utf8(&publish.topic).ok().and_then(parse_telemetry_topic) else {
            metrics.rejected(RejectReason::UnknownUnit);
            if let Some(suppressed) = self.log.allow(Instant::now()) {
                let topic: String = String::from_utf8_lossy(&publish.topic).chars().take(200).collect();
                warn!(topic, suppressed, "device message rejected: the topic names no valid tenant and unit");
            }
            self.acknowledge(pkid);
            return;
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        topic.unit_id.hash(&mut hasher);
        let lane = &self.lanes[(hasher.finish() % self.lanes.len() as u64) as usize];
        if lane.try_send(Job { connection: self.connection, pkid, topic, payload: publish.payload }).is_ok() {
            self.outstanding += 1;
        } else {
            // Only when the broker sends more than RECEIVE_MAXIMUM unacknowledged messages.
            metrics.rejected(RejectReason::Overloaded);
            if let Some(suppressed) = self.log.allow(Instant::now()) {
                warn!(broker = self.broker, suppressed, "device message dropped (and acknowledged): the broker sent more unacknowledged messages than the hub can hold");
            }
            self.acknowledge(pkid);
        }
    }

    fn finished(&mut self, finished: Finished) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if finished.settled && finished.connection == self.connection {
            self.acknowledge(finished.pkid);
        }
    }

    fn acknowledge(&mut self, pkid: Option<u16>) {
        if let (Some(pkid), true) = (pkid, self.online) {
            self.acknowledgements.push_back(pkid);
        }
    }

    /// Hands due PUBACKs to the client, as far as its request queue has room (the rest wait for
    /// the next turn of the loop).
    fn send_acknowledgements(&mut self) {
        while let Some(&pkid) = self.acknowledgements.front() {
            if !puback(&self.shared.client, pkid) {
                break;
            }
            self.acknowledgements.pop_front();
        }
    }

    fn connection_lost(&mut self, error: &ConnectionError, retry_in: Duration) {
        if self.online {
            warn!(broker = self.broker, %error, "lost the connection to the MQTT broker");
        }
        self.online = false;
        self.connection += 1;
        self.acknowledgements.clear();
        self.shared.connected.store(false, Ordering::Release);
        self.shared.ingest.metrics().broker_connected.set(0);
        match self.phase {
            Phase::Serving => {
                if let Some(suppressed) = self.log.allow(Instant::now()) {
                    let hint = match error {
                        ConnectionError::ConnectionRefused(ConnectReturnCode::UnsupportedProtocolVersion) => {
                            "; the broker does not speak MQTT 5, which the hub needs for shared subscriptions (mosquitto 1.6 or later)"
                        }
                        _ => "",
                    };
                    warn!(broker = self.broker, %error, suppressed, retry_in_ms = retry_in.as_millis() as u64, "MQTT broker connection failed; retrying{hint}");
                }
            }
            Phase::Leaving { .. } => self.drain(),
            Phase::Draining { .. } | Phase::Stopped => {}
        }
    }

    /// Shutdown begins: leave the group, so that the broker gives its next messages to the other
    /// nodes, before finishing what this node holds.
    fn leave(&mut self) {
        if !self.online {
            self.drain();
            return;
        }
        for filter in &self.filters {
            if let Err(error) = self.shared.client.try_unsubscribe(filter.clone()) {
                warn!(broker = self.broker, %error, filter, "cannot leave the shared subscription; stopping anyway");
            }
        }
        self.phase = Phase::Leaving { until: Instant::now() + LEAVE_FOR, confirmed: 0 };
    }

    fn drain(&mut self) {
        self.last_arrival = Instant::now();
        self.phase = Phase::Draining { until: Instant::now() + DRAIN_FOR };
    }

    fn deadline_passed(&mut self) {
        match self.phase {
            Phase::Leaving { .. } => {
                warn!(broker = self.broker, "the MQTT broker did not confirm within {} s that the hub left the shared subscription; stopping anyway", LEAVE_FOR.as_secs());
                self.drain();
            }
            Phase::Draining { .. } if self.outstanding == 0 => self.phase = Phase::Stopped,
            Phase::Draining { .. } => {
                warn!(broker = self.broker, outstanding = self.outstanding,
                      "device messages still being handled {} s into shutdown are left unacknowledged", DRAIN_FOR.as_secs());
                self.phase = Phase::Stopped;
            }
            Phase::Serving | Phase::Stopped => {}
        }
    }
}

/// Queues the PUBACK of QoS 1 message `pkid`; false when the client's request queue is full. The
/// client builds a PUBACK from a publish's packet id and QoS alone; the hub subscribes at QoS 1,
/// so no message arrives at QoS 2.
fn puback(client: &AsyncClient, pkid: u16) -> bool {
    let mut received = Publish::new("", QoS::AtLeastOnce, Bytes::new(), None);
    received.pkid = pkid;
    client.try_ack(&received).is_ok()
}

/// One lane: validates and delivers the messages of the units hashed to it, in order.
struct Lane {
    shared: Arc<Shared>,
    pool: PgPool,
    finished: mpsc::UnboundedSender<Finished>,
    shutdown: watch::Receiver<bool>,
    devices: HashMap<(TenantSlug, Uuid, Telemetry), (Option<DeviceIdentity>, Instant)>,
    epoch: u64,
    log: LogThrottle,
}

/// What one try at delivering a message came to.
enum Attempt {
    /// Taken, or refused for good: acknowledge it.
    Settled,
    /// The hub cannot take it now; why.
    Unavailable(String),
}

impl Lane {
    fn new(shared: Arc<Shared>, pool: PgPool, finished: mpsc::UnboundedSender<Finished>, shutdown: watch::Receiver<bool>) -> Lane {
        let epoch = shared.device_epoch.load(Ordering::Acquire);
        Lane { shared, pool, finished, shutdown, devices: HashMap::new(), epoch, log: LogThrottle::new(10, Duration::from_secs(10)) }
    }

    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            let span = info_span!("device_message", tenant = %job.topic.tenant, unit_id = %job.topic.unit_id, kind = job.topic.kind.as_str());
            let settled = self.deliver(&job).instrument(span).await;
            // The run loop is gone only at the very end of shutdown.
            let _ = self.finished.send(Finished { connection: job.connection, pkid: job.pkid, settled });
        }
    }

    /// Delivers `job`, trying again while the hub cannot take it. True when the message is settled
    /// (taken, refused for good, or given up after [`RETRY_FOR`]: acknowledge it); false when
    /// shutdown came first (leave it unacknowledged).
    async fn deliver(&mut self, job: &Job) -> bool {
        let started = Instant::now();
        let mut pause = FIRST_RETRY_AFTER;
        let mut attempts = 1u32;
        loop {
            let why = match self.attempt(job).await {
                Attempt::Settled => return true,
                Attempt::Unavailable(why) => why,
            };
            if started.elapsed() + pause > RETRY_FOR {
                self.shared.ingest.metrics().undelivered(job.topic.kind);
                error!(tenant = %job.topic.tenant, unit_id = %job.topic.unit_id, kind = job.topic.kind.as_str(), attempts, reason = why,
                       "device message lost: the hub could not take it within {} s; acknowledged to the broker so that the lane moves on", RETRY_FOR.as_secs());
                return true;
            }
            if *self.shutdown.borrow() {
                warn!(tenant = %job.topic.tenant, unit_id = %job.topic.unit_id, kind = job.topic.kind.as_str(), reason = why,
                      "device message not taken before shutdown; left unacknowledged");
                return false;
            }
            if let Some(suppressed) = self.log.allow(Instant::now()) {
                warn!(tenant = %job.topic.tenant, unit_id = %job.topic.unit_id, kind = job.topic.kind.as_str(), attempts, retry_in_ms = pause.as_millis() as u64,
                      suppressed, reason = why, "the hub cannot take a device message now; trying again");
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                // One more try, then the check above lets it go.
                _ = self.shutdown.changed() => {}
            }
            pause = (pause * 2).min(LONGEST_RETRY_PAUSE);
            attempts += 1;
        }
    }

    async fn attempt(&mut self, job: &Job) -> Attempt {
        let metrics = self.shared.ingest.metrics().clone();
        let identity = match self.identity(&job.topic).await {
            Ok(Some(identity)) => identity,
            Ok(None) => {
                metrics.rejected(RejectReason::UnknownUnit);
                if let Some(suppressed) = self.log.allow(Instant::now()) {
                    warn!(tenant = %job.topic.tenant, unit_id = %job.topic.unit_id, suppressed, "device message rejected: the unit has no active device");
                }
                return Attempt::Settled;
            }
            Err(error) => {
                metrics.rejected(RejectReason::HubUnavailable);
                return Attempt::Unavailable(format!("cannot look up the unit's device: {error}"));
            }
        };
        match self.shared.ingest.take(&identity, job.topic.kind, &job.payload).await {
            Verdict::Taken => Attempt::Settled,
            Verdict::Refused(rejection) => {
                if let Some(suppressed) = self.log.allow(Instant::now()) {
                    warn!(tenant = %identity.tenant, unit_id = %identity.unit_id, device_id = %identity.device_id, reason = rejection.reason.as_str(),
                          field = rejection.field, suppressed, "device message rejected: {} message: {}", job.topic.kind.as_str(), rejection.detail);
                }
                Attempt::Settled
            }
            Verdict::Unavailable(rejection) => Attempt::Unavailable(rejection.detail),
        }
    }

    /// The device that speaks for the topic, remembered for a while.
    async fn identity(&mut self, topic: &TelemetryTopic) -> Result<Option<DeviceIdentity>, sqlx::Error> {
        let current = self.shared.device_epoch.load(Ordering::Acquire);
        if current != self.epoch || self.devices.len() > 100_000 {
            self.devices.clear();
            self.epoch = current;
        }
        let key = (topic.tenant.clone(), topic.unit_id, topic.kind);
        let remembered = self.devices.get(&key).filter(|(identity, at)| at.elapsed() < if identity.is_some() { KNOWN_UNIT_FOR } else { UNKNOWN_UNIT_FOR });
        if let Some((identity, _)) = remembered {
            return Ok(identity.clone());
        }
        let identity = unit_device(&self.pool, topic).await?;
        self.devices.insert(key, (identity.clone(), Instant::now()));
        Ok(identity)
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

    use rumqttc::v5::mqttbytes::v5::UnsubAck;

    use medhub_actors::devices::{DeviceFuture, DeviceMessage, DeviceSink};

    struct TakesEverything;

    impl DeviceSink for TakesEverything {
        fn deliver(&self, _from: DeviceIdentity, _message: DeviceMessage) -> DeviceFuture<()> {
            Box::pin(async { Ok(()) })
        }
    }

    /// A session on one lane, as the run loop holds it (the client is never connected).
    fn session() -> (Session, mpsc::Receiver<Job>, EventLoop) {
        let metrics = crate::metrics::GatewayMetrics::register(&prometheus::Registry::new()).unwrap();
        let ingest = Arc::new(Ingest::new(Arc::new(TakesEverything), metrics, 64 * 1024));
        let (client, eventloop) = AsyncClient::new(MqttOptions::new("medhub-hub-test", "127.0.0.1", 1883), REQUEST_CAPACITY);
        let shared = Arc::new(Shared { client, connected: AtomicBool::new(false), device_epoch: AtomicU64::new(0), ingest });
        let (lane, jobs) = mpsc::channel(LANE_CAPACITY);
        (Session::new(shared, "broker:1883".into(), ShareGroup::default(), vec![lane]), jobs, eventloop)
    }

    fn connack() -> Event {
        Event::Incoming(Packet::ConnAck(ConnAck { session_present: false, code: ConnectReturnCode::Success, properties: None }))
    }

    fn fix(pkid: u16) -> Event {
        let topic = crate::topics::device_topic("alpha", Uuid::new_v4(), "gps");
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, Bytes::from_static(b"{}"), None);
        publish.pkid = pkid;
        Event::Incoming(Packet::Publish(publish))
    }

    fn settled(job: &Job) -> Finished {
        Finished { connection: job.connection, pkid: job.pkid, settled: true }
    }

    #[test]
    fn a_message_is_acknowledged_once_its_lane_settled_it_and_only_on_its_own_connection() {
        let (mut session, mut jobs, _eventloop) = session();
        session.on_event(connack());
        session.on_event(fix(7));
        let job = jobs.try_recv().unwrap();
        assert_eq!((job.pkid, session.outstanding), (Some(7), 1));
        assert!(session.acknowledgements.is_empty(), "nothing is acknowledged before the hub took it");
        session.finished(settled(&job));
        assert_eq!(session.acknowledgements, [7]);
        session.send_acknowledgements();
        assert!(session.acknowledgements.is_empty());

        // The connection drops while a message is in its lane: packet id 8 may name another
        // message on the next connection, so the verdict is not acknowledged there.
        session.on_event(fix(8));
        let job = jobs.try_recv().unwrap();
        session.connection_lost(&ConnectionError::Io(std::io::Error::other("broker gone")), Duration::from_secs(1));
        session.on_event(connack());
        session.finished(settled(&job));
        assert!(session.acknowledgements.is_empty());
        assert_eq!(session.outstanding, 0);

        // Abandoned at shutdown: finished, not acknowledged.
        session.on_event(fix(9));
        let job = jobs.try_recv().unwrap();
        session.finished(Finished { settled: false, ..settled(&job) });
        assert!(session.acknowledgements.is_empty());
    }

    #[test]
    fn a_stopping_node_leaves_the_group_then_finishes_what_the_broker_still_sends_it() {
        let (mut session, mut jobs, _eventloop) = session();
        session.on_event(connack());
        session.leave();
        assert!(matches!(session.phase, Phase::Leaving { .. }) && session.polling());
        for pkid in 1..=3 {
            session.on_event(Event::Incoming(Packet::UnsubAck(UnsubAck { pkid, reasons: Vec::new(), properties: None })));
        }
        let Phase::Draining { until } = session.phase else { panic!("draining after the broker confirmed each filter: {:?}", session.phase) };

        // What the broker had queued for the node before it left still arrives, and is handled and
        // acknowledged; meanwhile the drain deadline stands.
        session.on_event(fix(4));
        let job = jobs.try_recv().unwrap();
        assert_eq!(session.deadline(), Some(until));
        session.finished(settled(&job));
        assert_eq!(session.acknowledgements, [4]);
        // Holding nothing, the node stops once nothing came for a moment.
        assert_eq!(session.deadline(), Some(until.min(session.last_arrival + QUIET_FOR)));
        session.deadline_passed();
        assert_eq!(session.phase, Phase::Stopped);
    }

    #[test]
    fn a_node_offline_at_shutdown_only_drains() {
        let (mut session, _jobs, _eventloop) = session();
        session.leave();
        assert!(matches!(session.phase, Phase::Draining { .. }) && !session.polling(), "a new connection would not know the node is leaving");
        session.deadline_passed();
        assert_eq!(session.phase, Phase::Stopped);
    }

    #[test]
    fn each_node_has_a_client_id_of_its_own_that_names_it() {
        let first = client_id("ward-7/node a");
        assert!(first.starts_with("medhub-hub-ward-7-node-a-"), "{first}");
        assert_eq!(first.len(), "medhub-hub-ward-7-node-a-".len() + 6);
        assert_ne!(client_id("node-a"), client_id("node-a"), "one node id given to two nodes by mistake still makes two clients");
        assert_eq!(client_id(&"n".repeat(300)).len(), "medhub-hub-".len() + 64 + 7);
    }

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
