//! The per-connection task: a read buffer and a decode loop, the bounded outbound queue of
//! encoded frames filled by the fan-out, batched writes (everything queued per wakeup, then
//! one flush), keep-alive, and the handlers of every packet after CONNECT.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use smallvec::SmallVec;
use thingd_mqtt::{
    ByteStr, Disconnect, Packet, Properties, ProtocolVersion, PubResp, PubRespKind, Publish, QoS,
    ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use thingd_store::WriteOp;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::alias::{AliasError, InAliases};
use crate::broker::{Shared, SubKey, SubVal, session_record, split_filter};
use crate::connect::{Opening, handshake, packet_name};
use crate::message::{AppMsg, Delivery, expiry_from, forwardable};
use crate::outbound::Received;
use crate::pace::Pacing;
use crate::routes::Routes;
use crate::session::{Control, Effects, LastDecision, SessionCell, SubRecord, pubrel};
use crate::{ConnectionInfo, ConnectionPolicy, metrics, reserved};

/// Most bytes gathered from the outbound queue before one write.
const WRITE_BATCH: usize = 256 * 1024;

/// An acknowledgement waiting, in order, for what it acknowledges to be durable: a PUBACK or
/// PUBREC for its message, a SUBACK or UNSUBACK for the session's subscriptions, a PUBREL or
/// PUBCOMP for the stage of a persistent session's QoS 2 exchange.
pub(crate) struct PendingAck {
    packet: Packet,
    wait: Option<oneshot::Receiver<bool>>,
    ok: bool,
}

impl PendingAck {
    /// An answer to one of the client's PUBLISHes (PUBACK, PUBREC, PUBCOMP): until it is
    /// sent, that PUBLISH counts against the client's Receive Maximum. A PUBREL belongs to a
    /// message thingd sent.
    fn of_publish(&self) -> bool {
        matches!(&self.packet, Packet::PubResp(r) if r.kind != PubRespKind::PubRel)
    }
}

/// PUBLISHes to one topic read together, delivered together: each receiver is locked once
/// for all of them (`Shared::publish`). Lives for one read.
#[derive(Default)]
struct Batch {
    msgs: SmallVec<[Batched; 4]>,
    /// The receivers of the last topic published to, used again while they hold.
    routes: Option<Box<Routes>>,
}

struct Batched {
    msg: Arc<AppMsg>,
    /// Where the message's acknowledgement waits in `Conn::acks`, if it has one.
    ack_at: Option<usize>,
}

impl Borrow<Arc<AppMsg>> for Batched {
    fn borrow(&self) -> &Arc<AppMsg> {
        &self.msg
    }
}

/// Most PUBLISHes delivered together. Publishers are paced once a receiver's outbound queue
/// is three quarters full, so a batch must also fit in the quarter left (of `outbound_queue`
/// frames); past 64 there is nothing more to gain.
fn batch_max(outbound_queue: usize) -> usize {
    (outbound_queue / 4).clamp(1, 64)
}

/// How a connection ends.
#[derive(Debug)]
enum End {
    /// DISCONNECT from the client: no will.
    Normal,
    /// DISCONNECT 0x04 from the client: the will is published.
    WithWill,
    /// Socket loss or EOF without DISCONNECT: the will is published.
    Lost,
    /// A protocol violation or limit: v5 DISCONNECT with the reason, then close; will published.
    Violation(ReasonCode, &'static str),
    /// Closed by the server (administrative action, shutdown); will published.
    Server(ReasonCode),
    /// Another connection took the session; it already dealt with the will.
    TakenOver,
}

/// The lifecycle-event cause of how a connection ended.
fn disconnect_cause(end: &End) -> crate::DisconnectCause {
    use crate::DisconnectCause as C;
    match end {
        End::Normal | End::WithWill => C::ClientInitiated,
        End::Lost => C::ConnectionLost,
        End::TakenOver => C::DuplicateClientId,
        End::Violation(ReasonCode::KeepAliveTimeout, _) => C::KeepAliveTimeout,
        End::Violation(ReasonCode::NotAuthorized, _) => C::AuthError,
        End::Violation(..) => C::ClientError,
        End::Server(_) => C::ServerInitiated,
    }
}

/// The state of one accepted connection.
pub(crate) struct Conn {
    pub(crate) shared: Arc<Shared>,
    pub(crate) cell: Arc<SessionCell>,
    pub(crate) client_id: Arc<str>,
    /// The certificate id the connection authenticated with, for events.
    pub(crate) principal: Option<Arc<str>>,
    /// In-process clients raise no events.
    pub(crate) internal: bool,
    pub(crate) conn_id: u64,
    pub(crate) version: ProtocolVersion,
    pub(crate) policy: Arc<dyn ConnectionPolicy>,
    pub(crate) publish_memo: PublishMemo,
    /// None: no keep-alive (internal clients).
    pub(crate) keep_alive: Option<u16>,
    pub(crate) problem_info: bool,
    pub(crate) in_aliases: InAliases,
    pub(crate) acks: VecDeque<PendingAck>,
    pub(crate) wbuf: BytesMut,
    /// Inbound publish rate: the start of the current one-second window (ms) and the count in it.
    pub(crate) rate_window: (u64, u32),
    /// Receivers this connection's publishes filled up: it reads no more until they drain.
    pub(crate) pacing: Pacing,
}

/// A connection's last publish decision and the policy epoch it was made at
/// (`ConnectionPolicy::decision_epoch`). A device mostly publishes to one topic: while the
/// epoch stays, the policy is not asked again for it.
pub(crate) struct PublishMemo {
    epoch: Option<Arc<AtomicU64>>,
    /// Keyed by the epoch and the RETAIN flag.
    last: LastDecision<(u64, bool)>,
}

impl PublishMemo {
    pub(crate) fn new(policy: &dyn ConnectionPolicy) -> PublishMemo {
        PublishMemo {
            epoch: policy.decision_epoch(),
            last: LastDecision::default(),
        }
    }

    /// `policy.can_publish(topic, retain)`, remembered for the next PUBLISH.
    fn can_publish(&mut self, policy: &dyn ConnectionPolicy, topic: &str, retain: bool) -> bool {
        let Some(epoch) = &self.epoch else {
            return policy.can_publish(topic, retain);
        };
        // Read before asking: a decision made while the epoch moves is kept under the older
        // value, and asked for again next time.
        let key = (epoch.load(Ordering::SeqCst), retain);
        if let Some(allowed) = self.last.recall(key, topic.as_bytes()) {
            return allowed;
        }
        let allowed = policy.can_publish(topic, retain);
        self.last.remember(key, topic.as_bytes(), allowed);
        allowed
    }
}

enum Event {
    Read(std::io::Result<usize>),
    Queue(Received),
    AckReady(bool),
    Resumed,
    KeepAlive,
}

/// Serves one connection from CONNECT to close.
///
/// Not an `async fn`: one would keep its arguments twice in the future (as arguments and as
/// locals), and the TLS stream alone is over a kilobyte per idle connection.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
pub(crate) fn serve<S>(
    shared: Arc<Shared>,
    mut stream: S,
    info: ConnectionInfo,
    internal: Option<Arc<dyn ConnectionPolicy>>,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let opening = Box::new(Opening { info, internal });
    async move {
        if shared.shutdown.is_cancelled() {
            return;
        }
        crate::will::start_sweeper(&shared);
        let _live = shared.live_guard();
        let mut rbuf = BytesMut::with_capacity(4096);
        // The CONNECT exchange and the close are boxed: their futures are large and short-lived,
        // and inline they would be part of every idle connection's task.
        // Each box is made in a statement of its own: a temporary of the awaiting statement
        // would keep its space in this future even after being moved into the box.
        let connecting = Box::pin(handshake(&shared, &mut stream, &mut rbuf, opening));
        let Some(crate::connect::Accepted { mut conn, mut rx }) = connecting.await else {
            return;
        };
        if rbuf.is_empty() {
            rbuf = BytesMut::with_capacity(READ_BUF_IDLE);
        }
        // One keep-alive timer for the connection's life, not one per event: it is set for
        // the grace period after the last packet heard when it fires (arming and disarming a
        // timer on every read was a tenth of the broker's own CPU at a fixed message rate).
        let mut last_heard = Instant::now();
        let grace = conn.keep_alive_grace().unwrap_or(Duration::ZERO);
        let keep_alive = tokio::time::sleep_until(last_heard + grace);
        let mut keep_alive = std::pin::pin!(keep_alive);

        let end = loop {
            if let Err(e) = conn.flush_acks() {
                break e;
            }
            if !conn.wbuf.is_empty() {
                let timeout = write_timeout(conn.keep_alive_grace());
                let written = write_out(&mut stream, &conn.wbuf, timeout).await;
                let n = conn.wbuf.len();
                conn.wbuf.clear();
                if !written {
                    break End::Lost;
                }
                metrics::bytes_out(n);
            }
            let paused = conn.pacing.paused();
            let has_keep_alive = conn.keep_alive_grace().is_some();
            let can_read = conn.acks.len() < conn.read_limit() && !paused;
            let pacing = &mut conn.pacing;
            let spare = rbuf.capacity() - rbuf.len();
            let acks = &mut conn.acks;
            let ack_wait = async {
                match acks.front_mut().and_then(|a| a.wait.as_mut()) {
                    Some(rx) => rx.await.unwrap_or(false),
                    None => std::future::pending().await,
                }
            };
            // Unbiased: a client that keeps sending must not starve its own deliveries.
            let ev = tokio::select! {
                // 3.1.1 has no Receive Maximum: stop reading while too many acknowledgements
                // wait for the store (AWS: no new publishes until PUBACKs are sent).
                r = stream.read_buf(&mut rbuf), if can_read => Event::Read(r),
                ok = ack_wait => Event::AckReady(ok),
                // Boxed: a connection is rarely paced, and inline this wait would add a
                // quarter KiB to every idle connection's task.
                () = async { Box::pin(pacing.resume()).await }, if paused => Event::Resumed,
                q = rx.recv() => Event::Queue(q),
                () = &mut keep_alive, if has_keep_alive => Event::KeepAlive,
            };
            match ev {
                Event::Queue(Received::Control(Control::Close(ReasonCode::SessionTakenOver)))
                | Event::Queue(Received::Closed) => {
                    break End::TakenOver;
                }
                Event::Queue(Received::Control(Control::Close(rc))) => break End::Server(rc),
                Event::Read(Ok(0)) | Event::Read(Err(_)) => break End::Lost,
                Event::Read(Ok(n)) => {
                    metrics::bytes_in(n);
                    last_heard = Instant::now();
                    if let Err(e) = conn.handle_buffered(&mut rbuf) {
                        break e;
                    }
                    fit_read_buffer(&mut rbuf, n, spare);
                }
                Event::AckReady(ok) => {
                    if let Some(front) = conn.acks.front_mut() {
                        front.wait = None;
                        front.ok = ok;
                    }
                }
                Event::Queue(Received::Frame(f)) => {
                    f.copy_to(&mut conn.wbuf);
                    while conn.wbuf.len() < WRITE_BATCH {
                        match rx.try_recv() {
                            Some(f) => f.copy_to(&mut conn.wbuf),
                            None => break,
                        }
                    }
                    rx.drained();
                    conn.pump();
                }
                Event::Resumed => {
                    if let Err(e) = conn.handle_buffered(&mut rbuf) {
                        break e;
                    }
                }
                Event::KeepAlive => {
                    let due = last_heard + conn.keep_alive_grace().unwrap_or(Duration::ZERO);
                    if due <= Instant::now() {
                        break End::Violation(ReasonCode::KeepAliveTimeout, "keep alive timeout");
                    }
                    keep_alive.as_mut().reset(due);
                }
            }
        };
        let finishing = Box::pin(conn.finish(&mut stream, end));
        finishing.await;
    }
}

/// Writes all of `bytes` to `stream` and flushes; false when that failed or took longer than
/// `timeout`. Most writes finish at once; only one that has to wait gets a timer, boxed
/// (inline, the timer would be part of every idle connection's task). A function of its own
/// so that its state is one value awaited at one point of the connection's future, sharing
/// space with the other waits there.
async fn write_out<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8], timeout: Duration) -> bool {
    let mut write = std::pin::pin!(async {
        stream.write_all(bytes).await?;
        stream.flush().await
    });
    match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        Poll::Ready(done) => done.is_ok(),
        Poll::Pending => {
            let waiting = Box::pin(tokio::time::timeout(timeout, write));
            matches!(waiting.await, Ok(Ok(())))
        }
    }
}

/// How long a write may wait for the socket before the client counts as gone: one that
/// long means the client stopped reading.
fn write_timeout(keep_alive: Option<Duration>) -> Duration {
    keep_alive
        .unwrap_or(Duration::from_secs(60))
        .max(Duration::from_secs(10))
}

/// Read buffer of a connection that reads little: what it keeps while waiting.
const READ_BUF_IDLE: usize = 256;

/// Read buffer of a connection whose reads fill the buffer.
const READ_BUF_BUSY: usize = 8 * 1024;

/// Sizes the read buffer for the next read, after a read of `read` bytes into `spare` bytes
/// of room, once everything complete in it has been decoded. A read that filled the room
/// calls for more (a big buffer for a busy connection); a small read that left nothing
/// undecoded puts the connection back on a small buffer, which also lets go of the old
/// allocation that delivered payloads may still share. Most connections are idle devices,
/// so this is most of what a connection costs in memory.
fn fit_read_buffer(rbuf: &mut BytesMut, read: usize, spare: usize) {
    if read >= spare {
        rbuf.reserve(if read >= READ_BUF_IDLE {
            READ_BUF_BUSY
        } else {
            READ_BUF_IDLE
        });
    } else if rbuf.is_empty() && read < READ_BUF_IDLE && rbuf.capacity() > READ_BUF_IDLE {
        *rbuf = BytesMut::with_capacity(READ_BUF_IDLE);
    }
}

impl Conn {
    /// How long the connection may stay silent: one and a half times its Keep Alive; `None`
    /// when it has none (Keep Alive 0, internal clients).
    fn keep_alive_grace(&self) -> Option<Duration> {
        self.keep_alive
            .filter(|k| *k > 0)
            .map(|k| Duration::from_millis(u64::from(k) * 1500))
    }

    /// Most acknowledgements waiting before the connection stops reading. MQTT 3.1.1 has no
    /// Receive Maximum: a 3.1.1 client is not read while this many wait for the store (AWS:
    /// no new publishes until PUBACKs are sent). An MQTT 5 client is read on, and one that
    /// exceeds the Receive Maximum thingd announced is disconnected (`on_publish`).
    fn read_limit(&self) -> usize {
        match self.version {
            ProtocolVersion::V311 => usize::from(self.shared.config.receive_maximum.max(1)),
            ProtocolVersion::V5 => usize::MAX,
        }
    }

    /// Handles every complete packet in `rbuf`, stopping early when a publish found a
    /// receiver too slow (the rest waits in the buffer until the receivers drain).
    ///
    /// PUBACKs and PUBCOMPs in their 4-byte form (nearly all of them) are read without
    /// building a `Packet`, and those read in a row are settled together: each frees its
    /// message, and the queue is pumped once after the last (before any other packet is
    /// handled), with one set of effects. A receiver of a fan-out acknowledges dozens of
    /// messages in one read; one at a time, each cost a clock read, a metrics update every
    /// thread shares and locks on the outbound queue. Longer acknowledgements (with a reason
    /// or properties) go through `on_pubresp` one by one.
    fn handle_buffered(&mut self, rbuf: &mut BytesMut) -> Result<(), End> {
        let max_packet = self.shared.config.max_packet_size;
        let mut settled: Option<Effects> = None;
        let mut batch = Batch::default();
        let outcome = loop {
            if self.pacing.paused() {
                break Ok(());
            }
            if let Some((kind, packet_id)) = thingd_mqtt::decode_short_ack(rbuf) {
                self.publish_batch(&mut batch);
                let fx = settled.get_or_insert_with(|| self.shared.effects());
                if let Err(end) = self.settle(packet_id, kind, fx) {
                    break Err(end);
                }
                continue;
            }
            match thingd_mqtt::decode(rbuf, self.version, max_packet) {
                Ok(Some(p)) => {
                    if let Some(fx) = settled.take() {
                        self.pump_with(fx);
                    }
                    if let Err(end) = self.handle(p, &mut batch) {
                        break Err(end);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => {
                    break Err(End::Violation(
                        e.reason_code(),
                        "malformed or oversized packet",
                    ));
                }
            }
        };
        self.publish_batch(&mut batch);
        if let Some(fx) = settled {
            self.pump_with(fx);
        }
        outcome
    }

    /// Delivers the PUBLISHes gathered in `batch`, and gives each acknowledgement the wait
    /// for what its message had to store.
    fn publish_batch(&mut self, batch: &mut Batch) {
        if batch.msgs.is_empty() {
            return;
        }
        let acks = &mut self.acks;
        let msgs = &batch.msgs;
        let slow = self.shared.publish(msgs, &mut batch.routes, |i, wait| {
            if let (Some(at), Some(wait)) = (msgs[i].ack_at, wait)
                && let Some(ack) = acks.get_mut(at)
            {
                ack.wait = Some(wait);
            }
        });
        self.pacing.add(slow);
        batch.msgs.clear();
    }

    fn v5(&self) -> bool {
        self.version == ProtocolVersion::V5
    }

    fn write(&mut self, p: &Packet) {
        if let Err(e) = thingd_mqtt::encode(p, self.version, &mut self.wbuf) {
            tracing::warn!(error = %e, "cannot encode packet");
        }
    }

    fn reason_string(&self, text: &'static str) -> Option<ByteStr> {
        (self.v5() && self.problem_info).then(|| ByteStr::from(text))
    }

    /// Moves queued messages to the outbound queue when there is room.
    fn pump(&mut self) {
        self.pump_with(self.shared.effects());
    }

    /// `pump` adding to `fx`, which is committed in any case.
    fn pump_with(&mut self, mut fx: Effects) {
        {
            let mut s = self.cell.lock();
            if s.is_current(self.conn_id) && !s.queue.is_empty() {
                s.pump(&mut fx);
            }
        }
        drop(self.shared.commit(fx));
    }

    /// Writes the acknowledgements at the front of the queue whose messages are durable.
    fn flush_acks(&mut self) -> Result<(), End> {
        while let Some(front) = self.acks.front_mut() {
            if let Some(rx) = &mut front.wait {
                match rx.try_recv() {
                    Ok(v) => front.ok = v,
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => front.ok = false,
                }
                front.wait = None;
            }
            let Some(a) = self.acks.pop_front() else {
                break;
            };
            let packet = if a.ok {
                a.packet
            } else {
                self.store_failed(a.packet)?
            };
            self.write(&packet);
        }
        Ok(())
    }

    /// The acknowledgement to send when what it acknowledges could not be stored, or the end
    /// of the connection where the protocol version has no way to say so.
    fn store_failed(&self, packet: Packet) -> Result<Packet, End> {
        let failure = ReasonCode::UnspecifiedError;
        let cannot_say = End::Violation(failure, "store write failed");
        Ok(match packet {
            // PUBREL and PUBCOMP have no failure code: the exchange goes on, only its stage
            // surviving a restart is not promised.
            Packet::PubResp(r) if matches!(r.kind, PubRespKind::PubRel | PubRespKind::PubComp) => {
                Packet::PubResp(r)
            }
            Packet::PubResp(mut r) => {
                if !self.v5() {
                    return Err(cannot_say);
                }
                r.reason = failure;
                r.properties.reason_string = self.reason_string("message could not be stored");
                Packet::PubResp(r)
            }
            // 3.1.1 has a failure return code (0x80) too. The subscriptions stay in force on
            // this connection; only their surviving a restart is not promised.
            Packet::SubAck(mut a) => {
                for reason in a.reasons.iter_mut().filter(|r| !r.is_error()) {
                    *reason = failure;
                }
                a.properties.reason_string =
                    self.reason_string("subscriptions could not be stored");
                Packet::SubAck(a)
            }
            Packet::UnsubAck(mut a) => {
                if !self.v5() {
                    return Err(cannot_say);
                }
                for reason in a.reasons.iter_mut().filter(|r| !r.is_error()) {
                    *reason = failure;
                }
                a.properties.reason_string =
                    self.reason_string("subscriptions could not be stored");
                Packet::UnsubAck(a)
            }
            other => other,
        })
    }

    fn push_ack(
        &mut self,
        kind: PubRespKind,
        pid: u16,
        reason: ReasonCode,
        wait: Option<oneshot::Receiver<bool>>,
    ) {
        let mut properties = Properties::default();
        if reason.is_error() {
            properties.reason_string = self.reason_string("not authorized");
        }
        let resp = Packet::PubResp(PubResp {
            kind,
            packet_id: pid,
            reason,
            properties,
        });
        self.push_pending(resp, wait);
    }

    /// Queues an acknowledgement behind those before it, to be sent once `wait` (if any)
    /// says what it acknowledges is durable.
    fn push_pending(&mut self, packet: Packet, wait: Option<oneshot::Receiver<bool>>) {
        self.acks.push_back(PendingAck {
            packet,
            wait,
            ok: true,
        });
    }

    /// One packet; a PUBLISH may wait in `batch`, anything else is handled after the batch is
    /// delivered.
    fn handle(&mut self, p: Packet, batch: &mut Batch) -> Result<(), End> {
        if !matches!(p, Packet::Publish(_)) {
            self.publish_batch(batch);
        }
        match p {
            Packet::Publish(p) => self.on_publish(p, batch),
            Packet::PubResp(r) => self.on_pubresp(r),
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => {
                self.write(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            Packet::Connect(_) => Err(End::Violation(ReasonCode::ProtocolError, "second CONNECT")),
            other => {
                tracing::debug!(client_id = %self.client_id, packet = packet_name(&other), "unexpected packet");
                Err(End::Violation(
                    ReasonCode::ProtocolError,
                    "unexpected packet",
                ))
            }
        }
    }

    /// Counts one inbound publish against `max_publishes_per_second`; true if over it.
    fn over_publish_rate(&mut self) -> bool {
        let limit = self.shared.config.max_publishes_per_second;
        if limit == 0 {
            return false;
        }
        let now = self.shared.clock.now_ms();
        let (start, count) = &mut self.rate_window;
        if now.saturating_sub(*start) >= 1000 {
            *start = now;
            *count = 0;
        }
        *count += 1;
        *count > limit
    }

    fn on_publish(&mut self, p: Publish, batch: &mut Batch) -> Result<(), End> {
        let rate_limited = self.over_publish_rate();
        let cfg = &self.shared.config;
        let topic = if self.v5() {
            match self.in_aliases.resolve(p.topic, p.properties.topic_alias) {
                Ok(t) => t,
                Err(AliasError::Invalid) => {
                    return Err(End::Violation(
                        ReasonCode::TopicAliasInvalid,
                        "topic alias invalid",
                    ));
                }
                Err(AliasError::Unknown) => {
                    return Err(End::Violation(
                        ReasonCode::ProtocolError,
                        "unknown topic alias",
                    ));
                }
            }
        } else {
            p.topic
        };
        cfg.check_publish(&topic, &p.properties, p.payload.len(), p.qos)
            .map_err(|(code, why)| End::Violation(code, why))?;
        let pid = p.packet_id.unwrap_or(0);
        if p.qos != QoS::AtMostOnce && self.v5() {
            // Unacknowledged: those waiting for the store, and those read with this one and
            // not delivered yet (their acknowledgements get their waits then).
            let waiting = self
                .acks
                .iter()
                .filter(|a| a.wait.is_some() && a.of_publish())
                .count()
                + batch.msgs.iter().filter(|b| b.ack_at.is_some()).count();
            let qos2 = self.cell.lock().inbound_qos2.len();
            let duplicate =
                p.qos == QoS::ExactlyOnce && self.cell.lock().inbound_qos2.contains(&pid);
            if !duplicate && waiting + qos2 >= usize::from(cfg.receive_maximum.max(1)) {
                return Err(End::Violation(
                    ReasonCode::ReceiveMaximumExceeded,
                    "receive maximum exceeded",
                ));
            }
        }
        if rate_limited {
            tracing::debug!(client_id = %self.client_id, %topic, "publish rate limit exceeded; dropped");
            metrics::dropped(metrics::DropReason::RateLimited);
            let code = if self.v5() {
                ReasonCode::QuotaExceeded
            } else {
                ReasonCode::Success
            };
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.push_ack(PubRespKind::PubAck, pid, code, None),
                QoS::ExactlyOnce => self.push_ack(PubRespKind::PubRec, pid, code, None),
            }
            return Ok(());
        }
        let allowed = self
            .publish_memo
            .can_publish(self.policy.as_ref(), &topic, p.retain)
            && (!p.retain || reserved::retain_allowed(&topic));
        if !allowed {
            tracing::debug!(client_id = %self.client_id, %topic, "publish not authorized");
            return match (self.v5(), p.qos) {
                (false, _) | (true, QoS::AtMostOnce) => Err(End::Violation(
                    ReasonCode::NotAuthorized,
                    "publish not authorized",
                )),
                (true, QoS::AtLeastOnce) => {
                    self.push_ack(PubRespKind::PubAck, pid, ReasonCode::NotAuthorized, None);
                    Ok(())
                }
                (true, QoS::ExactlyOnce) => {
                    self.push_ack(PubRespKind::PubRec, pid, ReasonCode::NotAuthorized, None);
                    Ok(())
                }
            };
        }
        // A persistent session stores the id before PUBREC (the write goes ahead of the
        // message's own, which the PUBREC may wait for instead): after a restart, the client's
        // retransmission is then still recognised, not delivered a second time.
        let mut id_stored = None;
        if p.qos == QoS::ExactlyOnce {
            let mut s = self.cell.lock();
            if !s.inbound_qos2.insert(pid) {
                drop(s);
                // Already delivered; the PUBLISH is a retransmission.
                self.push_ack(PubRespKind::PubRec, pid, ReasonCode::Success, None);
                return Ok(());
            }
            if s.stored && s.persistent() {
                let mut fx = self.shared.effects();
                fx.durable
                    .push(WriteOp::PutSession(session_record(&s, None)));
                drop(s);
                id_stored = self.shared.commit(fx);
            }
        }
        // Only a message with an expiry needs the time (reading the clock is not free).
        let expires_at = p.properties.message_expiry_interval.and_then(|secs| {
            let now = self.shared.clock.now_ms();
            expiry_from(Some(secs.max(1)), cfg.max_message_expiry, now)
        });
        let msg = Arc::new(AppMsg {
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            props: forwardable(&p.properties),
            expires_at,
            origin: Some(self.client_id.clone()),
            frames: Default::default(),
        });
        // Retained and QoS 2 messages go alone; the rest wait for the next message to the same
        // topic. The acknowledgement takes its place in line now and gets its wait for the
        // store when the batch is delivered (before anything is written).
        let alone = msg.retain || msg.qos == QoS::ExactlyOnce;
        if alone || batch.msgs.first().is_some_and(|b| b.msg.topic != msg.topic) {
            self.publish_batch(batch);
        }
        let ack = match p.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(PubRespKind::PubAck),
            QoS::ExactlyOnce => Some(PubRespKind::PubRec),
        };
        let ack_at = ack.map(|kind| {
            self.push_ack(kind, pid, ReasonCode::Success, id_stored);
            self.acks.len() - 1
        });
        batch.msgs.push(Batched { msg, ack_at });
        if alone || batch.msgs.len() >= batch_max(self.shared.config.outbound_queue) {
            self.publish_batch(batch);
        }
        Ok(())
    }

    /// PUBACK or PUBCOMP: frees the message in flight; the caller pumps the queue after.
    fn settle(&self, packet_id: u16, kind: PubRespKind, fx: &mut Effects) -> Result<(), End> {
        let mut s = self.cell.lock();
        if !s.is_current(self.conn_id) {
            return Err(End::TakenOver);
        }
        s.acknowledged(packet_id, kind, fx);
        Ok(())
    }

    fn on_pubresp(&mut self, r: PubResp) -> Result<(), End> {
        let mut fx = self.shared.effects();
        match r.kind {
            PubRespKind::PubAck | PubRespKind::PubComp => {
                self.settle(r.packet_id, r.kind, &mut fx)?;
                self.pump_with(fx);
                return Ok(());
            }
            PubRespKind::PubRec => {
                let send = {
                    let mut s = self.cell.lock();
                    if !s.is_current(self.conn_id) {
                        return Err(End::TakenOver);
                    }
                    s.received(r.packet_id, r.reason.is_error(), &mut fx)
                };
                if send {
                    // After the release mark is stored (persistent sessions), so that a restart
                    // resends this PUBREL rather than the message.
                    let stored = self.shared.commit(fx);
                    self.push_pending(pubrel(r.packet_id), stored);
                    return Ok(());
                } else if !r.reason.is_error() {
                    // Unknown id: answer with PUBREL "not found" so the client can clean up.
                    let mut rel = PubResp {
                        kind: PubRespKind::PubRel,
                        packet_id: r.packet_id,
                        reason: ReasonCode::PacketIdentifierNotFound,
                        properties: Properties::default(),
                    };
                    if !self.v5() {
                        rel.reason = ReasonCode::Success;
                    }
                    self.write(&Packet::PubResp(rel));
                }
            }
            PubRespKind::PubRel => {
                let known = {
                    let mut s = self.cell.lock();
                    let known = s.inbound_qos2.remove(&r.packet_id);
                    // A persistent session forgets the id in the store before PUBCOMP: an id
                    // remembered after a restart would make the client's next message with it
                    // look like a retransmission, and be dropped.
                    if known && s.stored && s.persistent() {
                        fx.durable
                            .push(WriteOp::PutSession(session_record(&s, None)));
                    }
                    known
                };
                let reason = if known || !self.v5() {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                let comp = Packet::PubResp(PubResp {
                    kind: PubRespKind::PubComp,
                    packet_id: r.packet_id,
                    reason,
                    properties: Properties::default(),
                });
                let stored = self.shared.commit(fx);
                self.push_pending(comp, stored);
                return Ok(());
            }
        }
        drop(self.shared.commit(fx));
        Ok(())
    }

    fn on_subscribe(&mut self, sub: Subscribe) -> Result<(), End> {
        let cfg = &self.shared.config;
        let v5 = self.v5();
        if sub.filters.len() > cfg.max_filters_per_subscribe {
            if !v5 {
                return Err(End::Violation(
                    ReasonCode::QuotaExceeded,
                    "too many filters in SUBSCRIBE",
                ));
            }
            let properties = Properties {
                reason_string: self.reason_string("too many filters in one SUBSCRIBE"),
                ..Properties::default()
            };
            self.write(&Packet::SubAck(SubAck {
                packet_id: sub.packet_id,
                reasons: vec![ReasonCode::QuotaExceeded; sub.filters.len()],
                properties,
            }));
            return Ok(());
        }
        let sub_id = sub.properties.subscription_identifiers.first().copied();
        let limits = cfg.topic_limits();
        let max_qos = cfg.max_qos();
        let mut reasons = Vec::with_capacity(sub.filters.len());
        let mut retained_for: Vec<(String, SubRecord)> = Vec::new();
        let mut fx = self.shared.effects();
        {
            let mut s = self.cell.lock();
            if !s.is_current(self.conn_id) {
                return Err(End::TakenOver);
            }
            let mut changed = false;
            for (filter, opts) in &sub.filters {
                if thingd_topic::validate_topic_filter(filter, &limits).is_err() {
                    tracing::debug!(client_id = %self.client_id, %filter, "invalid topic filter");
                    reasons.push(if v5 {
                        ReasonCode::TopicFilterInvalid
                    } else {
                        ReasonCode::UnspecifiedError
                    });
                    continue;
                }
                if !self.policy.can_subscribe(filter) {
                    tracing::debug!(client_id = %self.client_id, %filter, "subscribe not authorized");
                    if !v5 {
                        return Err(End::Violation(
                            ReasonCode::NotAuthorized,
                            "subscribe not authorized",
                        ));
                    }
                    reasons.push(ReasonCode::NotAuthorized);
                    continue;
                }
                let (group, inner) = split_filter(filter);
                if group.is_some() && opts.no_local && v5 {
                    return Err(End::Violation(
                        ReasonCode::ProtocolError,
                        "No Local on a shared subscription",
                    ));
                }
                let existed = s.subs.contains_key(filter.as_str());
                if !existed && s.subs.len() >= cfg.max_subscriptions {
                    reasons.push(if v5 {
                        ReasonCode::QuotaExceeded
                    } else {
                        ReasonCode::UnspecifiedError
                    });
                    continue;
                }
                let granted = opts.qos.min(max_qos);
                let rec = SubRecord {
                    opts: SubscriptionOptions {
                        qos: granted,
                        ..*opts
                    },
                    id: sub_id,
                };
                s.subs.insert(filter.to_string(), rec);
                self.shared.index.write().insert(
                    inner,
                    SubKey {
                        client: self.client_id.clone(),
                        group: group.clone(),
                    },
                    SubVal {
                        cell: self.cell.clone(),
                        opts: rec.opts,
                        id: sub_id,
                    },
                );
                changed = true;
                reasons.push(match granted {
                    QoS::AtMostOnce => ReasonCode::GRANTED_QOS0,
                    QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                    QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                });
                // Retained messages on subscribe follow MQTT: wildcard filters match too (AWS
                // only serves exact filters), never for shared subscriptions.
                let send_retained = group.is_none()
                    && match opts.retain_handling {
                        RetainHandling::SendAtSubscribe => true,
                        RetainHandling::SendIfNew => !existed,
                        RetainHandling::DoNotSend => false,
                    };
                if send_retained {
                    retained_for.push((inner.to_owned(), rec));
                }
            }
            if changed && s.persistent() {
                s.stored = true;
                fx.durable
                    .push(WriteOp::PutSession(session_record(&s, None)));
            }
        }
        let granted: Vec<String> = sub
            .filters
            .iter()
            .zip(&reasons)
            .filter(|(_, r)| !r.is_error())
            .map(|((f, _), _)| f.to_string())
            .collect();
        self.raise_subscription_event(true, granted);
        let suback = Packet::SubAck(SubAck {
            packet_id: sub.packet_id,
            reasons,
            properties: Properties::default(),
        });
        for (filter, rec) in retained_for {
            let msgs = self
                .shared
                .retained
                .matching(&filter, fx.now_ms, &mut fx.detached);
            let mut s = self.cell.lock();
            for msg in msgs {
                let d = Delivery {
                    qos: msg.qos.min(rec.opts.qos),
                    retain: true,
                    sub_ids: rec.id.into_iter().collect(),
                    seq: None,
                    dup: false,
                    msg,
                };
                s.offer(d, &mut fx);
            }
        }
        // The SUBACK of a persistent session waits for its subscriptions to be stored (and
        // for the retained messages just queued for it), so that what was acknowledged
        // survives a crash; with nothing to store, `commit` has already answered. MQTT lets
        // the matching messages go out before the SUBACK.
        let stored = self.shared.commit(fx);
        self.push_pending(suback, stored);
        Ok(())
    }

    /// Reports granted or removed filters to event subscribers.
    fn raise_subscription_event(&self, subscribed: bool, filters: Vec<String>) {
        if self.internal || filters.is_empty() {
            return;
        }
        let (client_id, principal, connection_id) =
            (self.client_id.clone(), self.principal.clone(), self.conn_id);
        let event = if subscribed {
            crate::BrokerEvent::Subscribed {
                client_id,
                principal,
                connection_id,
                filters,
            }
        } else {
            crate::BrokerEvent::Unsubscribed {
                client_id,
                principal,
                connection_id,
                filters,
            }
        };
        self.shared.events.send(event);
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), End> {
        let mut reasons = Vec::with_capacity(u.filters.len());
        let mut fx = self.shared.effects();
        {
            let mut s = self.cell.lock();
            if !s.is_current(self.conn_id) {
                return Err(End::TakenOver);
            }
            let mut changed = false;
            for filter in &u.filters {
                if s.subs.remove(filter.as_str()).is_some() {
                    let (group, inner) = split_filter(filter);
                    self.shared.index.write().remove(
                        inner,
                        &SubKey {
                            client: self.client_id.clone(),
                            group,
                        },
                    );
                    changed = true;
                    reasons.push(ReasonCode::Success);
                } else {
                    reasons.push(ReasonCode::NoSubscriptionExisted);
                }
            }
            if changed && s.persistent() {
                fx.durable
                    .push(WriteOp::PutSession(session_record(&s, None)));
            }
        }
        let removed: Vec<String> = u
            .filters
            .iter()
            .zip(&reasons)
            .filter(|(_, r)| **r == ReasonCode::Success)
            .map(|(f, _)| f.to_string())
            .collect();
        self.raise_subscription_event(false, removed);
        let unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reasons,
            properties: Properties::default(),
        });
        let stored = self.shared.commit(fx);
        self.push_pending(unsuback, stored);
        Ok(())
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<(), End> {
        if self.v5()
            && let Some(sei) = d.properties.session_expiry_interval
        {
            let mut s = self.cell.lock();
            if s.expiry == 0 && sei > 0 {
                return Err(End::Violation(
                    ReasonCode::ProtocolError,
                    "session expiry cannot be raised from 0 at DISCONNECT",
                ));
            }
            s.expiry = self.shared.config.effective_session_expiry(sei);
        }
        if d.reason == ReasonCode::DisconnectWithWill {
            Err(End::WithWill)
        } else {
            Err(End::Normal)
        }
    }

    /// Closes the connection and hands the session back.
    async fn finish<S: AsyncWrite + Unpin>(mut self, stream: &mut S, end: End) {
        let reason = match &end {
            End::Violation(rc, why) => {
                tracing::debug!(client_id = %self.client_id, reason = why, code = ?rc, "protocol violation, closing");
                Some((*rc, Some(*why)))
            }
            End::Server(rc) => Some((*rc, None)),
            End::TakenOver => Some((ReasonCode::SessionTakenOver, None)),
            End::Normal | End::WithWill | End::Lost => None,
        };
        // Acks already decided go out first (best effort).
        let _ = self.flush_acks();
        if self.v5()
            && let Some((rc, why)) = reason
        {
            let mut properties = Properties::default();
            if let Some(w) = why {
                properties.reason_string = self.reason_string(w);
            }
            self.write(&Packet::Disconnect(Disconnect {
                reason: rc,
                properties,
            }));
        }
        // Detach before the socket closes: a client that sees the close and publishes at
        // once must find its messages queued in the session, not in this dead connection.
        let with_will = !matches!(end, End::Normal | End::TakenOver);
        let wills = self.shared.detach(&self.cell, self.conn_id, with_will);
        self.shared.publish_wills(wills);
        if !self.wbuf.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let _ = stream.write_all(&self.wbuf).await;
                let _ = stream.flush().await;
            })
            .await;
            metrics::bytes_out(self.wbuf.len());
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        metrics::connection_closed();
        if !self.internal {
            self.shared.events.send(crate::BrokerEvent::Disconnected {
                client_id: self.client_id.clone(),
                principal: self.principal.clone(),
                connection_id: self.conn_id,
                cause: disconnect_cause(&end),
            });
        }
        tracing::info!(client_id = %self.client_id, reason = ?end, "client disconnected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Allows topics under `allowed/`, counts how often it is asked, and names an epoch.
    struct Counting {
        asked: AtomicUsize,
        epoch: Option<Arc<AtomicU64>>,
    }

    impl ConnectionPolicy for Counting {
        fn can_publish(&self, topic: &str, retain: bool) -> bool {
            self.asked.fetch_add(1, Ordering::Relaxed);
            topic.starts_with("allowed/") && !retain
        }
        fn can_subscribe(&self, _filter: &str) -> bool {
            false
        }
        fn can_receive(&self, _topic: &str) -> bool {
            false
        }
        fn decision_epoch(&self) -> Option<Arc<AtomicU64>> {
            self.epoch.clone()
        }
    }

    fn asked(policy: &Counting) -> usize {
        policy.asked.load(Ordering::Relaxed)
    }

    #[test]
    fn a_publish_decision_is_asked_again_only_for_another_topic_flag_or_epoch() {
        let epoch = Arc::new(AtomicU64::new(5));
        let policy = Counting {
            asked: AtomicUsize::new(0),
            epoch: Some(epoch.clone()),
        };
        let mut memo = PublishMemo::new(&policy);
        assert!(memo.can_publish(&policy, "allowed/a", false));
        assert!(memo.can_publish(&policy, "allowed/a", false));
        assert_eq!(asked(&policy), 1, "the same topic is remembered");
        assert!(
            !memo.can_publish(&policy, "allowed/a", true),
            "RETAIN asks again"
        );
        assert!(!memo.can_publish(&policy, "denied/a", false));
        assert!(!memo.can_publish(&policy, "denied/a", false));
        assert_eq!(asked(&policy), 3, "a denial is remembered too");
        assert!(memo.can_publish(&policy, "allowed/a", false));
        assert_eq!(asked(&policy), 4, "only the last decision is kept");
        epoch.fetch_add(1, Ordering::SeqCst);
        assert!(memo.can_publish(&policy, "allowed/a", false));
        assert_eq!(asked(&policy), 5, "a moved epoch asks again");
    }

    #[test]
    fn a_policy_without_an_epoch_is_asked_every_time() {
        let policy = Counting {
            asked: AtomicUsize::new(0),
            epoch: None,
        };
        let mut memo = PublishMemo::new(&policy);
        for _ in 0..3 {
            assert!(memo.can_publish(&policy, "allowed/a", false));
        }
        assert_eq!(asked(&policy), 3);
    }
}
