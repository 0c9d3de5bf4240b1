//! Static thing groups: CreateThingGroup, DescribeThingGroup, UpdateThingGroup,
//! DeleteThingGroup, ListThingGroups, AddThingToThingGroup, RemoveThingFromThingGroup,
//! UpdateThingGroupsForThing and ListThingsInThingGroup.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use thingd_store::registry::security::attachments;
use thingd_store::registry::tags;
use thingd_store::registry::thing_groups::{
    self, GroupFilter, NewThingGroup, ThingGroup, ThingGroupUpdate,
};

use crate::tags::{Tag, validate_tags};
use crate::thing_types::validate_description;
use crate::things::{
    AttributePayload, AwsQuery, Reply, create_error, empty, groups_and_arns, name_in_arn,
    name_label, optional_name, read, validate_attributes, with_token,
};
use crate::wire::{self, AwsJson, validate_registry_name};
use crate::{ApiError, ApiState};

pub(crate) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/thing-groups", get(list_thing_groups))
        .route(
            "/thing-groups/addThingToThingGroup",
            put(add_thing_to_thing_group),
        )
        .route(
            "/thing-groups/removeThingFromThingGroup",
            put(remove_thing_from_thing_group),
        )
        .route(
            "/thing-groups/updateThingGroupsForThing",
            put(update_thing_groups_for_thing),
        )
        .route(
            "/thing-groups/{thingGroupName}",
            get(describe_thing_group)
                .post(create_thing_group)
                .patch(update_thing_group)
                .delete(delete_thing_group),
        )
        .route(
            "/thing-groups/{thingGroupName}/things",
            get(list_things_in_thing_group),
        )
}

/// `ThingGroupProperties`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ThingGroupProperties {
    thing_group_description: Option<String>,
    attribute_payload: Option<AttributePayload>,
}

impl ThingGroupProperties {
    fn validate(&self) -> Result<(), ApiError> {
        if let Some(d) = &self.thing_group_description {
            validate_description("thingGroupProperties.thingGroupDescription", d)?;
        }
        if let Some(attributes) = self
            .attribute_payload
            .as_ref()
            .and_then(|p| p.attributes.as_ref())
        {
            validate_attributes(
                "thingGroupProperties.attributePayload.attributes",
                attributes,
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct CreateThingGroupInput {
    parent_group_name: Option<String>,
    thing_group_properties: Option<ThingGroupProperties>,
    tags: Option<Vec<Tag>>,
}

async fn create_thing_group(
    State(state): State<Arc<ApiState>>,
    label: Result<Path<String>, PathRejection>,
    AwsJson(input): AwsJson<CreateThingGroupInput>,
) -> Reply {
    let name = name_label(label, "thingGroupName")?;
    let parent = optional_name("parentGroupName", input.parent_group_name)?;
    let properties = input.thing_group_properties.unwrap_or_default();
    properties.validate()?;
    let new_tags = validate_tags(input.tags.unwrap_or_default())?;
    let new = NewThingGroup {
        name: name.clone(),
        parent,
        description: properties.thing_group_description,
        attributes: properties
            .attribute_payload
            .and_then(|p| p.attributes)
            .unwrap_or_default(),
    };
    let arn = state.arns.thing_group(&name);
    let group = state
        .store
        .transact({
            let arn = arn.clone();
            move |conn| {
                let (group, created) = thing_groups::create(conn, new, wire::now())?;
                if created && !new_tags.is_empty() {
                    tags::put(conn, &arn, &new_tags)?;
                }
                Ok(group)
            }
        })
        .await
        .map_err(|e| create_error(e, || arn.clone()))?;
    Ok(Json(json!({
        "thingGroupName": group.name,
        "thingGroupArn": arn,
        "thingGroupId": group.id,
    })))
}

fn describe(state: &ApiState, group: &ThingGroup, ancestors: &[String]) -> Value {
    let mut properties = Map::new();
    if let Some(d) = &group.description {
        properties.insert("thingGroupDescription".to_owned(), d.clone().into());
    }
    properties.insert(
        "attributePayload".to_owned(),
        json!({"attributes": group.attributes}),
    );
    let mut metadata = Map::new();
    if let Some(parent) = &group.parent {
        metadata.insert("parentGroupName".to_owned(), parent.clone().into());
        metadata.insert(
            "rootToParentThingGroups".to_owned(),
            groups_and_arns(state, ancestors),
        );
    }
    metadata.insert("creationDate".to_owned(), wire::epoch(group.creation_date));
    json!({
        "thingGroupName": group.name,
        "thingGroupId": group.id,
        "thingGroupArn": state.arns.thing_group(&group.name),
        "version": group.version,
        "thingGroupProperties": properties,
        "thingGroupMetadata": metadata,
    })
}

async fn describe_thing_group(
    State(state): State<Arc<ApiState>>,
    label: Result<Path<String>, PathRejection>,
) -> Reply {
    let name = name_label(label, "thingGroupName")?;
    let (group, ancestors) = read(&state, move |conn| {
        let group = thing_groups::require(conn, &name)?;
        let ancestors = thing_groups::ancestors(conn, &name)?;
        Ok((group, ancestors))
    })
    .await?;
    Ok(Json(describe(&state, &group, &ancestors)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct UpdateThingGroupInput {
    thing_group_properties: Option<ThingGroupProperties>,
    expected_version: Option<i64>,
}

async fn update_thing_group(
    State(state): State<Arc<ApiState>>,
    label: Result<Path<String>, PathRejection>,
    AwsJson(input): AwsJson<UpdateThingGroupInput>,
) -> Reply {
    let name = name_label(label, "thingGroupName")?;
    let Some(properties) = input.thing_group_properties else {
        return Err(ApiError::invalid_request(
            "1 validation error detected: Value null at 'thingGroupProperties' failed to satisfy constraint: Member must not be null",
        ));
    };
    properties.validate()?;
    let update = ThingGroupUpdate {
        description: properties.thing_group_description,
        attributes: properties
            .attribute_payload
            .map(|p| (p.attributes.unwrap_or_default(), p.merge.unwrap_or(false))),
        expected_version: input.expected_version,
    };
    let group = state
        .store
        .transact(move |conn| thing_groups::update(conn, &name, update))
        .await?;
    Ok(Json(json!({"version": group.version})))
}

async fn delete_thing_group(
    State(state): State<Arc<ApiState>>,
    label: Result<Path<String>, PathRejection>,
    query: AwsQuery,
) -> Reply {
    let name = name_label(label, "thingGroupName")?;
    let expected = query.int("expectedVersion")?;
    let arn = state.arns.thing_group(&name);
    state
        .store
        .transact(move |conn| {
            if thing_groups::delete(conn, &name, expected)?.is_some() {
                tags::delete_all_for(conn, &arn)?;
                // A group of the same name created later must not inherit its policies.
                for policy in attachments::policies_of_target(conn, &arn)? {
                    attachments::detach(conn, &policy, &arn)?;
                }
            }
            Ok(())
        })
        .await?;
    empty()
}

async fn list_thing_groups(State(state): State<Arc<ApiState>>, query: AwsQuery) -> Reply {
    let page_request = query.page()?;
    let filter = GroupFilter {
        parent: query.name("parentGroup")?,
        name_prefix: query.name("namePrefixFilter")?,
        recursive: query.flag("recursive")?.unwrap_or(true),
    };
    let (offset, size) = (page_request.offset, page_request.size);
    let page = read(&state, move |conn| {
        thing_groups::list(conn, &filter, offset, size)
    })
    .await?;
    let mut out = Map::new();
    out.insert(
        "thingGroups".to_owned(),
        groups_and_arns(&state, &page.items),
    );
    Ok(with_token(out, &page_request, &page))
}

/// A resource named by name or by ARN (the name wins when both are given).
fn name_or_arn(
    name: Option<String>,
    arn: Option<String>,
    name_field: &str,
    arn_field: &str,
    kind: &str,
) -> Result<String, ApiError> {
    if let Some(name) = optional_name(name_field, name)? {
        return Ok(name);
    }
    match arn.filter(|a| !a.is_empty()) {
        Some(arn) => {
            let name = name_in_arn(&arn, kind).ok_or_else(|| {
                ApiError::invalid_request(format!("{arn_field} {arn} is not a {kind} ARN"))
            })?;
            validate_registry_name(name_field, &name)?;
            Ok(name)
        }
        None => Err(ApiError::invalid_request(format!(
            "Either {name_field} or {arn_field} must be given"
        ))),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct MembershipInput {
    thing_group_name: Option<String>,
    thing_group_arn: Option<String>,
    thing_name: Option<String>,
    thing_arn: Option<String>,
}

impl MembershipInput {
    fn names(self) -> Result<(String, String), ApiError> {
        let group = name_or_arn(
            self.thing_group_name,
            self.thing_group_arn,
            "thingGroupName",
            "thingGroupArn",
            "thinggroup",
        )?;
        let thing = name_or_arn(
            self.thing_name,
            self.thing_arn,
            "thingName",
            "thingArn",
            "thing",
        )?;
        Ok((group, thing))
    }
}

async fn add_thing_to_thing_group(
    State(state): State<Arc<ApiState>>,
    AwsJson(input): AwsJson<MembershipInput>,
) -> Reply {
    let (group, thing) = input.names()?;
    state
        .store
        .transact(move |conn| thing_groups::add_thing(conn, &group, &thing))
        .await?;
    empty()
}

async fn remove_thing_from_thing_group(
    State(state): State<Arc<ApiState>>,
    AwsJson(input): AwsJson<MembershipInput>,
) -> Reply {
    let (group, thing) = input.names()?;
    state
        .store
        .transact(move |conn| thing_groups::remove_thing(conn, &group, &thing))
        .await?;
    empty()
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct UpdateGroupsForThingInput {
    thing_name: Option<String>,
    thing_groups_to_add: Option<Vec<String>>,
    thing_groups_to_remove: Option<Vec<String>>,
}

async fn update_thing_groups_for_thing(
    State(state): State<Arc<ApiState>>,
    AwsJson(input): AwsJson<UpdateGroupsForThingInput>,
) -> Reply {
    let Some(thing) = optional_name("thingName", input.thing_name)? else {
        return Err(ApiError::invalid_request(
            "1 validation error detected: Value null at 'thingName' failed to satisfy constraint: Member must not be null",
        ));
    };
    let add = input.thing_groups_to_add.unwrap_or_default();
    let remove = input.thing_groups_to_remove.unwrap_or_default();
    for name in add.iter().chain(&remove) {
        validate_registry_name("thingGroupName", name)?;
    }
    state
        .store
        .transact(move |conn| thing_groups::update_groups_for_thing(conn, &thing, &add, &remove))
        .await?;
    empty()
}

async fn list_things_in_thing_group(
    State(state): State<Arc<ApiState>>,
    label: Result<Path<String>, PathRejection>,
    query: AwsQuery,
) -> Reply {
    let name = name_label(label, "thingGroupName")?;
    let page_request = query.page()?;
    let recursive = query.flag("recursive")?.unwrap_or(false);
    let (offset, size) = (page_request.offset, page_request.size);
    let page = read(&state, move |conn| {
        thing_groups::things_in_group(conn, &name, recursive, offset, size)
    })
    .await?;
    let mut out = Map::new();
    out.insert("things".to_owned(), json!(page.items));
    Ok(with_token(out, &page_request, &page))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::test_support::TestApi;

    fn group_names(v: &Value) -> Vec<String> {
        v["thingGroups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["groupName"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn groups_hierarchy_membership_and_versions() {
        let api = TestApi::new();
        let root = api
            .ok(
                "POST",
                "/thing-groups/building",
                Some(json!({"thingGroupProperties": {"thingGroupDescription": "HQ", "attributePayload": {"attributes": {"city": "Berlin"}}}})),
            )
            .await;
        assert_eq!(
            root["thingGroupArn"],
            "arn:aws:iot:us-east-1:123456789012:thinggroup/building"
        );
        api.ok(
            "POST",
            "/thing-groups/floor1",
            Some(json!({"parentGroupName": "building"})),
        )
        .await;
        let again = api
            .ok(
                "POST",
                "/thing-groups/floor1",
                Some(json!({"parentGroupName": "building"})),
            )
            .await;
        let (status, code, body) = api.err("POST", "/thing-groups/floor1", None).await;
        assert_eq!(
            (status, code.as_str()),
            (409, "ResourceAlreadyExistsException")
        );
        assert_eq!(body["resourceId"], again["thingGroupId"]);
        api.ok(
            "POST",
            "/thing-groups/room1",
            Some(json!({"parentGroupName": "floor1"})),
        )
        .await;

        let described = api.ok("GET", "/thing-groups/room1", None).await;
        assert_eq!(described["version"], 1);
        assert_eq!(described["thingGroupMetadata"]["parentGroupName"], "floor1");
        assert_eq!(
            described["thingGroupMetadata"]["rootToParentThingGroups"],
            json!([
                {"groupName": "building", "groupArn": "arn:aws:iot:us-east-1:123456789012:thinggroup/building"},
                {"groupName": "floor1", "groupArn": "arn:aws:iot:us-east-1:123456789012:thinggroup/floor1"},
            ])
        );
        assert!(described["thingGroupMetadata"]["creationDate"].is_number());
        let described = api.ok("GET", "/thing-groups/building", None).await;
        assert_eq!(
            described["thingGroupProperties"],
            json!({"thingGroupDescription": "HQ", "attributePayload": {"attributes": {"city": "Berlin"}}})
        );

        let updated = api
            .ok(
                "PATCH",
                "/thing-groups/building",
                Some(json!({"thingGroupProperties": {"attributePayload": {"attributes": {"zip": "10115"}, "merge": true}}, "expectedVersion": 1})),
            )
            .await;
        assert_eq!(updated, json!({"version": 2}));
        let (status, code, _) = api
            .err(
                "PATCH",
                "/thing-groups/building",
                Some(json!({"thingGroupProperties": {}, "expectedVersion": 1})),
            )
            .await;
        assert_eq!((status, code.as_str()), (409, "VersionConflictException"));

        // Membership by name and by ARN, idempotent both ways.
        for thing in ["t1", "t2"] {
            api.ok("POST", &format!("/things/{thing}"), None).await;
        }
        let revision = api.state.store.registry_revision().unwrap();
        api.ok(
            "PUT",
            "/thing-groups/addThingToThingGroup",
            Some(json!({"thingGroupName": "room1", "thingName": "t1"})),
        )
        .await;
        assert!(api.state.store.registry_revision().unwrap() > revision);
        api.ok(
            "PUT",
            "/thing-groups/addThingToThingGroup",
            Some(json!({"thingGroupArn": "arn:aws:iot:us-east-1:123456789012:thinggroup/room1", "thingArn": "arn:aws:iot:us-east-1:123456789012:thing/t1"})),
        )
        .await;
        api.ok(
            "PUT",
            "/thing-groups/updateThingGroupsForThing",
            Some(json!({"thingName": "t2", "thingGroupsToAdd": ["building", "floor1"]})),
        )
        .await;
        let (status, code, _) = api
            .err(
                "PUT",
                "/thing-groups/addThingToThingGroup",
                Some(json!({"thingName": "t1"})),
            )
            .await;
        assert_eq!((status, code.as_str()), (400, "InvalidRequestException"));
        let (status, _, _) = api
            .err(
                "PUT",
                "/thing-groups/addThingToThingGroup",
                Some(json!({"thingGroupName": "nope", "thingName": "t1"})),
            )
            .await;
        assert_eq!(status, 404);

        let things = api.ok("GET", "/thing-groups/building/things", None).await;
        assert_eq!(things["things"], json!(["t2"]));
        let things = api
            .ok("GET", "/thing-groups/building/things?recursive=true", None)
            .await;
        assert_eq!(things["things"], json!(["t1", "t2"]));
        let groups = api.ok("GET", "/things/t2/thing-groups", None).await;
        assert_eq!(group_names(&groups), ["building", "floor1"]);
        let (status, _, _) = api.err("GET", "/things/nope/thing-groups", None).await;
        assert_eq!(status, 404);

        api.ok(
            "PUT",
            "/thing-groups/removeThingFromThingGroup",
            Some(json!({"thingGroupName": "floor1", "thingName": "t2"})),
        )
        .await;
        api.ok(
            "PUT",
            "/thing-groups/removeThingFromThingGroup",
            Some(json!({"thingGroupName": "floor1", "thingName": "t2"})),
        )
        .await;
        let groups = api.ok("GET", "/things/t2/thing-groups", None).await;
        assert_eq!(group_names(&groups), ["building"]);

        // Listing.
        let all = api.ok("GET", "/thing-groups", None).await;
        assert_eq!(group_names(&all), ["building", "floor1", "room1"]);
        let roots = api.ok("GET", "/thing-groups?recursive=false", None).await;
        assert_eq!(group_names(&roots), ["building"]);
        let children = api
            .ok(
                "GET",
                "/thing-groups?parentGroup=building&recursive=false",
                None,
            )
            .await;
        assert_eq!(group_names(&children), ["floor1"]);
        let below = api
            .ok(
                "GET",
                "/thing-groups?parentGroup=building&namePrefixFilter=room",
                None,
            )
            .await;
        assert_eq!(group_names(&below), ["room1"]);
        let (status, _, _) = api.err("GET", "/thing-groups?parentGroup=nope", None).await;
        assert_eq!(status, 404);
        let paged = api.ok("GET", "/thing-groups?maxResults=2", None).await;
        assert_eq!(group_names(&paged).len(), 2);
        assert!(paged["nextToken"].is_string());

        // Deletion.
        let (status, code, _) = api.err("DELETE", "/thing-groups/floor1", None).await;
        assert_eq!((status, code.as_str()), (400, "InvalidRequestException"));
        api.ok("DELETE", "/thing-groups/room1", None).await;
        api.ok("DELETE", "/thing-groups/room1", None).await;
        let groups = api.ok("GET", "/things/t1/thing-groups", None).await;
        assert_eq!(group_names(&groups), Vec::<String>::new());
        let (status, code, _) = api
            .err("DELETE", "/thing-groups/building?expectedVersion=1", None)
            .await;
        assert_eq!((status, code.as_str()), (409, "VersionConflictException"));
    }

    #[tokio::test]
    async fn deleting_a_group_detaches_its_policies() {
        let api = TestApi::new();
        let arn = "arn:aws:iot:us-east-1:123456789012:thinggroup/g";
        api.ok("POST", "/thing-groups/g", None).await;
        let document = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]});
        api.ok(
            "POST",
            "/policies/p",
            Some(json!({"policyDocument": document.to_string()})),
        )
        .await;
        api.ok("PUT", "/target-policies/p", Some(json!({"target": arn})))
            .await;
        let targets = || {
            let arn = arn.to_owned();
            api.state.store.read(move |conn| {
                thingd_store::registry::security::attachments::policies_of_target(conn, &arn)
            })
        };
        assert_eq!(targets().unwrap(), ["p"]);
        api.ok("DELETE", "/thing-groups/g", None).await;
        assert!(targets().unwrap().is_empty());
    }
}
