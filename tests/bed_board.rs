//! The live bed board under load, as nurses on many wards use it at once: every acknowledged change
//! is in the database and the audit trail, and every watching screen sees every change exactly
//! once, in order. A screen that was away catches up with exactly what it missed.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{HubOptions, Live, World};
use futures_util::future::join_all;
use medhub_actors::Role;
use serde_json::Value;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_changes_are_committed_audited_and_delivered_in_order() {
    let world = World::start(50).await;
    let second = world.admin.create_facility("Alpha North", 50).await;
    let facilities = [world.facility.clone(), second];

    // Three screens watch the board from the start (each after its snapshot).
    let mut screens = Vec::new();
    for role in [Role::Nurse, Role::Dispatcher, Role::Doctor] {
        let api = world.hub.login(&world.tenant, role).await;
        let mut live = Live::connect(&world.hub, &api).await;
        assert_eq!(live.subscribe(&world.tenant.beds_topic(), None).await["type"], "subscribed");
        let snapshot = live.next().await;
        assert_eq!(snapshot["type"], "snapshot");
        screens.push((live, snapshot["seq"].as_i64().unwrap()));
    }
    let start_seq = screens[0].1;

    // 20 nurse sessions send 200 changes at once: two per bed, to statuses that differ from each
    // other and from "free", so each is a real change whichever lands first.
    let mut nurses = Vec::new();
    for _ in 0..20 {
        nurses.push(world.hub.login(&world.tenant, Role::Nurse).await);
    }
    let mut requests = Vec::new();
    for (n, (facility, bed)) in facilities.iter().flat_map(|f| f.beds.iter().map(move |b| (f.id, *b))).enumerate() {
        for (k, status) in ["cleaning", "out_of_service"].into_iter().enumerate() {
            let nurse = nurses[(2 * n + k) % nurses.len()].clone();
            requests.push(async move { (bed, status, nurse.set_bed(facility, bed, status).await.unwrap()) });
        }
    }
    assert_eq!(requests.len(), 200);
    let replies = join_all(requests).await;

    let mut acknowledged: BTreeMap<i64, (Uuid, &str)> = BTreeMap::new();
    for (bed, status, reply) in &replies {
        let body = reply.clone().ok();
        assert_eq!(body["bed"]["status"], *status);
        let seq = body["seq"].as_i64().expect("every change committed an event");
        assert!(acknowledged.insert(seq, (*bed, status)).is_none(), "seq {seq} acknowledged twice");
    }
    let seqs: Vec<i64> = acknowledged.keys().copied().collect();
    assert_eq!(seqs, ((start_seq + 1)..=(start_seq + 200)).collect::<Vec<_>>(), "acknowledged seqs have no gap");

    // Every screen saw exactly these 200 events, in seq order, with the acknowledged content.
    for (live, _) in &mut screens {
        let events = live.events(200).await;
        let received: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert_eq!(received, seqs, "in order, no duplicate, no gap");
        for event in &events {
            let (bed, status) = acknowledged[&event["seq"].as_i64().unwrap()];
            assert_eq!(event["type"], "bed.status_changed");
            assert_eq!(event["data"]["bed_id"], bed.to_string());
            assert_eq!(event["data"]["to"], status);
        }
    }

    // The database holds every change: the event log, the bed rows and the audit trail agree.
    let pool = &world.db.pool;
    let logged: Vec<(i64, Value)> = sqlx::query_as("SELECT topic_seq, data FROM events WHERE topic = $1 AND topic_seq > $2 ORDER BY topic_seq")
        .bind(world.tenant.beds_topic())
        .bind(start_seq)
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(logged.len(), 200);
    let mut last_status: HashMap<Uuid, &str> = HashMap::new();
    for (seq, data) in &logged {
        let (bed, status) = acknowledged[seq];
        assert_eq!(data["bed_id"], bed.to_string());
        last_status.insert(bed, status);
    }
    let rows: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, status FROM beds WHERE tenant_id = $1").bind(world.tenant.id).fetch_all(pool).await.unwrap();
    assert_eq!(rows.len(), 100);
    for (bed, status) in rows {
        assert_eq!(status, last_status[&bed], "bed {bed} shows its last committed change");
    }
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action = 'bed.status_change' AND outcome = 'success'",
    )
    .bind(world.tenant.id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(audited, 200);
    let verified = world.admin.get("/api/audit/verify").await.unwrap().ok();
    assert_eq!(verified["ok"], true, "{verified}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screen_that_resubscribes_with_since_gets_exactly_what_it_missed() {
    let world = World::start_with(6, |options: HubOptions| options.arg("--ws-replay-limit", 10)).await;
    let (hub, nurse, facility) = (&world.hub, &world.nurse, &world.facility);
    let topic = world.tenant.beds_topic();

    let mut live = Live::connect(hub, nurse).await;
    live.subscribe(&topic, None).await;
    let snapshot = live.next().await;
    let seen = snapshot["seq"].as_i64().unwrap();
    nurse.set_bed(facility.id, facility.beds[0], "cleaning").await.unwrap().ok();
    let first = live.events(1).await.remove(0);
    assert_eq!(first["seq"].as_i64().unwrap(), seen + 1);
    drop(live); // the screen goes away (a laptop lid closes)

    let mut missed = Vec::new();
    for (bed, status) in [(1, "cleaning"), (2, "out_of_service"), (0, "free"), (3, "cleaning"), (1, "free")] {
        missed.push(nurse.set_bed(facility.id, facility.beds[bed], status).await.unwrap().ok()["seq"].as_i64().unwrap());
    }

    let mut live = Live::connect(hub, nurse).await;
    let subscribed = live.subscribe(&topic, Some(seen + 1)).await;
    assert_eq!(subscribed["type"], "subscribed");
    assert_eq!(subscribed["seq"].as_i64().unwrap(), *missed.last().unwrap());
    let replayed = live.events(5).await;
    assert_eq!(replayed.iter().map(|e| e["seq"].as_i64().unwrap()).collect::<Vec<_>>(), missed);
    assert_eq!(replayed[1]["data"]["to"], "out_of_service");
    // Then live events follow without a gap or a repeat.
    let next = nurse.set_bed(facility.id, facility.beds[4], "cleaning").await.unwrap().ok()["seq"].as_i64().unwrap();
    let live_event = live.next().await;
    assert_eq!(live_event["seq"].as_i64().unwrap(), next);
    assert_eq!(next, missed.last().unwrap() + 1);

    // Away for longer than the replay limit (10): a fresh snapshot instead of a flood.
    let since = next;
    for round in 0..6 {
        for bed in [0, 5] {
            let status = if round % 2 == 0 { "cleaning" } else { "free" };
            nurse.set_bed(facility.id, facility.beds[bed], status).await.unwrap().ok();
        }
    }
    let mut late = Live::connect(hub, nurse).await;
    late.subscribe(&topic, Some(since)).await;
    let fresh = late.next().await;
    assert_eq!(fresh["type"], "snapshot", "{fresh}");
    assert_eq!(fresh["seq"].as_i64().unwrap(), since + 12);
    let beds = &fresh["data"]["facilities"][0]["wards"][0]["beds"];
    assert_eq!(beds[0]["status"], "free");
    assert_eq!(beds[4]["status"], "cleaning");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_occupies_one_bed_at_a_time_across_facilities() {
    let world = World::start(2).await;
    let other = world.admin.create_facility("Alpha North", 1).await;
    let patient = Uuid::new_v4();
    let occupy = |facility: Uuid, bed: Uuid| {
        let nurse = world.nurse.clone();
        async move {
            nurse.put(&format!("/api/facilities/{facility}/beds/{bed}/status"), serde_json::json!({"status": "occupied", "patient_id": patient})).await.unwrap()
        }
    };
    occupy(world.facility.id, world.facility.beds[0]).await.ok();
    let same_facility = occupy(world.facility.id, world.facility.beds[1]).await;
    assert_eq!(same_facility.status, 409, "{}", same_facility.body);
    let elsewhere = occupy(other.id, other.beds[0]).await;
    assert_eq!(elsewhere.status, 409, "{}", elsewhere.body);
    assert!(elsewhere.body["detail"].as_str().unwrap().contains("discharge"));
    // Discharged, they may be admitted elsewhere.
    world.nurse.set_bed(world.facility.id, world.facility.beds[0], "cleaning").await.unwrap().ok();
    occupy(other.id, other.beds[0]).await.ok();
}
