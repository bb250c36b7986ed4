//! A newcomer's first minute: `hub demo` with nothing configured starts its own PostgreSQL, seeds
//! the demo tenant, serves the console on localhost and says where to open it and how to log in.
//! Stopped with SIGTERM it stops its database too, and the next start finds everything again.

mod common;

use std::time::Duration;

use common::{spawn_hub_with, Api, HubOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_demo_runs_on_its_embedded_database_and_serves_the_console() {
    let dir = tempfile::Builder::new().prefix("medhub-demo-").tempdir().unwrap();
    let options = || HubOptions { command: "demo", args: Vec::new(), database_url: None, data_dir: Some(dir.path().to_owned()) };

    let mut hub = spawn_hub_with(options()).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the banner follows the listening line
    let logs = hub.logs();
    assert!(logs.contains(&format!("open {}/", hub.url)), "{logs}");
    assert!(logs.contains("nurse@demo.medhub") && logs.contains("medhub-demo-2026"), "{logs}");
    assert!(hub.url.starts_with("http://127.0.0.1:"));

    let page = reqwest::get(format!("{}/", hub.url)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("/console/app.js"));
    let script = reqwest::get(format!("{}/console/app.js", hub.url)).await.unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));

    let mut nurse = Api::new(&hub.url);
    nurse.login("demo", "nurse@demo.medhub", "medhub-demo-2026").await.unwrap();
    let board = nurse.get("/api/beds").await.unwrap().ok();
    assert_eq!(board["facilities"].as_array().unwrap().len(), 3);
    let ready = nurse.get("/readyz").await.unwrap().ok();
    assert_eq!(ready["status"], "ready");

    let pid_file = dir.path().join("postgres/postmaster.pid");
    assert!(pid_file.exists(), "the embedded PostgreSQL runs in the data dir");
    assert!(hub.terminate().await.success());
    assert!(!pid_file.exists(), "the embedded PostgreSQL stopped with the hub");

    // Started again: the same demo, not a second one.
    let mut again = spawn_hub_with(options()).await;
    let mut nurse = Api::new(&again.url);
    nurse.login("demo", "nurse@demo.medhub", "medhub-demo-2026").await.unwrap();
    assert_eq!(nurse.get("/api/beds").await.unwrap().ok()["facilities"], board["facilities"]);
    assert!(again.terminate().await.success());
}
