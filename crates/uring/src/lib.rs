//! TCP connections held as io_uring direct descriptors, so that one process can hold more
//! connections than its open-file limit (`RLIMIT_NOFILE`) allows.
//!
//! Owns: moving an accepted connection into an io_uring file table (or accepting it there),
//! and [`RingStream`], an `AsyncRead + AsyncWrite` over such a connection. Does not own: when
//! to use it (the listeners in `thingd-net` move a connection whose descriptor lands near the
//! limit, and accept into a ring when no descriptor is left), TLS, or MQTT.
//!
//! # How
//! A socket that `IORING_OP_ACCEPT` puts into a ring's file table (a *direct descriptor*)
//! takes no slot in the process's descriptor table, so the open-file limit does not count it.
//! The kernel caps each ring's table at that limit, so [`Rings`] opens another ring when a
//! table fills, up to a maximum. A slot is reserved before each accept: the kernel takes the
//! connection off the backlog before it looks for a free slot, and closes it when there is
//! none, so an accept must never be asked of a full table.
//!
//! Each ring has a reaper task: the runtime's poller wakes it when the ring's descriptor is
//! readable (completions wait), and it wakes the tasks they are for. Any thread queues
//! submissions (under a lock) and hands them to the kernel (outside it); a stream that has
//! just submitted a read or a write then takes the completions already there itself, so a
//! send that fits the socket's buffer, or a receive that finds bytes waiting, finishes
//! without a round through the reaper. A [`RingStream`] reads with `IORING_OP_RECV` into a
//! buffer of its own (512 bytes while the peer sends little, 16 KiB while reads fill it) and
//! hands the bytes out to `poll_read`; a write is copied into its own buffer and sent with
//! `IORING_OP_SEND`, and the next write or `poll_flush` waits for it. Dropping a stream
//! cancels what it still has in flight and closes the descriptor once the last of it has
//! completed.
//!
//! A connection that turns busy can leave its ring ([`RingStream::poll_promote`]): the kernel
//! installs its socket as an ordinary descriptor (`IORING_OP_FIXED_FD_INSTALL`), the caller
//! gets a tokio `TcpStream`, and the slot is closed. [`Rings::promote_below`] turns that on
//! and says which descriptors it may take.
//!
//! # Unsafe
//! The kernel reads and writes the buffers of an operation until its completion arrives, so
//! every buffer an operation points at lives in state that this crate keeps (in the ring's
//! entry table) until that completion has been reaped, and is not touched by anyone else
//! until then. The `unsafe` blocks are the pushes of such operations, the shared access to the
//! submission and completion queues (each behind its own rule, stated where it is taken),
//! reading the peer's address out of a `sockaddr_storage`, and taking ownership of a
//! descriptor the kernel has just installed.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, DestinationSlot, Fd, Fixed};
use io_uring::{IoUring, opcode, squeue};
use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Receive buffer while the peer sends little.
const IDLE_RECV: usize = 512;
/// Receive buffer while reads fill it.
const BUSY_RECV: usize = 16 * 1024;
/// The most one write takes (the rest waits for the next call).
const MAX_SEND: usize = 256 * 1024;
/// A send buffer larger than this is freed once sent.
const KEEP_SEND: usize = 4096;
/// Submission queue entries per ring (completions get four times as many).
const RING_ENTRIES: u32 = 1024;
/// `IORING_FILE_INDEX_ALLOC`: the kernel picks a free slot.
const FILE_INDEX_ALLOC: i32 = -1;
/// [`Rings::promote_below`] unset.
const NO_PROMOTION: i32 = -1;
/// Receives in a row, each within [`BUSY_GAP`] of the one before, that make a connection busy
/// enough to be given an ordinary descriptor.
const PROMOTE_AFTER: u32 = 16;
const BUSY_GAP: Duration = Duration::from_secs(1);
/// How long a connection refused a descriptor waits before it asks again.
const PROMOTION_RETRY: Duration = Duration::from_secs(5);
/// `TCP_NODELAY`'s value, read by the kernel when the option is set.
static ONE: libc::c_int = 1;

/// What a completion is for: the low byte of its `user_data` (the rest is the entry's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Accept = 1,
    Recv,
    Send,
    Shutdown,
    NoDelay,
    Cancel,
    Close,
    /// Closing a connection nobody took (its accept was abandoned); the key is its slot.
    CloseOrphan,
    /// Wakes the reaper (when the rings are dropped).
    Wake,
    /// Installing a busy connection's socket as an ordinary descriptor.
    Install,
}

impl Op {
    fn from_byte(byte: u8) -> Option<Op> {
        [
            Op::Accept,
            Op::Recv,
            Op::Send,
            Op::Shutdown,
            Op::NoDelay,
            Op::Cancel,
            Op::Close,
            Op::CloseOrphan,
            Op::Wake,
            Op::Install,
        ]
        .into_iter()
        .find(|op| *op as u8 == byte)
    }
}

/// Whether the running kernel's version is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

fn user_data(key: usize, op: Op) -> u64 {
    ((key as u64) << 8) | op as u64
}

fn errno(result: i32) -> io::Error {
    io::Error::from_raw_os_error(-result)
}

/// Rings for connections beyond the open-file limit; cheap to clone.
#[derive(Clone)]
pub struct Rings {
    shared: Arc<RingsShared>,
}

impl std::fmt::Debug for Rings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rings")
            .field("rings", &self.shared.rings.lock().len())
            .field("held", &self.held())
            .finish()
    }
}

struct RingsShared {
    rings: Mutex<Vec<Arc<Ring>>>,
    slots_per_ring: u32,
    max_rings: usize,
    /// Shared with every ring: see [`Rings::promote_below`].
    promote_below: Arc<AtomicI32>,
}

impl Drop for RingsShared {
    fn drop(&mut self) {
        for ring in self.rings.get_mut().drain(..) {
            ring.stop();
        }
    }
}

impl Rings {
    /// Opens the first ring, with `slots_per_ring` direct descriptors (at most the open-file
    /// limit), to check that io_uring works here; more are opened as tables fill, up to
    /// `max_rings`. Call it within a tokio runtime: each ring's reaper is a task of it.
    pub fn new(slots_per_ring: u32, max_rings: usize) -> io::Result<Rings> {
        if !kernel_at_least(6, 0) {
            // Slots chosen by the kernel (5.19) and cancelling by direct descriptor (6.0):
            // without them a move into a ring would fail and close the connection.
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring direct descriptors need Linux 6.0 or later",
            ));
        }
        let promote_below = Arc::new(AtomicI32::new(NO_PROMOTION));
        let first = Ring::open(slots_per_ring, 0, promote_below.clone())?;
        Ok(Rings {
            shared: Arc::new(RingsShared {
                rings: Mutex::new(vec![first]),
                slots_per_ring,
                max_rings: max_rings.max(1),
                promote_below,
            }),
        })
    }

    /// Lets a busy connection leave its ring for an ordinary descriptor (see
    /// [`RingStream::poll_promote`]) when the descriptor it gets is below `ceiling`; `None`
    /// (the default) keeps every connection where it was accepted.
    pub fn promote_below(&self, ceiling: Option<RawFd>) {
        let ceiling = ceiling.map_or(NO_PROMOTION, |c| c.max(0));
        self.shared.promote_below.store(ceiling, Ordering::Relaxed);
    }

    /// Connections accepted through the rings and not yet closed.
    pub fn held(&self) -> usize {
        self.shared
            .rings
            .lock()
            .iter()
            .map(|r| r.held.load(Ordering::Relaxed))
            .sum()
    }

    /// How many rings are open.
    pub fn ring_count(&self) -> usize {
        self.shared.rings.lock().len()
    }

    /// Accepts the next connection on `listener` (a listening TCP socket's descriptor) into a
    /// ring's file table. Fails at once with `ENFILE`, leaving the backlog as it is, when every
    /// ring is full and no more may open.
    pub async fn accept(&self, listener: RawFd) -> io::Result<(RingStream, SocketAddr)> {
        let ring = self.reserve_slot()?;
        ring.accept(listener).await
    }

    /// Moves an accepted connection's socket into a ring's file table and closes `socket`'s
    /// file descriptor, so that the connection no longer counts against the open-file limit.
    /// The slot is reserved at once: when no ring has one (every ring full and no more may
    /// open), `socket` comes back untouched.
    pub fn adopt(
        &self,
        socket: OwnedFd,
    ) -> Result<impl Future<Output = io::Result<RingStream>> + Send + 'static, OwnedFd> {
        let Ok(ring) = self.reserve_slot() else {
            return Err(socket);
        };
        let moving = ring.adopt(socket);
        Ok(async move { moving.await.map(|(stream, _)| stream) })
    }

    /// A ring with a slot reserved for the next accept.
    fn reserve_slot(&self) -> io::Result<Arc<Ring>> {
        let mut rings = self.shared.rings.lock();
        if let Some(ring) = rings.iter().find(|r| r.try_reserve()) {
            return Ok(ring.clone());
        }
        if rings.len() >= self.shared.max_rings {
            return Err(io::Error::from_raw_os_error(libc::ENFILE));
        }
        let ring = Ring::open(
            self.shared.slots_per_ring,
            rings.len(),
            self.shared.promote_below.clone(),
        )?;
        if !ring.try_reserve() {
            return Err(io::Error::from_raw_os_error(libc::ENFILE));
        }
        tracing::info!(
            rings = rings.len() + 1,
            slots = self.shared.slots_per_ring,
            held = rings
                .iter()
                .map(|r| r.held.load(Ordering::Relaxed))
                .sum::<usize>(),
            "opened another io_uring for connections beyond the open-file limit"
        );
        rings.push(ring.clone());
        Ok(ring)
    }
}

/// What the ring's entry table holds: the state its operations' buffers live in.
#[derive(Clone)]
enum Entry {
    Accept(Arc<Mutex<AcceptState>>),
    Conn(Arc<Mutex<ConnState>>),
}

#[derive(Default)]
struct Entries {
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    live: usize,
}

impl Entries {
    fn insert(&mut self, entry: Entry) -> usize {
        self.live += 1;
        match self.free.pop() {
            Some(key) => {
                self.slots[key] = Some(entry);
                key
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        }
    }

    fn get(&self, key: usize) -> Option<Entry> {
        self.slots.get(key).and_then(Clone::clone)
    }

    fn remove(&mut self, key: usize) {
        if let Some(slot) = self.slots.get_mut(key)
            && slot.take().is_some()
        {
            self.live -= 1;
            self.free.push(key);
        }
    }
}

struct Ring {
    uring: IoUring,
    /// Held while the submission queue is written.
    submitting: Mutex<()>,
    /// Held while completions are taken from the completion queue.
    reaping: Mutex<()>,
    entries: Mutex<Entries>,
    /// Connections accepted into this ring's table and not yet closed.
    held: AtomicUsize,
    /// Slots of the table in use or reserved for an accept in flight.
    used: AtomicUsize,
    /// Slots in the table.
    capacity: usize,
    stopping: AtomicBool,
    /// Descriptors below this may be given to busy connections ([`NO_PROMOTION`]: none).
    promote_below: Arc<AtomicI32>,
}

impl Drop for Ring {
    /// A ring goes when nothing holds it: its connections and its reaper are gone, as when the
    /// runtime shuts down. Operations may still be in flight then (a connection's task was
    /// dropped without its stream being closed first), and the kernel cancels them only after
    /// the ring's descriptor is closed, which follows this: their buffers are left allocated
    /// for the rest of the process rather than freed under the kernel.
    fn drop(&mut self) {
        let entries = self.entries.get_mut();
        if entries.live > 0 {
            let kept: &'static mut Entries = Box::leak(Box::new(std::mem::take(entries)));
            tracing::debug!(
                live = kept.live,
                "io_uring dropped with operations in flight"
            );
        }
    }
}

impl Ring {
    fn open(slots: u32, index: usize, promote_below: Arc<AtomicI32>) -> io::Result<Arc<Ring>> {
        // Cooperative task running: a completion for an operation a worker submitted waits
        // for that worker's next system call instead of interrupting it (a sleeping worker is
        // still woken). With every connection in a ring at 20,000 msg/s over mTLS, thingd's
        // CPU per message went from about 52 to 44 µs and its p99 from 80-110 to 9-15 ms.
        // Linux 5.19; older kernels get the default.
        let build = |cooperative: bool| {
            let mut builder = IoUring::builder();
            builder.setup_cqsize(RING_ENTRIES * 4);
            if cooperative {
                builder.setup_coop_taskrun();
            }
            builder.build(RING_ENTRIES)
        };
        let uring = build(true).or_else(|_| build(false))?;
        uring.submitter().register_files_sparse(slots)?;
        let ring = Arc::new(Ring {
            uring,
            submitting: Mutex::new(()),
            reaping: Mutex::new(()),
            entries: Mutex::new(Entries::default()),
            held: AtomicUsize::new(0),
            used: AtomicUsize::new(0),
            capacity: slots as usize,
            stopping: AtomicBool::new(false),
            promote_below,
        });
        // The ring's descriptor is readable while completions wait: the runtime's poller
        // wakes the reaper, which runs as a task like any other.
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        // SAFETY: the descriptor is the ring's, which the reaper task keeps open (it holds the
        // ring) for as long as it holds this registration.
        #[allow(unsafe_code)]
        let readable = unsafe {
            let _entered = runtime.enter();
            AsyncFd::register_with_interest(ring.uring.as_raw_fd(), Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        runtime.spawn(ring.clone().reap(readable, index));
        Ok(ring)
    }

    /// Queues `entry` and submits it.
    ///
    /// # Safety
    /// Every buffer `entry` points at must stay valid, and untouched by anyone but the kernel,
    /// until its completion has been reaped.
    #[allow(unsafe_code)]
    unsafe fn submit(&self, entry: &squeue::Entry) -> io::Result<()> {
        {
            let _submitting = self.submitting.lock();
            // SAFETY: `submitting` is held, so this is the only submission queue in use.
            let mut sq = unsafe { self.uring.submission_shared() };
            // SAFETY: the caller keeps the entry's buffers valid until its completion.
            while unsafe { sq.push(entry) }.is_err() {
                // Full: hand what is queued to the kernel to make room.
                sq.sync();
                self.uring.submitter().submit()?;
                sq.sync();
            }
            sq.sync();
        }
        // Outside the lock: the kernel takes what is queued under its own, and a send or
        // receive that can complete at once does its work inside this call. Whoever enters
        // first submits everything published so far; a later call may find nothing left.
        self.uring.submitter().submit()?;
        Ok(())
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let wake = opcode::Nop::new().build().user_data(user_data(0, Op::Wake));
        // SAFETY: a no-op points at no buffer.
        #[allow(unsafe_code)]
        if let Err(error) = unsafe { self.submit(&wake) } {
            tracing::warn!(%error, "cannot wake an io_uring's reaper to stop it");
        }
    }

    /// The reaper task: whenever the ring's descriptor is readable, takes every completion
    /// and acts on it, until the ring is stopped and holds nothing. Readiness is cleared before
    /// the queue is read, so a completion that arrives meanwhile makes it readable again.
    async fn reap(self: Arc<Ring>, readable: AsyncFd<RawFd>, index: usize) {
        loop {
            match readable.readable().await {
                Ok(mut guard) => guard.clear_ready(),
                Err(error) => {
                    tracing::error!(%error, index, "io_uring unreadable; its connections are lost");
                    return;
                }
            }
            self.take_completions(&self.reaping.lock());
            if self.completions_overflowed() {
                // The kernel keeps what did not fit in the queue until asked for it.
                if let Err(error) = self.uring.submitter().submit() {
                    tracing::warn!(%error, index, "cannot flush an io_uring's overflowed completions");
                }
                continue;
            }
            if self.stopping.load(Ordering::Relaxed) && self.entries.lock().live == 0 {
                return;
            }
        }
    }

    /// Acts on the completions waiting now, unless another thread is taking them (then it
    /// takes these too). A send, or a receive that finds bytes waiting, completes inside its
    /// submission: a stream that takes its completion at once spares the reaper a wakeup and
    /// itself a round through the scheduler.
    fn take_completions_now(&self) {
        if let Some(reaping) = self.reaping.try_lock() {
            self.take_completions(&reaping);
        }
    }

    /// Takes every completion in the queue and acts on it; `_reaping` is the queue's lock.
    fn take_completions(&self, _reaping: &parking_lot::MutexGuard<'_, ()>) {
        const BATCH: usize = 64;
        loop {
            let mut batch = [(0u64, 0i32); BATCH];
            let mut taken = 0;
            {
                // SAFETY: `reaping` is held, so this is the only completion queue in use.
                #[allow(unsafe_code)]
                let cq = unsafe { self.uring.completion_shared() };
                for (slot, c) in batch.iter_mut().zip(cq) {
                    *slot = (c.user_data(), c.result());
                    taken += 1;
                }
            }
            if taken == 0 {
                return;
            }
            for &(data, result) in &batch[..taken] {
                self.complete(data, result);
            }
        }
    }

    fn completions_overflowed(&self) -> bool {
        let _submitting = self.submitting.lock();
        // SAFETY: `submitting` is held, so this is the only submission queue in use.
        #[allow(unsafe_code)]
        let sq = unsafe { self.uring.submission_shared() };
        sq.cq_overflow()
    }

    fn complete(&self, data: u64, result: i32) {
        let key = usize::try_from(data >> 8).unwrap_or(usize::MAX);
        let Some(op) = Op::from_byte((data & 0xff) as u8) else {
            return;
        };
        match op {
            Op::Wake => return,
            Op::CloseOrphan => {
                self.closed();
                return;
            }
            _ => {}
        }
        let entry = self.entries.lock().get(key);
        match entry {
            Some(Entry::Accept(state)) => self.accepted(key, &state, result),
            Some(Entry::Conn(state)) => self.conn_completed(key, &state, op, result),
            None => tracing::warn!(key, ?op, "io_uring completion for nothing"),
        }
    }

    /// Takes a slot for an accept, if one is free.
    fn try_reserve(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < self.capacity).then_some(used + 1)
            })
            .is_ok()
    }

    /// A slot's connection has been closed (the kernel has freed the slot).
    fn closed(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
        self.used.fetch_sub(1, Ordering::AcqRel);
    }

    fn accepted(&self, key: usize, state: &Mutex<AcceptState>, mut result: i32) {
        let mut st = state.lock();
        if let Some(adopted) = st.adopted.take() {
            // The kernel wrote the slot it chose over the descriptor; the table holds the
            // socket now, so the descriptor can go.
            result = match result {
                1 => *adopted.slot,
                0 => -libc::EIO,
                error => error,
            };
            drop(adopted.socket);
        }
        if result >= 0 {
            self.held.fetch_add(1, Ordering::Relaxed);
        } else {
            // No slot was taken: give the reservation back.
            self.used.fetch_sub(1, Ordering::AcqRel);
        }
        if st.abandoned {
            if result >= 0 {
                let slot = result as u32;
                let close = opcode::Close::new(Fixed(slot))
                    .build()
                    .user_data(user_data(slot as usize, Op::CloseOrphan));
                // SAFETY: closing points at no buffer.
                #[allow(unsafe_code)]
                if let Err(error) = unsafe { self.submit(&close) } {
                    tracing::warn!(%error, "cannot close an abandoned io_uring connection");
                }
            }
        } else {
            st.result = Some(result);
        }
        let waker = st.waker.take();
        drop(st);
        // The address buffers are no longer the kernel's.
        self.entries.lock().remove(key);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn conn_completed(&self, key: usize, state: &Mutex<ConnState>, op: Op, result: i32) {
        let mut wake = Vec::new();
        let mut st = state.lock();
        st.pending -= 1;
        match op {
            Op::Recv => {
                st.recv_pending = false;
                match result {
                    n if n > 0 => {
                        let n = n as usize;
                        st.busy = n == st.recv.len();
                        st.start = 0;
                        st.end = n;
                        if self.promote_below.load(Ordering::Relaxed) != NO_PROMOTION {
                            let now = Instant::now();
                            let close = st.last_recv.is_some_and(|t| now - t <= BUSY_GAP);
                            st.streak = if close {
                                st.streak.saturating_add(1)
                            } else {
                                1
                            };
                            st.last_recv = Some(now);
                        }
                    }
                    0 => st.eof = true,
                    e => st.read_error = Some(e),
                }
                wake.extend(st.read_waker.take());
            }
            Op::Send => {
                if result < 0 {
                    st.send_pending = false;
                    st.write_error = Some(result);
                } else {
                    st.sent += result as usize;
                    if st.sent < st.send.len() && !st.dropped {
                        // A short send: the rest goes next, from the same buffer.
                        let entry = send_entry(st.slot, key, &st.send[st.sent..]);
                        // SAFETY: `send` is not touched while `send_pending` is set, and the
                        // state lives in the entry table until the connection is closed.
                        #[allow(unsafe_code)]
                        match unsafe { self.submit(&entry) } {
                            Ok(()) => st.pending += 1,
                            Err(error) => {
                                st.send_pending = false;
                                st.write_error = Some(-error.raw_os_error().unwrap_or(libc::EIO));
                            }
                        }
                    } else {
                        st.send_pending = false;
                        if st.send.capacity() > KEEP_SEND {
                            st.send = Vec::new();
                        }
                    }
                }
                if !st.send_pending {
                    wake.extend(st.write_waker.take());
                }
            }
            Op::Shutdown => {
                st.shutdown = Shutdown::Done(result);
                wake.extend(st.write_waker.take());
            }
            Op::Install => {
                if st.dropped {
                    close_installed(result);
                } else {
                    st.promotion = Promotion::Installed(result);
                }
                wake.extend(st.read_waker.take());
                wake.extend(st.write_waker.take());
            }
            Op::NoDelay => {
                if result < 0 {
                    tracing::debug!(error = %errno(result), "TCP_NODELAY not set on an io_uring connection");
                }
            }
            Op::Cancel | Op::Accept | Op::Wake | Op::CloseOrphan => {}
            Op::Close => {
                drop(st);
                self.entries.lock().remove(key);
                self.closed();
                return;
            }
        }
        self.close_if_done(key, &mut st);
        drop(st);
        for waker in wake {
            waker.wake();
        }
    }

    /// Closes a dropped connection's descriptor once nothing of it is in flight.
    fn close_if_done(&self, key: usize, st: &mut ConnState) {
        if !st.dropped || st.pending > 0 || st.close_sent {
            return;
        }
        st.close_sent = true;
        let close = opcode::Close::new(Fixed(st.slot))
            .build()
            .user_data(user_data(key, Op::Close));
        // SAFETY: closing points at no buffer.
        #[allow(unsafe_code)]
        match unsafe { self.submit(&close) } {
            Ok(()) => st.pending += 1,
            Err(error) => tracing::warn!(%error, "cannot close an io_uring connection"),
        }
    }

    fn accept(self: Arc<Ring>, listener: RawFd) -> AcceptFuture {
        let state = AcceptState {
            address: Box::new(zeroed_storage()),
            address_len: Box::new(std::mem::size_of::<libc::sockaddr_storage>() as u32),
            adopted: None,
            result: None,
            waker: None,
            abandoned: false,
        };
        self.start_accept(state, |st| {
            let address = (&mut *st.address as *mut libc::sockaddr_storage).cast();
            let address_len: *mut libc::socklen_t = &mut *st.address_len;
            opcode::Accept::new(Fd(listener), address, address_len)
                .file_index(Some(DestinationSlot::auto_target()))
                .build()
        })
    }

    fn adopt(self: Arc<Ring>, socket: OwnedFd) -> AcceptFuture {
        let state = AcceptState {
            address: Box::new(zeroed_storage()),
            address_len: Box::new(0),
            adopted: Some(Adopted {
                slot: Box::new(socket.as_raw_fd()),
                socket,
            }),
            result: None,
            waker: None,
            abandoned: false,
        };
        self.start_accept(state, |st| {
            let slot: *const RawFd = st.adopted.as_ref().map_or(std::ptr::null(), |a| &*a.slot);
            opcode::FilesUpdate::new(slot, 1)
                .offset(FILE_INDEX_ALLOC)
                .build()
        })
    }

    /// Submits the accept or move that `entry` builds from `state`'s buffers (the slot is
    /// already reserved); its future.
    fn start_accept(
        self: Arc<Ring>,
        state: AcceptState,
        entry: impl FnOnce(&mut AcceptState) -> squeue::Entry,
    ) -> AcceptFuture {
        let state = Arc::new(Mutex::new(state));
        let key = self.entries.lock().insert(Entry::Accept(state.clone()));
        let entry = entry(&mut state.lock()).user_data(user_data(key, Op::Accept));
        // SAFETY: the buffers the kernel reads and writes (the peer's address, or the
        // descriptor it replaces with the slot) are boxed in state the entry table keeps
        // until the completion, and nobody reads them before it.
        #[allow(unsafe_code)]
        let submitted = unsafe { self.submit(&entry) };
        if let Err(error) = submitted {
            self.entries.lock().remove(key);
            self.used.fetch_sub(1, Ordering::AcqRel);
            let mut st = state.lock();
            st.adopted = None;
            st.result = Some(-error.raw_os_error().unwrap_or(libc::EIO));
        }
        AcceptFuture {
            ring: self,
            state,
            done: false,
        }
    }
}

struct Adopted {
    slot: Box<RawFd>,
    /// Kept open until the table holds the socket.
    socket: OwnedFd,
}

/// The descriptor `IORING_OP_FIXED_FD_INSTALL` gave, when its `result` is one.
fn installed(result: i32) -> Option<OwnedFd> {
    // SAFETY: the kernel has just installed this descriptor for the stream that asked, it is
    // taken once (the state holding `result` moves on at once), and nothing else knows it.
    #[allow(unsafe_code)]
    (result >= 0).then(|| unsafe { OwnedFd::from_raw_fd(result) })
}

/// Closes a descriptor `IORING_OP_FIXED_FD_INSTALL` gave (when `result` is one) that nobody
/// will use.
fn close_installed(result: i32) {
    drop(installed(result));
}

/// A send of `bytes` on the connection in `slot` (entry `key`); no SIGPIPE if the peer is gone.
fn send_entry(slot: u32, key: usize, bytes: &[u8]) -> squeue::Entry {
    opcode::Send::new(Fixed(slot), bytes.as_ptr(), bytes.len() as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data(key, Op::Send))
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: `sockaddr_storage` is plain old data; all zeroes is a valid value.
    #[allow(unsafe_code)]
    unsafe {
        std::mem::zeroed()
    }
}

/// The peer's address, as `accept` wrote it.
fn peer_address(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the kernel wrote a `sockaddr_in` here, and
            // `sockaddr_storage` is large and aligned enough for any address.
            #[allow(unsafe_code)]
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for `sockaddr_in6`.
            #[allow(unsafe_code)]
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// An accept, or the move of an accepted socket into the table, in flight.
struct AcceptState {
    address: Box<libc::sockaddr_storage>,
    address_len: Box<libc::socklen_t>,
    /// Set for a move: the descriptor, which the kernel replaces with the slot it chose.
    adopted: Option<Adopted>,
    result: Option<i32>,
    waker: Option<Waker>,
    /// The future was dropped first: the reaper closes what arrives.
    abandoned: bool,
}

struct AcceptFuture {
    ring: Arc<Ring>,
    state: Arc<Mutex<AcceptState>>,
    done: bool,
}

impl Drop for AcceptFuture {
    fn drop(&mut self) {
        if !self.done {
            let mut st = self.state.lock();
            match st.result {
                // Accepted, and nobody will take it: close it here.
                Some(slot) if slot >= 0 => {
                    st.abandoned = true;
                    let close = opcode::Close::new(Fixed(slot as u32))
                        .build()
                        .user_data(user_data(slot as usize, Op::CloseOrphan));
                    // SAFETY: closing points at no buffer.
                    #[allow(unsafe_code)]
                    if let Err(error) = unsafe { self.ring.submit(&close) } {
                        tracing::warn!(%error, "cannot close an abandoned io_uring connection");
                    }
                }
                Some(_) => {}
                None => st.abandoned = true,
            }
        }
    }
}

impl std::future::Future for AcceptFuture {
    type Output = io::Result<(RingStream, SocketAddr)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.state.lock();
        let Some(result) = st.result else {
            if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        };
        let peer = peer_address(&st.address, *st.address_len);
        drop(st);
        self.done = true;
        if result < 0 {
            return Poll::Ready(Err(errno(result)));
        }
        let stream = RingStream::new(self.ring.clone(), result as u32);
        let peer = peer.unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        Poll::Ready(Ok((stream, peer)))
    }
}

enum Shutdown {
    NotAsked,
    Pending,
    /// The result of the shutdown operation.
    Done(i32),
}

/// Where a connection stands on its way out of the ring (see [`RingStream::poll_promote`]).
#[derive(Debug, Clone, Copy)]
enum Promotion {
    /// Not asked for, or asked for and refused.
    Idle,
    /// Refused; not asked for again before this.
    NotBefore(Instant),
    /// `IORING_OP_FIXED_FD_INSTALL` in flight: reads and writes wait.
    Installing,
    /// Its result: a descriptor, or an error.
    Installed(i32),
    /// The socket has its own descriptor now and the slot is being closed.
    Moved,
}

struct ConnState {
    /// The direct descriptor.
    slot: u32,
    /// The kernel's while `recv_pending`; otherwise `start..end` is what arrived unread.
    recv: Vec<u8>,
    recv_pending: bool,
    start: usize,
    end: usize,
    /// The last receive filled its buffer.
    busy: bool,
    eof: bool,
    read_error: Option<i32>,
    read_waker: Option<Waker>,
    /// The kernel's while `send_pending`; `sent` of it has gone.
    send: Vec<u8>,
    sent: usize,
    send_pending: bool,
    write_error: Option<i32>,
    write_waker: Option<Waker>,
    shutdown: Shutdown,
    /// Receives in a row, each within [`BUSY_GAP`] of the one before (counted only while
    /// promotion is on), and when the last arrived.
    streak: u32,
    last_recv: Option<Instant>,
    promotion: Promotion,
    /// Operations submitted and not yet completed.
    pending: u32,
    dropped: bool,
    close_sent: bool,
}

impl ConnState {
    /// Whether reads and writes must wait for a move out of the ring. A move whose descriptor
    /// arrived but was not taken (a read or write came first) is given up: the descriptor is
    /// closed and the connection stays.
    fn moving(&mut self) -> bool {
        match self.promotion {
            Promotion::Installing => true,
            Promotion::Installed(result) => {
                close_installed(result);
                self.promotion = Promotion::NotBefore(Instant::now() + PROMOTION_RETRY);
                false
            }
            _ => false,
        }
    }

    /// Whether the connection has been busy enough, and is quiet enough right now (nothing in
    /// flight, nothing unread, no error, end or shutdown), to move out of the ring.
    fn ready_to_move(&self) -> bool {
        let refused = matches!(self.promotion, Promotion::NotBefore(t) if Instant::now() < t);
        !refused
            && self.streak >= PROMOTE_AFTER
            && self.pending == 0
            && self.start == self.end
            && !self.eof
            && self.read_error.is_none()
            && self.write_error.is_none()
            && matches!(self.shutdown, Shutdown::NotAsked)
    }
}

/// A TCP connection held as a direct descriptor of an io_uring (see the crate docs).
pub struct RingStream {
    ring: Arc<Ring>,
    key: usize,
    state: Arc<Mutex<ConnState>>,
}

impl std::fmt::Debug for RingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingStream")
            .field("slot", &self.state.lock().slot)
            .finish()
    }
}

impl RingStream {
    fn new(ring: Arc<Ring>, slot: u32) -> RingStream {
        let state = Arc::new(Mutex::new(ConnState {
            slot,
            recv: Vec::new(),
            recv_pending: false,
            start: 0,
            end: 0,
            busy: false,
            eof: false,
            read_error: None,
            read_waker: None,
            send: Vec::new(),
            sent: 0,
            send_pending: false,
            write_error: None,
            write_waker: None,
            shutdown: Shutdown::NotAsked,
            streak: 0,
            last_recv: None,
            promotion: Promotion::Idle,
            pending: 0,
            dropped: false,
            close_sent: false,
        }));
        let key = ring.entries.lock().insert(Entry::Conn(state.clone()));
        let stream = RingStream { ring, key, state };
        stream.set_nodelay();
        stream
    }

    /// Asks for `TCP_NODELAY` (small MQTT packets must not wait for the peer's ACK).
    fn set_nodelay(&self) {
        let mut st = self.state.lock();
        let entry = opcode::SetSockOpt::new(
            Fixed(st.slot),
            libc::IPPROTO_TCP as u32,
            libc::TCP_NODELAY as u32,
            (&raw const ONE).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
        .build()
        .user_data(user_data(self.key, Op::NoDelay));
        // SAFETY: the option's value is a static.
        #[allow(unsafe_code)]
        match unsafe { self.ring.submit(&entry) } {
            Ok(()) => st.pending += 1,
            Err(error) => tracing::debug!(%error, "TCP_NODELAY not asked for"),
        }
    }

    /// Moves a busy connection out of its ring onto an ordinary descriptor of its own, when
    /// [`Rings::promote_below`] allows it and the descriptor the kernel gives is below that
    /// ceiling: a ring-held connection costs more per read and write than one the runtime's
    /// poller watches, which matters for the few busy connections among many idle ones.
    ///
    /// Call it before reading or writing. `Ready(None)`: the connection stays in the ring
    /// (promotion is off, it has not been busy, something is in flight or unread, or no
    /// descriptor was free below the ceiling; a refused connection asks again after a few
    /// seconds). `Pending`: the move is under way and the task is woken when it ends; reads
    /// and writes wait until then. `Ready(Some(stream))`: the connection is `stream` now, its
    /// slot is being closed, and this `RingStream` must only be dropped.
    pub fn poll_promote(&mut self, cx: &mut Context<'_>) -> Poll<Option<tokio::net::TcpStream>> {
        let below = self.ring.promote_below.load(Ordering::Relaxed);
        if below == NO_PROMOTION {
            return Poll::Ready(None);
        }
        let mut st = self.state.lock();
        match st.promotion {
            Promotion::Moved => return Poll::Ready(None),
            Promotion::Installing | Promotion::Installed(_) => {}
            Promotion::Idle | Promotion::NotBefore(_) => {
                if !st.ready_to_move() {
                    return Poll::Ready(None);
                }
                let entry = opcode::FixedFdInstall::new(Fixed(st.slot), 0)
                    .build()
                    .user_data(user_data(self.key, Op::Install));
                // SAFETY: installing a descriptor points at no buffer.
                #[allow(unsafe_code)]
                if let Err(error) = unsafe { self.ring.submit(&entry) } {
                    tracing::debug!(%error, "cannot ask for a descriptor for a busy io_uring connection");
                    st.promotion = Promotion::NotBefore(Instant::now() + PROMOTION_RETRY);
                    return Poll::Ready(None);
                }
                st.promotion = Promotion::Installing;
                st.pending += 1;
                // Installing completes inside its submission.
                drop(st);
                self.ring.take_completions_now();
                st = self.state.lock();
            }
        }
        let Promotion::Installed(result) = st.promotion else {
            RingStream::keep_waker(&mut st.read_waker, cx);
            RingStream::keep_waker(&mut st.write_waker, cx);
            return Poll::Pending;
        };
        st.promotion = Promotion::NotBefore(Instant::now() + PROMOTION_RETRY);
        let Some(fd) = installed(result) else {
            tracing::debug!(error = %errno(result), "no descriptor for a busy io_uring connection");
            return Poll::Ready(None);
        };
        if result >= below || st.pending > 0 {
            // Past the ceiling (the descriptors below it are taken), or something got in
            // flight meanwhile: stay, and let the descriptor go.
            return Poll::Ready(None);
        }
        let std = std::net::TcpStream::from(fd);
        let stream = match std
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(std))
        {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "cannot register a promoted io_uring connection");
                return Poll::Ready(None);
            }
        };
        // The descriptor holds the socket now: free the slot.
        let close = opcode::Close::new(Fixed(st.slot))
            .build()
            .user_data(user_data(self.key, Op::Close));
        // SAFETY: closing points at no buffer.
        #[allow(unsafe_code)]
        if let Err(error) = unsafe { self.ring.submit(&close) } {
            tracing::debug!(%error, "cannot free the slot of a promoted io_uring connection");
            return Poll::Ready(None);
        }
        st.pending += 1;
        st.close_sent = true;
        st.dropped = true;
        st.promotion = Promotion::Moved;
        Poll::Ready(Some(stream))
    }

    /// Stores `cx`'s waker in `slot` unless it is already there.
    fn keep_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
    }
}

impl Drop for RingStream {
    fn drop(&mut self) {
        let mut st = self.state.lock();
        match st.promotion {
            // The slot's close is in flight and the socket is someone else's.
            Promotion::Moved => return,
            Promotion::Installed(result) => close_installed(result),
            _ => {}
        }
        st.dropped = true;
        st.read_waker = None;
        st.write_waker = None;
        if st.pending > 0 {
            // Receives wait for the peer and sends for its window: end them now.
            let cancel = opcode::AsyncCancel2::new(CancelBuilder::fd(Fixed(st.slot)).all())
                .build()
                .user_data(user_data(self.key, Op::Cancel));
            // SAFETY: cancelling points at no buffer.
            #[allow(unsafe_code)]
            match unsafe { self.ring.submit(&cancel) } {
                Ok(()) => st.pending += 1,
                Err(error) => tracing::warn!(%error, "cannot cancel an io_uring connection's I/O"),
            }
        }
        self.ring.close_if_done(self.key, &mut st);
    }
}

impl RingStream {
    /// What a read can return without waiting: bytes already received, an error or the end.
    fn read_at_once(st: &mut ConnState, buf: &mut ReadBuf<'_>) -> Option<io::Result<()>> {
        if st.start < st.end {
            let n = (st.end - st.start).min(buf.remaining());
            let start = st.start;
            buf.put_slice(&st.recv[start..start + n]);
            st.start += n;
            return Some(Ok(()));
        }
        if let Some(e) = st.read_error {
            return Some(Err(errno(e)));
        }
        st.eof.then_some(Ok(()))
    }
}

impl AsyncRead for RingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let this = self.get_mut();
        let mut st = this.state.lock();
        if let Some(read) = RingStream::read_at_once(&mut st, buf) {
            return Poll::Ready(read);
        }
        if st.moving() {
            RingStream::keep_waker(&mut st.read_waker, cx);
            return Poll::Pending;
        }
        if !st.recv_pending {
            let want = if st.busy { BUSY_RECV } else { IDLE_RECV };
            if st.recv.len() != want {
                st.recv = vec![0; want];
            }
            let entry = opcode::Recv::new(Fixed(st.slot), st.recv.as_mut_ptr(), want as u32)
                .build()
                .user_data(user_data(this.key, Op::Recv));
            // SAFETY: `recv` is not touched while `recv_pending` is set, and the state lives
            // in the entry table until the connection is closed.
            #[allow(unsafe_code)]
            unsafe { this.ring.submit(&entry) }?;
            st.recv_pending = true;
            st.pending += 1;
            // Bytes that were already waiting have arrived with the submission.
            drop(st);
            this.ring.take_completions_now();
            st = this.state.lock();
            if let Some(read) = RingStream::read_at_once(&mut st, buf) {
                return Poll::Ready(read);
            }
        }
        RingStream::keep_waker(&mut st.read_waker, cx);
        Poll::Pending
    }
}

impl AsyncWrite for RingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        let mut st = this.state.lock();
        if let Some(e) = st.write_error {
            return Poll::Ready(Err(errno(e)));
        }
        if st.send_pending || st.moving() {
            RingStream::keep_waker(&mut st.write_waker, cx);
            return Poll::Pending;
        }
        let n = data.len().min(MAX_SEND);
        st.send.clear();
        st.send.extend_from_slice(&data[..n]);
        st.sent = 0;
        let entry = send_entry(st.slot, this.key, &st.send);
        // SAFETY: `send` is not touched while `send_pending` is set, and the state lives in
        // the entry table until the connection is closed.
        #[allow(unsafe_code)]
        unsafe { this.ring.submit(&entry) }?;
        st.send_pending = true;
        st.pending += 1;
        // A send that fits the socket's buffer has completed inside the submission: taking
        // its completion now lets the flush that follows finish at once.
        drop(st);
        this.ring.take_completions_now();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.state.lock();
        if let Some(e) = st.write_error {
            return Poll::Ready(Err(errno(e)));
        }
        if st.send_pending {
            RingStream::keep_waker(&mut st.write_waker, cx);
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut st = this.state.lock();
        if st.send_pending {
            RingStream::keep_waker(&mut st.write_waker, cx);
            return Poll::Pending;
        }
        match st.shutdown {
            Shutdown::Done(result) if result < 0 && result != -libc::ENOTCONN => {
                Poll::Ready(Err(errno(result)))
            }
            Shutdown::Done(_) => Poll::Ready(Ok(())),
            Shutdown::Pending => {
                RingStream::keep_waker(&mut st.write_waker, cx);
                Poll::Pending
            }
            Shutdown::NotAsked => {
                let entry = opcode::Shutdown::new(Fixed(st.slot), libc::SHUT_WR)
                    .build()
                    .user_data(user_data(this.key, Op::Shutdown));
                // SAFETY: a shutdown points at no buffer.
                #[allow(unsafe_code)]
                unsafe { this.ring.submit(&entry) }?;
                st.shutdown = Shutdown::Pending;
                st.pending += 1;
                RingStream::keep_waker(&mut st.write_waker, cx);
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.unwrap()
    }

    /// Waits (boundedly) until `rings` holds `n` connections.
    async fn until_held(rings: &Rings, n: usize) {
        for _ in 0..200 {
            if rings.held() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("held {} connections, expected {n}", rings.held());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn echoes_a_megabyte_both_ways_and_sees_the_end_of_the_stream() {
        let rings = Rings::new(8, 1).unwrap();
        let listener = listener().await;
        let addr = listener.local_addr().unwrap();
        let data: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let client = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let local = tcp.local_addr().unwrap();
            let (mut rd, mut wr) = tcp.split();
            let mut back = Vec::new();
            let (w, r) = tokio::join!(
                async {
                    wr.write_all(&sent).await.unwrap();
                    wr.shutdown().await.unwrap();
                },
                rd.read_to_end(&mut back)
            );
            let () = w;
            r.unwrap();
            (local, back)
        });
        let (mut stream, peer) = rings.accept(listener.as_raw_fd()).await.unwrap();
        assert_eq!(rings.held(), 1);
        let mut buf = vec![0u8; 10_000];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n]).await.unwrap();
        }
        stream.flush().await.unwrap();
        stream.shutdown().await.unwrap();
        let (local, back) = client.await.unwrap();
        assert_eq!(peer, local, "accept reports the client's address");
        assert_eq!(back.len(), data.len());
        assert!(back == data, "the echo differs from what was sent");
        drop(stream);
        until_held(&rings, 0).await;
    }

    /// On one thread nothing else runs between these polls, so the reaper cannot have
    /// delivered the completions: the stream must have taken them itself.
    #[tokio::test(flavor = "current_thread")]
    async fn a_read_of_waiting_bytes_and_a_write_that_fits_finish_without_waiting() {
        let rings = Rings::new(4, 1).unwrap();
        let listener = listener().await;
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut stream, _) = rings.accept(listener.as_raw_fd()).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        let mut cx = Context::from_waker(Waker::noop());
        let mut got = [0u8; 16];
        let mut buf = ReadBuf::new(&mut got);
        let read = Pin::new(&mut stream).poll_read(&mut cx, &mut buf);
        assert!(
            matches!(read, Poll::Ready(Ok(()))),
            "bytes already in the socket are read at the first poll, got {read:?}"
        );
        assert_eq!(buf.filled(), b"ping");
        let write = Pin::new(&mut stream).poll_write(&mut cx, b"pong");
        assert!(matches!(write, Poll::Ready(Ok(4))), "got {write:?}");
        let flush = Pin::new(&mut stream).poll_flush(&mut cx);
        assert!(
            matches!(flush, Poll::Ready(Ok(()))),
            "a small send is done by the time it is flushed, got {flush:?}"
        );
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");
        drop(stream);
        until_held(&rings, 0).await;
    }

    /// Sends `there` from `client` to `server` and then `back` the other way, and checks that
    /// each arrives whole.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        client: &mut TcpStream,
        server: &mut S,
        there: &[u8],
        back: &[u8],
    ) {
        client.write_all(there).await.unwrap();
        let mut got = vec![0u8; there.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, there);
        server.write_all(back).await.unwrap();
        server.flush().await.unwrap();
        let mut got = vec![0u8; back.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, back);
    }

    /// Echoes `rounds` one-byte messages, one at a time, so that each is a receive of its own.
    async fn ping_pong(client: &mut TcpStream, stream: &mut RingStream, rounds: u8) {
        for i in 0..rounds {
            exchange(client, stream, &[i], &[i]).await;
        }
    }

    /// What `poll_promote` ends with (installing a descriptor usually completes inside its
    /// submission, unless the reaper takes the completion first).
    async fn promote_now(stream: &mut RingStream) -> Option<TcpStream> {
        let promoting = std::future::poll_fn(|cx| stream.poll_promote(cx));
        tokio::time::timeout(Duration::from_secs(5), promoting)
            .await
            .expect("installing a descriptor ends")
    }

    /// A client connected to a connection accepted into `rings`.
    async fn ring_pair(rings: &Rings, listener: &TcpListener) -> (TcpStream, RingStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = rings.accept(listener.as_raw_fd()).await.unwrap();
        (client, stream)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_connection_moves_onto_a_descriptor_below_the_ceiling() {
        let rings = Rings::new(4, 1).unwrap();
        let listener = listener().await;
        rings.promote_below(Some(RawFd::MAX));

        let (mut client, mut quiet) = ring_pair(&rings, &listener).await;
        ping_pong(&mut client, &mut quiet, 2).await;
        assert!(
            promote_now(&mut quiet).await.is_none(),
            "two reads do not make a connection busy"
        );

        let (mut client, mut busy) = ring_pair(&rings, &listener).await;
        ping_pong(&mut client, &mut busy, 20).await;
        let mut tcp = promote_now(&mut busy)
            .await
            .expect("a busy connection gets a descriptor");
        drop(busy);
        until_held(&rings, 1).await;
        let link = format!("/proc/self/fd/{}", tcp.as_raw_fd());
        let target = std::fs::read_link(&link).unwrap();
        assert!(target.to_string_lossy().starts_with("socket:"));

        exchange(&mut client, &mut tcp, b"after", b"moved").await;
        drop(tcp);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.is_empty(),
            "closing the descriptor closes the connection"
        );
        drop(quiet);
        until_held(&rings, 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_connection_stays_in_its_ring_without_a_descriptor_below_the_ceiling() {
        let rings = Rings::new(4, 1).unwrap();
        let listener = listener().await;
        let (mut client, mut stream) = ring_pair(&rings, &listener).await;
        ping_pong(&mut client, &mut stream, 20).await;
        assert!(
            promote_now(&mut stream).await.is_none(),
            "promotion is off by default"
        );

        rings.promote_below(Some(0));
        ping_pong(&mut client, &mut stream, 20).await;
        let before = std::fs::read_dir("/proc/self/fd").unwrap().count();
        assert!(
            promote_now(&mut stream).await.is_none(),
            "every descriptor is at or above a ceiling of 0"
        );
        let after = std::fs::read_dir("/proc/self/fd").unwrap().count();
        assert!(after <= before, "the refused descriptor is closed again");
        ping_pong(&mut client, &mut stream, 2).await;
        assert_eq!(
            rings.held(),
            1,
            "a refused connection stays and keeps working"
        );
        drop(stream);
        until_held(&rings, 0).await;
    }

    #[test]
    fn the_kernel_version_is_read() {
        assert!(kernel_at_least(2, 6), "any Linux this runs on is past 2.6");
        assert!(!kernel_at_least(999, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_adopted_socket_gives_up_its_descriptor_and_keeps_working() {
        let rings = Rings::new(4, 1).unwrap();
        let listener = listener().await;
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let socket = OwnedFd::from(tcp.into_std().unwrap());
        let fd = socket.as_raw_fd();
        let link = format!("/proc/self/fd/{fd}");
        let before = std::fs::read_link(&link).unwrap();
        assert!(before.to_string_lossy().starts_with("socket:"));

        let mut stream = rings.adopt(socket).expect("a free slot").await.unwrap();
        assert_eq!(rings.held(), 1);
        assert_ne!(
            std::fs::read_link(&link).ok(),
            Some(before),
            "the socket's descriptor is closed once the ring holds it"
        );
        exchange(&mut client, &mut stream, b"hello", b"world").await;
        drop(stream);
        until_held(&rings, 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_tables_open_another_ring_up_to_the_maximum_and_a_close_makes_room() {
        let rings = Rings::new(2, 2).unwrap();
        let listener = listener().await;
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut streams = Vec::new();
        for _ in 0..4 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            streams.push(rings.accept(listener.as_raw_fd()).await.unwrap().0);
        }
        assert_eq!(rings.ring_count(), 2);
        assert_eq!(rings.held(), 4);

        clients.push(TcpStream::connect(addr).await.unwrap());
        let refused = rings.accept(listener.as_raw_fd()).await.unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::ENFILE));
        // A move into a full set of rings hands the socket back as it was.
        let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let spare_fd = spare.as_raw_fd();
        let returned = rings.adopt(OwnedFd::from(spare)).err().expect("no slot");
        assert_eq!(returned.as_raw_fd(), spare_fd);
        assert_eq!(rings.ring_count(), 2, "no ring beyond the maximum");

        drop(streams.remove(0));
        until_held(&rings, 3).await;
        let (mut fifth, _) = rings.accept(listener.as_raw_fd()).await.unwrap();
        assert_eq!(rings.held(), 4);

        // The fifth connection works.
        clients[4].write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        fifth.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        // The first client sees its connection closed.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), clients[0].read_to_end(&mut rest))
            .await
            .expect("the closed connection's client sees its end")
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_a_stream_that_waits_to_read_closes_its_connection() {
        let rings = Rings::new(4, 1).unwrap();
        let listener = listener().await;
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut stream, _) = rings.accept(listener.as_raw_fd()).await.unwrap();
        let mut buf = [0u8; 16];
        // A read that finds nothing leaves a receive in flight.
        let waited = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await;
        assert!(waited.is_err(), "nothing was sent, so nothing is read");
        drop(stream);
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the client sees its connection end")
            .unwrap();
        assert_eq!(n, 0);
        until_held(&rings, 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_after_the_peer_is_gone_fails_instead_of_hanging() {
        let rings = Rings::new(4, 1).unwrap();
        let listener = listener().await;
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut stream, _) = rings.accept(listener.as_raw_fd()).await.unwrap();
        drop(client);
        let chunk = vec![7u8; 64 * 1024];
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                stream.write_all(&chunk).await?;
                stream.flush().await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), io::Error>(())
        })
        .await
        .expect("writing to a closed peer ends");
        assert!(outcome.is_err());
    }
}
