//! medhub's device gateway: ambulance units and patient monitors speak MQTT to the hub, and the
//! hub speaks back to units on their command topic.
//!
//! Devices are registered per tenant ([`register_device`]) with generated credentials. A device
//! may publish only `medhub/{tenant}/ambulance/{unit}/gps|vitals|status` of its own tenant and
//! unit, and subscribe only to its own `.../cmd` (`topics.rs`). Every payload is validated
//! (`payload.rs`) before the hub's [`DeviceSink`] sees it; anything refused is counted in
//! Prometheus (`medhub_mqtt_*`, see `metrics.rs`) and logged, with the device, at a bounded rate.
//! The hub talks to units through [`GatewayHandle`], its [`UnitCommands`] (QoS 1).
//!
//! Two ways to run ([`Broker`]):
//! - **Embedded** (the default): the hub itself terminates MQTT 3.1.1 and 5 on a TCP port.
//! - **External**: the hub is an MQTT 5 client (rumqttc) of a broker such as mosquitto, whose own
//!   password and ACL files (written by [`write_mosquitto_files`]) confine devices; the scale-out
//!   path. Hub nodes sharing one broker join one shared subscription ([`ShareGroup`]), so the
//!   broker gives each device message to one of them, and each acknowledges a message to the broker
//!   only once the hub has taken it (`external.rs`).
//!
//! # Why the embedded broker is a hub-terminated endpoint
//!
//! The rule that a device may touch only its own topics has to be enforced by the broker, at
//! CONNECT, PUBLISH and SUBSCRIBE. We weighed three ways:
//! - rumqttd 0.20 (its latest release) cannot restrict a client's topics at all.
//! - rmqtt 0.24 can (its `ClientAuthenticate`, `MessagePublishCheckAcl` and
//!   `ClientSubscribeCheckAcl` hooks), but as a full clustered broker it brings about forty direct
//!   dependencies (config, prost, governor, postcard, rust-box, systemstat, tower…), a global
//!   server context, needs Rust 1.94 (the workspace promises 1.85), and its plugin API has changed
//!   shape between releases. Build time on a 2-core machine and API churn weigh heavily against
//!   what we would use of it.
//! - A hub-terminated endpoint on rumqttc's own MQTT codecs (3.1.1 and 5), with a tokio listener
//!   and one task per connection. rumqttc is needed anyway for the external mode and the tests, so
//!   the embedded endpoint costs no extra dependency, and every decision is ours and in one place:
//!   credentials at CONNECT, the topic rule at PUBLISH and SUBSCRIBE (checked before anything is
//!   routed: devices never receive each other's messages, they only reach the hub), a maximum
//!   packet size enforced from the fixed header (a 1 MB blob is refused after 4 bytes), keep-alive,
//!   clean and persistent sessions, QoS 0, 1 and 2 from devices, QoS 1 commands retransmitted until
//!   acknowledged, bounded per-session queues.
//!
//! We chose the third. It is not a general-purpose broker (no retained messages, no device-to-device
//! routing, no wills, no TLS: put a TLS terminator in front, or use the external mode), which is
//! exactly what a device endpoint of the hub needs.

mod directory;
mod embedded;
mod external;
mod ingest;
mod metrics;
mod mosquitto;
mod payload;
mod topics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus::Registry;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use thiserror::Error;
use tokio::sync::watch;
use tracing::{info, warn};
use uuid::Uuid;

use medhub_actors::devices::{DeviceFuture, DeviceSink, UnitCommands};
use medhub_actors::{ActorError, TenantSlug};

pub use directory::{deactivate_device, list_devices, register_device, Device, DeviceError, DeviceKind, DeviceTopics, NewDevice, RegisteredDevice};
pub use mosquitto::{mosquitto_conf, write_mosquitto_files, BrokerFilesError, BrokerLogin, MosquittoFiles};
pub use payload::UNIT_STATUSES;
pub use topics::{command_topic, device_topic, ShareGroup, Telemetry};

/// Default largest MQTT packet (and so payload) a device may send.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 64 * 1024;

/// Which broker devices connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    /// The hub's own endpoint on `listen` (port 0: any free port). With `any_port_if_taken`, a
    /// taken address falls back to a free port (meant for the built-in default only).
    Embedded { listen: SocketAddr, any_port_if_taken: bool },
    /// An external broker, `mqtt://user:password@host:port`, that the hub joins as a client,
    /// reading device telemetry as a member of `share_group` (one group per deployment).
    External { url: String, share_group: ShareGroup },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    pub broker: Broker,
    /// Largest packet a device may send; larger ones are refused (and counted) unread.
    pub max_packet_bytes: usize,
    /// This hub node's id (`--node-id`). With an external broker it names the hub's MQTT client,
    /// so that the broker's log tells the nodes apart.
    pub node_id: String,
}

#[derive(Debug, Error)]
pub enum GatewayError {
    #[error("cannot listen for MQTT on {addr}: {source}; set --mqtt-listen to a free address (port 0: any free port)")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("invalid MQTT broker URL: {0}")]
    BrokerUrl(String),
    #[error("invalid mqtt_share_group: {0}")]
    ShareGroup(String),
    #[error("max_packet_bytes must be between 1024 and 268435455, not {0}")]
    MaxPacketBytes(usize),
    #[error("cannot start the gateway's threads: {0}")]
    Runtime(std::io::Error),
    #[error("cannot register the gateway's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The running gateway. Stop it with [`Gateway::shutdown`] before the actors stop: it delivers
/// to them until then.
pub struct Gateway {
    handle: GatewayHandle,
    local_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The gateway's own threads, so that device traffic never competes with the HTTP workers'
    /// or the actors' event loops.
    runtime: Option<tokio::runtime::Runtime>,
}

/// What the rest of the hub holds on to: commands to units, and forgetting deactivated devices.
#[derive(Clone)]
pub struct GatewayHandle(Arc<Transport>);

enum Transport {
    Embedded(Arc<embedded::Shared>),
    External(Arc<external::Shared>),
}

impl Gateway {
    /// Starts the gateway on threads of its own, delivering what devices say to `sink` and
    /// registering its metrics in `registry`. Device logins are checked against `pool`'s database
    /// through a small pool of the gateway's own.
    pub fn start(config: GatewayConfig, pool: &PgPool, sink: Arc<dyn DeviceSink>, registry: &Registry) -> Result<Gateway, GatewayError> {
        if !(1024..=268_435_455).contains(&config.max_packet_bytes) {
            return Err(GatewayError::MaxPacketBytes(config.max_packet_bytes));
        }
        let metrics = metrics::GatewayMetrics::register(registry)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mqtt-gateway")
            .enable_all()
            .build()
            .map_err(GatewayError::Runtime)?;
        // Connections opened by the gateway's threads belong to its runtime: a pool of its own
        // keeps them from outliving it inside the hub's pool.
        let pool = {
            let _entered = runtime.enter();
            PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy_with((*pool.connect_options()).clone())
        };
        let ingest = ingest::Ingest::new(sink, metrics, config.max_packet_bytes);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (transport, local_addr, task) = match &config.broker {
            Broker::Embedded { listen, any_port_if_taken } => {
                let listener = embedded::bind(*listen, *any_port_if_taken)?;
                let local_addr = listener.local_addr().map_err(|source| GatewayError::Listen { addr: *listen, source })?;
                let authenticator = directory::Authenticator::new(pool.clone(), embedded::remember_logins_for());
                let shared = embedded::shared(authenticator, ingest, config.max_packet_bytes);
                let run = embedded::run(listener, shared.clone(), shutdown_rx);
                let task = runtime.spawn(async move {
                    run.await;
                    pool.close().await;
                });
                info!(addr = %local_addr, max_packet_bytes = config.max_packet_bytes, "mqtt listening");
                (Transport::Embedded(shared), Some(local_addr), task)
            }
            Broker::External { url, share_group } => {
                let url = external::parse_url(url)?;
                let client = external::ClientConfig {
                    url,
                    share_group: share_group.clone(),
                    client_id: external::client_id(&config.node_id),
                    max_packet_bytes: config.max_packet_bytes,
                };
                info!(broker = ?client.url, client_id = client.client_id, share_group = %client.share_group, "mqtt: connecting to the external broker");
                let (shared, run) = external::start(client, Arc::new(ingest), pool.clone(), shutdown_rx);
                let task = runtime.spawn(async move {
                    run.await;
                    pool.close().await;
                });
                (Transport::External(shared), None, task)
            }
        };
        Ok(Gateway { handle: GatewayHandle(Arc::new(transport)), local_addr, shutdown, task: Some(task), runtime: Some(runtime) })
    }

    pub fn handle(&self) -> GatewayHandle {
        self.handle.clone()
    }

    /// The embedded endpoint's address (`None` in external mode).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Disconnects every device (MQTT 5 devices are told the server is shutting down), or leaves
    /// the external broker's shared subscription (the other hub nodes get the next messages),
    /// finishes and acknowledges the messages it holds, and disconnects; then stops the gateway's
    /// threads.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(10), task).await.is_err() {
                warn!("the MQTT gateway did not stop within 10 s");
            }
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        // Dropping a runtime blocks; inside the hub's async code that is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl GatewayHandle {
    /// A device was deactivated: its live connections end and its remembered login is forgotten
    /// (embedded), or the lanes forget which device speaks for its unit (external; the broker's
    /// files must be rewritten too).
    pub fn forget_device(&self, device_id: Uuid, username: &str) {
        match &*self.0 {
            Transport::Embedded(shared) => embedded::forget_device(shared, device_id, username),
            Transport::External(shared) => shared.forget_devices(),
        }
    }
}

impl UnitCommands for GatewayHandle {
    /// Publishes `payload` at QoS 1 on the unit's command topic. Embedded: queued for every
    /// connected (or persistent) session of the unit subscribed to it, retransmitted until
    /// acknowledged; an error if none is. External: handed to the broker.
    fn send(&self, tenant: &TenantSlug, unit_id: Uuid, payload: serde_json::Value) -> DeviceFuture<()> {
        let topic = command_topic(tenant, unit_id);
        let payload = Bytes::from(payload.to_string());
        let sent = match &*self.0 {
            Transport::Embedded(shared) => {
                // Leaves room for the topic and header within the packet limit.
                if payload.len() + topic.len() + 16 > shared.max_packet_bytes {
                    Err(ActorError::Invalid { field: "payload", detail: format!("a command of {} bytes is larger than the MQTT packet limit", payload.len()) })
                } else {
                    embedded::send_command(shared, tenant.as_str(), unit_id, &topic, payload)
                }
            }
            Transport::External(shared) => shared.send_command(topic, payload),
        };
        Box::pin(async move { sent })
    }
}
