//! Thing ↔ principal attachments (§6.9): AttachThingPrincipal, DetachThingPrincipal,
//! ListThingPrincipals(V2), ListPrincipalThings(V2). The principal travels in the
//! `x-amzn-principal` header.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use thingd_store::StoreError;
use thingd_store::registry::security::principals;

use crate::certificates::{Params, with_next};
use crate::policies::{Target, normalize_target, require_target};
use crate::wire::{now, validate_registry_name};
use crate::{ApiError, ApiState};

pub(crate) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route(
            "/things/{thingName}/principals",
            get(list_thing_principals)
                .put(attach_thing_principal)
                .delete(detach_thing_principal),
        )
        .route(
            "/things/{thingName}/principals-v2",
            get(list_thing_principals_v2),
        )
        .route("/principals/things", get(list_principal_things))
        .route("/principals/things-v2", get(list_principal_things_v2))
}

const TYPES: &[&str] = &[principals::EXCLUSIVE, principals::NON_EXCLUSIVE];

/// The `x-amzn-principal` header, normalised; thing groups are not principals.
fn principal(state: &ApiState, headers: &HeaderMap) -> Result<(String, Target), ApiError> {
    let raw = headers
        .get("x-amzn-principal")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ApiError::invalid_request(
                "1 validation error detected: Value null at 'principal' failed to satisfy constraint: Member must not be null",
            )
        })?;
    let (stored, kind) = normalize_target(state, raw)?;
    if let Target::ThingGroup(_) = kind {
        return Err(ApiError::invalid_request(format!(
            "Invalid principal: {raw}"
        )));
    }
    Ok((stored, kind))
}

async fn attach_thing_principal(
    State(state): State<Arc<ApiState>>,
    Path(thing): Path<String>,
    params: Params,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    validate_registry_name("thingName", &thing)?;
    let (stored, kind) = principal(&state, &headers)?;
    let kind_of = params
        .one_of("thingPrincipalType", TYPES)?
        .unwrap_or_else(|| principals::NON_EXCLUSIVE.to_owned());
    state
        .store
        .transact(move |conn| {
            require_target(conn, &stored, &kind)?;
            principals::attach(conn, &thing, &stored, &kind_of, now())
        })
        .await?;
    Ok(Json(json!({})))
}

async fn detach_thing_principal(
    State(state): State<Arc<ApiState>>,
    Path(thing): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    validate_registry_name("thingName", &thing)?;
    let (stored, _) = principal(&state, &headers)?;
    state
        .store
        .transact(move |conn| principals::detach(conn, &thing, &stored))
        .await?;
    Ok(Json(json!({})))
}

async fn thing_principals(
    state: &ApiState,
    thing: String,
) -> Result<Vec<(String, String)>, ApiError> {
    validate_registry_name("thingName", &thing)?;
    let key = thing.clone();
    state
        .blocking(move |store| Ok(store.read(|conn| principals::principals_of_thing(conn, &key))?))
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Failed to list principals for thing {thing} because the thing does not exist in your account"
            ))
        })
}

async fn list_thing_principals(
    State(state): State<Arc<ApiState>>,
    Path(thing): Path<String>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let page = params.token_page()?;
    let all: Vec<String> = thing_principals(&state, thing)
        .await?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let (items, next) = page.page(all);
    Ok(Json(with_next(
        json!({ "principals": items }),
        "nextToken",
        next,
    )))
}

async fn list_thing_principals_v2(
    State(state): State<Arc<ApiState>>,
    Path(thing): Path<String>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let page = params.token_page()?;
    let filter = params.one_of("thingPrincipalType", TYPES)?;
    let all: Vec<Value> = thing_principals(&state, thing)
        .await?
        .into_iter()
        .filter(|(_, t)| filter.as_ref().is_none_or(|f| f == t))
        .map(|(p, t)| json!({ "principal": p, "thingPrincipalType": t }))
        .collect();
    let (items, next) = page.page(all);
    Ok(Json(with_next(
        json!({ "thingPrincipalObjects": items }),
        "nextToken",
        next,
    )))
}

async fn principal_things(
    state: &ApiState,
    headers: &HeaderMap,
) -> Result<Vec<(String, String)>, ApiError> {
    let (stored, kind) = principal(state, headers)?;
    state
        .blocking(move |store| {
            Ok(store.read(|conn| -> Result<_, StoreError> {
                require_target(conn, &stored, &kind)?;
                principals::things_of_principal(conn, &stored)
            })?)
        })
        .await
}

async fn list_principal_things(
    State(state): State<Arc<ApiState>>,
    params: Params,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let page = params.token_page()?;
    let all: Vec<String> = principal_things(&state, &headers)
        .await?
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let (items, next) = page.page(all);
    Ok(Json(with_next(
        json!({ "things": items }),
        "nextToken",
        next,
    )))
}

async fn list_principal_things_v2(
    State(state): State<Arc<ApiState>>,
    params: Params,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let page = params.token_page()?;
    let filter = params.one_of("thingPrincipalType", TYPES)?;
    let all: Vec<Value> = principal_things(&state, &headers)
        .await?
        .into_iter()
        .filter(|(_, t)| filter.as_ref().is_none_or(|f| f == t))
        .map(|(thing, t)| json!({ "thingName": thing, "thingPrincipalType": t }))
        .collect();
    let (items, next) = page.page(all);
    Ok(Json(with_next(
        json!({ "principalThingObjects": items }),
        "nextToken",
        next,
    )))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::test_support::TestApi;

    #[tokio::test]
    async fn thing_principals() {
        let api = TestApi::new();
        api.ok("POST", "/things/dev-1", Some(json!({}))).await;
        api.ok("POST", "/things/dev-2", Some(json!({}))).await;
        let cert = api
            .ok("POST", "/keys-and-certificate?setAsActive=true", None)
            .await;
        let arn = cert["certificateArn"].as_str().unwrap().to_owned();
        let h = [("x-amzn-principal", arn.as_str())];
        let r = api
            .call_with("PUT", "/things/dev-1/principals", None, &h)
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = api
            .call_with("PUT", "/things/dev-1/principals", None, &h)
            .await;
        assert_eq!(r.status, 200, "attaching again is a no-op");
        let r = api
            .call_with("PUT", "/things/nope/principals", None, &h)
            .await;
        assert_eq!(
            (r.status.as_u16(), r.error.as_deref()),
            (404, Some("ResourceNotFoundException"))
        );
        let ghost = format!("arn:aws:iot:us-east-1:123456789012:cert/{}", "e".repeat(64));
        let r = api
            .call_with(
                "PUT",
                "/things/dev-1/principals",
                None,
                &[("x-amzn-principal", ghost.as_str())],
            )
            .await;
        assert_eq!(r.status.as_u16(), 404);
        let r = api
            .call_with("PUT", "/things/dev-1/principals", None, &[])
            .await;
        assert_eq!(r.status.as_u16(), 400);
        let r = api
            .call_with(
                "PUT",
                "/things/dev-2/principals?thingPrincipalType=EXCLUSIVE_THING",
                None,
                &h,
            )
            .await;
        assert_eq!(r.status.as_u16(), 400, "already attached elsewhere: {r:?}");
        let r = api
            .call_with("PUT", "/things/dev-2/principals", None, &h)
            .await;
        assert_eq!(r.status, 200);

        let listed = api.ok("GET", "/things/dev-1/principals", None).await;
        assert_eq!(listed["principals"], json!([arn]));
        let v2 = api.ok("GET", "/things/dev-1/principals-v2", None).await;
        assert_eq!(
            v2["thingPrincipalObjects"][0]["thingPrincipalType"],
            "NON_EXCLUSIVE_THING"
        );
        let (status, _, body) = api.err("GET", "/things/nope/principals", None).await;
        assert_eq!(status, 404);
        assert!(body["message"].as_str().unwrap().contains("does not exist"));
        let things = api
            .call_with("GET", "/principals/things?maxResults=1", None, &h)
            .await;
        assert_eq!(things.body["things"], json!(["dev-1"]));
        let token = things.body["nextToken"].as_str().unwrap().to_owned();
        let things = api
            .call_with(
                "GET",
                &format!("/principals/things?maxResults=1&nextToken={token}"),
                None,
                &h,
            )
            .await;
        assert_eq!(things.body["things"], json!(["dev-2"]));
        assert!(things.body.get("nextToken").is_none());
        let objects = api
            .call_with("GET", "/principals/things-v2", None, &h)
            .await;
        assert_eq!(
            objects.body["principalThingObjects"][1]["thingName"],
            "dev-2"
        );

        // The certificate cannot go while attached; the thing neither.
        let id = cert["certificateId"].as_str().unwrap();
        api.ok(
            "PUT",
            &format!("/certificates/{id}?newStatus=INACTIVE"),
            None,
        )
        .await;
        let (status, code, _) = api
            .err("DELETE", &format!("/certificates/{id}"), None)
            .await;
        assert_eq!((status, code.as_str()), (409, "DeleteConflictException"));
        for thing in ["dev-1", "dev-2"] {
            let r = api
                .call_with("DELETE", &format!("/things/{thing}/principals"), None, &h)
                .await;
            assert_eq!(r.status, 200);
        }
        let things = api.call_with("GET", "/principals/things", None, &h).await;
        assert_eq!(things.body["things"], json!([]));
        api.ok("DELETE", &format!("/certificates/{id}"), None).await;
    }
}
