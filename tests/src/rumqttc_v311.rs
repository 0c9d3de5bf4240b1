//! MQTT 3.1.1 through rumqttc: the everyday device flows.

use std::time::{Duration, Instant};

use anyhow::bail;
use rumqttc::{
    AsyncClient, ConnAck, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Packet,
    Publish, QoS, SubscribeReasonCode,
};
use thingd_tests::{DeviceFiles, TestServer};
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::raw_protocol::{QUIET, WAIT};

type TestResult = anyhow::Result<()>;

/// A rumqttc 3.1.1 client whose event loop runs on its own task.
pub(crate) struct V3 {
    pub(crate) client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for V3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Options for `id` on the test server's MQTT port, over TLS as `device`.
pub(crate) fn options(server: &TestServer, device: &DeviceFiles, id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", server.mqtts().port());
    options.set_transport(device.rumqttc_transport());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

impl V3 {
    /// Starts the event loop; returns once the CONNACK arrived.
    pub(crate) async fn connect(options: MqttOptions) -> anyhow::Result<(V3, ConnAck)> {
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let stop = event.is_err();
                if tx.send(event).is_err() || stop {
                    break;
                }
            }
        });
        let mut me = V3 {
            client,
            events,
            task,
        };
        loop {
            if let Event::Incoming(Packet::ConnAck(ack)) = me.next_event().await? {
                return Ok((me, ack));
            }
        }
    }

    /// Connects with plain options.
    pub(crate) async fn simple(
        server: &TestServer,
        device: &DeviceFiles,
        id: &str,
    ) -> anyhow::Result<V3> {
        Ok(V3::connect(options(server, device, id)).await?.0)
    }

    async fn next_event(&mut self) -> anyhow::Result<Event> {
        match timeout(WAIT, self.events.recv()).await {
            Err(_) => bail!("no event within {WAIT:?}"),
            Ok(None) => bail!("the event loop ended"),
            Ok(Some(Err(error))) => bail!("connection error: {error:?}"),
            Ok(Some(Ok(event))) => Ok(event),
        }
    }

    /// The next incoming PUBLISH.
    pub(crate) async fn next_publish(&mut self) -> anyhow::Result<Publish> {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = self.next_event().await? {
                return Ok(p);
            }
        }
    }

    /// Subscribes to one filter and checks the granted QoS.
    pub(crate) async fn sub(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        self.client.subscribe(filter, qos).await?;
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) = self.next_event().await? {
                assert_eq!(
                    ack.return_codes,
                    vec![SubscribeReasonCode::Success(qos)],
                    "SUBACK for {filter}"
                );
                return Ok(());
            }
        }
    }

    /// Waits for a packet matching `want`.
    async fn wait_for(&mut self, want: impl Fn(&Packet) -> bool) -> anyhow::Result<Packet> {
        loop {
            if let Event::Incoming(packet) = self.next_event().await?
                && want(&packet)
            {
                return Ok(packet);
            }
        }
    }

    /// Asserts no PUBLISH arrives for a little while.
    pub(crate) async fn expect_no_publish(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + QUIET;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.events.recv()).await {
                Err(_) => return Ok(()),
                Ok(Some(Ok(Event::Incoming(Packet::Publish(p))))) => {
                    bail!("unexpected message {p:?}")
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(error))) => bail!("connection error: {error:?}"),
                Ok(None) => bail!("the event loop ended"),
            }
        }
    }

    /// Waits for the connection to fail.
    pub(crate) async fn expect_error(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<ConnectionError> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.events.recv()).await {
                Err(_) => bail!("still connected after {within:?}"),
                Ok(Some(Err(error))) => return Ok(error),
                Ok(Some(Ok(_))) => {}
                Ok(None) => bail!("the event loop ended without an error"),
            }
        }
    }
}

async fn setup() -> anyhow::Result<(TestServer, DeviceFiles)> {
    let server = TestServer::start().await?;
    let device = crate::raw_protocol::ready_device(&server, "v311-device").await?;
    Ok((server, device))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_publish_and_subscribe_at_each_qos() -> TestResult {
    let (server, device) = setup().await?;
    let mut sub = V3::simple(&server, &device, "sub-311").await?;
    sub.sub("plant/+/temp", QoS::ExactlyOnce).await?;
    let mut publisher = V3::simple(&server, &device, "pub-311").await?;

    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let topic = format!("plant/{i}/temp");
        publisher
            .client
            .publish(topic.as_str(), qos, false, format!("{i}"))
            .await?;
        match qos {
            QoS::AtLeastOnce => {
                publisher
                    .wait_for(|p| matches!(p, Packet::PubAck(_)))
                    .await?;
            }
            QoS::ExactlyOnce => {
                publisher
                    .wait_for(|p| matches!(p, Packet::PubComp(_)))
                    .await?;
            }
            QoS::AtMostOnce => {}
        }
        let p = sub.next_publish().await?;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.qos, p.retain),
            (topic.as_str(), format!("{i}").as_bytes(), qos, false)
        );
    }
    sub.expect_no_publish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_wildcards_follow_mqtt() -> TestResult {
    let (server, device) = setup().await?;
    let mut hash = V3::simple(&server, &device, "hash").await?;
    hash.sub("home/#", QoS::AtMostOnce).await?;
    let mut plus = V3::simple(&server, &device, "plus").await?;
    plus.sub("home/+/light", QoS::AtMostOnce).await?;
    let mut everything = V3::simple(&server, &device, "everything").await?;
    everything.sub("#", QoS::AtMostOnce).await?;
    let publisher = V3::simple(&server, &device, "switch").await?;

    for topic in [
        "home",
        "home/kitchen/light",
        "home/kitchen/fan",
        "garden/light",
        "$SYS/x",
    ] {
        publisher
            .client
            .publish(topic, QoS::AtMostOnce, false, topic)
            .await?;
    }
    let mut got_hash = Vec::new();
    for _ in 0..3 {
        got_hash.push(hash.next_publish().await?.topic);
    }
    assert_eq!(
        got_hash,
        ["home", "home/kitchen/light", "home/kitchen/fan"],
        "`home/#` matches its parent too"
    );
    hash.expect_no_publish().await?;
    assert_eq!(plus.next_publish().await?.topic, "home/kitchen/light");
    plus.expect_no_publish().await?;
    let mut got_all = Vec::new();
    for _ in 0..4 {
        got_all.push(everything.next_publish().await?.topic);
    }
    assert!(
        !got_all.iter().any(|t| t.starts_with('$')),
        "`#` must not match `$` topics: {got_all:?}"
    );
    everything.expect_no_publish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_persistent_session_resumes() -> TestResult {
    let (server, device) = setup().await?;
    let persistent = |id: &str| {
        let mut o = options(&server, &device, id);
        o.set_clean_session(false);
        o
    };
    let (mut sub, ack) = V3::connect(persistent("sleeper")).await?;
    assert!(!ack.session_present);
    sub.sub("inbox/sleeper", QoS::AtLeastOnce).await?;
    sub.client.disconnect().await?;
    let _ = sub.expect_error(WAIT).await;
    drop(sub);

    let mut publisher = V3::simple(&server, &device, "mailman").await?;
    for i in 0..3 {
        publisher
            .client
            .publish(
                "inbox/sleeper",
                QoS::AtLeastOnce,
                false,
                format!("letter {i}"),
            )
            .await?;
        publisher
            .wait_for(|p| matches!(p, Packet::PubAck(_)))
            .await?;
    }

    let (mut sub, ack) = V3::connect(persistent("sleeper")).await?;
    assert!(
        ack.session_present,
        "session present after a clean_session=false reconnect"
    );
    for i in 0..3 {
        let p = sub.next_publish().await?;
        assert_eq!(&p.payload[..], format!("letter {i}").as_bytes());
        assert_eq!(p.qos, QoS::AtLeastOnce);
    }
    drop(sub);

    // A clean session throws the old one away.
    let (mut clean, ack) = V3::connect(options(&server, &device, "sleeper")).await?;
    assert!(!ack.session_present);
    publisher
        .client
        .publish("inbox/sleeper", QoS::AtLeastOnce, false, "nobody home")
        .await?;
    clean.expect_no_publish().await?;
    drop(clean);
    let (_again, ack) = V3::connect(persistent("sleeper")).await?;
    assert!(
        !ack.session_present,
        "the clean session must not have left a session behind"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_retained_and_deleted() -> TestResult {
    let (server, device) = setup().await?;
    let mut publisher = V3::simple(&server, &device, "ret-311").await?;
    publisher
        .client
        .publish("lamp/state", QoS::AtLeastOnce, true, "on")
        .await?;
    publisher
        .wait_for(|p| matches!(p, Packet::PubAck(_)))
        .await?;

    let mut sub = V3::simple(&server, &device, "ret-311-sub").await?;
    sub.sub("lamp/state", QoS::AtLeastOnce).await?;
    let p = sub.next_publish().await?;
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"on");

    publisher
        .client
        .publish("lamp/state", QoS::AtLeastOnce, true, Vec::<u8>::new())
        .await?;
    publisher
        .wait_for(|p| matches!(p, Packet::PubAck(_)))
        .await?;
    let p = sub.next_publish().await?;
    assert!(
        p.payload.is_empty(),
        "the delete is forwarded to current subscribers"
    );

    let mut late = V3::simple(&server, &device, "ret-311-late").await?;
    late.sub("lamp/state", QoS::AtLeastOnce).await?;
    late.expect_no_publish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_will_on_abrupt_disconnect_only() -> TestResult {
    let (server, device) = setup().await?;
    let mut watcher = V3::simple(&server, &device, "watcher-311").await?;
    watcher.sub("status/+", QoS::AtLeastOnce).await?;

    let mut opts = options(&server, &device, "fragile");
    opts.set_last_will(LastWill::new(
        "status/fragile",
        "lost",
        QoS::AtLeastOnce,
        false,
    ));
    let (fragile, _) = V3::connect(opts).await?;
    drop(fragile);
    let p = watcher.next_publish().await?;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.qos),
        ("status/fragile", &b"lost"[..], QoS::AtLeastOnce)
    );

    let mut opts = options(&server, &device, "careful");
    opts.set_last_will(LastWill::new(
        "status/careful",
        "lost",
        QoS::AtLeastOnce,
        false,
    ));
    let (mut careful, _) = V3::connect(opts).await?;
    careful.client.disconnect().await?;
    let _ = careful.expect_error(WAIT).await;
    watcher.expect_no_publish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_takeover_closes_the_old_connection() -> TestResult {
    let (server, device) = setup().await?;
    let mut first = V3::simple(&server, &device, "dup-311").await?;
    let mut second = V3::simple(&server, &device, "dup-311").await?;
    first.expect_error(WAIT).await?;
    second.sub("dup/t", QoS::AtMostOnce).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_unsubscribe_stops_delivery() -> TestResult {
    let (server, device) = setup().await?;
    let mut sub = V3::simple(&server, &device, "unsub").await?;
    sub.sub("news/#", QoS::AtLeastOnce).await?;
    let publisher = V3::simple(&server, &device, "news-pub").await?;
    publisher
        .client
        .publish("news/a", QoS::AtLeastOnce, false, "first")
        .await?;
    assert_eq!(&sub.next_publish().await?.payload[..], b"first");
    sub.client.unsubscribe("news/#").await?;
    sub.wait_for(|p| matches!(p, Packet::UnsubAck(_))).await?;
    publisher
        .client
        .publish("news/a", QoS::AtLeastOnce, false, "second")
        .await?;
    sub.expect_no_publish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_idle_client_with_short_keep_alive_stays_connected() -> TestResult {
    let server = TestServer::start_with(|c| c.limits.keep_alive_min_secs = 1).await?;
    let device = crate::raw_protocol::ready_device(&server, "pinger").await?;
    let mut opts = options(&server, &device, "pinger");
    opts.set_keep_alive(Duration::from_secs(1));
    let (mut client, _) = V3::connect(opts).await?;
    // rumqttc pings every second; the server must answer and keep us for 3 s.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        match timeout(Duration::from_millis(500), client.events.recv()).await {
            Ok(Some(Err(error))) => bail!("dropped after {:?}: {error:?}", start.elapsed()),
            Ok(None) => bail!("event loop ended"),
            _ => {}
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_connect_refused_for_a_bad_client_id() -> TestResult {
    let (server, device) = setup().await?;
    let (client, mut eventloop) = AsyncClient::new(options(&server, &device, &"x".repeat(129)), 8);
    let result = timeout(WAIT, eventloop.poll()).await?;
    drop(client);
    match result {
        Err(ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::BadClientId)
        }
        other => bail!("expected CONNACK rc 2, got {other:?}"),
    }
    Ok(())
}
