//! One device connection of the embedded endpoint, in its own task: CONNECT and authentication,
//! then every PUBLISH checked against the device's own topics and validated before it is
//! acknowledged, SUBSCRIBE allowed only on its command topic, commands sent at QoS 1 and
//! retransmitted until acknowledged, keep-alive enforced.
//!
//! Nothing one connection does can hold up another: each has its own task and buffers, a
//! device that stops reading is cut off when a write has waited [`WRITE_TIMEOUT`], and a device
//! sending faster than the hub validates is slowed by TCP, not queued in memory.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use uuid::Uuid;

use medhub_actors::devices::DeviceIdentity;

use super::session::{Attached, Sessions, MAX_SESSION_EXPIRY};
use super::wire::{AckReason, CloseReason, Connect, ConnectCode, Inbound, Outbound, PacketReader, PacketWriter, ReadError, Version};
use crate::directory::{Authenticator, LoginRefusal};
use crate::ingest::{Ingest, LogThrottle, Verdict};
use crate::metrics::{AclAction, CommandOutcome, ConnectRefusal};
use crate::payload::RejectReason;
use crate::topics::{authorize_publish, authorize_subscribe, command_topic};

/// How long a new connection has to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long checking the credentials may take (a reconnect storm queues for argon2).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a write may wait for a device to read before the device is cut off.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest client id taken.
const MAX_CLIENT_ID: usize = 128;

/// What every connection of the endpoint shares.
pub(crate) struct Shared {
    pub authenticator: Authenticator,
    pub sessions: Sessions,
    pub ingest: Ingest,
    pub max_packet_bytes: usize,
    /// Refused CONNECTs are logged through one throttle: a credential-guessing client must not
    /// flood the log.
    pub refusal_log: Mutex<LogThrottle>,
}

/// Counts an open connection for as long as it lives.
struct OpenConnection(prometheus::IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one TCP connection until the device leaves, misbehaves, or the hub shuts down.
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut reader = PacketReader::new(read, shared.max_packet_bytes);
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, reader.next()).await {
        Ok(Ok(Inbound::Connect(connect))) => connect,
        Ok(Err(ReadError::UnsupportedProtocol(level))) => {
            refuse(&shared, peer, None, ConnectRefusal::Protocol, &format!("protocol level {level} (only MQTT 3.1.1 and 5)"));
            // Answered in 3.1.1's form, which clients of every version read.
            refuse_connect(&mut PacketWriter::new(write, Version::V311, shared.max_packet_bytes), ConnectCode::UnsupportedProtocol).await;
            return;
        }
        Ok(Err(ReadError::Closed | ReadError::Io(_))) => return,
        Ok(Err(error)) => {
            refuse(&shared, peer, None, ConnectRefusal::Protocol, &describe(&error));
            return;
        }
        Ok(Ok(_)) => {
            refuse(&shared, peer, None, ConnectRefusal::Protocol, "the first packet was not CONNECT");
            return;
        }
        Err(_) => {
            refuse(&shared, peer, None, ConnectRefusal::Timeout, "no CONNECT within 10 s");
            return;
        }
    };
    let version = reader.version().unwrap_or(Version::V311);
    let mut writer = PacketWriter::new(write, version, shared.max_packet_bytes);
    let username = connect.login.as_ref().map(|(username, _)| username.clone());

    let (client_id, assigned) = match client_id(&connect, version) {
        Ok(id) => id,
        Err(detail) => {
            refuse(&shared, peer, username.as_deref(), ConnectRefusal::ClientId, detail);
            refuse_connect(&mut writer, ConnectCode::BadClientId).await;
            return;
        }
    };
    let login = connect.login.as_ref().map(|(username, password)| (username.as_str(), password.as_str()));
    let identity = match tokio::time::timeout(LOGIN_TIMEOUT, shared.authenticator.authenticate(login)).await {
        Ok(Ok(identity)) => identity,
        Ok(Err(refusal)) => {
            let (reason, code, detail) = match &refusal {
                LoginRefusal::NoCredentials => (ConnectRefusal::NoCredentials, ConnectCode::NotAuthorized, "no username and password".to_owned()),
                LoginRefusal::BadCredentials => (ConnectRefusal::BadCredentials, ConnectCode::BadCredentials, "wrong username or password".to_owned()),
                LoginRefusal::Inactive => (ConnectRefusal::Inactive, ConnectCode::NotAuthorized, "the device is deactivated".to_owned()),
                LoginRefusal::Unavailable(error) => (ConnectRefusal::Unavailable, ConnectCode::ServerUnavailable, format!("cannot check credentials: {error}")),
            };
            refuse(&shared, peer, username.as_deref(), reason, &detail);
            refuse_connect(&mut writer, code).await;
            return;
        }
        Err(_) => {
            refuse(&shared, peer, username.as_deref(), ConnectRefusal::Unavailable, "checking the credentials took too long");
            refuse_connect(&mut writer, ConnectCode::ServerUnavailable).await;
            return;
        }
    };

    let expiry = match version {
        Version::V311 if connect.clean_start => Duration::ZERO,
        Version::V311 => MAX_SESSION_EXPIRY,
        Version::V5 => Duration::from_secs(connect.session_expiry.unwrap_or(0).into()).min(MAX_SESSION_EXPIRY),
    };
    let attached = shared.sessions.attach(&identity, &client_id, connect.clean_start, expiry);
    let metrics = shared.ingest.metrics().clone();
    metrics.connects.inc();
    metrics.connections.inc();
    let _open = OpenConnection(metrics.connections.clone());
    info!(%peer, tenant = %identity.tenant, unit_id = %identity.unit_id, device_id = %identity.device_id, client_id, version = version.as_str(),
          session_present = attached.session_present, "device connected");
    let _ = writer.queue(Outbound::ConnAck {
        code: ConnectCode::Accepted,
        session_present: attached.session_present,
        assigned_client_id: assigned,
        session_expiry: (version == Version::V5).then_some(expiry.as_secs() as u32),
    });

    let mut connection = Connection {
        shared: shared.clone(),
        identity,
        attached,
        version,
        writer,
        peer,
        log: LogThrottle::new(5, Duration::from_secs(10)),
        awaiting_release: HashSet::new(),
    };
    let reason = connection.run(reader, connect.keep_alive, shutdown).await;
    connection.close(reason).await;
}

/// The client id the session is kept under, and the one the hub assigned if the client left it
/// empty (MQTT 5 is told it in CONNACK).
fn client_id(connect: &Connect, version: Version) -> Result<(String, Option<String>), &'static str> {
    if connect.client_id.is_empty() {
        if version == Version::V311 && !connect.clean_start {
            return Err("an empty client id needs a clean session");
        }
        let id = format!("medhub-{}", Uuid::new_v4().simple());
        return Ok((id.clone(), (version == Version::V5).then_some(id)));
    }
    if connect.client_id.len() > MAX_CLIENT_ID {
        return Err("the client id is longer than 128 bytes");
    }
    Ok((connect.client_id.clone(), None))
}

fn refuse(shared: &Shared, peer: SocketAddr, username: Option<&str>, reason: ConnectRefusal, detail: &str) {
    shared.ingest.metrics().refused_connect(reason);
    let allowed = shared.refusal_log.lock().expect("refusal log lock").allow(Instant::now());
    if let Some(suppressed) = allowed {
        let username: String = username.unwrap_or("").chars().take(80).collect();
        warn!(%peer, username, reason = reason.as_str(), suppressed, "mqtt connect refused: {detail}");
    }
}

async fn refuse_connect(writer: &mut PacketWriter, code: ConnectCode) {
    let _ = writer.queue(Outbound::ConnAck { code, session_present: false, assigned_client_id: None, session_expiry: None });
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.flush()).await;
    writer.shutdown().await;
}

fn describe(error: &ReadError) -> String {
    match error {
        ReadError::Closed => "the connection closed".to_owned(),
        ReadError::TooLarge(bytes) => format!("a packet of {bytes} bytes, more than the maximum"),
        ReadError::Malformed(detail) => format!("malformed packet: {detail}"),
        ReadError::UnsupportedProtocol(level) => format!("protocol level {level}"),
        ReadError::Io(error) => error.to_string(),
    }
}

/// An authenticated connection.
struct Connection {
    shared: Arc<Shared>,
    identity: DeviceIdentity,
    attached: Attached,
    version: Version,
    writer: PacketWriter,
    peer: SocketAddr,
    /// Rejections and refusals of this device are logged through it.
    log: LogThrottle,
    /// QoS 2 publishes received and not yet released: a resend of one is not taken twice.
    awaiting_release: HashSet<u16>,
}

enum Next {
    Continue,
    /// Close the connection, telling an MQTT 5 client why when there is a reason.
    Close(Option<CloseReason>),
}

impl Connection {
    async fn run(&mut self, mut reader: PacketReader, keep_alive: u16, mut shutdown: watch::Receiver<bool>) -> Option<CloseReason> {
        // Unacknowledged commands of a resumed session go again, then what is queued.
        if let Next::Close(reason) = self.pump(true) {
            return reason;
        }
        // A client silent for one and a half keep-alive periods is gone (MQTT's rule).
        let allowance = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let far_future = Duration::from_secs(365 * 24 * 3600);
        let mut deadline = tokio::time::Instant::now() + allowance.unwrap_or(far_future);
        let wake = self.attached.wake.clone();
        loop {
            if self.writer.has_queued() {
                match tokio::time::timeout(WRITE_TIMEOUT, self.writer.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return None,
                    Err(_) => {
                        self.note("device stopped reading; disconnected");
                        return None;
                    }
                }
            }
            let next = tokio::select! {
                packet = reader.next() => {
                    deadline = tokio::time::Instant::now() + allowance.unwrap_or(far_future);
                    match packet {
                        Ok(packet) => self.handle(packet).await,
                        Err(error) => self.read_failed(error),
                    }
                }
                _ = wake.notified() => self.pump(false),
                _ = tokio::time::sleep_until(deadline) => {
                    self.note("no packet within 1.5 keep-alive periods; disconnected");
                    Next::Close(Some(CloseReason::KeepAliveTimeout))
                }
                _ = shutdown.changed() => Next::Close(Some(CloseReason::ServerShuttingDown)),
            };
            if let Next::Close(reason) = next {
                return reason;
            }
        }
    }

    async fn close(mut self, reason: Option<CloseReason>) {
        if let Some(reason) = reason {
            let _ = self.writer.queue(Outbound::Disconnect(reason));
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.flush()).await;
        self.writer.shutdown().await;
        self.shared.sessions.detach(&self.attached.session, self.attached.owner);
        info!(peer = %self.peer, tenant = %self.identity.tenant, unit_id = %self.identity.unit_id, device_id = %self.identity.device_id,
              reason = ?reason, "device disconnected");
    }

    fn read_failed(&mut self, error: ReadError) -> Next {
        let metrics = self.shared.ingest.metrics();
        match error {
            ReadError::Closed | ReadError::Io(_) => Next::Close(None),
            ReadError::TooLarge(bytes) => {
                metrics.rejected(RejectReason::TooLarge);
                let max = self.shared.max_packet_bytes;
                self.rejected(RejectReason::TooLarge.as_str(), None, &format!("a packet of {bytes} bytes, more than the maximum of {max}; disconnected"));
                Next::Close(Some(CloseReason::PacketTooLarge))
            }
            ReadError::Malformed(detail) => {
                metrics.rejected(RejectReason::MalformedPacket);
                self.rejected(RejectReason::MalformedPacket.as_str(), None, &format!("{detail}; disconnected"));
                Next::Close(Some(CloseReason::MalformedPacket))
            }
            ReadError::UnsupportedProtocol(_) => Next::Close(Some(CloseReason::ProtocolError)),
        }
    }

    async fn handle(&mut self, packet: Inbound) -> Next {
        match packet {
            Inbound::Publish { topic, qos, pkid, payload } => self.publish(&topic, qos, pkid, payload).await,
            Inbound::PubAck(pkid) => {
                if self.attached.session.acknowledged(pkid) {
                    self.shared.ingest.metrics().command(CommandOutcome::Delivered);
                }
                self.pump(false)
            }
            Inbound::PubRel(pkid) => {
                self.awaiting_release.remove(&pkid);
                self.queue(Outbound::PubComp(pkid));
                Next::Continue
            }
            Inbound::Subscribe { pkid, filters } => {
                let mut granted = Vec::with_capacity(filters.len());
                for (filter, qos) in filters {
                    if authorize_subscribe(&self.identity, &filter) {
                        self.attached.session.subscribe_commands(qos);
                        granted.push(Some(qos.min(1)));
                    } else {
                        self.shared.ingest.metrics().acl_refusal(AclAction::Subscribe);
                        self.refused("subscribe", &filter);
                        granted.push(None);
                    }
                }
                self.queue(Outbound::SubAck { pkid, granted });
                self.pump(false)
            }
            Inbound::Unsubscribe { pkid, filters } => {
                let own = command_topic(&self.identity.tenant, self.identity.unit_id);
                if filters.contains(&own) {
                    self.attached.session.unsubscribe_commands();
                }
                self.queue(Outbound::UnsubAck { pkid, count: filters.len() });
                Next::Continue
            }
            Inbound::PingReq => {
                self.queue(Outbound::PingResp);
                Next::Continue
            }
            Inbound::Disconnect => Next::Close(None),
            // The hub sends commands at QoS 1 at most, so a PUBREC or PUBCOMP answers nothing.
            Inbound::PubRec(_) | Inbound::PubComp(_) => self.protocol_error("PUBREC or PUBCOMP for a QoS 2 message the hub never sent"),
            Inbound::Connect(_) => self.protocol_error("a second CONNECT"),
            Inbound::Unexpected(name) => self.protocol_error(name),
        }
    }

    async fn publish(&mut self, topic: &str, qos: u8, pkid: u16, payload: Bytes) -> Next {
        if qos == 2 && self.awaiting_release.contains(&pkid) {
            self.queue(Outbound::PubRec { pkid, reason: AckReason::Success }); // a resend: taken already
            return Next::Continue;
        }
        let Some(kind) = authorize_publish(&self.identity, topic) else {
            self.shared.ingest.metrics().acl_refusal(AclAction::Publish);
            self.refused("publish", topic);
            self.acknowledge(qos, pkid, AckReason::NotAuthorized);
            return Next::Continue;
        };
        match self.shared.ingest.take(&self.identity, kind, &payload).await {
            Verdict::Taken => {
                self.acknowledge(qos, pkid, AckReason::Success);
                Next::Continue
            }
            Verdict::Refused(rejection) => {
                self.rejected(rejection.reason.as_str(), rejection.field, &format!("{} message: {}", kind.as_str(), rejection.detail));
                self.acknowledge(qos, pkid, AckReason::PayloadFormatInvalid);
                Next::Continue
            }
            // Not acknowledged: the device keeps it and sends it again when it reconnects.
            Verdict::Unavailable(rejection) => {
                self.rejected(rejection.reason.as_str(), None, &rejection.detail);
                if qos == 0 {
                    Next::Continue
                } else {
                    Next::Close(Some(CloseReason::ServerBusy))
                }
            }
        }
    }

    fn acknowledge(&mut self, qos: u8, pkid: u16, reason: AckReason) {
        match qos {
            0 => {}
            1 => self.queue(Outbound::PubAck { pkid, reason }),
            _ => {
                // MQTT 5 ends the exchange at a refusing PUBREC; 3.1.1 always goes on to PUBREL.
                if reason == AckReason::Success || self.version == Version::V311 {
                    self.awaiting_release.insert(pkid);
                }
                self.queue(Outbound::PubRec { pkid, reason });
            }
        }
    }

    /// Queues the commands waiting for this device; closes if the session is no longer ours.
    fn pump(&mut self, resend: bool) -> Next {
        let mut out = Vec::new();
        match self.attached.session.outgoing(self.attached.owner, resend, &mut out) {
            Ok(delivered) => {
                for _ in 0..delivered {
                    self.shared.ingest.metrics().command(CommandOutcome::Delivered);
                }
                for packet in out {
                    self.queue(packet);
                }
                Next::Continue
            }
            Err(reason) => {
                debug!(peer = %self.peer, device_id = %self.identity.device_id, ?reason, "session ended by the hub");
                Next::Close(Some(reason))
            }
        }
    }

    fn queue(&mut self, packet: Outbound) {
        if let Err(error) = self.writer.queue(packet) {
            self.note(&format!("a packet could not be encoded and was left out: {error}"));
        }
    }

    fn protocol_error(&mut self, what: &str) -> Next {
        self.shared.ingest.metrics().rejected(RejectReason::MalformedPacket);
        self.rejected(RejectReason::MalformedPacket.as_str(), None, &format!("protocol error: {what}; disconnected"));
        Next::Close(Some(CloseReason::ProtocolError))
    }

    fn refused(&mut self, action: &str, topic: &str) {
        if let Some(suppressed) = self.log.allow(Instant::now()) {
            let topic: String = topic.chars().take(200).collect();
            warn!(peer = %self.peer, tenant = %self.identity.tenant, unit_id = %self.identity.unit_id, device_id = %self.identity.device_id,
                  action, topic, suppressed, "mqtt {action} refused: not the device's own topic");
        }
    }

    fn rejected(&mut self, reason: &str, field: Option<&str>, detail: &str) {
        if let Some(suppressed) = self.log.allow(Instant::now()) {
            warn!(peer = %self.peer, tenant = %self.identity.tenant, unit_id = %self.identity.unit_id, device_id = %self.identity.device_id,
                  reason, field, suppressed, "device message rejected: {detail}");
        }
    }

    fn note(&mut self, what: &str) {
        if let Some(suppressed) = self.log.allow(Instant::now()) {
            info!(peer = %self.peer, tenant = %self.identity.tenant, unit_id = %self.identity.unit_id, device_id = %self.identity.device_id,
                  suppressed, "{what}");
        }
    }
}
