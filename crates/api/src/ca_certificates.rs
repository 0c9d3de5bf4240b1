//! CA certificates and the registration code (§6.6): GetRegistrationCode,
//! DeleteRegistrationCode, RegisterCACertificate, DescribeCACertificate,
//! UpdateCACertificate, ListCACertificates, DeleteCACertificate.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use thingd_auth::{inspect_certificate_pem, is_signed_by};
use thingd_store::registry::security::ca_certificates::{self, CaCertificate, CaUpdate};
use thingd_store::registry::security::registration_code;

use crate::certificates::{Params, enum_error, parse_certificate_id, with_next};
use crate::wire::{AwsJson, epoch, now};
use crate::{ApiError, ApiState};

pub(crate) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route(
            "/registrationcode",
            get(get_registration_code).delete(delete_registration_code),
        )
        .route("/cacertificate", post(register_ca_certificate))
        .route(
            "/cacertificate/{caCertificateId}",
            get(describe_ca_certificate)
                .put(update_ca_certificate)
                .delete(delete_ca_certificate),
        )
        .route("/cacertificates", get(list_ca_certificates))
}

/// A fresh registration code: 64 lowercase hex characters.
fn new_code() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

async fn get_registration_code(
    State(state): State<Arc<ApiState>>,
) -> Result<Json<Value>, ApiError> {
    let code = state
        .store
        .transact(|conn| registration_code::get_or_create(conn, new_code))
        .await?;
    Ok(Json(json!({ "registrationCode": code })))
}

async fn delete_registration_code(
    State(state): State<Arc<ApiState>>,
) -> Result<Json<Value>, ApiError> {
    state.store.transact(registration_code::delete).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterCaBody {
    ca_certificate: Option<String>,
    verification_certificate: Option<String>,
    registration_config: Option<Value>,
    certificate_mode: Option<String>,
    tags: Option<Vec<crate::tags::Tag>>,
}

const MODES: &[&str] = &["DEFAULT", "SNI_ONLY"];

/// A RegistrationConfig object as stored (only its known members).
fn registration_config(value: Option<Value>) -> Result<Option<String>, ApiError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let Value::Object(map) = value else {
        return Err(ApiError::invalid_request(
            "registrationConfig must be an object",
        ));
    };
    let mut kept = serde_json::Map::new();
    for key in ["templateBody", "roleArn", "templateName"] {
        match map.get(key) {
            Some(Value::String(s)) => {
                kept.insert(key.to_owned(), Value::String(s.clone()));
            }
            Some(Value::Null) | None => {}
            Some(_) => {
                return Err(ApiError::invalid_request(format!(
                    "registrationConfig.{key} must be a string"
                )));
            }
        }
    }
    Ok(Some(Value::Object(kept).to_string()))
}

async fn register_ca_certificate(
    State(state): State<Arc<ApiState>>,
    params: Params,
    AwsJson(body): AwsJson<RegisterCaBody>,
) -> Result<Json<Value>, ApiError> {
    let active = params.bool("setAsActive")?.unwrap_or(false);
    let auto = params.bool("allowAutoRegistration")?.unwrap_or(false);
    let mode = body
        .certificate_mode
        .unwrap_or_else(|| "DEFAULT".to_owned());
    if !MODES.contains(&mode.as_str()) {
        return Err(enum_error("certificateMode", &mode, MODES));
    }
    let ca_pem = body
        .ca_certificate
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| {
            ApiError::invalid_request(
                "1 validation error detected: Value null at 'caCertificate' failed to satisfy constraint: Member must not be null",
            )
        })?;
    let ca = inspect_certificate_pem(&ca_pem)
        .map_err(|e| ApiError::certificate_validation(format!("Invalid CA certificate: {e}")))?;
    if !ca.is_ca {
        return Err(ApiError::certificate_validation(
            "The certificate is not a CA certificate (basicConstraints CA is not set)",
        ));
    }
    if ca.not_after < now() {
        return Err(ApiError::certificate_validation(
            "The CA certificate has expired",
        ));
    }
    let verification = body
        .verification_certificate
        .filter(|p| !p.trim().is_empty());
    let verification = match (mode.as_str(), verification) {
        ("SNI_ONLY", Some(_)) => {
            return Err(ApiError::invalid_request(
                "A verification certificate must not be given in SNI_ONLY mode",
            ));
        }
        ("SNI_ONLY", None) => None,
        (_, None) => {
            return Err(ApiError::invalid_request(
                "A verification certificate is required in DEFAULT mode",
            ));
        }
        (_, Some(pem)) => Some(inspect_certificate_pem(&pem).map_err(|e| {
            ApiError::certificate_validation(format!("Invalid verification certificate: {e}"))
        })?),
    };
    if let Some(v) = &verification
        && !is_signed_by(&v.der, &ca.der)
    {
        return Err(ApiError::certificate_validation(
            "The verification certificate is not signed by the CA certificate",
        ));
    }
    let config = registration_config(body.registration_config)?;
    let tags = crate::tags::validate_tags(body.tags.unwrap_or_default())?;
    let id = ca.id.to_string();
    let row = CaCertificate {
        id: id.clone(),
        pem: ca_pem.clone(),
        status: if active { "ACTIVE" } else { "INACTIVE" }.to_owned(),
        auto_registration: if auto { "ENABLE" } else { "DISABLE" }.to_owned(),
        mode,
        registration_config: config,
        created_at: now(),
        updated_at: now(),
        customer_version: 1,
        generation: 1,
    };
    let verification_cn = verification.map(|v| v.common_name.unwrap_or_default());
    let arn = state.arns.ca_cert(&id);
    let tag_arn = arn.clone();
    state
        .store
        .transact(move |conn| {
            if let Some(cn) = verification_cn {
                let refuse = |message: &str| thingd_store::StoreError::Rejected {
                    code: "RegistrationCodeValidationException",
                    message: message.to_owned(),
                    resource_id: None,
                };
                match registration_code::get(conn)? {
                    None => return Err(refuse("There is no registration code; call GetRegistrationCode first")),
                    Some(code) if !code.eq_ignore_ascii_case(&cn) => {
                        return Err(refuse(
                            "The verification certificate's common name is not the registration code",
                        ));
                    }
                    Some(_) => {}
                }
            }
            ca_certificates::insert(conn, &row)?;
            thingd_store::registry::tags::put(conn, &tag_arn, &tags)
        })
        .await
        .map_err(|e| {
            let mut e = ApiError::from(e);
            if e.code == "ResourceAlreadyExistsException" {
                e.resource_arn = Some(arn.clone());
            }
            e
        })?;
    if active {
        state.registry.set_ca(&id, Some(&ca_pem));
    }
    Ok(Json(json!({
        "certificateArn": state.arns.ca_cert(&id),
        "certificateId": id,
    })))
}

async fn describe_ca_certificate(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_certificate_id("caCertificateId", &id)?.to_string();
    let key = id.clone();
    let ca = state
        .blocking(move |store| Ok(store.read(|conn| ca_certificates::get(conn, &key))?))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("CA certificate {id} not found")))?;
    let mut description = json!({
        "certificateArn": state.arns.ca_cert(&ca.id),
        "certificateId": ca.id,
        "status": ca.status,
        "certificatePem": ca.pem,
        "ownedBy": state.arns.account,
        "creationDate": epoch(ca.created_at),
        "autoRegistrationStatus": ca.auto_registration,
        "lastModifiedDate": epoch(ca.updated_at),
        "customerVersion": ca.customer_version,
        "generationId": ca.generation.to_string(),
        "certificateMode": ca.mode,
    });
    if let (Ok(info), Some(map)) = (
        inspect_certificate_pem(&ca.pem),
        description.as_object_mut(),
    ) {
        map.insert(
            "validity".to_owned(),
            json!({ "notBefore": epoch(info.not_before), "notAfter": epoch(info.not_after) }),
        );
    }
    let mut out = json!({ "certificateDescription": description });
    if let (Some(config), Some(map)) = (ca.registration_config, out.as_object_mut())
        && let Ok(value) = serde_json::from_str::<Value>(&config)
    {
        map.insert("registrationConfig".to_owned(), value);
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateCaBody {
    registration_config: Option<Value>,
    remove_auto_registration: Option<bool>,
}

async fn update_ca_certificate(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    params: Params,
    AwsJson(body): AwsJson<UpdateCaBody>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_certificate_id("caCertificateId", &id)?.to_string();
    let mut update = CaUpdate {
        status: params.one_of("newStatus", &["ACTIVE", "INACTIVE"])?,
        auto_registration: params.one_of("newAutoRegistrationStatus", &["ENABLE", "DISABLE"])?,
        registration_config: registration_config(body.registration_config)?,
        remove_registration_config: false,
    };
    if body.remove_auto_registration == Some(true) {
        update.auto_registration = Some("DISABLE".to_owned());
    }
    let key = id.clone();
    let row = state
        .store
        .transact(move |conn| {
            ca_certificates::update(conn, &key, &update, now())?;
            ca_certificates::get(conn, &key)
        })
        .await?;
    if let Some(row) = row {
        let active = (row.status == "ACTIVE").then_some(row.pem.as_str());
        state.registry.set_ca(&id, active);
    }
    Ok(Json(json!({})))
}

async fn delete_ca_certificate(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_certificate_id("caCertificateId", &id)?.to_string();
    let key = id.clone();
    let arn = state.arns.ca_cert(&id);
    state
        .store
        .transact(move |conn| {
            ca_certificates::delete(conn, &key)?;
            thingd_store::registry::tags::delete_all_for(conn, &arn)
        })
        .await?;
    state.registry.set_ca(&id, None);
    Ok(Json(json!({})))
}

async fn list_ca_certificates(
    State(state): State<Arc<ApiState>>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let page = params.marker_page()?;
    let ascending = params.bool("isAscendingOrder")?.unwrap_or(false);
    let template = params.str("templateName").map(str::to_owned);
    let all = state
        .blocking(move |store| {
            Ok(store.read(|conn| ca_certificates::list(conn, ascending, template.as_deref()))?)
        })
        .await?;
    let (items, next) = page.page(all);
    let certificates: Vec<Value> = items
        .into_iter()
        .map(|c| {
            json!({
                "certificateArn": state.arns.ca_cert(&c.id),
                "certificateId": c.id,
                "status": c.status,
                "creationDate": epoch(c.created_at),
            })
        })
        .collect();
    Ok(Json(with_next(
        json!({ "certificates": certificates }),
        "nextMarker",
        next,
    )))
}
