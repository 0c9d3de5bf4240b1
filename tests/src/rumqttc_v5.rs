//! MQTT 5.0 through rumqttc's v5 client: what a device using a stock library sees.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, DisconnectReasonCode, Filter, LastWill, LastWillProperties, Packet,
    PubAck, PubAckReason, Publish, PublishProperties, RetainForwardRule, SubAck,
    SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use thingd_tests::{DeviceFiles, TestServer};
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::raw_protocol::{QUIET, WAIT};

type TestResult = anyhow::Result<()>;

/// A rumqttc v5 client whose event loop runs on its own task; its events arrive on a channel.
pub(crate) struct V5 {
    pub(crate) client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for V5 {
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

impl V5 {
    /// Starts the event loop; returns once the CONNACK arrived (or fails with the error).
    pub(crate) async fn connect(options: MqttOptions) -> anyhow::Result<(V5, ConnAck)> {
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
        let mut me = V5 {
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
    ) -> anyhow::Result<V5> {
        Ok(V5::connect(options(server, device, id)).await?.0)
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

    /// Subscribes and waits for the SUBACK.
    pub(crate) async fn subscribe(
        &mut self,
        filter: Filter,
        props: Option<SubscribeProperties>,
    ) -> anyhow::Result<SubAck> {
        match props {
            Some(props) => {
                self.client
                    .subscribe_many_with_properties([filter], props)
                    .await?
            }
            None => self.client.subscribe_many([filter]).await?,
        }
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) = self.next_event().await? {
                return Ok(ack);
            }
        }
    }

    /// Subscribes to one filter at `qos` and checks it was granted.
    pub(crate) async fn sub(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let ack = self.subscribe(Filter::new(filter, qos), None).await?;
        assert_eq!(
            ack.return_codes,
            vec![SubscribeReasonCode::Success(qos)],
            "SUBACK for {filter}"
        );
        Ok(())
    }

    /// Waits for the PUBACK of a QoS 1 publish.
    pub(crate) async fn expect_puback(&mut self) -> anyhow::Result<PubAck> {
        loop {
            if let Event::Incoming(Packet::PubAck(ack)) = self.next_event().await? {
                return Ok(ack);
            }
        }
    }

    /// Waits for the PUBCOMP that ends a QoS 2 publish.
    pub(crate) async fn expect_pubcomp(&mut self) -> anyhow::Result<()> {
        loop {
            if let Event::Incoming(Packet::PubComp(_)) = self.next_event().await? {
                return Ok(());
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

    /// Waits for the connection to fail and returns the error.
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

/// The reason code of the server's DISCONNECT as rumqttc reports it. rumqttc 0.25 cannot
/// parse the short DISCONNECT form (remaining length 1, no property length) and reports
/// `ConnectionAborted` instead, so thingd writes the property length for rumqttc's sake.
fn server_disconnect_reason(error: ConnectionError) -> anyhow::Result<DisconnectReasonCode> {
    match error {
        ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. }) => {
            Ok(reason_code)
        }
        other => bail!("expected a server DISCONNECT with a reason code, got {other:?}"),
    }
}

async fn setup() -> anyhow::Result<(TestServer, DeviceFiles)> {
    let server = TestServer::start().await?;
    let device = crate::raw_protocol::ready_device(&server, "v5-device").await?;
    Ok((server, device))
}

fn text(b: &Bytes) -> &str {
    std::str::from_utf8(b).unwrap_or("<binary>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_and_subscribe_at_each_qos() -> TestResult {
    let (server, device) = setup().await?;
    let mut sub = V5::simple(&server, &device, "v5-sub").await?;
    sub.sub("v5/qos/+", QoS::ExactlyOnce).await?;
    let mut publisher = V5::simple(&server, &device, "v5-pub").await?;

    publisher
        .client
        .publish("v5/qos/0", QoS::AtMostOnce, false, "zero")
        .await?;
    let p = sub.next_publish().await?;
    assert_eq!(
        (text(&p.topic), text(&p.payload), p.qos, p.retain),
        ("v5/qos/0", "zero", QoS::AtMostOnce, false)
    );

    publisher
        .client
        .publish("v5/qos/1", QoS::AtLeastOnce, false, "one")
        .await?;
    let ack = publisher.expect_puback().await?;
    assert_eq!(ack.reason, PubAckReason::Success);
    let p = sub.next_publish().await?;
    assert_eq!(
        (text(&p.topic), text(&p.payload), p.qos),
        ("v5/qos/1", "one", QoS::AtLeastOnce)
    );

    publisher
        .client
        .publish("v5/qos/2", QoS::ExactlyOnce, false, "two")
        .await?;
    publisher.expect_pubcomp().await?;
    let p = sub.next_publish().await?;
    assert_eq!(
        (text(&p.topic), text(&p.payload), p.qos),
        ("v5/qos/2", "two", QoS::ExactlyOnce)
    );
    sub.expect_no_publish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_connack_reports_server_capabilities() -> TestResult {
    let (server, device) = setup().await?;
    let mut opts = options(&server, &device, "");
    opts.set_session_expiry_interval(Some(10_000));
    let (_c, ack) = V5::connect(opts).await?;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let props = ack.properties.context("CONNACK without properties")?;
    let assigned = props
        .assigned_client_identifier
        .context("no Assigned Client Identifier for an empty id")?;
    assert!(!assigned.is_empty());
    assert_eq!(
        props.session_expiry_interval,
        Some(3600),
        "the granted session expiry"
    );
    assert_eq!(props.topic_alias_max, Some(8));
    assert_eq!(props.receive_max, Some(100));
    assert_ne!(props.retain_available, Some(0), "retain is available");
    assert_ne!(
        props.shared_subscription_available,
        Some(0),
        "shared subscriptions are available"
    );
    assert_ne!(
        props.subscription_identifiers_available,
        Some(0),
        "subscription identifiers are available"
    );
    assert_ne!(props.wildcard_subscription_available, Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_to_v5_and_back() -> TestResult {
    let (server, device) = setup().await?;
    let mut v5 = V5::simple(&server, &device, "x-v5").await?;
    v5.sub("x/to-v5", QoS::AtLeastOnce).await?;
    let mut v3 = crate::rumqttc_v311::V3::simple(&server, &device, "x-v3").await?;
    v3.sub("x/to-v3", rumqttc::QoS::AtLeastOnce).await?;

    v3.client
        .publish("x/to-v5", rumqttc::QoS::AtLeastOnce, false, "from 3.1.1")
        .await?;
    let p = v5.next_publish().await?;
    assert_eq!(
        (text(&p.topic), text(&p.payload), p.qos),
        ("x/to-v5", "from 3.1.1", QoS::AtLeastOnce)
    );

    let props = PublishProperties {
        user_properties: vec![("dropped".into(), "for 3.1.1".into())],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    v5.client
        .publish_with_properties("x/to-v3", QoS::AtLeastOnce, false, "from 5", props)
        .await?;
    let p = v3.next_publish().await?;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.qos),
        ("x/to-v3", &b"from 5"[..], rumqttc::QoS::AtLeastOnce)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_takeover_disconnects_the_old_client_with_0x8e() -> TestResult {
    let (server, device) = setup().await?;
    let mut first = V5::simple(&server, &device, "twin").await?;
    let mut second = V5::simple(&server, &device, "twin").await?;
    let reason = server_disconnect_reason(first.expect_error(WAIT).await?)?;
    assert_eq!(reason, DisconnectReasonCode::SessionTakenOver);
    // The newcomer works.
    second.sub("twin/t", QoS::AtMostOnce).await?;
    second
        .client
        .publish("twin/t", QoS::AtMostOnce, false, "still here")
        .await?;
    assert_eq!(text(&second.next_publish().await?.payload), "still here");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_persistent_session_gets_queued_messages() -> TestResult {
    let (server, device) = setup().await?;
    let persistent = |id: &str| {
        let mut o = options(&server, &device, id);
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
        o
    };
    let (mut sub, ack) = V5::connect(persistent("keeper")).await?;
    assert!(!ack.session_present);
    sub.sub("keep/+", QoS::AtLeastOnce).await?;
    sub.client.disconnect().await?;
    let _ = sub.expect_error(WAIT).await;
    drop(sub);

    let mut publisher = V5::simple(&server, &device, "keeper-pub").await?;
    for i in 0..3 {
        publisher
            .client
            .publish("keep/t", QoS::AtLeastOnce, false, format!("m{i}"))
            .await?;
        publisher.expect_puback().await?;
    }
    // QoS 0 messages are not queued for offline sessions... or may be; only QoS 1 is promised.
    let (mut sub, ack) = V5::connect(persistent("keeper")).await?;
    assert!(
        ack.session_present,
        "the session must survive the disconnect"
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = sub.next_publish().await?;
        assert_eq!(p.qos, QoS::AtLeastOnce);
        got.push(text(&p.payload).to_owned());
    }
    assert_eq!(got, ["m0", "m1", "m2"], "queued messages in order");
    // The subscription is still there.
    publisher
        .client
        .publish("keep/t", QoS::AtLeastOnce, false, "live")
        .await?;
    assert_eq!(text(&sub.next_publish().await?.payload), "live");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_is_published_when_the_connection_drops() -> TestResult {
    let (server, device) = setup().await?;
    let mut watcher = V5::simple(&server, &device, "will-watcher").await?;
    watcher.sub("wills/#", QoS::AtLeastOnce).await?;

    let will_props = LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: Some("text/plain".into()),
        response_topic: None,
        correlation_data: None,
        user_properties: vec![("reason".into(), "crash".into())],
    };
    let mut opts = options(&server, &device, "mortal");
    opts.set_last_will(LastWill::new(
        "wills/mortal",
        "offline",
        QoS::AtLeastOnce,
        true,
        Some(will_props),
    ));
    let (mortal, _) = V5::connect(opts).await?;
    drop(mortal); // aborts the event loop: the socket closes with no DISCONNECT.

    let p = watcher.next_publish().await?;
    assert_eq!(
        (text(&p.topic), text(&p.payload), p.qos),
        ("wills/mortal", "offline", QoS::AtLeastOnce)
    );
    let props = p.properties.context("will properties dropped")?;
    assert_eq!(
        props.user_properties,
        vec![("reason".to_owned(), "crash".to_owned())]
    );
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));

    // The will was retained.
    let mut late = V5::simple(&server, &device, "will-late").await?;
    late.sub("wills/mortal", QoS::AtLeastOnce).await?;
    let p = late.next_publish().await?;
    assert!(p.retain);
    assert_eq!(text(&p.payload), "offline");

    // A client that says DISCONNECT leaves no will.
    let mut opts = options(&server, &device, "polite");
    opts.set_last_will(LastWill::new(
        "wills/polite",
        "offline",
        QoS::AtLeastOnce,
        false,
        None,
    ));
    let (polite, _) = V5::connect(opts).await?;
    polite.client.disconnect().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(polite);
    watcher.expect_no_publish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_with_correlation_data_and_user_properties() -> TestResult {
    let (server, device) = setup().await?;
    let mut responder = V5::simple(&server, &device, "responder").await?;
    responder.sub("svc/request", QoS::AtLeastOnce).await?;
    let mut requester = V5::simple(&server, &device, "requester").await?;
    requester
        .sub("svc/reply/requester", QoS::AtLeastOnce)
        .await?;

    let props = PublishProperties {
        response_topic: Some("svc/reply/requester".into()),
        correlation_data: Some(Bytes::from_static(b"\x00corr-17\xff")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(300),
        ..Default::default()
    };
    requester
        .client
        .publish_with_properties("svc/request", QoS::AtLeastOnce, false, "ping?", props)
        .await?;

    let request = responder.next_publish().await?;
    let rp = request.properties.context("properties dropped")?;
    assert_eq!(
        rp.user_properties,
        vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into())
        ]
    );
    assert_eq!(rp.payload_format_indicator, Some(1));
    let expiry = rp.message_expiry_interval.context("expiry dropped")?;
    assert!((298..=300).contains(&expiry), "{expiry}");
    let reply_to = rp.response_topic.context("response topic dropped")?;
    let correlation = rp.correlation_data.context("correlation data dropped")?;

    let reply = PublishProperties {
        correlation_data: Some(correlation),
        ..Default::default()
    };
    responder
        .client
        .publish_with_properties(reply_to, QoS::AtLeastOnce, false, "pong!", reply)
        .await?;
    let answer = requester.next_publish().await?;
    assert_eq!(text(&answer.payload), "pong!");
    assert_eq!(
        answer.properties.and_then(|p| p.correlation_data),
        Some(Bytes::from_static(b"\x00corr-17\xff"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscription_options_and_identifiers() -> TestResult {
    let (server, device) = setup().await?;
    let mut me = V5::simple(&server, &device, "opts-me").await?;
    let mut no_local = Filter::new("opts/echo", QoS::AtMostOnce);
    no_local.nolocal = true;
    me.subscribe(no_local, None).await?;
    let mut identified = Filter::new("opts/id/+", QoS::AtLeastOnce);
    identified.retain_forward_rule = RetainForwardRule::Never;
    me.subscribe(
        identified,
        Some(SubscribeProperties {
            id: Some(42),
            user_properties: vec![],
        }),
    )
    .await?;

    me.client
        .publish("opts/echo", QoS::AtMostOnce, false, "own")
        .await?;
    me.expect_no_publish().await?;

    let other = V5::simple(&server, &device, "opts-other").await?;
    other
        .client
        .publish("opts/echo", QoS::AtMostOnce, false, "foreign")
        .await?;
    assert_eq!(text(&me.next_publish().await?.payload), "foreign");

    other
        .client
        .publish("opts/id/x", QoS::AtLeastOnce, true, "tagged")
        .await?;
    let p = me.next_publish().await?;
    assert_eq!(text(&p.payload), "tagged");
    assert_eq!(
        p.properties
            .map(|p| p.subscription_identifiers)
            .unwrap_or_default(),
        vec![42]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_outgoing_topic_alias() -> TestResult {
    let (server, device) = setup().await?;
    let mut sub = V5::simple(&server, &device, "alias-sub5").await?;
    sub.sub("al/#", QoS::AtLeastOnce).await?;
    let mut publisher = V5::simple(&server, &device, "alias-pub5").await?;
    let with_alias = || PublishProperties {
        topic_alias: Some(1),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("al/one/two", QoS::AtLeastOnce, false, "set", with_alias())
        .await?;
    publisher.expect_puback().await?;
    publisher
        .client
        .publish_with_properties("", QoS::AtLeastOnce, false, "use", with_alias())
        .await?;
    publisher.expect_puback().await?;
    for expected in ["set", "use"] {
        let p = sub.next_publish().await?;
        assert_eq!((text(&p.topic), text(&p.payload)), ("al/one/two", expected));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_shared_subscription_group() -> TestResult {
    let (server, device) = setup().await?;
    let mut a = V5::simple(&server, &device, "grp-a").await?;
    let mut b = V5::simple(&server, &device, "grp-b").await?;
    a.sub("$share/workers/jobs/+", QoS::AtLeastOnce).await?;
    b.sub("$share/workers/jobs/+", QoS::AtLeastOnce).await?;
    let mut other_group = V5::simple(&server, &device, "grp-c").await?;
    other_group
        .sub("$share/audit/jobs/#", QoS::AtLeastOnce)
        .await?;

    let publisher = V5::simple(&server, &device, "grp-pub").await?;
    let n = 20;
    for i in 0..n {
        publisher
            .client
            .publish("jobs/x", QoS::AtLeastOnce, false, format!("{i}"))
            .await?;
    }
    // The other group gets its own copy of everything.
    for _ in 0..n {
        other_group.next_publish().await?;
    }
    let (mut count_a, mut count_b) = (0, 0);
    let deadline = Instant::now() + WAIT;
    while count_a + count_b < n && Instant::now() < deadline {
        tokio::select! {
            p = a.next_publish() => { p?; count_a += 1; }
            p = b.next_publish() => { p?; count_b += 1; }
        }
    }
    assert_eq!(count_a + count_b, n);
    assert!(
        count_a > 0 && count_b > 0,
        "both members should get work: {count_a}/{count_b}"
    );
    a.expect_no_publish().await?;
    b.expect_no_publish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_server_shutdown_sends_0x8b() -> TestResult {
    let (server, device) = setup().await?;
    let mut client = V5::simple(&server, &device, "bystander").await?;
    let stopping = tokio::spawn(async move { server.stop().await });
    let reason = server_disconnect_reason(client.expect_error(WAIT).await?)?;
    assert_eq!(reason, DisconnectReasonCode::ServerShuttingDown);
    timeout(Duration::from_secs(10), stopping)
        .await
        .context("stop hung")??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retained_message_lifecycle() -> TestResult {
    let (server, device) = setup().await?;
    let mut publisher = V5::simple(&server, &device, "ret5-pub").await?;
    publisher
        .client
        .publish("ret5/state", QoS::AtLeastOnce, true, "on")
        .await?;
    publisher.expect_puback().await?;

    let mut exact = V5::simple(&server, &device, "ret5-exact").await?;
    exact.sub("ret5/state", QoS::AtLeastOnce).await?;
    let p = exact.next_publish().await?;
    assert!(
        p.retain,
        "a retained message delivered on subscribe has RETAIN=1"
    );
    assert_eq!(text(&p.payload), "on");

    // Live traffic afterwards has RETAIN=0 (no Retain As Published).
    publisher
        .client
        .publish("ret5/state", QoS::AtLeastOnce, true, "off")
        .await?;
    let p = exact.next_publish().await?;
    assert!(!p.retain);
    assert_eq!(text(&p.payload), "off");

    // Delete it.
    publisher
        .client
        .publish("ret5/state", QoS::AtLeastOnce, true, Vec::<u8>::new())
        .await?;
    publisher.expect_puback().await?;
    let mut after = V5::simple(&server, &device, "ret5-after").await?;
    after.sub("ret5/state", QoS::AtLeastOnce).await?;
    after.expect_no_publish().await?;
    Ok(())
}
