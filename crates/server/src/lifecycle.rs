//! AWS IoT lifecycle events: the broker reports connects, disconnects and subscription
//! changes; this service publishes them, in AWS's JSON shapes, to
//! `$aws/events/presence/{connected,disconnected}/<clientId>` and
//! `$aws/events/subscriptions/{subscribed,unsubscribed}/<clientId>` through an in-process
//! client, so devices and rules subscribe to them like any topic.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde_json::json;
use thingd_broker::{Broker, BrokerEvent};
use thingd_mqtt::QoS;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Per-client-id bookkeeping: AWS's `versionNumber` grows with each connection of a client
/// id, and connect and disconnect of one connection share it and its session identifier.
#[derive(Default)]
struct Versions {
    next_version: HashMap<String, u64>,
    open: HashMap<u64, (u64, String)>,
}

impl Versions {
    fn connected(&mut self, client_id: &str, connection_id: u64) -> (u64, String) {
        let counter = self.next_version.entry(client_id.to_owned()).or_default();
        let version = *counter;
        *counter += 1;
        let session = uuid::Uuid::new_v4().simple().to_string();
        self.open.insert(connection_id, (version, session.clone()));
        (version, session)
    }

    fn of(&self, connection_id: u64) -> (u64, String) {
        self.open
            .get(&connection_id)
            .cloned()
            .unwrap_or_else(|| (0, uuid::Uuid::nil().simple().to_string()))
    }

    fn disconnected(&mut self, connection_id: u64) -> (u64, String) {
        let found = self.of(connection_id);
        self.open.remove(&connection_id);
        found
    }

    /// The bookkeeping of `render` for an event that is not published.
    fn record(&mut self, event: &BrokerEvent) {
        match event {
            BrokerEvent::Connected {
                client_id,
                connection_id,
                ..
            } => {
                self.connected(client_id, *connection_id);
            }
            BrokerEvent::Disconnected { connection_id, .. } => {
                self.disconnected(*connection_id);
            }
            BrokerEvent::Subscribed { .. } | BrokerEvent::Unsubscribed { .. } => {}
        }
    }
}

/// Starts publishing the broker's events until `shutdown`. Subscribes to them before it
/// returns, so no connection made afterwards is missed. Call inside a tokio runtime.
pub fn start(
    broker: &Broker,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let events = broker.events();
    publish_lifecycle_events(events, broker.clone(), shutdown)
}

/// Publishes each event straight into the broker (QoS 1, in event order), without waiting
/// for the subscribers' copies to be stored: a connect storm produces thousands a second.
async fn publish_lifecycle_events(
    mut events: tokio::sync::broadcast::Receiver<BrokerEvent>,
    broker: Broker,
    shutdown: CancellationToken,
) {
    let mut versions = Versions::default();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        let event = match event {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "lifecycle events fell behind; some were not published"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        // Nobody listening (the usual case): keep the per-client numbering, skip the JSON.
        if let Some(topic) = topic_of(&event)
            && !broker.has_subscribers(&topic)
        {
            versions.record(&event);
            continue;
        }
        if let Some((topic, payload)) = render(&event, &mut versions, now_ms())
            && let Err(reason) = broker.publish(
                topic.clone(),
                bytes::Bytes::from(payload.to_string()),
                QoS::AtLeastOnce,
                false,
            )
        {
            tracing::warn!(?reason, topic, "publishing a lifecycle event failed");
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The topic of an event; `None` for client ids AWS raises no events for (those containing
/// `+` or `#`, which would make the topic a filter).
fn topic_of(event: &BrokerEvent) -> Option<String> {
    let (kind, client_id) = match event {
        BrokerEvent::Connected { client_id, .. } => ("presence/connected", client_id),
        BrokerEvent::Disconnected { client_id, .. } => ("presence/disconnected", client_id),
        BrokerEvent::Subscribed { client_id, .. } => ("subscriptions/subscribed", client_id),
        BrokerEvent::Unsubscribed { client_id, .. } => ("subscriptions/unsubscribed", client_id),
    };
    if client_id.contains(['+', '#']) {
        return None;
    }
    Some(format!("$aws/events/{kind}/{client_id}"))
}

/// The topic and payload of an event (`None` where `topic_of` is).
fn render(
    event: &BrokerEvent,
    versions: &mut Versions,
    timestamp: u64,
) -> Option<(String, serde_json::Value)> {
    let topic = topic_of(event)?;
    let client_id = match event {
        BrokerEvent::Connected { client_id, .. }
        | BrokerEvent::Disconnected { client_id, .. }
        | BrokerEvent::Subscribed { client_id, .. }
        | BrokerEvent::Unsubscribed { client_id, .. } => client_id,
    };
    let principal = |p: &Option<std::sync::Arc<str>>| p.as_deref().unwrap_or_default().to_owned();
    Some(match event {
        BrokerEvent::Connected {
            principal: p,
            remote_addr,
            connection_id,
            ..
        } => {
            let (version, session) = versions.connected(client_id, *connection_id);
            (
                topic,
                json!({
                    "clientId": client_id.as_ref(),
                    "timestamp": timestamp,
                    "eventType": "connected",
                    "sessionIdentifier": session,
                    "principalIdentifier": principal(p),
                    "ipAddress": ip_of(remote_addr),
                    "versionNumber": version,
                }),
            )
        }
        BrokerEvent::Disconnected {
            principal: p,
            connection_id,
            cause,
            ..
        } => {
            let (version, session) = versions.disconnected(*connection_id);
            (
                topic,
                json!({
                    "clientId": client_id.as_ref(),
                    "timestamp": timestamp,
                    "eventType": "disconnected",
                    "sessionIdentifier": session,
                    "principalIdentifier": principal(p),
                    "clientInitiatedDisconnect": *cause == thingd_broker::DisconnectCause::ClientInitiated,
                    "disconnectReason": cause.aws_reason(),
                    "versionNumber": version,
                }),
            )
        }
        BrokerEvent::Subscribed {
            principal: p,
            connection_id,
            filters,
            ..
        }
        | BrokerEvent::Unsubscribed {
            principal: p,
            connection_id,
            filters,
            ..
        } => {
            let kind = if matches!(event, BrokerEvent::Subscribed { .. }) {
                "subscribed"
            } else {
                "unsubscribed"
            };
            let (_, session) = versions.of(*connection_id);
            (
                topic,
                json!({
                    "clientId": client_id.as_ref(),
                    "timestamp": timestamp,
                    "eventType": kind,
                    "sessionIdentifier": session,
                    "principalIdentifier": principal(p),
                    "topics": filters,
                }),
            )
        }
    })
}

fn ip_of(addr: &SocketAddr) -> String {
    addr.ip().to_canonical().to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use thingd_broker::DisconnectCause;

    use super::*;

    /// Events nobody subscribed to are not rendered, but still count: the next published
    /// connect of the same client id has the next version number.
    #[test]
    fn unpublished_events_keep_the_version_numbering() {
        let mut versions = Versions::default();
        let connected = |connection_id| BrokerEvent::Connected {
            client_id: Arc::from("dev1"),
            principal: None,
            remote_addr: "127.0.0.1:5000".parse().unwrap(),
            connection_id,
        };
        versions.record(&connected(1));
        versions.record(&BrokerEvent::Disconnected {
            client_id: Arc::from("dev1"),
            principal: None,
            connection_id: 1,
            cause: DisconnectCause::ClientInitiated,
        });
        assert_eq!(
            topic_of(&connected(2)).as_deref(),
            Some("$aws/events/presence/connected/dev1")
        );
        let (_, on) = render(&connected(2), &mut versions, 1000).unwrap();
        assert_eq!(on["versionNumber"], 1);
    }

    #[test]
    fn connect_and_disconnect_share_version_and_session_and_versions_grow_per_client() {
        let mut versions = Versions::default();
        let connected = BrokerEvent::Connected {
            client_id: Arc::from("dev1"),
            principal: Some(Arc::from("abc")),
            remote_addr: "127.0.0.1:5000".parse().unwrap(),
            connection_id: 7,
        };
        let (topic, on) = render(&connected, &mut versions, 1000).unwrap();
        assert_eq!(topic, "$aws/events/presence/connected/dev1");
        assert_eq!(on["ipAddress"], "127.0.0.1");
        assert_eq!(on["principalIdentifier"], "abc");
        assert_eq!(on["versionNumber"], 0);
        let disconnected = BrokerEvent::Disconnected {
            client_id: Arc::from("dev1"),
            principal: Some(Arc::from("abc")),
            connection_id: 7,
            cause: DisconnectCause::KeepAliveTimeout,
        };
        let (topic, off) = render(&disconnected, &mut versions, 2000).unwrap();
        assert_eq!(topic, "$aws/events/presence/disconnected/dev1");
        assert_eq!(off["sessionIdentifier"], on["sessionIdentifier"]);
        assert_eq!(off["versionNumber"], 0);
        assert_eq!(off["disconnectReason"], "MQTT_KEEP_ALIVE_TIMEOUT");
        assert_eq!(off["clientInitiatedDisconnect"], false);
        assert!(off.get("ipAddress").is_none());
        let again = BrokerEvent::Connected {
            client_id: Arc::from("dev1"),
            principal: None,
            remote_addr: "[::1]:5000".parse().unwrap(),
            connection_id: 8,
        };
        assert_eq!(
            render(&again, &mut versions, 3000).unwrap().1["versionNumber"],
            1
        );
    }

    #[test]
    fn wildcard_client_ids_raise_no_events() {
        let event = BrokerEvent::Subscribed {
            client_id: Arc::from("a+b"),
            principal: None,
            connection_id: 1,
            filters: vec!["x".to_owned()],
        };
        assert!(render(&event, &mut Versions::default(), 0).is_none());
    }
}
