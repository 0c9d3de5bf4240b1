//! The `iot-data` HTTP API (restJson1, SigV4 service `iotdata` or `iotdevicegateway`):
//! device shadows, HTTPS publish, and retained messages (spec section 7).
//!
//! Thin adapters: the shadow operations are [`ShadowService`]'s (the same path as MQTT
//! requests, so an HTTP update publishes `update/accepted`, `update/delta` and
//! `update/documents`), publishing goes through an in-process broker client, and retained
//! messages are read from the broker's retained map.
//!
//! Errors leave as AWS's `iot-data` shape: the status, `x-amzn-ErrorType: <Exception>`, and
//! `{"message":..,"traceId":..}` where `traceId` is also the `x-amzn-RequestId` header.
//!
//! Authorization: any valid SigV4 signature from a known access key may call everything
//! (IoT policy checks for HTTP callers are not done yet).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::Uri;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use parking_lot::RwLock;
use serde_json::{Map, Value, json};
use thingd_broker::Broker;
use thingd_mqtt::{ByteStr, Properties, QoS, ReasonCode};
use thingd_shadow::service::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, ShadowService};
use thingd_shadow::{ShadowError, ShadowId, ThingName};
use thingd_sigv4::{Secret, Verifier};

use crate::ApiError;

/// Largest request body read (a publish payload or shadow update is at most 128 KiB; a bit
/// more is read so that the right error, 413, can be given).
const MAX_BODY: usize = 256 * 1024;

/// Largest publish payload (AWS: 128 KiB).
const MAX_PUBLISH_PAYLOAD: usize = 128 * 1024;

/// ListRetainedMessages page size bounds.
const MAX_RETAINED_PAGE: usize = 200;

/// What the data-plane handlers reach.
pub struct DataPlaneState {
    /// The Device Shadow service.
    pub shadows: ShadowService,
    /// The broker (publishes and retained messages).
    pub broker: Broker,
    /// The SigV4 verifier (`iotdata`, `iotdevicegateway`).
    pub verifier: Verifier,
    /// Access keys accepted by the verifier (shared with the control plane's state).
    pub credentials: Arc<RwLock<HashMap<String, Secret>>>,
    /// Authorizes requests authenticated by a TLS client certificate instead of SigV4;
    /// without one, such requests are refused.
    pub cert_authorizer: Option<Arc<dyn crate::cert_auth::HttpAuthorizer>>,
    /// Region and account of this installation, for the resource ARNs of those requests.
    pub arn_prefix: String,
}

impl DataPlaneState {
    /// The state for [`data_plane`], with the `iot-data` verifier.
    pub fn new(
        shadows: ShadowService,
        broker: Broker,
        credentials: Arc<RwLock<HashMap<String, Secret>>>,
    ) -> DataPlaneState {
        DataPlaneState {
            shadows,
            broker,
            verifier: Verifier::data_plane(),
            credentials,
            cert_authorizer: None,
            arn_prefix: "arn:aws:iot:us-east-1:123456789012:".to_owned(),
        }
    }

    /// Accepts requests authenticated by a TLS client certificate (no SigV4), authorized by
    /// `authorizer`, with resource ARNs under `arn:aws:iot:<region>:<account>:`.
    pub fn with_cert_authorizer(
        mut self,
        authorizer: Arc<dyn crate::cert_auth::HttpAuthorizer>,
        region: &str,
        account: &str,
    ) -> DataPlaneState {
        self.cert_authorizer = Some(authorizer);
        self.arn_prefix = format!("arn:aws:iot:{region}:{account}:");
        self
    }

    /// Publishes straight into the broker: the message is routed (and a retained one stored
    /// in memory) before this returns, so a GetRetainedMessage that follows sees it; a QoS 1
    /// publish also waits until what must be durable is committed.
    async fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> Result<(), ReasonCode> {
        let stored = self
            .broker
            .publish_with(topic, payload, qos, retain, &properties)?;
        if qos != QoS::AtMostOnce && !stored.await.unwrap_or(false) {
            return Err(ReasonCode::UnspecifiedError);
        }
        Ok(())
    }
}

/// The data-plane router, behind its own SigV4 verification; merge it with
/// [`crate::control_plane`] on one listener (no path is served by both).
pub fn data_plane(state: Arc<DataPlaneState>) -> Router {
    let routes: Router<Arc<DataPlaneState>> = Router::new()
        .route(
            "/things/{thingName}/shadow",
            get(get_thing_shadow)
                .post(update_thing_shadow)
                .delete(delete_thing_shadow),
        )
        .route(
            "/api/things/shadow/ListNamedShadowsForThing/{thingName}",
            get(list_named_shadows),
        )
        .route("/topics/{*topic}", axum::routing::post(publish))
        .route("/retainedMessage", get(list_retained_messages))
        .route("/retainedMessage/{*topic}", get(get_retained_message));
    routes
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_signature,
        ))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

// --- request ids, errors, signatures -------------------------------------------------------

/// The id of a request: the `x-amzn-RequestId` header and the `traceId` of bodies.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

async fn request_id(mut request: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert("x-amzn-RequestId", value);
    }
    if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
        headers.insert(header::DATE, date);
    }
    response
}

/// An `iot-data` error: status, exception name and message.
#[derive(Debug, Clone)]
struct DataError {
    status: u16,
    code: &'static str,
    message: String,
}

impl DataError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        DataError {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidRequestException", message)
    }

    fn response(self, trace_id: &str) -> Response {
        let body = json!({"message": self.message, "traceId": trace_id});
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert("x-amzn-ErrorType", HeaderValue::from_static(self.code));
        response
    }
}

impl From<ShadowError> for DataError {
    fn from(e: ShadowError) -> Self {
        DataError::new(e.http_status(), e.aws_error_type(), e.message)
    }
}

async fn require_signature(
    State(state): State<Arc<DataPlaneState>>,
    request: Request,
    next: Next,
) -> Response {
    let trace = request
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return DataError::new(
                413,
                "RequestEntityTooLargeException",
                "The payload exceeds the maximum size allowed",
            )
            .response(&trace);
        }
    };
    if let Some(response) = certificate_authenticated(&state, &parts, &trace) {
        return match response {
            Ok(()) => {
                next.run(Request::from_parts(parts, Body::from(bytes)))
                    .await
            }
            Err(refusal) => refusal,
        };
    }
    let verified = crate::sigv4::verify(&state.verifier, &state.credentials, &parts, &bytes);
    match verified {
        Ok(identity) => {
            parts.extensions.insert(identity);
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(error) => {
            tracing::debug!(%error, path = %parts.uri.path(), "iot-data request refused: bad signature");
            ApiError::from_sigv4(&error).into_response()
        }
    }
}

/// For a request with no SigV4 signature that came over TLS with a client certificate: `Some`
/// with the authorization decision by IoT policies. `None` means "check SigV4".
fn certificate_authenticated(
    state: &DataPlaneState,
    parts: &axum::http::request::Parts,
    trace: &str,
) -> Option<Result<(), Response>> {
    let signed = parts.headers.contains_key(header::AUTHORIZATION)
        || parts
            .uri
            .query()
            .is_some_and(|q| q.contains("X-Amz-Signature="));
    if signed {
        return None;
    }
    let certificate = parts
        .extensions
        .get::<thingd_broker::ConnectionInfo>()
        .and_then(|info| info.principal.clone())?;
    let forbidden =
        |message: &str| DataError::new(403, "ForbiddenException", message).response(trace);
    let Some(authorizer) = &state.cert_authorizer else {
        return Some(Err(forbidden("Certificate authentication is not enabled")));
    };
    let query = query(&parts.uri).unwrap_or_default();
    let Some(needed) =
        crate::cert_auth::required_permissions(&parts.method, parts.uri.path(), &query)
    else {
        return Some(Err(forbidden("Forbidden")));
    };
    for (action, resource) in needed {
        let resource = if resource == "*" {
            resource
        } else {
            format!("{}{resource}", state.arn_prefix)
        };
        if !authorizer.allows(&certificate, &action, &resource) {
            tracing::debug!(
                certificate,
                action = action.name(),
                resource,
                "iot-data request refused by policy"
            );
            return Some(Err(forbidden("Forbidden")));
        }
    }
    Some(Ok(()))
}

/// The query parameters (the last value wins for a repeated key).
fn query(uri: &axum::http::Uri) -> Result<HashMap<String, String>, DataError> {
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| DataError::invalid(format!("Invalid query string: {e}")))?;
    Ok(pairs.0.into_iter().collect())
}

fn json_response(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Runs a handler body and turns its error into the `iot-data` error response.
fn finish(trace: &str, result: Result<Response, DataError>) -> Response {
    result.unwrap_or_else(|e| e.response(trace))
}

// --- shadows -------------------------------------------------------------------------------

fn thing_name(name: &str) -> Result<ThingName, DataError> {
    ThingName::new(name).map_err(|e| {
        DataError::invalid(format!(
            "1 validation error detected: Value '{name}' at 'thingName' failed to satisfy constraint: {e}"
        ))
    })
}

fn shadow_id(thing: &str, uri: &axum::http::Uri) -> Result<ShadowId, DataError> {
    let thing = thing_name(thing)?;
    let q = query(uri)?;
    match q.get("name") {
        None => Ok(ShadowId::classic(thing)),
        Some(name) => {
            let shadow = thingd_shadow::ShadowName::new(name).map_err(|e| {
                DataError::invalid(format!(
                    "1 validation error detected: Value '{name}' at 'shadowName' failed to satisfy constraint: {e}"
                ))
            })?;
            Ok(ShadowId::named(thing, shadow))
        }
    }
}

async fn get_thing_shadow(
    State(state): State<Arc<DataPlaneState>>,
    Path(thing): Path<String>,
    Extension(RequestId(trace)): Extension<RequestId>,
    uri: Uri,
) -> Response {
    let result = async {
        let id = shadow_id(&thing, &uri)?;
        Ok(json_response(state.shadows.get(&id).await?))
    }
    .await;
    finish(&trace, result)
}

async fn update_thing_shadow(
    State(state): State<Arc<DataPlaneState>>,
    Path(thing): Path<String>,
    Extension(RequestId(trace)): Extension<RequestId>,
    uri: Uri,
    payload: Bytes,
) -> Response {
    let result = async {
        let id = shadow_id(&thing, &uri)?;
        let outcome = state.shadows.update(&id, payload).await?;
        Ok(json_response(outcome.accepted))
    }
    .await;
    finish(&trace, result)
}

async fn delete_thing_shadow(
    State(state): State<Arc<DataPlaneState>>,
    Path(thing): Path<String>,
    Extension(RequestId(trace)): Extension<RequestId>,
    uri: Uri,
) -> Response {
    let result = async {
        let id = shadow_id(&thing, &uri)?;
        Ok(json_response(state.shadows.delete(&id, None).await?))
    }
    .await;
    finish(&trace, result)
}

async fn list_named_shadows(
    State(state): State<Arc<DataPlaneState>>,
    Path(thing): Path<String>,
    Extension(RequestId(trace)): Extension<RequestId>,
    uri: Uri,
) -> Response {
    let result = async {
        let thing = thing_name(&thing)?;
        let q = query(&uri)?;
        let size = match q.get("pageSize") {
            None => DEFAULT_PAGE_SIZE,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
                _ => {
                    return Err(DataError::invalid(format!(
                        "1 validation error detected: Value '{v}' at 'pageSize' failed to satisfy constraint: Member must have value between 1 and {MAX_PAGE_SIZE}"
                    )));
                }
            },
        };
        let page = state
            .shadows
            .list_named(&thing, q.get("nextToken").map(String::as_str), size)
            .await?;
        let mut body = Map::new();
        body.insert("results".to_owned(), json!(page.results));
        if let Some(token) = page.next_token {
            body.insert("nextToken".to_owned(), Value::from(token));
        }
        body.insert("timestamp".to_owned(), Value::from(crate::wire::now()));
        Ok(json_response(serde_json::to_vec(&Value::Object(body)).unwrap_or_default()))
    }
    .await;
    finish(&trace, result)
}

// --- publish -------------------------------------------------------------------------------

fn parse_bool(field: &str, value: Option<&String>) -> Result<bool, DataError> {
    match value.map(String::as_str) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(DataError::invalid(format!(
            "Invalid value '{v}' for {field}"
        ))),
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, DataError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| DataError::invalid(format!("Invalid {name} header")))
        })
        .transpose()
}

fn base64_header(headers: &HeaderMap, name: &str) -> Result<Option<Vec<u8>>, DataError> {
    header_text(headers, name)?
        .map(|text| {
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| DataError::invalid(format!("{name} is not valid base64")))
        })
        .transpose()
}

/// The MQTT 5 properties of an HTTPS publish, from its query and `x-amz-mqtt5-*` headers.
fn publish_properties(
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    payload: &[u8],
) -> Result<Properties, DataError> {
    let mut p = Properties::default();
    if let Some(ct) = q.get("contentType") {
        p.content_type = Some(ByteStr::from(ct.as_str()));
    }
    if let Some(rt) = q.get("responseTopic") {
        validate_topic(rt, "responseTopic")?;
        p.response_topic = Some(ByteStr::from(rt.as_str()));
    }
    if let Some(expiry) = q.get("messageExpiry") {
        let secs = expiry
            .parse::<u64>()
            .map_err(|_| DataError::invalid(format!("Invalid messageExpiry '{expiry}'")))?;
        p.message_expiry_interval = Some(u32::try_from(secs).unwrap_or(u32::MAX));
    }
    if let Some(format) = header_text(headers, "x-amz-mqtt5-payload-format-indicator")? {
        match format {
            "UNSPECIFIED_BYTES" => p.payload_format_indicator = Some(0),
            "UTF8_DATA" => {
                if std::str::from_utf8(payload).is_err() {
                    return Err(DataError::invalid(
                        "The payload is not UTF-8 but the payload format indicator says UTF8_DATA",
                    ));
                }
                p.payload_format_indicator = Some(1);
            }
            other => {
                return Err(DataError::invalid(format!(
                    "Invalid x-amz-mqtt5-payload-format-indicator '{other}'"
                )));
            }
        }
    }
    if let Some(data) = base64_header(headers, "x-amz-mqtt5-correlation-data")? {
        p.correlation_data = Some(data.into());
    }
    if let Some(json) = base64_header(headers, "x-amz-mqtt5-user-properties")? {
        let bad = || {
            DataError::invalid(
                "x-amz-mqtt5-user-properties must be a base64 JSON array of objects with string values",
            )
        };
        let list: Vec<Map<String, Value>> = serde_json::from_slice(&json).map_err(|_| bad())?;
        for pair in list {
            for (k, v) in pair {
                let v = v.as_str().ok_or_else(bad)?;
                p.user_properties
                    .push((ByteStr::from(k.as_str()), ByteStr::from(v)));
            }
        }
    }
    Ok(p)
}

/// A topic an HTTPS publish may use: what the broker would accept from a device (so a bad
/// topic is a 400 here and never reaches the broker).
fn validate_topic(topic: &str, field: &str) -> Result<(), DataError> {
    let limits = thingd_topic::TopicLimits::default();
    if let Err(e) = thingd_topic::validate_topic_name(topic, &limits) {
        return Err(DataError::invalid(format!(
            "Invalid {field} '{topic}': {e}"
        )));
    }
    if topic.starts_with('$') && !topic.starts_with("$aws/") {
        return Err(DataError::invalid(format!(
            "Invalid {field} '{topic}': reserved topic"
        )));
    }
    Ok(())
}

async fn publish(
    State(state): State<Arc<DataPlaneState>>,
    Path(topic): Path<String>,
    Extension(RequestId(trace)): Extension<RequestId>,
    uri: Uri,
    headers: HeaderMap,
    payload: Bytes,
) -> Response {
    let result = async {
        validate_topic(&topic, "topic")?;
        let q = query(&uri)?;
        let qos = match q.get("qos").map(String::as_str) {
            None | Some("0") => QoS::AtMostOnce,
            Some("1") => QoS::AtLeastOnce,
            Some(v) => {
                return Err(DataError::invalid(format!(
                    "Invalid qos '{v}': must be 0 or 1"
                )));
            }
        };
        let retain = parse_bool("retain", q.get("retain"))?;
        if retain && topic.starts_with('$') {
            return Err(DataError::new(
                403,
                "ForbiddenException",
                "Retained messages cannot be published to reserved topics",
            ));
        }
        if payload.len() > MAX_PUBLISH_PAYLOAD {
            return Err(DataError::new(
                413,
                "RequestEntityTooLargeException",
                "The payload exceeds the maximum size allowed",
            ));
        }
        let properties = publish_properties(&q, &headers, &payload)?;
        state
            .publish(&topic, payload, qos, retain, properties)
            .await
            .map_err(|rc| match rc {
                ReasonCode::UnspecifiedError => DataError::new(
                    503,
                    "ServiceUnavailableException",
                    "The message could not be stored; try again.",
                ),
                rc => DataError::invalid(format!("The broker refused the message: {rc:?}")),
            })?;
        let body = json!({"message": "OK", "traceId": trace});
        Ok(json_response(body.to_string().into_bytes()))
    }
    .await;
    finish(&trace, result)
}

// --- retained messages ---------------------------------------------------------------------

fn user_properties_b64(p: &Properties) -> Option<String> {
    if p.user_properties.is_empty() {
        return None;
    }
    let list: Vec<Value> = p
        .user_properties
        .iter()
        .map(|(k, v)| {
            let mut o = Map::new();
            o.insert(k.to_string(), Value::from(v.to_string()));
            Value::Object(o)
        })
        .collect();
    let text = Value::Array(list).to_string();
    Some(base64::engine::general_purpose::STANDARD.encode(text))
}

async fn get_retained_message(
    State(state): State<Arc<DataPlaneState>>,
    Path(topic): Path<String>,
    Extension(RequestId(trace)): Extension<RequestId>,
) -> Response {
    let result = (|| {
        let m = state.broker.retained_message(&topic).ok_or_else(|| {
            DataError::new(
                404,
                "ResourceNotFoundException",
                format!("No retained message exists for topic: '{topic}'"),
            )
        })?;
        let mut body = Map::new();
        body.insert("topic".to_owned(), Value::from(m.topic));
        body.insert(
            "payload".to_owned(),
            Value::from(base64::engine::general_purpose::STANDARD.encode(&m.payload)),
        );
        body.insert("qos".to_owned(), Value::from(m.qos as u8));
        if let Some(up) = user_properties_b64(&m.properties) {
            body.insert("userProperties".to_owned(), Value::from(up));
        }
        Ok(json_response(
            serde_json::to_vec(&Value::Object(body)).unwrap_or_default(),
        ))
    })();
    finish(&trace, result)
}

async fn list_retained_messages(
    State(state): State<Arc<DataPlaneState>>,
    Extension(RequestId(trace)): Extension<RequestId>,
    uri: Uri,
) -> Response {
    let result = (|| {
        let q = query(&uri)?;
        let size = match q.get("maxResults") {
            None => MAX_RETAINED_PAGE,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_RETAINED_PAGE).contains(&n) => n,
                _ => {
                    return Err(DataError::invalid(format!(
                        "1 validation error detected: Value '{v}' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and {MAX_RETAINED_PAGE}"
                    )));
                }
            },
        };
        let after = match q.get("nextToken").filter(|t| !t.is_empty()) {
            None => None,
            Some(token) => Some(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(token)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| DataError::invalid("The specified nextToken is not valid."))?,
            ),
        };
        let all = state.broker.retained_messages();
        let mut rest = all
            .into_iter()
            .filter(|m| after.as_deref().is_none_or(|a| m.topic.as_str() > a));
        let page: Vec<_> = rest.by_ref().take(size).collect();
        let more = rest.next().is_some();
        let topics: Vec<Value> = page
            .iter()
            .map(|m| {
                json!({
                    "topic": m.topic,
                    "payloadSize": m.payload.len(),
                    "qos": m.qos as u8,
                })
            })
            .collect();
        let mut body = Map::new();
        body.insert("retainedTopics".to_owned(), Value::Array(topics));
        if more && let Some(last) = page.last() {
            body.insert(
                "nextToken".to_owned(),
                Value::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&last.topic)),
            );
        }
        Ok(json_response(
            serde_json::to_vec(&Value::Object(body)).unwrap_or_default(),
        ))
    })();
    finish(&trace, result)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;
    use tower::ServiceExt as _;

    use super::*;
    use crate::test_support::{AKID, SECRET, TestApi};

    struct Both {
        _api: TestApi,
        router: Router,
        broker: Broker,
        _stop: tokio_util::sync::DropGuard,
    }

    async fn both() -> Both {
        let api = TestApi::new();
        let store = api.state.store.clone();
        let broker = Broker::new(
            thingd_broker::BrokerConfig::default(),
            store.clone(),
            Arc::new(thingd_broker::AllowAll),
        )
        .unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let shadows = ShadowService::start(
            &broker,
            store,
            thingd_shadow::ShadowLimits::default(),
            stop.clone(),
        )
        .await
        .unwrap();
        let dp = Arc::new(DataPlaneState::new(
            shadows,
            broker.clone(),
            api.state.credentials.clone(),
        ));
        let router = crate::control_plane(api.state.clone()).merge(data_plane(dp));
        Both {
            _api: api,
            router,
            broker,
            _stop: stop.drop_guard(),
        }
    }

    /// Sends a request signed for `service`; returns (status, x-amzn-ErrorType, body).
    async fn call(
        router: &Router,
        service: &str,
        method: &str,
        path: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> (u16, Option<String>, Value) {
        let uri = format!("http://localhost{path}");
        let mut headers = vec![("host", "localhost")];
        headers.extend_from_slice(extra);
        let identity = Credentials::new(AKID, SECRET, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let signable = SignableRequest::new(
            method,
            &uri,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut builder = http::Request::builder().method(method).uri(&uri);
        for (name, value) in &headers {
            builder = builder.header(*name, *value);
        }
        let mut request = builder.body(body.to_vec()).unwrap();
        instructions.apply_to_request_http1x(&mut request);
        let response = router
            .clone()
            .oneshot(request.map(Body::from))
            .await
            .unwrap();
        let status = response.status().as_u16();
        let error = response
            .headers()
            .get("x-amzn-ErrorType")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let request_id = response
            .headers()
            .get("x-amzn-RequestId")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if let Some(trace) = body.get("traceId") {
            assert_eq!(
                trace.as_str(),
                request_id.as_deref(),
                "traceId = request id"
            );
        }
        (status, error, body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_plane_accepts_only_its_own_signing_names() {
        let b = both().await;
        let r = &b.router;
        for service in ["iotdata", "iotdevicegateway"] {
            let (status, error, _) = call(r, service, "GET", "/things/t1/shadow", b"", &[]).await;
            assert_eq!(
                (status, error.as_deref()),
                (404, Some("ResourceNotFoundException"))
            );
            let (status, _, _) = call(r, service, "GET", "/things", b"", &[]).await;
            assert!(
                (400..500).contains(&status) && status != 404,
                "{service} on /things: {status}"
            );
        }
        for service in ["iot", "execute-api"] {
            let (status, _, _) = call(r, service, "GET", "/things/t1/shadow", b"", &[]).await;
            assert!(
                (400..500).contains(&status) && status != 404,
                "{service} on a shadow: {status}"
            );
            let (status, _, _) = call(r, service, "GET", "/things", b"", &[]).await;
            assert_eq!(status, 200);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shadow_operations_and_their_errors() {
        let b = both().await;
        let r = &b.router;
        let update = br#"{"state":{"desired":{"on":true}}}"#;
        let (status, _, body) =
            call(r, "iotdata", "POST", "/things/lamp/shadow", update, &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["version"], 1);
        let (status, _, body) = call(r, "iotdata", "GET", "/things/lamp/shadow", b"", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(body["state"]["delta"], json!({"on": true}));
        assert!(body.get("clientToken").is_none());

        let stale = br#"{"state":{"desired":{"on":false}},"version":9}"#;
        let (status, error, body) =
            call(r, "iotdata", "POST", "/things/lamp/shadow", stale, &[]).await;
        assert_eq!((status, error.as_deref()), (409, Some("ConflictException")));
        assert_eq!(body["message"], "Version conflict");
        let (status, error, _) =
            call(r, "iotdata", "POST", "/things/lamp/shadow", b"\xff", &[]).await;
        assert_eq!(
            (status, error.as_deref()),
            (415, Some("UnsupportedDocumentEncodingException"))
        );
        let (status, error, _) =
            call(r, "iotdata", "GET", "/things/bad%20name/shadow", b"", &[]).await;
        assert_eq!(
            (status, error.as_deref()),
            (400, Some("InvalidRequestException"))
        );

        for name in ["b", "a", "c"] {
            let path = format!("/things/lamp/shadow?name={name}");
            assert_eq!(call(r, "iotdata", "POST", &path, update, &[]).await.0, 200);
        }
        let list = "/api/things/shadow/ListNamedShadowsForThing/lamp";
        let (_, _, page) = call(r, "iotdata", "GET", &format!("{list}?pageSize=2"), b"", &[]).await;
        assert_eq!(page["results"], json!(["a", "b"]));
        let token = page["nextToken"].as_str().unwrap().to_owned();
        let (_, _, page) = call(
            r,
            "iotdata",
            "GET",
            &format!("{list}?pageSize=2&nextToken={token}"),
            b"",
            &[],
        )
        .await;
        assert_eq!(page["results"], json!(["c"]));
        assert!(page.get("nextToken").is_none());
        let (status, _, _) = call(
            r,
            "iotdata",
            "GET",
            &format!("{list}?pageSize=101"),
            b"",
            &[],
        )
        .await;
        assert_eq!(status, 400);

        let (status, _, body) = call(
            r,
            "iotdata",
            "DELETE",
            "/things/lamp/shadow?name=b",
            b"",
            &[],
        )
        .await;
        assert_eq!((status, body["version"].clone()), (200, json!(1)));
        let (status, error, body) = call(
            r,
            "iotdata",
            "DELETE",
            "/things/lamp/shadow?name=b",
            b"",
            &[],
        )
        .await;
        assert_eq!(
            (status, error.as_deref()),
            (404, Some("ResourceNotFoundException"))
        );
        assert_eq!(body["message"], "No shadow exists with name: 'b'");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publish_and_retained_messages() {
        let b = both().await;
        let r = &b.router;
        let mut sub = b.broker.internal_client("listener");
        sub.subscribe("room/+/temp", QoS::AtLeastOnce)
            .await
            .unwrap();

        let props = base64::engine::general_purpose::STANDARD.encode(r#"[{"a":"1"},{"b":"2"}]"#);
        let corr = base64::engine::general_purpose::STANDARD.encode("id-7");
        let (status, _, body) = call(
            r,
            "iotdata",
            "POST",
            "/topics/room%2F1%2Ftemp?qos=1&retain=true&contentType=text%2Fplain",
            b"21.5",
            &[
                ("x-amz-mqtt5-user-properties", props.as_str()),
                ("x-amz-mqtt5-payload-format-indicator", "UTF8_DATA"),
                ("x-amz-mqtt5-correlation-data", corr.as_str()),
            ],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["message"], "OK");
        let m = tokio::time::timeout(std::time::Duration::from_secs(5), sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.topic.as_str(), &m.payload[..]),
            ("room/1/temp", &b"21.5"[..])
        );
        assert_eq!(m.properties.user_properties.len(), 2);
        assert_eq!(m.properties.payload_format_indicator, Some(1));
        assert_eq!(m.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(m.properties.correlation_data.as_deref(), Some(&b"id-7"[..]));

        // Literal slashes in the path work too.
        let (status, _, _) = call(
            r,
            "iotdata",
            "POST",
            "/topics/room/2/temp?retain=true",
            b"19",
            &[],
        )
        .await;
        assert_eq!(status, 200);
        for (path, code) in [
            ("/topics/room%2F%2B?qos=0", 400),
            ("/topics/a?qos=2", 400),
            ("/topics/%24aws%2Fx?retain=true", 403),
        ] {
            assert_eq!(
                call(r, "iotdata", "POST", path, b"x", &[]).await.0,
                code,
                "{path}"
            );
        }

        let (status, _, body) = call(r, "iotdata", "GET", "/retainedMessage", b"", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(
            body["retainedTopics"],
            json!([
                {"topic": "room/1/temp", "payloadSize": 4, "qos": 1},
                {"topic": "room/2/temp", "payloadSize": 2, "qos": 0},
            ])
        );
        let (_, _, page) = call(
            r,
            "iotdata",
            "GET",
            "/retainedMessage?maxResults=1",
            b"",
            &[],
        )
        .await;
        let token = page["nextToken"].as_str().unwrap().to_owned();
        let (_, _, page) = call(
            r,
            "iotdata",
            "GET",
            &format!("/retainedMessage?maxResults=1&nextToken={token}"),
            b"",
            &[],
        )
        .await;
        assert_eq!(page["retainedTopics"][0]["topic"], "room/2/temp");
        assert!(page.get("nextToken").is_none());

        let (status, _, body) = call(
            r,
            "iotdata",
            "GET",
            "/retainedMessage/room%2F1%2Ftemp",
            b"",
            &[],
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            body["payload"],
            base64::engine::general_purpose::STANDARD.encode("21.5")
        );
        assert_eq!(body["qos"], 1);
        let up = base64::engine::general_purpose::STANDARD
            .decode(body["userProperties"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&up).unwrap(),
            json!([{"a": "1"}, {"b": "2"}])
        );
        // An empty retained publish deletes.
        assert_eq!(
            call(
                r,
                "iotdata",
                "POST",
                "/topics/room%2F1%2Ftemp?retain=true",
                b"",
                &[]
            )
            .await
            .0,
            200
        );
        let (status, error, _) = call(
            r,
            "iotdata",
            "GET",
            "/retainedMessage/room%2F1%2Ftemp",
            b"",
            &[],
        )
        .await;
        assert_eq!(
            (status, error.as_deref()),
            (404, Some("ResourceNotFoundException"))
        );
    }
}
