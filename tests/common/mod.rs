//! The test harness every story in `tests/` starts from: a private PostgreSQL cluster
//! ([`TestDb`]), the real `hub` binary as a child process ([`spawn_hub`]), and the clients a user
//! would hold: an HTTP [`Api`] session and a WebSocket [`Live`] connection.
//!
//! Nothing here is mocked. The cluster is the same embedded PostgreSQL the hub runs by default
//! (initdb + pg_ctl on a loopback port, in a temporary directory, stopped on drop); the hub is the
//! binary a user runs, built once per test binary, so that SIGTERM and kill -9 are real too.

#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod redis;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use medhub_actors::Role;
use medhub_hub::embedded_pg::EmbeddedPostgres;

/// The password every user the harness creates logs in with.
pub const PASSWORD: &str = "correct horse battery staple";

// ---------------------------------------------------------------------------------------------
// The database

/// A private PostgreSQL cluster for one test, with the hub's schema applied.
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
    // Dropped after the pool: stops the server, then removes its directory.
    pg: EmbeddedPostgres,
    dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn start() -> TestDb {
        let dir = tempfile::Builder::new().prefix("medhub-test-").tempdir().expect("temp dir");
        let data_dir = dir.path().to_owned();
        let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&data_dir, None, 0))
            .await
            .expect("start task")
            .expect("the embedded PostgreSQL starts (initdb and pg_ctl must be installed)");
        let mut admin = PgConnection::connect(&pg.admin_url()).await.expect("connect to the test cluster");
        sqlx::query("CREATE DATABASE medhub").execute(&mut admin).await.expect("create database");
        admin.close().await.ok();
        let url = pg.url();
        let pool = PgPoolOptions::new().max_connections(5).connect(&url).await.expect("connect to the test database");
        medhub_actors::MIGRATOR.run(&pool).await.expect("migrations apply");
        TestDb { url, pool, pg, dir }
    }

    /// A scratch directory for this test (hub data dirs, logs).
    /// The last seq of `topic` (0 before its first event).
    pub async fn topic_seq(&self, topic: &str) -> i64 {
        sqlx::query_scalar("SELECT COALESCE((SELECT seq FROM topic_seqs WHERE topic = $1), 0)").bind(topic).fetch_one(&self.pool).await.expect("topic seq")
    }

    pub fn scratch(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).expect("scratch dir");
        path
    }

    /// Creates a tenant with one user per role; emails are `{role}@{slug}.test`.
    pub async fn tenant(&self, slug: &str) -> Tenant {
        let id = medhub_hub::seed::create_tenant(&self.pool, slug, &format!("{slug} hospitals")).await.expect("tenant");
        for role in Role::ALL {
            medhub_hub::seed::create_user(&self.pool, slug, &email(slug, role), &format!("{role} of {slug}"), role, PASSWORD)
                .await
                .expect("user");
        }
        Tenant { id, slug: slug.to_owned() }
    }
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Uuid,
    pub slug: String,
}

pub fn email(slug: &str, role: Role) -> String {
    format!("{}@{slug}.test", role.as_str())
}

impl Tenant {
    pub fn beds_topic(&self) -> String {
        format!("tenant/{}/beds", self.slug)
    }
}

// ---------------------------------------------------------------------------------------------
// The hub process

/// The `hub` binary, built (debug) once per test binary so that it is never stale.
pub fn hub_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("MEDHUB_HUB_BIN") {
            return PathBuf::from(path);
        }
        // Test and bench executables live in target/<profile>/deps; the hub is built alike
        // (benchmarks measure a release hub).
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target dir").to_owned();
        let release = profile_dir.file_name().is_some_and(|name| name == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "medhub-hub", "--bin", "hub"]).current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build for the hub binary");
        assert!(status.success(), "building the hub binary failed");
        profile_dir.join("hub")
    })
}

/// A running hub: the child process, its base URL and everything it logged.
pub struct Hub {
    child: Child,
    pub url: String,
    pub ws_url: String,
    logs: Arc<Mutex<Vec<String>>>,
}

/// Options for [`spawn_hub_with`]: extra command-line flags, and the subcommand.
pub struct HubOptions {
    pub command: &'static str,
    pub args: Vec<String>,
    /// `None`: the hub runs its own embedded PostgreSQL in `data_dir`.
    pub database_url: Option<String>,
    pub data_dir: Option<PathBuf>,
}

impl HubOptions {
    pub fn serve(db: &TestDb) -> HubOptions {
        HubOptions { command: "serve", args: Vec::new(), database_url: Some(db.url.clone()), data_dir: Some(db.scratch("hub")) }
    }

    /// One of several hub nodes on `db`: named `name` (its node id and scratch directory), its
    /// embedded MQTT endpoint on any free port (nodes on one machine cannot share 1883).
    pub fn node(db: &TestDb, name: &str) -> HubOptions {
        HubOptions { data_dir: Some(db.scratch(name)), ..HubOptions::serve(db) }.arg("--node-id", name).arg("--mqtt-listen", "127.0.0.1:0")
    }

    pub fn arg(mut self, flag: &str, value: impl ToString) -> HubOptions {
        self.args.push(flag.to_owned());
        self.args.push(value.to_string());
        self
    }
}

pub async fn spawn_hub(db: &TestDb) -> Hub {
    spawn_hub_with(HubOptions::serve(db)).await
}

pub async fn spawn_hub_with(options: HubOptions) -> Hub {
    let binary = hub_binary().to_owned();
    tokio::task::spawn_blocking(move || start_hub(&binary, options)).await.expect("spawn task").expect("the hub starts")
}

fn start_hub(binary: &Path, options: HubOptions) -> anyhow::Result<Hub> {
    let mut command = Command::new(binary);
    command
        .arg(options.command)
        .args(["--listen", "127.0.0.1:0", "--http-workers", "2", "--log", "info,actix_server=warn"])
        .args(&options.args)
        .env_remove("MEDHUB_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = &options.database_url {
        command.args(["--database-url", url]);
    }
    if let Some(dir) = &options.data_dir {
        command.arg("--data-dir").arg(dir);
    }
    let mut child = command.spawn().with_context(|| format!("cannot run {}", binary.display()))?;
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    for stream in [Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
                   Box::new(child.stderr.take().expect("stderr"))] {
        let (logs, url_tx) = (logs.clone(), url_tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if std::env::var_os("MEDHUB_TEST_ECHO").is_some() {
                    eprintln!("[hub] {line}");
                }
                if line.contains("hub listening") {
                    if let Some(url) = line.split("url=").nth(1).and_then(|rest| rest.split_whitespace().next()) {
                        let _ = url_tx.send(url.to_owned());
                    }
                }
                logs.lock().expect("log lock").push(line);
            }
        });
    }
    // Wait for the listening line, but give up at once if the hub exits (and show why).
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        match url_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(url) => break url,
            Err(_) => {
                let exited = child.try_wait().ok().flatten();
                if exited.is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    std::thread::sleep(Duration::from_millis(100)); // let the readers drain
                    let why = exited.map_or_else(|| "did not start listening within 60 s".to_owned(), |status| format!("exited ({status})"));
                    bail!("the hub {why}; it logged:\n{}", logs.lock().expect("log lock").join("\n"));
                }
            }
        }
    };
    let ws_url = format!("{}/ws", url.replacen("http://", "ws://", 1));
    Ok(Hub { child, url, ws_url, logs })
}

impl Hub {
    pub fn logs(&self) -> String {
        self.logs.lock().expect("log lock").join("\n")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then waits (up to 60 s) for the hub to exit on its own.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(60)).await
    }

    /// kill -9: no chance to flush or say goodbye.
    pub async fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10)).await;
    }

    pub fn signal(&self, signal: libc::c_int) {
        unsafe { libc::kill(self.pid(), signal) };
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for hub") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the hub did not exit within {limit:?}; it logged:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn api(&self) -> Api {
        Api::new(&self.url)
    }

    /// Logs in as the tenant's user of `role`.
    pub async fn login(&self, tenant: &Tenant, role: Role) -> Api {
        let mut api = self.api();
        api.login(&tenant.slug, &email(&tenant.slug, role), PASSWORD).await.expect("login");
        api
    }

    /// The Prometheus text of `/metrics`.
    /// Where the hub's embedded MQTT endpoint listens, from its `mqtt listening addr=...` log line.
    pub async fn mqtt_addr(&self) -> std::net::SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            let found = logs.lines().filter(|line| line.contains("mqtt listening")).find_map(|line| {
                line.split("addr=").nth(1).and_then(|rest| rest.split_whitespace().next()).and_then(|addr| addr.parse().ok())
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(Instant::now() < deadline, "the hub never logged its MQTT address:\n{logs}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url)).await.expect("metrics").text().await.expect("metrics body")
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A counter's value in Prometheus text (0 when absent); `series` is the name with its labels
/// exactly as the hub prints them, e.g. `medhub_actor_restarts_total{actor="facility"}`.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.trim().parse().expect("metric value"))
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// What an API call answered: status and JSON body (Null when empty).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// The hub node that served the request when the one asked forwarded it (`x-medhub-served-by`).
    pub served_by: Option<String>,
}

impl Reply {
    pub fn ok(self) -> Value {
        assert!((200..300).contains(&self.status), "expected success, got {} {}", self.status, self.body);
        self.body
    }

    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {}", self.body);
        self.body
    }
}

/// One user's HTTP session with the hub.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    pub token: Option<String>,
    pub refresh_token: Option<String>,
    pub user: Value,
}

impl Api {
    pub fn new(base: &str) -> Api {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("http client");
        Api { http, base: base.to_owned(), token: None, refresh_token: None, user: Value::Null }
    }

    pub async fn login(&mut self, tenant: &str, email: &str, password: &str) -> anyhow::Result<()> {
        let reply = self.post("/api/auth/login", json!({"tenant": tenant, "email": email, "password": password})).await?;
        if reply.status != 200 {
            bail!("login failed: {} {}", reply.status, reply.body);
        }
        self.token = reply.body["access_token"].as_str().map(str::to_owned);
        self.refresh_token = reply.body["refresh_token"].as_str().map(str::to_owned);
        self.user = reply.body["user"].clone();
        Ok(())
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<RawBody>) -> anyhow::Result<Reply> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        match body {
            Some(RawBody::Json(value)) => request = request.json(&value),
            Some(RawBody::Text(text)) => request = request.header("content-type", "application/json").body(text),
            None => {}
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let served_by = response.headers().get("x-medhub-served-by").and_then(|value| value.to_str().ok()).map(str::to_owned);
        let text = response.text().await?;
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).map_err(|e| anyhow!("non-JSON body {text:?}: {e}"))? };
        Ok(Reply { status, body, served_by })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        self.send(reqwest::Method::POST, path, Some(RawBody::Json(body))).await
    }

    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        self.send(reqwest::Method::PUT, path, Some(RawBody::Json(body))).await
    }

    /// Creates a facility with one general ward of `beds` beds labelled B1..Bn (as an admin).
    pub async fn create_facility(&self, name: &str, beds: usize) -> Facility {
        let labels: Vec<String> = (1..=beds).map(|n| format!("B{n}")).collect();
        let body = self
            .post(
                "/api/facilities",
                json!({"name": name, "kind": "hospital", "location": {"lat": -1.29, "lon": 36.82},
                       "timezone": "Africa/Nairobi", "wards": [{"name": "General", "kind": "general", "beds": labels}]}),
            )
            .await
            .expect("create facility")
            .expect(201);
        Facility::from_json(&body)
    }

    /// Sets a bed's status; the reply as the hub gave it.
    pub async fn set_bed(&self, facility: Uuid, bed: Uuid, status: &str) -> anyhow::Result<Reply> {
        self.put(&format!("/api/facilities/{facility}/beds/{bed}/status"), json!({"status": status})).await
    }
}

pub enum RawBody {
    Json(Value),
    Text(String),
}

/// The ids of a facility and its beds, from a facility detail body.
#[derive(Debug, Clone)]
pub struct Facility {
    pub id: Uuid,
    pub beds: Vec<Uuid>,
}

impl Facility {
    pub fn from_json(body: &Value) -> Facility {
        let id = body["id"].as_str().and_then(|id| id.parse().ok()).expect("facility id");
        let beds = body["wards"]
            .as_array()
            .expect("wards")
            .iter()
            .flat_map(|ward| ward["beds"].as_array().expect("beds").iter())
            .map(|bed| bed["id"].as_str().and_then(|id| id.parse().ok()).expect("bed id"))
            .collect();
        Facility { id, beds }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

/// One WebSocket connection to `/ws`, as a console tab holds it.
pub struct Live {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Live {
    /// Connects and authenticates; panics unless the hub answers `ready`.
    pub async fn connect(hub: &Hub, api: &Api) -> Live {
        let mut live = Live::connect_raw(hub).await;
        live.send(json!({"type": "auth", "token": api.token.as_deref().expect("logged in")})).await;
        let ready = live.next().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        live
    }

    pub async fn connect_raw(hub: &Hub) -> Live {
        let (socket, _) = tokio_tungstenite::connect_async(hub.ws_url.as_str()).await.expect("websocket connects");
        Live { socket }
    }

    pub async fn send(&mut self, message: Value) {
        self.socket.send(Message::text(message.to_string())).await.expect("websocket send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::text(text.to_owned())).await.expect("websocket send");
    }

    /// The next JSON message, waiting at most 10 s.
    pub async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(10)).await.expect("a message within 10 s")
    }

    /// The next JSON message, or `None` if none arrives in time or the server closed.
    pub async fn next_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next()).await.ok()??;
            match frame.ok()? {
                Message::Text(text) => return Some(serde_json::from_str(text.as_str()).expect("server sends JSON")),
                Message::Close(_) => return None,
                _ => continue, // pings are answered by tungstenite itself
            }
        }
    }

    /// Subscribes and returns the `subscribed` answer (or the error).
    pub async fn subscribe(&mut self, topic: &str, since: Option<i64>) -> Value {
        let mut message = json!({"type": "subscribe", "topic": topic});
        if let Some(since) = since {
            message["since"] = json!(since);
        }
        self.send(message).await;
        self.next().await
    }

    /// Collects event envelopes (not control messages) until `count` arrived; panics after 30 s.
    pub async fn events(&mut self, count: usize) -> Vec<Value> {
        let mut events = Vec::with_capacity(count);
        let deadline = Instant::now() + Duration::from_secs(30);
        while events.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(message) = self.next_within(left).await else {
                panic!("only {} of {count} events arrived: {:?}", events.len(), events.last());
            };
            if message.get("seq").is_some() && message["type"] != "subscribed" && message["type"] != "snapshot" {
                events.push(message);
            }
        }
        events
    }
}

// ---------------------------------------------------------------------------------------------
// A ready world

/// A hub on a fresh database with one tenant ("alpha") and a facility of `beds` beds.
pub struct World {
    pub db: TestDb,
    pub hub: Hub,
    pub tenant: Tenant,
    pub admin: Api,
    pub nurse: Api,
    pub facility: Facility,
}

impl World {
    pub async fn start(beds: usize) -> World {
        World::start_with(beds, |options| options).await
    }

    pub async fn start_with(beds: usize, configure: impl FnOnce(HubOptions) -> HubOptions) -> World {
        let db = TestDb::start().await;
        let tenant = db.tenant("alpha").await;
        let hub = spawn_hub_with(configure(HubOptions::serve(&db))).await;
        let admin = hub.login(&tenant, Role::Admin).await;
        let nurse = hub.login(&tenant, Role::Nurse).await;
        let facility = admin.create_facility("Alpha General", beds).await;
        World { db, hub, tenant, admin, nurse, facility }
    }
}

impl Live {
    /// Like [`Live::connect`], over a socket with a tiny receive buffer: a client on a bad link
    /// whose screen stops reading fills up quickly.
    pub async fn connect_with_small_buffer(hub: &Hub, api: &Api) -> Live {
        let address = hub.url.trim_start_matches("http://").parse().expect("hub address");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("receive buffer");
        let stream = socket.connect(address).await.expect("tcp connect");
        let (socket, _) = tokio_tungstenite::client_async(hub.ws_url.as_str(), MaybeTlsStream::Plain(stream)).await.expect("websocket handshake");
        let mut live = Live { socket };
        live.send(json!({"type": "auth", "token": api.token.as_deref().expect("logged in")})).await;
        assert_eq!(live.next().await["type"], "ready");
        live
    }
}

// ---------------------------------------------------------------------------------------------
// Schedules

impl TestDb {
    /// A user's id by email (setup only).
    pub async fn user_id(&self, email: &str) -> Uuid {
        sqlx::query_scalar("SELECT id FROM users WHERE email = $1").bind(email).fetch_one(&self.pool).await.expect("user")
    }

    /// Registers patients straight in the database (setup only; the patient API has its own
    /// stories). Returns their ids.
    pub async fn patients(&self, tenant: &Tenant, count: usize) -> Vec<Uuid> {
        let mut ids = Vec::with_capacity(count);
        for n in 0..count {
            let id = Uuid::new_v4();
            sqlx::query(
                "INSERT INTO patients (id, tenant_id, mrn, given_name, family_name, birth_date, sex)
                 VALUES ($1, $2, $3, $4, $5, DATE '1980-01-01' + $6::int, 'unknown')",
            )
            .bind(id)
            .bind(tenant.id)
            .bind(format!("T{n:06}-{}", &id.simple().to_string()[..6]))
            .bind(format!("Given{n}"))
            .bind(format!("Family{n}"))
            .bind(n as i32)
            .execute(&self.pool)
            .await
            .expect("patient");
            ids.push(id);
        }
        ids
    }

    /// Links a patient record to the tenant's patient-role user.
    pub async fn link_patient_user(&self, tenant: &Tenant, patient: Uuid) -> Uuid {
        let user = self.user_id(&email(&tenant.slug, Role::Patient)).await;
        sqlx::query("UPDATE patients SET user_id = $2 WHERE id = $1").bind(patient).bind(user).execute(&self.pool).await.expect("link");
        user
    }
}

impl Api {
    /// Registers the tenant's doctor user at `facility`, working `hours` (as the API takes them).
    pub async fn register_doctor(&self, user_id: Uuid, facility: Uuid, consult_minutes: i32, hours: Value) -> Uuid {
        let body = self
            .post(
                "/api/doctors",
                json!({"user_id": user_id, "specialties": ["general practice"], "facility_id": facility,
                       "consult_minutes": consult_minutes, "working_hours": hours}),
            )
            .await
            .expect("register doctor")
            .expect(201);
        body["id"].as_str().and_then(|id| id.parse().ok()).expect("doctor id")
    }
}

/// Working hours covering every hour of every day.
pub fn around_the_clock() -> Value {
    let days = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
    Value::Array(days.iter().map(|day| json!({"weekday": day, "start": "00:00", "end": "24:00"})).collect())
}

// ---------------------------------------------------------------------------------------------
// Pharmacy

impl TestDb {
    /// Adds a medication to the tenant's formulary (setup only).
    pub async fn medication(&self, tenant: &Tenant, name: &str, generic: &str, atc: &str, unit_price: &str) -> Uuid {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO medications (id, tenant_id, name, generic_name, atc_code, form, strength, unit, manufacturer, unit_price)
             VALUES ($1, $2, $3, $4, $5, 'tablet', '1 unit', 'tablet', 'Generic', $6::numeric)",
        )
        .bind(id)
        .bind(tenant.id)
        .bind(name)
        .bind(generic)
        .bind(atc)
        .bind(unit_price)
        .execute(&self.pool)
        .await
        .expect("medication");
        id
    }
}

impl Api {
    /// Receives a batch (as a pharmacist) expiring `days` from today; returns its id.
    pub async fn receive_batch(&self, pharmacy: Uuid, medication: Uuid, batch_number: &str, days: i64, quantity: i64) -> Uuid {
        let expiry = (chrono::Utc::now() + chrono::Duration::days(days)).date_naive();
        let body = self
            .post("/api/inventory", json!({"pharmacy_id": pharmacy, "medication_id": medication, "batch_number": batch_number,
                                          "expiry_date": expiry, "quantity": quantity}))
            .await
            .expect("receive batch")
            .expect(201);
        body["id"].as_str().and_then(|id| id.parse().ok()).expect("batch id")
    }
}

// ---------------------------------------------------------------------------------------------
// Browser stories

fn chromium() -> String {
    std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// Fails, saying what to install, unless a browser story can run: Node.js, Chromium, and
/// `playwright-core` and `node_packages` in `tests/browser/node_modules` (`bash scripts/test`
/// installs them). A browser story never passes without a browser.
pub fn require_browser(node_packages: &[&str]) {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules");
    let missing: Vec<String> = [
        (Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()), "Node.js (apt-get install nodejs)".to_owned()),
        (Path::new(&chromium()).exists(), format!("Chromium at {} (apt-get install chromium)", chromium())),
    ]
    .into_iter()
    .chain(
        ["playwright-core"]
            .iter()
            .chain(node_packages)
            .map(|package| (modules.join(package).exists(), format!("{package} (npm ci --prefix tests/browser)"))),
    )
    .filter(|(present, _)| !present)
    .map(|(_, what)| what)
    .collect();
    assert!(missing.is_empty(), "the browser test needs {}; `bash scripts/test` installs them", missing.join(", "));
}

/// Runs `tests/browser/<script>` (Playwright driving headless Chromium) against a fresh `hub demo`
/// on its own database and fails with what the script and the hub printed; see [`require_browser`]
/// for what it needs. A story that needs more (another hub, more environment) calls
/// [`require_browser`] and [`run_browser_story_on`] itself.
pub async fn run_browser_story(script: &str) {
    require_browser(&[]);
    let db = TestDb::start().await;
    let mut options = HubOptions::serve(&db);
    options.command = "demo";
    let mut hub = spawn_hub_with(options).await;
    run_browser_story_on(&hub, script, &[]).await;
    assert!(hub.terminate().await.success());
}

/// Runs `tests/browser/<script>` with Node.js against `hub` (`MEDHUB_URL`, `CHROMIUM_PATH`, and
/// `env` besides) and fails with what the script and the hub printed unless it exits 0; prints
/// what the script printed. Call [`require_browser`] first.
pub async fn run_browser_story_on(hub: &Hub, script: &str, env: &[(&str, &str)]) {
    let script_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser").join(script);
    let mut command = Command::new("node");
    command.arg(script_path).env("MEDHUB_URL", &hub.url).env("CHROMIUM_PATH", chromium());
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::task::spawn_blocking(move || command.output()).await.expect("node task").expect("run node");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the browser story {script} failed:\n{printed}\nhub log:\n{}", hub.logs());
    println!("{printed}");
}

// ---------------------------------------------------------------------------------------------
// An external MQTT broker

/// The hub's own login on an external broker, as the stories configure it.
pub const HUB_BROKER_LOGIN: medhub_device_gateway::BrokerLogin<'static> =
    medhub_device_gateway::BrokerLogin { username: "medhub-hub", password: "hub-broker-secret" };

/// Debian's mosquitto on a free loopback port, confined by the password and ACL files the hub
/// writes into `dir`; stopped on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
}

impl Mosquitto {
    pub fn start(dir: &Path, files: &medhub_device_gateway::MosquittoFiles) -> Mosquitto {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .expect("mosquitto is not installed: sudo apt-get install -y mosquitto");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut conf = format!("listener {port} 127.0.0.1\npersistence false\nlog_dest stderr\n");
        conf.push_str(&medhub_device_gateway::mosquitto_conf(files, 65536));
        if unsafe { libc::geteuid() } == 0 {
            conf.push_str("user root\n"); // it would drop to `mosquitto`, who cannot read our 0600 files
        }
        std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("MEDHUB_TEST_ECHO").is_some() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("mosquitto starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto { child, port }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `--mqtt-broker-url` for a hub logging in as [`HUB_BROKER_LOGIN`].
    pub fn hub_url(&self) -> String {
        format!("mqtt://{}:{}@127.0.0.1:{}", HUB_BROKER_LOGIN.username, HUB_BROKER_LOGIN.password, self.port)
    }

    /// Rereads the password and ACL files (SIGHUP).
    pub fn reload(&self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
