//! AWS IoT lifecycle events: the broker reports connects, disconnects and subscription
//! changes; this service publishes them, in AWS's JSON shapes, to
//! `$aws/events/presence/{connected,disconnected}/<clientId>` and
//! `$aws/events/subscriptions/{subscribed,unsubscribed}/<clientId>` through an in-process
//! client, so devices and rules subscribe to them like any topic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use thingd_broker::{Broker, BrokerEvent};
use thingd_mqtt::QoS;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// How long a client id's numbering outlives its last connection: AWS starts
/// `versionNumber` again at 0 after about an hour disconnected. Forgetting it also keeps the
/// bookkeeping of a broker that sees ever new client ids from growing without end.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Per-client-id bookkeeping: AWS's `versionNumber` grows with each connection of a client
/// id, and connect and disconnect of one connection share it and its session identifier.
#[derive(Default)]
struct Versions {
    clients: HashMap<Arc<str>, Client>,
    open: HashMap<u64, Open>,
}

/// A client id's numbering.
struct Client {
    next_version: u64,
    connections: usize,
    /// When its last connection closed; `None` while one is open.
    idle_since: Option<Instant>,
}

/// A live connection's version and session identifier.
struct Open {
    client_id: Arc<str>,
    version: u64,
    /// Made when an event of the connection is first published: one nobody saw needs none.
    session: Option<String>,
}

impl Versions {
    /// A connection opened: its version number.
    fn connected(&mut self, client_id: &Arc<str>, connection_id: u64) -> u64 {
        let client = self.clients.entry(client_id.clone()).or_insert(Client {
            next_version: 0,
            connections: 0,
            idle_since: None,
        });
        let version = client.next_version;
        client.next_version += 1;
        client.connections += 1;
        client.idle_since = None;
        self.open.insert(
            connection_id,
            Open {
                client_id: client_id.clone(),
                version,
                session: None,
            },
        );
        version
    }

    /// The version and session identifier of a live connection (the nil session for one
    /// not known).
    fn of(&mut self, connection_id: u64) -> (u64, String) {
        match self.open.get_mut(&connection_id) {
            Some(open) => (
                open.version,
                open.session
                    .get_or_insert_with(|| uuid::Uuid::new_v4().simple().to_string())
                    .clone(),
            ),
            None => (0, uuid::Uuid::nil().simple().to_string()),
        }
    }

    /// A connection closed: its version and session identifier, if `rendered`.
    fn disconnected(&mut self, connection_id: u64, now: Instant, rendered: bool) -> (u64, String) {
        let found = if rendered {
            self.of(connection_id)
        } else {
            (0, String::new())
        };
        if let Some(open) = self.open.remove(&connection_id)
            && let Some(client) = self.clients.get_mut(&open.client_id)
        {
            client.connections = client.connections.saturating_sub(1);
            if client.connections == 0 {
                client.idle_since = Some(now);
            }
        }
        found
    }

    /// The bookkeeping of `render` for an event that is not published.
    fn record(&mut self, event: &BrokerEvent, now: Instant) {
        match event {
            BrokerEvent::Connected {
                client_id,
                connection_id,
                ..
            } => {
                self.connected(client_id, *connection_id);
            }
            BrokerEvent::Disconnected { connection_id, .. } => {
                self.disconnected(*connection_id, now, false);
            }
            BrokerEvent::Subscribed { .. } | BrokerEvent::Unsubscribed { .. } => {}
        }
    }

    /// Forgets the client ids without a connection for `FORGET_AFTER`.
    fn forget_idle(&mut self, now: Instant) {
        self.clients.retain(|_, c| {
            c.idle_since
                .is_none_or(|since| now.saturating_duration_since(since) < FORGET_AFTER)
        });
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
    let mut forget = tokio::time::interval(Duration::from_secs(60));
    forget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = forget.tick() => {
                versions.forget_idle(Instant::now());
                continue;
            }
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
            versions.record(&event, Instant::now());
            continue;
        }
        if let Some((topic, payload)) = render(&event, &mut versions, now_ms(), Instant::now())
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
    now: Instant,
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
            let version = versions.connected(client_id, *connection_id);
            let (_, session) = versions.of(*connection_id);
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
            let (version, session) = versions.disconnected(*connection_id, now, true);
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
        versions.record(&connected(1), Instant::now());
        versions.record(
            &BrokerEvent::Disconnected {
                client_id: Arc::from("dev1"),
                principal: None,
                connection_id: 1,
                cause: DisconnectCause::ClientInitiated,
            },
            Instant::now(),
        );
        assert_eq!(
            topic_of(&connected(2)).as_deref(),
            Some("$aws/events/presence/connected/dev1")
        );
        let (_, on) = render(&connected(2), &mut versions, 1000, Instant::now()).unwrap();
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
        let (topic, on) = render(&connected, &mut versions, 1000, Instant::now()).unwrap();
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
        let (topic, off) = render(&disconnected, &mut versions, 2000, Instant::now()).unwrap();
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
            render(&again, &mut versions, 3000, Instant::now())
                .unwrap()
                .1["versionNumber"],
            1
        );
    }

    /// AWS starts a client id's `versionNumber` again after about an hour without a
    /// connection; until then it keeps counting. A client id with a live connection is
    /// never forgotten, and forgotten ones take no memory.
    #[test]
    fn version_numbers_start_again_after_an_hour_without_a_connection() {
        let mut versions = Versions::default();
        let t0 = Instant::now();
        let dev: Arc<str> = Arc::from("dev1");
        let held: Arc<str> = Arc::from("held");
        assert_eq!(versions.connected(&held, 100), 0);
        assert_eq!(versions.connected(&dev, 1), 0);
        versions.disconnected(1, t0, false);
        versions.forget_idle(t0 + Duration::from_secs(59 * 60));
        assert_eq!(versions.connected(&dev, 2), 1);
        // Two connections of one client id (a takeover in flight): idle only after both.
        assert_eq!(versions.connected(&dev, 3), 2);
        versions.disconnected(2, t0, false);
        let t1 = t0 + Duration::from_secs(60);
        versions.disconnected(3, t1, false);
        versions.forget_idle(t1 + Duration::from_secs(59 * 60));
        assert_eq!(versions.clients.len(), 2);
        versions.forget_idle(t1 + Duration::from_secs(61 * 60));
        assert_eq!(
            versions.clients.len(),
            1,
            "only the connected client id is kept"
        );
        assert_eq!(versions.connected(&dev, 4), 0);
        assert_eq!(versions.connected(&held, 101), 1);
    }

    /// A connection whose connect event nobody saw gets its session identifier when one of
    /// its events is first published, and keeps it.
    #[test]
    fn a_session_identifier_is_made_when_first_published_and_kept() {
        let mut versions = Versions::default();
        let dev: Arc<str> = Arc::from("dev1");
        versions.connected(&dev, 9);
        let subscribed = BrokerEvent::Subscribed {
            client_id: dev.clone(),
            principal: None,
            connection_id: 9,
            filters: vec!["a/b".to_owned()],
        };
        let (_, sub) = render(&subscribed, &mut versions, 1, Instant::now()).unwrap();
        let disconnected = BrokerEvent::Disconnected {
            client_id: dev,
            principal: None,
            connection_id: 9,
            cause: DisconnectCause::ClientInitiated,
        };
        let (_, off) = render(&disconnected, &mut versions, 2, Instant::now()).unwrap();
        let session = sub["sessionIdentifier"].as_str().unwrap();
        assert_eq!(session.len(), 32);
        assert_ne!(session, uuid::Uuid::nil().simple().to_string());
        assert_eq!(off["sessionIdentifier"], sub["sessionIdentifier"]);
    }

    #[test]
    fn wildcard_client_ids_raise_no_events() {
        let event = BrokerEvent::Subscribed {
            client_id: Arc::from("a+b"),
            principal: None,
            connection_id: 1,
            filters: vec!["x".to_owned()],
        };
        assert!(render(&event, &mut Versions::default(), 0, Instant::now()).is_none());
    }
}
