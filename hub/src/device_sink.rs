//! Where the device gateway delivers what units say: GPS fixes and vitals to the unit's actor,
//! status reports (including the acknowledgement of a dispatch) as status changes of the unit,
//! which the tenant's dispatch actor follows. Counted per kind and outcome in `/metrics`.

use std::sync::Arc;

use prometheus::{IntCounterVec, Opts, Registry};
use tracing::debug;

use medhub_actors::ambulance::{PositionFix, SetStatus, UnitStatus, VitalsReading};
use medhub_actors::devices::{DeviceFuture, DeviceIdentity, DeviceMessage, DeviceSink};
use medhub_actors::runtime::ActorRuntime;
use medhub_actors::ActorError;

pub struct ActorSink {
    runtime: Arc<ActorRuntime>,
    delivered: IntCounterVec,
}

impl ActorSink {
    pub fn new(runtime: Arc<ActorRuntime>, registry: &Registry) -> prometheus::Result<ActorSink> {
        let delivered = IntCounterVec::new(
            Opts::new("medhub_device_messages_total", "Device messages handed to the actors, by kind and outcome"),
            &["kind", "outcome"],
        )?;
        registry.register(Box::new(delivered.clone()))?;
        Ok(ActorSink { runtime, delivered })
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

impl DeviceSink for ActorSink {
    fn deliver(&self, from: DeviceIdentity, message: DeviceMessage) -> DeviceFuture<()> {
        let (runtime, delivered) = (self.runtime.clone(), self.delivered.clone());
        Box::pin(async move {
            let kind = match &message {
                DeviceMessage::Gps(_) => "gps",
                DeviceMessage::Vitals(_) => "vitals",
                DeviceMessage::Status(_) => "status",
            };
            let outcome = async {
                let unit = runtime.ambulance(from.tenant_id, &from.tenant, from.unit_id).await?;
                match message {
                    DeviceMessage::Gps(fix) => unit.send(PositionFix(fix)).await?,
                    DeviceMessage::Vitals(vitals) => unit.send(VitalsReading(vitals)).await?.map(|_| ()),
                    DeviceMessage::Status(report) => {
                        let status = reported_status(&report.status)?;
                        let reason = format!("reported by device {}", from.device_id);
                        unit.send(SetStatus { caller: None, status, incident_id: report.incident_id, destination: None, reason }).await?.map(|_| ())
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
