//! The platform CA: root certificate, server certificate, device certificates.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use thingd_model::{CertificateId, CertificateStatus};
use thingd_store::{CertificateRecord, Store, WriteOp};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::{AuthError, IssuedCertificate, SignedCertificate, provider, server_provider};

const ROOT_CERT: &str = "root-ca.pem";
const ROOT_KEY: &str = "root-ca.key";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key";

const ROOT_COMMON_NAME: &str = "thingd Root CA";
const SERVER_COMMON_NAME: &str = "thingd server";
/// About twenty years.
const ROOT_VALIDITY: Duration = Duration::days(20 * 365 + 5);
/// The longest lifetime some TLS clients (Apple's) accept for a server certificate.
const SERVER_VALIDITY: Duration = Duration::days(825);
/// A server certificate closer than this to expiry is re-issued at startup.
const SERVER_RENEW_BEFORE: Duration = Duration::days(30);
/// Certificates start a little in the past so that clients with slow clocks accept them.
const BACKDATE: Duration = Duration::hours(1);

/// A name the server certificate must cover.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum ServerName {
    Dns(String),
    Ip(IpAddr),
}

impl ServerName {
    /// Parses an IP address or a DNS name (lowercased; letters, digits, `-`, `.`, and a
    /// leading `*.` wildcard).
    fn parse(name: &str) -> Option<ServerName> {
        let name = name.trim();
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Some(ServerName::Ip(ip));
        }
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        let body = lower.strip_prefix("*.").unwrap_or(&lower);
        let valid = !body.is_empty()
            && lower.len() <= 253
            && body.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        valid.then_some(ServerName::Dns(lower))
    }

    fn to_san(&self) -> Result<SanType, AuthError> {
        Ok(match self {
            ServerName::Dns(name) => SanType::DnsName(name.as_str().try_into()?),
            ServerName::Ip(ip) => SanType::IpAddress(*ip),
        })
    }
}

impl std::fmt::Display for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerName::Dns(name) => f.write_str(name),
            ServerName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The platform CA, loaded from or created in the data directory.
pub struct CertificateAuthority {
    dir: PathBuf,
    root_pem: String,
    root_der: CertificateDer<'static>,
    roots: RootCertStore,
    issuer: Issuer<'static, KeyPair>,
    server_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    server_names: Vec<String>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("dir", &self.dir)
            .field("root", &self.root_certificate_id())
            .field("server_names", &self.server_names)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads `root-ca.pem`/`root-ca.key` and `server.pem`/`server.key` from `dir`, creating any
    /// that are missing. The server certificate covers `localhost`, `127.0.0.1`, `::1`, the
    /// host name and `extra_names` (DNS names or IP addresses); if it exists but lacks one of
    /// those names it is re-issued. Keys are written with mode 0600.
    ///
    /// The server certificate is also re-issued, by the same root, when it is not signed by
    /// that root, does not match its key, or expires within 30 days. A re-issued certificate
    /// keeps the names the old one had. The root is never replaced: if `root-ca.pem` exists
    /// but its key is missing or does not match, this fails.
    pub fn load_or_create(
        dir: &Path,
        extra_names: &[String],
    ) -> Result<CertificateAuthority, AuthError> {
        create_private_dir(dir)?;
        let (root_pem, root_key) = load_or_create_root(dir)?;
        let root_der = CertificateDer::from_pem_slice(root_pem.as_bytes())
            .map_err(|e| AuthError::Invalid(format!("{ROOT_CERT}: {e}")))?;
        let mut roots = RootCertStore::empty();
        roots
            .add(root_der.clone())
            .map_err(|e| AuthError::Invalid(format!("{ROOT_CERT}: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&root_pem, root_key)?;

        let wanted = wanted_names(extra_names)?;
        let (server_pem, server_key_pem, names) =
            load_or_issue_server(dir, &root_der, &issuer, &wanted)?;
        let server_der = CertificateDer::from_pem_slice(server_pem.as_bytes())
            .map_err(|e| AuthError::Invalid(format!("{SERVER_CERT}: {e}")))?;
        let server_key = PrivateKeyDer::from_pem_slice(server_key_pem.as_bytes())
            .map_err(|e| AuthError::Invalid(format!("{SERVER_KEY}: {e}")))?;

        Ok(CertificateAuthority {
            dir: dir.to_owned(),
            root_pem,
            root_der: root_der.clone(),
            roots,
            issuer,
            server_pem,
            server_chain: vec![server_der, root_der],
            server_key,
            server_names: names.iter().map(ToString::to_string).collect(),
        })
    }

    /// The root CA certificate, PEM (what devices trust).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root CA certificate, DER.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// The root CA certificate's id (SHA-256 of its DER, lowercase hex).
    pub fn root_certificate_id(&self) -> CertificateId {
        CertificateId::from_der(&self.root_der)
    }

    /// A trust store holding the root CA, for [`crate::CertificateRegistry::client_verifier`]
    /// (add registered CAs to it as needed).
    pub fn root_store(&self) -> RootCertStore {
        self.roots.clone()
    }

    /// The server certificate, PEM.
    pub fn server_pem(&self) -> &str {
        &self.server_pem
    }

    /// The names the server certificate covers (DNS names and IP addresses).
    pub fn server_names(&self) -> &[String] {
        &self.server_names
    }

    /// The directory the CA files live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issues a device certificate (ECDSA P-256 key by default, or RSA-2048 when `rsa` is
    /// set, as AWS's CreateKeysAndCertificate does) with subject CN `common_name`.
    ///
    /// The certificate is for TLS client authentication, valid until 2049-12-31T23:59:59Z
    /// like AWS's, with a random serial number. It is not registered: insert it with
    /// `WriteOp::InsertCertificate`, or use [`Self::issue_and_register`].
    pub fn issue_device_certificate(
        &self,
        common_name: &str,
        rsa: bool,
    ) -> Result<IssuedCertificate, AuthError> {
        let key = if rsa {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?
        } else {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(common_name);
        params.not_before = OffsetDateTime::now_utc() - BACKDATE;
        params.not_after = device_not_after()?;
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            id: CertificateId::from_der(cert.der()),
            certificate_pem: cert.pem(),
            private_key_pem: key.serialize_pem(),
            public_key_pem: key.public_key_pem(),
        })
    }

    /// Issues a device certificate for a PEM certificate signing request
    /// (CreateCertificateFromCsr): the CSR is parsed and its signature verified (proof that
    /// the requester holds the key), its key must be RSA of at least 2048 bits or EC on
    /// P-256, P-384 or P-521, and the certificate carries the CSR's subject and key and
    /// nothing else from it (requested extensions are ignored). Each call issues a new
    /// certificate (random serial). Errors are [`AuthError::Invalid`] with the reason.
    pub fn sign_csr(&self, csr_pem: &str) -> Result<SignedCertificate, AuthError> {
        use x509_parser::prelude::FromDer as _;
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| AuthError::Invalid(format!("the CSR is not PEM: {e}")))?;
        let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
            .map_err(|e| AuthError::Invalid(format!("the CSR cannot be parsed: {e}")))?;
        csr.verify_signature()
            .map_err(|e| AuthError::Invalid(format!("the CSR signature does not verify: {e}")))?;
        let info = &csr.certification_request_info;
        check_csr_key(&info.subject_pki)?;
        let spki = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
            .map_err(|e| AuthError::Invalid(format!("unsupported CSR key: {e}")))?;
        let mut dn = DistinguishedName::new();
        for attr in info.subject.iter_attributes() {
            let (Some(oid), Ok(value)) = (attr.attr_type().iter(), attr.as_str()) else {
                continue;
            };
            let oid: Vec<u64> = oid.collect();
            dn.push(DnType::from_oid(&oid), value);
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.not_before = OffsetDateTime::now_utc() - BACKDATE;
        params.not_after = device_not_after()?;
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&spki, &self.issuer)?;
        Ok(SignedCertificate {
            id: CertificateId::from_der(cert.der()),
            certificate_pem: cert.pem(),
        })
    }

    /// Issues a device certificate and registers it ACTIVE in `store`.
    ///
    /// Blocking: it waits for the store's commit with `Store::write_blocking`, so call it
    /// from a plain thread or `spawn_blocking`, never directly inside an async task. A
    /// [`crate::CertificateRegistry`] sees the new certificate at its next `refresh` (or
    /// immediately after `set_status`).
    pub fn issue_and_register(
        &self,
        store: &Store,
        common_name: &str,
        rsa: bool,
    ) -> Result<IssuedCertificate, AuthError> {
        let issued = self.issue_device_certificate(common_name, rsa)?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        store.write_blocking(vec![WriteOp::InsertCertificate(CertificateRecord {
            id: issued.id.clone(),
            pem: issued.certificate_pem.clone(),
            status: CertificateStatus::Active,
            ca_id: None,
            created_at: now,
            updated_at: now,
        })])?;
        Ok(issued)
    }

    /// A rustls server config: the server certificate, TLS 1.2 and 1.3, the aws-lc-rs provider,
    /// client certificates mandatory and checked by `verifier`, and the given ALPN protocols.
    /// The server picks the cipher suite, AES-128-GCM first (see `server_provider`).
    ///
    /// Session resumption is off (no TLS 1.3 tickets, no TLS 1.2 session cache), as on AWS:
    /// a resumed session would skip the client-certificate check, so a revoked certificate
    /// could keep reconnecting.
    pub fn server_config(
        &self,
        verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<rustls::ServerConfig>, AuthError> {
        let mut config = rustls::ServerConfig::builder_with_provider(server_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())?;
        config.alpn_protocols = alpn;
        config.ignore_client_order = true;
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Arc::new(config))
    }
}

/// AWS accepts RSA keys of at least 2048 bits and EC keys on P-256, P-384 or P-521.
fn check_csr_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), AuthError> {
    use x509_parser::public_key::PublicKey;
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => Ok(()),
        Ok(PublicKey::RSA(rsa)) => Err(AuthError::Invalid(format!(
            "RSA keys must have at least 2048 bits, this one has {}",
            rsa.key_size()
        ))),
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string())
                .unwrap_or_default();
            match curve.as_str() {
                // P-256, P-384, P-521.
                "1.2.840.10045.3.1.7" | "1.3.132.0.34" | "1.3.132.0.35" => Ok(()),
                other => Err(AuthError::Invalid(format!(
                    "EC keys must be on P-256, P-384 or P-521, not {other}"
                ))),
            }
        }
        _ => Err(AuthError::Invalid(
            "the CSR key must be RSA (2048 bits or more) or EC (P-256, P-384, P-521)".to_owned(),
        )),
    }
}

fn io_error(path: &Path, source: io::Error) -> AuthError {
    AuthError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn create_private_dir(dir: &Path) -> Result<(), AuthError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error(dir, e))
}

/// Reads a file, `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, AuthError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Reads a private key file, warning if others can read it.
fn read_key(path: &Path) -> Result<Option<KeyPair>, AuthError> {
    let Some(pem) = read_optional(path)? else {
        return Ok(None);
    };
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "private key is readable by other users");
    }
    let key = KeyPair::from_pem(&pem)
        .map_err(|e| AuthError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(Some(key))
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename, fsync of the
/// directory). The file is created with `mode`, so a key is never readable by others, not
/// even for a moment.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), AuthError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&tmp, e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_error(&tmp, e))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(dir, e))?;
    }
    Ok(())
}

fn common_name_dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut bytes = [0u8; N];
    provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| AuthError::Tls(rustls::Error::FailedToGetRandomBytes))?;
    Ok(bytes)
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 16 random bytes, positive and without a leading zero byte.
fn random_serial() -> Result<SerialNumber, AuthError> {
    let mut bytes = random_bytes::<16>()?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// 2049-12-31T23:59:59Z, the end of AWS IoT device certificates' validity.
fn device_not_after() -> Result<OffsetDateTime, AuthError> {
    let invalid = |e: time::error::ComponentRange| AuthError::Invalid(e.to_string());
    Ok(
        time::Date::from_calendar_date(2049, time::Month::December, 31)
            .map_err(invalid)?
            .with_hms(23, 59, 59)
            .map_err(invalid)?
            .assume_utc(),
    )
}

/// Loads the root CA, or creates it if `root-ca.pem` does not exist.
fn load_or_create_root(dir: &Path) -> Result<(String, KeyPair), AuthError> {
    let cert_path = dir.join(ROOT_CERT);
    let key_path = dir.join(ROOT_KEY);
    if let Some(pem) = read_optional(&cert_path)? {
        let Some(key) = read_key(&key_path)? else {
            return Err(AuthError::Invalid(format!(
                "{} exists but its key {} is missing; restore it, or remove both to create a \
                 new root CA (devices trusting the old one will stop connecting)",
                cert_path.display(),
                key_path.display()
            )));
        };
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| AuthError::Invalid(format!("{}: {e}", cert_path.display())))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| AuthError::Invalid(format!("{}: {e}", cert_path.display())))?;
        if cert.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(AuthError::Invalid(format!(
                "{} does not match the key in {}",
                cert_path.display(),
                key_path.display()
            )));
        }
        return Ok((pem, key));
    }
    // No certificate: create both. A key without a certificate is what a crash between
    // the two writes below leaves; nobody can trust it yet, so it is replaced.
    if key_path.exists() {
        tracing::warn!(path = %key_path.display(), "replacing a root CA key that has no certificate");
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    // A random OU tells installations apart: two roots with the same subject in one trust
    // store make clients pick the wrong issuer and fail with a bad signature.
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ROOT_COMMON_NAME);
    dn.push(DnType::OrganizationName, "thingd");
    dn.push(
        DnType::OrganizationalUnitName,
        format!("installation {}", hex_string(&random_bytes::<8>()?)),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + ROOT_VALIDITY;
    params.serial_number = Some(random_serial()?);
    let cert = params.self_signed(&key)?;
    let pem = cert.pem();
    write_file(&key_path, &key.serialize_pem(), 0o600)?;
    write_file(&cert_path, &pem, 0o644)?;
    tracing::info!(
        path = %cert_path.display(),
        id = %CertificateId::from_der(cert.der()),
        "created the root CA"
    );
    Ok((pem, key))
}

/// The names the server certificate must cover.
fn wanted_names(extra_names: &[String]) -> Result<Vec<ServerName>, AuthError> {
    let mut names = vec![
        ServerName::Dns("localhost".to_owned()),
        ServerName::Ip(IpAddr::from([127, 0, 0, 1])),
        ServerName::Ip(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
    ];
    if let Some(host) = hostname() {
        match ServerName::parse(&host) {
            Some(name) => names.push(name),
            None => tracing::debug!(
                host,
                "host name is not a valid DNS name; not in the server certificate"
            ),
        }
    }
    for extra in extra_names {
        let name = ServerName::parse(extra).ok_or_else(|| {
            AuthError::Invalid(format!("{extra:?} is neither a DNS name nor an IP address"))
        })?;
        names.push(name);
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The machine's host name, from the kernel or `$HOSTNAME`.
fn hostname() -> Option<String> {
    let from_kernel = fs::read_to_string("/proc/sys/kernel/hostname").ok();
    from_kernel
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The names in a certificate's subjectAltName.
fn certificate_names(cert: &X509Certificate<'_>) -> Vec<ServerName> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => ServerName::parse(dns),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                _ => None,
            }
            .map(ServerName::Ip),
            _ => None,
        })
        .collect()
}

/// What to do with the server certificate found on disk.
enum ExistingServer {
    /// It is fine: its PEM, its key's PEM, the names it covers.
    Keep(String, String, Vec<ServerName>),
    /// It must be replaced, for this reason; the names it covered (to carry over).
    Replace(String, Vec<ServerName>),
}

fn examine_server(
    dir: &Path,
    root: &X509Certificate<'_>,
    wanted: &[ServerName],
) -> Result<ExistingServer, AuthError> {
    let cert_path = dir.join(SERVER_CERT);
    let key_path = dir.join(SERVER_KEY);
    let (Some(pem), Some(key)) = (
        read_optional(&cert_path)?,
        read_key(&key_path).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "unusable server key");
            None
        }),
    ) else {
        return Ok(ExistingServer::Replace(
            "the certificate or its key is missing".to_owned(),
            Vec::new(),
        ));
    };
    let Ok(der) = CertificateDer::from_pem_slice(pem.as_bytes()) else {
        return Ok(ExistingServer::Replace(
            "it is not PEM".to_owned(),
            Vec::new(),
        ));
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return Ok(ExistingServer::Replace(
            "it cannot be parsed".to_owned(),
            Vec::new(),
        ));
    };
    let have = certificate_names(&cert);
    Ok(
        match server_certificate_problem(&cert, &have, root, &key, wanted) {
            Some(reason) => ExistingServer::Replace(reason, have),
            None => ExistingServer::Keep(pem, key.serialize_pem(), have),
        },
    )
}

/// Loads the server certificate if it is still good for `wanted`, else issues a new one.
/// Returns the certificate PEM, the key PEM and the names covered.
fn load_or_issue_server(
    dir: &Path,
    root_der: &CertificateDer<'_>,
    issuer: &Issuer<'_, KeyPair>,
    wanted: &[ServerName],
) -> Result<(String, String, Vec<ServerName>), AuthError> {
    let (_, root) = x509_parser::parse_x509_certificate(root_der)
        .map_err(|e| AuthError::Invalid(format!("{ROOT_CERT}: {e}")))?;
    let (reason, mut names) = match examine_server(dir, &root, wanted)? {
        ExistingServer::Keep(pem, key_pem, mut names) => {
            names.sort();
            names.dedup();
            return Ok((pem, key_pem, names));
        }
        ExistingServer::Replace(reason, names) => (reason, names),
    };
    names.extend_from_slice(wanted);
    names.sort();
    names.dedup();
    let cert_path = dir.join(SERVER_CERT);
    let key_path = dir.join(SERVER_KEY);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(SERVER_COMMON_NAME);
    params.subject_alt_names = names
        .iter()
        .map(ServerName::to_san)
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - BACKDATE;
    params.not_after = now - BACKDATE + SERVER_VALIDITY;
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer)?;
    let pem = cert.pem();
    let key_pem = key.serialize_pem();
    write_file(&key_path, &key_pem, 0o600)?;
    write_file(&cert_path, &pem, 0o644)?;
    let listed: Vec<String> = names.iter().map(ToString::to_string).collect();
    tracing::info!(
        path = %cert_path.display(),
        names = ?listed,
        reason,
        "issued the server certificate"
    );
    Ok((pem, key_pem, names))
}

/// Why an existing server certificate cannot be kept, or `None` if it can.
fn server_certificate_problem(
    cert: &X509Certificate<'_>,
    have: &[ServerName],
    root: &X509Certificate<'_>,
    key: &KeyPair,
    wanted: &[ServerName],
) -> Option<String> {
    if let Some(missing) = wanted.iter().find(|name| !have.contains(name)) {
        return Some(format!("it does not cover {missing}"));
    }
    if cert.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
        return Some("it does not match its key".to_owned());
    }
    if cert
        .verify_signature(Some(&root.tbs_certificate.subject_pki))
        .is_err()
    {
        return Some("it is not signed by the root CA".to_owned());
    }
    let renew_at = cert.validity().not_after.timestamp() - SERVER_RENEW_BEFORE.whole_seconds();
    if renew_at <= OffsetDateTime::now_utc().unix_timestamp() {
        return Some("it expires soon".to_owned());
    }
    None
}
