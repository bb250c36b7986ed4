//! Two front desks race for one slot in a real browser: headless Chromium, driven by Playwright
//! (`tests/browser/booking_race.mjs`), signs in as a nurse and as an admin in two browser contexts
//! on a running `hub demo`, opens the booking page in both, picks the same doctor, day and free time
//! and presses "Book" in both at once. Exactly one page must say booked and the other "This slot
//! was just taken", and the time must disappear from both pages.
//!
//! Needs Node.js, Chromium and `tests/browser/node_modules`; `scripts/test` installs them
//! (see `common::run_browser_story`).

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_front_desks_race_for_one_slot_and_exactly_one_books_it_in_chromium() {
    common::run_browser_story("booking_race.mjs").await;
}
