//! The MQTT broker core: sessions, subscriptions, QoS, retained messages, wills, keep-alive
//! and flow control, for MQTT 3.1.1 and 5.0 clients on any byte stream.
//!
//! Owns: driving one connection from CONNECT to close (`Broker::serve_connection`), the session
//! table and takeover by client id, the subscription index, delivery across protocol versions,
//! persistence of sessions/queued messages/retained messages through `thingd_store`, the
//! authorization hooks (`Authorizer`) called on connect, publish, subscribe and delivery, and
//! metrics. Does not own: TLS, listeners, certificates, IoT policies or any AWS feature by name;
//! those plug in through `ConnectionInfo` and `Authorizer`.
//!
//! PLACEHOLDER SIGNATURES: the implementation is being written; the API below is the contract.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// Broker settings. `Default` gives AWS IoT Core's limits where AWS has one.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Maximum PUBLISH payload, bytes (AWS: 128 KiB).
    pub max_payload: usize,
    /// Maximum packet size the server accepts, bytes (advertised in v5 CONNACK).
    pub max_packet_size: usize,
    /// Maximum client id length, bytes (AWS: 128).
    pub max_client_id_len: usize,
    /// Topic limits (AWS: 256 bytes, 8 levels).
    pub topic_max_len: usize,
    /// Maximum levels in a topic.
    pub topic_max_levels: usize,
    /// Maximum filters in one SUBSCRIBE (AWS: 8).
    pub max_filters_per_subscribe: usize,
    /// Maximum subscriptions per session (AWS: 50).
    pub max_subscriptions: usize,
    /// Keep-alive bounds, seconds (AWS: 30..=1200, 0 means 1200).
    pub keep_alive_min: u16,
    /// Upper bound and the value used for 0.
    pub keep_alive_max: u16,
    /// Inbound in-flight QoS 1/2 limit (v5 Receive Maximum sent in CONNACK; AWS: 100).
    pub receive_maximum: u16,
    /// Outbound in-flight limit per connection when the client gives none (AWS: 100).
    pub max_inflight_out: u16,
    /// Topic Alias Maximum advertised in CONNACK (AWS: 8).
    pub topic_alias_maximum: u16,
    /// Maximum QoS granted (0..=2).
    pub maximum_qos: u8,
    /// Session Expiry Interval cap, seconds (AWS default account limit: 3600).
    pub max_session_expiry: u32,
    /// Messages queued per offline session before the oldest are dropped.
    pub max_queued_messages: usize,
    /// Bound of each connection's outbound queue; QoS 0 is dropped when full.
    pub outbound_queue: usize,
    /// Time allowed between accept and a complete CONNECT.
    pub connect_timeout: Duration,
    /// Message Expiry Interval cap, seconds (AWS: 604,800).
    pub max_message_expiry: u32,
}

/// What the listener knows about a connection before MQTT starts.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The peer address.
    pub remote_addr: SocketAddr,
    /// The authenticated principal (the client certificate id), if any.
    pub principal: Option<String>,
    /// The listener's name, for logs and metrics ("mqtts", "mqtt", "wss", "internal").
    pub listener: &'static str,
}

/// Authorization decisions for one connection, made once at CONNECT. The broker calls these
/// on every operation; implementations should cache.
pub trait ConnectionPolicy: Send + Sync + 'static {
    /// May this connection publish to `topic` (with `retain`)?
    fn can_publish(&self, topic: &str, retain: bool) -> bool;
    /// May it subscribe with `filter` (the filter as sent, `$share/...` included)?
    fn can_subscribe(&self, filter: &str) -> bool;
    /// May a message on `topic` be delivered to it?
    fn can_receive(&self, topic: &str) -> bool;
}

/// Decides who may connect, and builds the per-connection policy.
pub trait Authorizer: Send + Sync + 'static {
    /// Called after CONNECT is decoded. `Err` carries the reason code for a v5 CONNACK
    /// (a 3.1.1 client gets the connection closed with no CONNACK when it is NotAuthorized).
    fn connect(
        &self,
        info: &ConnectionInfo,
        client_id: &str,
    ) -> Result<Arc<dyn ConnectionPolicy>, thingd_mqtt::ReasonCode>;
}

/// An `Authorizer` that allows everything (development and tests).
pub struct AllowAll;

/// The broker; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    _p: (),
}

impl Broker {
    /// A broker over `store`, restoring persistent sessions and retained messages from it.
    pub fn new(
        config: BrokerConfig,
        store: thingd_store::Store,
        authorizer: Arc<dyn Authorizer>,
    ) -> Result<Broker, thingd_store::StoreError> {
        let _ = (config, store, authorizer);
        unimplemented!()
    }

    /// Runs one client connection until it closes. Never panics on bad input.
    pub async fn serve_connection<S>(&self, stream: S, info: ConnectionInfo)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _ = (stream, info);
        unimplemented!()
    }

    /// Closes every live connection whose principal is `principal` (v5: DISCONNECT 0x98
    /// Administrative action). Returns how many were closed.
    pub fn disconnect_principal(&self, principal: &str) -> usize {
        let _ = principal;
        unimplemented!()
    }

    /// Sends DISCONNECT 0x8B to every client, closes them, and flushes the store.
    pub async fn shutdown(&self) {
        unimplemented!()
    }
}
