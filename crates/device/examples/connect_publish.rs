//! Connects with a device certificate, subscribes to the device's own topic, publishes the
//! seed article's reading there with QoS 1 and waits for the PUBACK and the echo.
//!
//! ```sh
//! cargo run -p thingd-device --example connect_publish -- ./MyJourneyIoTDevice localhost 8883
//! ```

mod common;

use std::time::Duration;

use thingd_device::{Client, QoS};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let device = common::device_from_args()?;
    let client = Client::connect(device.options).await?;
    println!("connected as {}", client.client_id());

    let topic = format!("things/{}/telemetry", device.thing);
    let mut messages = client.subscribe(&topic, QoS::AtLeastOnce).await?;
    client
        .publish(&topic, QoS::AtLeastOnce, false, r#"{"temp":"32"}"#)
        .await?;
    println!("published to {topic} (PUBACK received)");

    let echo = tokio::time::timeout(Duration::from_secs(10), messages.recv()).await?;
    if let Some(message) = echo {
        println!(
            "received on {}: {}",
            message.topic,
            String::from_utf8_lossy(&message.payload)
        );
    }
    client.disconnect().await;
    Ok(())
}
