//! The command line: serve, issue, set-status.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use thingd_tests::{ProcessServer, TestServer, issue_device, thingd_binary};

use crate::raw_protocol::{Connect, client_config, device_identity, tls_connect};
use crate::tls_refusals::{Outcome, attempt};

type TestResult = anyhow::Result<()>;

fn thingd(args: &[&str], data_dir: &Path) -> anyhow::Result<Output> {
    Ok(Command::new(thingd_binary()?)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()?)
}

fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .permissions()
        .mode()
        & 0o777)
}

fn sha256_hex(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The `(id, status)` rows printed by `thingd cert list`.
fn list(data_dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let output = thingd(&["cert", "list"], data_dir)?;
    assert!(
        output.status.success(),
        "cert list: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_creates_the_pki_and_reuses_it_after_a_restart() -> TestResult {
    thingd_tests::install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let mut server = tokio::task::block_in_place(|| {
        ProcessServer::start(dir.path(), &["--api", "127.0.0.1:0"])
    })?;
    let pki = dir.path().join("pki");
    for file in ["root-ca.pem", "root-ca.key", "server.pem", "server.key"] {
        assert!(
            pki.join(file).exists(),
            "{file} missing after the first start"
        );
    }
    assert_eq!(mode(&pki.join("root-ca.key"))?, 0o600, "root CA key mode");
    assert_eq!(mode(&pki.join("server.key"))?, 0o600, "server key mode");
    let root_before = std::fs::read(pki.join("root-ca.pem"))?;
    let root_key_before = std::fs::read(pki.join("root-ca.key"))?;
    let device = issue_device(dir.path(), "survivor").await?;

    tokio::task::block_in_place(|| server.restart())?;
    assert_eq!(
        std::fs::read(pki.join("root-ca.pem"))?,
        root_before,
        "the root CA must be reused"
    );
    assert_eq!(
        std::fs::read(pki.join("root-ca.key"))?,
        root_key_before,
        "the root CA key must be reused"
    );
    assert_eq!(mode(&pki.join("root-ca.key"))?, 0o600);

    // A device issued before the restart still gets in.
    let config = client_config(&device.ca, Some(device_identity(&device)?))?;
    assert_eq!(attempt(server.mqtts, config).await?, Outcome::Accepted);
    tokio::task::block_in_place(|| server.terminate())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_covers_localhost_loopback_and_endpoints() -> TestResult {
    let server =
        TestServer::start_with(|c| c.endpoint_names.push("iot.example.test".to_owned())).await?;
    let device = crate::raw_protocol::ready_device(&server, "names").await?;
    for name in ["127.0.0.1", "localhost", "iot.example.test"] {
        let config = client_config(&device.ca, Some(device_identity(&device)?))?;
        let mut stream = tls_connect(server.mqtts(), name, config)
            .await
            .with_context(|| format!("server name {name}"))?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(&Connect::v311("names").bytes()).await?;
        let mut ack = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut ack)).await??;
        assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK via {name}");
    }
    let config = client_config(&device.ca, Some(device_identity(&device)?))?;
    assert!(
        tls_connect(server.mqtts(), "not-this-server.example", config)
            .await
            .is_err(),
        "the server certificate must not validate for an unrelated name"
    );
    Ok(())
}

#[test]
fn cert_issue_writes_the_aws_files_and_registers_active() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("my-thing");
    let output = Command::new(thingd_binary()?)
        .args(["cert", "issue", "--common-name", "my-thing", "--out"])
        .arg(&out)
        .arg("--data-dir")
        .arg(dir.path())
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout)?;
    let id = stdout
        .split_whitespace()
        .nth(1)
        .context("no id printed")?
        .to_owned();

    let cert_pem = out.join("certificate.pem.crt");
    let der = CertificateDer::from_pem_file(&cert_pem)?;
    assert_eq!(
        id,
        sha256_hex(&der),
        "id = lowercase hex SHA-256 of the DER"
    );
    assert_eq!(id.len(), 64);
    assert_eq!(
        mode(&out.join("private.pem.key"))?,
        0o600,
        "private key mode"
    );
    let key_text = std::fs::read_to_string(out.join("private.pem.key"))?;
    assert!(key_text.contains("PRIVATE KEY"), "{key_text}");
    assert_eq!(
        std::fs::read(out.join("root-ca.pem"))?,
        std::fs::read(dir.path().join("pki/root-ca.pem"))?,
        "root-ca.pem is the data directory's root CA"
    );
    assert!(list(dir.path())?.contains(&(id.clone(), "ACTIVE".to_owned())));

    // A second certificate gets a different id; both are listed.
    let output = thingd(
        &[
            "cert",
            "issue",
            "--out",
            out.join("second").to_str().context("path")?,
        ],
        dir.path(),
    )?;
    assert!(output.status.success());
    let second = String::from_utf8(output.stdout)?
        .split_whitespace()
        .nth(1)
        .context("id")?
        .to_owned();
    assert_ne!(second, id);
    let rows = list(dir.path())?;
    assert_eq!(rows.len(), 2, "{rows:?}");
    Ok(())
}

#[test]
fn set_status_rejects_bad_input_and_revoked_is_final() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("thing");
    let output = thingd(
        &["cert", "issue", "--out", out.to_str().context("path")?],
        dir.path(),
    )?;
    assert!(output.status.success());
    let id = String::from_utf8(output.stdout)?
        .split_whitespace()
        .nth(1)
        .context("id")?
        .to_owned();

    let fails = |args: &[&str], needle: &str| -> TestResult {
        let output = thingd(args, dir.path())?;
        let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr {stderr:?} should mention {needle:?}"
        );
        Ok(())
    };
    fails(
        &["cert", "set-status", "not-an-id", "INACTIVE"],
        "not a certificate id",
    )?;
    fails(
        &["cert", "set-status", &id.to_uppercase(), "INACTIVE"],
        "not a certificate id",
    )?;
    fails(
        &["cert", "set-status", &"0".repeat(64), "INACTIVE"],
        "no certificate",
    )?;
    fails(&["cert", "set-status", &id, "SLEEPY"], "status")?;

    let ok = thingd(&["cert", "set-status", &id, "INACTIVE"], dir.path())?;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(list(dir.path())?.contains(&(id.clone(), "INACTIVE".to_owned())));
    let ok = thingd(&["cert", "set-status", &id, "active"], dir.path())?;
    assert!(
        ok.status.success(),
        "INACTIVE -> ACTIVE is allowed (case-insensitive status)"
    );
    assert!(list(dir.path())?.contains(&(id.clone(), "ACTIVE".to_owned())));

    let ok = thingd(&["cert", "set-status", &id, "REVOKED"], dir.path())?;
    assert!(ok.status.success());
    fails(&["cert", "set-status", &id, "ACTIVE"], "revoked")?;
    fails(&["cert", "set-status", &id, "INACTIVE"], "revoked")?;
    assert!(list(dir.path())?.contains(&(id, "REVOKED".to_owned())));
    Ok(())
}

/// Starts `thingd serve` with stderr captured; returns the child, the listeners.json content
/// and every stderr line seen in the first moments.
fn serve_capturing_stderr(
    data_dir: &Path,
    extra: &[&str],
) -> anyhow::Result<(serde_json::Value, Vec<String>)> {
    let mut child = Command::new(thingd_binary()?)
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "--mqtts",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let listeners = data_dir.join("listeners.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    let result = loop {
        while let Ok(line) = rx.try_recv() {
            lines.push(line);
        }
        if let Ok(text) = std::fs::read_to_string(&listeners) {
            break serde_json::from_str::<serde_json::Value>(&text).map_err(anyhow::Error::from);
        }
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!(
                "thingd exited: {status}; stderr: {lines:?}"
            ));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("thingd did not start; stderr: {lines:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Collect what is logged around start-up.
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            lines.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok((result?, lines))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_is_off_by_default_and_warned_about_when_on() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (listeners, lines) =
        tokio::task::block_in_place(|| serve_capturing_stderr(dir.path(), &[]))?;
    assert!(
        listeners["mqtt_plain"].is_null(),
        "plain listener on by default: {listeners}"
    );
    assert!(listeners["mqtts"].is_string());
    let plain_warnings: Vec<&String> = lines
        .iter()
        .filter(|l| l.to_lowercase().contains("plain"))
        .collect();
    assert!(plain_warnings.is_empty(), "{plain_warnings:?}");

    let dir = tempfile::tempdir()?;
    let (listeners, lines) = tokio::task::block_in_place(|| {
        serve_capturing_stderr(dir.path(), &["--mqtt-plain", "127.0.0.1:0"])
    })?;
    let plain: std::net::SocketAddr = listeners["mqtt_plain"]
        .as_str()
        .context("mqtt_plain missing from listeners.json")?
        .parse()?;
    assert_ne!(plain.port(), 0);
    let warning = lines
        .iter()
        .find(|l| l.contains("WARN") && l.to_lowercase().contains("plain"));
    assert!(
        warning.is_some(),
        "no warning about the plain listener in {lines:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_listener_speaks_mqtt_when_enabled() -> TestResult {
    let server = TestServer::start_with(|c| {
        c.listeners.mqtt_plain = Some("127.0.0.1:0".parse().expect("addr"))
    })
    .await?;
    let addr = server.running.mqtt_plain.context("plain listener")?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(&Connect::v311("plain-dev").bytes()).await?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut ack)).await??;
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    // And it is off when not asked for.
    let off = TestServer::start().await?;
    if off.running.mqtt_plain.is_some() {
        bail!("plain listener on in the default test configuration");
    }
    Ok(())
}
