//! The shared state of the broker: sessions by client id, the subscription index, retained
//! messages; fan-out of published messages; attaching and detaching connections; session
//! expiry; restoring state from the store.
//!
//! Lock order: `sessions` map → one session cell → `index` → retained. The fan-out reads the
//! index, releases it, and only then locks the receiving sessions one at a time.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Waker};

use parking_lot::Mutex;
use smallvec::SmallVec;
use thingd_mqtt::{ProtocolVersion, QoS, SubscriptionOptions};
use thingd_store::{QueuedMessage, SessionRecord, Store, WriteOp};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::message::{AppMsg, Clock, Delivery};
use crate::metrics;
use crate::persist;
use crate::retained::Retained;
use crate::routes::{Member, Routes, Subscriptions};
use crate::session::{
    Control, Effects, Inflight, Link, PendingWill, Session, SessionCell, Will, stored_pid,
};
use crate::{Authorizer, BrokerConfig};

/// Index key: the client, and the share group for `$share/<group>/...` subscriptions, so one
/// client can hold both `a/b` and `$share/g/a/b`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SubKey {
    pub(crate) client: Arc<str>,
    pub(crate) group: Option<Arc<str>>,
}

/// Index value.
pub(crate) struct SubVal {
    pub(crate) cell: Arc<SessionCell>,
    pub(crate) opts: SubscriptionOptions,
    pub(crate) id: Option<u32>,
}

pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    pub(crate) store: Store,
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) clock: Clock,
    pub(crate) sessions: Mutex<HashMap<Arc<str>, Arc<SessionCell>>>,
    /// Offline sessions that can expire, by the time they expire (ms) and cell address: the
    /// sweep looks at these alone, not at every session a second. Taken after `sessions`
    /// and a session's lock, never before.
    expiring: Mutex<BTreeMap<(u64, usize), Arc<SessionCell>>>,
    pub(crate) index: Subscriptions,
    pub(crate) retained: Retained,
    next_conn_id: AtomicU64,
    share_rr: AtomicUsize,
    pub(crate) will_gen: AtomicU64,
    pub(crate) shutdown: CancellationToken,
    live: AtomicUsize,
    live_changed: Notify,
    pub(crate) sweeper_started: std::sync::atomic::AtomicBool,
    /// Connection and subscription events; sending never blocks and loses nothing.
    pub(crate) events: crate::events::EventQueues,
}

/// Splits a filter as sent into (group, filter to index).
pub(crate) fn split_filter(filter: &str) -> (Option<Arc<str>>, &str) {
    match thingd_topic::parse_shared(filter) {
        Some((g, f)) => (Some(Arc::from(g)), f),
        None => (None, filter),
    }
}

/// The store row of a session.
pub(crate) fn session_record(s: &Session, disconnected_at: Option<i64>) -> SessionRecord {
    let mut qos2: Vec<u16> = s.inbound_qos2.iter().copied().collect();
    qos2.sort_unstable();
    SessionRecord {
        client_id: s.client_id.to_string(),
        protocol_level: s.version.level(),
        expiry_interval: s.expiry,
        disconnected_at,
        // Only a Will its connection may publish: a stored one is published after a restart
        // without that connection's policy.
        state: persist::encode_state(
            &s.subs,
            &qos2,
            s.sent_through,
            s.will_to_store()
                .filter(|w| w.policy.can_publish(&w.msg.topic, w.msg.retain)),
        ),
    }
}

/// Whether `s` keeps a row in the store: a persistent session always; a clean one only while
/// its connection has a Will it may publish, so that a crash does not swallow the Will (after
/// the restart it is published, as for any connection lost without DISCONNECT).
fn needs_row(s: &Session) -> bool {
    s.persistent()
        || s.will
            .as_ref()
            .is_some_and(|w| w.policy.can_publish(&w.msg.topic, w.msg.retain))
}

/// What `restore` found: the wills of sessions that ended while thingd was down, and the
/// store writes that clean up after them, to submit once the wills are published (their own
/// writes first: a crash in between publishes a will again, rather than never). Nothing else
/// writes while thingd starts; on a running broker a session's row is written under its lock
/// instead, so that writes for one client id keep the order of its changes.
pub(crate) struct Restored {
    pub(crate) wills: Vec<Will>,
    pub(crate) cleanup: Vec<WriteOp>,
}

/// What `attach` hands back to the connection.
pub(crate) struct Attached {
    pub(crate) cell: Arc<SessionCell>,
    pub(crate) session_present: bool,
    pub(crate) redelivery: Vec<bytes::Bytes>,
    /// Wills of a replaced connection or an ended session, to publish now.
    pub(crate) wills: Vec<Will>,
    /// Store writes to make before CONNACK.
    pub(crate) store_ops: Vec<WriteOp>,
}

/// Counts a live connection while it exists.
pub(crate) struct LiveGuard(Arc<Shared>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
        self.0.live_changed.notify_waiters();
    }
}

impl Shared {
    pub(crate) fn new(
        config: BrokerConfig,
        store: Store,
        authorizer: Arc<dyn Authorizer>,
    ) -> Shared {
        Shared {
            config,
            store,
            authorizer,
            clock: Clock::new(),
            sessions: Mutex::new(HashMap::new()),
            expiring: Mutex::new(BTreeMap::new()),
            index: Subscriptions::new(),
            retained: Retained::default(),
            next_conn_id: AtomicU64::new(1),
            share_rr: AtomicUsize::new(0),
            will_gen: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            live: AtomicUsize::new(0),
            live_changed: Notify::new(),
            sweeper_started: std::sync::atomic::AtomicBool::new(false),
            events: crate::events::EventQueues::default(),
        }
    }

    pub(crate) fn live_guard(self: &Arc<Self>) -> LiveGuard {
        self.live.fetch_add(1, Ordering::SeqCst);
        LiveGuard(self.clone())
    }

    /// Waits until no connection is being served.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.live_changed.notified();
            if self.live.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn effects(&self) -> Effects {
        self.effects_at(self.clock.now_ms())
    }

    /// Effects for work done at `now_ms` (several messages that arrived together share one
    /// reading of the clock).
    pub(crate) fn effects_at(&self, now_ms: u64) -> Effects {
        Effects::new(now_ms, self.config.max_queued_messages)
    }

    /// Submits the writes gathered in `fx`. The returned receiver yields whether the durable
    /// part committed; `None` when there was none, so nothing to wait for. The durable write
    /// is handed to the store before this returns, so later detached writes stay ordered
    /// after it.
    pub(crate) fn commit(&self, mut fx: Effects) -> Option<oneshot::Receiver<bool>> {
        if !fx.detached.is_empty() {
            self.store.write_detached(std::mem::take(&mut fx.detached));
        }
        if fx.durable.is_empty() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let store = self.store.clone();
        let ops = std::mem::take(&mut fx.durable);
        let mut fut = Box::pin(async move {
            let ok = match store.write(ops).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "store write failed");
                    false
                }
            };
            let _ = tx.send(ok);
        });
        // Poll once so the ops reach the writer now; finish on a task.
        let mut cx = Context::from_waker(Waker::noop());
        if fut.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(fut);
        }
        Some(rx)
    }

    /// Publishes accepted application messages, all to one topic from one publisher, in
    /// order: stores each that is retained, delivers them to every matching subscription, and
    /// submits each one's writes. `committed(i, rx)` is called for each message in order; `rx`
    /// yields whether what had to be durable (a retained QoS ≥ 1 message, copies for
    /// persistent sessions) committed, `None` when nothing was. Returns the receivers the
    /// messages left with a nearly full outbound queue. Shared by client PUBLISHes (those
    /// read together) and in-process publishes. `routes`: see `route`.
    pub(crate) fn publish<M: Borrow<Arc<AppMsg>>>(
        &self,
        msgs: &[M],
        routes: &mut Option<Box<Routes>>,
        mut committed: impl FnMut(usize, Option<oneshot::Receiver<bool>>),
    ) -> Vec<crate::pace::SlowReceiver> {
        // Most reads carry one PUBLISH: its effects stay on the stack. The messages of one
        // call arrived together and share one reading of the clock.
        let now_ms = self.clock.now_ms();
        let mut fxs: SmallVec<[Effects; 1]> = msgs
            .iter()
            .map(|msg| {
                let msg = msg.borrow();
                metrics::message_in(msg.qos);
                let mut fx = self.effects_at(now_ms);
                if msg.retain {
                    let op = self.retained.set(msg);
                    if msg.qos == QoS::AtMostOnce {
                        fx.detached.push(op);
                    } else {
                        fx.durable.push(op);
                    }
                }
                fx
            })
            .collect();
        self.route(msgs, &mut fxs, routes);
        let mut slow = Vec::new();
        for (i, mut fx) in fxs.into_iter().enumerate() {
            slow.append(&mut fx.slow);
            committed(i, self.commit(fx));
        }
        slow
    }

    /// Delivers `msgs` (one topic, one publisher; each with its effects in `fxs`) to every
    /// matching subscription. `routes` are the receivers worked out for an earlier message of
    /// the caller's, used again when they still hold.
    pub(crate) fn route<M: Borrow<Arc<AppMsg>>>(
        &self,
        msgs: &[M],
        fxs: &mut [Effects],
        routes: &mut Option<Box<Routes>>,
    ) {
        let Some(first) = msgs.first().map(Borrow::borrow) else {
            return;
        };
        debug_assert!(
            msgs.iter()
                .map(Borrow::borrow)
                .all(|m: &Arc<AppMsg>| m.topic == first.topic && m.origin == first.origin)
        );
        let origin = first.origin.as_ref();
        let routes = match routes {
            Some(r) if r.still_for(&self.index, &first.topic, origin) => r,
            _ => routes.insert(Box::new(Routes::find(&self.index, &first.topic, origin))),
        };
        // One receiver: its encoding is not kept with the message for others.
        let share = routes.receivers() > 1;
        for fx in fxs.iter_mut() {
            fx.share_frames = share;
        }
        // Receiver by receiver: each session is locked once for all the messages, and is
        // offered them in the order they were published.
        for t in &routes.direct {
            let mut s = t.cell.lock();
            for (msg, fx) in msgs.iter().zip(fxs.iter_mut()) {
                let msg: &Arc<AppMsg> = msg.borrow();
                let d = Delivery {
                    msg: msg.clone(),
                    qos: msg.qos.min(t.qos),
                    retain: msg.retain && t.rap,
                    sub_ids: t.ids.clone(),
                    seq: None,
                    dup: false,
                };
                s.offer(d, fx);
            }
        }
        // Each message takes the next turn in every share group: one counter per message, not
        // per group, or with two groups every other turn would fall to the same member.
        for (msg, fx) in msgs.iter().zip(fxs.iter_mut()) {
            if routes.groups.is_empty() {
                break;
            }
            let turn = self.share_rr.fetch_add(1, Ordering::Relaxed);
            for members in &routes.groups {
                self.deliver_shared(msg.borrow(), members, turn, fx);
            }
        }
        for fx in fxs {
            fx.share_frames = true;
        }
    }

    /// One member of a share group gets the message: the online one at `start` (the message's
    /// turn, round robin) or the next online after it, or, with nobody online, a member with a persistent
    /// session queues it (QoS ≥ 1).
    fn deliver_shared(
        &self,
        msg: &Arc<AppMsg>,
        members: &[Member],
        start: usize,
        fx: &mut Effects,
    ) {
        let n = members.len();
        if n == 0 {
            return;
        }
        let delivery = |opts: &SubscriptionOptions, id: &Option<u32>| Delivery {
            msg: msg.clone(),
            qos: msg.qos.min(opts.qos),
            retain: msg.retain && opts.retain_as_published,
            sub_ids: id.iter().copied().collect(),
            seq: None,
            dup: false,
        };
        for i in 0..n {
            let (cell, opts, id) = &members[(start + i) % n];
            let mut s = cell.lock();
            let online = s
                .conn
                .as_ref()
                .is_some_and(|l| l.policy.can_receive(&msg.topic));
            if online && !s.ended {
                s.offer(delivery(opts, id), fx);
                return;
            }
        }
        if msg.qos == QoS::AtMostOnce {
            return;
        }
        for i in 0..n {
            let (cell, opts, id) = &members[(start + i) % n];
            let mut s = cell.lock();
            if s.persistent() && !s.ended && opts.qos != QoS::AtMostOnce {
                s.offer(delivery(opts, id), fx);
                return;
            }
        }
    }

    /// Attaches a new connection to the session of `client_id`, taking over or ending any
    /// existing one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attach(
        &self,
        client_id: &Arc<str>,
        version: ProtocolVersion,
        clean_start: bool,
        expiry: u32,
        link: Link,
        will: Option<Box<Will>>,
    ) -> Attached {
        let mut out = Attached {
            cell: Arc::new(Mutex::new(Session::new(client_id.clone(), version, expiry))),
            session_present: false,
            redelivery: Vec::new(),
            wills: Vec::new(),
            store_ops: Vec::new(),
        };
        let mut map = self.sessions.lock();
        if let Some(cell) = map.get(client_id).cloned() {
            let mut s = cell.lock();
            if let Some(old) = s.conn.take() {
                old.tx
                    .control(Control::Close(thingd_mqtt::ReasonCode::SessionTakenOver));
                tracing::info!(client_id = %client_id, "session taken over by a new connection");
            }
            let old_will = s.will.take();
            let pending = s.pending_will.take();
            // An offline session past its expiry that the sweep has not reached yet.
            let now = self.clock.now_ms();
            let expired = s.expiry_due_ms().is_some_and(|due| due <= now);
            // Sessions do not resume across protocol versions (AWS rule).
            if !clean_start && !expired && s.version == version {
                // Resume. MQTT 5: a Will with a delay is not sent when the session resumes.
                out.wills
                    .extend(old_will.filter(|w| w.delay == 0).map(|w| *w));
                drop(pending);
                s.expiry = expiry;
                s.disconnected_at_ms = None;
                self.unfile_expiry(&cell, &mut s);
                s.conn = Some(link);
                s.will = will;
                let mut fx = self.effects();
                out.redelivery = s.redelivery(&mut fx);
                s.pump(&mut fx);
                if needs_row(&s) {
                    s.stored = true;
                    out.store_ops
                        .push(WriteOp::PutSession(session_record(&s, None)));
                } else if s.stored {
                    s.stored = false;
                    out.store_ops.push(WriteOp::DeleteSession {
                        client_id: client_id.to_string(),
                    });
                }
                out.store_ops.append(&mut fx.detached);
                out.store_ops.append(&mut fx.durable);
                out.session_present = true;
                drop(s);
                out.cell = cell;
                return out;
            }
            out.wills.extend(old_will.map(|w| *w));
            out.wills.extend(pending.map(|p| *p.will));
            if s.stored {
                out.store_ops.push(WriteOp::DeleteSession {
                    client_id: client_id.to_string(),
                });
            }
            self.end_locked(&mut map, &cell, &mut s);
        }
        {
            let mut s = out.cell.lock();
            s.conn = Some(link);
            s.will = will;
            if needs_row(&s) {
                s.stored = true;
                out.store_ops
                    .push(WriteOp::PutSession(session_record(&s, None)));
            }
        }
        map.insert(client_id.clone(), out.cell.clone());
        metrics::sessions(map.len());
        out
    }

    /// Ends a session: removes it from the map and its subscriptions from the index.
    /// The caller holds the map lock and the session's lock.
    fn end_locked(
        &self,
        map: &mut HashMap<Arc<str>, Arc<SessionCell>>,
        cell: &Arc<SessionCell>,
        s: &mut Session,
    ) {
        if map.get(&s.client_id).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            map.remove(&s.client_id);
        }
        {
            let mut index = self.index.write();
            for filter in s.subs.keys() {
                let (group, inner) = split_filter(filter);
                let key = SubKey {
                    client: s.client_id.clone(),
                    group,
                };
                index.remove(inner, &key);
            }
        }
        self.unfile_expiry(cell, s);
        s.end();
        metrics::sessions(map.len());
    }

    /// Files an offline session under the time its expiry ends it (unless it never does).
    fn file_expiry(&self, cell: &Arc<SessionCell>, s: &mut Session) {
        self.unfile_expiry(cell, s);
        let Some(due) = s.sweep_due_ms() else {
            return;
        };
        self.expiring
            .lock()
            .insert((due, Arc::as_ptr(cell) as usize), cell.clone());
        s.expires_at_ms = Some(due);
    }

    /// Takes a session out of the expiry schedule (it came back online, or ended).
    fn unfile_expiry(&self, cell: &Arc<SessionCell>, s: &mut Session) {
        if let Some(due) = s.expires_at_ms.take() {
            self.expiring
                .lock()
                .remove(&(due, Arc::as_ptr(cell) as usize));
        }
    }

    /// A connection has closed. Ends its session or keeps it offline; returns the wills to
    /// publish now. Nothing happens when `conn_id` is no longer the session's connection.
    pub(crate) fn detach(
        self: &Arc<Self>,
        cell: &Arc<SessionCell>,
        conn_id: u64,
        with_will: bool,
    ) -> Vec<Will> {
        let mut wills = Vec::new();
        let mut map = self.sessions.lock();
        let mut s = cell.lock();
        if !s.is_current(conn_id) {
            return wills;
        }
        s.conn = None;
        let will = s.will.take().filter(|_| with_will);
        let now = self.clock.now_ms();
        if !s.persistent() {
            wills.extend(will.map(|w| *w));
            // A clean session's row (kept for its will) goes with it.
            if s.stored {
                self.store.write_detached(vec![WriteOp::DeleteSession {
                    client_id: s.client_id.to_string(),
                }]);
            }
            self.end_locked(&mut map, cell, &mut s);
            return wills;
        }
        s.disconnected_at_ms = Some(now);
        if let Some(mut w) = will {
            w.msg.expires_at =
                crate::message::expiry_from(w.expiry_interval, self.config.max_message_expiry, now);
            if w.delay == 0 {
                wills.push(*w);
            } else {
                let (gen_id, after) = self.hold_will(&mut s, w, now);
                crate::will::schedule(self, s.client_id.clone(), cell.clone(), gen_id, after);
            }
        }
        self.file_expiry(cell, &mut s);
        s.stored = true;
        // With the pending will, so that a restart still publishes it when it falls due.
        self.store
            .write_detached(vec![WriteOp::PutSession(session_record(
                &s,
                Some((now / 1000) as i64),
            ))]);
        wills
    }

    /// Holds `will`, whose connection closed at `closed_ms`, on `s` until its delay (at most
    /// the session's expiry) ends; returns its generation and that delay in seconds.
    fn hold_will(&self, s: &mut Session, will: Box<Will>, closed_ms: u64) -> (u64, u32) {
        let gen_id = self.will_gen.fetch_add(1, Ordering::Relaxed);
        let after = will.delay.min(s.expiry);
        s.pending_will = Some(PendingWill {
            gen_id,
            due_ms: closed_ms + u64::from(after) * 1000,
            will,
        });
        (gen_id, after)
    }

    /// Takes the pending will of an offline session whose delay has ended (`gen_id`: only
    /// that one, if given), and stores the session without it so that a restart does not
    /// publish it again.
    pub(crate) fn take_due_will(&self, s: &mut Session, gen_id: Option<u64>) -> Option<Will> {
        let ours = s
            .pending_will
            .as_ref()
            .is_some_and(|p| gen_id.is_none_or(|g| g == p.gen_id));
        if !ours {
            return None;
        }
        let pending = s.pending_will.take()?;
        if s.stored {
            let at = s.disconnected_at_ms.map(|ms| (ms / 1000) as i64);
            self.store
                .write_detached(vec![WriteOp::PutSession(session_record(s, at))]);
        }
        Some(*pending.will)
    }

    /// Ends offline sessions whose expiry has passed; returns their pending wills.
    pub(crate) fn sweep(&self) -> Vec<Will> {
        let now = self.clock.now_ms();
        let mut wills = Vec::new();
        let due: Vec<Arc<SessionCell>> = {
            let mut expiring = self.expiring.lock();
            let later = expiring.split_off(&(now + 1, 0));
            std::mem::replace(&mut *expiring, later)
                .into_values()
                .collect()
        };
        if due.is_empty() {
            return wills;
        }
        let mut map = self.sessions.lock();
        for cell in due {
            let mut s = cell.lock();
            // Filed under a time that has passed; checked again, as the session may have
            // come back meanwhile.
            s.expires_at_ms = None;
            if s.ended {
                continue;
            }
            if s.pending_will.as_ref().is_some_and(|p| p.due_ms <= now) {
                // Normally published by its own timer; this one was restored after a restart
                // (or the timer could not be set).
                wills.extend(self.take_due_will(&mut s, None));
            }
            let Some(due) = s.expiry_due_ms() else {
                continue;
            };
            if due > now {
                self.file_expiry(&cell, &mut s);
                continue;
            }
            tracing::debug!(client_id = %s.client_id, "session expired");
            wills.extend(s.pending_will.take().map(|p| *p.will));
            if s.stored {
                self.store.write_detached(vec![WriteOp::DeleteSession {
                    client_id: s.client_id.to_string(),
                }]);
            }
            self.end_locked(&mut map, &cell, &mut s);
        }
        wills
    }

    /// Restores persistent sessions (with their pending wills) and retained messages from the
    /// store; returns the wills of sessions that ended while thingd was down (a clean
    /// session's row exists only for its will, and ended with its connection), with the
    /// writes that clean up after them.
    pub(crate) fn restore(&self) -> Result<Restored, thingd_store::StoreError> {
        let now = self.clock.now_ms();
        let mut detached = Vec::new();
        let mut ended_wills = Vec::new();
        for rec in self.store.sessions()? {
            let version = match rec.protocol_level {
                4 => ProtocolVersion::V311,
                5 => ProtocolVersion::V5,
                _ => continue,
            };
            let Some(state) = persist::decode_state(&rec.state) else {
                tracing::warn!(client_id = %rec.client_id, "corrupt session record, dropping it");
                detached.push(WriteOp::DeleteSession {
                    client_id: rec.client_id,
                });
                continue;
            };
            // A session still marked connected was cut off by a crash: it ended now.
            let at = rec
                .disconnected_at
                .map(|s| (s.max(0) as u64) * 1000)
                .unwrap_or(now);
            let client_id: Arc<str> = Arc::from(rec.client_id.as_str());
            let will = state.will.map(|w| {
                let mut will = Box::new(Will {
                    msg: AppMsg {
                        origin: Some(client_id.clone()),
                        ..w.msg
                    },
                    expiry_interval: w.expiry_interval,
                    delay: w.delay,
                    // Stored only if its connection's policy allowed it.
                    policy: Arc::new(crate::AllowAll),
                });
                if rec.disconnected_at.is_none() {
                    // The connection was cut off by the crash: its will counts from now, as
                    // for any connection lost without DISCONNECT.
                    will.msg.expires_at = crate::message::expiry_from(
                        will.expiry_interval,
                        self.config.max_message_expiry,
                        at,
                    );
                }
                will
            });
            if rec.expiry_interval != u32::MAX && at + u64::from(rec.expiry_interval) * 1000 <= now
            {
                // The session ended while thingd was down, and with it its will's delay.
                ended_wills.extend(will.map(|w| *w));
                detached.push(WriteOp::DeleteSession {
                    client_id: rec.client_id,
                });
                continue;
            }
            let mut s = Session::new(client_id.clone(), version, rec.expiry_interval);
            s.stored = true;
            s.disconnected_at_ms = Some(at);
            s.inbound_qos2 = state.inbound_qos2.into_iter().collect();
            // Messages the device may have been sent before the restart go out with DUP=1:
            // for a session that was offline, those up to the last one it was sent; for one
            // the crash cut off (or one stored before that was kept), all of them — which
            // had gone out is not known.
            let maybe_sent = match (rec.disconnected_at, state.sent_through) {
                (Some(_), Some(through)) => through,
                _ => u64::MAX,
            };
            for QueuedMessage {
                seq,
                blob,
                released,
            } in self.store.messages(&rec.client_id)?
            {
                s.next_seq = s.next_seq.max(seq + 1);
                match persist::decode_delivery(&blob) {
                    // Answered with PUBREC before the restart: only the PUBREL is resent,
                    // under the id the message had (see `Session::alloc_pid`).
                    Some(mut d) if released && d.qos == QoS::ExactlyOnce => {
                        d.seq = Some(seq);
                        s.sent_through = s.sent_through.max(seq);
                        s.inflight.push_back(Inflight {
                            pid: stored_pid(seq),
                            issued: 0,
                            delivery: d,
                            released: true,
                        });
                    }
                    Some(mut d) if !d.msg.is_expired(now) => {
                        d.seq = Some(seq);
                        d.dup = seq <= maybe_sent;
                        if d.dup {
                            s.sent_through = s.sent_through.max(seq);
                        }
                        s.queue.push_back(d);
                        metrics::queued(1);
                    }
                    _ => detached.push(WriteOp::DeleteMessage {
                        client_id: rec.client_id.clone(),
                        seq,
                    }),
                }
            }
            if let Some(will) = will {
                // Published by the expiry sweep when it falls due.
                self.hold_will(&mut s, will, at);
            }
            if rec.disconnected_at.is_none() {
                detached.push(WriteOp::PutSession(session_record(
                    &s,
                    Some((at / 1000) as i64),
                )));
            }
            let cell = Arc::new(Mutex::new(s));
            {
                let mut s = cell.lock();
                let mut index = self.index.write();
                for (filter, sub) in state.subs {
                    let (group, inner) = split_filter(&filter);
                    index.insert(
                        inner,
                        SubKey {
                            client: client_id.clone(),
                            group,
                        },
                        SubVal {
                            cell: cell.clone(),
                            opts: sub.opts,
                            id: sub.id,
                        },
                    );
                    s.subs.insert(filter, sub);
                }
                self.file_expiry(&cell, &mut s);
            }
            self.sessions.lock().insert(client_id, cell);
        }
        for (topic, blob) in self.store.retained()? {
            match persist::decode_delivery(&blob) {
                Some(d) if !d.msg.is_expired(now) => self.retained.restore(d.msg),
                _ => detached.push(WriteOp::DeleteRetained { topic }),
            }
        }
        metrics::sessions(self.sessions.lock().len());
        Ok(Restored {
            wills: ended_wills,
            cleanup: detached,
        })
    }
}
