//! The running Device Shadow service: the sans-IO core of this crate attached to the broker
//! and to the store.
//!
//! Requests come from two doors and take the same path:
//! - MQTT: an internal client (`$thingd/shadow`) subscribed to [`REQUEST_FILTERS`] at QoS 1
//!   hears every `get`/`update`/`delete` request; the answers are published on the response
//!   topics straight into the broker ([`Broker::publish`], QoS 1).
//! - HTTP (`iot-data`): [`ShadowService::get`], [`ShadowService::update`],
//!   [`ShadowService::delete`] and [`ShadowService::list_named`].
//!
//! How a request is served (one *dispatcher* task and one *publisher* task):
//! 1. The dispatcher takes every request already waiting (MQTT and HTTP, in arrival order, up
//!    to [`MAX_BATCH`]) as one batch.
//! 2. It makes sure each shadow of the batch is in the document cache (a miss is read through
//!    the store's writer, so the read sees every write queued before it).
//! 3. It runs the operations one after another against the cached documents (so a request
//!    sees the effect of every request for that shadow before it), updates the cache, and
//!    queues one store transaction holding every write of the batch (each conditional on the
//!    version it read). It does not wait for the commit: it goes on with the next batch.
//! 4. The publisher takes the batches in order, waits for each one's commit, and only then
//!    publishes its answers (`accepted`/`delta`/`documents` or `rejected`) and replies to the
//!    HTTP callers.
//!
//! So `update/accepted` is published only after the document is committed, and answers for
//! one shadow leave in the order the requests arrived (version N before N+1), MQTT and HTTP
//! alike. The expensive work (JSON) runs on the dispatcher, not on the store's single writer
//! thread, and many requests share one transaction, one fsync and one wake-up.
//!
//! If a batch's transaction fails, its writes get 500 `InternalFailure`, the cache is dropped
//! (re-read from the store on next use), and answers of later batches that were computed from
//! the failed state without a write of their own (gets, refusals) get 500 too. A write
//! computed from the failed state cannot commit: its version check fails, and it gets 500.
//!
//! Throttling: at most [`MAX_IN_FLIGHT_PER_THING`] requests per thing may be queued or
//! running at once; one more is answered at once with 429 `Too many requests` (MQTT:
//! `.../rejected`; HTTP: `ThrottlingException`).
//!
//! What HTTP requests publish: an update publishes `update/accepted`, `update/delta` and
//! `update/documents` exactly as an MQTT update does; a delete publishes `delete/accepted`;
//! a get publishes nothing; a refused HTTP request publishes nothing (its caller gets the
//! error).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use thingd_broker::{Broker, ClientError, InternalClient, Message};
use thingd_mqtt::QoS;
use thingd_store::shadows::{self, ShadowRow};
use thingd_store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    Documents, Operation, REQUEST_FILTERS, RequestOptions, ShadowError, ShadowId, ShadowLimits,
    ShadowTopic, StoredShadow, Suffix, ThingName, UpdateOutcome, UpdatePayloads, handle_delete,
    handle_get, parse_shadow_topic, shadow_topic, update_in_place,
};

/// The client id that hears shadow requests.
pub const SHADOW_CLIENT_ID: &str = "$thingd/shadow";

/// Requests of one thing (all its shadows, MQTT and HTTP together) that may be queued or
/// running at once; the next one gets 429.
pub const MAX_IN_FLIGHT_PER_THING: usize = 10;

/// Largest `pageSize` of ListNamedShadowsForThing.
pub const MAX_PAGE_SIZE: usize = 100;

/// `pageSize` of ListNamedShadowsForThing when the caller gives none.
pub const DEFAULT_PAGE_SIZE: usize = 25;

/// Most requests served as one batch (one store transaction).
pub const MAX_BATCH: usize = 512;

/// Shadows whose current document is kept in memory. When the cache is full, a quarter of
/// it is dropped (and read back from the store on next use).
pub const CACHED_SHADOWS: usize = 10_000;

/// Batches computed but not yet answered; the dispatcher waits when this many are pending.
const BATCHES_IN_FLIGHT: usize = 16;

/// HTTP requests waiting for the dispatcher.
const HTTP_QUEUE: usize = 4096;

/// One page of ListNamedShadowsForThing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedShadowPage {
    /// Shadow names, in name order (the classic shadow is never listed).
    pub results: Vec<String>,
    /// Token for the next page; `None` on the last page.
    pub next_token: Option<String>,
}

/// The Device Shadow service; cheap to clone.
#[derive(Clone)]
pub struct ShadowService {
    core: Arc<Core>,
    requests: mpsc::Sender<Request>,
}

/// What the dispatcher, the publisher and the HTTP door share.
struct Core {
    store: Store,
    limits: ShadowLimits,
    broker: Broker,
    /// Requests queued or running, per thing.
    in_flight: Mutex<HashMap<ThingName, usize>>,
    max_in_flight: usize,
    cache: Mutex<Cache>,
}

/// The current document of recently used shadows, including writes not yet committed.
struct Cache {
    /// `None`: the store has no row for this shadow.
    docs: HashMap<ShadowId, Option<StoredShadow>>,
    /// Bumped whenever a batch's transaction fails (and the cache is dropped).
    generation: u64,
}

/// A request's place in its thing's in-flight count; released on drop.
struct Permit {
    core: Arc<Core>,
    thing: ThingName,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.core.in_flight.lock();
        if let Some(n) = counts.get_mut(&self.thing) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.thing);
            }
        }
    }
}

/// One request on its way through the service.
struct Request {
    id: ShadowId,
    op: Op,
    reply: Reply,
    _permit: Permit,
}

enum Op {
    Get {
        token: Option<String>,
    },
    Update {
        payload: Bytes,
    },
    Delete {
        token: Option<String>,
        expected_version: Option<u64>,
    },
    /// Refused before reaching a document (an unreadable get/delete payload).
    Refused(ShadowError),
}

/// Where the answer goes.
enum Reply {
    /// Published on the response topics of this request topic.
    Mqtt(ShadowTopic),
    /// Returned to the HTTP handler (after publishing what an HTTP request publishes).
    Http(oneshot::Sender<Result<Answer, ShadowError>>),
}

/// A successful answer.
enum Answer {
    Got(Vec<u8>),
    /// The new document is only kept for an HTTP caller.
    Updated(Box<UpdatePayloads>, Option<Box<StoredShadow>>),
    Deleted(Vec<u8>),
}

/// A row write of a batch.
struct Put {
    thing: String,
    shadow: String,
    /// The version of the row the write was computed from (`None`: there was no row).
    expected: Option<u64>,
    row: ShadowRow,
}

/// A request whose answer is computed, waiting for its batch's commit.
struct Item {
    request: Request,
    result: Result<Answer, ShadowError>,
    /// The request's `clientToken`, for a 500 that replaces the answer.
    token: Option<String>,
    /// Its write, as an index into the batch's puts.
    put: Option<usize>,
}

/// Per put: `true` if written, `false` if its version check failed.
type PutResults = Vec<bool>;

type Commit = Pin<Box<dyn Future<Output = Result<PutResults, StoreError>> + Send>>;

/// A computed batch: answers in arrival order and the queued transaction of its writes.
struct Batch {
    items: Vec<Item>,
    commit: Option<Commit>,
    /// The cache generation the answers were computed in.
    generation: u64,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn shadow_key(id: &ShadowId) -> String {
    id.shadow
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default()
}

fn store_failure(error: StoreError) -> ShadowError {
    tracing::error!(%error, "shadow store operation failed");
    ShadowError::internal()
}

fn hex_encode(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

impl ShadowService {
    /// Starts the service: subscribes to every shadow request topic (returning once the
    /// broker has granted the subscriptions, so no request published afterwards is missed)
    /// and serves MQTT requests until `shutdown`. The HTTP methods keep working after that.
    /// Call inside a tokio runtime.
    pub async fn start(
        broker: &Broker,
        store: Store,
        limits: ShadowLimits,
        shutdown: CancellationToken,
    ) -> Result<ShadowService, ClientError> {
        Self::start_with(broker, store, limits, MAX_IN_FLIGHT_PER_THING, shutdown).await
    }

    /// [`ShadowService::start`] with another per-thing in-flight limit.
    pub async fn start_with(
        broker: &Broker,
        store: Store,
        limits: ShadowLimits,
        max_in_flight_per_thing: usize,
        shutdown: CancellationToken,
    ) -> Result<ShadowService, ClientError> {
        let listener = broker.internal_client(SHADOW_CLIENT_ID);
        for filter in REQUEST_FILTERS {
            listener.subscribe(filter, QoS::AtLeastOnce).await?;
        }
        let core = Arc::new(Core {
            store,
            limits,
            broker: broker.clone(),
            in_flight: Mutex::new(HashMap::new()),
            max_in_flight: max_in_flight_per_thing.max(1),
            cache: Mutex::new(Cache {
                docs: HashMap::new(),
                generation: 0,
            }),
        });
        let (requests, http) = mpsc::channel(HTTP_QUEUE);
        let (batches_tx, batches) = mpsc::channel(BATCHES_IN_FLIGHT);
        tokio::spawn(core.clone().publish_batches(batches));
        tokio::spawn(core.clone().dispatch(listener, http, batches_tx, shutdown));
        Ok(ShadowService { core, requests })
    }

    /// The limits the operations apply.
    pub fn limits(&self) -> &ShadowLimits {
        &self.core.limits
    }

    // --- the HTTP door ---------------------------------------------------------------------

    /// GetThingShadow: the shadow document (`get/accepted` without a `clientToken`), or 404.
    pub async fn get(&self, id: &ShadowId) -> Result<Vec<u8>, ShadowError> {
        match self.call(id, Op::Get { token: None }).await? {
            Answer::Got(document) => Ok(document),
            _ => Err(ShadowError::internal()),
        }
    }

    /// UpdateThingShadow: applies `payload` as an MQTT update would, publishes
    /// `update/accepted`, `update/delta` (if any) and `update/documents` after the commit,
    /// and returns the outcome (`accepted` is the HTTP response body).
    pub async fn update(
        &self,
        id: &ShadowId,
        payload: Bytes,
    ) -> Result<UpdateOutcome, ShadowError> {
        match self.call(id, Op::Update { payload }).await? {
            Answer::Updated(payloads, Some(shadow)) => {
                let shadow = *shadow;
                let UpdatePayloads {
                    accepted,
                    delta,
                    documents,
                    client_token,
                } = *payloads;
                Ok(UpdateOutcome {
                    shadow,
                    accepted,
                    delta,
                    // Built for every HTTP caller (see `Core::documents_for`).
                    documents: documents.unwrap_or_default(),
                    client_token,
                })
            }
            _ => Err(ShadowError::internal()),
        }
    }

    /// DeleteThingShadow: deletes the shadow (409 if `expected_version` is given and is not
    /// the current version, 404 if there is none), publishes `delete/accepted` after the
    /// commit, and returns its payload (the HTTP response body).
    pub async fn delete(
        &self,
        id: &ShadowId,
        expected_version: Option<u64>,
    ) -> Result<Vec<u8>, ShadowError> {
        let op = Op::Delete {
            token: None,
            expected_version,
        };
        match self.call(id, op).await? {
            Answer::Deleted(accepted) => Ok(accepted),
            _ => Err(ShadowError::internal()),
        }
    }

    /// Runs one HTTP request through the dispatcher (behind the in-flight limit, which is
    /// checked before the first await).
    async fn call(&self, id: &ShadowId, op: Op) -> Result<Answer, ShadowError> {
        let permit = self
            .core
            .permit(&id.thing)
            .ok_or_else(ShadowError::too_many_requests)?;
        let (tx, rx) = oneshot::channel();
        let request = Request {
            id: id.clone(),
            op,
            reply: Reply::Http(tx),
            _permit: permit,
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| ShadowError::internal())?;
        rx.await.unwrap_or_else(|_| Err(ShadowError::internal()))
    }

    /// ListNamedShadowsForThing: the names of `thing`'s named shadows in name order, at most
    /// `page_size` (1..=[`MAX_PAGE_SIZE`]) per page, starting after `next_token` (from the
    /// previous page). A thing with no named shadow, or that does not exist, gets an empty
    /// list. A bad token gives 400.
    pub async fn list_named(
        &self,
        thing: &ThingName,
        next_token: Option<&str>,
        page_size: usize,
    ) -> Result<NamedShadowPage, ShadowError> {
        let after =
            match next_token.filter(|t| !t.is_empty()) {
                None => None,
                Some(token) => Some(hex_decode(token).ok_or_else(|| {
                    ShadowError::new(400, "The specified nextToken is not valid.")
                })?),
            };
        let size = page_size.clamp(1, MAX_PAGE_SIZE);
        let store = self.core.store.clone();
        let thing = thing.as_str().to_owned();
        let mut names = tokio::task::spawn_blocking(move || {
            store.read(|conn| shadows::list_named(conn, &thing, after.as_deref(), size + 1))
        })
        .await
        .map_err(|_| ShadowError::internal())?
        .map_err(store_failure)?;
        let next_token = if names.len() > size {
            names.truncate(size);
            names.last().map(|last| hex_encode(last))
        } else {
            None
        };
        Ok(NamedShadowPage {
            results: names,
            next_token,
        })
    }
}

impl Core {
    fn permit(self: &Arc<Self>, thing: &ThingName) -> Option<Permit> {
        let mut counts = self.in_flight.lock();
        let n = counts.entry(thing.clone()).or_default();
        if *n >= self.max_in_flight {
            return None;
        }
        *n += 1;
        Some(Permit {
            core: self.clone(),
            thing: thing.clone(),
        })
    }

    // --- the dispatcher --------------------------------------------------------------------

    /// Takes requests in arrival order, a batch at a time, computes them and hands each batch
    /// to the publisher. Stops listening to MQTT at `shutdown`; ends when that is done and
    /// every [`ShadowService`] handle is gone.
    async fn dispatch(
        self: Arc<Self>,
        mut listener: InternalClient,
        mut http: mpsc::Receiver<Request>,
        batches: mpsc::Sender<Batch>,
        shutdown: CancellationToken,
    ) {
        let (mut listening, mut http_open) = (true, true);
        while listening || http_open {
            let first = tokio::select! {
                _ = shutdown.cancelled(), if listening => {
                    listening = false;
                    None
                }
                message = listener.recv(), if listening => match message {
                    Some(message) => self.mqtt_request(message),
                    None => {
                        if !shutdown.is_cancelled() {
                            tracing::warn!("the shadow service's broker connection closed");
                        }
                        listening = false;
                        None
                    }
                },
                request = http.recv(), if http_open => {
                    http_open = request.is_some();
                    request
                }
            };
            let Some(first) = first else { continue };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                let mut took = false;
                if listening && let Ok(Some(message)) = listener.try_recv() {
                    batch.extend(self.mqtt_request(message));
                    took = true;
                }
                if http_open && let Ok(request) = http.try_recv() {
                    batch.push(request);
                    took = true;
                }
                if !took {
                    break;
                }
            }
            let computed = self.compute(batch).await;
            if batches.send(computed).await.is_err() {
                break;
            }
        }
        tracing::debug!("shadow service stopped");
    }

    /// Turns an MQTT message into a request, or answers 429 at once (`None`).
    fn mqtt_request(self: &Arc<Self>, message: Message) -> Option<Request> {
        let topic = parse_shadow_topic(&message.topic).filter(ShadowTopic::is_request)?;
        let payload = message.payload;
        let Some(permit) = self.permit(&topic.id.thing) else {
            let token = RequestOptions::from_payload(&payload, &self.limits)
                .ok()
                .and_then(|o| o.client_token);
            let error = ShadowError::too_many_requests().with_client_token(token.as_deref());
            tracing::debug!(topic = %message.topic, "shadow request throttled");
            self.publish_rejected(&topic, &error);
            return None;
        };
        let op = match topic.operation {
            Operation::Update => Op::Update { payload },
            Operation::Get => match RequestOptions::from_payload(&payload, &self.limits) {
                Ok(options) => Op::Get {
                    token: options.client_token,
                },
                Err(e) => Op::Refused(e),
            },
            Operation::Delete => match RequestOptions::from_payload(&payload, &self.limits) {
                Ok(options) => Op::Delete {
                    token: options.client_token,
                    expected_version: options.version,
                },
                Err(e) => Op::Refused(e),
            },
        };
        Some(Request {
            id: topic.id.clone(),
            op,
            reply: Reply::Mqtt(topic),
            _permit: permit,
        })
    }

    /// Brings the batch's shadows into the cache, computes every answer in order, and queues
    /// the transaction of the batch's writes.
    async fn compute(&self, requests: Vec<Request>) -> Batch {
        let loaded = self.load_missing(&requests).await;
        let now = now_secs();
        let mut puts: Vec<Put> = Vec::new();
        let mut items = Vec::with_capacity(requests.len());
        let generation = {
            let mut cache = self.cache.lock();
            for request in requests {
                let (result, token, put) = match &request.op {
                    Op::Refused(e) => (Err(e.clone()), None, None),
                    _ => match cache.docs.get_mut(&request.id) {
                        // The read failed (already logged): 500.
                        None => (Err(ShadowError::internal()), None, None),
                        Some(current) => self.apply(&request, current, now),
                    },
                };
                let put = put.map(|put| {
                    puts.push(put);
                    puts.len() - 1
                });
                items.push(Item {
                    request,
                    result,
                    token,
                    put,
                });
            }
            cache.generation
        };
        if let Err(e) = loaded {
            tracing::error!(error = %e, "cannot read shadows");
        }
        let commit: Option<Commit> = (!puts.is_empty()).then(|| {
            Box::pin(self.store.transact_queued(move |conn| {
                let mut results = Vec::with_capacity(puts.len());
                for p in &puts {
                    match shadows::put(conn, &p.thing, &p.shadow, p.expected, &p.row) {
                        Ok(()) => results.push(true),
                        Err(StoreError::Rejected { .. }) => results.push(false),
                        Err(e) => return Err(e),
                    }
                }
                Ok(results)
            })) as Commit
        });
        Batch {
            items,
            commit,
            generation,
        }
    }

    /// Whether an update builds its `update/documents`: for an HTTP caller (whose outcome
    /// carries it) and whenever anyone subscribes to it. A subscription made after this
    /// check misses this update's documents, as it would had the update been published
    /// before it subscribed.
    fn documents_for(&self, request: &Request) -> Documents {
        let wanted = match request.reply {
            Reply::Http(_) => true,
            Reply::Mqtt(_) => {
                let topic = shadow_topic(&request.id, Operation::Update, Suffix::Documents);
                self.broker.has_subscribers(&topic)
            }
        };
        if wanted {
            Documents::Build
        } else {
            Documents::Skip
        }
    }

    /// Runs one operation against the cached document `current`, updating it. Returns the
    /// answer, the request's `clientToken` and the row to write, if any.
    fn apply(
        &self,
        request: &Request,
        current: &mut Option<StoredShadow>,
        now: i64,
    ) -> (Result<Answer, ShadowError>, Option<String>, Option<Put>) {
        let id = &request.id;
        let expected = current.as_ref().map(|s| s.version);
        // The row that stores `shadow` in place of the one this request read.
        let put = |shadow: &StoredShadow| Put {
            thing: id.thing.as_str().to_owned(),
            shadow: shadow_key(id),
            expected,
            row: ShadowRow {
                document: shadow.to_bytes(),
                version: shadow.version,
                updated_at: now,
                deleted_at: shadow.deleted_at,
            },
        };
        match &request.op {
            Op::Refused(e) => (Err(e.clone()), None, None),
            Op::Get { token } => {
                let result = handle_get(id, current.as_ref(), token.as_deref(), now);
                (result.map(Answer::Got), token.clone(), None)
            }
            Op::Update { payload } => {
                let documents = self.documents_for(request);
                let payloads = match update_in_place(current, payload, now, &self.limits, documents)
                {
                    Ok(payloads) => payloads,
                    Err(e) => return (Err(e), None, None),
                };
                let Some(shadow) = current.as_ref() else {
                    return (Err(ShadowError::internal()), None, None);
                };
                let row = put(shadow);
                let for_caller = match request.reply {
                    Reply::Http(_) => Some(Box::new(shadow.clone())),
                    Reply::Mqtt(_) => None,
                };
                let token = payloads.client_token.clone();
                let answer = Answer::Updated(Box::new(payloads), for_caller);
                (Ok(answer), token, Some(row))
            }
            Op::Delete {
                token,
                expected_version,
            } => {
                let outcome = match handle_delete(
                    id,
                    current.as_ref(),
                    token.as_deref(),
                    *expected_version,
                    now,
                ) {
                    Ok(outcome) => outcome,
                    Err(e) => return (Err(e), token.clone(), None),
                };
                let row = put(&outcome.tombstone);
                *current = Some(outcome.tombstone);
                (
                    Ok(Answer::Deleted(outcome.accepted)),
                    token.clone(),
                    Some(row),
                )
            }
        }
    }

    /// Reads the shadows of `requests` that the cache lacks, through the writer (so the
    /// read sees every write queued before it), and caches them. A shadow that cannot be
    /// read stays out of the cache (its requests get 500).
    async fn load_missing(&self, requests: &[Request]) -> Result<(), StoreError> {
        let missing: Vec<ShadowId> = {
            let mut cache = self.cache.lock();
            let mut seen = HashSet::new();
            let missing: Vec<ShadowId> = requests
                .iter()
                .filter(|r| !matches!(r.op, Op::Refused(_)))
                .map(|r| &r.id)
                .filter(|id| !cache.docs.contains_key(*id) && seen.insert(*id))
                .cloned()
                .collect();
            if cache.docs.len() + missing.len() > CACHED_SHADOWS {
                cache.evict();
            }
            missing
        };
        if missing.is_empty() {
            return Ok(());
        }
        let keys: Vec<(String, String)> = missing
            .iter()
            .map(|id| (id.thing.as_str().to_owned(), shadow_key(id)))
            .collect();
        let rows = self
            .store
            .transact_queued(move |conn| {
                keys.iter()
                    .map(|(thing, shadow)| {
                        let row = shadows::get(conn, thing, shadow)?;
                        Ok(row.map(|row| StoredShadow::from_bytes(&row.document)))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .await?;
        let mut cache = self.cache.lock();
        for (id, row) in missing.into_iter().zip(rows) {
            match row {
                None => {
                    cache.docs.insert(id, None);
                }
                Some(Ok(document)) => {
                    cache.docs.insert(id, Some(document));
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, thing = %id.thing.as_str(), "unreadable shadow document");
                }
            }
        }
        Ok(())
    }

    // --- the publisher ---------------------------------------------------------------------

    /// Answers the batches in order, each after its commit.
    async fn publish_batches(self: Arc<Self>, mut batches: mpsc::Receiver<Batch>) {
        while let Some(batch) = batches.recv().await {
            let committed = match batch.commit {
                None => Ok(Vec::new()),
                Some(commit) => commit.await,
            };
            let stale = {
                let mut cache = self.cache.lock();
                match &committed {
                    Err(e) => {
                        tracing::error!(error = %e, "shadow writes failed; answering 500");
                        cache.docs.clear();
                        cache.generation += 1;
                    }
                    Ok(results) => {
                        for item in &batch.items {
                            if item
                                .put
                                .is_some_and(|i| !results.get(i).copied().unwrap_or(false))
                            {
                                let id = &item.request.id;
                                tracing::warn!(thing = %id.thing.as_str(), "shadow changed under the service; re-reading it");
                                cache.docs.remove(id);
                            }
                        }
                    }
                }
                batch.generation < cache.generation
            };
            for item in batch.items {
                let trusted = match (item.put, &committed) {
                    (Some(i), Ok(results)) => results.get(i).copied().unwrap_or(false),
                    (Some(_), Err(_)) => false,
                    (None, _) => !stale,
                };
                let result = if trusted {
                    item.result
                } else {
                    Err(ShadowError::internal().with_client_token(item.token.as_deref()))
                };
                self.deliver(item.request, result);
            }
        }
    }

    /// Publishes what `request` publishes and replies to an HTTP caller.
    fn deliver(&self, request: Request, result: Result<Answer, ShadowError>) {
        match request.reply {
            Reply::Mqtt(topic) => match result {
                Ok(Answer::Updated(payloads, _)) => self.publish_update(&topic.id, *payloads),
                Ok(Answer::Got(payload) | Answer::Deleted(payload)) => self.publish(
                    shadow_topic(&topic.id, topic.operation, Suffix::Accepted),
                    payload,
                ),
                Err(e) => self.publish_rejected(&topic, &e),
            },
            Reply::Http(reply) => {
                match &result {
                    Ok(Answer::Updated(payloads, _)) => {
                        self.publish_update(&request.id, (**payloads).clone())
                    }
                    Ok(Answer::Deleted(payload)) => self.publish(
                        shadow_topic(&request.id, Operation::Delete, Suffix::Accepted),
                        payload.clone(),
                    ),
                    Ok(Answer::Got(_)) | Err(_) => {}
                }
                let _ = reply.send(result);
            }
        }
    }

    fn publish_rejected(&self, topic: &ShadowTopic, error: &ShadowError) {
        let payload = error.rejected_payload(now_secs());
        self.publish(
            shadow_topic(&topic.id, topic.operation, Suffix::Rejected),
            payload,
        );
    }

    fn publish_update(&self, id: &ShadowId, payloads: UpdatePayloads) {
        self.publish(
            shadow_topic(id, Operation::Update, Suffix::Accepted),
            payloads.accepted,
        );
        if let Some(delta) = payloads.delta {
            self.publish(shadow_topic(id, Operation::Update, Suffix::Delta), delta);
        }
        if let Some(documents) = payloads.documents {
            self.publish(
                shadow_topic(id, Operation::Update, Suffix::Documents),
                documents,
            );
        }
    }

    /// Publishes at QoS 1 straight into the broker; subscribers get it in call order.
    fn publish(&self, topic: String, payload: Vec<u8>) {
        if let Err(reason) =
            self.broker
                .publish(topic, Bytes::from(payload), QoS::AtLeastOnce, false)
        {
            tracing::warn!(?reason, "cannot publish a shadow response");
        }
    }
}

impl Cache {
    /// Drops about a quarter of the entries (any; they are read back on next use).
    fn evict(&mut self) {
        let drop_n = self.docs.len() / 4 + 1;
        let victims: Vec<ShadowId> = self.docs.keys().take(drop_n).cloned().collect();
        for id in victims {
            self.docs.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip() {
        for name in ["a", "$package", "x:y_z-1"] {
            assert_eq!(hex_decode(&hex_encode(name)).as_deref(), Some(name));
        }
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }
}
