//! Session state: subscriptions, outbound in-flight QoS 1/2 messages with their packet ids,
//! inbound QoS 2 packet ids awaiting PUBREL, the pending (offline or over-limit) queue, and
//! the link to the live connection if there is one.
//!
//! All of it sits behind one `parking_lot::Mutex` per session (`SessionCell`); nothing here
//! awaits. Effects that need the store are collected in `Effects` and carried out by the
//! caller after the lock is released.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use thingd_mqtt::{
    ByteStr, Packet, Properties, ProtocolVersion, PubResp, PubRespKind, QoS, ReasonCode,
    SubscriptionOptions,
};
use thingd_store::WriteOp;

use crate::ConnectionPolicy;
use crate::alias::{AliasUse, OutAliases};
use crate::message::{AppMsg, Delivery, encode_frame, publish_packet};
use crate::metrics::{self, DropReason};
use crate::outbound::{Frame, Outbound};
use crate::pace::SlowReceiver;
use crate::persist;

/// A session behind its lock.
pub(crate) type SessionCell = parking_lot::Mutex<Session>;

/// A subscription as the session keeps it (the filter is the map key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubRecord {
    /// Options, with the QoS already reduced to the granted QoS.
    pub(crate) opts: SubscriptionOptions,
    /// Subscription Identifier (MQTT 5).
    pub(crate) id: Option<u32>,
}

/// Orders sent to a connection task from elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// Close the connection; v5 clients get DISCONNECT with this reason first. When the
    /// reason is Session taken over, the new connection has already dealt with the session.
    Close(ReasonCode),
}

/// The live connection of a session.
pub(crate) struct Link {
    pub(crate) conn_id: u64,
    pub(crate) version: ProtocolVersion,
    /// Encoded frames and orders for the connection; bounded (`outbound_queue`).
    pub(crate) tx: Outbound,
    pub(crate) policy: Arc<dyn ConnectionPolicy>,
    pub(crate) principal: Option<Arc<str>>,
    /// The client's Maximum Packet Size.
    pub(crate) max_packet: usize,
    /// min(client Receive Maximum, max_inflight_out).
    pub(crate) inflight_limit: usize,
    pub(crate) aliases: OutAliases,
    /// The policy's receive token as last read (see `ReceiveToken`).
    pub(crate) receive_token: ReceiveToken,
}

/// A connection's receive token (`ConnectionPolicy::receive_token`) kept with the session,
/// and the policy epoch it was read at: while the epoch stays, the token does too, and the
/// policy itself is not touched — in a fan-out to a thousand receivers, reading each one's
/// policy was most of the per-receiver authorization cost.
pub(crate) struct ReceiveToken {
    epoch: Option<Arc<AtomicU64>>,
    read_at: u64,
    token: Option<u64>,
    /// The last decision made under a token. A receiver's queue mostly holds messages on
    /// one topic, and each goes out after a PUBACK, one at a time.
    last: LastDecision<u64>,
}

impl ReceiveToken {
    pub(crate) fn new(policy: &dyn ConnectionPolicy) -> ReceiveToken {
        ReceiveToken {
            epoch: policy.decision_epoch(),
            read_at: u64::MAX,
            token: None,
            last: LastDecision::default(),
        }
    }

    /// The decision last remembered for `topic` under `token`.
    fn recall(&self, token: u64, topic: &ByteStr) -> Option<bool> {
        self.last.recall(token, topic.as_bytes())
    }

    fn remember(&mut self, token: u64, topic: &ByteStr, allowed: bool) {
        self.last.remember(token, topic.as_bytes(), allowed);
    }

    fn get(&mut self, policy: &dyn ConnectionPolicy) -> Option<u64> {
        let Some(epoch) = &self.epoch else {
            return policy.receive_token();
        };
        // Read before asking: a token read while the epoch moves is kept under the older
        // value, and asked for again next time.
        let now = epoch.load(Ordering::SeqCst);
        if now != self.read_at {
            self.token = policy.receive_token();
            self.read_at = now;
        }
        self.token
    }
}

/// The last authorization decision a connection made for one topic, under `key` (what else
/// the decision depended on: a receive token, or a policy epoch and the RETAIN flag). The
/// topic is copied: one shared with a message would keep the read buffer it came in alive
/// as long as the connection lasts.
pub(crate) struct LastDecision<K>(Option<(K, Vec<u8>, bool)>);

impl<K> Default for LastDecision<K> {
    fn default() -> Self {
        LastDecision(None)
    }
}

impl<K: PartialEq + Copy> LastDecision<K> {
    /// The decision remembered for `topic` under `key`, if that is the last one made.
    pub(crate) fn recall(&self, key: K, topic: &[u8]) -> Option<bool> {
        match &self.0 {
            Some((k, name, allowed)) if *k == key && name.as_slice() == topic => Some(*allowed),
            _ => None,
        }
    }

    pub(crate) fn remember(&mut self, key: K, topic: &[u8], allowed: bool) {
        let (k, name, a) = self.0.get_or_insert_with(|| (key, Vec::new(), allowed));
        (*k, *a) = (key, allowed);
        name.clear();
        name.extend_from_slice(topic);
    }
}

/// A Will Message waiting for its connection to end (or for its delay).
#[derive(Clone)]
pub(crate) struct Will {
    /// The message; `expires_at` is set when the connection closes (the expiry counts from
    /// the disconnect), from `expiry_interval`.
    pub(crate) msg: AppMsg,
    pub(crate) expiry_interval: Option<u32>,
    /// Will Delay Interval, seconds.
    pub(crate) delay: u32,
    /// The policy of the connection that set it (checked at publish time).
    pub(crate) policy: Arc<dyn ConnectionPolicy>,
}

/// A Will whose connection has closed, waiting for its delay: published at `due_ms` (by its
/// timer, `will::schedule`, or the expiry sweep) unless the session resumes first.
pub(crate) struct PendingWill {
    /// Tells this will from a later one of the same session (see `will::schedule`).
    pub(crate) gen_id: u64,
    /// Unix ms.
    pub(crate) due_ms: u64,
    pub(crate) will: Box<Will>,
}

/// An outbound QoS 1/2 message sent and not yet acknowledged.
#[derive(Debug)]
pub(crate) struct Inflight {
    pub(crate) pid: u16,
    /// `Session::ids_issued` when the id was handed out.
    pub(crate) issued: u64,
    pub(crate) delivery: Delivery,
    /// QoS 2: PUBREC received and PUBREL sent.
    pub(crate) released: bool,
}

/// Side effects gathered while a session lock is held.
pub(crate) struct Effects {
    pub(crate) now_ms: u64,
    pub(crate) max_queued: usize,
    /// Writes the publisher must wait for before acknowledging.
    pub(crate) durable: Vec<WriteOp>,
    /// Writes nobody waits for.
    pub(crate) detached: Vec<WriteOp>,
    /// Receivers whose outbound queue these deliveries filled past three-quarters: the
    /// publisher waits for them before it reads on (see `pace`).
    pub(crate) slow: Vec<SlowReceiver>,
    /// Receive decisions made while these effects live, by policy token and topic (see
    /// `may_receive`).
    receive_memo: Vec<(u64, ByteStr, bool)>,
    /// Whether encodings are worth keeping with the message for other receivers (not when
    /// `route` found only one).
    pub(crate) share_frames: bool,
    /// PUBLISHes handed to writers, by QoS: added to the metrics once, when these effects
    /// are dropped, instead of once per receiver on a counter every thread shares.
    sent: [u64; 3],
    /// The change in messages waiting in session queues, for the gauge (likewise once).
    queued: i64,
}

impl Drop for Effects {
    fn drop(&mut self) {
        metrics::messages_out(self.sent);
        if self.queued != 0 {
            metrics::queued(self.queued);
        }
    }
}

impl Effects {
    pub(crate) fn new(now_ms: u64, max_queued: usize) -> Self {
        Effects {
            now_ms,
            max_queued,
            durable: Vec::new(),
            detached: Vec::new(),
            slow: Vec::new(),
            receive_memo: Vec::new(),
            share_frames: true,
            sent: [0; 3],
            queued: 0,
        }
    }
}

/// One session.
pub(crate) struct Session {
    pub(crate) client_id: Arc<str>,
    pub(crate) version: ProtocolVersion,
    /// Session Expiry Interval, seconds; 0 ends the session with its connection.
    pub(crate) expiry: u32,
    pub(crate) subs: HashMap<String, SubRecord>,
    pub(crate) inflight: VecDeque<Inflight>,
    pub(crate) queue: VecDeque<Delivery>,
    pub(crate) inbound_qos2: PacketIds,
    next_pid: u16,
    /// Packet ids handed out or skipped so far: ids go round 1..=65535 in order, so an id
    /// can only still be in flight if the oldest message in flight is 65,535 ids old.
    ids_issued: u64,
    pub(crate) next_seq: u64,
    /// The highest store position (`seq`) sent on any connection, or restored as perhaps
    /// sent. Stored with the session: after a restart the messages up to it go out with
    /// DUP=1, those after it (queued while the session was offline) with DUP=0.
    pub(crate) sent_through: u64,
    pub(crate) conn: Option<Link>,
    /// The live connection's Will. Both Will fields are boxed: a Will is over 500 bytes and
    /// most sessions have none.
    pub(crate) will: Option<Box<Will>>,
    /// A delayed Will of a closed connection.
    pub(crate) pending_will: Option<PendingWill>,
    pub(crate) disconnected_at_ms: Option<u64>,
    /// When an offline session is filed to expire (`Shared::file_expiry`).
    pub(crate) expires_at_ms: Option<u64>,
    /// Removed from the broker; late operations must do nothing.
    pub(crate) ended: bool,
    /// A row for this session exists in the store.
    pub(crate) stored: bool,
}

/// The packet ids of the client's QoS 2 PUBLISHes received and not yet released by PUBREL.
/// The set is boxed when the first id arrives: most sessions never see QoS 2, and every
/// connected client has a session (an empty set inline would be 48 bytes of it).
#[derive(Debug, Default)]
#[allow(clippy::box_collection)]
pub(crate) struct PacketIds(Option<Box<HashSet<u16>>>);

impl PacketIds {
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |ids| ids.len())
    }

    pub(crate) fn contains(&self, id: &u16) -> bool {
        self.0.as_ref().is_some_and(|ids| ids.contains(id))
    }

    /// False when the id was there already.
    pub(crate) fn insert(&mut self, id: u16) -> bool {
        self.0.get_or_insert_default().insert(id)
    }

    /// False when the id was not there.
    pub(crate) fn remove(&mut self, id: &u16) -> bool {
        self.0.as_mut().is_some_and(|ids| ids.remove(id))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &u16> {
        self.0.iter().flat_map(|ids| ids.iter())
    }
}

impl FromIterator<u16> for PacketIds {
    fn from_iter<I: IntoIterator<Item = u16>>(ids: I) -> Self {
        let ids: HashSet<u16> = ids.into_iter().collect();
        PacketIds((!ids.is_empty()).then(|| Box::new(ids)))
    }
}

impl Session {
    pub(crate) fn new(client_id: Arc<str>, version: ProtocolVersion, expiry: u32) -> Session {
        Session {
            client_id,
            version,
            expiry,
            subs: HashMap::new(),
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            inbound_qos2: PacketIds::default(),
            next_pid: 1,
            ids_issued: 0,
            next_seq: 1,
            sent_through: 0,
            conn: None,
            will: None,
            pending_will: None,
            disconnected_at_ms: None,
            expires_at_ms: None,
            ended: false,
            stored: false,
        }
    }

    pub(crate) fn persistent(&self) -> bool {
        self.expiry > 0
    }

    /// When an offline session's expiry ends it (Unix ms); `None` while it is connected or
    /// when it never expires.
    pub(crate) fn expiry_due_ms(&self) -> Option<u64> {
        if self.conn.is_some() || self.expiry == u32::MAX {
            return None;
        }
        self.disconnected_at_ms
            .map(|at| at + u64::from(self.expiry) * 1000)
    }

    /// When the sweep next has work for this offline session: its expiry, or its pending
    /// will's delay if that ends first.
    pub(crate) fn sweep_due_ms(&self) -> Option<u64> {
        let will_due = self.pending_will.as_ref().map(|p| p.due_ms);
        match (self.expiry_due_ms(), will_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The Will that belongs in the session's stored state: the live connection's, or the
    /// pending one of a closed connection.
    pub(crate) fn will_to_store(&self) -> Option<&Will> {
        match (&self.will, &self.pending_will) {
            (Some(w), _) => Some(w),
            (None, Some(p)) => Some(&p.will),
            (None, None) => None,
        }
    }

    /// True while `conn_id` is the session's live connection.
    pub(crate) fn is_current(&self, conn_id: u64) -> bool {
        !self.ended && self.conn.as_ref().is_some_and(|l| l.conn_id == conn_id)
    }

    /// The packet id for delivery `d` and its place in the order ids are handed out in;
    /// `None` if no id can be given now (the delivery waits).
    ///
    /// A message with a stored copy (`seq`) always gets the id its `seq` gives (`stored_pid`):
    /// after a restart it is resent under the id the receiver may already hold, so a QoS 2
    /// receiver recognises it. While another message still holds that id (one left
    /// unacknowledged 65,535 stored messages ago) the delivery waits for it. Other messages
    /// get the next id in turn that is not in flight.
    pub(crate) fn alloc_pid(&mut self, d: &Delivery) -> Option<(u16, u64)> {
        if self.inflight.len() >= u16::MAX as usize {
            return None;
        }
        if let Some(seq) = d.seq {
            let id = stored_pid(seq);
            if self.inflight.iter().any(|i| i.pid == id) {
                return None;
            }
            return Some((id, self.ids_issued));
        }
        loop {
            let id = self.next_pid;
            let issued = self.ids_issued;
            self.next_pid = if id == u16::MAX { 1 } else { id + 1 };
            self.ids_issued += 1;
            // `inflight` is in the order ids were handed out: its front is the oldest. Only
            // then is the scan needed (with 100 in flight it was a tenth of fan-out's CPU).
            // Ids from `seq` can only be in flight at the front: they come from the time the
            // session was persistent, before any id handed out in turn.
            let may_be_in_flight = self.inflight.front().is_some_and(|oldest| {
                oldest.delivery.seq.is_some() || issued - oldest.issued >= u64::from(u16::MAX)
            });
            if !may_be_in_flight || !self.inflight.iter().any(|i| i.pid == id) {
                return Some((id, issued));
            }
        }
    }

    /// Appends to the pending queue; when it is full the oldest entry is dropped.
    pub(crate) fn enqueue(&mut self, d: Delivery, fx: &mut Effects) {
        while self.queue.len() >= fx.max_queued.max(1) {
            let Some(old) = self.queue.pop_front() else {
                break;
            };
            tracing::debug!(client_id = %self.client_id, topic = %old.msg.topic, "session queue full, dropping oldest message");
            metrics::dropped(DropReason::QueueFull);
            fx.queued -= 1;
            self.forget(&old, fx);
        }
        fx.queued += 1;
        self.queue.push_back(d);
    }

    /// Deletes a delivery's stored copy.
    fn forget(&self, d: &Delivery, fx: &mut Effects) {
        if let Some(seq) = d.seq {
            fx.detached.push(WriteOp::DeleteMessage {
                client_id: self.client_id.to_string(),
                seq,
            });
        }
    }

    fn can_send_now(&self) -> bool {
        match &self.conn {
            Some(l) => self.inflight.len() < l.inflight_limit && l.tx.free() > 0,
            None => false,
        }
    }

    /// Offers a message to this session: sent now, queued, or dropped.
    pub(crate) fn offer(&mut self, mut d: Delivery, fx: &mut Effects) {
        if self.ended {
            return;
        }
        if d.msg.is_expired(fx.now_ms) {
            metrics::dropped(DropReason::Expired);
            return;
        }
        if let Some(link) = &mut self.conn
            && !may_receive(link, &d.msg.topic, fx)
        {
            return;
        }
        if d.qos == QoS::AtMostOnce {
            self.send_qos0(&d, fx);
            return;
        }
        if self.persistent() {
            let seq = self.next_seq;
            self.next_seq += 1;
            d.seq = Some(seq);
            fx.durable.push(WriteOp::PushMessage {
                client_id: self.client_id.to_string(),
                seq,
                blob: persist::encode_delivery(&d),
            });
        }
        if self.queue.is_empty() && self.can_send_now() {
            self.send_now(d, fx);
        } else {
            self.enqueue(d, fx);
        }
    }

    fn send_qos0(&mut self, d: &Delivery, fx: &mut Effects) {
        let Some(link) = self.conn.as_mut() else {
            return; // QoS 0 is never queued for an offline session.
        };
        let frame = if shareable(link, d) {
            shared_frame(link, d, None, fx)
        } else {
            build_frame(link, d, None, false, fx.now_ms).map(Frame::from)
        };
        let Some(frame) = frame else {
            return;
        };
        if frame.len() > link.max_packet {
            metrics::dropped(DropReason::TooLarge);
            return;
        }
        let queued = match link.tx.try_send(frame) {
            Ok(queued) => {
                fx.sent[QoS::AtMostOnce as usize] += 1;
                queued
            }
            Err(_) => {
                metrics::dropped(DropReason::SlowConsumer);
                tracing::debug!(client_id = %self.client_id, "outbound queue full, dropping QoS 0 message");
                link.tx.capacity()
            }
        };
        fx.slow.extend(SlowReceiver::after_send(&link.tx, queued));
    }

    /// Sends a QoS 1/2 delivery on the live link (the caller checked `can_send_now`); false
    /// when it has to wait at the head of the queue instead (no packet id for it yet, or the
    /// writer full).
    fn send_now(&mut self, d: Delivery, fx: &mut Effects) -> bool {
        let Some((pid, issued)) = self.alloc_pid(&d) else {
            return self.wait_at_head(d, fx);
        };
        let Some(link) = self.conn.as_mut() else {
            return self.wait_at_head(d, fx);
        };
        let frame = if shareable(link, &d) {
            shared_frame(link, &d, Some(pid), fx).filter(|f| f.len() <= link.max_packet)
        } else {
            build_checked(link, &d, Some(pid), d.dup, fx.now_ms).map(Frame::from)
        };
        let Some(frame) = frame else {
            metrics::dropped(DropReason::TooLarge);
            self.forget(&d, fx);
            return true;
        };
        let Ok(queued) = link.tx.try_send(frame) else {
            return self.wait_at_head(d, fx);
        };
        fx.slow.extend(SlowReceiver::after_send(&link.tx, queued));
        fx.sent[d.qos as usize] += 1;
        if let Some(seq) = d.seq {
            self.sent_through = self.sent_through.max(seq);
        }
        self.inflight.push_back(Inflight {
            pid,
            issued,
            delivery: d,
            released: false,
        });
        true
    }

    /// Puts `d` back at the head of the queue, for `pump` to send when it can; false, for
    /// `send_now` to return.
    fn wait_at_head(&mut self, d: Delivery, fx: &mut Effects) -> bool {
        self.queue.push_front(d);
        fx.queued += 1;
        false
    }

    /// Moves queued messages to the link while the in-flight window and the writer allow.
    pub(crate) fn pump(&mut self, fx: &mut Effects) {
        while !self.queue.is_empty() && self.can_send_now() {
            let Some(d) = self.queue.pop_front() else {
                break;
            };
            fx.queued -= 1;
            if d.msg.is_expired(fx.now_ms) {
                metrics::dropped(DropReason::Expired);
                self.forget(&d, fx);
                continue;
            }
            if let Some(link) = &mut self.conn
                && !may_receive(link, &d.msg.topic, fx)
            {
                self.forget(&d, fx);
                continue;
            }
            if !self.send_now(d, fx) {
                break;
            }
        }
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2): the message is done; false if `pid` was not in
    /// flight at that stage. The caller then `pump`s the queue into the freed room (once after
    /// all the acknowledgements it read together).
    pub(crate) fn acknowledged(&mut self, pid: u16, kind: PubRespKind, fx: &mut Effects) -> bool {
        let pos = self.inflight.iter().position(|i| {
            i.pid == pid
                && match kind {
                    PubRespKind::PubAck => i.delivery.qos == QoS::AtLeastOnce,
                    _ => i.delivery.qos == QoS::ExactlyOnce && i.released,
                }
        });
        let Some(pos) = pos else {
            return false;
        };
        if let Some(done) = self.inflight.remove(pos) {
            self.forget(&done.delivery, fx);
        }
        true
    }

    /// PUBREC: returns true when a PUBREL must be sent. A failing PUBREC (v5 reason ≥ 0x80)
    /// ends the exchange. A stored message is marked released (a durable write the PUBREL
    /// waits for), so that after a restart only its PUBREL is resent: the receiver may
    /// already have passed the message on and forgotten its id.
    pub(crate) fn received(&mut self, pid: u16, failed: bool, fx: &mut Effects) -> bool {
        let Some(pos) = self
            .inflight
            .iter()
            .position(|i| i.pid == pid && i.delivery.qos == QoS::ExactlyOnce)
        else {
            return false;
        };
        if failed {
            if let Some(done) = self.inflight.remove(pos) {
                self.forget(&done.delivery, fx);
            }
            self.pump(fx);
            return false;
        }
        if let Some(i) = self.inflight.get_mut(pos) {
            i.released = true;
            if let Some(seq) = i.delivery.seq {
                fx.durable.push(WriteOp::ReleaseMessage {
                    client_id: self.client_id.to_string(),
                    seq,
                });
            }
        }
        true
    }

    /// Frames to resend when a session resumes: PUBLISH with DUP=1, or PUBREL for messages
    /// at the PUBREC stage, in the original order.
    pub(crate) fn redelivery(&mut self, fx: &mut Effects) -> Vec<Bytes> {
        let mut out = Vec::new();
        let Some(link) = self.conn.as_mut() else {
            return out;
        };
        for i in &self.inflight {
            let frame = if i.released {
                encode_frame(&pubrel(i.pid), link.version)
            } else {
                build_checked(link, &i.delivery, Some(i.pid), true, fx.now_ms)
            };
            out.extend(frame);
        }
        out
    }

    /// Drops everything this session holds (it has ended); returns the number of queued
    /// messages released, for the gauge.
    pub(crate) fn end(&mut self) {
        self.ended = true;
        metrics::queued(-(self.queue.len() as i64));
        self.queue.clear();
        self.inflight.clear();
        self.conn = None;
    }
}

/// The packet id of the message stored at `seq` in its session's queue (1..=65535; a
/// session's first message, `seq` 1, gets 1, as in a clean session).
pub(crate) fn stored_pid(seq: u64) -> u16 {
    (seq.wrapping_sub(1) % u64::from(u16::MAX)) as u16 + 1
}

/// A PUBREL for `pid`.
pub(crate) fn pubrel(pid: u16) -> Packet {
    Packet::PubResp(PubResp {
        kind: PubRespKind::PubRel,
        packet_id: pid,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    })
}

/// Receive decisions a lookup compares, newest first (one fan-out has one topic and a few
/// policy sets).
const RECEIVE_MEMO_LOOKBACK: usize = 8;

/// Whether `link`'s connection may receive a message on `topic`. Receivers whose policies
/// decide alike (`ConnectionPolicy::receive_token`) share one decision per topic while `fx`
/// lives — a fan-out to a fleet with one policy asks once, not once per device. A policy
/// changed meanwhile gives another token, so it is asked again.
fn may_receive(link: &mut Link, topic: &ByteStr, fx: &mut Effects) -> bool {
    let Some(token) = link.receive_token.get(link.policy.as_ref()) else {
        return link.policy.can_receive(topic);
    };
    if let Some(allowed) = link.receive_token.recall(token, topic) {
        return allowed;
    }
    let known = fx
        .receive_memo
        .iter()
        .rev()
        .take(RECEIVE_MEMO_LOOKBACK)
        .find(|(t, name, _)| *t == token && name == topic)
        .map(|&(_, _, allowed)| allowed);
    let allowed = known.unwrap_or_else(|| {
        let allowed = link.policy.can_receive(topic);
        fx.receive_memo.push((token, topic.clone(), allowed));
        allowed
    });
    link.receive_token.remember(token, topic, allowed);
    allowed
}

/// Whether the frame of `d` for `link` is the same for every receiver of its version (no
/// topic alias, no subscription identifier; packet ids are patched in).
fn shareable(link: &Link, d: &Delivery) -> bool {
    !link.aliases.enabled() && d.sub_ids.is_empty() && !d.dup
}

/// The frame of a shareable delivery. One that carries no properties for `link` (any
/// message for MQTT 3.1.1; one with no forwarded properties and no expiry for 5) is written
/// from the message when the connection copies it out, and never encoded on its own.
/// Others are encoded once per message, version, QoS and expiry second (`SharedFrames`:
/// fan-out to many receivers encodes each message once, also when it goes out later from the
/// receivers' queues); a QoS 1/2 receiver's packet id is written in when the frame is copied
/// out (`Frame`). Retained messages sent on SUBSCRIBE are encoded for their receiver alone:
/// a frame kept with one would last as long as it does.
fn shared_frame(
    link: &mut Link,
    d: &Delivery,
    pid: Option<u16>,
    fx: &mut Effects,
) -> Option<Frame> {
    let plain = link.version == ProtocolVersion::V311
        || (d.msg.props.is_none() && d.msg.expires_at.is_none());
    if plain {
        let pid = pid.filter(|_| d.qos != QoS::AtMostOnce);
        return Frame::publish(&d.msg, d.qos, d.retain, pid, link.version);
    }
    let now_ms = fx.now_ms;
    let frame = if d.retain || !fx.share_frames {
        build_frame(link, d, pid.map(|_| 1), false, now_ms)
    } else {
        let key = (link.version, d.qos, d.msg.remaining_expiry(now_ms));
        d.msg
            .frames
            .get_or_encode(key, || build_frame(link, d, pid.map(|_| 1), false, now_ms))
    }?;
    match pid {
        Some(pid) if d.qos != QoS::AtMostOnce => {
            let at = packet_id_offset(&frame)?;
            Frame::with_packet_id(frame, at, pid)
        }
        _ => Some(frame.into()),
    }
}

/// Where the packet id of an encoded PUBLISH (QoS 1 or 2) is: after the fixed header and the
/// topic name, in every protocol version.
fn packet_id_offset(frame: &[u8]) -> Option<usize> {
    let length_bytes = frame.get(1..)?.iter().position(|b| b & 0x80 == 0)? + 1;
    let topic = 1 + length_bytes;
    let topic_len = usize::from(u16::from_be_bytes([
        *frame.get(topic)?,
        *frame.get(topic + 1)?,
    ]));
    let at = topic + 2 + topic_len;
    frame.get(at..at + 2)?;
    Some(at)
}

/// Builds and encodes a PUBLISH for `link`, checking the client's Maximum Packet Size before
/// an alias is assigned (so that a dropped packet never consumes an alias).
fn build_checked(
    link: &mut Link,
    d: &Delivery,
    pid: Option<u16>,
    dup: bool,
    now_ms: u64,
) -> Option<Bytes> {
    let p = publish_packet(d, pid, dup, now_ms, link.version);
    // A new alias adds at most 3 bytes (and the remaining-length field at most 1 more).
    let len = thingd_mqtt::encoded_len(&Packet::Publish(p), link.version);
    if len.saturating_add(4) > link.max_packet {
        return None;
    }
    build_frame(link, d, pid, dup, now_ms)
}

fn build_frame(
    link: &mut Link,
    d: &Delivery,
    pid: Option<u16>,
    dup: bool,
    now_ms: u64,
) -> Option<Bytes> {
    let mut p = publish_packet(d, pid, dup, now_ms, link.version);
    if link.version == ProtocolVersion::V5 {
        match link.aliases.lookup(&p.topic) {
            AliasUse::None => {}
            AliasUse::New(a) => p.properties.topic_alias = Some(a),
            AliasUse::Known(a) => {
                p.properties.topic_alias = Some(a);
                p.topic = ByteStr::default();
            }
        }
    }
    encode_frame(&Packet::Publish(p), link.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every session, online or not, holds its Will fields: inline, two Wills (each with a
    /// message) made a session 1,504 bytes; boxed they cost only the sessions that have one.
    #[test]
    fn a_session_keeps_its_wills_out_of_line() {
        assert!(size_of::<Session>() + 2 * size_of::<Will>() > 512);
        assert!(size_of::<Session>() <= 512, "{}", size_of::<Session>());
    }

    /// The QoS 2 ids behave as the set they replace, whether or not it was ever made.
    #[test]
    fn qos2_packet_ids_behave_as_a_set_made_on_first_use() {
        let mut ids = PacketIds::default();
        assert_eq!(
            (ids.len(), ids.contains(&7), ids.remove(&7)),
            (0, false, false)
        );
        assert_eq!(ids.iter().count(), 0);
        assert!(ids.insert(7));
        assert!(!ids.insert(7), "a retransmission is recognised");
        assert!(ids.insert(9));
        assert_eq!((ids.len(), ids.contains(&7)), (2, true));
        assert!(ids.remove(&7));
        assert!(!ids.contains(&7));
        let restored: PacketIds = [3, 5, 3].into_iter().collect();
        let mut listed: Vec<u16> = restored.iter().copied().collect();
        listed.sort_unstable();
        assert_eq!(listed, vec![3, 5]);
        let none: PacketIds = std::iter::empty().collect();
        assert!(none.0.is_none(), "nothing restored, nothing allocated");
    }

    /// Every connected client has a session, so its size is part of what an idle connection
    /// costs. What few sessions use (QoS 2 ids, topic aliases, a Will) is boxed when first
    /// needed; the session was 488 bytes before QoS 2 ids and outbound aliases were.
    #[test]
    fn what_few_sessions_use_is_kept_out_of_line() {
        assert!(size_of::<PacketIds>() <= 8);
        assert!(size_of::<crate::alias::OutAliases>() <= 16);
        assert!(size_of::<Session>() <= 408, "{}", size_of::<Session>());
    }
    use crate::message::AppMsg;

    fn delivery(topic: &str, qos: QoS) -> Delivery {
        Delivery {
            msg: Arc::new(AppMsg {
                topic: ByteStr::from(topic),
                payload: Bytes::from_static(b"x"),
                qos,
                retain: false,
                props: None,
                expires_at: None,
                origin: None,
                frames: Default::default(),
            }),
            qos,
            retain: false,
            sub_ids: Vec::new(),
            seq: None,
            dup: false,
        }
    }

    /// Hands out an id and keeps it in flight.
    fn send_one(s: &mut Session) -> u16 {
        send_stored(s, None).expect("an id is free")
    }

    /// Hands out an id for a delivery stored at `seq` (if any) and keeps it in flight.
    fn send_stored(s: &mut Session, seq: Option<u64>) -> Option<u16> {
        let mut d = delivery("a", QoS::AtLeastOnce);
        d.seq = seq;
        let (pid, issued) = s.alloc_pid(&d)?;
        s.inflight.push_back(Inflight {
            pid,
            issued,
            delivery: d,
            released: false,
        });
        Some(pid)
    }

    #[test]
    fn a_stored_message_has_the_id_its_place_gives_and_waits_while_it_is_taken() {
        let mut s = Session::new(Arc::from("c"), ProtocolVersion::V5, 600);
        assert_eq!(send_stored(&mut s, Some(1)), Some(stored_pid(1)));
        assert_eq!(send_stored(&mut s, Some(2)), Some(stored_pid(2)));
        // 65,535 places later the id comes round again: it waits while 1 is in flight.
        let round = 1 + u64::from(u16::MAX);
        assert_eq!(stored_pid(round), stored_pid(1));
        assert_eq!(send_stored(&mut s, Some(round)), None);
        s.inflight.pop_front();
        assert_eq!(send_stored(&mut s, Some(round)), Some(stored_pid(1)));
        assert_eq!(stored_pid(1), 1);
        assert_eq!(stored_pid(u64::from(u16::MAX)), u16::MAX);
        assert!((0..=3 * u64::from(u16::MAX)).all(|seq| stored_pid(seq) != 0));
    }

    #[test]
    fn ids_in_turn_skip_stored_ids_still_in_flight() {
        // A persistent session resumed as a clean one keeps its stored messages in flight.
        let mut s = Session::new(Arc::from("c"), ProtocolVersion::V5, 0);
        let stored = send_stored(&mut s, Some(2)).expect("free");
        assert_eq!(stored, 2);
        assert_eq!(send_one(&mut s), 1);
        assert_eq!(send_one(&mut s), 3);
    }

    #[test]
    fn pid_allocation_skips_ids_in_flight() {
        let mut s = Session::new(Arc::from("c"), ProtocolVersion::V5, 0);
        assert_eq!(send_one(&mut s), 1);
        assert_eq!(send_one(&mut s), 2);
        // 1 is acknowledged; 2 stays in flight for a whole round of ids.
        s.inflight.pop_front();
        for expected in 3..=u16::MAX {
            assert_eq!(send_one(&mut s), expected);
            s.inflight.pop_back();
        }
        // Wraps to 1, skipping 0; 2 is still in flight.
        assert_eq!(send_one(&mut s), 1);
        assert_eq!(send_one(&mut s), 3);
        let ids: Vec<u16> = s.inflight.iter().map(|i| i.pid).collect();
        assert_eq!(ids, vec![2, 1, 3]);
    }

    #[test]
    fn pid_allocation_with_many_in_flight_never_repeats_an_id_in_use() {
        let mut s = Session::new(Arc::from("c"), ProtocolVersion::V5, 0);
        // 100 in flight, acknowledged out of order, for several rounds of ids.
        for round in 0..300_000u32 {
            let pid = send_one(&mut s);
            assert_eq!(
                s.inflight.iter().filter(|i| i.pid == pid).count(),
                1,
                "{pid} in flight twice"
            );
            if s.inflight.len() >= 100 {
                // Keep the very first message forever; ack a pseudo-random other one.
                let at = 1 + (round as usize * 7919) % (s.inflight.len() - 1);
                s.inflight.remove(at);
            }
        }
        assert_eq!(s.inflight.front().map(|i| i.pid), Some(1));
    }

    #[test]
    fn queue_drops_oldest_when_full() {
        let mut s = Session::new(Arc::from("c"), ProtocolVersion::V5, 60);
        let mut fx = Effects::new(0, 3);
        for i in 0..5 {
            let mut d = delivery(&format!("t/{i}"), QoS::AtLeastOnce);
            d.seq = Some(i);
            s.enqueue(d, &mut fx);
        }
        let topics: Vec<_> = s.queue.iter().map(|d| d.msg.topic.to_string()).collect();
        assert_eq!(topics, vec!["t/2", "t/3", "t/4"]);
        // The two dropped messages are deleted from the store.
        assert_eq!(fx.detached.len(), 2);
    }

    #[test]
    fn offline_session_queues_only_qos_above_zero() {
        let mut s = Session::new(Arc::from("c"), ProtocolVersion::V311, 60);
        let mut fx = Effects::new(0, 10);
        s.offer(delivery("a", QoS::AtMostOnce), &mut fx);
        s.offer(delivery("a", QoS::AtLeastOnce), &mut fx);
        assert_eq!(s.queue.len(), 1);
        assert_eq!(s.queue[0].seq, Some(1));
        assert_eq!(fx.durable.len(), 1);
    }

    fn online(s: &mut Session, capacity: usize) -> crate::outbound::OutboundRx {
        let (tx, rx) = crate::outbound::outbound(capacity);
        s.conn = Some(Link {
            conn_id: 1,
            version: ProtocolVersion::V5,
            tx,
            policy: Arc::new(crate::AllowAll),
            principal: None,
            max_packet: usize::MAX,
            inflight_limit: 2,
            aliases: OutAliases::new(0),
            receive_token: ReceiveToken::new(&crate::AllowAll),
        });
        rx
    }

    /// A policy that allows receiving `allowed` only and counts how often it was asked.
    struct CountingPolicy {
        token: Option<u64>,
        allowed: &'static str,
        asked: Arc<std::sync::atomic::AtomicUsize>,
        /// Given as the receive token's epoch; `token_reads` counts the reads of the token.
        epoch: Option<Arc<std::sync::atomic::AtomicU64>>,
        token_reads: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl crate::ConnectionPolicy for CountingPolicy {
        fn can_publish(&self, _topic: &str, _retain: bool) -> bool {
            true
        }
        fn can_subscribe(&self, _filter: &str) -> bool {
            true
        }
        fn can_receive(&self, topic: &str) -> bool {
            self.asked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            topic == self.allowed
        }
        fn receive_token(&self) -> Option<u64> {
            self.token_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.token
        }
        fn decision_epoch(&self) -> Option<Arc<std::sync::atomic::AtomicU64>> {
            self.epoch.clone()
        }
    }

    /// A session with `policy`, online.
    fn online_with(policy: CountingPolicy) -> (Session, crate::outbound::OutboundRx) {
        let mut s = Session::new(Arc::from("r"), ProtocolVersion::V5, 0);
        let rx = online(&mut s, 16);
        if let Some(link) = s.conn.as_mut() {
            link.receive_token = ReceiveToken::new(&policy);
            link.policy = Arc::new(policy);
        }
        (s, rx)
    }

    /// A QoS 0 delivery of `msg`.
    fn qos0(msg: &Arc<AppMsg>) -> Delivery {
        Delivery {
            msg: msg.clone(),
            qos: QoS::AtMostOnce,
            retain: false,
            sub_ids: Vec::new(),
            seq: None,
            dup: false,
        }
    }

    #[test]
    fn a_receive_token_is_read_again_only_when_its_epoch_moves() {
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        let epoch = Arc::new(AtomicU64::new(3));
        let token_reads = Arc::new(AtomicUsize::new(0));
        let (mut s, mut rx) = online_with(CountingPolicy {
            token: Some(7),
            allowed: "fleet/cmd",
            asked: Arc::new(AtomicUsize::new(0)),
            epoch: Some(epoch.clone()),
            token_reads: token_reads.clone(),
        });
        let msg = delivery("fleet/cmd", QoS::AtMostOnce).msg;
        for _ in 0..5 {
            s.offer(qos0(&msg), &mut Effects::new(0, 10));
        }
        assert_eq!(token_reads.load(Ordering::Relaxed), 1);
        epoch.fetch_add(1, Ordering::SeqCst);
        for _ in 0..5 {
            s.offer(qos0(&msg), &mut Effects::new(0, 10));
        }
        assert_eq!(token_reads.load(Ordering::Relaxed), 2);
        for _ in 0..10 {
            assert!(rx.try_recv().is_some(), "every offer is delivered");
        }
        // Without an epoch the token is read on every delivery.
        let token_reads = Arc::new(AtomicUsize::new(0));
        let (mut s, _rx) = online_with(CountingPolicy {
            token: Some(7),
            allowed: "fleet/cmd",
            asked: Arc::new(AtomicUsize::new(0)),
            epoch: None,
            token_reads: token_reads.clone(),
        });
        for _ in 0..3 {
            s.offer(qos0(&msg), &mut Effects::new(0, 10));
        }
        assert_eq!(token_reads.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_receiver_keeps_its_last_receive_decision_while_its_token_stays() {
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        let epoch = Arc::new(AtomicU64::new(0));
        let asked = Arc::new(AtomicUsize::new(0));
        let (mut s, mut rx) = online_with(CountingPolicy {
            token: Some(7),
            allowed: "fleet/cmd",
            asked: asked.clone(),
            epoch: Some(epoch.clone()),
            token_reads: Arc::default(),
        });
        let cmd = delivery("fleet/cmd", QoS::AtMostOnce).msg;
        let secret = delivery("fleet/secret", QoS::AtMostOnce).msg;
        // Each offer with effects of its own, as messages pumped one per PUBACK are.
        for _ in 0..4 {
            s.offer(qos0(&cmd), &mut Effects::new(0, 10));
        }
        assert_eq!(asked.load(Ordering::Relaxed), 1);
        s.offer(qos0(&secret), &mut Effects::new(0, 10));
        s.offer(qos0(&secret), &mut Effects::new(0, 10));
        s.offer(qos0(&cmd), &mut Effects::new(0, 10));
        assert_eq!(
            asked.load(Ordering::Relaxed),
            3,
            "another topic is decided anew"
        );
        epoch.fetch_add(1, Ordering::SeqCst);
        s.offer(qos0(&cmd), &mut Effects::new(0, 10));
        // The token is read again, and is the same one: its decisions still hold (a changed
        // policy is another token).
        assert_eq!(asked.load(Ordering::Relaxed), 3);
        let mut delivered = 0;
        while rx.try_recv().is_some() {
            delivered += 1;
        }
        assert_eq!(delivered, 6, "fleet/cmd six times, fleet/secret never");
    }

    #[test]
    fn receivers_with_the_same_receive_token_are_asked_once_per_topic() {
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // 10 receivers sharing token 7, 3 with token 8, 2 deciding for themselves.
        let tokens = [Some(7); 10]
            .into_iter()
            .chain([Some(8); 3])
            .chain([None; 2]);
        let mut receivers: Vec<(Session, crate::outbound::OutboundRx)> = tokens
            .map(|token| {
                online_with(CountingPolicy {
                    token,
                    allowed: "fleet/cmd",
                    asked: asked.clone(),
                    epoch: None,
                    token_reads: Arc::default(),
                })
            })
            .collect();
        let mut fx = Effects::new(0, 10);
        for topic in ["fleet/cmd", "fleet/secret"] {
            let msg = delivery(topic, QoS::AtMostOnce).msg;
            for (s, _) in &mut receivers {
                s.offer(qos0(&msg), &mut fx);
            }
        }
        // Per topic: once for token 7, once for token 8, and twice for the two without.
        assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 2 * 4);
        for (_, rx) in &mut receivers {
            let got = rx.try_recv().expect("fleet/cmd is delivered");
            let mut wire = bytes::BytesMut::new();
            got.copy_to(&mut wire);
            assert!(wire.windows(9).any(|w| w == b"fleet/cmd"));
            assert!(rx.try_recv().is_none(), "fleet/secret is not");
        }
    }

    /// A delivery that carries no properties for its receiver is written from the message
    /// (nothing is encoded and kept with it) and is, byte for byte, what encoding its PUBLISH
    /// gives; one that carries some for MQTT 5 is encoded once and shared.
    #[test]
    fn deliveries_without_properties_are_written_from_the_message() {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                for (retain, props, expiry) in [
                    (false, false, false),
                    (true, false, false),
                    (false, true, false),
                    (false, false, true),
                ] {
                    let case = format!(
                        "{version:?} {qos:?} retain={retain} props={props} expiry={expiry}"
                    );
                    let mut s = Session::new(Arc::from("r"), version, 0);
                    let mut rx = online(&mut s, 16);
                    s.conn.as_mut().unwrap().version = version;
                    let mut d = delivery("fleet/a/telemetry", qos);
                    d.retain = retain;
                    let msg = Arc::get_mut(&mut d.msg).unwrap();
                    msg.payload = Bytes::from(vec![b'p'; 300]);
                    if props {
                        msg.props = Some(Box::new(Properties {
                            content_type: Some(ByteStr::from("text/plain")),
                            ..Properties::default()
                        }));
                    }
                    if expiry {
                        msg.expires_at = Some(60_000);
                    }
                    let mut fx = Effects::new(0, 10);
                    s.offer(d.clone(), &mut fx);
                    let frame = rx.try_recv().expect("sent at once");
                    let wire = frame.wire();
                    assert_eq!(frame.len(), wire.len(), "{case}");
                    let sent = thingd_mqtt::decode(&mut wire.clone(), version, usize::MAX);
                    let Ok(Some(Packet::Publish(sent))) = sent else {
                        panic!("{case}: {sent:?}");
                    };
                    assert_eq!(sent.packet_id.is_some(), qos != QoS::AtMostOnce, "{case}");
                    let expected = encode_frame(
                        &Packet::Publish(publish_packet(&d, sent.packet_id, false, 0, version)),
                        version,
                    )
                    .unwrap();
                    assert_eq!(&wire[..], &expected[..], "{case}");
                    let plain = version == ProtocolVersion::V311 || !(props || expiry);
                    let shared = !plain && !retain;
                    assert_eq!(d.msg.frames.len(), usize::from(shared), "{case}");
                }
            }
        }
    }

    #[test]
    fn a_shared_frame_gets_each_receivers_packet_id() {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let mut d = delivery("fleet/a/telemetry", qos);
                Arc::get_mut(&mut d.msg).unwrap().props = Some(Box::new(Properties {
                    content_type: Some(ByteStr::from("application/json")),
                    ..Properties::default()
                }));
                let shared = encode_frame(
                    &Packet::Publish(publish_packet(&d, Some(1), false, 0, version)),
                    version,
                )
                .unwrap();
                let patched = patched(shared, 0xBEEF);
                let direct = encode_frame(
                    &Packet::Publish(publish_packet(&d, Some(0xBEEF), false, 0, version)),
                    version,
                )
                .unwrap();
                assert_eq!(patched, direct, "{version:?} {qos:?}");
            }
        }
        // A long topic makes the remaining length two bytes.
        let d = delivery(&"t".repeat(300), QoS::AtLeastOnce);
        let shared = encode_frame(
            &Packet::Publish(publish_packet(&d, Some(1), false, 0, ProtocolVersion::V5)),
            ProtocolVersion::V5,
        )
        .unwrap();
        let direct = encode_frame(
            &Packet::Publish(publish_packet(&d, Some(7), false, 0, ProtocolVersion::V5)),
            ProtocolVersion::V5,
        )
        .unwrap();
        assert_eq!(patched(shared, 7), direct);
    }

    /// What a shared frame with `id` written in looks like on the wire.
    fn patched(shared: Bytes, id: u16) -> bytes::BytesMut {
        let at = packet_id_offset(&shared).unwrap();
        let mut out = bytes::BytesMut::from(&b"before"[..]);
        Frame::with_packet_id(shared, at, id)
            .unwrap()
            .copy_to(&mut out);
        assert_eq!(&out[..6], b"before", "appended after what was there");
        out.split_off(6)
    }

    #[test]
    fn slow_consumer_drops_qos0_and_queues_qos1() {
        let mut s = Session::new(Arc::from("c"), ProtocolVersion::V5, 0);
        let mut rx = online(&mut s, 1);
        let mut fx = Effects::new(0, 10);
        s.offer(delivery("a", QoS::AtMostOnce), &mut fx);
        s.offer(delivery("b", QoS::AtMostOnce), &mut fx); // dropped: writer queue full
        s.offer(delivery("c", QoS::AtLeastOnce), &mut fx); // queued
        assert_eq!(s.queue.len(), 1);
        assert!(s.inflight.is_empty());
        assert!(rx.try_recv().is_some());
        assert!(rx.try_recv().is_none());
        s.pump(&mut fx);
        assert_eq!(s.inflight.len(), 1);
        assert!(s.queue.is_empty());
    }

    #[test]
    fn inflight_window_and_acks() {
        let mut s = Session::new(Arc::from("c"), ProtocolVersion::V5, 0);
        let _rx = online(&mut s, 100);
        let mut fx = Effects::new(0, 10);
        for t in ["a", "b", "c"] {
            s.offer(delivery(t, QoS::AtLeastOnce), &mut fx);
        }
        s.offer(delivery("q2", QoS::ExactlyOnce), &mut fx);
        assert_eq!(s.inflight.len(), 2);
        assert_eq!(s.queue.len(), 2);
        let first = s.inflight[0].pid;
        assert!(complete(&mut s, first, PubRespKind::PubAck, &mut fx));
        assert!(
            !complete(&mut s, first, PubRespKind::PubAck, &mut fx),
            "acked once"
        );
        assert_eq!(s.inflight.len(), 2);
        // QoS 2: PUBCOMP before PUBREC does nothing.
        let second = s.inflight[1].pid;
        let front = s.inflight[0].pid;
        assert!(complete(&mut s, front, PubRespKind::PubAck, &mut fx));
        assert_eq!(s.inflight.len(), 2);
        assert!(!complete(&mut s, second, PubRespKind::PubComp, &mut fx));
        let q2 = s.inflight[1].pid;
        assert!(s.received(q2, false, &mut fx));
        // Redelivery resends PUBLISH (DUP) for the first and PUBREL for the released one.
        assert_eq!(s.redelivery(&mut fx).len(), 2);
        assert!(complete(&mut s, q2, PubRespKind::PubComp, &mut fx));
        assert_eq!(s.inflight.len(), 1);
    }

    /// An acknowledgement and the pump a connection does after it.
    fn complete(s: &mut Session, pid: u16, kind: PubRespKind, fx: &mut Effects) -> bool {
        let known = s.acknowledged(pid, kind, fx);
        s.pump(fx);
        known
    }

    #[test]
    fn expired_messages_are_not_queued() {
        let mut s = Session::new(Arc::from("c"), ProtocolVersion::V5, 60);
        let mut fx = Effects::new(5_000, 10);
        let mut d = delivery("a", QoS::AtLeastOnce);
        if let Some(m) = Arc::get_mut(&mut d.msg) {
            m.expires_at = Some(4_000);
        }
        s.offer(d, &mut fx);
        assert!(s.queue.is_empty());
    }
}
