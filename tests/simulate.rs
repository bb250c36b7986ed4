//! The simulator a demo runs, as a dispatcher watching it would see it: `hub simulate` (a separate
//! process with its own MQTT clients) registers its units, they appear on the map, and an incident
//! near them is answered by one of them on its own: acknowledged, on scene, transporting, arrived
//! (the hub's geofence) and closed, without anyone touching the units.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{hub_binary, Api, World, PASSWORD};
use medhub_actors::Role;


/// The simulator process; killed when the story ends, however it ends.
struct Simulator(Child);

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The simulator's units with their positions, once all `count` have reported one.
async fn simulated_units_on_the_map(api: &Api, simulator: &mut Simulator, count: usize) -> Vec<(String, f64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = simulator.0.try_wait().expect("simulator status") {
            panic!("the simulator exited early ({status})");
        }
        let listed = api.get("/api/ambulances").await.unwrap().ok();
        let mut placed = Vec::new();
        for unit in listed["ambulances"].as_array().unwrap().iter().filter(|u| u["call_sign"].as_str().unwrap().starts_with("SIM-")) {
            let id = unit["id"].as_str().unwrap();
            let detail = api.get(&format!("/api/ambulances/{id}")).await.unwrap().ok();
            if let (Some(lat), Some(lon)) = (detail["position"]["position"]["lat"].as_f64(), detail["position"]["position"]["lon"].as_f64()) {
                placed.push((id.to_owned(), lat, lon));
            }
        }
        if placed.len() == count {
            return placed;
        }
        assert!(Instant::now() < deadline, "only {} of {count} simulated units have a position: {listed}", placed.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_units_appear_on_the_map_and_answer_an_incident_all_the_way_to_the_hospital() {
    let world = World::start_with(1, |options| options.arg("--mqtt-listen", "127.0.0.1:0").arg("--dispatch-ack-timeout-secs", 5)).await;
    let addr = world.hub.mqtt_addr().await;
    let admin = &world.admin;

    let child = Command::new(hub_binary())
        .args(["simulate", "--units", "3", "--rate", "2", "--duration", "60", "--hub", &world.hub.url, "--mqtt", &addr.to_string()])
        .args(["--tenant", "alpha", "--admin-email", "admin@alpha.test"])
        .env("MEDHUB_SIM_ADMIN_PASSWORD", PASSWORD)
        .env_remove("MEDHUB_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("MEDHUB_TEST_ECHO").is_some() { Stdio::inherit() } else { Stdio::null() })
        .spawn()
        .expect("run hub simulate");
    let mut simulator = Simulator(child);

    let units = simulated_units_on_the_map(admin, &mut simulator, 3).await;
    let (_, lat, lon) = units[0].clone();
    // The scene about 100 m from a unit, an emergency department about 300 m from the scene: at
    // the simulator's 50 km/h the whole mission takes about half a minute.
    let scene = (lat + 0.0007, lon + 0.0005);
    let hospital = admin
        .post("/api/facilities", json!({"name": "Alpha Emergency", "kind": "hospital", "location": {"lat": scene.0 + 0.002, "lon": scene.1 + 0.0015},
                                       "timezone": "Africa/Nairobi", "wards": [{"name": "Emergency", "kind": "emergency", "beds": ["E1"]}]}))
        .await
        .unwrap()
        .expect(201);

    let dispatcher = world.hub.login(&world.tenant, Role::Dispatcher).await;
    let incident = dispatcher
        .post("/api/incidents", json!({"location": {"lat": scene.0, "lon": scene.1}, "priority": "critical", "description": "SOS: fall from a ladder"}))
        .await
        .unwrap()
        .expect(201);
    let id = incident["id"].as_str().unwrap().to_owned();
    assert_eq!(incident["status"], "dispatched", "{incident}");
    assert!(units.iter().any(|(unit, ..)| incident["unit_id"] == unit.as_str()), "a simulated unit is sent: {incident}");
    assert_eq!(incident["destination_id"], hospital["id"]);

    // Nobody touches the unit from here on: the simulator works the mission.
    let deadline = Instant::now() + Duration::from_secs(50);
    let mut seen: Vec<String> = Vec::new();
    loop {
        let all = dispatcher.get("/api/incidents?all=true").await.unwrap().ok();
        let current = all["incidents"].as_array().unwrap().iter().find(|i| i["id"] == id.as_str()).cloned().unwrap_or(Value::Null);
        let status = current["status"].as_str().unwrap_or("missing").to_owned();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "closed" {
            break;
        }
        assert!(Instant::now() < deadline, "the incident never closed; statuses seen {seen:?}: {current}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let timeline = dispatcher.get(&format!("/api/incidents/{id}/timeline")).await.unwrap().ok();
    let steps: Vec<&str> = timeline["timeline"].as_array().unwrap().iter().map(|s| s["type"].as_str().unwrap()).collect();
    assert_eq!(steps, [
        "incident.created", "incident.dispatched", "incident.acknowledged", "incident.on_scene",
        "incident.transporting", "incident.at_hospital", "incident.closed",
    ]);
    let unit = incident["unit_id"].as_str().unwrap();
    let free = admin.get(&format!("/api/ambulances/{unit}")).await.unwrap().ok();
    assert_eq!(free["status"], "available", "the unit is free again: {free}");
    let track = admin.get(&format!("/api/ambulances/{unit}/track")).await.unwrap().ok();
    assert!(track["points"].as_array().unwrap().len() > 20, "the drive is on the unit's track: {track}");

    drop(simulator);
}
