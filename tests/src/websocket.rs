//! The https listener (ALPN dispatch): MQTT over WebSocket at `GET /mqtt` (subprotocol `mqtt`)
//! and plain MQTT for ALPN `x-amzn-mqtt-ca` (AWS's port-443 mode), both behind the same
//! mandatory client certificate as the MQTT port. Driven with paho-mqtt.

use std::time::Duration;

use serde_json::Value;
use thingd_tests::{DeviceFiles, TestServer, issue_devices_ready, payloads, run_paho};

const RUN: Duration = Duration::from_secs(30);

struct Env {
    server: TestServer,
    device: DeviceFiles,
}

async fn env() -> Env {
    let server = TestServer::start().await.expect("thingd starts");
    let device = issue_devices_ready(&server, &["websocket"])
        .await
        .expect("thingd cert issue")
        .remove(0);
    Env { server, device }
}

impl Env {
    fn https_port(&self) -> u16 {
        self.server
            .running
            .https
            .expect("the https listener is on in tests")
            .port()
    }

    /// Runs a scenario against the https port.
    fn paho(&self, scenario: &str, args: &[&str]) -> Value {
        let port = self.https_port();
        tokio::task::block_in_place(|| run_paho(scenario, &self.device, port, args, RUN))
            .unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// A client on the https port (`mode`) and one on the MQTT port exchange three messages
    /// each way.
    fn bridge(&self, mode: &str, version: &str) -> Value {
        let tcp_port = self.server.mqtts().port().to_string();
        let result = self.paho(
            "bridge",
            &[
                "--mode",
                mode,
                "--version",
                version,
                "--tcp-port",
                &tcp_port,
                "--count",
                "3",
            ],
        );
        assert_eq!(
            payloads(&result["to_tcp"]),
            ["from-alt-0", "from-alt-1", "from-alt-2"],
            "{mode} client → MQTT-over-TLS client: {result:#}"
        );
        assert_eq!(
            payloads(&result["to_alt"]),
            ["from-tcp-0", "from-tcp-1", "from-tcp-2"],
            "MQTT-over-TLS client → {mode} client: {result:#}"
        );
        result
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_v311_client_exchanges_messages_with_tcp_client() {
    env().await.bridge("websockets", "311");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_v5_client_exchanges_messages_with_tcp_client() {
    env().await.bridge("websockets", "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_selects_the_mqtt_subprotocol() {
    let env = env().await;
    let result = env.paho("ws-upgrade", &[]);
    let upgrade = &result["mqtt"];
    assert_eq!(
        upgrade["status"], 101,
        "GET /mqtt switches protocols: {result:#}"
    );
    assert_eq!(
        upgrade["headers"]["sec-websocket-protocol"], "mqtt",
        "subprotocol mqtt: {result:#}"
    );
    assert_eq!(
        upgrade["headers"]["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        "RFC 6455 accept key: {result:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_x_amzn_mqtt_ca_speaks_mqtt_on_the_https_port() {
    let env = env().await;
    for version in ["311", "5"] {
        let result = env.bridge("alpn", version);
        assert_eq!(
            result["selected_alpn"], "x-amzn-mqtt-ca",
            "the server selects the ALPN protocol: {result:#}"
        );
    }
}

/// A 100 kB message each way: over WebSocket it spans several frames.
fn big_message(env: &Env, mode: &str) {
    let tcp_port = env.server.mqtts().port().to_string();
    let result = env.paho(
        "big-payload",
        &[
            "--mode",
            mode,
            "--tcp-port",
            &tcp_port,
            "--payload-size",
            "100000",
        ],
    );
    let sent = &result["sent"];
    for direction in ["to_tcp", "to_alt"] {
        let got = &result[direction];
        assert_eq!(
            got.as_array().map(Vec::len),
            Some(1),
            "{direction}: one message: {result:#}"
        );
        assert_eq!(
            got[0]["len"], sent["len"],
            "{direction}: whole payload: {result:#}"
        );
        assert_eq!(
            got[0]["sha256"], sent["sha256"],
            "{direction}: same bytes: {result:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_carries_a_100_kb_message_both_ways() {
    big_message(&env().await, "websockets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_carries_a_100_kb_message_both_ways() {
    big_message(&env().await, "alpn");
}

fn assert_refused(result: &Value, what: &str) {
    assert_eq!(
        result["control"]["connected"], true,
        "control: {what} with the client certificate works: {result:#}"
    );
    assert_eq!(
        result["probe"]["connected"], false,
        "{what} without a client certificate must be refused: {result:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_without_client_certificate_is_refused() {
    let env = env().await;
    for version in ["311", "5"] {
        let result = env.paho("refused", &["--mode", "websockets", "--version", version]);
        assert_refused(&result, "MQTT over WebSocket");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_mqtt_without_client_certificate_is_refused() {
    let env = env().await;
    let result = env.paho("refused", &["--mode", "alpn"]);
    assert_refused(&result, "MQTT with ALPN x-amzn-mqtt-ca");
}
