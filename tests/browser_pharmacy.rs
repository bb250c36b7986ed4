//! Two pharmacists at one counter in a real browser: headless Chromium, driven by Playwright
//! (`tests/browser/stock_dispense.mjs`), signs in twice as the demo pharmacist on a running
//! `hub demo`; one page dispenses a waiting prescription from the dispensing queue while the other
//! watches the stock board, whose batch rows must drop by exactly what the dispense took, without
//! a reload. The stock page then uploads a small CSV file (three good rows, one bad) and must name
//! the rejected line and show the new batches live.
//!
//! Needs Node.js, `/usr/bin/chromium` and `tests/browser/node_modules`; `scripts/test` installs
//! them. Missing, the test fails and says what to install: it never passes without a browser.

mod common;

use std::path::Path;
use std::process::Command;

use common::{spawn_hub_with, HubOptions, TestDb};

fn chromium() -> String {
    std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

fn check_prerequisites(dir: &Path) {
    let missing: Vec<String> = [
        (Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()), "Node.js (apt-get install nodejs)".to_owned()),
        (Path::new(&chromium()).exists(), format!("Chromium at {} (apt-get install chromium)", chromium())),
        (dir.join("node_modules/playwright-core").exists(), "playwright-core (npm ci --prefix tests/browser)".to_owned()),
    ]
    .into_iter()
    .filter(|(present, _)| !present)
    .map(|(_, what)| what)
    .collect();
    assert!(missing.is_empty(), "the browser test needs {}; `bash scripts/test` installs them", missing.join(", "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispense_moves_the_stock_board_live_and_an_upload_names_its_rejected_line_in_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    check_prerequisites(&dir);
    let db = TestDb::start().await;
    let mut options = HubOptions::serve(&db);
    // The demo seed stocks Central General Hospital's pharmacy and leaves two prescriptions waiting.
    options.command = "demo";
    let mut hub = spawn_hub_with(options).await;

    let url = hub.url.clone();
    let script = dir.join("stock_dispense.mjs");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node").arg(script).env("MEDHUB_URL", url).env("CHROMIUM_PATH", chromium()).output()
    })
    .await
    .unwrap()
    .expect("run node");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the pharmacy browser story failed:\n{printed}\nhub log:\n{}", hub.logs());
    println!("{printed}");
    assert!(hub.terminate().await.success());
}
