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

/// One scenario on one transport against one broker, with the result of every run.
pub(crate) struct Row {
    pub(crate) scenario: Scenario,
    pub(crate) transport: Transport,
    pub(crate) broker: Kind,
    pub(crate) runs: Vec<Result<Measured, String>>,
}

/// The figures of a row: each the median of its runs.
#[derive(Debug, PartialEq)]
pub(crate) struct Figures {
    pub(crate) rate: f64,
    pub(crate) cpu_us: f64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) p999_ms: Option<f64>,
    pub(crate) rss_kib: Option<f64>,
    pub(crate) done: f64,
    pub(crate) expected: f64,
    pub(crate) lossy: bool,
    pub(crate) steal_percent: Option<f64>,
}

impl Row {
    /// The medians of the runs, or the first failure (a row with a failed run is failed).
    pub(crate) fn figures(&self) -> Result<Figures, String> {
        let mut ok = Vec::new();
        for (i, run) in self.runs.iter().enumerate() {
            match run {
                Ok(m) => ok.push(m),
                Err(e) if self.runs.len() > 1 => {
                    return Err(format!("run {} of {}: {e}", i + 1, self.runs.len()));
                }
                Err(e) => return Err(e.clone()),
            }
        }
        if ok.is_empty() {
            return Err("not run".to_owned());
        }
        let of = |f: &dyn Fn(&Measured) -> Option<f64>| median(ok.iter().filter_map(|m| f(m)));
        Ok(Figures {
            rate: of(&|m| Some(m.rate())).unwrap_or(f64::NAN),
            cpu_us: of(&|m| Some(m.cpu_us_per())).unwrap_or(f64::NAN),
            p50_ms: of(&|m| quantile_ms(m, 0.5)),
            p99_ms: of(&|m| quantile_ms(m, 0.99)),
            p999_ms: of(&|m| quantile_ms(m, 0.999)),
            rss_kib: of(&|m| m.rss_per_conn_kib),
            done: of(&|m| Some(m.done as f64)).unwrap_or(0.0),
            expected: of(&|m| Some(m.expected as f64)).unwrap_or(0.0),
            lossy: ok.iter().any(|m| m.lossy),
            steal_percent: of(&|m| m.steal_percent),
        })
    }
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
/// NaN (a figure a run could not give) sorts last.
pub(crate) fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
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

fn percent(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |p| format!("{p:.1}"))
}

fn quantile_ms(m: &Measured, q: f64) -> Option<f64> {
    m.latency
        .as_ref()
        .filter(|h| !h.is_empty())
        .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
}

impl Report {
    /// Adds the result of one run to its row (scenario, transport and broker), making the
    /// row on its first run.
    pub(crate) fn record(
        &mut self,
        scenario: Scenario,
        transport: Transport,
        broker: Kind,
        result: Result<Measured, String>,
    ) {
        let name = scenario.name();
        match self
            .rows
            .iter_mut()
            .find(|r| r.broker == broker && r.transport == transport && r.scenario.name() == name)
        {
            Some(row) => row.runs.push(result),
            None => self.rows.push(Row {
                scenario,
                transport,
                broker,
                runs: vec![result],
            }),
        }
    }

    fn mosquitto_row(&self, row: &Row) -> Option<Figures> {
        self.rows
            .iter()
            .find(|r| {
                r.broker == Kind::Mosquitto
                    && r.transport == row.transport
                    && r.scenario.name() == row.scenario.name()
            })
            .and_then(|r| r.figures().ok())
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
        self.rows.iter().all(|r| r.runs.iter().all(Result::is_ok))
    }

    pub(crate) fn tables(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### Messages\n\n\
             Ratios in parentheses are to Mosquitto on the same scenario and transport \
             (above 1× is more throughput, but more CPU or latency). {STEAL_NOTE}\n\n\
             | scenario | transport | broker | delivered msg/s | broker CPU µs/msg | p50 ms | p99 ms | p99.9 ms | delivered / expected | steal % |\n\
             |---|---|---|---:|---:|---:|---:|---:|---:|---:|"
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
            match row.figures() {
                Err(e) => {
                    let _ = writeln!(out, "{lead} FAILED: {} | | | | | | |", e.replace('|', "/"));
                }
                Ok(f) => {
                    let mq = self.mosquitto_row(row);
                    let mq = mq.as_ref();
                    let is_m = row.broker == Kind::Mosquitto;
                    let _ = writeln!(
                        out,
                        "{lead} {} | {} | {} | {} | {} | {} of {}{} | {} |",
                        cell(Some(f.rate), mq.map(|m| m.rate), thousands, is_m),
                        cell(Some(f.cpu_us), mq.map(|m| m.cpu_us), sig, is_m),
                        cell(f.p50_ms, mq.and_then(|m| m.p50_ms), sig, is_m),
                        cell(f.p99_ms, mq.and_then(|m| m.p99_ms), sig, is_m),
                        cell(f.p999_ms, mq.and_then(|m| m.p999_ms), sig, is_m),
                        thousands(f.done),
                        thousands(f.expected),
                        if f.lossy && f.done < f.expected {
                            format!(
                                " ({:.1}% lost, QoS 0)",
                                100.0 * (f.expected - f.done) / f.expected
                            )
                        } else {
                            String::new()
                        },
                        percent(f.steal_percent),
                    );
                }
            }
        }
        for m in &self.missing {
            let _ = writeln!(
                out,
                "| all | | {} | missing: {} | | | | | | |",
                m.broker, m.reason
            );
        }
        let _ = writeln!(
            out,
            "\n### Connections\n\n\
             Idle: broker RSS growth divided by the connections held, and how fast they were \
             opened (64 in parallel). Storm: full connects (TCP, for mTLS a full TLS handshake \
             without resumption, CONNECT/CONNACK, DISCONNECT) per second and broker CPU per \
             connect; latency is the client's connect time. {STEAL_NOTE}\n\n\
             | scenario | transport | broker | connections | broker RSS KiB/conn | connects/s | broker CPU µs/connect | p50 ms | p99 ms | steal % |\n\
             |---|---|---|---:|---:|---:|---:|---:|---:|---:|"
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
            match row.figures() {
                Err(e) => {
                    let _ = writeln!(out, "{lead} FAILED: {} | | | | | | |", e.replace('|', "/"));
                }
                Ok(f) => {
                    let mq = self.mosquitto_row(row);
                    let mq = mq.as_ref();
                    let is_m = row.broker == Kind::Mosquitto;
                    let _ = writeln!(
                        out,
                        "{lead} {} | {} | {} | {} | {} | {} | {} |",
                        thousands(f.done),
                        cell(f.rss_kib, mq.and_then(|m| m.rss_kib), sig, is_m),
                        cell(Some(f.rate), mq.map(|m| m.rate), thousands, is_m),
                        cell(Some(f.cpu_us), mq.map(|m| m.cpu_us), sig, is_m),
                        cell(f.p50_ms, mq.and_then(|m| m.p50_ms), sig, is_m),
                        cell(f.p99_ms, mq.and_then(|m| m.p99_ms), sig, is_m),
                        percent(f.steal_percent),
                    );
                }
            }
        }
        for m in &self.missing {
            let _ = writeln!(
                out,
                "| all | | {} | missing: {} | | | | | | |",
                m.broker, m.reason
            );
        }
        out
    }
}

/// What the steal column means, under the title of each table.
const STEAL_NOTE: &str = "Steal % is the share of the machine's CPU time that the \
    hypervisor gave to other guests while this one had work for it (`/proc/stat`, over the \
    measured part; the median of the runs). Latency rises with it: compare latencies between \
    rows whose steal is alike.";

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

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(done: u64, secs: f64, cpu: f64) -> Measured {
        Measured {
            sent: done,
            expected: done,
            done,
            secs,
            cpu,
            ..Measured::default()
        }
    }

    fn row(runs: Vec<Result<Measured, String>>) -> Row {
        Row {
            scenario: Scenario::Idle { conns: 10 },
            transport: Transport::Tcp,
            broker: Kind::Thingd,
            runs,
        }
    }

    #[test]
    fn each_figure_is_the_median_of_the_runs() {
        // Rates 100, 300, 200 msg/s; CPU 10, 5, 20 µs per message.
        let f = row(vec![
            Ok(measured(1000, 10.0, 0.01)),
            Ok(measured(3000, 10.0, 0.015)),
            Ok(measured(2000, 10.0, 0.04)),
        ])
        .figures()
        .expect("three good runs");
        assert_eq!(f.rate, 200.0);
        assert!((f.cpu_us - 10.0).abs() < 1e-9, "{}", f.cpu_us);
        assert_eq!(f.done, 2000.0);
        assert_eq!(f.p99_ms, None);
    }

    #[test]
    fn an_even_number_of_runs_takes_the_mean_of_the_middle_two() {
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn a_row_with_one_failed_run_is_failed_and_says_which() {
        let r = row(vec![
            Ok(measured(1000, 1.0, 0.0)),
            Err("received 9 of 10 messages".to_owned()),
        ]);
        assert_eq!(
            r.figures(),
            Err("run 2 of 2: received 9 of 10 messages".to_owned())
        );
        let mut report = Report {
            rows: vec![r],
            missing: Vec::new(),
        };
        assert!(!report.all_ok());
        report.rows[0].runs.pop();
        assert!(report.all_ok());
    }

    #[test]
    fn runs_of_the_same_scenario_transport_and_broker_share_a_row() {
        let mut report = Report {
            rows: Vec::new(),
            missing: Vec::new(),
        };
        for broker in [Kind::Thingd, Kind::Mosquitto, Kind::Thingd] {
            report.record(
                Scenario::Idle { conns: 10 },
                Transport::Tcp,
                broker,
                Ok(measured(10, 1.0, 0.0)),
            );
        }
        let runs: Vec<(Kind, usize)> = report
            .rows
            .iter()
            .map(|r| (r.broker, r.runs.len()))
            .collect();
        assert_eq!(runs, [(Kind::Thingd, 2), (Kind::Mosquitto, 1)]);
    }

    #[test]
    fn the_tables_show_the_median_steal_and_keep_their_columns() {
        let mut report = Report {
            rows: Vec::new(),
            missing: vec![Missing {
                broker: Kind::Rumqttd,
                reason: "not installed".to_owned(),
            }],
        };
        let message = Scenario::Pairs {
            pairs: 2,
            per_pub: 5,
        };
        for steal in [1.0, 7.5, 2.34] {
            report.record(
                message.clone(),
                Transport::Tcp,
                Kind::Thingd,
                Ok(Measured {
                    steal_percent: Some(steal),
                    ..measured(10, 1.0, 0.0)
                }),
            );
        }
        report.record(
            message,
            Transport::Tcp,
            Kind::Mosquitto,
            Err("broker exited".to_owned()),
        );
        report.record(
            Scenario::Idle { conns: 10 },
            Transport::Tcp,
            Kind::Thingd,
            Ok(measured(10, 1.0, 0.0)),
        );
        let tables = report.tables();
        let thingd_pairs = tables
            .lines()
            .find(|l| l.contains("2:2") && l.contains("thingd"))
            .expect("thingd's message row");
        assert!(thingd_pairs.ends_with("| 2.3 |"), "{thingd_pairs}");
        let idle = tables
            .lines()
            .find(|l| l.contains("idle"))
            .expect("the idle row");
        assert!(idle.ends_with("| – |"), "{idle}");
        for table in tables.split("### ").filter(|t| !t.trim().is_empty()) {
            let rows: Vec<&str> = table.lines().filter(|l| l.starts_with('|')).collect();
            let cells = rows[0].matches('|').count();
            for row in &rows {
                assert_eq!(row.matches('|').count(), cells, "{row}");
            }
        }
    }
}
