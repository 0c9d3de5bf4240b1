//! Debian's `mosquitto_pub` / `mosquitto_sub` (libmosquitto, OpenSSL) against thingd over
//! mutual TLS, in MQTT 3.1.1 and 5, and across versions with paho-mqtt.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use thingd_tests::{
    DeviceFiles, Finished, TestServer, Watched, issue_device, issue_devices_ready, paho_command,
    payloads, run_with_timeout,
};

const RUN: Duration = Duration::from_secs(15);

struct Env {
    server: TestServer,
    device: DeviceFiles,
}

async fn env() -> Env {
    let server = TestServer::start().await.expect("thingd starts");
    let device = issue_devices_ready(&server, &["mosquitto"])
        .await
        .expect("thingd cert issue")
        .remove(0);
    Env { server, device }
}

impl Env {
    fn port(&self) -> u16 {
        self.server.mqtts().port()
    }

    /// `mosquitto_pub`/`mosquitto_sub` with this device's files, 127.0.0.1 and the MQTT port.
    fn tool(&self, tool: &str, version: &str) -> Command {
        with_files(
            Command::new(tool),
            &self.device.ca,
            &self.device,
            self.port(),
            version,
        )
    }

    /// Runs `mosquitto_pub` with `args`; its exit status is not judged here.
    fn publish(&self, version: &str, args: &[&str]) -> Finished {
        let mut command = self.tool("mosquitto_pub", version);
        command.args(args);
        blocking(|| {
            run_with_timeout(
                &mut command,
                &format!("mosquitto_pub {}", args.join(" ")),
                RUN,
            )
        })
    }

    /// Starts `mosquitto_sub` printing `MSG <qos> <retain> <topic> <payload>` lines, and waits
    /// until its SUBACK arrived (its `-d` debug output, line-buffered with coreutils' `stdbuf`
    /// because mosquitto_sub does not flush it into a pipe).
    fn subscribe(&self, version: &str, args: &[&str]) -> Watched {
        let mut stdbuf = Command::new("stdbuf");
        stdbuf.args(["-oL", "mosquitto_sub"]);
        let mut command = with_files(stdbuf, &self.device.ca, &self.device, self.port(), version);
        command
            .args(["-W", "10", "-d", "-F", "MSG %q %r %t %p"])
            .args(args);
        blocking(|| {
            let mut sub =
                Watched::spawn(&mut command, &format!("mosquitto_sub {}", args.join(" ")))?;
            sub.wait_for_line(
                |line| line.contains("received SUBACK"),
                Duration::from_secs(10),
            )?;
            Ok(sub)
        })
    }
}

/// `command` (a mosquitto client) trusting `ca` and presenting `device`'s certificate and key.
fn with_files(
    mut command: Command,
    ca: &Path,
    device: &DeviceFiles,
    port: u16,
    version: &str,
) -> Command {
    command
        .arg("--cafile")
        .arg(ca)
        .arg("--cert")
        .arg(&device.cert)
        .arg("--key")
        .arg(&device.key)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version]);
    command
}

/// Runs blocking process work from a multi-thread tokio test; panics with the error chain.
fn blocking<T>(work: impl FnOnce() -> anyhow::Result<T>) -> T {
    tokio::task::block_in_place(work).unwrap_or_else(|error| panic!("{error:#}"))
}

/// The `MSG ...` lines of a `mosquitto_sub` run, without the prefix.
fn received(sub: &Finished) -> Vec<String> {
    sub.stdout
        .lines()
        .filter_map(|line| line.strip_prefix("MSG "))
        .map(str::to_owned)
        .collect()
}

fn finish(sub: Watched) -> Finished {
    blocking(|| sub.finish(RUN))
}

// --- mosquitto_pub → mosquitto_sub --------------------------------------------------------

async fn roundtrip(version: &str, qos: &str) {
    let env = env().await;
    let topic = format!("e2e/mosquitto/{version}/q{qos}");
    let sub = env.subscribe(version, &["-t", &topic, "-q", qos, "-C", "3"]);
    for i in 0..3 {
        let payload = format!("hello {i} from mosquitto_pub");
        env.publish(version, &["-t", &topic, "-q", qos, "-m", &payload])
            .ok()
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let sub = finish(sub);
    let want: Vec<String> = (0..3)
        .map(|i| format!("{qos} 0 {topic} hello {i} from mosquitto_pub"))
        .collect();
    assert_eq!(
        received(&sub),
        want,
        "mosquitto_sub got every message at QoS {qos}, in order: {sub}"
    );
    assert!(
        sub.status.success(),
        "mosquitto_sub -C 3 exits 0 after three messages: {sub}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v311_qos1() {
    roundtrip("mqttv311", "1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v311_qos2() {
    roundtrip("mqttv311", "2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_qos1() {
    roundtrip("mqttv5", "1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_qos2() {
    roundtrip("mqttv5", "2").await;
}

/// `mosquitto_pub -l` sends 300 messages on one connection as fast as its in-flight window
/// allows; all arrive in order. (Not MQTT 5 at QoS 2: libmosquitto 2.0.11 overruns the
/// server's Receive Maximum there, and mosquitto's own broker disconnects it too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_lines_300_messages_in_order() {
    let env = env().await;
    let lines: String = (0..300).map(|i| format!("line {i}\n")).collect();
    for (version, qos) in [("mqttv311", "1"), ("mqttv311", "2"), ("mqttv5", "1")] {
        let topic = format!("e2e/mosquitto/{version}/bulk{qos}");
        let sub = env.subscribe(version, &["-t", &topic, "-q", qos, "-C", "300"]);
        let mut publisher = env.tool("mosquitto_pub", version);
        publisher.args(["-t", &topic, "-q", qos, "-l"]);
        publisher
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let published = blocking(|| {
            let mut child = publisher.spawn()?;
            // Dropping stdin after the write closes it: mosquitto_pub -l then finishes.
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(lines.as_bytes())?;
            let deadline = std::time::Instant::now() + RUN;
            while child.try_wait()?.is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    anyhow::bail!("mosquitto_pub -l did not finish within {RUN:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(child.wait_with_output()?)
        });
        assert!(
            published.status.success(),
            "mosquitto_pub -l {version} q{qos}: {published:?}"
        );
        let sub = finish(sub);
        let want: Vec<String> = (0..300)
            .map(|i| format!("{qos} 0 {topic} line {i}"))
            .collect();
        assert_eq!(
            received(&sub),
            want,
            "{version} QoS {qos}: 300 messages in order: {sub}"
        );
    }
}

async fn retained(version: &str) {
    let env = env().await;
    let topic = format!("e2e/mosquitto/{version}/retained");
    for payload in ["first", "second"] {
        env.publish(version, &["-t", &topic, "-q", "1", "-r", "-m", payload])
            .ok()
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let late = env.subscribe(version, &["-t", &topic, "-q", "1", "-C", "1"]);
    let late = finish(late);
    assert_eq!(
        received(&late),
        [format!("1 1 {topic} second")],
        "a late subscriber gets the newest, RETAIN 1: {late}"
    );

    env.publish(version, &["-t", &topic, "-q", "1", "-r", "-n"])
        .ok()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut after = env.tool("mosquitto_sub", version);
    after.args([
        "-t",
        &topic,
        "-q",
        "1",
        "-C",
        "1",
        "-W",
        "2",
        "-F",
        "MSG %q %r %t %p",
    ]);
    let after = blocking(|| run_with_timeout(&mut after, "mosquitto_sub after the delete", RUN));
    assert_eq!(
        received(&after),
        Vec::<String>::new(),
        "an empty retained payload deleted the message: {after}"
    );
    assert_eq!(
        after.status.code(),
        Some(27),
        "mosquitto_sub -W 2 timed out waiting: {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v311_retained_then_late_subscriber() {
    retained("mqttv311").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_retained_then_late_subscriber() {
    retained("mqttv5").await;
}

/// `mosquitto_sub -c -i ID` (clean session off; MQTT 5 with `-x` Session Expiry) collects what
/// was published while it was away.
async fn persistent_session(version: &str) {
    let env = env().await;
    let topic = format!("e2e/mosquitto/{version}/offline");
    let client_id = format!("mosquitto-keeper-{version}");
    let mut session = vec!["-c", "-i", &client_id, "-q", "1", "-t", &topic];
    if version == "mqttv5" {
        session.extend(["-x", "600"]);
    }
    let mut subscribe_and_leave = env.tool("mosquitto_sub", version);
    subscribe_and_leave.args(&session).arg("-E");
    let left = blocking(|| {
        run_with_timeout(
            &mut subscribe_and_leave,
            "mosquitto_sub -E (subscribe and exit)",
            RUN,
        )
    });
    assert!(left.status.success(), "{left}");
    for i in 0..3 {
        env.publish(
            version,
            &["-t", &topic, "-q", "1", "-m", &format!("while away {i}")],
        )
        .ok()
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let mut resume = env.tool("mosquitto_sub", version);
    resume
        .args(&session)
        .args(["-C", "3", "-W", "10", "-F", "MSG %q %r %t %p"]);
    let resumed =
        blocking(|| run_with_timeout(&mut resume, "mosquitto_sub resuming its session", RUN));
    let want: Vec<String> = (0..3)
        .map(|i| format!("1 0 {topic} while away {i}"))
        .collect();
    assert_eq!(
        received(&resumed),
        want,
        "queued messages delivered on resume: {resumed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v311_persistent_session() {
    persistent_session("mqttv311").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_persistent_session() {
    persistent_session("mqttv5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_with_a_foreign_certificate_fails() {
    let env = env().await;
    // A certificate from another thingd's CA: well-formed, but not one this server trusts.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let stranger = issue_device(elsewhere.path(), "stranger")
        .await
        .expect("issue in another data dir");
    for version in ["mqttv311", "mqttv5"] {
        let control = env.publish(version, &["-t", "e2e/control", "-q", "1", "-m", "ok"]);
        assert!(
            control.status.success(),
            "control: the device's own certificate works: {control}"
        );

        // The server's CA is right; only the client certificate and key are foreign.
        let mut command = with_files(
            Command::new("mosquitto_pub"),
            &env.device.ca,
            &stranger,
            env.port(),
            version,
        );
        command.args(["-t", "e2e/intruder", "-q", "1", "-m", "let me in"]);
        let refused = blocking(|| {
            run_with_timeout(
                &mut command,
                "mosquitto_pub with a foreign certificate",
                RUN,
            )
        });
        assert!(
            !refused.status.success(),
            "mosquitto_pub must fail with a certificate of another CA: {refused}"
        );
    }
}

// --- across clients and versions ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_subscriber_receives_mosquitto_pub_v311() {
    let env = env().await;
    let topic = "e2e/cross/from-mosquitto-v311";
    let mut command = paho_command("subscribe", &env.device, env.port()).expect("python");
    command.args([
        "--version",
        "5",
        "--qos",
        "1",
        "--count",
        "3",
        "--topic",
        topic,
    ]);
    let result = blocking(|| {
        let mut paho = Watched::spawn(&mut command, "paho v5 subscriber")?;
        paho.wait_for_line(
            |line| line.contains(r#""event": "ready""#),
            Duration::from_secs(10),
        )?;
        for i in 0..3 {
            env.publish(
                "mqttv311",
                &["-t", topic, "-q", "1", "-m", &format!("v311-{i}")],
            )
            .ok()?;
        }
        paho.finish(RUN)?.paho_result()
    });
    assert_eq!(
        payloads(&result["received"]),
        ["v311-0", "v311-1", "v311-2"],
        "{result:#}"
    );
    for message in result["received"].as_array().into_iter().flatten() {
        assert_eq!(message["qos"], 1, "{message}");
        assert_eq!(message["topic"], topic, "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_v311_receives_paho_v5_publisher() {
    let env = env().await;
    let topic = "e2e/cross/from-paho-v5";
    let sub = env.subscribe("mqttv311", &["-t", topic, "-q", "1", "-C", "3"]);
    let mut command = paho_command("publish", &env.device, env.port()).expect("python");
    command.args([
        "--version",
        "5",
        "--qos",
        "1",
        "--count",
        "3",
        "--topic",
        topic,
        "--prefix",
        "v5-",
    ]);
    command.args(["--user-property", "dropped=for-3.1.1"]);
    let published =
        blocking(|| run_with_timeout(&mut command, "paho v5 publisher", RUN)?.paho_result());
    assert_eq!(
        published["sent"],
        serde_json::json!(["v5-0", "v5-1", "v5-2"])
    );
    let sub = finish(sub);
    let want: Vec<String> = (0..3).map(|i| format!("1 0 {topic} v5-{i}")).collect();
    assert_eq!(
        received(&sub),
        want,
        "the MQTT 3.1.1 subscriber gets the MQTT 5 messages: {sub}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_v5_properties_reach_paho_v5() {
    let env = env().await;
    let topic = "e2e/cross/mosquitto-v5-props";
    let mut command = paho_command("subscribe", &env.device, env.port()).expect("python");
    command.args([
        "--version",
        "5",
        "--qos",
        "2",
        "--count",
        "1",
        "--topic",
        topic,
    ]);
    let result = blocking(|| {
        let mut paho = Watched::spawn(&mut command, "paho v5 subscriber")?;
        paho.wait_for_line(
            |line| line.contains(r#""event": "ready""#),
            Duration::from_secs(10),
        )?;
        env.publish(
            "mqttv5",
            &[
                "-t",
                topic,
                "-q",
                "2",
                "-m",
                "with props",
                "-D",
                "publish",
                "user-property",
                "station",
                "north",
                "-D",
                "publish",
                "user-property",
                "unit",
                "celsius",
                "-D",
                "publish",
                "content-type",
                "text/plain",
            ],
        )
        .ok()?;
        paho.finish(RUN)?.paho_result()
    });
    assert_eq!(payloads(&result["received"]), ["with props"], "{result:#}");
    let props = &result["received"][0]["properties"];
    assert_eq!(
        props["UserProperty"],
        serde_json::json!([["station", "north"], ["unit", "celsius"]]),
        "{props}"
    );
    assert_eq!(props["ContentType"], "text/plain", "{props}");
    assert_eq!(result["received"][0]["qos"], 2, "{result:#}");
}
