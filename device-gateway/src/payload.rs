//! Device payloads (JSON) turned into the domain's [`DeviceMessage`], or refused with a reason.
//!
//! - GPS: `{"lat", "lon", "speed", "heading", "accuracy", "fix_time"}`: WGS84 degrees, metres per
//!   second (0 to 100), degrees clockwise from north (0 to 360), metres (0 to 10,000), and an
//!   RFC 3339 time no more than 5 minutes ahead of the hub's clock nor more than 24 hours old.
//! - Vitals: as [`Vitals::from_json`] reads them, with `measured_at` in the same time window.
//! - Status: `{"status", "incident_id"?, "reported_at"}`, `status` one of [`UNIT_STATUSES`];
//!   `ack` (acknowledging a dispatch) must name its incident.
//!
//! Every field is required, unknown fields are refused (a typo must not silently drop a value),
//! and nothing here panics on any input: a payload is data from outside.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use medhub_actors::devices::{DeviceMessage, GpsFix, StatusReport};
use medhub_actors::news2::Vitals;
use medhub_actors::{ActorError, GeoPoint};

use crate::topics::Telemetry;

/// How far ahead of the hub's clock a device's timestamp may be (clock skew).
const MAX_AHEAD: Duration = Duration::minutes(5);
/// How old an observation may be and still be news.
const MAX_AGE: Duration = Duration::hours(24);

/// What a unit may report in a status message.
pub const UNIT_STATUSES: [&str; 7] = ["available", "en_route", "on_scene", "transporting", "at_hospital", "out_of_service", "ack"];

const GPS_FIELDS: [&str; 6] = ["lat", "lon", "speed", "heading", "accuracy", "fix_time"];
const STATUS_FIELDS: [&str; 3] = ["status", "incident_id", "reported_at"];

/// Why a message from a device did not reach the hub; also the `reason` label of
/// `medhub_mqtt_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Larger than the configured maximum packet size (refused before it was read).
    TooLarge,
    /// A packet that is not MQTT (the connection is closed).
    MalformedPacket,
    /// Not UTF-8 or not JSON.
    NotJson,
    /// A field missing, unknown, of the wrong type or out of range (NaN arrives as a string).
    InvalidField,
    /// A timestamp more than 5 minutes in the future or more than 24 hours old.
    BadTime,
    /// Valid, but the hub refused it (e.g. a status change its unit cannot make).
    RefusedByHub,
    /// Valid, but the hub could not take it now (embedded endpoint, QoS 1: not acknowledged, so the
    /// device resends; external broker: tried again for a while, each try counted).
    HubUnavailable,
    /// External broker mode: a topic whose tenant or unit has no active device.
    UnknownUnit,
    /// External broker mode: more messages queued than the hub can hold.
    Overloaded,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::TooLarge,
        RejectReason::MalformedPacket,
        RejectReason::NotJson,
        RejectReason::InvalidField,
        RejectReason::BadTime,
        RejectReason::RefusedByHub,
        RejectReason::HubUnavailable,
        RejectReason::UnknownUnit,
        RejectReason::Overloaded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "too_large",
            RejectReason::MalformedPacket => "malformed_packet",
            RejectReason::NotJson => "not_json",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::BadTime => "bad_time",
            RejectReason::RefusedByHub => "refused_by_hub",
            RejectReason::HubUnavailable => "hub_unavailable",
            RejectReason::UnknownUnit => "unknown_unit",
            RejectReason::Overloaded => "overloaded",
        }
    }
}

/// A refused message: why, which field if one is to blame, and a sentence for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub field: Option<&'static str>,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Rejection {
        Rejection { reason, field: None, detail: detail.into() }
    }

    fn field(reason: RejectReason, field: &'static str, detail: impl Into<String>) -> Rejection {
        Rejection { reason, field: Some(field), detail: detail.into() }
    }
}

/// Decodes and validates one payload of `kind`, judged against the hub's clock `now`.
pub fn decode(kind: Telemetry, payload: &[u8], max_bytes: usize, now: DateTime<Utc>) -> Result<DeviceMessage, Rejection> {
    if payload.len() > max_bytes {
        return Err(Rejection::new(RejectReason::TooLarge, format!("payload of {} bytes; at most {max_bytes} are accepted", payload.len())));
    }
    let text = std::str::from_utf8(payload).map_err(|_| Rejection::new(RejectReason::NotJson, "payload is not UTF-8 text"))?;
    let json: Value =
        serde_json::from_str(text).map_err(|error| Rejection::new(RejectReason::NotJson, format!("payload is not valid JSON: {error}")))?;
    match kind {
        Telemetry::Gps => parse_gps(&json, now).map(DeviceMessage::Gps),
        Telemetry::Vitals => parse_vitals(&json, now).map(|vitals| DeviceMessage::Vitals(Box::new(vitals))),
        Telemetry::Status => parse_status(&json, now).map(DeviceMessage::Status),
    }
}

fn parse_gps(json: &Value, now: DateTime<Utc>) -> Result<GpsFix, Rejection> {
    let object = object(json, "a GPS fix", &GPS_FIELDS)?;
    let lat = ranged(object, "lat", -90.0, 90.0, "degrees")?;
    let lon = ranged(object, "lon", -180.0, 180.0, "degrees")?;
    let position = GeoPoint::new(lat, lon).map_err(|detail| Rejection::field(RejectReason::InvalidField, "lat", detail))?;
    Ok(GpsFix {
        position,
        speed_mps: ranged(object, "speed", 0.0, 100.0, "metres per second")?,
        heading_deg: ranged(object, "heading", 0.0, 360.0, "degrees")?,
        accuracy_m: ranged(object, "accuracy", 0.0, 10_000.0, "metres")?,
        fix_time: check_time("fix_time", time(object, "fix_time")?, now)?,
    })
}

fn parse_vitals(json: &Value, now: DateTime<Utc>) -> Result<Vitals, Rejection> {
    let vitals = Vitals::from_json(json).map_err(|error| match error {
        ActorError::Invalid { field, detail } => Rejection::field(RejectReason::InvalidField, field, detail),
        other => Rejection::new(RejectReason::InvalidField, other.to_string()),
    })?;
    check_time("measured_at", vitals.measured_at, now)?;
    Ok(vitals)
}

fn parse_status(json: &Value, now: DateTime<Utc>) -> Result<StatusReport, Rejection> {
    let object = object(json, "a status report", &STATUS_FIELDS)?;
    let status = match object.get("status") {
        Some(Value::String(status)) if UNIT_STATUSES.contains(&status.as_str()) => status.clone(),
        Some(other) => {
            return Err(invalid("status", format!("status must be one of {}, not {}", UNIT_STATUSES.join(", "), shown(other))));
        }
        None => return Err(invalid("status", "status is missing")),
    };
    let incident_id = match object.get("incident_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if Uuid::parse_str(text).is_ok() => Uuid::parse_str(text).ok(),
        Some(other) => return Err(invalid("incident_id", format!("incident_id must be a UUID, not {}", shown(other)))),
    };
    if status == "ack" && incident_id.is_none() {
        return Err(invalid("incident_id", "an \"ack\" status must name the incident it acknowledges in incident_id"));
    }
    let reported_at = check_time("reported_at", time(object, "reported_at")?, now)?;
    Ok(StatusReport { status, incident_id, reported_at })
}

fn object<'a>(json: &'a Value, what: &str, fields: &[&str]) -> Result<&'a Map<String, Value>, Rejection> {
    let object = json.as_object().ok_or_else(|| Rejection::new(RejectReason::InvalidField, format!("{what} must be a JSON object")))?;
    if let Some(unknown) = object.keys().find(|key| !fields.contains(&key.as_str())) {
        let unknown: String = unknown.chars().take(40).collect();
        return Err(Rejection::new(RejectReason::InvalidField, format!("unknown field {unknown:?}; the fields are {}", fields.join(", "))));
    }
    Ok(object)
}

fn ranged(object: &Map<String, Value>, field: &'static str, min: f64, max: f64, unit: &str) -> Result<f64, Rejection> {
    let value = match object.get(field) {
        None | Some(Value::Null) => return Err(invalid(field, format!("{field} is missing"))),
        Some(value) => value,
    };
    // JSON has no NaN or infinity: a device that sends them sends a string, refused here.
    let number = value.as_f64().filter(|n| n.is_finite()).ok_or_else(|| invalid(field, format!("{field} must be a number of {unit}, not {}", shown(value))))?;
    if !(min..=max).contains(&number) {
        return Err(invalid(field, format!("{field} {number} is out of range: {min} to {max} {unit}")));
    }
    Ok(number)
}

fn time(object: &Map<String, Value>, field: &'static str) -> Result<DateTime<Utc>, Rejection> {
    match object.get(field) {
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(text)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|_| invalid(field, format!("{field} must be an RFC 3339 time such as \"2026-05-01T10:15:00Z\", not {}", shown(&Value::String(text.clone()))))),
        None | Some(Value::Null) => Err(invalid(field, format!("{field} is missing"))),
        Some(other) => Err(invalid(field, format!("{field} must be an RFC 3339 time string, not {}", shown(other)))),
    }
}

fn check_time(field: &'static str, at: DateTime<Utc>, now: DateTime<Utc>) -> Result<DateTime<Utc>, Rejection> {
    if at > now + MAX_AHEAD {
        let ahead = (at - now).num_seconds();
        return Err(Rejection::field(
            RejectReason::BadTime,
            field,
            format!("{field} {} is {ahead} s ahead of the hub's clock; at most 5 minutes is accepted, check the device's clock", at.to_rfc3339()),
        ));
    }
    if at < now - MAX_AGE {
        return Err(Rejection::field(RejectReason::BadTime, field, format!("{field} {} is more than 24 hours old", at.to_rfc3339())));
    }
    Ok(at)
}

fn invalid(field: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection::field(RejectReason::InvalidField, field, detail)
}

/// A value as a log may show it: JSON, cut short (a device may send anything, of any length).
fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 60 {
        text
    } else {
        format!("{}…", text.chars().take(60).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAX: usize = 64 * 1024;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-05-01T10:15:00Z").unwrap().with_timezone(&Utc)
    }

    fn gps(overrides: Value) -> Vec<u8> {
        let mut fix = json!({"lat": -1.2921, "lon": 36.8219, "speed": 12.5, "heading": 270, "accuracy": 4.0, "fix_time": "2026-05-01T10:14:58Z"});
        for (key, value) in overrides.as_object().unwrap() {
            if value.is_null() {
                fix.as_object_mut().unwrap().remove(key);
            } else {
                fix[key] = value.clone();
            }
        }
        fix.to_string().into_bytes()
    }

    fn reason(kind: Telemetry, payload: &[u8]) -> (RejectReason, Option<&'static str>) {
        let rejection = decode(kind, payload, MAX, now()).unwrap_err();
        (rejection.reason, rejection.field)
    }

    #[test]
    fn a_good_fix_becomes_a_gps_message() {
        let DeviceMessage::Gps(fix) = decode(Telemetry::Gps, &gps(json!({})), MAX, now()).unwrap() else { panic!("not gps") };
        assert_eq!(fix.position.lat(), -1.2921);
        assert_eq!(fix.speed_mps, 12.5);
        assert_eq!(fix.heading_deg, 270.0);
        assert_eq!(fix.fix_time, DateTime::parse_from_rfc3339("2026-05-01T10:14:58Z").unwrap());
    }

    #[test]
    fn bad_fixes_are_refused_naming_the_field() {
        assert_eq!(reason(Telemetry::Gps, &gps(json!({"lat": 91}))), (RejectReason::InvalidField, Some("lat")));
        assert_eq!(reason(Telemetry::Gps, &gps(json!({"lon": -180.5}))), (RejectReason::InvalidField, Some("lon")));
        assert_eq!(reason(Telemetry::Gps, &gps(json!({"lat": "NaN"}))), (RejectReason::InvalidField, Some("lat")));
        assert_eq!(reason(Telemetry::Gps, &gps(json!({"speed": 101}))), (RejectReason::InvalidField, Some("speed")));
        assert_eq!(reason(Telemetry::Gps, &gps(json!({"speed": -1}))), (RejectReason::InvalidField, Some("speed")));
        assert_eq!(reason(Telemetry::Gps, &gps(json!({"heading": 360.5}))), (RejectReason::InvalidField, Some("heading")));
        assert_eq!(reason(Telemetry::Gps, &gps(json!({"accuracy": 10_001}))), (RejectReason::InvalidField, Some("accuracy")));
        assert_eq!(reason(Telemetry::Gps, &gps(json!({"accuracy": null}))), (RejectReason::InvalidField, Some("accuracy")));
        assert_eq!(reason(Telemetry::Gps, &gps(json!({"fix_time": 1714558498}))), (RejectReason::InvalidField, Some("fix_time")));
        assert_eq!(reason(Telemetry::Gps, &gps(json!({"fix_time": "yesterday"}))), (RejectReason::InvalidField, Some("fix_time")));
        assert_eq!(reason(Telemetry::Gps, &gps(json!({"altitude": 1200}))).0, RejectReason::InvalidField);
        assert_eq!(reason(Telemetry::Gps, b"[1, 2]").0, RejectReason::InvalidField);
    }

    #[test]
    fn timestamps_must_be_recent_and_not_ahead() {
        assert_eq!(reason(Telemetry::Gps, &gps(json!({"fix_time": "2026-05-01T10:20:01Z"}))), (RejectReason::BadTime, Some("fix_time")));
        assert_eq!(reason(Telemetry::Gps, &gps(json!({"fix_time": "2026-04-30T10:14:59Z"}))), (RejectReason::BadTime, Some("fix_time")));
        assert!(decode(Telemetry::Gps, &gps(json!({"fix_time": "2026-05-01T10:19:59Z"})), MAX, now()).is_ok());
        assert!(decode(Telemetry::Gps, &gps(json!({"fix_time": "2026-05-01T12:14:58+02:00"})), MAX, now()).is_ok());
    }

    #[test]
    fn junk_is_not_json_and_blobs_are_too_large() {
        assert_eq!(reason(Telemetry::Gps, b"{\"lat\": ").0, RejectReason::NotJson);
        assert_eq!(reason(Telemetry::Gps, &[0xff, 0xfe, 0x00]).0, RejectReason::NotJson);
        assert_eq!(reason(Telemetry::Gps, b"{\"lat\": NaN}").0, RejectReason::NotJson);
        assert_eq!(reason(Telemetry::Gps, b"{\"lat\": 1e999}").0, RejectReason::NotJson);
        assert_eq!(reason(Telemetry::Status, "[".repeat(10_000).as_bytes()).0, RejectReason::NotJson);
        let blob = vec![b' '; MAX + 1];
        assert_eq!(reason(Telemetry::Vitals, &blob).0, RejectReason::TooLarge);
    }

    #[test]
    fn vitals_are_read_by_news2_and_timed_here() {
        let vitals = json!({"respiration_rate": 18, "spo2": 97, "on_oxygen": false, "systolic_bp": 124, "pulse": 82,
                            "consciousness": "alert", "temperature": 37.1, "measured_at": "2026-05-01T10:14:00Z"});
        assert!(matches!(decode(Telemetry::Vitals, vitals.to_string().as_bytes(), MAX, now()), Ok(DeviceMessage::Vitals(_))));
        let mut future = vitals.clone();
        future["measured_at"] = json!("2026-05-01T11:00:00Z");
        assert_eq!(reason(Telemetry::Vitals, future.to_string().as_bytes()), (RejectReason::BadTime, Some("measured_at")));
        let mut high = vitals.clone();
        high["pulse"] = json!("NaN");
        assert_eq!(reason(Telemetry::Vitals, high.to_string().as_bytes()), (RejectReason::InvalidField, Some("pulse")));
    }

    #[test]
    fn status_reports_name_a_known_status() {
        let incident = Uuid::new_v4();
        let ack = json!({"status": "ack", "incident_id": incident, "reported_at": "2026-05-01T10:15:00Z"});
        let DeviceMessage::Status(report) = decode(Telemetry::Status, ack.to_string().as_bytes(), MAX, now()).unwrap() else { panic!() };
        assert_eq!((report.status.as_str(), report.incident_id), ("ack", Some(incident)));
        let available = json!({"status": "available", "reported_at": "2026-05-01T10:15:00Z"});
        assert!(decode(Telemetry::Status, available.to_string().as_bytes(), MAX, now()).is_ok());
        let bad = json!({"status": "flying", "reported_at": "2026-05-01T10:15:00Z"});
        assert_eq!(reason(Telemetry::Status, bad.to_string().as_bytes()), (RejectReason::InvalidField, Some("status")));
        let anonymous_ack = json!({"status": "ack", "reported_at": "2026-05-01T10:15:00Z"});
        assert_eq!(reason(Telemetry::Status, anonymous_ack.to_string().as_bytes()), (RejectReason::InvalidField, Some("incident_id")));
        let bad_id = json!({"status": "ack", "incident_id": 7, "reported_at": "2026-05-01T10:15:00Z"});
        assert_eq!(reason(Telemetry::Status, bad_id.to_string().as_bytes()), (RejectReason::InvalidField, Some("incident_id")));
    }
}
