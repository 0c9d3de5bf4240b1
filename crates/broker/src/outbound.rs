//! A connection's outbound queue: frames from the fan-out (see `Frame`) and orders from elsewhere
//! (see `Control`), for the one task that writes to the connection's socket.
//!
//! One small allocation per connection that grows only while frames wait, in place of the
//! two tokio channels it replaced, which allocated about 2 KB per connection up front — most
//! connections are idle devices, so that was a seventh of what one cost. Bounded in frames
//! (`outbound_queue`); the fan-out never waits on it (`try_send`), publishers are paced to
//! it (`pace`).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Poll, Waker};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use thingd_mqtt::{PlainPublish, ProtocolVersion, QoS};

use crate::message::AppMsg;
use crate::pace::Drain;
use crate::session::Control;

/// Frames kept allocated while the queue is empty; a larger buffer left by a burst is freed.
const IDLE_SLOTS: usize = 64;

/// A packet waiting to be written: encoded already, or a PUBLISH written straight from its
/// message when it is copied into the write buffer.
#[derive(Clone, Debug)]
pub(crate) struct Frame(Body);

#[derive(Clone, Debug)]
enum Body {
    /// A fan-out shares one encoding of a message between its receivers; each QoS 1/2
    /// receiver's packet id is written into its copy as the frame is copied into the write
    /// buffer, so queuing it allocates nothing.
    Encoded {
        bytes: Bytes,
        /// Where the packet id goes, and the id (0: the frame is sent as it is).
        id_at: u32,
        id: u16,
    },
    /// A PUBLISH without properties, the most common kind: no encoding of its own is
    /// allocated, filled, queued and freed.
    Plain(PlainFrame),
}

/// A PUBLISH without properties, written from its message's topic and payload.
#[derive(Clone, Debug)]
struct PlainFrame {
    msg: Arc<AppMsg>,
    qos: QoS,
    retain: bool,
    /// 0 for QoS 0.
    id: u16,
    version: ProtocolVersion,
}

impl PlainFrame {
    fn parts(&self) -> PlainPublish<'_> {
        PlainPublish {
            dup: false,
            qos: self.qos,
            retain: self.retain,
            topic: &self.msg.topic,
            packet_id: (self.id != 0).then_some(self.id),
            payload: &self.msg.payload,
        }
    }
}

impl Frame {
    /// `bytes` with the two bytes at `at` replaced by `id` when written.
    pub(crate) fn with_packet_id(bytes: Bytes, at: usize, id: u16) -> Option<Frame> {
        bytes.get(at..at.checked_add(2)?)?;
        Some(Frame(Body::Encoded {
            bytes,
            id_at: u32::try_from(at).ok()?,
            id,
        }))
    }

    /// The PUBLISH of `msg` without properties (the caller knows that `version` needs none
    /// for this receiver), with its own `qos`, `retain` and `packet_id`; `None` (logged) if
    /// the codec would refuse it.
    pub(crate) fn publish(
        msg: &Arc<AppMsg>,
        qos: QoS,
        retain: bool,
        packet_id: Option<u16>,
        version: ProtocolVersion,
    ) -> Option<Frame> {
        let plain = PlainFrame {
            msg: msg.clone(),
            qos,
            retain,
            id: packet_id.unwrap_or(0),
            version,
        };
        if let Err(e) = plain.parts().check() {
            tracing::warn!(error = %e, "cannot encode packet");
            return None;
        }
        Some(Frame(Body::Plain(plain)))
    }

    pub(crate) fn len(&self) -> usize {
        match &self.0 {
            Body::Encoded { bytes, .. } => bytes.len(),
            Body::Plain(plain) => plain.parts().encoded_len(plain.version),
        }
    }

    /// The bytes the frame puts on the wire.
    #[cfg(test)]
    pub(crate) fn wire(&self) -> BytesMut {
        let mut out = BytesMut::new();
        self.copy_to(&mut out);
        out
    }

    /// Appends the frame, with its packet id, to `out`.
    pub(crate) fn copy_to(&self, out: &mut BytesMut) {
        match &self.0 {
            Body::Encoded { bytes, id_at, id } => {
                let start = out.len();
                out.extend_from_slice(bytes);
                if *id != 0 {
                    let at = start + *id_at as usize;
                    out[at..at + 2].copy_from_slice(&id.to_be_bytes());
                }
            }
            Body::Plain(plain) => {
                if let Err(e) = plain.parts().encode(plain.version, out) {
                    // Not expected: `publish` made the same checks. Nothing was appended.
                    tracing::warn!(error = %e, "cannot encode packet");
                }
            }
        }
    }
}

impl From<Bytes> for Frame {
    fn from(bytes: Bytes) -> Frame {
        Frame(Body::Encoded {
            bytes,
            id_at: 0,
            id: 0,
        })
    }
}

struct Queue {
    capacity: usize,
    senders: AtomicUsize,
    state: Mutex<State>,
    drain: Drain,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    /// An order to the connection; it comes before any waiting frame.
    control: Option<Control>,
    receiver_gone: bool,
    waker: Option<Waker>,
}

/// What the connection takes off its queue.
#[derive(Debug)]
pub(crate) enum Received {
    Frame(Frame),
    Control(Control),
    /// Every sender is gone: the session no longer points to this connection.
    Closed,
}

/// The sending side, held by the session's link (and briefly by paused publishers).
pub(crate) struct Outbound(Arc<Queue>);

/// The receiving side, held by the connection's task.
pub(crate) struct OutboundRx(Arc<Queue>);

/// A queue of at most `capacity` frames.
pub(crate) fn outbound(capacity: usize) -> (Outbound, OutboundRx) {
    let queue = Arc::new(Queue {
        capacity: capacity.max(1),
        senders: AtomicUsize::new(1),
        state: Mutex::new(State::default()),
        drain: Drain::default(),
    });
    (Outbound(queue.clone()), OutboundRx(queue))
}

impl Outbound {
    /// Queues a frame unless the queue is full or the connection gone; `Ok` holds the number
    /// of frames now waiting (for pacing, without locking the queue again).
    pub(crate) fn try_send(&self, frame: Frame) -> Result<usize, Frame> {
        let (waker, queued) = {
            let mut state = self.0.state.lock();
            if state.receiver_gone || state.frames.len() >= self.0.capacity {
                return Err(frame);
            }
            state.frames.push_back(frame);
            (state.waker.take(), state.frames.len())
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(queued)
    }

    /// Gives the connection an order (replacing one not yet taken); false if it is gone.
    pub(crate) fn control(&self, order: Control) -> bool {
        let waker = {
            let mut state = self.0.state.lock();
            if state.receiver_gone {
                return false;
            }
            state.control = Some(order);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Frames that fit before the queue is full (0 once the connection is gone).
    pub(crate) fn free(&self) -> usize {
        let state = self.0.state.lock();
        if state.receiver_gone {
            0
        } else {
            self.0.capacity.saturating_sub(state.frames.len())
        }
    }

    /// The bound, in frames.
    pub(crate) fn capacity(&self) -> usize {
        self.0.capacity
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.0.state.lock().receiver_gone
    }

    /// What publishers paced to this queue wait on.
    pub(crate) fn drain(&self) -> &Drain {
        &self.0.drain
    }

    pub(crate) fn same_queue(&self, other: &Outbound) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Clone for Outbound {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::SeqCst);
        Outbound(self.0.clone())
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::SeqCst) == 1 {
            let waker = self.0.state.lock().waker.take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl OutboundRx {
    /// Waits for an order, a frame, or the end of the senders.
    pub(crate) async fn recv(&mut self) -> Received {
        poll_fn(|cx| {
            let mut state = self.0.state.lock();
            if let Some(order) = state.control.take() {
                return Poll::Ready(Received::Control(order));
            }
            if let Some(frame) = pop(&mut state) {
                return Poll::Ready(Received::Frame(frame));
            }
            if self.0.senders.load(Ordering::SeqCst) == 0 {
                return Poll::Ready(Received::Closed);
            }
            match &mut state.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The next frame, if one waits.
    pub(crate) fn try_recv(&mut self) -> Option<Frame> {
        pop(&mut self.0.state.lock())
    }

    /// Wakes the publishers paced to this queue if it has drained enough (see `pace`).
    pub(crate) fn drained(&self) {
        if self.0.drain.is_watched() {
            let len = self.0.state.lock().frames.len();
            self.0.drain.drained(len, self.0.capacity);
        }
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        {
            let mut state = self.0.state.lock();
            state.receiver_gone = true;
            state.frames = VecDeque::new();
        }
        self.0.drain.drained(0, self.0.capacity);
    }
}

fn pop(state: &mut State) -> Option<Frame> {
    let frame = state.frames.pop_front();
    if state.frames.is_empty() && state.frames.capacity() > IDLE_SLOTS {
        state.frames = VecDeque::new();
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use thingd_mqtt::ReasonCode;

    /// A queued frame costs what it did when every frame was an encoding.
    #[test]
    fn a_frame_is_small() {
        assert!(size_of::<Frame>() <= 40, "{}", size_of::<Frame>());
    }

    #[test]
    fn bounded_in_frames() {
        let (tx, mut rx) = outbound(2);
        assert!(tx.try_send(Bytes::from_static(b"a").into()).is_ok());
        assert!(tx.try_send(Bytes::from_static(b"b").into()).is_ok());
        assert_eq!(tx.free(), 0);
        assert!(tx.try_send(Bytes::from_static(b"c").into()).is_err());
        assert_eq!(rx.try_recv().map(|f| f.wire()), Some("a".into()));
        assert_eq!(tx.free(), 1);
        assert_eq!(rx.try_recv().map(|f| f.wire()), Some("b".into()));
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn an_order_comes_before_waiting_frames() {
        let (tx, mut rx) = outbound(8);
        tx.try_send(Bytes::from_static(b"a").into()).unwrap();
        assert!(tx.control(Control::Close(ReasonCode::NotAuthorized)));
        assert!(matches!(
            rx.recv().await,
            Received::Control(Control::Close(ReasonCode::NotAuthorized))
        ));
        assert!(matches!(rx.recv().await, Received::Frame(_)));
    }

    #[tokio::test]
    async fn the_receiver_wakes_for_a_frame_and_when_the_last_sender_goes() {
        let (tx, mut rx) = outbound(8);
        let second = tx.clone();
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            let then = rx.recv().await;
            (first, then)
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.try_send(Bytes::from_static(b"x").into()).unwrap();
        drop(tx);
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(second);
        let (first, then) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert!(matches!(first, Received::Frame(_)));
        assert!(matches!(then, Received::Closed));
    }

    #[test]
    fn a_gone_receiver_refuses_frames_and_orders() {
        let (tx, rx) = outbound(8);
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.free(), 0);
        assert!(tx.try_send(Bytes::from_static(b"a").into()).is_err());
        assert!(!tx.control(Control::Close(ReasonCode::NotAuthorized)));
    }

    #[test]
    fn a_burst_does_not_stay_allocated_once_drained() {
        let (tx, mut rx) = outbound(4096);
        for _ in 0..1000 {
            tx.try_send(Bytes::from_static(b"a").into()).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert!(rx.0.state.lock().frames.capacity() <= IDLE_SLOTS);
    }
}
