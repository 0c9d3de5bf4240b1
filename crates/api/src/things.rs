//! Things: CreateThing, DescribeThing, UpdateThing, DeleteThing, ListThings and
//! ListThingGroupsForThing; and the request helpers the registry handlers share (path
//! labels, query parameters, attribute validation, store errors).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use thingd_store::StoreError;
use thingd_store::registry::page::Page;
use thingd_store::registry::thing_groups;
use thingd_store::registry::things::{
    self, Attributes, NewThing, Thing, ThingFilter, ThingUpdate, TypeChange,
};

use crate::wire::{self, AwsJson, PageRequest, validate_name, validate_registry_name};
use crate::{ApiError, ApiState};

pub(crate) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/things", get(list_things))
        .route(
            "/things/{thingName}",
            get(describe_thing)
                .post(create_thing)
                .patch(update_thing)
                .delete(delete_thing),
        )
        .route(
            "/things/{thingName}/thing-groups",
            get(list_thing_groups_for_thing),
        )
}

// --- shared request helpers -----------------------------------------------------------------

/// The JSON answer of a handler.
pub(crate) type Reply = Result<Json<Value>, ApiError>;

/// An empty output structure.
pub(crate) fn empty() -> Reply {
    Ok(Json(json!({})))
}

/// A store error as an AWS error, with the resource's ARN on ResourceAlreadyExistsException.
pub(crate) fn create_error(error: StoreError, arn: impl FnOnce() -> String) -> ApiError {
    let mut e = ApiError::from(error);
    if e.code == "ResourceAlreadyExistsException" {
        e.resource_arn = Some(arn());
    }
    e
}

/// A path label, percent-decoded, checked as a registry name (`field` names it in errors).
pub(crate) fn name_label(
    label: Result<Path<String>, PathRejection>,
    field: &str,
) -> Result<String, ApiError> {
    let Path(name) = label
        .map_err(|e| ApiError::invalid_request(format!("Invalid {field} in the path: {e}")))?;
    validate_registry_name(field, &name)?;
    Ok(name)
}

/// The query parameters of a request (the last value wins for a repeated key).
pub(crate) struct AwsQuery(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for AwsQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::invalid_request(format!("Invalid query string: {e}")))?;
        Ok(AwsQuery(pairs.0.into_iter().collect()))
    }
}

impl AwsQuery {
    /// A string parameter (absent or empty: `None`).
    pub(crate) fn text(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A string parameter that must be a registry name, if present.
    pub(crate) fn name(&self, key: &str) -> Result<Option<String>, ApiError> {
        match self.text(key) {
            Some(value) => {
                validate_registry_name(key, value)?;
                Ok(Some(value.to_owned()))
            }
            None => Ok(None),
        }
    }

    /// A boolean parameter (`true`/`false`).
    pub(crate) fn flag(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.text(key) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid_request(format!(
                "1 validation error detected: Value '{v}' at '{key}' failed to satisfy constraint: Member must be a boolean"
            ))),
        }
    }

    /// An integer parameter.
    pub(crate) fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.text(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::invalid_request(format!(
                    "1 validation error detected: Value '{v}' at '{key}' failed to satisfy constraint: Member must be a number"
                ))
            }),
        }
    }

    /// `nextToken` + `maxResults` paging.
    pub(crate) fn page(&self) -> Result<PageRequest, ApiError> {
        PageRequest::parse(
            self.text("nextToken"),
            self.int("maxResults")?,
            "maxResults",
        )
    }
}

/// Adds `nextToken` to a listing's output when more items follow this page.
pub(crate) fn with_token<T>(
    mut out: Map<String, Value>,
    request: &PageRequest,
    page: &Page<T>,
) -> Json<Value> {
    if page.more {
        out.insert(
            "nextToken".to_owned(),
            wire::encode_token(request.offset + page.items.len()).into(),
        );
    }
    Json(Value::Object(out))
}

/// Most attributes a thing or group may have.
pub(crate) const MAX_ATTRIBUTES: usize = 50;

/// The `attributePayload` member.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct AttributePayload {
    pub(crate) attributes: Option<BTreeMap<String, String>>,
    pub(crate) merge: Option<bool>,
}

/// Checks attribute names (`[a-zA-Z0-9_.,@/:#-]+`, ≤128) and values
/// (`[a-zA-Z0-9_.,@/:#=\[\]-]*`, ≤800).
pub(crate) fn validate_attributes(field: &str, attributes: &Attributes) -> Result<(), ApiError> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(ApiError::invalid_request(format!(
            "1 validation error detected: Value at '{field}' failed to satisfy constraint: Map must have at most {MAX_ATTRIBUTES} entries"
        )));
    }
    for (name, value) in attributes {
        validate_name(field, name, 1, 128, "[a-zA-Z0-9_.,@/:#-]+", |c| {
            c.is_ascii_alphanumeric() || "_.,@/:#-".contains(c)
        })?;
        validate_name(
            &format!("{field}.{name}"),
            value,
            0,
            800,
            "[a-zA-Z0-9_.,@/:#=\\[\\]-]*",
            |c| c.is_ascii_alphanumeric() || "_.,@/:#=[]-".contains(c),
        )?;
    }
    Ok(())
}

/// A name member of a body, checked as a registry name when present (empty counts as absent).
pub(crate) fn optional_name(
    field: &str,
    value: Option<String>,
) -> Result<Option<String>, ApiError> {
    match value.filter(|v| !v.is_empty()) {
        Some(v) => {
            validate_registry_name(field, &v)?;
            Ok(Some(v))
        }
        None => Ok(None),
    }
}

/// The resource name in an ARN of this kind (`arn:aws:iot:<region>:<account>:<kind>/<name>`).
pub(crate) fn name_in_arn(arn: &str, kind: &str) -> Option<String> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(_), Some("iot"), Some(_), Some(_), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let name = resource.strip_prefix(kind)?.strip_prefix('/')?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// Reads the store off the async workers.
pub(crate) async fn read<T, F>(state: &ApiState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
{
    state
        .blocking(move |store| store.read(f).map_err(ApiError::from))
        .await
}

/// The `GroupNameAndArn` list of some group names.
pub(crate) fn groups_and_arns(state: &ApiState, names: &[String]) -> Value {
    Value::from(
        names
            .iter()
            .map(|name| json!({"groupName": name, "groupArn": state.arns.thing_group(name)}))
            .collect::<Vec<_>>(),
    )
}

// --- handlers -------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct CreateThingInput {
    thing_type_name: Option<String>,
    attribute_payload: Option<AttributePayload>,
    billing_group_name: Option<String>,
}

async fn create_thing(
    State(state): State<Arc<ApiState>>,
    label: Result<Path<String>, PathRejection>,
    AwsJson(input): AwsJson<CreateThingInput>,
) -> Reply {
    let name = name_label(label, "thingName")?;
    let thing_type_name = optional_name("thingTypeName", input.thing_type_name)?;
    let billing_group_name = optional_name("billingGroupName", input.billing_group_name)?;
    let attributes = input
        .attribute_payload
        .and_then(|p| p.attributes)
        .unwrap_or_default();
    validate_attributes("attributePayload.attributes", &attributes)?;
    let new = NewThing {
        name: name.clone(),
        thing_type_name,
        attributes,
        billing_group_name,
    };
    let now = wire::now();
    let (thing, _) = state
        .store
        .transact(move |conn| things::create(conn, new, now))
        .await
        .map_err(|e| create_error(e, || state.arns.thing(&name)))?;
    Ok(Json(json!({
        "thingName": thing.name,
        "thingArn": state.arns.thing(&thing.name),
        "thingId": thing.id,
    })))
}

fn describe(state: &ApiState, thing: &Thing) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("defaultClientId".to_owned(), thing.name.clone().into());
    out.insert("thingName".to_owned(), thing.name.clone().into());
    out.insert("thingId".to_owned(), thing.id.clone().into());
    out.insert("thingArn".to_owned(), state.arns.thing(&thing.name).into());
    if let Some(t) = &thing.thing_type_name {
        out.insert("thingTypeName".to_owned(), t.clone().into());
    }
    out.insert("attributes".to_owned(), json!(thing.attributes));
    out.insert("version".to_owned(), thing.version.into());
    if let Some(b) = &thing.billing_group_name {
        out.insert("billingGroupName".to_owned(), b.clone().into());
    }
    out
}

async fn describe_thing(
    State(state): State<Arc<ApiState>>,
    label: Result<Path<String>, PathRejection>,
) -> Reply {
    let name = name_label(label, "thingName")?;
    let thing = read(&state, move |conn| things::require(conn, &name)).await?;
    Ok(Json(Value::Object(describe(&state, &thing))))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct UpdateThingInput {
    thing_type_name: Option<String>,
    attribute_payload: Option<AttributePayload>,
    expected_version: Option<i64>,
    remove_thing_type: Option<bool>,
}

async fn update_thing(
    State(state): State<Arc<ApiState>>,
    label: Result<Path<String>, PathRejection>,
    AwsJson(input): AwsJson<UpdateThingInput>,
) -> Reply {
    let name = name_label(label, "thingName")?;
    let thing_type_name = optional_name("thingTypeName", input.thing_type_name)?;
    let remove_type = input.remove_thing_type.unwrap_or(false);
    let thing_type = match (thing_type_name, remove_type) {
        (Some(_), true) => {
            return Err(ApiError::invalid_request(
                "You cannot specify both thingTypeName and removeThingType",
            ));
        }
        (Some(t), false) => TypeChange::Set(t),
        (None, true) => TypeChange::Remove,
        (None, false) => TypeChange::Keep,
    };
    let attributes = match input.attribute_payload {
        Some(payload) => {
            let attributes = payload.attributes.unwrap_or_default();
            validate_attributes("attributePayload.attributes", &attributes)?;
            Some((attributes, payload.merge.unwrap_or(false)))
        }
        None => None,
    };
    let update = ThingUpdate {
        thing_type,
        attributes,
        expected_version: input.expected_version,
    };
    state
        .store
        .transact(move |conn| things::update(conn, &name, update))
        .await?;
    empty()
}

async fn delete_thing(
    State(state): State<Arc<ApiState>>,
    label: Result<Path<String>, PathRejection>,
    query: AwsQuery,
) -> Reply {
    let name = name_label(label, "thingName")?;
    let expected = query.int("expectedVersion")?;
    state
        .store
        .transact(move |conn| things::delete(conn, &name, expected))
        .await?;
    empty()
}

async fn list_things(State(state): State<Arc<ApiState>>, query: AwsQuery) -> Reply {
    let page_request = query.page()?;
    let attribute_name = query.text("attributeName").map(str::to_owned);
    let attribute_value = query.text("attributeValue").map(str::to_owned);
    if let Some(n) = &attribute_name {
        validate_attributes(
            "attributeName",
            &Attributes::from([(n.clone(), attribute_value.clone().unwrap_or_default())]),
        )?;
    } else if attribute_value.is_some() {
        return Err(ApiError::invalid_request(
            "attributeValue requires attributeName",
        ));
    }
    let filter = ThingFilter {
        attribute_name,
        attribute_value,
        value_is_prefix: query.flag("usePrefixAttributeValue")?.unwrap_or(false),
        thing_type_name: query.name("thingTypeName")?,
    };
    let (offset, size) = (page_request.offset, page_request.size);
    let page = read(&state, move |conn| {
        things::list(conn, &filter, offset, size)
    })
    .await?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|thing| {
            let mut item = Map::new();
            item.insert("thingName".to_owned(), thing.name.clone().into());
            if let Some(t) = &thing.thing_type_name {
                item.insert("thingTypeName".to_owned(), t.clone().into());
            }
            item.insert("thingArn".to_owned(), state.arns.thing(&thing.name).into());
            item.insert("attributes".to_owned(), json!(thing.attributes));
            item.insert("version".to_owned(), thing.version.into());
            Value::Object(item)
        })
        .collect();
    let mut out = Map::new();
    out.insert("things".to_owned(), items.into());
    Ok(with_token(out, &page_request, &page))
}

async fn list_thing_groups_for_thing(
    State(state): State<Arc<ApiState>>,
    label: Result<Path<String>, PathRejection>,
    query: AwsQuery,
) -> Reply {
    let name = name_label(label, "thingName")?;
    let page_request = query.page()?;
    let (offset, size) = (page_request.offset, page_request.size);
    let page = read(&state, move |conn| {
        thing_groups::groups_for_thing(conn, &name, offset, size)
    })
    .await?;
    let mut out = Map::new();
    out.insert(
        "thingGroups".to_owned(),
        groups_and_arns(&state, &page.items),
    );
    Ok(with_token(out, &page_request, &page))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::test_support::{TestApi, encode};

    #[tokio::test]
    async fn create_describe_update_delete_a_thing() {
        let api = TestApi::new();
        let created = api
            .ok(
                "POST",
                "/things/MyJourneyIoTDevice",
                Some(json!({"attributePayload": {"attributes": {"room": "lab"}}})),
            )
            .await;
        assert_eq!(created["thingName"], "MyJourneyIoTDevice");
        assert_eq!(
            created["thingArn"],
            "arn:aws:iot:us-east-1:123456789012:thing/MyJourneyIoTDevice"
        );
        let id = created["thingId"].as_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);

        // Same configuration: same ids. Different: 409 with the existing id and ARN.
        let again = api
            .ok(
                "POST",
                "/things/MyJourneyIoTDevice",
                Some(json!({"attributePayload": {"attributes": {"room": "lab"}}})),
            )
            .await;
        assert_eq!(again, created);
        let (status, code, body) = api
            .err(
                "POST",
                "/things/MyJourneyIoTDevice",
                Some(json!({"attributePayload": {"attributes": {"room": "hall"}}})),
            )
            .await;
        assert_eq!(
            (status, code.as_str()),
            (409, "ResourceAlreadyExistsException")
        );
        assert_eq!(body["resourceId"], id.as_str());
        assert_eq!(body["resourceArn"], created["thingArn"]);

        let described = api.ok("GET", "/things/MyJourneyIoTDevice", None).await;
        assert_eq!(
            described,
            json!({
                "defaultClientId": "MyJourneyIoTDevice",
                "thingName": "MyJourneyIoTDevice",
                "thingId": id,
                "thingArn": created["thingArn"],
                "attributes": {"room": "lab"},
                "version": 1,
            })
        );

        api.ok(
            "PATCH",
            "/things/MyJourneyIoTDevice",
            Some(json!({"attributePayload": {"attributes": {"temp": "32", "room": ""}, "merge": true}, "expectedVersion": 1})),
        )
        .await;
        let described = api.ok("GET", "/things/MyJourneyIoTDevice", None).await;
        assert_eq!(described["attributes"], json!({"temp": "32"}));
        assert_eq!(described["version"], 2);
        let (status, code, _) = api
            .err(
                "PATCH",
                "/things/MyJourneyIoTDevice",
                Some(json!({"expectedVersion": 1})),
            )
            .await;
        assert_eq!((status, code.as_str()), (409, "VersionConflictException"));

        let (status, code, _) = api
            .err(
                "DELETE",
                "/things/MyJourneyIoTDevice?expectedVersion=1",
                None,
            )
            .await;
        assert_eq!((status, code.as_str()), (409, "VersionConflictException"));
        api.ok(
            "DELETE",
            "/things/MyJourneyIoTDevice?expectedVersion=2",
            None,
        )
        .await;
        api.ok("DELETE", "/things/MyJourneyIoTDevice", None).await;
        let (status, code, body) = api.err("GET", "/things/MyJourneyIoTDevice", None).await;
        assert_eq!((status, code.as_str()), (404, "ResourceNotFoundException"));
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("MyJourneyIoTDevice")
        );
    }

    #[tokio::test]
    async fn names_and_attributes_are_validated_and_refusals_change_nothing() {
        let api = TestApi::new();
        let (status, code, body) = api.err("POST", "/things/a%20b", None).await;
        assert_eq!((status, code.as_str()), (400, "InvalidRequestException"));
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("Value 'a b' at 'thingName' failed to satisfy constraint"),
            "{body}"
        );
        let long = "x".repeat(129);
        let (status, _, _) = api.err("POST", &format!("/things/{long}"), None).await;
        assert_eq!(status, 400);
        let (status, _, _) = api
            .err(
                "POST",
                "/things/t",
                Some(json!({"attributePayload": {"attributes": {"bad name": "v"}}})),
            )
            .await;
        assert_eq!(status, 400);
        let (status, _, _) = api
            .err(
                "POST",
                "/things/t",
                Some(json!({"attributePayload": {"attributes": {"k": "white space"}}})),
            )
            .await;
        assert_eq!(status, 400);
        let (status, code, _) = api
            .err(
                "POST",
                "/things/t",
                Some(json!({"thingTypeName": "missing"})),
            )
            .await;
        assert_eq!((status, code.as_str()), (404, "ResourceNotFoundException"));
        let (status, _, _) = api.err("GET", "/things?maxResults=0", None).await;
        assert_eq!(status, 400);
        let (status, _, _) = api.err("GET", "/things?maxResults=251", None).await;
        assert_eq!(status, 400);
        let (status, _, _) = api
            .err("POST", "/things/t", Some(json!("not an object")))
            .await;
        assert_eq!(status, 400);
        assert_eq!(api.ok("GET", "/things", None).await, json!({"things": []}));
        // Names with ':' arrive percent-encoded.
        let created = api.ok("POST", "/things/my%3Athing", None).await;
        assert_eq!(created["thingName"], "my:thing");
        api.ok("GET", "/things/my%3Athing", None).await;
    }

    #[tokio::test]
    async fn types_on_things_and_the_remove_flag() {
        let api = TestApi::new();
        api.ok("POST", "/thing-types/sensor", None).await;
        api.ok(
            "POST",
            "/things/t",
            Some(json!({"thingTypeName": "sensor"})),
        )
        .await;
        let (status, code, _) = api
            .err(
                "PATCH",
                "/things/t",
                Some(json!({"thingTypeName": "sensor", "removeThingType": true})),
            )
            .await;
        assert_eq!((status, code.as_str()), (400, "InvalidRequestException"));
        api.ok("PATCH", "/things/t", Some(json!({"removeThingType": true})))
            .await;
        let described = api.ok("GET", "/things/t", None).await;
        assert!(described.get("thingTypeName").is_none());
        api.ok("POST", "/thing-types/sensor/deprecate", Some(json!({})))
            .await;
        let (status, code, body) = api
            .err(
                "POST",
                "/things/u",
                Some(json!({"thingTypeName": "sensor"})),
            )
            .await;
        assert_eq!((status, code.as_str()), (400, "InvalidRequestException"));
        assert!(body["message"].as_str().unwrap().contains("depreated"));
    }

    #[tokio::test]
    async fn list_things_filters_and_pages() {
        let api = TestApi::new();
        api.ok("POST", "/thing-types/lamp", None).await;
        for (name, room) in [
            ("a", "kitchen"),
            ("b", "kitchen-2"),
            ("c", "hall"),
            ("d", "kitchen"),
        ] {
            let mut body = json!({"attributePayload": {"attributes": {"room": room}}});
            if name == "d" {
                body["thingTypeName"] = json!("lamp");
            }
            api.ok("POST", &format!("/things/{name}"), Some(body)).await;
        }
        let names = |v: &serde_json::Value| {
            v["things"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["thingName"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let exact = api
            .ok(
                "GET",
                "/things?attributeName=room&attributeValue=kitchen",
                None,
            )
            .await;
        assert_eq!(names(&exact), ["a", "d"]);
        let prefix = api
            .ok(
                "GET",
                "/things?attributeName=room&attributeValue=kitchen&usePrefixAttributeValue=true",
                None,
            )
            .await;
        assert_eq!(names(&prefix), ["a", "b", "d"]);
        let typed = api.ok("GET", "/things?thingTypeName=lamp", None).await;
        assert_eq!(names(&typed), ["d"]);
        assert_eq!(typed["things"][0]["thingTypeName"], "lamp");
        assert_eq!(typed["things"][0]["version"], 1);

        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let path = match &token {
                Some(t) => format!("/things?maxResults=3&nextToken={}", encode(t)),
                None => "/things?maxResults=3".to_owned(),
            };
            let page = api.ok("GET", &path, None).await;
            seen.extend(names(&page));
            match page.get("nextToken") {
                Some(t) => token = Some(t.as_str().unwrap().to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, ["a", "b", "c", "d"]);
    }
}
