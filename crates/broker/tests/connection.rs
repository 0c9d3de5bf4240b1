//! Connection-level tests: `serve_connection` over duplex pipes with a real store.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use thingd_mqtt::{
    ByteStr, Disconnect, Packet, Properties, PubRespKind, Publish, QoS, ReasonCode, RetainHandling,
    SubscriptionOptions,
};

#[tokio::test]
async fn connect_both_versions() {
    let h = Harness::new();
    let (_c3, ack3) = h.connect(V3, "dev-3").await;
    assert_eq!(ack3.reason, ReasonCode::Success);
    assert!(!ack3.session_present);
    let (_c5, ack5) = h.connect(V5, "dev-5").await;
    assert_eq!(ack5.reason, ReasonCode::Success);
    let p = &ack5.properties;
    assert_eq!(p.receive_maximum, Some(100));
    assert_eq!(p.topic_alias_maximum, Some(8));
    assert_eq!(p.subscription_identifier_available, Some(1));
    assert_eq!(p.shared_subscription_available, Some(1));
    assert_eq!(p.maximum_qos, None, "QoS 2 supported: no Maximum QoS");
    // keep_alive 60 is inside 30..=1200: no Server Keep Alive.
    assert_eq!(p.server_keep_alive, None);
}

#[tokio::test]
async fn keep_alive_is_clamped_in_connack() {
    let h = Harness::new();
    let mut c = h.stream(None);
    let mut p = connect_packet(V5, "ka", true);
    p.keep_alive = 5;
    let ack = c.connect(p).await;
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    let mut c = h.stream(None);
    let mut p = connect_packet(V5, "ka0", true);
    p.keep_alive = 0;
    let ack = c.connect(p).await;
    assert_eq!(ack.properties.server_keep_alive, Some(1200));
}

#[tokio::test]
async fn pubsub_all_qos_across_versions() {
    let h = Harness::new();
    for (pv, sv) in [(V3, V5), (V5, V3), (V3, V3), (V5, V5)] {
        let mut sub = h.client(sv, "sub").await;
        let mut publ = h.client(pv, "pub").await;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let a = sub.subscribe("t/+", qos).await;
            assert_eq!(
                a.reasons,
                vec![match qos {
                    QoS::AtMostOnce => ReasonCode::Success,
                    QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                    QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                }]
            );
            for pq in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                publ.publish("t/x", b"hello", pq, false).await;
                let got = sub.receive().await;
                assert_eq!(&got.topic[..], "t/x");
                assert_eq!(&got.payload[..], b"hello");
                assert_eq!(got.qos, pq.min(qos), "pub {pq:?} sub {qos:?}");
                assert!(!got.retain);
            }
        }
        sub.disconnect().await;
        publ.disconnect().await;
    }
}

#[tokio::test]
async fn v5_properties_are_forwarded_and_dropped_for_v311() {
    let h = Harness::new();
    let mut s5 = h.client(V5, "s5").await;
    let mut s3 = h.client(V3, "s3").await;
    s5.subscribe("p", QoS::AtMostOnce).await;
    s3.subscribe("p", QoS::AtMostOnce).await;
    let mut publ = h.client(V5, "pub").await;
    let props = Properties {
        payload_format_indicator: Some(1),
        content_type: Some(ByteStr::from("text/plain")),
        response_topic: Some(ByteStr::from("reply/here")),
        correlation_data: Some(Bytes::from_static(b"corr")),
        user_properties: vec![
            (ByteStr::from("a"), ByteStr::from("1")),
            (ByteStr::from("b"), ByteStr::from("2")),
            (ByteStr::from("a"), ByteStr::from("3")),
        ],
        ..Properties::default()
    };
    publ.send(Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: ByteStr::from("p"),
        packet_id: None,
        properties: props.clone(),
        payload: Bytes::from_static(b"x"),
    }))
    .await;
    let got = s5.expect_publish().await;
    assert_eq!(got.properties.payload_format_indicator, Some(1));
    assert_eq!(got.properties.content_type, props.content_type);
    assert_eq!(got.properties.response_topic, props.response_topic);
    assert_eq!(got.properties.correlation_data, props.correlation_data);
    assert_eq!(got.properties.user_properties, props.user_properties);
    let got3 = s3.expect_publish().await;
    assert_eq!(&got3.payload[..], b"x");
}

#[tokio::test]
async fn retained_set_replace_delete_and_handling() {
    let h = Harness::new();
    let mut p = h.client(V5, "pub").await;
    p.publish("r/a", b"one", QoS::AtLeastOnce, true).await;
    p.publish("r/a", b"two", QoS::AtLeastOnce, true).await;
    p.publish("r/b", b"bee", QoS::AtMostOnce, true).await;

    let mut s = h.client(V5, "sub").await;
    s.subscribe("r/a", QoS::AtLeastOnce).await;
    let got = s.receive().await;
    assert!(got.retain);
    assert_eq!(&got.payload[..], b"two");
    s.expect_nothing().await;

    // Wildcard filters get retained messages too (MQTT semantics).
    s.subscribe("r/#", QoS::AtMostOnce).await;
    let mut payloads = vec![s.receive().await.payload, s.receive().await.payload];
    payloads.sort();
    assert_eq!(
        payloads,
        vec![Bytes::from_static(b"bee"), Bytes::from_static(b"two")]
    );

    // Live forwarding clears RETAIN (no Retain As Published).
    p.publish("r/a", b"three", QoS::AtMostOnce, true).await;
    let live = s.receive().await;
    assert!(!live.retain);

    // Retain Handling 1: only on a new subscription; 2: never.
    let opts = |rh| SubscriptionOptions {
        qos: QoS::AtMostOnce,
        retain_handling: rh,
        ..SubscriptionOptions::default()
    };
    let mut s2 = h.client(V5, "sub2").await;
    s2.subscribe_with(
        "r/a",
        opts(RetainHandling::SendIfNew),
        Properties::default(),
    )
    .await;
    assert_eq!(&s2.receive().await.payload[..], b"three");
    s2.subscribe_with(
        "r/a",
        opts(RetainHandling::SendIfNew),
        Properties::default(),
    )
    .await;
    s2.expect_nothing().await;
    s2.subscribe_with(
        "r/b",
        opts(RetainHandling::DoNotSend),
        Properties::default(),
    )
    .await;
    s2.expect_nothing().await;

    // Retain As Published keeps the flag on live messages.
    let mut s3 = h.client(V5, "sub3").await;
    s3.subscribe_with(
        "rap",
        SubscriptionOptions {
            retain_as_published: true,
            ..SubscriptionOptions::default()
        },
        Properties::default(),
    )
    .await;
    p.publish("rap", b"x", QoS::AtMostOnce, true).await;
    assert!(s3.receive().await.retain);

    // Empty payload deletes, and is still forwarded.
    p.publish("r/a", b"", QoS::AtLeastOnce, true).await;
    let del = s.receive().await;
    assert!(del.payload.is_empty());
    let mut s4 = h.client(V5, "sub4").await;
    s4.subscribe("r/a", QoS::AtMostOnce).await;
    s4.expect_nothing().await;

    // Shared subscriptions never get retained messages.
    s4.subscribe("$share/g/r/b", QoS::AtMostOnce).await;
    s4.expect_nothing().await;
}

#[tokio::test]
async fn will_on_socket_drop_not_on_disconnect() {
    let h = Harness::new();
    let mut watcher = h.client(V3, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    let mut c = h.stream(None);
    let mut p = connect_packet(V5, "dying", true);
    p.will = Some(will("wills/dying", b"gone", QoS::AtLeastOnce, false));
    c.connect(p).await;
    drop(c);
    let got = watcher.receive().await;
    assert_eq!(&got.topic[..], "wills/dying");
    assert_eq!(&got.payload[..], b"gone");

    let mut c = h.stream(None);
    let mut p = connect_packet(V3, "polite", true);
    p.will = Some(will("wills/polite", b"gone", QoS::AtMostOnce, false));
    c.connect(p).await;
    c.disconnect().await;
    watcher.expect_nothing().await;

    // v5 DISCONNECT 0x04 publishes the will.
    let mut c = h.stream(None);
    let mut p = connect_packet(V5, "withwill", true);
    p.will = Some(will("wills/withwill", b"bye", QoS::AtMostOnce, true));
    c.connect(p).await;
    c.send(Packet::Disconnect(Disconnect {
        reason: ReasonCode::DisconnectWithWill,
        properties: Properties::default(),
    }))
    .await;
    assert_eq!(&watcher.receive().await.topic[..], "wills/withwill");
    // Will Retain honoured.
    let mut late = h.client(V5, "late").await;
    late.subscribe("wills/withwill", QoS::AtMostOnce).await;
    assert!(late.receive().await.retain);
}

#[tokio::test]
async fn will_delay_and_cancellation() {
    let h = Harness::new();
    let mut watcher = h.client(V5, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;

    let with_delay = |id: &str| {
        let mut p = connect_packet(V5, id, false);
        p.properties.session_expiry_interval = Some(600);
        let mut w = will(&format!("wills/{id}"), b"late", QoS::AtMostOnce, false);
        w.properties.will_delay_interval = Some(5);
        p.will = Some(w);
        p
    };
    // Fires after the delay.
    let mut c = h.stream(None);
    c.connect(with_delay("d1")).await;
    drop(c);
    watcher.expect_nothing().await;
    skip(Duration::from_secs(6)).await;
    assert_eq!(&watcher.receive().await.topic[..], "wills/d1");

    // Cancelled by reconnecting to the session before the delay.
    let mut c = h.stream(None);
    c.connect(with_delay("d2")).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c2 = h.stream(None);
    let ack = c2.connect(with_delay("d2")).await;
    assert!(ack.session_present);
    skip(Duration::from_secs(6)).await;
    watcher.expect_nothing().await;
}

#[tokio::test]
async fn takeover_closes_old_connection() {
    let h = Harness::new();
    let mut watcher = h.client(V5, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;
    let mut old = h.stream(None);
    let mut p = connect_packet(V5, "same", true);
    p.will = Some(will("wills/same", b"x", QoS::AtMostOnce, false));
    old.connect(p).await;
    let (_new, ack) = h.connect(V5, "same").await;
    assert_eq!(ack.reason, ReasonCode::Success);
    old.expect_disconnect(ReasonCode::SessionTakenOver).await;
    // Clean start: the old session ended, so its will is published.
    assert_eq!(&watcher.receive().await.topic[..], "wills/same");

    // 3.1.1: the old connection is just closed.
    let (mut old3, _) = h.connect(V3, "same3").await;
    let (_new3, _) = h.connect(V3, "same3").await;
    assert!(old3.expect_closed().await.is_empty());
}

#[tokio::test]
async fn persistent_session_queue_and_redelivery() {
    let h = Harness::new();
    let (mut s, ack) = h.persistent(V3, "persist").await;
    assert!(!ack.session_present);
    s.subscribe("q/#", QoS::AtLeastOnce).await;
    let mut p = h.client(V5, "pub").await;
    // Delivered but not acknowledged: must be redelivered with DUP.
    p.publish("q/1", b"one", QoS::AtLeastOnce, false).await;
    let first = s.expect_publish().await;
    assert!(!first.dup);
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Offline: QoS 1 queued, QoS 0 not.
    p.publish("q/2", b"two", QoS::AtLeastOnce, false).await;
    p.publish("q/3", b"three", QoS::AtMostOnce, false).await;
    assert_eq!(h.store.messages("persist").expect("messages").len(), 2);

    let (mut s, ack) = h.persistent(V3, "persist").await;
    assert!(ack.session_present);
    let again = s.receive().await;
    assert!(again.dup);
    assert_eq!(&again.payload[..], b"one");
    let queued = s.receive().await;
    assert_eq!(&queued.payload[..], b"two");
    s.expect_nothing().await;
    // Acknowledged messages leave the store.
    s.ping().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.store.messages("persist").expect("messages").is_empty());

    // A version mismatch does not resume the session.
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_s5, ack) = h.persistent(V5, "persist").await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn queue_bound_drops_oldest() {
    let config = thingd_broker::BrokerConfig {
        max_queued_messages: 3,
        ..thingd_broker::BrokerConfig::default()
    };
    let h = Harness::with_config(config);
    let (mut s, _) = h.persistent(V5, "bounded").await;
    s.subscribe("b", QoS::AtLeastOnce).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut p = h.client(V5, "pub").await;
    for i in 0..6u8 {
        p.publish("b", &[b'0' + i], QoS::AtLeastOnce, false).await;
    }
    let (mut s, ack) = h.persistent(V5, "bounded").await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(s.receive().await.payload[0]);
    }
    assert_eq!(got, b"345");
    s.expect_nothing().await;
}

#[tokio::test]
async fn keep_alive_timeout() {
    let h = Harness::new();
    let mut c = h.stream(None);
    let mut p = connect_packet(V5, "sleepy", true);
    p.keep_alive = 30;
    c.connect(p).await;
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(40)).await;
    c.ping().await; // resets the timer
    tokio::time::advance(Duration::from_secs(44)).await;
    c.ping().await;
    tokio::time::advance(Duration::from_secs(46)).await;
    c.expect_disconnect(ReasonCode::KeepAliveTimeout).await;
}

#[tokio::test]
async fn shared_subscription_distribution() {
    let h = Harness::new();
    let mut a = h.client(V5, "a").await;
    let mut b = h.client(V3, "b").await;
    a.subscribe("$share/g/s/+", QoS::AtLeastOnce).await;
    b.subscribe("$share/g/s/+", QoS::AtMostOnce).await;
    let mut p = h.client(V5, "pub").await;
    for _ in 0..10 {
        p.publish("s/x", b"m", QoS::AtLeastOnce, false).await;
    }
    let mut na = 0;
    let mut nb = 0;
    while let Ok(Some(Packet::Publish(m))) = a.try_recv(Duration::from_millis(200)).await {
        assert_eq!(m.qos, QoS::AtLeastOnce);
        a.send(ack(PubRespKind::PubAck, m.packet_id.unwrap_or(0)))
            .await;
        na += 1;
    }
    while let Ok(Some(Packet::Publish(m))) = b.try_recv(Duration::from_millis(200)).await {
        assert_eq!(m.qos, QoS::AtMostOnce);
        nb += 1;
    }
    assert_eq!(na + nb, 10);
    assert!(na > 0 && nb > 0, "a={na} b={nb}");
}

/// Two share groups on one topic, two members each: with one publisher every member gets
/// every other message of its group (round robin per group, whatever the other group does).
#[tokio::test]
async fn two_share_groups_on_one_topic_each_take_turns() {
    let h = Harness::new();
    let mut members = Vec::new();
    for (name, group) in [("g1a", "g1"), ("g1b", "g1"), ("g2a", "g2"), ("g2b", "g2")] {
        let mut c = h.client(V3, name).await;
        c.subscribe(&format!("$share/{group}/w/+"), QoS::AtMostOnce)
            .await;
        members.push(c);
    }
    let mut p = h.client(V5, "pub").await;
    // Both in one read and one at a time.
    let mut bytes = BytesMut::new();
    for i in 0..10u8 {
        let packet = publish("w/x", &[i], QoS::AtMostOnce, false, None);
        thingd_mqtt::encode(&packet, V5, &mut bytes).unwrap();
    }
    p.send_raw(&bytes).await;
    for i in 10..20u8 {
        p.publish("w/x", &[i], QoS::AtMostOnce, false).await;
    }
    let mut counts = Vec::new();
    for m in &mut members {
        let mut n = 0;
        while let Ok(Some(Packet::Publish(_))) = m.try_recv(Duration::from_millis(200)).await {
            n += 1;
        }
        counts.push(n);
    }
    assert_eq!(counts, [10, 10, 10, 10]);
}

#[tokio::test]
async fn shared_and_plain_subscription_on_same_client() {
    let h = Harness::new();
    let mut a = h.client(V5, "a").await;
    a.subscribe("x/y", QoS::AtMostOnce).await;
    a.subscribe("$share/g/x/y", QoS::AtMostOnce).await;
    let mut p = h.client(V5, "pub").await;
    p.publish("x/y", b"1", QoS::AtMostOnce, false).await;
    a.receive().await;
    a.receive().await;
    a.expect_nothing().await;
}

#[tokio::test]
async fn topic_alias_both_ways() {
    let h = Harness::new();
    let mut s = h.stream(None);
    let mut cp = connect_packet(V5, "aliased", true);
    cp.properties.topic_alias_maximum = Some(2);
    s.connect(cp).await;
    s.subscribe("al/#", QoS::AtMostOnce).await;
    let mut p = h.client(V5, "pub").await;
    // Inbound alias: set then use.
    let with_alias = |topic: &str, alias| {
        let mut pk = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: ByteStr::from(topic),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::from_static(b"a"),
        };
        pk.properties.topic_alias = Some(alias);
        Packet::Publish(pk)
    };
    p.send(with_alias("al/one", 1)).await;
    p.send(with_alias("", 1)).await;
    let m1 = s.expect_publish().await;
    assert_eq!(&m1.topic[..], "al/one");
    assert_eq!(m1.properties.topic_alias, Some(1));
    let m2 = s.expect_publish().await;
    assert_eq!(&m2.topic[..], "", "second delivery uses the alias alone");
    assert_eq!(m2.properties.topic_alias, Some(1));
    // Unknown alias with an empty topic → 0x82; alias above the maximum → 0x94.
    p.send(with_alias("", 2)).await;
    p.expect_disconnect(ReasonCode::ProtocolError).await;
    let mut p = h.client(V5, "pub2").await;
    p.send(with_alias("al/x", 9)).await;
    p.expect_disconnect(ReasonCode::TopicAliasInvalid).await;
}

#[tokio::test]
async fn message_expiry() {
    let h = Harness::new();
    let (mut s, _) = h.persistent(V5, "exp").await;
    s.subscribe("e", QoS::AtLeastOnce).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut p = h.client(V5, "pub").await;
    let mut pk = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: ByteStr::from("e"),
        packet_id: Some(1),
        properties: Properties::default(),
        payload: Bytes::from_static(b"short"),
    };
    pk.properties.message_expiry_interval = Some(2);
    p.send(Packet::Publish(pk.clone())).await;
    p.expect_resp(PubRespKind::PubAck).await;
    pk.payload = Bytes::from_static(b"long");
    pk.topic = ByteStr::from("e");
    pk.retain = false;
    pk.packet_id = Some(2);
    pk.properties.message_expiry_interval = Some(100);
    p.send(Packet::Publish(pk)).await;
    p.expect_resp(PubRespKind::PubAck).await;
    skip(Duration::from_secs(3)).await;
    let (mut s, _) = h.persistent(V5, "exp").await;
    let m = s.receive().await;
    assert_eq!(&m.payload[..], b"long");
    let left = m
        .properties
        .message_expiry_interval
        .expect("remaining expiry");
    assert!((96..=98).contains(&left), "{left}");
    s.expect_nothing().await;
    // The expired retained message is gone too.
    let mut n = h.client(V5, "new").await;
    n.subscribe("e", QoS::AtMostOnce).await;
    n.expect_nothing().await;
}

#[tokio::test]
async fn inbound_receive_maximum() {
    let config = thingd_broker::BrokerConfig {
        receive_maximum: 2,
        ..thingd_broker::BrokerConfig::default()
    };
    let h = Harness::with_config(config);
    let mut p = h.client(V5, "flood").await;
    p.send(publish("f", b"1", QoS::ExactlyOnce, false, Some(1)))
        .await;
    p.send(publish("f", b"2", QoS::ExactlyOnce, false, Some(2)))
        .await;
    p.send(publish("f", b"3", QoS::ExactlyOnce, false, Some(3)))
        .await;
    p.expect_disconnect(ReasonCode::ReceiveMaximumExceeded)
        .await;
}

/// QoS 1 PUBLISHes read together count against the Receive Maximum before any of them is
/// acknowledged (MQTT 5, 3.3.4), whether or not anything had to be stored for them.
#[tokio::test]
async fn inbound_receive_maximum_counts_publishes_read_together() {
    let config = thingd_broker::BrokerConfig {
        receive_maximum: 2,
        ..thingd_broker::BrokerConfig::default()
    };
    let h = Harness::with_config(config);
    let mut p = h.client(V5, "burst").await;
    let mut bytes = BytesMut::new();
    for pid in 1..=3u16 {
        let packet = publish("f", b"x", QoS::AtLeastOnce, false, Some(pid));
        thingd_mqtt::encode(&packet, V5, &mut bytes).unwrap();
    }
    p.send_raw(&bytes).await;
    p.expect_disconnect(ReasonCode::ReceiveMaximumExceeded)
        .await;
}

/// PUBLISHes read together are delivered together per topic: every receiver gets each in
/// the order sent, and the publisher gets its acknowledgements in that order too.
#[tokio::test]
async fn publishes_read_together_arrive_in_order_and_are_acknowledged_in_order() {
    let h = Harness::new();
    let mut b1 = h.client(V5, "b1").await;
    b1.subscribe("b", QoS::AtLeastOnce).await;
    let mut b2 = h.client(V3, "b2").await;
    b2.subscribe("#", QoS::AtMostOnce).await;
    let mut c = h.client(V5, "c").await;
    c.subscribe("c", QoS::AtLeastOnce).await;
    let mut p = h.client(V5, "p").await;
    let topics = ["b", "b", "b", "c", "b", "b", "c", "c", "b"];
    let mut bytes = BytesMut::new();
    for (i, topic) in topics.iter().enumerate() {
        let pid = u16::try_from(i + 1).unwrap();
        let packet = publish(topic, &[i as u8], QoS::AtLeastOnce, false, Some(pid));
        thingd_mqtt::encode(&packet, V5, &mut bytes).unwrap();
    }
    p.send_raw(&bytes).await;
    for pid in 1..=topics.len() as u16 {
        assert_eq!(p.expect_resp(PubRespKind::PubAck).await.packet_id, pid);
    }
    let sent_to = |t: &str| -> Vec<u8> {
        (0..topics.len() as u8)
            .filter(|i| topics[*i as usize] == t)
            .collect()
    };
    let mut got_b1 = Vec::new();
    for _ in 0..sent_to("b").len() {
        let m = b1.expect_publish().await;
        got_b1.push(m.payload[0]);
        b1.send(ack(PubRespKind::PubAck, m.packet_id.unwrap()))
            .await;
    }
    assert_eq!(got_b1, sent_to("b"));
    let mut got_c = Vec::new();
    for _ in 0..sent_to("c").len() {
        let m = c.expect_publish().await;
        got_c.push(m.payload[0]);
        c.send(ack(PubRespKind::PubAck, m.packet_id.unwrap())).await;
    }
    assert_eq!(got_c, sent_to("c"));
    let mut got_b2 = Vec::new();
    for _ in 0..topics.len() {
        got_b2.push(b2.expect_publish().await.payload[0]);
    }
    assert_eq!(got_b2, (0..topics.len() as u8).collect::<Vec<_>>());
    for s in [&mut b1, &mut b2, &mut c] {
        s.expect_nothing().await;
    }
}

#[tokio::test]
async fn outbound_inflight_limit() {
    let h = Harness::new();
    let mut s = h.stream(None);
    let mut cp = connect_packet(V5, "slow", true);
    cp.properties.receive_maximum = Some(2);
    s.connect(cp).await;
    s.subscribe("o", QoS::AtLeastOnce).await;
    let mut p = h.client(V5, "pub").await;
    for i in 0..4u8 {
        p.publish("o", &[i], QoS::AtLeastOnce, false).await;
    }
    let a = s.expect_publish().await;
    let b = s.expect_publish().await;
    s.expect_nothing().await;
    s.send(ack(PubRespKind::PubAck, a.packet_id.unwrap_or(0)))
        .await;
    let c = s.expect_publish().await;
    assert_eq!(c.payload[0], 2);
    s.send(ack(PubRespKind::PubAck, b.packet_id.unwrap_or(0)))
        .await;
    assert_eq!(s.expect_publish().await.payload[0], 3);
}

/// A receiver that acknowledges several messages in one write (as a fast one does) gets
/// the next ones in their room, in order; an id acknowledged twice or never sent frees
/// nothing.
#[tokio::test]
async fn acknowledgements_read_together_free_their_room_together() {
    let h = Harness::new();
    let mut s = h.stream(None);
    let mut cp = connect_packet(V5, "batch", true);
    cp.properties.receive_maximum = Some(2);
    s.connect(cp).await;
    s.subscribe("o", QoS::AtLeastOnce).await;
    let mut p = h.client(V5, "pub").await;
    for i in 0..7u8 {
        p.publish("o", &[i], QoS::AtLeastOnce, false).await;
    }
    let mut acks = BytesMut::new();
    let mut expect = 0u8;
    for round in 0..3 {
        let a = s.expect_publish().await;
        let b = s.expect_publish().await;
        assert_eq!((a.payload[0], b.payload[0]), (expect, expect + 1));
        s.expect_nothing().await;
        acks.clear();
        for pid in [a.packet_id, a.packet_id, Some(999), b.packet_id] {
            let packet = ack(PubRespKind::PubAck, pid.unwrap_or(0));
            thingd_mqtt::encode(&packet, V5, &mut acks).unwrap();
        }
        if round == 2 {
            thingd_mqtt::encode(&Packet::PingReq, V5, &mut acks).unwrap();
        }
        s.send_raw(&acks).await;
        expect += 2;
    }
    let mut rest = Vec::new();
    for _ in 0..2 {
        match s.recv().await {
            Packet::Publish(last) => rest.push(last.payload[0]),
            Packet::PingResp => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(rest.contains(&6), "{rest:?}");
    s.expect_nothing().await;
}

/// A publisher's PUBLISHes to one topic in one read share the receivers worked out for the
/// first; a SUBSCRIBE or UNSUBSCRIBE in between (here the publisher's own, in the same read)
/// must change who gets the ones after it.
#[tokio::test]
async fn subscribing_between_publishes_of_one_read_changes_who_receives() {
    let h = Harness::new();
    let mut all = h.client(V5, "all").await;
    all.subscribe("r", QoS::AtMostOnce).await;
    let mut p = h.client(V5, "p").await;
    let mut bytes = BytesMut::new();
    let packets = [
        publish("r", &[1], QoS::AtMostOnce, false, None),
        Packet::Subscribe(thingd_mqtt::Subscribe {
            packet_id: 1,
            filters: vec![(ByteStr::from("r"), SubscriptionOptions::default())],
            properties: Properties::default(),
        }),
        publish("r", &[2], QoS::AtMostOnce, false, None),
        Packet::Unsubscribe(thingd_mqtt::Unsubscribe {
            packet_id: 2,
            filters: vec![ByteStr::from("r")],
            properties: Properties::default(),
        }),
        publish("r", &[3], QoS::AtMostOnce, false, None),
    ];
    for packet in &packets {
        thingd_mqtt::encode(packet, V5, &mut bytes).unwrap();
    }
    p.send_raw(&bytes).await;
    let mut own = Vec::new();
    let mut acks = 0;
    while acks < 2 || own.is_empty() {
        match p.recv().await {
            Packet::Publish(m) => own.push(m.payload[0]),
            Packet::SubAck(_) | Packet::UnsubAck(_) => acks += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    p.expect_nothing().await;
    assert_eq!(own, [2]);
    for i in 1..=3u8 {
        assert_eq!(&all.expect_publish().await.payload[..], &[i]);
    }
    all.expect_nothing().await;
}

#[tokio::test]
async fn qos2_duplicate_publish_delivered_once_and_unknown_pubrel() {
    let h = Harness::new();
    let mut s = h.client(V5, "s").await;
    s.subscribe("d", QoS::AtMostOnce).await;
    let mut p = h.client(V5, "p").await;
    p.send(publish("d", b"x", QoS::ExactlyOnce, false, Some(7)))
        .await;
    p.expect_resp(PubRespKind::PubRec).await;
    p.send(publish("d", b"x", QoS::ExactlyOnce, false, Some(7)))
        .await;
    p.expect_resp(PubRespKind::PubRec).await;
    p.send(ack(PubRespKind::PubRel, 7)).await;
    assert_eq!(
        p.expect_resp(PubRespKind::PubComp).await.reason,
        ReasonCode::Success
    );
    p.send(ack(PubRespKind::PubRel, 99)).await;
    assert_eq!(
        p.expect_resp(PubRespKind::PubComp).await.reason,
        ReasonCode::PacketIdentifierNotFound
    );
    s.receive().await;
    s.expect_nothing().await;
}

#[tokio::test]
async fn max_packet_size_both_sides() {
    let config = thingd_broker::BrokerConfig {
        max_payload: 1000,
        max_packet_size: 2000,
        ..thingd_broker::BrokerConfig::default()
    };
    let h = Harness::with_config(config);
    // Client's maximum: a big message is not sent to it.
    let mut s = h.stream(None);
    let mut cp = connect_packet(V5, "small", true);
    cp.properties.maximum_packet_size = Some(100);
    s.connect(cp).await;
    s.subscribe("m", QoS::AtMostOnce).await;
    let mut p = h.client(V5, "pub").await;
    p.publish("m", &[0u8; 500], QoS::AtMostOnce, false).await;
    p.publish("m", b"tiny", QoS::AtMostOnce, false).await;
    assert_eq!(&s.expect_publish().await.payload[..], b"tiny");
    // Payload over max_payload → 0x95.
    p.send(publish("m", &[0u8; 1500], QoS::AtMostOnce, false, None))
        .await;
    p.expect_disconnect(ReasonCode::PacketTooLarge).await;
    // Packet over max_packet_size → 0x95 (v5), close (3.1.1).
    let mut p = h.client(V5, "pub2").await;
    p.send(publish("m", &[0u8; 3000], QoS::AtMostOnce, false, None))
        .await;
    p.expect_disconnect(ReasonCode::PacketTooLarge).await;
    let mut p3 = h.client(V3, "pub3").await;
    p3.send(publish("m", &[0u8; 3000], QoS::AtMostOnce, false, None))
        .await;
    assert!(p3.expect_closed().await.is_empty());
}

#[tokio::test]
async fn bad_first_packet_and_second_connect() {
    let h = Harness::new();
    let mut c = h.stream(None);
    c.send(Packet::PingReq).await;
    assert!(c.expect_closed().await.is_empty());
    let mut c = h.client(V5, "twice").await;
    c.send(Packet::Connect(Box::new(connect_packet(V5, "twice", true))))
        .await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;
    // Unsupported protocol level → CONNACK rc 1, then close.
    let mut c = h.stream(None);
    c.version = V3;
    c.send_raw(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 3, 2, 0, 60, 0, 0])
        .await;
    match c.recv().await {
        Packet::ConnAck(a) => assert_eq!(a.reason, ReasonCode::UnsupportedProtocolVersion),
        other => panic!("{other:?}"),
    }
    // Connect timeout.
    let mut c = h.stream(None);
    tokio::time::sleep(Duration::from_millis(20)).await;
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(c.expect_closed().await.is_empty());
}

#[tokio::test]
async fn invalid_topics_and_filters() {
    let h = Harness::new();
    let mut c = h.client(V5, "c").await;
    let a = c.subscribe("a/#/b", QoS::AtMostOnce).await;
    assert_eq!(a.reasons, vec![ReasonCode::TopicFilterInvalid]);
    let mut c3 = h.client(V3, "c3").await;
    let a = c3.subscribe("a/+b", QoS::AtMostOnce).await;
    assert_eq!(a.reasons, vec![ReasonCode::UnspecifiedError]);
    c.send(publish("a/+", b"x", QoS::AtMostOnce, false, None))
        .await;
    c.expect_disconnect(ReasonCode::TopicNameInvalid).await;
    let mut c = h.client(V5, "c").await;
    c.send(publish("$SYS/x", b"x", QoS::AtMostOnce, false, None))
        .await;
    c.expect_disconnect(ReasonCode::TopicNameInvalid).await;
    let mut c = h.client(V5, "c").await;
    c.send(publish(
        "a/b/c/d/e/f/g/h/i",
        b"x",
        QoS::AtMostOnce,
        false,
        None,
    ))
    .await;
    c.expect_disconnect(ReasonCode::TopicNameInvalid).await;
    c3.send(publish("a/#", b"x", QoS::AtMostOnce, false, None))
        .await;
    assert!(c3.expect_closed().await.is_empty());
    // $aws topics may be published; retained on them is refused (v5 PUBACK 0x87).
    let mut c = h.client(V5, "c").await;
    c.publish("$aws/things/t/shadow/get", b"", QoS::AtLeastOnce, false)
        .await;
    c.send(publish("$aws/x", b"r", QoS::AtLeastOnce, true, Some(5)))
        .await;
    assert_eq!(
        c.expect_resp(PubRespKind::PubAck).await.reason,
        ReasonCode::NotAuthorized
    );
}

#[tokio::test]
async fn subscribe_limits() {
    let config = thingd_broker::BrokerConfig {
        max_subscriptions: 2,
        ..thingd_broker::BrokerConfig::default()
    };
    let h = Harness::with_config(config);
    let mut c = h.client(V5, "c").await;
    let pid = c.pid();
    let filters = (0..9)
        .map(|i| {
            (
                ByteStr::from(format!("f/{i}")),
                SubscriptionOptions::default(),
            )
        })
        .collect();
    c.send(Packet::Subscribe(thingd_mqtt::Subscribe {
        packet_id: pid,
        filters,
        properties: Properties::default(),
    }))
    .await;
    assert_eq!(
        c.expect_suback().await.reasons,
        vec![ReasonCode::QuotaExceeded; 9]
    );
    let pid = c.pid();
    let filters = (0..3)
        .map(|i| {
            (
                ByteStr::from(format!("f/{i}")),
                SubscriptionOptions::default(),
            )
        })
        .collect();
    c.send(Packet::Subscribe(thingd_mqtt::Subscribe {
        packet_id: pid,
        filters,
        properties: Properties::default(),
    }))
    .await;
    assert_eq!(
        c.expect_suback().await.reasons,
        vec![
            ReasonCode::Success,
            ReasonCode::Success,
            ReasonCode::QuotaExceeded
        ]
    );
    // Unsubscribe: 0x11 for a filter that was not subscribed.
    let pid = c.pid();
    c.send(Packet::Unsubscribe(thingd_mqtt::Unsubscribe {
        packet_id: pid,
        filters: vec![ByteStr::from("f/0"), ByteStr::from("nope")],
        properties: Properties::default(),
    }))
    .await;
    match c.recv().await {
        Packet::UnsubAck(a) => {
            assert_eq!(
                a.reasons,
                vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn no_local_and_subscription_identifiers() {
    let h = Harness::new();
    let mut c = h.client(V5, "self").await;
    c.subscribe_with(
        "nl",
        SubscriptionOptions {
            no_local: true,
            ..SubscriptionOptions::default()
        },
        Properties::default(),
    )
    .await;
    let props = Properties {
        subscription_identifiers: vec![42],
        ..Properties::default()
    };
    c.subscribe_with("sid/+", SubscriptionOptions::default(), props)
        .await;
    c.publish("nl", b"x", QoS::AtMostOnce, false).await;
    c.publish("sid/1", b"y", QoS::AtMostOnce, false).await;
    let m = c.expect_publish().await;
    assert_eq!(&m.topic[..], "sid/1");
    assert_eq!(m.properties.subscription_identifiers, vec![42]);
    c.expect_nothing().await;
}

#[tokio::test]
async fn client_ids() {
    let h = Harness::new();
    // v5 empty id → assigned.
    let (_c, ack) = h.connect(V5, "").await;
    assert_eq!(ack.reason, ReasonCode::Success);
    let id = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!id.starts_with('$') && !id.is_empty());
    // 3.1.1 empty id with clean session → accepted.
    let (_c, ack) = h.connect(V3, "").await;
    assert_eq!(ack.reason, ReasonCode::Success);
    // 3.1.1 empty id without clean session → rc 2.
    let mut c = h.stream(None);
    let ack = c.connect(connect_packet(V3, "", false)).await;
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    // Too long, and `$` prefix.
    let (_c, ack) = h.connect(V5, &"x".repeat(129)).await;
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    let (_c, ack) = h.connect(V5, "$reserved").await;
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
}

#[tokio::test]
async fn session_expiry_clamped_and_disconnect_rules() {
    let h = Harness::new();
    let mut c = h.stream(None);
    let mut cp = connect_packet(V5, "sei", false);
    cp.properties.session_expiry_interval = Some(100_000);
    let ack = c.connect(cp).await;
    assert_eq!(ack.properties.session_expiry_interval, Some(3600));
    // SEI 0 → >0 at DISCONNECT is a protocol error.
    let mut c = h.client(V5, "zero").await;
    c.send(Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: Properties {
            session_expiry_interval: Some(10),
            ..Properties::default()
        },
    }))
    .await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;
}

#[tokio::test]
async fn restart_keeps_sessions_queues_and_retained() {
    let mut h = Harness::new();
    let (mut s, _) = h.persistent(V5, "durable").await;
    s.subscribe("k/#", QoS::ExactlyOnce).await;
    s.disconnect().await;
    let mut p = h.client(V3, "pub").await;
    p.publish("k/1", b"queued", QoS::AtLeastOnce, false).await;
    p.publish("k/r", b"kept", QoS::AtLeastOnce, true).await;
    drop(p);
    h.restart().await;
    let (mut s, ack) = h.persistent(V5, "durable").await;
    assert!(ack.session_present);
    let mut got = [s.receive().await, s.receive().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(&got[0].payload[..], b"queued");
    assert_eq!(&got[1].payload[..], b"kept");
    // The subscription survived too.
    let mut p = h.client(V5, "pub").await;
    p.publish("k/2", b"live", QoS::AtMostOnce, false).await;
    assert_eq!(&s.receive().await.payload[..], b"live");
    // And the retained message.
    let mut n = h.client(V5, "n").await;
    n.subscribe("k/r", QoS::AtMostOnce).await;
    assert_eq!(&n.receive().await.payload[..], b"kept");
}

#[tokio::test]
async fn disconnect_principal_and_shutdown() {
    let h = Harness::new();
    let mut a = h.stream(Some("cert-a"));
    a.connect(connect_packet(V5, "a", true)).await;
    let mut b = h.stream(Some("cert-b"));
    b.connect(connect_packet(V5, "b", true)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.broker.disconnect_principal("cert-a"), 1);
    a.expect_disconnect(ReasonCode::AdministrativeAction).await;
    let broker = h.broker.clone();
    let t = tokio::spawn(async move { broker.shutdown().await });
    b.expect_disconnect(ReasonCode::ServerShuttingDown).await;
    t.await.expect("shutdown");
    // New connections are refused.
    let mut c = h.stream(None);
    c.send(Packet::Connect(Box::new(connect_packet(V5, "late", true))))
        .await;
    assert!(c.expect_closed().await.is_empty());
}

#[tokio::test]
async fn internal_client_round_trip() {
    let h = Harness::new();
    let mut svc = h.broker.internal_client("shadow-service");
    assert_eq!(
        svc.subscribe("$aws/things/+/shadow/update", QoS::AtLeastOnce)
            .await,
        Ok(QoS::AtLeastOnce)
    );
    let mut dev = h.client(V3, "thing1").await;
    dev.subscribe(
        "$aws/things/thing1/shadow/update/accepted",
        QoS::AtLeastOnce,
    )
    .await;
    dev.publish(
        "$aws/things/thing1/shadow/update",
        b"{}",
        QoS::AtLeastOnce,
        false,
    )
    .await;
    let m = svc.recv().await.expect("message");
    assert_eq!(m.topic, "$aws/things/thing1/shadow/update");
    svc.publish(
        "$aws/things/thing1/shadow/update/accepted",
        "ok",
        QoS::AtLeastOnce,
        false,
    )
    .await
    .expect("publish");
    assert_eq!(&dev.receive().await.payload[..], b"ok");
}

/// Denies: connecting as "banned"; publishing to `deny/#`; retaining on `noretain`;
/// subscribing to `secret/#`; receiving `hidden/#`.
struct TestAuth;
struct TestPolicy;

impl thingd_broker::ConnectionPolicy for TestPolicy {
    fn can_publish(&self, topic: &str, retain: bool) -> bool {
        let denied = topic.starts_with("deny/") || (retain && topic == "noretain");
        !denied
    }
    fn can_subscribe(&self, filter: &str) -> bool {
        !filter.starts_with("secret/")
    }
    fn can_receive(&self, topic: &str) -> bool {
        !topic.starts_with("hidden/")
    }
}

impl thingd_broker::Authorizer for TestAuth {
    fn connect(
        &self,
        _info: &thingd_broker::ConnectionInfo,
        request: &thingd_broker::ConnectRequest<'_>,
    ) -> Result<std::sync::Arc<dyn thingd_broker::ConnectionPolicy>, ReasonCode> {
        match request.client_id {
            "banned" => Err(ReasonCode::NotAuthorized),
            "busy" => Err(ReasonCode::ServerBusy),
            _ => Ok(std::sync::Arc::new(TestPolicy)),
        }
    }
}

fn auth_harness() -> Harness {
    Harness::with_auth(
        thingd_broker::BrokerConfig::default(),
        std::sync::Arc::new(TestAuth),
    )
}

#[tokio::test]
async fn authorization_connect() {
    let h = auth_harness();
    let (_c, ack) = h.connect(V5, "banned").await;
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    let mut c = h.stream(None);
    c.version = V3;
    c.send(Packet::Connect(Box::new(connect_packet(
        V3, "banned", true,
    ))))
    .await;
    assert!(c.expect_closed().await.is_empty(), "3.1.1: no CONNACK");
    // Other codes map onto a 3.1.1 return code (Server Busy → 3, Server unavailable).
    let (_c, ack) = h.connect(V3, "busy").await;
    assert_eq!(ack.reason, ReasonCode::ServerUnavailable);
    let (_c, ack) = h.connect(V5, "busy").await;
    assert_eq!(ack.reason, ReasonCode::ServerBusy);
}

#[tokio::test]
async fn authorization_publish_subscribe_receive() {
    let h = auth_harness();
    let mut c = h.client(V5, "c").await;
    // v5: QoS 1 → PUBACK 0x87, QoS 2 → PUBREC 0x87, QoS 0 → DISCONNECT 0x87.
    c.send(publish("deny/x", b"x", QoS::AtLeastOnce, false, Some(1)))
        .await;
    assert_eq!(
        c.expect_resp(PubRespKind::PubAck).await.reason,
        ReasonCode::NotAuthorized
    );
    c.send(publish("deny/x", b"x", QoS::ExactlyOnce, false, Some(2)))
        .await;
    assert_eq!(
        c.expect_resp(PubRespKind::PubRec).await.reason,
        ReasonCode::NotAuthorized
    );
    c.send(publish("noretain", b"x", QoS::AtLeastOnce, true, Some(3)))
        .await;
    assert_eq!(
        c.expect_resp(PubRespKind::PubAck).await.reason,
        ReasonCode::NotAuthorized
    );
    let a = c.subscribe("secret/a", QoS::AtMostOnce).await;
    assert_eq!(a.reasons, vec![ReasonCode::NotAuthorized]);
    // Receive is checked per delivery.
    c.subscribe("#", QoS::AtMostOnce).await;
    c.publish("hidden/x", b"h", QoS::AtMostOnce, false).await;
    c.publish("open/x", b"o", QoS::AtMostOnce, false).await;
    assert_eq!(&c.expect_publish().await.topic[..], "open/x");
    c.send(publish("deny/x", b"x", QoS::AtMostOnce, false, None))
        .await;
    c.expect_disconnect(ReasonCode::NotAuthorized).await;

    // 3.1.1: denied publish or subscribe closes the connection.
    let mut c3 = h.client(V3, "c3").await;
    c3.send(publish("deny/x", b"x", QoS::AtLeastOnce, false, Some(1)))
        .await;
    assert!(c3.expect_closed().await.is_empty());
    let mut c3 = h.client(V3, "c3").await;
    let pid = c3.pid();
    c3.send(Packet::Subscribe(thingd_mqtt::Subscribe {
        packet_id: pid,
        filters: vec![(ByteStr::from("secret/x"), SubscriptionOptions::default())],
        properties: Properties::default(),
    }))
    .await;
    assert!(c3.expect_closed().await.is_empty());
}

#[tokio::test]
async fn session_expiry_and_will_at_expiry() {
    let h = Harness::new();
    let mut watcher = h.client(V5, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;
    let mut c = h.stream(None);
    let mut p = connect_packet(V5, "short", false);
    p.properties.session_expiry_interval = Some(2);
    let mut w = will("wills/short", b"expired", QoS::AtMostOnce, false);
    w.properties.will_delay_interval = Some(100);
    p.will = Some(w);
    c.connect(p).await;
    c.subscribe("x", QoS::AtLeastOnce).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.store.sessions().expect("sessions").len(), 1);
    skip(Duration::from_secs(3)).await;
    // The will fires with the session's end, before its 100 s delay.
    assert_eq!(&watcher.receive().await.payload[..], b"expired");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_c, ack) = h.persistent(V5, "short").await;
    assert!(!ack.session_present);
}

/// Sessions restored from the store expire on their own schedule too (the sweep looks only at
/// sessions filed to expire, and a restored offline session is filed when it is loaded).
#[tokio::test]
async fn a_restored_offline_session_still_expires() {
    let mut h = Harness::new();
    let mut c = h.stream(None);
    let mut p = connect_packet(V5, "sleeper", false);
    p.properties.session_expiry_interval = Some(2);
    c.connect(p).await;
    c.subscribe("x", QoS::AtLeastOnce).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.store.sessions().expect("sessions").len(), 1);
    h.restart().await;
    skip(Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Gone from the store by the sweep, without the client coming back.
    assert!(h.store.sessions().expect("sessions").is_empty());
    let (_c, ack) = h.persistent(V5, "sleeper").await;
    assert!(
        !ack.session_present,
        "the restored session outlived its expiry"
    );
}

/// A session that came back and left again expires from its last disconnect, not the first.
#[tokio::test]
async fn a_session_expires_from_its_last_disconnect() {
    let h = Harness::new();
    let connect = |h: &Harness| {
        let mut c = h.stream(None);
        let mut p = connect_packet(V5, "roamer", false);
        p.properties.session_expiry_interval = Some(2);
        async move {
            let ack = c.connect(p).await;
            (c, ack)
        }
    };
    let (mut c, _) = connect(&h).await;
    c.subscribe("x", QoS::AtLeastOnce).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    skip(Duration::from_millis(1000)).await;
    let (c, ack) = connect(&h).await;
    assert!(ack.session_present);
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // 2.5 s after the first disconnect, 1.5 s after the second: the session is still there.
    skip(Duration::from_millis(1500)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (c, ack) = connect(&h).await;
    assert!(ack.session_present, "expired from the first disconnect");
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    skip(Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_c, ack) = connect(&h).await;
    assert!(!ack.session_present, "the session outlived its expiry");
}

#[tokio::test]
async fn crash_restore_treats_live_sessions_as_disconnected() {
    let h = Harness::new();
    let (mut s, _) = h.persistent(V3, "crashy").await;
    s.subscribe("c/#", QoS::AtLeastOnce).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rec = h.store.sessions().expect("sessions");
    assert_eq!(rec[0].disconnected_at, None);
    // A second broker on the same file, as after kill -9 (the first one never closed).
    let b2 = thingd_broker::Broker::new(
        thingd_broker::BrokerConfig::default(),
        h.store.clone(),
        std::sync::Arc::new(thingd_broker::AllowAll),
    )
    .expect("broker");
    let (client, server) = tokio::io::duplex(1 << 16);
    let info = thingd_broker::ConnectionInfo {
        remote_addr: "127.0.0.1:1".parse().expect("addr"),
        principal: None,
        listener: "test",
    };
    tokio::spawn(async move { b2.serve_connection(server, info).await });
    let mut c2 = Client::from_stream(client);
    let ack = c2.connect(connect_packet(V3, "crashy", false)).await;
    assert!(ack.session_present);
}

/// A broker started on the store of one that never shut down, as after kill -9.
fn broker_after_crash(h: &Harness) -> thingd_broker::Broker {
    thingd_broker::Broker::new(
        thingd_broker::BrokerConfig::default(),
        h.store.clone(),
        std::sync::Arc::new(thingd_broker::AllowAll),
    )
    .expect("broker")
}

/// CONNECT resuming a session kept for ten minutes after the connection (both versions).
fn resume_packet(version: thingd_mqtt::ProtocolVersion, id: &str) -> thingd_mqtt::Connect {
    let mut p = connect_packet(version, id, false);
    p.properties.session_expiry_interval = Some(600);
    p
}

/// Starts a broker as after kill -9, publishes `payload` to `topic` on it and resumes the
/// session `id`, which must still exist.
async fn crash_publish_and_resume(
    h: &Harness,
    version: thingd_mqtt::ProtocolVersion,
    id: &str,
    topic: &str,
    payload: &[u8],
) -> Client {
    let broker = broker_after_crash(h);
    let mut publisher = serve_pipe(&broker, 1 << 16, None);
    publisher.connect(connect_packet(V5, "pub", true)).await;
    publisher
        .publish(topic, payload, QoS::AtLeastOnce, false)
        .await;
    let mut resumed = serve_pipe(&broker, 1 << 16, None);
    let ack = resumed.connect(resume_packet(version, id)).await;
    assert!(ack.session_present, "{version:?}");
    resumed
}

#[tokio::test]
async fn a_subscription_acknowledged_to_a_persistent_session_survives_a_crash() {
    for (version, id) in [(V3, "durable-3"), (V5, "durable-5")] {
        let h = Harness::new();
        let (mut s, _) = h.persistent(version, id).await;
        // No pause between the SUBACK and the crash: the SUBACK itself is the promise.
        let granted = s.subscribe("after/crash/#", QoS::AtLeastOnce).await;
        assert_eq!(granted.reasons, vec![ReasonCode::GrantedQoS1]);
        let mut again = crash_publish_and_resume(&h, version, id, "after/crash/1", b"kept").await;
        assert_eq!(&again.receive().await.payload[..], b"kept", "{version:?}");

        // And an acknowledged UNSUBSCRIBE stays done.
        let pid = again.pid();
        again
            .send(Packet::Unsubscribe(thingd_mqtt::Unsubscribe {
                packet_id: pid,
                filters: vec![ByteStr::from("after/crash/#")],
                properties: Properties::default(),
            }))
            .await;
        assert!(matches!(again.recv().await, Packet::UnsubAck(_)));
        let mut third =
            crash_publish_and_resume(&h, version, id, "after/crash/2", b"not for you").await;
        third.expect_nothing().await;
    }
}

#[tokio::test]
async fn a_subscription_that_could_not_be_stored_is_not_acknowledged_as_granted() {
    for (version, id) in [(V3, "unstored-3"), (V5, "unstored-5")] {
        let h = Harness::new();
        let (mut s, _) = h.persistent(version, id).await;
        // Every later write fails, as on a full or broken disk.
        h.store.close();
        let refused = s.subscribe("never/stored", QoS::AtLeastOnce).await;
        assert_eq!(
            refused.reasons,
            vec![ReasonCode::UnspecifiedError],
            "{version:?}: 0x80, the failure code of both versions"
        );
        // A clean session stores nothing, so it is not affected.
        let mut clean = h.client(version, &format!("{id}-clean")).await;
        let granted = clean.subscribe("clean/ok", QoS::AtLeastOnce).await;
        assert_eq!(granted.reasons, vec![ReasonCode::GrantedQoS1]);
    }
}

#[tokio::test]
async fn garbage_input_never_panics() {
    use rand::{Rng, SeedableRng};
    use tokio::io::AsyncWriteExt;
    let h = Harness::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..300 {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let info = thingd_broker::ConnectionInfo {
            remote_addr: "127.0.0.1:1".parse().expect("addr"),
            principal: None,
            listener: "test",
        };
        let mut bytes = Vec::new();
        if i % 2 == 0 {
            // A valid CONNECT first, then garbage.
            let mut out = bytes::BytesMut::new();
            let version = if i % 4 == 0 { V3 } else { V5 };
            thingd_mqtt::encode(
                &Packet::Connect(Box::new(connect_packet(version, &format!("g{i}"), true))),
                version,
                &mut out,
            )
            .expect("encode");
            bytes.extend_from_slice(&out);
        }
        let n = rng.random_range(0..300);
        bytes.extend((0..n).map(|_| rng.random::<u8>()));
        client.write_all(&bytes).await.expect("write");
        drop(client);
        tokio::time::timeout(
            Duration::from_secs(5),
            h.broker.serve_connection(server, info),
        )
        .await
        .expect("connection ends");
    }
    // The broker still works.
    let mut s = h.client(V5, "after").await;
    s.subscribe("ok", QoS::AtMostOnce).await;
    s.publish("ok", b"fine", QoS::AtMostOnce, false).await;
    assert_eq!(&s.receive().await.payload[..], b"fine");
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_holds_its_publisher_only_briefly() {
    let config = thingd_broker::BrokerConfig {
        outbound_queue: 4,
        ..thingd_broker::BrokerConfig::default()
    };
    let h = Harness::with_config(config);
    let mut sub = serve_pipe(&h.broker, 512, None);
    sub.connect(connect_packet(V5, "slow", true)).await;
    sub.subscribe("s0", QoS::AtMostOnce).await;
    sub.subscribe("s1", QoS::AtLeastOnce).await;
    let mut p = h.client(V5, "fast").await;
    let big = [7u8; 200];
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), async {
        for _ in 0..50 {
            p.publish("s0", &big, QoS::AtMostOnce, false).await;
        }
        for _ in 0..20 {
            p.publish("s1", &big, QoS::AtLeastOnce, false).await;
        }
    })
    .await
    .expect("publisher is not blocked for good by the stuck subscriber");
    // Paced for at most 100 ms, then the subscriber counts as stalled and is left behind.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let (mut q0, mut q1) = (0, 0);
    while let Ok(Some(Packet::Publish(m))) = sub.try_recv(Duration::from_millis(300)).await {
        if m.qos == QoS::AtLeastOnce {
            q1 += 1;
            sub.send(ack(PubRespKind::PubAck, m.packet_id.unwrap_or(0)))
                .await;
        } else {
            q0 += 1;
        }
    }
    assert_eq!(q1, 20, "QoS 1 is queued, not dropped");
    assert!(q0 < 50, "some QoS 0 messages were dropped ({q0})");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout_and_its_will_sent() {
    let h = Harness::new();
    let mut watcher = h.client(V5, "watcher").await;
    watcher.subscribe("gone/#", QoS::AtMostOnce).await;
    let mut stuck = serve_pipe(&h.broker, 512, None);
    // Keep-alive 30 s: a write may wait 1.5 times that (the grace period of the keep-alive).
    let mut p = connect_packet(V5, "stuck", true);
    p.keep_alive = 30;
    p.will = Some(will(
        "gone/stuck",
        b"write timed out",
        QoS::AtMostOnce,
        false,
    ));
    stuck.connect(p).await;
    stuck.subscribe("flood", QoS::AtLeastOnce).await;
    let mut publisher = h.client(V5, "flooder").await;
    for _ in 0..8 {
        publisher
            .publish("flood", &[7u8; 200], QoS::AtLeastOnce, false)
            .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    watcher.expect_nothing().await;
    skip(Duration::from_secs(30)).await;
    watcher.expect_nothing().await;
    skip(Duration::from_secs(16)).await;
    assert_eq!(&watcher.receive().await.payload[..], b"write timed out");
    drop(stuck);
}

#[tokio::test]
async fn a_fast_qos0_publisher_is_paced_to_a_slower_subscriber_instead_of_losing_messages() {
    let config = thingd_broker::BrokerConfig {
        outbound_queue: 8,
        ..thingd_broker::BrokerConfig::default()
    };
    let h = Harness::with_config(config);
    let mut sub = h.client(V3, "reader").await;
    sub.subscribe("paced/t", QoS::AtMostOnce).await;
    let mut p = h.client(V3, "writer").await;
    const N: usize = 2000;
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            p.publish("paced/t", format!("{i}").as_bytes(), QoS::AtMostOnce, false)
                .await;
        }
        p
    });
    let mut got = Vec::new();
    while got.len() < N {
        match sub.try_recv(Duration::from_secs(3)).await {
            Ok(Some(Packet::Publish(m))) => got.push(m.payload),
            other => panic!("after {} messages: {other:?}", got.len()),
        }
        if got.len() % 100 == 0 {
            // A subscriber slower than its publisher.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let _p = publisher.await.expect("publisher");
    for (i, payload) in got.iter().enumerate() {
        assert_eq!(
            &payload[..],
            format!("{i}").as_bytes(),
            "in order, none lost"
        );
    }
}

#[tokio::test]
async fn publishes_over_the_per_connection_rate_are_refused_with_quota_exceeded() {
    let h = Harness::with_config(thingd_broker::BrokerConfig {
        max_publishes_per_second: 3,
        ..thingd_broker::BrokerConfig::default()
    });
    let mut sub = h.client(V5, "rate-sub").await;
    sub.subscribe("rate/t", QoS::AtLeastOnce).await;
    let mut publisher = h.client(V5, "rate-pub").await;
    for _ in 0..3 {
        publisher
            .publish("rate/t", b"ok", QoS::AtLeastOnce, false)
            .await;
    }
    // The fourth publish in the same second is over the limit: 0x97, and not delivered.
    let pid = publisher.pid();
    publisher
        .send(publish(
            "rate/t",
            b"over",
            QoS::AtLeastOnce,
            false,
            Some(pid),
        ))
        .await;
    let refused = publisher.expect_resp(PubRespKind::PubAck).await;
    assert_eq!(refused.reason, ReasonCode::QuotaExceeded);
    for _ in 0..3 {
        assert_eq!(sub.receive().await.payload.as_ref(), b"ok");
    }
    sub.expect_nothing().await;
    // A new second opens a new window.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publisher
        .publish("rate/t", b"later", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(sub.receive().await.payload.as_ref(), b"later");
}

#[tokio::test]
async fn in_process_publishes_carry_v5_properties_and_are_refused_like_a_clients() {
    let h = Harness::new();
    let mut s = h.client(V5, "listener").await;
    s.subscribe("svc/#", QoS::AtLeastOnce).await;
    let properties = Properties {
        content_type: Some(ByteStr::from("application/json")),
        response_topic: Some(ByteStr::from("svc/replies")),
        message_expiry_interval: Some(60),
        // Not forwarded: a receiver gets its own.
        topic_alias: Some(3),
        ..Properties::default()
    };
    let stored = h
        .broker
        .publish_with(
            "svc/state",
            Bytes::from_static(b"{}"),
            QoS::AtLeastOnce,
            true,
            &properties,
        )
        .expect("accepted");
    assert!(stored.await.expect("answered"));
    // Routed and retained before publish_with returned.
    assert!(h.broker.retained_message("svc/state").is_some());
    let got = s.receive().await;
    assert_eq!(
        got.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(
        got.properties.response_topic.as_deref(),
        Some("svc/replies")
    );
    assert!(matches!(
        got.properties.message_expiry_interval,
        Some(59..=60)
    ));
    assert_eq!(got.properties.topic_alias, None);

    let refused = |topic: &str, payload: usize, properties: &Properties| {
        h.broker
            .publish_with(
                topic,
                Bytes::from(vec![0u8; payload]),
                QoS::AtMostOnce,
                false,
                properties,
            )
            .err()
    };
    let wildcard_reply = Properties {
        response_topic: Some(ByteStr::from("svc/+")),
        ..Properties::default()
    };
    let none = Properties::default();
    assert_eq!(
        refused("svc/#", 1, &none),
        Some(ReasonCode::TopicNameInvalid)
    );
    assert_eq!(
        refused("svc/x", 1, &wildcard_reply),
        Some(ReasonCode::ProtocolError)
    );
    let too_big = h.config.max_payload + 1;
    assert_eq!(
        refused("svc/x", too_big, &none),
        Some(ReasonCode::PacketTooLarge)
    );
    s.expect_nothing().await;
}

#[tokio::test]
async fn overlapping_subscriptions_get_one_copy_with_the_highest_qos_and_every_identifier() {
    let h = Harness::new();
    let mut fans = Vec::new();
    for id in ["fan-1", "fan-2", "fan-3"] {
        let mut c = h.client(V5, id).await;
        for (filter, qos, sub_id) in [("o/+", QoS::AtMostOnce, 1), ("o/#", QoS::AtLeastOnce, 2)] {
            let opts = SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            };
            let props = Properties {
                subscription_identifiers: vec![sub_id],
                ..Properties::default()
            };
            c.subscribe_with(filter, opts, props).await;
        }
        fans.push(c);
    }
    let mut p = h.client(V5, "source").await;
    p.publish("o/x", b"once", QoS::AtLeastOnce, false).await;
    for c in &mut fans {
        let m = c.receive().await;
        assert_eq!(&m.payload[..], b"once");
        assert_eq!(m.qos, QoS::AtLeastOnce);
        let mut ids = m.properties.subscription_identifiers.clone();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2]);
        c.expect_nothing().await;
    }
}

/// Most of an idle connection's memory is its task, whose size is the size of the connection's
/// future: the rare, large states (CONNECT, pacing, a write that waits, close) stay boxed and
/// out of it, and so does what only CONNECT needs. It was 1,072 bytes over TCP before the
/// pacing wait was boxed, 896 before the rest was; the 10,000-idle-connection benchmark
/// counts every byte of it per connection. tokio rounds a task up to 128 bytes, so 640
/// makes a task of 768 bytes where 896 made one of 1,024.
#[tokio::test]
async fn an_idle_connections_future_stays_small() {
    let h = Harness::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let info = thingd_broker::ConnectionInfo {
        remote_addr: addr,
        principal: None,
        listener: "test",
    };
    let serving = h.broker.serve_connection(stream, info);
    let size = std::mem::size_of_val(&serving);
    assert!(size <= 640, "a connection's future is {size} bytes");
}

/// `has_subscribers` sees wildcard and shared subscriptions, and forgets ended sessions.
#[tokio::test]
async fn has_subscribers_follows_the_subscriptions() {
    let h = Harness::new();
    assert!(
        !h.broker
            .has_subscribers("$aws/events/presence/connected/d1")
    );
    let mut c = h.client(V5, "watcher").await;
    c.subscribe("$aws/events/presence/+/+", QoS::AtLeastOnce)
        .await;
    let mut g = h.client(V3, "member").await;
    g.subscribe("$share/g/fleet/#", QoS::AtMostOnce).await;
    assert!(
        h.broker
            .has_subscribers("$aws/events/presence/connected/d1")
    );
    assert!(h.broker.has_subscribers("fleet/a/b"));
    assert!(
        !h.broker
            .has_subscribers("$aws/events/subscriptions/subscribed/d1")
    );
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !h.broker
            .has_subscribers("$aws/events/presence/connected/d1")
    );
}

/// Resumes the persistent v5 session `id` on a broker started as after kill -9.
async fn resume_after_crash(h: &Harness, id: &str) -> Client {
    resume_on(&broker_after_crash(h), id).await
}

/// Resumes the persistent v5 session `id` on `broker`, which must still have it.
async fn resume_on(broker: &thingd_broker::Broker, id: &str) -> Client {
    let mut client = serve_pipe(broker, 1 << 16, None);
    let ack = client.connect(resume_packet(V5, id)).await;
    assert!(ack.session_present, "{id}");
    client
}

/// QoS 2 to a persistent session across crashes: a message sent but not answered comes back
/// under the packet id the receiver saw (so a receiver holding that id knows it), and one
/// answered with PUBREC comes back as its PUBREL only — the receiver may already have passed
/// it on and forgotten the id, so a second PUBLISH would deliver it twice.
#[tokio::test]
async fn qos2_to_a_persistent_session_resumes_at_its_stage_after_a_crash() {
    let h = Harness::new();
    let id = "exactly-once";
    let (mut s, _) = h.persistent(V5, id).await;
    s.subscribe("q2/#", QoS::ExactlyOnce).await;
    let mut publisher = h.client(V5, "q2-publisher").await;
    // Three messages completed first, so that the open one does not have the first id.
    for n in 0..3 {
        let payload = format!("done {n}");
        publisher
            .publish("q2/done", payload.as_bytes(), QoS::ExactlyOnce, false)
            .await;
        assert_eq!(&s.receive().await.payload[..], payload.as_bytes());
    }
    publisher
        .publish("q2/open", b"open", QoS::ExactlyOnce, false)
        .await;
    let first = s.expect_publish().await;
    let pid = first.packet_id.expect("a QoS 2 PUBLISH has an id");
    assert_ne!(pid, 1);
    drop(s);

    let mut again = resume_after_crash(&h, id).await;
    let resent = again.expect_publish().await;
    assert_eq!(
        (resent.packet_id, &resent.payload[..]),
        (Some(pid), &b"open"[..]),
        "resent under the id the receiver saw"
    );
    again.expect_nothing().await;
    again.send(ack(PubRespKind::PubRec, pid)).await;
    assert_eq!(again.expect_resp(PubRespKind::PubRel).await.packet_id, pid);
    drop(again);

    // The PUBREL went out, so the PUBREC stage is stored: only the PUBREL comes back.
    let mut third = resume_after_crash(&h, id).await;
    assert_eq!(third.expect_resp(PubRespKind::PubRel).await.packet_id, pid);
    third.expect_nothing().await;
    third.send(ack(PubRespKind::PubComp, pid)).await;
    third.expect_nothing().await;
    drop(third);

    let mut fourth = resume_after_crash(&h, id).await;
    fourth.expect_nothing().await;
    assert!(h.store.messages(id).expect("messages").is_empty());
}

/// A message resent after a restart carries DUP=1 when the device may have had it before
/// (MQTT-3.3.1-1): of a session that was offline, exactly the messages it had been sent, not
/// those queued while it was away; of a session the crash cut off, every message (which had
/// gone out is not known; DUP=1 says "perhaps sent").
#[tokio::test]
async fn messages_resent_after_a_restart_carry_dup_when_they_may_have_been_sent() {
    let h = Harness::new();
    let id = "dup-after-restart";
    let (mut s, _) = h.persistent(V5, id).await;
    s.subscribe("dup/#", QoS::AtLeastOnce).await;
    let mut publisher = h.client(V5, "dup-publisher").await;
    publisher
        .publish("dup/sent", b"sent", QoS::AtLeastOnce, false)
        .await;
    let first = s.expect_publish().await;
    assert!(!first.dup, "first delivery");
    // Offline (the disconnect is seen), then one more message queues for the session.
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    publisher
        .publish("dup/queued", b"queued", QoS::AtLeastOnce, false)
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut again = resume_after_crash(&h, id).await;
    let resent = again.expect_publish().await;
    assert_eq!(
        (&resent.payload[..], resent.dup, resent.packet_id),
        (&b"sent"[..], true, first.packet_id),
        "sent before: DUP=1"
    );
    let queued = again.expect_publish().await;
    assert_eq!(
        (&queued.payload[..], queued.dup),
        (&b"queued"[..], false),
        "never sent: DUP=0"
    );
    // Both unacknowledged, still connected when the next broker starts on the store: both
    // may have arrived, so both go out with DUP=1.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = resume_after_crash(&h, id).await;
    for payload in [&b"sent"[..], b"queued"] {
        let p = third.expect_publish().await;
        assert_eq!((&p.payload[..], p.dup), (payload, true));
        third
            .send(ack(PubRespKind::PubAck, p.packet_id.unwrap_or(0)))
            .await;
    }
    third.expect_nothing().await;
    drop(again);
}

/// A persistent v5 session `id` with a Will on `wills/<id>` (QoS 1) of `delay` seconds.
async fn connect_with_will(h: &Harness, id: &str, delay: u32) -> Client {
    let mut c = h.stream(None);
    let mut p = connect_packet(V5, id, false);
    p.properties.session_expiry_interval = Some(600);
    let mut w = will(&format!("wills/{id}"), b"offline", QoS::AtLeastOnce, false);
    w.properties.will_delay_interval = Some(delay);
    p.will = Some(w);
    let ack = c.connect(p).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    c
}

/// A persistent session subscribed to every will, left offline so that wills queue for it.
async fn will_watcher(h: &Harness) {
    let (mut watcher, _) = h.persistent(V5, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
}

/// A delayed Will is part of its session's state (MQTT 5): pending when thingd restarts, it is
/// published when its delay ends, once, and a session resumed in time still cancels it.
#[tokio::test]
async fn a_pending_delayed_will_outlives_a_restart() {
    let mut h = Harness::new();
    will_watcher(&h).await;
    drop(connect_with_will(&h, "gone", 30).await);
    drop(connect_with_will(&h, "back", 30).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.restart().await;
    let (mut back, ack) = h.persistent(V5, "back").await;
    assert!(ack.session_present);
    skip(Duration::from_secs(31)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut watcher, _) = h.persistent(V5, "watcher").await;
    let got = watcher.receive().await;
    assert_eq!(got.topic.as_str(), "wills/gone");
    watcher.expect_nothing().await;
    drop(watcher);

    // Published once: the session is stored without it at once, so not even a crash (no
    // shutdown rewriting every session) brings it back. ("back" leaves normally, which
    // discards its will.)
    back.send(Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    }))
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let broker = broker_after_crash(&h);
    let mut watcher = resume_on(&broker, "watcher").await;
    skip(Duration::from_secs(31)).await;
    watcher.expect_nothing().await;
}

/// A connection cut off by a crash is a connection lost without DISCONNECT: the restarted
/// broker publishes the Will of a persistent session that was still connected.
#[tokio::test]
async fn the_will_of_a_connection_cut_off_by_a_crash_is_published() {
    let h = Harness::new();
    will_watcher(&h).await;
    // Held open (the first broker never sees it close) until the end.
    let _device = connect_with_will(&h, "device", 0).await;
    let broker = broker_after_crash(&h);
    let mut watcher = resume_on(&broker, "watcher").await;
    let got = watcher.receive().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("wills/device", &b"offline"[..])
    );
    watcher.expect_nothing().await;
}

/// QoS 2 from a persistent session across crashes: an id answered with PUBREC is still known
/// after a restart (the client's retransmission is answered, not delivered again), and an id
/// released with PUBCOMP is forgotten (the client's next message with it is delivered).
#[tokio::test]
async fn qos2_from_a_persistent_session_keeps_its_ids_across_a_crash() {
    let h = Harness::new();
    let (mut sub, _) = h.persistent(V5, "q2-reader").await;
    sub.subscribe("in/q2", QoS::AtLeastOnce).await;
    drop(sub);
    let (mut publisher, _) = h.persistent(V5, "q2-writer").await;
    publisher
        .send(publish("in/q2", b"once", QoS::ExactlyOnce, false, Some(7)))
        .await;
    assert_eq!(
        publisher.expect_resp(PubRespKind::PubRec).await.packet_id,
        7
    );

    // Crash before PUBREL: the retransmission is recognised.
    let broker = broker_after_crash(&h);
    let mut publisher = resume_on(&broker, "q2-writer").await;
    let mut again = publish("in/q2", b"once", QoS::ExactlyOnce, false, Some(7));
    if let Packet::Publish(p) = &mut again {
        p.dup = true;
    }
    publisher.send(again).await;
    assert_eq!(
        publisher.expect_resp(PubRespKind::PubRec).await.packet_id,
        7
    );
    publisher.send(ack(PubRespKind::PubRel, 7)).await;
    assert_eq!(
        publisher.expect_resp(PubRespKind::PubComp).await.packet_id,
        7
    );

    // Crash after PUBCOMP: 7 is free again, and a new message with it is delivered.
    let broker = broker_after_crash(&h);
    let mut publisher = resume_on(&broker, "q2-writer").await;
    publisher
        .send(publish("in/q2", b"twice", QoS::ExactlyOnce, false, Some(7)))
        .await;
    assert_eq!(
        publisher.expect_resp(PubRespKind::PubRec).await.packet_id,
        7
    );
    let mut reader = resume_on(&broker, "q2-reader").await;
    let payloads = [
        reader.expect_publish().await.payload,
        reader.expect_publish().await.payload,
    ];
    assert_eq!(payloads, [&b"once"[..], &b"twice"[..]]);
    reader.expect_nothing().await;
}

/// A Will its connection's policy does not let it publish is not stored with the session, so
/// a restart (where that policy is no longer at hand) cannot publish it either.
#[tokio::test]
async fn a_will_the_policy_refuses_is_not_published_after_a_crash() {
    let h = auth_harness();
    let (mut watcher, _) = h.persistent(V5, "watcher").await;
    watcher.subscribe("deny/#", QoS::AtLeastOnce).await;
    drop(watcher);
    let mut device = h.stream(None);
    let mut p = connect_packet(V5, "device", false);
    p.properties.session_expiry_interval = Some(600);
    p.will = Some(will("deny/device", b"offline", QoS::AtLeastOnce, false));
    assert_eq!(device.connect(p).await.reason, ReasonCode::Success);
    let broker = broker_after_crash(&h);
    let mut watcher = resume_on(&broker, "watcher").await;
    watcher.expect_nothing().await;
}

/// A clean session (3.1.1 cleanSession=1, or MQTT 5 without session expiry) with a Will
/// `wills/<id>` (QoS 1, `delay` seconds, which a clean session cuts to none).
async fn connect_clean_with_will(
    h: &Harness,
    version: thingd_mqtt::ProtocolVersion,
    id: &str,
) -> Client {
    let mut c = h.stream(None);
    let mut p = connect_packet(version, id, true);
    let mut w = will(&format!("wills/{id}"), b"offline", QoS::AtLeastOnce, false);
    if version == V5 {
        w.properties.will_delay_interval = Some(30);
    }
    p.will = Some(w);
    assert_eq!(c.connect(p).await.reason, ReasonCode::Success);
    c
}

/// A clean session's Will is not lost with the process: the connection a crash cut off was
/// lost without DISCONNECT, so the restarted broker publishes its Will (once: a second crash
/// does not bring it back). Real presence tracking ("device/+/status" = "offline") relies on it.
#[tokio::test]
async fn the_will_of_a_clean_session_cut_off_by_a_crash_is_published() {
    let h = Harness::new();
    will_watcher(&h).await;
    // Held open (the first broker never sees them close) until the end.
    let _v3 = connect_clean_with_will(&h, V3, "clean-v3").await;
    let _v5 = connect_clean_with_will(&h, V5, "clean-v5").await;
    let broker = broker_after_crash(&h);
    let mut watcher = resume_on(&broker, "watcher").await;
    let mut topics = Vec::new();
    for _ in 0..2 {
        let got = watcher.receive().await;
        assert_eq!(&got.payload[..], b"offline");
        topics.push(got.topic.to_string());
    }
    topics.sort();
    assert_eq!(topics, ["wills/clean-v3", "wills/clean-v5"]);
    watcher.expect_nothing().await;
    drop(watcher);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let broker = broker_after_crash(&h);
    let mut watcher = resume_on(&broker, "watcher").await;
    watcher.expect_nothing().await;
}

/// What a clean session stores for its Will goes when the Will does: a client that leaves
/// with DISCONNECT (which discards the Will), one whose connection drops (the Will goes out
/// then), and one without a Will leave nothing for a later crash to publish — and no row.
#[tokio::test]
async fn a_clean_sessions_will_is_forgotten_when_its_connection_ends() {
    let h = Harness::new();
    will_watcher(&h).await;
    let leaving = connect_clean_with_will(&h, V5, "leaving").await;
    let dropping = connect_clean_with_will(&h, V3, "dropping").await;
    let _plain = h.client(V3, "no-will").await;
    let rows = |h: &Harness| {
        h.store
            .sessions()
            .expect("sessions")
            .into_iter()
            .map(|r| r.client_id)
            .filter(|id| id != "watcher")
            .collect::<Vec<_>>()
    };
    let mut stored = rows(&h);
    stored.sort();
    assert_eq!(stored, ["dropping", "leaving"]);

    leaving.disconnect().await;
    drop(dropping);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rows(&h), Vec::<String>::new());
    // The dropped connection's Will went out once, then.
    let broker = broker_after_crash(&h);
    let mut watcher = resume_on(&broker, "watcher").await;
    assert_eq!(watcher.receive().await.topic.as_str(), "wills/dropping");
    watcher.expect_nothing().await;
}
