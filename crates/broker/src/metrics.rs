//! Metric names and the helpers that update them (the `metrics` facade; the server installs
//! a Prometheus recorder). All names start with `thingd_`.

use metrics::{counter, gauge};
use thingd_mqtt::QoS;

fn qos_label(qos: QoS) -> &'static str {
    match qos {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    }
}

/// A connection completed CONNECT.
pub(crate) fn connection_opened() {
    counter!("thingd_connections_total").increment(1);
    gauge!("thingd_connections_current").increment(1.0);
}

/// A connection that completed CONNECT closed.
pub(crate) fn connection_closed() {
    gauge!("thingd_connections_current").decrement(1.0);
}

/// A PUBLISH was accepted from a client.
pub(crate) fn message_in(qos: QoS) {
    counter!("thingd_messages_in_total", "qos" => qos_label(qos)).increment(1);
}

/// A PUBLISH was handed to a connection's writer.
pub(crate) fn message_out(qos: QoS) {
    counter!("thingd_messages_out_total", "qos" => qos_label(qos)).increment(1);
}

/// Bytes read from clients.
pub(crate) fn bytes_in(n: usize) {
    counter!("thingd_bytes_in_total").increment(n as u64);
}

/// Bytes written to clients.
pub(crate) fn bytes_out(n: usize) {
    counter!("thingd_bytes_out_total").increment(n as u64);
}

/// Why a message was dropped for one receiver.
#[derive(Clone, Copy, Debug)]
pub(crate) enum DropReason {
    /// The session's queue was full; the oldest message was dropped.
    QueueFull,
    /// The Message Expiry Interval passed.
    Expired,
    /// The connection's outbound queue was full (QoS 0).
    SlowConsumer,
    /// Larger than the receiver's Maximum Packet Size.
    TooLarge,
    /// Over the publisher's `max_publishes_per_second`.
    RateLimited,
}

/// A message was dropped for one receiver.
pub(crate) fn dropped(reason: DropReason) {
    let label = match reason {
        DropReason::QueueFull => "queue_full",
        DropReason::Expired => "expired",
        DropReason::SlowConsumer => "slow_consumer",
        DropReason::TooLarge => "packet_too_large",
        DropReason::RateLimited => "rate_limited",
    };
    counter!("thingd_dropped_messages_total", "reason" => label).increment(1);
}

/// Messages waiting in session queues changed by `delta`.
pub(crate) fn queued(delta: i64) {
    if delta >= 0 {
        gauge!("thingd_queued_messages").increment(delta as f64);
    } else {
        gauge!("thingd_queued_messages").decrement((-delta) as f64);
    }
}

/// The number of sessions (online and offline) is now `n`.
pub(crate) fn sessions(n: usize) {
    gauge!("thingd_sessions").set(n as f64);
}
