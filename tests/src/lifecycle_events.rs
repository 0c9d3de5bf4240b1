//! AWS lifecycle events, seen by an ordinary subscriber (rumqttc, MQTT 3.1.1): connected,
//! subscribed, unsubscribed and disconnected, with AWS's payload fields; and a policy denial
//! seen by rumqttc as AWS devices see it (the connection closes).

use std::time::Duration;

use rumqttc::QoS;
use serde_json::Value;
use thingd_tests::{TestServer, issue_devices_ready};

use crate::rumqttc_v311::{V3, options};

type TestResult = anyhow::Result<()>;

fn json(payload: &[u8]) -> anyhow::Result<Value> {
    Ok(serde_json::from_slice(payload)?)
}

/// The next event about `client_id` (the watcher also sees its own).
async fn next_about(watcher: &mut V3, client_id: &str) -> anyhow::Result<rumqttc::Publish> {
    loop {
        let event = watcher.next_publish().await?;
        if event.topic.ends_with(&format!("/{client_id}")) {
            return Ok(event);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_report_connects_subscriptions_and_disconnects() -> TestResult {
    let server = TestServer::start().await?;
    let devices = issue_devices_ready(&server, &["watcher", "sensor"]).await?;
    let mut watcher = V3::simple(&server, &devices[0], "watcher").await?;
    watcher
        .sub("$aws/events/presence/+/+", QoS::AtLeastOnce)
        .await?;
    watcher
        .sub("$aws/events/subscriptions/+/+", QoS::AtLeastOnce)
        .await?;

    let mut sensor = V3::simple(&server, &devices[1], "sensor-7").await?;
    let connected = next_about(&mut watcher, "sensor-7").await?;
    assert_eq!(connected.topic, "$aws/events/presence/connected/sensor-7");
    let connected = json(&connected.payload)?;
    assert_eq!(connected["eventType"], "connected");
    assert_eq!(connected["clientId"], "sensor-7");
    assert_eq!(connected["principalIdentifier"], devices[1].id.as_str());
    assert_eq!(connected["ipAddress"], "127.0.0.1");
    assert!(
        connected["timestamp"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000),
        "ms timestamp"
    );

    sensor
        .sub("things/sensor-7/commands", QoS::AtLeastOnce)
        .await?;
    let subscribed = next_about(&mut watcher, "sensor-7").await?;
    assert_eq!(
        subscribed.topic,
        "$aws/events/subscriptions/subscribed/sensor-7"
    );
    let subscribed = json(&subscribed.payload)?;
    assert_eq!(
        subscribed["topics"],
        serde_json::json!(["things/sensor-7/commands"])
    );
    assert_eq!(
        subscribed["sessionIdentifier"],
        connected["sessionIdentifier"]
    );

    sensor
        .client
        .unsubscribe("things/sensor-7/commands")
        .await?;
    let unsubscribed = next_about(&mut watcher, "sensor-7").await?;
    assert_eq!(
        unsubscribed.topic,
        "$aws/events/subscriptions/unsubscribed/sensor-7"
    );

    sensor.client.disconnect().await?;
    let disconnected = next_about(&mut watcher, "sensor-7").await?;
    assert_eq!(
        disconnected.topic,
        "$aws/events/presence/disconnected/sensor-7"
    );
    let disconnected = json(&disconnected.payload)?;
    assert_eq!(
        disconnected["disconnectReason"],
        "CLIENT_INITIATED_DISCONNECT"
    );
    assert_eq!(disconnected["clientInitiatedDisconnect"], true);
    assert_eq!(disconnected["versionNumber"], connected["versionNumber"]);
    assert_eq!(
        disconnected["sessionIdentifier"],
        connected["sessionIdentifier"]
    );

    // A second connection of the same client id gets the next version number; losing the
    // socket is reported as CONNECTION_LOST.
    let again = V3::simple(&server, &devices[1], "sensor-7").await?;
    let connected_again = json(&next_about(&mut watcher, "sensor-7").await?.payload)?;
    assert_eq!(
        connected_again["versionNumber"],
        connected["versionNumber"].as_u64().unwrap_or(0) + 1
    );
    drop(again);
    let lost = json(&next_about(&mut watcher, "sensor-7").await?.payload)?;
    assert_eq!(lost["disconnectReason"], "CONNECTION_LOST");
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_sees_a_denied_publish_close_the_connection() -> TestResult {
    let server = TestServer::start().await?;
    let devices = issue_devices_ready(&server, &["limited"]).await?;
    let store = server.running.store.clone();
    let arn = format!("arn:aws:iot:us-east-1:123456789012:cert/{}", devices[0].id);
    let document = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Action":["iot:Connect","iot:Subscribe","iot:Receive"],"Resource":"*"},
        {"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/allowed/${iot:ClientId}"}]}"#;
    store
        .transact(move |conn| {
            use thingd_store::registry::security::{attachments, policies};
            attachments::detach(conn, "thingd-dev-allow-all", &arn)?;
            policies::create(conn, "limited", document, 0)?;
            attachments::attach(conn, "limited", &arn, 0)
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(800)).await;

    let mut client = V3::connect(options(&server, &devices[0], "dev-9")).await?.0;
    client.sub("allowed/#", QoS::AtLeastOnce).await?;
    client
        .client
        .publish("allowed/dev-9", QoS::AtLeastOnce, false, "ok")
        .await?;
    assert_eq!(client.next_publish().await?.payload.as_ref(), b"ok");
    client
        .client
        .publish("allowed/someone-else", QoS::AtLeastOnce, false, "no")
        .await?;
    client.expect_error(Duration::from_secs(5)).await?;
    server.stop().await;
    Ok(())
}
