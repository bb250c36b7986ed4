//! The medhub server as a library: configuration, the embedded database, authentication, the HTTP
//! API, the web console and the wiring that starts and stops a hub. `main.rs` is only the CLI.

pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod console;
pub mod consult_relay;
pub mod consult_signaling;
pub mod device_sink;
pub mod embedded_pg;
pub mod seed;
pub mod server;
pub mod simulate;
pub mod telemetry;
