//! Configuration: one TOML file (optional) plus command-line flags, into one typed struct.
//! Unknown keys are errors, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thingd_broker::BrokerConfig;

/// Everything `thingd serve` needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the CA, the server certificate and the database live.
    pub data_dir: PathBuf,
    /// Extra host names or IP addresses the server certificate must cover (the names devices
    /// use as their endpoint).
    pub endpoint_names: Vec<String>,
    /// AWS region named in ARNs and in the generated AWS CLI config.
    pub region: String,
    /// 12-digit account id named in ARNs.
    pub account_id: String,
    /// Listening addresses.
    pub listeners: Listeners,
    /// MQTT limits; every one defaults to AWS IoT Core's value.
    pub limits: Limits,
}

/// Listening addresses; `None` turns a listener off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    /// MQTT over TLS with client certificates (AWS: 8883).
    pub mqtts: Option<SocketAddr>,
    /// TLS port with ALPN dispatch: MQTT for `x-amzn-mqtt-ca`, HTTP and MQTT over WebSocket
    /// (`/mqtt`) otherwise (AWS: 443; 8443 here so no privileges are needed).
    pub https: Option<SocketAddr>,
    /// Plain-TCP MQTT with no authentication. Development only; off by default.
    pub mqtt_plain: Option<SocketAddr>,
    /// Prometheus metrics over plain HTTP at `/metrics`.
    pub metrics: Option<SocketAddr>,
    /// The AWS `iot` control plane over plain HTTP (SigV4-signed requests); loopback by default.
    pub api: Option<SocketAddr>,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            mqtts: Some(SocketAddr::from(([0, 0, 0, 0], 8883))),
            https: Some(SocketAddr::from(([0, 0, 0, 0], 8443))),
            mqtt_plain: None,
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9100))),
            api: Some(SocketAddr::from(([127, 0, 0, 1], 9080))),
        }
    }
}

/// MQTT limits, in the units users think in. See `BrokerConfig` for each.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Maximum PUBLISH payload, bytes.
    pub max_payload_bytes: usize,
    /// Maximum MQTT packet accepted, bytes.
    pub max_packet_bytes: usize,
    /// Maximum client id length, bytes.
    pub max_client_id_bytes: usize,
    /// Maximum topic length, bytes.
    pub max_topic_bytes: usize,
    /// Maximum topic levels.
    pub max_topic_levels: usize,
    /// Maximum filters in one SUBSCRIBE.
    pub max_filters_per_subscribe: usize,
    /// Maximum subscriptions per session.
    pub max_subscriptions: usize,
    /// Smallest keep-alive granted, seconds.
    pub keep_alive_min_secs: u16,
    /// Largest keep-alive granted (and the value for 0), seconds.
    pub keep_alive_max_secs: u16,
    /// Unacknowledged inbound QoS 1/2 publishes allowed per connection.
    pub receive_maximum: u16,
    /// Unacknowledged outbound QoS 1/2 publishes per connection.
    pub max_inflight_out: u16,
    /// Topic aliases per connection.
    pub topic_alias_maximum: u16,
    /// Highest QoS granted.
    pub maximum_qos: u8,
    /// Longest session expiry, seconds.
    pub max_session_expiry_secs: u32,
    /// Messages kept per offline session; the oldest are dropped beyond this.
    pub max_queued_messages: usize,
    /// Frames buffered per connection before QoS 0 messages to it are dropped.
    pub outbound_queue: usize,
    /// Time from accept to a complete CONNECT (and for the TLS handshake), seconds.
    pub connect_timeout_secs: u64,
    /// Longest message expiry, seconds.
    pub max_message_expiry_secs: u32,
    /// Inbound PUBLISHes per connection per second; 0 means no limit (AWS: 100).
    pub max_publishes_per_second: u32,
    /// Concurrent connections per listener.
    pub max_connections: usize,
    /// Hold connections past the open-file limit as io_uring direct descriptors (Linux 6.0
    /// or later); without it, connections past the limit wait until a descriptor is free.
    pub beyond_file_limit: bool,
}

impl Default for Limits {
    fn default() -> Self {
        let b = BrokerConfig::default();
        Limits {
            max_payload_bytes: b.max_payload,
            max_packet_bytes: b.max_packet_size,
            max_client_id_bytes: b.max_client_id_len,
            max_topic_bytes: b.topic_max_len,
            max_topic_levels: b.topic_max_levels,
            max_filters_per_subscribe: b.max_filters_per_subscribe,
            max_subscriptions: b.max_subscriptions,
            keep_alive_min_secs: b.keep_alive_min,
            keep_alive_max_secs: b.keep_alive_max,
            receive_maximum: b.receive_maximum,
            max_inflight_out: b.max_inflight_out,
            topic_alias_maximum: b.topic_alias_maximum,
            maximum_qos: b.maximum_qos,
            max_session_expiry_secs: b.max_session_expiry,
            max_queued_messages: b.max_queued_messages,
            outbound_queue: b.outbound_queue,
            connect_timeout_secs: b.connect_timeout.as_secs(),
            max_message_expiry_secs: b.max_message_expiry,
            max_publishes_per_second: b.max_publishes_per_second,
            max_connections: 200_000,
            beyond_file_limit: true,
        }
    }
}

impl Limits {
    /// The broker's view of these limits.
    pub fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            max_payload: self.max_payload_bytes,
            max_packet_size: self.max_packet_bytes,
            max_client_id_len: self.max_client_id_bytes,
            topic_max_len: self.max_topic_bytes,
            topic_max_levels: self.max_topic_levels,
            max_filters_per_subscribe: self.max_filters_per_subscribe,
            max_subscriptions: self.max_subscriptions,
            keep_alive_min: self.keep_alive_min_secs,
            keep_alive_max: self.keep_alive_max_secs,
            receive_maximum: self.receive_maximum,
            max_inflight_out: self.max_inflight_out,
            topic_alias_maximum: self.topic_alias_maximum,
            maximum_qos: self.maximum_qos,
            max_session_expiry: self.max_session_expiry_secs,
            max_queued_messages: self.max_queued_messages,
            outbound_queue: self.outbound_queue,
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            max_message_expiry: self.max_message_expiry_secs,
            max_publishes_per_second: self.max_publishes_per_second,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./thingd-data"),
            endpoint_names: Vec::new(),
            region: "us-east-1".to_owned(),
            account_id: "123456789012".to_owned(),
            listeners: Listeners::default(),
            limits: Limits::default(),
        }
    }
}

impl Config {
    /// Reads a TOML configuration file.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// A configuration for tests: everything on 127.0.0.1 with OS-chosen ports, the plain
    /// listener off, and `data_dir` as given.
    pub fn for_tests(data_dir: &Path) -> Config {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Config {
            data_dir: data_dir.to_path_buf(),
            endpoint_names: Vec::new(),
            listeners: Listeners {
                mqtts: Some(any),
                https: Some(any),
                mqtt_plain: None,
                metrics: Some(any),
                api: Some(any),
            },
            limits: Limits::default(),
            ..Config::default()
        }
    }

    /// The host name devices connect to, as DescribeEndpoint reports it: the first configured
    /// endpoint name, else `localhost`.
    pub fn data_endpoint(&self) -> String {
        self.endpoint_names
            .first()
            .cloned()
            .unwrap_or_else(|| "localhost".to_owned())
    }

    /// The ARN of a certificate of this installation (the form attachments are stored under).
    pub fn certificate_arn(&self, certificate_id: &str) -> String {
        format!(
            "arn:aws:iot:{}:{}:cert/{certificate_id}",
            self.region, self.account_id
        )
    }

    /// The database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("thingd.db")
    }

    /// The directory holding the CA and server key material.
    pub fn pki_dir(&self) -> PathBuf {
        self.data_dir.join("pki")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<Config>(
            "data_dir = \"x\"\nlisteners = { mqtts = \"127.0.0.1:1\", bogus = 1 }",
        )
        .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let config: Config = toml::from_str("[limits]\nmax_payload_bytes = 1024\n").unwrap();
        assert_eq!(config.limits.max_payload_bytes, 1024);
        assert_eq!(config.limits.max_topic_bytes, 256);
        assert_eq!(
            config.listeners.mqtts,
            Some(SocketAddr::from(([0, 0, 0, 0], 8883)))
        );
        assert_eq!(config.listeners.mqtt_plain, None);
    }
}
