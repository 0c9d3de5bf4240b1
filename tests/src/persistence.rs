//! Durability with a real `thingd serve` child process: persistent sessions, their queued
//! QoS 1 messages and retained messages survive a SIGTERM restart and a kill -9. Anything
//! acknowledged to a publisher (PUBACK) must still be delivered after a crash.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use thingd_tests::{DeviceFiles, ProcessServer, issue_device, payloads, run_paho};

const RUN: Duration = Duration::from_secs(30);

// Field order is drop order: stop the server before deleting its data directory.
struct Env {
    server: ProcessServer,
    device: DeviceFiles,
    _dir: tempfile::TempDir,
}

/// Runs a step of a test written with the raw client; its error fails the test.
fn step<T>(future: impl Future<Output = anyhow::Result<T>>) -> T {
    block_on(future).unwrap_or_else(|error| panic!("{error:#}"))
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// A data directory with one device certificate, and `thingd serve` on it.
fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let device = block_on(issue_device(dir.path(), "durable")).expect("thingd cert issue");
    // Every listener on an OS-chosen port, so tests can run side by side.
    let server =
        ProcessServer::start(dir.path(), &["--api", "127.0.0.1:0"]).expect("thingd serve starts");
    Env {
        server,
        device,
        _dir: dir,
    }
}

impl Env {
    /// kill -9, then thingd again on the same data directory and ports.
    fn crash_and_restart(&mut self) {
        self.server
            .restart()
            .expect("thingd starts again after kill -9");
    }

    fn paho(&self, scenario: &str, args: &[&str]) -> Value {
        run_paho(scenario, &self.device, self.server.mqtts.port(), args, RUN)
            .unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// Creates a persistent session (`client_id`, MQTT `version`) subscribed to `topic` at QoS 1
    /// and leaves it offline.
    fn persistent_subscriber(&self, version: &str, client_id: &str, topic: &str) {
        self.persistent_subscriber_qos(version, client_id, topic, 1);
    }

    fn persistent_subscriber_qos(&self, version: &str, client_id: &str, topic: &str, qos: u8) {
        let qos_arg = qos.to_string();
        let result = self.paho(
            "persist-subscribe",
            &[
                "--version",
                version,
                "--client-id",
                client_id,
                "--topic",
                topic,
                "--qos",
                &qos_arg,
                "--session-expiry",
                "600",
            ],
        );
        assert_eq!(result["granted"], serde_json::json!([qos]), "{result:#}");
    }

    /// Publishes `count` QoS 1 messages `<prefix><i>`, each acknowledged before the next.
    fn publish(&self, topic: &str, count: usize, prefix: &str) {
        self.publish_qos(topic, count, prefix, 1);
    }

    /// Publishes `count` messages at `qos`, each acknowledged (PUBACK / PUBCOMP) before the next.
    fn publish_qos(&self, topic: &str, count: usize, prefix: &str, qos: u8) {
        let (count, qos) = (count.to_string(), qos.to_string());
        let result = self.paho(
            "publish",
            &[
                "--topic", topic, "--qos", &qos, "--count", &count, "--prefix", prefix,
            ],
        );
        assert_eq!(
            result["sent"].as_array().map(Vec::len),
            count.parse().ok(),
            "{result:#}"
        );
    }

    fn publish_retained(&self, topic: &str, payload: &str) {
        self.paho(
            "publish",
            &[
                "--topic",
                topic,
                "--qos",
                "1",
                "--count",
                "1",
                "--retain",
                "--payload",
                payload,
            ],
        );
    }

    /// Resumes the session and returns the payloads it delivers (expecting `count`, at QoS 1).
    fn resume(&self, version: &str, client_id: &str, count: usize) -> Vec<String> {
        self.resume_qos(version, client_id, count, 1)
    }

    fn resume_qos(&self, version: &str, client_id: &str, count: usize, qos: u8) -> Vec<String> {
        let count = count.to_string();
        let result = self.paho(
            "persist-receive",
            &[
                "--version",
                version,
                "--client-id",
                client_id,
                "--count",
                &count,
                "--session-expiry",
                "600",
                "--wait",
                "10",
            ],
        );
        assert_eq!(
            result["connack"]["session_present"], true,
            "the session survived: {result:#}"
        );
        assert_eq!(
            payloads(&result["extra"]),
            Vec::<String>::new(),
            "no duplicates: {result:#}"
        );
        for message in result["received"].as_array().into_iter().flatten() {
            assert_eq!(message["qos"], qos, "{message}");
        }
        payloads(&result["received"])
    }

    /// What a new subscriber to `topic` gets on SUBSCRIBE, as (payload, retain flag).
    fn retained(&self, topic: &str) -> Vec<(String, bool)> {
        let result = self.paho("retain-get", &["--topic", topic, "--wait", "2"]);
        result["received"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["payload"].as_str().unwrap_or_default().to_owned(),
                    m["retain"] == true,
                )
            })
            .collect()
    }
}

fn numbered(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn sessions_and_retained_survive_a_sigterm_restart() {
    let mut env = env();
    let topic = "e2e/durable/restart";
    env.persistent_subscriber("5", "keeper-v5", topic);
    env.persistent_subscriber("311", "keeper-v311", topic);
    env.publish(topic, 5, "before-");
    env.publish_retained("e2e/durable/restart/retained", "kept across restart");

    env.server.terminate().expect("thingd stops on SIGTERM");
    env.server.restart().expect("thingd starts again");

    // A message published after the restart proves the subscriptions themselves were kept.
    env.publish(topic, 1, "after-");
    let mut want = numbered("before-", 5);
    want.push("after-0".to_owned());
    assert_eq!(
        env.resume("5", "keeper-v5", 6),
        want,
        "MQTT 5 session (Session Expiry) after restart"
    );
    assert_eq!(
        env.resume("311", "keeper-v311", 6),
        want,
        "MQTT 3.1.1 session (clean session 0) after restart"
    );
    assert_eq!(
        env.retained("e2e/durable/restart/retained"),
        [("kept across restart".to_owned(), true)]
    );
}

fn queued_messages_survive_kill9(version: &str) {
    let mut env = env();
    let topic = "e2e/durable/crash";
    let client_id = format!("offline-{version}");
    env.persistent_subscriber(version, &client_id, topic);
    env.publish(topic, 50, "acked-");

    env.crash_and_restart();

    assert_eq!(
        env.resume(version, &client_id, 50),
        numbered("acked-", 50),
        "every PUBACKed QoS 1 message queued for the offline session is delivered after kill -9, in order"
    );
}

#[test]
fn v5_queued_qos1_messages_survive_kill9() {
    queued_messages_survive_kill9("5");
}

#[test]
fn v311_queued_qos1_messages_survive_kill9() {
    queued_messages_survive_kill9("311");
}

#[test]
fn v5_queued_qos2_messages_survive_kill9() {
    let mut env = env();
    let topic = "e2e/durable/crash-qos2";
    env.persistent_subscriber_qos("5", "offline-qos2", topic, 2);
    env.publish_qos(topic, 20, "exactly-once-", 2);

    env.crash_and_restart();

    assert_eq!(
        env.resume_qos("5", "offline-qos2", 20, 2),
        numbered("exactly-once-", 20),
        "every completed (PUBCOMP) QoS 2 message queued for the offline session is delivered once after kill -9"
    );
}

#[test]
fn retained_messages_survive_kill9() {
    let mut env = env();
    env.publish_retained("e2e/durable/retained/kept", "survivor");
    env.publish_retained("e2e/durable/retained/deleted", "doomed");
    env.paho(
        "publish",
        &[
            "--topic",
            "e2e/durable/retained/deleted",
            "--qos",
            "1",
            "--retain",
            "--payload",
            "",
            "--count",
            "1",
        ],
    );

    env.crash_and_restart();

    assert_eq!(
        env.retained("e2e/durable/retained/kept"),
        [("survivor".to_owned(), true)],
        "retained after kill -9"
    );
    assert_eq!(
        env.retained("e2e/durable/retained/deleted"),
        [],
        "a deleted retained message stays deleted"
    );
}

#[test]
fn delivered_but_unacknowledged_messages_survive_kill9() {
    let mut env = env();
    let topic = "e2e/durable/inflight";
    env.persistent_subscriber("5", "slow-acker", topic);
    env.publish(topic, 3, "inflight-");
    // The subscriber takes the three messages but never sends PUBACK, then its socket drops.
    let taken = env.paho(
        "persist-receive-unacked",
        &[
            "--version",
            "5",
            "--client-id",
            "slow-acker",
            "--count",
            "3",
            "--session-expiry",
            "600",
        ],
    );
    assert_eq!(
        payloads(&taken["received"]),
        numbered("inflight-", 3),
        "{taken:#}"
    );

    env.crash_and_restart();

    assert_eq!(
        env.resume("5", "slow-acker", 3),
        numbered("inflight-", 3),
        "QoS 1 messages never acknowledged by the subscriber are delivered again after kill -9"
    );
}

/// CONNECT of a persistent MQTT 5 session (ten minutes' expiry) for the raw client.
fn persistent_raw(id: &str) -> crate::raw_protocol::Connect {
    crate::raw_protocol::Connect {
        clean: false,
        props: crate::raw_protocol::prop::u32(0x11, 600),
        ..crate::raw_protocol::Connect::v5(id)
    }
}

/// Resumes a persistent session with a raw client; fails if the session is gone.
async fn resume_raw(
    addr: std::net::SocketAddr,
    device: &DeviceFiles,
    session: &crate::raw_protocol::Connect,
) -> anyhow::Result<crate::raw_protocol::RawClient> {
    let (client, connack) =
        crate::raw_protocol::RawClient::connect_at(addr, device, session).await?;
    anyhow::ensure!(connack.session_present, "the session is gone: {connack:?}");
    Ok(client)
}

/// QoS 2 to a persistent session across kill -9, seen by a client written for these tests
/// (no library's session handling in between): a message the device received but did not
/// answer comes back under the packet id it saw, with DUP=1, and once the device has answered PUBREC and
/// been sent PUBREL only the PUBREL comes back — the device may already have passed the
/// message on and forgotten the id, and a second PUBLISH would reach it twice.
#[test]
fn qos2_resumes_at_its_stage_after_kill9() {
    use crate::raw_protocol::{Connect, PUBCOMP, PUBREC, RawClient, ack, kind};

    let mut env = env();
    let id = "q2-durable";
    let session = persistent_raw(id);
    let open_id = step(async {
        let (mut sub, _) = RawClient::connect_at(env.server.mqtts, &env.device, &session).await?;
        assert_eq!(
            sub.subscribe(true, 1, &[], &[("e2e/q2/#", 2)]).await?,
            vec![2]
        );
        let (mut publisher, _) =
            RawClient::connect_at(env.server.mqtts, &env.device, &Connect::v5("q2-pub")).await?;
        // Two messages completed first, so that the open one does not have the first id.
        for (pkid, payload) in [(1u16, &b"done 1"[..]), (2, b"done 2"), (3, b"open")] {
            publisher.publish_qos2("e2e/q2/t", pkid, payload).await?;
            let got = sub.expect_publish(true).await?;
            assert_eq!(got.payload.as_ref(), payload);
            if payload == b"open" {
                return anyhow::Ok(got.pkid);
            }
            sub.send(&ack(PUBREC, got.pkid)).await?;
            assert_eq!(
                sub.expect(kind::PUBREL).await?.ack(kind::PUBREL)?,
                (got.pkid, 0)
            );
            sub.send(&ack(PUBCOMP, got.pkid)).await?;
        }
        unreachable!("the loop returns at the open message")
    });

    env.crash_and_restart();
    step(async {
        let mut sub = resume_raw(env.server.mqtts, &env.device, &session).await?;
        let again = sub.expect_publish(true).await?;
        assert_eq!(
            (again.pkid, again.payload.as_ref()),
            (open_id, &b"open"[..]),
            "the unanswered message comes back under the id the device saw"
        );
        assert!(again.dup, "a re-delivery carries DUP=1 (MQTT-3.3.1-1)");
        sub.expect_silence().await?;
        sub.send(&ack(PUBREC, open_id)).await?;
        assert_eq!(
            sub.expect(kind::PUBREL).await?.ack(kind::PUBREL)?,
            (open_id, 0)
        );
        anyhow::Ok(())
    });

    env.crash_and_restart();
    step(async {
        let mut sub = resume_raw(env.server.mqtts, &env.device, &session).await?;
        assert_eq!(
            sub.expect(kind::PUBREL).await?.ack(kind::PUBREL)?,
            (open_id, 0),
            "after PUBREL only the PUBREL comes back, not the message"
        );
        sub.expect_silence().await?;
        sub.send(&ack(PUBCOMP, open_id)).await?;
        sub.expect_silence().await?;
        anyhow::Ok(())
    });
}

/// The Will of a device whose connection a crash cut off is published after the restart (the
/// connection was lost without DISCONNECT), and reaches a persistent subscriber once.
#[test]
fn the_will_of_a_device_connected_at_kill9_is_published_after_restart() {
    use crate::raw_protocol::{Connect, PUBACK, RawClient, Will, ack};

    let mut env = env();
    let watcher = persistent_raw("will-watcher");
    let _device = step(async {
        let (mut w, _) = RawClient::connect_at(env.server.mqtts, &env.device, &watcher).await?;
        assert_eq!(
            w.subscribe(true, 1, &[], &[("e2e/wills/#", 1)]).await?,
            vec![1]
        );
        drop(w);
        let device = Connect {
            will: Some(Will {
                topic: b"e2e/wills/sensor-7".to_vec(),
                payload: b"offline".to_vec(),
                qos: 1,
                retain: false,
                props: Vec::new(),
            }),
            ..persistent_raw("sensor-7")
        };
        let (device, _) = RawClient::connect_at(env.server.mqtts, &env.device, &device).await?;
        anyhow::Ok(device)
    });

    env.crash_and_restart();
    step(async {
        let mut w = resume_raw(env.server.mqtts, &env.device, &watcher).await?;
        let got = w.expect_publish(true).await?;
        assert_eq!(
            (got.topic.as_str(), got.payload.as_ref()),
            ("e2e/wills/sensor-7", &b"offline"[..])
        );
        w.send(&ack(PUBACK, got.pkid)).await?;
        w.expect_silence().await?;
        anyhow::Ok(())
    });
}

/// QoS 2 from a device with a persistent session across kill -9: a message thingd answered
/// with PUBREC and the device sends again after the restart is not delivered twice, and once
/// the exchange is complete the device's next message with the same packet id is delivered,
/// not taken for a retransmission.
#[test]
fn qos2_from_a_device_is_delivered_once_across_kill9() {
    use crate::raw_protocol::{PUBACK, PUBREL, RawClient, ack, kind, publish, with_dup};

    let mut env = env();
    let (reader, writer) = (persistent_raw("q2-reader"), persistent_raw("q2-writer"));
    let first = publish(true, "e2e/q2in/t", 2, false, 7, &[], b"once");
    step(async {
        let (mut r, _) = RawClient::connect_at(env.server.mqtts, &env.device, &reader).await?;
        assert_eq!(
            r.subscribe(true, 1, &[], &[("e2e/q2in/#", 1)]).await?,
            vec![1]
        );
        drop(r);
        let (mut w, _) = RawClient::connect_at(env.server.mqtts, &env.device, &writer).await?;
        w.send(&first).await?;
        assert_eq!(w.expect(kind::PUBREC).await?.ack(kind::PUBREC)?, (7, 0));
        anyhow::Ok(())
    });

    env.crash_and_restart();
    step(async {
        let mut w = resume_raw(env.server.mqtts, &env.device, &writer).await?;
        w.send(&with_dup(first.clone())).await?;
        assert_eq!(w.expect(kind::PUBREC).await?.ack(kind::PUBREC)?, (7, 0));
        w.send(&ack(PUBREL, 7)).await?;
        assert_eq!(w.expect(kind::PUBCOMP).await?.ack(kind::PUBCOMP)?, (7, 0));
        anyhow::Ok(())
    });

    env.crash_and_restart();
    step(async {
        let mut w = resume_raw(env.server.mqtts, &env.device, &writer).await?;
        w.publish_qos2("e2e/q2in/t", 7, b"twice").await?;
        let mut r = resume_raw(env.server.mqtts, &env.device, &reader).await?;
        let mut got = Vec::new();
        for _ in 0..2 {
            let p = r.expect_publish(true).await?;
            r.send(&ack(PUBACK, p.pkid)).await?;
            got.push(p.payload);
        }
        assert_eq!(got, [&b"once"[..], &b"twice"[..]]);
        r.expect_silence().await?;
        anyhow::Ok(())
    });
}

/// `mosquitto_sub` (MQTT 3.1.1, clean session) with `device`'s files against `addr`.
fn mosquitto_sub(addr: std::net::SocketAddr, device: &DeviceFiles) -> std::process::Command {
    let mut command = std::process::Command::new("stdbuf");
    command
        .args(["-oL", "mosquitto_sub", "-V", "mqttv311", "--cafile"])
        .arg(&device.ca)
        .arg("--cert")
        .arg(&device.cert)
        .arg("--key")
        .arg(&device.key)
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()]);
    command
}

/// The presence pattern with a clean session and a client nobody here wrote: a device
/// (`mosquitto_sub`, MQTT 3.1.1, cleanSession=1) sets a retained Will "offline" on its status
/// topic. thingd is killed while it is connected; a connection cut off that way was lost
/// without DISCONNECT, so after the restart the status topic must say "offline" — before,
/// nothing of a clean session was stored and the Will was lost with the process.
#[test]
fn a_clean_devices_retained_will_marks_it_offline_after_kill9() {
    use thingd_tests::Watched;

    let mut env = env();
    let status = "e2e/presence/sensor-9";
    let mut device = mosquitto_sub(env.server.mqtts, &env.device);
    device
        .args(["-d", "-i", "sensor-9", "-t", "e2e/presence/sensor-9/cmd"])
        .args(["--will-topic", status, "--will-payload", "offline"])
        .args(["--will-qos", "1", "--will-retain"]);
    let mut device = Watched::spawn(&mut device, "mosquitto_sub as the device")
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Subscribed, so connected (the CONNACK came first).
    device
        .wait_for_line(|l| l.contains("received SUBACK"), RUN)
        .unwrap_or_else(|e| panic!("{e:#}"));

    env.server
        .restart()
        .expect("thingd starts again after kill -9");
    let mut reader = mosquitto_sub(env.server.mqtts, &env.device);
    reader.args(["-i", "status-reader", "-t", "e2e/presence/#", "-q", "1"]);
    reader.args(["-C", "1", "-W", "10"]);
    reader.args(["-F", "%r %q %t %p"]);
    let read = Watched::spawn(&mut reader, "mosquitto_sub reading the status")
        .and_then(|r| r.finish(RUN))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        read.stdout.trim(),
        "1 1 e2e/presence/sensor-9 offline",
        "the retained Will is the device's status after the restart: {read}"
    );
    drop(device);
}

/// Presence kept from lifecycle events, across kill -9. A watcher follows two devices'
/// `$aws/events/presence/...` topics from a persistent session. One device leaves with
/// DISCONNECT before the crash, the other is connected when thingd is killed: after the
/// restart the watcher gets that one's disconnected event — `SERVER_ERROR`, the session
/// identifier and version number of its connected event — and nothing more about the first;
/// the device's next connection numbers on from the lost one (a consumer ordering events by
/// `versionNumber` would otherwise drop it).
#[test]
fn a_device_connected_at_kill9_is_reported_disconnected_after_the_restart() {
    use crate::raw_protocol::{Connect, DISCONNECT, RawClient};

    let mut env = env();
    let watcher = presence_watcher();
    let filters = [
        ("$aws/events/presence/+/sensor-3", 1),
        ("$aws/events/presence/+/leaves-early", 1),
    ];
    let (device, connected) = step(async {
        let (mut w, _) = RawClient::connect_at(env.server.mqtts, &env.device, &watcher).await?;
        assert_eq!(w.subscribe(true, 1, &[], &filters).await?, vec![1, 1]);
        let early = Connect::v311("leaves-early");
        let (mut early, _) = RawClient::connect_at(env.server.mqtts, &env.device, &early).await?;
        let (topic, _) = next_event(&mut w).await?;
        assert_eq!(topic, "$aws/events/presence/connected/leaves-early");
        early.send(&DISCONNECT).await?;
        let (topic, off) = next_event(&mut w).await?;
        assert_eq!(topic, "$aws/events/presence/disconnected/leaves-early");
        assert_eq!(off["disconnectReason"], "CLIENT_INITIATED_DISCONNECT");
        let sensor = Connect::v311("sensor-3");
        let (device, _) = RawClient::connect_at(env.server.mqtts, &env.device, &sensor).await?;
        let (topic, on) = next_event(&mut w).await?;
        assert_eq!(topic, "$aws/events/presence/connected/sensor-3");
        anyhow::Ok((device, on))
    });
    // Time for the first device's record to be deleted (a detached write, committed within
    // milliseconds).
    std::thread::sleep(Duration::from_millis(300));

    env.server
        .restart()
        .expect("thingd starts again after kill -9");
    drop(device);
    step(async {
        let mut w = resume_raw(env.server.mqtts, &env.device, &watcher).await?;
        let (topic, off) = next_event(&mut w).await?;
        assert_eq!(topic, "$aws/events/presence/disconnected/sensor-3");
        assert_eq!(off["eventType"], "disconnected");
        assert_eq!(off["disconnectReason"], "SERVER_ERROR");
        assert_eq!(off["clientInitiatedDisconnect"], false);
        for field in ["sessionIdentifier", "versionNumber", "principalIdentifier"] {
            assert_eq!(off[field], connected[field], "{field}");
        }
        let sensor = Connect::v311("sensor-3");
        let (_back, _) = RawClient::connect_at(env.server.mqtts, &env.device, &sensor).await?;
        let (topic, on) = next_event(&mut w).await?;
        assert_eq!(topic, "$aws/events/presence/connected/sensor-3");
        assert_eq!(
            on["versionNumber"].as_u64(),
            connected["versionNumber"].as_u64().map(|v| v + 1)
        );
        w.expect_silence().await?;
        anyhow::Ok(())
    });
}

/// A watcher that subscribes to disconnected events after the devices connected (a
/// monitoring service started after the fleet) still learns of their connections lost with
/// a kill -9: subscribing makes thingd record the connections already open.
#[test]
fn connections_open_before_their_watcher_subscribed_are_reported_after_kill9() {
    use crate::raw_protocol::{Connect, RawClient};

    let mut env = env();
    let watcher = presence_watcher();
    // Both stay connected until the kill.
    let (device, watching) = step(async {
        let sensor = Connect::v311("sensor-6");
        let (device, _) = RawClient::connect_at(env.server.mqtts, &env.device, &sensor).await?;
        let (mut w, _) = RawClient::connect_at(env.server.mqtts, &env.device, &watcher).await?;
        let filters = [("$aws/events/presence/disconnected/+", 1)];
        assert_eq!(w.subscribe(true, 1, &[], &filters).await?, vec![1]);
        anyhow::Ok((device, w))
    });
    // Time for the records to be written (a detached write, committed within milliseconds).
    std::thread::sleep(Duration::from_millis(300));

    env.server
        .restart()
        .expect("thingd starts again after kill -9");
    drop((device, watching));
    step(async {
        let mut w = resume_raw(env.server.mqtts, &env.device, &watcher).await?;
        let mut gone = Vec::new();
        for _ in 0..2 {
            let (topic, off) = next_event(&mut w).await?;
            assert_eq!(off["disconnectReason"], "SERVER_ERROR", "{topic}");
            gone.push(topic);
        }
        gone.sort();
        // The watcher's own connection matches its filter too.
        assert_eq!(
            gone,
            [
                "$aws/events/presence/disconnected/presence-watcher",
                "$aws/events/presence/disconnected/sensor-6",
            ]
        );
        w.expect_silence().await?;
        anyhow::Ok(())
    });
}

/// A persistent MQTT 5 session (kept ten minutes) that follows lifecycle events.
fn presence_watcher() -> crate::raw_protocol::Connect {
    use crate::raw_protocol::{Connect, prop};
    Connect {
        clean: false,
        props: prop::u32(0x11, 600),
        ..Connect::v5("presence-watcher")
    }
}

/// The next lifecycle event `w` gets, acknowledged: its topic and JSON payload.
async fn next_event(w: &mut crate::raw_protocol::RawClient) -> anyhow::Result<(String, Value)> {
    use crate::raw_protocol::{PUBACK, ack};
    let got = w.expect_publish(true).await?;
    w.send(&ack(PUBACK, got.pkid)).await?;
    Ok((got.topic, serde_json::from_slice(&got.payload)?))
}

/// A graceful stop (SIGTERM) closes every connection itself: their disconnected events go
/// out then (`SERVER_INITIATED_DISCONNECT`, queued for a persistent watcher), and the next
/// start does not report them a second time as lost with the process.
#[test]
fn a_sigterm_reports_each_disconnect_once() {
    use crate::raw_protocol::{Connect, RawClient};

    let mut env = env();
    let watcher = presence_watcher();
    let device = step(async {
        let (mut w, _) = RawClient::connect_at(env.server.mqtts, &env.device, &watcher).await?;
        let filters = [("$aws/events/presence/+/sensor-4", 1)];
        assert_eq!(w.subscribe(true, 1, &[], &filters).await?, vec![1]);
        let sensor = Connect::v311("sensor-4");
        let (device, _) = RawClient::connect_at(env.server.mqtts, &env.device, &sensor).await?;
        let (topic, _) = next_event(&mut w).await?;
        assert_eq!(topic, "$aws/events/presence/connected/sensor-4");
        drop(w);
        anyhow::Ok(device)
    });
    env.server.terminate().expect("thingd stops on SIGTERM");
    drop(device);
    env.server.restart().expect("thingd starts again");
    step(async {
        let mut w = resume_raw(env.server.mqtts, &env.device, &watcher).await?;
        let (topic, off) = next_event(&mut w).await?;
        assert_eq!(topic, "$aws/events/presence/disconnected/sensor-4");
        assert_eq!(off["disconnectReason"], "SERVER_INITIATED_DISCONNECT");
        w.expect_silence().await?;
        anyhow::Ok(())
    });
}
