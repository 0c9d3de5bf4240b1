//! Eclipse paho-mqtt 2.x (Python) against thingd over mutual TLS: MQTT 3.1.1 and 5 pub/sub at
//! every QoS, MQTT 5 properties, retained messages, wills, persistent sessions, takeover,
//! shared subscriptions and cross-version delivery. The scenarios live in
//! `tests/python/paho_scenarios.py`; these tests run them and judge what the clients saw.

use std::time::Duration;

use serde_json::Value;
use thingd_tests::{DeviceFiles, TestServer, issue_devices_ready, payloads, run_paho};

/// Upper bound for one scenario run (the script's own alarm fires earlier).
const RUN: Duration = Duration::from_secs(30);

struct Env {
    server: TestServer,
    device: DeviceFiles,
}

async fn env() -> Env {
    let server = TestServer::start().await.expect("thingd starts");
    let device = issue_devices_ready(&server, &["paho"])
        .await
        .expect("thingd cert issue")
        .remove(0);
    Env { server, device }
}

impl Env {
    /// Runs a scenario on the MQTT-over-TLS port; panics with the script's output on failure.
    fn paho(&self, scenario: &str, args: &[&str]) -> Value {
        let port = self.server.mqtts().port();
        tokio::task::block_in_place(|| run_paho(scenario, &self.device, port, args, RUN))
            .unwrap_or_else(|error| panic!("{error:#}"))
    }
}

fn version_arg(v5: bool) -> &'static str {
    if v5 { "5" } else { "311" }
}

fn messages(result: &Value, key: &str) -> Vec<Value> {
    result[key]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no {key:?} list in {result:#}"))
}

// --- pub/sub at each QoS ------------------------------------------------------------------

async fn pubsub(v5: bool, qos: u8) {
    pubsub_with(v5, qos, qos).await;
}

/// Publishes at `pub_qos` to a subscription at `sub_qos`: delivery is at the lower of the two.
async fn pubsub_with(v5: bool, pub_qos: u8, sub_qos: u8) {
    let env = env().await;
    let (pub_arg, sub_arg) = (pub_qos.to_string(), sub_qos.to_string());
    let result = env.paho(
        "pubsub",
        &[
            "--version",
            version_arg(v5),
            "--qos",
            &pub_arg,
            "--sub-qos",
            &sub_arg,
            "--count",
            "5",
        ],
    );
    let qos = pub_qos.min(sub_qos);
    assert_eq!(
        result["granted"],
        serde_json::json!([sub_qos]),
        "SUBACK grants the requested QoS: {result:#}"
    );
    assert_eq!(
        payloads(&result["received"]),
        ["m0", "m1", "m2", "m3", "m4"],
        "all messages, in order: {result:#}"
    );
    for message in messages(&result, "received") {
        assert_eq!(
            message["qos"], qos,
            "delivered at the subscription's QoS: {message}"
        );
        assert_eq!(
            message["retain"], false,
            "a live message has RETAIN 0: {message}"
        );
    }
    assert_eq!(
        payloads(&result["extra"]),
        Vec::<String>::new(),
        "no duplicates: {result:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_pubsub_qos0() {
    pubsub(false, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_pubsub_qos1() {
    pubsub(false, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_pubsub_qos2() {
    pubsub(false, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_pubsub_qos0() {
    pubsub(true, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_pubsub_qos1() {
    pubsub(true, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_pubsub_qos2() {
    pubsub(true, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_delivery_qos_is_the_lower_of_publish_and_subscription() {
    pubsub_with(false, 1, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_delivery_qos_is_the_lower_of_publish_and_subscription() {
    pubsub_with(true, 2, 1).await;
}

// --- MQTT 5 properties ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_properties_reach_the_subscriber() {
    let env = env().await;
    let result = env.paho("v5-properties", &[]);
    let received = messages(&result, "received");
    assert_eq!(received.len(), 1, "one message: {result:#}");
    let props = &received[0]["properties"];
    assert_eq!(
        props["UserProperty"], result["sent_user_properties"],
        "user properties arrive complete and in order (repeated keys included)"
    );
    assert_eq!(
        props["ResponseTopic"],
        format!(
            "{}/reply",
            received[0]["topic"].as_str().unwrap_or_default()
        )
    );
    assert_eq!(
        props["CorrelationData"], "0001636f7272ff",
        "correlation data bytes unchanged"
    );
    assert_eq!(props["ContentType"], "application/json");
    assert_eq!(props["PayloadFormatIndicator"], 1);
    let expiry = props["MessageExpiryInterval"]
        .as_u64()
        .unwrap_or_else(|| panic!("no Message Expiry: {props}"));
    assert!(
        (295..=300).contains(&expiry),
        "remaining message expiry {expiry}, published with 300"
    );
    assert_eq!(received[0]["payload"], r#"{"hello": 1}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_request_response_with_correlation_data() {
    let env = env().await;
    let result = env.paho("v5-request-response", &[]);
    assert_eq!(
        result["request"]["properties"]["ResponseTopic"], result["reply_topic"],
        "the responder sees the Response Topic: {result:#}"
    );
    let reply = messages(&result, "reply");
    assert_eq!(
        payloads(&result["reply"]),
        ["noon"],
        "the reply reaches the requester: {result:#}"
    );
    assert_eq!(
        reply[0]["properties"]["CorrelationData"],
        hex_of("req-42"),
        "correlation data echoed"
    );
}

fn hex_of(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_topic_alias_from_the_client() {
    let env = env().await;
    let result = env.paho("v5-topic-alias", &[]);
    assert_eq!(
        result["connack"]["properties"]["TopicAliasMaximum"], 8,
        "CONNACK offers 8 topic aliases (AWS's limit): {result:#}"
    );
    assert_eq!(
        payloads(&result["received"]),
        ["alias-set", "alias-used-1", "alias-used-2"],
        "messages sent with the alias arrive: {result:#}"
    );
    let first_topic = &result["received"][0]["topic"];
    for message in messages(&result, "received") {
        assert_eq!(
            &message["topic"], first_topic,
            "the alias resolves to the topic: {message}"
        );
    }
    assert_eq!(result["publisher_still_connected"], true, "{result:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_expired_queued_message_is_not_delivered() {
    let env = env().await;
    let result = env.paho("v5-message-expiry", &[]);
    assert_eq!(result["connack"]["session_present"], true, "{result:#}");
    assert_eq!(
        payloads(&result["received"]),
        ["long-lived"],
        "the 1 s message expired while queued: {result:#}"
    );
    let left = result["received"][0]["properties"]["MessageExpiryInterval"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        (45..=58).contains(&left),
        "remaining expiry {left} s after ~2 s in the queue (sent with 60)"
    );
}

// --- retained -----------------------------------------------------------------------------

async fn retained(v5: bool) {
    let env = env().await;
    let result = env.paho("retained", &["--version", version_arg(v5)]);
    let on_subscribe = messages(&result, "on_subscribe");
    assert_eq!(
        payloads(&result["on_subscribe"]),
        ["v2"],
        "only the newest retained message: {result:#}"
    );
    assert_eq!(
        on_subscribe[0]["retain"], true,
        "delivered on SUBSCRIBE with RETAIN 1"
    );
    let live = messages(&result, "live");
    assert_eq!(payloads(&result["live"]), ["v3"], "{result:#}");
    assert_eq!(
        live[0]["retain"], false,
        "to an existing subscription RETAIN is 0"
    );
    let late = messages(&result, "late_subscriber");
    assert_eq!(
        payloads(&result["late_subscriber"]),
        ["v3"],
        "v3 replaced v2: {result:#}"
    );
    assert_eq!(late[0]["retain"], true);
    assert_eq!(
        payloads(&result["live_delete"]),
        [""],
        "the empty retained publish is forwarded: {result:#}"
    );
    assert_eq!(
        payloads(&result["after_delete"]),
        Vec::<String>::new(),
        "an empty payload deletes: {result:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_retained_set_replace_delete() {
    retained(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retained_set_replace_delete() {
    retained(true).await;
}

// --- wills --------------------------------------------------------------------------------

async fn will(v5: bool) {
    let env = env().await;
    let result = env.paho("will", &["--version", version_arg(v5)]);
    assert_eq!(
        payloads(&result["after_clean_disconnect"]),
        Vec::<String>::new(),
        "no will after a clean DISCONNECT: {result:#}"
    );
    assert_eq!(
        payloads(&result["after_abrupt_close"]),
        ["will-after-abrupt-close"],
        "the will is published when the socket closes without DISCONNECT: {result:#}"
    );
    let retained = messages(&result, "retained_will");
    assert_eq!(
        payloads(&result["retained_will"]),
        ["retained-will"],
        "a retained will is kept: {result:#}"
    );
    assert_eq!(retained[0]["retain"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_will_on_abrupt_close_only() {
    will(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_on_abrupt_close_only() {
    will(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_interval() {
    let env = env().await;
    let result = env.paho("will-delay", &[]);
    assert_eq!(
        payloads(&result["delayed"]),
        ["delayed-will"],
        "the delayed will is published: {result:#}"
    );
    let delay = result["delay_seconds"].as_f64().unwrap_or(0.0);
    assert!(
        (1.5..=5.0).contains(&delay),
        "published {delay:.2} s after the close, Will Delay Interval is 2 s"
    );
    assert_eq!(
        result["resumed_connack"]["session_present"], true,
        "{result:#}"
    );
    assert_eq!(
        payloads(&result["after_return"]),
        Vec::<String>::new(),
        "no will when the client reconnects within the delay: {result:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_goes_out_when_the_session_ends_before_the_delay() {
    let env = env().await;
    let result = env.paho("will-session-end", &[]);
    assert_eq!(
        payloads(&result["received"]),
        ["will-at-session-end"],
        "Will Delay 30 s but Session Expiry 1 s: the will is published when the session ends: {result:#}"
    );
    let delay = result["delay_seconds"].as_f64().unwrap_or(0.0);
    assert!(
        delay <= 5.0,
        "published {delay:.2} s after the close, not after the 30 s will delay"
    );
}

async fn will_on_takeover(v5: bool) {
    let env = env().await;
    let result = env.paho("will-takeover", &["--version", version_arg(v5)]);
    assert_eq!(result["first_closed"], true, "{result:#}");
    assert_eq!(
        payloads(&result["received"]),
        ["will-of-the-replaced-connection"],
        "a connection closed by a takeover never sent DISCONNECT, so its will is published: {result:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_will_on_session_takeover() {
    will_on_takeover(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_on_session_takeover() {
    will_on_takeover(true).await;
}

// --- persistent sessions and takeover -----------------------------------------------------

async fn session_resume(v5: bool) {
    let env = env().await;
    let result = env.paho(
        "session-resume",
        &["--version", version_arg(v5), "--count", "6"],
    );
    assert_eq!(
        result["first_connack"]["session_present"], false,
        "{result:#}"
    );
    assert_eq!(
        result["resumed_connack"]["session_present"], true,
        "the session was kept: {result:#}"
    );
    let sent = messages(&result, "sent");
    let received = messages(&result, "received");
    let mut got: Vec<(String, u64)> = received
        .iter()
        .map(|m| {
            (
                m["payload"].as_str().unwrap_or_default().to_owned(),
                m["qos"].as_u64().unwrap_or(9),
            )
        })
        .collect();
    let mut want: Vec<(String, u64)> = sent
        .iter()
        .map(|m| {
            (
                m["payload"].as_str().unwrap_or_default().to_owned(),
                m["qos"].as_u64().unwrap_or(9),
            )
        })
        .collect();
    // Per QoS the order must be kept; across QoS levels MQTT allows interleaving.
    for qos in [1, 2] {
        let of = |list: &[(String, u64)]| {
            list.iter()
                .filter(|(_, q)| *q == qos)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            of(&got),
            of(&want),
            "queued QoS {qos} messages, in order: {result:#}"
        );
    }
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "every queued message, each at its QoS: {result:#}"
    );
    assert_eq!(
        payloads(&result["extra"]),
        Vec::<String>::new(),
        "no duplicates: {result:#}"
    );
    assert_eq!(
        result["clean_connack"]["session_present"], false,
        "a clean start discards the session: {result:#}"
    );
    assert_eq!(
        payloads(&result["after_clean_start"]),
        Vec::<String>::new(),
        "{result:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_persistent_session_queues_while_offline() {
    session_resume(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expiry_resume_with_queued_messages() {
    session_resume(true).await;
}

async fn unacked_redelivery(v5: bool) {
    let env = env().await;
    let result = env.paho("unacked-redelivery", &["--version", version_arg(v5)]);
    assert_eq!(
        payloads(&result["first_connection"]),
        ["acked", "never-acked"],
        "{result:#}"
    );
    assert_eq!(
        result["resumed_connack"]["session_present"], true,
        "{result:#}"
    );
    assert_eq!(
        payloads(&result["redelivered"]),
        ["never-acked"],
        "only the unacknowledged QoS 1 message is sent again on resume: {result:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_unacknowledged_qos1_is_redelivered_on_resume() {
    unacked_redelivery(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_unacknowledged_qos1_is_redelivered_on_resume() {
    unacked_redelivery(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_ends_after_its_expiry_interval() {
    let env = env().await;
    let result = env.paho("session-expiry", &[]);
    let connack = &result["connack_after_expiry"];
    assert_eq!(
        connack["session_present"], false,
        "a 2 s session is gone 3.5 s after the disconnect: {result:#}"
    );
    assert_eq!(
        payloads(&result["delivered_after_expiry"]),
        Vec::<String>::new(),
        "its queued message went with it: {result:#}"
    );
    assert_eq!(
        connack["properties"]["SessionExpiryInterval"], 3600,
        "a request for 100000 s is capped at the 3600 s maximum and CONNACK says so: {result:#}"
    );
}

async fn takeover(v5: bool) {
    let env = env().await;
    let result = env.paho("takeover", &["--version", version_arg(v5)]);
    assert_eq!(
        result["second_connack"]["session_present"], true,
        "the new connection resumes the session: {result:#}"
    );
    assert_eq!(
        result["first_closed"], true,
        "the old connection is closed: {result:#}"
    );
    if v5 {
        assert_eq!(
            result["first_disconnect_reason"], 0x8E,
            "DISCONNECT 0x8E Session taken over: {result:#}"
        );
    }
    assert_eq!(
        payloads(&result["second_received"]),
        ["to-the-new-connection"],
        "{result:#}"
    );
    assert_eq!(
        payloads(&result["first_received"]),
        Vec::<String>::new(),
        "{result:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_session_takeover() {
    takeover(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_takeover() {
    takeover(true).await;
}

// --- shared subscriptions -----------------------------------------------------------------

async fn shared(v5: bool) {
    let env = env().await;
    let result = env.paho("shared", &["--version", version_arg(v5), "--count", "20"]);
    let all: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    assert_eq!(
        payloads(&result["plain"]),
        all,
        "a plain subscriber gets everything: {result:#}"
    );
    let a = payloads(&result["member_a"]);
    let b = payloads(&result["member_b"]);
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both group members get a share: a={a:?} b={b:?}"
    );
    let mut both: Vec<String> = a.iter().chain(b.iter()).cloned().collect();
    assert_eq!(
        both.len(),
        20,
        "each message goes to exactly one member: a={a:?} b={b:?}"
    );
    both.sort_by_key(|p| p[1..].parse::<u32>().unwrap_or(u32::MAX));
    assert_eq!(both, all, "no message lost or doubled: a={a:?} b={b:?}");
    let after_leave: Vec<String> = (0..5).map(|i| format!("after-leave-{i}")).collect();
    assert_eq!(
        payloads(&result["after_leave"]),
        after_leave,
        "once member b left, member a gets every message of the group: {result:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_shared_subscription_splits_messages() {
    shared(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_shared_subscription_splits_messages() {
    shared(true).await;
}

// --- cross-version ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_version_between_paho_clients() {
    let env = env().await;
    let result = env.paho("cross-version", &[]);
    assert_eq!(
        payloads(&result["to_v311"]),
        ["from-v5"],
        "MQTT 5 → 3.1.1: {result:#}"
    );
    assert_eq!(
        payloads(&result["to_v5"]),
        ["from-v311"],
        "MQTT 3.1.1 → 5: {result:#}"
    );
    let props = &result["to_v5"][0]["properties"];
    assert!(
        props.get("UserProperty").is_none(),
        "a 3.1.1 message has no user properties: {props}"
    );
}
