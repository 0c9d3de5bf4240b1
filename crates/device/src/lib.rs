//! thingd-device: a device SDK for thingd and AWS IoT Core.
//!
//! Owns: connecting a device to an MQTT broker with its certificate, key and root CA over
//! mutual TLS (optionally ALPN `x-amzn-mqtt-ca` for port 443), MQTT 3.1.1 and 5 on the
//! `thingd-mqtt` codec; the connection task (keep-alive pings, reconnect with jittered
//! exponential backoff, resubscribe, persistent sessions, a bounded offline queue that drops
//! its oldest message and counts the drops, QoS 1 messages kept until PUBACKed and resent
//! after a reconnect); typed errors; and a Device Shadow client with `clientToken`
//! correlation and a delta stream.
//!
//! Does not own: anything on the server side; QoS 2 publishing (QoS 2 requests are sent as
//! QoS 1, as AWS IoT Core supports no more); WebSocket transport; plain TCP.
//!
//! # Layout
//! - `options`: [`ConnectOptions`], [`Identity`] (PEM strings or files), [`Backoff`].
//! - `client`: [`Client`], [`PublishAck`], [`Subscription`], [`Message`], the connection task.
//! - `shadow`: [`Shadow`], [`Deltas`], [`Delta`].
//! - `error`: [`Error`], [`ShadowError`].
//! - `topic`: [`filter_matches`].
//!
//! # Example
//! ```no_run
//! use thingd_device::{Client, ConnectOptions, Identity, Shadow};
//! # async fn demo() -> Result<(), thingd_device::Error> {
//! let identity = Identity::from_dir("./MyJourneyIoTDevice")?;
//! let options = ConnectOptions::new("localhost", 8883, "MyJourneyIoTDevice", identity);
//! let client = Client::connect(options).await?;
//! let shadow = Shadow::classic(&client, "MyJourneyIoTDevice").await?;
//! shadow.update_reported(serde_json::json!({"temp": 32})).await?;
//! # Ok(()) }
//! ```

mod client;
mod error;
mod options;
mod shadow;
mod topic;

pub use client::{Client, ConnectionState, Message, PublishAck, Subscription};
pub use error::{Error, ShadowError};
pub use options::{ALPN_MQTT_CA, Backoff, ConnectOptions, Identity};
pub use shadow::{Delta, Deltas, Shadow};
pub use thingd_mqtt::{ProtocolVersion, QoS, ReasonCode};
pub use topic::filter_matches;
