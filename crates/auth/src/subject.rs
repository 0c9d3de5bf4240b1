//! The certificate facts IoT policy variables name (`${iot:Certificate.Subject.CommonName}`
//! and the rest), read from a device certificate.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use thingd_policy::{AltNames, CertificateContext, DistinguishedName};
use x509_parser::prelude::{GeneralName, X509Name};

/// The subject, issuer, alternative names and serial number of a PEM certificate, with AWS's
/// attribute names; `None` if it cannot be parsed.
pub fn certificate_context(pem: &str) -> Option<CertificateContext> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let mut context = CertificateContext {
        subject: distinguished_name(cert.subject()),
        issuer: distinguished_name(cert.issuer()),
        serial_number: Some(cert.serial.to_str_radix(10)),
        ..CertificateContext::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        context.subject_alt_names = alt_names(&san.value.general_names);
    }
    for extension in cert.extensions() {
        if let x509_parser::extensions::ParsedExtension::IssuerAlternativeName(ian) =
            extension.parsed_extension()
        {
            context.issuer_alt_names = alt_names(&ian.general_names);
        }
    }
    Some(context)
}

fn distinguished_name(name: &X509Name<'_>) -> DistinguishedName {
    use x509_parser::oid_registry as oids;
    let mut out = DistinguishedName::new();
    for attribute in name.iter_attributes() {
        let oid = attribute.attr_type();
        let aws_name = if *oid == oids::OID_X509_COMMON_NAME {
            "CommonName"
        } else if *oid == oids::OID_X509_ORGANIZATION_NAME {
            "Organization"
        } else if *oid == oids::OID_X509_ORGANIZATIONAL_UNIT {
            "OrganizationalUnit"
        } else if *oid == oids::OID_X509_COUNTRY_NAME {
            "Country"
        } else if *oid == oids::OID_X509_STATE_OR_PROVINCE_NAME {
            "State"
        } else if *oid == oids::OID_X509_SERIALNUMBER {
            "SerialNumber"
        } else if *oid == oids::OID_X509_DN_QUALIFIER {
            "DistinguishedNameQualifier"
        } else if *oid == oids::OID_X509_TITLE {
            "Title"
        } else if *oid == oids::OID_X509_SURNAME {
            "Surname"
        } else if *oid == oids::OID_X509_GIVEN_NAME {
            "GivenName"
        } else if *oid == oids::OID_X509_INITIALS {
            "Initials"
        } else if *oid == oids::OID_X509_GENERATION_QUALIFIER {
            "GenerationQualifier"
        } else {
            continue;
        };
        if let Ok(value) = attribute.as_str() {
            out = out.with(aws_name, value);
        }
    }
    out
}

fn alt_names(names: &[GeneralName<'_>]) -> AltNames {
    let mut out = AltNames::default();
    for name in names {
        match name {
            GeneralName::RFC822Name(v) => out.rfc822_names.push((*v).to_owned()),
            GeneralName::DNSName(v) => out.dns_names.push((*v).to_owned()),
            GeneralName::URI(v) => out.uris.push((*v).to_owned()),
            GeneralName::DirectoryName(v) => out.directory_names.push(v.to_string()),
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                    16 => <[u8; 16]>::try_from(*bytes)
                        .ok()
                        .map(std::net::IpAddr::from),
                    _ => None,
                };
                if let Some(ip) = ip {
                    out.ip_addresses.push(ip.to_string());
                }
            }
            _ => {}
        }
    }
    out
}
