//! What devices (ambulance units, monitors) say to the hub and the hub says back, independent of
//! MQTT: the device gateway parses and validates payloads into these types and hands them to a
//! [`DeviceSink`]; the domain answers units through [`UnitCommands`]. Keeping the boundary here
//! lets the gateway (embedded broker or external one) and the actors change independently.

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{GeoPoint, TenantSlug};
use crate::error::ActorError;
use crate::news2::Vitals;

/// An authenticated device, as the gateway established it at CONNECT. Serialisable so that a hub
/// node can hand a device's message to the node that serves its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    pub tenant_id: Uuid,
    pub tenant: TenantSlug,
    pub device_id: Uuid,
    /// The ambulance unit the device belongs to (its topic prefix names it).
    pub unit_id: Uuid,
}

/// One validated GPS fix.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GpsFix {
    pub position: GeoPoint,
    /// Metres per second, 0 to 100.
    pub speed_mps: f64,
    /// Degrees clockwise from north, 0 to 360.
    pub heading_deg: f64,
    /// Horizontal accuracy in metres, 0 to 10,000.
    pub accuracy_m: f64,
    pub fix_time: DateTime<Utc>,
}

/// The status a unit's crew reports (or that acknowledges a dispatch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// `available`, `en_route`, `on_scene`, `transporting`, `at_hospital`, `out_of_service`, or
    /// `ack` to acknowledge the dispatch named in `incident_id`.
    pub status: String,
    pub incident_id: Option<Uuid>,
    pub reported_at: DateTime<Utc>,
}

/// A validated message from a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum DeviceMessage {
    Gps(GpsFix),
    Vitals(Box<Vitals>),
    Status(StatusReport),
}

pub type DeviceFuture<T> = Pin<Box<dyn Future<Output = Result<T, ActorError>> + Send>>;

/// Where the gateway hands what devices said (the hub wires it to the actors).
pub trait DeviceSink: Send + Sync + 'static {
    fn deliver(&self, from: DeviceIdentity, message: DeviceMessage) -> DeviceFuture<()>;
}

/// How the domain speaks to a unit: the gateway publishes `payload` (JSON) on the unit's command
/// topic with at-least-once delivery.
pub trait UnitCommands: Send + Sync + 'static {
    fn send(&self, tenant: &TenantSlug, unit_id: Uuid, payload: Value) -> DeviceFuture<()>;
}
