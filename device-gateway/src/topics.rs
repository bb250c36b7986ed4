//! The device topic scheme and the one rule that confines a device to it.
//!
//! A unit's devices publish on `medhub/{tenant}/ambulance/{unit}/gps`, `.../vitals` and
//! `.../status` and receive commands on `.../cmd`, where `{tenant}` is the tenant's slug and
//! `{unit}` the unit's id in its canonical form (lowercase, hyphenated). A device may publish only
//! those three topics of its own tenant and unit, and subscribe only to its own `cmd` topic (no
//! wildcards). Both brokers apply the same rule: the embedded endpoint through these functions,
//! an external mosquitto through the ACL file written from [`device_topic`].

use medhub_actors::devices::DeviceIdentity;
use medhub_actors::TenantSlug;
use uuid::Uuid;

use crate::GatewayError;

/// What a device may publish: the three telemetry topics of its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Telemetry {
    Gps,
    Vitals,
    Status,
}

impl Telemetry {
    pub const ALL: [Telemetry; 3] = [Telemetry::Gps, Telemetry::Vitals, Telemetry::Status];

    /// The topic's last level, also the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Telemetry::Gps => "gps",
            Telemetry::Vitals => "vitals",
            Telemetry::Status => "status",
        }
    }

    fn parse(level: &str) -> Option<Telemetry> {
        Telemetry::ALL.into_iter().find(|kind| kind.as_str() == level)
    }
}

/// The last level of the topic on which a unit receives commands.
pub const COMMAND_LEVEL: &str = "cmd";

/// `medhub/{tenant}/ambulance/{unit}/{leaf}`.
pub fn device_topic(tenant: &str, unit_id: Uuid, leaf: &str) -> String {
    format!("medhub/{tenant}/ambulance/{}/{leaf}", unit_id.hyphenated())
}

/// The unit's command topic.
pub fn command_topic(tenant: &TenantSlug, unit_id: Uuid) -> String {
    device_topic(tenant.as_str(), unit_id, COMMAND_LEVEL)
}

/// Every unit's telemetry, as topic filters: what the hub reads on an external broker (its ACL
/// grants exactly these).
pub fn telemetry_filters() -> [String; 3] {
    Telemetry::ALL.map(|kind| format!("medhub/+/ambulance/+/{}", kind.as_str()))
}

/// The MQTT 5 shared-subscription group the hub nodes join on an external broker: the broker hands
/// each message matching the group's filters to one member only, so that several hub nodes
/// connected to one broker handle each device message once between them. Every node of one
/// deployment must name the same group; two deployments on one broker must name different ones.
///
/// A name is 1 to 64 ASCII letters, digits, `-`, `_` or `.`: MQTT forbids only `/`, `+` and `#`,
/// but the name also appears in the broker's configuration and logs, where anything else is a
/// trap.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShareGroup(String);

impl ShareGroup {
    /// The group when none is configured.
    pub const DEFAULT: &'static str = "medhub";

    pub fn parse(name: &str) -> Result<ShareGroup, GatewayError> {
        let valid = (1..=64).contains(&name.len()) && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
        if valid {
            Ok(ShareGroup(name.to_owned()))
        } else {
            Err(GatewayError::ShareGroup(format!("{name:?} is not a shared-subscription group name: use 1 to 64 letters, digits, '-', '_' or '.'")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `$share/{group}/{filter}` for each of [`telemetry_filters`]: what a hub node subscribes to.
    pub fn telemetry_filters(&self) -> [String; 3] {
        telemetry_filters().map(|filter| format!("$share/{}/{filter}", self.0))
    }
}

impl Default for ShareGroup {
    fn default() -> ShareGroup {
        ShareGroup(ShareGroup::DEFAULT.to_owned())
    }
}

impl std::fmt::Display for ShareGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A telemetry topic taken apart: whose unit, and what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryTopic {
    pub tenant: TenantSlug,
    pub unit_id: Uuid,
    pub kind: Telemetry,
}

/// Reads `medhub/{tenant}/ambulance/{unit}/{gps|vitals|status}`; anything else (another scheme, a
/// unit id not in canonical form, a command topic) is `None`.
pub fn parse_telemetry_topic(topic: &str) -> Option<TelemetryTopic> {
    let mut levels = topic.split('/');
    let (Some("medhub"), Some(tenant), Some("ambulance"), Some(unit), Some(leaf), None) =
        (levels.next(), levels.next(), levels.next(), levels.next(), levels.next(), levels.next())
    else {
        return None;
    };
    let unit_id = Uuid::parse_str(unit).ok().filter(|id| id.hyphenated().to_string() == unit)?;
    Some(TelemetryTopic { tenant: TenantSlug::parse(tenant).ok()?, unit_id, kind: Telemetry::parse(leaf)? })
}

/// What `device` may do with `topic` when it publishes: the kind of telemetry, or `None` when the
/// topic is not one of its own unit's three.
pub fn authorize_publish(device: &DeviceIdentity, topic: &str) -> Option<Telemetry> {
    parse_telemetry_topic(topic)
        .filter(|parsed| parsed.tenant == device.tenant && parsed.unit_id == device.unit_id)
        .map(|parsed| parsed.kind)
}

/// Whether `device` may subscribe to `filter`: only its own command topic, spelled exactly.
pub fn authorize_subscribe(device: &DeviceIdentity, filter: &str) -> bool {
    filter == command_topic(&device.tenant, device.unit_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(tenant: &str, unit: Uuid) -> DeviceIdentity {
        DeviceIdentity { tenant_id: Uuid::new_v4(), tenant: TenantSlug::parse(tenant).unwrap(), device_id: Uuid::new_v4(), unit_id: unit }
    }

    #[test]
    fn a_device_publishes_only_its_own_units_telemetry() {
        let (unit, other) = (Uuid::new_v4(), Uuid::new_v4());
        let me = device("alpha", unit);
        assert_eq!(authorize_publish(&me, &device_topic("alpha", unit, "gps")), Some(Telemetry::Gps));
        assert_eq!(authorize_publish(&me, &device_topic("alpha", unit, "vitals")), Some(Telemetry::Vitals));
        assert_eq!(authorize_publish(&me, &device_topic("alpha", unit, "status")), Some(Telemetry::Status));
        // Another unit, another tenant, its own command topic, deeper or odd spellings.
        assert_eq!(authorize_publish(&me, &device_topic("alpha", other, "gps")), None);
        assert_eq!(authorize_publish(&me, &device_topic("beta", unit, "gps")), None);
        assert_eq!(authorize_publish(&me, &device_topic("alpha", unit, "cmd")), None);
        assert_eq!(authorize_publish(&me, &format!("{}/x", device_topic("alpha", unit, "gps"))), None);
        let upper = format!("medhub/alpha/ambulance/{}/gps", unit.hyphenated().to_string().to_uppercase());
        assert_eq!(authorize_publish(&me, &upper), None);
        assert_eq!(authorize_publish(&me, &format!("medhub/alpha/ambulance/{}/gps", unit.simple())), None);
        assert_eq!(authorize_publish(&me, "medhub/alpha/ambulance/+/gps"), None);
        assert_eq!(authorize_publish(&me, ""), None);
    }

    #[test]
    fn a_device_subscribes_only_to_its_own_command_topic() {
        let (unit, other) = (Uuid::new_v4(), Uuid::new_v4());
        let me = device("alpha", unit);
        assert!(authorize_subscribe(&me, &device_topic("alpha", unit, "cmd")));
        assert!(!authorize_subscribe(&me, &device_topic("alpha", other, "cmd")));
        assert!(!authorize_subscribe(&me, &device_topic("beta", unit, "cmd")));
        assert!(!authorize_subscribe(&me, "medhub/alpha/ambulance/+/cmd"));
        assert!(!authorize_subscribe(&me, "medhub/#"));
        assert!(!authorize_subscribe(&me, "#"));
        assert!(!authorize_subscribe(&me, &device_topic("alpha", unit, "gps")));
    }

    #[test]
    fn telemetry_topics_name_tenant_unit_and_kind() {
        let unit = Uuid::new_v4();
        let parsed = parse_telemetry_topic(&device_topic("st-marys", unit, "vitals")).unwrap();
        assert_eq!(parsed.tenant.as_str(), "st-marys");
        assert_eq!(parsed.unit_id, unit);
        assert_eq!(parsed.kind, Telemetry::Vitals);
        assert!(parse_telemetry_topic(&device_topic("Bad Slug", unit, "gps")).is_none());
        assert!(parse_telemetry_topic("medhub/alpha/ambulance/not-a-uuid/gps").is_none());
        assert_eq!(telemetry_filters()[0], "medhub/+/ambulance/+/gps");
    }

    #[test]
    fn hub_nodes_share_the_telemetry_filters_under_their_group() {
        let group = ShareGroup::parse("medhub-east.1").unwrap();
        assert_eq!(group.telemetry_filters()[0], "$share/medhub-east.1/medhub/+/ambulance/+/gps");
        assert_eq!(group.telemetry_filters()[2], "$share/medhub-east.1/medhub/+/ambulance/+/status");
        assert_eq!(ShareGroup::default().as_str(), "medhub");
        let long = "g".repeat(65);
        for bad in ["", "a/b", "a+", "#", "with space", "ümlaut", long.as_str()] {
            assert!(ShareGroup::parse(bad).is_err(), "{bad:?}");
        }
    }
}
