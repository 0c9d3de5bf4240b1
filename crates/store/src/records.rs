//! Row types.

use thingd_model::{CertificateId, CertificateStatus};

/// A registered certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    /// SHA-256 of the DER, lowercase hex.
    pub id: CertificateId,
    /// The certificate in PEM.
    pub pem: String,
    /// Current status.
    pub status: CertificateStatus,
    /// The id of the registered CA that issued it, if any.
    pub ca_id: Option<String>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last status or attribute change, Unix seconds.
    pub updated_at: i64,
}

/// A connection whose lifecycle events are being followed (see `WriteOp::PutLiveConnection`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConnection {
    /// The `sessionIdentifier` of its lifecycle events (unique per connection).
    pub session_identifier: String,
    /// The client id.
    pub client_id: String,
    /// The `principalIdentifier` of its events.
    pub principal: String,
    /// The `versionNumber` of its events.
    pub version_number: i64,
}

/// A persistent MQTT session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The client id.
    pub client_id: String,
    /// Protocol level it was created with (4 or 5); sessions do not resume across versions.
    pub protocol_level: u8,
    /// Session Expiry Interval in seconds; `u32::MAX` means never.
    pub expiry_interval: u32,
    /// When the client disconnected (Unix seconds), or `None` while connected.
    pub disconnected_at: Option<i64>,
    /// The broker's encoding of the subscriptions and other session state.
    pub state: Vec<u8>,
}

/// A message queued for a persistent session, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Its position in the session's queue.
    pub seq: u64,
    /// The broker's encoding of the message.
    pub blob: Vec<u8>,
    /// A QoS 2 message its receiver answered with PUBREC (see `WriteOp::ReleaseMessage`).
    pub released: bool,
}

/// A certificate's status and the revision at which it was last written (see
/// `Store::certificate_statuses`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateStatusEntry {
    /// The certificate.
    pub id: CertificateId,
    /// Its status.
    pub status: CertificateStatus,
    /// Store-wide counter value of its last insert or status change (greater than zero).
    pub revision: i64,
}

/// The answer of `Store::certificate_statuses`: one consistent snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateStatusChanges {
    /// Certificates inserted or changed after the given revision, oldest change first.
    pub changed: Vec<CertificateStatusEntry>,
    /// How many certificates exist in total (lets a cache notice rows deleted behind its
    /// back, which revisions cannot show).
    pub total: u64,
}
