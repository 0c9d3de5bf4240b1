//! Retained messages: one per topic, an empty payload deletes, Message Expiry honoured.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use thingd_store::WriteOp;

use crate::message::AppMsg;
use crate::metrics::{self, DropReason};

#[derive(Default)]
pub(crate) struct Retained {
    map: RwLock<HashMap<String, Arc<AppMsg>>>,
}

impl Retained {
    /// Stores (or, for an empty payload, deletes) the retained message of `msg.topic`, and
    /// returns the store write that makes it durable.
    pub(crate) fn set(&self, msg: &Arc<AppMsg>) -> WriteOp {
        let topic = msg.topic.to_string();
        if msg.payload.is_empty() {
            self.map.write().remove(&topic);
            WriteOp::DeleteRetained { topic }
        } else {
            // A copy without the encodings the live fan-out shares (`SharedFrames`): a
            // retained message may be kept for a long time.
            let kept = Arc::new(AppMsg::clone(msg));
            self.map.write().insert(topic.clone(), kept);
            WriteOp::PutRetained {
                topic,
                blob: crate::persist::encode_message(msg),
            }
        }
    }

    /// Loads a message at startup.
    pub(crate) fn restore(&self, msg: Arc<AppMsg>) {
        self.map.write().insert(msg.topic.to_string(), msg);
    }

    /// The live retained messages whose topic matches `filter` (MQTT matching, wildcards
    /// included); expired ones are removed and their deletes returned in `deletes`.
    pub(crate) fn matching(
        &self,
        filter: &str,
        now_ms: u64,
        deletes: &mut Vec<WriteOp>,
    ) -> Vec<Arc<AppMsg>> {
        let mut out = Vec::new();
        let mut expired = Vec::new();
        {
            let map = self.map.read();
            for (topic, msg) in map.iter() {
                if thingd_topic::matches(filter, topic) {
                    if msg.is_expired(now_ms) {
                        expired.push(topic.clone());
                    } else {
                        out.push(msg.clone());
                    }
                }
            }
        }
        if !expired.is_empty() {
            let mut map = self.map.write();
            for topic in expired {
                if map.get(&topic).is_some_and(|m| m.is_expired(now_ms)) {
                    map.remove(&topic);
                    metrics::dropped(DropReason::Expired);
                    deletes.push(WriteOp::DeleteRetained { topic });
                }
            }
        }
        out
    }
}
