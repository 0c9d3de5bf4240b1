//! The restJson1 wire rules shared by every handler: JSON bodies, timestamps, pagination,
//! name validation and ARNs.

use axum::extract::{FromRequest, Request};
use base64::Engine as _;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// A JSON request body as AWS clients send it: an empty body (no Content-Type) means `{}`,
/// unknown members are ignored, and malformed JSON is an InvalidRequestException.
pub struct AwsJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AwsJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = bytes::Bytes::from_request(request, state)
            .await
            .map_err(|e| ApiError::invalid_request(format!("cannot read the request body: {e}")))?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(AwsJson)
            .map_err(|e| ApiError::invalid_request(format!("Invalid request body: {e}")))
    }
}

/// A timestamp as restJson1 sends it: epoch seconds as a JSON number.
pub fn epoch(seconds: i64) -> serde_json::Value {
    serde_json::Value::from(seconds as f64)
}

/// The current time in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Where a listing starts and how much it returns, from either pagination style.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    /// Index of the first item.
    pub offset: usize,
    /// Items per page (1..=250).
    pub size: usize,
}

/// Default page size when the client gives none.
pub const DEFAULT_PAGE_SIZE: usize = 100;

impl PageRequest {
    /// From `marker` + `pageSize` (certificates, policies) or `nextToken` + `maxResults`
    /// (things, groups, ...): the token is an opaque string this module made.
    pub fn parse(
        token: Option<&str>,
        size: Option<i64>,
        size_field: &str,
    ) -> Result<PageRequest, ApiError> {
        let size = match size {
            None => DEFAULT_PAGE_SIZE,
            Some(n) if (1..=250).contains(&n) => n as usize,
            Some(n) => {
                return Err(ApiError::invalid_request(format!(
                    "1 validation error detected: Value '{n}' at '{size_field}' failed to satisfy constraint: Member must have value between 1 and 250"
                )));
            }
        };
        let offset = match token {
            None | Some("") => 0,
            Some(token) => decode_token(token)
                .ok_or_else(|| ApiError::invalid_request("Invalid pagination token"))?,
        };
        Ok(PageRequest { offset, size })
    }

    /// Cuts one page out of `items` (already in listing order); returns the page and the token
    /// for the next one, `None` on the last page.
    pub fn page<T>(&self, items: Vec<T>) -> (Vec<T>, Option<String>) {
        let total = items.len();
        let page: Vec<T> = items
            .into_iter()
            .skip(self.offset)
            .take(self.size)
            .collect();
        let end = self.offset + page.len();
        let next = (end < total).then(|| encode_token(end));
        (page, next)
    }
}

/// An opaque page token (base64, as the model's `Marker` pattern requires).
pub fn encode_token(offset: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("thingd:{offset}"))
}

fn decode_token(token: &str) -> Option<usize> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    std::str::from_utf8(&bytes)
        .ok()?
        .strip_prefix("thingd:")?
        .parse()
        .ok()
}

/// Checks a name against a length range and an allowed character set, with AWS's
/// validation message naming the field and the pattern.
pub fn validate_name(
    field: &str,
    value: &str,
    min: usize,
    max: usize,
    pattern: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), ApiError> {
    let len = value.chars().count();
    if len < min || len > max {
        return Err(ApiError::invalid_request(format!(
            "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: Member must have length between {min} and {max}"
        )));
    }
    if !value.chars().all(allowed) {
        return Err(ApiError::invalid_request(format!(
            "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: Member must satisfy regular expression pattern: {pattern}"
        )));
    }
    Ok(())
}

/// Thing, thing type, thing group names: 1..128 of `[a-zA-Z0-9:_-]`.
pub fn validate_registry_name(field: &str, value: &str) -> Result<(), ApiError> {
    validate_name(field, value, 1, 128, "[a-zA-Z0-9:_-]+", |c| {
        c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-')
    })
}

/// Policy names: 1..128 of `[\w+=,.@-]`.
pub fn validate_policy_name(field: &str, value: &str) -> Result<(), ApiError> {
    validate_name(field, value, 1, 128, "[\\w+=,.@-]+", |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | '-')
    })
}

/// Builds the ARNs of this installation.
#[derive(Debug, Clone)]
pub struct Arns {
    /// Region, e.g. `us-east-1`.
    pub region: String,
    /// 12-digit account id.
    pub account: String,
}

impl Arns {
    fn arn(&self, kind: &str, name: &str) -> String {
        format!("arn:aws:iot:{}:{}:{kind}/{name}", self.region, self.account)
    }
    /// `thing/<name>`
    pub fn thing(&self, name: &str) -> String {
        self.arn("thing", name)
    }
    /// `thingtype/<name>`
    pub fn thing_type(&self, name: &str) -> String {
        self.arn("thingtype", name)
    }
    /// `thinggroup/<name>`
    pub fn thing_group(&self, name: &str) -> String {
        self.arn("thinggroup", name)
    }
    /// `cert/<id>`
    pub fn cert(&self, id: &str) -> String {
        self.arn("cert", id)
    }
    /// `cacert/<id>`
    pub fn ca_cert(&self, id: &str) -> String {
        self.arn("cacert", id)
    }
    /// `policy/<name>`
    pub fn policy(&self, name: &str) -> String {
        self.arn("policy", name)
    }
    /// The certificate id in a `cert/<id>` ARN of this installation (or of any region and
    /// account: tools sometimes build ARNs themselves).
    pub fn cert_id_of(arn: &str) -> Option<&str> {
        let rest = arn.strip_prefix("arn:aws:iot:")?;
        let (_, resource) = rest.split_once(":")?.1.split_once(':')?;
        resource.strip_prefix("cert/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_the_last_page_has_none() {
        let first = PageRequest::parse(None, Some(2), "maxResults").unwrap();
        let (items, next) = first.page(vec![1, 2, 3]);
        assert_eq!(items, vec![1, 2]);
        let next = next.unwrap();
        let second = PageRequest::parse(Some(&next), Some(2), "maxResults").unwrap();
        let (items, next) = second.page(vec![1, 2, 3]);
        assert_eq!((items, next), (vec![3], None));
        assert!(PageRequest::parse(None, Some(0), "pageSize").is_err());
        assert!(PageRequest::parse(Some("garbage!"), None, "pageSize").is_err());
    }

    #[test]
    fn names_are_checked_with_aws_messages() {
        assert!(validate_registry_name("thingName", "MyJourneyIoTDevice").is_ok());
        let e = validate_registry_name("thingName", "a b").unwrap_err();
        assert_eq!(e.code, "InvalidRequestException");
        assert!(
            e.message.contains("Value 'a b' at 'thingName'"),
            "{}",
            e.message
        );
        assert!(validate_registry_name("thingName", "").is_err());
        assert!(validate_registry_name("thingName", &"x".repeat(129)).is_err());
        assert!(validate_policy_name("policyName", "dev.policy@1").is_ok());
    }

    #[test]
    fn certificate_ids_come_out_of_arns() {
        let id = "a".repeat(64);
        let arn = format!("arn:aws:iot:us-east-1:123456789012:cert/{id}");
        assert_eq!(Arns::cert_id_of(&arn), Some(id.as_str()));
        assert_eq!(
            Arns::cert_id_of("arn:aws:iot:us-east-1:123456789012:thing/x"),
            None
        );
    }
}
