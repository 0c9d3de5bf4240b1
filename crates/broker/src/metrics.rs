//! Metric names and the helpers that update them (the `metrics` facade; the server installs
//! a Prometheus recorder). All names start with `thingd_`.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, counter, gauge};
use thingd_mqtt::QoS;

/// Counters (and the queue gauge) updated for every message, looked up in the recorder once and then reused: a
/// `counter!` with labels costs a registry lookup per call, which showed up in profiles of
/// the fan-out path. The first use must come after the recorder is installed (the server
/// installs it before the broker starts).
struct HotCounters {
    messages_in: [Counter; 3],
    messages_out: [Counter; 3],
    bytes_in: Counter,
    bytes_out: Counter,
    queued: Gauge,
}

fn hot() -> &'static HotCounters {
    static HOT: OnceLock<HotCounters> = OnceLock::new();
    HOT.get_or_init(|| {
        let by_qos = |name: &'static str| {
            [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
                .map(|q| counter!(name, "qos" => qos_label(q)))
        };
        HotCounters {
            messages_in: by_qos("thingd_messages_in_total"),
            messages_out: by_qos("thingd_messages_out_total"),
            bytes_in: counter!("thingd_bytes_in_total"),
            bytes_out: counter!("thingd_bytes_out_total"),
            queued: gauge!("thingd_queued_messages"),
        }
    })
}

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
    hot().messages_in[qos as usize].increment(1);
}

/// PUBLISHes were handed to connections' writers: `by_qos[q]` of QoS `q`.
pub(crate) fn messages_out(by_qos: [u64; 3]) {
    for (counter, n) in hot().messages_out.iter().zip(by_qos) {
        if n > 0 {
            counter.increment(n);
        }
    }
}

/// Bytes read from clients.
pub(crate) fn bytes_in(n: usize) {
    hot().bytes_in.increment(n as u64);
}

/// Bytes written to clients.
pub(crate) fn bytes_out(n: usize) {
    hot().bytes_out.increment(n as u64);
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
        hot().queued.increment(delta as f64);
    } else {
        hot().queued.decrement((-delta) as f64);
    }
}

/// The number of sessions (online and offline) is now `n`.
pub(crate) fn sessions(n: usize) {
    gauge!("thingd_sessions").set(n as f64);
}
