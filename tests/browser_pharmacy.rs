//! Two pharmacists at one counter in a real browser: headless Chromium, driven by Playwright
//! (`tests/browser/stock_dispense.mjs`), signs in twice as the demo pharmacist on a running
//! `hub demo`; one page dispenses a waiting prescription from the dispensing queue while the other
//! watches the stock board, whose batch rows must drop by exactly what the dispense took, without
//! a reload. The stock page then uploads a small CSV file (three good rows, one bad) and must name
//! the rejected line and show the new batches live.
//!
//! Needs Node.js, Chromium and `tests/browser/node_modules`; `scripts/test` installs them
//! (see `common::run_browser_story`).

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispense_moves_the_stock_board_live_and_an_upload_names_its_rejected_line_in_chromium() {
    common::run_browser_story("stock_dispense.mjs").await;
}
