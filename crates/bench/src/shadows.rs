//! `thingd-bench shadows`: durable Device Shadow updates over MQTT from many things at once.
//!
//! Every thing keeps one update in flight until the deadline: publish
//! `{"state":{"reported":{"temp":n}},"clientToken":"n"}` to its `update` topic, wait for the
//! accepted document (which thingd sends only after the update is committed to SQLite),
//! repeat. By default each thing has its own mTLS connection (a device); with
//! `--things-per-connection K` one connection carries K things (a gateway), subscribed to
//! each thing's `update/accepted`. The figures are durable updates per second,
//! update→accepted latency, and thingd's CPU per update.

use std::collections::HashMap;
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
    /// Things updating concurrently, one update in flight each.
    #[arg(long, default_value_t = 200)]
    things: usize,
    /// Things sharing one connection (1: every thing is a device with its own connection;
    /// more: gateways).
    #[arg(long, default_value_t = 1)]
    things_per_connection: usize,
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
    /// Things of the connection that got no update accepted.
    idle_things: usize,
    latency_us: Histogram<u64>,
}

/// Runs the scenario and prints a Markdown table; false if a thing failed.
pub(crate) async fn run(args: ShadowArgs) -> anyhow::Result<bool> {
    let (things, per_conn, seconds) = if args.smoke {
        (4, 2, 1)
    } else {
        (args.things, args.things_per_connection.max(1), args.seconds)
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
        spill: None,
        reset_on_close: false,
    });
    let ticks = brokers::clock_ticks();

    let conns = connect_things(&endpoint, "shadow-bench", things, per_conn).await?;
    let cpu_before = brokers::cpu_secs(broker.pid(), ticks)?;
    let own_cpu_before = brokers::cpu_secs(std::process::id(), ticks)?;
    let started = Instant::now();
    let Updated {
        accepted: total,
        latency_us,
        idle_things: failures,
    } = update_all(conns, started + Duration::from_secs(seconds)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = brokers::cpu_secs(broker.pid(), ticks)? - cpu_before;
    let own_cpu = brokers::cpu_secs(std::process::id(), ticks)? - own_cpu_before;
    drop(broker);

    println!(
        "| things | things/connection | seconds | durable updates | updates/s | p50 | p99 | thingd CPU µs/update | load generator CPU µs/update |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let per_update = |secs: f64| {
        if total > 0 {
            secs * 1e6 / total as f64
        } else {
            0.0
        }
    };
    println!(
        "| {things} | {per_conn} | {elapsed:.1} | {total} | {:.0} | {:.2} ms | {:.2} ms | {:.1} | {:.1} |",
        total as f64 / elapsed,
        latency_us.value_at_quantile(0.50) as f64 / 1000.0,
        latency_us.value_at_quantile(0.99) as f64 / 1000.0,
        per_update(cpu),
        per_update(own_cpu),
    );
    if failures > 0 {
        eprintln!("{failures} of {things} things got no update accepted");
    }
    Ok(failures == 0 && total > 0)
}

/// Connections for `things` things named `{prefix}-thing-{i}`, `per_conn` to a connection
/// (client ids `{prefix}-conn-{c}`), each subscribed to its things' `update/accepted`.
pub(crate) async fn connect_things(
    endpoint: &Endpoint,
    prefix: &str,
    things: usize,
    per_conn: usize,
) -> anyhow::Result<Vec<(Conn, Vec<String>)>> {
    let names: Vec<String> = (0..things).map(|i| format!("{prefix}-thing-{i}")).collect();
    let mut conns = Vec::new();
    for (c, group) in names.chunks(per_conn.max(1)).enumerate() {
        let mut conn = Conn::connect(endpoint, &format!("{prefix}-conn-{c}"), None)
            .await
            .with_context(|| format!("connecting connection {c}"))?;
        for name in group {
            conn.subscribe(
                &format!("$aws/things/{name}/shadow/update/accepted"),
                QoS::AtLeastOnce,
            )
            .await?;
        }
        conns.push((conn, group.to_vec()));
    }
    Ok(conns)
}

/// What every thing's updates came to.
pub(crate) struct Updated {
    /// Updates accepted (each committed before its `update/accepted`).
    pub(crate) accepted: u64,
    /// Things that got no update accepted, counting every thing of a failed connection.
    pub(crate) idle_things: usize,
    /// Update → accepted, µs.
    pub(crate) latency_us: Histogram<u64>,
}

/// Every connection's things update until `deadline`, one update in flight each.
pub(crate) async fn update_all(
    conns: Vec<(Conn, Vec<String>)>,
    deadline: Instant,
) -> anyhow::Result<Updated> {
    let mut tasks = Vec::with_capacity(conns.len());
    for (conn, group) in conns {
        let n = group.len();
        tasks.push((n, tokio::spawn(update_loop(conn, group, deadline))));
    }
    let mut updated = Updated {
        accepted: 0,
        idle_things: 0,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 2)?,
    };
    for (n, task) in tasks {
        match task.await? {
            Ok(result) => {
                updated.accepted += result.accepted;
                updated.latency_us.add(&result.latency_us)?;
                updated.idle_things += result.idle_things;
            }
            Err(error) => {
                eprintln!("a connection failed: {error:#}");
                updated.idle_things += n;
            }
        }
    }
    Ok(updated)
}

/// One connection's things: each keeps one update in flight until `deadline`; writes are
/// batched per read (a gateway answers everything it has received, then flushes once).
async fn update_loop(
    mut conn: Conn,
    things: Vec<String>,
    deadline: Instant,
) -> anyhow::Result<ThingResult> {
    let topics: Vec<ByteStr> = things
        .iter()
        .map(|name| ByteStr::from(format!("$aws/things/{name}/shadow/update")))
        .collect();
    let index: HashMap<&str, usize> = things
        .iter()
        .enumerate()
        .map(|(k, name)| (name.as_str(), k))
        .collect();
    let mut result = ThingResult {
        accepted: 0,
        idle_things: 0,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 2)?,
    };
    let mut sent_at = vec![Instant::now(); things.len()];
    let mut accepted = vec![0u64; things.len()];
    let mut counter = 0u64;
    let mut send = |conn: &mut Conn, k: usize, sent_at: &mut [Instant]| -> anyhow::Result<()> {
        counter += 1;
        let body = format!(
            r#"{{"state":{{"reported":{{"temp":{}}}}},"clientToken":"{counter}"}}"#,
            counter % 50
        );
        sent_at[k] = Instant::now();
        conn.queue_publish(&topics[k], QoS::AtMostOnce, Bytes::from(body))?;
        Ok(())
    };
    for k in 0..things.len() {
        send(&mut conn, k, &mut sent_at)?;
    }
    let mut in_flight = things.len();
    while in_flight > 0 {
        let Some(packet) = conn.try_decode()? else {
            conn.flush().await?;
            tokio::time::timeout(Duration::from_secs(10), conn.fill())
                .await
                .context("no update/accepted within 10 s")??;
            continue;
        };
        let Packet::Publish(p) = packet else { continue };
        if let Some(id) = p.packet_id {
            conn.queue_puback(id)?;
        }
        let Some(thing) = p
            .topic
            .strip_prefix("$aws/things/")
            .and_then(|rest| rest.strip_suffix("/shadow/update/accepted"))
        else {
            continue;
        };
        let Some(&k) = index.get(thing) else { continue };
        let us = u64::try_from(sent_at[k].elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        result.latency_us.record(us.min(60_000_000))?;
        result.accepted += 1;
        accepted[k] += 1;
        in_flight -= 1;
        if Instant::now() < deadline {
            send(&mut conn, k, &mut sent_at)?;
            in_flight += 1;
        }
    }
    conn.flush().await?;
    result.idle_things = accepted.iter().filter(|&&n| n == 0).count();
    if result.accepted == 0 {
        bail!("no update accepted for {}", things.join(", "));
    }
    Ok(result)
}
