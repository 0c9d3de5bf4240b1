//! `thingd-bench floor`: the CPU the kernel itself takes for the socket work of one QoS 1
//! message over loopback TCP, and over mTLS that plus rustls' record work (aws-lc, AES-128-GCM
//! as thingd's servers choose), with no broker at all — the floor under every broker's figure
//! in `compare`.
//!
//! One thread plays every part on blocking sockets, so nothing sleeps or wakes: N publishers
//! and N subscribers each hold a connection to a "broker" end, and each round walks the
//! publishers in turn (as the fan-in and fixed-rate rows do, one message per connection) through
//! the steps a broker's message takes. Each step's CPU is read from the thread's own clocks
//! (`CLOCK_THREAD_CPUTIME_ID`: nanoseconds on a CPU; `/proc/thread-self/stat`: user and system
//! clock ticks, sampled, for the kernel's share). On loopback a write also runs the
//! receiving socket's side of TCP, so each write's figure carries its receiver's input too,
//! as it does in a broker.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use thingd_mqtt::{ByteStr, ProtocolVersion, QoS};

use crate::client::{puback_packet, publish_packet};

#[derive(clap::Args)]
pub(crate) struct FloorArgs {
    /// Publishers (and as many subscribers): each message goes on the next one's connection.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Messages per publisher.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Transports, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "tcp,mtls")]
    transports: Vec<Transport>,
    /// Tiny counts; exits non-zero unless every packet arrived as written.
    #[arg(long)]
    smoke: bool,
}

/// The steps of one QoS 1 message, in the order a round takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    PublisherWrites,
    BrokerReadsAndAcks,
    BrokerDelivers,
    SubscriberReadsAndAcks,
    BrokerReadsAck,
    PublisherReadsAck,
}

impl Step {
    const ALL: [Step; 6] = [
        Step::PublisherWrites,
        Step::BrokerReadsAndAcks,
        Step::BrokerDelivers,
        Step::SubscriberReadsAndAcks,
        Step::BrokerReadsAck,
        Step::PublisherReadsAck,
    ];

    fn describe(self) -> &'static str {
        match self {
            Step::PublisherWrites => "publisher writes its PUBLISH",
            Step::BrokerReadsAndAcks => "broker reads the PUBLISH, writes the PUBACK",
            Step::BrokerDelivers => "broker writes the PUBLISH to the subscriber",
            Step::SubscriberReadsAndAcks => "subscriber reads it, writes its PUBACK",
            Step::BrokerReadsAck => "broker reads the subscriber's PUBACK",
            Step::PublisherReadsAck => "publisher reads its PUBACK",
        }
    }

    fn is_broker(self) -> bool {
        matches!(
            self,
            Step::BrokerReadsAndAcks | Step::BrokerDelivers | Step::BrokerReadsAck
        )
    }
}

/// The CPU one step has used so far, over all its rounds.
#[derive(Clone, Copy, Debug, Default)]
struct ThreadCpu {
    on_cpu_ns: u64,
    user_ticks: u64,
    system_ticks: u64,
}

impl ThreadCpu {
    /// Runs `work` and adds the CPU this thread spent in it. The clock is read just around
    /// the work and the ticks just outside, so that reading the ticks (a file) is not counted
    /// as the step's time.
    fn count(&mut self, work: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        let (user_before, system_before) = thread_ticks()?;
        let start = thread_cpu_ns()?;
        work()?;
        let end = thread_cpu_ns()?;
        let (user_after, system_after) = thread_ticks()?;
        self.on_cpu_ns += end.saturating_sub(start);
        self.user_ticks += user_after.saturating_sub(user_before);
        self.system_ticks += system_after.saturating_sub(system_before);
        Ok(())
    }

    /// The kernel's share of the ticks, or `None` when no tick fell in.
    fn kernel_share(&self) -> Option<f64> {
        let ticks = self.user_ticks + self.system_ticks;
        (ticks > 0).then(|| self.system_ticks as f64 / ticks as f64)
    }
}

/// Nanoseconds this thread has been on a CPU. Not `/proc/thread-self/schedstat`: the kernel
/// brings that up to date only at a tick or a switch, so a short step would be charged with
/// its predecessors' time.
fn thread_cpu_ns() -> anyhow::Result<u64> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Ok(u64::try_from(now.tv_sec)? * 1_000_000_000 + u64::try_from(now.tv_nsec)?)
}

/// This thread's user and system clock ticks (sampled at each tick, so right on average).
fn thread_ticks() -> anyhow::Result<(u64, u64)> {
    crate::brokers::user_and_system_ticks("/proc/thread-self/stat")
}

/// What a run measured: CPU per message for every step.
pub(crate) struct Floor {
    pub(crate) transport: Transport,
    pub(crate) connections: usize,
    pub(crate) messages: u64,
    steps: Vec<(Step, ThreadCpu)>,
}

impl Floor {
    fn micros_per_message(&self, cpu: &ThreadCpu) -> f64 {
        cpu.on_cpu_ns as f64 / 1_000.0 / self.messages.max(1) as f64
    }

    /// CPU µs per message the broker's three steps take together (its floor at a fixed rate,
    /// where nothing can be batched).
    pub(crate) fn broker_micros(&self) -> f64 {
        self.steps
            .iter()
            .filter(|(step, _)| step.is_broker())
            .map(|(_, cpu)| self.micros_per_message(cpu))
            .sum()
    }

    /// CPU µs per message of one step.
    fn step_micros(&self, step: Step) -> f64 {
        self.steps
            .iter()
            .find(|(s, _)| *s == step)
            .map_or(0.0, |(_, cpu)| self.micros_per_message(cpu))
    }

    /// CPU µs per message of the broker's first step, its floor in fan-in (there the
    /// deliveries go to one subscriber in large writes, and their share per message is small).
    pub(crate) fn fan_in_broker_micros(&self) -> f64 {
        self.step_micros(Step::BrokerReadsAndAcks)
    }

    pub(crate) fn table(&self) -> String {
        let mut out = format!(
            "| step of a QoS 1 message, {}, {} publishers and {} subscribers | CPU µs/msg | kernel share |\n|---|---:|---:|\n",
            self.transport.describe(),
            self.connections,
            self.connections
        );
        for (step, cpu) in &self.steps {
            let share = cpu
                .kernel_share()
                .map_or("–".to_owned(), |s| format!("{:.0}%", s * 100.0));
            out.push_str(&format!(
                "| {} | {:.2} | {share} |\n",
                step.describe(),
                self.micros_per_message(cpu)
            ));
        }
        out.push_str(&format!(
            "| **broker, fan-in** (the first broker step; deliveries batched) | {:.2} | |\n",
            self.fan_in_broker_micros()
        ));
        out.push_str(&format!(
            "| **broker, one message per connection** (the three broker steps) | {:.2} | |\n",
            self.broker_micros()
        ));
        out
    }
}

/// What the messages travel over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Transport {
    Tcp,
    Mtls,
}

impl Transport {
    fn describe(self) -> &'static str {
        match self {
            Transport::Tcp => "loopback TCP",
            Transport::Mtls => "loopback mTLS (TLS 1.3, AES-128-GCM)",
        }
    }
}

/// One end of a connection: its socket and, over mTLS, its TLS session.
struct End {
    sock: TcpStream,
    tls: Option<rustls::Connection>,
}

impl End {
    /// Writes `bytes` (as one TLS record over mTLS) and returns once the kernel has them.
    fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match &mut self.tls {
            None => self.sock.write_all(bytes)?,
            Some(tls) => {
                tls.writer().write_all(bytes)?;
                while tls.wants_write() {
                    tls.write_tls(&mut self.sock)?;
                }
            }
        }
        Ok(())
    }

    /// Reads exactly `expected.len()` bytes and checks they are `expected`.
    fn expect(&mut self, buf: &mut [u8], expected: &[u8]) -> anyhow::Result<()> {
        let got = buf
            .get_mut(..expected.len())
            .context("read buffer too small")?;
        match &mut self.tls {
            None => self.sock.read_exact(got)?,
            Some(tls) => {
                let mut filled = 0;
                while filled < got.len() {
                    match tls.reader().read(&mut got[filled..]) {
                        Ok(0) => bail!("the TLS session was closed"),
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if tls.read_tls(&mut self.sock)? == 0 {
                                bail!("the connection was closed");
                            }
                            tls.process_new_packets()?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        if got != expected {
            bail!("read {got:02x?}, expected {expected:02x?}");
        }
        Ok(())
    }

    /// One step of a handshake on a non-blocking socket: write what the session has, read what
    /// has arrived.
    fn exchange(&mut self) -> anyhow::Result<()> {
        let Some(tls) = &mut self.tls else {
            return Ok(());
        };
        while tls.wants_write() {
            tls.write_tls(&mut self.sock)?;
        }
        match tls.read_tls(&mut self.sock) {
            Ok(_) => {
                tls.process_new_packets()?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn settled(&self) -> bool {
        self.tls
            .as_ref()
            .is_none_or(|tls| !tls.is_handshaking() && !tls.wants_write())
    }
}

/// A connection: the client's end and the broker's.
struct Pair {
    client: End,
    broker: End,
}

/// The configurations of an mTLS pair: a CA of its own signs the broker's and the client's
/// P-256 certificates; the broker requires and verifies the client's.
struct TlsConfigs {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl TlsConfigs {
    fn new() -> anyhow::Result<TlsConfigs> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let ca_key = KeyPair::generate_for(alg)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let signed = |name: &str| -> anyhow::Result<_> {
            let key = KeyPair::generate_for(alg)?;
            let cert = CertificateParams::new(vec![name.to_owned()])?.signed_by(&key, &issuer)?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            Ok((vec![cert.der().clone()], key))
        };
        let (server_chain, server_key) = signed("localhost")?;
        let (client_chain, client_key) = signed("floor-device")?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone())?;
        let roots = Arc::new(roots);

        // AES-128-GCM first and the server's own order, as thingd's servers choose.
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let provider = Arc::new(provider);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(server_chain, server_key)?;
        server.ignore_client_order = true;
        server.send_tls13_tickets = 0;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(client_chain, client_key)?;
        Ok(TlsConfigs {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

fn pairs(listener: &TcpListener, n: usize, tls: Option<&TlsConfigs>) -> anyhow::Result<Vec<Pair>> {
    let addr = listener.local_addr()?;
    (0..n)
        .map(|_| {
            let client = TcpStream::connect(addr)?;
            let (broker, _) = listener.accept()?;
            client.set_nodelay(true)?;
            broker.set_nodelay(true)?;
            let mut pair = Pair {
                client: End {
                    sock: client,
                    tls: None,
                },
                broker: End {
                    sock: broker,
                    tls: None,
                },
            };
            if let Some(configs) = tls {
                pair.client.tls = Some(
                    rustls::ClientConnection::new(
                        configs.client.clone(),
                        rustls_pki_types::ServerName::try_from("localhost")?,
                    )?
                    .into(),
                );
                pair.broker.tls =
                    Some(rustls::ServerConnection::new(configs.server.clone())?.into());
                handshake(&mut pair)?;
            }
            Ok(pair)
        })
        .collect()
}

/// Completes a pair's handshake in this thread, with both sockets non-blocking meanwhile.
fn handshake(pair: &mut Pair) -> anyhow::Result<()> {
    for end in [&pair.client, &pair.broker] {
        end.sock.set_nonblocking(true)?;
    }
    for _ in 0..100 {
        if pair.client.settled() && pair.broker.settled() {
            break;
        }
        pair.client.exchange()?;
        pair.broker.exchange()?;
    }
    for end in [&pair.client, &pair.broker] {
        end.sock.set_nonblocking(false)?;
    }
    if !(pair.client.settled() && pair.broker.settled()) {
        bail!("the TLS handshake did not finish");
    }
    Ok(())
}

/// Measures `rounds` messages on each of `connections` publishers (see the module doc).
pub(crate) fn measure(
    transport: Transport,
    connections: usize,
    rounds: usize,
) -> anyhow::Result<Floor> {
    let tls = match transport {
        Transport::Tcp => None,
        Transport::Mtls => Some(TlsConfigs::new()?),
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let mut publishers = pairs(&listener, connections, tls.as_ref())?;
    let mut subscribers = pairs(&listener, connections, tls.as_ref())?;
    let version = ProtocolVersion::V311;
    let publish = thingd_mqtt::encode_to_bytes(
        &publish_packet(
            &ByteStr::from("bench/fan-in"),
            QoS::AtLeastOnce,
            Some(1),
            Bytes::from_static(&[0x5a; 16]),
        ),
        version,
    )?;
    let puback = thingd_mqtt::encode_to_bytes(&puback_packet(1), version)?;
    let mut buf = BytesMut::zeroed(publish.len().max(puback.len()));
    let mut steps: Vec<(Step, ThreadCpu)> = Step::ALL
        .iter()
        .map(|s| (*s, ThreadCpu::default()))
        .collect();
    for _ in 0..rounds {
        for (step, cpu) in &mut steps {
            let step = *step;
            cpu.count(|| {
                for (publisher, subscriber) in publishers.iter_mut().zip(subscribers.iter_mut()) {
                    match step {
                        Step::PublisherWrites => publisher.client.send(&publish)?,
                        Step::BrokerReadsAndAcks => {
                            publisher.broker.expect(&mut buf, &publish)?;
                            publisher.broker.send(&puback)?;
                        }
                        Step::BrokerDelivers => subscriber.broker.send(&publish)?,
                        Step::SubscriberReadsAndAcks => {
                            subscriber.client.expect(&mut buf, &publish)?;
                            subscriber.client.send(&puback)?;
                        }
                        Step::BrokerReadsAck => subscriber.broker.expect(&mut buf, &puback)?,
                        Step::PublisherReadsAck => publisher.client.expect(&mut buf, &puback)?,
                    }
                }
                Ok(())
            })?;
        }
    }
    Ok(Floor {
        transport,
        connections,
        messages: (connections * rounds) as u64,
        steps,
    })
}

pub(crate) fn run(args: FloorArgs) -> anyhow::Result<()> {
    let (connections, rounds) = if args.smoke {
        (10, 20)
    } else {
        (args.connections.max(1), args.rounds.max(1))
    };
    // Four descriptors per publisher: its pair and its subscriber's.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    for transport in args.transports {
        let machine = crate::brokers::MachineCpu::read()?;
        let floor = measure(transport, connections, rounds)?;
        let steal = machine
            .steal_percent_until(&crate::brokers::MachineCpu::read()?)
            .map_or("–".to_owned(), |s| format!("{s:.1}%"));
        println!(
            "{}: {} messages, one thread, blocking sockets (nothing sleeps or wakes); steal {steal}\n",
            transport.describe(),
            floor.messages
        );
        println!("{}", floor.table());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_of_every_message_is_measured_and_the_broker_steps_add_up() {
        for transport in [Transport::Tcp, Transport::Mtls] {
            let floor = measure(transport, 3, 4).expect("measure");
            assert_eq!(floor.messages, 12);
            assert_eq!(floor.steps.len(), Step::ALL.len());
            for (step, cpu) in &floor.steps {
                // Every step made system calls on 12 messages: some CPU time, however fast.
                assert!(cpu.on_cpu_ns > 0, "{transport:?} {step:?} measured no CPU");
            }
            let sum = floor.step_micros(Step::BrokerReadsAndAcks)
                + floor.step_micros(Step::BrokerDelivers)
                + floor.step_micros(Step::BrokerReadsAck);
            assert!((floor.broker_micros() - sum).abs() < 1e-9);
            assert!(floor.broker_micros() > floor.fan_in_broker_micros());
            let table = floor.table();
            assert!(table.contains(transport.describe()), "{table}");
            for step in Step::ALL {
                assert!(table.contains(step.describe()), "{table}");
            }
        }
    }

    #[test]
    fn an_mtls_pair_has_verified_the_clients_certificate_and_uses_aes_128_gcm() {
        let configs = TlsConfigs::new().expect("configs");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let mut pair = pairs(&listener, 1, Some(&configs))
            .expect("handshake")
            .pop()
            .expect("one pair");
        let server = pair.broker.tls.as_ref().expect("a TLS session");
        assert!(server.peer_certificates().is_some_and(|c| !c.is_empty()));
        assert_eq!(
            server.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        // The bytes on the socket are records, not the packet.
        let mut buf = [0u8; 64];
        pair.client.send(b"hello").expect("send");
        let n = std::io::Read::read(&mut pair.broker.sock, &mut buf).expect("raw read");
        assert!(n > 5 && buf[0] == 0x17, "{:02x?}", &buf[..n]);
    }
}
