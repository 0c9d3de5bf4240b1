//! The device SDK (`thingd-device`) and the simulator end to end: against a real thingd
//! (mutual TLS, the shadow round trip, deltas, typed errors, a kill -9 under a client with
//! queued QoS 1 messages), against Mosquitto (pub/sub only), `thingd device simulate`, and
//! the SDK's examples built and run.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use thingd_device::{
    Client, ConnectOptions, ConnectionState, Error, Identity, ProtocolVersion, QoS, ReasonCode,
    Shadow, ShadowError,
};
use thingd_tests::{
    ProcessServer, TestServer, Watched, issue_device, repo_root, run_with_timeout,
    set_certificate_status, thingd_binary,
};

const WAIT: Duration = Duration::from_secs(20);

/// `thingd device provision <thing> --out <data>/devices/<thing> --port <port>`.
fn provision(data_dir: &Path, thing: &str, port: u16) -> PathBuf {
    let out = data_dir.join("devices").join(thing);
    let mut command = Command::new(thingd_binary().expect("thingd binary"));
    command
        .args(["device", "provision", thing, "--port", &port.to_string()])
        .arg("--out")
        .arg(&out)
        .arg("--data-dir")
        .arg(data_dir);
    run_with_timeout(&mut command, "thingd device provision", WAIT)
        .and_then(|f| f.ok())
        .unwrap_or_else(|e| panic!("{e:#}"));
    out
}

/// Provisions and waits for the server to see the new certificate (it polls every 250 ms).
async fn provision_ready(data_dir: &Path, thing: &str, port: u16) -> PathBuf {
    let (data_dir, thing2) = (data_dir.to_path_buf(), thing.to_owned());
    let dir = tokio::task::spawn_blocking(move || provision(&data_dir, &thing2, port))
        .await
        .expect("provision runs");
    tokio::time::sleep(Duration::from_millis(700)).await;
    dir
}

fn options(dir: &Path, addr: SocketAddr, client_id: &str) -> ConnectOptions {
    let identity = Identity::from_dir(dir).expect("device files");
    ConnectOptions::new("127.0.0.1", addr.port(), client_id, identity)
        .with_server_name("localhost")
        .with_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .with_request_timeout(Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_connects_reports_reads_and_reacts_to_deltas() {
    let server = TestServer::start().await.expect("thingd starts");
    let thing = "MyJourneyIoTDevice";
    let dir = provision_ready(server.data_dir.path(), thing, server.mqtts().port()).await;

    for protocol in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let client = Client::connect(options(&dir, server.mqtts(), thing).with_protocol(protocol))
            .await
            .expect("the device connects with its certificate");

        // Plain pub/sub on the device's own topic, QoS 1 with its PUBACK.
        let topic = format!("things/{thing}/telemetry");
        let mut messages = client.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
        client
            .publish(&topic, QoS::AtLeastOnce, false, "hello")
            .await
            .expect("PUBACK");
        let echo = tokio::time::timeout(WAIT, messages.recv())
            .await
            .expect("echo in time")
            .expect("a message");
        assert_eq!(&echo.payload[..], b"hello");

        // The shadow round trip, as the seed's ESP32 does it.
        let shadow = Shadow::classic(&client, thing).await.unwrap();
        let mut deltas = shadow.deltas();
        let accepted = shadow.update_reported(json!({"temp": "32"})).await.unwrap();
        assert!(accepted["version"].as_u64().unwrap() >= 1, "{accepted}");
        let doc = shadow.get().await.unwrap();
        assert_eq!(doc["state"]["reported"]["temp"], "32", "{doc}");

        // desired -> delta -> the device reports it back -> no delta left.
        shadow.update_desired(json!({"led": "on"})).await.unwrap();
        let delta = tokio::time::timeout(WAIT, deltas.recv())
            .await
            .expect("a delta in time")
            .expect("a delta");
        assert_eq!(delta.state, json!({"led": "on"}));
        shadow.update_reported(json!({"led": "on"})).await.unwrap();
        let doc = shadow.get().await.unwrap();
        assert!(doc["state"].get("delta").is_none(), "{doc}");

        // A stale version is a 409; a missing named shadow a 404.
        let stale = shadow
            .update(json!({"state": {"reported": {"temp": "1"}}, "version": 1}))
            .await;
        assert!(
            matches!(
                stale,
                Err(Error::ShadowRejected(ShadowError { code: 409, .. }))
            ),
            "{stale:?}"
        );
        let named = Shadow::named(&client, thing, "config").await.unwrap();
        let missing = named.get().await;
        assert!(
            matches!(
                missing,
                Err(Error::ShadowRejected(ShadowError { code: 404, .. }))
            ),
            "{missing:?}"
        );
        named.update_desired(json!({"rate": 10})).await.unwrap();
        assert_eq!(named.get().await.unwrap()["state"]["desired"]["rate"], 10);
        named.delete().await.unwrap();

        shadow.delete().await.unwrap();
        client.disconnect().await;
        assert_eq!(client.state(), ConnectionState::Closed);
    }

    // Port 443 style: ALPN x-amzn-mqtt-ca on the HTTPS listener.
    let https = server
        .running
        .https
        .expect("the https listener is on in tests");
    let client = Client::connect(options(&dir, https, thing).with_alpn_mqtt(true))
        .await
        .expect("MQTT over ALPN x-amzn-mqtt-ca");
    let shadow = Shadow::classic(&client, thing).await.unwrap();
    shadow.update_reported(json!({"temp": 33})).await.unwrap();
    client.disconnect().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_errors() {
    let server = TestServer::start().await.expect("thingd starts");
    let addr = server.mqtts();
    let data_dir = server.data_dir.path().to_path_buf();
    let thing = "sensor-1";
    let dir = provision_ready(&data_dir, thing, addr.port()).await;

    // The policy allows only client id = thing name.
    for protocol in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let refused =
            Client::connect(options(&dir, addr, "intruder").with_protocol(protocol)).await;
        match &refused {
            Err(Error::ConnectionRefused { reason }) => {
                assert_eq!(*reason, ReasonCode::NotAuthorized, "{protocol:?}")
            }
            Err(Error::ClosedDuringConnect) if protocol == ProtocolVersion::V311 => {}
            other => panic!("{protocol:?}: {other:?}"),
        }
        assert!(refused.unwrap_err().is_not_authorized());
    }

    // Publishing outside the policy: MQTT 5 gets PUBACK 0x87.
    let client = Client::connect(options(&dir, addr, thing)).await.unwrap();
    let denied = client
        .publish("not/mine", QoS::AtLeastOnce, false, "x")
        .await;
    assert!(
        matches!(
            denied,
            Err(Error::NotAuthorized {
                reason: Some(ReasonCode::NotAuthorized),
                ..
            })
        ),
        "{denied:?}"
    );
    let denied = client.subscribe("not/mine/#", QoS::AtLeastOnce).await;
    assert!(
        matches!(denied, Err(Error::NotAuthorized { .. })),
        "{denied:?}"
    );
    // The connection is still usable.
    client
        .publish(format!("things/{thing}/ok"), QoS::AtLeastOnce, false, "x")
        .await
        .expect("allowed publish");
    client.disconnect().await;

    // MQTT 3.1.1: the server disconnects; the SDK gives up on the message after the second
    // disconnect it causes, and stays connected for the rest.
    let client = Client::connect(options(&dir, addr, thing).with_protocol(ProtocolVersion::V311))
        .await
        .unwrap();
    let denied = tokio::time::timeout(
        WAIT,
        client.publish("not/mine", QoS::AtLeastOnce, false, "x"),
    )
    .await
    .expect("an answer in time");
    assert!(
        matches!(denied, Err(Error::NotAuthorized { reason: None, .. })),
        "{denied:?}"
    );
    client
        .publish(format!("things/{thing}/ok"), QoS::AtLeastOnce, false, "x")
        .await
        .expect("allowed publish after the reconnect");
    client.disconnect().await;

    // A revoked certificate is refused in the TLS handshake.
    let id = thingd_auth::inspect_certificate_pem(
        &std::fs::read_to_string(dir.join("certificate.pem.crt")).unwrap(),
    )
    .unwrap()
    .id
    .to_string();
    let d2 = data_dir.clone();
    tokio::task::spawn_blocking(move || set_certificate_status(&d2, &id, "REVOKED"))
        .await
        .unwrap()
        .expect("revoke");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let refused = Client::connect(options(&dir, addr, thing)).await;
    match &refused {
        Err(Error::TlsRefused { alert }) => {
            assert_eq!(*alert, rustls::AlertDescription::CertificateRevoked)
        }
        other => panic!("{other:?}"),
    }
    assert!(refused.unwrap_err().is_not_authorized());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_qos1_messages_survive_a_broker_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let mut server = ProcessServer::start(data.path(), &[]).expect("thingd starts");
    let addr = server.mqtts;
    let subscriber_files = issue_device(data.path(), "subscriber").await.unwrap();
    let publisher_files = issue_device(data.path(), "publisher").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;

    let subscriber = Client::connect(
        options(&subscriber_files.dir, addr, "subscriber")
            .with_persistent_session(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let mut received = subscriber
        .subscribe("fleet/data", QoS::AtLeastOnce)
        .await
        .unwrap();
    let publisher = Client::connect(
        options(&publisher_files.dir, addr, "publisher")
            .with_persistent_session(Duration::from_secs(3600)),
    )
    .await
    .unwrap();

    for i in 0..10 {
        publisher
            .publish("fleet/data", QoS::AtLeastOnce, false, i.to_string())
            .await
            .expect("PUBACK before the crash");
    }

    tokio::task::block_in_place(|| server.kill9());
    let mut state = publisher.watch_state();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| matches!(s, ConnectionState::Reconnecting { .. })),
    )
    .await
    .expect("the publisher notices the crash")
    .unwrap();
    // Published while the broker is down: they wait in the offline queue.
    let acks: Vec<_> = (10..40)
        .map(|i| publisher.publish("fleet/data", QoS::AtLeastOnce, false, i.to_string()))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| server.restart()).expect("thingd restarts");

    for ack in acks {
        tokio::time::timeout(Duration::from_secs(30), ack)
            .await
            .expect("PUBACK after the restart in time")
            .expect("PUBACK after the restart");
    }
    assert_eq!(publisher.dropped(), 0);
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 40 {
        let message = tokio::time::timeout_at(deadline, received.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of 40 arrived: {seen:?}", seen.len()))
            .expect("subscriber open");
        seen.insert(
            String::from_utf8_lossy(&message.payload)
                .parse::<u32>()
                .unwrap(),
        );
    }
    assert_eq!(seen, (0..40).collect::<BTreeSet<u32>>());
    publisher.disconnect().await;
    subscriber.disconnect().await;
    server.terminate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_queue_drops_the_oldest_and_counts() {
    let server = TestServer::start().await.expect("thingd starts");
    let files = server.issue_device("queue-test").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let client =
        Client::connect(options(&files.dir, server.mqtts(), "queue-test").with_offline_queue(3))
            .await
            .unwrap();
    let dir = server.stop().await;
    let mut state = client.watch_state();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| matches!(s, ConnectionState::Reconnecting { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    let mut acks: Vec<_> = (0..5)
        .map(|i| client.publish("q", QoS::AtLeastOnce, false, i.to_string()))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(client.dropped(), 2);
    for ack in acks.drain(..2) {
        assert!(matches!(ack.await, Err(Error::QueueOverflow)));
    }
    client.disconnect().await;
    for ack in acks {
        assert!(matches!(ack.await, Err(Error::Closed)));
    }
    drop(dir);
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_talks_to_mosquitto_too() {
    let mosquitto = Path::new("/usr/sbin/mosquitto");
    if !mosquitto.exists() {
        panic!("the mosquitto broker is not installed (apt-get install mosquitto)");
    }
    // thingd's CA and server certificate serve Mosquitto as well.
    let server = TestServer::start().await.expect("thingd starts");
    let files = server.issue_device("mosquitto-device").await.unwrap();
    let pki = server.data_dir.path().join("pki");
    let port = free_port();
    let conf = server.data_dir.path().join("mosquitto.conf");
    let is_root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
    std::fs::write(
        &conf,
        format!(
            "{user}listener {port} 127.0.0.1\nallow_anonymous true\nrequire_certificate true\n\
             cafile {ca}\ncertfile {cert}\nkeyfile {key}\npersistence false\nlog_dest stderr\n",
            user = if is_root { "user root\n" } else { "" },
            ca = pki.join("root-ca.pem").display(),
            cert = pki.join("server.pem").display(),
            key = pki.join("server.key").display(),
        ),
    )
    .unwrap();
    let broker = Watched::spawn(
        Command::new(mosquitto).arg("-c").arg(&conf),
        "mosquitto broker",
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for protocol in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let id = format!("sdk-{protocol:?}");
        // Mosquitto enforces a 1 s keep-alive (it closes after 1.5 s of silence): the
        // connection task's pings must keep the connection.
        let client = Client::connect(
            options(&files.dir, addr, &id)
                .with_protocol(protocol)
                .with_keep_alive(Duration::from_secs(1)),
        )
        .await
        .expect("connects to mosquitto");
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert!(
            matches!(
                client.state(),
                ConnectionState::Connected { generation: 1, .. }
            ),
            "pings kept the first connection: {:?}",
            client.state()
        );
        let mut messages = client
            .subscribe("sdk/+/round-trip", QoS::AtLeastOnce)
            .await
            .unwrap();
        client
            .publish(
                "sdk/x/round-trip",
                QoS::AtLeastOnce,
                false,
                "through mosquitto",
            )
            .await
            .expect("PUBACK from mosquitto");
        client
            .publish("sdk/y/round-trip", QoS::AtMostOnce, false, "qos 0")
            .await
            .unwrap();
        for expected in ["through mosquitto", "qos 0"] {
            let m = tokio::time::timeout(WAIT, messages.recv())
                .await
                .expect("in time")
                .expect("a message");
            assert_eq!(String::from_utf8_lossy(&m.payload), expected);
        }
        client.disconnect().await;
    }
    drop(broker);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_reports_temperature_and_applies_a_desired_change() {
    let server = TestServer::start().await.expect("thingd starts");
    let thing = "MyJourneyIoTDevice";
    let data_dir = server.data_dir.path().to_path_buf();
    let dir = provision_ready(&data_dir, thing, server.mqtts().port()).await;
    let operator = server.issue_device("operator").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;

    let mut command = Command::new(thingd_binary().unwrap());
    command
        .args(["device", "simulate", "--interval", "0.3", "--duration", "3"])
        .arg("--dir")
        .arg(&dir)
        .env("RUST_LOG", "warn");
    let mut simulator = Watched::spawn(&mut command, "thingd device simulate").unwrap();
    tokio::task::block_in_place(|| simulator.wait_for_line(|l| l.contains("reported temp="), WAIT))
        .expect("a first report");

    // The operator (another certificate, the development policy) sets desired.
    let client = Client::connect(options(&operator.dir, server.mqtts(), "operator"))
        .await
        .unwrap();
    let shadow = Shadow::classic(&client, thing).await.unwrap();
    shadow
        .update_desired(json!({"led": "on", "setpoint": 21.5}))
        .await
        .unwrap();
    let finished = tokio::task::block_in_place(|| simulator.finish(WAIT))
        .and_then(|f| f.ok())
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(finished.stdout.contains("led switched on"), "{finished}");
    assert!(
        finished.stdout.contains("simulation finished"),
        "{finished}"
    );

    let doc = shadow.get().await.unwrap();
    let reported = &doc["state"]["reported"];
    let temp = reported["temp"].as_u64().expect("a numeric temp");
    assert!((10..=40).contains(&temp), "{doc}");
    assert_eq!(reported["led"], "on", "{doc}");
    assert_eq!(reported["setpoint"], 21.5, "{doc}");
    assert!(doc["state"].get("delta").is_none(), "{doc}");
    client.disconnect().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_provisions_and_reports() {
    let server = TestServer::start().await.expect("thingd starts");
    let data_dir = server.data_dir.path().to_path_buf();
    let mut command = Command::new(thingd_binary().unwrap());
    command
        .args([
            "device",
            "simulate",
            "--fleet",
            "3",
            "--rate",
            "15",
            "--duration",
            "3",
        ])
        .args(["--thing", "sim", "--endpoint", "localhost", "--port"])
        .arg(server.mqtts().port().to_string())
        .arg("--data-dir")
        .arg(&data_dir)
        .env("RUST_LOG", "warn");
    let finished = tokio::task::block_in_place(|| {
        run_with_timeout(&mut command, "thingd device simulate --fleet 3", WAIT)
    })
    .and_then(|f| f.ok())
    .unwrap_or_else(|e| panic!("{e:#}"));
    let summary = finished
        .stdout
        .lines()
        .find(|l| l.starts_with("simulation finished"))
        .unwrap_or_else(|| panic!("{finished}"))
        .to_owned();
    let reports: u64 = summary
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!(reports >= 6, "{finished}");
    for i in 1..=3 {
        assert!(
            data_dir
                .join(format!("simulated/sim-{i}/certificate.pem.crt"))
                .exists()
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_examples_build_and_run() {
    let server = TestServer::start().await.expect("thingd starts");
    let thing = "example-device";
    let dir = provision_ready(server.data_dir.path(), thing, server.mqtts().port()).await;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = repo_root();
    let mut build = Command::new(cargo);
    build
        .args(["build", "--examples", "-p", "thingd-device"])
        .current_dir(&root);
    tokio::task::block_in_place(|| {
        run_with_timeout(
            &mut build,
            "cargo build --examples",
            Duration::from_secs(600),
        )
    })
    .and_then(|f| f.ok())
    .unwrap_or_else(|e| panic!("{e:#}"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let port = server.mqtts().port().to_string();
    for (example, expect) in [
        (
            "connect_publish",
            "received on things/example-device/telemetry",
        ),
        (
            "shadow_round_trip",
            "stale update rejected as expected: 409",
        ),
    ] {
        let mut run = Command::new(target.join("debug/examples").join(example));
        run.arg(&dir).args(["localhost", &port, thing]);
        let finished = tokio::task::block_in_place(|| run_with_timeout(&mut run, example, WAIT))
            .and_then(|f| f.ok())
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(finished.stdout.contains(expect), "{finished}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_keeps_reporting_through_a_broker_kill_9_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        ProcessServer::start(dir.path(), &["--api", "127.0.0.1:0"]).expect("thingd serve starts");
    let thing = "restart-sensor";
    let device = provision_ready(dir.path(), thing, server.mqtts.port()).await;

    let mut command = Command::new(thingd_binary().unwrap());
    command
        .args(["device", "simulate", "--interval", "0.3", "--duration", "8"])
        .arg("--dir")
        .arg(&device)
        .env("RUST_LOG", "warn");
    let mut simulator = Watched::spawn(&mut command, "thingd device simulate").unwrap();
    tokio::task::block_in_place(|| simulator.wait_for_line(|l| l.contains("reported temp="), WAIT))
        .expect("a first report");

    // Kill the broker mid-run (reports in flight are queued in the SDK) and bring it back.
    tokio::task::block_in_place(|| {
        server.kill9();
        std::thread::sleep(Duration::from_millis(500));
        server.restart().expect("thingd restarts");
    });

    let finished = tokio::task::block_in_place(|| simulator.finish(WAIT))
        .and_then(|f| f.ok())
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Every report the simulator made was accepted, including the ones queued while the
    // broker was down: no report failed.
    let summary = finished
        .stdout
        .lines()
        .find(|l| l.contains("simulation finished"))
        .unwrap_or_else(|| panic!("no summary in {finished}"))
        .to_owned();
    assert!(summary.ends_with(", 0 errors"), "{summary}\n{finished}");
    let reports: u64 = summary
        .split("simulation finished: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("report count in {summary}"));
    assert!(
        reports >= 5,
        "reports kept coming after the restart: {summary}"
    );

    // The shadow's version counts every accepted report, across the kill -9.
    let client = Client::connect(options(&device, server.mqtts, thing))
        .await
        .unwrap();
    let shadow = Shadow::classic(&client, thing).await.unwrap();
    let doc = shadow.get().await.unwrap();
    let version = doc["version"].as_u64().expect("a version");
    assert!(
        version >= reports,
        "version {version} after {reports} accepted reports: {doc}"
    );
    client.disconnect().await;
}
