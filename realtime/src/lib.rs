//! medhub's live updates: the WebSocket endpoint, its wire protocol, and the fan-out of committed
//! domain events to the clients subscribed to their topics.
//!
//! Events come from PostgreSQL: every command commits its event with a `pg_notify` on
//! [`medhub_actors::store::EVENTS_CHANNEL`], which PostgreSQL delivers after commit and in commit
//! order. The [`broker::Broker`] listens, fans each event out to bounded per-connection queues, and
//! never waits for a client; [`session`] runs one WebSocket connection (auth, subscribe with
//! catch-up from the event log, heartbeats, the too-slow cut-off, and the relay of consult media
//! signaling to the hub's [`session::ConsultSignaling`]). With several hubs on one database, the
//! [`backplane`] shares the notifications and the live-only telemetry through Redis.

pub mod backplane;
pub mod broker;
pub mod metrics;
pub mod session;

pub use backplane::{BackplaneConfig, BackplaneError};
pub use broker::Broker;
pub use session::{
    ws_endpoint, Authenticated, Authenticator, ConsultSignaling, JoinedRoom, Realtime, RealtimeConfig, SignalOutbox, SignalingFuture,
    SignalingPeer, SignalingRefusal,
};
