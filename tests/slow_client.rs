//! One screen on a bad link must never slow the others: a client that stops reading is cut off
//! (told `too_slow` and disconnected) while everyone else keeps receiving every event.

mod common;

use std::time::Duration;

use common::{metric, Live, World};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_the_others_get_everything() {
    let world = World::start_with(2, |options| options.arg("--ws-queue-capacity", 4)).await;
    let (hub, admin, nurse, facility) = (&world.hub, &world.admin, &world.nurse, &world.facility);
    let topic = world.tenant.beds_topic();

    // Two screens stop reading: one comes back soon, the other never does.
    let mut stalled = Live::connect_with_small_buffer(hub, nurse).await;
    stalled.subscribe(&topic, None).await;
    assert_eq!(stalled.next().await["type"], "snapshot");
    let mut gone = Live::connect_with_small_buffer(hub, nurse).await;
    gone.subscribe(&topic, None).await;
    assert_eq!(gone.next().await["type"], "snapshot");
    let mut healthy = Live::connect(hub, nurse).await;
    healthy.subscribe(&topic, None).await;
    assert_eq!(healthy.next().await["type"], "snapshot");

    // Large events (each ward.added carries the whole facility) fill the network buffers, then
    // small ones fill the queues; the stalled screen reads nothing meanwhile.
    let mut published = 0usize;
    let mut cut_off = false;
    for n in 1..=90 {
        let reply = if n <= 20 {
            let beds: Vec<String> = (1..=400).map(|b| format!("W{n}-{b}")).collect();
            admin.post(&format!("/api/facilities/{}/wards", facility.id), json!({"name": format!("Ward {n}"), "kind": "general", "beds": beds})).await
        } else {
            nurse.set_bed(facility.id, facility.beds[n % 2], if n % 4 < 2 { "cleaning" } else { "free" }).await
        };
        // A bed already in the asked status changes nothing and publishes nothing.
        let body = reply.unwrap().ok();
        if n <= 20 || body["seq"].is_i64() {
            published += 1;
        }
        if metric(&hub.metrics().await, "medhub_ws_slow_disconnects_total") >= 2.0 {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "the stalled clients were not cut off after {published} events");

    // The healthy screen got every event, in order, while the other one was stuck.
    let events = tokio::time::timeout(Duration::from_secs(60), healthy.events(published)).await.expect("healthy screen keeps up");
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "no gap for the healthy screen");

    // The screen that reads again soon finds the reason and the end of the connection.
    let mut told = false;
    while let Some(message) = stalled.next_within(Duration::from_secs(20)).await {
        if message["type"] == "error" {
            assert_eq!(message["error"], "too_slow", "{message}");
            told = true;
        }
    }
    assert!(told, "the stalled client is told why it was disconnected");

    // The one that never reads again does not hold a connection slot for ever.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(&hub.metrics().await, "medhub_ws_connections") > 1.0 {
        assert!(std::time::Instant::now() < deadline, "a client that never reads again is still connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(gone);
}
