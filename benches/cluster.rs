//! One node versus three: the same bed-board load through one release hub and through three hubs
//! sharing one PostgreSQL and one Redis (both configurations run with the Redis backplane, so that
//! the node count is the only difference). Several tenants, each first served through a different
//! node so that every node owns some of them; nurses spread round-robin over all nodes (with three
//! nodes and the defaults, 5 writes in 8 reach a node that does not serve their tenant and are
//! forwarded to the one that does), each flipping its own bed between cleaning and free in a closed
//! loop; WebSocket watchers of each tenant's beds topic, spread over all nodes. Measured over a
//! fixed window after a short warm-up:
//!
//! - acknowledged bed changes per second and the writers' latency (request sent → 200 read);
//! - events delivered per second, summed over all watchers;
//! - decided → delivered: from the time the owning node stamps on the change (`data.at`, µs, taken
//!   just before the commit, so it includes the commit itself) to the moment a watcher reads the
//!   event; all processes share this machine's clock;
//! - each node's CPU (share of one core) and peak RSS, the share of writes forwarded (from the
//!   nodes' `medhub_cluster_forwarded_total`), and where the rest of the machine's CPU went
//!   (PostgreSQL, Redis, this load generator);
//! - correctness on the way: every watcher must see every event of its topic once, in seq order,
//!   up to the topic's last seq, and every acknowledged change must be one committed event; gaps,
//!   repeats, missing events, failed writes and errors are counted and printed.
//!
//! `cargo bench --bench cluster`; `MEDHUB_BENCH_SECONDS` (default 15), `MEDHUB_BENCH_WRITERS`
//! (default 48), `MEDHUB_BENCH_WATCHERS` (per tenant, default 4), `MEDHUB_BENCH_TENANTS` (default
//! 6) and `MEDHUB_BENCH_NODES` (default `1,3`) change the run. Everything runs on this machine:
//! its cores are shared by PostgreSQL, Redis, the hubs and the load generator, so the generator
//! stays light: one task per writer and per watcher, typed parsing of only the fields it checks,
//! and latency samples of 4 bytes each (a few hundred KiB for a default run).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::redis::TestRedis;
use common::{metric, spawn_hub_with, Api, Facility, Hub, HubOptions, Tenant, TestDb};
use futures_util::{SinkExt, StreamExt};
use medhub_actors::Role;
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// What one run is asked to do (the same for every node count).
#[derive(Clone, Copy)]
struct Load {
    tenants: usize,
    writers: usize,
    watchers_per_tenant: usize,
    warm_up: Duration,
    window: Duration,
}

/// The measured window, on both clocks: `Instant` for the writers, wall time for event stamps.
#[derive(Clone, Copy)]
struct Window {
    warm_up_from: Instant,
    start: Instant,
    end: Instant,
    wall_start: DateTime<Utc>,
    wall_end: DateTime<Utc>,
}

impl Window {
    fn contains(&self, at: Instant) -> bool {
        at >= self.start && at < self.end
    }
}

// ---------------------------------------------------------------------------------------------
// Processes and the machine

/// Clock ticks per second for /proc times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// A process's CPU time (user + system) in clock ticks and its parent's pid.
fn process_ticks(pid: i32) -> (u64, i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let field = |n: usize| fields.get(n).and_then(|value| value.parse::<u64>().ok()).unwrap_or(0);
    (field(11) + field(12), field(1) as i32)
}

fn resident_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status.lines().find(|line| line.starts_with("VmRSS:")).and_then(|line| line.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok());
    kib.unwrap_or(0.0) / 1024.0
}

/// CPU ticks of `root` and its direct children (PostgreSQL's postmaster and its backends).
fn process_group_ticks(root: i32) -> u64 {
    let children: u64 = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .map(process_ticks)
                .filter(|(_, parent)| *parent == root)
                .map(|(ticks, _)| ticks)
                .sum()
        })
        .unwrap_or(0);
    process_ticks(root).0 + children
}

/// The postmaster of the test database (its pid is the first line of `postmaster.pid`).
fn postmaster_pid(db: &TestDb) -> Option<i32> {
    let cluster_dir = db.scratch("bench").parent()?.join("postgres");
    std::fs::read_to_string(cluster_dir.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
}

/// The `redis-server` listening on `port`, found by its process title (`redis-server 127.0.0.1:<port>`).
fn redis_pid(port: &str) -> Option<i32> {
    let title = format!(":{port}");
    std::fs::read_dir("/proc").ok()?.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok()).find(|pid| {
        let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ");
        cmdline.starts_with("redis-server") && cmdline.trim_end().ends_with(&title)
    })
}

/// Busy and total jiffies of all cores together, from /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<u64> = stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// CPU ticks of everything on the machine that takes part, at one moment.
struct CpuReading {
    nodes: Vec<u64>,
    postgres: u64,
    redis: u64,
    load_generator: u64,
    machine: (u64, u64),
}

fn read_cpu(hubs: &[Hub], postmaster: Option<i32>, redis: Option<i32>) -> CpuReading {
    CpuReading {
        nodes: hubs.iter().map(|hub| process_ticks(hub.pid()).0).collect(),
        postgres: postmaster.map_or(0, process_group_ticks),
        redis: redis.map_or(0, |pid| process_ticks(pid).0),
        load_generator: process_ticks(std::process::id() as i32).0,
        machine: machine_jiffies(),
    }
}

// ---------------------------------------------------------------------------------------------
// Writers

/// One nurse's writes in the window.
#[derive(Default)]
struct Written {
    /// Latency of each acknowledged change sent in the window, µs.
    latencies_us: Vec<u32>,
    /// Every acknowledged change, warm-up included (each must be one event in the log).
    acknowledged: u64,
    /// Acknowledged changes the client saw answered by another node (`x-medhub-served-by`).
    served_elsewhere: u64,
    /// Answers other than 200 (and transport errors): how many, and the first few.
    failed: u64,
    failures: Vec<String>,
}

/// Flips one bed between cleaning and free, waiting for each answer, from the warm-up to the end
/// of the window.
async fn flip_bed_in_closed_loop(nurse: Api, facility: Uuid, bed: Uuid, window: Window) -> Written {
    tokio::time::sleep_until(window.warm_up_from.into()).await;
    let mut written = Written::default();
    let mut round = 0u64;
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            return written;
        }
        let status = if round % 2 == 0 { "cleaning" } else { "free" };
        let failure = match nurse.set_bed(facility, bed, status).await {
            Ok(reply) if reply.status == 200 => {
                round += 1;
                written.acknowledged += 1;
                if window.contains(sent) {
                    written.latencies_us.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    written.served_elsewhere += u64::from(reply.served_by.is_some());
                }
                None
            }
            Ok(reply) => Some(format!("{} {}", reply.status, reply.body)),
            Err(e) => Some(format!("no answer: {e:#}")),
        };
        if let Some(failure) = failure {
            written.failed += 1;
            if written.failures.len() < 3 {
                written.failures.push(failure);
            }
            // Do not spin on a node that keeps refusing.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Watchers

/// An event envelope as far as the watchers look into it.
#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    seq: Option<i64>,
    data: Option<FrameData>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct FrameData {
    at: Option<DateTime<Utc>>,
}

/// A frame whose `data` is not an object with an `at` time (a snapshot, say): only its kind.
#[derive(Deserialize)]
struct ControlFrame {
    #[serde(rename = "type")]
    kind: String,
    seq: Option<i64>,
    error: Option<String>,
}

/// What one watcher saw.
#[derive(Default)]
struct Watched {
    /// Decided → delivered of each event decided in the window, µs.
    delays_us: Vec<u32>,
    /// Events read in the window.
    delivered_in_window: u64,
    /// The seq the subscription started after, and the last one read.
    subscribed_at: i64,
    last_seq: i64,
    /// Events skipped over (a later seq came first) and events repeated or out of order.
    gaps: u64,
    repeats: u64,
    /// Errors the hub sent and why the connection ended early, if it did.
    troubles: Vec<String>,
}

/// A watcher's connection, subscribed and not yet read from.
struct Subscribed {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    watched: Watched,
}

/// Connects to `hub` and subscribes to `topic`; returns once the hub said from which seq on.
async fn subscribe(hub: &Hub, token: &str, topic: &str) -> Subscribed {
    let (mut socket, _) = tokio_tungstenite::connect_async(hub.ws_url.as_str()).await.expect("websocket connects");
    socket.send(Message::text(json!({"type": "auth", "token": token}).to_string())).await.expect("auth");
    socket.send(Message::text(json!({"type": "subscribe", "topic": topic}).to_string())).await.expect("subscribe");
    let mut watched = Watched::default();
    // `ready`, then `subscribed` with the seq the stream starts after (then a snapshot).
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next()).await.expect("subscribed within 30 s");
        let Some(Ok(Message::Text(text))) = message else { continue };
        let frame: ControlFrame = serde_json::from_str(text.as_str()).expect("the hub sends JSON");
        match frame.kind.as_str() {
            "subscribed" => {
                watched.subscribed_at = frame.seq.expect("subscribed names its seq");
                watched.last_seq = watched.subscribed_at;
                return Subscribed { socket, watched };
            }
            "ready" => continue,
            other => panic!("subscribing to {topic} answered {other}: {:?}", frame.error),
        }
    }
}

/// Reads events until the watcher has seen `until` (set once the writers stopped) or `give_up`
/// is raised.
fn watch(subscribed: Subscribed, window: Window, until: Arc<AtomicI64>, give_up: Arc<AtomicBool>) -> tokio::task::JoinHandle<Watched> {
    let Subscribed { mut socket, mut watched } = subscribed;
    tokio::spawn(async move {
        loop {
            if watched.last_seq >= until.load(Ordering::Relaxed) || give_up.load(Ordering::Relaxed) {
                // Say goodbye as a console tab would, so the hub sees a closed connection, not a lost one.
                let _ = socket.close(None).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = socket.next().await {} }).await;
                return watched;
            }
            let message = match tokio::time::timeout(Duration::from_millis(250), socket.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => {
                    watched.troubles.push(format!("connection failed: {e}"));
                    return watched;
                }
                Ok(None) => {
                    watched.troubles.push("the hub closed the connection".to_owned());
                    return watched;
                }
            };
            let received = Instant::now();
            let received_wall = Utc::now();
            let text = match message {
                Message::Text(text) => text,
                Message::Close(reason) => {
                    watched.troubles.push(format!("the hub closed the connection: {reason:?}"));
                    return watched;
                }
                _ => continue,
            };
            let (kind, seq, at, error) = match serde_json::from_str::<Frame>(text.as_str()) {
                Ok(frame) => (frame.kind, frame.seq, frame.data.and_then(|data| data.at), frame.error),
                Err(_) => match serde_json::from_str::<ControlFrame>(text.as_str()) {
                    Ok(frame) => (frame.kind, frame.seq, None, frame.error),
                    Err(e) => {
                        watched.troubles.push(format!("not JSON ({e}): {}", text.chars().take(200).collect::<String>()));
                        continue;
                    }
                },
            };
            match (kind.as_str(), seq) {
                ("snapshot" | "pong", _) => {}
                ("error", _) => watched.troubles.push(format!("the hub sent error {error:?}: {}", text.chars().take(200).collect::<String>())),
                (_, Some(seq)) => {
                    if seq <= watched.last_seq {
                        watched.repeats += 1;
                        continue;
                    }
                    watched.gaps += (seq - watched.last_seq - 1) as u64;
                    watched.last_seq = seq;
                    if window.contains(received) {
                        watched.delivered_in_window += 1;
                    }
                    if let Some(at) = at.filter(|at| *at >= window.wall_start && *at < window.wall_end) {
                        let delay = (received_wall - at).num_microseconds().unwrap_or(i64::MAX).clamp(0, u32::MAX as i64);
                        watched.delays_us.push(delay as u32);
                    }
                }
                (other, None) => watched.troubles.push(format!("unexpected {other} frame: {}", text.chars().take(200).collect::<String>())),
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// One configuration

async fn node(db: &TestDb, redis: &TestRedis, name: &str) -> Hub {
    spawn_hub_with(HubOptions::node(db, name).arg("--redis-url", redis.url())).await
}

async fn leases_by_node(db: &TestDb) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT owner, count(*) FROM tenant_leases WHERE expires_at > now() GROUP BY owner ORDER BY owner").fetch_all(&db.pool).await.expect("leases")
}

/// Sum of a metric's series whose line starts with `prefix` (a name, or a name and labels).
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix) && line[prefix.len()..].starts_with([' ', '{']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Per-node counters read before and after the window.
const NODE_COUNTERS: [&str; 12] = [
    "medhub_cluster_forwarded_total",
    "medhub_cluster_forwarded_in_total",
    "medhub_ws_gap_fills_total",
    "medhub_ws_slow_disconnects_total",
    "medhub_backplane_dropped_total",
    "medhub_lease_takeovers_total",
    "medhub_backplane_published_total{kind=\"event\"}",
    "medhub_backplane_received_total{kind=\"event\"}",
    "medhub_commit_seconds_sum",
    "medhub_commit_seconds_count",
    "medhub_cluster_forward_seconds_sum",
    "medhub_cluster_forward_seconds_count",
];

async fn node_counters(hub: &Hub) -> (Vec<f64>, f64) {
    let text = hub.metrics().await;
    let answered = metric(&text, "medhub_cluster_forwarded_total{outcome=\"answered\"}");
    (NODE_COUNTERS.iter().map(|name| metric_sum(&text, name)).collect(), answered)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

/// The figures of one configuration, for the summary table.
struct Figures {
    nodes: usize,
    acks_per_second: f64,
    write_ms: [f64; 3],
    delivered_per_second: f64,
    delivery_ms: [f64; 3],
    forwarded_share: f64,
    node_cpu: Vec<f64>,
    node_rss: Vec<f64>,
    violations: u64,
    postgres_cpu: f64,
    others_cpu: f64,
    load_at_start: String,
}

async fn run(nodes: usize, load: Load) -> Figures {
    let load_at_start = load_average();
    let db = TestDb::start().await;
    let redis = TestRedis::start().await;
    let mut hubs = Vec::new();
    for n in 1..=nodes {
        hubs.push(node(&db, &redis, &format!("node-{n}")).await);
    }

    // Tenant k is first served through node k % n: that node takes its lease.
    let mut tenants: Vec<(Tenant, Facility)> = Vec::new();
    for k in 0..load.tenants {
        let tenant = db.tenant(&format!("t{}", k + 1)).await;
        let beds = load.writers.div_ceil(load.tenants);
        let admin = hubs[k % nodes].login(&tenant, Role::Admin).await;
        let facility = admin.create_facility(&format!("T{} General", k + 1), beds).await;
        tenants.push((tenant, facility));
    }
    let leases = leases_by_node(&db).await;

    // Writer w works in tenant w % T on its own bed, through node (tenant + its rank) % n: each
    // tenant's writers are spread over all nodes, and so is the load.
    let mut writers = Vec::new();
    for w in 0..load.writers {
        let (k, rank) = (w % load.tenants, w / load.tenants);
        let (tenant, facility) = &tenants[k];
        let nurse = hubs[(k + rank) % nodes].login(tenant, Role::Nurse).await;
        writers.push((nurse, facility.id, facility.beds[rank]));
    }

    // Watchers of tenant k connect through nodes k, k + 1, ... (mod n).
    let mut subscriptions = Vec::new();
    for (k, (tenant, _)) in tenants.iter().enumerate() {
        let reader = hubs[k % nodes].login(tenant, Role::Nurse).await;
        let token = reader.token.clone().expect("logged in");
        for j in 0..load.watchers_per_tenant {
            subscriptions.push((k, subscribe(&hubs[(k + j) % nodes], &token, &tenant.beds_topic()).await));
        }
    }

    let warm_up_from = Instant::now() + Duration::from_millis(200);
    let start = warm_up_from + load.warm_up;
    let wall_start = Utc::now() + chrono::Duration::from_std(start - Instant::now()).expect("duration");
    let window = Window { warm_up_from, start, end: start + load.window, wall_start, wall_end: wall_start + chrono::Duration::from_std(load.window).expect("duration") };
    let give_up = Arc::new(AtomicBool::new(false));
    let untils: Vec<Arc<AtomicI64>> = (0..load.tenants).map(|_| Arc::new(AtomicI64::new(i64::MAX))).collect();
    let watchers: Vec<_> = subscriptions.into_iter().map(|(k, subscribed)| (k, watch(subscribed, window, untils[k].clone(), give_up.clone()))).collect();

    let mut seqs_before = Vec::new();
    for (tenant, _) in &tenants {
        seqs_before.push(db.topic_seq(&tenant.beds_topic()).await);
    }
    let postmaster = postmaster_pid(&db);
    let redis_server = redis_pid(redis.url().rsplit(':').next().unwrap_or_default());
    let writing: Vec<_> = writers.into_iter().map(|(nurse, facility, bed)| tokio::spawn(flip_bed_in_closed_loop(nurse, facility, bed, window))).collect();

    tokio::time::sleep_until(start.into()).await;
    let cpu_before = read_cpu(&hubs, postmaster, redis_server);
    let mut counters_before = Vec::new();
    for hub in &hubs {
        counters_before.push(node_counters(hub).await);
    }
    let mut peak_rss = vec![0.0f64; nodes];
    while Instant::now() < window.end {
        tokio::time::sleep(Duration::from_millis(500).min(window.end.saturating_duration_since(Instant::now()))).await;
        for (peak, hub) in peak_rss.iter_mut().zip(&hubs) {
            *peak = peak.max(resident_mib(hub.pid()));
        }
    }
    let cpu_after = read_cpu(&hubs, postmaster, redis_server);
    let mut counters_after = Vec::new();
    for hub in &hubs {
        counters_after.push(node_counters(hub).await);
    }
    let seconds = load.window.as_secs_f64();

    let mut latencies: Vec<u32> = Vec::new();
    let (mut acknowledged, mut served_elsewhere, mut failed, mut failures) = (0, 0, 0, Vec::new());
    for task in writing {
        let written = task.await.expect("writer");
        latencies.extend(written.latencies_us);
        acknowledged += written.acknowledged;
        served_elsewhere += written.served_elsewhere;
        failed += written.failed;
        failures.extend(written.failures);
    }
    latencies.sort_unstable();

    // Every watcher must now read up to its topic's last seq.
    let mut committed = 0;
    for (k, (tenant, _)) in tenants.iter().enumerate() {
        let last = db.topic_seq(&tenant.beds_topic()).await;
        untils[k].store(last, Ordering::Relaxed);
        committed += (last - seqs_before[k]) as u64;
    }
    let deadline = give_up.clone();
    let drain = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(20)).await;
        deadline.store(true, Ordering::Relaxed);
    });
    let mut delays: Vec<u32> = Vec::new();
    let (mut delivered, mut gaps, mut repeats, mut missing) = (0, 0, 0, 0);
    let mut troubles = Vec::new();
    for (k, task) in watchers {
        let watched = task.await.expect("watcher");
        let until = untils[k].load(Ordering::Relaxed);
        delays.extend(watched.delays_us);
        delivered += watched.delivered_in_window;
        gaps += watched.gaps;
        repeats += watched.repeats;
        missing += (until - watched.last_seq).max(0) as u64;
        troubles.extend(watched.troubles.into_iter().map(|trouble| format!("watcher of t{} from seq {}: {trouble}", k + 1, watched.subscribed_at)));
    }
    drain.abort();
    delays.sort_unstable();

    let ack_count = latencies.len() as f64;
    let share = |ticks: u64| ticks as f64 / TICKS_PER_SECOND / seconds;
    let node_cpu: Vec<f64> = cpu_after.nodes.iter().zip(&cpu_before.nodes).map(|(after, before)| share(after - before)).collect();
    let forwarded_answered: f64 = counters_after.iter().zip(&counters_before).map(|(after, before)| after.1 - before.1).sum();
    let forwarded_share = if ack_count > 0.0 { forwarded_answered / ack_count } else { 0.0 };
    let summed = |index: usize| -> f64 { counters_after.iter().zip(&counters_before).map(|(after, before)| after.0[index] - before.0[index]).sum() };
    let mean_ms = |sum: f64, count: f64| if count > 0.0 { 1000.0 * sum / count } else { f64::NAN };
    let commit_mean_ms = mean_ms(summed(8), summed(9));
    let forward_mean_ms = mean_ms(summed(10), summed(11));
    let machine_busy = (cpu_after.machine.0 - cpu_before.machine.0) as f64 / (cpu_after.machine.1 - cpu_before.machine.1).max(1) as f64 * cores() as f64;

    let ms3 = |sorted: &[u32]| [percentile(sorted, 0.50), percentile(sorted, 0.99), sorted.last().map_or(f64::NAN, |max| *max as f64 / 1000.0)];
    let write_ms = ms3(&latencies);
    let delivery_ms = ms3(&delays);
    let watcher_count = load.tenants * load.watchers_per_tenant;
    let owners = leases.iter().map(|(owner, count)| format!("{owner} {count}")).collect::<Vec<_>>().join(", ");
    println!();
    println!(
        "== {nodes} node{}: {} tenants (leases: {owners}), {} writers, {watcher_count} watchers, {:.0} s window after {:.0} s warm-up; load average at start {load_at_start}",
        if nodes == 1 { "" } else { "s" }, load.tenants, load.writers, seconds, load.warm_up.as_secs_f64()
    );
    println!(
        "  bed changes acknowledged  {:>8.0}/s   write p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms   ({} acks, {failed} failed)",
        ack_count / seconds, write_ms[0], write_ms[1], write_ms[2], latencies.len()
    );
    println!(
        "  forwarded                 {:>7.1} %   of acknowledged writes (nodes' medhub_cluster_forwarded_total{{outcome=\"answered\"}}; clients saw x-medhub-served-by on {:.1} %)",
        100.0 * forwarded_share, 100.0 * served_elsewhere as f64 / ack_count.max(1.0)
    );
    println!(
        "  inside the hubs           actor commit mean {commit_mean_ms:.2} ms (medhub_commit_seconds), forwarded request mean {forward_mean_ms:.2} ms (medhub_cluster_forward_seconds)"
    );
    println!("  events delivered          {:>8.0}/s   summed over {watcher_count} watchers ({:.0}/s per watcher)", delivered as f64 / seconds, delivered as f64 / seconds / watcher_count as f64);
    println!(
        "  decided → delivered       p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms   ({} deliveries)",
        delivery_ms[0], delivery_ms[1], delivery_ms[2], delays.len()
    );
    let unaccounted = committed.abs_diff(acknowledged);
    let violations = gaps + repeats + missing + troubles.len() as u64 + failed + unaccounted;
    println!(
        "  correctness               {gaps} events skipped, {repeats} repeated or out of order, {missing} missing at the end, {} errors or closed connections, {failed} failed writes; {acknowledged} changes acknowledged, {committed} events committed",
        troubles.len()
    );
    for trouble in troubles.iter().chain(&failures).take(8) {
        println!("    {}", trouble.chars().take(300).collect::<String>());
    }
    for (n, hub) in hubs.iter().enumerate() {
        let delta: Vec<f64> = counters_after[n].0.iter().zip(&counters_before[n].0).map(|(after, before)| after - before).collect();
        let owned = leases.iter().find(|(owner, _)| *owner == format!("node-{}", n + 1)).map_or(0, |(_, count)| *count);
        println!(
            "  node-{}: {owned} tenants   {:>4.0} % of a core   peak RSS {:>4.0} MiB   forwarded out {:.0}, in {:.0}   backplane events out {:.0}, in {:.0}, dropped {:.0}   ws gap fills {:.0}, slow disconnects {:.0}   lease takeovers {:.0}",
            n + 1, 100.0 * node_cpu[n], peak_rss[n], delta[0], delta[1], delta[6], delta[7], delta[4], delta[2], delta[3], delta[5]
        );
        let logs = hub.logs();
        let warnings: Vec<&str> = logs.lines().filter(|line| line.contains("WARN") || line.contains("ERROR")).collect();
        if !warnings.is_empty() {
            println!("    node-{} logged {} warnings/errors, e.g.:", n + 1, warnings.len());
            for line in warnings.iter().take(3) {
                println!("      {}", line.chars().take(300).collect::<String>());
            }
        }
    }
    let postgres = share(cpu_after.postgres - cpu_before.postgres);
    let redis_cpu = share(cpu_after.redis - cpu_before.redis);
    let load_generator = share(cpu_after.load_generator - cpu_before.load_generator);
    let others = (machine_busy - node_cpu.iter().sum::<f64>() - postgres - redis_cpu - load_generator).max(0.0);
    println!(
        "  the rest of the machine   PostgreSQL {:.0} %, Redis {:.0} %, this load generator {:.0} %, other processes {:.0} % of a core; all {} cores {:.0} % busy",
        100.0 * postgres,
        100.0 * redis_cpu,
        100.0 * load_generator,
        100.0 * others,
        cores(),
        100.0 * machine_busy / cores().max(1) as f64,
    );
    for hub in &mut hubs {
        hub.terminate().await;
    }
    Figures {
        nodes,
        acks_per_second: ack_count / seconds,
        write_ms,
        delivered_per_second: delivered as f64 / seconds,
        delivery_ms,
        forwarded_share,
        node_cpu,
        node_rss: peak_rss,
        violations,
        postgres_cpu: postgres,
        others_cpu: others,
        load_at_start,
    }
}

fn main() {
    let load = Load {
        tenants: env_or("MEDHUB_BENCH_TENANTS", 6usize).max(1),
        writers: env_or("MEDHUB_BENCH_WRITERS", 48usize).max(1),
        watchers_per_tenant: env_or("MEDHUB_BENCH_WATCHERS", 4usize).max(1),
        warm_up: Duration::from_secs(2),
        window: Duration::from_secs(env_or("MEDHUB_BENCH_SECONDS", 15u64).max(1)),
    };
    let node_counts: Vec<usize> = std::env::var("MEDHUB_BENCH_NODES").unwrap_or_else(|_| "1,3".into()).split(',').filter_map(|n| n.trim().parse().ok()).filter(|n| *n > 0).collect();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| info.lines().find(|line| line.starts_with("model name")).and_then(|line| line.split(':').nth(1)).map(|name| name.trim().to_owned()))
        .unwrap_or_default();
    println!("medhub cluster figures: release hubs (--node-id, --redis-url), one PostgreSQL (synchronous commit) and one Redis for all nodes");
    println!("machine: {} cores ({model}), load average {}; PostgreSQL, Redis, every hub and this load generator share them", cores(), load_average());
    let hub = common::hub_binary();
    assert!(Path::new(hub).exists(), "no hub binary at {}", hub.display());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let figures: Vec<Figures> = node_counts.into_iter().map(|nodes| runtime.block_on(run(nodes, load))).collect();

    println!();
    println!("| nodes | acknowledged writes/s | write p50 / p99 / max | forwarded | events delivered/s | decided → delivered p50 / p99 / max | hub CPU (each node) | hub RSS (each node) | PostgreSQL CPU | other processes' CPU | violations | load at start |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for f in &figures {
        let per_node = |values: &[f64], unit: &str, scale: f64| values.iter().map(|v| format!("{:.0}{unit}", v * scale)).collect::<Vec<_>>().join(" + ");
        println!(
            "| {} | {:.0} | {:.1} / {:.1} / {:.1} ms | {:.0} % | {:.0} | {:.1} / {:.1} / {:.1} ms | {} of a core | {} | {:.0} % | {:.0} % | {} | {} |",
            f.nodes, f.acks_per_second, f.write_ms[0], f.write_ms[1], f.write_ms[2], 100.0 * f.forwarded_share, f.delivered_per_second,
            f.delivery_ms[0], f.delivery_ms[1], f.delivery_ms[2], per_node(&f.node_cpu, " %", 100.0), per_node(&f.node_rss, " MiB", 1.0),
            100.0 * f.postgres_cpu, 100.0 * f.others_cpu, f.violations, f.load_at_start
        );
    }
}
