//! The CA files, device certificates, the registry and the TLS client-certificate check,
//! including real rustls handshakes over in-memory buffers.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConnection, ServerConnection};
use thingd_auth::{
    AuthError, CertificateAuthority, CertificateRegistry, IssuedCertificate, leaf_certificate_id,
    peer_certificate_id,
};
use thingd_model::{CertificateId, CertificateStatus};
use thingd_store::{Store, WriteOp};
use x509_parser::extensions::GeneralName;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// DNS names and IPs (as text) in a PEM certificate's subjectAltName.
fn san_names(pem: &str) -> Vec<String> {
    let der = der(pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string())
            }
            GeneralName::IPAddress(b) if b.len() == 16 => {
                Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string())
            }
            _ => None,
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    ca: CertificateAuthority,
    store: Store,
    registry: CertificateRegistry,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&dir.path().join("ca"), &[]).unwrap();
    let store = Store::open(&dir.path().join("thingd.db")).unwrap();
    let registry = CertificateRegistry::load(&store).unwrap();
    Fixture {
        _dir: dir,
        ca,
        store,
        registry,
    }
}

impl Fixture {
    fn verifier(&self) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
        self.registry
            .client_verifier(Arc::new(self.ca.root_store()))
            .unwrap()
    }

    fn set_status(&self, id: &CertificateId, status: CertificateStatus) -> Vec<CertificateId> {
        self.store
            .write_blocking(vec![WriteOp::SetCertificateStatus {
                id: id.clone(),
                status,
            }])
            .unwrap();
        self.registry.refresh(&self.store).unwrap()
    }

    fn server(&self) -> ServerConnection {
        let config = self
            .ca
            .server_config(self.verifier(), vec![b"x-amzn-mqtt-ca".to_vec()])
            .unwrap();
        ServerConnection::new(config).unwrap()
    }
}

#[test]
fn ca_is_created_then_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("nested/ca");
    let first = CertificateAuthority::load_or_create(&ca_dir, &[]).unwrap();
    for name in ["root-ca.pem", "root-ca.key", "server.pem", "server.key"] {
        assert!(ca_dir.join(name).is_file(), "{name} written");
    }
    assert_eq!(mode(&ca_dir.join("root-ca.key")), 0o600);
    assert_eq!(mode(&ca_dir.join("server.key")), 0o600);
    assert_eq!(mode(&ca_dir), 0o700);
    assert!(first.root_pem().contains("BEGIN CERTIFICATE"));

    // The root is a CA named as specified.
    let root_der = der(first.root_pem());
    let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    assert!(root.is_ca());
    assert_eq!(
        root.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "thingd Root CA"
    );
    let years = (root.validity().not_after.timestamp() - root.validity().not_before.timestamp())
        / (365 * 24 * 3600);
    assert!(years >= 19, "root validity {years} years");

    // The server certificate covers the fixed names.
    let names = san_names(first.server_pem());
    for n in ["localhost", "127.0.0.1", "::1"] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }
    assert!(first.server_names().iter().any(|n| n == "localhost"));

    let server_before = std::fs::read_to_string(ca_dir.join("server.pem")).unwrap();
    let second = CertificateAuthority::load_or_create(&ca_dir, &[]).unwrap();
    assert_eq!(second.root_pem(), first.root_pem());
    assert_eq!(second.root_certificate_id(), first.root_certificate_id());
    assert_eq!(second.server_pem(), server_before, "server cert reused");
}

#[test]
fn server_certificate_is_reissued_for_new_names() {
    let dir = tempfile::tempdir().unwrap();
    let first = CertificateAuthority::load_or_create(dir.path(), &[]).unwrap();
    let extra = vec!["MQTT.Example.com".to_owned(), "10.1.2.3".to_owned()];
    let second = CertificateAuthority::load_or_create(dir.path(), &extra).unwrap();
    assert_eq!(second.root_pem(), first.root_pem(), "same root");
    assert_ne!(second.server_pem(), first.server_pem(), "re-issued");
    let names = san_names(second.server_pem());
    assert!(names.iter().any(|n| n == "mqtt.example.com"), "{names:?}");
    assert!(names.iter().any(|n| n == "10.1.2.3"), "{names:?}");
    assert!(names.iter().any(|n| n == "localhost"), "{names:?}");
    assert_eq!(mode(&dir.path().join("server.key")), 0o600);

    // Dropping the extra names later does not re-issue: the certificate still covers
    // everything needed.
    let third = CertificateAuthority::load_or_create(dir.path(), &[]).unwrap();
    assert_eq!(third.server_pem(), second.server_pem());

    // The re-issued certificate is signed by the root: a TLS client trusting the root
    // accepts it for the new name.
    let store = Store::open(&dir.path().join("db")).unwrap();
    let f = Fixture {
        registry: CertificateRegistry::load(&store).unwrap(),
        store,
        ca: third,
        _dir: tempfile::tempdir().unwrap(),
    };
    let device = f.ca.issue_and_register(&f.store, "dev", false).unwrap();
    f.registry.refresh(&f.store).unwrap();
    let client = client_with_cert(&f.ca, Some(&device), "mqtt.example.com");
    handshake(client, f.server()).unwrap();
}

#[test]
fn invalid_extra_name_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err =
        CertificateAuthority::load_or_create(dir.path(), &["not a name!".to_owned()]).unwrap_err();
    assert!(matches!(err, AuthError::Invalid(_)), "{err:?}");
}

#[test]
fn root_without_key_is_an_error_not_a_new_root() {
    let dir = tempfile::tempdir().unwrap();
    let first = CertificateAuthority::load_or_create(dir.path(), &[]).unwrap();
    std::fs::remove_file(dir.path().join("root-ca.key")).unwrap();
    let err = CertificateAuthority::load_or_create(dir.path(), &[]).unwrap_err();
    assert!(matches!(err, AuthError::Invalid(_)), "{err:?}");
    let still = std::fs::read_to_string(dir.path().join("root-ca.pem")).unwrap();
    assert_eq!(still, first.root_pem());
}

#[test]
fn broken_server_files_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let first = CertificateAuthority::load_or_create(dir.path(), &[]).unwrap();
    std::fs::write(dir.path().join("server.key"), "garbage").unwrap();
    let second = CertificateAuthority::load_or_create(dir.path(), &[]).unwrap();
    assert_ne!(second.server_pem(), first.server_pem());
    assert_eq!(mode(&dir.path().join("server.key")), 0o600);

    // A server certificate from another CA is replaced too.
    let other = tempfile::tempdir().unwrap();
    CertificateAuthority::load_or_create(other.path(), &[]).unwrap();
    for f in ["server.pem", "server.key"] {
        std::fs::copy(other.path().join(f), dir.path().join(f)).unwrap();
    }
    let third = CertificateAuthority::load_or_create(dir.path(), &[]).unwrap();
    let foreign = std::fs::read_to_string(other.path().join("server.pem")).unwrap();
    assert_ne!(third.server_pem(), foreign);
    assert_eq!(third.root_pem(), first.root_pem());
}

#[test]
fn device_certificates() {
    let f = fixture();
    let ec = f.ca.issue_device_certificate("sensor-1", false).unwrap();
    let cert_der = der(&ec.certificate_pem);
    assert_eq!(ec.id, CertificateId::from_der(&cert_der));
    assert!(ec.private_key_pem.contains("BEGIN PRIVATE KEY"));
    assert!(
        !format!("{ec:?}").contains("PRIVATE KEY"),
        "Debug hides the key"
    );
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "sensor-1"
    );
    // 2049-12-31T23:59:59Z, as AWS.
    assert_eq!(cert.validity().not_after.timestamp(), 2_524_607_999);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(!cert.is_ca());

    // Serial numbers are random, not derived from the key.
    let again = f.ca.issue_device_certificate("sensor-1", false).unwrap();
    let again_der = der(&again.certificate_pem);
    let (_, again_cert) = x509_parser::parse_x509_certificate(&again_der).unwrap();
    assert_ne!(cert.serial, again_cert.serial);

    // Issuing does not register.
    assert_eq!(f.store.certificate(&ec.id).unwrap(), None);

    let rsa =
        f.ca.issue_and_register(&f.store, "sensor-rsa", true)
            .unwrap();
    let stored = f.store.certificate(&rsa.id).unwrap().unwrap();
    assert_eq!(stored.status, CertificateStatus::Active);
    assert_eq!(stored.pem, rsa.certificate_pem);
    let rsa_key = PrivateKeyDer::from_pem_slice(rsa.private_key_pem.as_bytes()).unwrap();
    assert!(matches!(rsa_key, PrivateKeyDer::Pkcs8(_)));
    let rsa_der = der(&rsa.certificate_pem);
    let (_, rsa_cert) = x509_parser::parse_x509_certificate(&rsa_der).unwrap();
    assert_eq!(
        rsa_cert.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION
    );
}

#[test]
fn verifier_accepts_only_active_registered_certificates() {
    let f = fixture();
    let verifier = f.verifier();
    let now = UnixTime::now();
    assert!(verifier.offer_client_auth());
    assert!(verifier.client_auth_mandatory());

    let device = f.ca.issue_device_certificate("d", false).unwrap();
    let leaf = der(&device.certificate_pem);

    // Valid chain, but not registered.
    let err = verifier.verify_client_cert(&leaf, &[], now).unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    );

    // Registered ACTIVE.
    f.store
        .write_blocking(vec![WriteOp::InsertCertificate(
            thingd_store::CertificateRecord {
                id: device.id.clone(),
                pem: device.certificate_pem.clone(),
                status: CertificateStatus::Active,
                ca_id: None,
                created_at: 1,
                updated_at: 1,
            },
        )])
        .unwrap();
    assert_eq!(f.registry.refresh(&f.store).unwrap(), vec![]);
    verifier.verify_client_cert(&leaf, &[], now).unwrap();

    // INACTIVE: refresh reports it, the verifier refuses it.
    let lost = f.set_status(&device.id, CertificateStatus::Inactive);
    assert_eq!(lost, vec![device.id.clone()]);
    assert_eq!(
        verifier.verify_client_cert(&leaf, &[], now).unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    );

    // Back to ACTIVE: accepted again, nothing lost.
    assert_eq!(f.set_status(&device.id, CertificateStatus::Active), vec![]);
    verifier.verify_client_cert(&leaf, &[], now).unwrap();

    // REVOKED.
    assert_eq!(
        f.set_status(&device.id, CertificateStatus::Revoked),
        vec![device.id.clone()]
    );
    assert_eq!(
        verifier.verify_client_cert(&leaf, &[], now).unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::Revoked)
    );

    // A certificate from another CA, even if registered ACTIVE, fails the chain check.
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = CertificateAuthority::load_or_create(other_dir.path(), &[]).unwrap();
    let foreign = other_ca
        .issue_and_register(&f.store, "intruder", false)
        .unwrap();
    f.registry.refresh(&f.store).unwrap();
    assert_eq!(
        f.registry.status(&foreign.id),
        Some(CertificateStatus::Active)
    );
    let err = verifier
        .verify_client_cert(&der(&foreign.certificate_pem), &[], now)
        .unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );

    // Garbage is rejected without panicking.
    let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
    assert!(verifier.verify_client_cert(&junk, &[], now).is_err());
}

#[test]
fn refresh_is_cheap_and_tracks_other_processes() {
    let f = fixture();
    let a = f.ca.issue_and_register(&f.store, "a", false).unwrap();
    let b = f.ca.issue_and_register(&f.store, "b", false).unwrap();
    assert_eq!(f.registry.refresh(&f.store).unwrap(), vec![]);
    assert_eq!(f.registry.len(), 2);
    assert_eq!(f.registry.status(&a.id), Some(CertificateStatus::Active));
    // Nothing changed: nothing to report.
    assert_eq!(f.registry.refresh(&f.store).unwrap(), vec![]);
    // Unrelated writes: nothing to report either.
    f.store
        .write_blocking(vec![WriteOp::PutRetained {
            topic: "t".to_owned(),
            blob: vec![],
        }])
        .unwrap();
    assert_eq!(f.registry.refresh(&f.store).unwrap(), vec![]);

    // The CLI, in "another process", deactivates b and registers c.
    let cli = Store::open(f.store.path()).unwrap();
    cli.write_blocking(vec![WriteOp::SetCertificateStatus {
        id: b.id.clone(),
        status: CertificateStatus::PendingTransfer,
    }])
    .unwrap();
    let c = f.ca.issue_and_register(&cli, "c", false).unwrap();
    cli.close();
    assert_eq!(f.registry.refresh(&f.store).unwrap(), vec![b.id.clone()]);
    assert_eq!(
        f.registry.status(&b.id),
        Some(CertificateStatus::PendingTransfer)
    );
    assert_eq!(f.registry.status(&c.id), Some(CertificateStatus::Active));

    // A row deleted behind the registry's back (no WriteOp does this; an operator with the
    // sqlite3 shell might) is reported as lost too.
    rusqlite::Connection::open(f.store.path())
        .unwrap()
        .execute("DELETE FROM certificates WHERE id = ?1", [a.id.as_str()])
        .unwrap();
    assert_eq!(f.registry.refresh(&f.store).unwrap(), vec![a.id.clone()]);
    assert_eq!(f.registry.status(&a.id), None);
    assert_eq!(f.registry.len(), 2);

    // set_status makes a just-registered certificate usable before the next refresh.
    let d = f.ca.issue_device_certificate("d", false).unwrap();
    f.registry
        .set_status(d.id.clone(), CertificateStatus::Active);
    assert_eq!(f.registry.status(&d.id), Some(CertificateStatus::Active));
}

fn client_with_cert(
    ca: &CertificateAuthority,
    device: Option<&IssuedCertificate>,
    server_name: &str,
) -> ClientConnection {
    client_config_for(ca, device, &[&rustls::version::TLS13], server_name)
}

fn client_config_for(
    ca: &CertificateAuthority,
    device: Option<&IssuedCertificate>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    server_name: &str,
) -> ClientConnection {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(ca.root_store());
    let mut config = match device {
        Some(device) => builder
            .with_client_auth_cert(
                vec![der(&device.certificate_pem)],
                PrivateKeyDer::from_pem_slice(device.private_key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"x-amzn-mqtt-ca".to_vec()];
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    ClientConnection::new(Arc::new(config), name).unwrap()
}

/// Which end of the connection failed the handshake.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

type Failure = (Side, rustls::Error);

/// Moves bytes between the two ends until both finish the handshake and the server has read
/// a byte of application data from the client (in TLS 1.3 the client may think it is done
/// before the server has checked its certificate), or one side fails.
fn handshake(
    mut client: ClientConnection,
    mut server: ServerConnection,
) -> Result<(ClientConnection, ServerConnection), Failure> {
    use std::io::{Read, Write};
    client.writer().write_all(b"!").unwrap();
    let mut got = Vec::new();
    for _ in 0..32 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            if let Err(e) = server.process_new_packets() {
                // Deliver the alert so the client's view can be checked too.
                let mut alert = Vec::new();
                while server.wants_write() {
                    server.write_tls(&mut alert).unwrap();
                }
                let mut rd = alert.as_slice();
                if client.read_tls(&mut rd).is_ok() {
                    let _ = client.process_new_packets();
                }
                return Err((Side::Server, e));
            }
        }
        let _ = server.reader().read_to_end(&mut got);
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client
                .process_new_packets()
                .map_err(|e| (Side::Client, e))?;
        }
        if !client.is_handshaking() && !server.is_handshaking() && got == b"!" {
            return Ok((client, server));
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn tls_handshake_with_active_certificate() {
    let f = fixture();
    for (rsa, versions) in [
        (false, &[&rustls::version::TLS13][..]),
        (false, &[&rustls::version::TLS12][..]),
        (true, &[&rustls::version::TLS13][..]),
        (true, &[&rustls::version::TLS12][..]),
    ] {
        let device = f.ca.issue_and_register(&f.store, "dev", rsa).unwrap();
        f.registry.refresh(&f.store).unwrap();
        let client = client_config_for(&f.ca, Some(&device), versions, "localhost");
        let (client, server) = handshake(client, f.server())
            .unwrap_or_else(|e| panic!("rsa={rsa} {versions:?}: {e:?}"));
        assert_eq!(peer_certificate_id(&server), Some(device.id.clone()));
        assert_eq!(
            leaf_certificate_id(server.peer_certificates().unwrap()),
            Some(device.id.clone())
        );
        assert_eq!(server.alpn_protocol(), Some(&b"x-amzn-mqtt-ca"[..]));
        assert_eq!(client.protocol_version(), Some(versions[0].version));
    }
    // Also by IP address.
    let device = f.ca.issue_and_register(&f.store, "dev", false).unwrap();
    f.registry.refresh(&f.store).unwrap();
    handshake(
        client_with_cert(&f.ca, Some(&device), "127.0.0.1"),
        f.server(),
    )
    .unwrap();
}

#[test]
fn tls_handshake_rejections() {
    let f = fixture();

    // No client certificate at all.
    match handshake(client_with_cert(&f.ca, None, "localhost"), f.server()) {
        Err((Side::Server, rustls::Error::NoCertificatesPresented)) => {}
        other => panic!("expected NoCertificatesPresented, got {other:?}"),
    }

    // Unregistered.
    let device = f.ca.issue_device_certificate("dev", false).unwrap();
    match handshake(
        client_with_cert(&f.ca, Some(&device), "localhost"),
        f.server(),
    ) {
        Err((
            Side::Server,
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
        )) => {}
        other => panic!("expected ApplicationVerificationFailure, got {other:?}"),
    }

    // Registered, INACTIVE.
    let device = f.ca.issue_and_register(&f.store, "dev", false).unwrap();
    f.set_status(&device.id, CertificateStatus::Inactive);
    match handshake(
        client_with_cert(&f.ca, Some(&device), "localhost"),
        f.server(),
    ) {
        Err((
            Side::Server,
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
        )) => {}
        other => panic!("expected ApplicationVerificationFailure, got {other:?}"),
    }

    // REVOKED; TLS 1.2 this time. The client hears a certificate_revoked alert.
    f.set_status(&device.id, CertificateStatus::Revoked);
    let client = client_config_for(
        &f.ca,
        Some(&device),
        &[&rustls::version::TLS12],
        "localhost",
    );
    match handshake(client, f.server()) {
        Err((Side::Server, rustls::Error::InvalidCertificate(CertificateError::Revoked))) => {}
        other => panic!("expected Revoked, got {other:?}"),
    }

    // Another CA's certificate, registered ACTIVE.
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = CertificateAuthority::load_or_create(other_dir.path(), &[]).unwrap();
    let foreign = other_ca.issue_and_register(&f.store, "x", false).unwrap();
    f.registry.refresh(&f.store).unwrap();
    match handshake(
        client_with_cert(&f.ca, Some(&foreign), "localhost"),
        f.server(),
    ) {
        Err((Side::Server, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))) => {
        }
        other => panic!("expected UnknownIssuer, got {other:?}"),
    }
}

#[test]
fn the_server_chooses_aes_128_gcm_sha256_whatever_the_client_prefers() {
    let f = fixture();
    let device = f.ca.issue_and_register(&f.store, "suite", false).unwrap();
    f.registry.refresh(&f.store).unwrap();
    // rustls clients, like OpenSSL's, list AES-256-GCM-SHA384 first.
    assert_eq!(
        provider().cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let client = client_config_for(&f.ca, Some(&device), versions, "localhost");
        let (_, server) = handshake(client, f.server()).unwrap();
        let suite = server.negotiated_cipher_suite().unwrap().suite();
        assert!(
            matches!(
                suite,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            ),
            "{suite:?}"
        );
    }
}

#[test]
fn no_session_resumption() {
    let f = fixture();
    let config =
        f.ca.server_config(f.verifier(), vec![b"x-amzn-mqtt-ca".to_vec()])
            .unwrap();
    assert_eq!(config.send_tls13_tickets, 0);
    assert!(!config.ticketer.enabled());
    assert!(!config.session_storage.can_cache());
}

#[test]
fn a_certificate_verified_before_is_still_refused_outside_its_dates() {
    let f = fixture();
    let verifier = f.verifier();
    let device = f.ca.issue_and_register(&f.store, "again", false).unwrap();
    f.registry.refresh(&f.store).unwrap();
    let leaf = der(&device.certificate_pem);
    let info = thingd_auth::inspect_certificate_pem(&device.certificate_pem).unwrap();

    // The first connection verifies the chain; the second one takes the remembered result.
    let now = UnixTime::now();
    verifier.verify_client_cert(&leaf, &[], now).unwrap();
    verifier.verify_client_cert(&leaf, &[], now).unwrap();

    // Remembered or not, the dates are checked on every connection...
    let after = UnixTime::since_unix_epoch(Duration::from_secs(info.not_after as u64 + 60));
    assert!(matches!(
        verifier.verify_client_cert(&leaf, &[], after).unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
    ));
    let before = UnixTime::since_unix_epoch(Duration::from_secs(info.not_before as u64 - 60));
    assert!(matches!(
        verifier.verify_client_cert(&leaf, &[], before).unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { .. })
    ));
    // ...and so is the registry status.
    f.set_status(&device.id, CertificateStatus::Revoked);
    assert_eq!(
        verifier.verify_client_cert(&leaf, &[], now).unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::Revoked)
    );
}
