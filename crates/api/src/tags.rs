//! Tagging: TagResource (`POST /tags`), UntagResource (`POST /untag`) and
//! ListTagsForResource (`GET /tags?resourceArn=`), for any taggable resource of this
//! installation, stored by ARN (`thingd_store::registry::tags`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use thingd_store::registry::page::Page;
use thingd_store::registry::tags;

use crate::things::{AwsQuery, Reply, empty, read, with_token};
use crate::wire::{AwsJson, validate_name};
use crate::{ApiError, ApiState};

pub(crate) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/tags", get(list_tags_for_resource).post(tag_resource))
        .route("/untag", post(untag_resource))
}

/// A `Tag` as the wire has it (capitalised members).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Tag {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value", default)]
    value: Option<String>,
}

fn validate_key(field: &str, key: &str) -> Result<(), ApiError> {
    validate_name(
        field,
        key,
        1,
        128,
        "^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$",
        |c| {
            c.is_alphabetic()
                || c.is_numeric()
                || (c.is_whitespace() && !c.is_control())
                || "_.:/=+-@".contains(c)
        },
    )
}

/// Checks tag keys (1..128, letters, digits, spaces and `_.:/=+-@`) and values (0..256);
/// returns them as (key, value) pairs.
pub(crate) fn validate_tags(input: Vec<Tag>) -> Result<Vec<tags::Tag>, ApiError> {
    let mut out = Vec::with_capacity(input.len());
    for tag in input {
        validate_key("tags.member.Key", &tag.key)?;
        let value = tag.value.unwrap_or_default();
        validate_name("tags.member.Value", &value, 0, 256, "[\\s\\S]*", |_| true)?;
        out.push((tag.key, value));
    }
    Ok(out)
}

/// Checks that `arn` names an existing taggable resource of this installation.
async fn require_taggable(state: &Arc<ApiState>, arn: &str) -> Result<(), ApiError> {
    let prefix = format!("arn:aws:iot:{}:{}:", state.arns.region, state.arns.account);
    let not_found = || ApiError::not_found(format!("Resource {arn} cannot be found."));
    let Some(resource) = arn.strip_prefix(&prefix) else {
        if arn.starts_with("arn:") {
            return Err(not_found());
        }
        return Err(ApiError::invalid_request(format!(
            "1 validation error detected: Value '{arn}' at 'resourceArn' failed to satisfy constraint: Member must be an ARN"
        )));
    };
    if resource.starts_with("thing/") {
        return Err(ApiError::invalid_request(
            "Things cannot be tagged; tag their thing type or thing group",
        ));
    }
    let resource = resource.to_owned();
    match read(state, move |conn| tags::resource_exists(conn, &resource)).await? {
        Some(true) => Ok(()),
        _ => Err(not_found()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct TagResourceInput {
    resource_arn: Option<String>,
    tags: Option<Vec<Tag>>,
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| {
        ApiError::invalid_request(format!(
            "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

async fn tag_resource(
    State(state): State<Arc<ApiState>>,
    AwsJson(input): AwsJson<TagResourceInput>,
) -> Reply {
    let arn = required(input.resource_arn, "resourceArn")?;
    let new_tags = validate_tags(required(input.tags, "tags")?)?;
    require_taggable(&state, &arn).await?;
    state
        .store
        .transact(move |conn| tags::put(conn, &arn, &new_tags))
        .await?;
    empty()
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct UntagResourceInput {
    resource_arn: Option<String>,
    tag_keys: Option<Vec<String>>,
}

async fn untag_resource(
    State(state): State<Arc<ApiState>>,
    AwsJson(input): AwsJson<UntagResourceInput>,
) -> Reply {
    let arn = required(input.resource_arn, "resourceArn")?;
    let keys = required(input.tag_keys, "tagKeys")?;
    for key in &keys {
        validate_key("tagKeys.member", key)?;
    }
    require_taggable(&state, &arn).await?;
    state
        .store
        .transact(move |conn| tags::remove(conn, &arn, &keys))
        .await?;
    empty()
}

async fn list_tags_for_resource(State(state): State<Arc<ApiState>>, query: AwsQuery) -> Reply {
    let arn = required(query.text("resourceArn").map(str::to_owned), "resourceArn")?;
    let page_request = query.page()?;
    require_taggable(&state, &arn).await?;
    let all = read(&state, move |conn| tags::list(conn, &arn)).await?;
    let page = Page::slice(all, page_request.offset, page_request.size);
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|(key, value)| json!({"Key": key, "Value": value}))
        .collect();
    let mut out = Map::new();
    out.insert("tags".to_owned(), items.into());
    Ok(with_token(out, &page_request, &page))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::test_support::TestApi;
    use crate::test_support::encode;

    const GROUP: &str = "arn:aws:iot:us-east-1:123456789012:thinggroup/g";

    #[tokio::test]
    async fn tag_untag_and_list() {
        let api = TestApi::new();
        api.ok(
            "POST",
            "/thing-groups/g",
            Some(json!({"tags": [{"Key": "env", "Value": "dev"}]})),
        )
        .await;
        let list = format!("/tags?resourceArn={}", encode(GROUP));
        assert_eq!(
            api.ok("GET", &list, None).await,
            json!({"tags": [{"Key": "env", "Value": "dev"}]})
        );
        api.ok(
            "POST",
            "/tags",
            Some(json!({"resourceArn": GROUP, "tags": [{"Key": "env", "Value": "prod"}, {"Key": "team", "Value": "a b"}]})),
        )
        .await;
        assert_eq!(
            api.ok("GET", &list, None).await["tags"],
            json!([{"Key": "env", "Value": "prod"}, {"Key": "team", "Value": "a b"}])
        );
        api.ok(
            "POST",
            "/untag",
            Some(json!({"resourceArn": GROUP, "tagKeys": ["env", "absent"]})),
        )
        .await;
        assert_eq!(
            api.ok("GET", &list, None).await["tags"],
            json!([{"Key": "team", "Value": "a b"}])
        );

        let missing = "arn:aws:iot:us-east-1:123456789012:thingtype/nope";
        let (status, code, _) = api
            .err(
                "GET",
                &format!("/tags?resourceArn={}", encode(missing)),
                None,
            )
            .await;
        assert_eq!((status, code.as_str()), (404, "ResourceNotFoundException"));
        let (status, _, _) = api
            .err(
                "POST",
                "/tags",
                Some(json!({"resourceArn": missing, "tags": [{"Key": "k", "Value": "v"}]})),
            )
            .await;
        assert_eq!(status, 404);
        let (status, _, _) = api
            .err(
                "POST",
                "/tags",
                Some(json!({"resourceArn": GROUP, "tags": [{"Key": "", "Value": "v"}]})),
            )
            .await;
        assert_eq!(status, 400);
        let (status, _, _) = api.err("POST", "/tags", Some(json!({"tags": []}))).await;
        assert_eq!(status, 400);
        let (status, _, _) = api.err("GET", "/tags", None).await;
        assert_eq!(status, 400);

        // Deleting the group deletes its tags: a new group of that name starts with none.
        api.ok("DELETE", "/thing-groups/g", None).await;
        api.ok("POST", "/thing-groups/g", None).await;
        assert_eq!(api.ok("GET", &list, None).await, json!({"tags": []}));
    }
}
