//! Policies, their versions and targets (§6.7, §6.8): CreatePolicy, GetPolicy, DeletePolicy,
//! ListPolicies, CreatePolicyVersion, GetPolicyVersion, ListPolicyVersions,
//! SetDefaultPolicyVersion, DeletePolicyVersion, AttachPolicy, DetachPolicy,
//! ListAttachedPolicies, ListTargetsForPolicy, GetEffectivePolicies, TestAuthorization, and
//! the deprecated AttachPrincipalPolicy, DetachPrincipalPolicy, ListPrincipalPolicies,
//! ListPolicyPrincipals.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use thingd_policy::{IotAction, PolicyDocument, PolicySet, Request, ThingContext, Variables};
use thingd_store::StoreError;
use thingd_store::registry::security::{attachments, certificates, policies, principals};

use crate::certificates::{Params, parse_certificate_id, with_next};
use crate::wire::{AwsJson, epoch, now, validate_policy_name, validate_registry_name};
use crate::{ApiError, ApiState};

pub(crate) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/policies", get(list_policies))
        .route(
            "/policies/{policyName}",
            post(create_policy).get(get_policy).delete(delete_policy),
        )
        .route(
            "/policies/{policyName}/version",
            post(create_policy_version).get(list_policy_versions),
        )
        .route(
            "/policies/{policyName}/version/{policyVersionId}",
            get(get_policy_version)
                .patch(set_default_policy_version)
                .delete(delete_policy_version),
        )
        .route(
            "/target-policies/{policyName}",
            put(attach_policy).post(detach_policy),
        )
        .route("/attached-policies/{target}", post(list_attached_policies))
        .route(
            "/policy-targets/{policyName}",
            post(list_targets_for_policy),
        )
        .route("/effective-policies", post(get_effective_policies))
        .route("/test-authorization", post(test_authorization))
        .route(
            "/principal-policies/{policyName}",
            put(attach_principal_policy).delete(detach_principal_policy),
        )
        .route("/principal-policies", get(list_principal_policies))
        .route("/policy-principals", get(list_policy_principals))
}

/// What a policy target or principal is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A certificate, by id.
    Certificate(String),
    /// A thing group, by name.
    ThingGroup(String),
    /// A Cognito identity id.
    Cognito,
}

/// Normalises a target or principal: certificate ARNs (of any region and account) are
/// rewritten with this installation's, thing-group ARNs likewise; a Cognito identity id
/// (`region:uuid`) stays as it is. Returns the stored form and what it is.
pub(crate) fn normalize_target(
    state: &ApiState,
    target: &str,
) -> Result<(String, Target), ApiError> {
    let invalid = || ApiError::invalid_request(format!("Invalid Target: {target}"));
    if target.starts_with("arn:") {
        if let Some(id) = crate::wire::Arns::cert_id_of(target) {
            let id = parse_certificate_id("target", id)?.to_string();
            return Ok((state.arns.cert(&id), Target::Certificate(id)));
        }
        let resource = target
            .strip_prefix("arn:aws:iot:")
            .and_then(|rest| rest.splitn(3, ':').nth(2))
            .ok_or_else(invalid)?;
        if let Some(group) = resource.strip_prefix("thinggroup/") {
            validate_registry_name("thingGroupName", group)?;
            return Ok((
                state.arns.thing_group(group),
                Target::ThingGroup(group.to_owned()),
            ));
        }
        return Err(invalid());
    }
    // Cognito identity id: `<region>:<uuid>`.
    match target.split_once(':') {
        Some((region, id))
            if !region.is_empty()
                && region
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !id.is_empty()
                && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') =>
        {
            Ok((target.to_owned(), Target::Cognito))
        }
        _ => Err(invalid()),
    }
}

/// Inside a transaction: fails with ResourceNotFoundException if the target does not exist.
pub(crate) fn require_target(
    conn: &rusqlite::Connection,
    stored: &str,
    target: &Target,
) -> Result<(), StoreError> {
    let missing = |what: String| StoreError::Rejected {
        code: "ResourceNotFoundException",
        message: what,
        resource_id: None,
    };
    match target {
        Target::Certificate(id) => {
            if certificates::get(conn, id)?.is_none() {
                return Err(missing(format!("The certificate {stored} does not exist")));
            }
        }
        Target::ThingGroup(name) => {
            if !attachments::thing_group_exists(conn, name)? {
                return Err(missing(format!("Thing group {name} does not exist")));
            }
        }
        Target::Cognito => {}
    }
    Ok(())
}

/// Validates a policy document as CreatePolicy does: MalformedPolicyException with the
/// reason and its position.
fn validate_document(document: Option<String>) -> Result<String, ApiError> {
    let document = document.ok_or_else(|| {
        ApiError::invalid_request(
            "1 validation error detected: Value null at 'policyDocument' failed to satisfy constraint: Member must not be null",
        )
    })?;
    thingd_policy::check_size(&document).map_err(|e| ApiError::malformed_policy(e.to_string()))?;
    PolicyDocument::parse(&document).map_err(|e| ApiError::malformed_policy(e.to_string()))?;
    Ok(document)
}

fn parse_version_id(value: &str) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ApiError::invalid_request(format!(
                "1 validation error detected: Value '{value}' at 'policyVersionId' failed to satisfy constraint: Member must satisfy regular expression pattern: [0-9]+"
            ))
        })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DocumentBody {
    policy_document: Option<String>,
    tags: Option<Vec<crate::tags::Tag>>,
}

async fn create_policy(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    AwsJson(body): AwsJson<DocumentBody>,
) -> Result<Json<Value>, ApiError> {
    validate_policy_name("policyName", &name)?;
    let document = validate_document(body.policy_document)?;
    let tags = crate::tags::validate_tags(body.tags.unwrap_or_default())?;
    let arn = state.arns.policy(&name);
    let key = name.clone();
    let tag_arn = arn.clone();
    let policy = state
        .store
        .transact(move |conn| {
            let policy = policies::create(conn, &key, &document, now())?;
            thingd_store::registry::tags::put(conn, &tag_arn, &tags)?;
            Ok(policy)
        })
        .await
        .map_err(|e| {
            let mut e = ApiError::from(e);
            if e.code == "ResourceAlreadyExistsException" {
                e.resource_arn = Some(arn.clone());
            }
            e
        })?;
    Ok(Json(json!({
        "policyName": policy.name,
        "policyArn": state.arns.policy(&name),
        "policyDocument": policy.document,
        "policyVersionId": policy.default_version.to_string(),
    })))
}

fn policy_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("Policy not found (name={name})"))
}

async fn get_policy(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    validate_policy_name("policyName", &name)?;
    let key = name.clone();
    let policy = state
        .blocking(move |store| Ok(store.read(|conn| policies::get(conn, &key))?))
        .await?
        .ok_or_else(|| policy_not_found(&name))?;
    Ok(Json(json!({
        "policyName": policy.name,
        "policyArn": state.arns.policy(&name),
        "policyDocument": policy.document,
        "defaultVersionId": policy.default_version.to_string(),
        "creationDate": epoch(policy.created_at),
        "lastModifiedDate": epoch(policy.updated_at),
        "generationId": policy.generation.to_string(),
    })))
}

async fn delete_policy(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    validate_policy_name("policyName", &name)?;
    let arn = state.arns.policy(&name);
    state
        .store
        .transact(move |conn| {
            policies::delete(conn, &name)?;
            thingd_store::registry::tags::delete_all_for(conn, &arn)
        })
        .await?;
    Ok(Json(json!({})))
}

fn policy_refs(state: &ApiState, names: impl IntoIterator<Item = String>) -> Vec<Value> {
    names
        .into_iter()
        .map(|n| json!({ "policyArn": state.arns.policy(&n), "policyName": n }))
        .collect()
}

async fn list_policies(
    State(state): State<Arc<ApiState>>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let page = params.marker_page()?;
    let ascending = params.bool("isAscendingOrder")?.unwrap_or(true);
    let all = state
        .blocking(move |store| Ok(store.read(|conn| policies::list(conn, ascending))?))
        .await?;
    let (items, next) = page.page(all);
    Ok(Json(with_next(
        json!({ "policies": policy_refs(&state, items) }),
        "nextMarker",
        next,
    )))
}

async fn create_policy_version(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    params: Params,
    AwsJson(body): AwsJson<DocumentBody>,
) -> Result<Json<Value>, ApiError> {
    validate_policy_name("policyName", &name)?;
    let set_default = params.bool("setAsDefault")?.unwrap_or(false);
    let document = validate_document(body.policy_document)?;
    let key = name.clone();
    let version = state
        .store
        .transact(move |conn| policies::create_version(conn, &key, &document, set_default, now()))
        .await?;
    Ok(Json(json!({
        "policyArn": state.arns.policy(&name),
        "policyDocument": version.document,
        "policyVersionId": version.version.to_string(),
        "isDefaultVersion": version.is_default,
    })))
}

async fn get_policy_version(
    State(state): State<Arc<ApiState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    validate_policy_name("policyName", &name)?;
    let version = parse_version_id(&version)?;
    let key = name.clone();
    let (policy, v) = state
        .blocking(move |store| Ok(store.read(|conn| policies::get_version(conn, &key, version))?))
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Policy version not found (name={name}, versionId={version})"
            ))
        })?;
    Ok(Json(json!({
        "policyArn": state.arns.policy(&name),
        "policyName": name,
        "policyDocument": v.document,
        "policyVersionId": v.version.to_string(),
        "isDefaultVersion": v.is_default,
        "creationDate": epoch(v.created_at),
        "lastModifiedDate": epoch(policy.updated_at.max(v.created_at)),
        "generationId": policy.generation.to_string(),
    })))
}

async fn list_policy_versions(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    validate_policy_name("policyName", &name)?;
    let key = name.clone();
    let versions = state
        .blocking(move |store| Ok(store.read(|conn| policies::list_versions(conn, &key))?))
        .await?
        .ok_or_else(|| policy_not_found(&name))?;
    let versions: Vec<Value> = versions
        .into_iter()
        .map(|v| {
            json!({
                "versionId": v.version.to_string(),
                "isDefaultVersion": v.is_default,
                "createDate": epoch(v.created_at),
            })
        })
        .collect();
    Ok(Json(json!({ "policyVersions": versions })))
}

async fn set_default_policy_version(
    State(state): State<Arc<ApiState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    validate_policy_name("policyName", &name)?;
    let version = parse_version_id(&version)?;
    state
        .store
        .transact(move |conn| policies::set_default(conn, &name, version, now()))
        .await?;
    Ok(Json(json!({})))
}

async fn delete_policy_version(
    State(state): State<Arc<ApiState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    validate_policy_name("policyName", &name)?;
    let version = parse_version_id(&version)?;
    state
        .store
        .transact(move |conn| policies::delete_version(conn, &name, version))
        .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct TargetBody {
    target: Option<String>,
}

fn required_target(target: Option<String>) -> Result<String, ApiError> {
    target.filter(|t| !t.is_empty()).ok_or_else(|| {
        ApiError::invalid_request(
            "1 validation error detected: Value null at 'target' failed to satisfy constraint: Member must not be null",
        )
    })
}

async fn attach(state: &ApiState, policy: String, target: &str) -> Result<(), ApiError> {
    validate_policy_name("policyName", &policy)?;
    let (stored, kind) = normalize_target(state, target)?;
    state
        .store
        .transact(move |conn| {
            require_target(conn, &stored, &kind)?;
            attachments::attach(conn, &policy, &stored, now())
        })
        .await?;
    Ok(())
}

async fn detach(state: &ApiState, policy: String, target: &str) -> Result<(), ApiError> {
    validate_policy_name("policyName", &policy)?;
    let (stored, _) = normalize_target(state, target)?;
    state
        .store
        .transact(move |conn| attachments::detach(conn, &policy, &stored))
        .await?;
    Ok(())
}

async fn attach_policy(
    State(state): State<Arc<ApiState>>,
    Path(policy): Path<String>,
    AwsJson(body): AwsJson<TargetBody>,
) -> Result<Json<Value>, ApiError> {
    attach(&state, policy, &required_target(body.target)?).await?;
    Ok(Json(json!({})))
}

async fn detach_policy(
    State(state): State<Arc<ApiState>>,
    Path(policy): Path<String>,
    AwsJson(body): AwsJson<TargetBody>,
) -> Result<Json<Value>, ApiError> {
    detach(&state, policy, &required_target(body.target)?).await?;
    Ok(Json(json!({})))
}

/// The policies of a target, with those of its ancestor groups when `recursive`.
async fn attached_policies(
    state: &ApiState,
    target: &str,
    recursive: bool,
) -> Result<Vec<String>, ApiError> {
    let (stored, kind) = normalize_target(state, target)?;
    let arns = state.arns.clone();
    state
        .blocking(move |store| {
            Ok(store.read(|conn| {
                require_target(conn, &stored, &kind)?;
                let mut names = attachments::policies_of_target(conn, &stored)?;
                if let (true, Target::ThingGroup(group)) = (recursive, &kind) {
                    for ancestor in attachments::group_ancestors(conn, group)? {
                        for name in
                            attachments::policies_of_target(conn, &arns.thing_group(&ancestor))?
                        {
                            if !names.contains(&name) {
                                names.push(name);
                            }
                        }
                    }
                }
                Ok(names)
            })?)
        })
        .await
}

async fn list_attached_policies(
    State(state): State<Arc<ApiState>>,
    Path(target): Path<String>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let page = params.marker_page()?;
    let recursive = params.bool("recursive")?.unwrap_or(false);
    let names = attached_policies(&state, &target, recursive).await?;
    let (items, next) = page.page(names);
    Ok(Json(with_next(
        json!({ "policies": policy_refs(&state, items) }),
        "nextMarker",
        next,
    )))
}

async fn targets(state: &ApiState, policy: String) -> Result<Vec<String>, ApiError> {
    validate_policy_name("policyName", &policy)?;
    let key = policy.clone();
    state
        .blocking(move |store| Ok(store.read(|conn| attachments::targets_of_policy(conn, &key))?))
        .await?
        .ok_or_else(|| policy_not_found(&policy))
}

async fn list_targets_for_policy(
    State(state): State<Arc<ApiState>>,
    Path(policy): Path<String>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let page = params.marker_page()?;
    let (items, next) = page.page(targets(&state, policy).await?);
    Ok(Json(with_next(
        json!({ "targets": items }),
        "nextMarker",
        next,
    )))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EffectiveBody {
    principal: Option<String>,
    cognito_identity_pool_id: Option<String>,
}

/// The policies that apply to a principal (and a thing's groups), as (name, document).
async fn effective(
    state: &ApiState,
    principal: Option<&str>,
    thing: Option<String>,
) -> Result<Vec<(String, String)>, ApiError> {
    let principal = principal.map(|p| normalize_target(state, p)).transpose()?;
    if let Some(thing) = &thing {
        validate_registry_name("thingName", thing)?;
    }
    let arns = state.arns.clone();
    state
        .blocking(move |store| {
            Ok(store.read(|conn| {
                if let Some((stored, kind)) = &principal {
                    require_target(conn, stored, kind)?;
                }
                if let Some(thing) = &thing
                    && !principals::thing_exists(conn, thing)?
                {
                    return Err(StoreError::Rejected {
                        code: "ResourceNotFoundException",
                        message: format!("Thing {thing} cannot be found."),
                        resource_id: None,
                    });
                }
                attachments::effective_policies(
                    conn,
                    principal.as_ref().map(|(p, _)| p.as_str()),
                    thing.as_deref(),
                    |g| arns.thing_group(g),
                )
            })?)
        })
        .await
}

async fn get_effective_policies(
    State(state): State<Arc<ApiState>>,
    params: Params,
    AwsJson(body): AwsJson<EffectiveBody>,
) -> Result<Json<Value>, ApiError> {
    let _ = body.cognito_identity_pool_id;
    let thing = params.str("thingName").map(str::to_owned);
    let list = effective(&state, body.principal.as_deref(), thing).await?;
    let policies: Vec<Value> = list
        .into_iter()
        .map(|(name, document)| {
            json!({
                "policyName": name,
                "policyArn": state.arns.policy(&name),
                "policyDocument": document,
            })
        })
        .collect();
    Ok(Json(json!({ "effectivePolicies": policies })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthInfo {
    action_type: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TestAuthorizationBody {
    principal: Option<String>,
    #[serde(default)]
    auth_infos: Vec<AuthInfo>,
    #[serde(default)]
    policy_names_to_add: Vec<String>,
    #[serde(default)]
    policy_names_to_skip: Vec<String>,
}

const ACTION_TYPES: &[&str] = &["PUBLISH", "SUBSCRIBE", "RECEIVE", "CONNECT"];

async fn test_authorization(
    State(state): State<Arc<ApiState>>,
    params: Params,
    AwsJson(body): AwsJson<TestAuthorizationBody>,
) -> Result<Json<Value>, ApiError> {
    if body.auth_infos.is_empty() || body.auth_infos.len() > 10 {
        return Err(ApiError::invalid_request(
            "1 validation error detected: Value at 'authInfos' failed to satisfy constraint: Member must have length between 1 and 10",
        ));
    }
    let mut requests = Vec::new();
    for info in &body.auth_infos {
        let action_type = info.action_type.as_deref().unwrap_or_default();
        let action = IotAction::from_auth_info_action_type(action_type).ok_or_else(|| {
            crate::certificates::enum_error("actionType", action_type, ACTION_TYPES)
        })?;
        requests.push((action, action_type.to_owned(), info.resources.clone()));
    }
    for name in body
        .policy_names_to_add
        .iter()
        .chain(&body.policy_names_to_skip)
    {
        validate_policy_name("policyNames", name)?;
    }
    let client_id = params.str("clientId").map(str::to_owned);
    let principal = body
        .principal
        .as_deref()
        .map(|p| normalize_target(&state, p))
        .transpose()?;
    // Gather the principal's policies, the added ones, and the connection facts.
    let to_add = body.policy_names_to_add.clone();
    let to_skip = body.policy_names_to_skip.clone();
    let client = client_id.clone();
    let (policy_list, thing) = state
        .blocking(move |store| {
            Ok(store.read(|conn| {
                let mut list = Vec::new();
                let mut thing = None;
                if let Some((stored, kind)) = &principal {
                    require_target(conn, stored, kind)?;
                    list = attachments::policies_for_principal(conn, stored)?;
                    // The thing attached to the principal whose name is the client id.
                    if let Some(client) = &client
                        && principals::things_for_principal(conn, stored)?.contains(client)
                        && let Some((type_name, attributes)) =
                            principals::thing_for_name(conn, client)?
                    {
                        thing = Some(ThingContext {
                            name: client.clone(),
                            type_name,
                            attributes,
                        });
                    }
                }
                for name in &to_add {
                    let policy =
                        policies::get(conn, name)?.ok_or_else(|| StoreError::Rejected {
                            code: "ResourceNotFoundException",
                            message: format!("Policy not found (name={name})"),
                            resource_id: None,
                        })?;
                    if !list.iter().any(|(n, _)| n == name) {
                        list.push((policy.name, policy.document));
                    }
                }
                list.retain(|(n, _)| !to_skip.contains(n));
                Ok((list, thing))
            })?)
        })
        .await?;
    let mut set = PolicySet::new();
    for (name, document) in &policy_list {
        match PolicyDocument::parse(document) {
            Ok(doc) => set.push(name.clone(), Arc::new(doc)),
            Err(e) => tracing::warn!(policy = %name, error = %e, "stored policy does not parse"),
        }
    }
    let certificate_id = match &body.principal {
        Some(p) => crate::wire::Arns::cert_id_of(p).map(str::to_ascii_lowercase),
        None => None,
    };
    // The certificate's subject and issuer fields, for `${iot:Certificate.*}` variables.
    let certificate = match certificate_id
        .as_deref()
        .and_then(thingd_model::CertificateId::parse)
    {
        Some(id) => state
            .blocking(move |store| Ok(store.certificate(&id)?))
            .await?
            .and_then(|record| thingd_auth::certificate_context(&record.pem)),
        None => None,
    };
    let variables = Variables {
        client_id,
        thing,
        certificate_id,
        certificate,
        ..Variables::default()
    };
    let mut results = Vec::new();
    for (action, action_type, resources) in requests {
        let mut allowing: Vec<String> = Vec::new();
        let mut denying: Vec<String> = Vec::new();
        let mut implicit = false;
        for resource in &resources {
            let explanation = set.explain(&Request {
                action: &action,
                resource,
                variables: &variables,
            });
            for name in explanation.allowing {
                if !allowing.contains(&name) {
                    allowing.push(name);
                }
            }
            for name in explanation.denying {
                if !denying.contains(&name) {
                    denying.push(name);
                }
            }
            if explanation.decision == thingd_policy::Decision::ImplicitDeny {
                implicit = true;
            }
        }
        let decision = if !denying.is_empty() {
            "EXPLICIT_DENY"
        } else if implicit || resources.is_empty() {
            "IMPLICIT_DENY"
        } else {
            "ALLOWED"
        };
        let implicit_policies: Vec<String> = if decision == "IMPLICIT_DENY" {
            policy_list
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| !allowing.contains(n))
                .collect()
        } else {
            Vec::new()
        };
        results.push(json!({
            "authInfo": { "actionType": action_type, "resources": resources },
            "allowed": { "policies": policy_refs(&state, allowing) },
            "denied": {
                "implicitDeny": { "policies": policy_refs(&state, implicit_policies) },
                "explicitDeny": { "policies": policy_refs(&state, denying) },
            },
            "authDecision": decision,
            "missingContextValues": [],
        }));
    }
    Ok(Json(json!({ "authResults": results })))
}

fn principal_header(headers: &HeaderMap, name: &str) -> Result<String, ApiError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::invalid_request(format!(
                "1 validation error detected: Value null at '{name}' failed to satisfy constraint: Member must not be null"
            ))
        })
}

async fn attach_principal_policy(
    State(state): State<Arc<ApiState>>,
    Path(policy): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = principal_header(&headers, "x-amzn-iot-principal")?;
    attach(&state, policy, &principal).await?;
    Ok(Json(json!({})))
}

async fn detach_principal_policy(
    State(state): State<Arc<ApiState>>,
    Path(policy): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = principal_header(&headers, "x-amzn-iot-principal")?;
    detach(&state, policy, &principal).await?;
    Ok(Json(json!({})))
}

async fn list_principal_policies(
    State(state): State<Arc<ApiState>>,
    params: Params,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = principal_header(&headers, "x-amzn-iot-principal")?;
    let page = params.marker_page()?;
    let mut names = attached_policies(&state, &principal, false).await?;
    if params.bool("isAscendingOrder")? == Some(false) {
        names.reverse();
    }
    let (items, next) = page.page(names);
    Ok(Json(with_next(
        json!({ "policies": policy_refs(&state, items) }),
        "nextMarker",
        next,
    )))
}

async fn list_policy_principals(
    State(state): State<Arc<ApiState>>,
    params: Params,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let policy = principal_header(&headers, "x-amzn-iot-policy")?;
    let page = params.marker_page()?;
    let mut all = targets(&state, policy).await?;
    if params.bool("isAscendingOrder")? == Some(false) {
        all.reverse();
    }
    let (items, next) = page.page(all);
    Ok(Json(with_next(
        json!({ "principals": items }),
        "nextMarker",
        next,
    )))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::test_support::TestApi;

    const DOC: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:us-east-1:123456789012:topic/a/*"},{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"}]}"#;
    const DENY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"iot:Publish","Resource":"arn:aws:iot:us-east-1:123456789012:topic/a/secret"}]}"#;

    fn enc(s: &str) -> String {
        s.replace(':', "%3A").replace('/', "%2F")
    }

    #[tokio::test]
    async fn policy_and_versions() {
        let api = TestApi::new();
        let p = api
            .ok(
                "POST",
                "/policies/p1",
                Some(json!({"policyDocument": DOC, "tags": [{"Key": "k", "Value": "v"}]})),
            )
            .await;
        assert_eq!(p["policyVersionId"], "1");
        assert_eq!(
            p["policyArn"],
            "arn:aws:iot:us-east-1:123456789012:policy/p1"
        );
        let (status, code, body) = api
            .err("POST", "/policies/p1", Some(json!({"policyDocument": DOC})))
            .await;
        assert_eq!(
            (status, code.as_str()),
            (409, "ResourceAlreadyExistsException")
        );
        assert_eq!(
            body["resourceArn"],
            "arn:aws:iot:us-east-1:123456789012:policy/p1"
        );
        let (status, code, body) = api
            .err(
                "POST",
                "/policies/bad",
                Some(json!({"policyDocument": "{\"Version\":\"2012-10-17\",\n \"Statement\": ["})),
            )
            .await;
        assert_eq!((status, code.as_str()), (400, "MalformedPolicyException"));
        assert!(
            body["message"].as_str().unwrap().contains("line 2"),
            "{body}"
        );
        let (_, code, _) = api
            .err("POST", "/policies/bad", Some(json!({"policyDocument": r#"{"Version":"2012-10-17","Statement":[{"Effect":"allow","Action":"iot:*","Resource":"*"}]}"#})))
            .await;
        assert_eq!(code, "MalformedPolicyException");
        let big = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:us-east-1:123456789012:topic/{}"}}]}}"#,
            "x".repeat(2100)
        );
        let (_, code, _) = api
            .err(
                "POST",
                "/policies/big",
                Some(json!({"policyDocument": big})),
            )
            .await;
        assert_eq!(code, "MalformedPolicyException");
        let (status, _, _) = api
            .err(
                "POST",
                "/policies/a%20b",
                Some(json!({"policyDocument": DOC})),
            )
            .await;
        assert_eq!(status, 400);

        let v2 = api
            .ok(
                "POST",
                "/policies/p1/version?setAsDefault=true",
                Some(json!({"policyDocument": DENY})),
            )
            .await;
        assert_eq!(
            (
                v2["policyVersionId"].as_str(),
                v2["isDefaultVersion"].as_bool()
            ),
            (Some("2"), Some(true))
        );
        let got = api.ok("GET", "/policies/p1", None).await;
        assert_eq!(
            (
                got["defaultVersionId"].as_str(),
                got["policyDocument"].as_str()
            ),
            (Some("2"), Some(DENY))
        );
        assert!(got["creationDate"].is_number());
        for _ in 3..=5 {
            api.ok(
                "POST",
                "/policies/p1/version",
                Some(json!({"policyDocument": DOC})),
            )
            .await;
        }
        let (status, code, _) = api
            .err(
                "POST",
                "/policies/p1/version",
                Some(json!({"policyDocument": DOC})),
            )
            .await;
        assert_eq!(
            (status, code.as_str()),
            (409, "VersionsLimitExceededException")
        );
        let versions = api.ok("GET", "/policies/p1/version", None).await;
        assert_eq!(versions["policyVersions"].as_array().unwrap().len(), 5);
        assert_eq!(versions["policyVersions"][3]["isDefaultVersion"], true);
        let v1 = api.ok("GET", "/policies/p1/version/1", None).await;
        assert_eq!(
            (
                v1["isDefaultVersion"].as_bool(),
                v1["policyDocument"].as_str()
            ),
            (Some(false), Some(DOC))
        );
        let (status, _, _) = api.err("GET", "/policies/p1/version/9", None).await;
        assert_eq!(status, 404);
        let (status, code, _) = api.err("DELETE", "/policies/p1/version/2", None).await;
        assert_eq!((status, code.as_str()), (400, "InvalidRequestException"));
        api.ok("PATCH", "/policies/p1/version/1", None).await;
        let (status, code, _) = api.err("DELETE", "/policies/p1", None).await;
        assert_eq!((status, code.as_str()), (409, "DeleteConflictException"));
        for v in 2..=5 {
            api.ok("DELETE", &format!("/policies/p1/version/{v}"), None)
                .await;
        }
        let listed = api.ok("GET", "/policies", None).await;
        assert_eq!(
            listed["policies"],
            json!([{"policyArn": "arn:aws:iot:us-east-1:123456789012:policy/p1", "policyName": "p1"}])
        );
        api.ok("DELETE", "/policies/p1", None).await;
        let (status, _, _) = api.err("GET", "/policies/p1", None).await;
        assert_eq!(status, 404);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_versions_are_neither_lost_nor_over_the_limit() {
        let api = std::sync::Arc::new(TestApi::new());
        api.ok("POST", "/policies/c", Some(json!({"policyDocument": DOC})))
            .await;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let api = api.clone();
            tasks.push(tokio::spawn(async move {
                api.call(
                    "POST",
                    "/policies/c/version?setAsDefault=true",
                    Some(json!({"policyDocument": DENY})),
                )
                .await
            }));
        }
        let mut ids = Vec::new();
        let mut refused = 0;
        for task in tasks {
            let reply = task.await.unwrap();
            match reply.error.as_deref() {
                None => ids.push(reply.body["policyVersionId"].as_str().unwrap().to_owned()),
                Some("VersionsLimitExceededException") => refused += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        ids.sort();
        assert_eq!(ids, ["2", "3", "4", "5"]);
        assert_eq!(refused, 4);
        let versions = api.ok("GET", "/policies/c/version", None).await;
        assert_eq!(versions["policyVersions"].as_array().unwrap().len(), 5);
        let defaults = versions["policyVersions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["isDefaultVersion"] == true)
            .count();
        assert_eq!(defaults, 1);
    }

    #[tokio::test]
    async fn test_authorization_resolves_certificate_fields() {
        let api = TestApi::new();
        let doc = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/cn/${iot:Certificate.Subject.CommonName}"}]}"#;
        api.ok(
            "POST",
            "/policies/by-cn",
            Some(json!({"policyDocument": doc})),
        )
        .await;
        let cert = api
            .ok("POST", "/keys-and-certificate?setAsActive=true", None)
            .await;
        let arn = cert["certificateArn"].as_str().unwrap().to_owned();
        api.ok(
            "PUT",
            "/target-policies/by-cn",
            Some(json!({"target": arn})),
        )
        .await;
        let auth = api
            .ok(
                "POST",
                "/test-authorization",
                Some(json!({"principal": arn, "authInfos": [
                    {"actionType": "PUBLISH", "resources": ["arn:aws:iot:us-east-1:123456789012:topic/cn/AWS IoT Certificate"]},
                    {"actionType": "PUBLISH", "resources": ["arn:aws:iot:us-east-1:123456789012:topic/cn/someone"]},
                ]})),
            )
            .await;
        let results = auth["authResults"].as_array().unwrap();
        assert_eq!(results[0]["authDecision"], "ALLOWED", "{auth}");
        assert_eq!(results[1]["authDecision"], "IMPLICIT_DENY", "{auth}");
    }

    #[tokio::test]
    async fn attachments_effective_policies_and_test_authorization() {
        let api = TestApi::new();
        api.ok(
            "POST",
            "/policies/allow",
            Some(json!({"policyDocument": DOC})),
        )
        .await;
        api.ok(
            "POST",
            "/policies/deny",
            Some(json!({"policyDocument": DENY})),
        )
        .await;
        let cert = api
            .ok("POST", "/keys-and-certificate?setAsActive=true", None)
            .await;
        let arn = cert["certificateArn"].as_str().unwrap().to_owned();
        // Another region/account spelling of the same certificate.
        let other_arn = arn.replace("us-east-1:123456789012", "eu-west-1:000000000000");
        api.ok(
            "PUT",
            "/target-policies/allow",
            Some(json!({"target": arn})),
        )
        .await;
        api.ok(
            "PUT",
            "/target-policies/allow",
            Some(json!({"target": other_arn})),
        )
        .await;
        api.ok("PUT", "/target-policies/deny", Some(json!({"target": arn})))
            .await;
        let (status, code, _) = api
            .err("PUT", "/target-policies/nope", Some(json!({"target": arn})))
            .await;
        assert_eq!((status, code.as_str()), (404, "ResourceNotFoundException"));
        let missing = format!("arn:aws:iot:us-east-1:123456789012:cert/{}", "f".repeat(64));
        let (status, _, _) = api
            .err(
                "PUT",
                "/target-policies/allow",
                Some(json!({"target": missing})),
            )
            .await;
        assert_eq!(status, 404);
        let (status, _, _) = api
            .err(
                "PUT",
                "/target-policies/allow",
                Some(json!({"target": "garbage"})),
            )
            .await;
        assert_eq!(status, 400);

        let attached = api
            .ok("POST", &format!("/attached-policies/{}", enc(&arn)), None)
            .await;
        let names: Vec<&str> = attached["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["policyName"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["allow", "deny"]);
        let targets = api.ok("POST", "/policy-targets/allow", None).await;
        assert_eq!(targets["targets"], json!([arn]));
        let effective = api
            .ok(
                "POST",
                "/effective-policies",
                Some(json!({"principal": arn})),
            )
            .await;
        assert_eq!(effective["effectivePolicies"].as_array().unwrap().len(), 2);
        assert_eq!(effective["effectivePolicies"][0]["policyDocument"], DOC);

        let auth = api
            .ok(
                "POST",
                "/test-authorization",
                Some(json!({"principal": arn, "authInfos": [
                    {"actionType": "PUBLISH", "resources": ["arn:aws:iot:us-east-1:123456789012:topic/a/b"]},
                    {"actionType": "PUBLISH", "resources": ["arn:aws:iot:us-east-1:123456789012:topic/a/secret"]},
                    {"actionType": "SUBSCRIBE", "resources": ["arn:aws:iot:us-east-1:123456789012:topicfilter/a/b"]},
                ]})),
            )
            .await;
        let results = auth["authResults"].as_array().unwrap();
        assert_eq!(results[0]["authDecision"], "ALLOWED");
        assert_eq!(results[0]["allowed"]["policies"][0]["policyName"], "allow");
        assert_eq!(results[1]["authDecision"], "EXPLICIT_DENY");
        assert_eq!(
            results[1]["denied"]["explicitDeny"]["policies"][0]["policyName"],
            "deny"
        );
        assert_eq!(results[2]["authDecision"], "IMPLICIT_DENY");
        let skipped = api
            .ok(
                "POST",
                "/test-authorization",
                Some(json!({"principal": arn, "policyNamesToSkip": ["deny"], "authInfos": [
                    {"actionType": "PUBLISH", "resources": ["arn:aws:iot:us-east-1:123456789012:topic/a/secret"]}]})),
            )
            .await;
        assert_eq!(skipped["authResults"][0]["authDecision"], "ALLOWED");
        let (status, _, _) = api
            .err(
                "POST",
                "/test-authorization",
                Some(json!({"principal": arn, "authInfos": []})),
            )
            .await;
        assert_eq!(status, 400);

        // Deprecated forms share the storage.
        let listed = api
            .call_with(
                "GET",
                "/principal-policies",
                None,
                &[("x-amzn-iot-principal", &arn)],
            )
            .await;
        assert_eq!(
            listed.body["policies"].as_array().unwrap().len(),
            2,
            "{listed:?}"
        );
        let principals = api
            .call_with(
                "GET",
                "/policy-principals",
                None,
                &[("x-amzn-iot-policy", "deny")],
            )
            .await;
        assert_eq!(principals.body["principals"], json!([arn]));

        // Guards: attached policy, certificate with policies.
        let (status, code, _) = api.err("DELETE", "/policies/allow", None).await;
        assert_eq!((status, code.as_str()), (409, "DeleteConflictException"));
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
        api.ok(
            "POST",
            "/target-policies/deny",
            Some(json!({"target": arn})),
        )
        .await;
        api.ok(
            "POST",
            "/target-policies/deny",
            Some(json!({"target": arn})),
        )
        .await;
        api.ok(
            "DELETE",
            &format!("/certificates/{id}?forceDelete=true"),
            None,
        )
        .await;
        let targets = api.ok("POST", "/policy-targets/allow", None).await;
        assert_eq!(targets["targets"], json!([]));
        api.ok("DELETE", "/policies/allow", None).await;
    }
}
