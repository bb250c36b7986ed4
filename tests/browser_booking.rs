//! Two front desks race for one slot in a real browser: headless Chromium, driven by Playwright
//! (`tests/browser/booking_race.mjs`), signs in as a nurse and as an admin in two browser contexts
//! on a running `hub demo`, opens the booking page in both, picks the same doctor, day and free time
//! and presses "Book" in both at once. Exactly one page must say booked and the other "This slot
//! was just taken", and the time must disappear from both pages.
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
async fn two_front_desks_race_for_one_slot_and_exactly_one_books_it_in_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    check_prerequisites(&dir);
    let db = TestDb::start().await;
    let mut options = HubOptions::serve(&db);
    // The demo seed registers the doctors (with hours every day) this story books with.
    options.command = "demo";
    let mut hub = spawn_hub_with(options).await;

    let url = hub.url.clone();
    let script = dir.join("booking_race.mjs");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node").arg(script).env("MEDHUB_URL", url).env("CHROMIUM_PATH", chromium()).output()
    })
    .await
    .unwrap()
    .expect("run node");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the booking race story failed:\n{printed}\nhub log:\n{}", hub.logs());
    println!("{printed}");
    assert!(hub.terminate().await.success());
}
