//! `thingd-bench shadows`: durable Device Shadow updates over MQTT from many things at once.
//!
//! Each of N connections is one thing. It subscribes to its own `update/accepted`, then loops
//! until the deadline: publish `{"state":{"reported":{"temp":n}}}` to its `update` topic and
//! wait for the accepted document (which thingd sends only after the update is committed to
//! SQLite). The figures are durable updates per second, update→accepted latency, and thingd's
//! CPU per update.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use thingd_mqtt::{ByteStr, Packet, QoS};

use crate::brokers::{self, Kind, Pki};
use crate::client::{Conn, Endpoint};

/// What to run.
#[derive(clap::Args)]
pub(crate) struct ShadowArgs {
    /// Things (one connection each), updating concurrently.
    #[arg(long, default_value_t = 200)]
    things: usize,
    /// How long to run, seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Tiny counts; exits non-zero unless every thing got its updates accepted.
    #[arg(long)]
    smoke: bool,
    /// The thingd binary (default: build it with cargo).
    #[arg(long, env = "THINGD_BIN")]
    thingd: Option<std::path::PathBuf>,
}

struct ThingResult {
    accepted: u64,
    latency_us: Histogram<u64>,
}

/// Runs the scenario and prints a Markdown table; false if a thing failed.
pub(crate) async fn run(args: ShadowArgs) -> anyhow::Result<bool> {
    let (things, seconds) = if args.smoke {
        (4, 1)
    } else {
        (args.things, args.seconds)
    };
    let thingd = crate::thingd_binary(args.thingd)?;
    let work = tempfile::Builder::new()
        .prefix("thingd-bench-shadows-")
        .tempdir()?;
    let pki = Pki::create(&thingd, work.path())?;
    let installed = brokers::locate(Kind::Thingd, &thingd, None, &crate::repo_root())
        .map_err(|reason| anyhow::anyhow!("thingd: {reason}"))?;
    let broker = brokers::start(&installed, &pki, work.path())?;
    let endpoint = Arc::new(Endpoint {
        addr: broker.tls,
        tls: Some(Arc::new(pki.client_config()?)),
    });
    let ticks = brokers::clock_ticks();

    let mut conns = Vec::with_capacity(things);
    for i in 0..things {
        let mut conn = Conn::connect(&endpoint, &format!("shadow-bench-{i}"), None)
            .await
            .with_context(|| format!("connecting thing {i}"))?;
        conn.subscribe(
            &format!("$aws/things/shadow-bench-{i}/shadow/update/accepted"),
            QoS::AtLeastOnce,
        )
        .await?;
        conns.push(conn);
    }
    let cpu_before = brokers::cpu_secs(broker.pid(), ticks)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(things);
    for (i, conn) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(update_loop(conn, i, deadline)));
    }
    let mut total = 0u64;
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2)?;
    let mut failures = 0;
    for task in tasks {
        match task.await? {
            Ok(result) => {
                total += result.accepted;
                latency_us.add(&result.latency_us)?;
                if result.accepted == 0 {
                    failures += 1;
                }
            }
            Err(error) => {
                eprintln!("a thing failed: {error:#}");
                failures += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = brokers::cpu_secs(broker.pid(), ticks)? - cpu_before;
    drop(broker);

    println!(
        "| things | seconds | durable updates | updates/s | p50 | p99 | thingd CPU µs/update |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {things} | {elapsed:.1} | {total} | {:.0} | {:.2} ms | {:.2} ms | {:.1} |",
        total as f64 / elapsed,
        latency_us.value_at_quantile(0.50) as f64 / 1000.0,
        latency_us.value_at_quantile(0.99) as f64 / 1000.0,
        if total > 0 {
            cpu * 1e6 / total as f64
        } else {
            0.0
        },
    );
    if failures > 0 {
        eprintln!("{failures} of {things} things got no update accepted");
    }
    Ok(failures == 0 && total > 0)
}

/// One thing: update, wait for accepted, repeat until `deadline`.
async fn update_loop(mut conn: Conn, i: usize, deadline: Instant) -> anyhow::Result<ThingResult> {
    let topic = ByteStr::from(format!("$aws/things/shadow-bench-{i}/shadow/update"));
    let mut result = ThingResult {
        accepted: 0,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 2)?,
    };
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let body = format!(
            r#"{{"state":{{"reported":{{"temp":{}}}}},"clientToken":"{n}"}}"#,
            n % 50
        );
        let sent = Instant::now();
        conn.queue_publish(&topic, QoS::AtMostOnce, Bytes::from(body))?;
        conn.flush().await?;
        loop {
            let packet = tokio::time::timeout(Duration::from_secs(10), conn.recv())
                .await
                .context("no update/accepted within 10 s")??;
            if let Packet::Publish(p) = packet {
                if let Some(id) = p.packet_id {
                    conn.queue_puback(id)?;
                }
                if p.topic.ends_with("/update/accepted") {
                    break;
                }
            }
        }
        let us = u64::try_from(sent.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        result.latency_us.record(us.min(60_000_000))?;
        result.accepted += 1;
    }
    conn.flush().await?;
    if result.accepted == 0 {
        bail!("thing {i}: no update accepted");
    }
    Ok(result)
}
