//! The Prometheus endpoint after some real traffic.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use thingd_tests::{TestServer, scrape_metrics};

use crate::raw_protocol::{Connect, RawClient, client_config, device_identity, kind, publish};
use crate::tls_refusals::{Outcome, attempt};

type TestResult = anyhow::Result<()>;

/// Sums the samples of `name` whose labels include every pair in `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = if let Some(rest) = rest.strip_prefix('{') {
            let Some((inside, value)) = rest.split_once('}') else {
                continue;
            };
            (inside, value)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue; // a longer metric name with the same prefix
        };
        let matches = labels.iter().all(|(k, v)| {
            label_part
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        });
        if !matches {
            continue;
        }
        let value: f64 = value.split_whitespace().next()?.parse().ok()?;
        total = Some(total.unwrap_or(0.0) + value);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_messages_and_handshake_failures() -> TestResult {
    let server = TestServer::start().await?;
    let device = crate::raw_protocol::ready_device(&server, "metered").await?;
    let metrics_addr = server.running.metrics.context("metrics listener")?;
    // The server's own services may hold internal connections; count relative to them.
    let before = scrape_metrics(metrics_addr).await?;
    let base_total = sample(&before, "thingd_connections_total", &[]).unwrap_or(0.0);
    let base_current = sample(&before, "thingd_connections_current", &[]).unwrap_or(0.0);
    let base_handshakes = sample(
        &before,
        "thingd_tls_handshakes_total",
        &[("listener", "mqtts")],
    )
    .unwrap_or(0.0);

    let (mut sub, _) = RawClient::connect(&server, &device, &Connect::v5("m-sub")).await?;
    sub.subscribe(true, 1, &[], &[("m/#", 1)]).await?;
    let mut publisher = RawClient::v311(&server, &device, "m-pub").await?;
    publisher
        .send(&publish(false, "m/a", 1, false, 1, &[], b"one"))
        .await?;
    publisher.expect(kind::PUBACK).await?;
    publisher
        .send(&publish(false, "m/b", 0, false, 0, &[], b"two"))
        .await?;
    for _ in 0..2 {
        let p = sub.expect_publish(true).await?;
        if p.qos == 1 {
            sub.send(&crate::raw_protocol::ack(
                crate::raw_protocol::PUBACK,
                p.pkid,
            ))
            .await?;
        }
    }

    // Two refused handshakes: no certificate, and a certificate nobody issued.
    assert_eq!(
        attempt(server.mqtts(), client_config(&device.ca, None)?).await?,
        Outcome::Refused
    );
    let stranger = crate::raw_protocol::ready_device(&server, "stranger").await?;
    let (dir, id) = (server.data_dir.path().to_path_buf(), stranger.id.clone());
    tokio::task::spawn_blocking(move || thingd_tests::set_certificate_status(&dir, &id, "REVOKED"))
        .await??;
    let stranger_config = client_config(&stranger.ca, Some(device_identity(&stranger)?))?;
    crate::tls_refusals::settles_to(server.mqtts(), stranger_config, Outcome::Refused).await?;

    // One more connection that closes, so the gauge goes up and down.
    let closing = RawClient::v5(&server, &device, "m-brief").await?;
    closing.drop_connection();

    // The gauge drops once the server has noticed the close; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    let response = loop {
        let response = scrape_metrics(metrics_addr).await?;
        let settled =
            sample(&response, "thingd_connections_current", &[]) == Some(base_current + 2.0);
        if settled || Instant::now() > deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "{}",
        response.lines().next().unwrap_or_default()
    );
    let text = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or(&response);

    let connections = sample(text, "thingd_connections_total", &[])
        .context("thingd_connections_total missing")?;
    assert!(
        connections >= base_total + 3.0,
        "connections_total {connections}, {base_total} before"
    );
    let current = sample(text, "thingd_connections_current", &[])
        .context("thingd_connections_current missing")?;
    assert_eq!(
        current - base_current,
        2.0,
        "two clients are still connected:\n{text}"
    );

    let in_q1 =
        sample(text, "thingd_messages_in_total", &[("qos", "1")]).context("messages_in qos 1")?;
    let in_q0 =
        sample(text, "thingd_messages_in_total", &[("qos", "0")]).context("messages_in qos 0")?;
    assert!(
        in_q1 >= 1.0 && in_q0 >= 1.0,
        "in: qos1 {in_q1}, qos0 {in_q0}"
    );
    let out = sample(text, "thingd_messages_out_total", &[]).context("messages_out")?;
    assert!(out >= 2.0, "messages_out_total {out}");
    assert!(sample(text, "thingd_bytes_in_total", &[]).unwrap_or(0.0) > 0.0);
    assert!(sample(text, "thingd_bytes_out_total", &[]).unwrap_or(0.0) > 0.0);

    let no_cert = sample(
        text,
        "thingd_tls_handshake_failures_total",
        &[("reason", "no_client_certificate")],
    );
    assert!(
        no_cert.unwrap_or(0.0) >= 1.0,
        "no-certificate failures not counted:\n{text}"
    );
    let not_active = sample(
        text,
        "thingd_tls_handshake_failures_total",
        &[("reason", "certificate_revoked")],
    )
    .unwrap_or(0.0)
        + sample(
            text,
            "thingd_tls_handshake_failures_total",
            &[("reason", "certificate_not_active")],
        )
        .unwrap_or(0.0);
    assert!(
        not_active >= 1.0,
        "revoked-certificate failures not counted by reason:\n{text}"
    );
    let ok = sample(
        text,
        "thingd_tls_handshakes_total",
        &[("listener", "mqtts")],
    )
    .unwrap_or(0.0);
    assert!(ok >= base_handshakes + 3.0, "successful handshakes {ok}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_issuer_is_its_own_failure_reason() -> TestResult {
    let server = TestServer::start().await?;
    let device = crate::raw_protocol::ready_device(&server, "m-ca").await?;
    let metrics_addr = server.running.metrics.context("metrics listener")?;
    let config = client_config(&device.ca, Some(crate::tls_refusals::foreign_identity()?))?;
    assert_eq!(attempt(server.mqtts(), config).await?, Outcome::Refused);
    let text = scrape_metrics(metrics_addr).await?;
    let unknown = sample(
        &text,
        "thingd_tls_handshake_failures_total",
        &[("reason", "unknown_issuer")],
    );
    assert!(
        unknown.unwrap_or(0.0) >= 1.0,
        "unknown-CA failure not counted as unknown_issuer:\n{text}"
    );
    Ok(())
}

#[test]
fn sample_parses_prometheus_text() {
    let text = "# TYPE a_total counter\na_total{x=\"1\",y=\"2\"} 3\na_total{x=\"2\"} 4\na_total_more 9\nb 1.5\n";
    assert_eq!(sample(text, "a_total", &[]), Some(7.0));
    assert_eq!(sample(text, "a_total", &[("x", "1")]), Some(3.0));
    assert_eq!(sample(text, "a_total", &[("x", "3")]), None);
    assert_eq!(sample(text, "b", &[]), Some(1.5));
}
