//! What is known about a connection when a policy is evaluated (policy variables and
//! condition keys), and how a variable name resolves against it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Longest certificate attribute value that is substituted; longer values stay unresolved.
pub const MAX_CERTIFICATE_VALUE_CHARS: usize = 1024;

/// The per-connection facts policies can refer to, as `${...}` variables in resources and
/// condition values, and as condition keys.
///
/// Everything is optional: a variable whose fact is missing does not resolve (it stays as
/// its literal `${...}` text in a pattern, and counts as an absent key in a condition).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variables {
    /// `iot:ClientId`: the MQTT client id.
    pub client_id: Option<String>,
    /// `iot:Connection.Thing.*`: the thing associated with the connection. Set it only when the
    /// thing is attached to the connecting principal (non-exclusive association: the client id
    /// names an attached thing; exclusive association: the principal's one thing). `None`
    /// makes `iot:Connection.Thing.IsAttached` "false" and leaves the other thing variables
    /// unresolved.
    pub thing: Option<ThingContext>,
    /// `iot:CertificateId`: lowercase hex SHA-256 of the client certificate's DER.
    pub certificate_id: Option<String>,
    /// `iot:Certificate.*`: attributes of the client certificate.
    pub certificate: Option<CertificateContext>,
    /// `aws:SourceIp`: the client's address.
    pub source_ip: Option<IpAddr>,
    /// `iot:ConnectAttributes`: what the CONNECT asked for. Like every other field, it is a
    /// fact about the connection, so a condition on it applies to every action the
    /// connection performs, not only to `iot:Connect`.
    pub connect_attributes: ConnectAttributes,
}

/// The thing attached to a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThingContext {
    /// `iot:Connection.Thing.ThingName`.
    pub name: String,
    /// `iot:Connection.Thing.ThingTypeName`, when the thing has a type.
    pub type_name: Option<String>,
    /// `iot:Connection.Thing.Attributes[<name>]` (attribute names are case-sensitive).
    pub attributes: BTreeMap<String, String>,
}

/// The multi-valued condition key `iot:ConnectAttributes`. A clean connection without a
/// Will has no attributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectAttributes {
    /// `PersistentConnect`: the client asked for a session that outlives the connection
    /// (MQTT 3.1.1 cleanSession=0, MQTT 5 Session Expiry > 0).
    pub persistent_connect: bool,
    /// `LastWill`: the CONNECT carries a Will message.
    pub last_will: bool,
}

impl ConnectAttributes {
    /// The key's values, in a fixed order.
    pub fn values(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.persistent_connect {
            out.push("PersistentConnect");
        }
        if self.last_will {
            out.push("LastWill");
        }
        out
    }
}

/// Attributes of the client certificate used by `iot:Certificate.*` variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateContext {
    /// The subject distinguished name.
    pub subject: DistinguishedName,
    /// The issuer distinguished name.
    pub issuer: DistinguishedName,
    /// Subject alternative names.
    pub subject_alt_names: AltNames,
    /// Issuer alternative names.
    pub issuer_alt_names: AltNames,
    /// `iot:Certificate.SerialNumber`, as the caller formats it (AWS shows decimal).
    pub serial_number: Option<String>,
}

/// A distinguished name as an ordered list of (attribute, value) pairs. Attribute names are
/// the AWS ones (`CommonName`, `Organization`, `OrganizationalUnit`, `Country`, `State`,
/// `SerialNumber`, `DistinguishedNameQualifier`, `Title`, `Surname`, `GivenName`, `Initials`,
/// `Pseudonym`, `GenerationQualifier`) and are looked up ignoring ASCII case. An attribute
/// may repeat (several `OrganizationalUnit`s, say): `${...OrganizationalUnit}` is the first,
/// `.1` the second, `.List` all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DistinguishedName {
    /// The pairs in certificate order.
    pub attributes: Vec<(String, String)>,
}

impl DistinguishedName {
    /// An empty name.
    pub fn new() -> DistinguishedName {
        DistinguishedName::default()
    }

    /// Adds one attribute value (builder style).
    pub fn with(mut self, attribute: &str, value: &str) -> DistinguishedName {
        self.attributes
            .push((attribute.to_owned(), value.to_owned()));
        self
    }

    /// The values of `attribute`, in order.
    pub fn values(&self, attribute: &str) -> Vec<&str> {
        self.attributes
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(attribute))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Alternative names of a certificate, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AltNames {
    /// `RFC822Name` (e-mail addresses).
    pub rfc822_names: Vec<String>,
    /// `DNSName`.
    pub dns_names: Vec<String>,
    /// `DirectoryName`.
    pub directory_names: Vec<String>,
    /// `UniformResourceIdentifier`.
    pub uris: Vec<String>,
    /// `IPAddress`, as text.
    pub ip_addresses: Vec<String>,
}

impl AltNames {
    fn of_kind(&self, kind: AltNameKind) -> &[String] {
        match kind {
            AltNameKind::Rfc822Name => &self.rfc822_names,
            AltNameKind::DnsName => &self.dns_names,
            AltNameKind::DirectoryName => &self.directory_names,
            AltNameKind::Uri => &self.uris,
            AltNameKind::IpAddress => &self.ip_addresses,
        }
    }
}

/// A kind of alternative name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AltNameKind {
    Rfc822Name,
    DnsName,
    DirectoryName,
    Uri,
    IpAddress,
}

/// Which value of a multi-valued certificate attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueIndex {
    /// The bare name: the first value.
    First,
    /// `.N`: the value at zero-based position N (so `.1` is the second).
    Nth(usize),
    /// `.List`: all values (useful with `ForAnyValue`/`ForAllValues`).
    List,
}

/// A parsed variable or condition-key name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VarRef {
    ClientId,
    ThingName,
    ThingTypeName,
    ThingIsAttached,
    ThingAttribute(String),
    CertificateId,
    CertificateSerialNumber,
    Dn {
        issuer: bool,
        attribute: String,
        index: ValueIndex,
    },
    AltName {
        issuer: bool,
        kind: AltNameKind,
        index: ValueIndex,
    },
    SourceIp,
    ConnectAttributes,
    /// A name this crate does not know; it never resolves.
    Unknown,
}

/// The value(s) of a variable for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved<'a> {
    Absent,
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
}

impl<'a> Resolved<'a> {
    /// All values as a list; `None` when absent.
    pub(crate) fn into_list(self) -> Option<Vec<Cow<'a, str>>> {
        match self {
            Resolved::Absent => None,
            Resolved::One(v) => Some(vec![v]),
            Resolved::Many(v) => Some(v),
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

impl VarRef {
    /// Parses a variable name (the text inside `${...}`, or a condition key). Names are
    /// matched ignoring ASCII case, except thing attribute names, which are kept as written.
    pub(crate) fn parse(name: &str) -> VarRef {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "iot:clientid" => return VarRef::ClientId,
            "iot:connection.thing.thingname" | "iot:thing.thingname" => return VarRef::ThingName,
            "iot:connection.thing.thingtypename" => return VarRef::ThingTypeName,
            "iot:connection.thing.isattached" => return VarRef::ThingIsAttached,
            "iot:certificateid" => return VarRef::CertificateId,
            "iot:certificate.serialnumber" => return VarRef::CertificateSerialNumber,
            "aws:sourceip" => return VarRef::SourceIp,
            "iot:connectattributes" => return VarRef::ConnectAttributes,
            _ => {}
        }
        if let Some(rest) = strip_prefix_ci(name, "iot:Connection.Thing.Attributes[") {
            if let Some(attr) = rest.strip_suffix(']')
                && !attr.is_empty()
                && !attr.contains(']')
            {
                return VarRef::ThingAttribute(attr.to_owned());
            }
            return VarRef::Unknown;
        }
        let (issuer, rest) = if let Some(r) = strip_prefix_ci(name, "iot:Certificate.Subject.") {
            (false, r)
        } else if let Some(r) = strip_prefix_ci(name, "iot:Certificate.Issuer.") {
            (true, r)
        } else {
            return VarRef::Unknown;
        };
        if let Some(alt) = strip_prefix_ci(rest, "AlternativeName.") {
            let (kind, index) = split_index(alt);
            let kind = match kind.to_ascii_lowercase().as_str() {
                "rfc822name" => AltNameKind::Rfc822Name,
                "dnsname" => AltNameKind::DnsName,
                "directoryname" => AltNameKind::DirectoryName,
                "uniformresourceidentifier" => AltNameKind::Uri,
                "ipaddress" => AltNameKind::IpAddress,
                _ => return VarRef::Unknown,
            };
            return match index {
                Some(index) => VarRef::AltName {
                    issuer,
                    kind,
                    index,
                },
                None => VarRef::Unknown,
            };
        }
        let (attribute, index) = split_index(rest);
        match index {
            Some(index) if !attribute.is_empty() && !attribute.contains('.') => VarRef::Dn {
                issuer,
                attribute: attribute.to_owned(),
                index,
            },
            _ => VarRef::Unknown,
        }
    }

    /// The value(s) for `vars`.
    pub(crate) fn resolve<'a>(&self, vars: &'a Variables) -> Resolved<'a> {
        let one = |v: Option<&'a String>| match v {
            Some(v) => Resolved::One(Cow::Borrowed(v.as_str())),
            None => Resolved::Absent,
        };
        match self {
            VarRef::ClientId => one(vars.client_id.as_ref()),
            VarRef::ThingName => one(vars.thing.as_ref().map(|t| &t.name)),
            VarRef::ThingTypeName => one(vars.thing.as_ref().and_then(|t| t.type_name.as_ref())),
            VarRef::ThingIsAttached => Resolved::One(Cow::Borrowed(if vars.thing.is_some() {
                "true"
            } else {
                "false"
            })),
            VarRef::ThingAttribute(name) => {
                one(vars.thing.as_ref().and_then(|t| t.attributes.get(name)))
            }
            VarRef::CertificateId => one(vars.certificate_id.as_ref()),
            VarRef::CertificateSerialNumber => {
                let v = vars
                    .certificate
                    .as_ref()
                    .and_then(|c| c.serial_number.as_deref());
                certificate_values(v.into_iter().collect(), ValueIndex::First, false)
            }
            VarRef::Dn {
                issuer,
                attribute,
                index,
            } => {
                let Some(cert) = vars.certificate.as_ref() else {
                    return Resolved::Absent;
                };
                let dn = if *issuer { &cert.issuer } else { &cert.subject };
                certificate_values(dn.values(attribute), *index, true)
            }
            VarRef::AltName {
                issuer,
                kind,
                index,
            } => {
                let Some(cert) = vars.certificate.as_ref() else {
                    return Resolved::Absent;
                };
                let alt = if *issuer {
                    &cert.issuer_alt_names
                } else {
                    &cert.subject_alt_names
                };
                let values = alt.of_kind(*kind).iter().map(String::as_str).collect();
                certificate_values(values, *index, false)
            }
            VarRef::SourceIp => match vars.source_ip {
                Some(ip) => Resolved::One(Cow::Owned(ip.to_string())),
                None => Resolved::Absent,
            },
            VarRef::ConnectAttributes => Resolved::Many(
                vars.connect_attributes
                    .values()
                    .into_iter()
                    .map(Cow::Borrowed)
                    .collect(),
            ),
            VarRef::Unknown => Resolved::Absent,
        }
    }
}

/// Splits `Name`, `Name.3` or `Name.List` into the name and the index. `None` for an index
/// that is neither a number nor `List`.
fn split_index(s: &str) -> (&str, Option<ValueIndex>) {
    match s.rsplit_once('.') {
        None => (s, Some(ValueIndex::First)),
        Some((name, idx)) => {
            if idx.eq_ignore_ascii_case("list") {
                (name, Some(ValueIndex::List))
            } else if !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit()) {
                (name, idx.parse().ok().map(ValueIndex::Nth))
            } else {
                (s, None)
            }
        }
    }
}

/// Applies the certificate-variable rules: values with `*` or `?`, or longer than
/// [`MAX_CERTIFICATE_VALUE_CHARS`], make the variable unresolvable; distinguished-name values
/// have `, " \ + = < > ;` backslash-escaped; an index out of range does not resolve.
fn certificate_values<'a>(values: Vec<&'a str>, index: ValueIndex, dn: bool) -> Resolved<'a> {
    let usable =
        |v: &str| !v.contains(['*', '?']) && v.chars().count() <= MAX_CERTIFICATE_VALUE_CHARS;
    let prepare = |v: &'a str| -> Option<Cow<'a, str>> {
        if !usable(v) {
            return None;
        }
        Some(if dn {
            escape_dn_value(v)
        } else {
            Cow::Borrowed(v)
        })
    };
    match index {
        ValueIndex::First | ValueIndex::Nth(_) => {
            let i = match index {
                ValueIndex::Nth(i) => i,
                _ => 0,
            };
            match values.get(i).and_then(|v| prepare(v)) {
                Some(v) => Resolved::One(v),
                None => Resolved::Absent,
            }
        }
        ValueIndex::List => {
            if values.is_empty() {
                return Resolved::Absent;
            }
            let mut out = Vec::with_capacity(values.len());
            for v in values {
                match prepare(v) {
                    Some(v) => out.push(v),
                    None => return Resolved::Absent,
                }
            }
            Resolved::Many(out)
        }
    }
}

/// Backslash-escapes the characters AWS requires escaped in certificate attribute values.
fn escape_dn_value(v: &str) -> Cow<'_, str> {
    const SPECIAL: [char; 8] = [',', '"', '\\', '+', '=', '<', '>', ';'];
    if !v.contains(SPECIAL) {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() + 4);
    for c in v.chars() {
        if SPECIAL.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!(VarRef::parse("iot:ClientId"), VarRef::ClientId);
        assert_eq!(VarRef::parse("IOT:CLIENTID"), VarRef::ClientId);
        assert_eq!(
            VarRef::parse("iot:Connection.Thing.Attributes[Color]"),
            VarRef::ThingAttribute("Color".to_owned())
        );
        assert_eq!(
            VarRef::parse("iot:Certificate.Subject.OrganizationalUnit.1"),
            VarRef::Dn {
                issuer: false,
                attribute: "OrganizationalUnit".to_owned(),
                index: ValueIndex::Nth(1)
            }
        );
        assert_eq!(
            VarRef::parse("iot:Certificate.Issuer.AlternativeName.DNSName.List"),
            VarRef::AltName {
                issuer: true,
                kind: AltNameKind::DnsName,
                index: ValueIndex::List
            }
        );
        assert_eq!(
            VarRef::parse("iot:Certificate.Subject.CN.x"),
            VarRef::Unknown
        );
        assert_eq!(VarRef::parse("iot:Topic"), VarRef::Unknown);
        assert_eq!(
            VarRef::parse("iot:Connection.Thing.Attributes[]"),
            VarRef::Unknown
        );
    }

    #[test]
    fn certificate_rules() {
        let cert = CertificateContext {
            subject: DistinguishedName::new()
                .with("CommonName", "dev-1")
                .with("OrganizationalUnit", "a")
                .with("OrganizationalUnit", "b")
                .with("Organization", "Acme, Inc")
                .with("Title", "x*"),
            ..CertificateContext::default()
        };
        let vars = Variables {
            certificate: Some(cert),
            ..Variables::default()
        };
        let r = |n: &str| VarRef::parse(n).resolve(&vars);
        assert_eq!(
            r("iot:Certificate.Subject.CommonName"),
            Resolved::One("dev-1".into())
        );
        assert_eq!(
            r("iot:Certificate.Subject.OrganizationalUnit.1"),
            Resolved::One("b".into())
        );
        assert_eq!(
            r("iot:Certificate.Subject.OrganizationalUnit.2"),
            Resolved::Absent
        );
        assert_eq!(
            r("iot:Certificate.Subject.OrganizationalUnit.List"),
            Resolved::Many(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            r("iot:Certificate.Subject.Organization"),
            Resolved::One("Acme\\, Inc".into())
        );
        assert_eq!(r("iot:Certificate.Subject.Title"), Resolved::Absent);
        assert_eq!(r("iot:Certificate.Issuer.CommonName"), Resolved::Absent);
    }
}
