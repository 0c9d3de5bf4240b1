//! Connection and subscription events, for services outside the broker (AWS lifecycle
//! events, the console). The broker only reports what happened; what the events look like on
//! the wire is the subscriber's business. In-process (internal) clients raise no events.

use std::net::SocketAddr;
use std::sync::Arc;

/// Why a connection ended, in the terms AWS IoT's lifecycle events use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectCause {
    /// The client sent DISCONNECT.
    ClientInitiated,
    /// The socket closed or failed without a DISCONNECT.
    ConnectionLost,
    /// Nothing arrived for 1.5 × the keep-alive.
    KeepAliveTimeout,
    /// Another connection with the same client id took over.
    DuplicateClientId,
    /// The client broke the protocol or a limit.
    ClientError,
    /// An operation was not authorized.
    AuthError,
    /// The server closed it (shutdown, certificate revoked, administrative action).
    ServerInitiated,
}

impl DisconnectCause {
    /// The AWS `disconnectReason` value.
    pub fn aws_reason(self) -> &'static str {
        match self {
            DisconnectCause::ClientInitiated => "CLIENT_INITIATED_DISCONNECT",
            DisconnectCause::ConnectionLost => "CONNECTION_LOST",
            DisconnectCause::KeepAliveTimeout => "MQTT_KEEP_ALIVE_TIMEOUT",
            DisconnectCause::DuplicateClientId => "DUPLICATE_CLIENTID",
            DisconnectCause::ClientError => "CLIENT_ERROR",
            DisconnectCause::AuthError => "AUTH_ERROR",
            DisconnectCause::ServerInitiated => "SERVER_INITIATED_DISCONNECT",
        }
    }
}

/// Something that happened to a client connection.
#[derive(Debug, Clone)]
pub enum BrokerEvent {
    /// CONNACK was sent with success.
    Connected {
        /// Client id.
        client_id: Arc<str>,
        /// Certificate id, if any.
        principal: Option<Arc<str>>,
        /// Peer address.
        remote_addr: SocketAddr,
        /// Identifies this connection (the same value appears on its `Disconnected`).
        connection_id: u64,
    },
    /// The connection closed.
    Disconnected {
        /// Client id.
        client_id: Arc<str>,
        /// Certificate id, if any.
        principal: Option<Arc<str>>,
        /// Identifies the connection.
        connection_id: u64,
        /// Why.
        cause: DisconnectCause,
    },
    /// Filters granted by a SUBSCRIBE.
    Subscribed {
        /// Client id.
        client_id: Arc<str>,
        /// Certificate id, if any.
        principal: Option<Arc<str>>,
        /// Identifies the connection.
        connection_id: u64,
        /// The filters granted, as sent.
        filters: Vec<String>,
    },
    /// Filters removed by an UNSUBSCRIBE.
    Unsubscribed {
        /// Client id.
        client_id: Arc<str>,
        /// Certificate id, if any.
        principal: Option<Arc<str>>,
        /// Identifies the connection.
        connection_id: u64,
        /// The filters removed, as sent.
        filters: Vec<String>,
    },
}

/// Where the broker's events go: an unbounded queue per receiver, so that a receiver that is
/// busy for a while (a fleet reconnecting at once) gets every event late rather than loses
/// some. A receiver holds only what it has not read yet; a dropped one is forgotten.
#[derive(Default)]
pub(crate) struct EventQueues {
    receivers: parking_lot::Mutex<Vec<tokio::sync::mpsc::UnboundedSender<BrokerEvent>>>,
}

impl EventQueues {
    /// A receiver of every event raised from now on, in the order they were raised.
    pub(crate) fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<BrokerEvent> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.receivers.lock().push(tx);
        rx
    }

    /// Queues `event` for every receiver. Never blocks; under the lock, so that all receivers
    /// see events in one order.
    pub(crate) fn send(&self, event: BrokerEvent) {
        let mut receivers = self.receivers.lock();
        receivers.retain(|tx| !tx.is_closed());
        if let Some((last, others)) = receivers.split_last() {
            for tx in others {
                let _ = tx.send(event.clone());
            }
            let _ = last.send(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disconnected(connection_id: u64) -> BrokerEvent {
        BrokerEvent::Disconnected {
            client_id: Arc::from("dev"),
            principal: None,
            connection_id,
            cause: DisconnectCause::ConnectionLost,
        }
    }

    fn connection_id(event: BrokerEvent) -> u64 {
        match event {
            BrokerEvent::Disconnected { connection_id, .. } => connection_id,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_receiver_that_reads_late_gets_every_event_in_order() {
        let queues = EventQueues::default();
        let mut first = queues.subscribe();
        let mut second = queues.subscribe();
        // A burst much larger than a fixed-size ring would hold.
        for id in 0..20_000 {
            queues.send(disconnected(id));
        }
        for rx in [&mut first, &mut second] {
            for id in 0..20_000 {
                assert_eq!(rx.try_recv().map(connection_id), Ok(id));
            }
            assert!(rx.try_recv().is_err());
        }
    }

    #[test]
    fn a_dropped_receiver_is_forgotten_and_the_others_still_get_events() {
        let queues = EventQueues::default();
        let dropped = queues.subscribe();
        let mut kept = queues.subscribe();
        drop(dropped);
        queues.send(disconnected(7));
        assert_eq!(queues.receivers.lock().len(), 1);
        assert_eq!(kept.try_recv().map(connection_id), Ok(7));
        // With nobody listening an event goes nowhere.
        drop(kept);
        queues.send(disconnected(8));
        assert!(queues.receivers.lock().is_empty());
    }
}
