//! A bug in an actor's handler must not take the bed board down or lose what was acknowledged: the
//! supervisor restarts the actor, it resumes from its committed state, and operations can see it.

mod common;

use common::{metric, Live, World};
use serde_json::Value;

fn bed_statuses(facility: &Value) -> Vec<(String, String)> {
    facility["wards"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|ward| ward["beds"].as_array().unwrap().iter())
        .map(|bed| (bed["id"].as_str().unwrap().to_owned(), bed["status"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_facility_actor_is_restarted_with_exactly_its_acknowledged_state() {
    let world = World::start_with(6, |options| options.arg("--enable-fault-injection", true).arg("--snapshot-every", 3)).await;
    let (hub, nurse, admin, facility) = (&world.hub, &world.nurse, &world.admin, &world.facility);
    let path = format!("/api/facilities/{}", facility.id);

    for (bed, status) in [(0, "cleaning"), (1, "out_of_service"), (2, "cleaning"), (0, "free"), (3, "cleaning")] {
        nurse.set_bed(facility.id, facility.beds[bed], status).await.unwrap().ok();
    }
    let acknowledged = nurse.get(&path).await.unwrap().ok();
    assert_eq!(acknowledged["version"], 6);
    assert_eq!(metric(&hub.metrics().await, "medhub_actor_restarts_total{actor=\"facility\"}"), 0.0);

    let mut live = Live::connect(hub, nurse).await;
    live.subscribe(&world.tenant.beds_topic(), None).await;
    live.next().await; // snapshot

    // The handler panics halfway through a transaction (it had already marked every bed out of service).
    let crashed = admin.post(&format!("{path}/fault/panic"), Value::Null).await.unwrap();
    assert_eq!(crashed.status, 503, "{}", crashed.body);
    assert_eq!(crashed.body["error"], "unavailable");
    assert!(crashed.body["detail"].as_str().unwrap().contains("restarted"), "{}", crashed.body);

    // The next command succeeds against exactly the acknowledged state.
    let next = nurse.set_bed(facility.id, facility.beds[5], "cleaning").await.unwrap().ok();
    assert_eq!(next["version"], 7);
    let recovered = nurse.get(&path).await.unwrap().ok();
    let mut expected = bed_statuses(&acknowledged);
    expected[5].1 = "cleaning".to_owned();
    assert_eq!(bed_statuses(&recovered), expected);
    let board = nurse.get("/api/beds").await.unwrap().ok();
    assert_eq!(bed_statuses(&board["facilities"][0]), expected, "the aborted transaction left no trace");

    // Watching screens saw nothing of the crash, and the change after it.
    let event = live.next().await;
    assert_eq!(event["data"]["bed_id"], facility.beds[5].to_string());

    let metrics = hub.metrics().await;
    assert_eq!(metric(&metrics, "medhub_actor_restarts_total{actor=\"facility\"}"), 1.0);
    assert_eq!(metric(&metrics, "medhub_ws_connections"), 1.0);
    assert!(metric(&metrics, "medhub_commit_seconds_count{actor=\"facility\"}") >= 7.0, "{metrics}");
    assert!(
        metric(&metrics, "medhub_http_requests_total{method=\"PUT\",route=\"/api/facilities/{id}/beds/{bed_id}/status\",status=\"200\"}") >= 6.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "medhub_http_requests_total{method=\"POST\",route=\"/api/facilities/{id}/fault/panic\",status=\"503\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_is_off_unless_enabled() {
    let world = World::start(1).await;
    let refused = world.admin.post(&format!("/api/facilities/{}/fault/panic", world.facility.id), Value::Null).await.unwrap();
    assert_eq!(refused.status, 404);
}
