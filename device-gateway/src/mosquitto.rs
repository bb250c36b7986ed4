//! The files that make an external mosquitto broker enforce the same rule as the embedded
//! endpoint: a password file (mosquitto's own PBKDF2-SHA512 format, `$7$`) with every active device
//! and the hub's own login, and an ACL file that lets each device write only its unit's
//! `gps`, `vitals` and `status` topics and read only its `cmd` topic, and lets the hub read all
//! telemetry and write all commands.
//!
//! The ACL names every device with a `user` block rather than one `pattern` rule: mosquitto's
//! patterns substitute the username or client id (`%u`, `%c`), and a device's topic prefix is its
//! tenant and unit, which neither carries. Regenerate the files after registering or deactivating
//! devices ([`write_mosquitto_files`]) and send mosquitto SIGHUP to reload them. Point mosquitto at
//! them with [`mosquitto_conf`].
//!
//! The hub's `topic read` rules also cover its shared subscriptions (`$share/{group}/medhub/...`,
//! see `external.rs`), so the file does not depend on the group's name: mosquitto 2.0 grants a
//! SUBSCRIBE whatever the ACL says and checks read access on every delivery, against the message's
//! own topic (`medhub/{tenant}/ambulance/{unit}/gps`), never the `$share/{group}/` prefix. Checked
//! with Debian's mosquitto 2.0.11 (`tests/mqtt_shared.rs` runs against it).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha512;
use sqlx::{PgPool, Row};
use thiserror::Error;
use uuid::Uuid;

use argon2::password_hash::rand_core::{OsRng, RngCore};

use crate::topics::{device_topic, telemetry_filters, Telemetry, COMMAND_LEVEL};

/// mosquitto_passwd's own iteration count. Device passwords are long random secrets, so more
/// iterations would slow every CONNECT at the broker and protect nothing.
const ITERATIONS: u32 = 101;

#[derive(Debug, Error)]
pub enum BrokerFilesError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write the broker's files: {0}")]
    Io(#[from] std::io::Error),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The hub's own login on the external broker (the one in `--mqtt-broker-url`).
#[derive(Debug, Clone, Copy)]
pub struct BrokerLogin<'a> {
    pub username: &'a str,
    pub password: &'a str,
}

/// Where [`write_mosquitto_files`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MosquittoFiles {
    pub password_file: PathBuf,
    pub acl_file: PathBuf,
    /// Active devices written.
    pub devices: usize,
}

/// A device as the broker's files need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokerDevice {
    pub username: String,
    pub broker_password_hash: String,
    pub tenant: String,
    pub unit_id: Uuid,
}

/// Writes `passwd` and `acl` into `dir` for every active device of every tenant, plus `hub`.
/// Each file is replaced atomically and readable by its owner only.
pub async fn write_mosquitto_files(pool: &PgPool, dir: &Path, hub: BrokerLogin<'_>) -> Result<MosquittoFiles, BrokerFilesError> {
    if hub.username.is_empty() || hub.username.contains([':', '\n', ' ', '\t', '#']) {
        return Err(BrokerFilesError::Invalid(format!("the hub's broker username {:?} cannot go into a mosquitto password file", hub.username)));
    }
    let rows = sqlx::query(
        "SELECT d.username, d.broker_password_hash, t.slug, d.unit_id
         FROM devices d JOIN tenants t ON t.id = d.tenant_id WHERE d.active ORDER BY t.slug, d.username",
    )
    .fetch_all(pool)
    .await?;
    let devices = rows
        .iter()
        .map(|row| {
            Ok(BrokerDevice {
                username: row.try_get("username")?,
                broker_password_hash: row.try_get("broker_password_hash")?,
                tenant: row.try_get("slug")?,
                unit_id: row.try_get("unit_id")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let hub_hash = {
        let password = hub.password.to_owned();
        tokio::task::spawn_blocking(move || password_hash(&password)).await.map_err(|e| BrokerFilesError::Invalid(e.to_string()))?
    };
    let password_file = dir.join("passwd");
    let acl_file = dir.join("acl");
    replace_file(&password_file, &render_password_file(hub.username, &hub_hash, &devices))?;
    replace_file(&acl_file, &render_acl(hub.username, &devices))?;
    Ok(MosquittoFiles { password_file, acl_file, devices: devices.len() })
}

/// The lines of a mosquitto.conf that use the files: a loopback or public `listener` of your
/// choice comes on top.
pub fn mosquitto_conf(files: &MosquittoFiles, max_packet_bytes: usize) -> String {
    format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\nmax_packet_size {max_packet_bytes}\n",
        files.password_file.display(),
        files.acl_file.display()
    )
}

pub(crate) fn render_password_file(hub_username: &str, hub_hash: &str, devices: &[BrokerDevice]) -> String {
    let mut text = format!("{hub_username}:{hub_hash}\n");
    for device in devices {
        text.push_str(&format!("{}:{}\n", device.username, device.broker_password_hash));
    }
    text
}

pub(crate) fn render_acl(hub_username: &str, devices: &[BrokerDevice]) -> String {
    let mut text = String::from("# Written by medhub: regenerate it rather than edit it.\n\n");
    text.push_str(&format!("user {hub_username}\n"));
    for filter in telemetry_filters() {
        text.push_str(&format!("topic read {filter}\n"));
    }
    text.push_str(&format!("topic write medhub/+/ambulance/+/{COMMAND_LEVEL}\n"));
    for device in devices {
        text.push_str(&format!("\nuser {}\n", device.username));
        for kind in Telemetry::ALL {
            text.push_str(&format!("topic write {}\n", device_topic(&device.tenant, device.unit_id, kind.as_str())));
        }
        text.push_str(&format!("topic read {}\n", device_topic(&device.tenant, device.unit_id, COMMAND_LEVEL)));
    }
    text
}

fn replace_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// `password` in mosquitto's format: `$7$iterations$base64(salt)$base64(PBKDF2-HMAC-SHA512)`.
pub(crate) fn password_hash(password: &str) -> String {
    let mut salt = [0u8; 12];
    OsRng.fill_bytes(&mut salt);
    password_hash_with(password, &salt, ITERATIONS)
}

fn password_hash_with(password: &str, salt: &[u8], iterations: u32) -> String {
    let derived = pbkdf2_sha512(password.as_bytes(), salt, iterations);
    format!("$7${iterations}${}${}", STANDARD.encode(salt), STANDARD.encode(derived))
}

/// PBKDF2 (RFC 8018) with HMAC-SHA512 and one 64-byte block, all mosquitto uses.
fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 64] {
    let key = Hmac::<Sha512>::new_from_slice(password).expect("HMAC takes keys of any length");
    let mut mac = key.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut block: [u8; 64] = mac.finalize().into_bytes().into();
    let mut derived = block;
    for _ in 1..iterations {
        let mut mac = key.clone();
        mac.update(&block);
        block = mac.finalize().into_bytes().into();
        derived.iter_mut().zip(block.iter()).for_each(|(out, byte)| *out ^= byte);
    }
    derived
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_mosquitto_passwd() {
        // `mosquitto_passwd -c -b passwd dev1 secret` (mosquitto 2.0.11) wrote this line.
        let written = "$7$101$QjZGxfqbQVhZvtJT$KwSOAu1msnAd3kZFK5dwgnva8YomlrulpsFxCrlZijG5K/MgCdLqOqy8VEFWZdnlZdw8n6pvb+/AtYKToWyebA==";
        let salt = STANDARD.decode("QjZGxfqbQVhZvtJT").unwrap();
        assert_eq!(password_hash_with("secret", &salt, 101), written);
        let fresh = password_hash("secret");
        assert!(fresh.starts_with("$7$101$") && fresh != written, "{fresh}");
    }

    #[test]
    fn the_acl_confines_each_device_to_its_unit() {
        let unit = Uuid::parse_str("6f1c1d7e-8a34-4c2b-9d1e-0c7a5b3e2f10").unwrap();
        let device = BrokerDevice { username: "alpha-ambulance-0a1b2c3d4e5f".into(), broker_password_hash: "$7$x".into(), tenant: "alpha".into(), unit_id: unit };
        let acl = render_acl("medhub-hub", std::slice::from_ref(&device));
        assert!(acl.contains("user medhub-hub\ntopic read medhub/+/ambulance/+/gps\n"), "{acl}");
        assert!(acl.contains("topic write medhub/+/ambulance/+/cmd\n"), "{acl}");
        assert!(acl.contains(&format!(
            "user alpha-ambulance-0a1b2c3d4e5f\ntopic write medhub/alpha/ambulance/{unit}/gps\ntopic write medhub/alpha/ambulance/{unit}/vitals\n\
             topic write medhub/alpha/ambulance/{unit}/status\ntopic read medhub/alpha/ambulance/{unit}/cmd\n"
        )), "{acl}");
        let passwd = render_password_file("medhub-hub", "$7$hub", &[device]);
        assert_eq!(passwd, "medhub-hub:$7$hub\nalpha-ambulance-0a1b2c3d4e5f:$7$x\n");
    }
}
