//! The running Device Shadow service: the sans-IO core of this crate attached to the broker
//! (through in-process clients) and to the store.
//!
//! Requests come from two doors and take the same path:
//! - MQTT: an internal client (`$thingd/shadow`) subscribed to [`REQUEST_FILTERS`] at QoS 1
//!   hears every `get`/`update`/`delete` request; the answers go out on the response topics
//!   through a second internal client (`$thingd/shadow/responses`), at QoS 1.
//! - HTTP (`iot-data`): [`ShadowService::get`], [`ShadowService::update`],
//!   [`ShadowService::delete`] and [`ShadowService::list_named`].
//!
//! Ordering and durability: every request for one shadow joins that shadow's *lane*, a FIFO
//! queue drained by one task, so requests for one shadow run one at a time in the order they
//! arrived (MQTT and HTTP alike), while different shadows run in parallel. An update or
//! delete reads the stored row, applies the core operation and writes the result inside one
//! store transaction (the write is also conditional on the version read); the responses are
//! published only after that transaction has committed, and the lane moves on only after
//! they are published, so `accepted`/`delta`/`documents` of version N always precede those
//! of version N+1.
//!
//! Throttling: at most [`MAX_IN_FLIGHT_PER_THING`] requests per thing may be queued or
//! running at once; one more is answered at once with 429 `Too many requests` (MQTT:
//! `.../rejected`; HTTP: `ThrottlingException`).
//!
//! What HTTP requests publish: an update publishes `update/accepted`, `update/delta` and
//! `update/documents` exactly as an MQTT update does; a delete publishes `delete/accepted`;
//! a get publishes nothing; a refused HTTP request publishes nothing (its caller gets the
//! error).

use std::collections::HashMap;
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
    Operation, REQUEST_FILTERS, RequestOptions, ShadowError, ShadowId, ShadowLimits, ShadowTopic,
    StoredShadow, Suffix, ThingName, UpdateOutcome, handle_delete, handle_get, handle_update,
    parse_shadow_topic, shadow_topic,
};

/// The client id that hears shadow requests.
pub const SHADOW_CLIENT_ID: &str = "$thingd/shadow";

/// The client id that publishes shadow responses.
pub const RESPONSES_CLIENT_ID: &str = "$thingd/shadow/responses";

/// Requests of one thing (all its shadows, MQTT and HTTP together) that may be queued or
/// running at once; the next one gets 429.
pub const MAX_IN_FLIGHT_PER_THING: usize = 10;

/// Largest `pageSize` of ListNamedShadowsForThing.
pub const MAX_PAGE_SIZE: usize = 100;

/// `pageSize` of ListNamedShadowsForThing when the caller gives none.
pub const DEFAULT_PAGE_SIZE: usize = 25;

/// One page of ListNamedShadowsForThing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedShadowPage {
    /// Shadow names, in name order (the classic shadow is never listed).
    pub results: Vec<String>,
    /// Token for the next page; `None` on the last page.
    pub next_token: Option<String>,
}

type Job = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The Device Shadow service; cheap to clone.
#[derive(Clone)]
pub struct ShadowService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    limits: ShadowLimits,
    broker: Broker,
    /// The responses' connection; replaced if the broker closes it.
    publisher: Mutex<Arc<InternalClient>>,
    /// The queue of each shadow that has requests queued or running.
    lanes: Mutex<HashMap<ShadowId, mpsc::UnboundedSender<Job>>>,
    /// Requests queued or running, per thing.
    in_flight: Mutex<HashMap<ThingName, usize>>,
    max_in_flight: usize,
}

/// A request's place in its thing's in-flight count; released on drop.
struct Permit {
    inner: Arc<Inner>,
    thing: ThingName,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.inner.in_flight.lock();
        if let Some(n) = counts.get_mut(&self.thing) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.thing);
            }
        }
    }
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

fn decode(row: &ShadowRow) -> Result<StoredShadow, StoreError> {
    StoredShadow::from_bytes(&row.document)
        .map_err(|e| StoreError::Corrupt(format!("shadow document: {e}")))
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
    /// and serves requests until `shutdown`. The HTTP methods keep working after that.
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
        let service = ShadowService {
            inner: Arc::new(Inner {
                store,
                limits,
                broker: broker.clone(),
                publisher: Mutex::new(Arc::new(broker.internal_client(RESPONSES_CLIENT_ID))),
                lanes: Mutex::new(HashMap::new()),
                in_flight: Mutex::new(HashMap::new()),
                max_in_flight: max_in_flight_per_thing.max(1),
            }),
        };
        tokio::spawn(service.clone().listen(listener, shutdown));
        Ok(service)
    }

    /// The limits the operations apply.
    pub fn limits(&self) -> &ShadowLimits {
        &self.inner.limits
    }

    async fn listen(self, mut listener: InternalClient, shutdown: CancellationToken) {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                message = listener.recv() => message,
            };
            match message {
                Some(message) => self.on_request(message),
                None => {
                    if !shutdown.is_cancelled() {
                        tracing::warn!("the shadow service's broker connection closed");
                    }
                    break;
                }
            }
        }
        tracing::debug!("shadow service stopped listening");
    }

    /// Queues one MQTT request in its shadow's lane, or answers 429 at once.
    fn on_request(&self, message: Message) {
        let Some(topic) = parse_shadow_topic(&message.topic).filter(ShadowTopic::is_request) else {
            return;
        };
        let payload = message.payload;
        let Some(permit) = self.permit(&topic.id.thing) else {
            let token = RequestOptions::from_payload(&payload, &self.inner.limits)
                .ok()
                .and_then(|o| o.client_token);
            let error = ShadowError::too_many_requests().with_client_token(token.as_deref());
            tracing::debug!(topic = %message.topic, "shadow request throttled");
            let service = self.clone();
            tokio::spawn(async move { service.publish_rejected(&topic, &error).await });
            return;
        };
        let service = self.clone();
        let id = topic.id.clone();
        self.enqueue(
            &id,
            Box::pin(async move {
                let _permit = permit;
                service.serve_mqtt(topic, payload).await;
            }),
        );
    }

    fn permit(&self, thing: &ThingName) -> Option<Permit> {
        let mut counts = self.inner.in_flight.lock();
        let n = counts.entry(thing.clone()).or_default();
        if *n >= self.inner.max_in_flight {
            return None;
        }
        *n += 1;
        Some(Permit {
            inner: self.inner.clone(),
            thing: thing.clone(),
        })
    }

    /// Appends `job` to the lane of `id`, starting the lane if it is idle.
    fn enqueue(&self, id: &ShadowId, job: Job) {
        let mut lanes = self.inner.lanes.lock();
        let job = match lanes.get(id) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                // The lane's task died (a job panicked); start a new one.
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(job);
        lanes.insert(id.clone(), tx);
        drop(lanes);
        tokio::spawn(self.clone().run_lane(id.clone(), rx));
    }

    /// Runs the jobs of one shadow in order; ends (removing the lane) when none is left.
    /// Jobs are only sent under the `lanes` lock, so checking for emptiness under it too
    /// means no job is left behind.
    async fn run_lane(self, id: ShadowId, mut rx: mpsc::UnboundedReceiver<Job>) {
        loop {
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(_) => {
                    let mut lanes = self.inner.lanes.lock();
                    match rx.try_recv() {
                        Ok(job) => job,
                        Err(_) => {
                            lanes.remove(&id);
                            return;
                        }
                    }
                }
            };
            job.await;
        }
    }

    /// Runs `work` in the lane of `id` (behind the in-flight limit) and returns its result.
    async fn in_lane<T, F, Fut>(&self, id: &ShadowId, work: F) -> Result<T, ShadowError>
    where
        T: Send + 'static,
        F: FnOnce(ShadowService) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, ShadowError>> + Send + 'static,
    {
        let permit = self
            .permit(&id.thing)
            .ok_or_else(ShadowError::too_many_requests)?;
        let (tx, rx) = oneshot::channel();
        let service = self.clone();
        self.enqueue(
            id,
            Box::pin(async move {
                let _permit = permit;
                let _ = tx.send(work(service).await);
            }),
        );
        rx.await.unwrap_or_else(|_| Err(ShadowError::internal()))
    }

    // --- the HTTP door ---------------------------------------------------------------------

    /// GetThingShadow: the shadow document (`get/accepted` without a `clientToken`), or 404.
    pub async fn get(&self, id: &ShadowId) -> Result<Vec<u8>, ShadowError> {
        let id2 = id.clone();
        self.in_lane(id, move |s| async move { s.do_get(&id2, None).await })
            .await
    }

    /// UpdateThingShadow: applies `payload` as an MQTT update would, publishes
    /// `update/accepted`, `update/delta` (if any) and `update/documents` after the commit,
    /// and returns the outcome (`accepted` is the HTTP response body).
    pub async fn update(
        &self,
        id: &ShadowId,
        payload: Bytes,
    ) -> Result<UpdateOutcome, ShadowError> {
        let id2 = id.clone();
        self.in_lane(id, move |s| async move {
            let outcome = s.do_update(&id2, payload).await?;
            s.publish_update(&id2, &outcome).await;
            Ok(outcome)
        })
        .await
    }

    /// DeleteThingShadow: deletes the shadow (409 if `expected_version` is given and is not
    /// the current version, 404 if there is none), publishes `delete/accepted` after the
    /// commit, and returns its payload (the HTTP response body).
    pub async fn delete(
        &self,
        id: &ShadowId,
        expected_version: Option<u64>,
    ) -> Result<Vec<u8>, ShadowError> {
        let id2 = id.clone();
        self.in_lane(id, move |s| async move {
            let accepted = s.do_delete(&id2, None, expected_version).await?;
            s.publish(
                &shadow_topic(&id2, Operation::Delete, Suffix::Accepted),
                accepted.clone(),
            )
            .await;
            Ok(accepted)
        })
        .await
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
        let store = self.inner.store.clone();
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

    // --- the MQTT door ---------------------------------------------------------------------

    async fn serve_mqtt(&self, topic: ShadowTopic, payload: Bytes) {
        let id = &topic.id;
        match topic.operation {
            Operation::Get => {
                let result = match RequestOptions::from_payload(&payload, &self.inner.limits) {
                    Ok(options) => self.do_get(id, options.client_token.as_deref()).await,
                    Err(e) => Err(e),
                };
                self.answer(&topic, result).await;
            }
            Operation::Delete => {
                let result = match RequestOptions::from_payload(&payload, &self.inner.limits) {
                    Ok(options) => {
                        self.do_delete(id, options.client_token.as_deref(), options.version)
                            .await
                    }
                    Err(e) => Err(e),
                };
                self.answer(&topic, result).await;
            }
            Operation::Update => match self.do_update(id, payload).await {
                Ok(outcome) => self.publish_update(id, &outcome).await,
                Err(e) => self.publish_rejected(&topic, &e).await,
            },
        }
    }

    async fn answer(&self, topic: &ShadowTopic, result: Result<Vec<u8>, ShadowError>) {
        match result {
            Ok(accepted) => {
                self.publish(
                    &shadow_topic(&topic.id, topic.operation, Suffix::Accepted),
                    accepted,
                )
                .await;
            }
            Err(e) => self.publish_rejected(topic, &e).await,
        }
    }

    async fn publish_rejected(&self, topic: &ShadowTopic, error: &ShadowError) {
        let payload = error.rejected_payload(now_secs());
        self.publish(
            &shadow_topic(&topic.id, topic.operation, Suffix::Rejected),
            payload,
        )
        .await;
    }

    async fn publish_update(&self, id: &ShadowId, outcome: &UpdateOutcome) {
        self.publish(
            &shadow_topic(id, Operation::Update, Suffix::Accepted),
            outcome.accepted.clone(),
        )
        .await;
        if let Some(delta) = &outcome.delta {
            self.publish(
                &shadow_topic(id, Operation::Update, Suffix::Delta),
                delta.clone(),
            )
            .await;
        }
        self.publish(
            &shadow_topic(id, Operation::Update, Suffix::Documents),
            outcome.documents.clone(),
        )
        .await;
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>) {
        let payload = Bytes::from(payload);
        let client = self.inner.publisher.lock().clone();
        let mut result = client
            .publish(topic, payload.clone(), QoS::AtLeastOnce, false)
            .await;
        if result == Err(ClientError::Closed) {
            // Reconnect once (the broker closes a connection that sends what it refuses).
            let fresh = {
                let mut slot = self.inner.publisher.lock();
                if Arc::ptr_eq(&slot, &client) {
                    *slot = Arc::new(self.inner.broker.internal_client(RESPONSES_CLIENT_ID));
                }
                slot.clone()
            };
            result = fresh.publish(topic, payload, QoS::AtLeastOnce, false).await;
        }
        if let Err(error) = result {
            tracing::warn!(%error, topic, "cannot publish a shadow response");
        }
    }

    // --- the operations --------------------------------------------------------------------

    async fn do_get(
        &self,
        id: &ShadowId,
        client_token: Option<&str>,
    ) -> Result<Vec<u8>, ShadowError> {
        let store = self.inner.store.clone();
        let (thing, shadow) = (id.thing.as_str().to_owned(), shadow_key(id));
        let current = tokio::task::spawn_blocking(move || {
            store.read(|conn| {
                shadows::get(conn, &thing, &shadow)?
                    .map(|row| decode(&row))
                    .transpose()
            })
        })
        .await
        .map_err(|_| ShadowError::internal())?
        .map_err(store_failure)?;
        handle_get(id, current.as_ref(), client_token, now_secs())
    }

    async fn do_update(&self, id: &ShadowId, payload: Bytes) -> Result<UpdateOutcome, ShadowError> {
        let limits = self.inner.limits.clone();
        let (thing, shadow) = (id.thing.as_str().to_owned(), shadow_key(id));
        let now = now_secs();
        self.inner
            .store
            .transact(move |conn| {
                let row = shadows::get(conn, &thing, &shadow)?;
                let current = row.as_ref().map(decode).transpose()?;
                let outcome = match handle_update(current.as_ref(), &payload, now, &limits) {
                    Ok(outcome) => outcome,
                    Err(refused) => return Ok(Err(refused)),
                };
                let new_row = ShadowRow {
                    document: outcome.shadow.to_bytes(),
                    version: outcome.shadow.version,
                    updated_at: now,
                    deleted_at: None,
                };
                shadows::put(conn, &thing, &shadow, row.map(|r| r.version), &new_row)?;
                Ok(Ok(outcome))
            })
            .await
            .map_err(store_failure)?
    }

    async fn do_delete(
        &self,
        id: &ShadowId,
        client_token: Option<&str>,
        expected_version: Option<u64>,
    ) -> Result<Vec<u8>, ShadowError> {
        let (thing, shadow) = (id.thing.as_str().to_owned(), shadow_key(id));
        let id = id.clone();
        let token = client_token.map(str::to_owned);
        let now = now_secs();
        self.inner
            .store
            .transact(move |conn| {
                let row = shadows::get(conn, &thing, &shadow)?;
                let current = row.as_ref().map(decode).transpose()?;
                let outcome = match handle_delete(
                    &id,
                    current.as_ref(),
                    token.as_deref(),
                    expected_version,
                    now,
                ) {
                    Ok(outcome) => outcome,
                    Err(refused) => return Ok(Err(refused)),
                };
                let tombstone = ShadowRow {
                    document: outcome.tombstone.to_bytes(),
                    version: outcome.tombstone.version,
                    updated_at: now,
                    deleted_at: outcome.tombstone.deleted_at,
                };
                shadows::put(conn, &thing, &shadow, row.map(|r| r.version), &tombstone)?;
                Ok(Ok(outcome.accepted))
            })
            .await
            .map_err(store_failure)?
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
