//! Certificates that do not chain to the thingd root: registered without a CA, or under a
//! registered CA, are accepted by the TLS check while the registry allows it.

use std::sync::Arc;

use rustls::CertificateError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use thingd_auth::{CertificateAuthority, CertificateRegistry, Trust};
use thingd_model::CertificateStatus;
use thingd_store::Store;
use thingd_store::registry::security::ca_certificates::{self, CaCertificate, CaUpdate};
use thingd_store::registry::security::certificates::{self, NewCertificate, Origin};

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn register(store: &Store, pem: &str, origin: Origin, ca_id: Option<String>) {
    let new = NewCertificate {
        id: thingd_model::CertificateId::from_der(&der(pem)).to_string(),
        pem: pem.to_owned(),
        status: CertificateStatus::Active,
        ca_id,
        origin,
        mode: "DEFAULT".to_owned(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(store.transact(move |conn| certificates::insert(conn, &new, 1)))
        .unwrap();
}

fn transact<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, thingd_store::StoreError> + Send + 'static,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(store.transact(f)).unwrap()
}

#[test]
fn registered_without_ca_or_under_an_active_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&dir.path().join("pki"), &[]).unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    let registry = CertificateRegistry::load(&store).unwrap();
    let verifier = registry.client_verifier(Arc::new(ca.root_store())).unwrap();
    let now = UnixTime::now();

    // The "customer" CA is another installation's root.
    let other_dir = tempfile::tempdir().unwrap();
    let customer = CertificateAuthority::load_or_create(other_dir.path(), &[]).unwrap();
    let customer_id = customer.root_certificate_id().to_string();

    // Registered without a CA: accepted on its registration alone.
    let a = customer.issue_device_certificate("a", false).unwrap();
    assert!(
        verifier
            .verify_client_cert(&der(&a.certificate_pem), &[], now)
            .is_err()
    );
    register(&store, &a.certificate_pem, Origin::NoCa, None);
    registry.refresh(&store).unwrap();
    assert_eq!(registry.trust(&a.id), Some(Trust::WithoutCa));
    verifier
        .verify_client_cert(&der(&a.certificate_pem), &[], now)
        .unwrap();

    // Registered under the customer CA: accepted only while that CA is ACTIVE.
    let row = CaCertificate {
        id: customer_id.clone(),
        pem: customer.root_pem().to_owned(),
        status: "INACTIVE".to_owned(),
        auto_registration: "DISABLE".to_owned(),
        mode: "DEFAULT".to_owned(),
        registration_config: None,
        created_at: 1,
        updated_at: 1,
        customer_version: 1,
        generation: 1,
    };
    transact(&store, move |conn| ca_certificates::insert(conn, &row));
    let b = customer.issue_device_certificate("b", false).unwrap();
    register(
        &store,
        &b.certificate_pem,
        Origin::Ca,
        Some(customer_id.clone()),
    );
    registry.refresh(&store).unwrap();
    let leaf_b = der(&b.certificate_pem);
    assert_eq!(
        verifier.verify_client_cert(&leaf_b, &[], now).unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    let id = customer_id.clone();
    transact(&store, move |conn| {
        let up = CaUpdate {
            status: Some("ACTIVE".to_owned()),
            ..CaUpdate::default()
        };
        ca_certificates::update(conn, &id, &up, 2)
    });
    registry.refresh(&store).unwrap();
    verifier.verify_client_cert(&leaf_b, &[], now).unwrap();
    let id = customer_id.clone();
    transact(&store, move |conn| {
        let up = CaUpdate {
            status: Some("INACTIVE".to_owned()),
            ..CaUpdate::default()
        };
        ca_certificates::update(conn, &id, &up, 3)
    });
    registry.refresh(&store).unwrap();
    assert!(verifier.verify_client_cert(&leaf_b, &[], now).is_err());

    // A certificate of the customer CA registered as if issued by thingd stays refused.
    let c = customer.issue_and_register(&store, "c", false).unwrap();
    registry.refresh(&store).unwrap();
    assert!(
        verifier
            .verify_client_cert(&der(&c.certificate_pem), &[], now)
            .is_err()
    );

    // Deleted: refused, and a fresh registry built from the store agrees.
    let a_id = a.id.to_string();
    transact(&store, move |conn| {
        certificates::update_status(conn, &a_id, CertificateStatus::Inactive, 4)?;
        certificates::delete(conn, &a_id, "arn", false)
    });
    registry.refresh(&store).unwrap();
    assert!(
        verifier
            .verify_client_cert(&der(&a.certificate_pem), &[], now)
            .is_err()
    );
    let fresh = CertificateRegistry::load(&store).unwrap();
    assert_eq!(fresh.trust(&a.id), None);
    assert_eq!(fresh.trust(&b.id), Some(Trust::Ca(Some(customer_id))));
}
