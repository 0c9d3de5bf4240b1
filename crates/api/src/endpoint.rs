//! DescribeEndpoint (`GET /endpoint?endpointType=`): the host name devices connect to.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::things::{AwsQuery, Reply};
use crate::wire::validate_name;
use crate::{ApiError, ApiState};

pub(crate) fn routes() -> Router<Arc<ApiState>> {
    Router::new().route("/endpoint", get(describe_endpoint))
}

/// The endpoint types AWS knows. thingd serves all of them on one host: MQTT and the data
/// plane (`iot:Data-ATS`, and the legacy `iot:Data`), the jobs data plane (`iot:Jobs`) and
/// the credentials provider (`iot:CredentialProvider`).
const ENDPOINT_TYPES: &[&str] = &[
    "iot:Data",
    "iot:Data-ATS",
    "iot:CredentialProvider",
    "iot:Jobs",
];

async fn describe_endpoint(State(state): State<Arc<ApiState>>, query: AwsQuery) -> Reply {
    if let Some(kind) = query.text("endpointType") {
        validate_name("endpointType", kind, 0, 128, "[\\s\\S]*", |_| true)?;
        if !ENDPOINT_TYPES.iter().any(|t| t.eq_ignore_ascii_case(kind)) {
            return Err(ApiError::invalid_request(format!(
                "Endpoint type {kind} not recognized."
            )));
        }
    }
    Ok(Json(json!({"endpointAddress": state.data_endpoint})))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::test_support::{DATA_ENDPOINT, TestApi};

    #[tokio::test]
    async fn every_known_type_gets_the_data_endpoint() {
        let api = TestApi::new();
        for path in [
            "/endpoint",
            "/endpoint?endpointType=iot%3AData-ATS",
            "/endpoint?endpointType=iot%3AData",
            "/endpoint?endpointType=iot%3AJobs",
            "/endpoint?endpointType=iot%3ACredentialProvider",
        ] {
            assert_eq!(
                api.ok("GET", path, None).await,
                json!({"endpointAddress": DATA_ENDPOINT})
            );
        }
        let (status, code, body) = api.err("GET", "/endpoint?endpointType=nope", None).await;
        assert_eq!((status, code.as_str()), (400, "InvalidRequestException"));
        assert_eq!(body["message"], "Endpoint type nope not recognized.");
    }
}
