//! The `thingd` server: configuration, wiring and shutdown. The only crate that sees every
//! other one; it decides which store, which listeners and which authorizer run.
//!
//! Owns: the typed configuration (`Config`, from a TOML file and flags), starting a server
//! (`Server::start`) — data directory, CA, store, broker, listeners, the `/metrics` endpoint,
//! the certificate-status watcher that closes revoked devices' connections — and stopping it.
//! The command-line interface lives in `main.rs` and `cli`.
//!
//! # Layout
//! - `config`: `Config` and its defaults.
//! - `server`: `Server::start`, `RunningServer`, shutdown.
//! - `authorize`: the authorizer that admits only ACTIVE certificates.
//! - `lifecycle`: AWS lifecycle events published from the broker's connection events.
//! - `metrics_http`: the Prometheus recorder and the `/metrics` route.
//! - `provision`: `thingd device provision`, a device's thing, certificate, policy and files.
//! - `simulate`: `thingd device simulate`, simulated sensor boards on the device SDK.
//! - `cli`: the `thingd` command line (serve, cert, device ...).

pub mod authorize;
pub mod cli;
pub mod config;
pub mod lifecycle;
pub mod metrics_http;
pub mod provision;
pub mod server;
pub mod simulate;

pub use config::Config;
pub use server::{RunningServer, Server};
