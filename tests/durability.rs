//! Nothing acknowledged is ever lost: not across a graceful restart (SIGTERM, even in the middle of
//! a burst of changes), not across kill -9. After either, the bed board is what was acknowledged,
//! and the actors, recovered from snapshot + events, agree with it.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{spawn_hub_with, Api, HubOptions, World};
use medhub_actors::Role;
use serde_json::Value;
use uuid::Uuid;

const SNAPSHOT_EVERY: i64 = 4;

fn options(world_db: &common::TestDb) -> HubOptions {
    HubOptions::serve(world_db).arg("--snapshot-every", SNAPSHOT_EVERY)
}

/// What each acknowledged change said: topic seq → (bed, status).
type Acknowledged = BTreeMap<i64, (Uuid, String)>;

/// `clients` nurses (all logged in before the first change) each change their own bed
/// `per_client` times, one change after another, until a request fails; returns what was
/// acknowledged and how many requests were sent. `acked_count` counts acknowledgements live.
async fn storm(world: &World, clients: usize, per_client: usize, acked_count: Arc<AtomicUsize>) -> (Acknowledged, usize) {
    let mut nurses = Vec::new();
    for _ in 0..clients {
        nurses.push(world.hub.login(&world.tenant, Role::Nurse).await);
    }
    let mut tasks = Vec::new();
    for (client, api) in nurses.into_iter().enumerate() {
        let facility = world.facility.clone();
        let acked_count = acked_count.clone();
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut sent) = (Vec::new(), 0usize);
            let bed = facility.beds[client % facility.beds.len()];
            for round in 0..per_client {
                let status = ["cleaning", "free", "out_of_service", "free"][round % 4];
                sent += 1;
                match api.set_bed(facility.id, bed, status).await {
                    Ok(reply) if reply.status == 200 => {
                        // A null seq: the bed already had that status, nothing was committed.
                        if let Some(seq) = reply.body["seq"].as_i64() {
                            acked.push((seq, bed, status.to_owned()));
                        }
                        acked_count.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => break, // the hub went away (or answered 503 while stopping)
                }
            }
            (acked, sent)
        }));
    }
    let mut acknowledged = Acknowledged::new();
    let mut sent = 0;
    for task in tasks {
        let (acked, count) = task.await.unwrap();
        sent += count;
        for (seq, bed, status) in acked {
            assert!(acknowledged.insert(seq, (bed, status)).is_none(), "seq {seq} acknowledged twice");
        }
    }
    (acknowledged, sent)
}

async fn wait_for(count: &AtomicUsize, at_least: usize) {
    while count.load(Ordering::SeqCst) < at_least {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every acknowledged change is in the event log as acknowledged; the event log holds no more
/// changes than were sent; the bed rows show the last logged change of each bed.
async fn assert_nothing_lost(world: &World, api: &Api, acknowledged: &Acknowledged, sent: usize, before: i64) {
    let logged: BTreeMap<i64, Value> = sqlx::query_as::<_, (i64, Value)>("SELECT topic_seq, data FROM events WHERE topic = $1 AND topic_seq > $2 AND event_type = 'bed.status_changed'",
    )
        .bind(world.tenant.beds_topic())
        .bind(before)
        .fetch_all(&world.db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    for (seq, (bed, status)) in acknowledged {
        let event = logged.get(seq).unwrap_or_else(|| panic!("acknowledged change {seq} was lost"));
        assert_eq!(event["bed_id"], bed.to_string());
        assert_eq!(event["to"], status.as_str());
    }
    assert!(logged.len() <= sent, "{} changes logged but only {sent} were sent", logged.len());

    // The actor recovered from snapshot + events and the projection agree bed by bed.
    let from_actor = api.get(&format!("/api/facilities/{}", world.facility.id)).await.unwrap().ok();
    let board = api.get("/api/beds").await.unwrap().ok();
    assert_eq!(from_actor["wards"], board["facilities"][0]["wards"]);
    assert_eq!(from_actor["version"], board["facilities"][0]["version"]);
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for data in logged.values() {
        last.insert(data["bed_id"].as_str().unwrap().to_owned(), data["to"].as_str().unwrap().to_owned());
    }
    for bed in from_actor["wards"][0]["beds"].as_array().unwrap() {
        if let Some(status) = last.get(bed["id"].as_str().unwrap()) {
            assert_eq!(bed["status"], status.as_str());
        }
    }
    let verified = api.get("/api/audit/verify").await.unwrap().ok();
    assert_eq!(verified["ok"], true, "{verified}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_changes_and_the_restarted_hub_shows_the_same_board() {
    let mut world = World::start_with(8, |o| o.arg("--snapshot-every", SNAPSHOT_EVERY)).await;
    for (bed, status) in [(0, "cleaning"), (1, "out_of_service"), (2, "cleaning"), (0, "free"), (5, "cleaning")] {
        world.nurse.set_bed(world.facility.id, world.facility.beds[bed], status).await.unwrap().ok();
    }
    let board_before = world.nurse.get("/api/beds").await.unwrap().ok();

    // A quiet restart: the board is identical.
    assert!(world.hub.terminate().await.success(), "the hub exits 0 after SIGTERM");
    world.hub = spawn_hub_with(options(&world.db)).await;
    let nurse = world.hub.login(&world.tenant, Role::Nurse).await;
    let board_after = nurse.get("/api/beds").await.unwrap().ok();
    assert_eq!(board_after, board_before);
    let from_actor = nurse.get(&format!("/api/facilities/{}", world.facility.id)).await.unwrap().ok();
    assert_eq!(from_actor["wards"], board_before["facilities"][0]["wards"]);

    // SIGTERM in the middle of a burst: the hub exits cleanly and every acknowledged change stays.
    let before = board_after["seq"].as_i64().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let burst = {
        let count = count.clone();
        let world = &world;
        async move { storm(world, 8, 40, count).await }
    };
    let terminate = async {
        wait_for(&count, 40).await;
        world.hub.signal(libc::SIGTERM);
    };
    let ((acknowledged, sent), ()) = tokio::join!(burst, terminate);
    assert!(acknowledged.len() >= 40);
    assert!(world.hub.wait_exit(Duration::from_secs(60)).await.success(), "the hub exits 0 after SIGTERM");
    world.hub = spawn_hub_with(options(&world.db)).await;
    let admin = world.hub.login(&world.tenant, Role::Admin).await;
    assert_nothing_lost(&world, &admin, &acknowledged, sent, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_no_acknowledged_change() {
    let mut world = World::start_with(9, |o| o.arg("--snapshot-every", SNAPSHOT_EVERY)).await;
    let count = Arc::new(AtomicUsize::new(0));
    let burst = {
        let count = count.clone();
        let world = &world;
        async move { storm(world, 8, 60, count).await }
    };
    let kill = async {
        wait_for(&count, 60).await;
        world.hub.signal(libc::SIGKILL);
    };
    let ((acknowledged, sent), ()) = tokio::join!(burst, kill);
    assert!(acknowledged.len() >= 60 && sent > acknowledged.len(), "the kill landed mid-burst ({} of {sent})", acknowledged.len());

    world.hub.kill9().await;
    world.hub = spawn_hub_with(options(&world.db)).await;
    let admin = world.hub.login(&world.tenant, Role::Admin).await;
    assert_nothing_lost(&world, &admin, &acknowledged, sent, 0).await;

    // And the recovered actor takes new commands from where it was (bed 8 was not in the burst).
    let version = admin.get(&format!("/api/facilities/{}", world.facility.id)).await.unwrap().ok()["version"].as_i64().unwrap();
    let next = admin.set_bed(world.facility.id, world.facility.beds[8], "cleaning").await.unwrap().ok();
    assert_eq!(next["version"].as_i64().unwrap(), version + 1);
}
