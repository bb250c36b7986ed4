//! Registered devices: registration, listing and deactivation (the admin API calls these), and
//! the check of a device's credentials at CONNECT.
//!
//! The hub generates each device's username and password; the password is shown once, at
//! registration, and kept only as hashes: argon2id for the embedded endpoint, and mosquitto's
//! PBKDF2-SHA512 format for the password file of an external broker ([`crate::mosquitto`]).
//!
//! Device passwords are 192-bit random secrets, not something a person chose, so no work factor is
//! needed against guessing; argon2id runs with light parameters (8 MiB, one pass) so that
//! thousands of devices reconnecting at once (after a network cut or a restart) cost seconds, not
//! minutes. On top, the [`Authenticator`] remembers a verified login for a while (keyed by username,
//! holding a SHA-256 of the password that verified), so a device that reconnects is let in without
//! argon2 or a database query; deactivating a device forgets it at once.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use thiserror::Error;
use tokio::sync::Semaphore;
use uuid::Uuid;

use medhub_actors::audit::{self, AuditRecord};
use medhub_actors::devices::DeviceIdentity;
use medhub_actors::{Caller, TenantSlug};

use crate::mosquitto;
use crate::topics::{device_topic, Telemetry, COMMAND_LEVEL};

/// What went wrong with a device operation, phrased for the admin who asked.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// The input is not acceptable; `field` names the culprit.
    #[error("{detail}")]
    Invalid { field: &'static str, detail: String },
    /// No such device in the caller's tenant.
    #[error("device not found")]
    NotFound,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// What a device is: a unit's tracker (GPS, status) or a patient monitor (vitals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Ambulance,
    Monitor,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Ambulance => "ambulance",
            DeviceKind::Monitor => "monitor",
        }
    }

    fn parse(value: &str) -> Option<DeviceKind> {
        [DeviceKind::Ambulance, DeviceKind::Monitor].into_iter().find(|kind| kind.as_str() == value)
    }
}

/// A device to register, checked.
#[derive(Debug, Clone)]
pub struct NewDevice {
    unit_id: Uuid,
    kind: DeviceKind,
    name: String,
}

impl NewDevice {
    /// `name`: 1 to 200 characters once trimmed, no control characters.
    pub fn new(unit_id: Uuid, kind: DeviceKind, name: &str) -> Result<NewDevice, DeviceError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(DeviceError::Invalid { field: "name", detail: "name must be 1 to 200 characters".to_owned() });
        }
        if name.chars().any(char::is_control) {
            return Err(DeviceError::Invalid { field: "name", detail: "name must not contain control characters".to_owned() });
        }
        if unit_id.is_nil() {
            return Err(DeviceError::Invalid { field: "unit_id", detail: "unit_id must name an ambulance unit, not the nil UUID".to_owned() });
        }
        Ok(NewDevice { unit_id, kind, name: name.to_owned() })
    }
}

/// A registered device, as admins see it (never its password or hashes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub id: Uuid,
    pub unit_id: Uuid,
    pub kind: DeviceKind,
    pub name: String,
    pub username: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub deactivated_at: Option<DateTime<Utc>>,
}

/// The answer to a registration: the device, its password (shown this once) and its topics.
#[derive(Debug, Clone, Serialize)]
pub struct RegisteredDevice {
    #[serde(flatten)]
    pub device: Device,
    pub password: String,
    pub topics: DeviceTopics,
}

/// Where a device publishes and what it subscribes to.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceTopics {
    pub publish: Vec<String>,
    pub subscribe: String,
}

impl DeviceTopics {
    pub fn of(tenant: &TenantSlug, unit_id: Uuid) -> DeviceTopics {
        DeviceTopics {
            publish: Telemetry::ALL.iter().map(|kind| device_topic(tenant.as_str(), unit_id, kind.as_str())).collect(),
            subscribe: device_topic(tenant.as_str(), unit_id, COMMAND_LEVEL),
        }
    }
}

/// Registers a device of `new.unit_id` in the caller's tenant, with generated credentials, and
/// records it in the audit trail in the same transaction.
pub async fn register_device(pool: &PgPool, caller: &Caller, new: NewDevice) -> Result<RegisteredDevice, DeviceError> {
    let principal = &caller.principal;
    let password = random_secret(24);
    let (password_hash, broker_password_hash) = {
        let password = password.clone();
        tokio::task::spawn_blocking(move || (hash_password(&password), mosquitto::password_hash(&password)))
            .await
            .map_err(|e| DeviceError::Database(sqlx::Error::Protocol(format!("password hashing failed: {e}"))))?
    };
    let id = Uuid::new_v4();
    let username = format!("{}-{}-{}", principal.tenant_slug, new.kind.as_str(), random_hex(6));
    let mut tx = pool.begin().await?;
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO devices (id, tenant_id, unit_id, kind, name, username, password_hash, broker_password_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING created_at",
    )
    .bind(id)
    .bind(principal.tenant_id)
    .bind(new.unit_id)
    .bind(new.kind.as_str())
    .bind(&new.name)
    .bind(&username)
    .bind(&password_hash)
    .bind(&broker_password_hash)
    .fetch_one(&mut *tx)
    .await?;
    let record = AuditRecord::by_caller(caller, "device.register", "device", id)
        .detail(json!({"unit_id": new.unit_id, "kind": new.kind.as_str(), "name": new.name, "username": username}));
    audit::append(&mut tx, principal.tenant_id, &record).await?;
    tx.commit().await?;
    let device = Device { id, unit_id: new.unit_id, kind: new.kind, name: new.name, username, active: true, created_at, deactivated_at: None };
    Ok(RegisteredDevice { device, password, topics: DeviceTopics::of(&principal.tenant_slug, new.unit_id) })
}

/// The tenant's devices, newest first.
pub async fn list_devices(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<Device>, DeviceError> {
    let rows = sqlx::query(
        "SELECT id, unit_id, kind, name, username, active, created_at, deactivated_at
         FROM devices WHERE tenant_id = $1 ORDER BY created_at DESC, username",
    )
    .bind(tenant_id)
    .fetch_all(pool)
    .await?;
    rows.iter().map(device_from_row).collect()
}

/// Deactivates a device of the caller's tenant (idempotent), audited. The caller then tells the
/// running gateway ([`crate::GatewayHandle::forget_device`]) so the device's live connection and
/// remembered login go too.
pub async fn deactivate_device(pool: &PgPool, caller: &Caller, device_id: Uuid) -> Result<Device, DeviceError> {
    let tenant_id = caller.principal.tenant_id;
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "UPDATE devices SET active = false, deactivated_at = COALESCE(deactivated_at, now())
         WHERE id = $1 AND tenant_id = $2
         RETURNING id, unit_id, kind, name, username, active, created_at, deactivated_at",
    )
    .bind(device_id)
    .bind(tenant_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(DeviceError::NotFound)?;
    let device = device_from_row(&row)?;
    let record = AuditRecord::by_caller(caller, "device.deactivate", "device", device_id)
        .detail(json!({"unit_id": device.unit_id, "username": device.username}));
    audit::append(&mut tx, tenant_id, &record).await?;
    tx.commit().await?;
    Ok(device)
}

fn device_from_row(row: &sqlx::postgres::PgRow) -> Result<Device, DeviceError> {
    let kind: String = row.try_get("kind")?;
    Ok(Device {
        id: row.try_get("id")?,
        unit_id: row.try_get("unit_id")?,
        kind: DeviceKind::parse(&kind).ok_or_else(|| DeviceError::Database(sqlx::Error::Decode(format!("unknown device kind {kind:?}").into())))?,
        name: row.try_get("name")?,
        username: row.try_get("username")?,
        active: row.try_get("active")?,
        created_at: row.try_get("created_at")?,
        deactivated_at: row.try_get("deactivated_at")?,
    })
}

// ---------------------------------------------------------------------------------------------
// Credentials

fn device_argon2() -> Argon2<'static> {
    let params = Params::new(8 * 1024, 1, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub(crate) fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    device_argon2().hash_password(password.as_bytes(), &salt).expect("argon2 hashes any password").to_string()
}

/// Checks against the parameters stored in the hash, so stronger ones can come later.
pub(crate) fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()).unwrap_or(false)
}

fn random_secret(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buffer);
    URL_SAFE_NO_PAD.encode(buffer)
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buffer);
    buffer.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Why a CONNECT's credentials did not let the device in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoginRefusal {
    NoCredentials,
    BadCredentials,
    /// Right password, deactivated device.
    Inactive,
    /// The database could not be asked; the device should retry.
    Unavailable(String),
}

struct RememberedLogin {
    password_digest: [u8; 32],
    identity: DeviceIdentity,
    verified_at: Instant,
}

/// How many logins the authenticator remembers at most (beyond that it starts afresh).
const MAX_REMEMBERED: usize = 200_000;

/// Checks device credentials at CONNECT and remembers the ones that verified.
pub(crate) struct Authenticator {
    pool: PgPool,
    remembered: Mutex<HashMap<String, RememberedLogin>>,
    remember_for: Duration,
    /// Bounds the argon2 verifications running at once, so a reconnect storm queues instead of
    /// taking every thread.
    verifiers: Semaphore,
}

impl Authenticator {
    pub fn new(pool: PgPool, remember_for: Duration) -> Authenticator {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        Authenticator { pool, remembered: Mutex::new(HashMap::new()), remember_for, verifiers: Semaphore::new(threads) }
    }

    pub async fn authenticate(&self, login: Option<(&str, &str)>) -> Result<DeviceIdentity, LoginRefusal> {
        let Some((username, password)) = login.filter(|(username, _)| !username.is_empty()) else {
            return Err(LoginRefusal::NoCredentials);
        };
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        if let Some(identity) = self.recall(username, &digest) {
            return Ok(identity);
        }
        let row = sqlx::query(
            "SELECT d.id, d.tenant_id, t.slug, d.unit_id, d.password_hash, d.active
             FROM devices d JOIN tenants t ON t.id = d.tenant_id WHERE d.username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| LoginRefusal::Unavailable(e.to_string()))?;
        let read = |e: sqlx::Error| LoginRefusal::Unavailable(e.to_string());
        // An unknown username costs a verification too, so timing does not tell which exist.
        let hash: String = match &row {
            Some(row) => row.try_get("password_hash").map_err(read)?,
            None => decoy_hash().to_owned(),
        };
        let permit = self.verifiers.acquire().await.map_err(|e| LoginRefusal::Unavailable(e.to_string()))?;
        let password = password.to_owned();
        let verified = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
            .await
            .map_err(|e| LoginRefusal::Unavailable(e.to_string()))?;
        drop(permit);
        let (Some(row), true) = (row, verified) else {
            return Err(LoginRefusal::BadCredentials);
        };
        if !row.try_get::<bool, _>("active").map_err(read)? {
            return Err(LoginRefusal::Inactive);
        }
        let slug: String = row.try_get("slug").map_err(read)?;
        let identity = DeviceIdentity {
            tenant_id: row.try_get("tenant_id").map_err(read)?,
            tenant: TenantSlug::parse(&slug).map_err(LoginRefusal::Unavailable)?,
            device_id: row.try_get("id").map_err(read)?,
            unit_id: row.try_get("unit_id").map_err(read)?,
        };
        self.remember(username, digest, identity.clone());
        Ok(identity)
    }

    fn recall(&self, username: &str, digest: &[u8; 32]) -> Option<DeviceIdentity> {
        let remembered = self.remembered.lock().expect("login cache lock");
        let login = remembered.get(username)?;
        let fresh = login.verified_at.elapsed() < self.remember_for;
        (fresh && constant_time_eq(&login.password_digest, digest)).then(|| login.identity.clone())
    }

    fn remember(&self, username: &str, password_digest: [u8; 32], identity: DeviceIdentity) {
        let mut remembered = self.remembered.lock().expect("login cache lock");
        if remembered.len() >= MAX_REMEMBERED {
            let remember_for = self.remember_for;
            remembered.retain(|_, login| login.verified_at.elapsed() < remember_for);
            if remembered.len() >= MAX_REMEMBERED {
                remembered.clear();
            }
        }
        remembered.insert(username.to_owned(), RememberedLogin { password_digest, identity, verified_at: Instant::now() });
    }

    /// Forgets a device's remembered login (it was deactivated).
    pub fn forget(&self, username: &str) {
        self.remembered.lock().expect("login cache lock").remove(username);
    }
}

fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password("a decoy password that matches no device"))
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_passwords_hash_with_light_argon2id_and_verify() {
        let hash = hash_password("s3cret-device-password");
        assert!(hash.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"), "{hash}");
        assert!(verify_password(&hash, "s3cret-device-password"));
        assert!(!verify_password(&hash, "s3cret-device-passworD"));
        assert!(!verify_password("not a hash", "anything"));
    }

    #[test]
    fn new_devices_need_a_name_and_a_unit() {
        let unit = Uuid::new_v4();
        assert!(NewDevice::new(unit, DeviceKind::Ambulance, "  Unit 7 tracker ").is_ok());
        assert!(matches!(NewDevice::new(unit, DeviceKind::Monitor, "   "), Err(DeviceError::Invalid { field: "name", .. })));
        assert!(matches!(NewDevice::new(unit, DeviceKind::Monitor, &"x".repeat(201)), Err(DeviceError::Invalid { field: "name", .. })));
        assert!(matches!(NewDevice::new(unit, DeviceKind::Monitor, "a\u{7}b"), Err(DeviceError::Invalid { field: "name", .. })));
        assert!(matches!(NewDevice::new(Uuid::nil(), DeviceKind::Monitor, "m"), Err(DeviceError::Invalid { field: "unit_id", .. })));
    }

    #[test]
    fn generated_secrets_are_long_and_url_safe() {
        let secret = random_secret(24);
        assert_eq!(secret.len(), 32);
        assert!(secret.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(secret, random_secret(24));
        assert_eq!(random_hex(6).len(), 12);
    }
}
