//! Starting and stopping a whole server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use thingd_auth::{CertificateAuthority, CertificateRegistry};
use thingd_broker::Broker;
use thingd_net::{ALPN_HTTP11, ALPN_MQTT_CA, BeyondFileLimit, ListenerLimits, Rings};
use thingd_shadow::service::ShadowService;
use thingd_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::authorize::PolicyAuthorizer;
use crate::config::Config;
use crate::metrics_http;

/// How often certificate statuses are re-read to close connections of certificates that
/// stopped being ACTIVE (for example after `thingd cert set-status`).
const STATUS_POLL: Duration = Duration::from_millis(250);

/// Descriptors kept free for thingd's own files and listeners: a quarter of the open-file
/// limit, at most this many.
const DESCRIPTOR_RESERVE: u64 = 1024;
/// Direct descriptors per io_uring file table (the kernel also caps it at the open-file limit).
const RING_SLOTS: u64 = 65_536;
/// Listeners that take connections (MQTT over TLS, HTTPS, plain MQTT).
const CONNECTION_LISTENERS: u64 = 3;

/// Raises the soft open-file limit to the hard one and, where io_uring works and the
/// configuration allows it, sets up the rings that hold connections past it.
fn beyond_file_limit(limits: &crate::config::Limits) -> Option<BeyondFileLimit> {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-file limit");
            return None;
        }
    };
    if !limits.beyond_file_limit {
        return None;
    }
    let reserve = (limit / 4).min(DESCRIPTOR_RESERVE);
    let slots = limit.min(RING_SLOTS);
    let wanted = CONNECTION_LISTENERS * limits.max_connections as u64;
    let max_rings = wanted.div_ceil(slots.max(1)).clamp(1, 256);
    match Rings::new(slots as u32, max_rings as usize) {
        Ok(rings) => {
            let ceiling = limit - reserve;
            // A quarter of the descriptors below the reserve waits for busy connections
            // leaving the rings: idle ones accepted first would otherwise take them all.
            let accept_ceiling = ceiling - ceiling / 4;
            rings.promote_below(Some(i32::try_from(ceiling).unwrap_or(i32::MAX)));
            tracing::info!(
                open_file_limit = limit,
                "connections past descriptor {accept_ceiling} are held in io_uring file \
                 tables (up to {max_rings} of {slots}); busy ones move back onto descriptors \
                 below {ceiling}"
            );
            Some(BeyondFileLimit {
                rings,
                descriptor_ceiling: i32::try_from(accept_ceiling).unwrap_or(i32::MAX),
            })
        }
        Err(error) => {
            tracing::warn!(
                %error,
                "io_uring is not available: connections past the open-file limit ({limit}) \
                 wait until a descriptor is free"
            );
            None
        }
    }
}

/// Entry point for running thingd.
pub struct Server;

/// A started server: its bound addresses, and the handle to stop it.
pub struct RunningServer {
    /// MQTT over TLS address, if enabled.
    pub mqtts: Option<SocketAddr>,
    /// TLS port with ALPN dispatch (MQTT, HTTP, WebSocket), if enabled.
    pub https: Option<SocketAddr>,
    /// Plain MQTT (development) address, if enabled.
    pub mqtt_plain: Option<SocketAddr>,
    /// Metrics address, if enabled.
    pub metrics: Option<SocketAddr>,
    /// HTTP API address (`iot` control plane and `iot-data` plane), if enabled.
    pub api: Option<SocketAddr>,
    /// The AWS CLI credentials file (profiles `thingd` and `default`).
    pub aws_credentials_path: PathBuf,
    /// The AWS CLI config file (region and `endpoint_url`).
    pub aws_config_path: PathBuf,
    /// The root CA certificate file devices must trust.
    pub root_ca_path: PathBuf,
    /// The broker, for in-process use.
    pub broker: Broker,
    /// The store.
    pub store: Store,
    /// The Device Shadow service (MQTT `$aws/things/+/shadow/...` and the `iot-data` API).
    pub shadows: ShadowService,
    shutdown: CancellationToken,
    /// Stops the lifecycle events once the broker has closed every connection, so that
    /// their disconnected events still go out.
    lifecycle_stop: CancellationToken,
    tasks: TaskTracker,
}

impl Server {
    /// Creates or opens the data directory and starts every configured listener.
    pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
        let metrics_handle = metrics_http::install_recorder();
        create_private_dir(&config.data_dir)?;

        let pki_dir = config.pki_dir();
        let names = config.endpoint_names.clone();
        let ca = tokio::task::spawn_blocking(move || {
            CertificateAuthority::load_or_create(&pki_dir, &names)
        })
        .await?
        .context("loading the certificate authority")?;
        let ca = Arc::new(ca);
        let db_path = config.database_path();
        let store = tokio::task::spawn_blocking(move || Store::open(&db_path))
            .await?
            .with_context(|| format!("opening {}", config.database_path().display()))?;
        let registry = CertificateRegistry::load(&store)?;

        let authorizer = PolicyAuthorizer::new(
            store.clone(),
            registry.clone(),
            &config.region,
            &config.account_id,
        );
        let broker_config = config.limits.broker_config();
        let broker = {
            let store = store.clone();
            let authorizer = Arc::new(authorizer.clone());
            tokio::task::spawn_blocking(move || Broker::new(broker_config, store, authorizer))
                .await??
        };

        let roots = Arc::new(ca.root_store());
        let verifier = registry.client_verifier(roots)?;
        let limits = ListenerLimits {
            max_connections: config.limits.max_connections,
            handshake_timeout: Duration::from_secs(config.limits.connect_timeout_secs),
            beyond_file_limit: beyond_file_limit(&config.limits),
        };
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();

        let lifecycle_stop = CancellationToken::new();
        tasks.spawn(crate::lifecycle::start(
            &broker,
            store.clone(),
            lifecycle_stop.clone(),
        ));
        let shadows = ShadowService::start(
            &broker,
            store.clone(),
            thingd_shadow::ShadowLimits::default(),
            shutdown.clone(),
        )
        .await
        .context("starting the device shadow service")?;

        let mut running = RunningServer {
            mqtts: None,
            https: None,
            mqtt_plain: None,
            metrics: None,
            api: None,
            aws_credentials_path: config.data_dir.join("aws-credentials"),
            aws_config_path: config.data_dir.join("aws-config"),
            root_ca_path: config.pki_dir().join("root-ca.pem"),
            broker: broker.clone(),
            store: store.clone(),
            shadows: shadows.clone(),
            shutdown: shutdown.clone(),
            lifecycle_stop,
            tasks: tasks.clone(),
        };

        // The HTTP APIs: built once, served on the `api` listener (plain HTTP, loopback by
        // default) and on the HTTPS port for clients that do not send ALPN x-amzn-mqtt-ca.
        let api_listener = match config.listeners.api {
            Some(addr) => Some(bind(addr, "api").await?),
            None => None,
        };
        running.api = match &api_listener {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };
        let https_listener = match config.listeners.https {
            Some(addr) => Some(bind(addr, "https").await?),
            None => None,
        };
        running.https = match &https_listener {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };
        let store2 = store.clone();
        let (admin, secrets) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let admin = thingd_api::access_keys::ensure_admin_key(&store2)?;
            let secrets = thingd_api::access_keys::load_secrets(&store2)?;
            Ok((admin, secrets))
        })
        .await??;
        let endpoint_url = match (running.api, running.https) {
            (Some(api), _) => format!("http://{api}"),
            (None, Some(https)) => format!("https://{}:{}", config.data_endpoint(), https.port()),
            (None, None) => String::new(),
        };
        if !endpoint_url.is_empty() {
            let (credentials, aws_config) = thingd_api::access_keys::write_cli_files(
                &config.data_dir,
                &admin,
                &config.region,
                &endpoint_url,
            )?;
            tracing::info!(
                credentials = %credentials.display(),
                config = %aws_config.display(),
                "AWS CLI: export AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE to these files (profile `thingd`)"
            );
        }
        let credentials = Arc::new(parking_lot::RwLock::new(secrets));
        let state = Arc::new(thingd_api::ApiState {
            store: store.clone(),
            ca: ca.clone(),
            registry: registry.clone(),
            arns: thingd_api::wire::Arns {
                region: config.region.clone(),
                account: config.account_id.clone(),
            },
            data_endpoint: config.data_endpoint(),
            verifier: thingd_sigv4::Verifier::control_plane(),
            credentials: credentials.clone(),
        });
        let data_state = Arc::new(
            thingd_api::data_plane::DataPlaneState::new(
                shadows.clone(),
                broker.clone(),
                credentials,
            )
            .with_cert_authorizer(
                Arc::new(authorizer.clone()),
                &config.region,
                &config.account_id,
            ),
        );
        // Each router keeps its own SigV4 layer (`iot` vs `iotdata`); no path is in both.
        let app =
            thingd_api::control_plane(state).merge(thingd_api::data_plane::data_plane(data_state));
        if let Some(listener) = api_listener {
            let app = app.clone();
            let stop = shutdown.clone();
            tasks.spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, "HTTP API endpoint failed");
                }
            });
        }

        if let Some(addr) = config.listeners.mqtts {
            let listener = bind(addr, "mqtts").await?;
            running.mqtts = Some(listener.local_addr()?);
            let tls = ca.server_config(verifier.clone(), Vec::new())?;
            tasks.spawn(thingd_net::serve_mqtts(
                listener,
                tls,
                broker.clone(),
                limits.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(listener) = https_listener {
            // The client certificate is optional here: SigV4-signed HTTP comes without one;
            // MQTT (ALPN) and MQTT over WebSocket on this port still require one.
            let optional = Arc::new(thingd_net::OptionalClientAuth(verifier.clone()));
            let tls =
                ca.server_config(optional, vec![ALPN_MQTT_CA.to_vec(), ALPN_HTTP11.to_vec()])?;
            let http = app.clone();
            tasks.spawn(thingd_net::serve_https(
                listener,
                tls,
                broker.clone(),
                http,
                limits.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(addr) = config.listeners.mqtt_plain {
            let listener = bind(addr, "mqtt-plain").await?;
            let local = listener.local_addr()?;
            running.mqtt_plain = Some(local);
            tracing::warn!(
                %local,
                "plain-TCP MQTT listener is ON: no TLS and no client authentication. Use it for development only."
            );
            tasks.spawn(thingd_net::serve_mqtt_plain(
                listener,
                broker.clone(),
                limits.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(addr) = config.listeners.metrics {
            let listener = bind(addr, "metrics").await?;
            running.metrics = Some(listener.local_addr()?);
            let app = metrics_http::routes(metrics_handle);
            let stop = shutdown.clone();
            tasks.spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, "metrics endpoint failed");
                }
            });
        }

        tasks.spawn(watch_registry(
            registry,
            authorizer,
            store.clone(),
            broker.clone(),
            shutdown.clone(),
        ));
        write_listeners_file(&config, &running)?;
        tracing::info!(
            mqtts = ?running.mqtts,
            https = ?running.https,
            metrics = ?running.metrics,
            api = ?running.api,
            root_ca = %running.root_ca_path.display(),
            data_dir = %config.data_dir.display(),
            "thingd is running"
        );
        Ok(running)
    }
}

impl RunningServer {
    /// Stops the listeners, disconnects every client (v5: DISCONNECT 0x8B), persists the
    /// sessions and closes the store.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.broker.shutdown().await;
        self.lifecycle_stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
    }
}

/// Connections the kernel may complete before the accept loop takes them (Linux caps it at
/// `net.core.somaxconn`, 4,096 by default). A full backlog drops the handshake's last ACK,
/// and the client waits for a retransmission, a second or more.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr, name: &str) -> anyhow::Result<TcpListener> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| format!("cannot listen on {addr} ({name})"))
}

/// Follows registry changes, whoever made them (the API, this process or the CLI): closes
/// the connections of certificates that stopped being ACTIVE, and makes live connections
/// recompile their policies when policies, attachments or things change — within
/// `STATUS_POLL` of the commit.
async fn watch_registry(
    registry: CertificateRegistry,
    authorizer: PolicyAuthorizer,
    store: Store,
    broker: Broker,
    shutdown: CancellationToken,
) {
    let mut seen_revision = None;
    let mut tick = tokio::time::interval(STATUS_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let store2 = store.clone();
        let revision = tokio::task::spawn_blocking(move || store2.registry_revision()).await;
        if let Ok(Ok(revision)) = revision {
            if seen_revision.is_some_and(|seen| seen != revision) {
                authorizer.registry_changed();
            }
            seen_revision = Some(revision);
        }
        let (registry2, store2) = (registry.clone(), store.clone());
        let changed = tokio::task::spawn_blocking(move || registry2.refresh(&store2)).await;
        match changed {
            Ok(Ok(ids)) => {
                for id in ids {
                    let closed = broker.disconnect_principal(id.as_str());
                    tracing::info!(certificate = %id, closed, "certificate is no longer active; closed its connections");
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "reading certificate statuses failed"),
            Err(error) => tracing::warn!(%error, "certificate status task failed"),
        }
    }
}

/// Writes `listeners.json` in the data directory with the bound addresses, so scripts and
/// tests can find ports the OS chose.
fn write_listeners_file(config: &Config, running: &RunningServer) -> anyhow::Result<()> {
    let json = serde_json::json!({
        "mqtts": running.mqtts.map(|a| a.to_string()),
        "https": running.https.map(|a| a.to_string()),
        "mqtt_plain": running.mqtt_plain.map(|a| a.to_string()),
        "metrics": running.metrics.map(|a| a.to_string()),
        "api": running.api.map(|a| a.to_string()),
        "root_ca": running.root_ca_path.display().to_string(),
    });
    let path = config.data_dir.join("listeners.json");
    let tmp = config.data_dir.join("listeners.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&json)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Creates `dir` (mode 0700 when new).
pub(crate) fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))
}
