//! Three hub nodes on one PostgreSQL and one Redis, clients spread over all of them: the
//! acceptance stories of scale-out. Whichever node a client reaches, it is answered as if that node
//! served the tenant (the node that holds the tenant's lease does; the others forward to it), and
//! every WebSocket subscriber on every node sees every event of its topics in seq order. When the
//! owner is killed in the middle of a write storm, another node takes the tenant over within the
//! lease's time, nothing acknowledged is lost, nothing refused appears, and clients resuming with
//! `since` see no gap.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use common::redis::TestRedis;
use common::{around_the_clock, email, metric, spawn_hub_with, Api, Hub, HubOptions, Live, Tenant, TestDb};
use futures_util::future::join_all;
use medhub_actors::Role;
use serde_json::{json, Value};
use uuid::Uuid;

/// Short leases, so that a failover is quick to watch.
const LEASE_TTL_SECS: u64 = 2;

async fn node(db: &TestDb, redis: &TestRedis, name: &str) -> Hub {
    spawn_hub_with(HubOptions::node(db, name).arg("--lease-ttl-secs", LEASE_TTL_SECS).arg("--redis-url", redis.url())).await
}

async fn three_nodes(db: &TestDb, redis: &TestRedis) -> Vec<Hub> {
    let mut hubs = Vec::new();
    for name in ["node-1", "node-2", "node-3"] {
        hubs.push(node(db, redis, name).await);
    }
    hubs
}

fn tomorrow_at(hour: u32) -> DateTime<Utc> {
    let day = (Utc::now() + chrono::Duration::days(1)).date_naive();
    Utc.from_utc_datetime(&day.and_hms_opt(hour, 0, 0).expect("hour"))
}

async fn lease_owner(db: &TestDb, tenant: &Tenant) -> String {
    sqlx::query_scalar("SELECT owner FROM tenant_leases WHERE tenant_id = $1 AND expires_at > now()")
        .bind(tenant.id)
        .fetch_one(&db.pool)
        .await
        .expect("a live lease")
}

/// The beds topic's events as every subscriber must see them: seqs `after+1 ..= up_to`.
fn assert_in_order_without_gap(who: &str, events: &[Value], after: i64, up_to: i64) {
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().expect("seq")).collect();
    let expected: Vec<i64> = ((after + 1)..=up_to).collect();
    assert_eq!(seqs, expected, "{who}: events out of order, missing or repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_book_a_slot_once_and_every_subscriber_sees_every_bed_change_in_order() {
    let db = TestDb::start().await;
    let redis = TestRedis::start().await;
    let alpha = db.tenant("alpha").await;
    let hubs = three_nodes(&db, &redis).await;

    // Set-up through node 2: it becomes the tenant's owner.
    let admin = hubs[1].login(&alpha, Role::Admin).await;
    let facility = admin.create_facility("Alpha General", 200).await;
    let doctor_user = db.user_id(&email(&alpha.slug, Role::Doctor)).await;
    let doctor = admin.register_doctor(doctor_user, facility.id, 30, around_the_clock()).await;
    let patients = db.patients(&alpha, 50).await;
    assert_eq!(lease_owner(&db, &alpha).await, "node-2");

    // 1,000 concurrent bookings of one slot, a third through each node: exactly one succeeds.
    let mut desks: Vec<Api> = Vec::new();
    for hub in &hubs {
        desks.push(hub.login(&alpha, Role::Nurse).await);
    }
    let slot = tomorrow_at(9);
    let bookings = (0..1000).map(|n| {
        let desk = desks[n % 3].clone();
        let body = json!({"doctor_id": doctor, "patient_id": patients[n % patients.len()], "start": slot, "kind": "in_person", "reason": "check-up"});
        async move { desk.post("/api/appointments", body).await.expect("an answer") }
    });
    let replies = join_all(bookings).await;
    let statuses: BTreeMap<u16, usize> = replies.iter().fold(BTreeMap::new(), |mut counts, reply| {
        *counts.entry(reply.status).or_default() += 1;
        counts
    });
    assert_eq!(statuses, BTreeMap::from([(201, 1), (409, 999)]), "exactly one booking, every other one refused as taken");
    let booked: i64 = sqlx::query_scalar("SELECT count(*) FROM appointments WHERE doctor_id = $1 AND status = 'booked'")
        .bind(doctor)
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(booked, 1);
    // Each node answered its share, two of them by forwarding to the owner.
    for (n, hub) in hubs.iter().enumerate() {
        let forwarded = metric(&hub.metrics().await, "medhub_cluster_forwarded_total{outcome=\"answered\"}");
        if n == 1 {
            assert_eq!(forwarded, 0.0, "the owner serves its tenant itself");
        } else {
            assert!(forwarded >= 333.0, "node-{} forwarded {forwarded}", n + 1);
        }
    }

    // Two subscribers on every node; 200 concurrent bed changes through all three nodes.
    let topic = alpha.beds_topic();
    let after = db.topic_seq(&topic).await;
    let mut watchers = Vec::new();
    for hub in &hubs {
        for _ in 0..2 {
            let mut live = Live::connect(hub, &desks[0]).await;
            let subscribed = live.subscribe(&topic, None).await;
            assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
            watchers.push(live);
        }
    }
    let changes = facility.beds.iter().enumerate().map(|(n, bed)| {
        let desk = desks[n % 3].clone();
        let (facility, bed) = (facility.id, *bed);
        async move { desk.set_bed(facility, bed, "cleaning").await.expect("an answer").status }
    });
    let statuses = join_all(changes).await;
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    let up_to = db.topic_seq(&topic).await;
    assert_eq!(up_to - after, 200, "200 changes, 200 events");
    for (n, live) in watchers.iter_mut().enumerate() {
        let events = live.events(200).await;
        assert_in_order_without_gap(&format!("subscriber {n} on node-{}", n / 2 + 1), &events, after, up_to);
        let beds: BTreeSet<&str> = events.iter().map(|e| e["data"]["bed_id"].as_str().expect("bed")).collect();
        assert_eq!(beds.len(), 200, "every bed's change, once");
        // Nothing more: no duplicate trails behind.
        if let Some(extra) = live.next_within(Duration::from_millis(300)).await {
            assert!(extra.get("seq").is_none() || extra["seq"] == 0, "unexpected extra event {extra}");
        }
    }

    // Operations: `hub cluster status` lists the three nodes, alive, and alpha's lease on node 2;
    // each node is ready (database, migrations, leases current).
    let output = std::process::Command::new(common::hub_binary())
        .args(["cluster", "status", "--json", "--lease-ttl-secs", &LEASE_TTL_SECS.to_string(), "--database-url", &db.url])
        .output()
        .expect("hub cluster status runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let status: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let nodes: BTreeMap<&str, (&str, bool)> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| (n["node_id"].as_str().expect("id"), (n["url"].as_str().expect("url"), n["alive"].as_bool().expect("alive"))))
        .collect();
    assert_eq!(nodes.keys().copied().collect::<Vec<_>>(), ["node-1", "node-2", "node-3"], "{status}");
    for (n, hub) in hubs.iter().enumerate() {
        assert_eq!(nodes[format!("node-{}", n + 1).as_str()], (hub.url.as_str(), true), "{status}");
        let ready = reqwest::get(format!("{}/readyz", hub.url)).await.expect("readyz");
        assert_eq!(ready.status(), 200);
        let ready: Value = ready.json().await.expect("JSON");
        assert_eq!(
            (ready["node"].as_str(), ready["leases"].as_str(), ready["backplane"].as_str()),
            (Some(format!("node-{}", n + 1).as_str()), Some("current"), Some("connected")),
            "{ready}"
        );
    }
    let alpha_lease = status["leases"].as_array().expect("leases").iter().find(|l| l["tenant"] == "alpha").expect("alpha's lease").clone();
    assert_eq!((alpha_lease["owner"].as_str(), alpha_lease["live"].as_bool()), (Some("node-2"), Some(true)), "{alpha_lease}");
}

/// One desk's writes during the storm.
#[derive(Default)]
struct Tally {
    /// (bed, status) changes the hub acknowledged (200).
    acked: Vec<(Uuid, String)>,
    /// Changes refused as not done (4xx, or 503 "nothing was done").
    refused: Vec<(Uuid, String)>,
    /// Answers saying the outcome is unknown (the owner died while it handled the request).
    unknown: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_mid_storm_loses_nothing_acknowledged_and_another_node_takes_over() {
    let db = TestDb::start().await;
    let redis = TestRedis::start().await;
    let alpha = db.tenant("alpha").await;
    let mut hubs = three_nodes(&db, &redis).await;

    // Node 1 serves alpha.
    let admin = hubs[0].login(&alpha, Role::Admin).await;
    let facility = admin.create_facility("Alpha General", 12).await;
    assert_eq!(lease_owner(&db, &alpha).await, "node-1");
    let topic = alpha.beds_topic();
    let start_seq = db.topic_seq(&topic).await;

    // A subscriber on each node.
    let mut watchers = Vec::new();
    for hub in &hubs {
        let mut live = Live::connect(hub, &admin).await;
        assert_eq!(live.subscribe(&topic, None).await["type"], "subscribed");
        watchers.push(live);
    }

    // Twelve desks, four per node, each flipping its own bed between cleaning and free.
    let mut desks = Vec::new();
    for n in 0..12 {
        desks.push(hubs[n % 3].login(&alpha, Role::Nurse).await);
    }
    let acked = Arc::new(AtomicUsize::new(0));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let first_after_kill: Arc<Mutex<Option<Instant>>> = Arc::default();
    let storm = desks.into_iter().enumerate().map(|(n, desk)| {
        let (acked, killed_at, first_after_kill) = (acked.clone(), killed_at.clone(), first_after_kill.clone());
        let (facility, bed) = (facility.id, facility.beds[n]);
        async move {
            let mut tally = Tally::default();
            // Every write is a real change (setting a bed to the status it has is acknowledged
            // without an event): after an answer that leaves the outcome unknown, the desk looks.
            let mut status = "cleaning";
            for _ in 0..40 {
                let sent = Instant::now();
                match desk.set_bed(facility, bed, status).await {
                    Ok(reply) if reply.status == 200 => {
                        tally.acked.push((bed, status.to_owned()));
                        acked.fetch_add(1, Ordering::SeqCst);
                        let killed = *killed_at.lock().expect("lock");
                        if killed.is_some_and(|at| sent > at) {
                            first_after_kill.lock().expect("lock").get_or_insert_with(Instant::now);
                        }
                        status = if status == "cleaning" { "free" } else { "cleaning" };
                    }
                    Ok(reply) if reply.status == 502 && reply.body["error"] == "outcome_unknown" => {
                        tally.unknown += 1;
                        status = if bed_status_via(&desk, facility, bed).await == "cleaning" { "free" } else { "cleaning" };
                    }
                    Ok(reply) if (400..500).contains(&reply.status) || reply.status == 503 => {
                        tally.refused.push((bed, status.to_owned()));
                    }
                    Ok(reply) => panic!("unexpected answer {} {}", reply.status, reply.body),
                    // The desk's own node was the one killed: its client cannot reach it any more
                    // (the request may or may not have been applied).
                    Err(_) => {
                        tally.unknown += 1;
                        break;
                    }
                }
            }
            tally
        }
    });
    let owner = &mut hubs[0];
    let kill = async {
        while acked.load(Ordering::SeqCst) < 60 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        owner.signal(libc::SIGKILL);
        *killed_at.lock().expect("lock") = Some(Instant::now());
    };
    let (tallies, ()) = tokio::join!(join_all(storm), kill);
    hubs[0].kill9().await;

    // Another node took alpha over, within the lease's time (plus the routing's retry pace).
    let new_owner = lease_owner(&db, &alpha).await;
    assert!(new_owner == "node-2" || new_owner == "node-3", "{new_owner}");
    let killed = killed_at.lock().expect("lock").expect("killed");
    let first = first_after_kill.lock().expect("lock").expect("a write succeeded after the kill");
    let takeover = first.duration_since(killed);
    println!("takeover: the first write sent after kill -9 was acknowledged {} ms after it", takeover.as_millis());
    assert!(takeover <= Duration::from_secs(LEASE_TTL_SECS + 3), "served again after {takeover:?}");

    // Every acknowledged change is in the event log; nothing refused was applied.
    let events: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT (data->>'bed_id')::uuid, data->>'to' FROM events WHERE topic = $1 AND topic_seq > $2 ORDER BY topic_seq",
    )
    .bind(&topic)
    .bind(start_seq)
    .fetch_all(&db.pool)
    .await
    .expect("events");
    let unknown: usize = tallies.iter().map(|t| t.unknown).sum();
    let acked_total: usize = tallies.iter().map(|t| t.acked.len()).sum();
    assert!(acked_total >= 100, "the storm went on after the kill: {acked_total} acknowledged");
    for (n, tally) in tallies.iter().enumerate() {
        let bed = facility.beds[n];
        let stored: Vec<&String> = events.iter().filter(|(b, _)| *b == bed).map(|(_, to)| to).collect();
        // A desk waits for each answer, so its acknowledged changes are in the log in order;
        // beyond them, at most the one request whose outcome it could not learn.
        assert!(stored.len() >= tally.acked.len(), "bed {n}: {} stored, {} acknowledged", stored.len(), tally.acked.len());
        assert!(stored.len() <= tally.acked.len() + tally.unknown, "bed {n}: {} stored, {} acknowledged, {} unknown", stored.len(), tally.acked.len(), tally.unknown);
    }
    assert!(events.len() <= acked_total + unknown, "{} events for {acked_total} acknowledged and {unknown} unknown changes", events.len());
    let refused_total: usize = tallies.iter().map(|t| t.refused.len()).sum();
    println!("storm: {acked_total} acknowledged, {refused_total} refused (nothing done), {unknown} with an unknown outcome");

    // The subscribers on the surviving nodes saw every event in order; the one on the killed node
    // resumes on a survivor with `since` and gets exactly the rest.
    let up_to = db.topic_seq(&topic).await;
    for (n, live) in watchers.iter_mut().enumerate().skip(1) {
        let events = live.events((up_to - start_seq) as usize).await;
        assert_in_order_without_gap(&format!("subscriber on node-{}", n + 1), &events, start_seq, up_to);
    }
    let mut gone = watchers.swap_remove(0);
    let mut seen = Vec::new();
    while let Some(message) = gone.next_within(Duration::from_millis(200)).await {
        if message["seq"].as_i64().is_some_and(|seq| seq > 0) && message["type"] != "subscribed" && message["type"] != "snapshot" {
            seen.push(message);
        }
    }
    let last_seen = seen.last().map_or(start_seq, |e| e["seq"].as_i64().expect("seq"));
    assert_in_order_without_gap("subscriber on node-1 before the kill", &seen, start_seq, last_seen);
    let mut resumed = Live::connect(&hubs[1], &admin).await;
    let answer = resumed.subscribe(&topic, Some(last_seen)).await;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    let rest = resumed.events((up_to - last_seen) as usize).await;
    assert_in_order_without_gap("subscriber resumed on node-2", &rest, last_seen, up_to);

    // The new owner reports the takeover; the database agrees with what the hub serves.
    let owner_hub = if new_owner == "node-2" { &hubs[1] } else { &hubs[2] };
    assert_eq!(metric(&owner_hub.metrics().await, "medhub_lease_takeovers_total"), 1.0);
    let detail = hubs[2].login(&alpha, Role::Admin).await.get(&format!("/api/facilities/{}", facility.id)).await.expect("reply").ok();
    let served: BTreeMap<String, String> = detail["wards"][0]["beds"]
        .as_array()
        .expect("beds")
        .iter()
        .map(|bed| (bed["id"].as_str().expect("id").to_owned(), bed["status"].as_str().expect("status").to_owned()))
        .collect();
    for (n, bed) in facility.beds.iter().enumerate() {
        let last = events.iter().rev().find(|(b, _)| b == bed).map_or("free".to_owned(), |(_, to)| to.clone());
        assert_eq!(served[&bed.to_string()], last, "bed {n}: the recovered actor serves the last committed status");
    }

    // A graceful stop (SIGTERM) of the new owner hands the tenant over at once: the lease is
    // released as the node stops, not left to expire, and the last node serves alpha.
    let (owner_index, survivor) = if new_owner == "node-2" { (1, 2) } else { (2, 1) };
    let exit = hubs[owner_index].terminate().await;
    assert!(exit.success(), "{exit:?}");
    let released: bool = sqlx::query_scalar("SELECT expires_at <= now() FROM tenant_leases WHERE tenant_id = $1")
        .bind(alpha.id)
        .fetch_one(&db.pool)
        .await
        .expect("lease");
    assert!(released, "a node that stops gracefully releases its leases");
    let last_desk = hubs[survivor].login(&alpha, Role::Nurse).await;
    let reply = last_desk.set_bed(facility.id, facility.beds[0], "out_of_service").await.expect("reply");
    assert_eq!((reply.status, reply.served_by.as_deref()), (200, None), "{reply:?}");
    assert_eq!(lease_owner(&db, &alpha).await, format!("node-{}", survivor + 1));
}

/// A bed's status as the hub serves it, asked through `desk`'s node (retried while the tenant
/// moves between nodes).
async fn bed_status_via(desk: &Api, facility: Uuid, bed: Uuid) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = desk.get(&format!("/api/facilities/{facility}")).await.expect("reply");
        if reply.status == 200 {
            let beds = reply.body["wards"][0]["beds"].as_array().expect("beds").clone();
            let found = beds.iter().find(|b| b["id"] == json!(bed)).expect("the bed");
            return found["status"].as_str().expect("status").to_owned();
        }
        assert!(Instant::now() < deadline, "the facility is not served again: {} {}", reply.status, reply.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
