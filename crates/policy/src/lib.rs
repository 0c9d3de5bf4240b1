//! AWS IoT policy documents and their evaluation.
//!
//! Owns: the policy grammar (`Version`, `Statement`, `Effect`, `Action`/`NotAction`,
//! `Resource`/`NotResource`, `Condition`) and its validation with located error messages (what
//! CreatePolicy turns into `MalformedPolicyException`), the 2,048 non-whitespace character
//! limit, policy variables (`${iot:ClientId}`, `${iot:Connection.Thing.*}`,
//! `${iot:Certificate.*}`, ...) and condition keys, IAM glob matching (`*` spans `/`, `?` is
//! one character, `+` and `#` are literal), and the IAM decision rule (default deny, explicit
//! deny wins) over all the policies of a principal, both directly (for TestAuthorization) and
//! compiled once per connection with a small decision cache (for the broker).
//!
//! Does not own: where policies are stored, which policies are attached to which principal,
//! versions, or how a connection's facts ([`Variables`]) are gathered from its certificate and
//! the registry. No I/O, no async, no panics on any input.
//!
//! Substituted variable values are always literal text: a client id `*` matches only a
//! literal `*`, never acts as a wildcard. A variable that cannot be resolved stays as its
//! `${...}` text, so the pattern usually fails to match (as AWS documents). Certificate
//! values containing `*` or `?`, or longer than 1,024 characters, do not resolve.
//!
//! # Layout
//! - `document`: [`PolicyDocument::parse`], [`Statement`], [`Effect`], [`PolicyVersion`],
//!   [`non_whitespace_len`], [`check_size`].
//! - `error`: [`PolicyError`].
//! - `action`: [`IotAction`], [`ResourceKind`], and [`Arns`], which builds resource ARNs.
//! - `variables`: [`Variables`] and its parts; how a variable name resolves.
//! - `pattern` (private): parsed patterns, the reference matcher, compiled globs, and the
//!   prefix derivation used by compilation.
//! - `condition` (private): condition operators and their evaluation.
//! - `eval`: [`PolicySet`], [`Request`], [`Decision`], [`Explanation`] (direct evaluation).
//! - `compiled`: [`CompiledPolicies`] and [`ConnectionAuthorizer`] (the broker's hot path).

mod action;
mod compiled;
mod condition;
mod document;
mod error;
mod eval;
mod pattern;
mod variables;

pub use action::{Arns, IotAction, ResourceKind};
pub use compiled::{CompiledPolicies, ConnectionAuthorizer, DEFAULT_CACHE_CAPACITY};
pub use document::{
    Effect, MAX_POLICY_NON_WHITESPACE_CHARS, PolicyDocument, PolicyVersion, Statement, check_size,
    non_whitespace_len,
};
pub use error::PolicyError;
pub use eval::{Decision, Explanation, NamedPolicy, PolicySet, Request};
pub use variables::{
    AltNames, CertificateContext, ConnectAttributes, DistinguishedName,
    MAX_CERTIFICATE_VALUE_CHARS, ThingContext, Variables,
};
