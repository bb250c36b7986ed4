//! A hospital group scales out: two hub nodes on one database, both clients of one mosquitto.
//! They join the broker's MQTT 5 shared subscription, so the broker hands each of a unit's
//! messages to one of them; a fix given to the node that does not serve the unit's tenant is handed
//! over to the one that does. Every fix the unit's tracker sent is on its track exactly once, both
//! nodes took a share of the stream, and a node that stops hands its share back to the group
//! without losing a fix on the way.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use common::{metric, spawn_hub_with, Api, Hub, HubOptions, Mosquitto, TestDb, HUB_BROKER_LOGIN};
use medhub_actors::Role;

/// Fixes the tracker sends while both nodes serve; then as many again while one of them stops.
const FIXES: usize = 200;
const ACCEPTED_GPS: &str = "medhub_mqtt_accepted_total{kind=\"gps\"}";

/// A hub node named `name`, reading device telemetry from `broker` in the default share group.
async fn node(db: &TestDb, broker: &Mosquitto, name: &str) -> Hub {
    let options = HubOptions { data_dir: Some(db.scratch(name)), ..HubOptions::serve(db) }.arg("--node-id", name).arg("--mqtt-broker-url", broker.hub_url());
    spawn_hub_with(options).await
}

/// Waits until the node says it joined the shared subscription (panics after 15 s).
async fn joined_the_group(hub: &Hub) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !hub.logs().contains("subscribed to device telemetry") {
        assert!(Instant::now() < deadline, "the node never subscribed to device telemetry:\n{}", hub.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A unit's tracker, an MQTT 3.1.1 client of the broker: `pubacks` counts the broker's PUBACKs.
struct Tracker {
    client: AsyncClient,
    topic: String,
    pubacks: mpsc::UnboundedReceiver<()>,
}

impl Tracker {
    /// Connects with the device's credentials, as soon as the broker knows them (it reloads its
    /// files after the device was registered).
    async fn connect(broker: &Mosquitto, tenant: &str, unit: Uuid, device: &serde_json::Value) -> Tracker {
        let (username, password) = (device["username"].as_str().unwrap(), device["password"].as_str().unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut options = MqttOptions::new(format!("tracker-{}", Uuid::new_v4().simple()), "127.0.0.1", broker.port);
            options.set_credentials(username, password);
            options.set_keep_alive(Duration::from_secs(30));
            let (client, mut eventloop) = AsyncClient::new(options, 2 * FIXES);
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await.expect("CONNACK within 10 s") {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let (sender, pubacks) = mpsc::unbounded_channel();
                    tokio::spawn(async move {
                        while let Ok(event) = eventloop.poll().await {
                            if matches!(event, Event::Incoming(Packet::PubAck(_))) && sender.send(()).is_err() {
                                return;
                            }
                        }
                    });
                    return Tracker { client, topic: format!("medhub/{tenant}/ambulance/{unit}/gps"), pubacks };
                }
                Ok(other) => panic!("expected a CONNACK from the broker, got {other:?}"),
                Err(ConnectionError::ConnectionRefused(code)) => {
                    assert!(Instant::now() < deadline, "mosquitto never let the tracker in: {code:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("the tracker cannot reach the broker: {error}"),
            }
        }
    }

    /// Publishes one fix per time at QoS 1 and waits until the broker acknowledged them all.
    async fn report(&mut self, fix_times: &[DateTime<Utc>]) {
        for (index, fix_time) in fix_times.iter().enumerate() {
            let fix = json!({"lat": -1.29 + index as f64 * 1e-4, "lon": 36.82, "speed": 11.5, "heading": 90, "accuracy": 5,
                             "fix_time": fix_time.to_rfc3339_opts(SecondsFormat::Millis, true)});
            self.client.publish(self.topic.clone(), QoS::AtLeastOnce, false, fix.to_string()).await.expect("publish");
        }
        for _ in fix_times {
            tokio::time::timeout(Duration::from_secs(10), self.pubacks.recv()).await.expect("the broker acknowledges within 10 s").expect("tracker connected");
        }
    }
}

/// The fix times on the unit's track, oldest first.
async fn track(db: &TestDb, unit: Uuid) -> Vec<DateTime<Utc>> {
    sqlx::query_scalar("SELECT fix_time FROM ambulance_positions WHERE unit_id = $1 ORDER BY fix_time")
        .bind(unit)
        .fetch_all(&db.pool)
        .await
        .expect("track")
}

/// Waits until the track holds as many fixes as were sent (or 30 s passed), then a little longer
/// so that a duplicate arriving late would show; the track then.
async fn settled_track(db: &TestDb, unit: Uuid, sent: usize, nodes: &[&Hub]) -> Vec<DateTime<Utc>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = track(db, unit).await.len();
        if stored >= sent {
            break;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = nodes.iter().map(|hub| hub.logs()).collect();
            panic!("only {stored} of {sent} fixes reached the unit's track within 30 s; the nodes logged:\n{}", logs.join("\n-----\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    track(db, unit).await
}

/// `count` distinct fix times, a second apart, from `first` (whole milliseconds, as sent).
fn fix_times(first: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
    (0..count).map(|second| first + chrono::Duration::seconds(second as i64)).collect()
}

async fn registered_unit(admin: &Api) -> (Uuid, serde_json::Value) {
    let unit = admin.post("/api/ambulances", json!({"call_sign": "AMB-70"})).await.unwrap().expect(201);
    let unit: Uuid = unit["id"].as_str().unwrap().parse().unwrap();
    let device = admin.post("/api/devices", json!({"unit_id": unit, "kind": "ambulance", "name": "tracker of AMB-70"})).await.unwrap().expect(201);
    (unit, device)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_behind_one_broker_store_every_fix_once_and_share_the_stream() {
    let db = TestDb::start().await;
    let tenant = db.tenant("alpha").await;
    let dir = db.scratch("mosquitto");
    let files = medhub_device_gateway::write_mosquitto_files(&db.pool, &dir, HUB_BROKER_LOGIN).await.unwrap();
    let broker = Mosquitto::start(&dir, &files);
    let node_a = node(&db, &broker, "node-a").await;
    let mut node_b = node(&db, &broker, "node-b").await;

    // Node A serves alpha (it answered alpha's first requests); there the admin registers the unit
    // and its tracker, and the broker learns the tracker's login.
    let admin = node_a.login(&tenant, Role::Admin).await;
    let (unit, device) = registered_unit(&admin).await;
    medhub_device_gateway::write_mosquitto_files(&db.pool, &dir, HUB_BROKER_LOGIN).await.unwrap();
    broker.reload();
    joined_the_group(&node_a).await;
    joined_the_group(&node_b).await;

    // The crew's tracker reports its fixes at QoS 1, each with its own fix time.
    let mut tracker = Tracker::connect(&broker, "alpha", unit, &device).await;
    let first = (Utc::now() - chrono::Duration::minutes(20)).trunc_subsecs(3);
    let sent = fix_times(first, FIXES);
    tracker.report(&sent).await;

    // Every fix is on the unit's track, once.
    assert_eq!(settled_track(&db, unit, FIXES, &[&node_a, &node_b]).await, sent);
    // The broker split the stream: each node took a share, and together exactly every fix.
    let (taken_by_a, taken_by_b) = (metric(&node_a.metrics().await, ACCEPTED_GPS), metric(&node_b.metrics().await, ACCEPTED_GPS));
    assert_eq!(taken_by_a + taken_by_b, FIXES as f64, "node A took {taken_by_a}, node B {taken_by_b}");
    assert!(taken_by_a >= 1.0 && taken_by_b >= 1.0, "both nodes take a share: node A took {taken_by_a}, node B {taken_by_b}");
    // Node A still serves alpha: node B handed its share over rather than take the tenant.
    let owner: String = sqlx::query_scalar("SELECT owner FROM tenant_leases WHERE tenant_id = $1").bind(tenant.id).fetch_one(&db.pool).await.unwrap();
    assert_eq!(owner, "node-a");

    // Node B stops while the tracker keeps reporting: it leaves the group, finishes what it holds,
    // and the broker gives the rest to node A. Not a fix is lost or stored twice.
    let more = fix_times(first + chrono::Duration::seconds(FIXES as i64), FIXES);
    node_b.signal(libc::SIGTERM);
    tracker.report(&more).await;
    let status = node_b.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "node B stops cleanly:\n{}", node_b.logs());
    assert!(node_b.logs().contains("left the shared subscription"), "{}", node_b.logs());
    let all: Vec<DateTime<Utc>> = sent.iter().chain(&more).copied().collect();
    assert_eq!(settled_track(&db, unit, 2 * FIXES, &[&node_a, &node_b]).await, all);
    let taken_by_a_now = metric(&node_a.metrics().await, ACCEPTED_GPS);
    assert!(taken_by_a_now > taken_by_a, "node A took over node B's share");
}
