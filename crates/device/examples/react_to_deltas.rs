//! Waits for shadow deltas and applies them: a `led` of "on" or "off" is switched and
//! reported back, which clears the delta. Set one from elsewhere, for example:
//!
//! ```sh
//! cargo run -p thingd-device --example react_to_deltas -- ./MyJourneyIoTDevice localhost 8883 &
//! aws iot-data update-thing-shadow --thing-name MyJourneyIoTDevice \
//!     --payload '{"state":{"desired":{"led":"on"}}}' /dev/null
//! ```
//!
//! Stops after the first applied delta, or after 60 seconds.

mod common;

use std::time::Duration;

use serde_json::json;
use thingd_device::{Client, Shadow};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let device = common::device_from_args()?;
    let client = Client::connect(device.options).await?;
    let shadow = Shadow::classic(&client, &device.thing).await?;
    let mut deltas = shadow.deltas();
    shadow.update_reported(json!({ "led": "off" })).await?;
    println!("waiting for deltas on {}", shadow.topic_prefix());

    let wait = async {
        while let Some(delta) = deltas.recv().await {
            println!("delta (version {}): {}", delta.version, delta.state);
            if let Some(led) = delta.state["led"]
                .as_str()
                .filter(|l| ["on", "off"].contains(l))
            {
                println!("switching the led {led}");
                shadow.update_reported(json!({ "led": led })).await?;
                return Ok::<_, thingd_device::Error>(());
            }
        }
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(60), wait).await {
        Ok(result) => result?,
        Err(_) => println!("no delta within 60 s"),
    }
    client.disconnect().await;
    Ok(())
}
