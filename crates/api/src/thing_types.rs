//! Thing types: CreateThingType, DescribeThingType, UpdateThingType, DeprecateThingType,
//! DeleteThingType and ListThingTypes.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use thingd_store::registry::tags;
use thingd_store::registry::thing_types::{self, ThingType};

use crate::tags::{Tag, validate_tags};
use crate::things::{
    AwsQuery, Reply, create_error, empty, name_label, read, validate_attributes, with_token,
};
use crate::wire::{self, AwsJson, validate_name};
use crate::{ApiError, ApiState};

pub(crate) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/thing-types", get(list_thing_types))
        .route(
            "/thing-types/{thingTypeName}",
            get(describe_thing_type)
                .post(create_thing_type)
                .patch(update_thing_type)
                .delete(delete_thing_type),
        )
        .route(
            "/thing-types/{thingTypeName}/deprecate",
            post(deprecate_thing_type),
        )
}

/// Most searchable attributes a type may have (AWS's limit).
const MAX_SEARCHABLE: usize = 3;

/// `ThingTypeProperties`; only these members are kept.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
struct ThingTypeProperties {
    #[serde(skip_serializing_if = "Option::is_none")]
    thing_type_description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    searchable_attributes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mqtt5_configuration: Option<Mqtt5Configuration>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
struct Mqtt5Configuration {
    #[serde(skip_serializing_if = "Option::is_none")]
    propagating_attributes: Option<Vec<PropagatingAttribute>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
struct PropagatingAttribute {
    #[serde(skip_serializing_if = "Option::is_none")]
    user_property_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thing_attribute: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_attribute: Option<String>,
}

/// `[\p{Graph}\x20]*`: printable characters and the space.
pub(crate) fn validate_description(field: &str, value: &str) -> Result<(), ApiError> {
    validate_name(field, value, 0, 2028, "[\\p{Graph}\\x20]*", |c| {
        c == ' ' || (!c.is_control() && !c.is_whitespace())
    })
}

impl ThingTypeProperties {
    fn validate(&self) -> Result<(), ApiError> {
        if let Some(d) = &self.thing_type_description {
            validate_description("thingTypeProperties.thingTypeDescription", d)?;
        }
        if let Some(names) = &self.searchable_attributes {
            if names.len() > MAX_SEARCHABLE {
                return Err(ApiError::invalid_request(format!(
                    "A thing type can have at most {MAX_SEARCHABLE} searchable attributes"
                )));
            }
            let as_map = names.iter().map(|n| (n.clone(), String::new())).collect();
            validate_attributes("thingTypeProperties.searchableAttributes", &as_map)?;
        }
        let attributes = self
            .mqtt5_configuration
            .as_ref()
            .and_then(|m| m.propagating_attributes.as_deref())
            .unwrap_or_default();
        for a in attributes {
            if let Some(key) = &a.user_property_key {
                validate_name("userPropertyKey", key, 0, 128, "[a-zA-Z0-9:$.]+", |c| {
                    c.is_ascii_alphanumeric() || ":$.".contains(c)
                })?;
            }
            if let Some(attr) = &a.thing_attribute {
                validate_attributes("thingAttribute", &[(attr.clone(), String::new())].into())?;
            }
            if let Some(attr) = &a.connection_attribute {
                validate_name("connectionAttribute", attr, 0, 128, "[a-zA-Z0-9:.]+", |c| {
                    c.is_ascii_alphanumeric() || ":.".contains(c)
                })?;
            }
        }
        Ok(())
    }

    fn into_value(self) -> Result<Value, ApiError> {
        serde_json::to_value(self).map_err(ApiError::internal)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct CreateThingTypeInput {
    thing_type_properties: Option<ThingTypeProperties>,
    tags: Option<Vec<Tag>>,
}

async fn create_thing_type(
    State(state): State<Arc<ApiState>>,
    label: Result<Path<String>, PathRejection>,
    AwsJson(input): AwsJson<CreateThingTypeInput>,
) -> Reply {
    let name = name_label(label, "thingTypeName")?;
    let properties = input.thing_type_properties.unwrap_or_default();
    properties.validate()?;
    let properties = properties.into_value()?;
    let new_tags = validate_tags(input.tags.unwrap_or_default())?;
    let arn = state.arns.thing_type(&name);
    let (thing_type, _) = state
        .store
        .transact({
            let (name, arn) = (name.clone(), arn.clone());
            move |conn| {
                let (thing_type, created) =
                    thing_types::create(conn, &name, properties, wire::now())?;
                if created && !new_tags.is_empty() {
                    tags::put(conn, &arn, &new_tags)?;
                }
                Ok((thing_type, created))
            }
        })
        .await
        .map_err(|e| create_error(e, || arn.clone()))?;
    Ok(Json(json!({
        "thingTypeName": thing_type.name,
        "thingTypeArn": arn,
        "thingTypeId": thing_type.id,
    })))
}

fn metadata(thing_type: &ThingType) -> Value {
    let mut out = Map::new();
    out.insert("deprecated".to_owned(), thing_type.deprecated.into());
    if let Some(when) = thing_type.deprecation_date {
        out.insert("deprecationDate".to_owned(), wire::epoch(when));
    }
    out.insert(
        "creationDate".to_owned(),
        wire::epoch(thing_type.creation_date),
    );
    Value::Object(out)
}

fn definition(state: &ApiState, thing_type: &ThingType) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("thingTypeName".to_owned(), thing_type.name.clone().into());
    out.insert("thingTypeId".to_owned(), thing_type.id.clone().into());
    out.insert(
        "thingTypeArn".to_owned(),
        state.arns.thing_type(&thing_type.name).into(),
    );
    out.insert(
        "thingTypeProperties".to_owned(),
        thing_type.properties.clone(),
    );
    out.insert("thingTypeMetadata".to_owned(), metadata(thing_type));
    out
}

async fn describe_thing_type(
    State(state): State<Arc<ApiState>>,
    label: Result<Path<String>, PathRejection>,
) -> Reply {
    let name = name_label(label, "thingTypeName")?;
    let thing_type = read(&state, move |conn| thing_types::require(conn, &name)).await?;
    Ok(Json(Value::Object(definition(&state, &thing_type))))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct UpdateThingTypeInput {
    thing_type_properties: Option<ThingTypeProperties>,
}

async fn update_thing_type(
    State(state): State<Arc<ApiState>>,
    label: Result<Path<String>, PathRejection>,
    AwsJson(input): AwsJson<UpdateThingTypeInput>,
) -> Reply {
    let name = name_label(label, "thingTypeName")?;
    let properties = input.thing_type_properties.unwrap_or_default();
    properties.validate()?;
    let properties = properties.into_value()?;
    state
        .store
        .transact(move |conn| thing_types::update(conn, &name, properties))
        .await?;
    empty()
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct DeprecateInput {
    undo_deprecate: Option<bool>,
}

async fn deprecate_thing_type(
    State(state): State<Arc<ApiState>>,
    label: Result<Path<String>, PathRejection>,
    AwsJson(input): AwsJson<DeprecateInput>,
) -> Reply {
    let name = name_label(label, "thingTypeName")?;
    let undo = input.undo_deprecate.unwrap_or(false);
    state
        .store
        .transact(move |conn| thing_types::deprecate(conn, &name, undo, wire::now()))
        .await?;
    empty()
}

async fn delete_thing_type(
    State(state): State<Arc<ApiState>>,
    label: Result<Path<String>, PathRejection>,
) -> Reply {
    let name = name_label(label, "thingTypeName")?;
    let arn = state.arns.thing_type(&name);
    state
        .store
        .transact(move |conn| {
            thing_types::delete(conn, &name)?;
            tags::delete_all_for(conn, &arn)
        })
        .await?;
    empty()
}

async fn list_thing_types(State(state): State<Arc<ApiState>>, query: AwsQuery) -> Reply {
    let page_request = query.page()?;
    let prefix = query.name("thingTypeName")?;
    let (offset, size) = (page_request.offset, page_request.size);
    let page = read(&state, move |conn| {
        thing_types::list(conn, prefix.as_deref(), offset, size)
    })
    .await?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|t| Value::Object(definition(&state, t)))
        .collect();
    let mut out = Map::new();
    out.insert("thingTypes".to_owned(), items.into());
    Ok(with_token(out, &page_request, &page))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::test_support::TestApi;

    #[tokio::test]
    async fn the_thing_type_lifecycle() {
        let api = TestApi::new();
        let props = json!({"thingTypeDescription": "ESP32 boards", "searchableAttributes": ["room", "floor"]});
        let created = api
            .ok(
                "POST",
                "/thing-types/esp32",
                Some(json!({"thingTypeProperties": props, "tags": [{"Key": "team", "Value": "lab"}]})),
            )
            .await;
        assert_eq!(
            created["thingTypeArn"],
            "arn:aws:iot:us-east-1:123456789012:thingtype/esp32"
        );
        let again = api
            .ok(
                "POST",
                "/thing-types/esp32",
                Some(json!({"thingTypeProperties": {"searchableAttributes": ["floor", "room"], "thingTypeDescription": "ESP32 boards"}})),
            )
            .await;
        assert_eq!(again["thingTypeId"], created["thingTypeId"]);
        let (status, code, body) = api
            .err(
                "POST",
                "/thing-types/esp32",
                Some(json!({"thingTypeProperties": {"thingTypeDescription": "other"}})),
            )
            .await;
        assert_eq!(
            (status, code.as_str()),
            (409, "ResourceAlreadyExistsException")
        );
        assert_eq!(body["resourceArn"], created["thingTypeArn"]);

        let described = api.ok("GET", "/thing-types/esp32", None).await;
        assert_eq!(described["thingTypeProperties"], props);
        assert_eq!(described["thingTypeMetadata"]["deprecated"], false);
        assert!(described["thingTypeMetadata"]["creationDate"].is_number());
        assert!(
            described["thingTypeMetadata"]
                .get("deprecationDate")
                .is_none()
        );

        api.ok(
            "PATCH",
            "/thing-types/esp32",
            Some(json!({"thingTypeProperties": {"thingTypeDescription": "new"}})),
        )
        .await;
        let described = api.ok("GET", "/thing-types/esp32", None).await;
        assert_eq!(
            described["thingTypeProperties"]["thingTypeDescription"],
            "new"
        );

        let (status, code, _) = api.err("DELETE", "/thing-types/esp32", None).await;
        assert_eq!((status, code.as_str()), (400, "InvalidRequestException"));
        api.ok("POST", "/thing-types/esp32/deprecate", None).await;
        let described = api.ok("GET", "/thing-types/esp32", None).await;
        assert_eq!(described["thingTypeMetadata"]["deprecated"], true);
        assert!(described["thingTypeMetadata"]["deprecationDate"].is_number());
        api.ok(
            "POST",
            "/thing-types/esp32/deprecate",
            Some(json!({"undoDeprecate": true})),
        )
        .await;
        let described = api.ok("GET", "/thing-types/esp32", None).await;
        assert_eq!(described["thingTypeMetadata"]["deprecated"], false);
        api.ok("POST", "/thing-types/esp32/deprecate", None).await;
        api.ok("DELETE", "/thing-types/esp32", None).await;
        let (status, code, _) = api.err("GET", "/thing-types/esp32", None).await;
        assert_eq!((status, code.as_str()), (404, "ResourceNotFoundException"));
        let (status, _, _) = api.err("DELETE", "/thing-types/esp32", None).await;
        assert_eq!(status, 404);
        let (status, _, _) = api
            .err("POST", "/thing-types/x/deprecate", Some(json!({})))
            .await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn list_thing_types_by_prefix_with_pages() {
        let api = TestApi::new();
        for name in ["lamp-a", "lamp-b", "switch"] {
            api.ok("POST", &format!("/thing-types/{name}"), None).await;
        }
        let first = api
            .ok("GET", "/thing-types?thingTypeName=lamp&maxResults=1", None)
            .await;
        assert_eq!(first["thingTypes"][0]["thingTypeName"], "lamp-a");
        assert!(first["thingTypes"][0]["thingTypeMetadata"]["creationDate"].is_number());
        let token = first["nextToken"].as_str().unwrap();
        let second = api
            .ok(
                "GET",
                &format!(
                    "/thing-types?thingTypeName=lamp&maxResults=1&nextToken={}",
                    crate::test_support::encode(token)
                ),
                None,
            )
            .await;
        assert_eq!(second["thingTypes"][0]["thingTypeName"], "lamp-b");
        assert!(second.get("nextToken").is_none());
        let all = api.ok("GET", "/thing-types", None).await;
        assert_eq!(all["thingTypes"].as_array().unwrap().len(), 3);
        let (status, _, _) = api
            .err(
                "POST",
                "/thing-types/t",
                Some(
                    json!({"thingTypeProperties": {"searchableAttributes": ["a", "b", "c", "d"]}}),
                ),
            )
            .await;
        assert_eq!(status, 400);
    }
}
