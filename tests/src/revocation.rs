//! Changing a certificate's status closes its live connections within a second.

use std::time::{Duration, Instant};

use thingd_tests::{TestServer, set_certificate_status};

use crate::raw_protocol::{Connect, RawClient, WAIT};
use crate::rumqttc_v311::V3;
use crate::tls_refusals::{Outcome, attempt};

type TestResult = anyhow::Result<()>;

/// Runs `thingd cert set-status` and returns when the command has finished.
async fn set_status(server: &TestServer, id: &str, status: &str) -> anyhow::Result<()> {
    let (dir, id, status) = (
        server.data_dir.path().to_path_buf(),
        id.to_owned(),
        status.to_owned(),
    );
    tokio::task::spawn_blocking(move || set_certificate_status(&dir, &id, &status)).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactive_closes_a_live_connection_within_a_second() -> TestResult {
    let server = TestServer::start().await?;
    let device = crate::raw_protocol::ready_device(&server, "doomed").await?;
    let keeper = crate::raw_protocol::ready_device(&server, "keeper").await?;
    let (mut doomed, _) =
        V3::connect(crate::rumqttc_v311::options(&server, &device, "doomed")).await?;
    let mut survivor = V3::simple(&server, &keeper, "survivor").await?;
    survivor.sub("alive/t", rumqttc::QoS::AtMostOnce).await?;

    set_status(&server, &device.id, "INACTIVE").await?;
    let changed = Instant::now();
    doomed.expect_error(Duration::from_secs(3)).await?;
    let took = changed.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "connection closed {took:?} after the status change"
    );

    // It cannot come back...
    let config = crate::raw_protocol::client_config(
        &device.ca,
        Some(crate::raw_protocol::device_identity(&device)?),
    )?;
    assert_eq!(
        attempt(server.mqtts(), config.clone()).await?,
        Outcome::Refused
    );

    // ...while another device's connection is untouched.
    survivor
        .client
        .publish("alive/t", rumqttc::QoS::AtMostOnce, false, "yes")
        .await?;
    assert_eq!(&survivor.next_publish().await?.payload[..], b"yes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_client_is_told_administrative_action() -> TestResult {
    let server = TestServer::start().await?;
    let device = crate::raw_protocol::ready_device(&server, "v5-doomed").await?;
    let (mut client, _) = RawClient::connect(&server, &device, &Connect::v5("v5-doomed")).await?;
    let mut second = RawClient::v311(&server, &device, "v3-doomed").await?;
    set_status(&server, &device.id, "REVOKED").await?;
    let changed = Instant::now();
    let reason = client.expect_disconnect(Duration::from_secs(3)).await?;
    assert!(
        changed.elapsed() < Duration::from_millis(1500),
        "closed after {:?}",
        changed.elapsed()
    );
    assert_eq!(reason, Some(0x98), "DISCONNECT Administrative action");
    // Every connection of that certificate goes, not just one.
    assert!(second.expect_closed(WAIT).await?.is_empty());
    assert!(
        changed.elapsed() < Duration::from_millis(1500),
        "second closed after {:?}",
        changed.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_does_not_let_an_inactive_device_back_in() -> TestResult {
    let server = TestServer::start().await?;
    let device = crate::raw_protocol::ready_device(&server, "persisted").await?;
    let mut opts = crate::rumqttc_v311::options(&server, &device, "persisted");
    opts.set_clean_session(false);
    let (mut client, _) = V3::connect(opts.clone()).await?;
    client.sub("p/t", rumqttc::QoS::AtLeastOnce).await?;
    set_status(&server, &device.id, "INACTIVE").await?;
    client.expect_error(Duration::from_secs(3)).await?;
    drop(client);
    let again = tokio::time::timeout(WAIT, V3::connect(opts)).await;
    assert!(
        !matches!(again, Ok(Ok(_))),
        "an INACTIVE certificate reconnected"
    );
    Ok(())
}
