//! What a device needs to connect: where, who it is (certificate, key, root CA), and how the
//! connection behaves (protocol version, keep-alive, reconnects, session, queue).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thingd_mqtt::ProtocolVersion;

use crate::error::Error;

/// The ALPN protocol AWS IoT Core (and thingd's `https` listener) dispatch to MQTT on port 443.
pub const ALPN_MQTT_CA: &str = "x-amzn-mqtt-ca";

/// A device's identity: its certificate chain and private key, and the root CA it trusts the
/// server with. Held as PEM text.
#[derive(Clone)]
pub struct Identity {
    certificate_pem: String,
    private_key_pem: String,
    root_ca_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    /// From the three PEM texts, as firmware holds them.
    pub fn from_pem(
        certificate_pem: impl Into<String>,
        private_key_pem: impl Into<String>,
        root_ca_pem: impl Into<String>,
    ) -> Identity {
        Identity {
            certificate_pem: certificate_pem.into(),
            private_key_pem: private_key_pem.into(),
            root_ca_pem: root_ca_pem.into(),
        }
    }

    /// From three files.
    pub fn from_files(
        certificate: impl AsRef<Path>,
        private_key: impl AsRef<Path>,
        root_ca: impl AsRef<Path>,
    ) -> Result<Identity, Error> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| Error::Config(format!("cannot read {}: {e}", p.display())))
        };
        Ok(Identity::from_pem(
            read(certificate.as_ref())?,
            read(private_key.as_ref())?,
            read(root_ca.as_ref())?,
        ))
    }

    /// From a directory written by `thingd device provision` or `thingd cert issue`
    /// (`certificate.pem.crt`, `private.pem.key`, `root-ca.pem`).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Identity, Error> {
        let dir = dir.as_ref();
        Identity::from_files(
            dir.join("certificate.pem.crt"),
            dir.join("private.pem.key"),
            dir.join("root-ca.pem"),
        )
    }

    /// The certificate's PEM text.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }
}

/// Reconnect delays: exponential from `min` to `max`, each with random jitter (a delay is
/// drawn between half and all of the current step), reset after a successful connect.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first delay's upper bound.
    pub min: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before reconnect attempt `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let step = self
            .min
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max)
            .max(Duration::from_millis(1));
        let half = step / 2;
        let jitter_ms = rand::random_range(0..=half.as_millis().min(u64::MAX as u128) as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// Connection options. Build with [`ConnectOptions::new`] and the `with_*` methods.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) server_name: Option<String>,
    pub(crate) client_id: String,
    pub(crate) identity: Identity,
    pub(crate) alpn: bool,
    pub(crate) protocol: ProtocolVersion,
    pub(crate) keep_alive: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) session_expiry: Option<Duration>,
    pub(crate) offline_queue: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_packet_size: usize,
}

impl ConnectOptions {
    /// Options to reach `host:port` as `client_id` with `identity`. Defaults: MQTT 5, server
    /// name = host, no ALPN, keep-alive 30 s, backoff 0.5 s .. 60 s, a clean session, an
    /// offline queue of 1000 messages, 10 s for requests and for connecting.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        client_id: impl Into<String>,
        identity: Identity,
    ) -> ConnectOptions {
        ConnectOptions {
            host: host.into(),
            port,
            server_name: None,
            client_id: client_id.into(),
            identity,
            alpn: false,
            protocol: ProtocolVersion::V5,
            keep_alive: Duration::from_secs(30),
            backoff: Backoff::default(),
            session_expiry: None,
            offline_queue: 1000,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 268_435_455,
        }
    }

    /// The TLS server name to verify, when it differs from the host connected to.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Offer ALPN `x-amzn-mqtt-ca`, as a device on port 443 must.
    pub fn with_alpn_mqtt(mut self, on: bool) -> Self {
        self.alpn = on;
        self
    }

    /// MQTT 3.1.1 or 5.
    pub fn with_protocol(mut self, protocol: ProtocolVersion) -> Self {
        self.protocol = protocol;
        self
    }

    /// The keep-alive interval (a PINGREQ is sent after this much silence; no PINGRESP by
    /// the next interval means the connection is dead). Whole seconds, at most 65535.
    pub fn with_keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// Reconnect delay bounds.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = Backoff {
            min,
            max: max.max(min),
        };
        self
    }

    /// A persistent session: connect with Clean Start off and this Session Expiry (MQTT 5;
    /// for 3.1.1 Clean Session off and the server's expiry). The server keeps subscriptions
    /// and queues QoS 1 messages while the device is away.
    pub fn with_persistent_session(mut self, expiry: Duration) -> Self {
        self.session_expiry = Some(expiry);
        self
    }

    /// How many publishes wait while offline; beyond it the oldest is dropped (its
    /// acknowledgement future fails with [`Error::QueueOverflow`]) and counted in
    /// [`crate::Client::dropped`].
    pub fn with_offline_queue(mut self, capacity: usize) -> Self {
        self.offline_queue = capacity.max(1);
        self
    }

    /// How long subscribe and shadow requests wait for their answer.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long TCP, TLS and CONNACK may take together.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The protocol version.
    pub fn protocol(&self) -> ProtocolVersion {
        self.protocol
    }

    pub(crate) fn server_name(&self) -> Result<ServerName<'static>, Error> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| self.host.clone());
        ServerName::try_from(name.clone())
            .map_err(|e| Error::Config(format!("bad server name {name:?}: {e}")))
    }

    /// The rustls client configuration, with the aws-lc-rs provider built explicitly (the
    /// process-wide default provider is neither used nor required).
    pub(crate) fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        let id = &self.identity;
        let mut roots = rustls::RootCertStore::empty();
        let mut any_root = false;
        for cert in CertificateDer::pem_slice_iter(id.root_ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| Error::Config(format!("root CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Config(format!("root CA: {e}")))?;
            any_root = true;
        }
        if !any_root {
            return Err(Error::Config(
                "no certificate in the root CA PEM".to_owned(),
            ));
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(id.certificate_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| Error::Config(format!("certificate PEM: {e}")))?;
        if chain.is_empty() {
            return Err(Error::Config(
                "no certificate in the certificate PEM".to_owned(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(id.private_key_pem.as_bytes())
            .map_err(|e| Error::Config(format!("private key PEM: {e}")))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| Error::Config(format!("certificate and key: {e}")))?;
        if self.alpn {
            config.alpn_protocols = vec![ALPN_MQTT_CA.as_bytes().to_vec()];
        }
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_bound_and_stays_jittered() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for attempt in 0..40 {
            let d = b.delay(attempt);
            let step = (Duration::from_millis(100) * 2u32.pow(attempt.min(10)))
                .min(Duration::from_secs(1));
            assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn bad_pem_is_a_config_error_not_a_panic() {
        let options = ConnectOptions::new(
            "localhost",
            8883,
            "dev",
            Identity::from_pem("nope", "nope", "nope"),
        );
        assert!(matches!(options.tls_config(), Err(Error::Config(_))));
    }
}
