//! Certificate identity and status, as AWS IoT defines them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A certificate id: the lowercase hex SHA-256 of the certificate's DER encoding (64 chars).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CertificateId(String);

impl CertificateId {
    /// The id of the certificate whose DER encoding is `der`.
    pub fn from_der(der: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        Self(hex::encode(digest.as_ref()))
    }

    /// Parses a 64-character lowercase hex id; `None` if it is not one.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Self(s.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CertificateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CertificateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertificateId({})", self.0)
    }
}

/// The status of a registered certificate. Only `Active` may connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CertificateStatus {
    /// May connect.
    Active,
    /// Turned off by its owner; may be turned on again.
    Inactive,
    /// Revoked; cannot be made active again.
    Revoked,
    /// Being transferred to another account.
    PendingTransfer,
    /// Registered but not yet activated.
    RegisterInactive,
    /// Auto-registered, waiting for activation.
    PendingActivation,
}

impl CertificateStatus {
    /// The AWS spelling, e.g. `ACTIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateStatus::Active => "ACTIVE",
            CertificateStatus::Inactive => "INACTIVE",
            CertificateStatus::Revoked => "REVOKED",
            CertificateStatus::PendingTransfer => "PENDING_TRANSFER",
            CertificateStatus::RegisterInactive => "REGISTER_INACTIVE",
            CertificateStatus::PendingActivation => "PENDING_ACTIVATION",
        }
    }
}

impl fmt::Display for CertificateStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the certificate statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown certificate status {0:?}; expected ACTIVE, INACTIVE, REVOKED, PENDING_TRANSFER, REGISTER_INACTIVE or PENDING_ACTIVATION"
)]
pub struct ParseStatusError(String);

impl FromStr for CertificateStatus {
    type Err = ParseStatusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "ACTIVE" => CertificateStatus::Active,
            "INACTIVE" => CertificateStatus::Inactive,
            "REVOKED" => CertificateStatus::Revoked,
            "PENDING_TRANSFER" => CertificateStatus::PendingTransfer,
            "REGISTER_INACTIVE" => CertificateStatus::RegisterInactive,
            "PENDING_ACTIVATION" => CertificateStatus::PendingActivation,
            _ => return Err(ParseStatusError(s.to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_lowercase_hex_sha256_of_der() {
        // SHA-256 of the empty input, a fixed known value.
        let id = CertificateId::from_der(b"");
        assert_eq!(
            id.as_str(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(CertificateId::parse(id.as_str()).is_some());
        assert!(CertificateId::parse("E3B0").is_none());
    }

    #[test]
    fn status_round_trips_through_its_aws_name() {
        for s in [
            "ACTIVE",
            "INACTIVE",
            "REVOKED",
            "PENDING_TRANSFER",
            "REGISTER_INACTIVE",
            "PENDING_ACTIVATION",
        ] {
            assert_eq!(s.parse::<CertificateStatus>().unwrap().as_str(), s);
        }
        assert!("BOGUS".parse::<CertificateStatus>().is_err());
    }
}
