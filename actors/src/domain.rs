//! Domain values shared by every actor: who is acting (roles, principals, callers), tenant
//! identifiers and coordinates. Each is built by a fallible constructor at the edge (HTTP, CLI)
//! and trusted inside.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The snake_case name serde gives a unit enum variant (how enums are stored in text columns).
pub(crate) fn enum_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => unreachable!("unit enum variants serialise to strings"),
    }
}

/// A user's role within their tenant. It decides what they may read, change and watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Dispatcher,
    Doctor,
    Nurse,
    Pharmacist,
    Patient,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Admin,
        Role::Dispatcher,
        Role::Doctor,
        Role::Nurse,
        Role::Pharmacist,
        Role::Patient,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Dispatcher => "dispatcher",
            Role::Doctor => "doctor",
            Role::Nurse => "nurse",
            Role::Pharmacist => "pharmacist",
            Role::Patient => "patient",
        }
    }

    pub fn parse(value: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == value)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant's short, immutable name as used in topics (`tenant/{slug}/beds`) and logins:
/// 2 to 40 characters of `a-z`, `0-9` and `-`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantSlug(String);

impl TenantSlug {
    pub fn parse(value: &str) -> Result<TenantSlug, String> {
        let valid_chars = value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        let valid_start = value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if (2..=40).contains(&value.len()) && valid_chars && valid_start {
            Ok(TenantSlug(value.to_owned()))
        } else {
            Err(format!(
                "tenant slug {value:?} must be 2 to 40 characters of a-z, 0-9 and '-', starting with a letter or digit"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantSlug {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        TenantSlug::parse(&value)
    }
}

impl From<TenantSlug> for String {
    fn from(slug: TenantSlug) -> String {
        slug.0
    }
}

impl fmt::Display for TenantSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An authenticated user, as proven by a valid access token of a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: Uuid,
    pub tenant_id: Uuid,
    pub tenant_slug: TenantSlug,
    pub role: Role,
    pub session_id: Uuid,
}

impl Principal {
    pub fn has_role(&self, allowed: &[Role]) -> bool {
        allowed.contains(&self.role)
    }
}

/// Who sent a command and from where: what the audit trail records as the actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    /// The client's address as the hub saw it (peer address, or the first forwarded hop).
    pub source_addr: Option<String>,
}

/// A WGS84 position. Built only through [`GeoPoint::new`], so it is always in range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawGeoPoint")]
pub struct GeoPoint {
    lat: f64,
    lon: f64,
}

#[derive(Deserialize)]
struct RawGeoPoint {
    lat: f64,
    lon: f64,
}

impl TryFrom<RawGeoPoint> for GeoPoint {
    type Error = String;
    fn try_from(raw: RawGeoPoint) -> Result<Self, Self::Error> {
        GeoPoint::new(raw.lat, raw.lon)
    }
}

impl GeoPoint {
    pub fn new(lat: f64, lon: f64) -> Result<GeoPoint, String> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(format!("latitude {lat} must be between -90 and 90"));
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(format!("longitude {lon} must be between -180 and 180"));
        }
        Ok(GeoPoint { lat, lon })
    }

    pub fn lat(&self) -> f64 {
        self.lat
    }

    pub fn lon(&self) -> f64 {
        self.lon
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_short_lowercase_names() {
        assert!(TenantSlug::parse("demo").is_ok());
        assert!(TenantSlug::parse("st-marys-2").is_ok());
        assert!(TenantSlug::parse("-lead").is_err());
        assert!(TenantSlug::parse("Upper").is_err());
        assert!(TenantSlug::parse("a").is_err());
        assert!(TenantSlug::parse("has/slash").is_err());
        assert!(TenantSlug::parse(&"x".repeat(41)).is_err());
    }

    #[test]
    fn geo_points_reject_out_of_range_and_nan() {
        assert!(GeoPoint::new(-1.29, 36.82).is_ok());
        assert!(GeoPoint::new(90.5, 0.0).is_err());
        assert!(GeoPoint::new(0.0, -180.5).is_err());
        assert!(GeoPoint::new(f64::NAN, 0.0).is_err());
        let parsed: Result<GeoPoint, _> = serde_json::from_str(r#"{"lat": 91, "lon": 0}"#);
        assert!(parsed.is_err());
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("superuser"), None);
    }
}
