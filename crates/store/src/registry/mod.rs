//! Registry operations: the SQL of the control plane, next to its row types.
//!
//! - `things`, `thing_types`, `thing_groups`: the device registry; `tags`: tags of any
//!   taggable resource, by ARN; `page`: one page of a listing.
//! - `security`: certificates, CA certificates, policies, attachments, thing principals.

pub mod page;
mod refusal;
pub mod security;
pub mod tags;
pub mod thing_groups;
pub mod thing_types;
pub mod things;
