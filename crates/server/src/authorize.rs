//! Who may do what: IoT policies, enforced on every CONNECT, PUBLISH, SUBSCRIBE and delivery.
//!
//! A connection over TLS is the certificate it presented. At CONNECT the certificate must be
//! ACTIVE and its policies (those attached to the certificate, plus those attached to the
//! thing groups of its thing) must allow `iot:Connect` on `client/<clientId>`. The policies
//! are compiled once per connection with its variables (client id, thing, certificate
//! fields, source address, connect attributes) and cached per topic by
//! `thingd_policy::ConnectionAuthorizer`. When anything in the registry that decisions depend
//! on changes, the registry revision moves; every connection then recompiles before its next
//! decision, so a detached policy stops the very next publish.
//!
//! Connections without a certificate come only from the development plain-TCP listener and
//! are allowed everything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};
use thingd_auth::CertificateRegistry;
use thingd_broker::{AllowAll, Authorizer, ConnectRequest, ConnectionInfo, ConnectionPolicy};
use thingd_model::{CertificateId, CertificateStatus};
use thingd_mqtt::ReasonCode;
use thingd_policy::{
    Arns, CompiledPolicies, ConnectAttributes, ConnectionAuthorizer, PolicyDocument, PolicySet,
    ThingContext, Variables,
};
use thingd_store::registry::security::{attachments, principals};
use thingd_store::{Store, StoreError};

/// Cached facts are dropped wholesale beyond this many (principal, client id) pairs.
const MAX_CACHED_FACTS: usize = 100_000;

/// The policy authorizer; cheap to clone.
#[derive(Clone)]
pub struct PolicyAuthorizer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    registry: CertificateRegistry,
    arns: Arns,
    /// Moves whenever the registry revision moves; connections compiled under an older
    /// generation recompile. Shared with the broker as every connection's decision epoch
    /// (`ConnectionPolicy::decision_epoch`).
    generation: Arc<AtomicU64>,
    /// The things attached to each certificate: (thing name, association kind).
    attached: RegistryCache<String, AttachedThings>,
    /// What the registry says about a certificate connecting for a thing (or for none).
    /// Keyed by (certificate id, thing name) rather than by client id, so that every client
    /// id that names no attached thing shares one entry: the cache is bounded by the
    /// registry, not by the client ids that connect, and a new client id costs no reads.
    facts: RegistryCache<FactsKey, Arc<Facts>>,
    /// Compiled policy sets that do not depend on the connection, by their policies' names
    /// and texts, so that connections under the same set (a fleet-wide policy, the
    /// development policy) share one instead of a copy each. Never stale: the same texts
    /// always compile the same way.
    /// Each with its receive token (see `ConnectionPolicy::receive_token`).
    shared_sets: Mutex<HashMap<String, (Weak<CompiledPolicies>, u64)>>,
}

/// Tokens of shared policy sets: each compiled instance gets its own, never reused, so
/// that two connections give the same token only while they share one instance.
static NEXT_RECEIVE_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Entries of `Inner::shared_sets` above which the ones no connection uses are dropped.
const SHARED_SETS: usize = 1024;

/// What was read from the registry, kept until the registry changes. Bounded: it starts over
/// when it holds [`MAX_CACHED_FACTS`] entries.
struct RegistryCache<K, V> {
    map: Mutex<HashMap<K, V>>,
}

impl<K: Eq + std::hash::Hash, V: Clone> RegistryCache<K, V> {
    fn new() -> Self {
        RegistryCache {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The cached value of `key`, or `load`'s, which is kept unless the registry `generation`
    /// moved while it was loading (it may then be stale).
    fn get_or_load<E>(
        &self,
        key: K,
        generation: &AtomicU64,
        load: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E> {
        if let Some(found) = self.map.lock().get(&key) {
            return Ok(found.clone());
        }
        let at_start = generation.load(Ordering::SeqCst);
        let value = load()?;
        let mut map = self.map.lock();
        if generation.load(Ordering::SeqCst) == at_start {
            if map.len() >= MAX_CACHED_FACTS {
                map.clear();
            }
            map.insert(key, value.clone());
        }
        Ok(value)
    }

    fn clear(&self) {
        self.map.lock().clear();
    }
}

/// (thing name, association kind) of every thing attached to a certificate.
type AttachedThings = Arc<Vec<(String, String)>>;

/// (certificate id, the thing the connection is for).
type FactsKey = (String, Option<String>);

/// Registry facts for one certificate connecting for one thing (or for none).
struct Facts {
    policies: PolicySet,
    thing: Option<ThingContext>,
    certificate: Option<thingd_policy::CertificateContext>,
    /// The compiled policies and their receive token, when they do not depend on the
    /// connection.
    shared: Option<(Arc<CompiledPolicies>, u64)>,
}

impl PolicyAuthorizer {
    /// An authorizer reading the registry from `store`, with ARNs in `region`/`account`.
    pub fn new(store: Store, registry: CertificateRegistry, region: &str, account: &str) -> Self {
        PolicyAuthorizer {
            inner: Arc::new(Inner {
                store,
                registry,
                arns: Arns::new(region, account),
                generation: Arc::new(AtomicU64::new(0)),
                attached: RegistryCache::new(),
                facts: RegistryCache::new(),
                shared_sets: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Tells the authorizer the registry changed: every connection recompiles before its next
    /// decision.
    pub fn registry_changed(&self) {
        // Bump first: a lookup that started before sees the new generation when it tries to
        // cache what it read, and does not.
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        self.inner.attached.clear();
        self.inner.facts.clear();
        // And again once the caches are empty: a connection that recompiled between the
        // first bump and the clearing may have read a cached fact from before the change
        // and kept the result under the new generation; this makes it recompile.
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Inner {
    /// The things attached to a certificate, from the cache or the store.
    fn attached_things(
        &self,
        certificate_id: &str,
        cert_arn: &str,
    ) -> Result<AttachedThings, StoreError> {
        self.attached
            .get_or_load(certificate_id.to_owned(), &self.generation, || {
                let things = self
                    .store
                    .read(|conn| principals::things_of_principal(conn, cert_arn))?;
                Ok(Arc::new(things))
            })
    }

    /// Loads (or takes from the cache) the facts for a certificate and client id. Blocking,
    /// but only on a cache miss: once per (certificate, thing) per registry change.
    fn facts(&self, certificate_id: &str, client_id: &str) -> Result<Arc<Facts>, StoreError> {
        let cert_arn = self.arns.cert(certificate_id);
        let things = self.attached_things(certificate_id, &cert_arn)?;
        // Exclusive association: the certificate's one thing, whatever the client id.
        // Otherwise the thing named by the client id, if it is attached.
        let thing_name = things
            .iter()
            .find(|(_, kind)| kind == "EXCLUSIVE_THING")
            .or_else(|| things.iter().find(|(name, _)| name == client_id))
            .map(|(name, _)| name.clone());
        let key = (certificate_id.to_owned(), thing_name.clone());
        self.facts.get_or_load(key, &self.generation, || {
            self.load_facts(certificate_id, &cert_arn, thing_name)
        })
    }

    /// Reads the facts for a certificate connecting for `thing_name` (or for no thing).
    fn load_facts(
        &self,
        certificate_id: &str,
        cert_arn: &str,
        thing_name: Option<String>,
    ) -> Result<Arc<Facts>, StoreError> {
        let group_arn = |group: &str| {
            format!(
                "arn:aws:iot:{}:{}:thinggroup/{group}",
                self.arns.region(),
                self.arns.account()
            )
        };
        let (documents, thing) = self.store.read(|conn| {
            let thing = match &thing_name {
                Some(name) => {
                    principals::thing_for_name(conn, name)?.map(|(type_name, attributes)| {
                        ThingContext {
                            name: name.clone(),
                            type_name,
                            attributes,
                        }
                    })
                }
                None => None,
            };
            let documents = attachments::effective_policies(
                conn,
                Some(cert_arn),
                thing_name.as_deref(),
                group_arn,
            )?;
            Ok((documents, thing))
        })?;
        let key = shared_set_key(&documents);
        let mut policies = PolicySet::new();
        for (name, text) in documents {
            match PolicyDocument::parse(&text) {
                Ok(document) => policies.push(name, Arc::new(document)),
                Err(error) => {
                    tracing::warn!(policy = name, %error, "stored policy does not parse; ignored")
                }
            }
        }
        let certificate = CertificateId::parse(certificate_id)
            .and_then(|id| self.store.certificate(&id).ok().flatten())
            .and_then(|record| thingd_auth::certificate_context(&record.pem));
        let shared = (!policies.depends_on_connection()).then(|| self.shared_set(key, &policies));
        Ok(Arc::new(Facts {
            policies,
            thing,
            certificate,
            shared,
        }))
    }

    /// The one compiled instance of a policy set that does not depend on the connection,
    /// and its receive token.
    fn shared_set(&self, key: String, policies: &PolicySet) -> (Arc<CompiledPolicies>, u64) {
        let mut sets = self.shared_sets.lock();
        if let Some((set, token)) = sets.get(&key)
            && let Some(compiled) = set.upgrade()
        {
            return (compiled, *token);
        }
        let compiled = Arc::new(policies.compile(&self.arns, &Variables::default()));
        let token = NEXT_RECEIVE_TOKEN.fetch_add(1, Ordering::Relaxed);
        if sets.len() >= SHARED_SETS {
            sets.retain(|_, (set, _)| set.strong_count() > 0);
        }
        sets.insert(key, (Arc::downgrade(&compiled), token));
        (compiled, token)
    }
}

/// Identifies a policy set by its policies' names and texts, in order (lengths first, so
/// that no two different sets give the same key).
fn shared_set_key(documents: &[(String, String)]) -> String {
    let mut key = String::new();
    for (name, text) in documents {
        key.push_str(&format!("{}:{}:{name}{text}", name.len(), text.len()));
    }
    key
}

/// What a connection was compiled from, to recompile it after a registry change.
struct Identity {
    certificate_id: String,
    client_id: String,
    source_ip: std::net::IpAddr,
    attributes: ConnectAttributes,
}

/// A connection's authorizer, and its receive token when its policies are a shared set.
struct Compiled {
    authorizer: ConnectionAuthorizer,
    receive_token: Option<u64>,
}

impl Identity {
    fn compile(&self, inner: &Inner) -> Result<Compiled, StoreError> {
        let facts = inner.facts(&self.certificate_id, &self.client_id)?;
        if let Some((shared, token)) = &facts.shared {
            return Ok(Compiled {
                authorizer: ConnectionAuthorizer::new(shared.clone()),
                receive_token: Some(*token),
            });
        }
        let variables = Variables {
            client_id: Some(self.client_id.clone()),
            thing: facts.thing.clone(),
            certificate_id: Some(self.certificate_id.clone()),
            certificate: facts.certificate.clone(),
            source_ip: Some(self.source_ip),
            connect_attributes: self.attributes,
        };
        Ok(Compiled {
            authorizer: ConnectionAuthorizer::new(facts.policies.compile(&inner.arns, &variables)),
            receive_token: None,
        })
    }
}

/// A connection's compiled policies, recompiled when the registry generation moves.
struct LivePolicy {
    inner: Arc<Inner>,
    identity: Identity,
    compiled: RwLock<(u64, Arc<Compiled>)>,
}

impl LivePolicy {
    /// `f` of the connection's compiled policies for the registry as it is now (recompiled
    /// if the registry changed); `None` if the registry cannot be read, which callers take
    /// as a refusal. Runs under the read lock when nothing changed: it is on every
    /// delivery's path.
    fn with_current<R>(&self, f: impl FnOnce(&Compiled) -> R) -> Option<R> {
        let generation = self.inner.generation.load(Ordering::SeqCst);
        {
            let compiled = self.compiled.read();
            if compiled.0 == generation {
                return Some(f(&compiled.1));
            }
        }
        match self.identity.compile(&self.inner) {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                *self.compiled.write() = (generation, fresh.clone());
                Some(f(&fresh))
            }
            Err(error) => {
                // Fail closed: no decision can be made without the registry.
                tracing::warn!(%error, client_id = self.identity.client_id, "cannot read the policies; denying");
                None
            }
        }
    }

    fn decide(&self, decide: impl FnOnce(&ConnectionAuthorizer) -> bool) -> bool {
        self.with_current(|c| decide(&c.authorizer))
            .unwrap_or(false)
    }
}

impl ConnectionPolicy for LivePolicy {
    fn can_publish(&self, topic: &str, retain: bool) -> bool {
        self.decide(|p| p.can_publish(topic, retain))
    }
    fn can_subscribe(&self, filter: &str) -> bool {
        self.decide(|p| p.can_subscribe(filter))
    }
    fn can_receive(&self, topic: &str) -> bool {
        self.decide(|p| p.can_receive(topic))
    }
    fn receive_token(&self) -> Option<u64> {
        self.with_current(|c| c.receive_token).flatten()
    }
    fn decision_epoch(&self) -> Option<Arc<AtomicU64>> {
        Some(self.inner.generation.clone())
    }
}

impl Authorizer for PolicyAuthorizer {
    fn connect(
        &self,
        info: &ConnectionInfo,
        request: &ConnectRequest<'_>,
    ) -> Result<Arc<dyn ConnectionPolicy>, ReasonCode> {
        let client_id = request.client_id;
        let Some(principal) = &info.principal else {
            return AllowAll.connect(info, request);
        };
        let status = CertificateId::parse(principal).and_then(|id| self.inner.registry.status(&id));
        if status != Some(CertificateStatus::Active) {
            tracing::debug!(
                client_id,
                principal,
                ?status,
                "connect refused: certificate not active"
            );
            return Err(ReasonCode::NotAuthorized);
        }
        let identity = Identity {
            certificate_id: principal.clone(),
            client_id: client_id.to_owned(),
            source_ip: info.remote_addr.ip().to_canonical(),
            attributes: ConnectAttributes {
                persistent_connect: request.persistent_session,
                last_will: request.last_will,
            },
        };
        let generation = self.inner.generation.load(Ordering::SeqCst);
        let compiled = identity.compile(&self.inner).map_err(|error| {
            tracing::warn!(%error, client_id, "cannot read the policies; refusing the connection");
            ReasonCode::ServerUnavailable
        })?;
        if !compiled.authorizer.can_connect(client_id) {
            tracing::debug!(
                client_id,
                principal,
                "connect refused: no policy allows iot:Connect"
            );
            return Err(ReasonCode::NotAuthorized);
        }
        Ok(Arc::new(LivePolicy {
            inner: self.inner.clone(),
            identity,
            compiled: RwLock::new((generation, Arc::new(compiled))),
        }))
    }
}

impl thingd_api::cert_auth::HttpAuthorizer for PolicyAuthorizer {
    /// HTTPS requests authenticated by a certificate: the certificate must be ACTIVE and its
    /// policies (direct attachments; thing variables do not resolve over HTTP, as in AWS)
    /// must allow the action.
    fn allows(
        &self,
        certificate_id: &str,
        action: &thingd_policy::IotAction,
        resource: &str,
    ) -> bool {
        let status =
            CertificateId::parse(certificate_id).and_then(|id| self.inner.registry.status(&id));
        if status != Some(CertificateStatus::Active) {
            return false;
        }
        // The empty client id names no thing, so only the certificate's own policies apply.
        let facts = match self.inner.facts(certificate_id, "") {
            Ok(facts) => facts,
            Err(error) => {
                tracing::warn!(%error, "cannot read the policies; denying");
                return false;
            }
        };
        let variables = Variables {
            certificate_id: Some(certificate_id.to_owned()),
            certificate: facts.certificate.clone(),
            ..Variables::default()
        };
        let request = thingd_policy::Request {
            action,
            resource,
            variables: &variables,
        };
        facts.policies.authorize(&request).is_allowed()
    }
}
