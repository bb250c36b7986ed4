//! Rebuilds the crate when a migration changes: `sqlx::migrate!` embeds the files at compile time
//! and would otherwise keep a stale copy (and the hub would refuse a database migrated by a newer one).

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
