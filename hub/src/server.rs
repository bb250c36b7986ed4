//! Start-up, wiring and shutdown of a running hub.
//!
//! Start: database (the configured server, or the embedded cluster), migrations, token key, actor
//! runtime, event broker, HTTP server. Shutdown (SIGINT or SIGTERM): stop accepting, tell WebSocket
//! clients to reconnect elsewhere, let in-flight requests (and so in-flight commands) finish, stop the
//! actors, write the GPS track points still queued, close the pool, stop the embedded database.
//! Nothing acknowledged is ever lost on the way: an acknowledgement (vital signs from devices
//! included) is only sent after its commit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use medhub_actors::consult::ConsultConfig;
use medhub_actors::lease::{LeaseConfig, LeaseMetrics, LeaseNode};
use medhub_actors::metrics::ActorMetrics;
use medhub_actors::ambulance::TrackWriter;
use medhub_actors::dispatch::{CommandsSlot, DispatchConfig};
use medhub_actors::runtime::{ActorRuntime, RuntimeConfig, Services};
use medhub_actors::{reminders, MIGRATOR};
use medhub_device_gateway::Gateway;
use medhub_media::Sfu;
use medhub_realtime::metrics::RealtimeMetrics;
use medhub_realtime::{ws_endpoint, BackplaneConfig, Broker, Realtime, RealtimeConfig};

use crate::api;
use crate::api::error::ApiError;
use crate::auth::{self, AuthService, WsAuthenticator};
use crate::cluster::{self, Cluster};
use crate::config::Settings;
use crate::console;
use crate::consult_relay::{self, ClusterSignaling};
use crate::consult_signaling::{ConsultMetrics, ConsultRooms};
use crate::device_sink::{ActorSink, ClusterSink};
use crate::embedded_pg::EmbeddedPostgres;
use crate::seed;
use crate::telemetry::{self, HttpMetrics};

/// Shared by every request handler.
pub struct AppState {
    pub pool: PgPool,
    pub auth: Arc<AuthService>,
    pub runtime: Arc<ActorRuntime>,
    pub registry: Registry,
    pub http_metrics: HttpMetrics,
    /// Video consults' media rooms (the SFU and who holds which peer).
    pub consult_rooms: ConsultRooms,
}

/// How long a request may wait for a database connection before it is answered 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(15);

/// The database the hub uses, and the embedded server behind it if the hub runs one.
pub struct Database {
    pub pool: PgPool,
    url: String,
    pub embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// Connects to the configured server, or starts the embedded one.
    pub async fn open(settings: &Settings) -> anyhow::Result<Database> {
        let (url, embedded) = match &settings.database_url {
            Some(url) => (url.clone(), None),
            None => {
                let (dir, bin, port) = (settings.data_dir.clone(), settings.pg_bin_dir.clone(), settings.pg_port);
                let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir, bin.as_deref(), port)).await??;
                create_database_if_missing(&pg.admin_url(), "medhub").await?;
                (pg.url(), Some(pg))
            }
        };
        let pool = PgPoolOptions::new()
            .max_connections(settings.db_max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(&url)
            .await
            .context("cannot connect to PostgreSQL (check database_url, or that the server is running)")?;
        Ok(Database { pool, url, embedded })
    }

    /// A pool of its own for the actors' commits, so that a burst of requests waiting for
    /// connections can never starve the commits they are all waiting on.
    pub async fn actor_pool(&self, connections: u32) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(&self.url)
            .await
            .context("cannot connect the actors' pool to PostgreSQL")
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR.run(&self.pool).await.context("database migrations failed")?;
        Ok(())
    }

    pub async fn close(mut self) {
        self.pool.close().await;
        if let Some(mut pg) = self.embedded.take() {
            let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
        }
    }
}

async fn create_database_if_missing(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(admin_url).await.context("cannot connect to the embedded PostgreSQL")?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).await?;
    }
    conn.close().await?;
    Ok(())
}

/// Where a started hub listens: told to whoever asked (`hub demo --simulate` starts its simulator
/// with it).
#[derive(Debug, Clone)]
pub struct Listening {
    /// `http://host:port` of the API, WebSocket and console.
    pub url: String,
    /// The embedded MQTT endpoint (`None` with an external broker).
    pub mqtt_addr: Option<SocketAddr>,
}

/// Runs the hub until SIGINT or SIGTERM. With `demo`, seeds the demo tenant first. Once it
/// listens, says where on `ready` (if given).
pub async fn serve(settings: Settings, demo: bool, ready: Option<oneshot::Sender<Listening>>) -> anyhow::Result<()> {
    let database = Database::open(&settings).await?;
    database.migrate().await?;
    let pool = database.pool.clone();

    let registry = Registry::new();
    let actor_metrics = ActorMetrics::register(&registry)?;
    let realtime_metrics = RealtimeMetrics::register(&registry)?;
    let http_metrics = HttpMetrics::register(&registry)?;
    let consult_metrics = ConsultMetrics::register(&registry)?;
    // Consult media: without it (its UDP sockets could not be opened) the hub still serves
    // everything else, and consult joins are answered `unavailable`.
    let sfu = match Sfu::new(settings.media.clone(), &registry) {
        Ok(sfu) => Some(sfu),
        Err(e) => {
            error!(error = %e, "consult media (SFU) unavailable: video consults cannot carry media on this hub");
            None
        }
    };

    let signing_key = auth::signing_key(&pool, settings.jwt_secret.as_deref()).await?;
    let auth = Arc::new(AuthService::new(pool.clone(), &signing_key, settings.access_token_ttl, settings.refresh_token_ttl));
    // With several hubs, Redis carries events and live positions between them (realtime/src/backplane.rs).
    let broker = Arc::new(match &settings.redis_url {
        Some(redis_url) => Broker::with_backplane(realtime_metrics.clone(), BackplaneConfig { redis_url: redis_url.clone(), node_id: settings.node_id.clone() })?,
        None => Broker::new(realtime_metrics.clone()),
    });
    let track = TrackWriter::start(pool.clone(), 50_000, &registry)?;
    let commands = CommandsSlot::default();
    let actor_pool = database.actor_pool(settings.db_actor_connections).await?;
    let lease = LeaseNode::new(
        actor_pool.clone(),
        LeaseConfig { node_id: settings.node_id.clone(), ttl: settings.lease_ttl },
        LeaseMetrics::register(&registry)?,
    );
    info!(node = %settings.node_id, lease_ttl_secs = settings.lease_ttl.as_secs(), "tenant leases: this node serves the tenants whose lease it holds");
    let cluster = web::Data::new(Cluster::new(lease.clone(), pool.clone(), &signing_key, &registry)?);
    let runtime = ActorRuntime::start(
        actor_pool.clone(),
        RuntimeConfig { snapshot_every: settings.snapshot_every, threads: settings.actor_threads },
        actor_metrics,
        Services {
            live: broker.clone(),
            track: track.clone(),
            dispatch: DispatchConfig {
                ack_timeout: settings.dispatch_ack_timeout,
                speed_kmh: settings.dispatch_speed_kmh,
                geofence_m: settings.arrival_geofence_m,
            },
            commands: commands.clone(),
            consult: ConsultConfig { reconnect_grace: settings.consult_reconnect_grace },
        },
        Some(lease.clone()),
    );
    let consult_rooms = ConsultRooms::new(runtime.clone(), pool.clone(), sfu, consult_metrics);

    let demo_users = if demo { Some(seed::seed_demo(&pool, &runtime).await?) } else { None };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let broker_task = actix_web::rt::spawn(broker.clone().run(pool.clone(), shutdown_rx.clone()));
    let expiry_task = actix_web::rt::spawn(expiry_sweep(pool.clone(), settings.expiry_alert_days.clone(), settings.expiry_sweep, shutdown_rx.clone()));
    let reminder_task = actix_web::rt::spawn(reminders::run(
        runtime.clone(),
        pool.clone(),
        settings.reminder_lead,
        settings.reminder_sweep,
        shutdown_rx.clone(),
    ));
    // Devices over MQTT: what units say goes to their actors; dispatch commands go back through it.
    // A device's message goes to the unit's actor here, or to the node that serves its tenant.
    let actor_sink = Arc::new(ActorSink::new(runtime.clone(), &registry)?);
    let sink = ClusterSink::new(actor_sink.clone(), cluster.clone().into_inner());
    let gateway = Gateway::start(settings.mqtt.clone(), &pool, Arc::new(sink), &registry)?;
    let actor_sink = web::Data::from(actor_sink);
    commands.set(Arc::new(gateway.handle()));
    let devices = web::Data::new(gateway.handle());

    let state = web::Data::new(AppState {
        pool: pool.clone(),
        auth: auth.clone(),
        runtime: runtime.clone(),
        registry,
        http_metrics,
        consult_rooms: consult_rooms.clone(),
    });
    let realtime = web::Data::new(Realtime {
        broker,
        pool: pool.clone(),
        authenticator: Arc::new(WsAuthenticator(auth)),
        config: RealtimeConfig {
            queue_capacity: settings.ws_queue_capacity,
            heartbeat_interval: settings.ws_heartbeat,
            session_check_interval: settings.ws_session_check,
            client_timeout: settings.ws_client_timeout,
            auth_timeout: Duration::from_secs(10),
            replay_limit: settings.ws_replay_limit,
            max_message_bytes: 64 * 1024,
        },
        metrics: realtime_metrics,
        shutdown: shutdown_rx,
        signaling: Some(Arc::new(ClusterSignaling::new(consult_rooms.clone(), cluster.clone().into_inner()))),
    });
    if settings.fault_injection {
        warn!("fault injection is ENABLED: admins can crash actors on purpose; never run production like this");
    }
    let fault_injection = settings.fault_injection;
    let ready_settings = web::Data::new(ReadySettings { redis: settings.redis_url.is_some() });
    let consult_rooms_data = web::Data::new(consult_rooms.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(realtime.clone())
            .app_data(devices.clone())
            .app_data(cluster.clone())
            .app_data(consult_rooms_data.clone())
            .app_data(ready_settings.clone())
            .app_data(actor_sink.clone())
            .app_data(web::PathConfig::default().error_handler(|e, _| ApiError::invalid("path", e.to_string()).into()))
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                ApiError::BadRequest { code: "invalid_query", field: None, detail: e.to_string() }.into()
            }))
            .wrap(from_fn(cluster::route_to_owner))
            .wrap(from_fn(telemetry::observe))
            .configure(|cfg| api::routes(cfg, fault_injection))
            .route("/ws", web::get().to(ws_endpoint))
            .route(cluster::DEVICE_MESSAGES_PATH, web::post().to(cluster::device_message))
            .route(consult_relay::CONSULT_SIGNALING_PATH, web::get().to(consult_relay::relay_endpoint))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .configure(console::routes)
            .default_service(web::to(|| async { Err::<HttpResponse, _>(ApiError::not_found("route")) }))
    })
    .workers(settings.http_workers)
    .disable_signals()
    .shutdown_timeout(settings.shutdown_timeout.as_secs())
    .bind(settings.listen)
    .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let url = format!("http://{}", server.addrs()[0]);
    let advertised = settings.advertise_url.clone().unwrap_or_else(|| advertised_url(server.addrs()[0]));
    let server = server.run();
    // Other nodes forward requests for the tenants this node serves to `advertised`.
    lease.register(&advertised).await.context("cannot announce this node in hub_nodes")?;
    let handle = server.handle();
    let server_task = actix_web::rt::spawn(server);

    info!(url = %url, "hub listening");
    if let Some(ready) = ready {
        let _ = ready.send(Listening { url: url.clone(), mqtt_addr: gateway.local_addr() });
    }
    if let Some(users) = demo_users {
        let mut banner = format!(
            "\n  medhub demo is running: open {url}/\n  tenant: {}   password for every user: {}\n",
            seed::DEMO_TENANT,
            seed::DEMO_PASSWORD
        );
        for user in users {
            banner.push_str(&format!("    {:<11} {}\n", user.role.as_str(), user.email));
        }
        banner.push_str("  Stop with Ctrl-C.\n");
        println!("{banner}");
        info!(url = %url, tenant = seed::DEMO_TENANT, "demo tenant ready");
    }

    let signal = wait_for_signal().await;
    info!(signal, "shutting down: draining in-flight requests");
    let _ = shutdown_tx.send(true);
    handle.stop(true).await;
    if let Err(e) = server_task.await {
        error!(error = %e, "HTTP server task failed");
    }
    let _ = reminder_task.await;
    gateway.shutdown().await;
    let _ = expiry_task.await;
    runtime.release_leases().await;
    let runtime_to_stop = runtime.clone();
    tokio::task::spawn_blocking(move || runtime_to_stop.shutdown()).await?;
    // Track points still queued (a fix is acknowledged when the unit's actor takes it) are
    // written before the pool closes.
    track.close().await;
    let _ = broker_task.await;
    actor_pool.close().await;
    database.close().await;
    info!("hub stopped");
    Ok(())
}

/// Raises expiry alerts for batches nearing their expiry date, every `every`.
async fn expiry_sweep(pool: PgPool, horizons: Vec<i32>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => match medhub_actors::pharmacy::sweep_expiry(&pool, &horizons).await {
                Ok(0) => {}
                Ok(raised) => info!(raised, "expiry alerts raised"),
                Err(e) => warn!(error = %e, "expiry sweep failed; the next one retries"),
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(e) => {
            error!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the hub");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

/// What `/readyz` needs to know of the configuration.
struct ReadySettings {
    /// A Redis backplane is configured.
    redis: bool,
}

/// Where other nodes reach this one: the listening address, or the host's name when it listens
/// on every interface.
fn advertised_url(listening: SocketAddr) -> String {
    if listening.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|name| name.trim().to_owned()).unwrap_or_default();
        if !host.is_empty() {
            return format!("http://{host}:{}", listening.port());
        }
    }
    format!("http://{listening}")
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the database answers, every migration this build knows is applied and this node's
/// leases are current (its last renewal round succeeded within a lease TTL: otherwise other nodes
/// may be taking its tenants over, and a load balancer should send clients elsewhere).
///
/// The Redis backplane is reported (`connected`, `down`, or `none` without one) but does not make
/// the node unready: while Redis is down every node still delivers events from PostgreSQL, and
/// taking every node out of the load balancer at once would be worse than missing other nodes'
/// live positions for a while.
async fn readyz(state: web::Data<AppState>, cluster: web::Data<Cluster>, realtime: web::Data<Realtime>, settings: web::Data<ReadySettings>) -> HttpResponse {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Result<Option<i64>, sqlx::Error> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(&state.pool).await;
    let node = cluster.node_id();
    let leases = if cluster.leases_current() { "current" } else { "stale" };
    let backplane = match (settings.redis, realtime.broker.backplane_healthy()) {
        (false, _) => "none",
        (true, true) => "connected",
        (true, false) => "down",
    };
    match applied {
        Ok(Some(version)) if version >= latest && leases == "current" => HttpResponse::Ok().json(json!({
            "status": "ready", "database": "ok", "migration": version, "node": node, "leases": leases, "backplane": backplane,
        })),
        Ok(Some(version)) if version >= latest => HttpResponse::ServiceUnavailable().json(json!({
            "status": "not_ready", "database": "ok", "migration": version, "node": node, "leases": leases, "backplane": backplane,
            "detail": "this node could not renew its tenant leases within a lease TTL; other nodes may be taking its tenants over",
        })),
        Ok(version) => HttpResponse::ServiceUnavailable().json(json!({
            "status": "not_ready", "database": "ok",
            "detail": format!("migrations applied up to {version:?}, this build needs {latest}; run `hub migrate`"),
        })),
        Err(e) => HttpResponse::ServiceUnavailable().json(json!({
            "status": "not_ready", "database": "unreachable", "detail": e.to_string(),
        })),
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state.consult_rooms.metrics().refresh(&state.pool).await;
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buffer) {
        Ok(()) => HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(buffer),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}
