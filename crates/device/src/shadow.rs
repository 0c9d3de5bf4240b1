//! A typed Device Shadow client over MQTT.
//!
//! Each request carries a fresh random `clientToken`; the answer on `.../accepted` or
//! `.../rejected` with that token completes it. Deltas (`update/delta`) go to every
//! [`Deltas`] stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use thingd_mqtt::QoS;
use tokio::sync::{broadcast, oneshot};

use crate::client::{Client, Subscription};
use crate::error::{Error, ShadowError};

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Result<Value, ShadowError>>>>>;

/// A shadow delta: what `desired` says that `reported` does not.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    /// The shadow version that produced the delta.
    pub version: u64,
    /// The differing part of `desired`.
    pub state: Value,
}

/// The deltas of one shadow. Slow readers skip the deltas they missed (a newer delta
/// carries everything still different anyway).
#[derive(Debug)]
pub struct Deltas {
    rx: broadcast::Receiver<Delta>,
}

impl Deltas {
    /// The next delta; `None` when the client is closed.
    pub async fn recv(&mut self) -> Option<Delta> {
        loop {
            match self.rx.recv().await {
                Ok(delta) => return Some(delta),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// One device shadow (classic or named) of one thing.
#[derive(Debug)]
pub struct Shadow {
    client: Client,
    prefix: String,
    pending: Pending,
    deltas: broadcast::Sender<Delta>,
    router: tokio::task::JoinHandle<()>,
}

impl Drop for Shadow {
    fn drop(&mut self) {
        self.router.abort();
    }
}

fn valid_name(name: &str, max: usize, extra: &[char]) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-') || extra.contains(&c)
        })
}

impl Shadow {
    /// The classic (unnamed) shadow of `thing`. Subscribes to its response topics.
    pub async fn classic(client: &Client, thing: &str) -> Result<Shadow, Error> {
        if !valid_name(thing, 128, &[]) {
            return Err(Error::Config(format!(
                "{thing:?} is not a valid thing name"
            )));
        }
        Shadow::open(client, format!("$aws/things/{thing}/shadow")).await
    }

    /// The named shadow `name` of `thing`.
    pub async fn named(client: &Client, thing: &str, name: &str) -> Result<Shadow, Error> {
        if !valid_name(thing, 128, &[]) {
            return Err(Error::Config(format!(
                "{thing:?} is not a valid thing name"
            )));
        }
        if !valid_name(name, 64, &['$']) {
            return Err(Error::Config(format!(
                "{name:?} is not a valid shadow name"
            )));
        }
        Shadow::open(client, format!("$aws/things/{thing}/shadow/name/{name}")).await
    }

    async fn open(client: &Client, prefix: String) -> Result<Shadow, Error> {
        let filters: Vec<String> = ["get", "update", "delete"]
            .iter()
            .map(|op| format!("{prefix}/{op}/+"))
            .collect();
        let list: Vec<(&str, QoS)> = filters
            .iter()
            .map(|f| (f.as_str(), QoS::AtLeastOnce))
            .collect();
        let subscription = client.subscribe_many(&list).await?;
        let pending: Pending = Arc::default();
        let (deltas, _) = broadcast::channel(64);
        let router = tokio::spawn(route(
            subscription,
            prefix.clone(),
            pending.clone(),
            deltas.clone(),
        ));
        Ok(Shadow {
            client: client.clone(),
            prefix,
            pending,
            deltas,
            router,
        })
    }

    /// The topic prefix, `$aws/things/<T>/shadow[/name/<S>]`.
    pub fn topic_prefix(&self) -> &str {
        &self.prefix
    }

    /// A stream of this shadow's deltas, from now on.
    pub fn deltas(&self) -> Deltas {
        Deltas {
            rx: self.deltas.subscribe(),
        }
    }

    /// The current document (`state`, `metadata`, `version`, `timestamp`); a missing shadow
    /// is `ShadowError { code: 404, .. }`.
    pub async fn get(&self) -> Result<Value, Error> {
        self.request("get", json!({})).await
    }

    /// Merges `reported` into the reported state; returns the `update/accepted` document.
    pub async fn update_reported(&self, reported: Value) -> Result<Value, Error> {
        self.update(json!({ "state": { "reported": reported } }))
            .await
    }

    /// Merges `desired` into the desired state.
    pub async fn update_desired(&self, desired: Value) -> Result<Value, Error> {
        self.update(json!({ "state": { "desired": desired } }))
            .await
    }

    /// Sends an update document as given (it may carry `version` for optimistic locking: a
    /// stale one fails with `ShadowError { code: 409, .. }`).
    pub async fn update(&self, document: Value) -> Result<Value, Error> {
        self.request("update", document).await
    }

    /// Deletes the shadow.
    pub async fn delete(&self) -> Result<Value, Error> {
        self.request("delete", json!({})).await
    }

    async fn request(&self, operation: &str, mut body: Value) -> Result<Value, Error> {
        let Some(object) = body.as_object_mut() else {
            return Err(Error::Config(
                "a shadow request must be a JSON object".to_owned(),
            ));
        };
        let token = format!("{:032x}", rand::random::<u128>());
        object.insert("clientToken".to_owned(), Value::String(token.clone()));
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(token.clone(), tx);
        let payload = serde_json::to_vec(&body).unwrap_or_default();
        let ack = self.client.publish(
            format!("{}/{operation}", self.prefix),
            QoS::AtLeastOnce,
            false,
            payload,
        );
        let answer = async {
            ack.await?;
            match rx.await {
                Ok(Ok(document)) => Ok(document),
                Ok(Err(rejected)) => Err(Error::ShadowRejected(rejected)),
                Err(_) => Err(Error::Closed),
            }
        };
        let result = tokio::time::timeout(self.client.request_timeout(), answer).await;
        lock(&self.pending).remove(&token);
        result.unwrap_or(Err(Error::Timeout))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads the shadow's response topics: answers go to their request, deltas to the streams.
async fn route(
    mut subscription: Subscription,
    prefix: String,
    pending: Pending,
    deltas: broadcast::Sender<Delta>,
) {
    while let Some(message) = subscription.recv().await {
        let Some(tail) = message
            .topic
            .strip_prefix(prefix.as_str())
            .and_then(|t| t.strip_prefix('/'))
        else {
            continue;
        };
        let Ok(document) = serde_json::from_slice::<Value>(&message.payload) else {
            tracing::debug!(topic = %message.topic, "ignoring a shadow message that is not JSON");
            continue;
        };
        match tail {
            "update/delta" => {
                let delta = Delta {
                    version: document["version"].as_u64().unwrap_or_default(),
                    state: document.get("state").cloned().unwrap_or(Value::Null),
                };
                let _ = deltas.send(delta);
            }
            "update/documents" => {}
            _ => {
                let rejected = tail.ends_with("/rejected");
                if !rejected && !tail.ends_with("/accepted") {
                    continue;
                }
                let Some(token) = document.get("clientToken").and_then(Value::as_str) else {
                    continue;
                };
                let Some(waiter) = lock(&pending).remove(token) else {
                    continue;
                };
                let result = if rejected {
                    Err(ShadowError {
                        code: document["code"]
                            .as_u64()
                            .map(|c| c.min(u16::MAX as u64) as u16)
                            .unwrap_or_default(),
                        message: document["message"].as_str().unwrap_or_default().to_owned(),
                    })
                } else {
                    Ok(document)
                };
                let _ = waiter.send(result);
            }
        }
    }
}
