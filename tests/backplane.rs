//! Several hubs on one database share their live updates through a Redis backplane: a bed change
//! made through the hub that serves the tenant reaches the bed board on every hub, every change,
//! in order, once; the hub relaying PostgreSQL's notifications to Redis may die (kill -9) and
//! another takes over without a change going missing; a unit's position reported to one hub moves
//! the dispatcher's map on another; and while Redis itself is down every hub still delivers every
//! event to its own screens, then rejoins the backplane when Redis is back.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use uuid::Uuid;

use common::redis::TestRedis;
use common::{metric, spawn_hub_with, Api, Facility, Hub, HubOptions, Live, TestDb};
use medhub_actors::Role;

/// Bed changes in flight at once, as on a busy ward.
const CONCURRENT_NURSES: usize = 8;

async fn node(db: &TestDb, redis: &TestRedis, name: &str) -> Hub {
    spawn_hub_with(HubOptions::node(db, name).arg("--redis-url", redis.url())).await
}

/// Polls the hub's `/metrics` until `series` equals `value`; panics after `limit`.
async fn metric_becomes(hub: &Hub, series: &str, value: f64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let metrics = hub.metrics().await;
        if metric(&metrics, series) == value {
            return;
        }
        assert!(Instant::now() < deadline, "{series} did not become {value} within {limit:?}:\n{metrics}\nhub log:\n{}", hub.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn is_relay(hub: &Hub) -> bool {
    metric(&hub.metrics().await, "medhub_backplane_relay") == 1.0
}

/// The one hub among `hubs` relaying events to Redis (its index); panics if none is within `limit`
/// or if several are.
async fn relay_among(hubs: &[&Hub], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let mut relays = Vec::new();
        for (index, hub) in hubs.iter().enumerate() {
            if is_relay(hub).await {
                relays.push(index);
            }
        }
        assert!(relays.len() <= 1, "hubs {relays:?} all claim to be the relay");
        if let [relay] = relays[..] {
            return relay;
        }
        assert!(Instant::now() < deadline, "no hub became the relay within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `changes` bed changes through `nurse`, [`CONCURRENT_NURSES`] at a time: each nurse toggles her
/// own bed between cleaning and free (a bed already in the asked status changes nothing and
/// publishes nothing, so that answer does not count). `done` counts the committed ones.
async fn change_beds(nurse: &Api, facility: &Facility, changes: usize, done: Arc<AtomicUsize>) {
    let mut nurses = Vec::new();
    for lane in 0..CONCURRENT_NURSES {
        let (nurse, facility_id, bed, done) = (nurse.clone(), facility.id, facility.beds[lane], done.clone());
        let mine = changes / CONCURRENT_NURSES + usize::from(lane < changes % CONCURRENT_NURSES);
        nurses.push(tokio::spawn(async move {
            let (mut status, mut committed) = ("cleaning", 0);
            while committed < mine {
                let reply = nurse.set_bed(facility_id, bed, status).await.expect("the hub answers");
                assert_eq!(reply.status, 200, "{}", reply.body);
                if reply.body["seq"].is_i64() {
                    committed += 1;
                    done.fetch_add(1, Ordering::SeqCst);
                }
                status = if status == "cleaning" { "free" } else { "cleaning" };
            }
        }));
    }
    for lane in nurses {
        lane.await.expect("a nurse's changes");
    }
}

/// A bed board on `hub`: subscribed to the beds topic, snapshot read; the seq it starts from.
async fn bed_board(hub: &Hub, api: &Api, topic: &str) -> (Live, i64) {
    let mut live = Live::connect(hub, api).await;
    let subscribed = live.subscribe(topic, None).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(live.next().await["type"], "snapshot");
    (live, subscribed["seq"].as_i64().expect("subscribed seq"))
}

/// Reads `count` events and checks they are exactly the bed changes after `after`, in order: no
/// gap, no duplicate. Returns the last seq.
async fn every_change_in_order(board: &mut Live, who: &str, after: i64, count: usize) -> i64 {
    let events = board.events(count).await;
    let seqs: Vec<i64> = events.iter().map(|event| event["seq"].as_i64().expect("seq")).collect();
    let expected: Vec<i64> = (after + 1..=after + count as i64).collect();
    assert_eq!(seqs, expected, "{who} got the changes out of order, with a gap or twice");
    assert!(events.iter().all(|event| event["type"] == "bed.status_changed"), "{who}: {:?}", events.first());
    // Nothing more: no duplicate arrives late.
    if let Some(extra) = board.next_within(Duration::from_millis(300)).await {
        panic!("{who} got more than the {count} changes: {extra}");
    }
    after + count as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hub_shows_every_bed_change_in_order_even_when_the_relay_dies() {
    let db = TestDb::start().await;
    let redis = TestRedis::start().await;
    let alpha = db.tenant("alpha").await;
    let topic = alpha.beds_topic();

    // Hub B starts first, alone: it becomes the relay. Then A, which serves alpha, and C.
    let mut hub_b = node(&db, &redis, "node-b").await;
    metric_becomes(&hub_b, "medhub_backplane_relay", 1.0, Duration::from_secs(15)).await;
    let hub_a = node(&db, &redis, "node-a").await;
    let hub_c = node(&db, &redis, "node-c").await;
    let admin_a = hub_a.login(&alpha, Role::Admin).await;
    let facility = admin_a.create_facility("Alpha General", CONCURRENT_NURSES).await;
    let nurse_a = hub_a.login(&alpha, Role::Nurse).await;
    for hub in [&hub_a, &hub_b, &hub_c] {
        metric_becomes(hub, "medhub_backplane_connected", 1.0, Duration::from_secs(15)).await;
    }
    assert_eq!(relay_among(&[&hub_a, &hub_b, &hub_c], Duration::from_secs(5)).await, 1, "hub B is the relay");

    // A bed board on every hub.
    let (mut board_a, start) = bed_board(&hub_a, &nurse_a, &topic).await;
    let (mut board_b, start_b) = bed_board(&hub_b, &hub_b.login(&alpha, Role::Nurse).await, &topic).await;
    let (mut board_c, start_c) = bed_board(&hub_c, &hub_c.login(&alpha, Role::Doctor).await, &topic).await;
    assert_eq!((start_b, start_c), (start, start), "every board starts from the same snapshot");

    // 200 changes through hub A reach every board: in order, each once.
    change_beds(&nurse_a, &facility, 200, Arc::new(AtomicUsize::new(0))).await;
    let last = every_change_in_order(&mut board_a, "hub A's board", start, 200).await;
    every_change_in_order(&mut board_b, "hub B's board", start, 200).await;
    every_change_in_order(&mut board_c, "hub C's board", start, 200).await;

    // They came through Redis, relayed by B: PostgreSQL notified one listener, not three.
    assert!(metric(&hub_b.metrics().await, "medhub_backplane_published_total{kind=\"event\"}") >= 200.0);
    for hub in [&hub_a, &hub_b, &hub_c] {
        assert!(metric(&hub.metrics().await, "medhub_backplane_received_total{kind=\"event\"}") >= 200.0, "{}", hub.metrics().await);
    }
    let listeners: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN \"medhub_events\"'")
        .fetch_one(&db.pool)
        .await
        .expect("sessions");
    assert_eq!(listeners, 1, "only the relay listens to PostgreSQL");

    // 200 more; the relay dies (kill -9) while they are being made.
    let done = Arc::new(AtomicUsize::new(0));
    let writing = tokio::spawn({
        let (nurse, facility, done) = (nurse_a.clone(), facility.clone(), done.clone());
        async move { change_beds(&nurse, &facility, 200, done).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::SeqCst) < 50 {
        assert!(Instant::now() < deadline, "the first 50 changes took over 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hub_b.kill9().await;
    writing.await.expect("the changes are all acknowledged");

    // Hub A and hub C still show every change, in order, once; one of them relays now.
    every_change_in_order(&mut board_a, "hub A's board", last, 200).await;
    every_change_in_order(&mut board_c, "hub C's board", last, 200).await;
    relay_among(&[&hub_a, &hub_c], Duration::from_secs(10)).await;
}

/// Registers an ambulance unit and its tracker through `admin`: (unit id, MQTT username, password).
async fn unit_with_tracker(admin: &Api, call_sign: &str) -> (Uuid, String, String) {
    let unit = admin.post("/api/ambulances", json!({"call_sign": call_sign})).await.expect("reply").expect(201);
    let unit: Uuid = unit["id"].as_str().and_then(|id| id.parse().ok()).expect("unit id");
    let device = admin.post("/api/devices", json!({"unit_id": unit, "kind": "ambulance", "name": format!("tracker of {call_sign}")})).await.expect("reply").expect(201);
    let credential = |field: &str| device[field].as_str().expect("device credentials").to_owned();
    (unit, credential("username"), credential("password"))
}

/// The next `live` frame on `map` with a position of `unit`; panics after `limit`.
async fn position_on(map: &mut Live, unit: Uuid, limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(frame) = map.next_within(left).await else { panic!("no position of unit {unit} within {limit:?}") };
        if frame["type"] != "live" {
            continue;
        }
        let found = frame["updates"].as_array().into_iter().flatten().find(|update| update["type"] == "unit.position" && update["data"]["unit_id"] == unit.to_string());
        if let Some(update) = found {
            return update.clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_reported_to_one_hub_moves_the_map_on_another() {
    let db = TestDb::start().await;
    let redis = TestRedis::start().await;
    let alpha = db.tenant("alpha").await;
    let hub_a = node(&db, &redis, "node-a").await;
    let hub_b = node(&db, &redis, "node-b").await;

    // Hub A serves alpha: the unit and its tracker are registered there, and the tracker reports to
    // A's MQTT endpoint. The dispatcher's map is open on hub B.
    let admin_a = hub_a.login(&alpha, Role::Admin).await;
    let (unit, username, password) = unit_with_tracker(&admin_a, "AMB-01").await;
    for hub in [&hub_a, &hub_b] {
        metric_becomes(hub, "medhub_backplane_connected", 1.0, Duration::from_secs(15)).await;
    }
    let dispatcher_b = hub_b.login(&alpha, Role::Dispatcher).await;
    let mut map_b = Live::connect(&hub_b, &dispatcher_b).await;
    let map_topic = format!("tenant/{}/map", alpha.slug);
    assert_eq!(map_b.subscribe(&map_topic, None).await["type"], "subscribed");
    assert_eq!(map_b.next().await["type"], "snapshot");

    let mqtt = hub_a.mqtt_addr().await;
    let mut options = MqttOptions::new(format!("tracker-{}", Uuid::new_v4().simple()), mqtt.ip().to_string(), mqtt.port());
    options.set_credentials(username, password);
    options.set_keep_alive(Duration::from_secs(30));
    let (tracker, mut connection) = AsyncClient::new(options, 16);
    let driving = tokio::spawn(async move {
        loop {
            if let Err(e) = connection.poll().await {
                return e.to_string();
            }
        }
    });

    // The crew drives: a fix every 200 ms until the map on B shows one.
    let reporting = tokio::spawn(async move {
        for n in 0..100 {
            let fix = json!({"lat": -1.2921 + n as f64 * 1e-4, "lon": 36.8219, "speed": 11.5, "heading": 90, "accuracy": 5,
                             "fix_time": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)});
            if tracker.publish(format!("medhub/alpha/ambulance/{unit}/gps"), QoS::AtLeastOnce, false, fix.to_string()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let update = position_on(&mut map_b, unit, Duration::from_secs(20)).await;
    reporting.abort();
    driving.abort();
    assert_eq!(update["topic"], map_topic, "{update}");
    assert!(update["data"]["lat"].as_f64().is_some_and(|lat| (lat - -1.2921).abs() < 0.02), "{update}");
    assert_eq!(update["seq"], 0, "a live-only update, not an event");

    let metrics_a = hub_a.metrics().await;
    assert!(metric(&metrics_a, "medhub_backplane_published_total{kind=\"live\"}") >= 1.0, "{metrics_a}");
    assert!(metric(&hub_b.metrics().await, "medhub_backplane_received_total{kind=\"live\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_every_hub_still_shows_every_change_and_rejoins_when_it_is_back() {
    let db = TestDb::start().await;
    let mut redis = TestRedis::start().await;
    let alpha = db.tenant("alpha").await;
    let topic = alpha.beds_topic();
    let hub_a = node(&db, &redis, "node-a").await;
    let hub_b = node(&db, &redis, "node-b").await;
    let admin_a = hub_a.login(&alpha, Role::Admin).await;
    let facility = admin_a.create_facility("Alpha General", CONCURRENT_NURSES).await;
    let nurse_a = hub_a.login(&alpha, Role::Nurse).await;
    for hub in [&hub_a, &hub_b] {
        metric_becomes(hub, "medhub_backplane_connected", 1.0, Duration::from_secs(15)).await;
    }
    let (mut board_a, start) = bed_board(&hub_a, &nurse_a, &topic).await;
    let (mut board_b, _) = bed_board(&hub_b, &hub_b.login(&alpha, Role::Nurse).await, &topic).await;

    // Redis crashes. Both hubs notice, and listen to PostgreSQL themselves meanwhile.
    redis.kill();
    for hub in [&hub_a, &hub_b] {
        metric_becomes(hub, "medhub_backplane_connected", 0.0, Duration::from_secs(15)).await;
    }
    change_beds(&nurse_a, &facility, 40, Arc::new(AtomicUsize::new(0))).await;
    let last = every_change_in_order(&mut board_a, "hub A's board (Redis down)", start, 40).await;
    every_change_in_order(&mut board_b, "hub B's board (Redis down)", start, 40).await;
    let lost = hub_b.logs().lines().filter(|line| line.contains("lost the Redis backplane")).count();
    assert_eq!(lost, 1, "the outage is logged once, not at every retry:\n{}", hub_b.logs());

    // Redis is back: both hubs rejoin, one relays, and changes come through Redis again.
    redis.restart().await;
    for hub in [&hub_a, &hub_b] {
        metric_becomes(hub, "medhub_backplane_connected", 1.0, Duration::from_secs(20)).await;
    }
    relay_among(&[&hub_a, &hub_b], Duration::from_secs(10)).await;
    let received_before = metric(&hub_b.metrics().await, "medhub_backplane_received_total{kind=\"event\"}");
    change_beds(&nurse_a, &facility, 40, Arc::new(AtomicUsize::new(0))).await;
    every_change_in_order(&mut board_a, "hub A's board (Redis back)", last, 40).await;
    every_change_in_order(&mut board_b, "hub B's board (Redis back)", last, 40).await;
    let received_after = metric(&hub_b.metrics().await, "medhub_backplane_received_total{kind=\"event\"}");
    assert!(received_after >= received_before + 40.0, "hub B heard the changes through Redis ({received_before} → {received_after})");
}
