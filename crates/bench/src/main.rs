//! `thingd-bench compare`: runs thingd, Mosquitto and rumqttd side by side on 127.0.0.1
//! with equivalent settings and the same certificates, drives each with the same load
//! generator over plain TCP and mTLS, and prints (and writes to `docs/benchmarks.md`) a
//! Markdown table of throughput, broker CPU per message, latency, memory per connection and
//! handshake rate, each with its ratio to Mosquitto, and durable shadow updates per second on
//! thingd alone.
//!
//! `compare --smoke` runs the same scenarios with tiny counts in seconds and exits non-zero
//! unless every run delivered what it should; `tests/smoke.rs` runs it in CI.
//!
//! `thingd-bench floor` measures what the socket work of a message costs with no broker at
//! all, the floor under every broker's figure (`floor.rs`); `thingd-bench shadows`, durable
//! shadow updates per second on thingd (`shadows.rs`).

mod brokers;
mod client;
mod floor;
mod hold;
mod report;
mod scenarios;
mod shadows;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use thingd_mqtt::QoS;

use brokers::{Kind, Pki};
use client::Endpoint;
use report::{Missing, Report, Transport};
use scenarios::{Scenario, Target};

#[derive(Parser)]
#[command(name = "thingd-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Benchmark thingd, Mosquitto and rumqttd side by side.
    Compare(CompareArgs),
    /// Durable Device Shadow updates per second over MQTT (thingd only).
    Shadows(shadows::ShadowArgs),
    /// The kernel's CPU for the socket work of one QoS 1 message over loopback TCP, and over
    /// mTLS that plus the TLS record work, with no broker: the floor under every broker's CPU
    /// per message.
    Floor(floor::FloorArgs),
    /// Holds idle connections for a `compare` run past its own open-file limit (started by
    /// the tool itself).
    #[command(hide = true)]
    Hold(hold::HoldArgs),
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Tiny counts, seconds in total; exits non-zero unless every run is sane. Writes no
    /// file unless --out is given.
    #[arg(long)]
    smoke: bool,
    /// Brokers to run, comma-separated (thingd, mosquitto, rumqttd; default all three). A
    /// broker that is not installed is reported as missing, in the table and on stderr. With
    /// --smoke, thingd and every broker named here are required: without this option a
    /// missing peer fails nothing.
    #[arg(long, value_delimiter = ',')]
    brokers: Option<Vec<String>>,
    /// The thingd binary (default: build it with cargo and use target/<profile>/thingd).
    #[arg(long, env = "THINGD_BIN")]
    thingd: Option<PathBuf>,
    /// The rumqttd binary (default: PATH, ~/.cargo/bin, <tools-dir>/bin).
    #[arg(long, env = "RUMQTTD_BIN")]
    rumqttd: Option<PathBuf>,
    /// Where the tool installs rumqttd when it finds none (default: target/bench-tools).
    #[arg(long, env = "THINGD_BENCH_TOOLS")]
    tools_dir: Option<PathBuf>,
    /// Do not install rumqttd when it is missing (report it as missing instead). A smoke run
    /// installs it only when --brokers names it.
    #[arg(long)]
    no_install: bool,
    /// Where to write the report (default: docs/benchmarks.md for a full run).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only scenarios whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Transports, comma-separated (tcp, mtls).
    #[arg(long, value_delimiter = ',', default_value = "tcp,mtls")]
    transports: Vec<String>,
    /// Runs of every scenario per broker and transport, in rounds (each round runs every
    /// broker once; the half-maximum row's rounds come after all the others' above it, whose
    /// median sets its rate); each figure in the tables is the median of its runs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Compare(args) => {
            let ok = runtime.block_on(compare(args))?;
            // Do not wait for lingering connection tasks.
            runtime.shutdown_timeout(Duration::from_secs(1));
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Hold(args) => {
            let _ = rlimit::increase_nofile_limit(u64::MAX);
            runtime.block_on(hold::run(args))?;
            runtime.shutdown_timeout(Duration::from_secs(1));
            Ok(())
        }
        Cmd::Floor(args) => floor::run(args),
        Cmd::Shadows(args) => {
            let ok = runtime.block_on(shadows::run(args))?;
            runtime.shutdown_timeout(Duration::from_secs(1));
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The thingd binary: given, or built now with the same profile as this tool.
pub(crate) fn thingd_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path);
    }
    let release = !cfg!(debug_assertions);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "thingd-server", "--bin", "thingd"])
        .current_dir(repo_root());
    if release {
        cmd.arg("--release");
    }
    eprintln!(
        "building thingd ({})",
        if release { "release" } else { "debug" }
    );
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p thingd-server failed");
    }
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("thingd");
    if !bin.exists() {
        bail!("{} not found after the build", bin.display());
    }
    Ok(bin)
}

fn scenarios(smoke: bool, max_idle: usize) -> Vec<Scenario> {
    use Scenario::*;
    let (q0, q1) = (QoS::AtMostOnce, QoS::AtLeastOnce);
    if smoke {
        return vec![
            OneToOne {
                qos: q0,
                size: 16,
                count: 200,
            },
            OneToOne {
                qos: q1,
                size: 16,
                count: 200,
            },
            OneToOne {
                qos: q1,
                size: 1024,
                count: 200,
            },
            FanOut {
                subs: 20,
                count: 20,
            },
            FanIn {
                pubs: 20,
                per_pub: 10,
                shared: false,
            },
            FanIn {
                pubs: 20,
                per_pub: 10,
                shared: true,
            },
            Pairs {
                pairs: 20,
                per_pub: 20,
            },
            HalfMaxRate {
                pairs: 20,
                secs: 1,
                cap: 50,
            },
            FixedRate {
                pairs: 20,
                rate: 10,
                secs: 1,
                held: 0,
                half_of: None,
            },
            FixedRate {
                pairs: 10,
                rate: 10,
                secs: 1,
                held: 40,
                half_of: None,
            },
            ShadowUpdates {
                things: 4,
                per_conn: 2,
                secs: 1,
            },
            Idle { conns: 50 },
            Storm {
                parallel: 4,
                count: 40,
                secs: 5,
            },
        ];
    }
    // Counts are sized so that each run lasts seconds, not a fraction of one: runs under a
    // second were dominated by how they started (1→1 QoS 1 swung between ~120k and ~200k
    // msg/s from run to run).
    let mut list = vec![
        OneToOne {
            qos: q0,
            size: 16,
            count: 1_000_000,
        },
        OneToOne {
            qos: q0,
            size: 1024,
            count: 1_000_000,
        },
        OneToOne {
            qos: q1,
            size: 16,
            count: 500_000,
        },
        OneToOne {
            qos: q1,
            size: 1024,
            count: 500_000,
        },
        FanOut {
            subs: 1000,
            count: 1000,
        },
        FanIn {
            pubs: 1000,
            per_pub: 200,
            shared: false,
        },
        FanIn {
            pubs: 1000,
            per_pub: 200,
            shared: true,
        },
        Pairs {
            pairs: 1000,
            per_pub: 200,
        },
        // The issue's "p99 at a fixed rate of half Mosquitto's maximum": the rate is half of
        // the median of what Mosquitto delivered in the runs above, on the same transport.
        HalfMaxRate {
            pairs: 1000,
            secs: 10,
            cap: u64::MAX,
        },
        // A low rate, where most deployments live: CPU per message when nothing batches.
        FixedRate {
            pairs: 1000,
            rate: 5,
            secs: 10,
            held: 0,
            half_of: None,
        },
        // 20,000 msg/s: the issue's "p99 under 2 ms for QoS 1 at 20k msg/s".
        FixedRate {
            pairs: 1000,
            rate: 20,
            secs: 10,
            held: 0,
            half_of: None,
        },
        // 10,000 msg/s with no fleet: what the fleet rows below add to it.
        FixedRate {
            pairs: 1000,
            rate: 10,
            secs: 10,
            held: 0,
            half_of: None,
        },
        // The issue's "100,000 connections held, p99 under 10 ms at 10k msg/s", with as many
        // of the 100,000 as every broker's open-file limit allows...
        FixedRate {
            pairs: 1000,
            rate: 10,
            secs: 10,
            held: fleet(max_idle),
            half_of: None,
        },
    ];
    // ... and with all of them where a broker can hold more (thingd: io_uring file tables).
    if fleet(max_idle) + 2000 < FLEET {
        list.push(FixedRate {
            pairs: 1000,
            rate: 10,
            secs: 10,
            held: FLEET - 2000,
            half_of: None,
        });
    }
    // Issue #4's two cases: a gateway per 50 things (AWS's subscription limit per
    // connection) and a connection per thing.
    list.push(ShadowUpdates {
        things: 500,
        per_conn: 50,
        secs: 10,
    });
    list.push(ShadowUpdates {
        things: 200,
        per_conn: 1,
        secs: 10,
    });
    list.push(Idle { conns: 10_000 });
    list.push(Idle { conns: 50_000 });
    list.push(Storm {
        parallel: 16,
        count: 20_000,
        secs: 10,
    });
    list
}

/// What every run shares: the certificates, the working directory, the client's TLS
/// configuration, the clock tick and the pause after a run.
struct Setup<'a> {
    /// Connections this process may open.
    max_idle: usize,
    pki: &'a Pki,
    work: &'a Path,
    client_config: &'a Arc<rustls::ClientConfig>,
    ticks: f64,
    pause: Duration,
}

/// One run of `scenario` on `transport` against a freshly started broker: what it measured,
/// or why it failed (the broker did not start, a check failed, or it died).
async fn run_once(
    setup: &Setup<'_>,
    installed: &brokers::Installed,
    scenario: &Scenario,
    transport: Transport,
    run_id: u32,
) -> Result<scenarios::Measured, String> {
    // A fresh broker for every run, so that memory and state left by one run (allocator
    // caches, queues) do not count in the next.
    let mut broker = brokers::start(installed, setup.pki, setup.work)
        .map_err(|e| format!("failed to start: {e:#}"))?;
    let target = Target {
        pid: broker.pid(),
        ticks: setup.ticks,
    };
    let ep = Endpoint {
        addr: match transport {
            Transport::Tcp => broker.tcp,
            Transport::Mtls => broker.tls,
        },
        tls: (transport == Transport::Mtls).then(|| setup.client_config.clone()),
        spill: Some(Arc::new(hold::Spill {
            pki: setup.pki.clone(),
            local: setup.max_idle.saturating_sub(scenario.local_connections()),
        })),
        reset_on_close: false,
    };
    let result = match scenarios::run(scenario, &ep, target, &format!("r{run_id}")).await {
        Ok(m) => m.check().map(|()| m).map_err(|e| format!("{e:#}")),
        Err(e) => Err(format!("{e:#}")),
    };
    let result = broker
        .check_alive()
        .map_err(|e| format!("{e:#}"))
        .and(result);
    drop(broker);
    // Let closed connections drain before the next run.
    tokio::time::sleep(setup.pause).await;
    result
}

/// Why `scenario` runs on thingd alone, naming the `others` that sit it out: it needs more
/// connections than a peer's process may open (thingd holds the rest in io_uring file tables,
/// and the load generator hands its share past the limit to child processes), or it measures
/// a service of thingd's own. `None` when every broker runs it.
fn why_thingd_only(
    scenario: &Scenario,
    max_idle: usize,
    nofile: u64,
    others: &[String],
) -> Option<String> {
    if scenario.connections() > max_idle {
        return Some(format!(
            "{} ({} connections) on thingd only: {} would need more descriptors than the \
             open-file limit ({nofile}) gives a process",
            scenario.name(),
            scenario.connections(),
            others.join(" and ")
        ));
    }
    let service = scenario.thingd_service()?;
    Some(format!(
        "{} on thingd only: {service} has no counterpart in {}",
        scenario.name(),
        others.join(" or ")
    ))
}

/// Puts back, before a `HalfMaxRate` kept by `--only`, the `Pairs` run its rate comes from.
fn keep_references(list: &mut Vec<Scenario>, all: &[Scenario]) {
    let has_pairs = list.iter().any(|s| matches!(s, Scenario::Pairs { .. }));
    let half = list
        .iter()
        .position(|s| matches!(s, Scenario::HalfMaxRate { .. }));
    if let (false, Some(at)) = (has_pairs, half)
        && let Some(pairs) = all.iter().find(|s| matches!(s, Scenario::Pairs { .. }))
    {
        list.insert(at, pairs.clone());
    }
}

/// The scenarios in the order their rounds run: those before the first `HalfMaxRate`, then
/// the rest (one part when there is none), so that every run its rate comes from is done
/// before it starts.
fn phases(list: &[Scenario]) -> Vec<&[Scenario]> {
    match list
        .iter()
        .position(|s| matches!(s, Scenario::HalfMaxRate { .. }))
    {
        Some(at) if at > 0 => vec![&list[..at], &list[at..]],
        _ => vec![list],
    }
}

/// The median of the rates measured on each transport.
fn medians_per_transport(rates: &[(Transport, f64)]) -> Vec<(Transport, f64)> {
    let mut out: Vec<(Transport, f64)> = Vec::new();
    for &(transport, _) in rates {
        if out.iter().any(|(t, _)| *t == transport) {
            continue;
        }
        let on = rates
            .iter()
            .filter(|(t, _)| *t == transport)
            .map(|(_, r)| *r);
        if let Some(m) = report::median(on) {
            out.push((transport, m));
        }
    }
    out
}

/// The scenario to run: a `HalfMaxRate` becomes the `FixedRate` at half the reference's
/// maximum on `transport` (rounded down to a whole rate per pair, at least 1, at most the
/// scenario's cap), or an error when that maximum was not measured; any other scenario is
/// itself.
fn resolve(
    scenario: &Scenario,
    transport: Transport,
    reference: Option<Kind>,
    maxima: &[(Transport, f64)],
) -> Result<Scenario, String> {
    let Scenario::HalfMaxRate { pairs, secs, cap } = *scenario else {
        return Ok(scenario.clone());
    };
    let (Some(reference), Some(&(_, max))) =
        (reference, maxima.iter().find(|(t, _)| *t == transport))
    else {
        return Err(format!(
            "not run: the reference broker's {pairs}:{pairs} maximum over {transport} was \
             not measured"
        ));
    };
    let per_pair = (max / 2.0 / pairs as f64).floor().max(1.0) as u64;
    Ok(Scenario::FixedRate {
        pairs,
        rate: per_pair.min(cap),
        secs,
        held: 0,
        // A capped rate (smoke runs) is not half of anything.
        half_of: (per_pair <= cap).then_some(reference),
    })
}

/// The fleet the held-connections scenario keeps open: 100,000, or less when a process may
/// not hold that many descriptors (2,000 go to the publishing pairs), in whole thousands.
fn fleet(max_idle: usize) -> usize {
    FLEET.min(max_idle.saturating_sub(2000)) / 1000 * 1000
}

const FLEET: usize = 100_000;

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    format!(
        "nproc {}, CPU {model}, kernel {}, {}",
        sh("nproc", &[]),
        sh("uname", &["-sr"]),
        mem.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

/// A steal share as printed on stderr and in the report header.
fn steal_text(percent: Option<f64>) -> String {
    percent.map_or("unknown".to_owned(), |p| format!("{p:.1}%"))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn compare(args: CompareArgs) -> anyhow::Result<bool> {
    let repo = repo_root();
    let kinds = match &args.brokers {
        Some(names) => names
            .iter()
            .map(|b| Kind::parse(b.trim()))
            .collect::<anyhow::Result<Vec<_>>>()?,
        None => Kind::ALL.to_vec(),
    };
    let mut transports = Vec::new();
    for t in &args.transports {
        transports.push(match t.trim() {
            "tcp" => Transport::Tcp,
            "mtls" | "tls" => Transport::Mtls,
            other => bail!("unknown transport {other:?} (tcp, mtls)"),
        });
    }
    // Brokers started below inherit the raised limit.
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    // The idle scenario needs one descriptor per connection in each process, plus slack.
    let max_idle = usize::try_from(nofile.saturating_sub(1000)).unwrap_or(usize::MAX);
    let mut list = scenarios(args.smoke, max_idle);
    if let Some(only) = &args.only {
        let all = std::mem::take(&mut list);
        list = all
            .iter()
            .filter(|s| s.name().contains(only.as_str()))
            .cloned()
            .collect();
        keep_references(&mut list, &all);
    }
    // A scenario needing more connections than the open-file limit allows is not run, and
    // says so (stderr and the report).
    let (list, too_big): (Vec<_>, Vec<_>) = list
        .into_iter()
        .partition(|s| s.local_connections() <= max_idle);
    let too_big: Vec<String> = too_big
        .iter()
        .map(|s| format!("{} ({} connections)", s.name(), s.connections()))
        .collect();
    for name in &too_big {
        eprintln!("not run: {name}: the open-file limit ({nofile}) allows about {max_idle}");
    }

    let thingd = thingd_binary(args.thingd.clone())?;
    let work = tempfile::Builder::new().prefix("thingd-bench-").tempdir()?;
    let pki = Pki::create(&thingd, work.path())?;
    let client_config = Arc::new(pki.client_config()?);
    let ticks = brokers::clock_ticks();
    let load_before = loadavg();
    let machine_before = brokers::MachineCpu::read().ok();
    let started = std::time::SystemTime::now();

    let mut report = Report {
        rows: Vec::new(),
        missing: Vec::new(),
    };
    let mut versions = Vec::new();
    let mut run_id = 0u32;
    // Every broker is looked for first, so a smoke run without a broker it needs fails at once.
    let mut found = Vec::new();
    let tools = args
        .tools_dir
        .clone()
        .unwrap_or_else(|| repo.join("target/bench-tools"));
    // A full run installs a missing rumqttd (it builds thingd too); a smoke run only when
    // asked for it by name, so that CI does not spend minutes compiling a peer it skips.
    let install = !args.no_install && (!args.smoke || args.brokers.is_some());
    for kind in Kind::ALL.into_iter().filter(|k| kinds.contains(k)) {
        let mut located = brokers::locate(kind, &thingd, args.rumqttd.as_deref(), &tools);
        if let Err(missing) = &located
            && kind == Kind::Rumqttd
            && install
            && args.rumqttd.is_none()
        {
            located = match brokers::install_rumqttd(&tools) {
                Ok(()) => brokers::locate(kind, &thingd, None, &tools),
                Err(failed) => Err(format!("{missing}; installing it: {failed}")),
            };
        }
        match located {
            Ok(installed) => {
                versions.push(format!(
                    "| {kind} | {} | `{}` |",
                    installed.version,
                    installed.binary.display()
                ));
                found.push((kind, installed));
            }
            Err(reason) => {
                eprintln!("{kind}: missing: {reason}");
                versions.push(format!("| {kind} | missing: {reason} | |"));
                report.missing.push(Missing {
                    broker: kind,
                    reason,
                });
            }
        }
    }
    if args.smoke {
        let mut required_missing = false;
        for m in &report.missing {
            if m.broker == Kind::Thingd || args.brokers.is_some() {
                eprintln!(
                    "smoke: required broker {} is missing: {}",
                    m.broker, m.reason
                );
                required_missing = true;
            } else {
                eprintln!(
                    "smoke: {} is missing and is not run; name it in --brokers to require it",
                    m.broker
                );
            }
        }
        if required_missing {
            return Ok(false);
        }
    }
    // The reference for the half-maximum rate runs first: Mosquitto, or else the first
    // broker of the run (the row's name says which).
    if let Some(i) = found.iter().position(|(k, _)| *k == Kind::Mosquitto) {
        found[..=i].rotate_right(1);
    }
    let reference = found.first().map(|(k, _)| *k);
    // Every `Pairs` rate the reference delivered, per transport, msg/s.
    let mut reference_rates: Vec<(Transport, f64)> = Vec::new();
    // The peers, named in the note of every scenario only thingd runs (`why_thingd_only`).
    let others: Vec<String> = found
        .iter()
        .filter(|(k, _)| *k != Kind::Thingd)
        .map(|(k, _)| k.to_string())
        .collect();
    let mut thingd_only = Vec::new();
    if !others.is_empty() {
        for scenario in &list {
            if let Some(note) = why_thingd_only(scenario, max_idle, nofile, &others) {
                eprintln!("{note}");
                thingd_only.push(note);
            }
        }
    }
    let setup = Setup {
        max_idle,
        pki: &pki,
        work: work.path(),
        client_config: &client_config,
        ticks,
        pause: Duration::from_millis(if args.smoke { 100 } else { 1000 }),
    };
    // Round after round, every broker runs every scenario once: slow drift of the machine
    // is shared between the brokers, and each figure is the median of its runs. The rounds
    // of the scenarios before the half-maximum rate all end before it starts, so that its
    // rate is half the median of the reference's runs, not of its first.
    for phase in phases(&list) {
        let maxima = medians_per_transport(&reference_rates);
        for round in 1..=args.runs {
            let progress = if args.runs > 1 {
                format!("[{round}/{}] ", args.runs)
            } else {
                String::new()
            };
            for (kind, installed) in &found {
                for scenario in phase.iter().filter(|s| {
                    *kind == Kind::Thingd || why_thingd_only(s, max_idle, nofile, &others).is_none()
                }) {
                    for &transport in &transports {
                        let resolved = resolve(scenario, transport, reference, &maxima);
                        let name = resolved.as_ref().unwrap_or(scenario).name();
                        eprint!("{progress}{kind} {transport} {name} ... ");
                        let (scenario, result) = match resolved {
                            Ok(s) => {
                                run_id += 1;
                                let result =
                                    run_once(&setup, installed, &s, transport, run_id).await;
                                (s, result)
                            }
                            Err(reason) => (scenario.clone(), Err(reason)),
                        };
                        match &result {
                            Ok(m) => eprintln!(
                                "{:.0}/s, {:.2} µs CPU each, sent {}, {} of {}, steal {}{}",
                                m.rate(),
                                m.cpu_us_per(),
                                m.sent,
                                m.done,
                                m.expected,
                                steal_text(m.steal_percent),
                                m.latency
                                    .as_ref()
                                    .map(|h| format!(
                                        ", p50 {:.3} ms, p99 {:.3} ms",
                                        h.value_at_quantile(0.5) as f64 / 1000.0,
                                        h.value_at_quantile(0.99) as f64 / 1000.0
                                    ))
                                    .unwrap_or_default()
                            ),
                            Err(e) => eprintln!("FAILED: {e}"),
                        }
                        if let (Ok(m), Scenario::Pairs { .. }) = (&result, &scenario)
                            && Some(*kind) == reference
                        {
                            reference_rates.push((transport, m.rate()));
                        }
                        report.record(scenario, transport, *kind, result);
                    }
                }
            }
        }
    }
    let load_after = loadavg();
    let steal = machine_before
        .zip(brokers::MachineCpu::read().ok())
        .and_then(|(before, after)| before.steal_percent_until(&after));
    let steal = steal_text(steal);

    report.sort();
    let tables = report.tables();
    println!("{tables}");
    let ok = report.all_ok();
    let out = args
        .out
        .clone()
        .or_else(|| (!args.smoke).then(|| repo.join("docs/benchmarks.md")));
    if let Some(out) = out {
        let mut body = String::new();
        let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
        let _ = writeln!(
            body,
            "## Results\n\n\
             - Run: {date}{}; {} s wall.\n\
             - Runs: {}.\n\
             - Machine: {}.\n\
             - Load average (1/5/15 min) before the run: {load_before}; after: {load_after}. \
             The load generator runs on the same machine as the broker under test.\n\
             - Steal (CPU time the hypervisor gave to other guests while this machine had work \
             for it, `/proc/stat`) over the whole run: {steal} of the machine's CPU time.\n\
             - Open-file limit raised to {nofile}{}{}{}{}.\n\
             - Load generator: `thingd-bench` ({} build, {}), MQTT 3.1.1 on the `thingd-mqtt` \
             codec, tokio, tokio-rustls with aws-lc-rs; one multi-threaded tokio runtime.\n",
            if args.smoke { " (smoke counts)" } else { "" },
            started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
            if args.runs > 1 {
                format!(
                    "{} of every scenario per broker and transport, in rounds (each round runs \
                     every broker once, so that slow drift of the machine is shared; the \
                     rounds of the scenarios above the half-maximum row end before it starts); \
                     each figure is the median of its runs (`--runs {}`)",
                    args.runs, args.runs
                )
            } else {
                "one of every scenario per broker and transport (`--runs 1`)".to_owned()
            },
            machine(),
            if list.iter().any(|s| s.connections() > max_idle) {
                "; the load generator holds idle connections past its own limit in child \
                 processes (`thingd-bench hold`)"
            } else {
                ""
            },
            if fleet(max_idle) < FLEET {
                format!(
                    "; the fleet scenario every broker runs holds {} idle connections besides \
                     its 2,000 (a descriptor per connection in each process), the one with \
                     all {FLEET} runs on thingd only",
                    fleet(max_idle)
                )
            } else {
                String::new()
            },
            if too_big.is_empty() {
                String::new()
            } else {
                format!("; not run for lack of descriptors: {}", too_big.join(", "))
            },
            if thingd_only.is_empty() {
                String::new()
            } else {
                format!("; {}", thingd_only.join("; "))
            },
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            sh("rustc", &["--version"]),
        );
        let _ = writeln!(
            body,
            "| broker | version | binary |\n|---|---|---|\n{}\n",
            versions.join("\n")
        );
        let _ = writeln!(body, "{tables}");
        let _ = writeln!(
            body,
            "### Settings\n\n\
             Every broker listens on 127.0.0.1 with one plain TCP and one mTLS listener. \
             mTLS uses one set of files made by thingd's CA (`thingd cert issue`): the root \
             CA, thingd's server certificate and key, and one device certificate and key, all \
             ECDSA P-256; every broker requires a client certificate signed by that CA. The \
             client offers no session resumption, and it pins the broker's certificate \
             (compared byte for byte; the broker's handshake signature is still verified) \
             instead of verifying its chain on every connect. No broker persists anything during the run \
             (thingd writes to SQLite only for persistent sessions and retained messages, and \
             the load generator uses clean sessions and no retain). Logging is off (thingd \
             `RUST_LOG=error`, Mosquitto `log_dest none`, rumqttd's default `warn`).\n\n\
             Flow control: a QoS 1 publisher keeps at most 64 PUBLISHes unacknowledged, and \
             all publishers of a 1→1 or fan-in run stay within 500 messages of the \
             subscriber, so every QoS 1 message must arrive (in the 1,000:1,000 run each \
             subscriber has one publisher and needs no such bound). In fan-in one thread of \
             the load generator sends for all 1,000 publishers in turn, one blocking write per \
             message, and reads their PUBACKs at the end. The rate of the row \
             marked \"half mosquitto's max\" is half of what Mosquitto delivered in the \
             1,000:1,000 runs on the same transport (the median of its runs, all done \
             before this row's first), rounded down to a whole \
             number of messages per second per pair (without Mosquitto in the run, the first \
             broker run is the reference and the row names it). The per-client queue limit is \
             100,000 on thingd, 10,000,000 on Mosquitto (rumqttd has none; its commit log \
             holds 10 × 100 MiB). Mosquitto 2.0.11 counts every message it ever queued for \
             an online client against its limit, not the ones still waiting: with a limit \
             of 100,000 its log said \"Outgoing messages are being dropped\" after about \
             101,000 messages of the 1,000→1 fan-in, although no more than 600 were ever \
             outstanding, and about 500 QoS 1 messages were lost in every run; with the \
             default 1,000 it dropped about 1%. The higher limit is never reached by what \
             is really queued. QoS 0 publishers write as fast as the broker \
             reads; what the broker drops is reported. At a fixed rate one thread of the \
             load generator sends every publisher's messages in turn, each at its own time \
             (message k at k divided by the rate, so 50 µs apart at 20,000 msg/s; one that \
             is late goes at once), with one blocking write per message, and reads the \
             PUBACKs at the end. Latency is measured from the moment \
             the publisher encodes the message (the time is in the payload) to its decoding by \
             the subscriber, in the same process.\n\n\
             thingd (`thingd serve --config thingd.toml`; its AWS IoT defaults written out, except the queue limit):\n\n\
             ```toml\n{}```\n\n\
             Mosquitto (`mosquitto -c mosquitto.conf`, ports and paths filled in at run time):\n\n\
             ```\n{}```\n\n\
             rumqttd (`rumqttd --quiet --config rumqttd.toml`):\n\n\
             ```toml\n{}```",
            brokers::THINGD_TOML,
            brokers::mosquitto_conf(&pki, "127.0.0.1:1883".parse()?, "127.0.0.1:8883".parse()?)
                .replace(&work.path().display().to_string(), "$WORK"),
            brokers::rumqttd_toml(&pki, "127.0.0.1:1883".parse()?, "127.0.0.1:8883".parse()?)
                .replace(&work.path().display().to_string(), "$WORK"),
        );
        report::write_into(&out, &body)?;
        eprintln!("wrote {}", out.display());
    }
    if !ok {
        eprintln!("some runs failed or a required broker is missing");
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half_max() -> Scenario {
        Scenario::HalfMaxRate {
            pairs: 1000,
            secs: 10,
            cap: u64::MAX,
        }
    }

    #[test]
    fn the_half_maximum_rate_is_half_the_references_rate_on_the_same_transport() {
        let maxima = [(Transport::Tcp, 31_467.0), (Transport::Mtls, 22_115.0)];
        let tcp = resolve(&half_max(), Transport::Tcp, Some(Kind::Mosquitto), &maxima);
        let mtls = resolve(&half_max(), Transport::Mtls, Some(Kind::Mosquitto), &maxima);
        // 31,467 / 2 = 15,733 msg/s: 15 per pair of 1,000, 15,000 in all.
        assert_eq!(
            tcp.map(|s| s.name()).as_deref(),
            Ok("1000:1000 at 15000 msg/s (half mosquitto's max) QoS 1 16 B")
        );
        assert_eq!(
            mtls.map(|s| s.name()).as_deref(),
            Ok("1000:1000 at 11000 msg/s (half mosquitto's max) QoS 1 16 B")
        );
    }

    #[test]
    fn without_the_references_maximum_the_half_maximum_run_is_an_error_row() {
        let maxima = [(Transport::Tcp, 31_467.0)];
        let err = resolve(&half_max(), Transport::Mtls, Some(Kind::Mosquitto), &maxima)
            .expect_err("no mTLS maximum");
        assert!(err.contains("not measured"), "{err}");
        assert!(resolve(&half_max(), Transport::Tcp, None, &maxima).is_err());
    }

    #[test]
    fn a_capped_rate_does_not_claim_to_be_half_the_maximum() {
        let capped = Scenario::HalfMaxRate {
            pairs: 20,
            secs: 1,
            cap: 50,
        };
        let s = resolve(
            &capped,
            Transport::Tcp,
            Some(Kind::Thingd),
            &[(Transport::Tcp, 9e5)],
        );
        assert_eq!(
            s.map(|s| s.name()).as_deref(),
            Ok("20:20 at 1000 msg/s QoS 1 16 B")
        );
    }

    #[test]
    fn every_run_of_the_reference_ends_before_the_half_maximum_rate_starts() {
        let all = scenarios(false, 20_000);
        let parts = phases(&all);
        assert_eq!(parts.len(), 2);
        assert!(parts[0].iter().any(|s| matches!(s, Scenario::Pairs { .. })));
        assert!(matches!(parts[1][0], Scenario::HalfMaxRate { .. }));
        assert_eq!(parts[0].len() + parts[1].len(), all.len());
        // Without a half-maximum row (or with only that one) there is one part.
        let no_half: Vec<Scenario> = all
            .iter()
            .filter(|s| !matches!(s, Scenario::HalfMaxRate { .. }))
            .cloned()
            .collect();
        assert_eq!(phases(&no_half).len(), 1);
        assert_eq!(phases(&all[all.len() - 1..]).len(), 1);
    }

    #[test]
    fn the_maximum_is_the_median_of_the_references_runs_per_transport() {
        let rates = [
            (Transport::Tcp, 26_634.0),
            (Transport::Mtls, 20_369.0),
            (Transport::Tcp, 21_000.0),
            (Transport::Mtls, 19_000.0),
            (Transport::Tcp, 22_972.0),
        ];
        let maxima = medians_per_transport(&rates);
        assert_eq!(
            maxima,
            [(Transport::Tcp, 22_972.0), (Transport::Mtls, 19_684.5)]
        );
        // 22,972 / 2 = 11,486: 11 per pair of 1,000.
        let tcp = resolve(&half_max(), Transport::Tcp, Some(Kind::Mosquitto), &maxima);
        assert_eq!(
            tcp.map(|s| s.name()).as_deref(),
            Ok("1000:1000 at 11000 msg/s (half mosquitto's max) QoS 1 16 B")
        );
    }

    #[test]
    fn only_keeps_the_run_the_half_maximum_rate_comes_from() {
        let all = scenarios(false, 20_000);
        let mut list: Vec<Scenario> = all
            .iter()
            .filter(|s| s.name().contains("half"))
            .cloned()
            .collect();
        keep_references(&mut list, &all);
        let names: Vec<String> = list.iter().map(Scenario::name).collect();
        assert_eq!(
            names,
            [
                "1000:1000 QoS 1 16 B",
                "1000:1000 at half the reference's max QoS 1 16 B"
            ]
        );
    }
}
