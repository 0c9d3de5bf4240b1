//! Reports a temperature to the device's classic shadow, reads the shadow back, and shows
//! the optimistic-locking error a stale `version` gets.
//!
//! ```sh
//! cargo run -p thingd-device --example shadow_round_trip -- ./MyJourneyIoTDevice localhost 8883
//! ```

mod common;

use serde_json::json;
use thingd_device::{Client, Error, Shadow, ShadowError};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let device = common::device_from_args()?;
    let client = Client::connect(device.options).await?;
    let shadow = Shadow::classic(&client, &device.thing).await?;

    let accepted = shadow.update_reported(json!({ "temp": 32 })).await?;
    println!("update accepted, version {}", accepted["version"]);

    let document = shadow.get().await?;
    println!("shadow state: {}", document["state"]);

    // Name a version that is no longer current: the service answers 409.
    let stale = json!({ "state": { "reported": { "temp": 33 } }, "version": 0 });
    match shadow.update(stale).await {
        Err(Error::ShadowRejected(ShadowError { code: 409, message })) => {
            println!("stale update rejected as expected: 409 {message}")
        }
        other => println!("unexpected answer to a stale update: {other:?}"),
    }
    client.disconnect().await;
    Ok(())
}
