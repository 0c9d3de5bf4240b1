//! Pacing publishers to receivers that read slower than they are sent to.
//!
//! Every connection has a bounded outbound queue of encoded frames. A QoS 0 message that
//! finds the queue full is dropped, so a publisher faster than one of its receivers would
//! lose most of what it sends. Instead, when a delivery leaves a receiver's queue more than
//! three-quarters full, the publishing connection stops reading from its socket (TCP then
//! slows the client down) until that queue has drained to half, like a broker that writes
//! straight to its receivers' sockets.
//!
//! A receiver that does not drain within [`PACE_LIMIT`] is marked stalled: publishers stop
//! waiting for it (its QoS 0 messages are dropped once its queue is full, QoS 1/2 ones queue
//! in its session), so one stuck client cannot hold up everyone who publishes to it. It is
//! paced again once it has drained to half.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::outbound::Outbound;

/// Longest a publisher waits for its slow receivers before giving up on them. A receiver that
/// cannot take a quarter of its queue (1,024 frames by default) in this time is slower than
/// about 10,000 messages per second: it is left behind rather than allowed to set the pace.
pub(crate) const PACE_LIMIT: Duration = Duration::from_millis(100);

/// The receiver side's half of pacing: publishers waiting for one connection's queue to
/// drain, and whether it is stalled. Part of the connection's `Outbound` queue.
#[derive(Default)]
pub(crate) struct Drain {
    notify: Notify,
    /// A publisher waits (or gave up) on this queue: the connection signals when it drains.
    watched: AtomicBool,
    /// A publisher gave up on this queue; nobody waits for it until it drains.
    stalled: AtomicBool,
}

impl Drain {
    pub(crate) fn is_watched(&self) -> bool {
        self.watched.load(Ordering::SeqCst)
    }

    /// Called by the receiving connection after it took frames off its queue, which now
    /// holds `len` of at most `capacity` frames.
    pub(crate) fn drained(&self, len: usize, capacity: usize) {
        if self.is_watched() && below_half(len, capacity) {
            self.stalled.store(false, Ordering::SeqCst);
            self.watched.store(false, Ordering::SeqCst);
            self.notify.notify_waiters();
        }
    }
}

fn below_half(len: usize, max: usize) -> bool {
    len * 2 <= max
}

/// A receiver whose queue a publisher has filled past three-quarters.
pub(crate) struct SlowReceiver {
    tx: Outbound,
}

impl SlowReceiver {
    /// The receiver to wait for after a delivery to `tx` left `queued` frames waiting (its
    /// capacity when the delivery found it full), if that is more than three-quarters of the
    /// queue and the receiver is not stalled.
    pub(crate) fn after_send(tx: &Outbound, queued: usize) -> Option<SlowReceiver> {
        let max = tx.capacity();
        if queued * 4 <= max * 3 || tx.drain().stalled.load(Ordering::Relaxed) {
            return None;
        }
        Some(SlowReceiver { tx: tx.clone() })
    }

    fn ready(&self) -> bool {
        self.tx.is_closed() || below_half(self.tx.capacity() - self.tx.free(), self.tx.capacity())
    }

    /// Waits until the queue has drained to half (or the receiver is gone).
    async fn wait(&self) {
        let drain = self.tx.drain();
        loop {
            let notified = drain.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            drain.watched.store(true, Ordering::SeqCst);
            if self.ready() {
                return;
            }
            notified.await;
        }
    }

    /// Marks the receiver stalled: publishers stop waiting for it until it drains.
    fn give_up(&self) {
        let drain = self.tx.drain();
        drain.stalled.store(true, Ordering::SeqCst);
        drain.watched.store(true, Ordering::SeqCst);
    }
}

/// The receivers one publishing connection waits for before it reads again. Boxed on first
/// use and kept: most connections are never paced, and every byte here is in every idle
/// connection's task.
#[derive(Default)]
pub(crate) struct Pacing(Option<Box<Waiting>>);

#[derive(Default)]
struct Waiting {
    slow: Vec<SlowReceiver>,
    until: Option<tokio::time::Instant>,
}

impl Pacing {
    /// Adds receivers found slow while routing this connection's messages.
    pub(crate) fn add(&mut self, slow: Vec<SlowReceiver>) {
        if slow.is_empty() {
            return;
        }
        let waiting = self.0.get_or_insert_default();
        for s in slow {
            if !waiting.slow.iter().any(|w| w.tx.same_queue(&s.tx)) {
                waiting.slow.push(s);
            }
        }
        if waiting.until.is_none() {
            waiting.until = Some(tokio::time::Instant::now() + PACE_LIMIT);
        }
    }

    /// True while the connection must not read.
    pub(crate) fn paused(&self) -> bool {
        self.0.as_ref().is_some_and(|w| !w.slow.is_empty())
    }

    /// Waits until every slow receiver has drained; a receiver still full after
    /// [`PACE_LIMIT`] is marked stalled and no longer waited for.
    pub(crate) async fn resume(&mut self) {
        let Some(waiting) = self.0.as_deref_mut() else {
            return;
        };
        let until = waiting
            .until
            .unwrap_or_else(|| tokio::time::Instant::now() + PACE_LIMIT);
        while let Some(first) = waiting.slow.first() {
            if tokio::time::timeout_at(until, first.wait()).await.is_err() {
                for s in &waiting.slow {
                    if !s.ready() {
                        s.give_up();
                    }
                }
                waiting.slow.clear();
            } else {
                waiting.slow.retain(|s| !s.ready());
            }
        }
        waiting.until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{OutboundRx, outbound};
    use bytes::Bytes;

    fn fill(tx: &Outbound, n: usize) {
        for _ in 0..n {
            tx.try_send(Bytes::from_static(b"x").into()).unwrap();
        }
    }

    /// `SlowReceiver::after_send` for the queue as it is now.
    fn slow(tx: &Outbound) -> Option<SlowReceiver> {
        SlowReceiver::after_send(tx, tx.capacity() - tx.free())
    }

    fn take(rx: &mut OutboundRx, n: usize) {
        for _ in 0..n {
            rx.try_recv().unwrap();
        }
        rx.drained();
    }

    #[test]
    fn a_queue_three_quarters_full_is_slow() {
        let (tx, _rx) = outbound(8);
        fill(&tx, 6);
        assert!(slow(&tx).is_none());
        fill(&tx, 1);
        assert!(slow(&tx).is_some());
    }

    #[tokio::test]
    async fn the_publisher_resumes_when_the_receiver_drains_to_half() {
        let (tx, mut rx) = outbound(8);
        fill(&tx, 8);
        let mut pacing = Pacing::default();
        pacing.add(slow(&tx).into_iter().collect());
        assert!(pacing.paused());
        let receiver = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                take(&mut rx, 1);
            }
            rx
        });
        let started = std::time::Instant::now();
        pacing.resume().await;
        assert!(!pacing.paused());
        assert!(started.elapsed() >= Duration::from_millis(15));
        assert_eq!(
            tx.free(),
            4,
            "resumed once drained to half, not given up on"
        );
        assert!(slow(&tx).is_none());
        fill(&tx, 3);
        assert!(slow(&tx).is_some(), "not marked stalled");
        drop(receiver.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_receiver_that_never_drains_is_given_up_on_after_the_limit() {
        let (tx, _rx) = outbound(8);
        fill(&tx, 8);
        let mut pacing = Pacing::default();
        pacing.add(slow(&tx).into_iter().collect());
        let started = tokio::time::Instant::now();
        pacing.resume().await;
        assert_eq!(started.elapsed(), PACE_LIMIT);
        // Stalled: later deliveries to it do not pause the publisher again.
        assert!(slow(&tx).is_none());
    }

    #[test]
    fn a_stalled_receiver_is_paced_again_once_it_drains() {
        let (tx, mut rx) = outbound(8);
        fill(&tx, 8);
        slow(&tx).unwrap().give_up();
        assert!(slow(&tx).is_none());
        take(&mut rx, 4);
        fill(&tx, 4);
        assert!(slow(&tx).is_some());
    }

    #[tokio::test]
    async fn a_closed_receiver_does_not_hold_the_publisher() {
        let (tx, rx) = outbound(8);
        fill(&tx, 8);
        let mut pacing = Pacing::default();
        pacing.add(slow(&tx).into_iter().collect());
        drop(rx);
        tokio::time::timeout(Duration::from_millis(100), pacing.resume())
            .await
            .expect("resumes at once");
    }
}
