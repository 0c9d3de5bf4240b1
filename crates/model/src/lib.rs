//! Domain types shared by every layer: certificate ids and statuses, client ids, ARNs.
//!
//! Owns: the small value types whose rules come from AWS IoT (a certificate id is the lowercase
//! hex SHA-256 of the DER; the statuses a certificate can be in). Does not own: storage,
//! protocol codecs or anything async.
//!
//! # Layout
//! - `certificate`: `CertificateId`, `CertificateStatus`.

mod certificate;

pub use certificate::{CertificateId, CertificateStatus, ParseStatusError};
