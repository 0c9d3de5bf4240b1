//! Will Messages: publishing one, delayed publication (MQTT 5 Will Delay Interval), and the
//! periodic session-expiry sweep that also fires the wills of expiring sessions.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::broker::Shared;
use crate::message::AppMsg;
use crate::reserved;
use crate::session::{SessionCell, Will};

impl Shared {
    /// Publishes a will (checked against the policy of the connection that set it).
    pub(crate) fn publish_will(&self, will: Will) {
        let topic = will.msg.topic.clone();
        if !will.policy.can_publish(&topic, will.msg.retain)
            || (will.msg.retain && !reserved::retain_allowed(&topic))
        {
            tracing::debug!(%topic, "will not published: not authorized");
            return;
        }
        let now = self.clock.now_ms();
        // The expiry counts from the disconnect (set then for delayed wills), else from now.
        let expires_at = will.msg.expires_at.or_else(|| {
            crate::message::expiry_from(will.expiry_interval, self.config.max_message_expiry, now)
        });
        if expires_at.is_some_and(|at| at <= now) {
            tracing::debug!(%topic, "will not published: its message expired during the delay");
            return;
        }
        let msg = Arc::new(AppMsg {
            expires_at,
            ..will.msg
        });
        tracing::debug!(%topic, "publishing will");
        let mut fx = self.effects();
        if msg.retain {
            fx.detached.push(self.retained.set(&msg));
        }
        self.route(
            std::slice::from_ref(&msg),
            std::slice::from_mut(&mut fx),
            &mut None,
        );
        crate::metrics::message_in(msg.qos);
        // Nobody waits for a will's durability.
        let rx = self.commit(fx);
        drop(rx);
    }

    pub(crate) fn publish_wills(&self, wills: Vec<Will>) {
        for w in wills {
            self.publish_will(w);
        }
    }
}

/// Publishes the pending will `gen_id` of `cell` after `secs`, unless it was cancelled
/// (the client resumed the session) or already published (the session ended).
pub(crate) fn schedule(
    shared: &Arc<Shared>,
    client_id: Arc<str>,
    cell: Arc<SessionCell>,
    gen_id: u64,
    secs: u32,
) {
    let weak = Arc::downgrade(shared);
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        tokio::time::sleep(Duration::from_secs(u64::from(secs))).await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let will = shared.take_due_will(&mut cell.lock(), Some(gen_id));
        if let Some(w) = will {
            tracing::debug!(client_id = %client_id, "will delay elapsed");
            shared.publish_will(w);
        }
    });
}

/// Starts the once-a-second expiry sweep (once per broker, when a runtime is available).
pub(crate) fn start_sweeper(shared: &Arc<Shared>) {
    use std::sync::atomic::Ordering;
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if shared.sweeper_started.swap(true, Ordering::SeqCst) {
        return;
    }
    let weak: Weak<Shared> = Arc::downgrade(shared);
    rt.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = weak.upgrade() else {
                return;
            };
            if shared.shutdown.is_cancelled() {
                return;
            }
            let wills = shared.sweep();
            shared.publish_wills(wills);
        }
    });
}
