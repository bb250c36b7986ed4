//! Ambulance units as a dispatcher manages them: registered, watched on the live map, moved
//! through their mission's statuses (and only along them), every change audited.

mod common;

use common::{Live, World};
use medhub_actors::Role;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_follows_its_mission_on_the_live_map() {
    let world = World::start(2).await;
    let dispatcher = world.hub.login(&world.tenant, Role::Dispatcher).await;
    let mut map = Live::connect(&world.hub, &dispatcher).await;
    let topic = format!("tenant/{}/map", world.tenant.slug);
    assert_eq!(map.subscribe(&topic, None).await["type"], "subscribed");
    let snapshot = map.next().await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["data"]["facilities"].as_array().unwrap().len(), 1);

    let unit = world.admin.post("/api/ambulances", json!({"call_sign": "amb-07"})).await.unwrap().expect(201);
    assert_eq!((unit["call_sign"].as_str(), unit["status"].as_str()), (Some("AMB-07"), Some("available")));
    let id = unit["id"].as_str().unwrap().to_owned();
    assert_eq!(map.next().await["type"], "unit.registered");
    let taken = world.admin.post("/api/ambulances", json!({"call_sign": "AMB-07"})).await.unwrap();
    assert_eq!(taken.status, 409);
    let bad = world.admin.post("/api/ambulances", json!({"call_sign": "a b"})).await.unwrap();
    assert_eq!((bad.status, bad.body["field"].as_str()), (400, Some("call_sign")));

    // Along the mission, not across it.
    let skip = dispatcher.put(&format!("/api/ambulances/{id}/status"), json!({"status": "transporting"})).await.unwrap();
    assert_eq!(skip.status, 409, "{}", skip.body);
    for status in ["dispatched", "en_route", "on_scene", "transporting", "at_hospital", "available"] {
        let unit = dispatcher.put(&format!("/api/ambulances/{id}/status"), json!({"status": status})).await.unwrap().ok();
        assert_eq!(unit["status"], status);
        let event = map.next().await;
        assert_eq!((event["type"].as_str(), event["data"]["to"].as_str()), (Some("unit.status_changed"), Some(status)));
    }
    let unknown = dispatcher.put(&format!("/api/ambulances/{id}/status"), json!({"status": "flying"})).await.unwrap();
    assert_eq!((unknown.status, unknown.body["field"].as_str()), (400, Some("status")));
    assert_eq!(world.nurse.put(&format!("/api/ambulances/{id}/status"), json!({"status": "out_of_service"})).await.unwrap().status, 403);

    // A new map subscriber starts from the unit as it is; the trail has every change.
    let mut late = Live::connect(&world.hub, &dispatcher).await;
    late.subscribe(&topic, None).await;
    let snapshot = late.next().await;
    assert_eq!(snapshot["data"]["units"][0]["status"], "available");
    let trail = world.admin.get(&format!("/api/audit?action=ambulance.status&resource_id={id}")).await.unwrap().ok();
    assert_eq!(trail["entries"].as_array().unwrap().len(), 6);
    let track = dispatcher.get(&format!("/api/ambulances/{id}/track")).await.unwrap().ok();
    assert_eq!(track["points"].as_array().unwrap().len(), 0);
    let patient = world.hub.login(&world.tenant, Role::Patient).await;
    let mut refused = Live::connect(&world.hub, &patient).await;
    assert_eq!(refused.subscribe(&topic, None).await["error"], "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_with_no_unit_in_reach_is_unassigned_and_can_be_cancelled() {
    let world = World::start(2).await;
    let dispatcher = world.hub.login(&world.tenant, Role::Dispatcher).await;
    // A unit without any position yet cannot be estimated, so it is not sent.
    world.admin.post("/api/ambulances", json!({"call_sign": "AMB-01"})).await.unwrap().expect(201);
    let incident = dispatcher
        .post("/api/incidents", json!({"location": {"lat": -1.30, "lon": 36.81}, "priority": "critical", "description": "collapsed at bus stop"}))
        .await
        .unwrap()
        .expect(201);
    assert_eq!(incident["status"], "unassigned", "{incident}");
    let id = incident["id"].as_str().unwrap();
    let timeline = dispatcher.get(&format!("/api/incidents/{id}/timeline")).await.unwrap().ok();
    let steps: Vec<&str> = timeline["timeline"].as_array().unwrap().iter().map(|s| s["type"].as_str().unwrap()).collect();
    assert_eq!(steps, ["incident.created", "incident.unassigned"]);
    let cancelled = dispatcher.post(&format!("/api/incidents/{id}/cancel"), json!({"reason": "caller recovered"})).await.unwrap().ok();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(dispatcher.get("/api/incidents").await.unwrap().ok()["incidents"].as_array().unwrap().len(), 0);

    for (body, field) in [
        (json!({"location": {"lat": 91, "lon": 0}, "priority": "urgent", "description": "x"}), "location"),
        (json!({"location": {"lat": 0, "lon": 0}, "priority": "whenever", "description": "x"}), "priority"),
        (json!({"location": {"lat": 0, "lon": 0}, "priority": "urgent", "description": " "}), "description"),
    ] {
        let refused = dispatcher.post("/api/incidents", body).await.unwrap();
        assert_eq!((refused.status, refused.body["field"].as_str()), (400, Some(field)), "{}", refused.body);
    }
    assert_eq!(world.nurse.post("/api/incidents", json!({})).await.unwrap().status, 403);
}
