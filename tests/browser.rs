//! The web console in a real browser: headless Chromium, driven by Playwright
//! (`tests/browser/*.mjs`), logs in to a running `hub demo`, shows the live bed board, and updates
//! it without a reload when a bed changes through the API.
//!
//! Needs Node.js, Chromium and `tests/browser/node_modules`; `scripts/test` installs them
//! (see `common::run_browser_story`).

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bed_board_updates_live_in_chromium() {
    common::run_browser_story("bed_board.mjs").await;
}
