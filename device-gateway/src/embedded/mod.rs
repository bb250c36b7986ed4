//! The embedded MQTT endpoint: a TCP listener, one task per device connection
//! ([`connection`]), the sessions that carry commands to units ([`session`]), and the wire
//! format ([`wire`]).

mod connection;
mod session;
mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use uuid::Uuid;

use medhub_actors::ActorError;

pub(crate) use connection::Shared;
use session::Queued;
pub(crate) use session::Sessions;

use crate::directory::Authenticator;
use crate::ingest::{Ingest, LogThrottle};
use crate::metrics::CommandOutcome;
use crate::GatewayError;

/// Commands a session holds for its device at most.
const MAX_QUEUED_COMMANDS: usize = 64;
/// How long a verified device login is remembered.
const REMEMBER_LOGINS_FOR: Duration = Duration::from_secs(600);
/// How long connections get to finish when the hub stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn shared(authenticator: Authenticator, ingest: Ingest, max_packet_bytes: usize) -> Arc<Shared> {
    Arc::new(Shared {
        authenticator,
        sessions: Sessions::new(MAX_QUEUED_COMMANDS),
        ingest,
        max_packet_bytes,
        refusal_log: Mutex::new(LogThrottle::new(20, Duration::from_secs(10))),
    })
}

pub(crate) fn remember_logins_for() -> Duration {
    REMEMBER_LOGINS_FOR
}

/// Binds the listener. With `any_port_if_taken`, a taken address falls back to a free port on
/// the same interface (used only for the built-in default, never for an address the operator set).
pub(crate) fn bind(listen: SocketAddr, any_port_if_taken: bool) -> Result<std::net::TcpListener, GatewayError> {
    let listener = match std::net::TcpListener::bind(listen) {
        Ok(listener) => listener,
        Err(error) if any_port_if_taken && error.kind() == std::io::ErrorKind::AddrInUse => {
            let fallback = SocketAddr::new(listen.ip(), 0);
            warn!(%listen, "the default MQTT address is taken (another broker?); listening on a free port instead: set --mqtt-listen to choose");
            std::net::TcpListener::bind(fallback).map_err(|source| GatewayError::Listen { addr: fallback, source })?
        }
        Err(source) => return Err(GatewayError::Listen { addr: listen, source }),
    };
    listener.set_nonblocking(true).map_err(|source| GatewayError::Listen { addr: listen, source })?;
    Ok(listener)
}

/// Accepts connections until shutdown, then tells every connection to go and waits a little for
/// them to say goodbye.
pub(crate) async fn run(listener: std::net::TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            warn!(%error, "the MQTT listener cannot be used; devices cannot connect");
            return;
        }
    };
    let mut connections = JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection::serve(stream, peer, shared.clone(), shutdown.clone()));
                }
                Err(error) => {
                    // Out of file descriptors, typically: pause rather than spin.
                    warn!(%error, "accepting an MQTT connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = sweep.tick() => {
                let expired = shared.sessions.sweep();
                if expired > 0 {
                    debug!(expired, "expired persistent MQTT sessions dropped");
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    shared.sessions.evict_all();
    let open = connections.len();
    if tokio::time::timeout(DRAIN_TIMEOUT, async { while connections.join_next().await.is_some() {} }).await.is_err() {
        connections.abort_all();
    }
    info!(connections = open, "mqtt endpoint stopped");
}

/// Queues a command for the unit's subscribed sessions.
pub(crate) fn send_command(shared: &Shared, tenant: &str, unit_id: Uuid, topic: &str, payload: Bytes) -> Result<(), ActorError> {
    let metrics = shared.ingest.metrics();
    match shared.sessions.send(tenant, unit_id, topic, payload) {
        Queued::To(_) => {
            metrics.command(CommandOutcome::Queued);
            Ok(())
        }
        Queued::NoSubscriber => {
            metrics.command(CommandOutcome::NoSubscriber);
            Err(ActorError::Unavailable(format!(
                "no device of unit {unit_id} is connected and subscribed to {topic}; the command was not sent"
            )))
        }
        Queued::Full => {
            metrics.command(CommandOutcome::Overloaded);
            Err(ActorError::Unavailable(format!("unit {unit_id} has {MAX_QUEUED_COMMANDS} commands waiting unacknowledged; retry later")))
        }
    }
}

/// Ends a deactivated device's connections and forgets its login.
pub(crate) fn forget_device(shared: &Shared, device_id: Uuid, username: &str) {
    shared.authenticator.forget(username);
    let ended = shared.sessions.revoke(device_id);
    if ended > 0 {
        info!(%device_id, sessions = ended, "deactivated device disconnected");
    }
}
