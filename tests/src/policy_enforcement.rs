//! IoT policies enforced on live MQTT connections, for a device set up with
//! `thingd device provision` (a least-privilege policy) and for policies changed while the
//! device is connected.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use thingd_store::registry::security::{attachments, policies};
use thingd_tests::{DeviceFiles, TestServer, thingd_binary};

use crate::raw_protocol::{Connect, Incoming, RawClient, kind, publish};

type TestResult = anyhow::Result<()>;

const WAIT: Duration = Duration::from_secs(5);
/// Longer than the registry watcher's poll interval (250 ms).
const REGISTRY_PROPAGATION: Duration = Duration::from_millis(800);

/// Runs `thingd device provision` against the test server's data directory.
async fn provision(server: &TestServer, thing: &str) -> anyhow::Result<DeviceFiles> {
    let out = server.data_dir.path().join("provisioned").join(thing);
    let output = Command::new(thingd_binary()?)
        .args(["device", "provision", thing, "--port"])
        .arg(server.mqtts().port().to_string())
        .arg("--out")
        .arg(&out)
        .arg("--data-dir")
        .arg(server.data_dir.path())
        .output()?;
    if !output.status.success() {
        bail!(
            "provision failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let id = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate "))
        .and_then(|rest| rest.split_whitespace().next())
        .context("no certificate id printed")?
        .to_owned();
    Ok(DeviceFiles {
        id,
        cert: out.join("certificate.pem.crt"),
        key: out.join("private.pem.key"),
        ca: out.join("root-ca.pem"),
        dir: out,
    })
}

fn cert_arn(id: &str) -> String {
    format!("arn:aws:iot:us-east-1:123456789012:cert/{id}")
}

async fn expect_closed(client: &mut RawClient) -> TestResult {
    match client.recv_within(WAIT).await? {
        Incoming::Closed => Ok(()),
        Incoming::Frame(f) if f.kind == kind::DISCONNECT => Ok(()),
        Incoming::Frame(f) => bail!(
            "expected the connection to close, got packet type {}",
            f.kind
        ),
    }
}

async fn next_frame(client: &mut RawClient) -> anyhow::Result<crate::raw_protocol::Frame> {
    match client.recv_within(WAIT).await? {
        Incoming::Frame(f) => Ok(f),
        Incoming::Closed => bail!("connection closed"),
    }
}

/// Sends a QoS 1 MQTT 5 PUBLISH and reads the PUBACK that answers it: (packet id, reason).
async fn publish_acked(
    client: &mut RawClient,
    topic: &str,
    retain: bool,
    pkid: u16,
    payload: &[u8],
) -> anyhow::Result<(u16, u8)> {
    client
        .send(&publish(true, topic, 1, retain, pkid, &[], payload))
        .await?;
    next_frame(client).await?.ack(kind::PUBACK)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_device_has_exactly_its_own_topics() -> TestResult {
    let server = TestServer::start().await?;
    let device = provision(&server, "MyJourneyIoTDevice").await?;
    for file in [
        "certificate.pem.crt",
        "private.pem.key",
        "root-ca.pem",
        "endpoint.txt",
        "aws_certificate.h",
    ] {
        assert!(device.dir.join(file).exists(), "{file} written");
    }
    let header = std::fs::read_to_string(device.dir.join("aws_certificate.h"))?;
    assert!(header.contains("static const char AWS_CERTIFICATE[] ="));
    assert!(header.contains("\"-----BEGIN CERTIFICATE-----\\n\""));

    // Allowed: its own shadow update topic and things/<name>/..., in both directions.
    let mut client = RawClient::v5(&server, &device, "MyJourneyIoTDevice").await?;
    let codes = client
        .subscribe(true, 1, &[], &[("things/MyJourneyIoTDevice/#", 1)])
        .await?;
    assert_eq!(codes, vec![1]);
    client
        .send(&publish(
            true,
            "things/MyJourneyIoTDevice/telemetry",
            1,
            false,
            2,
            &[],
            b"{\"temp\":32}",
        ))
        .await?;
    let mut got_ack = false;
    let mut got_message = false;
    while !(got_ack && got_message) {
        let frame = next_frame(&mut client).await?;
        match frame.kind {
            kind::PUBACK => {
                assert_eq!(frame.ack(kind::PUBACK)?, (2, 0x00));
                got_ack = true;
            }
            kind::PUBLISH => {
                let p = frame.publish(true)?;
                assert_eq!(p.topic, "things/MyJourneyIoTDevice/telemetry");
                if p.qos > 0 {
                    client.send(&crate::raw_protocol::ack(0x40, p.pkid)).await?;
                }
                got_message = true;
            }
            other => bail!("unexpected packet type {other}"),
        }
    }
    client
        .send(&publish(
            true,
            "$aws/things/MyJourneyIoTDevice/shadow/update",
            1,
            false,
            3,
            &[],
            b"{}",
        ))
        .await?;
    assert_eq!(next_frame(&mut client).await?.ack(kind::PUBACK)?, (3, 0x00));

    // Denied in MQTT 5: reason code 0x87 on PUBACK and SUBACK, the connection stays.
    client
        .send(&publish(
            true,
            "things/SomeoneElse/telemetry",
            1,
            false,
            4,
            &[],
            b"x",
        ))
        .await?;
    assert_eq!(next_frame(&mut client).await?.ack(kind::PUBACK)?, (4, 0x87));
    let codes = client.subscribe(true, 5, &[], &[("#", 1)]).await?;
    assert_eq!(codes, vec![0x87]);

    // Another client id is not allowed to connect: v5 CONNACK 0x87.
    let mut other = RawClient::open(&server, &device).await?;
    other.send(&Connect::v5("not-my-name").bytes()).await?;
    let ack = next_frame(&mut other).await?.connack(true)?;
    assert_eq!(ack.code, 0x87);

    // Denied in MQTT 3.1.1: the connection is closed, as AWS IoT does.
    let mut v311 = RawClient::v311(&server, &device, "MyJourneyIoTDevice").await?;
    v311.send(&publish(false, "elsewhere", 1, false, 1, &[], b"x"))
        .await?;
    expect_closed(&mut v311).await?;
    let mut v311 = RawClient::open(&server, &device).await?;
    v311.send(&Connect::v311("not-my-name").bytes()).await?;
    expect_closed(&mut v311).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_variables_receive_and_retain_are_enforced_and_changes_apply_to_live_connections()
-> TestResult {
    let server = TestServer::start().await?;
    let device = provision(&server, "sensor-1").await?;
    let store = server.running.store.clone();
    let arn = cert_arn(&device.id);
    let document = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}",
         "Condition":{"Bool":{"iot:Connection.Thing.IsAttached":"true"}}},
        {"Effect":"Allow","Action":"iot:Subscribe","Resource":"arn:aws:iot:*:*:topicfilter/fleet/*"},
        {"Effect":"Allow","Action":"iot:Receive","Resource":"arn:aws:iot:*:*:topic/fleet/${iot:ClientId}/*"},
        {"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/fleet/*"}]}"#;
    {
        let arn = arn.clone();
        store
            .transact(move |conn| {
                attachments::detach(conn, "sensor-1-policy", &arn)?;
                policies::create(conn, "fleet", document, 0)?;
                attachments::attach(conn, "fleet", &arn, 0)
            })
            .await?;
    }
    tokio::time::sleep(REGISTRY_PROPAGATION).await;

    let mut client = RawClient::v5(&server, &device, "sensor-1").await?;
    let codes = client.subscribe(true, 1, &[], &[("fleet/#", 1)]).await?;
    assert_eq!(codes, vec![1]);
    // Receive is limited to fleet/<clientId>/...: the other message is not delivered.
    client
        .send(&publish(
            true,
            "fleet/other/x",
            1,
            false,
            2,
            &[],
            b"not for me",
        ))
        .await?;
    client
        .send(&publish(
            true,
            "fleet/sensor-1/x",
            1,
            false,
            3,
            &[],
            b"mine",
        ))
        .await?;
    let mut delivered = Vec::new();
    let mut acks = 0;
    while acks < 2 || delivered.is_empty() {
        let frame = next_frame(&mut client).await?;
        match frame.kind {
            kind::PUBACK => {
                assert_eq!(frame.ack(kind::PUBACK)?.1, 0x00);
                acks += 1;
            }
            kind::PUBLISH => {
                let p = frame.publish(true)?;
                if p.qos > 0 {
                    client.send(&crate::raw_protocol::ack(0x40, p.pkid)).await?;
                }
                delivered.push(p.topic);
            }
            other => bail!("unexpected packet type {other}"),
        }
    }
    assert_eq!(delivered, vec!["fleet/sensor-1/x".to_owned()]);
    // RETAIN needs iot:RetainPublish, which this policy does not grant.
    let denied = publish_acked(&mut client, "fleet/sensor-1/state", true, 4, b"on").await?;
    assert_eq!(denied, (4, 0x87));
    // Allowed (and not for this device to receive), and the last decision the connection
    // made before the change below.
    let allowed = publish_acked(&mut client, "fleet/other/x", false, 5, b"allowed").await?;
    assert_eq!(allowed, (5, 0x00));

    // Detaching the policy stops the next publish on the live connection, to the topic it
    // was last allowed too.
    {
        let arn = arn.clone();
        store
            .transact(move |conn| attachments::detach(conn, "fleet", &arn))
            .await?;
    }
    tokio::time::sleep(REGISTRY_PROPAGATION).await;
    for (pkid, topic) in [(6, "fleet/other/x"), (7, "fleet/sensor-1/x")] {
        let after = publish_acked(&mut client, topic, false, pkid, b"after detach").await?;
        assert_eq!(after, (pkid, 0x87), "{topic}");
    }
    Ok(())
}

/// Devices whose policies have no variables share one compiled set, and a fan-out decides
/// `iot:Receive` once per topic for all of them: the decision still follows the topic, and a
/// device whose policy changes is decided for on its own again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_under_one_policy_receives_what_it_allows_and_a_changed_device_stops() -> TestResult
{
    let server = TestServer::start().await?;
    let a = provision(&server, "sensor-a").await?;
    let b = provision(&server, "sensor-b").await?;
    let store = server.running.store.clone();
    let document = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:*:*:client/*"},
        {"Effect":"Allow","Action":"iot:Subscribe","Resource":"arn:aws:iot:*:*:topicfilter/fleet/*"},
        {"Effect":"Allow","Action":"iot:Receive","Resource":"arn:aws:iot:*:*:topic/fleet/cmd"},
        {"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/fleet/*"}]}"#;
    let (arn_a, arn_b) = (cert_arn(&a.id), cert_arn(&b.id));
    {
        let arn_b = arn_b.clone();
        store
            .transact(move |conn| {
                attachments::detach(conn, "sensor-a-policy", &arn_a)?;
                attachments::detach(conn, "sensor-b-policy", &arn_b)?;
                policies::create(conn, "fleet-wide", document, 0)?;
                attachments::attach(conn, "fleet-wide", &arn_a, 0)?;
                attachments::attach(conn, "fleet-wide", &arn_b, 0)
            })
            .await?;
    }
    tokio::time::sleep(REGISTRY_PROPAGATION).await;

    let mut clients = Vec::new();
    for (device, id) in [(&a, "sensor-a"), (&b, "sensor-b")] {
        let mut client = RawClient::v5(&server, device, id).await?;
        let codes = client.subscribe(true, 1, &[], &[("fleet/#", 0)]).await?;
        assert_eq!(codes, vec![0], "{id}");
        clients.push(client);
    }
    for topic in ["fleet/secret", "fleet/cmd"] {
        clients[0]
            .send(&publish(true, topic, 0, false, 0, &[], b"go"))
            .await?;
    }
    for client in &mut clients {
        assert_eq!(client.expect_publish(true).await?.topic, "fleet/cmd");
        client.expect_silence().await?;
    }

    // sensor-b loses the policy; sensor-a, still under it, goes on receiving.
    store
        .transact(move |conn| attachments::detach(conn, "fleet-wide", &arn_b))
        .await?;
    tokio::time::sleep(REGISTRY_PROPAGATION).await;
    clients[0]
        .send(&publish(true, "fleet/cmd", 0, false, 0, &[], b"again"))
        .await?;
    assert_eq!(clients[0].expect_publish(true).await?.topic, "fleet/cmd");
    clients[1].expect_silence().await?;
    Ok(())
}
