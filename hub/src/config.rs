//! Configuration: every option is a command-line flag, a `MEDHUB_*` environment variable and a
//! key of the TOML file given with `--config` (the flag's name with `_` for `-`), in that order of
//! precedence, over built-in defaults that run a complete hub on one machine with nothing set.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use medhub_device_gateway::{Broker, GatewayConfig, ShareGroup, DEFAULT_MAX_PACKET_BYTES};
use medhub_media::MediaConfig;
use serde::Deserialize;

/// Options shared by every command. Each field is optional here; [`Settings`] holds the resolved
/// values.
#[derive(clap::Args, Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigArgs {
    /// TOML file with any of these options (keys use '_': database_url = "...").
    #[arg(long, env = "MEDHUB_CONFIG", global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to serve the API, WebSocket and console on [default: 127.0.0.1:8080]. Port 0 picks a free one.
    #[arg(long, env = "MEDHUB_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,

    /// PostgreSQL URL (postgres://user:pass@host:port/db). Without it the hub runs its own private
    /// PostgreSQL cluster in <data-dir>/postgres.
    #[arg(long, env = "MEDHUB_DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Redis URL (redis://[user:password@]host:port) of the backplane that carries live updates
    /// between several hubs on one database. Without it each hub listens to PostgreSQL itself and
    /// sees only its own units' live positions.
    #[arg(long, env = "MEDHUB_REDIS_URL", global = true, hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Directory for the hub's own files (the embedded PostgreSQL cluster, its log) [default: .medhub].
    #[arg(long, env = "MEDHUB_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Directory holding PostgreSQL's initdb and pg_ctl [default: found on PATH or in /usr/lib/postgresql/*/bin].
    #[arg(long, env = "MEDHUB_PG_BIN_DIR", global = true)]
    pub pg_bin_dir: Option<PathBuf>,

    /// Loopback port for the embedded PostgreSQL [default: 0, a free port].
    #[arg(long, env = "MEDHUB_PG_PORT", global = true)]
    pub pg_port: Option<u16>,

    /// Most connections the hub opens to PostgreSQL [default: 20].
    #[arg(long, env = "MEDHUB_DB_MAX_CONNECTIONS", global = true)]
    pub db_max_connections: Option<u32>,

    /// Connections reserved for actor commits, besides db_max_connections [default: 10].
    #[arg(long, env = "MEDHUB_DB_ACTOR_CONNECTIONS", global = true)]
    pub db_actor_connections: Option<u32>,

    /// Secret that signs access tokens (at least 32 characters). Without it the hub generates one
    /// and keeps it in the database, shared by every hub on that database.
    #[arg(long, env = "MEDHUB_JWT_SECRET", global = true, hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Lifetime of an access token, in seconds [default: 900].
    #[arg(long, env = "MEDHUB_ACCESS_TOKEN_TTL_SECS", global = true)]
    pub access_token_ttl_secs: Option<u64>,

    /// Lifetime of a login session (its refresh token), in seconds [default: 43200, 12 hours].
    #[arg(long, env = "MEDHUB_REFRESH_TOKEN_TTL_SECS", global = true)]
    pub refresh_token_ttl_secs: Option<u64>,

    /// Write an actor snapshot every this many events [default: 100].
    #[arg(long, env = "MEDHUB_SNAPSHOT_EVERY", global = true)]
    pub snapshot_every: Option<i64>,

    /// Threads that host actors [default: 2].
    #[arg(long, env = "MEDHUB_ACTOR_THREADS", global = true)]
    pub actor_threads: Option<usize>,

    /// HTTP worker threads [default: the number of CPUs].
    #[arg(long, env = "MEDHUB_HTTP_WORKERS", global = true)]
    pub http_workers: Option<usize>,

    /// Events a WebSocket client may have queued before it is disconnected as too slow [default: 1024].
    #[arg(long, env = "MEDHUB_WS_QUEUE_CAPACITY", global = true)]
    pub ws_queue_capacity: Option<usize>,

    /// Seconds between WebSocket heartbeats (pings) [default: 10].
    #[arg(long, env = "MEDHUB_WS_HEARTBEAT_SECS", global = true)]
    pub ws_heartbeat_secs: Option<u64>,

    /// Seconds of silence after which a WebSocket client is disconnected [default: 30].
    #[arg(long, env = "MEDHUB_WS_CLIENT_TIMEOUT_SECS", global = true)]
    pub ws_client_timeout_secs: Option<u64>,

    /// Seconds between checks that a WebSocket's login session is still live (logout cuts it) [default: 30].
    #[arg(long, env = "MEDHUB_WS_SESSION_CHECK_SECS", global = true)]
    pub ws_session_check_secs: Option<u64>,

    /// Most missed events replayed to a client resubscribing with `since`; beyond it, a snapshot [default: 1000].
    #[arg(long, env = "MEDHUB_WS_REPLAY_LIMIT", global = true)]
    pub ws_replay_limit: Option<i64>,

    /// Seconds before an appointment that its reminder goes out [default: 3600].
    #[arg(long, env = "MEDHUB_REMINDER_LEAD_SECS", global = true)]
    pub reminder_lead_secs: Option<u64>,

    /// Seconds between sweeps for due appointment reminders [default: 15].
    #[arg(long, env = "MEDHUB_REMINDER_SWEEP_SECS", global = true)]
    pub reminder_sweep_secs: Option<u64>,

    /// Days before a batch's expiry date at which expiry alerts are raised, comma-separated [default: 90,30,7].
    #[arg(long, env = "MEDHUB_EXPIRY_ALERT_DAYS", global = true)]
    pub expiry_alert_days: Option<String>,

    /// Seconds between sweeps for batches nearing expiry [default: 3600].
    #[arg(long, env = "MEDHUB_EXPIRY_SWEEP_SECS", global = true)]
    pub expiry_sweep_secs: Option<u64>,

    /// Seconds a unit has to acknowledge a dispatch before the next unit is asked [default: 30].
    #[arg(long, env = "MEDHUB_DISPATCH_ACK_TIMEOUT_SECS", global = true)]
    pub dispatch_ack_timeout_secs: Option<u64>,

    /// Speed (km/h) that estimated times of arrival assume [default: 40].
    #[arg(long, env = "MEDHUB_DISPATCH_SPEED_KMH", global = true)]
    pub dispatch_speed_kmh: Option<f64>,

    /// Metres from its destination within which a transporting unit has arrived [default: 150].
    #[arg(long, env = "MEDHUB_ARRIVAL_GEOFENCE_M", global = true)]
    pub arrival_geofence_m: Option<f64>,

    /// Address of the embedded MQTT endpoint devices connect to [default: 127.0.0.1:1883; if that
    /// is taken, a free port]. Port 0 picks a free one.
    #[arg(long, env = "MEDHUB_MQTT_LISTEN", global = true)]
    pub mqtt_listen: Option<SocketAddr>,

    /// Use this MQTT broker instead of the embedded endpoint, as a client:
    /// mqtt://user:password@host:port (the broker's own ACL then confines devices).
    #[arg(long, env = "MEDHUB_MQTT_BROKER_URL", global = true, hide_env_values = true)]
    pub mqtt_broker_url: Option<String>,

    /// With --mqtt-broker-url: the MQTT 5 shared-subscription group the hub nodes join, so that the
    /// broker hands each device message to one node of the group; the same on every node of one
    /// deployment [default: medhub].
    #[arg(long, env = "MEDHUB_MQTT_SHARE_GROUP", global = true)]
    pub mqtt_share_group: Option<String>,

    /// Largest MQTT packet a device may send, in bytes; larger ones are refused and counted [default: 65536].
    #[arg(long, env = "MEDHUB_MQTT_MAX_PACKET_BYTES", global = true)]
    pub mqtt_max_packet_bytes: Option<usize>,

    /// UDP ports the video consults' media may use, as "first-last" (e.g. "50000-50100"); open
    /// them in the firewall [default: any free port].
    #[arg(long, env = "MEDHUB_MEDIA_UDP_PORTS", global = true)]
    pub media_udp_ports: Option<String>,

    /// Public IP addresses to announce for consult media, comma-separated, when the hub is behind
    /// a 1:1 NAT (e.g. a cloud VM's public address) [default: the host's own addresses].
    #[arg(long, env = "MEDHUB_MEDIA_PUBLIC_IPS", global = true)]
    pub media_public_ips: Option<String>,

    /// Also offer loopback (127.0.0.1) media candidates, so consults work on one machine [default: true].
    #[arg(long, env = "MEDHUB_MEDIA_LOOPBACK", global = true, num_args = 0..=1, default_missing_value = "true")]
    pub media_loopback: Option<bool>,

    /// Seconds a consult participant whose connection dropped shows as reconnecting before left [default: 30].
    #[arg(long, env = "MEDHUB_CONSULT_RECONNECT_GRACE_SECS", global = true)]
    pub consult_reconnect_grace_secs: Option<u64>,

    /// This node's identity among hub nodes sharing a database (tenant leases name their owner by
    /// it); must be unique per running process [default: hostname and a random suffix].
    #[arg(long, env = "MEDHUB_NODE_ID", global = true)]
    pub node_id: Option<String>,

    /// Seconds a tenant lease lasts without renewal; the owner renews every third of it, and
    /// another node takes a tenant over once it expired [default: 5].
    #[arg(long, env = "MEDHUB_LEASE_TTL_SECS", global = true)]
    pub lease_ttl_secs: Option<u64>,

    /// The URL other hub nodes reach this node's HTTP at, to forward requests for the tenants it
    /// serves [default: http:// and the address the hub listens on; the host name when that is 0.0.0.0].
    #[arg(long, env = "MEDHUB_ADVERTISE_URL", global = true)]
    pub advertise_url: Option<String>,

    /// Seconds graceful shutdown waits for in-flight requests [default: 10].
    #[arg(long, env = "MEDHUB_SHUTDOWN_TIMEOUT_SECS", global = true)]
    pub shutdown_timeout_secs: Option<u64>,

    /// Log filter, as RUST_LOG (e.g. "info,medhub_actors=debug") [default: info].
    #[arg(long, env = "MEDHUB_LOG", global = true)]
    pub log: Option<String>,

    /// Log format: "text" or "json" [default: text].
    #[arg(long, env = "MEDHUB_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,

    /// Enable the admin-only fault-injection endpoints used by the supervision tests. Never in production.
    #[arg(long, env = "MEDHUB_ENABLE_FAULT_INJECTION", global = true, num_args = 0..=1, default_missing_value = "true")]
    pub enable_fault_injection: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: Option<String>,
    /// The Redis backplane between hubs (`None`: none).
    pub redis_url: Option<String>,
    pub data_dir: PathBuf,
    pub pg_bin_dir: Option<PathBuf>,
    pub pg_port: u16,
    pub db_max_connections: u32,
    pub db_actor_connections: u32,
    pub jwt_secret: Option<String>,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub snapshot_every: i64,
    pub actor_threads: usize,
    pub http_workers: usize,
    pub ws_queue_capacity: usize,
    pub ws_heartbeat: Duration,
    pub ws_client_timeout: Duration,
    pub ws_session_check: Duration,
    pub ws_replay_limit: i64,
    pub reminder_lead: Duration,
    pub reminder_sweep: Duration,
    pub expiry_alert_days: Vec<i32>,
    pub expiry_sweep: Duration,
    pub dispatch_ack_timeout: Duration,
    pub dispatch_speed_kmh: f64,
    pub arrival_geofence_m: f64,
    /// The device gateway: embedded endpoint or external broker, and the packet limit.
    pub mqtt: GatewayConfig,
    /// The consults' media (SFU): UDP ports, addresses to announce, loopback.
    pub media: MediaConfig,
    pub consult_reconnect_grace: Duration,
    /// This node's identity in tenant leases.
    pub node_id: String,
    /// How long a tenant lease lasts without renewal.
    pub lease_ttl: Duration,
    /// Where other nodes reach this one (`None`: derived from the listening address).
    pub advertise_url: Option<String>,
    pub shutdown_timeout: Duration,
    pub log: String,
    pub log_format: LogFormat,
    pub fault_injection: bool,
}

macro_rules! prefer {
    ($cli:ident, $file:ident; $($field:ident),* $(,)?) => {
        $( let $field = $cli.$field.clone().or($file.$field.clone()); )*
    };
}

impl Settings {
    /// Flags and environment (already in `cli`) over the file named by `--config` over defaults.
    pub fn resolve(cli: &ConfigArgs) -> anyhow::Result<Settings> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => ConfigArgs::default(),
        };
        prefer!(cli, file; listen, database_url, redis_url, data_dir, pg_bin_dir, pg_port, db_max_connections, db_actor_connections, jwt_secret,
            access_token_ttl_secs, refresh_token_ttl_secs, snapshot_every, actor_threads, http_workers,
            ws_queue_capacity, ws_heartbeat_secs, ws_client_timeout_secs, ws_session_check_secs, ws_replay_limit, reminder_lead_secs,
            reminder_sweep_secs, expiry_alert_days, expiry_sweep_secs, dispatch_ack_timeout_secs, dispatch_speed_kmh, arrival_geofence_m,
            mqtt_listen, mqtt_broker_url, mqtt_share_group, mqtt_max_packet_bytes,
            media_udp_ports, media_public_ips, media_loopback, consult_reconnect_grace_secs,
            node_id, lease_ttl_secs, advertise_url, shutdown_timeout_secs,
            log, log_format, enable_fault_injection);

        let log_format = match log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => bail!("log_format must be \"text\" or \"json\", not {other:?}"),
        };
        if let Some(secret) = &jwt_secret {
            if secret.len() < 32 {
                bail!("jwt_secret must be at least 32 characters");
            }
        }
        let positive = |name: &str, value: u64| -> anyhow::Result<u64> {
            if value == 0 {
                bail!("{name} must be greater than 0");
            }
            Ok(value)
        };
        let max_packet_bytes = mqtt_max_packet_bytes.unwrap_or(DEFAULT_MAX_PACKET_BYTES);
        if !(1024..=16 * 1024 * 1024).contains(&max_packet_bytes) {
            bail!("mqtt_max_packet_bytes must be between 1024 and 16777216, not {max_packet_bytes}");
        }
        let share_group = match mqtt_share_group.as_deref().map(str::trim) {
            Some(name) => ShareGroup::parse(name)?,
            None => ShareGroup::default(),
        };
        let broker = match (mqtt_broker_url.filter(|url| !url.trim().is_empty()), mqtt_listen) {
            (Some(_), Some(_)) => bail!("mqtt_listen and mqtt_broker_url exclude each other: the hub either is the broker or uses one"),
            (Some(url), None) => Broker::External { url, share_group },
            // Only the built-in default may move to a free port when taken; an address the operator chose may not.
            (None, listen) => Broker::Embedded { listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 1883))), any_port_if_taken: listen.is_none() },
        };
        let node_id = match node_id.map(|id| id.trim().to_owned()) {
            Some(id) if id.is_empty() || id.len() > 200 => bail!("node_id must be 1 to 200 characters"),
            Some(id) => id,
            None => default_node_id(),
        };
        let settings = Settings {
            listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            database_url: database_url.filter(|url| !url.trim().is_empty()),
            redis_url: match redis_url.map(|url| url.trim().to_owned()).filter(|url| !url.is_empty()) {
                // Not echoed: it may hold a password.
                Some(url) if !(url.starts_with("redis://") || url.starts_with("unix://") || url.starts_with("redis+unix://")) => {
                    bail!("redis_url must be redis://[user:password@]host:port (or unix:///path/to/socket); TLS (rediss://) is not supported")
                }
                other => other,
            },
            data_dir: data_dir.unwrap_or_else(|| PathBuf::from(".medhub")),
            pg_bin_dir,
            pg_port: pg_port.unwrap_or(0),
            db_max_connections: positive("db_max_connections", db_max_connections.unwrap_or(20).into())? as u32,
            db_actor_connections: positive("db_actor_connections", db_actor_connections.unwrap_or(10).into())? as u32,
            jwt_secret,
            access_token_ttl: Duration::from_secs(positive("access_token_ttl_secs", access_token_ttl_secs.unwrap_or(900))?),
            refresh_token_ttl: Duration::from_secs(positive("refresh_token_ttl_secs", refresh_token_ttl_secs.unwrap_or(43_200))?),
            snapshot_every: positive("snapshot_every", snapshot_every.unwrap_or(100).max(0) as u64)? as i64,
            actor_threads: positive("actor_threads", actor_threads.unwrap_or(2) as u64)? as usize,
            http_workers: http_workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
                .max(1),
            ws_queue_capacity: positive("ws_queue_capacity", ws_queue_capacity.unwrap_or(1024) as u64)? as usize,
            ws_heartbeat: Duration::from_secs(positive("ws_heartbeat_secs", ws_heartbeat_secs.unwrap_or(10))?),
            ws_client_timeout: Duration::from_secs(positive("ws_client_timeout_secs", ws_client_timeout_secs.unwrap_or(30))?),
            ws_session_check: Duration::from_secs(positive("ws_session_check_secs", ws_session_check_secs.unwrap_or(30))?),
            ws_replay_limit: positive("ws_replay_limit", ws_replay_limit.unwrap_or(1000).max(0) as u64)? as i64,
            reminder_lead: Duration::from_secs(positive("reminder_lead_secs", reminder_lead_secs.unwrap_or(3600))?),
            reminder_sweep: Duration::from_secs(positive("reminder_sweep_secs", reminder_sweep_secs.unwrap_or(15))?),
            expiry_alert_days: parse_days(expiry_alert_days.as_deref().unwrap_or("90,30,7"))?,
            expiry_sweep: Duration::from_secs(positive("expiry_sweep_secs", expiry_sweep_secs.unwrap_or(3600))?),
            dispatch_ack_timeout: Duration::from_secs(positive("dispatch_ack_timeout_secs", dispatch_ack_timeout_secs.unwrap_or(30))?),
            dispatch_speed_kmh: in_range("dispatch_speed_kmh", dispatch_speed_kmh.unwrap_or(40.0), 5.0, 200.0)?,
            arrival_geofence_m: in_range("arrival_geofence_m", arrival_geofence_m.unwrap_or(150.0), 10.0, 5000.0)?,
            mqtt: GatewayConfig { broker, max_packet_bytes, node_id: node_id.clone() },
            media: MediaConfig {
                udp_ports: media_udp_ports.as_deref().map(parse_port_range).transpose()?,
                public_ips: parse_ips(media_public_ips.as_deref().unwrap_or(""))?,
                include_loopback: media_loopback.unwrap_or(true),
            },
            consult_reconnect_grace: Duration::from_secs(positive("consult_reconnect_grace_secs", consult_reconnect_grace_secs.unwrap_or(30))?),
            node_id,
            lease_ttl: Duration::from_secs(positive("lease_ttl_secs", lease_ttl_secs.unwrap_or(5))?),
            advertise_url: match advertise_url.map(|url| url.trim().trim_end_matches('/').to_owned()).filter(|url| !url.is_empty()) {
                Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    bail!("advertise_url must be an http:// or https:// URL, not {url:?}")
                }
                other => other,
            },
            shutdown_timeout: Duration::from_secs(shutdown_timeout_secs.unwrap_or(10)),
            log: log.unwrap_or_else(|| "info".to_owned()),
            log_format,
            fault_injection: enable_fault_injection.unwrap_or(false),
        };
        Ok(settings)
    }
}

fn in_range(name: &str, value: f64, min: f64, max: f64) -> anyhow::Result<f64> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(value)
    } else {
        bail!("{name} must be between {min} and {max}, not {value}")
    }
}

/// "90,30,7" → [90, 30, 7]: whole days from 1 to 3650.
/// The host's name and a random suffix: unique per process, recognisable in `tenant_leases`.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "hub".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

fn parse_days(text: &str) -> anyhow::Result<Vec<i32>> {
    let mut days = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<i32>() {
            Ok(day) if (1..=3650).contains(&day) => days.push(day),
            _ => bail!("expiry_alert_days must be whole days from 1 to 3650, comma-separated (e.g. \"90,30,7\"), not {part:?}"),
        }
    }
    // Tightest first: a batch first seen 20 days before expiry gets the 30-day alert, not also the 90-day one.
    days.sort_unstable();
    days.dedup();
    Ok(days)
}

/// "50000-50100" → (50000, 50100): a non-empty range of UDP ports above 0.
fn parse_port_range(text: &str) -> anyhow::Result<(u16, u16)> {
    let bad = || anyhow::anyhow!("media_udp_ports is a range of UDP ports as \"first-last\" (e.g. \"50000-50100\"), not {text:?}");
    let (first, last) = text.trim().split_once('-').ok_or_else(bad)?;
    let (first, last): (u16, u16) = (first.trim().parse().map_err(|_| bad())?, last.trim().parse().map_err(|_| bad())?);
    if first == 0 || last < first {
        return Err(bad());
    }
    Ok((first, last))
}

/// "203.0.113.7, 2001:db8::7" → both, checked as IP addresses.
fn parse_ips(text: &str) -> anyhow::Result<Vec<String>> {
    let mut ips = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<std::net::IpAddr>() {
            Ok(ip) => ips.push(ip.to_string()),
            Err(_) => bail!("media_public_ips are IP addresses, comma-separated (e.g. \"203.0.113.7\"), not {part:?}"),
        }
    }
    Ok(ips)
}

fn read_file(path: &Path) -> anyhow::Result<ConfigArgs> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_a_local_hub() {
        let settings = Settings::resolve(&ConfigArgs::default()).unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:8080");
        assert!(settings.database_url.is_none());
        assert_eq!(settings.access_token_ttl, Duration::from_secs(900));
        assert!(!settings.fault_injection);
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("medhub-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hub.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nsnapshot_every = 7\n").unwrap();
        let cli = ConfigArgs { config: Some(path.clone()), snapshot_every: Some(3), ..Default::default() };
        let settings = Settings::resolve(&cli).unwrap();
        assert_eq!(settings.listen.port(), 9000);
        assert_eq!(settings.snapshot_every, 3);
        std::fs::write(&path, "listne = \"127.0.0.1:9000\"\n").unwrap();
        let error = Settings::resolve(&cli).unwrap_err();
        assert!(format!("{error:#}").contains("listne"), "{error:#}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn devices_meet_the_embedded_endpoint_unless_a_broker_is_named() {
        let settings = Settings::resolve(&ConfigArgs::default()).unwrap();
        let default = SocketAddr::from(([127, 0, 0, 1], 1883));
        assert_eq!(settings.mqtt.broker, Broker::Embedded { listen: default, any_port_if_taken: true });
        assert_eq!(settings.mqtt.max_packet_bytes, 64 * 1024);
        let cli = ConfigArgs { mqtt_listen: Some(default), ..Default::default() };
        assert_eq!(Settings::resolve(&cli).unwrap().mqtt.broker, Broker::Embedded { listen: default, any_port_if_taken: false });
        let cli = ConfigArgs { mqtt_broker_url: Some("mqtt://hub:pw@broker:1883".into()), ..Default::default() };
        let external = Broker::External { url: "mqtt://hub:pw@broker:1883".into(), share_group: ShareGroup::parse("medhub").unwrap() };
        assert_eq!(Settings::resolve(&cli).unwrap().mqtt.broker, external);
        let cli = ConfigArgs { mqtt_broker_url: Some("mqtt://hub:pw@broker:1883".into()), mqtt_share_group: Some("medhub-east".into()), ..Default::default() };
        let Broker::External { share_group, .. } = Settings::resolve(&cli).unwrap().mqtt.broker else { panic!("an external broker") };
        assert_eq!(share_group.as_str(), "medhub-east");
        let cli = ConfigArgs { mqtt_broker_url: Some("mqtt://broker".into()), mqtt_share_group: Some("a/b".into()), ..Default::default() };
        assert!(Settings::resolve(&cli).unwrap_err().to_string().contains("mqtt_share_group"));
        let cli = ConfigArgs { node_id: Some("node-a".into()), ..Default::default() };
        assert_eq!(Settings::resolve(&cli).unwrap().mqtt.node_id, "node-a");
        let cli = ConfigArgs { mqtt_broker_url: Some("mqtt://broker".into()), mqtt_listen: Some(default), ..Default::default() };
        assert!(Settings::resolve(&cli).unwrap_err().to_string().contains("mqtt_broker_url"));
        let cli = ConfigArgs { mqtt_max_packet_bytes: Some(10), ..Default::default() };
        assert!(Settings::resolve(&cli).unwrap_err().to_string().contains("mqtt_max_packet_bytes"));
    }

    #[test]
    fn media_runs_on_loopback_by_default_and_takes_a_port_range_and_public_addresses() {
        let settings = Settings::resolve(&ConfigArgs::default()).unwrap();
        assert!(settings.media.include_loopback);
        assert_eq!(settings.media.udp_ports, None);
        assert!(settings.media.public_ips.is_empty());
        let cli = ConfigArgs {
            media_udp_ports: Some("50000-50100".into()),
            media_public_ips: Some("203.0.113.7, 2001:db8::7".into()),
            ..Default::default()
        };
        let settings = Settings::resolve(&cli).unwrap();
        assert_eq!(settings.media.udp_ports, Some((50000, 50100)));
        assert_eq!(settings.media.public_ips, ["203.0.113.7", "2001:db8::7"]);
        for bad in ["50100-50000", "50000", "0-10", "a-b"] {
            let cli = ConfigArgs { media_udp_ports: Some(bad.into()), ..Default::default() };
            assert!(Settings::resolve(&cli).unwrap_err().to_string().contains("media_udp_ports"), "{bad}");
        }
        let cli = ConfigArgs { media_public_ips: Some("example.org".into()), ..Default::default() };
        assert!(Settings::resolve(&cli).unwrap_err().to_string().contains("media_public_ips"));
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        let cli = ConfigArgs { jwt_secret: Some("short".into()), ..Default::default() };
        assert!(Settings::resolve(&cli).unwrap_err().to_string().contains("jwt_secret"));
        let cli = ConfigArgs { log_format: Some("xml".into()), ..Default::default() };
        assert!(Settings::resolve(&cli).unwrap_err().to_string().contains("log_format"));
        let cli = ConfigArgs { redis_url: Some("http://user:secret@cache:6379".into()), ..Default::default() };
        let refused = Settings::resolve(&cli).unwrap_err().to_string();
        assert!(refused.contains("redis_url") && !refused.contains("secret"), "{refused}");
        let cli = ConfigArgs { redis_url: Some(" redis://cache:6379 ".into()), ..Default::default() };
        assert_eq!(Settings::resolve(&cli).unwrap().redis_url.as_deref(), Some("redis://cache:6379"));
        assert_eq!(Settings::resolve(&ConfigArgs::default()).unwrap().redis_url, None, "no backplane unless asked for");
        let cli = ConfigArgs { advertise_url: Some("node-2:8080".into()), ..Default::default() };
        assert!(Settings::resolve(&cli).unwrap_err().to_string().contains("advertise_url"));
        let cli = ConfigArgs { advertise_url: Some(" http://node-2:8080/ ".into()), ..Default::default() };
        assert_eq!(Settings::resolve(&cli).unwrap().advertise_url.as_deref(), Some("http://node-2:8080"));
        let cli = ConfigArgs { node_id: Some("  ".into()), ..Default::default() };
        assert!(Settings::resolve(&cli).unwrap_err().to_string().contains("node_id"));
    }
}
