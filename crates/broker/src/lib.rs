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
//! # Layout
//! - `config`: `BrokerConfig` defaults and derived rules (keep-alive clamping...).
//! - `connect`: the CONNECT exchange. `connection`: the per-connection task and handlers.
//! - `session`: one session's state (subscriptions, in-flight, queue). `alias`: topic aliases.
//! - `broker`: the shared state, fan-out, session attach/detach/expiry, restore.
//! - `retained`, `will`, `persist` (blob encodings), `reserved` (topic rules), `metrics`.
//! - `internal`: `InternalClient`, an in-process client.
//!
//! # Behaviour choices
//! - QoS 0, 1 and 2 in both directions (`maximum_qos`, default 2; AWS stops at 1). Inbound
//!   QoS 2 is delivered on PUBLISH receipt; a repeated PUBLISH with an id awaiting PUBREL is
//!   acknowledged but not delivered again.
//! - MQTT 3.1.1 has no Session Expiry field: `cleanSession=0` gets `max_session_expiry`
//!   (AWS expires such sessions after the account limit, 1 h by default).
//! - Errors 3.1.1 cannot express close the connection (AWS behaviour): denied publish or
//!   subscribe, invalid topic name, oversized packet, too many filters. A 3.1.1 SUBSCRIBE
//!   with an invalid filter or over the subscription limit gets return code 0x80 for that
//!   filter instead, as 3.1.1 allows.
//! - A refused 3.1.1 CONNECT with Not authorized is closed without CONNACK (AWS); other
//!   codes become the nearest 3.1.1 return code.
//! - PUBLISH to `$` topics is allowed only under `$aws/` (see `reserved`); a retained
//!   publish to any `$` topic is treated as not authorized (AWS forbids it).
//! - Retained messages are sent on SUBSCRIBE for wildcard filters too (MQTT; AWS only does
//!   exact filters), never for `$share` subscriptions.
//! - Publishers' PUBACK/PUBREC are sent only after every message queued for a persistent
//!   session (online or offline) and every retained QoS ≥ 1 message is committed; such
//!   messages stay in the store until the receiver acknowledges them.
//! - Slow consumers: a publisher that fills a receiver's outbound queue past three-quarters
//!   stops being read until it drains to half, for at most 100 ms (`pace`); after that the
//!   receiver is left behind: a full outbound queue drops QoS 0 (`slow_consumer`) and queues
//!   QoS 1/2 in the session (bounded, oldest dropped: `queue_full`).
//! - Shared subscriptions pick the next online member round robin; with none online, a
//!   member with a persistent session queues QoS ≥ 1 messages.
//! - Overlapping subscriptions of one client get one copy with the highest QoS and all
//!   subscription identifiers.
//! - A Will's Message Expiry counts from the disconnect (AWS).
//! - Not persisted: pending delayed wills (a restart drops them), outbound topic-alias and
//!   in-flight stage (after a restart, messages in flight are resent as new PUBLISHes).

mod alias;
mod broker;
mod config;
mod connect;
mod connection;
mod events;
mod internal;
mod message;
mod metrics;
mod outbound;
mod pace;
mod persist;
mod reserved;
mod retained;
mod routes;
mod session;
mod will;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

pub use events::{BrokerEvent, DisconnectCause};
pub use internal::{ClientError, InternalClient, Message};

/// A retained message as the broker holds it (see [`Broker::retained_messages`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedMessage {
    /// The topic.
    pub topic: String,
    /// The payload (never empty: an empty retained publish deletes).
    pub payload: bytes::Bytes,
    /// The QoS it was published with.
    pub qos: thingd_mqtt::QoS,
    /// The publisher's forwarded MQTT 5 properties (user properties, content type...).
    pub properties: thingd_mqtt::Properties,
}

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
    /// Bound of each connection's outbound queue, in frames; publishers are paced to it, and
    /// QoS 0 is dropped when it is full.
    pub outbound_queue: usize,
    /// Time allowed between accept and a complete CONNECT.
    pub connect_timeout: Duration,
    /// Message Expiry Interval cap, seconds (AWS: 604,800).
    pub max_message_expiry: u32,
    /// Inbound PUBLISHes accepted per connection per second; 0 means no limit. AWS IoT Core
    /// allows 100 and discards the excess; thingd does not limit by default, because a
    /// self-hosted gateway or load test should not be throttled unless the operator asks.
    /// Excess QoS 0 is dropped, QoS 1/2 gets reason code 0x97 Quota exceeded (MQTT 5) or is
    /// acknowledged and dropped (3.1.1, which cannot say no); both are counted in
    /// `thingd_dropped_messages_total{reason="rate_limited"}`.
    pub max_publishes_per_second: u32,
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
    /// Names this policy's `can_receive` decisions when they depend on the topic alone and
    /// are the same for every policy giving the same token (for example one compiled policy
    /// set shared by many devices). A fan-out then decides once per topic and token instead
    /// of once per receiver. `None` (the default): ask every receiver.
    fn receive_token(&self) -> Option<u64> {
        None
    }
    /// A counter that moves whenever any answer of this policy may change (`can_publish`,
    /// `can_subscribe`, `can_receive`, `receive_token`), for example a registry generation
    /// shared by every connection. With one, the broker keeps each connection's receive token
    /// and last publish decision, and asks again only after the counter moved: a fan-out does
    /// not touch every receiver's policy, nor a device's every PUBLISH its own. `None` (the
    /// default): ask every time.
    fn decision_epoch(&self) -> Option<Arc<std::sync::atomic::AtomicU64>> {
        None
    }
}

/// What a CONNECT asks for, as far as authorization is concerned.
#[derive(Debug, Clone, Copy)]
pub struct ConnectRequest<'a> {
    /// The client id (assigned, if the client sent none).
    pub client_id: &'a str,
    /// The session outlives the connection (3.1.1 clean session 0; v5 Session Expiry > 0).
    pub persistent_session: bool,
    /// CONNECT carries a Will.
    pub last_will: bool,
}

/// Decides who may connect, and builds the per-connection policy.
pub trait Authorizer: Send + Sync + 'static {
    /// Called after CONNECT is decoded. `Err` carries the reason code for a v5 CONNACK
    /// (a 3.1.1 client gets the connection closed with no CONNACK when it is NotAuthorized).
    fn connect(
        &self,
        info: &ConnectionInfo,
        request: &ConnectRequest<'_>,
    ) -> Result<Arc<dyn ConnectionPolicy>, thingd_mqtt::ReasonCode>;
}

/// An `Authorizer` that allows everything (development and tests).
pub struct AllowAll;

impl ConnectionPolicy for AllowAll {
    fn can_publish(&self, _topic: &str, _retain: bool) -> bool {
        true
    }
    fn can_subscribe(&self, _filter: &str) -> bool {
        true
    }
    fn can_receive(&self, _topic: &str) -> bool {
        true
    }
}

impl Authorizer for AllowAll {
    fn connect(
        &self,
        _info: &ConnectionInfo,
        _request: &ConnectRequest<'_>,
    ) -> Result<Arc<dyn ConnectionPolicy>, thingd_mqtt::ReasonCode> {
        Ok(Arc::new(AllowAll))
    }
}

/// The broker; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<broker::Shared>,
}

impl Broker {
    /// A broker over `store`, restoring persistent sessions and retained messages from it.
    ///
    /// Sessions found in the store start offline; one still marked connected (the process
    /// died) counts as disconnected now, and its Will (if any) is published when its delay
    /// ends, as for any connection lost without DISCONNECT. The once-a-second session-expiry
    /// sweep, which also publishes restored Wills that fall due, starts here when called
    /// inside a tokio runtime, else with the first connection.
    pub fn new(
        config: BrokerConfig,
        store: thingd_store::Store,
        authorizer: Arc<dyn Authorizer>,
    ) -> Result<Broker, thingd_store::StoreError> {
        let shared = Arc::new(broker::Shared::new(config, store, authorizer));
        let restored = shared.restore()?;
        let mut wills = restored.wills;
        if tokio::runtime::Handle::try_current().is_ok() {
            // Wills already due (their sessions ended, their delay ended or their connections
            // were cut off while thingd was down) go out before anyone can resume a session.
            wills.extend(shared.sweep());
            shared.publish_wills(wills);
        } else if !wills.is_empty() {
            tracing::warn!(
                count = wills.len(),
                "wills of sessions that ended while thingd was down not published: no runtime"
            );
        }
        // After the wills' own writes (see `Restored`).
        if !restored.cleanup.is_empty() {
            shared.store.write_detached(restored.cleanup);
        }
        will::start_sweeper(&shared);
        Ok(Broker { shared })
    }

    /// Runs one client connection until it closes. Never panics on bad input.
    ///
    /// Not an `async fn` on purpose: the returned future is the connection's own, without a
    /// second copy of `stream` and `info` in a wrapper (an idle connection's memory is mostly
    /// this future).
    pub fn serve_connection<S>(
        &self,
        stream: S,
        info: ConnectionInfo,
    ) -> impl std::future::Future<Output = ()> + Send + 'static + use<S>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        connection::serve(self.shared.clone(), stream, info, None)
    }

    /// Connection and subscription events from now on, in the order they were raised. None
    /// is dropped: what the receiver has not read yet waits in its queue, so read it
    /// promptly (dropping the receiver stops the queue).
    pub fn events(&self) -> tokio::sync::mpsc::UnboundedReceiver<BrokerEvent> {
        self.shared.events.subscribe()
    }

    /// Whether any subscription (shared ones included, online or not) matches `topic` now:
    /// a publisher with nobody to reach can skip building its message.
    pub fn has_subscribers(&self, topic: &str) -> bool {
        let mut found = false;
        self.shared
            .index
            .read()
            .for_each_match(topic, |_, _, _| found = true);
        found
    }

    /// Closes every live connection whose principal is `principal` (v5: DISCONNECT 0x98
    /// Administrative action). Returns how many were closed.
    pub fn disconnect_principal(&self, principal: &str) -> usize {
        self.close_where(thingd_mqtt::ReasonCode::AdministrativeAction, |p| {
            p == Some(principal)
        })
    }

    fn close_where(
        &self,
        reason: thingd_mqtt::ReasonCode,
        pick: impl Fn(Option<&str>) -> bool,
    ) -> usize {
        let cells: Vec<_> = self.shared.sessions.lock().values().cloned().collect();
        let mut n = 0;
        for cell in cells {
            let s = cell.lock();
            if let Some(link) = &s.conn
                && pick(link.principal.as_deref())
                && link.tx.control(session::Control::Close(reason))
            {
                n += 1;
            }
        }
        n
    }

    /// Sends DISCONNECT 0x8B to every client, closes them, and flushes the store.
    /// New connections are refused from the moment this is called.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.close_where(thingd_mqtt::ReasonCode::ServerShuttingDown, |_| true);
        if tokio::time::timeout(Duration::from_secs(10), self.shared.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after 10 s of shutdown");
        }
        // Rewrite every persistent session's row; waiting for it also waits for every
        // detached write submitted before.
        let now = self.shared.clock.now_secs();
        let ops: Vec<_> = {
            let cells: Vec<_> = self.shared.sessions.lock().values().cloned().collect();
            cells
                .iter()
                .filter_map(|c| {
                    let s = c.lock();
                    s.stored.then(|| {
                        let at = s
                            .disconnected_at_ms
                            .map(|ms| (ms / 1000) as i64)
                            .unwrap_or(now);
                        thingd_store::WriteOp::PutSession(broker::session_record(&s, Some(at)))
                    })
                })
                .collect()
        };
        if let Err(e) = self.shared.store.write(ops).await {
            tracing::error!(error = %e, "cannot persist sessions at shutdown");
        }
    }

    /// An in-process client with the given client id (MQTT 5, clean start, no session
    /// expiry, not subject to the authorizer; principal "internal"). Must be called inside
    /// a tokio runtime. See [`InternalClient`].
    pub fn internal_client(&self, client_id: &str) -> InternalClient {
        internal::start(self.clone(), client_id)
    }

    /// Publishes as an in-process service, without a connection: the message is routed to
    /// every matching subscription (and stored as retained) before this returns, so two
    /// calls reach each receiver in call order. Not subject to the authorizer; the topic
    /// must be a valid topic name (an invalid one is refused with `TopicNameInvalid`).
    ///
    /// The returned receiver yields `true` once what the message needs to be durable (copies
    /// queued for persistent sessions, a retained QoS ≥ 1 message) has been committed;
    /// dropping it does not cancel anything. Receivers get the message at
    /// min(`qos`, their subscription's QoS), as from any publisher.
    ///
    /// This is the cheap path for services that answer many requests (device shadows): no
    /// encoding, no in-memory pipe, no acknowledgement round trip.
    pub fn publish(
        &self,
        topic: impl Into<thingd_mqtt::ByteStr>,
        payload: bytes::Bytes,
        qos: thingd_mqtt::QoS,
        retain: bool,
    ) -> Result<tokio::sync::oneshot::Receiver<bool>, thingd_mqtt::ReasonCode> {
        self.publish_with(
            topic,
            payload,
            qos,
            retain,
            &thingd_mqtt::Properties::default(),
        )
    }

    /// [`Broker::publish`] with the properties of an MQTT 5 PUBLISH: those a receiver gets
    /// (payload format, content type, response topic, correlation data, user properties)
    /// and the Message Expiry Interval. The message is routed, and stored as retained,
    /// before this returns. Refused with the reason code a client's PUBLISH would get: an
    /// invalid topic or Response Topic, a payload over `max_payload`, a QoS over the
    /// maximum.
    pub fn publish_with(
        &self,
        topic: impl Into<thingd_mqtt::ByteStr>,
        payload: bytes::Bytes,
        qos: thingd_mqtt::QoS,
        retain: bool,
        properties: &thingd_mqtt::Properties,
    ) -> Result<tokio::sync::oneshot::Receiver<bool>, thingd_mqtt::ReasonCode> {
        let shared = &self.shared;
        let cfg = &shared.config;
        let topic = topic.into();
        cfg.check_publish(&topic, properties, payload.len(), qos)
            .map_err(|(code, _)| code)?;
        let now = shared.clock.now_ms();
        let expiry = properties.message_expiry_interval.map(|s| s.max(1));
        let msg = std::sync::Arc::new(message::AppMsg {
            topic,
            payload,
            qos,
            retain,
            props: message::forwardable(properties),
            expires_at: message::expiry_from(expiry, cfg.max_message_expiry, now),
            origin: None,
            frames: Default::default(),
        });
        // Nothing to store: already as durable as it gets.
        let mut wait = None;
        shared.publish(std::slice::from_ref(&msg), &mut None, |_, w| wait = w);
        Ok(wait.unwrap_or_else(|| {
            let (done, rx) = tokio::sync::oneshot::channel();
            let _ = done.send(true);
            rx
        }))
    }

    /// The live retained messages, ordered by topic (for the `iot-data` ListRetainedMessages
    /// and GetRetainedMessage calls). Expired messages are dropped on the way.
    pub fn retained_messages(&self) -> Vec<RetainedMessage> {
        let mut out = self.retained_matching("#");
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out
    }

    /// The live retained message of exactly `topic`, if any.
    pub fn retained_message(&self, topic: &str) -> Option<RetainedMessage> {
        if topic.contains(['+', '#']) {
            return None;
        }
        self.retained_matching(topic)
            .into_iter()
            .find(|m| m.topic == topic)
    }

    fn retained_matching(&self, filter: &str) -> Vec<RetainedMessage> {
        let mut deletes = Vec::new();
        let now = self.shared.clock.now_ms();
        let found = self.shared.retained.matching(filter, now, &mut deletes);
        if !deletes.is_empty() {
            self.shared.store.write_detached(deletes);
        }
        found
            .into_iter()
            .map(|m| RetainedMessage {
                topic: m.topic.to_string(),
                payload: m.payload.clone(),
                qos: m.qos,
                properties: m.props.as_deref().cloned().unwrap_or_default(),
            })
            .collect()
    }

    pub(crate) fn serve_internal<S>(
        &self,
        stream: S,
        info: ConnectionInfo,
    ) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        connection::serve(self.shared.clone(), stream, info, Some(Arc::new(AllowAll)))
    }
}
