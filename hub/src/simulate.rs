//! `hub simulate`: a fleet of simulated ambulance units that drive the hub the way real ones do,
//! from a separate process, over the real MQTT endpoint.
//!
//! It logs in as the tenant's admin over HTTP, registers (or reuses, by call sign) units
//! `SIM-001`…, registers a fresh device for each (a device's password is shown only once, so a
//! previous run's devices cannot be reused), connects one MQTT client per unit and listens on the
//! unit's own command topic. Idle units wander slowly around a base in the demo city (Nairobi); on
//! a `dispatch` command a unit acknowledges, drives to the scene at about 50 km/h, reports
//! `on_scene`, then `transporting`, drives to the destination the hub chose (the hub's geofence
//! marks it `at_hospital`), hands over and reports `available`. While it transports it sends the
//! patient's vital signs, which sometimes deteriorate so that NEWS2 alerts are seen too. It exists
//! so that the dispatcher's map comes alive in the demo and so that the dispatch story can be
//! tested end to end against independent clients.

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{SecondsFormat, Utc};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};
use uuid::Uuid;

/// The demo city's area: units are kept inside it.
const AREA_LAT: (f64, f64) = (-1.35, -1.20);
const AREA_LON: (f64, f64) = (36.70, 36.95);
/// Where bases are placed: a margin inside the area, so wandering stays inside too.
const BASE_LAT: (f64, f64) = (-1.33, -1.22);
const BASE_LON: (f64, f64) = (36.73, 36.92);
/// How far an idle unit wanders from its base.
const WANDER_RADIUS_M: f64 = 800.0;
const IDLE_SPEED_MPS: f64 = 3.0;
/// About 50 km/h: a city ambulance under lights, on average.
const MISSION_SPEED_MPS: f64 = 13.9;
/// Time on scene before the crew leaves with the patient.
const ON_SCENE: Duration = Duration::from_secs(4);
/// Time at the hospital handing the patient over before the unit is free again.
const HANDOVER: Duration = Duration::from_secs(3);
const VITALS_EVERY: Duration = Duration::from_secs(3);

/// What `hub simulate` was asked to do.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub units: usize,
    pub rate_hz: f64,
    pub tenant: String,
    /// The hub's base URL, `http://host:port`.
    pub hub_url: String,
    /// The MQTT endpoint, `host:port`.
    pub mqtt: String,
    pub admin_email: String,
    pub admin_password: String,
    /// Stop after this long; `None`: run until SIGINT or SIGTERM.
    pub duration: Option<Duration>,
}

/// Runs the fleet until SIGINT, SIGTERM or the end of `duration`, then disconnects every unit.
pub async fn run(options: SimulateOptions) -> anyhow::Result<()> {
    if !(1..=10_000).contains(&options.units) {
        bail!("--units must be between 1 and 10000, not {}", options.units);
    }
    if !(options.rate_hz.is_finite() && (0.1..=50.0).contains(&options.rate_hz)) {
        bail!("--rate must be between 0.1 and 50 fixes per second, not {}", options.rate_hz);
    }
    let (mqtt_host, mqtt_port) = split_host_port(&options.mqtt)?;
    let api = HubApi::login(&options.hub_url, &options.tenant, &options.admin_email, &options.admin_password).await?;
    let fleet = register_fleet(&api, &options.tenant, options.units).await?;
    info!(units = fleet.len(), rate_hz = options.rate_hz, hub = %options.hub_url, mqtt = %options.mqtt, "simulator starting");

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut dice = Dice::new();
    let mut units = JoinSet::new();
    for registered in fleet {
        let base = Point { lat: dice.between(BASE_LAT.0, BASE_LAT.1), lon: dice.between(BASE_LON.0, BASE_LON.1) };
        let unit = SimulatedUnit::new(registered, base, Dice::new());
        let span = info_span!("unit", call_sign = %unit.registered.call_sign, unit_id = %unit.registered.unit_id);
        let connection = (mqtt_host.clone(), mqtt_port, options.rate_hz);
        units.spawn(unit.run(connection.0, connection.1, connection.2, stop_rx.clone()).instrument(span));
    }
    info!(units = units.len(), "simulated units driving; stop with Ctrl-C");

    let why = tokio::select! {
        signal = wait_for_signal() => signal,
        _ = sleep_or_forever(options.duration) => "duration elapsed",
    };
    info!(reason = why, "simulator stopping: disconnecting units");
    let _ = stop_tx.send(true);
    let all_stopped = async { while units.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), all_stopped).await.is_err() {
        warn!("some units did not disconnect within 10 s");
    }
    info!("simulator stopped");
    Ok(())
}

async fn sleep_or_forever(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

fn split_host_port(address: &str) -> anyhow::Result<(String, u16)> {
    let address = address.trim().trim_start_matches("mqtt://");
    let (host, port) = address.rsplit_once(':').with_context(|| format!("--mqtt {address:?} must be host:port"))?;
    let port = port.parse().with_context(|| format!("--mqtt {address:?}: {port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("--mqtt {address:?} must name a host");
    }
    Ok((host.to_owned(), port))
}

// ---------------------------------------------------------------------------------------------
// The hub's HTTP API, as the simulator's operator uses it

struct HubApi {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl HubApi {
    async fn login(base: &str, tenant: &str, email: &str, password: &str) -> anyhow::Result<HubApi> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().context("cannot build the HTTP client")?;
        let base = base.trim_end_matches('/').to_owned();
        let reply = http
            .post(format!("{base}/api/auth/login"))
            .json(&json!({"tenant": tenant, "email": email, "password": password}))
            .send()
            .await
            .with_context(|| format!("cannot reach the hub at {base} (is it running? set --hub)"))?;
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("login as {email} in tenant {tenant} failed ({status}): {body}; check --admin-email and MEDHUB_SIM_ADMIN_PASSWORD");
        }
        let token = body["access_token"].as_str().context("the login answer has no access_token")?.to_owned();
        Ok(HubApi { http, base, token })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply = request.send().await.with_context(|| format!("{method} {path} failed"))?;
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {body}");
        }
        Ok(body)
    }
}

/// A unit the simulator drives, with its device's credentials.
#[derive(Debug, Clone)]
struct RegisteredUnit {
    unit_id: Uuid,
    call_sign: String,
    /// The unit's status when the simulator started (to bring a reused unit back to available).
    status: String,
    username: String,
    password: String,
    tenant: String,
}

impl RegisteredUnit {
    fn topic(&self, leaf: &str) -> String {
        format!("medhub/{}/ambulance/{}/{leaf}", self.tenant, self.unit_id)
    }
}

/// Registers units SIM-001… (reusing those that exist) and a fresh device for each.
async fn register_fleet(api: &HubApi, tenant: &str, count: usize) -> anyhow::Result<Vec<RegisteredUnit>> {
    let existing = api.call(reqwest::Method::GET, "/api/ambulances", None).await?;
    let existing = existing["ambulances"].as_array().cloned().unwrap_or_default();
    let mut fleet = Vec::with_capacity(count);
    for n in 1..=count {
        let call_sign = format!("SIM-{n:03}");
        let unit = match existing.iter().find(|unit| unit["call_sign"] == call_sign.as_str()) {
            Some(unit) => unit.clone(),
            None => api.call(reqwest::Method::POST, "/api/ambulances", Some(json!({"call_sign": call_sign}))).await?,
        };
        let unit_id: Uuid = unit["id"].as_str().and_then(|id| id.parse().ok()).with_context(|| format!("no id for unit {call_sign}: {unit}"))?;
        let device = api
            .call(reqwest::Method::POST, "/api/devices", Some(json!({"unit_id": unit_id, "kind": "ambulance", "name": format!("simulator {call_sign}")})))
            .await?;
        let credential = |field: &str| device[field].as_str().map(str::to_owned).with_context(|| format!("the device answer has no {field}"));
        fleet.push(RegisteredUnit {
            unit_id,
            status: unit["status"].as_str().unwrap_or("available").to_owned(),
            username: credential("username")?,
            password: credential("password")?,
            call_sign,
            tenant: tenant.to_owned(),
        });
    }
    Ok(fleet)
}

// ---------------------------------------------------------------------------------------------
// Geometry on the city's scale (a few kilometres: a flat-earth step is accurate enough)

#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    lat: f64,
    lon: f64,
}

const METRES_PER_DEGREE: f64 = 111_320.0;

impl Point {
    /// East and north offsets of `to` from `self`, in metres.
    fn offset_to(self, to: Point) -> (f64, f64) {
        let east = (to.lon - self.lon) * METRES_PER_DEGREE * self.lat.to_radians().cos();
        let north = (to.lat - self.lat) * METRES_PER_DEGREE;
        (east, north)
    }

    fn distance_m(self, to: Point) -> f64 {
        let (east, north) = self.offset_to(to);
        east.hypot(north)
    }

    /// Compass bearing towards `to`, 0 (north) to 360.
    fn bearing_deg(self, to: Point) -> f64 {
        let (east, north) = self.offset_to(to);
        east.atan2(north).to_degrees().rem_euclid(360.0)
    }

    /// `metres` further towards `to`, stopping there; whether it got there.
    fn step_toward(self, to: Point, metres: f64) -> (Point, bool) {
        let distance = self.distance_m(to);
        if distance <= metres || distance < 0.01 {
            return (to, true);
        }
        let fraction = metres / distance;
        (Point { lat: self.lat + (to.lat - self.lat) * fraction, lon: self.lon + (to.lon - self.lon) * fraction }, false)
    }

    fn moved_by(self, east_m: f64, north_m: f64) -> Point {
        let lat = (self.lat + north_m / METRES_PER_DEGREE).clamp(AREA_LAT.0, AREA_LAT.1);
        let lon = (self.lon + east_m / (METRES_PER_DEGREE * self.lat.to_radians().cos())).clamp(AREA_LON.0, AREA_LON.1);
        Point { lat, lon }
    }
}

/// A small pseudo-random generator (xorshift64*) seeded from the OS: enough for wandering and
/// vital signs, and no extra dependency.
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        Dice((Uuid::new_v4().as_u128() as u64) | 1)
    }

    fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }
}

// ---------------------------------------------------------------------------------------------
// A patient on board

#[derive(Debug, Clone)]
struct Patient {
    respiration_rate: f64,
    spo2: f64,
    systolic_bp: f64,
    pulse: f64,
    temperature: f64,
    on_oxygen: bool,
    /// Getting worse on the way (so NEWS2 rises and pre-arrival alerts fire).
    deteriorating: bool,
}

impl Patient {
    fn random(dice: &mut Dice) -> Patient {
        Patient {
            respiration_rate: dice.between(13.0, 22.0),
            spo2: dice.between(93.0, 99.0),
            systolic_bp: dice.between(105.0, 145.0),
            pulse: dice.between(65.0, 105.0),
            temperature: dice.between(36.2, 38.0),
            on_oxygen: dice.chance(0.2),
            deteriorating: dice.chance(0.35),
        }
    }

    /// The next reading: noise, plus a drift for the worse if deteriorating.
    fn next_reading(&mut self, dice: &mut Dice) -> Value {
        let drift = if self.deteriorating { 1.0 } else { 0.0 };
        self.respiration_rate = (self.respiration_rate + dice.between(-1.0, 1.0) + drift).clamp(8.0, 36.0);
        self.spo2 = (self.spo2 + dice.between(-0.6, 0.6) - drift * 0.8).clamp(82.0, 100.0);
        self.systolic_bp = (self.systolic_bp + dice.between(-3.0, 3.0) - drift * 4.0).clamp(75.0, 190.0);
        self.pulse = (self.pulse + dice.between(-3.0, 3.0) + drift * 4.0).clamp(45.0, 150.0);
        self.temperature = (self.temperature + dice.between(-0.05, 0.05) + drift * 0.05).clamp(35.0, 40.5);
        if self.spo2 < 90.0 {
            self.on_oxygen = true;
        }
        let consciousness = if self.spo2 < 86.0 || self.systolic_bp < 85.0 { "confusion" } else { "alert" };
        json!({
            "respiration_rate": self.respiration_rate.round(), "spo2": self.spo2.round(), "on_oxygen": self.on_oxygen,
            "systolic_bp": self.systolic_bp.round(), "pulse": self.pulse.round(), "consciousness": consciousness,
            "temperature": (self.temperature * 10.0).round() / 10.0, "measured_at": timestamp(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// One simulated unit

#[derive(Debug, Clone)]
struct Mission {
    incident_id: String,
    scene: Point,
    destination: Option<Point>,
    patient: Patient,
}

#[derive(Debug, Clone)]
enum Phase {
    Idle { target: Point },
    ToScene(Mission),
    OnScene { mission: Mission, leaves_at: Instant },
    Transporting { mission: Mission, next_vitals: Instant },
    Handover { incident_id: String, free_at: Instant },
}

struct SimulatedUnit {
    registered: RegisteredUnit,
    base: Point,
    position: Point,
    heading: f64,
    phase: Phase,
    dice: Dice,
}

fn timestamp() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A dispatch command as the hub sends it: the scene, and the destination if there is one.
fn parse_dispatch(command: &Value) -> Option<(String, Point, Option<Point>)> {
    let incident_id = command["incident_id"].as_str()?.to_owned();
    let scene = Point { lat: command["lat"].as_f64()?, lon: command["lon"].as_f64()? };
    let destination = &command["destination"];
    let destination = destination["lat"].as_f64().zip(destination["lon"].as_f64()).map(|(lat, lon)| Point { lat, lon });
    Some((incident_id, scene, destination))
}

impl SimulatedUnit {
    fn new(registered: RegisteredUnit, base: Point, mut dice: Dice) -> SimulatedUnit {
        let position = base.moved_by(dice.between(-300.0, 300.0), dice.between(-300.0, 300.0));
        let target = base.moved_by(dice.between(-WANDER_RADIUS_M, WANDER_RADIUS_M), dice.between(-WANDER_RADIUS_M, WANDER_RADIUS_M));
        SimulatedUnit { registered, base, position, heading: 0.0, phase: Phase::Idle { target }, dice }
    }

    /// Connects, then drives until told to stop.
    async fn run(mut self, host: String, port: u16, rate_hz: f64, mut stop: watch::Receiver<bool>) {
        let client_id = format!("sim-{}-{}", self.registered.call_sign.to_lowercase(), &Uuid::new_v4().simple().to_string()[..8]);
        let mut options = MqttOptions::new(client_id, host, port);
        options.set_credentials(self.registered.username.clone(), self.registered.password.clone());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, eventloop) = AsyncClient::new(options, 256);
        let (commands_tx, mut commands) = mpsc::channel(16);
        let connection = tokio::spawn(
            listen(eventloop, client.clone(), self.registered.topic("cmd"), commands_tx, stop.clone()).in_current_span(),
        );

        self.bring_back_to_available(&client).await;
        let period = Duration::from_secs_f64(1.0 / rate_hz);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.tick(&client, period.as_secs_f64()).await,
                Some(command) = commands.recv() => self.obey(&client, command).await,
                _ = stop.changed() => break,
            }
        }
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(3), connection).await;
    }

    /// A unit reused from an earlier run may have been left mid-mission: end it the way the
    /// unit's status machine allows.
    async fn bring_back_to_available(&mut self, client: &AsyncClient) {
        match self.registered.status.as_str() {
            "available" => {}
            "transporting" => {
                self.report(client, "at_hospital", None).await;
                self.report(client, "available", None).await;
            }
            _ => self.report(client, "available", None).await,
        }
    }

    async fn report(&self, client: &AsyncClient, status: &str, incident_id: Option<&str>) {
        let body = json!({"status": status, "incident_id": incident_id, "reported_at": timestamp()}).to_string();
        if let Err(e) = client.publish(self.registered.topic("status"), QoS::AtLeastOnce, false, body).await {
            warn!(status, error = %e, "cannot send a status report");
        } else {
            info!(status, incident_id, "status reported");
        }
    }

    /// Telemetry may be dropped when the link is down; the next fix replaces it anyway.
    fn send_telemetry(&self, client: &AsyncClient, leaf: &str, body: Value) {
        if let Err(e) = client.try_publish(self.registered.topic(leaf), QoS::AtMostOnce, false, body.to_string()) {
            debug!(leaf, error = %e, "telemetry dropped");
        }
    }

    async fn obey(&mut self, client: &AsyncClient, payload: Vec<u8>) {
        let Ok(command) = serde_json::from_slice::<Value>(&payload) else {
            warn!("a command that is not JSON; ignored");
            return;
        };
        match command["type"].as_str() {
            Some("dispatch") => match parse_dispatch(&command) {
                Some((incident_id, scene, destination)) => {
                    info!(%incident_id, scene_lat = scene.lat, scene_lon = scene.lon, "dispatched");
                    self.report(client, "ack", Some(&incident_id)).await;
                    let patient = Patient::random(&mut self.dice);
                    self.phase = Phase::ToScene(Mission { incident_id, scene, destination, patient });
                }
                None => warn!(%command, "a dispatch command without incident_id, lat and lon; ignored"),
            },
            Some("stand_down") => {
                // The hub frees the unit itself when it cancels the incident.
                info!(incident_id = command["incident_id"].as_str(), "stood down");
                self.phase = Phase::Idle { target: self.wander_target() };
            }
            _ => debug!(%command, "command ignored"),
        }
    }

    fn wander_target(&mut self) -> Point {
        self.base.moved_by(self.dice.between(-WANDER_RADIUS_M, WANDER_RADIUS_M), self.dice.between(-WANDER_RADIUS_M, WANDER_RADIUS_M))
    }

    /// One step of the simulation: move, report what changed, send a fix (and vitals).
    async fn tick(&mut self, client: &AsyncClient, seconds: f64) {
        let now = Instant::now();
        let mut speed = 0.0;
        let phase = self.phase.clone();
        match phase {
            Phase::Idle { target } => {
                speed = IDLE_SPEED_MPS;
                if self.drive(target, speed * seconds) {
                    self.phase = Phase::Idle { target: self.wander_target() };
                }
            }
            Phase::ToScene(mission) => {
                speed = MISSION_SPEED_MPS;
                if self.drive(mission.scene, speed * seconds) {
                    self.report(client, "on_scene", Some(&mission.incident_id)).await;
                    self.phase = Phase::OnScene { mission, leaves_at: now + ON_SCENE };
                }
            }
            Phase::OnScene { mission, leaves_at } => {
                if now >= leaves_at {
                    if mission.destination.is_some() {
                        self.report(client, "transporting", Some(&mission.incident_id)).await;
                        self.phase = Phase::Transporting { mission, next_vitals: now };
                    } else {
                        // Nowhere to take the patient: treated on scene.
                        self.report(client, "available", Some(&mission.incident_id)).await;
                        self.phase = Phase::Idle { target: self.wander_target() };
                    }
                }
            }
            Phase::Transporting { mut mission, mut next_vitals } => {
                speed = MISSION_SPEED_MPS;
                if now >= next_vitals {
                    let reading = mission.patient.next_reading(&mut self.dice);
                    self.send_telemetry(client, "vitals", reading);
                    next_vitals = now + VITALS_EVERY;
                }
                let destination = mission.destination.unwrap_or(mission.scene);
                if self.drive(destination, speed * seconds) {
                    // The hub's geofence turns the arrival into `at_hospital`.
                    info!(incident_id = %mission.incident_id, "arrived at the destination; handing over");
                    self.phase = Phase::Handover { incident_id: mission.incident_id, free_at: now + HANDOVER };
                } else {
                    self.phase = Phase::Transporting { mission, next_vitals };
                }
            }
            Phase::Handover { incident_id, free_at } => {
                if now >= free_at {
                    self.report(client, "available", Some(&incident_id)).await;
                    self.phase = Phase::Idle { target: self.wander_target() };
                }
            }
        }
        let fix = json!({
            "lat": self.position.lat, "lon": self.position.lon, "speed": speed, "heading": (self.heading * 10.0).round() / 10.0,
            "accuracy": 5, "fix_time": timestamp(),
        });
        self.send_telemetry(client, "gps", fix);
    }

    /// Moves up to `metres` towards `to`; whether the unit got there.
    fn drive(&mut self, to: Point, metres: f64) -> bool {
        if self.position.distance_m(to) > 0.01 {
            self.heading = self.position.bearing_deg(to);
        }
        let (position, arrived) = self.position.step_toward(to, metres);
        self.position = position;
        arrived
    }
}

/// Polls the unit's MQTT connection: (re)subscribes to its command topic on every CONNACK and
/// hands commands to the unit. rumqttc reconnects on the next poll after an error.
async fn listen(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    command_topic: String,
    commands: mpsc::Sender<Vec<u8>>,
    stop: watch::Receiver<bool>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                info!("connected");
                if let Err(e) = client.try_subscribe(command_topic.clone(), QoS::AtLeastOnce) {
                    warn!(error = %e, "cannot subscribe to the command topic");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == command_topic => {
                if commands.try_send(publish.payload.to_vec()).is_err() {
                    warn!("commands arrive faster than the unit handles them; one dropped");
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                if *stop.borrow() {
                    return;
                }
                warn!(error = %e, "MQTT connection lost; reconnecting in 2 s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_towards_a_point_moves_the_asked_distance_and_stops_there() {
        let from = Point { lat: -1.30, lon: 36.80 };
        let to = Point { lat: -1.29, lon: 36.81 };
        let total = from.distance_m(to);
        let (halfway, arrived) = from.step_toward(to, total / 2.0);
        assert!(!arrived);
        assert!((halfway.distance_m(to) - total / 2.0).abs() < 1.0);
        assert_eq!(from.step_toward(to, total + 1.0), (to, true));
        let bearing = from.bearing_deg(to);
        assert!((40.0..50.0).contains(&bearing), "{bearing}");
    }

    #[test]
    fn units_stay_inside_the_demo_city() {
        let corner = Point { lat: AREA_LAT.0, lon: AREA_LON.0 };
        let moved = corner.moved_by(-5_000.0, -5_000.0);
        assert_eq!(moved, corner);
    }

    #[test]
    fn vital_signs_stay_plausible_however_long_the_patient_deteriorates() {
        let mut dice = Dice::new();
        let mut patient = Patient::random(&mut dice);
        patient.deteriorating = true;
        for _ in 0..500 {
            let reading = patient.next_reading(&mut dice);
            assert!((82.0..=100.0).contains(&reading["spo2"].as_f64().unwrap()), "{reading}");
            assert!((45.0..=150.0).contains(&reading["pulse"].as_f64().unwrap()), "{reading}");
        }
    }

    #[test]
    fn a_dispatch_command_names_scene_and_destination() {
        let command = json!({"type": "dispatch", "incident_id": "i-1", "lat": -1.3, "lon": 36.8, "destination": {"id": "f", "name": "x", "lat": -1.28, "lon": 36.83}});
        let (incident, scene, destination) = parse_dispatch(&command).unwrap();
        assert_eq!((incident.as_str(), scene), ("i-1", Point { lat: -1.3, lon: 36.8 }));
        assert_eq!(destination, Some(Point { lat: -1.28, lon: 36.83 }));
        assert_eq!(parse_dispatch(&json!({"type": "dispatch", "incident_id": "i", "lat": 1, "lon": 2, "destination": null})).unwrap().2, None);
        assert_eq!(split_host_port("127.0.0.1:1883").unwrap(), ("127.0.0.1".to_owned(), 1883));
    }
}
