//! AWS IoT lifecycle events: the broker reports connects, disconnects and subscription
//! changes; this service publishes them, in AWS's JSON shapes, to
//! `$aws/events/presence/{connected,disconnected}/<clientId>` and
//! `$aws/events/subscriptions/{subscribed,unsubscribed}/<clientId>` through an in-process
//! client, so devices and rules subscribe to them like any topic.
//!
//! A connection whose disconnected event someone subscribes to when it connects is recorded
//! in the store until that event is published: when the process dies first (kill -9, a
//! crash), the next start publishes it with `disconnectReason` `SERVER_ERROR`, so presence
//! kept from these events does not show a device online for ever.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use thingd_broker::{Broker, BrokerEvent};
use thingd_mqtt::QoS;
use thingd_store::{LiveConnection, Store, WriteOp};
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
#[derive(Default)]
struct Client {
    next_version: u64,
    connections: usize,
    /// When its last connection closed; `None` while one is open.
    idle_since: Option<Instant>,
}

/// A live connection's version and session identifier.
struct Open {
    client_id: Arc<str>,
    principal: Option<Arc<str>>,
    version: u64,
    /// Made when an event of the connection is first published: one nobody saw needs none.
    session: Option<String>,
    /// Recorded in the store until its disconnected event is published.
    followed: bool,
}

impl Versions {
    /// A connection opened: its version number.
    fn connected(
        &mut self,
        client_id: &Arc<str>,
        principal: &Option<Arc<str>>,
        connection_id: u64,
    ) -> u64 {
        let client = self.clients.entry(client_id.clone()).or_default();
        let version = client.next_version;
        client.next_version += 1;
        client.connections += 1;
        client.idle_since = None;
        self.open.insert(
            connection_id,
            Open {
                client_id: client_id.clone(),
                principal: principal.clone(),
                version,
                session: None,
                followed: false,
            },
        );
        version
    }

    /// Marks a live connection as recorded in the store; its record.
    fn follow(&mut self, connection_id: u64) -> Option<LiveConnection> {
        let open = self.open.get_mut(&connection_id)?;
        open.followed = true;
        let (client_id, principal) = (open.client_id.clone(), open.principal.clone());
        let (version, session) = self.of(connection_id);
        Some(LiveConnection {
            session_identifier: session,
            client_id: client_id.to_string(),
            principal: principal.as_deref().unwrap_or_default().to_owned(),
            version_number: i64::try_from(version).unwrap_or(i64::MAX),
        })
    }

    /// The session identifier of a live connection recorded in the store.
    fn followed(&self, connection_id: u64) -> Option<String> {
        self.open
            .get(&connection_id)
            .filter(|open| open.followed)
            .and_then(|open| open.session.clone())
    }

    /// Carries on the numbering of `client_id` after version `version` of a previous run,
    /// whose connection is gone.
    fn continue_after(&mut self, client_id: &str, version: u64, now: Instant) {
        let client = self.clients.entry(Arc::from(client_id)).or_default();
        client.next_version = client.next_version.max(version + 1);
        if client.connections == 0 {
            client.idle_since = Some(now);
        }
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

    /// A connection closed.
    fn disconnected(&mut self, connection_id: u64, now: Instant) {
        if let Some(open) = self.open.remove(&connection_id)
            && let Some(client) = self.clients.get_mut(&open.client_id)
        {
            client.connections = client.connections.saturating_sub(1);
            if client.connections == 0 {
                client.idle_since = Some(now);
            }
        }
    }

    /// The bookkeeping of `render` for an event that is not published.
    fn record(&mut self, event: &BrokerEvent, now: Instant) {
        match event {
            BrokerEvent::Connected {
                client_id,
                principal,
                connection_id,
                ..
            } => {
                self.connected(client_id, principal, *connection_id);
            }
            BrokerEvent::Disconnected { connection_id, .. } => {
                self.disconnected(*connection_id, now);
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

/// Starts publishing the broker's events until `shutdown`, and the events already raised by
/// then (cancel it after the broker closed its connections, and their disconnected events go
/// out). Subscribes to them before it returns, so no connection made afterwards is missed.
/// Call inside a tokio runtime.
pub fn start(
    broker: &Broker,
    store: Store,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let events = broker.events();
    publish_lifecycle_events(events, broker.clone(), store, shutdown)
}

/// Publishes each event straight into the broker (QoS 1, in event order), without waiting
/// for the subscribers' copies to be stored: a connect storm produces thousands a second.
async fn publish_lifecycle_events(
    mut events: tokio::sync::mpsc::UnboundedReceiver<BrokerEvent>,
    broker: Broker,
    store: Store,
    shutdown: CancellationToken,
) {
    let mut versions = Versions::default();
    report_connections_gone_with_the_process(&broker, &store, &mut versions).await;
    let mut forget = tokio::time::interval(Duration::from_secs(60));
    forget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            // Every event raised before the stop is handled first.
            biased;
            event = events.recv() => event,
            _ = shutdown.cancelled() => return,
            _ = forget.tick() => {
                versions.forget_idle(Instant::now());
                continue;
            }
        };
        // No sender is left, so nothing more can come.
        let Some(event) = event else { return };
        let recorded = match &event {
            BrokerEvent::Disconnected { connection_id, .. } => versions.followed(*connection_id),
            _ => None,
        };
        publish_event(&broker, &event, &mut versions);
        // Forgotten after its disconnected event went out (a crash in between reports it
        // again at the next start rather than never).
        if let Some(session_identifier) = recorded {
            store.write_detached(vec![WriteOp::DeleteLiveConnection { session_identifier }]);
        }
        let records: Vec<WriteOp> = match &event {
            BrokerEvent::Connected { connection_id, .. } => {
                follow_if_watched(&broker, &mut versions, *connection_id)
                    .into_iter()
                    .collect()
            }
            // A new watcher of disconnects: the connections open now are watched from here.
            BrokerEvent::Subscribed { filters, .. }
                if filters.iter().any(|f| may_match_a_disconnect(f)) =>
            {
                let open: Vec<u64> = versions.open.keys().copied().collect();
                open.into_iter()
                    .filter_map(|id| follow_if_watched(&broker, &mut versions, id))
                    .collect()
            }
            _ => Vec::new(),
        };
        if !records.is_empty() {
            store.write_detached(records);
        }
    }
}

/// Publishes one event, or only keeps its numbering when nobody is listening (the usual
/// case: no JSON is made).
fn publish_event(broker: &Broker, event: &BrokerEvent, versions: &mut Versions) {
    if let Some(topic) = topic_of(event)
        && !broker.has_subscribers(&topic)
    {
        versions.record(event, Instant::now());
        return;
    }
    if let Some((topic, payload)) = render(event, versions, now_ms(), Instant::now()) {
        publish_json(broker, topic, &payload);
    }
}

/// Publishes an event's JSON at QoS 1, not retained; a refusal is logged.
fn publish_json(broker: &Broker, topic: String, payload: &serde_json::Value) {
    let body = bytes::Bytes::from(payload.to_string());
    if let Err(reason) = broker.publish(topic.clone(), body, QoS::AtLeastOnce, false) {
        tracing::warn!(?reason, topic, "publishing a lifecycle event failed");
    }
}

/// The store record of a live connection whose disconnected event has a subscriber now, so
/// that the event survives the process; `None` if it has none or is recorded already.
fn follow_if_watched(
    broker: &Broker,
    versions: &mut Versions,
    connection_id: u64,
) -> Option<WriteOp> {
    let open = versions.open.get(&connection_id)?;
    if open.followed
        || open.client_id.contains(['+', '#'])
        || !broker.has_subscribers(&event_topic("presence/disconnected", &open.client_id))
    {
        return None;
    }
    versions
        .follow(connection_id)
        .map(WriteOp::PutLiveConnection)
}

/// Whether `filter` (shared or not) can match a disconnected event's topic,
/// `$aws/events/presence/disconnected/<clientId>`. Errs on the side of yes: the broker's
/// subscription index answers exactly for each connection afterwards.
fn may_match_a_disconnect(filter: &str) -> bool {
    let filter = thingd_topic::parse_shared(filter).map_or(filter, |(_, f)| f);
    let mut levels = filter.split('/');
    for wanted in ["$aws", "events", "presence", "disconnected"] {
        match levels.next() {
            Some("#") => return true,
            Some(level) if level == wanted || level == "+" => {}
            _ => return false,
        }
    }
    // The client id's level, perhaps followed by a `#` (which also matches nothing more).
    matches!(
        (levels.next(), levels.next(), levels.next()),
        (Some(_), None | Some("#"), None)
    )
}

/// Publishes the disconnected events of the connections the previous process recorded and
/// never saw end (it was killed, or stopped before their events went out), with
/// `disconnectReason` `SERVER_ERROR`; their client ids number on from there.
async fn report_connections_gone_with_the_process(
    broker: &Broker,
    store: &Store,
    versions: &mut Versions,
) {
    let reader = store.clone();
    let gone = match tokio::task::spawn_blocking(move || reader.live_connections()).await {
        Ok(Ok(gone)) => gone,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the connections open at the last stop");
            return;
        }
        Err(_) => return,
    };
    if gone.is_empty() {
        return;
    }
    let now = Instant::now();
    let timestamp = now_ms();
    let mut forget = Vec::with_capacity(gone.len());
    for live in &gone {
        let version = u64::try_from(live.version_number).unwrap_or_default();
        versions.continue_after(&live.client_id, version, now);
        let topic = event_topic("presence/disconnected", &live.client_id);
        let payload = disconnected_payload(Disconnected {
            client_id: &live.client_id,
            timestamp,
            session: &live.session_identifier,
            principal: &live.principal,
            client_initiated: false,
            reason: "SERVER_ERROR",
            version,
        });
        publish_json(broker, topic, &payload);
        forget.push(WriteOp::DeleteLiveConnection {
            session_identifier: live.session_identifier.clone(),
        });
    }
    store.write_detached(forget);
    tracing::info!(
        count = gone.len(),
        "published the disconnected events of connections open when thingd last stopped"
    );
}

/// The fields of a disconnected event.
struct Disconnected<'a> {
    client_id: &'a str,
    timestamp: u64,
    session: &'a str,
    principal: &'a str,
    client_initiated: bool,
    reason: &'a str,
    version: u64,
}

fn disconnected_payload(d: Disconnected<'_>) -> serde_json::Value {
    json!({
        "clientId": d.client_id,
        "timestamp": d.timestamp,
        "eventType": "disconnected",
        "sessionIdentifier": d.session,
        "principalIdentifier": d.principal,
        "clientInitiatedDisconnect": d.client_initiated,
        "disconnectReason": d.reason,
        "versionNumber": d.version,
    })
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
    Some(event_topic(kind, client_id))
}

/// `$aws/events/<kind>/<clientId>`.
fn event_topic(kind: &str, client_id: &str) -> String {
    format!("$aws/events/{kind}/{client_id}")
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
            let version = versions.connected(client_id, p, *connection_id);
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
            let (version, session) = versions.of(*connection_id);
            versions.disconnected(*connection_id, now);
            (
                topic,
                disconnected_payload(Disconnected {
                    client_id,
                    timestamp,
                    session: &session,
                    principal: &principal(p),
                    client_initiated: *cause == thingd_broker::DisconnectCause::ClientInitiated,
                    reason: cause.aws_reason(),
                    version,
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
        assert_eq!(versions.connected(&held, &None, 100), 0);
        assert_eq!(versions.connected(&dev, &None, 1), 0);
        versions.disconnected(1, t0);
        versions.forget_idle(t0 + Duration::from_secs(59 * 60));
        assert_eq!(versions.connected(&dev, &None, 2), 1);
        // Two connections of one client id (a takeover in flight): idle only after both.
        assert_eq!(versions.connected(&dev, &None, 3), 2);
        versions.disconnected(2, t0);
        let t1 = t0 + Duration::from_secs(60);
        versions.disconnected(3, t1);
        versions.forget_idle(t1 + Duration::from_secs(59 * 60));
        assert_eq!(versions.clients.len(), 2);
        versions.forget_idle(t1 + Duration::from_secs(61 * 60));
        assert_eq!(
            versions.clients.len(),
            1,
            "only the connected client id is kept"
        );
        assert_eq!(versions.connected(&dev, &None, 4), 0);
        assert_eq!(versions.connected(&held, &None, 101), 1);
    }

    /// A connection whose connect event nobody saw gets its session identifier when one of
    /// its events is first published, and keeps it.
    #[test]
    fn a_session_identifier_is_made_when_first_published_and_kept() {
        let mut versions = Versions::default();
        let dev: Arc<str> = Arc::from("dev1");
        versions.connected(&dev, &None, 9);
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

    /// A connection recorded in the store is known as such until it closes; a client id
    /// whose connection the previous process lost numbers on after it.
    #[test]
    fn followed_connections_and_numbering_after_a_restart() {
        let mut versions = Versions::default();
        let dev: Arc<str> = Arc::from("dev1");
        versions.continue_after("dev1", 4, Instant::now());
        let principal = Some(Arc::from("cert-1"));
        assert_eq!(versions.connected(&dev, &principal, 1), 5);
        assert_eq!(versions.followed(1), None);
        let record = versions.follow(1).expect("a live connection");
        assert_eq!(
            (record.client_id.as_str(), record.principal.as_str()),
            ("dev1", "cert-1")
        );
        assert_eq!(record.version_number, 5);
        let session = record.session_identifier;
        assert_eq!(versions.followed(1).as_deref(), Some(session.as_str()));
        // The disconnected event carries the recorded session identifier.
        assert_eq!(versions.of(1), (5, session));
        versions.disconnected(1, Instant::now());
        assert_eq!(versions.followed(1), None);
        assert!(versions.follow(2).is_none(), "no such connection");
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

    #[test]
    fn filters_that_can_match_a_disconnected_event() {
        for filter in [
            "$aws/events/presence/disconnected/sensor-1",
            "$aws/events/presence/disconnected/+",
            "$aws/events/presence/+/+",
            "$aws/events/presence/#",
            "$aws/events/#",
            "$aws/+/presence/disconnected/x/#",
            "$share/watchers/$aws/events/presence/disconnected/+",
        ] {
            assert!(may_match_a_disconnect(filter), "{filter}");
        }
        for filter in [
            "$aws/events/presence/connected/+",
            "$aws/events/subscriptions/#",
            "$aws/things/sensor-1/shadow/update",
            "$aws/events/presence/disconnected/+/more",
            "$aws/events/presence/disconnected",
            "devices/#",
            "$share/watchers",
        ] {
            assert!(!may_match_a_disconnect(filter), "{filter}");
        }
    }
}
