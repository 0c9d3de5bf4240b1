//! Looking at uploaded certificates (RegisterCertificate, RegisterCACertificate): parsing,
//! validity, CA flag, subject common name, and who signed whom.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use thingd_model::CertificateId;

use crate::AuthError;

/// What the control plane needs to know about an uploaded certificate.
#[derive(Debug, Clone)]
pub struct CertificateInfo {
    /// Lowercase hex SHA-256 of the DER.
    pub id: CertificateId,
    /// The DER.
    pub der: CertificateDer<'static>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Whether basicConstraints says it is a CA.
    pub is_ca: bool,
    /// The subject's first common name, if any.
    pub common_name: Option<String>,
}

/// Parses the first certificate of a PEM text. Errors are [`AuthError::Invalid`].
pub fn inspect_certificate_pem(pem: &str) -> Result<CertificateInfo, AuthError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| AuthError::Invalid(format!("not a PEM certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| AuthError::Invalid(format!("the certificate cannot be parsed: {e}")))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let info = CertificateInfo {
        id: CertificateId::from_der(&der),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
        common_name,
        der: der.clone().into_owned(),
    };
    Ok(info)
}

/// Whether `cert` (DER) carries a valid signature by the key of `issuer` (DER) and names it
/// as issuer.
pub fn is_signed_by(cert: &[u8], issuer: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, issuer))) = (
        x509_parser::parse_x509_certificate(cert),
        x509_parser::parse_x509_certificate(issuer),
    ) else {
        return false;
    };
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert
            .verify_signature(Some(&issuer.tbs_certificate.subject_pki))
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateAuthority;

    #[test]
    fn inspects_and_checks_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), &[]).unwrap();
        let issued = ca.issue_device_certificate("dev", false).unwrap();
        let info = inspect_certificate_pem(&issued.certificate_pem).unwrap();
        assert_eq!(info.id, issued.id);
        assert!(!info.is_ca);
        assert_eq!(info.common_name.as_deref(), Some("dev"));
        assert!(info.not_before < info.not_after);
        let root = inspect_certificate_pem(ca.root_pem()).unwrap();
        assert!(root.is_ca);
        assert!(is_signed_by(&info.der, &root.der));
        assert!(!is_signed_by(&root.der, &info.der));
        assert!(inspect_certificate_pem("junk").is_err());
    }
}
