//! For the handler tests: an `ApiState` on a throwaway data directory, and requests signed by
//! the `aws-sigv4` crate sent through the whole router (SigV4 layer included).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use axum::Router;
use axum::body::Body;
use http::StatusCode;
use parking_lot::RwLock;
use serde_json::Value;
use thingd_auth::{CertificateAuthority, CertificateRegistry};
use thingd_sigv4::{Secret, Verifier};
use thingd_store::Store;
use tower::ServiceExt as _;

use crate::ApiState;
use crate::wire::Arns;

/// The access key the test router accepts.
pub(crate) const AKID: &str = "AKIATHINGDTEST000001";
/// Its secret.
pub(crate) const SECRET: &str = "thingd/test/secret/0123456789abcdefghijk";
/// What DescribeEndpoint answers.
pub(crate) const DATA_ENDPOINT: &str = "iot.thingd.test";

/// A control plane on a temporary directory.
pub(crate) struct TestApi {
    /// Keeps the data directory alive.
    _dir: tempfile::TempDir,
    /// The shared state (its store, ARNs, ...).
    pub(crate) state: Arc<ApiState>,
    router: Router,
}

/// A response: status, the `x-amzn-ErrorType` header if any, and the JSON body (`{}` if empty).
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) error: Option<String>,
    pub(crate) body: Value,
}

impl TestApi {
    /// Opens a store and a CA in a new temporary directory.
    pub(crate) fn new() -> TestApi {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("thingd.db")).expect("store");
        let ca = CertificateAuthority::load_or_create(&dir.path().join("ca"), &[]).expect("ca");
        let registry = CertificateRegistry::load(&store).expect("registry");
        let state = Arc::new(ApiState {
            store,
            ca: Arc::new(ca),
            registry,
            arns: Arns {
                region: "us-east-1".to_owned(),
                account: "123456789012".to_owned(),
            },
            data_endpoint: DATA_ENDPOINT.to_owned(),
            verifier: Verifier::control_plane(),
            credentials: Arc::new(RwLock::new(HashMap::from([(
                AKID.to_owned(),
                Secret::new(SECRET),
            )]))),
        });
        let router = crate::control_plane(state.clone());
        TestApi {
            _dir: dir,
            state,
            router,
        }
    }

    /// Sends a signed request; `path` is the raw (percent-encoded) path with its query.
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.call_with(method, path, body, &[]).await
    }

    /// Like `call`, with extra (signed) headers such as `x-amzn-principal`.
    pub(crate) async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let uri = format!("http://localhost{path}");
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let mut headers = vec![("host", "localhost")];
        if !bytes.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        headers.extend_from_slice(extra);
        let identity = Credentials::new(AKID, SECRET, None, None, "thingd-api-test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("iot")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .expect("signing params")
            .into();
        let signable = SignableRequest::new(
            method,
            &uri,
            headers.iter().copied(),
            SignableBody::Bytes(&bytes),
        )
        .expect("signable request");
        let (instructions, _) = sign(signable, &params).expect("signed").into_parts();
        let mut builder = http::Request::builder().method(method).uri(&uri);
        for (name, value) in &headers {
            builder = builder.header(*name, *value);
        }
        let mut request = builder.body(bytes).expect("request");
        instructions.apply_to_request_http1x(&mut request);
        let response = self
            .router
            .clone()
            .oneshot(request.map(Body::from))
            .await
            .expect("router answers");
        let status = response.status();
        let error = response
            .headers()
            .get("x-amzn-ErrorType")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let body = if bytes.is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            error,
            body,
        }
    }

    /// Sends a signed request and expects 200; returns the body.
    pub(crate) async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let reply = self.call(method, path, body).await;
        assert_eq!(reply.status, StatusCode::OK, "{method} {path}: {reply:?}");
        reply.body
    }

    /// Sends a signed request and expects an error; returns (status, error code, body).
    pub(crate) async fn err(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String, Value) {
        let reply = self.call(method, path, body).await;
        assert_ne!(reply.status, StatusCode::OK, "{method} {path}: {reply:?}");
        (
            reply.status.as_u16(),
            reply.error.unwrap_or_default(),
            reply.body,
        )
    }
}

/// Percent-encodes a query value.
pub(crate) fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
