//! The dispatcher's live emergency map in a real browser: headless Chromium, driven by Playwright
//! (`tests/browser/map.mjs`), watches `#/map` on a `hub demo` while a registered device publishes
//! GPS fixes over MQTT to the hub's own endpoint; the unit's marker must follow them without a
//! reload.
//!
//! Needs Node.js, Chromium and `tests/browser/node_modules` (playwright-core, mqtt); `scripts/test`
//! installs them. Like `common::run_browser_story`, but the script also gets the MQTT address.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{spawn_hub_with, Hub, HubOptions, TestDb};

fn chromium() -> String {
    std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// The address the hub's MQTT endpoint bound, from its log line `mqtt listening addr=...`.
async fn mqtt_addr(hub: &Hub) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = hub.logs();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gps_fix_over_mqtt_moves_the_unit_on_the_map_in_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let missing: Vec<String> = [
        (Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()), "Node.js (apt-get install nodejs)".to_owned()),
        (Path::new(&chromium()).exists(), format!("Chromium at {} (apt-get install chromium)", chromium())),
        (dir.join("node_modules/playwright-core").exists(), "playwright-core (npm ci --prefix tests/browser)".to_owned()),
        (dir.join("node_modules/mqtt").exists(), "the mqtt package (npm ci --prefix tests/browser)".to_owned()),
    ]
    .into_iter()
    .filter(|(present, _)| !present)
    .map(|(_, what)| what)
    .collect();
    assert!(missing.is_empty(), "the browser test needs {}; `bash scripts/test` installs them", missing.join(", "));

    let db = TestDb::start().await;
    let mut hub = spawn_hub_with(HubOptions { command: "demo", ..HubOptions::serve(&db) }.arg("--mqtt-listen", "127.0.0.1:0")).await;
    let mqtt = mqtt_addr(&hub).await;
    let (url, script) = (hub.url.clone(), dir.join("map.mjs"));
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .env("MEDHUB_URL", url)
            .env("MEDHUB_MQTT", mqtt.to_string())
            .env("CHROMIUM_PATH", chromium())
            .output()
    })
    .await
    .expect("node task")
    .expect("run node");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the browser story map.mjs failed:\n{printed}\nhub log:\n{}", hub.logs());
    println!("{printed}");
    assert!(hub.terminate().await.success());
}
