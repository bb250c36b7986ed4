//! The gateway's Prometheus metrics, registered once in the hub's registry:
//!
//! - `medhub_mqtt_connections`: device connections open now (embedded broker);
//! - `medhub_mqtt_broker_connected`: 1 while the hub is connected to the external broker;
//! - `medhub_mqtt_connects_total`: CONNECTs accepted;
//! - `medhub_mqtt_refused_connects_total{reason}`: CONNECTs refused (`bad_credentials`,
//!   `no_credentials`, `inactive`, `protocol`, `client_id`, `timeout`, `unavailable`);
//! - `medhub_mqtt_acl_refusals_total{action}`: publishes and subscribes outside the device's own
//!   topics (`publish`, `subscribe`);
//! - `medhub_mqtt_accepted_total{kind}`: messages validated and taken by the hub (`gps`, `vitals`,
//!   `status`);
//! - `medhub_mqtt_rejected_total{reason}`: messages refused, by [`RejectReason`] (a message the
//!   hub could not take counts again each time it is tried again);
//! - `medhub_mqtt_undelivered_total{kind}`: external broker: valid messages the hub still could not
//!   take after trying for a while, acknowledged to the broker and lost (alert on it);
//! - `medhub_mqtt_commands_total{outcome}`: commands to units (`queued`, `delivered`,
//!   `no_subscriber`, `overloaded`).

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::payload::RejectReason;
use crate::topics::Telemetry;

#[derive(Clone)]
pub(crate) struct GatewayMetrics {
    pub connections: IntGauge,
    pub broker_connected: IntGauge,
    pub connects: IntCounter,
    refused_connects: IntCounterVec,
    acl_refusals: IntCounterVec,
    accepted: IntCounterVec,
    rejected: IntCounterVec,
    undelivered: IntCounterVec,
    commands: IntCounterVec,
}

/// Why a CONNECT was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectRefusal {
    BadCredentials,
    NoCredentials,
    Inactive,
    Protocol,
    ClientId,
    Timeout,
    Unavailable,
}

impl ConnectRefusal {
    const ALL: [ConnectRefusal; 7] = [
        ConnectRefusal::BadCredentials,
        ConnectRefusal::NoCredentials,
        ConnectRefusal::Inactive,
        ConnectRefusal::Protocol,
        ConnectRefusal::ClientId,
        ConnectRefusal::Timeout,
        ConnectRefusal::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectRefusal::BadCredentials => "bad_credentials",
            ConnectRefusal::NoCredentials => "no_credentials",
            ConnectRefusal::Inactive => "inactive",
            ConnectRefusal::Protocol => "protocol",
            ConnectRefusal::ClientId => "client_id",
            ConnectRefusal::Timeout => "timeout",
            ConnectRefusal::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AclAction {
    Publish,
    Subscribe,
}

impl AclAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AclAction::Publish => "publish",
            AclAction::Subscribe => "subscribe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommandOutcome {
    Queued,
    Delivered,
    NoSubscriber,
    Overloaded,
}

impl CommandOutcome {
    const ALL: [CommandOutcome; 4] = [CommandOutcome::Queued, CommandOutcome::Delivered, CommandOutcome::NoSubscriber, CommandOutcome::Overloaded];

    fn as_str(self) -> &'static str {
        match self {
            CommandOutcome::Queued => "queued",
            CommandOutcome::Delivered => "delivered",
            CommandOutcome::NoSubscriber => "no_subscriber",
            CommandOutcome::Overloaded => "overloaded",
        }
    }
}

impl GatewayMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<GatewayMetrics> {
        let connections = IntGauge::new("medhub_mqtt_connections", "Device connections open on the embedded MQTT endpoint")?;
        let broker_connected = IntGauge::new("medhub_mqtt_broker_connected", "1 while the hub is connected to the external MQTT broker")?;
        let connects = IntCounter::new("medhub_mqtt_connects_total", "MQTT CONNECTs accepted")?;
        let refused_connects =
            IntCounterVec::new(Opts::new("medhub_mqtt_refused_connects_total", "MQTT CONNECTs refused, by reason"), &["reason"])?;
        let acl_refusals = IntCounterVec::new(
            Opts::new("medhub_mqtt_acl_refusals_total", "Publishes and subscribes refused because the topic is not the device's own"),
            &["action"],
        )?;
        let accepted = IntCounterVec::new(Opts::new("medhub_mqtt_accepted_total", "Device messages validated and taken by the hub, by kind"), &["kind"])?;
        let rejected = IntCounterVec::new(Opts::new("medhub_mqtt_rejected_total", "Device messages refused, by reason"), &["reason"])?;
        let undelivered = IntCounterVec::new(
            Opts::new("medhub_mqtt_undelivered_total", "Valid device messages from the external broker the hub could not take in time, by kind: lost"),
            &["kind"],
        )?;
        let commands = IntCounterVec::new(Opts::new("medhub_mqtt_commands_total", "Commands to units, by outcome"), &["outcome"])?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(broker_connected.clone()))?;
        registry.register(Box::new(connects.clone()))?;
        registry.register(Box::new(refused_connects.clone()))?;
        registry.register(Box::new(acl_refusals.clone()))?;
        registry.register(Box::new(accepted.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(undelivered.clone()))?;
        registry.register(Box::new(commands.clone()))?;
        // Every series exists from the start at 0, so a dashboard (or a test) sees a rate, not a gap.
        for reason in ConnectRefusal::ALL {
            refused_connects.with_label_values(&[reason.as_str()]);
        }
        for action in [AclAction::Publish, AclAction::Subscribe] {
            acl_refusals.with_label_values(&[action.as_str()]);
        }
        for kind in Telemetry::ALL {
            accepted.with_label_values(&[kind.as_str()]);
            undelivered.with_label_values(&[kind.as_str()]);
        }
        for reason in RejectReason::ALL {
            rejected.with_label_values(&[reason.as_str()]);
        }
        for outcome in CommandOutcome::ALL {
            commands.with_label_values(&[outcome.as_str()]);
        }
        Ok(GatewayMetrics { connections, broker_connected, connects, refused_connects, acl_refusals, accepted, rejected, undelivered, commands })
    }

    pub fn refused_connect(&self, reason: ConnectRefusal) {
        self.refused_connects.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn acl_refusal(&self, action: AclAction) {
        self.acl_refusals.with_label_values(&[action.as_str()]).inc();
    }

    pub fn accepted(&self, kind: Telemetry) {
        self.accepted.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.rejected.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn undelivered(&self, kind: Telemetry) {
        self.undelivered.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn command(&self, outcome: CommandOutcome) {
        self.commands.with_label_values(&[outcome.as_str()]).inc();
    }
}
