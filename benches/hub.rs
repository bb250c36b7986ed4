//! Load figures for the hub's durable command path, measured end to end through the real binary
//! (release build), a real PostgreSQL (synchronous commit, as in production) and real HTTP and
//! WebSocket clients on this machine. Run with `cargo bench --bench hub`; it prints a table.
//!
//! - bed changes: concurrent nurses changing beds of one facility (one actor, one topic);
//!   acknowledged changes per second, latency p50/p99/max, and commit → WebSocket delivery latency.
//! - bookings: concurrent front desks booking distinct slots of one doctor (one actor);
//!   bookings per second and latency p50/p99/max.
//! - booking storm: 1,000 requests for one slot at once; time until all are answered.
//! - dispenses: concurrent pharmacists dispensing one-unit prescriptions from the batches of one
//!   medication (reserve and dispense through the batch actors); dispenses per second and latency.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use common::{around_the_clock, email, Live, World};
use futures_util::future::join_all;
use medhub_actors::Role;
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut latencies: Vec<Duration>, elapsed: Duration) {
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<34} {:>7} ops {:>9.1} ops/s   p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().expect("at least one sample")),
    );
}

async fn bed_changes(world: &World, clients: usize, per_client: usize) {
    let beds = world.admin.create_facility("Bench Beds", clients).await;
    let mut watcher = Live::connect(&world.hub, &world.nurse).await;
    watcher.subscribe(&world.tenant.beds_topic(), None).await;
    watcher.next().await;
    let mut nurses = Vec::new();
    for _ in 0..clients {
        nurses.push(world.hub.login(&world.tenant, Role::Nurse).await);
    }
    let started = Instant::now();
    let runs = nurses.into_iter().enumerate().map(|(n, nurse)| {
        let (facility, bed) = (beds.id, beds.beds[n]);
        async move {
            let mut latencies = Vec::with_capacity(per_client);
            for round in 0..per_client {
                let status = if round % 2 == 0 { "cleaning" } else { "free" };
                let sent = Instant::now();
                nurse.set_bed(facility, bed, status).await.expect("bed change").ok();
                latencies.push(sent.elapsed());
            }
            latencies
        }
    });
    let watch = async {
        let mut delays = Vec::with_capacity(clients * per_client);
        for _ in 0..clients * per_client {
            let event = watcher.next().await;
            let committed: chrono::DateTime<Utc> = event["data"]["at"].as_str().expect("event time").parse().expect("time");
            delays.push((Utc::now() - committed).to_std().unwrap_or_default());
        }
        delays
    };
    let (latencies, delays) = tokio::join!(join_all(runs), watch);
    let elapsed = started.elapsed();
    report(&format!("bed changes ({clients} clients)"), latencies.into_iter().flatten().collect(), elapsed);
    report("  decided → WebSocket delivery", delays, elapsed);
}

async fn bookings(world: &World, doctor: uuid::Uuid, clients: usize, per_client: usize) {
    let patients = world.db.patients(&world.tenant, clients * per_client).await;
    let mut desks = Vec::new();
    for _ in 0..clients {
        desks.push(world.hub.login(&world.tenant, Role::Nurse).await);
    }
    let base = Utc.from_utc_datetime(&(Utc::now() + chrono::Duration::days(2)).date_naive().and_hms_opt(0, 0, 0).expect("midnight"));
    let started = Instant::now();
    let runs = desks.into_iter().enumerate().map(|(c, desk)| {
        let patients = patients.clone();
        async move {
            let mut latencies = Vec::with_capacity(per_client);
            for k in 0..per_client {
                let n = c * per_client + k;
                let start = base + chrono::Duration::minutes(15 * n as i64);
                let body = json!({"doctor_id": doctor, "patient_id": patients[n], "start": start});
                let sent = Instant::now();
                desk.post("/api/appointments", body).await.expect("booking").expect(201);
                latencies.push(sent.elapsed());
            }
            latencies
        }
    });
    let latencies: Vec<Duration> = join_all(runs).await.into_iter().flatten().collect();
    report(&format!("bookings ({clients} desks)"), latencies, started.elapsed());
}

async fn booking_storm(world: &World, doctor: uuid::Uuid) {
    let patients = world.db.patients(&world.tenant, 100).await;
    let mut desks = Vec::new();
    for _ in 0..20 {
        desks.push(world.hub.login(&world.tenant, Role::Nurse).await);
    }
    let slot = Utc.from_utc_datetime(&(Utc::now() + chrono::Duration::days(30)).date_naive().and_hms_opt(9, 0, 0).expect("nine"));
    let started = Instant::now();
    let requests = (0..1000).map(|n| {
        let desk = desks[n % desks.len()].clone();
        let body = json!({"doctor_id": doctor, "patient_id": patients[n % patients.len()], "start": slot});
        async move {
            let sent = Instant::now();
            let status = desk.post("/api/appointments", body).await.expect("booking").status;
            (status, sent.elapsed())
        }
    });
    let answers = join_all(requests).await;
    let won = answers.iter().filter(|(status, _)| *status == 201).count();
    assert_eq!(won, 1);
    report("booking storm (1,000 for 1 slot)", answers.into_iter().map(|(_, d)| d).collect(), started.elapsed());
}

async fn dispenses(world: &World, clients: usize, per_client: usize) {
    let pharmacy = world.facility.id;
    let pharmacist = world.hub.login(&world.tenant, Role::Pharmacist).await;
    let medication = world.db.medication(&world.tenant, "Bench Paracetamol 500 mg tablet", "paracetamol", "N02BE01", "1.00").await;
    let total = (clients * per_client) as i64;
    for (n, days) in [(0, 100), (1, 200), (2, 300)] {
        pharmacist.receive_batch(pharmacy, medication, &format!("BENCH-{n}"), days, total).await;
    }
    let patients = world.db.patients(&world.tenant, 50).await;
    let doctor = world.hub.login(&world.tenant, Role::Doctor).await;
    let mut prescriptions = Vec::new();
    for n in 0..clients * per_client {
        let body = json!({"patient_id": patients[n % patients.len()], "medication_id": medication, "pharmacy_id": pharmacy,
                          "dose": "1 tablet", "frequency": "once", "duration_days": 1, "quantity": 1});
        prescriptions.push(doctor.post("/api/prescriptions", body).await.expect("prescribe").expect(201)["prescription"]["id"].as_str().expect("id").to_owned());
    }
    let mut pharmacists = Vec::new();
    for _ in 0..clients {
        pharmacists.push(world.hub.login(&world.tenant, Role::Pharmacist).await);
    }
    let started = Instant::now();
    let runs = pharmacists.into_iter().enumerate().map(|(c, pharmacist)| {
        let mine: Vec<String> = prescriptions.iter().skip(c).step_by(clients).cloned().collect();
        async move {
            let mut latencies = Vec::with_capacity(mine.len());
            for id in mine {
                let sent = Instant::now();
                pharmacist.post(&format!("/api/prescriptions/{id}/dispense"), serde_json::Value::Null).await.expect("dispense").ok();
                latencies.push(sent.elapsed());
            }
            latencies
        }
    });
    let latencies: Vec<Duration> = join_all(runs).await.into_iter().flatten().collect();
    report(&format!("dispenses ({clients} pharmacists)"), latencies, started.elapsed());
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let world = World::start(1).await;
        println!("medhub load figures: release hub, PostgreSQL with synchronous commit, {} CPUs", std::thread::available_parallelism().map_or(0, |n| n.get()));
        bed_changes(&world, 16, 100).await;
        let user = world.db.user_id(&email(&world.tenant.slug, Role::Doctor)).await;
        let doctor = world.admin.register_doctor(user, world.facility.id, 15, around_the_clock()).await;
        bookings(&world, doctor, 16, 50).await;
        booking_storm(&world, doctor).await;
        dispenses(&world, 16, 40).await;
    });
}
