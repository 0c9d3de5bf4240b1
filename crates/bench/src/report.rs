//! The Markdown report: machine, versions, settings and the two result tables, each figure
//! with its ratio to Mosquitto.

use std::fmt::Write as _;
use std::path::Path;

use crate::brokers::Kind;
use crate::scenarios::{Measured, Scenario};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    Mtls,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "TCP",
            Transport::Mtls => "mTLS",
        })
    }
}

/// One scenario on one transport against one broker.
pub(crate) struct Row {
    pub(crate) scenario: Scenario,
    pub(crate) transport: Transport,
    pub(crate) broker: Kind,
    pub(crate) result: Result<Measured, String>,
}

/// A broker that could not be run at all.
pub(crate) struct Missing {
    pub(crate) broker: Kind,
    pub(crate) reason: String,
}

pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) missing: Vec<Missing>,
}

fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "–".to_owned();
    }
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn sig(v: f64) -> String {
    if !v.is_finite() {
        "–".to_owned()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// `value (ratio×)` where the ratio is to Mosquitto's figure, when there is one.
fn cell(v: Option<f64>, mosq: Option<f64>, fmt: fn(f64) -> String, is_mosq: bool) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) => match mosq {
            Some(m) if !is_mosq && m > 0.0 && m.is_finite() && v.is_finite() => {
                format!("{} ({:.2}×)", fmt(v), v / m)
            }
            _ => fmt(v),
        },
    }
}

fn quantile_ms(m: &Measured, q: f64) -> Option<f64> {
    m.latency
        .as_ref()
        .filter(|h| !h.is_empty())
        .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
}

impl Report {
    fn mosquitto_row(&self, row: &Row) -> Option<&Measured> {
        self.rows
            .iter()
            .find(|r| {
                r.broker == Kind::Mosquitto
                    && r.transport == row.transport
                    && r.scenario.name() == row.scenario.name()
            })
            .and_then(|r| r.result.as_ref().ok())
    }

    /// Puts the rows of one scenario and transport together: scenarios in the order they
    /// ran, TCP before mTLS, then thingd, Mosquitto, rumqttd.
    pub(crate) fn sort(&mut self) {
        let mut order: Vec<String> = Vec::new();
        for r in &self.rows {
            let name = r.scenario.name();
            if !order.contains(&name) {
                order.push(name);
            }
        }
        let broker_pos = |k: Kind| Kind::ALL.iter().position(|&x| x == k).unwrap_or(0);
        self.rows.sort_by_key(|r| {
            (
                order
                    .iter()
                    .position(|n| *n == r.scenario.name())
                    .unwrap_or(0),
                r.transport == Transport::Mtls,
                broker_pos(r.broker),
            )
        });
    }

    /// True when every run passed its checks.
    pub(crate) fn all_ok(&self) -> bool {
        self.rows.iter().all(|r| r.result.is_ok())
    }

    pub(crate) fn tables(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### Messages\n\n\
             Ratios in parentheses are to Mosquitto on the same scenario and transport \
             (above 1× is more throughput, but more CPU or latency).\n\n\
             | scenario | transport | broker | delivered msg/s | broker CPU µs/msg | p50 ms | p99 ms | p99.9 ms | delivered / expected |\n\
             |---|---|---|---:|---:|---:|---:|---:|---:|"
        );
        for row in self
            .rows
            .iter()
            .filter(|r| !r.scenario.is_connection_scenario())
        {
            let lead = format!(
                "| {} | {} | {} |",
                row.scenario.name(),
                row.transport,
                row.broker
            );
            match &row.result {
                Err(e) => {
                    let _ = writeln!(out, "{lead} FAILED: {} | | | | | |", e.replace('|', "/"));
                }
                Ok(m) => {
                    let mq = self.mosquitto_row(row);
                    let is_m = row.broker == Kind::Mosquitto;
                    let q = |m: Option<&Measured>, q: f64| m.and_then(|m| quantile_ms(m, q));
                    let _ = writeln!(
                        out,
                        "{lead} {} | {} | {} | {} | {} | {} of {}{} |",
                        cell(Some(m.rate()), mq.map(Measured::rate), thousands, is_m),
                        cell(
                            Some(m.cpu_us_per()),
                            mq.map(Measured::cpu_us_per),
                            sig,
                            is_m
                        ),
                        cell(q(Some(m), 0.5), q(mq, 0.5), sig, is_m),
                        cell(q(Some(m), 0.99), q(mq, 0.99), sig, is_m),
                        cell(q(Some(m), 0.999), q(mq, 0.999), sig, is_m),
                        thousands(m.done as f64),
                        thousands(m.expected as f64),
                        if m.lossy && m.done < m.expected {
                            format!(
                                " ({:.1}% lost, QoS 0)",
                                100.0 * (m.expected - m.done) as f64 / m.expected as f64
                            )
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
        for m in &self.missing {
            let _ = writeln!(
                out,
                "| all | | {} | missing: {} | | | | | |",
                m.broker, m.reason
            );
        }
        let _ = writeln!(
            out,
            "\n### Connections\n\n\
             Idle: broker RSS growth divided by the connections held, and how fast they were \
             opened (64 in parallel). Storm: full connects (TCP, for mTLS a full TLS handshake \
             without resumption, CONNECT/CONNACK, DISCONNECT) per second and broker CPU per \
             connect; latency is the client's connect time.\n\n\
             | scenario | transport | broker | connections | broker RSS KiB/conn | connects/s | broker CPU µs/connect | p50 ms | p99 ms |\n\
             |---|---|---|---:|---:|---:|---:|---:|---:|"
        );
        for row in self
            .rows
            .iter()
            .filter(|r| r.scenario.is_connection_scenario())
        {
            let lead = format!(
                "| {} | {} | {} |",
                row.scenario.name(),
                row.transport,
                row.broker
            );
            match &row.result {
                Err(e) => {
                    let _ = writeln!(out, "{lead} FAILED: {} | | | | | |", e.replace('|', "/"));
                }
                Ok(m) => {
                    let mq = self.mosquitto_row(row);
                    let is_m = row.broker == Kind::Mosquitto;
                    let q = |m: Option<&Measured>, q: f64| m.and_then(|m| quantile_ms(m, q));
                    let _ = writeln!(
                        out,
                        "{lead} {} | {} | {} | {} | {} | {} |",
                        thousands(m.done as f64),
                        cell(
                            m.rss_per_conn_kib,
                            mq.and_then(|m| m.rss_per_conn_kib),
                            sig,
                            is_m
                        ),
                        cell(Some(m.rate()), mq.map(Measured::rate), thousands, is_m),
                        cell(
                            Some(m.cpu_us_per()),
                            mq.map(Measured::cpu_us_per),
                            sig,
                            is_m
                        ),
                        cell(q(Some(m), 0.5), q(mq, 0.5), sig, is_m),
                        cell(q(Some(m), 0.99), q(mq, 0.99), sig, is_m),
                    );
                }
            }
        }
        for m in &self.missing {
            let _ = writeln!(
                out,
                "| all | | {} | missing: {} | | | | | |",
                m.broker, m.reason
            );
        }
        out
    }
}

pub(crate) const BEGIN: &str = "<!-- BEGIN GENERATED by `cargo run --release -p thingd-bench -- compare`; edits inside are overwritten -->";
pub(crate) const END: &str = "<!-- END GENERATED -->";

/// Replaces the generated part of `path` (between the markers) with `body`, keeping the
/// hand-written text around it; creates the file when missing.
pub(crate) fn write_into(path: &Path, body: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let generated = format!("{BEGIN}\n{body}\n{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{generated}{}", &old[..b], &old[e + END.len()..])
        }
        _ => format!(
            "# Benchmarks: thingd, Mosquitto and rumqttd\n\n\
             Reproduce every figure below with one command:\n\n\
             ```sh\ncargo run --release -p thingd-bench -- compare\n```\n\n{generated}\n"
        ),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, new)?;
    Ok(())
}
