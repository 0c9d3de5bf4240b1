//! The scenarios. Each is bounded in count and time, stops itself, and returns what it
//! measured; for QoS 1 a run where fewer messages arrive than were sent is an error.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use thingd_mqtt::{ByteStr, Packet, PubRespKind, QoS};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::brokers::{Kind, MachineCpu, cpu_secs, rss_kib};
use crate::client::{BlockingConn, Conn, Endpoint, now_nanos, payload, sent_at};
use crate::hold::hold;

/// Unacknowledged QoS 1 PUBLISHes a publisher keeps in flight (below every broker's
/// receive/inflight limit of 100).
const MQTT_WINDOW: u32 = 64;
/// Messages all publishers of a QoS 1 scenario may be ahead of the subscribers, end to end,
/// so no broker ever has to drop a message because a subscriber's queue (1000) is full.
const E2E_WINDOW: usize = 500;
/// A subscriber gives up after this long without a message.
const IDLE: Duration = Duration::from_secs(5);
/// Connections opened in parallel while setting up many clients.
const SETUP_PARALLEL: usize = 64;

/// What a scenario is, with its counts.
#[derive(Clone, Debug)]
pub(crate) enum Scenario {
    /// 1 publisher → 1 subscriber, as fast as possible, `count` messages.
    OneToOne { qos: QoS, size: usize, count: u64 },
    /// 1 publisher → `subs` subscribers of one topic, `count` messages (QoS 1).
    FanOut { subs: usize, count: u64 },
    /// `pubs` publishers → 1 subscriber of `.../+` (or `$share/bench/.../+`), `per_pub`
    /// messages each (QoS 1).
    FanIn {
        pubs: usize,
        per_pub: u64,
        shared: bool,
    },
    /// `pairs` publisher→subscriber pairs on their own topics, `per_pub` messages each, as
    /// fast as the flow control allows (QoS 1): the most point-to-point traffic a broker
    /// carries, and the reference for `HalfMaxRate`.
    Pairs { pairs: usize, per_pub: u64 },
    /// `pairs` publisher→subscriber pairs on their own topics, `rate` messages per second
    /// each for `secs` seconds (QoS 1): latency under a steady load, with `held` more
    /// connections open and idle all along (a broker holding a large fleet). `half_of` names
    /// the broker whose `Pairs` maximum, halved, gave the rate.
    FixedRate {
        pairs: usize,
        rate: u64,
        secs: u64,
        held: usize,
        half_of: Option<Kind>,
    },
    /// A `FixedRate` run at half the reference broker's `Pairs` maximum on the same
    /// transport (the "half Mosquitto's maximum"), at most `cap` messages per second
    /// per pair. The tool measures the reference first and runs the resolved `FixedRate`.
    HalfMaxRate { pairs: usize, secs: u64, cap: u64 },
    /// `conns` connections opened and held idle: broker memory per connection.
    Idle { conns: usize },
    /// Connect (TCP, TLS handshake, CONNECT/CONNACK) and disconnect, `parallel` at a time,
    /// until `count` or `secs`.
    Storm {
        parallel: usize,
        count: u64,
        secs: u64,
    },
    /// `things` things updating their Device Shadow for `secs` seconds, one update in flight
    /// each, `per_conn` things to a connection: durable updates per second (thingd only;
    /// the peers have no shadow service).
    ShadowUpdates {
        things: usize,
        per_conn: usize,
        secs: u64,
    },
}

impl Scenario {
    pub(crate) fn name(&self) -> String {
        match self {
            Scenario::OneToOne { qos, size, .. } => {
                let size = if *size >= 1024 {
                    format!("{} KB", size / 1024)
                } else {
                    format!("{size} B")
                };
                format!("1→1 QoS {} {size}", *qos as u8)
            }
            Scenario::FanOut { subs, .. } => format!("fan-out 1→{subs} QoS 1 16 B"),
            Scenario::FanIn { pubs, shared, .. } => {
                if *shared {
                    format!("fan-in {pubs}→1 $share QoS 1 16 B")
                } else {
                    format!("fan-in {pubs}→1 QoS 1 16 B")
                }
            }
            Scenario::Pairs { pairs, .. } => format!("{pairs}:{pairs} QoS 1 16 B"),
            Scenario::FixedRate {
                pairs,
                rate,
                held,
                half_of,
                ..
            } => {
                let total = *pairs as u64 * rate;
                let half = match half_of {
                    Some(reference) => format!(" (half {reference}'s max)"),
                    None => String::new(),
                };
                if *held > 0 {
                    format!("{pairs}:{pairs} at {total} msg/s{half} QoS 1 16 B + {held} idle")
                } else {
                    format!("{pairs}:{pairs} at {total} msg/s{half} QoS 1 16 B")
                }
            }
            Scenario::HalfMaxRate { pairs, .. } => {
                format!("{pairs}:{pairs} at half the reference's max QoS 1 16 B")
            }
            Scenario::Idle { conns } => format!("{conns} idle connections"),
            Scenario::Storm { parallel, .. } => format!("connect storm ({parallel} parallel)"),
            Scenario::ShadowUpdates {
                things, per_conn, ..
            } => format!("durable shadow updates, {things} things, {per_conn} per connection"),
        }
    }

    /// Why only thingd runs the scenario, if it is thingd's own service.
    pub(crate) fn thingd_service(&self) -> Option<&'static str> {
        match self {
            Scenario::ShadowUpdates { .. } => Some("the Device Shadow service"),
            _ => None,
        }
    }

    pub(crate) fn is_connection_scenario(&self) -> bool {
        matches!(self, Scenario::Idle { .. } | Scenario::Storm { .. })
    }

    /// The connections the load generator's own process must open: all of them, but for the
    /// idle ones, which child processes may hold (see `hold`).
    pub(crate) fn local_connections(&self) -> usize {
        match self {
            Scenario::FixedRate { pairs, .. } => 2 * pairs,
            Scenario::Idle { .. } => 0,
            other => other.connections(),
        }
    }

    /// The most connections the scenario holds at once.
    pub(crate) fn connections(&self) -> usize {
        match self {
            Scenario::OneToOne { .. } => 2,
            Scenario::FanOut { subs, .. } => subs + 1,
            Scenario::FanIn { pubs, .. } => pubs + 1,
            Scenario::Pairs { pairs, .. } | Scenario::HalfMaxRate { pairs, .. } => 2 * pairs,
            Scenario::FixedRate { pairs, held, .. } => 2 * pairs + held,
            Scenario::Idle { conns } => *conns,
            Scenario::Storm { parallel, .. } => *parallel,
            Scenario::ShadowUpdates {
                things, per_conn, ..
            } => things.div_ceil((*per_conn).max(1)),
        }
    }
}

/// What a run measured.
#[derive(Debug, Default)]
pub(crate) struct Measured {
    /// Messages published (message scenarios) or connections attempted.
    pub(crate) sent: u64,
    /// Messages the subscribers should have received (`sent` × subscribers).
    pub(crate) expected: u64,
    /// Messages delivered, or connections completed.
    pub(crate) done: u64,
    /// Wall time of the measured part, seconds.
    pub(crate) secs: f64,
    /// Broker CPU seconds over the measured part.
    pub(crate) cpu: f64,
    /// The hypervisor's share of the machine's CPU time over the measured part (steal), %.
    pub(crate) steal_percent: Option<f64>,
    /// Latency, microseconds.
    pub(crate) latency: Option<Histogram<u64>>,
    /// Broker RSS growth per connection, KiB (idle scenario).
    pub(crate) rss_per_conn_kib: Option<f64>,
    /// QoS 0: losses are allowed and reported, not an error.
    pub(crate) lossy: bool,
}

impl Measured {
    pub(crate) fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.done as f64 / self.secs
        } else {
            0.0
        }
    }

    pub(crate) fn cpu_us_per(&self) -> f64 {
        if self.done > 0 {
            self.cpu * 1e6 / self.done as f64
        } else {
            f64::NAN
        }
    }

    /// `Err` when the numbers are not sane: nothing done, or a QoS 1 loss.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if self.done == 0 || !self.rate().is_finite() || self.rate() <= 0.0 {
            bail!("nothing measured (done = {}, {} s)", self.done, self.secs);
        }
        if !self.lossy && self.done != self.expected {
            bail!("received {} of {} messages", self.done, self.expected);
        }
        if self.done > self.expected {
            bail!(
                "received {} messages but expected at most {}",
                self.done,
                self.expected
            );
        }
        Ok(())
    }
}

/// The broker being measured.
#[derive(Clone, Copy)]
pub(crate) struct Target {
    pub(crate) pid: u32,
    pub(crate) ticks: f64,
}

impl Target {
    fn usage(&self) -> anyhow::Result<Usage> {
        Ok(Usage {
            broker: cpu_secs(self.pid, self.ticks)?,
            machine: MachineCpu::read()?,
        })
    }
}

/// CPU time read at the start or the end of a measured part.
struct Usage {
    /// The broker's CPU seconds so far.
    broker: f64,
    machine: MachineCpu,
}

impl Usage {
    /// The broker's CPU seconds from `self` to `end`.
    fn broker_cpu_until(&self, end: &Usage) -> f64 {
        end.broker - self.broker
    }

    fn steal_percent_until(&self, end: &Usage) -> Option<f64> {
        self.machine.steal_percent_until(&end.machine)
    }
}

/// Runs one scenario against one endpoint; `tag` makes client ids and topics unique.
pub(crate) async fn run(
    scenario: &Scenario,
    ep: &Endpoint,
    target: Target,
    tag: &str,
) -> anyhow::Result<Measured> {
    // Opening connections takes time of its own (Mosquitto: about 500 mTLS handshakes/s).
    let cap = Duration::from_secs(120 + scenario.connections() as u64 / 250);
    let work = async {
        match scenario {
            Scenario::OneToOne { qos, size, count } => {
                let load = Load {
                    qos: *qos,
                    size: *size,
                    ..Load::qos1(1, 1, *count, Shape::Direct)
                };
                messages(ep, target, tag, load).await
            }
            Scenario::FanOut { subs, count } => {
                messages(ep, target, tag, Load::qos1(1, *subs, *count, Shape::Direct)).await
            }
            Scenario::FanIn {
                pubs,
                per_pub,
                shared,
            } => {
                let shape = if *shared {
                    Shape::SharedWildcard
                } else {
                    Shape::Wildcard
                };
                messages(ep, target, tag, Load::qos1(*pubs, 1, *per_pub, shape)).await
            }
            Scenario::Pairs { pairs, per_pub } => {
                let load = Load::qos1(*pairs, *pairs, *per_pub, Shape::Pairs);
                messages(ep, target, tag, load).await
            }
            Scenario::FixedRate {
                pairs,
                rate,
                secs,
                held,
                ..
            } => fixed_rate(ep, target, tag, *pairs, *rate, *secs, *held).await,
            Scenario::HalfMaxRate { .. } => {
                bail!("the rate of this scenario comes from the reference broker's maximum")
            }
            Scenario::Idle { conns } => idle(ep, target, tag, *conns).await,
            Scenario::Storm {
                parallel,
                count,
                secs,
            } => storm(ep, target, tag, *parallel, *count, *secs).await,
            Scenario::ShadowUpdates {
                things,
                per_conn,
                secs,
            } => shadow_updates(ep, target, tag, *things, *per_conn, *secs).await,
        }
    };
    tokio::time::timeout(cap, work)
        .await
        .with_context(|| format!("scenario did not finish within {} s", cap.as_secs()))?
}

/// Loopback source address for the `i`-th connection: several addresses so that many
/// connections (and TIME_WAIT sockets) do not run out of ephemeral ports.
fn source(i: usize) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::new(127, 0, 0, 1 + (i % 8) as u8))
}

/// Opens `n` connections, `SETUP_PARALLEL` at a time; ids are `{prefix}{i}`.
pub(crate) async fn open_many(ep: &Endpoint, prefix: &str, n: usize) -> anyhow::Result<Vec<Conn>> {
    let mut out: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    let next = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for _ in 0..SETUP_PARALLEL.min(n) {
        let (ep, next, prefix) = (ep.clone(), next.clone(), prefix.to_owned());
        set.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    break;
                }
                let conn = Conn::connect(&ep, &format!("{prefix}{i}"), source(i))
                    .await
                    .with_context(|| format!("connection {i} of {n}"))?;
                mine.push((i, conn));
            }
            anyhow::Ok(mine)
        });
    }
    while let Some(r) = set.join_next().await {
        for (i, c) in r?? {
            out[i] = Some(c);
        }
    }
    out.into_iter()
        .map(|c| c.context("connection missing"))
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Every publisher publishes to the one topic everyone subscribes to.
    Direct,
    /// Publisher `i` publishes to `.../i`; subscribers subscribe to `.../+`.
    Wildcard,
    /// As `Wildcard`, through `$share/bench/.../+`.
    SharedWildcard,
    /// Publisher `i` publishes to `.../i`, which only subscriber `i` subscribes to.
    Pairs,
}

/// What every subscriber shares: delivered count and the end-to-end credit.
struct Progress {
    received: AtomicU64,
    credit: Option<Semaphore>,
    last_nanos: AtomicU64,
}

impl Progress {
    /// Counts a delivered PUBLISH: its latency into `hist`, and the progress every subscriber
    /// shares.
    fn delivered(&self, payload: &[u8], hist: &mut Histogram<u64>) {
        let now = now_nanos();
        if let Some(t) = sent_at(payload) {
            hist.saturating_record(now.saturating_sub(t) / 1000);
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        self.last_nanos.fetch_max(now, Ordering::Relaxed);
        if let Some(credit) = &self.credit {
            credit.add_permits(1);
        }
    }

    /// Seconds from `start` (a [`now_nanos`] reading) to the last delivery, if there was one
    /// after it.
    fn delivering_secs(&self, start: u64) -> Option<f64> {
        let last = self.last_nanos.load(Ordering::Relaxed);
        (last > start).then(|| (last - start) as f64 / 1e9)
    }
}

/// The traffic of a message scenario: `pubs` publishers sending `per_pub` messages of `size`
/// bytes each at `qos`, to `subs` subscribers connected as `shape` says.
struct Load {
    pubs: usize,
    subs: usize,
    per_pub: u64,
    qos: QoS,
    size: usize,
    shape: Shape,
}

impl Load {
    /// QoS 1 with 16-byte payloads, as every scenario but 1→1 uses.
    fn qos1(pubs: usize, subs: usize, per_pub: u64, shape: Shape) -> Load {
        Load {
            pubs,
            subs,
            per_pub,
            qos: QoS::AtLeastOnce,
            size: 16,
            shape,
        }
    }
}

async fn messages(
    ep: &Endpoint,
    target: Target,
    tag: &str,
    load: Load,
) -> anyhow::Result<Measured> {
    let Load {
        pubs,
        subs,
        per_pub,
        qos,
        size,
        shape,
    } = load;
    let base = format!("bench/{tag}");
    // What subscriber `i` subscribes to.
    let filter = |i: usize| match shape {
        Shape::Direct => base.clone(),
        Shape::Wildcard => format!("{base}/+"),
        Shape::SharedWildcard => format!("$share/bench/{base}/+"),
        Shape::Pairs => format!("{base}/{i}"),
    };
    let mut sub_conns = open_many(ep, &format!("{tag}-s"), subs).await?;
    for (i, c) in sub_conns.iter_mut().enumerate() {
        c.subscribe(&filter(i), qos).await?;
    }
    let pub_conns = open_many(ep, &format!("{tag}-p"), pubs).await?;
    let sent_total = per_pub * pubs as u64;
    // With QoS 1 the publishers stay within E2E_WINDOW messages of the subscribers.
    let credit = (qos == QoS::AtLeastOnce && subs == 1).then(|| Semaphore::new(E2E_WINDOW));
    let progress = Arc::new(Progress {
        received: AtomicU64::new(0),
        credit,
        last_nanos: AtomicU64::new(0),
    });

    let topic = |i: usize| {
        ByteStr::from(match shape {
            Shape::Direct => base.clone(),
            _ => format!("{base}/{i}"),
        })
    };
    // Fan-in: many publishers, each with less than a message in flight; one thread sends
    // for all of them (see `publish_in_turn`).
    let (pub_conns, in_turn) = if pubs > 1 && progress.credit.is_some() {
        (Vec::new(), Some(on_blocking_sockets(pub_conns, topic)?))
    } else {
        (pub_conns, None)
    };

    let usage0 = target.usage()?;
    let t0 = now_nanos();
    let start = Instant::now();
    let mut subs_set = JoinSet::new();
    // Every subscriber gets every message, except in pairs where it has one publisher.
    let per_sub = if shape == Shape::Pairs {
        per_pub
    } else {
        sent_total
    };
    for conn in sub_conns {
        let progress = progress.clone();
        subs_set.spawn(subscriber(conn, per_sub, progress));
    }
    let mut sent = 0;
    let mut errors = Vec::new();
    if let Some(pubs) = in_turn {
        let (progress, runtime) = (progress.clone(), tokio::runtime::Handle::current());
        let sender = tokio::task::spawn_blocking(move || {
            publish_in_turn(pubs, per_pub, size, &progress, &runtime)
        });
        match sender.await? {
            Ok(n) => sent = n,
            Err(e) => errors.push(format!("publisher: {e:#}")),
        }
    } else {
        let mut pubs_set = JoinSet::new();
        for (i, conn) in pub_conns.into_iter().enumerate() {
            let progress = progress.clone();
            pubs_set.spawn(publisher(conn, topic(i), qos, size, per_pub, progress));
        }
        while let Some(r) = pubs_set.join_next().await {
            match r? {
                Ok(n) => sent += n,
                Err(e) => errors.push(format!("publisher: {e:#}")),
            }
        }
    }
    let mut hist = new_histogram();
    while let Some(r) = subs_set.join_next().await {
        match r? {
            Ok(h) => hist.add(h)?,
            Err(e) => errors.push(format!("subscriber: {e:#}")),
        }
    }
    let usage1 = target.usage()?;
    let wall = start.elapsed().as_secs_f64();
    if let Some(first) = errors.first() {
        bail!("{} error(s), first: {first}", errors.len());
    }
    let secs = progress.delivering_secs(t0).unwrap_or(wall);
    Ok(Measured {
        sent,
        expected: if shape == Shape::Pairs {
            sent
        } else {
            sent * subs as u64
        },
        done: progress.received.load(Ordering::Relaxed),
        secs,
        cpu: usage0.broker_cpu_until(&usage1),
        steal_percent: usage0.steal_percent_until(&usage1),
        latency: Some(hist),
        rss_per_conn_kib: None,
        lossy: qos == QoS::AtMostOnce,
    })
}

fn new_histogram() -> Histogram<u64> {
    // Two significant figures keep a histogram at ~40 KB, so 1,000 subscribers can each
    // have one; 1 µs .. 120 s.
    Histogram::new_with_bounds(1, 120_000_000, 2).expect("valid histogram bounds")
}

/// Publishes `count` messages as fast as the flow control allows; returns how many it sent.
async fn publisher(
    mut conn: Conn,
    topic: ByteStr,
    qos: QoS,
    size: usize,
    count: u64,
    progress: Arc<Progress>,
) -> anyhow::Result<u64> {
    let mut sent = 0u64;
    let mut inflight = 0u32;
    while sent < count || inflight > 0 {
        while sent < count
            && (qos == QoS::AtMostOnce || inflight < MQTT_WINDOW)
            && conn.pending_write() < 32 * 1024
        {
            if let Some(credit) = &progress.credit {
                match credit.try_acquire() {
                    Ok(permit) => permit.forget(),
                    Err(_) => break,
                }
            }
            conn.queue_publish(&topic, qos, payload(size, sent))?;
            sent += 1;
            if qos == QoS::AtLeastOnce {
                inflight += 1;
            }
        }
        if conn.pending_write() > 0 {
            conn.flush().await?;
        }
        if qos == QoS::AtMostOnce {
            continue;
        }
        if inflight > 0 {
            tokio::time::timeout(Duration::from_secs(30), conn.fill())
                .await
                .context("no PUBACK within 30 s")??;
            while let Some(p) = conn.try_decode()? {
                if let Packet::PubResp(r) = p
                    && r.kind == PubRespKind::PubAck
                {
                    inflight = inflight.saturating_sub(1);
                }
            }
        } else if sent < count
            && let Some(credit) = &progress.credit
        {
            tokio::time::timeout(Duration::from_secs(30), credit.acquire())
                .await
                .context("subscribers stalled for 30 s")??
                .forget();
            conn.queue_publish(&topic, qos, payload(size, sent))?;
            sent += 1;
            inflight += 1;
        }
    }
    conn.disconnect().await?;
    Ok(sent)
}

/// Sends `per_pub` QoS 1 messages on every connection, one connection after the other in
/// turn, message `k` at `start + k / total_rate` (a message that is late goes at once, so the
/// rate holds on average), from this thread with one blocking write each; then reads every
/// PUBACK and disconnects. Returns how many messages it sent.
///
/// A thread of its own and a clock finer than tokio's 1 ms timer keep the load even: with a
/// task per publisher, every publisher due in the same millisecond woke at once, and the
/// deliveries coming back waited for the load generator to finish sending that burst.
/// PUBACKs are left in the socket until the end (a few hundred bytes per connection), so the
/// only system calls per message are the write and, when ahead of time, one sleep.
fn publish_on_time(
    pubs: Vec<(BlockingConn, ByteStr)>,
    per_pub: u64,
    total_rate: u64,
    start: Instant,
) -> anyhow::Result<u64> {
    /// A message due within this goes at once: a sleep costs two context switches and
    /// oversleeps by the kernel's timer slack (~50 µs) anyway.
    const EARLY: Duration = Duration::from_micros(20);
    send_in_turn(pubs, per_pub, 16, |k| {
        let due = start + Duration::from_nanos(k * 1_000_000_000 / total_rate.max(1));
        let now = Instant::now();
        if due > now + EARLY {
            std::thread::sleep(due - now);
        }
        Ok(())
    })
}

/// Sends `per_pub` QoS 1 messages of `size` bytes on every connection, one connection after
/// the other in turn, as fast as `credit` allows (the subscriber gives a permit back for every
/// message it receives), from this thread with one blocking write each; then reads every
/// PUBACK and disconnects. Returns how many messages it sent. `runtime` is the runtime whose
/// subscriber gives the permits back.
///
/// With a task per publisher, each message also cost the load generator a wakeup and a read
/// of its PUBACK, on the same two CPUs as the broker; here a message is one write.
fn publish_in_turn(
    pubs: Vec<(BlockingConn, ByteStr)>,
    per_pub: u64,
    size: usize,
    progress: &Progress,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<u64> {
    let credit = progress
        .credit
        .as_ref()
        .context("publishing in turn needs the subscriber's credit")?;
    let mut permits = 0usize;
    send_in_turn(pubs, per_pub, size, |_| {
        if permits == 0 {
            // Everything the subscriber has given back, or wait for the next permit.
            permits = credit.available_permits();
            if permits > 0 {
                credit.try_acquire_many(u32::try_from(permits)?)?.forget();
            } else {
                runtime
                    .block_on(tokio::time::timeout(
                        Duration::from_secs(30),
                        credit.acquire(),
                    ))
                    .context("the subscriber stalled for 30 s")??
                    .forget();
                permits = 1;
            }
        }
        permits -= 1;
        Ok(())
    })
}

/// Sends `per_pub` QoS 1 messages of `size` bytes on every connection, one connection after
/// the other in turn, calling `before(k)` ahead of message `k`; then reads every PUBACK and
/// disconnects. Returns how many messages it sent.
fn send_in_turn(
    mut pubs: Vec<(BlockingConn, ByteStr)>,
    per_pub: u64,
    size: usize,
    mut before: impl FnMut(u64) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let count = pubs.len() as u64;
    for k in 0..per_pub * count {
        before(k)?;
        let (conn, topic) = &mut pubs[usize::try_from(k % count)?];
        conn.publish(topic, QoS::AtLeastOnce, payload(size, k / count))?;
    }
    for (conn, _) in &mut pubs {
        let mut acked = 0;
        while acked < per_pub {
            if let Packet::PubResp(r) = conn.recv()?
                && r.kind == PubRespKind::PubAck
            {
                acked += 1;
            }
        }
    }
    for (conn, _) in pubs {
        conn.disconnect()?;
    }
    Ok(per_pub * count)
}

/// Publishers for a thread of their own ([`Conn::into_blocking`]), each with its topic.
fn on_blocking_sockets(
    conns: Vec<Conn>,
    topic: impl Fn(usize) -> ByteStr,
) -> anyhow::Result<Vec<(BlockingConn, ByteStr)>> {
    conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| Ok((conn.into_blocking()?, topic(i))))
        .collect()
}

/// Receives until `expect` messages arrived or nothing came for `IDLE`; acknowledges QoS 1.
async fn subscriber(
    mut conn: Conn,
    expect: u64,
    progress: Arc<Progress>,
) -> anyhow::Result<Histogram<u64>> {
    let mut hist = new_histogram();
    let mut got = 0u64;
    loop {
        while let Some(p) = conn.try_decode()? {
            if let Packet::Publish(p) = p {
                progress.delivered(&p.payload, &mut hist);
                got += 1;
                if let Some(id) = p.packet_id {
                    conn.queue_puback(id)?;
                }
            }
        }
        if conn.pending_write() > 0 {
            conn.flush().await?;
        }
        if got >= expect {
            break;
        }
        match tokio::time::timeout(IDLE, conn.fill()).await {
            Ok(r) => r?,
            Err(_) => break,
        }
    }
    conn.disconnect().await?;
    Ok(hist)
}

/// Receives for every subscriber on the calling thread, from one `epoll` loop and with no
/// async runtime, until each has `expect` messages or nothing came for `IDLE`; acknowledges
/// QoS 1. The fixed-rate rows receive this way so that the load generator takes as little of
/// the CPUs it shares with the broker as it can: at 20,000 msg/s over TCP it took 50–52% of a
/// CPU in all, against 59–65% with a task per subscriber on tokio's two workers.
fn receive_in_one_thread(
    mut conns: Vec<BlockingConn>,
    expect: u64,
    progress: &Progress,
) -> anyhow::Result<Histogram<u64>> {
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new()?;
    for (i, conn) in conns.iter().enumerate() {
        conn.set_nonblocking()?;
        poll.registry()
            .register(&mut SourceFd(&conn.raw_fd()), Token(i), Interest::READABLE)?;
    }
    let mut hist = new_histogram();
    let mut got = vec![0u64; conns.len()];
    let mut short = if expect > 0 { conns.len() } else { 0 };
    let mut events = Events::with_capacity(1024);
    while short > 0 {
        match poll.poll(&mut events, Some(IDLE)) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r?,
        }
        if events.is_empty() {
            break;
        }
        for event in &events {
            let i = event.token().0;
            let conn = &mut conns[i];
            // Edge-triggered: read the socket dry before waiting on it again.
            if !conn.read_ready()? {
                bail!("connection closed by the broker");
            }
            while let Some(p) = conn.try_decode()? {
                if let Packet::Publish(p) = p {
                    progress.delivered(&p.payload, &mut hist);
                    got[i] += 1;
                    if got[i] == expect {
                        short -= 1;
                    }
                    if let Some(id) = p.packet_id {
                        conn.queue_puback(id)?;
                    }
                }
            }
            conn.write_queued()?;
        }
    }
    for conn in conns {
        conn.disconnect()?;
    }
    Ok(hist)
}

#[allow(clippy::too_many_arguments)]
async fn fixed_rate(
    ep: &Endpoint,
    target: Target,
    tag: &str,
    pairs: usize,
    rate: u64,
    secs: u64,
    held: usize,
) -> anyhow::Result<Measured> {
    let idle = hold(ep, &format!("{tag}-h"), held).await?;
    let mut subs = open_many(ep, &format!("{tag}-s"), pairs).await?;
    for (i, c) in subs.iter_mut().enumerate() {
        c.subscribe(&format!("bench/{tag}/{i}"), QoS::AtLeastOnce)
            .await?;
    }
    let subs = subs
        .into_iter()
        .map(Conn::into_blocking)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pubs = open_many(ep, &format!("{tag}-p"), pairs).await?;
    let pubs = on_blocking_sockets(pubs, |i| ByteStr::from(format!("bench/{tag}/{i}")))?;
    let per_pub = rate * secs;
    let progress = Arc::new(Progress {
        received: AtomicU64::new(0),
        credit: None,
        last_nanos: AtomicU64::new(0),
    });
    let usage0 = target.usage()?;
    let start = Instant::now();
    let start_nanos = now_nanos();
    let receiver = tokio::task::spawn_blocking({
        let progress = progress.clone();
        move || receive_in_one_thread(subs, per_pub, &progress)
    });
    let total_rate = rate * pairs as u64;
    let pacer =
        tokio::task::spawn_blocking(move || publish_on_time(pubs, per_pub, total_rate, start));
    let mut errors = Vec::new();
    let sent = match pacer.await? {
        Ok(n) => n,
        Err(e) => {
            errors.push(format!("publisher: {e:#}"));
            0
        }
    };
    let hist = match receiver.await? {
        Ok(h) => h,
        Err(e) => {
            errors.push(format!("subscriber: {e:#}"));
            new_histogram()
        }
    };
    let usage1 = target.usage()?;
    if let Some(first) = errors.first() {
        bail!("{} error(s), first: {first}", errors.len());
    }
    // Up to the last delivery: the publishers' PUBACKs are read after the last send.
    let delivering_secs = progress.delivering_secs(start_nanos).unwrap_or(0.0);
    let alive = idle.still_open().await?;
    if alive != held as u64 {
        bail!(
            "{} of {held} idle connections were closed",
            held as u64 - alive
        );
    }
    Ok(Measured {
        sent,
        expected: sent,
        done: progress.received.load(Ordering::Relaxed),
        secs: delivering_secs,
        cpu: usage0.broker_cpu_until(&usage1),
        steal_percent: usage0.steal_percent_until(&usage1),
        latency: Some(hist),
        rss_per_conn_kib: None,
        lossy: false,
    })
}

/// Durable shadow updates: every thing keeps one update in flight until `secs` have passed;
/// each accepted update was committed first. A thing with no update accepted fails the run.
async fn shadow_updates(
    ep: &Endpoint,
    target: Target,
    tag: &str,
    things: usize,
    per_conn: usize,
    secs: u64,
) -> anyhow::Result<Measured> {
    let conns = crate::shadows::connect_things(ep, tag, things, per_conn).await?;
    let usage0 = target.usage()?;
    let start = Instant::now();
    let updated = crate::shadows::update_all(conns, start + Duration::from_secs(secs)).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let usage1 = target.usage()?;
    if updated.idle_things > 0 {
        bail!(
            "{} of {things} things got no update accepted",
            updated.idle_things
        );
    }
    Ok(Measured {
        sent: updated.accepted,
        expected: updated.accepted,
        done: updated.accepted,
        secs: elapsed,
        cpu: usage0.broker_cpu_until(&usage1),
        steal_percent: usage0.steal_percent_until(&usage1),
        latency: Some(updated.latency_us),
        rss_per_conn_kib: None,
        lossy: false,
    })
}

async fn idle(ep: &Endpoint, target: Target, tag: &str, n: usize) -> anyhow::Result<Measured> {
    // Small (smoke) runs need no settling time.
    let settle = if n >= 1000 {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(100)
    };
    tokio::time::sleep(settle / 4).await;
    let rss0 = rss_kib(target.pid)?;
    let usage0 = target.usage()?;
    let start = Instant::now();
    let conns = hold(ep, &format!("{tag}-i"), n).await?;
    let secs = start.elapsed().as_secs_f64();
    let usage1 = target.usage()?;
    // Let the broker settle, then check every connection is still open and take the RSS.
    tokio::time::sleep(settle).await;
    let rss1 = rss_kib(target.pid)?;
    let alive = conns.still_open().await?;
    Ok(Measured {
        sent: n as u64,
        expected: n as u64,
        done: alive,
        secs,
        cpu: usage0.broker_cpu_until(&usage1),
        steal_percent: usage0.steal_percent_until(&usage1),
        latency: None,
        rss_per_conn_kib: Some((rss1 as f64 - rss0 as f64) / n as f64),
        lossy: false,
    })
}

/// Pings every connection (one at a time) and closes it; how many answered.
pub(crate) async fn still_open(mut conns: Vec<Conn>) -> anyhow::Result<u64> {
    let mut alive = 0u64;
    // Every connection stays open until all have answered: closing each one as soon as it
    // answered kept the broker busy with disconnects while it was asked for the next PINGRESP.
    for c in &mut conns {
        c.queue(&Packet::PingReq)?;
        c.flush().await?;
        match c.recv_timeout(Duration::from_secs(10)).await? {
            Some(Packet::PingResp) => alive += 1,
            other => bail!("PINGREQ on an idle connection: got {other:?}"),
        }
    }
    drop(conns);
    Ok(alive)
}

async fn storm(
    ep: &Endpoint,
    target: Target,
    tag: &str,
    parallel: usize,
    count: u64,
    secs: u64,
) -> anyhow::Result<Measured> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let usage0 = target.usage()?;
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..parallel {
        let (ep, next, done, tag) = (ep.clone(), next.clone(), done.clone(), tag.to_owned());
        set.spawn(async move {
            let mut hist = new_histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                // No source address: 16 connections at a time need no spreading, and a port
                // chosen at connect (rather than at bind) may reuse one of the loopback
                // TIME_WAIT sockets earlier scenarios leave behind (about 100,000 by now),
                // which made binding, and so the storm, several times slower at times.
                let conn = Conn::connect(&ep, &format!("{tag}-h{i}"), None)
                    .await
                    .with_context(|| format!("connection {i}"))?;
                hist.saturating_record(t.elapsed().as_micros() as u64);
                conn.disconnect().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(hist)
        });
    }
    let mut hist = new_histogram();
    let mut errors = Vec::new();
    while let Some(r) = set.join_next().await {
        match r? {
            Ok(h) => hist.add(h)?,
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let usage1 = target.usage()?;
    if let Some(first) = errors.first() {
        bail!("{} error(s), first: {first}", errors.len());
    }
    let n = done.load(Ordering::Relaxed);
    Ok(Measured {
        sent: n,
        expected: n,
        done: n,
        secs,
        cpu: usage0.broker_cpu_until(&usage1),
        steal_percent: usage0.steal_percent_until(&usage1),
        latency: Some(hist),
        rss_per_conn_kib: None,
        lossy: false,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use bytes::BytesMut;

    use super::*;

    /// A broker stand-in: for each of `connections` connections, answers CONNECT with a
    /// CONNACK and every QoS 1 PUBLISH with a PUBACK, and records when each PUBLISH arrived,
    /// until DISCONNECT.
    fn fake_broker(connections: usize) -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let recorded = arrivals.clone();
        std::thread::spawn(move || {
            for _ in 0..connections {
                let (socket, _) = listener.accept().expect("accept");
                let recorded = recorded.clone();
                std::thread::spawn(move || serve(socket, &recorded));
            }
        });
        (addr, arrivals)
    }

    /// The next packet from the client on `socket` (`buf` keeps what was read past it).
    fn read_packet(socket: &mut std::net::TcpStream, buf: &mut BytesMut) -> Packet {
        loop {
            if let Some(p) = thingd_mqtt::decode(buf, thingd_mqtt::ProtocolVersion::V311, 1 << 20)
                .expect("a valid packet")
            {
                return p;
            }
            let mut chunk = [0u8; 1024];
            let n = socket.read(&mut chunk).expect("read");
            assert!(n > 0, "the client closed without DISCONNECT");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn serve(mut socket: std::net::TcpStream, arrivals: &Mutex<Vec<Instant>>) {
        let mut buf = BytesMut::new();
        loop {
            let reply = match read_packet(&mut socket, &mut buf) {
                Packet::Connect(_) => [0x20, 2, 0, 0],
                Packet::Publish(p) => {
                    arrivals.lock().unwrap().push(Instant::now());
                    let [hi, lo] = p.packet_id.expect("QoS 1").to_be_bytes();
                    [0x40, 2, hi, lo]
                }
                Packet::Disconnect(_) => return,
                other => panic!("unexpected {other:?}"),
            };
            socket.write_all(&reply).expect("write");
        }
    }

    /// A broker stand-in for subscribers: answers CONNECT, then writes `per_conn` QoS 1
    /// PUBLISHes of 200 bytes (packet ids 1, 2, ...) in two writes 20 ms apart, split inside a
    /// packet and each more than one 4 KiB read takes, and returns the packet ids of the
    /// PUBACKs read back before DISCONNECT, per connection.
    fn fake_deliverer(
        connections: usize,
        per_conn: u16,
    ) -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u16>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (acked, acks) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..connections {
                let (socket, _) = listener.accept().expect("accept");
                let acked = acked.clone();
                std::thread::spawn(move || acked.send(deliver(socket, per_conn)).unwrap());
            }
        });
        (addr, acks)
    }

    fn deliver(mut socket: std::net::TcpStream, per_conn: u16) -> Vec<u16> {
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_packet(&mut socket, &mut buf),
            Packet::Connect(_)
        ));
        socket.write_all(&[0x20, 2, 0, 0]).unwrap();
        let mut out = BytesMut::new();
        let topic = ByteStr::from("t");
        for id in 1..=per_conn {
            let publish =
                crate::client::publish_packet(&topic, QoS::AtLeastOnce, Some(id), payload(200, 0));
            thingd_mqtt::encode(&publish, thingd_mqtt::ProtocolVersion::V311, &mut out).unwrap();
        }
        let split = out.len() / 2 + 3;
        socket.write_all(&out[..split]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        socket.write_all(&out[split..]).unwrap();
        let mut acked = Vec::new();
        loop {
            match read_packet(&mut socket, &mut buf) {
                Packet::PubResp(r) => acked.push(r.packet_id),
                Packet::Disconnect(_) => return acked,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn one_thread_receives_every_delivery_and_acknowledges_each() {
        let (addr, acks) = fake_deliverer(3, 50);
        let subs = blocking_conns(addr, "s", 3).await;
        let progress = Arc::new(Progress {
            received: AtomicU64::new(0),
            credit: None,
            last_nanos: AtomicU64::new(0),
        });
        let receiving = progress.clone();
        let hist = tokio::task::spawn_blocking(move || receive_in_one_thread(subs, 50, &receiving))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hist.len(), 150, "a latency for every delivery");
        assert_eq!(progress.received.load(Ordering::Relaxed), 150);
        for _ in 0..3 {
            let acked = acks.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(acked, (1..=50).collect::<Vec<u16>>());
        }
    }

    /// `n` plain TCP connections to `addr`, moved onto blocking sockets.
    async fn blocking_conns(addr: SocketAddr, prefix: &str, n: usize) -> Vec<BlockingConn> {
        let ep = Endpoint {
            addr,
            tls: None,
            spill: None,
            reset_on_close: false,
        };
        let mut conns = Vec::new();
        for i in 0..n {
            let conn = Conn::connect(&ep, &format!("{prefix}{i}"), None)
                .await
                .unwrap();
            conns.push(conn.into_blocking().unwrap());
        }
        conns
    }

    async fn blocking_publishers(addr: SocketAddr, n: usize) -> Vec<(BlockingConn, ByteStr)> {
        let conns = blocking_conns(addr, "p", n).await;
        conns
            .into_iter()
            .enumerate()
            .map(|(i, conn)| (conn, ByteStr::from(format!("t/{i}"))))
            .collect()
    }

    #[tokio::test]
    async fn fixed_rate_messages_go_no_earlier_than_their_time_and_every_puback_is_read() {
        let (addr, arrivals) = fake_broker(1);
        let pubs = blocking_publishers(addr, 1).await;
        // 100 messages at 1,000 msg/s: message k is due k ms after the start.
        let start = Instant::now();
        let sent = tokio::task::spawn_blocking(move || publish_on_time(pubs, 100, 1_000, start))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sent, 100);
        let arrivals = arrivals.lock().unwrap();
        assert_eq!(arrivals.len(), 100);
        for (k, at) in arrivals.iter().enumerate() {
            let due = start + Duration::from_millis(k as u64) - Duration::from_micros(20);
            assert!(*at >= due, "message {k} arrived {:?} early", due - *at);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishers_in_turn_send_no_more_than_the_subscriber_credits() {
        let (addr, arrivals) = fake_broker(2);
        let pubs = blocking_publishers(addr, 2).await;
        let progress = Arc::new(Progress {
            received: AtomicU64::new(0),
            credit: Some(Semaphore::new(5)),
            last_nanos: AtomicU64::new(0),
        });
        let (sender_progress, runtime) = (progress.clone(), tokio::runtime::Handle::current());
        let sender = tokio::task::spawn_blocking(move || {
            publish_in_turn(pubs, 10, 16, &sender_progress, &runtime)
        });
        let arrived = || arrivals.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while arrived() < 5 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(arrived(), 5, "5 permits, 5 messages");
        progress.credit.as_ref().unwrap().add_permits(15);
        assert_eq!(sender.await.unwrap().unwrap(), 20);
        assert_eq!(arrived(), 20);
    }
}
