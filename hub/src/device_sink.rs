//! Where the device gateway delivers what units say: GPS fixes and vitals to the unit's actor,
//! status reports (including the acknowledgement of a dispatch) as status changes of the unit,
//! which the tenant's dispatch actor follows. Counted per kind and outcome in `/metrics`.
//!
//! Unit addresses are cached: a fleet reporting every second would otherwise ask its tenant's
//! supervisor once per message. Supervised actors keep their address across restarts, so an entry
//! only goes stale when the unit's actor stops for good; it is then dropped and asked for again.
//!
//! With several hub nodes, a device may reach a node that does not serve its tenant (it connected
//! to that node's MQTT endpoint, or the external broker's shared subscription gave the message to
//! it): [`ClusterSink`] hands the message to the node that does, and the device gets that node's
//! verdict (acknowledged only after the owner committed).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use actix::{Addr, MailboxError};
use uuid::Uuid;

use prometheus::{IntCounterVec, Opts, Registry};
use tracing::debug;

use medhub_actors::ambulance::{AmbulanceActor, PositionFix, SetStatus, UnitStatus, VitalsReading};
use medhub_actors::devices::{DeviceFuture, DeviceIdentity, DeviceMessage, DeviceSink};
use medhub_actors::lease;
use medhub_actors::runtime::ActorRuntime;
use medhub_actors::ActorError;

use crate::cluster::{Cluster, Route};

pub struct ActorSink {
    runtime: Arc<ActorRuntime>,
    units: Arc<RwLock<HashMap<Uuid, Addr<AmbulanceActor>>>>,
    delivered: IntCounterVec,
}

impl ActorSink {
    pub fn new(runtime: Arc<ActorRuntime>, registry: &Registry) -> prometheus::Result<ActorSink> {
        let delivered = IntCounterVec::new(
            Opts::new("medhub_device_messages_total", "Device messages handed to the actors, by kind and outcome"),
            &["kind", "outcome"],
        )?;
        registry.register(Box::new(delivered.clone()))?;
        Ok(ActorSink { runtime, units: Arc::default(), delivered })
    }
}

/// What a crew's status report means for the unit (`ack` acknowledges a dispatch: on its way).
fn reported_status(report: &str) -> Result<UnitStatus, ActorError> {
    match report {
        "ack" => Ok(UnitStatus::EnRoute),
        other => UnitStatus::parse(other)
            .filter(|status| *status != UnitStatus::Dispatched)
            .ok_or_else(|| ActorError::Invalid { field: "status", detail: format!("{other:?} is not a status a unit reports") }),
    }
}

/// The unit's actor, from the cache or from its tenant's supervisor. The cache is used only while
/// this node holds the tenant's lease: an actor of a tenant that moved to another node must not
/// take fixes any more.
async fn unit_actor(runtime: &ActorRuntime, units: &RwLock<HashMap<Uuid, Addr<AmbulanceActor>>>, from: &DeviceIdentity) -> Result<Addr<AmbulanceActor>, ActorError> {
    if lease::held_token(from.tenant_id).is_none() {
        units.write().expect("unit cache lock").remove(&from.unit_id);
    } else if let Some(addr) = units.read().expect("unit cache lock").get(&from.unit_id).filter(|addr| addr.connected()) {
        return Ok(addr.clone());
    }
    let addr = runtime.ambulance(from.tenant_id, &from.tenant, from.unit_id).await?;
    units.write().expect("unit cache lock").insert(from.unit_id, addr.clone());
    Ok(addr)
}

impl DeviceSink for ActorSink {
    fn deliver(&self, from: DeviceIdentity, message: DeviceMessage) -> DeviceFuture<()> {
        let (runtime, units, delivered) = (self.runtime.clone(), self.units.clone(), self.delivered.clone());
        Box::pin(async move {
            let kind = match &message {
                DeviceMessage::Gps(_) => "gps",
                DeviceMessage::Vitals(_) => "vitals",
                DeviceMessage::Status(_) => "status",
            };
            let outcome = async {
                let unit = unit_actor(&runtime, &units, &from).await?;
                let forget = |e: MailboxError| {
                    units.write().expect("unit cache lock").remove(&from.unit_id);
                    ActorError::from(e)
                };
                match message {
                    DeviceMessage::Gps(fix) => unit.send(PositionFix(fix)).await.map_err(forget)?,
                    DeviceMessage::Vitals(vitals) => unit.send(VitalsReading(vitals)).await.map_err(forget)?.map(|_| ()),
                    DeviceMessage::Status(report) => {
                        let status = reported_status(&report.status)?;
                        let reason = format!("reported by device {}", from.device_id);
                        unit.send(SetStatus { caller: None, status, incident_id: report.incident_id, destination: None, reason }).await.map_err(forget)?.map(|_| ())
                    }
                }
            }
            .await;
            delivered.with_label_values(&[kind, if outcome.is_ok() { "accepted" } else { "refused" }]).inc();
            if let Err(e) = &outcome {
                debug!(tenant = %from.tenant, unit_id = %from.unit_id, kind, error = %e, "device message refused by the unit");
            }
            outcome
        })
    }
}

/// Delivers here when this node serves the device's tenant, else to the node that does.
pub struct ClusterSink {
    local: Arc<ActorSink>,
    cluster: Arc<Cluster>,
}

impl ClusterSink {
    pub fn new(local: Arc<ActorSink>, cluster: Arc<Cluster>) -> ClusterSink {
        ClusterSink { local, cluster }
    }
}

impl DeviceSink for ClusterSink {
    fn deliver(&self, from: DeviceIdentity, message: DeviceMessage) -> DeviceFuture<()> {
        let (local, cluster) = (self.local.clone(), self.cluster.clone());
        Box::pin(async move {
            // Two rounds at most: a node found not to serve the tenant any more is asked once
            // where it went (nothing was done by the refusing node).
            let mut asked_again = false;
            loop {
                let route = cluster.route(from.tenant_id).await?;
                let outcome = match &route {
                    Route::Here => local.deliver(from.clone(), message.clone()).await,
                    Route::Forward(owner) => cluster.deliver_remote(owner, &from, &message).await,
                };
                match outcome {
                    Err(ActorError::NotOwner(detail)) if !asked_again => {
                        debug!(tenant = %from.tenant, unit_id = %from.unit_id, detail, "the unit's tenant moved; asking where");
                        cluster.forget(from.tenant_id);
                        asked_again = true;
                    }
                    // The device sends again (no acknowledgement): at least once, never lost.
                    Err(ActorError::NotOwner(detail)) => return Err(ActorError::Unavailable(detail)),
                    other => return other,
                }
            }
        })
    }
}
