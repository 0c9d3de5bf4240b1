//! `thingd device simulate`: the seed article's sensor board, in software.
//!
//! A simulated device connects with a provisioned certificate (the files `thingd device
//! provision` writes), reports a temperature that rises from 10 to 40 and wraps (the
//! article's test signal) as `{"state":{"reported":{"temp":N}}}` through the Device Shadow,
//! and applies the deltas it is sent (`led` "on"/"off", `setpoint` a number) by reporting
//! the new state back. `--fleet N` runs N of them, each provisioned into the data directory
//! on first use, for demos and load tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Map, Value, json};
use thingd_device::{Client, ConnectOptions, Identity, ProtocolVersion, Shadow};

use crate::cli::DataDirArg;
use crate::config::Config;

/// `thingd device simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Data directory; with `--fleet`, devices are provisioned into `<data-dir>/simulated/`.
    #[command(flatten)]
    pub data: DataDirArg,
    /// A provisioned device directory (certificate.pem.crt, private.pem.key, root-ca.pem,
    /// endpoint.txt), as `thingd device provision --out` writes it.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Host to connect to [default: endpoint.txt of the device directory, else localhost].
    #[arg(long)]
    pub endpoint: Option<String>,
    /// MQTT-over-TLS port [default: the one in aws_certificate.h, else 8883].
    #[arg(long)]
    pub port: Option<u16>,
    /// Thing name (also the client id) [default: the certificate's common name, else the
    /// directory name]. With `--fleet`, the prefix of the devices' names.
    #[arg(long)]
    pub thing: Option<String>,
    /// Seconds between temperature reports.
    #[arg(long, default_value_t = 5.0)]
    pub interval: f64,
    /// Run this many simulated devices (needs `--data-dir` or THINGD_DATA_DIR to provision
    /// them).
    #[arg(long, default_value_t = 1)]
    pub fleet: u32,
    /// With `--fleet`: reports per second for the whole fleet (overrides `--interval`).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Speak MQTT 3.1.1 instead of 5.
    #[arg(long)]
    pub mqtt311: bool,
}

/// Counters shared by the devices of a run.
#[derive(Debug, Default)]
struct Stats {
    reports: AtomicU64,
    deltas: AtomicU64,
    errors: AtomicU64,
}

/// One simulated device's settings.
#[derive(Debug, Clone)]
struct DeviceSpec {
    thing: String,
    dir: PathBuf,
    host: String,
    port: u16,
    interval: Duration,
    protocol: ProtocolVersion,
    quiet: bool,
}

/// Runs the simulator until Ctrl-C or the duration.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if !(args.interval > 0.0 && args.interval.is_finite()) {
        bail!("--interval must be a positive number of seconds");
    }
    let protocol = if args.mqtt311 {
        ProtocolVersion::V311
    } else {
        ProtocolVersion::V5
    };
    let specs = if args.fleet <= 1 {
        let Some(dir) = args.dir.clone() else {
            bail!("give --dir <device directory> (from `thingd device provision --out`)");
        };
        vec![device_spec(
            &args,
            &dir,
            args.thing.clone(),
            protocol,
            false,
        )?]
    } else {
        fleet_specs(&args, protocol).await?
    };

    let stats = Arc::new(Stats::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut devices = tokio::task::JoinSet::new();
    let stagger = Duration::from_millis(if specs.len() > 1 { 20 } else { 0 });
    for spec in specs {
        devices.spawn(simulate_device(spec, stats.clone(), stop.clone()));
        tokio::time::sleep(stagger).await;
    }
    let deadline = async {
        match args.duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = deadline => {}
        _ = tokio::signal::ctrl_c() => println!("interrupted"),
    }
    stop.cancel();
    while devices.join_next().await.is_some() {}
    println!(
        "simulation finished: {} reports, {} deltas applied, {} errors",
        stats.reports.load(Ordering::Relaxed),
        stats.deltas.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed)
    );
    Ok(())
}

fn device_spec(
    args: &SimulateArgs,
    dir: &Path,
    thing: Option<String>,
    protocol: ProtocolVersion,
    quiet: bool,
) -> anyhow::Result<DeviceSpec> {
    let certificate = std::fs::read_to_string(dir.join("certificate.pem.crt"))
        .with_context(|| format!("{} is not a provisioned device directory", dir.display()))?;
    let thing = match thing {
        Some(t) => t,
        None => thingd_auth::inspect_certificate_pem(&certificate)
            .ok()
            .and_then(|info| info.common_name)
            .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
            .context("cannot tell the thing name: give --thing")?,
    };
    let host = match &args.endpoint {
        Some(h) => h.clone(),
        None => std::fs::read_to_string(dir.join("endpoint.txt"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".to_owned()),
    };
    let port = args
        .port
        .or_else(|| header_port(&dir.join("aws_certificate.h")))
        .unwrap_or(8883);
    Ok(DeviceSpec {
        thing,
        dir: dir.to_path_buf(),
        host,
        port,
        interval: Duration::from_secs_f64(args.interval),
        protocol,
        quiet,
    })
}

/// The port `thingd device provision` wrote into aws_certificate.h.
fn header_port(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("#define THINGD_MQTT_PORT "))
        .and_then(|p| p.trim().parse().ok())
}

/// Provisions (once) and describes `--fleet N` devices named `<prefix>-<i>`.
async fn fleet_specs(
    args: &SimulateArgs,
    protocol: ProtocolVersion,
) -> anyhow::Result<Vec<DeviceSpec>> {
    let Some(data_dir) = args.data.data_dir.clone() else {
        bail!("--fleet needs --data-dir (or THINGD_DATA_DIR) to provision the devices");
    };
    let prefix = args
        .thing
        .clone()
        .unwrap_or_else(|| "sim-device".to_owned());
    let endpoint = args
        .endpoint
        .clone()
        .unwrap_or_else(|| "localhost".to_owned());
    let port = args.port.unwrap_or(8883);
    let root = data_dir.join("simulated");
    let names: Vec<String> = (1..=args.fleet).map(|i| format!("{prefix}-{i}")).collect();
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !root.join(n).join("certificate.pem.crt").exists())
        .cloned()
        .collect();
    if !missing.is_empty() {
        let (data_dir, root, endpoint) = (data_dir.clone(), root.clone(), endpoint.clone());
        tokio::task::spawn_blocking(move || {
            provision_all(&data_dir, &root, &endpoint, port, &missing)
        })
        .await??;
        // The server re-reads the certificate registry every 250 ms.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let mut fleet_args_interval = args.interval;
    if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            bail!("--rate must be a positive number of reports per second");
        }
        fleet_args_interval = f64::from(args.fleet) / rate;
    }
    names
        .into_iter()
        .map(|name| {
            let mut spec =
                device_spec(args, &root.join(&name), Some(name.clone()), protocol, true)?;
            spec.host = args.endpoint.clone().unwrap_or(spec.host);
            spec.interval = Duration::from_secs_f64(fleet_args_interval);
            Ok(spec)
        })
        .collect()
}

/// `thingd device provision` for each name, with one store and CA.
fn provision_all(
    data_dir: &Path,
    root: &Path,
    endpoint: &str,
    port: u16,
    names: &[String],
) -> anyhow::Result<()> {
    let mut config = Config {
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    config.endpoint_names = vec![endpoint.to_owned()];
    config.listeners.mqtts = Some(std::net::SocketAddr::from(([0, 0, 0, 0], port)));
    crate::server::create_private_dir(&config.data_dir)?;
    let store = thingd_store::Store::open(&config.database_path())
        .with_context(|| format!("opening {}", config.database_path().display()))?;
    let ca = thingd_auth::CertificateAuthority::load_or_create(&config.pki_dir(), &[])?;
    for name in names {
        crate::provision::provision(&config, &store, &ca, name, &root.join(name), false)?;
        println!("provisioned {name} in {}", root.join(name).display());
    }
    store.close();
    Ok(())
}

/// The settings a delta can change.
#[derive(Debug, Clone)]
struct Board {
    led: String,
    setpoint: Option<f64>,
    /// Desired keys already reported as ignored (logged once).
    ignored: std::collections::HashSet<String>,
}

/// The article's test signal: 10, 11, ... 40, 10, ...
fn temperature(tick: u64) -> u64 {
    10 + tick % 31
}

async fn simulate_device(
    spec: DeviceSpec,
    stats: Arc<Stats>,
    stop: tokio_util::sync::CancellationToken,
) {
    let log = |line: String| {
        if !spec.quiet {
            println!("{}: {line}", spec.thing);
        }
    };
    let identity = match Identity::from_dir(&spec.dir) {
        Ok(i) => i,
        Err(e) => {
            println!("{}: {e}", spec.thing);
            stats.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let options = ConnectOptions::new(&spec.host, spec.port, &spec.thing, identity)
        .with_protocol(spec.protocol)
        .with_backoff(Duration::from_millis(200), Duration::from_secs(10));
    // The first connection is retried too: the server may be starting, or may not have
    // seen a just-provisioned certificate yet.
    let mut attempt = 0;
    let client = loop {
        let connect = Client::connect(options.clone());
        let result = tokio::select! {
            r = connect => r,
            _ = stop.cancelled() => return,
        };
        match result {
            Ok(c) => break c,
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                println!(
                    "{}: cannot connect to {}:{}: {e}",
                    spec.thing, spec.host, spec.port
                );
                let delay = thingd_device::Backoff {
                    min: Duration::from_millis(200),
                    max: Duration::from_secs(5),
                }
                .delay(attempt);
                attempt += 1;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    log(format!(
        "connected to {}:{} as {}",
        spec.host, spec.port, spec.thing
    ));
    let shadow = match Shadow::classic(&client, &spec.thing).await {
        Ok(s) => s,
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            println!("{}: cannot open the shadow: {e}", spec.thing);
            return;
        }
    };
    let mut deltas = shadow.deltas();
    let mut board = Board {
        led: "off".to_owned(),
        setpoint: None,
        ignored: std::collections::HashSet::new(),
    };
    // A delta that arrived while the device was off is in the current document.
    match shadow.get().await {
        Ok(doc) => {
            if let Some(delta) = doc["state"].get("delta").cloned() {
                apply_delta(&spec, &shadow, &mut board, &delta, &stats).await;
            }
        }
        Err(thingd_device::Error::ShadowRejected(e)) if e.code == 404 => {}
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            println!("{}: shadow get failed: {e}", spec.thing);
        }
    }
    let mut ticker = tokio::time::interval(spec.interval);
    let mut tick: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {
                let temp = temperature(tick);
                tick += 1;
                match shadow.update_reported(json!({ "temp": temp })).await {
                    Ok(accepted) => {
                        stats.reports.fetch_add(1, Ordering::Relaxed);
                        log(format!("reported temp={temp} (shadow version {})", accepted["version"]));
                    }
                    Err(e) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        println!("{}: report failed: {e}", spec.thing);
                    }
                }
            }
            delta = deltas.recv() => {
                let Some(delta) = delta else { break };
                apply_delta(&spec, &shadow, &mut board, &delta.state, &stats).await;
            }
        }
    }
    drop(shadow);
    client.disconnect().await;
    log("disconnected".to_owned());
}

/// Applies what the device understands of a delta and reports the new state back.
async fn apply_delta(
    spec: &DeviceSpec,
    shadow: &Shadow,
    board: &mut Board,
    delta: &Value,
    stats: &Stats,
) {
    let Some(fields) = delta.as_object() else {
        return;
    };
    let mut report = Map::new();
    for (key, value) in fields {
        match (key.as_str(), value) {
            ("led", Value::String(s)) if s == "on" || s == "off" => {
                board.led = s.clone();
                report.insert("led".to_owned(), value.clone());
                println!("{}: led switched {s}", spec.thing);
            }
            ("setpoint", Value::Number(n)) => {
                board.setpoint = n.as_f64();
                report.insert("setpoint".to_owned(), value.clone());
                println!("{}: setpoint set to {n}", spec.thing);
            }
            _ => {
                if board.ignored.insert(format!("{key}={value}")) {
                    println!(
                        "{}: ignoring desired {key}={value} (not something this board can set)",
                        spec.thing
                    );
                }
            }
        }
    }
    if report.is_empty() {
        return;
    }
    stats.deltas.fetch_add(1, Ordering::Relaxed);
    match shadow.update_reported(Value::Object(report.clone())).await {
        Ok(accepted) => println!(
            "{}: reported {} (shadow version {})",
            spec.thing,
            Value::Object(report),
            accepted["version"]
        ),
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            println!("{}: report after delta failed: {e}", spec.thing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_signal_rises_from_10_to_40_and_wraps() {
        let signal: Vec<u64> = (0..33).map(temperature).collect();
        assert_eq!(signal[0], 10);
        assert_eq!(signal[30], 40);
        assert_eq!(signal[31], 10);
    }

    #[test]
    fn the_port_comes_from_the_firmware_header() {
        let dir = std::env::temp_dir().join(format!("thingd-sim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let header = dir.join("aws_certificate.h");
        std::fs::write(
            &header,
            "#define THINGD_ENDPOINT \"x\"\n#define THINGD_MQTT_PORT 18883\n",
        )
        .unwrap();
        assert_eq!(header_port(&header), Some(18883));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
