//! The `thingd` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use thingd_auth::CertificateAuthority;
use thingd_model::{CertificateId, CertificateStatus};
use thingd_store::{Store, WriteOp};

use crate::config::Config;
use crate::server::{Server, create_private_dir};

/// thingd: a self-hosted device cloud that speaks AWS IoT Core's protocols.
#[derive(Debug, Parser)]
#[command(name = "thingd", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Manage device certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Set up devices.
    #[command(subcommand)]
    Device(DeviceCommand),
}

/// `thingd device ...`.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Create a thing with its own certificate and a least-privilege policy, and write
    /// certificate.pem.crt, private.pem.key, root-ca.pem, endpoint.txt and aws_certificate.h
    /// (the three PEM texts as C string literals, for firmware).
    Provision {
        /// Data directory.
        #[command(flatten)]
        data: DataDirArg,
        /// The thing name (also the MQTT client id the device must use).
        thing_name: String,
        /// Directory to write the files to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// The host name devices connect to (must be one of the server certificate's names).
        #[arg(long, default_value = "localhost")]
        endpoint: String,
        /// The MQTT-over-TLS port devices connect to.
        #[arg(long, default_value_t = 8883)]
        port: u16,
        /// Use an RSA-2048 key instead of ECDSA P-256.
        #[arg(long)]
        rsa: bool,
    },
    /// Run the seed article's sensor board in software: connect with a provisioned
    /// device's certificate, report a temperature rising 10..40 to the shadow, and apply
    /// deltas (`led`, `setpoint`). `--fleet N` runs N devices.
    Simulate(crate::simulate::SimulateArgs),
}

/// Where the data lives; shared by every command.
#[derive(Debug, Args, Clone)]
pub struct DataDirArg {
    /// Data directory (CA, server certificate, database) [default: ./thingd-data].
    #[arg(long, env = "THINGD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArg {
    /// The directory given, or the default.
    pub fn resolve(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| Config::default().data_dir)
    }
}

/// `thingd serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory.
    #[command(flatten)]
    pub data: DataDirArg,
    /// TOML configuration file; flags override it.
    #[arg(long, env = "THINGD_CONFIG")]
    pub config: Option<PathBuf>,
    /// MQTT over TLS listen address (default 0.0.0.0:8883).
    #[arg(long)]
    pub mqtts: Option<SocketAddr>,
    /// TLS listen address for ALPN MQTT, HTTP and MQTT over WebSocket (default 0.0.0.0:8443).
    #[arg(long)]
    pub https: Option<SocketAddr>,
    /// Turn on plain-TCP MQTT with no authentication at this address. Development only.
    #[arg(long)]
    pub mqtt_plain: Option<SocketAddr>,
    /// Prometheus metrics listen address (default 127.0.0.1:9100).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// AWS control-plane (SigV4 HTTP) listen address (default 127.0.0.1:9080).
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// A host name or IP address devices use to reach this server; added to the server
    /// certificate. Repeatable.
    #[arg(long = "endpoint")]
    pub endpoints: Vec<String>,
}

/// `thingd cert ...`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issue a device certificate and key signed by the thingd CA, register it ACTIVE, and
    /// write certificate.pem.crt, private.pem.key and root-ca.pem to a directory.
    Issue {
        /// Data directory.
        #[command(flatten)]
        data: DataDirArg,
        /// Directory to write the files to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Subject common name of the certificate.
        #[arg(long, default_value = "thingd-device")]
        common_name: String,
        /// Use an RSA-2048 key (as AWS's CreateKeysAndCertificate does) instead of ECDSA P-256.
        #[arg(long)]
        rsa: bool,
        /// Attach this policy (which must exist) instead of the development policy.
        #[arg(long, conflicts_with = "no_policy")]
        policy: Option<String>,
        /// Attach no policy: the certificate can then not even connect until one is attached
        /// (IoT policies deny by default).
        #[arg(long)]
        no_policy: bool,
    },
    /// List registered certificates.
    List {
        /// Data directory.
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Change a certificate's status (ACTIVE, INACTIVE, REVOKED). Live connections of a
    /// certificate that stops being ACTIVE are closed within a second.
    SetStatus {
        /// Data directory.
        #[command(flatten)]
        data: DataDirArg,
        /// Certificate id (64 lowercase hex characters).
        id: String,
        /// New status.
        status: String,
    },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Cert(command) => tokio::task::spawn_blocking(move || cert(command)).await?,
        Command::Device(DeviceCommand::Simulate(args)) => crate::simulate::run(args).await,
        Command::Device(command) => tokio::task::spawn_blocking(move || device(command)).await?,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &args.data.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(addr) = args.mqtts {
        config.listeners.mqtts = Some(addr);
    }
    if let Some(addr) = args.https {
        config.listeners.https = Some(addr);
    }
    if let Some(addr) = args.mqtt_plain {
        config.listeners.mqtt_plain = Some(addr);
    }
    if let Some(addr) = args.metrics {
        config.listeners.metrics = Some(addr);
    }
    if let Some(addr) = args.api {
        config.listeners.api = Some(addr);
    }
    config.endpoint_names.extend(args.endpoints);

    let running = Server::start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

fn cert(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Issue {
            data,
            out,
            common_name,
            rsa,
            policy,
            no_policy,
        } => {
            let (config, store) = open(&data)?;
            let ca = CertificateAuthority::load_or_create(&config.pki_dir(), &[])?;
            let issued = ca.issue_and_register(&store, &common_name, rsa)?;
            let attached = if no_policy {
                None
            } else {
                let name = policy.unwrap_or_else(|| DEV_POLICY_NAME.to_owned());
                let dev = name == DEV_POLICY_NAME;
                attach_policy(&store, &config, &name, issued.id.as_str(), dev)?;
                Some(name)
            };
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            write_file(
                &out.join("certificate.pem.crt"),
                issued.certificate_pem.as_bytes(),
                0o644,
            )?;
            write_file(
                &out.join("private.pem.key"),
                issued.private_key_pem.as_bytes(),
                0o600,
            )?;
            write_file(&out.join("root-ca.pem"), ca.root_pem().as_bytes(), 0o644)?;
            store.close();
            println!("certificate {} issued and ACTIVE", issued.id);
            match attached {
                Some(name) if name == DEV_POLICY_NAME => {
                    println!(
                        "  policy {name} attached: it allows every action on every resource (development only)"
                    )
                }
                Some(name) => println!("  policy {name} attached"),
                None => {
                    println!("  no policy attached: the certificate cannot connect until one is")
                }
            }
            println!("  {}", out.join("certificate.pem.crt").display());
            println!("  {}", out.join("private.pem.key").display());
            println!("  {}", out.join("root-ca.pem").display());
            Ok(())
        }
        CertCommand::List { data } => {
            let (_, store) = open(&data)?;
            for record in store.certificates()? {
                println!("{}  {}", record.id, record.status);
            }
            store.close();
            Ok(())
        }
        CertCommand::SetStatus { data, id, status } => {
            let Some(id) = CertificateId::parse(&id) else {
                bail!("{id:?} is not a certificate id (64 lowercase hex characters)");
            };
            let status: CertificateStatus = status.parse()?;
            let (_, store) = open(&data)?;
            let Some(current) = store.certificate(&id)? else {
                bail!("no certificate {id}");
            };
            if current.status == CertificateStatus::Revoked && status != CertificateStatus::Revoked
            {
                bail!("certificate {id} is REVOKED; a revoked certificate cannot change status");
            }
            store.write_blocking(vec![WriteOp::SetCertificateStatus {
                id: id.clone(),
                status,
            }])?;
            store.close();
            println!("certificate {id}: {} -> {status}", current.status);
            Ok(())
        }
    }
}

fn device(command: DeviceCommand) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Provision {
            data,
            thing_name,
            out,
            endpoint,
            port,
            rsa,
        } => {
            let (mut config, store) = open(&data)?;
            config.endpoint_names = vec![endpoint];
            config.listeners.mqtts = Some(std::net::SocketAddr::from(([0, 0, 0, 0], port)));
            let ca = CertificateAuthority::load_or_create(&config.pki_dir(), &[])?;
            let done = crate::provision::provision(&config, &store, &ca, &thing_name, &out, rsa)?;
            store.close();
            println!("thing {thing_name} provisioned");
            println!("  certificate {} (ACTIVE)", done.certificate_id);
            println!("  policy {} attached", done.policy_name);
            for file in done.files {
                println!("  {}", file.display());
            }
            Ok(())
        }
        DeviceCommand::Simulate(_) => bail!("`device simulate` runs on the async runtime"),
    }
}

/// The policy `thingd cert issue` attaches unless told otherwise.
pub const DEV_POLICY_NAME: &str = "thingd-dev-allow-all";

const DEV_POLICY_DOCUMENT: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#;

/// Attaches policy `name` to the certificate, creating the development policy first if it
/// is the one asked for and does not exist yet.
fn attach_policy(
    store: &Store,
    config: &Config,
    name: &str,
    certificate_id: &str,
    create_dev: bool,
) -> anyhow::Result<()> {
    use thingd_store::registry::security::{attachments, policies};
    let target = config.certificate_arn(certificate_id);
    let name = name.to_owned();
    store
        .transact_blocking(move |conn| {
            let now = crate::provision::unix_now();
            if create_dev && policies::get(conn, &name)?.is_none() {
                policies::create(conn, &name, DEV_POLICY_DOCUMENT, now)?;
            }
            attachments::attach(conn, &name, &target, now)
        })
        .with_context(|| "attaching the policy")?;
    Ok(())
}

fn open(data: &DataDirArg) -> anyhow::Result<(Config, Store)> {
    let config = Config {
        data_dir: data.resolve(),
        ..Config::default()
    };
    create_private_dir(&config.data_dir)?;
    let store = Store::open(&config.database_path())
        .with_context(|| format!("opening {}", config.database_path().display()))?;
    Ok((config, store))
}

pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents)?;
    Ok(())
}
