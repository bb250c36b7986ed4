//! medhub's domain: the actors that own the live state of a hospital group, their pure state
//! machines, and the persistence they commit through.
//!
//! Nothing here knows about HTTP, MQTT or WebSockets. An actor acknowledges a command only after
//! its effect, its domain event and its audit entry are committed in one PostgreSQL transaction
//! ([`store::CommandTx`]); the event log doubles as the outbox that `realtime` fans out (PostgreSQL
//! `NOTIFY` on commit, so an event is published exactly when its command committed, in commit order).
//!
//! Entry points: [`runtime::ActorRuntime`] (tenant supervisors and their children), [`lease`]
//! (which node owns a tenant, and the fence every commit passes),
//! [`audit`] (the hash-chained trail), [`topics`] (who may watch what), [`facility`] (beds).

pub mod ambulance;
pub mod audit;
pub mod billing;
pub mod consult;
pub mod devices;
pub mod dispatch;
pub mod domain;
mod durable;
pub mod error;
pub mod facility;
pub mod formulary;
pub mod inventory;
pub mod lease;
pub mod live;
pub mod metrics;
pub mod news2;
pub mod observations;
pub mod patients;
pub mod pharmacy;
pub mod reminders;
pub mod runtime;
pub mod schedule;
pub mod store;
pub mod tenant;
pub mod topics;

/// The embedded migrations (the workspace's `migrations/` folder), applied by `hub migrate`
/// and at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

pub use domain::{Caller, GeoPoint, Principal, Role, TenantSlug};
pub use error::ActorError;
