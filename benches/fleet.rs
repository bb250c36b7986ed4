//! Fleet load: N ambulance units report GPS once a second over MQTT, each with its own device
//! credentials and connection, to the release hub's embedded MQTT endpoint, while dispatchers'
//! map pages (WebSocket connections subscribed to the tenant's map) watch. Measured:
//!
//! - publish → map: from the fix time the unit stamps just before publishing to the moment a map
//!   connection reads the position update, p50/p99/max over every update every watcher received;
//! - what the watchers were sent (updates per second per watcher; a watcher that cannot keep up
//!   is sent the newest position of each unit, not a backlog: the rest is counted as coalesced);
//! - fixes persisted per second to the units' tracks (and any dropped), from the hub's `/metrics`;
//! - the hub's CPU (share of one core) and resident memory over the window.
//!
//! `cargo bench --bench fleet`; `MEDHUB_BENCH_UNITS` (default `1000,10000`), `MEDHUB_BENCH_WATCHERS`
//! (default 100) and `MEDHUB_BENCH_SECONDS` (default 30) change the run. The load generator runs on
//! the same machine and shares its cores with the hub and PostgreSQL.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use common::{metric, Api, Hub, World};
use futures_util::{stream, SinkExt, StreamExt};
use medhub_actors::Role;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// A unit and its device's credentials.
struct Unit {
    id: Uuid,
    username: String,
    password: String,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}


async fn register_units(admin: &Api, count: usize) -> Vec<Unit> {
    stream::iter(0..count)
        .map(|n| async move {
            let unit = admin.post("/api/ambulances", json!({"call_sign": format!("FLEET-{n:05}")})).await.expect("register unit").expect(201);
            let id: Uuid = unit["id"].as_str().expect("unit id").parse().expect("uuid");
            let device = admin.post("/api/devices", json!({"unit_id": id, "kind": "ambulance", "name": format!("tracker {n}")})).await.expect("register device").expect(201);
            Unit { id, username: device["username"].as_str().expect("username").to_owned(), password: device["password"].as_str().expect("password").to_owned() }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Connects a unit and then reports a fix every second (from a random phase) until `stop`.
async fn connect_unit(addr: SocketAddr, tenant: String, unit: Unit, published: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let mut options = MqttOptions::new(format!("fleet-{}", unit.id.simple()), addr.ip().to_string(), addr.port());
    options.set_credentials(unit.username, unit.password);
    options.set_keep_alive(Duration::from_secs(60));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    loop {
        match tokio::time::timeout(Duration::from_secs(60), eventloop.poll()).await.expect("CONNACK within 60 s") {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => continue,
            Err(e) => panic!("unit {} cannot connect: {e}", unit.id),
        }
    }
    let topic = format!("medhub/{tenant}/ambulance/{}/gps", unit.id);
    // A unit circles slowly around its own point in the demo city.
    let seed = unit.id.as_u128();
    let (lat0, lon0) = (-1.25 - (seed % 1000) as f64 * 0.0001, 36.80 + ((seed >> 10) % 1000) as f64 * 0.0001);
    tokio::spawn(async move {
        let phase = Duration::from_micros((seed % 1_000_000) as u64);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + phase, Duration::from_secs(1));
        let mut step = 0u32;
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                _ = ticks.tick() => {
                    step += 1;
                    let angle = step as f64 * 0.05;
                    let fix = json!({
                        "lat": lat0 + 0.002 * angle.sin(), "lon": lon0 + 0.002 * angle.cos(),
                        "speed": 12.0, "heading": (angle.to_degrees() + 90.0) % 360.0, "accuracy": 5.0,
                        "fix_time": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
                    });
                    if client.try_publish(topic.as_str(), QoS::AtMostOnce, false, fix.to_string()).is_ok() {
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                }
                event = eventloop.poll() => if let Err(e) = event {
                    eprintln!("unit connection ended: {e}");
                    return;
                },
            }
        }
        let _ = client.try_disconnect();
    })
}

/// What one map connection saw: publish → receive delay of each position update, in µs.
struct Watched {
    delays_us: Vec<u32>,
    /// WebSocket frames with positions received in the window.
    frames: u64,
}

/// A dispatcher's map connection; records updates whose fix time falls in the window.
async fn watch_map(hub: &Hub, token: String, topic: String, window: (DateTime<Utc>, DateTime<Utc>), stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Watched> {
    let (mut socket, _) = tokio_tungstenite::connect_async(hub.ws_url.as_str()).await.expect("websocket connects");
    socket.send(Message::text(json!({"type": "auth", "token": token}).to_string())).await.expect("auth");
    socket.send(Message::text(json!({"type": "subscribe", "topic": topic}).to_string())).await.expect("subscribe");
    tokio::spawn(async move {
        let mut delays_us = Vec::new();
        let mut frames = 0;
        const MARK: &str = r#""fix_time":""#;
        while !stop.load(Ordering::Relaxed) {
            let message = match tokio::time::timeout(Duration::from_millis(500), socket.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => panic!("a map connection failed: {e}"),
                Ok(None) => panic!("the hub closed a map connection"),
                Err(_) => continue,
            };
            let received = Utc::now();
            let Message::Text(text) = message else { continue };
            // The hub's rejection of a slow reader would show here; it must not happen.
            assert!(!text.contains(r#""too_slow""#), "a map connection was cut off as too slow");
            if !text.contains(r#""unit.position""#) {
                continue;
            }
            if received >= window.0 && received < window.1 {
                frames += 1;
            }
            // A `live` frame carries the latest position of every unit that reported in the tick.
            for at in text.match_indices(MARK).map(|(at, _)| at + MARK.len()) {
                let Some(fix_time) = text[at..].split('"').next().and_then(|t| t.parse::<DateTime<Utc>>().ok()) else { continue };
                if fix_time >= window.0 && fix_time < window.1 {
                    delays_us.push((received - fix_time).num_microseconds().unwrap_or(i64::MAX).clamp(0, u32::MAX as i64) as u32);
                }
            }
        }
        Watched { delays_us, frames }
    })
}

/// The hub's CPU time (user + system) in clock ticks and its resident memory in MiB.
fn hub_usage(pid: i32) -> (u64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status.lines().find(|line| line.starts_with("VmRSS:")).and_then(|line| line.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks, rss_kib / 1024.0)
}

async fn fleet(units: usize, watchers: usize, seconds: u64) {
    let world = World::start_with(1, |options| options.arg("--mqtt-listen", "127.0.0.1:0")).await;
    let addr = world.hub.mqtt_addr().await;
    let prepared = Instant::now();
    let registered = register_units(&world.admin, units).await;
    let registering = prepared.elapsed();
    let rss_registered = hub_usage(world.hub.pid()).1;

    let published = Arc::new(AtomicU64::new(0));
    let stop_units = Arc::new(AtomicBool::new(false));
    let connecting = Instant::now();
    let tenant = world.tenant.slug.clone();
    let unit_tasks: Vec<_> = stream::iter(registered)
        .map(|unit| connect_unit(addr, tenant.clone(), unit, published.clone(), stop_units.clone()))
        .buffer_unordered(32)
        .collect()
        .await;
    let connected = connecting.elapsed();
    let rss_connected = hub_usage(world.hub.pid()).1;

    // Let every unit report a few times before the window opens.
    let warm_up = Duration::from_secs(5);
    let window_start = Utc::now() + chrono::Duration::from_std(warm_up).expect("duration");
    let window = (window_start, window_start + chrono::Duration::seconds(seconds as i64));
    let dispatcher = world.hub.login(&world.tenant, Role::Dispatcher).await;
    let token = dispatcher.token.clone().expect("logged in");
    let topic = format!("tenant/{}/map", world.tenant.slug);
    let stop_watchers = Arc::new(AtomicBool::new(false));
    let mut watcher_tasks = Vec::new();
    for _ in 0..watchers {
        watcher_tasks.push(watch_map(&world.hub, token.clone(), topic.clone(), window, stop_watchers.clone()).await);
    }
    tokio::time::sleep(warm_up).await;

    let metrics = world.hub.metrics().await;
    let (written_before, dropped_before) = (metric(&metrics, "medhub_track_fixes_written_total"), metric(&metrics, "medhub_track_fixes_dropped_total"));
    let published_before = published.load(Ordering::Relaxed);
    let (cpu_before, _) = hub_usage(world.hub.pid());
    let measuring = Instant::now();
    let mut peak_rss: f64 = 0.0;
    while measuring.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak_rss = peak_rss.max(hub_usage(world.hub.pid()).1);
    }
    let elapsed = measuring.elapsed().as_secs_f64();
    let metrics = world.hub.metrics().await;
    let written = metric(&metrics, "medhub_track_fixes_written_total") - written_before;
    let dropped = metric(&metrics, "medhub_track_fixes_dropped_total") - dropped_before;
    let sent = published.load(Ordering::Relaxed) - published_before;
    let (cpu_after, _) = hub_usage(world.hub.pid());
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let cpu_share = (cpu_after - cpu_before) as f64 / ticks_per_second / elapsed;
    let rejected: f64 = metrics.lines().filter(|line| line.starts_with("medhub_mqtt_rejected_total{")).filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok()).sum();

    // Updates stamped near the window's end are still on their way: give them a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_watchers.store(true, Ordering::Relaxed);
    let mut delays: Vec<u32> = Vec::new();
    let mut per_watcher = Vec::new();
    let mut frames = 0;
    for task in watcher_tasks {
        let watched = task.await.expect("watcher");
        per_watcher.push(watched.delays_us.len());
        frames += watched.frames;
        delays.extend(watched.delays_us);
    }
    stop_units.store(true, Ordering::Relaxed);
    for task in unit_tasks {
        let _ = task.await;
    }

    delays.sort_unstable();
    let ms = |us: u32| us as f64 / 1000.0;
    let at = |p: f64| delays[((delays.len() as f64 - 1.0) * p).round() as usize];
    let received_each = per_watcher.iter().sum::<usize>() as f64 / per_watcher.len().max(1) as f64;
    println!("fleet of {units} units at 1 Hz, {watchers} map watchers, {seconds} s window");
    println!(
        "  setup: {units} units + devices registered in {:.1} s (hub RSS {rss_registered:.0} MiB), connected over MQTT in {:.1} s (RSS {rss_connected:.0} MiB)",
        registering.as_secs_f64(), connected.as_secs_f64()
    );
    println!("  fixes published           {:>9.0}/s   (rejected by the hub during the run: {rejected})", sent as f64 / elapsed);
    println!("  fixes persisted to tracks {:>9.0}/s   dropped {dropped}", written / elapsed);
    if delays.is_empty() {
        println!("  map watchers received no position updates in the window");
    } else {
        println!(
            "  publish → map WebSocket   p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms   ({} updates)",
            ms(at(0.50)), ms(at(0.99)), ms(*delays.last().expect("some")), delays.len()
        );
        println!(
            "  per watcher               {:>9.0} positions/s in {:.1} frames/s ({:.1}% of the fixes; the rest replaced by a newer one before it was sent)",
            received_each / seconds as f64,
            frames as f64 / per_watcher.len().max(1) as f64 / seconds as f64,
            100.0 * received_each / sent.max(1) as f64
        );
    }
    println!("  hub process               {:>8.0}% of one core, peak RSS {:.0} MiB", cpu_share * 100.0, peak_rss);
    let logs = world.hub.logs();
    let troubles: Vec<&str> = logs.lines().filter(|line| line.contains("WARN") || line.contains("ERROR")).collect();
    if !troubles.is_empty() {
        println!("  hub logged {} warnings/errors, e.g.:", troubles.len());
        for line in troubles.iter().take(3) {
            println!("    {}", line.chars().take(300).collect::<String>());
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let units: Vec<usize> = std::env::var("MEDHUB_BENCH_UNITS").unwrap_or_else(|_| "1000,10000".into()).split(',').filter_map(|n| n.trim().parse().ok()).collect();
    let watchers = env_or("MEDHUB_BENCH_WATCHERS", 100);
    let seconds = env_or("MEDHUB_BENCH_SECONDS", 30);
    println!("medhub fleet figures: release hub, embedded MQTT endpoint, PostgreSQL with synchronous commit, {} CPUs", std::thread::available_parallelism().map_or(0, |n| n.get()));
    runtime.block_on(async {
        for n in units {
            fleet(n, watchers, seconds).await;
        }
    });
}
