//! The dispatcher's live emergency map in a real browser: headless Chromium, driven by Playwright
//! (`tests/browser/map.mjs`), watches `#/map` on a `hub demo` while a registered device publishes
//! GPS fixes over MQTT to the hub's own endpoint; the unit's marker must follow them without a
//! reload.
//!
//! Needs Node.js, Chromium and `tests/browser/node_modules` (playwright-core, mqtt); `scripts/test`
//! installs them. Like `common::run_browser_story`, but the hub also listens for MQTT and the
//! script gets its address.

mod common;

use common::{require_browser, run_browser_story_on, spawn_hub_with, HubOptions, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gps_fix_over_mqtt_moves_the_unit_on_the_map_in_chromium() {
    require_browser(&["mqtt"]);
    let db = TestDb::start().await;
    let mut hub = spawn_hub_with(HubOptions { command: "demo", ..HubOptions::serve(&db) }.arg("--mqtt-listen", "127.0.0.1:0")).await;
    let mqtt = hub.mqtt_addr().await.to_string();
    run_browser_story_on(&hub, "map.mjs", &[("MEDHUB_MQTT", mqtt.as_str())]).await;
    assert!(hub.terminate().await.success());
}
