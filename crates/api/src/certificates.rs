//! Certificates (§6.5): CreateKeysAndCertificate, CreateCertificateFromCsr,
//! RegisterCertificate, RegisterCertificateWithoutCA, DescribeCertificate, UpdateCertificate,
//! DeleteCertificate, ListCertificates, ListCertificatesByCA. Also the query-string and
//! header helpers the security handlers share.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use thingd_auth::{Trust, inspect_certificate_pem, is_signed_by};
use thingd_model::{CertificateId, CertificateStatus};
use thingd_store::registry::security::certificates::{NewCertificate, Origin};
use thingd_store::registry::security::{ca_certificates, certificates};

use crate::wire::{AwsJson, PageRequest, epoch, now};
use crate::{ApiError, ApiState};

pub(crate) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/keys-and-certificate", post(create_keys_and_certificate))
        .route(
            "/certificates",
            post(create_certificate_from_csr).get(list_certificates),
        )
        .route("/certificate/register", post(register_certificate))
        .route(
            "/certificate/register-no-ca",
            post(register_certificate_without_ca),
        )
        .route(
            "/certificates/{certificateId}",
            get(describe_certificate)
                .put(update_certificate)
                .delete(delete_certificate),
        )
        .route(
            "/certificates-by-ca/{caCertificateId}",
            get(list_certificates_by_ca),
        )
}

/// The query string as a map (the last value of a repeated key wins).
pub(crate) struct Params(pub(crate) HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(map) =
            axum::extract::Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
                .map_err(|e| ApiError::invalid_request(format!("Invalid query string: {e}")))?;
        Ok(Params(map))
    }
}

impl Params {
    /// A string parameter.
    pub(crate) fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A boolean parameter (`true`/`false`, any case).
    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.str(name) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid_request(format!(
                "1 validation error detected: Value '{v}' at '{name}' failed to satisfy constraint: Member must be a boolean"
            ))),
        }
    }

    /// An integer parameter.
    pub(crate) fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.str(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::invalid_request(format!(
                        "1 validation error detected: Value '{v}' at '{name}' failed to satisfy constraint: Member must be a number"
                    ))
                })
            })
            .transpose()
    }

    /// `marker` + `pageSize`.
    pub(crate) fn marker_page(&self) -> Result<PageRequest, ApiError> {
        PageRequest::parse(self.str("marker"), self.int("pageSize")?, "pageSize")
    }

    /// `nextToken` + `maxResults`.
    pub(crate) fn token_page(&self) -> Result<PageRequest, ApiError> {
        PageRequest::parse(self.str("nextToken"), self.int("maxResults")?, "maxResults")
    }

    /// A value that must be one of `allowed`.
    pub(crate) fn one_of(&self, name: &str, allowed: &[&str]) -> Result<Option<String>, ApiError> {
        match self.str(name) {
            None => Ok(None),
            Some(v) if allowed.contains(&v) => Ok(Some(v.to_owned())),
            Some(v) => Err(enum_error(name, v, allowed)),
        }
    }
}

/// AWS's message for a value outside an enum.
pub(crate) fn enum_error(field: &str, value: &str, allowed: &[&str]) -> ApiError {
    ApiError::invalid_request(format!(
        "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
        allowed.join(", ")
    ))
}

/// Adds `nextMarker`/`nextToken` to a listing response when there is a next page.
pub(crate) fn with_next(mut body: Value, key: &str, next: Option<String>) -> Value {
    if let (Some(next), Value::Object(map)) = (next, &mut body) {
        map.insert(key.to_owned(), Value::String(next));
    }
    body
}

/// A certificate id from a path or ARN: 64 hex characters (`0x` prefix allowed), lowercased.
pub(crate) fn parse_certificate_id(field: &str, value: &str) -> Result<CertificateId, ApiError> {
    let hex = value
        .strip_prefix("0x")
        .unwrap_or(value)
        .to_ascii_lowercase();
    CertificateId::parse(&hex).ok_or_else(|| {
        ApiError::invalid_request(format!(
            "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: Member must have length between 64 and 64 and satisfy regular expression pattern: (0x)?[a-fA-F0-9]+"
        ))
    })
}

const STATUSES: &[&str] = &[
    "ACTIVE",
    "INACTIVE",
    "REVOKED",
    "PENDING_TRANSFER",
    "REGISTER_INACTIVE",
    "PENDING_ACTIVATION",
];

fn parse_status(field: &str, value: &str) -> Result<CertificateStatus, ApiError> {
    if !STATUSES.contains(&value) {
        return Err(enum_error(field, value, STATUSES));
    }
    value
        .parse()
        .map_err(|_| enum_error(field, value, STATUSES))
}

fn initial_status(active: bool) -> CertificateStatus {
    if active {
        CertificateStatus::Active
    } else {
        CertificateStatus::Inactive
    }
}

/// Inserts a new certificate and, after the commit, tells the TLS cache.
async fn insert_certificate(
    state: &ApiState,
    new: NewCertificate,
    extra_check: impl FnOnce(&rusqlite::Connection) -> Result<Option<String>, thingd_store::StoreError>
    + Send
    + 'static,
) -> Result<(CertificateId, Option<String>), ApiError> {
    let id =
        CertificateId::parse(&new.id).ok_or_else(|| ApiError::internal("bad certificate id"))?;
    let status = new.status;
    let origin = new.origin;
    let arn = state.arns.cert(&new.id);
    let result = state
        .store
        .transact(move |conn| {
            let ca_id = extra_check(conn)?;
            let mut new = new;
            if ca_id.is_some() {
                new.ca_id.clone_from(&ca_id);
            }
            if let Some(ca) = &ca_id
                && let Some(row) = ca_certificates::get(conn, ca)?
            {
                new.mode = row.mode;
            }
            certificates::insert(conn, &new, now())?;
            Ok(ca_id)
        })
        .await
        .map_err(|e| {
            let mut e = ApiError::from(e);
            if e.code == "ResourceAlreadyExistsException" {
                e.resource_arn = Some(arn);
            }
            e
        })?;
    match origin {
        Origin::NoCa => state.registry.set_trust(id.clone(), Trust::WithoutCa),
        Origin::Ca => state
            .registry
            .set_trust(id.clone(), Trust::Ca(result.clone())),
        Origin::Issued => {}
    }
    if status == CertificateStatus::Active {
        state.registry.set_status(id.clone(), status);
    }
    Ok((id, result))
}

async fn create_keys_and_certificate(
    State(state): State<Arc<ApiState>>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let active = params.bool("setAsActive")?.unwrap_or(false);
    let ca = state.ca.clone();
    let issued = tokio::task::spawn_blocking(move || {
        ca.issue_device_certificate("AWS IoT Certificate", true)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let new = NewCertificate {
        id: issued.id.to_string(),
        pem: issued.certificate_pem.clone(),
        status: initial_status(active),
        ca_id: None,
        origin: Origin::Issued,
        mode: "DEFAULT".to_owned(),
    };
    let (id, _) = insert_certificate(&state, new, |_| Ok(None)).await?;
    Ok(Json(json!({
        "certificateArn": state.arns.cert(id.as_str()),
        "certificateId": id.as_str(),
        "certificatePem": issued.certificate_pem,
        "keyPair": {
            "PublicKey": issued.public_key_pem,
            "PrivateKey": issued.private_key_pem,
        },
    })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CsrBody {
    certificate_signing_request: Option<String>,
}

async fn create_certificate_from_csr(
    State(state): State<Arc<ApiState>>,
    params: Params,
    AwsJson(body): AwsJson<CsrBody>,
) -> Result<Json<Value>, ApiError> {
    let active = params.bool("setAsActive")?.unwrap_or(false);
    let csr = body
        .certificate_signing_request
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            ApiError::invalid_request(
                "1 validation error detected: Value null at 'certificateSigningRequest' failed to satisfy constraint: Member must not be null",
            )
        })?;
    if csr.len() > 4096 {
        return Err(ApiError::invalid_request(
            "1 validation error detected: Value at 'certificateSigningRequest' failed to satisfy constraint: Member must have length less than or equal to 4096",
        ));
    }
    let ca = state.ca.clone();
    let signed = tokio::task::spawn_blocking(move || ca.sign_csr(&csr))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| {
            ApiError::invalid_request(format!("Invalid certificate signing request: {e}"))
        })?;
    let new = NewCertificate {
        id: signed.id.to_string(),
        pem: signed.certificate_pem.clone(),
        status: initial_status(active),
        ca_id: None,
        origin: Origin::Issued,
        mode: "DEFAULT".to_owned(),
    };
    let (id, _) = insert_certificate(&state, new, |_| Ok(None)).await?;
    Ok(Json(json!({
        "certificateArn": state.arns.cert(id.as_str()),
        "certificateId": id.as_str(),
        "certificatePem": signed.certificate_pem,
    })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterBody {
    certificate_pem: Option<String>,
    ca_certificate_pem: Option<String>,
    status: Option<String>,
}

/// The status a registration asks for: the body's `status`, else the deprecated
/// `setAsActive`, else INACTIVE. PENDING_TRANSFER and PENDING_ACTIVATION cannot be asked for.
fn registration_status(
    body: Option<&str>,
    set_as_active: Option<bool>,
) -> Result<CertificateStatus, ApiError> {
    let status = match body {
        Some(s) => parse_status("status", s)?,
        None => initial_status(set_as_active.unwrap_or(false)),
    };
    if matches!(
        status,
        CertificateStatus::PendingTransfer | CertificateStatus::PendingActivation
    ) {
        return Err(ApiError::certificate_state(format!(
            "A certificate cannot be registered with status {status}"
        )));
    }
    Ok(status)
}

fn required_pem(value: Option<String>, field: &str) -> Result<String, ApiError> {
    match value {
        Some(pem) if !pem.trim().is_empty() && pem.len() <= 65536 => Ok(pem),
        Some(_) => Err(ApiError::invalid_request(format!(
            "1 validation error detected: Value at '{field}' failed to satisfy constraint: Member must have length between 1 and 65536"
        ))),
        None => Err(ApiError::invalid_request(format!(
            "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
        ))),
    }
}

/// Parses an uploaded device certificate: it must be a valid, unexpired, non-CA certificate.
fn device_certificate(pem: &str) -> Result<thingd_auth::CertificateInfo, ApiError> {
    let info = inspect_certificate_pem(pem)
        .map_err(|e| ApiError::certificate_validation(format!("Invalid certificate: {e}")))?;
    if info.not_after < now() {
        return Err(ApiError::certificate_validation(
            "The certificate has expired",
        ));
    }
    Ok(info)
}

async fn register_certificate(
    State(state): State<Arc<ApiState>>,
    params: Params,
    AwsJson(body): AwsJson<RegisterBody>,
) -> Result<Json<Value>, ApiError> {
    let pem = required_pem(body.certificate_pem, "certificatePem")?;
    let status = registration_status(body.status.as_deref(), params.bool("setAsActive")?)?;
    let info = device_certificate(&pem)?;
    let root = state.ca.root_der().to_vec();
    let given_ca = body
        .ca_certificate_pem
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            inspect_certificate_pem(&p).map_err(|e| {
                ApiError::certificate_validation(format!("Invalid CA certificate: {e}"))
            })
        })
        .transpose()?;
    let leaf = info.der.to_vec();
    // Which CA vouches for it: the thingd root or a registered CA, checked against the
    // registered CAs inside the transaction.
    let check =
        move |conn: &rusqlite::Connection| -> Result<Option<String>, thingd_store::StoreError> {
            let refuse = |code: &'static str, message: &str| thingd_store::StoreError::Rejected {
                code,
                message: message.to_owned(),
                resource_id: None,
            };
            if let Some(ca) = given_ca {
                if ca.der.as_ref() == root.as_slice() {
                    return if is_signed_by(&leaf, &root) {
                        Ok(None)
                    } else {
                        Err(refuse(
                            "CertificateValidationException",
                            "The certificate is not signed by the given CA certificate",
                        ))
                    };
                }
                let Some(row) = ca_certificates::get(conn, ca.id.as_str())? else {
                    return Err(refuse(
                        "CertificateValidationException",
                        "The CA certificate is not registered",
                    ));
                };
                if row.status != "ACTIVE" {
                    return Err(refuse(
                        "CertificateStateException",
                        "The CA certificate is not ACTIVE",
                    ));
                }
                return if is_signed_by(&leaf, &ca.der) {
                    Ok(Some(row.id))
                } else {
                    Err(refuse(
                        "CertificateValidationException",
                        "The certificate is not signed by the given CA certificate",
                    ))
                };
            }
            if is_signed_by(&leaf, &root) {
                return Ok(None);
            }
            for (id, ca_pem) in ca_certificates::active(conn)? {
                if let Ok(ca) = inspect_certificate_pem(&ca_pem)
                    && is_signed_by(&leaf, &ca.der)
                {
                    return Ok(Some(id));
                }
            }
            Err(refuse(
                "CertificateValidationException",
                "The certificate is not signed by a registered CA certificate",
            ))
        };
    let new = NewCertificate {
        id: info.id.to_string(),
        pem,
        status,
        ca_id: None,
        origin: Origin::Ca,
        mode: "DEFAULT".to_owned(),
    };
    let (id, _) = insert_certificate(&state, new, check).await?;
    Ok(Json(json!({
        "certificateArn": state.arns.cert(id.as_str()),
        "certificateId": id.as_str(),
    })))
}

async fn register_certificate_without_ca(
    State(state): State<Arc<ApiState>>,
    AwsJson(body): AwsJson<RegisterBody>,
) -> Result<Json<Value>, ApiError> {
    let pem = required_pem(body.certificate_pem, "certificatePem")?;
    let status = registration_status(body.status.as_deref(), None)?;
    let info = device_certificate(&pem)?;
    let new = NewCertificate {
        id: info.id.to_string(),
        pem,
        status,
        ca_id: None,
        origin: Origin::NoCa,
        mode: "SNI_ONLY".to_owned(),
    };
    let (id, _) = insert_certificate(&state, new, |_| Ok(None)).await?;
    Ok(Json(json!({
        "certificateArn": state.arns.cert(id.as_str()),
        "certificateId": id.as_str(),
    })))
}

fn validity(pem: &str) -> Option<Value> {
    let info = inspect_certificate_pem(pem).ok()?;
    Some(json!({
        "notBefore": epoch(info.not_before),
        "notAfter": epoch(info.not_after),
    }))
}

async fn describe_certificate(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_certificate_id("certificateId", &id)?;
    let key = id.to_string();
    let cert = state
        .blocking(move |store| Ok(store.read(|conn| certificates::get(conn, &key))?))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Certificate {id} not found")))?;
    let mut description = json!({
        "certificateArn": state.arns.cert(&cert.id),
        "certificateId": cert.id,
        "status": cert.status,
        "certificatePem": cert.pem,
        "ownedBy": state.arns.account,
        "creationDate": epoch(cert.created_at),
        "lastModifiedDate": epoch(cert.updated_at),
        "customerVersion": cert.customer_version,
        "generationId": cert.generation.to_string(),
        "certificateMode": cert.mode,
    });
    if let Some(map) = description.as_object_mut() {
        if let Some(ca) = &cert.ca_id {
            map.insert("caCertificateId".to_owned(), Value::String(ca.clone()));
        }
        if let Some(v) = validity(&cert.pem) {
            map.insert("validity".to_owned(), v);
        }
    }
    Ok(Json(json!({ "certificateDescription": description })))
}

async fn update_certificate(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let id = parse_certificate_id("certificateId", &id)?;
    let status = match params.str("newStatus") {
        Some(s) => parse_status("newStatus", s)?,
        None => {
            return Err(ApiError::invalid_request(
                "1 validation error detected: Value null at 'newStatus' failed to satisfy constraint: Member must not be null",
            ));
        }
    };
    let key = id.to_string();
    state
        .store
        .transact(move |conn| certificates::update_status(conn, &key, status, now()))
        .await?;
    // Turning a certificate on takes effect at once; turning it off is left to the status
    // watcher's refresh, which also closes the certificate's connections.
    if status == CertificateStatus::Active {
        state.registry.set_status(id, status);
    }
    Ok(Json(json!({})))
}

async fn delete_certificate(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let id = parse_certificate_id("certificateId", &id)?;
    let force = params.bool("forceDelete")?.unwrap_or(false);
    let key = id.to_string();
    let arn = state.arns.cert(&key);
    state
        .store
        .transact(move |conn| {
            certificates::delete(conn, &key, &arn, force)?;
            thingd_store::registry::tags::delete_all_for(conn, &arn)
        })
        .await?;
    Ok(Json(json!({})))
}

async fn list(
    state: &ApiState,
    params: &Params,
    ca: Option<String>,
) -> Result<Json<Value>, ApiError> {
    let page = params.marker_page()?;
    let ascending = params.bool("isAscendingOrder")?.unwrap_or(false);
    let all = state
        .blocking(move |store| {
            Ok(store.read(|conn| certificates::list(conn, ascending, ca.as_deref()))?)
        })
        .await?;
    let (items, next) = page.page(all);
    let certificates: Vec<Value> = items
        .into_iter()
        .map(|c| {
            json!({
                "certificateArn": state.arns.cert(&c.id),
                "certificateId": c.id,
                "status": c.status,
                "certificateMode": c.mode,
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

async fn list_certificates(
    State(state): State<Arc<ApiState>>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    list(&state, &params, None).await
}

async fn list_certificates_by_ca(
    State(state): State<Arc<ApiState>>,
    Path(ca): Path<String>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let ca = parse_certificate_id("caCertificateId", &ca)?;
    list(&state, &params, Some(ca.to_string())).await
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use serde_json::json;
    use thingd_model::CertificateStatus;

    use crate::test_support::TestApi;

    /// A self-signed CA and its issuer.
    pub(crate) fn test_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        (pem.clone(), Issuer::from_ca_cert_pem(&pem, key).unwrap())
    }

    /// A leaf with subject CN `cn` signed by `issuer`; returns (cert PEM, key PEM).
    pub(crate) fn leaf(cn: &str, issuer: &Issuer<'_, KeyPair>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[tokio::test]
    async fn keys_and_certificate_lifecycle() {
        let api = TestApi::new();
        let created = api.ok("POST", "/keys-and-certificate", None).await;
        let id = created["certificateId"].as_str().unwrap().to_owned();
        assert_eq!(id.len(), 64);
        assert_eq!(
            created["certificateArn"],
            format!("arn:aws:iot:us-east-1:123456789012:cert/{id}")
        );
        assert!(
            created["keyPair"]["PrivateKey"]
                .as_str()
                .unwrap()
                .contains("PRIVATE KEY")
        );
        assert!(
            created["keyPair"]["PublicKey"]
                .as_str()
                .unwrap()
                .contains("BEGIN PUBLIC KEY")
        );
        let d = api.ok("GET", &format!("/certificates/{id}"), None).await;
        let d = &d["certificateDescription"];
        assert_eq!(d["status"], "INACTIVE");
        assert_eq!(d["ownedBy"], "123456789012");
        assert_eq!(d["certificateMode"], "DEFAULT");
        assert!(d["creationDate"].is_number());
        assert!(d["validity"]["notAfter"].as_f64().unwrap() > 2.5e9);
        assert!(d.get("caCertificateId").is_none());

        api.ok("PUT", &format!("/certificates/{id}?newStatus=ACTIVE"), None)
            .await;
        let cert_id = thingd_model::CertificateId::parse(&id).unwrap();
        assert_eq!(
            api.state.registry.status(&cert_id),
            Some(CertificateStatus::Active)
        );
        let (status, code, body) = api
            .err("DELETE", &format!("/certificates/{id}"), None)
            .await;
        assert_eq!(
            (status, code.as_str()),
            (406, "CertificateStateException"),
            "{body}"
        );
        let (status, code, _) = api
            .err("PUT", &format!("/certificates/{id}?newStatus=BOGUS"), None)
            .await;
        assert_eq!((status, code.as_str()), (400, "InvalidRequestException"));
        api.ok(
            "PUT",
            &format!("/certificates/{id}?newStatus=REVOKED"),
            None,
        )
        .await;
        let (status, code, _) = api
            .err("PUT", &format!("/certificates/{id}?newStatus=ACTIVE"), None)
            .await;
        assert_eq!((status, code.as_str()), (406, "CertificateStateException"));

        let active = api
            .ok("POST", "/keys-and-certificate?setAsActive=true", None)
            .await;
        let listed = api
            .ok(
                "GET",
                "/certificates?pageSize=1&isAscendingOrder=true",
                None,
            )
            .await;
        assert_eq!(listed["certificates"][0]["certificateId"], id.as_str());
        let marker = listed["nextMarker"].as_str().unwrap().to_owned();
        let next = api
            .ok(
                "GET",
                &format!("/certificates?pageSize=1&isAscendingOrder=true&marker={marker}"),
                None,
            )
            .await;
        assert_eq!(
            next["certificates"][0]["certificateId"],
            active["certificateId"]
        );
        assert_eq!(next["certificates"][0]["status"], "ACTIVE");
        assert!(next.get("nextMarker").is_none());

        api.ok("DELETE", &format!("/certificates/{id}"), None).await;
        let (status, code, _) = api.err("GET", &format!("/certificates/{id}"), None).await;
        assert_eq!((status, code.as_str()), (404, "ResourceNotFoundException"));
        let (status, _, _) = api.err("GET", "/certificates/abc", None).await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn certificate_from_csr() {
        let api = TestApi::new();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "from-csr");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let a = api
            .ok(
                "POST",
                "/certificates?setAsActive=true",
                Some(json!({"certificateSigningRequest": csr})),
            )
            .await;
        let b = api
            .ok(
                "POST",
                "/certificates",
                Some(json!({"certificateSigningRequest": csr})),
            )
            .await;
        assert_ne!(
            a["certificateId"], b["certificateId"],
            "each CSR call issues a new certificate"
        );
        assert!(a.get("keyPair").is_none());
        let pem = a["certificatePem"].as_str().unwrap();
        let info = thingd_auth::inspect_certificate_pem(pem).unwrap();
        assert_eq!(info.common_name.as_deref(), Some("from-csr"));
        let (status, code, _) = api
            .err(
                "POST",
                "/certificates",
                Some(json!({"certificateSigningRequest": "junk"})),
            )
            .await;
        assert_eq!((status, code.as_str()), (400, "InvalidRequestException"));
        let (status, _, _) = api.err("POST", "/certificates", Some(json!({}))).await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn registration_with_and_without_ca() {
        let api = TestApi::new();
        let (ca_pem, issuer) = test_ca("customer CA");
        let code = api.ok("GET", "/registrationcode", None).await["registrationCode"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(code.len(), 64);
        let again = api.ok("GET", "/registrationcode", None).await;
        assert_eq!(again["registrationCode"], code.as_str());

        // A device certificate of an unregistered CA: refused; without CA: accepted.
        let (device, _) = leaf("device-1", &issuer);
        let (status, err, _) = api
            .err(
                "POST",
                "/certificate/register",
                Some(json!({"certificatePem": device})),
            )
            .await;
        assert_eq!(
            (status, err.as_str()),
            (400, "CertificateValidationException")
        );
        let no_ca = api
            .ok(
                "POST",
                "/certificate/register-no-ca",
                Some(json!({"certificatePem": device, "status": "ACTIVE"})),
            )
            .await;
        let no_ca_id = no_ca["certificateId"].as_str().unwrap().to_owned();
        let d = api
            .ok("GET", &format!("/certificates/{no_ca_id}"), None)
            .await;
        assert_eq!(d["certificateDescription"]["certificateMode"], "SNI_ONLY");
        assert_eq!(d["certificateDescription"]["status"], "ACTIVE");
        let (status, err, body) = api
            .err(
                "POST",
                "/certificate/register-no-ca",
                Some(json!({"certificatePem": device})),
            )
            .await;
        assert_eq!(
            (status, err.as_str()),
            (409, "ResourceAlreadyExistsException")
        );
        assert_eq!(body["resourceId"], no_ca_id.as_str());
        assert!(body["resourceArn"].as_str().unwrap().ends_with(&no_ca_id));

        // Register the CA: wrong CN, then right.
        let (wrong, _) = leaf("not-the-code", &issuer);
        let (status, err, _) = api
            .err(
                "POST",
                "/cacertificate",
                Some(json!({"caCertificate": ca_pem, "verificationCertificate": wrong})),
            )
            .await;
        assert_eq!(
            (status, err.as_str()),
            (400, "RegistrationCodeValidationException")
        );
        let (status, _, _) = api
            .err(
                "POST",
                "/cacertificate",
                Some(json!({"caCertificate": ca_pem})),
            )
            .await;
        assert_eq!(status, 400, "DEFAULT mode needs a verification certificate");
        let (verification, _) = leaf(&code, &issuer);
        let ca = api
            .ok(
                "POST",
                "/cacertificate?setAsActive=true&allowAutoRegistration=true",
                Some(
                    json!({"caCertificate": ca_pem, "verificationCertificate": verification,
                            "registrationConfig": {"templateName": "tpl"}}),
                ),
            )
            .await;
        let ca_id = ca["certificateId"].as_str().unwrap().to_owned();
        assert!(ca["certificateArn"].as_str().unwrap().contains(":cacert/"));
        assert!(api.state.registry.ca_verifier(&ca_id).is_some());
        let described = api
            .ok("GET", &format!("/cacertificate/{ca_id}"), None)
            .await;
        assert_eq!(described["certificateDescription"]["status"], "ACTIVE");
        assert_eq!(
            described["certificateDescription"]["autoRegistrationStatus"],
            "ENABLE"
        );
        assert_eq!(described["registrationConfig"]["templateName"], "tpl");
        let listed = api
            .ok("GET", "/cacertificates?templateName=tpl", None)
            .await;
        assert_eq!(listed["certificates"][0]["certificateId"], ca_id.as_str());

        // Now a device of that CA registers, with or without naming the CA.
        let (device2, _) = leaf("device-2", &issuer);
        let reg = api
            .ok("POST", "/certificate/register", Some(json!({"certificatePem": device2, "caCertificatePem": ca_pem, "status": "ACTIVE"})))
            .await;
        let dev2 = reg["certificateId"].as_str().unwrap().to_owned();
        let d = api.ok("GET", &format!("/certificates/{dev2}"), None).await;
        assert_eq!(
            d["certificateDescription"]["caCertificateId"],
            ca_id.as_str()
        );
        let (device3, _) = leaf("device-3", &issuer);
        api.ok(
            "POST",
            "/certificate/register?setAsActive=true",
            Some(json!({"certificatePem": device3})),
        )
        .await;
        let by_ca = api
            .ok("GET", &format!("/certificates-by-ca/{ca_id}"), None)
            .await;
        assert_eq!(by_ca["certificates"].as_array().unwrap().len(), 2);
        // A thingd-issued certificate registers under the thingd root.
        let issued = api.state.ca.issue_device_certificate("x", false).unwrap();
        api.ok(
            "POST",
            "/certificate/register",
            Some(json!({"certificatePem": issued.certificate_pem})),
        )
        .await;

        // CA lifecycle.
        let (status, err, _) = api
            .err("DELETE", &format!("/cacertificate/{ca_id}"), None)
            .await;
        assert_eq!((status, err.as_str()), (406, "CertificateStateException"));
        api.ok(
            "PUT",
            &format!("/cacertificate/{ca_id}?newStatus=INACTIVE&newAutoRegistrationStatus=DISABLE"),
            None,
        )
        .await;
        assert!(api.state.registry.ca_verifier(&ca_id).is_none());
        let (device4, _) = leaf("device-4", &issuer);
        let (status, err, _) = api
            .err(
                "POST",
                "/certificate/register",
                Some(json!({"certificatePem": device4, "caCertificatePem": ca_pem})),
            )
            .await;
        assert_eq!((status, err.as_str()), (406, "CertificateStateException"));
        api.ok("DELETE", &format!("/cacertificate/{ca_id}"), None)
            .await;
        let (status, _, _) = api
            .err("GET", &format!("/cacertificate/{ca_id}"), None)
            .await;
        assert_eq!(status, 404);
        api.ok("DELETE", "/registrationcode", None).await;
        let fresh = api.ok("GET", "/registrationcode", None).await;
        assert_ne!(fresh["registrationCode"], code.as_str());
    }
}
