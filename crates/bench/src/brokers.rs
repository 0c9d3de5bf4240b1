//! Starting the brokers under test with equivalent settings, sharing one set of
//! certificates made by thingd's CA, and reading their CPU time and memory from `/proc`.

use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The brokers the tool knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Thingd,
    Mosquitto,
    Rumqttd,
}

impl Kind {
    pub(crate) const ALL: [Kind; 3] = [Kind::Thingd, Kind::Mosquitto, Kind::Rumqttd];

    pub(crate) fn parse(s: &str) -> anyhow::Result<Kind> {
        match s {
            "thingd" => Ok(Kind::Thingd),
            "mosquitto" => Ok(Kind::Mosquitto),
            "rumqttd" => Ok(Kind::Rumqttd),
            other => bail!("unknown broker {other:?} (thingd, mosquitto, rumqttd)"),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Thingd => "thingd",
            Kind::Mosquitto => "mosquitto",
            Kind::Rumqttd => "rumqttd",
        })
    }
}

/// Certificates shared by every broker: thingd's root CA, thingd's server certificate and
/// key (ECDSA P-256, covers localhost and 127.0.0.1), and one device certificate and key
/// (ECDSA P-256) that all load-generator connections present.
#[derive(Clone, Debug)]
pub(crate) struct Pki {
    pub(crate) thingd_data: PathBuf,
    pub(crate) ca: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    pub(crate) device_cert: PathBuf,
    pub(crate) device_key: PathBuf,
}

impl Pki {
    /// Creates thingd's data directory (and so its CA) with `thingd cert issue`.
    pub(crate) fn create(thingd: &Path, work: &Path) -> anyhow::Result<Pki> {
        let data = work.join("thingd-data");
        let device = work.join("device");
        let out = Command::new(thingd)
            .args([
                "cert",
                "issue",
                "--common-name",
                "bench-device",
                "--data-dir",
            ])
            .arg(&data)
            .arg("--out")
            .arg(&device)
            .env("RUST_LOG", "error")
            .output()
            .with_context(|| format!("running {}", thingd.display()))?;
        if !out.status.success() {
            bail!(
                "thingd cert issue failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let pki = data.join("pki");
        let result = Pki {
            thingd_data: data.clone(),
            ca: device.join("root-ca.pem"),
            server_cert: pki.join("server.pem"),
            server_key: pki.join("server.key"),
            device_cert: device.join("certificate.pem.crt"),
            device_key: device.join("private.pem.key"),
        };
        for path in [
            &result.ca,
            &result.server_cert,
            &result.server_key,
            &result.device_cert,
            &result.device_key,
        ] {
            if !path.exists() {
                bail!("{} missing after `thingd cert issue`", path.display());
            }
        }
        Ok(result)
    }

    /// The rustls client configuration every mTLS connection uses: the device certificate,
    /// the broker's certificate pinned (see [`PinnedServer`]), no session resumption (every
    /// handshake is a full one).
    pub(crate) fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        client_config(&self.server_cert, &self.device_cert, &self.device_key)
    }
}

/// The client configuration of [`Pki::client_config`], from the three files it reads.
pub(crate) fn client_config(
    server_cert: &Path,
    device_cert: &Path,
    device_key: &Path,
) -> anyhow::Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let server = CertificateDer::from_pem_file(server_cert)?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(device_cert)?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(device_key)?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let pinned = PinnedServer {
        cert: server,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(pinned))
        .with_client_auth_cert(chain, key)?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// Trusts exactly one server certificate, compared byte for byte, as a device that pins its
/// broker's certificate does; the server must still prove it holds that certificate's key
/// (its handshake signature is verified). Pinning skips the signature check of the chain up
/// to the CA, the same step the broker skips for a device certificate it has verified
/// before: the load generator then spends on each handshake what a pinned device would, and
/// takes less of the CPU the broker under test shares with it. Every broker gets this client.
#[derive(Debug)]
struct PinnedServer {
    cert: rustls_pki_types::CertificateDer<'static>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A broker process under test.
pub(crate) struct Broker {
    pub(crate) kind: Kind,
    child: Child,
    pub(crate) tcp: SocketAddr,
    pub(crate) tls: SocketAddr,
}

impl Broker {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.kind);
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to find and describe one broker before starting it.
pub(crate) struct Installed {
    pub(crate) kind: Kind,
    pub(crate) binary: PathBuf,
    pub(crate) version: String,
}

/// Finds `name` on PATH or in the extra places.
fn which(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .chain(extra.iter().cloned())
        .find(|p| p.is_file())
}

/// The rumqttd release the tool installs (the one the committed figures were measured with).
pub(crate) const RUMQTTD_VERSION: &str = "0.20.0";

/// Installs rumqttd from crates.io into `tools` (`tools/bin/rumqttd`), with the feature that
/// makes it verify client certificates (without it its TLS listener accepts any client).
pub(crate) fn install_rumqttd(tools: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "rumqttd: not found; installing rumqttd {RUMQTTD_VERSION} from crates.io into {} \
         (a few minutes; --no-install skips this)",
        tools.display()
    );
    let status = Command::new(cargo)
        // Not --locked: the lock file published with 0.20.0 pins metrics 0.22.1, which
        // current Rust refuses; the newest compatible releases build.
        .args(["install", "rumqttd", "--version", RUMQTTD_VERSION])
        .args(["--features", "verify-client-cert", "--root"])
        .arg(tools)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo install rumqttd failed ({status})"))
    }
}

/// Locates a broker's binary and version, or says why it is missing. rumqttd is looked for
/// in `tools/bin` too (where `install_rumqttd` puts it).
pub(crate) fn locate(
    kind: Kind,
    thingd: &Path,
    rumqttd: Option<&Path>,
    tools: &Path,
) -> Result<Installed, String> {
    let binary = match kind {
        Kind::Thingd => Some(thingd.to_path_buf()),
        Kind::Mosquitto => which(
            "mosquitto",
            &[
                PathBuf::from("/usr/sbin/mosquitto"),
                PathBuf::from("/usr/local/sbin/mosquitto"),
            ],
        ),
        Kind::Rumqttd => rumqttd.map(Path::to_path_buf).or_else(|| {
            let mut extra = vec![tools.join("bin/rumqttd")];
            if let Some(home) = std::env::var_os("CARGO_HOME") {
                extra.push(PathBuf::from(home).join("bin/rumqttd"));
            }
            if let Some(home) = std::env::var_os("HOME") {
                extra.push(PathBuf::from(home).join(".cargo/bin/rumqttd"));
            }
            which("rumqttd", &extra)
        }),
    };
    let Some(binary) = binary.filter(|p| p.is_file()) else {
        return Err(match kind {
            Kind::Thingd => format!("{} not found", thingd.display()),
            Kind::Mosquitto => "not installed (apt-get install mosquitto)".to_owned(),
            Kind::Rumqttd => format!(
                "not installed (cargo install rumqttd --features verify-client-cert --root {})",
                tools.display()
            ),
        });
    };
    let args: &[&str] = match kind {
        Kind::Mosquitto => &["-h"],
        _ => &["--version"],
    };
    let version = Command::new(&binary)
        .args(args)
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines()
                .find(|l| l.to_lowercase().contains("version") || l.contains(' '))
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    Ok(Installed {
        kind,
        binary,
        version,
    })
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// The configuration thingd runs with (all values are its AWS-like defaults, written out).
pub(crate) const THINGD_TOML: &str = "\
[limits]
receive_maximum = 100
max_inflight_out = 100
max_queued_messages = 100000
outbound_queue = 4096
max_connections = 200000
";

/// True when this process runs as root.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        .unwrap_or(false)
}

pub(crate) fn mosquitto_conf(pki: &Pki, tcp: SocketAddr, tls: SocketAddr) -> String {
    // Started as root, Mosquitto would switch to the `mosquitto` user, which cannot read
    // the certificates in the private work directory.
    let user = if is_root() { "user root\n" } else { "" };
    format!(
        "\
{user}per_listener_settings false
allow_anonymous true
persistence false
log_dest none
log_type none
connection_messages false
sys_interval 0
max_connections -1
max_inflight_messages 100
max_queued_messages 10000000
set_tcp_nodelay true

listener {} {}

listener {} {}
cafile {}
certfile {}
keyfile {}
require_certificate true
ciphers_tls1.3 TLS_AES_128_GCM_SHA256
",
        tcp.port(),
        tcp.ip(),
        tls.port(),
        tls.ip(),
        pki.ca.display(),
        pki.server_cert.display(),
        pki.server_key.display()
    )
}

pub(crate) fn rumqttd_toml(pki: &Pki, tcp: SocketAddr, tls: SocketAddr) -> String {
    let connections = "\
connection_timeout_ms = 10000
max_payload_size = 131072
max_inflight_count = 100
dynamic_filters = true";
    format!(
        "\
id = 0

[router]
id = 0
max_connections = 200000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = \"tcp\"
listen = \"{tcp}\"
next_connection_delay_ms = 0
[v4.1.connections]
{connections}

[v4.2]
name = \"mtls\"
listen = \"{tls}\"
next_connection_delay_ms = 0
[v4.2.tls]
capath = \"{}\"
certpath = \"{}\"
keypath = \"{}\"
[v4.2.connections]
{connections}
",
        pki.ca.display(),
        pki.server_cert.display(),
        pki.server_key.display()
    )
}

/// Times a peer broker is started on new ports when it exits before listening.
const START_ATTEMPTS: u32 = 3;

/// Starts a broker with its TCP and mTLS listeners on 127.0.0.1 and waits until both accept.
///
/// thingd picks its own ports. Mosquitto and rumqttd are given ports that were free a moment
/// before, and another process (a client's ephemeral port, say) may take one first; such a
/// broker exits at once, and is started again on other ports.
pub(crate) fn start(inst: &Installed, pki: &Pki, work: &Path) -> anyhow::Result<Broker> {
    let mut attempt = 1;
    loop {
        match start_once(inst, pki, work) {
            Err(error) if inst.kind != Kind::Thingd && attempt < START_ATTEMPTS => {
                eprintln!(
                    "{}: start {attempt} failed ({error:#}); trying other ports",
                    inst.kind
                );
                attempt += 1;
            }
            started => return started,
        }
    }
}

fn start_once(inst: &Installed, pki: &Pki, work: &Path) -> anyhow::Result<Broker> {
    let log = std::fs::File::create(work.join(format!("{}.log", inst.kind)))?;
    let (child, tcp, tls) = match inst.kind {
        Kind::Thingd => {
            let config = work.join("thingd.toml");
            std::fs::write(&config, THINGD_TOML)?;
            let listeners = pki.thingd_data.join("listeners.json");
            let _ = std::fs::remove_file(&listeners);
            let child = Command::new(&inst.binary)
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .arg("--data-dir")
                .arg(&pki.thingd_data)
                .args(["--mqtts", "127.0.0.1:0", "--mqtt-plain", "127.0.0.1:0"])
                .args(["--https", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
                .args(["--api", "127.0.0.1:0"])
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?;
            let mut child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(60);
            let json = loop {
                if let Ok(text) = std::fs::read_to_string(&listeners)
                    && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
                {
                    break json;
                }
                if let Some(c) = child.as_mut()
                    && let Some(status) = c.try_wait()?
                {
                    bail!(
                        "thingd exited during start: {status} (see {}/thingd.log)",
                        work.display()
                    );
                }
                if Instant::now() > deadline {
                    bail!("thingd did not write listeners.json within 60 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let addr = |key: &str| -> anyhow::Result<SocketAddr> {
                Ok(json[key]
                    .as_str()
                    .with_context(|| format!("{key} in listeners.json"))?
                    .parse()?)
            };
            let (tcp, tls) = (addr("mqtt_plain")?, addr("mqtts")?);
            (child.take().context("child")?, tcp, tls)
        }
        Kind::Mosquitto => {
            let (tcp, tls) = (free_port()?, free_port()?);
            let conf = work.join("mosquitto.conf");
            std::fs::write(&conf, mosquitto_conf(pki, tcp, tls))?;
            let child = Command::new(&inst.binary)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?;
            (child, tcp, tls)
        }
        Kind::Rumqttd => {
            let (tcp, tls) = (free_port()?, free_port()?);
            let conf = work.join("rumqttd.toml");
            std::fs::write(&conf, rumqttd_toml(pki, tcp, tls))?;
            let child = Command::new(&inst.binary)
                .arg("--quiet")
                .arg("--config")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?;
            (child, tcp, tls)
        }
    };
    let mut broker = Broker {
        kind: inst.kind,
        child,
        tcp,
        tls,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in [tcp, tls] {
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Err(e) = broker.check_alive() {
                let log = std::fs::read_to_string(work.join(format!("{}.log", inst.kind)))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "{e:#}; its log ends: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                );
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on {addr} within 30 s", inst.kind);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(broker)
}

/// Clock ticks per second for `/proc/<pid>/stat`.
pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds the process has used (all threads).
pub(crate) fn cpu_secs(pid: u32, ticks: f64) -> anyhow::Result<f64> {
    let (utime, stime) = user_and_system_ticks(&format!("/proc/{pid}/stat"))?;
    Ok((utime + stime) as f64 / ticks)
}

/// The user and system clock ticks in a `stat` file of `/proc` (a process's or a thread's).
pub(crate) fn user_and_system_ticks(stat_path: &str) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(stat_path)?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15.
    Ok((
        fields.get(11).context("utime")?.parse()?,
        fields.get(12).context("stime")?.parse()?,
    ))
}

/// The whole machine's CPU time so far, in clock ticks summed over its CPUs (the `cpu` line
/// of `/proc/stat`): all of it, and the part the hypervisor ran other guests on our CPUs while
/// we had work for them (steal).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct MachineCpu {
    pub(crate) total: u64,
    pub(crate) steal: u64,
}

impl MachineCpu {
    pub(crate) fn read() -> anyhow::Result<MachineCpu> {
        parse_machine_cpu(&std::fs::read_to_string("/proc/stat")?)
    }

    /// Steal as a percentage of the machine's CPU time from `self` to `later`; `None` when no
    /// tick passed.
    pub(crate) fn steal_percent_until(&self, later: &MachineCpu) -> Option<f64> {
        let total = later.total.checked_sub(self.total)?;
        let steal = later.steal.checked_sub(self.steal)?;
        (total > 0).then(|| 100.0 * steal as f64 / total as f64)
    }
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`: guest time is
/// already inside user and nice, so the total stops at steal.
fn parse_machine_cpu(stat: &str) -> anyhow::Result<MachineCpu> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("malformed cpu line in /proc/stat")?;
    if fields.len() < 8 {
        bail!("the cpu line of /proc/stat has no steal field: {line}");
    }
    Ok(MachineCpu {
        total: fields.iter().sum(),
        steal: fields[7],
    })
}

/// Resident set size in KiB.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_cpu_sums_the_fields_up_to_steal_and_reads_steal() {
        let stat = "cpu  100 5 50 800 10 1 4 30 7 0\ncpu0 50 2 25 400 5 0 2 15 7 0\nintr 1\n";
        let m = parse_machine_cpu(stat).expect("parses");
        assert_eq!(
            m,
            MachineCpu {
                total: 1000,
                steal: 30
            }
        );
        let later = MachineCpu {
            total: 1400,
            steal: 50,
        };
        assert_eq!(m.steal_percent_until(&later), Some(5.0));
        assert_eq!(m.steal_percent_until(&m), None);
    }

    #[test]
    fn a_cpu_line_without_steal_is_an_error() {
        assert!(parse_machine_cpu("cpu  1 2 3 4\n").is_err());
        assert!(parse_machine_cpu("intr 1\n").is_err());
    }
}
