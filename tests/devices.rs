//! Ambulance units and monitors speaking MQTT to the hub, as their installers and crews would:
//! an admin registers a device and gets its credentials once; the device connects with them and
//! may publish only its own unit's telemetry and hear only its own unit's commands; garbage from
//! one unit is refused and counted while the others keep flowing; a command reaches its unit at
//! QoS 1. Real MQTT clients (rumqttc, 3.1.1 and 5) against the real hub, and, in external mode,
//! against Debian's mosquitto confining devices with the files the hub writes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use rumqttc::{AsyncClient, ConnAck, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as Code5, Packet as Packet5, PubAckReason, SubscribeReasonCode as Sub5};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};

use common::{metric, Api, Hub, HubOptions, Mosquitto, TestDb, World};
use medhub_actors::Role;

// ---------------------------------------------------------------------------------------------
// Helpers: the hub's MQTT address, units and devices through the API, MQTT clients

/// A world whose hub listens for MQTT on a free port and has the test hooks on.
async fn mqtt_world() -> (World, SocketAddr) {
    let world = World::start_with(1, |options| options.arg("--mqtt-listen", "127.0.0.1:0").arg("--enable-fault-injection", true)).await;
    let addr = world.hub.mqtt_addr().await;
    (world, addr)
}


/// Registers an ambulance unit; its id.
async fn unit(admin: &Api, call_sign: &str) -> Uuid {
    let body = admin.post("/api/ambulances", json!({"call_sign": call_sign})).await.unwrap().expect(201);
    body["id"].as_str().unwrap().parse().unwrap()
}

/// A registered device's credentials, as the admin received them.
#[derive(Debug, Clone)]
struct Login {
    id: String,
    username: String,
    password: String,
    unit: Uuid,
    tenant: String,
}

impl Login {
    fn topic(&self, leaf: &str) -> String {
        topic(&self.tenant, self.unit, leaf)
    }
}

fn topic(tenant: &str, unit: Uuid, leaf: &str) -> String {
    format!("medhub/{tenant}/ambulance/{unit}/{leaf}")
}

async fn device(admin: &Api, tenant: &str, unit: Uuid, kind: &str) -> Login {
    let body = admin.post("/api/devices", json!({"unit_id": unit, "kind": kind, "name": format!("{kind} of {unit}")})).await.unwrap().expect(201);
    Login {
        id: body["id"].as_str().unwrap().to_owned(),
        username: body["username"].as_str().unwrap().to_owned(),
        password: body["password"].as_str().unwrap().to_owned(),
        unit,
        tenant: tenant.to_owned(),
    }
}

fn options(addr: SocketAddr, client_id: &str, username: &str, password: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_credentials(username, password);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
    options
}

/// One MQTT 3.1.1 client with its event loop polled in the background: what arrived is in
/// `events`, ending with the error that ended the connection (no reconnection).
struct Mqtt {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Packet, String>>,
    connack: ConnAck,
}

impl Mqtt {
    async fn connect(options: MqttOptions) -> Result<Mqtt, ConnectionError> {
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let connack = loop {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await.expect("CONNACK within 10 s")? {
                Event::Incoming(Packet::ConnAck(connack)) => break connack,
                _ => continue,
            }
        };
        let (sender, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if sender.send(Ok(packet)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(error) => {
                        let _ = sender.send(Err(error.to_string()));
                        return;
                    }
                }
            }
        });
        Ok(Mqtt { client, events, connack })
    }

    async fn login(addr: SocketAddr, login: &Login) -> Mqtt {
        Mqtt::connect(options(addr, &format!("c-{}", Uuid::new_v4().simple()), &login.username, &login.password)).await.expect("the device connects")
    }

    /// The next packet from the hub (panics on a closed connection or after 10 s).
    async fn next(&mut self) -> Packet {
        match tokio::time::timeout(Duration::from_secs(10), self.events.recv()).await {
            Ok(Some(Ok(packet))) => packet,
            other => panic!("expected a packet from the hub, got {other:?}"),
        }
    }

    /// Waits for `count` PUBACKs, skipping other packets.
    async fn pubacks(&mut self, count: usize) {
        let mut seen = 0;
        while seen < count {
            if let Packet::PubAck(_) = self.next().await {
                seen += 1;
            }
        }
    }

    /// Publishes at QoS 1 and waits for the hub's PUBACK: the message was taken.
    async fn publish_acknowledged(&mut self, topic: String, payload: Vec<u8>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
        self.pubacks(1).await;
    }

    async fn suback(&mut self) -> Vec<SubscribeReasonCode> {
        loop {
            if let Packet::SubAck(ack) = self.next().await {
                return ack.return_codes;
            }
        }
    }

    /// Waits until the connection ends; the error it ended with.
    async fn closed(&mut self) -> String {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.events.recv()).await {
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(error))) => return error,
                Ok(None) => return "event loop ended".to_owned(),
                Err(_) => panic!("the connection was not closed within 10 s"),
            }
        }
    }
}

fn refused_with(result: Result<Mqtt, ConnectionError>) -> ConnectReturnCode {
    match result {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(other) => panic!("expected a refused CONNECT, got {other}"),
        Ok(_) => panic!("expected a refused CONNECT, the device got in"),
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn gps_fix(lat: f64, lon: f64, fix_time: &str) -> Vec<u8> {
    json!({"lat": lat, "lon": lon, "speed": 11.5, "heading": 90, "accuracy": 5, "fix_time": fix_time}).to_string().into_bytes()
}

/// The unit as the dispatcher sees it.
async fn unit_position(api: &Api, unit: Uuid) -> Value {
    api.get(&format!("/api/ambulances/{unit}")).await.unwrap().ok()["position"].clone()
}

/// A crew starting its shift: the unit's tracker listens for its commands and sends its first fix.
async fn go_on_duty(tracker: &mut Mqtt, login: &Login, at: (f64, f64)) {
    tracker.client.subscribe(login.topic("cmd"), QoS::AtLeastOnce).await.unwrap();
    assert_eq!(tracker.suback().await, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    tracker.publish_acknowledged(login.topic("gps"), gps_fix(at.0, at.1, &now())).await;
}

/// Waits until the dispatcher sees the unit's position (panics after 10 s).
async fn shows_on_the_map(api: &Api, unit: Uuid) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while unit_position(api, unit).await.is_null() {
        assert!(Instant::now() < deadline, "the unit's position never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A unit `call_sign` registered with its tracker, on duty at `at` over the hub's own MQTT
/// endpoint, and on the dispatcher's map: its id, the tracker's credentials and connection.
async fn unit_on_the_map(admin: &Api, addr: SocketAddr, call_sign: &str, at: (f64, f64)) -> (Uuid, Login, Mqtt) {
    let id = unit(admin, call_sign).await;
    let login = device(admin, "alpha", id, "ambulance").await;
    let mut tracker = Mqtt::login(addr, &login).await;
    go_on_duty(&mut tracker, &login, at).await;
    shows_on_the_map(admin, id).await;
    (id, login, tracker)
}

/// Polls `/metrics` until `series` reaches `value` (panics after 15 s).
async fn metric_reaches(hub: &Hub, series: &str, value: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = hub.metrics().await;
        if metric(&metrics, series) >= value {
            return metrics;
        }
        assert!(Instant::now() < deadline, "{series} never reached {value}:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The stories

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_registers_a_device_and_sees_its_password_once() {
    let (world, _) = mqtt_world().await;
    let admin = &world.admin;
    let unit = unit(admin, "AMB-01").await;

    let created = admin.post("/api/devices", json!({"unit_id": unit, "kind": "ambulance", "name": "AMB-01 tracker"})).await.unwrap().expect(201);
    let username = created["username"].as_str().unwrap();
    assert!(username.starts_with("alpha-ambulance-"), "{created}");
    assert_eq!(created["password"].as_str().unwrap().len(), 32);
    assert_eq!(created["active"], true);
    assert_eq!(created["topics"]["subscribe"], topic("alpha", unit, "cmd"));
    assert_eq!(created["topics"]["publish"], json!([topic("alpha", unit, "gps"), topic("alpha", unit, "vitals"), topic("alpha", unit, "status")]));
    let id = created["id"].as_str().unwrap();

    // Bad input names the field at fault.
    for (body, field) in [
        (json!({"unit_id": unit, "kind": "drone", "name": "x"}), "kind"),
        (json!({"unit_id": "unit-7", "kind": "monitor", "name": "x"}), "unit_id"),
        (json!({"unit_id": Uuid::new_v4(), "kind": "monitor", "name": "x"}), "unit_id"),
        (json!({"unit_id": unit, "kind": "monitor", "name": "   "}), "name"),
        (json!({"unit_id": unit, "kind": "monitor"}), "name"),
        (json!({"unit_id": unit, "kind": "monitor", "name": "x", "password": "mine"}), "password"),
    ] {
        let refused = admin.post("/api/devices", body.clone()).await.unwrap();
        assert_eq!((refused.status, refused.body["field"].as_str()), (400, Some(field)), "{body} → {}", refused.body);
    }

    // Only admins; the refusal is on the record.
    assert_eq!(world.nurse.post("/api/devices", json!({"unit_id": unit, "kind": "monitor", "name": "x"})).await.unwrap().status, 403);
    assert_eq!(world.nurse.get("/api/devices").await.unwrap().status, 403);
    let trail = admin.get("/api/audit?action=device.register").await.unwrap().ok();
    let outcomes: Vec<&str> = trail["entries"].as_array().unwrap().iter().map(|entry| entry["outcome"].as_str().unwrap()).collect();
    assert!(outcomes.contains(&"success") && outcomes.contains(&"denied"), "{trail}");

    // The list never shows a password or its hashes.
    let listed = admin.get("/api/devices").await.unwrap().ok();
    let devices = listed["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["username"], username);
    let text = listed.to_string();
    assert!(!text.contains("password") && !text.contains("argon2") && !text.contains("$7$"), "{text}");

    // Deactivation: idempotent, audited, another tenant's device is not found.
    let deactivated = admin.post(&format!("/api/devices/{id}/deactivate"), Value::Null).await.unwrap().ok();
    assert_eq!(deactivated["active"], false);
    assert!(deactivated["deactivated_at"].is_string());
    admin.post(&format!("/api/devices/{id}/deactivate"), Value::Null).await.unwrap().ok();
    assert_eq!(admin.post(&format!("/api/devices/{}/deactivate", Uuid::new_v4()), Value::Null).await.unwrap().status, 404);
    let beta = world.hub.login(&world.db.tenant("beta").await, Role::Admin).await;
    assert_eq!(beta.post(&format!("/api/devices/{id}/deactivate"), Value::Null).await.unwrap().status, 404);
    assert_eq!(beta.get("/api/devices").await.unwrap().ok()["devices"].as_array().unwrap().len(), 0);
    let trail = admin.get(&format!("/api/audit?action=device.deactivate&resource_id={id}")).await.unwrap().ok();
    assert_eq!(trail["entries"].as_array().unwrap().len(), 2, "{trail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_registered_active_devices_get_in() {
    let (world, addr) = mqtt_world().await;
    let unit = unit(&world.admin, "AMB-02").await;
    let login = device(&world.admin, "alpha", unit, "ambulance").await;

    let mut connected = Mqtt::login(addr, &login).await;
    assert_eq!(connected.connack.code, ConnectReturnCode::Success);

    let wrong = Mqtt::connect(options(addr, "w1", &login.username, "not-the-password")).await;
    assert_eq!(refused_with(wrong), ConnectReturnCode::BadUserNamePassword);
    let unknown = Mqtt::connect(options(addr, "w2", "alpha-ambulance-000000000000", &login.password)).await;
    assert_eq!(refused_with(unknown), ConnectReturnCode::BadUserNamePassword);
    let anonymous = Mqtt::connect(MqttOptions::new("w3", addr.ip().to_string(), addr.port())).await;
    assert_eq!(refused_with(anonymous), ConnectReturnCode::NotAuthorized);

    // Deactivated: the live connection is cut, and it cannot come back, even though the hub
    // remembered its login.
    world.admin.post(&format!("/api/devices/{}/deactivate", login.id), Value::Null).await.unwrap().ok();
    connected.closed().await;
    let again = Mqtt::connect(options(addr, "again", &login.username, &login.password)).await;
    assert_eq!(refused_with(again), ConnectReturnCode::NotAuthorized);

    let metrics = world.hub.metrics().await;
    assert_eq!(metric(&metrics, "medhub_mqtt_refused_connects_total{reason=\"bad_credentials\"}"), 2.0, "{metrics}");
    assert_eq!(metric(&metrics, "medhub_mqtt_refused_connects_total{reason=\"no_credentials\"}"), 1.0);
    assert_eq!(metric(&metrics, "medhub_mqtt_refused_connects_total{reason=\"inactive\"}"), 1.0);
    assert_eq!(metric(&metrics, "medhub_mqtt_connects_total"), 1.0);
    assert!(world.hub.logs().contains("mqtt connect refused"), "{}", world.hub.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_publishes_and_listens_only_under_its_own_prefix() {
    let (world, addr) = mqtt_world().await;
    let (admin, hub) = (&world.admin, &world.hub);
    let (mine, neighbour) = (unit(admin, "AMB-10").await, unit(admin, "AMB-11").await);
    let beta = hub.login(&world.db.tenant("beta").await, Role::Admin).await;
    let foreign = unit(&beta, "AMB-10").await;
    let login = device(admin, "alpha", mine, "ambulance").await;
    let mut tracker = Mqtt::login(addr, &login).await;

    // A well-formed fix under another unit's prefix, another tenant's, its own command topic.
    let fix = gps_fix(-1.2921, 36.8219, &now());
    for target in [topic("alpha", neighbour, "gps"), topic("beta", foreign, "gps"), login.topic("cmd"), "medhub/alpha/ambulance/x/gps".to_owned()] {
        tracker.client.publish(target, QoS::AtLeastOnce, false, fix.clone()).await.unwrap();
    }
    // Then one under its own, which the hub takes; everything before it has been judged.
    tracker.client.publish(login.topic("gps"), QoS::AtLeastOnce, false, gps_fix(-1.30, 36.80, &now())).await.unwrap();
    tracker.pubacks(5).await;
    let metrics = metric_reaches(hub, "medhub_device_messages_total{kind=\"gps\",outcome=\"accepted\"}", 1.0).await;
    assert_eq!(metric(&metrics, "medhub_mqtt_acl_refusals_total{action=\"publish\"}"), 4.0, "{metrics}");
    assert_eq!(metric(&metrics, "medhub_mqtt_accepted_total{kind=\"gps\"}"), 1.0);
    assert_eq!(metric(&metrics, "medhub_device_messages_total{kind=\"gps\",outcome=\"accepted\"}"), 1.0);

    // Its fixes reached its own unit only: no other map moved.
    assert_eq!(unit_position(admin, mine).await["position"]["lat"], -1.30);
    assert!(unit_position(admin, neighbour).await.is_null());
    assert!(unit_position(&beta, foreign).await.is_null());
    let logs = hub.logs();
    assert!(logs.lines().any(|line| line.contains("mqtt publish refused") && line.contains(&login.id)), "{logs}");

    // It may listen to its own commands only.
    for filter in [topic("alpha", neighbour, "cmd"), topic("beta", foreign, "cmd"), "medhub/alpha/ambulance/+/cmd".to_owned(), "#".to_owned()] {
        tracker.client.subscribe(filter.clone(), QoS::AtLeastOnce).await.unwrap();
        assert_eq!(tracker.suback().await, vec![SubscribeReasonCode::Failure], "{filter}");
    }
    tracker.client.subscribe(login.topic("cmd"), QoS::AtLeastOnce).await.unwrap();
    assert_eq!(tracker.suback().await, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    let metrics = hub.metrics().await;
    assert_eq!(metric(&metrics, "medhub_mqtt_acl_refusals_total{action=\"subscribe\"}"), 4.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_bad_payloads_are_refused_while_a_good_unit_keeps_flowing() {
    let (world, addr) = mqtt_world().await;
    let (admin, hub) = (&world.admin, &world.hub);
    let (good_unit, bad_unit) = (unit(admin, "AMB-20").await, unit(admin, "AMB-21").await);
    let good = device(admin, "alpha", good_unit, "ambulance").await;
    let bad = device(admin, "alpha", bad_unit, "ambulance").await;

    // The good unit: 300 fixes, 100 ms apart in fix time, each a little further north.
    const FIXES: usize = 300;
    let start = Utc::now() - chrono::Duration::minutes(10);
    let fix_time = |n: usize| (start + chrono::Duration::milliseconds(100 * n as i64)).to_rfc3339_opts(SecondsFormat::Millis, true);
    let flowing = async {
        let mut tracker = Mqtt::login(addr, &good).await;
        let begun = Instant::now();
        for n in 0..FIXES {
            tracker.client.publish(good.topic("gps"), QoS::AtLeastOnce, false, gps_fix(-1.3 + n as f64 * 1e-4, 36.8, &fix_time(n))).await.unwrap();
        }
        tracker.pubacks(FIXES).await;
        begun.elapsed()
    };

    // The bad unit, at the same time: 990 malformed payloads under its own prefix...
    let flood = async {
        let mut sender = Mqtt::login(addr, &bad).await;
        let future = (Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
        for n in 0..990 {
            let payload: Vec<u8> = match n % 4 {
                0 => b"{\"lat\": -1.29, \"lon\": ".to_vec(),
                1 => gps_fix(91.0, 36.8, &now()),
                2 => json!({"lat": "NaN", "lon": 36.8, "speed": 1, "heading": 1, "accuracy": 1, "fix_time": now()}).to_string().into_bytes(),
                _ => gps_fix(-1.29, 36.8, &future),
            };
            // Status and vitals judged too: a number where text belongs, a missing parameter.
            let (leaf, payload) = match n {
                3 => ("status", json!({"status": 7, "reported_at": now()}).to_string().into_bytes()),
                7 => ("vitals", json!({"pulse": 80, "measured_at": now()}).to_string().into_bytes()),
                _ => ("gps", payload),
            };
            sender.client.publish(bad.topic(leaf), QoS::AtLeastOnce, false, payload).await.unwrap();
        }
        sender.pubacks(990).await;
        // ...and ten 1 MB blobs, each refused from its header and its connection closed.
        for n in 0..10 {
            let mut blob_sender = Mqtt::connect(options(addr, &format!("blob-{n}"), &bad.username, &bad.password)).await.unwrap();
            blob_sender.client.publish(bad.topic("vitals"), QoS::AtMostOnce, false, vec![b'{'; 1024 * 1024]).await.unwrap();
            blob_sender.closed().await;
        }
    };
    let (took, ()) = tokio::join!(flowing, flood);

    let metrics = metric_reaches(hub, "medhub_device_messages_total{kind=\"gps\",outcome=\"accepted\"}", FIXES as f64).await;
    let rejected = |reason: &str| metric(&metrics, &format!("medhub_mqtt_rejected_total{{reason=\"{reason}\"}}"));
    // Of the 990: 248 bad JSON, 248 latitudes of 91, 247 NaNs and 247 future times, but two of
    // the future times were the status and vitals with wrong fields instead.
    assert_eq!(rejected("not_json"), 248.0, "{metrics}");
    assert_eq!(rejected("invalid_field"), 248.0 + 247.0 + 2.0, "{metrics}");
    assert_eq!(rejected("bad_time"), 245.0, "{metrics}");
    assert_eq!(rejected("too_large"), 10.0, "{metrics}");
    let total: f64 = ["not_json", "invalid_field", "bad_time", "too_large", "malformed_packet", "refused_by_hub", "hub_unavailable"].iter().map(|r| rejected(r)).sum();
    assert_eq!(total, 1000.0, "{metrics}");
    assert_eq!(metric(&metrics, "medhub_mqtt_accepted_total{kind=\"gps\"}"), FIXES as f64);
    assert_eq!(metric(&metrics, "medhub_device_messages_total{kind=\"gps\",outcome=\"accepted\"}"), FIXES as f64);
    assert!(took < Duration::from_secs(30), "the good unit took {took:?}");

    // No gap: every fix of the good unit is on its track, in order, and it stands at the last.
    let deadline = Instant::now() + Duration::from_secs(15);
    let points = loop {
        let track = admin.get(&format!("/api/ambulances/{good_unit}/track")).await.unwrap().ok();
        let points = track["points"].as_array().unwrap().clone();
        if points.len() >= FIXES || Instant::now() > deadline {
            break points;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(points.len(), FIXES);
    for (n, point) in points.iter().enumerate() {
        let at: chrono::DateTime<Utc> = point["fix_time"].as_str().unwrap().parse().unwrap();
        assert_eq!(at.to_rfc3339_opts(SecondsFormat::Millis, true), fix_time(n));
    }
    let position = unit_position(admin, good_unit).await;
    let latest: chrono::DateTime<Utc> = position["fix_time"].as_str().unwrap().parse().unwrap();
    assert_eq!(latest.to_rfc3339_opts(SecondsFormat::Millis, true), fix_time(FIXES - 1));
    assert!(unit_position(admin, bad_unit).await.is_null(), "nothing of the flood reached the map");

    // The log names the device and the reason, a few times, not a thousand.
    let logs = hub.logs();
    let lines: Vec<&str> = logs.lines().filter(|line| line.contains("device message rejected") && line.contains(&bad.id)).collect();
    assert!(!lines.is_empty() && lines.len() < 100, "{} rejection lines", lines.len());
    assert!(lines.iter().any(|line| line.contains("reason=\"invalid_field\"") || line.contains("reason=invalid_field")), "{}", lines.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_reaches_its_unit_at_least_once() {
    let (world, addr) = mqtt_world().await;
    let (admin, hub) = (&world.admin, &world.hub);
    let (mine, other) = (unit(admin, "AMB-30").await, unit(admin, "AMB-31").await);
    let login = device(admin, "alpha", mine, "ambulance").await;
    let other_login = device(admin, "alpha", other, "ambulance").await;
    let mut tracker = Mqtt::login(addr, &login).await;
    let mut bystander = Mqtt::login(addr, &other_login).await;
    tracker.client.subscribe(login.topic("cmd"), QoS::AtLeastOnce).await.unwrap();
    assert_eq!(tracker.suback().await, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    bystander.client.subscribe(other_login.topic("cmd"), QoS::AtLeastOnce).await.unwrap();
    bystander.suback().await;

    let incident = Uuid::new_v4();
    let command = json!({"type": "dispatch", "incident_id": incident, "location": {"lat": -1.28, "lon": 36.82}});
    let sent = admin.post("/api/devices/test-command", json!({"unit_id": mine, "payload": command})).await.unwrap().expect(202);
    assert_eq!(sent["topic"], login.topic("cmd"));
    let Packet::Publish(publish) = tracker.next().await else { panic!("expected the command") };
    assert_eq!((publish.topic.as_str(), publish.qos), (login.topic("cmd").as_str(), QoS::AtLeastOnce));
    assert_eq!(serde_json::from_slice::<Value>(&publish.payload).unwrap(), command);
    // rumqttc acknowledged it; the hub counts it delivered.
    metric_reaches(hub, "medhub_mqtt_commands_total{outcome=\"delivered\"}", 1.0).await;
    assert!(tokio::time::timeout(Duration::from_millis(300), bystander.events.recv()).await.is_err(), "another unit heard nothing");

    // Nobody listening: the sender is told, not left to wait.
    let unheard = admin.post("/api/devices/test-command", json!({"unit_id": Uuid::new_v4(), "payload": {}})).await.unwrap();
    assert_eq!(unheard.status, 503, "{}", unheard.body);
    assert_eq!(world.nurse.post("/api/devices/test-command", json!({"unit_id": mine, "payload": {}})).await.unwrap().status, 403);

    // A persistent session keeps its subscription and gets what was sent while it was away.
    let persistent = || {
        let mut options = options(addr, "amb-30-cab", &login.username, &login.password);
        options.set_clean_session(false);
        options
    };
    let mut cab = Mqtt::connect(persistent()).await.unwrap();
    cab.client.subscribe(login.topic("cmd"), QoS::AtLeastOnce).await.unwrap();
    cab.suback().await;
    cab.client.disconnect().await.unwrap();
    cab.closed().await;
    admin.post("/api/devices/test-command", json!({"unit_id": mine, "payload": {"type": "while-away"}})).await.unwrap().expect(202);
    let Packet::Publish(_) = tracker.next().await else { panic!("the clean session still hears it live") };
    let mut cab = Mqtt::connect(persistent()).await.unwrap();
    assert!(cab.connack.session_present);
    let Packet::Publish(publish) = cab.next().await else { panic!("expected the queued command") };
    assert_eq!(serde_json::from_slice::<Value>(&publish.payload).unwrap(), json!({"type": "while-away"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_devices_are_told_why() {
    let (world, addr) = mqtt_world().await;
    let (mine, other) = (unit(&world.admin, "AMB-40").await, unit(&world.admin, "AMB-41").await);
    let login = device(&world.admin, "alpha", mine, "monitor").await;

    let connect = |password: &str| {
        let mut options = Options5::new("monitor-40", addr.ip().to_string(), addr.port());
        options.set_credentials(login.username.clone(), password.to_owned());
        Client5::new(options, 64)
    };
    let (_, mut refused) = connect("wrong");
    match refused.poll().await {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => assert_eq!(code, Code5::BadUserNamePassword),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let (client, mut eventloop) = connect(&login.password);
    async fn next(eventloop: &mut rumqttc::v5::EventLoop) -> Packet5 {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await.expect("a packet within 10 s").expect("connected") {
                Event5::Incoming(packet) => return packet,
                Event5::Outgoing(_) => continue,
            }
        }
    }
    let Packet5::ConnAck(connack) = next(&mut eventloop).await else { panic!("expected CONNACK") };
    assert_eq!(connack.code, Code5::Success);
    assert_eq!(connack.properties.and_then(|p| p.max_packet_size), Some(65536));

    let vitals = json!({"respiration_rate": 18, "spo2": 97, "on_oxygen": false, "systolic_bp": 124, "pulse": 82,
                        "consciousness": "alert", "temperature": 37.1, "measured_at": now()});
    for (target, payload, expected) in [
        (login.topic("vitals"), vitals.to_string(), PubAckReason::Success),
        (topic("alpha", other, "vitals"), vitals.to_string(), PubAckReason::NotAuthorized),
        (login.topic("vitals"), "{\"pulse\": \"fast\"}".to_owned(), PubAckReason::PayloadFormatInvalid),
    ] {
        client.publish(target, QoS5::AtLeastOnce, false, payload).await.unwrap();
        let Packet5::PubAck(ack) = next(&mut eventloop).await else { panic!("expected PUBACK") };
        assert_eq!(ack.reason, expected);
    }
    client.subscribe(topic("alpha", other, "cmd"), QoS5::AtLeastOnce).await.unwrap();
    let Packet5::SubAck(ack) = next(&mut eventloop).await else { panic!("expected SUBACK") };
    assert_eq!(ack.return_codes, vec![Sub5::NotAuthorized]);

    // The monitor's vitals reached its unit, with their NEWS2 score.
    let unit = world.admin.get(&format!("/api/ambulances/{mine}")).await.unwrap().ok();
    assert_eq!(unit["vitals"]["vitals"]["pulse"].as_f64(), Some(82.0), "{unit}");

    // A hub that stops says so to the devices it drops.
    let mut hub = world.hub;
    let stopping = tokio::spawn(async move {
        let status = hub.terminate().await;
        (status, hub.logs())
    });
    let goodbye = loop {
        match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await.expect("a goodbye within 30 s") {
            Ok(_) => continue,
            Err(error) => break error,
        }
    };
    let rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect { reason_code, .. }) = goodbye else {
        panic!("expected a DISCONNECT from the hub, got {goodbye:?}");
    };
    assert_eq!(reason_code, rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::ServerShuttingDown);
    let (status, logs) = stopping.await.unwrap();
    assert!(status.success(), "{logs}");
    assert!(logs.contains("mqtt endpoint stopped") && logs.contains("hub stopped"), "{logs}");
}

// ---------------------------------------------------------------------------------------------
// External broker: Debian's mosquitto, confined by the files the hub writes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_mosquitto_a_device_cannot_publish_under_another_units_prefix() {
    let db = TestDb::start().await;
    let tenant = db.tenant("alpha").await;
    let dir = db.scratch("mosquitto");
    let hub_login = medhub_device_gateway::BrokerLogin { username: "medhub-hub", password: "hub-broker-secret" };
    let files = medhub_device_gateway::write_mosquitto_files(&db.pool, &dir, hub_login).await.unwrap();
    assert_eq!(files.devices, 0);
    let broker = Mosquitto::start(&dir, &files);

    let url = format!("mqtt://medhub-hub:hub-broker-secret@127.0.0.1:{}", broker.port);
    let hub = common::spawn_hub_with(HubOptions::serve(&db).arg("--mqtt-broker-url", url).arg("--enable-fault-injection", true)).await;
    metric_reaches(&hub, "medhub_mqtt_broker_connected", 1.0).await;
    let admin = hub.login(&tenant, Role::Admin).await;
    let (mine, neighbour) = (unit(&admin, "AMB-50").await, unit(&admin, "AMB-51").await);
    let login = device(&admin, "alpha", mine, "ambulance").await;
    device(&admin, "alpha", neighbour, "ambulance").await;
    let files = medhub_device_gateway::write_mosquitto_files(&db.pool, &dir, hub_login).await.unwrap();
    assert_eq!(files.devices, 2);
    broker.reload();

    // The broker now knows the device (after its reload) and no one with a wrong password.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tracker = loop {
        match Mqtt::connect(options(broker.addr(), "amb-50", &login.username, &login.password)).await {
            Ok(tracker) => break tracker,
            Err(error) => assert!(Instant::now() < deadline, "mosquitto never let the device in: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let wrong = refused_with(Mqtt::connect(options(broker.addr(), "w", &login.username, "wrong")).await);
    assert!(matches!(wrong, ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized), "{wrong:?}");

    // Under another unit's prefix: mosquitto drops it (3.1.1 still acknowledges); under its own,
    // it reaches the hub. The own fix goes last, so once it arrived the other was judged.
    tracker.client.publish(topic("alpha", neighbour, "gps"), QoS::AtLeastOnce, false, gps_fix(-1.25, 36.85, &now())).await.unwrap();
    tracker.client.publish(login.topic("gps"), QoS::AtLeastOnce, false, gps_fix(-1.30, 36.80, &now())).await.unwrap();
    tracker.pubacks(2).await;
    let metrics = metric_reaches(&hub, "medhub_device_messages_total{kind=\"gps\",outcome=\"accepted\"}", 1.0).await;
    assert_eq!(metric(&metrics, "medhub_mqtt_accepted_total{kind=\"gps\"}"), 1.0, "{metrics}");
    assert_eq!(unit_position(&admin, mine).await["position"]["lat"], -1.30);
    assert!(unit_position(&admin, neighbour).await.is_null(), "the neighbour's map marker did not move");

    // Nor may it hear the neighbour's commands (mosquitto 2.0 grants the SUBSCRIBE but checks its
    // ACL on every delivery); its own arrive at QoS 1, through the broker. The neighbour's command
    // goes first, so had it been delivered it would arrive first.
    tracker.client.subscribe(topic("alpha", neighbour, "cmd"), QoS::AtLeastOnce).await.unwrap();
    tracker.suback().await;
    tracker.client.subscribe(login.topic("cmd"), QoS::AtLeastOnce).await.unwrap();
    assert_eq!(tracker.suback().await, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    admin.post("/api/devices/test-command", json!({"unit_id": neighbour, "payload": {"type": "not for you"}})).await.unwrap().expect(202);
    admin.post("/api/devices/test-command", json!({"unit_id": mine, "payload": {"type": "dispatch"}})).await.unwrap().expect(202);
    let Packet::Publish(publish) = tracker.next().await else { panic!("expected the command") };
    assert_eq!((publish.topic.as_str(), publish.qos), (login.topic("cmd").as_str(), QoS::AtLeastOnce));
    assert_eq!(serde_json::from_slice::<Value>(&publish.payload).unwrap(), json!({"type": "dispatch"}));
}

// ---------------------------------------------------------------------------------------------
// Dispatch, end to end over MQTT

/// Great-circle distance in km (the test's own brute-force check of "nearest").
fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1, lat2, lon2) = (a.0.to_radians(), a.1.to_radians(), b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6_371.0088 * h.sqrt().asin()
}

/// Waits for the next command on the unit's own topic.
async fn command(mqtt: &mut Mqtt) -> Value {
    loop {
        if let Packet::Publish(publish) = mqtt.next().await {
            return serde_json::from_slice(&publish.payload).unwrap();
        }
    }
}

async fn report(mqtt: &Mqtt, login: &Login, status: &str, incident: &str) {
    let body = json!({"status": status, "incident_id": incident, "reported_at": now()}).to_string();
    mqtt.client.publish(login.topic("status"), QoS::AtLeastOnce, false, body.into_bytes()).await.unwrap();
}

/// Polls an incident until it has `status` (panics after 15 s).
async fn incident_reaches(api: &Api, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all = api.get("/api/incidents?all=true").await.unwrap().ok();
        if let Some(incident) = all["incidents"].as_array().unwrap().iter().find(|i| i["id"] == id && i["status"] == status) {
            return incident.clone();
        }
        assert!(Instant::now() < deadline, "incident {id} never became {status}: {all}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reports an incident as `api` (a call taken by a dispatcher, or a patient's SOS): the incident as
/// created, and its id.
async fn incident_reported(api: &Api, report: Value) -> (Value, String) {
    let incident = api.post("/api/incidents", report).await.unwrap().expect(201);
    let id = incident["id"].as_str().unwrap().to_owned();
    (incident, id)
}

/// The crew reports each of `statuses` for the incident, one after the other, and waits until the
/// dispatcher sees the incident `reached`.
async fn crew_reports(dispatcher: &Api, crew: &Mqtt, login: &Login, incident: &str, statuses: &[&str], reached: &str) {
    for status in statuses {
        report(crew, login, status, incident).await;
    }
    incident_reaches(dispatcher, incident, reached).await;
}

/// The crew sent to the incident takes it, reaches the scene and sets off with the patient, each
/// step seen by the dispatcher; then a fix inside the hospital's geofence at `hospital` has the
/// dispatcher see it arrive.
async fn bring_the_patient_in(dispatcher: &Api, crew: &Mqtt, login: &Login, incident: &str, hospital: (f64, f64)) {
    for (status, reached) in [("ack", "en_route"), ("on_scene", "on_scene"), ("transporting", "transporting")] {
        crew_reports(dispatcher, crew, login, incident, &[status], reached).await;
    }
    crew.client.publish(login.topic("gps"), QoS::AtLeastOnce, false, gps_fix(hospital.0, hospital.1, &now())).await.unwrap();
    incident_reaches(dispatcher, incident, "at_hospital").await;
}

/// Registers the tenant's hospital "Alpha Emergency", with one emergency bed (E1); as created.
async fn alpha_emergency(admin: &Api) -> Value {
    admin
        .post("/api/facilities", json!({"name": "Alpha Emergency", "kind": "hospital", "location": {"lat": -1.2800, "lon": 36.8300},
                                       "timezone": "Africa/Nairobi", "wards": [{"name": "Emergency", "kind": "emergency", "beds": ["E1"]}]}))
        .await
        .unwrap()
        .expect(201)
}

/// Where the story's devices connect: the hub's own endpoint, or an external mosquitto that the
/// hub is a client of (whose password and ACL files are rewritten once the devices exist).
enum Endpoint<'a> {
    Embedded(SocketAddr),
    External { broker: &'a Mosquitto, dir: &'a Path, pool: &'a sqlx::PgPool },
}

impl Endpoint<'_> {
    /// Call once every device is registered.
    async fn devices_registered(&self) {
        if let Endpoint::External { broker, dir, pool } = self {
            let login = medhub_device_gateway::BrokerLogin { username: "medhub-hub", password: "hub-broker-secret" };
            medhub_device_gateway::write_mosquitto_files(pool, dir, login).await.unwrap();
            broker.reload();
        }
    }

    async fn connect(&self, login: &Login) -> Mqtt {
        match self {
            Endpoint::Embedded(addr) => Mqtt::login(*addr, login).await,
            Endpoint::External { broker, .. } => {
                // mosquitto knows the device once it has reloaded its files.
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let client_id = format!("c-{}", Uuid::new_v4().simple());
                    match Mqtt::connect(options(broker.addr(), &client_id, &login.username, &login.password)).await {
                        Ok(mqtt) => return mqtt,
                        Err(error) => assert!(Instant::now() < deadline, "mosquitto never let the device in: {error}"),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sos_goes_to_the_nearest_unit_then_the_next_when_it_stays_silent_and_is_followed_to_the_hospital() {
    let world = World::start_with(1, |options| options.arg("--mqtt-listen", "127.0.0.1:0").arg("--dispatch-ack-timeout-secs", 2)).await;
    let addr = world.hub.mqtt_addr().await;
    sos_story(&world.hub, &world.tenant, &world.admin, &Endpoint::Embedded(addr)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_mosquitto_the_same_sos_is_dispatched_and_followed_to_the_hospital() {
    let db = TestDb::start().await;
    let tenant = db.tenant("alpha").await;
    let dir = db.scratch("mosquitto");
    let hub_login = medhub_device_gateway::BrokerLogin { username: "medhub-hub", password: "hub-broker-secret" };
    let files = medhub_device_gateway::write_mosquitto_files(&db.pool, &dir, hub_login).await.unwrap();
    let broker = Mosquitto::start(&dir, &files);
    let url = format!("mqtt://medhub-hub:hub-broker-secret@127.0.0.1:{}", broker.port);
    let hub = common::spawn_hub_with(HubOptions::serve(&db).arg("--mqtt-broker-url", url).arg("--dispatch-ack-timeout-secs", 2)).await;
    metric_reaches(&hub, "medhub_mqtt_broker_connected", 1.0).await;
    let admin = hub.login(&tenant, Role::Admin).await;
    sos_story(&hub, &tenant, &admin, &Endpoint::External { broker: &broker, dir: &dir, pool: &db.pool }).await;
}

/// SOS → the nearest unit (checked by brute force) → silence → the next unit → acknowledged, on
/// scene, transporting, arrived by geofence, closed; the whole timeline audited.
async fn sos_story(hub: &Hub, tenant: &common::Tenant, admin: &Api, endpoint: &Endpoint<'_>) {
    let hospital = alpha_emergency(admin).await;
    let scene = (-1.3000, 36.8000);
    let starts = [("AMB-01", (-1.3100, 36.8050)), ("AMB-02", (-1.2950, 36.7800)), ("AMB-03", (-1.2000, 36.9000))];
    let mut logins = Vec::new();
    for (call_sign, at) in starts {
        let id = unit(admin, call_sign).await;
        logins.push((id, device(admin, "alpha", id, "ambulance").await, at));
    }
    endpoint.devices_registered().await;
    let mut units = Vec::new();
    for (id, login, at) in logins {
        let mut mqtt = endpoint.connect(&login).await;
        go_on_duty(&mut mqtt, &login, at).await;
        units.push((id, login, mqtt, at));
    }
    for (id, ..) in &units {
        shows_on_the_map(admin, *id).await;
    }
    // Brute force: the units by distance to the scene.
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by(|a, b| haversine_km(units[*a].3, scene).total_cmp(&haversine_km(units[*b].3, scene)));
    let (first, second) = (order[0], order[1]);

    let dispatcher = hub.login(tenant, Role::Dispatcher).await;
    let (incident, id) = incident_reported(&dispatcher, json!({"location": {"lat": scene.0, "lon": scene.1}, "priority": "critical", "description": "SOS: chest pain"})).await;
    assert_eq!(incident["status"], "dispatched");
    assert_eq!(incident["unit_id"], units[first].0.to_string(), "the nearest unit by brute force");
    assert_eq!(incident["destination_id"], hospital["id"], "the facility with a free emergency bed");
    let told = command(&mut units[first].2).await;
    assert_eq!((told["type"].as_str(), told["incident_id"].as_str()), (Some("dispatch"), Some(id.as_str())));

    // The nearest unit says nothing: after the timeout the next nearest is sent.
    let reassigned = incident_reaches(&dispatcher, &id, "dispatched").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut current = reassigned;
    while current["unit_id"] != units[second].0.to_string() {
        assert!(Instant::now() < deadline, "never reassigned: {current}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        current = incident_reaches(&dispatcher, &id, "dispatched").await;
    }
    let told = command(&mut units[second].2).await;
    assert_eq!(told["incident_id"], id.as_str());
    assert_eq!(unit_position(admin, units[first].0).await.is_null(), false);
    let silent = admin.get(&format!("/api/ambulances/{}", units[first].0)).await.unwrap().ok();
    assert_eq!(silent["status"], "available", "the silent unit is free again");

    // The second acknowledges and works the mission; the geofence notices the arrival.
    let (_, login, mqtt, _) = &units[second];
    bring_the_patient_in(&dispatcher, mqtt, login, &id, (-1.2803, 36.8302)).await;
    crew_reports(&dispatcher, mqtt, login, &id, &["available"], "closed").await;

    let timeline = dispatcher.get(&format!("/api/incidents/{id}/timeline")).await.unwrap().ok();
    let steps: Vec<&str> = timeline["timeline"].as_array().unwrap().iter().map(|s| s["type"].as_str().unwrap()).collect();
    assert_eq!(steps, [
        "incident.created", "incident.dispatched", "incident.reassigning", "incident.dispatched", "incident.acknowledged",
        "incident.on_scene", "incident.transporting", "incident.at_hospital", "incident.closed",
    ]);
    let trail = admin.get(&format!("/api/audit?resource_type=incident&resource_id={id}&limit=100")).await.unwrap().ok();
    assert_eq!(trail["entries"].as_array().unwrap().len(), steps.len(), "every step is audited");
    let verified = admin.get("/api/audit/verify").await.unwrap().ok();
    assert_eq!(verified["ok"], true);
}

fn vitals(respiration: f64, spo2: f64, systolic: f64, pulse: f64, consciousness: &str, temperature: f64) -> Vec<u8> {
    json!({"respiration_rate": respiration, "spo2": spo2, "on_oxygen": false, "systolic_bp": systolic, "pulse": pulse,
           "consciousness": consciousness, "temperature": temperature, "measured_at": now()})
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deteriorating_patient_on_the_way_in_alerts_the_receiving_hospital() {
    let world = World::start_with(1, |options| options.arg("--mqtt-listen", "127.0.0.1:0")).await;
    let addr = world.hub.mqtt_addr().await;
    let admin = &world.admin;
    let hospital = alpha_emergency(admin).await;
    let hospital_id = hospital["id"].as_str().unwrap();
    let (unit_id, login, mut crew) = unit_on_the_map(admin, addr, "AMB-09", (-1.3050, 36.8000)).await;
    let monitor = device(admin, "alpha", unit_id, "monitor").await;
    let mut monitor_mqtt = Mqtt::login(addr, &monitor).await;

    // The emergency department watches its arrivals.
    let mut ed = common::Live::connect(&world.hub, &world.nurse).await;
    let arrivals = format!("tenant/alpha/facility/{hospital_id}/arrivals");
    assert_eq!(ed.subscribe(&arrivals, None).await["type"], "subscribed");
    assert_eq!(ed.next().await["type"], "snapshot");
    let mut dispatcher_live = common::Live::connect(&world.hub, &world.hub.login(&world.tenant, Role::Dispatcher).await).await;
    assert_eq!(dispatcher_live.subscribe(&arrivals, None).await["error"], "forbidden", "arrivals are for clinical staff");

    let dispatcher = world.hub.login(&world.tenant, Role::Dispatcher).await;
    let (_, id) = incident_reported(&dispatcher, json!({"location": {"lat": -1.3000, "lon": 36.8000}, "priority": "critical", "description": "fall from height"})).await;
    command(&mut crew).await;
    crew_reports(&dispatcher, &crew, &login, &id, &["ack", "on_scene", "transporting"], "transporting").await;

    // Stable vitals: no alert. Then they deteriorate: one alert, with the score, vitals and ETA.
    monitor_mqtt.publish_acknowledged(monitor.topic("vitals"), vitals(16.0, 97.0, 125.0, 80.0, "alert", 37.0)).await;
    monitor_mqtt.publish_acknowledged(monitor.topic("vitals"), vitals(27.0, 90.0, 88.0, 135.0, "voice", 39.5)).await;
    let alert = ed.next().await;
    assert_eq!(alert["type"], "arrival.alert", "{alert}");
    assert_eq!(alert["data"]["unit_id"], unit_id.to_string());
    assert_eq!(alert["data"]["facility_id"], hospital_id);
    assert_eq!(alert["data"]["news2"]["band"], "high");
    assert!(alert["data"]["news2"]["score"].as_u64().unwrap() >= 7);
    assert!(alert["data"]["eta_minutes"].as_f64().unwrap() > 0.0);
    // Still high: no repeat.
    monitor_mqtt.publish_acknowledged(monitor.topic("vitals"), vitals(28.0, 89.0, 86.0, 140.0, "voice", 39.6)).await;
    assert!(ed.next_within(Duration::from_millis(800)).await.is_none(), "one alert per rise, not per reading");
    let trail = admin.get("/api/audit?action=arrival.alert").await.unwrap().ok();
    assert_eq!(trail["entries"].as_array().unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Vital signs kept as the patient's observations

/// Polls an incident's observations (as `api`) until there are `count` (panics after 15 s).
async fn observations_reach(api: &Api, path: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = api.get(path).await.unwrap().ok();
        let observations = body["observations"].as_array().unwrap().clone();
        if observations.len() >= count {
            assert_eq!(observations.len(), count, "{body}");
            return observations;
        }
        assert!(Instant::now() < deadline, "{path} never held {count} observations: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vitals_on_the_way_in_become_the_patients_observations_read_by_the_doctor_and_kept_across_a_restart() {
    let db = TestDb::start().await;
    let tenant = db.tenant("alpha").await;
    let beta = db.tenant("beta").await;
    let patient = db.patients(&tenant, 1).await[0];
    let mut hub = common::spawn_hub_with(HubOptions::serve(&db).arg("--mqtt-listen", "127.0.0.1:0")).await;
    let addr = hub.mqtt_addr().await;
    let admin = hub.login(&tenant, Role::Admin).await;
    alpha_emergency(&admin).await;
    let (unit_id, login, mut crew) = unit_on_the_map(&admin, addr, "AMB-21", (-1.3050, 36.8000)).await;
    let monitor = device(&admin, "alpha", unit_id, "monitor").await;

    // A call for a known patient; the unit goes and starts monitoring on scene.
    let dispatcher = hub.login(&tenant, Role::Dispatcher).await;
    let (incident, id) = incident_reported(&dispatcher, json!({"location": {"lat": -1.3000, "lon": 36.8000}, "priority": "critical",
                                                               "description": "collapsed at home", "patient_id": patient})).await;
    assert_eq!(incident["unit_id"], unit_id.to_string());
    command(&mut crew).await;
    crew_reports(&dispatcher, &crew, &login, &id, &["ack", "on_scene"], "on_scene").await;
    let mut monitor_mqtt = Mqtt::login(addr, &monitor).await;
    for (respiration, spo2, systolic, pulse, consciousness, temperature) in [(16.0, 97.0, 125.0, 80.0, "alert", 37.0), (27.0, 90.0, 88.0, 135.0, "voice", 39.5), (22.0, 95.0, 115.0, 95.0, "alert", 38.4)] {
        tokio::time::sleep(Duration::from_millis(5)).await; // each reading measured at its own millisecond
        monitor_mqtt.publish_acknowledged(monitor.topic("vitals"), vitals(respiration, spo2, systolic, pulse, consciousness, temperature)).await;
    }

    // The doctor reads them for the incident and for the patient: in time order, scored.
    let doctor = hub.login(&tenant, Role::Doctor).await;
    let by_incident = observations_reach(&doctor, &format!("/api/incidents/{id}/observations"), 3).await;
    let bands: Vec<&str> = by_incident.iter().map(|o| o["news2"]["band"].as_str().unwrap()).collect();
    assert_eq!(bands, ["low", "high", "medium"]);
    assert_eq!(by_incident[0]["news2"]["score"], 0);
    assert!(by_incident[1]["news2"]["score"].as_u64().unwrap() >= 7);
    for observation in &by_incident {
        assert_eq!(observation["incident_id"], id.as_str());
        assert_eq!(observation["patient_id"], patient.to_string());
        assert_eq!(observation["unit_id"], unit_id.to_string());
    }
    assert_eq!(by_incident[1]["vitals"]["consciousness"], "voice");
    assert_eq!(by_incident[1]["vitals"]["spo2"], 90.0);
    let measured: Vec<&str> = by_incident.iter().map(|o| o["measured_at"].as_str().unwrap()).collect();
    assert!(measured.windows(2).all(|w| w[0] <= w[1]), "oldest first, newest last: {measured:?}");
    let by_patient = doctor.get(&format!("/api/patients/{patient}/observations")).await.unwrap().ok();
    assert_eq!(by_patient["observations"].as_array().unwrap(), &by_incident);
    let latest = doctor.get(&format!("/api/patients/{patient}/observations?limit=1")).await.unwrap().ok();
    assert_eq!((latest["observations"][0]["id"].clone(), latest["more"].clone()), (by_incident[2]["id"].clone(), json!(true)));
    let first = by_incident[0]["measured_at"].as_str().unwrap();
    let earlier = doctor.get(&format!("/api/incidents/{id}/observations?to={}", first.replace('+', "%2B"))).await.unwrap().ok();
    assert_eq!(earlier["observations"].as_array().unwrap().len(), 0, "to is exclusive");
    // The dispatcher follows the incident's vitals, but not the patient's record.
    assert_eq!(dispatcher.get(&format!("/api/incidents/{id}/observations")).await.unwrap().ok()["observations"].as_array().unwrap().len(), 3);
    assert_eq!(dispatcher.get(&format!("/api/patients/{patient}/observations")).await.unwrap().expect(403)["error"], "forbidden");

    // Another tenant is told nothing exists; a role without access is refused; bad queries name the field.
    let stranger = hub.login(&beta, Role::Doctor).await;
    stranger.get(&format!("/api/incidents/{id}/observations")).await.unwrap().expect(404);
    stranger.get(&format!("/api/patients/{patient}/observations")).await.unwrap().expect(404);
    let pharmacist = hub.login(&tenant, Role::Pharmacist).await;
    pharmacist.get(&format!("/api/incidents/{id}/observations")).await.unwrap().expect(403);
    pharmacist.get(&format!("/api/patients/{patient}/observations")).await.unwrap().expect(403);
    let unlinked_patient = hub.login(&tenant, Role::Patient).await;
    unlinked_patient.get(&format!("/api/patients/{patient}/observations")).await.unwrap().expect(404);
    for (query, field) in [("limit=0", "limit"), ("from=yesterday", "from"), ("from=2026-05-01T10:00:00Z&to=2026-05-01T09:00:00Z", "to"), ("colour=red", "colour")] {
        let refused = doctor.get(&format!("/api/incidents/{id}/observations?{query}")).await.unwrap().expect(400);
        assert_eq!(refused["field"], field, "{query}: {refused}");
    }
    doctor.get("/api/incidents/not-an-id/observations").await.unwrap().expect(404);

    // The trail: one entry per batch for what the unit recorded, and every read and refusal.
    let recorded = admin.get(&format!("/api/audit?action=observations.recorded&patient_id={patient}")).await.unwrap().ok();
    let recorded = recorded["entries"].as_array().unwrap();
    // Each reading here was acknowledged (so committed) before the next was sent: a batch each.
    assert!(!recorded.is_empty() && recorded.len() <= 3, "one entry per batch, never more: {recorded:?}");
    assert_eq!(recorded.iter().map(|e| e["detail"]["count"].as_u64().unwrap()).sum::<u64>(), 3);
    assert!(recorded.iter().all(|e| e["actor_kind"] == "device" && e["resource_id"] == id.as_str()));
    let reads = admin.get(&format!("/api/audit?action=observations.read&patient_id={patient}&limit=100")).await.unwrap().ok();
    let reads = reads["entries"].as_array().unwrap();
    let by = |role: &str, outcome: &str| reads.iter().filter(|e| e["actor_role"] == role && e["outcome"] == outcome).count();
    assert!(by("doctor", "success") >= 4, "{reads:?}");
    assert_eq!(by("dispatcher", "success"), 1);
    assert_eq!((by("dispatcher", "denied"), by("pharmacist", "denied"), by("patient", "denied")), (1, 1, 1), "{reads:?}");
    assert_eq!(admin.get("/api/audit/verify").await.unwrap().ok()["ok"], true);
    metric_reaches(&hub, "medhub_observations_written_total", 3.0).await;

    // Two more readings, acknowledged just before a graceful stop: none is lost.
    for (pulse, temperature) in [(100.0, 38.0), (92.0, 37.6)] {
        tokio::time::sleep(Duration::from_millis(5)).await;
        monitor_mqtt.publish_acknowledged(monitor.topic("vitals"), vitals(20.0, 95.0, 110.0, pulse, "alert", temperature)).await;
    }
    assert!(hub.terminate().await.success(), "the hub stops cleanly:\n{}", hub.logs());
    let hub = common::spawn_hub_with(HubOptions::serve(&db).arg("--mqtt-listen", "127.0.0.1:0")).await;
    let doctor = hub.login(&tenant, Role::Doctor).await;
    let kept = doctor.get(&format!("/api/patients/{patient}/observations")).await.unwrap().ok();
    let kept = kept["observations"].as_array().unwrap();
    assert_eq!(kept.len(), 5, "every acknowledged reading survived the restart: {kept:?}");
    assert_eq!(&kept[..3], &by_incident[..]);

    // The dispatcher's map starts from the unit's latest vitals for its incident.
    let dispatcher = hub.login(&tenant, Role::Dispatcher).await;
    let mut map = common::Live::connect(&hub, &dispatcher).await;
    assert_eq!(map.subscribe("tenant/alpha/map", None).await["type"], "subscribed");
    let snapshot = map.next().await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    let on_map = snapshot["data"]["units"].as_array().unwrap().iter().find(|u| u["unit_id"] == unit_id.to_string()).unwrap().clone();
    assert_eq!(on_map["vitals"], kept[4]["vitals"], "{on_map}");
    assert_eq!(on_map["news2"], kept[4]["news2"]);
}

// ---------------------------------------------------------------------------------------------
// An emergency bed held at the destination for the incoming patient

/// Creates a hospital at `at` with an emergency ward of `labels` and a general ward (its bed G1 is
/// never held for an ambulance patient); its id and its emergency beds' ids, in `labels` order.
async fn emergency_hospital(admin: &Api, name: &str, at: (f64, f64), labels: &[&str]) -> (String, Vec<String>) {
    let body = admin
        .post("/api/facilities", json!({"name": name, "kind": "hospital", "location": {"lat": at.0, "lon": at.1}, "timezone": "Africa/Nairobi",
                                       "wards": [{"name": "General", "kind": "general", "beds": ["G1"]}, {"name": "Emergency", "kind": "emergency", "beds": labels}]}))
        .await
        .unwrap()
        .expect(201);
    let beds = body["wards"][1]["beds"].as_array().unwrap().iter().map(|bed| bed["id"].as_str().unwrap().to_owned()).collect();
    (body["id"].as_str().unwrap().to_owned(), beds)
}

/// A bed as its facility's actor shows it (`GET /api/facilities/{id}`) and as the tenant's bed
/// board reads it (`GET /api/beds`); the two must agree.
async fn bed_now(api: &Api, facility: &str, bed: &str) -> Value {
    let find = |facility: &Value| {
        facility["wards"].as_array().unwrap().iter().flat_map(|w| w["beds"].as_array().unwrap().iter()).find(|b| b["id"] == bed).cloned()
    };
    let from_actor = find(&api.get(&format!("/api/facilities/{facility}")).await.unwrap().ok()).expect("the bed is in its facility");
    let board = api.get("/api/beds").await.unwrap().ok();
    let from_board = board["facilities"].as_array().unwrap().iter().find_map(find).expect("the bed is on the board");
    for field in ["status", "patient_id", "reserved_for", "reserved_patient_id"] {
        assert_eq!(from_actor[field], from_board[field], "{field}: the facility says {from_actor}, the board {from_board}");
    }
    from_actor
}

/// The next event on `live` that `wanted` accepts (others are skipped); panics after 15 s.
async fn next_event(live: &mut common::Live, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(message) = live.next_within(left).await else { panic!("no {what} arrived") };
        if wanted(&message) {
            return message;
        }
    }
}

/// The `data.detail` of the incident's last step of type `step`.
async fn step_detail(api: &Api, incident: &str, step: &str) -> Value {
    let timeline = api.get(&format!("/api/incidents/{incident}/timeline")).await.unwrap().ok();
    let found = timeline["timeline"].as_array().unwrap().iter().rev().find(|s| s["type"] == step).cloned();
    found.unwrap_or_else(|| panic!("no {step} in {timeline}"))["data"]["detail"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sos_holds_an_emergency_bed_at_its_destination_until_the_patient_is_admitted_or_the_incident_ends() {
    let world = World::start_with(1, |options| options.arg("--mqtt-listen", "127.0.0.1:0").arg("--dispatch-ack-timeout-secs", 600)).await;
    let addr = world.hub.mqtt_addr().await;
    let (admin, nurse) = (&world.admin, &world.nurse);
    let scene = (-1.3000, 36.8000);
    // Near (under 1 km from the scene) has one emergency bed; Far (about 5 km) has two.
    let (near, near_beds) = emergency_hospital(admin, "Alpha Near", (-1.2950, 36.8050), &["N1"]).await;
    let (far, far_beds) = emergency_hospital(admin, "Alpha Far", (-1.2650, 36.8250), &["F1", "F2"]).await;
    let (n1, f1) = (near_beds[0].as_str(), far_beds[0].as_str());

    // Two units near the scene, their crews listening for commands.
    let mut crews = Vec::new();
    for (call_sign, at) in [("AMB-11", (-1.3010, 36.8010)), ("AMB-12", (-1.3020, 36.8020))] {
        crews.push(unit_on_the_map(admin, addr, call_sign, at).await);
    }

    // The ward's screen watches the bed board; the dispatcher watches the map.
    let mut board = common::Live::connect(&world.hub, nurse).await;
    assert_eq!(board.subscribe(&world.tenant.beds_topic(), None).await["type"], "subscribed");
    assert_eq!(board.next().await["type"], "snapshot");
    let dispatcher = world.hub.login(&world.tenant, Role::Dispatcher).await;
    let mut map = common::Live::connect(&world.hub, &dispatcher).await;
    assert_eq!(map.subscribe("tenant/alpha/map", None).await["type"], "subscribed");
    let snapshot = map.next().await;
    let near_on_map = snapshot["data"]["facilities"].as_array().unwrap().iter().find(|f| f["id"] == near.as_str()).unwrap().clone();
    assert_eq!(near_on_map["free_emergency_beds"], 1, "{snapshot}");

    // A patient raises an SOS: the nearest unit goes to Near, whose only emergency bed is held.
    let patients = world.db.patients(&world.tenant, 2).await;
    world.db.link_patient_user(&world.tenant, patients[0]).await;
    let sos = world.hub.login(&world.tenant, Role::Patient).await;
    let (first, first_id) = incident_reported(&sos, json!({"location": {"lat": scene.0, "lon": scene.1}, "priority": "critical", "description": "SOS: chest pain"})).await;
    assert_eq!(first["status"], "dispatched", "{first}");
    assert_eq!((first["destination_id"].as_str(), first["reserved_bed_id"].as_str()), (Some(near.as_str()), Some(n1)), "{first}");
    let held = bed_now(nurse, &near, n1).await;
    assert_eq!(held["status"], "reserved");
    assert_eq!(held["reserved_for"], first_id.as_str());
    assert_eq!(held["reserved_patient_id"], patients[0].to_string());
    let listed = nurse.get("/api/facilities").await.unwrap().ok();
    let near_counts = &listed.as_array().unwrap().iter().find(|f| f["id"] == near.as_str()).unwrap()["beds"];
    assert_eq!((near_counts["reserved"].as_i64(), near_counts["free"].as_i64()), (Some(1), Some(1)), "held apart from free (G1): {near_counts}");
    let seen = next_event(&mut board, "bed-board event for N1", |e| e["type"] == "bed.status_changed" && e["data"]["bed_id"] == n1).await;
    assert_eq!((seen["data"]["to"].as_str(), seen["data"]["reserved_for"].as_str()), (Some("reserved"), Some(first_id.as_str())), "{seen}");
    let capacity = next_event(&mut map, "Near's capacity", |e| e["type"] == "facility.capacity" && e["data"]["facility_id"] == near.as_str()).await;
    assert_eq!(capacity["data"]["free_emergency_beds"], 0, "{capacity}");
    // The crew is told where to go and which bed waits; the timeline and the audit trail record it.
    let (first_unit, _, first_crew) = crews.iter_mut().find(|(id, ..)| first["unit_id"] == id.to_string()).unwrap();
    let first_unit = *first_unit;
    let told = command(first_crew).await;
    assert_eq!((told["destination"]["id"].as_str(), told["destination"]["bed"].as_str()), (Some(near.as_str()), Some("N1")), "{told}");
    assert_eq!(step_detail(&dispatcher, &first_id, "incident.dispatched").await["reserved_bed"]["id"], n1);
    let trail = admin.get(&format!("/api/audit?action=incident.dispatch&resource_id={first_id}")).await.unwrap().ok();
    assert_eq!(trail["entries"][0]["detail"]["reserved_bed"]["id"], n1, "{trail}");
    let trail = admin.get(&format!("/api/audit?action=bed.reserve&resource_id={n1}")).await.unwrap().ok();
    assert_eq!(trail["entries"][0]["detail"]["incident_id"], first_id.as_str(), "{trail}");

    // Staff do not give the held bed away by accident, nor reserve one by hand.
    assert_eq!(nurse.set_bed(near.parse().unwrap(), n1.parse().unwrap(), "free").await.unwrap().status, 409);
    let stranger = nurse.put(&format!("/api/facilities/{near}/beds/{n1}/status"), json!({"status": "occupied", "patient_id": patients[1]})).await.unwrap();
    assert_eq!(stranger.status, 409, "{}", stranger.body);
    let by_hand = nurse.set_bed(far.parse().unwrap(), f1.parse().unwrap(), "reserved").await.unwrap();
    assert_eq!((by_hand.status, by_hand.body["field"].as_str()), (400, Some("status")), "{}", by_hand.body);
    assert_eq!(bed_now(nurse, &near, n1).await["status"], "reserved");

    // A second call while Near is full goes to the next facility with a free emergency bed.
    let (second, second_id) = incident_reported(&dispatcher, json!({"location": {"lat": scene.0, "lon": scene.1}, "priority": "urgent", "description": "fall at the market"})).await;
    assert_eq!((second["destination_id"].as_str(), second["reserved_bed_id"].as_str()), (Some(far.as_str()), Some(f1)), "{second}");
    assert_eq!(bed_now(nurse, &far, f1).await["reserved_for"], second_id.as_str());

    // Cancelling the first frees its bed: on the board, live, and on the map.
    let cancelled = dispatcher.post(&format!("/api/incidents/{first_id}/cancel"), json!({"reason": "caller recovered"})).await.unwrap().ok();
    assert_eq!((cancelled["status"].as_str(), cancelled["reserved_bed_id"].as_str()), (Some("cancelled"), None), "{cancelled}");
    let freed = bed_now(nurse, &near, n1).await;
    assert_eq!((freed["status"].as_str(), freed["reserved_for"].as_str()), (Some("free"), None), "{freed}");
    let seen = next_event(&mut board, "N1 freed", |e| e["type"] == "bed.status_changed" && e["data"]["bed_id"] == n1 && e["data"]["to"] == "free").await;
    assert_eq!(seen["data"]["ended_reservation"], first_id.as_str());
    let capacity = next_event(&mut map, "Near's capacity", |e| e["type"] == "facility.capacity" && e["data"]["facility_id"] == near.as_str()).await;
    assert_eq!(capacity["data"]["free_emergency_beds"], 1, "{capacity}");
    assert_eq!(step_detail(&dispatcher, &first_id, "incident.cancelled").await["reserved_bed"]["outcome"], "released");
    let trail = admin.get(&format!("/api/audit?action=bed.reservation_release&resource_id={n1}")).await.unwrap().ok();
    assert_eq!(trail["entries"][0]["actor_role"], "dispatcher", "released on the dispatcher's cancel: {trail}");

    // The second is worked to the end without the patient being admitted into F1: closing frees it.
    let (_, login, crew) = crews.iter().find(|(id, ..)| second["unit_id"] == id.to_string()).unwrap();
    assert_ne!(second["unit_id"], first_unit.to_string());
    bring_the_patient_in(&dispatcher, crew, login, &second_id, (-1.2651, 36.8251)).await;
    assert_eq!(bed_now(nurse, &far, f1).await["status"], "reserved", "held until the incident ends");
    crew_reports(&dispatcher, crew, login, &second_id, &["available"], "closed").await;
    assert_eq!(bed_now(nurse, &far, f1).await["status"], "free");
    assert_eq!(step_detail(&dispatcher, &second_id, "incident.closed").await["reserved_bed"]["outcome"], "released");

    // A third call for a known patient holds N1 again; admitting that patient ends the hold, and
    // cancelling afterwards leaves the patient in their bed.
    let (third, third_id) = incident_reported(&dispatcher, json!({"location": {"lat": scene.0, "lon": scene.1}, "priority": "urgent", "description": "breathless", "patient_id": patients[1]})).await;
    assert_eq!(third["reserved_bed_id"], n1, "{third}");
    let admitted = nurse.put(&format!("/api/facilities/{near}/beds/{n1}/status"), json!({"status": "occupied", "patient_id": patients[1]})).await.unwrap().ok();
    assert_eq!((admitted["bed"]["status"].as_str(), admitted["bed"]["reserved_for"].as_str()), (Some("occupied"), None), "{admitted}");
    dispatcher.post(&format!("/api/incidents/{third_id}/cancel"), json!({"reason": "duplicate call"})).await.unwrap().ok();
    let kept = bed_now(nurse, &near, n1).await;
    assert_eq!((kept["status"].as_str(), kept["patient_id"].as_str()), (Some("occupied"), Some(patients[1].to_string().as_str())), "{kept}");
    assert_eq!(step_detail(&dispatcher, &third_id, "incident.cancelled").await["reserved_bed"]["outcome"], "no_longer_held");

    // The race: the read model still says N1 is free when dispatch chooses, but by the time Near's
    // actor is asked the bed is gone (here the read is made stale by hand, as a nurse's admission
    // landing between the read and the request would leave it). Dispatch goes on to the next.
    sqlx::query("UPDATE beds SET status = 'free', patient_id = NULL WHERE id = $1")
        .bind(n1.parse::<Uuid>().unwrap())
        .execute(&world.db.pool)
        .await
        .unwrap();
    let (fourth, _) = incident_reported(&dispatcher, json!({"location": {"lat": scene.0, "lon": scene.1}, "priority": "urgent", "description": "cyclist down"})).await;
    assert_eq!((fourth["destination_id"].as_str(), fourth["reserved_bed_id"].as_str()), (Some(far.as_str()), Some(f1)), "{fourth}");
    let verified = admin.get("/api/audit/verify").await.unwrap().ok();
    assert_eq!(verified["ok"], true);
}

/// A dispatcher who wants the last word asks for a proposal: the hub names the nearest unit (and
/// alternatives) but tells no crew until the dispatcher confirms; they may send another unit
/// instead, which is then the one told. A patient's SOS is never held for confirmation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposed_dispatch_waits_for_the_dispatcher_who_may_send_another_unit() {
    let (world, addr) = mqtt_world().await;
    let admin = &world.admin;
    let scene = (-1.3000, 36.8000);
    let starts = [("AMB-11", (-1.3050, 36.8010)), ("AMB-12", (-1.2700, 36.7700)), ("AMB-13", (-1.2000, 36.9000))];
    let mut units = Vec::new();
    for (call_sign, at) in starts {
        let (id, _, mqtt) = unit_on_the_map(admin, addr, call_sign, at).await;
        units.push((id, mqtt));
    }
    let dispatcher = world.hub.login(&world.tenant, Role::Dispatcher).await;
    let report = json!({"location": {"lat": scene.0, "lon": scene.1}, "priority": "urgent", "description": "fall at home", "dispatch": "propose"});
    let (proposed, id) = incident_reported(&dispatcher, report.clone()).await;
    assert_eq!(proposed["status"], "proposed");
    assert_eq!(proposed["proposed_unit_id"], units[0].0.to_string(), "the nearest unit is proposed");
    assert!(proposed["unit_id"].is_null());
    let timeline = dispatcher.get(&format!("/api/incidents/{id}/timeline")).await.unwrap().ok();
    let step = timeline["timeline"].as_array().unwrap().iter().find(|s| s["type"] == "incident.proposed").expect("a proposed step").clone();
    assert_eq!(step["data"]["detail"]["call_sign"], "AMB-11", "{step}");
    assert_eq!(step["data"]["detail"]["alternatives"][0]["call_sign"], "AMB-12", "{step}");
    // Nothing is sent to any crew while the proposal waits.
    for (_, mqtt) in &mut units {
        assert!(tokio::time::timeout(Duration::from_millis(700), command(mqtt)).await.is_err(), "a crew was told before the dispatcher confirmed");
    }

    // Only dispatchers and admins confirm; a unit that cannot go is refused, not overruled.
    assert_eq!(world.nurse.post(&format!("/api/incidents/{id}/dispatch"), json!({})).await.unwrap().status, 403);
    let unknown = dispatcher.post(&format!("/api/incidents/{id}/dispatch"), json!({"unit_id": Uuid::new_v4()})).await.unwrap();
    assert_eq!(unknown.status, 409, "{:?}", unknown.body);
    let bad = dispatcher.post(&format!("/api/incidents/{id}/dispatch"), json!({"unit_id": "amb-12"})).await.unwrap();
    assert_eq!((bad.status, bad.body["field"].as_str()), (400, Some("unit_id")), "{:?}", bad.body);

    // The dispatcher sends the second unit instead: that crew is told, the proposed one is not.
    let sent = dispatcher.post(&format!("/api/incidents/{id}/dispatch"), json!({"unit_id": units[1].0})).await.unwrap().ok();
    assert_eq!((sent["status"].as_str(), sent["unit_id"].as_str()), (Some("dispatched"), Some(units[1].0.to_string().as_str())));
    assert!(sent["proposed_unit_id"].is_null());
    let told = command(&mut units[1].1).await;
    assert_eq!((told["type"].as_str(), told["incident_id"].as_str()), (Some("dispatch"), Some(id.as_str())));
    assert!(tokio::time::timeout(Duration::from_millis(700), command(&mut units[0].1)).await.is_err(), "the proposed unit was not sent");
    let again = dispatcher.post(&format!("/api/incidents/{id}/dispatch"), json!({})).await.unwrap();
    assert_eq!(again.status, 409, "a dispatched incident is not dispatched twice");

    // A second proposal confirmed as it stands sends the proposed (nearest free) unit.
    let (second, second_id) = incident_reported(&dispatcher, report).await;
    assert_eq!(second["proposed_unit_id"], units[0].0.to_string());
    let confirmed = dispatcher.post(&format!("/api/incidents/{second_id}/dispatch"), Value::Null).await.unwrap().ok();
    assert_eq!(confirmed["unit_id"], units[0].0.to_string());
    assert_eq!(command(&mut units[0].1).await["incident_id"], second_id);
    let audit = admin.get(&format!("/api/audit?resource_id={second_id}")).await.unwrap().ok();
    let actions: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"incident.propose") && actions.contains(&"incident.dispatch"), "{actions:?}");

    // A patient's SOS is not held for a proposal.
    let patient = world.hub.login(&world.tenant, Role::Patient).await;
    let held = patient.post("/api/incidents", json!({"location": {"lat": scene.0, "lon": scene.1}, "priority": "critical", "description": "SOS", "dispatch": "propose"})).await.unwrap();
    assert_eq!((held.status, held.body["field"].as_str()), (400, Some("dispatch")));
}

// ---------------------------------------------------------------------------------------------
// What a monitor was acknowledged for survives a kill -9

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vitals_reading_a_monitor_was_acknowledged_for_survives_a_kill_9_of_the_hub() {
    let db = TestDb::start().await;
    let tenant = db.tenant("alpha").await;
    let options = || HubOptions::serve(&db).arg("--mqtt-listen", "127.0.0.1:0");
    let mut hub = common::spawn_hub_with(options()).await;
    let addr = hub.mqtt_addr().await;
    let admin = hub.login(&tenant, Role::Admin).await;
    let (unit_id, login, mut crew) = unit_on_the_map(&admin, addr, "AMB-31", (-1.3050, 36.8000)).await;
    let monitor = device(&admin, "alpha", unit_id, "monitor").await;
    let dispatcher = hub.login(&tenant, Role::Dispatcher).await;
    let (incident, id) = incident_reported(&dispatcher, json!({"location": {"lat": -1.3000, "lon": 36.8000}, "priority": "critical", "description": "chest pain"})).await;
    assert_eq!(incident["unit_id"], unit_id.to_string());
    command(&mut crew).await;
    crew_reports(&dispatcher, &crew, &login, &id, &["ack", "on_scene"], "on_scene").await;

    // The monitor sends a burst as fast as it can, each reading told apart by its pulse, and
    // counts the PUBACKs; the hub is killed the moment the last one arrives.
    const READINGS: usize = 20;
    let mut monitor_mqtt = Mqtt::login(addr, &monitor).await;
    for i in 0..READINGS {
        let pulse = 60.0 + i as f64;
        monitor_mqtt.client.publish(monitor.topic("vitals"), QoS::AtLeastOnce, false, vitals(18.0, 96.0, 120.0, pulse, "alert", 37.0)).await.unwrap();
    }
    let mut acknowledged = 0;
    while acknowledged < READINGS {
        match tokio::time::timeout(Duration::from_secs(10), monitor_mqtt.events.recv()).await {
            Ok(Some(Ok(Packet::PubAck(_)))) => acknowledged += 1,
            Ok(Some(Ok(_))) => continue,
            other => panic!("after {acknowledged} PUBACKs the hub stopped answering: {other:?}"),
        }
    }
    hub.kill9().await;

    // A new hub on the same database: every acknowledged reading is there, and audited.
    let hub = common::spawn_hub_with(options()).await;
    let doctor = hub.login(&tenant, Role::Doctor).await;
    let kept = doctor.get(&format!("/api/incidents/{id}/observations")).await.unwrap().ok();
    let mut pulses: Vec<u64> = kept["observations"].as_array().unwrap().iter().map(|o| o["vitals"]["pulse"].as_f64().unwrap() as u64).collect();
    pulses.sort_unstable();
    assert_eq!(pulses, (60..60 + READINGS as u64).collect::<Vec<_>>(), "every one of the {acknowledged} acknowledged readings survived the kill: {kept}");
    let admin = hub.login(&tenant, Role::Admin).await;
    let recorded = admin.get(&format!("/api/audit?action=observations.recorded&resource_type=incident&resource_id={id}&limit=100")).await.unwrap().ok();
    let counted: u64 = recorded["entries"].as_array().unwrap().iter().map(|e| e["detail"]["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, READINGS as u64, "each reading's audit entry was committed with it: {recorded}");
    assert_eq!(admin.get("/api/audit/verify").await.unwrap().ok()["ok"], true);
}
