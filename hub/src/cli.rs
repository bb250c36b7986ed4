//! The `hub` command line: `serve`, `demo`, `simulate`, `migrate` and `admin`.

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use medhub_actors::Role;

use crate::config::{ConfigArgs, Settings};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::server::{self, Database, Listening};
use crate::simulate::{self, SimulateOptions};
use crate::{seed, telemetry};

#[derive(Parser)]
#[command(name = "hub", version, about = "medhub: the real-time operations hub for groups of hospitals")]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub (API, WebSocket, console) until SIGINT or SIGTERM.
    Serve,
    /// Run the hub with a demo tenant ("demo"): a user for every role, three facilities and four
    /// ambulance units.
    Demo {
        /// Also start a simulator driving this many units (`hub simulate`), stopped with the hub.
        #[arg(long, value_name = "UNITS")]
        simulate: Option<usize>,
    },
    /// Simulated ambulance units: real MQTT clients that wander, answer dispatches, drive to the
    /// scene and the hospital, and send vital signs. Runs until SIGINT or SIGTERM.
    Simulate(SimulateArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Manage tenants and users.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The hub nodes sharing this database and the tenants each serves.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// List the nodes (address, last heartbeat) and every tenant's lease (owner, fencing token,
    /// time left).
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// How many units (call signs SIM-001…; existing ones are reused).
    #[arg(long, default_value_t = 10)]
    units: usize,
    /// GPS fixes per second per unit.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// The tenant whose units these are.
    #[arg(long, default_value = seed::DEMO_TENANT)]
    tenant: String,
    /// The hub's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    hub: String,
    /// The hub's MQTT endpoint, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// The tenant admin who registers units and devices; the password comes from
    /// MEDHUB_SIM_ADMIN_PASSWORD (default: the demo's).
    #[arg(long, default_value = "admin@demo.medhub")]
    admin_email: String,
    /// Stop after this many seconds [default: run until stopped].
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a tenant (a hospital group).
    CreateTenant {
        /// Short immutable name used in logins and topics: 2-40 of a-z, 0-9, '-'.
        #[arg(long)]
        slug: String,
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// Create a user in a tenant. The password comes from MEDHUB_NEW_USER_PASSWORD or, with
    /// --password-stdin, from standard input (never from the command line, where others could read it).
    CreateUser {
        /// The tenant's slug.
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
        /// The name shown in the console.
        #[arg(long)]
        name: String,
        /// admin, dispatcher, doctor, nurse, pharmacist or patient.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Read the password from standard input (first line).
        #[arg(long)]
        password_stdin: bool,
    },
}

fn parse_role(value: &str) -> Result<Role, String> {
    Role::parse(value).ok_or_else(|| {
        format!("unknown role {value:?}; use one of {}", Role::ALL.map(Role::as_str).join(", "))
    })
}

pub fn main() -> ExitCode {
    return_large_allocations_to_the_system();
    let cli = Cli::parse();
    let settings = match Settings::resolve(&cli.config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("hub: configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&settings.log, settings.log_format, matches!(cli.command, Command::Cluster(_)));
    if let Command::Simulate(args) = cli.command {
        // A client of the hub, on a multi-threaded runtime of its own (many units).
        return simulate(args);
    }
    let result = actix_web::rt::System::new().block_on(run(cli.command, settings));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "hub failed");
            eprintln!("hub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Password hashing (argon2) allocates megabytes per hash on whichever blocking thread runs it.
/// glibc raises its mmap threshold after such a block is freed, so later ones come from per-thread
/// arenas and stay resident: a fleet of units reconnecting after a restart left the hub holding
/// gigabytes. A fixed threshold keeps every block of 1 MiB or more mmapped, returned when freed.
fn return_large_allocations_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => server::serve(settings, false, None).await,
        Command::Demo { simulate: None } => server::serve(settings, true, None).await,
        Command::Demo { simulate: Some(units) } => {
            let (ready_tx, ready_rx) = oneshot::channel();
            let (stop_tx, stop_rx) = oneshot::channel();
            let simulator = actix_web::rt::spawn(run_demo_simulator(units, ready_rx, stop_rx));
            let served = server::serve(settings, true, Some(ready_tx)).await;
            let _ = stop_tx.send(());
            let _ = simulator.await;
            served
        }
        Command::Simulate(_) => unreachable!("handled before the hub's settings are resolved"),
        Command::Migrate => {
            let database = Database::open(&settings).await?;
            database.migrate().await?;
            println!("migrations applied");
            database.close().await;
            Ok(())
        }
        Command::Cluster(ClusterCommand::Status { json }) => {
            let database = Database::open(&settings).await?;
            database.migrate().await?;
            let result = cluster_status(&database, settings.lease_ttl, json).await;
            database.close().await;
            result
        }
        Command::Admin(admin) => {
            let database = Database::open(&settings).await?;
            database.migrate().await?;
            let result = run_admin(&database, admin).await;
            database.close().await;
            result
        }
    }
}

fn simulate(args: SimulateArgs) -> ExitCode {
    let options = SimulateOptions {
        units: args.units,
        rate_hz: args.rate,
        tenant: args.tenant,
        hub_url: args.hub,
        mqtt: args.mqtt,
        admin_email: args.admin_email,
        admin_password: std::env::var("MEDHUB_SIM_ADMIN_PASSWORD").unwrap_or_else(|_| seed::DEMO_PASSWORD.to_owned()),
        duration: args.duration.map(Duration::from_secs),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hub simulate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(simulate::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "simulator failed");
            eprintln!("hub simulate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `hub demo --simulate N`: once the hub listens, runs `hub simulate` (this same binary) against
/// it as a child process, and stops it when the hub stops (or is told to by a signal).
async fn run_demo_simulator(units: usize, ready: oneshot::Receiver<Listening>, stop: oneshot::Receiver<()>) {
    let Ok(listening) = ready.await else { return };
    let Some(mqtt_addr) = listening.mqtt_addr else {
        warn!("the demo simulator needs the embedded MQTT endpoint; with an external broker run `hub simulate --mqtt host:port` yourself");
        return;
    };
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(e) => {
            warn!(error = %e, "cannot find the hub binary; the demo runs without its simulator");
            return;
        }
    };
    let child = tokio::process::Command::new(program)
        .args(["simulate", "--units", &units.to_string(), "--rate", "1", "--hub", &listening.url, "--mqtt", &mqtt_addr.to_string()])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            warn!(error = %e, "cannot start the simulator; the demo runs without it");
            return;
        }
    };
    info!(units, pid = child.id(), "demo simulator started");
    tokio::select! {
        status = child.wait() => {
            warn!(status = ?status, "the demo simulator stopped on its own");
            return;
        }
        _ = stop => {}
        _ = termination_signal() => {}
    }
    if let Some(pid) = child.id() {
        // SIGTERM lets the units disconnect cleanly; kill_on_drop is the fallback.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
        Ok(status) => info!(status = ?status, "demo simulator stopped"),
        Err(_) => {
            warn!("the demo simulator did not stop within 15 s; killing it");
            let _ = child.kill().await;
        }
    }
}

async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run_admin(database: &Database, command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::CreateTenant { slug, name } => {
            let id = seed::create_tenant(&database.pool, &slug, &name).await?;
            println!("created tenant {slug} ({id})");
        }
        AdminCommand::CreateUser { tenant, email, name, role, password_stdin } => {
            let password = if password_stdin {
                let mut input = String::new();
                std::io::stdin().read_to_string(&mut input).context("cannot read the password from standard input")?;
                input.lines().next().unwrap_or_default().to_owned()
            } else {
                match std::env::var("MEDHUB_NEW_USER_PASSWORD") {
                    Ok(password) => password,
                    Err(_) => bail!("give the password in MEDHUB_NEW_USER_PASSWORD or on standard input with --password-stdin"),
                }
            };
            let id = seed::create_user(&database.pool, &tenant, &email, &name, role, &password).await?;
            println!("created {role} {email} in {tenant} ({id})");
        }
    }
    Ok(())
}

/// `hub cluster status`: what the nodes and leases look like in the database right now. A node is
/// alive when its heartbeat is younger than one lease TTL (`--lease-ttl-secs`, as the nodes run).
async fn cluster_status(database: &Database, ttl: Duration, json: bool) -> anyhow::Result<()> {
    use medhub_actors::lease;
    let nodes = lease::nodes(&database.pool).await?;
    let leases = lease::all_leases(&database.pool).await?;
    let slugs: std::collections::HashMap<uuid::Uuid, String> =
        sqlx::query_as("SELECT id, slug FROM tenants").fetch_all(&database.pool).await?.into_iter().collect();
    let now = chrono::Utc::now();
    let db_now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&database.pool).await?;
    let alive = |silent: f64| silent < ttl.as_secs_f64();
    if json {
        let body = serde_json::json!({
            "nodes": nodes.iter().map(|n| serde_json::json!({
                "node_id": n.node_id, "url": n.url, "started_at": n.started_at, "heartbeat_at": n.heartbeat_at,
                "alive": alive(n.silent_secs),
                "tenants": leases.iter().filter(|l| l.owner == n.node_id && l.expires_at > db_now).count(),
            })).collect::<Vec<_>>(),
            "leases": leases.iter().map(|l| serde_json::json!({
                "tenant_id": l.tenant_id, "tenant": slugs.get(&l.tenant_id), "owner": l.owner, "token": l.token,
                "expires_at": l.expires_at, "live": l.expires_at > db_now,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    println!("NODES ({}, as of {})", nodes.len(), now.format("%Y-%m-%d %H:%M:%S UTC"));
    println!("  {:<32} {:<30} {:>10} {:>8}  STATE", "NODE", "URL", "HEARTBEAT", "TENANTS");
    for node in &nodes {
        let owned = leases.iter().filter(|l| l.owner == node.node_id && l.expires_at > db_now).count();
        let state = if alive(node.silent_secs) { "alive" } else { "silent (dead, paused or cut off)" };
        println!("  {:<32} {:<30} {:>9.1}s {:>8}  {state}", node.node_id, node.url, node.silent_secs, owned);
    }
    println!("\nLEASES ({})", leases.len());
    println!("  {:<24} {:<32} {:>7} {:>10}", "TENANT", "OWNER", "TOKEN", "EXPIRES");
    for lease in &leases {
        let tenant = slugs.get(&lease.tenant_id).cloned().unwrap_or_else(|| lease.tenant_id.to_string());
        let left = (lease.expires_at - db_now).num_milliseconds() as f64 / 1000.0;
        let expires = if left > 0.0 { format!("in {left:.1}s") } else { "expired".to_owned() };
        let owner = if lease.owner.is_empty() { "-" } else { lease.owner.as_str() };
        println!("  {:<24} {:<32} {:>7} {:>10}", tenant, owner, lease.token, expires);
    }
    Ok(())
}
