//! Mutual TLS: who gets past the handshake and who does not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thingd_tests::{DeviceFiles, TestServer, set_certificate_status, thingd_binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::raw_protocol::{Connect, Identity, WAIT, client_config, device_identity, tls_connect};

type TestResult = anyhow::Result<()>;

/// How a connection attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// CONNACK with return code 0.
    Accepted,
    /// The handshake failed, or the server closed the connection before any CONNACK.
    Refused,
}

/// Tries TLS + MQTT 3.1.1 CONNECT with `config`; with TLS 1.3 a refused client certificate
/// shows up as an alert on the first read, so a CONNECT is sent and the answer read.
pub(crate) async fn attempt(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<Outcome> {
    let mut stream = match tls_connect(addr, "127.0.0.1", config).await {
        Ok(stream) => stream,
        Err(_) => return Ok(Outcome::Refused),
    };
    if stream
        .write_all(&Connect::v311("tls-probe").bytes())
        .await
        .is_err()
    {
        return Ok(Outcome::Refused);
    }
    let _ = stream.flush().await;
    let mut buf = [0u8; 4];
    let read = tokio::time::timeout(WAIT, stream.read_exact(&mut buf))
        .await
        .context("server neither answered nor closed")?;
    match read {
        Ok(_) if buf == [0x20, 0x02, 0x00, 0x00] => Ok(Outcome::Accepted),
        Ok(_) => anyhow::bail!("unexpected answer {buf:02x?} to an unauthenticated connection"),
        Err(_) => Ok(Outcome::Refused),
    }
}

/// A CA and a client certificate that thingd has never heard of.
pub(crate) fn foreign_identity() -> anyhow::Result<Identity> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Some Other CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(Vec::<String>::new())?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "impostor");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    Ok((vec![leaf.der().clone()], key))
}

/// A client certificate signed by thingd's own root CA key but never registered.
fn unregistered_identity(data_dir: &std::path::Path) -> anyhow::Result<Identity> {
    let pki = data_dir.join("pki");
    let ca_pem = std::fs::read_to_string(pki.join("root-ca.pem"))?;
    let ca_key = KeyPair::from_pem(
        &std::fs::read_to_string(pki.join("root-ca.key")).context("root-ca.key")?,
    )?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "never-registered");
    let leaf = params.signed_by(&leaf_key, &issuer)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    Ok((vec![CertificateDer::from(leaf.der().to_vec())], key))
}

async fn setup() -> anyhow::Result<(TestServer, DeviceFiles)> {
    let server = TestServer::start().await?;
    let device = crate::raw_protocol::ready_device(&server, "tls-device").await?;
    Ok((server, device))
}

async fn set_status(server: &TestServer, id: &str, status: &str) -> anyhow::Result<()> {
    let (dir, id, status) = (
        server.data_dir.path().to_path_buf(),
        id.to_owned(),
        status.to_owned(),
    );
    tokio::task::spawn_blocking(move || set_certificate_status(&dir, &id, &status)).await?
}

/// Retries `attempt` until it gives `want` (status changes reach the server within ~1 s).
pub(crate) async fn settles_to(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    want: Outcome,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    loop {
        let got = attempt(addr, config.clone()).await?;
        if got == want {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("still {got:?} 1.5 s after the status change; wanted {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_certificate_is_accepted() -> TestResult {
    let (server, device) = setup().await?;
    let config = client_config(&device.ca, Some(device_identity(&device)?))?;
    assert_eq!(attempt(server.mqtts(), config).await?, Outcome::Accepted);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_is_refused() -> TestResult {
    let (server, device) = setup().await?;
    let config = client_config(&device.ca, None)?;
    assert_eq!(attempt(server.mqtts(), config).await?, Outcome::Refused);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() -> TestResult {
    let (server, device) = setup().await?;
    let config = client_config(&device.ca, Some(foreign_identity()?))?;
    assert_eq!(attempt(server.mqtts(), config).await?, Outcome::Refused);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_certificate_from_the_thingd_ca_is_refused() -> TestResult {
    let (server, device) = setup().await?;
    let config = client_config(
        &device.ca,
        Some(unregistered_identity(server.data_dir.path())?),
    )?;
    assert_eq!(attempt(server.mqtts(), config).await?, Outcome::Refused);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactive_certificate_is_refused_until_reactivated() -> TestResult {
    let (server, device) = setup().await?;
    let config = client_config(&device.ca, Some(device_identity(&device)?))?;
    assert_eq!(
        attempt(server.mqtts(), config.clone()).await?,
        Outcome::Accepted
    );
    set_status(&server, &device.id, "INACTIVE").await?;
    settles_to(server.mqtts(), config.clone(), Outcome::Refused).await?;
    // And it stays refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        attempt(server.mqtts(), config.clone()).await?,
        Outcome::Refused
    );
    set_status(&server, &device.id, "ACTIVE").await?;
    settles_to(server.mqtts(), config, Outcome::Accepted).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificate_is_refused() -> TestResult {
    let (server, device) = setup().await?;
    let other = crate::raw_protocol::ready_device(&server, "bystander").await?;
    let config = client_config(&device.ca, Some(device_identity(&device)?))?;
    set_status(&server, &device.id, "REVOKED").await?;
    settles_to(server.mqtts(), config, Outcome::Refused).await?;
    // Other devices are not affected.
    let config = client_config(&other.ca, Some(device_identity(&other)?))?;
    assert_eq!(attempt(server.mqtts(), config).await?, Outcome::Accepted);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsa_device_certificate_works() -> TestResult {
    let server = TestServer::start().await?;
    let out = server.data_dir.path().join("devices/rsa");
    let output = std::process::Command::new(thingd_binary()?)
        .args([
            "cert",
            "issue",
            "--rsa",
            "--common-name",
            "rsa-thing",
            "--out",
        ])
        .arg(&out)
        .arg("--data-dir")
        .arg(server.data_dir.path())
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    tokio::time::sleep(Duration::from_millis(600)).await; // the server re-reads the registry
    let device = DeviceFiles {
        id: String::new(),
        cert: out.join("certificate.pem.crt"),
        key: out.join("private.pem.key"),
        ca: out.join("root-ca.pem"),
        dir: out,
    };
    let config = client_config(&device.ca, Some(device_identity(&device)?))?;
    assert_eq!(attempt(server.mqtts(), config).await?, Outcome::Accepted);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alpn_port_speaks_mqtt_and_refuses_strangers() -> TestResult {
    let (server, device) = setup().await?;
    let https = server.running.https.context("https listener")?;
    let mut config = (*client_config(&device.ca, Some(device_identity(&device)?))?).clone();
    config.alpn_protocols = vec![b"x-amzn-mqtt-ca".to_vec()];
    assert_eq!(attempt(https, Arc::new(config)).await?, Outcome::Accepted);

    let mut stranger = (*client_config(&device.ca, Some(foreign_identity()?))?).clone();
    stranger.alpn_protocols = vec![b"x-amzn-mqtt-ca".to_vec()];
    assert_eq!(attempt(https, Arc::new(stranger)).await?, Outcome::Refused);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_clients_are_served_and_refused_alike() -> TestResult {
    let (server, device) = setup().await?;
    let tls12 = |identity: Option<Identity>| -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&device.ca)?)?;
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])?
        .with_root_certificates(roots);
        Ok(Arc::new(match identity {
            Some((certs, key)) => builder.with_client_auth_cert(certs, key)?,
            None => builder.with_no_client_auth(),
        }))
    };
    let good = tls12(Some(device_identity(&device)?))?;
    assert_eq!(
        attempt(server.mqtts(), good.clone()).await?,
        Outcome::Accepted
    );
    // With TLS 1.2 the refusal happens inside the handshake itself.
    assert!(
        tls_connect(server.mqtts(), "127.0.0.1", tls12(None)?)
            .await
            .is_err()
    );
    assert!(
        tls_connect(
            server.mqtts(),
            "127.0.0.1",
            tls12(Some(foreign_identity()?))?
        )
        .await
        .is_err()
    );
    Ok(())
}
