//! The feeder: one Rust thread per queue and process that moves already-pickled messages into
//! the ring when `put()` found it full, so that `put()` on an unbounded queue never blocks (as
//! the stdlib's Python feeder thread does). It never touches Python objects and blocks every
//! signal. It starts lazily, on the first message that does not fit at once.
//!
//! Fork rules: a forked child must not use its parent's feeder (the thread does not exist
//! there and its mutex may be held forever). [`FeederSlot`] keys the feeder by pid: in a child,
//! the inherited one is abandoned, never locked or freed, and the child starts without a
//! backlog, as the stdlib's `Queue._after_fork` does.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::channel::{Channel, Large};
use super::{Push, SHUTDOWN_IMMEDIATE};
use crate::platform;
use crate::sync::Me;

/// How long the feeder spins for room before it sleeps.
const FEED_SPIN: Duration = Duration::from_micros(50);
/// Longest the feeder spins for a burst's worth of room while consumers keep popping.
const FEED_BURST: Duration = Duration::from_micros(500);
/// Longest a feeder waits for the ring to drain to half before it competes for each freed
/// slot instead (see `deliver`).
const HALF_SLICE: Duration = Duration::from_millis(5);
/// How long the feeder sleeps on the ring before it re-checks for cancellation.
const FEED_SLICE: Duration = Duration::from_millis(50);

/// A message waiting in this process for room in the ring. It stays in memory (a message
/// too large for the ring gets its memfd only when it is about to be sent), so a long
/// backlog costs no descriptors.
pub struct Pending {
    tag: u8,
    data: Vec<u8>,
    /// Where a memfd made for it puts the message, and whether it seals the contents (see
    /// [`Large::new`]).
    offset: usize,
    frozen: bool,
    large: Option<Large>,
}

impl Pending {
    /// A message of `data` tagged `tag`, which goes into a memfd as `Large::new(_, offset,
    /// frozen)` makes it if it needs one.
    pub fn new(tag: u8, data: Vec<u8>, offset: usize, frozen: bool) -> Pending {
        Pending {
            tag,
            data,
            offset,
            frozen,
            large: None,
        }
    }

    fn push(&mut self, chan: &Channel, me: &Me) -> io::Result<Push> {
        let links = chan.links();
        let ring = chan.ring();
        if self.data.len() <= ring.max_payload() {
            return ring.try_push(me, Some(&links), self.tag, &[&self.data]);
        }
        if self.large.is_none() {
            self.large = Some(Large::new(&[&self.data], self.offset, self.frozen)?);
        }
        let msg = self.large.as_ref().expect("made above");
        ring.try_push_fd(me, &links, self.tag, msg.fd.as_fd(), msg.len)
    }
}

#[derive(Default)]
struct State {
    backlog: VecDeque<Pending>,
    /// No more messages will come: exit once the backlog is in the ring.
    closed: bool,
    /// The thread was started (it is running unless `exited`).
    started: bool,
    exited: bool,
    /// The thread sleeps on `wake` (so a new message must wake it).
    idle: bool,
    /// The last error the thread met (the message it was moving is dropped).
    error: Option<String>,
}

struct Shared {
    chan: Arc<Channel>,
    state: Mutex<State>,
    /// Signalled when a message is queued or the feeder is closed/cancelled.
    wake: Condvar,
    /// Signalled when a message reached the ring or the thread exited.
    progress: Condvar,
    /// Messages queued or in the thread's hands, not yet in the ring (lock-free reads).
    pending: AtomicUsize,
    /// This process's slot in the ring's backlog table, which counts `pending` for other
    /// processes (claimed when the thread starts; `None`: not counted there).
    slot: std::sync::OnceLock<Option<usize>>,
    /// Drop the backlog and exit (immediate shutdown).
    cancelled: AtomicBool,
    /// Whether the process waits for this feeder at exit (false after `cancel_join_thread`).
    join_at_exit: AtomicBool,
    /// The process that runs the thread.
    pid: i32,
}

impl Shared {
    /// Counts `n` messages into the backlog, here and in the ring's table.
    fn count_in(&self, n: usize) {
        if let Some(&Some(slot)) = self.slot.get() {
            self.chan.ring().backlog_add(slot, n as u64);
        }
        self.pending.fetch_add(n, Ordering::AcqRel);
    }

    /// Counts `n` messages out of the backlog (pushed and published, or dropped).
    fn count_out(&self, n: usize) {
        self.pending.fetch_sub(n, Ordering::AcqRel);
        if let Some(&Some(slot)) = self.slot.get() {
            self.chan.ring().backlog_sub(slot, n as u64);
        }
    }

    /// Counts out `n` messages dropped without reaching the ring. Dropped by an immediate
    /// shutdown, they count as tasks done, as the messages it drains from the ring do (so
    /// `JoinableQueue.join()` returns); dropped by `cancel_join_thread`, they are lost, as
    /// with the stdlib.
    fn dropped(&self, n: usize) {
        let ring = self.chan.ring();
        if ring.shutdown_state() == SHUTDOWN_IMMEDIATE {
            ring.tasks_done(n as u32);
        }
        self.count_out(n);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state has no invariant a panic could break halfway: use it after a poison.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The thread: claims its backlog slot (then answers `claimed`, which `enqueue` waits
    /// for before it counts anything), and moves the backlog into the ring until closed.
    fn run(&self, claimed: std::sync::mpsc::SyncSender<()>) {
        let _ = platform::block_all_signals_in_this_thread();
        let owner = super::thread_owner();
        let slot = owner.and_then(|o| self.chan.ring().claim_backlog_slot(o));
        let _ = self.slot.set(slot);
        let _ = claimed.send(());
        drop(claimed);
        let me = Me::current();
        loop {
            // The whole backlog at once: puts meanwhile queue behind it (FIFO), and neither
            // side takes the mutex per message.
            let batch = {
                let mut st = self.state();
                loop {
                    if self.cancelled.load(Ordering::Acquire) {
                        let n = st.backlog.len();
                        st.backlog.clear();
                        self.dropped(n);
                    }
                    if !st.backlog.is_empty() {
                        break Some(std::mem::take(&mut st.backlog));
                    }
                    if st.closed || self.cancelled.load(Ordering::Acquire) {
                        break None;
                    }
                    st.idle = true;
                    st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                    st.idle = false;
                }
            };
            let Some(batch) = batch else { break };
            for item in batch {
                if self.deliver(&me, item) {
                    self.count_out(1);
                } else {
                    self.dropped(1);
                }
            }
            let _g = self.state();
            self.progress.notify_all();
        }
        if let (Some(&Some(slot)), Some(owner)) = (self.slot.get(), owner) {
            // Nothing left to count: every message was counted out above.
            self.chan.ring().release_backlog_slot(slot, owner);
        }
        let mut st = self.state();
        st.exited = true;
        self.progress.notify_all();
    }

    /// Waits at most `slice` for the thread to have exited (true), or for it never to have
    /// started. Progress (a message delivered) also ends the wait early.
    fn wait_exited(&self, slice: Duration) -> bool {
        let st = self.state();
        if !st.started || st.exited {
            return true;
        }
        let (st, _) = self
            .progress
            .wait_timeout(st, slice)
            .unwrap_or_else(|p| p.into_inner());
        !st.started || st.exited
    }

    fn close(&self) {
        let mut st = self.state();
        st.closed = true;
        self.wake.notify_one();
    }

    /// Pushes `item`, waiting for room, unless the feeder is cancelled or the queue shut
    /// down immediately, or an error stops it (then the item is dropped: false).
    fn deliver(&self, me: &Me, mut item: Pending) -> bool {
        let ring = self.chan.ring();
        // Whether to wait for half the ring rather than for each pop: until a wait for half
        // ends with the ring still fuller, which happens when other putters (without a
        // feeder: pool workers writing results) take each freed slot.
        let mut patient = true;
        loop {
            if self.cancelled.load(Ordering::Acquire) || ring.shutdown_state() == SHUTDOWN_IMMEDIATE
            {
                return false;
            }
            let seen = ring.not_full_seq();
            match item.push(&self.chan, me) {
                Ok(Push::Done) => return true,
                Ok(Push::FullItems) => {
                    // Spin first: a sleeping feeder costs every consumer a wake call per pop.
                    if !ring.spin_not_full(seen, FEED_SPIN) {
                        let _ = ring.wait_not_full(seen, FEED_SLICE);
                    }
                }
                Ok(Push::FullBytes)
                    if patient && ring.fits_half(item.data.len()) && !ring.has_full_sleepers() =>
                {
                    // Sleep until the consumers drained half the ring, then refill it in
                    // one go (see `Ring::wait_half_empty`): spinning here would take a CPU
                    // from the consumers whenever processes outnumber CPUs. Not while other
                    // putters wait for each pop: they would refill every freed slot and the
                    // ring would never drain to half.
                    let _ = ring.wait_half_empty(HALF_SLICE);
                    patient = ring.half_empty();
                }
                Ok(Push::FullBytes) => {
                    // A message too large to be sure to fit in half the ring, or other
                    // putters compete for room: room for it while the consumers keep popping
                    // (see `Ring::spin_for_room`); a sleep only once they stop.
                    let want = ring.burst_room(item.data.len());
                    if !ring.spin_for_room(want, FEED_SPIN, FEED_BURST) {
                        let seen = ring.not_full_seq();
                        if ring.free_bytes() < want {
                            let _ = ring.wait_not_full(seen, FEED_SLICE);
                        }
                    }
                }
                Ok(Push::TooBig) => {
                    // `put` sends messages above the ring's limit as `Large`: unreachable.
                    self.state().error = Some("message too large for the ring".into());
                    return false;
                }
                Err(e) => {
                    self.state().error = Some(e.to_string());
                    return false;
                }
            }
        }
    }
}

/// Feeders started by this process (and, in a forked child, its parent's: skipped by pid).
/// Locked only by interpreter threads holding the GIL, so no thread holds it across a fork.
static LIVE: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<Weak<Shared>>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running feeder that the process waits for at exit.
pub struct ExitJoin(Arc<Shared>);

impl ExitJoin {
    /// Waits at most `slice` for the feeder to have exited (true).
    pub fn wait_exited(&self, slice: Duration) -> bool {
        self.0.wait_exited(slice)
    }
}

/// This process's feeders to wait for at exit: each is closed (no more messages come) and
/// returned. Call with the GIL held (see [`LIVE`]).
pub fn exit_joins() -> Vec<ExitJoin> {
    let pid = platform::cached_pid();
    let mut live = live();
    live.retain(|w| w.strong_count() > 0);
    let mut out = Vec::new();
    for s in live.iter().filter_map(Weak::upgrade) {
        if s.pid != pid || !s.join_at_exit.load(Ordering::Acquire) {
            continue;
        }
        s.close();
        out.push(ExitJoin(s));
    }
    out
}

/// One process's feeder for one queue.
pub struct Feeder {
    pid: i32,
    shared: Arc<Shared>,
}

impl Feeder {
    fn new(chan: Arc<Channel>) -> Feeder {
        Feeder {
            pid: platform::cached_pid(),
            shared: Arc::new(Shared {
                chan,
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
                progress: Condvar::new(),
                pending: AtomicUsize::new(0),
                slot: std::sync::OnceLock::new(),
                cancelled: AtomicBool::new(false),
                join_at_exit: AtomicBool::new(true),
                pid: platform::cached_pid(),
            }),
        }
    }

    /// Messages of this process not yet in the ring.
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Acquire)
    }

    /// Queues `item` behind the backlog, starting the thread if needed. Returns whether this
    /// call started it.
    pub fn enqueue(&self, item: Pending) -> io::Result<bool> {
        let mut st = self.shared.state();
        if st.closed || st.exited || self.shared.cancelled.load(Ordering::Acquire) {
            // Closed, or dropping its backlog (an immediate shutdown, `cancel_join_thread`):
            // a message queued now would never be moved.
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the queue's feeder is closed",
            ));
        }
        let start = !st.started;
        if start {
            let shared = Arc::clone(&self.shared);
            let (claimed, answer) = std::sync::mpsc::sync_channel(1);
            std::thread::Builder::new()
                .name("rmp-queue-feeder".into())
                .stack_size(64 * 1024)
                .spawn(move || shared.run(claimed))?;
            // Its slot is claimed before anything is counted in it (a thread that died
            // first leaves no slot: nothing is counted).
            let _ = answer.recv();
            st.started = true;
            live().push(Arc::downgrade(&self.shared));
        }
        // Counted before the thread can take it (it takes the backlog under this lock).
        self.shared.count_in(1);
        st.backlog.push_back(item);
        if st.idle {
            self.shared.wake.notify_one();
        }
        Ok(start)
    }

    /// No more messages: the thread exits once its backlog is in the ring.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Drops the backlog; the thread exits soon (within one wait slice).
    pub fn cancel(&self) {
        self.shared.cancelled.store(true, Ordering::Release);
        let _g = self.shared.state();
        self.shared.wake.notify_one();
    }

    /// Waits at most `slice` for the thread to have exited (true), or for it never to have
    /// started.
    pub fn wait_exited(&self, slice: Duration) -> bool {
        self.shared.wait_exited(slice)
    }

    /// Do not wait for this feeder at exit (`cancel_join_thread`).
    pub fn cancel_exit_join(&self) {
        self.shared.join_at_exit.store(false, Ordering::Release);
    }

    /// The last error the thread met, if any (taken).
    pub fn take_error(&self) -> Option<String> {
        self.shared.state().error.take()
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        // The thread keeps its own `Arc` and finishes the backlog (as the stdlib's feeder
        // does for a queue dropped without close); tell it nothing more comes.
        if self.pid == platform::cached_pid() {
            self.close();
        }
    }
}

/// A lazily created feeder that belongs to the process that created it (see the module
/// documentation on fork). Lock-free, so a fork at any moment leaves it usable.
pub struct FeederSlot {
    ptr: AtomicPtr<Feeder>,
}

impl Default for FeederSlot {
    fn default() -> Self {
        FeederSlot {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
        }
    }
}

impl FeederSlot {
    /// This process's feeder, if it made one.
    pub fn get(&self) -> Option<&Feeder> {
        // Acquire: pairs with the Release of the CAS in `get_or_create`.
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: a non-null pointer came from `Box::into_raw` in `get_or_create` and is
        // freed only by `drop` (which has `&mut self`) or never (inherited across a fork).
        let f = unsafe { p.as_ref() }?;
        (f.pid == platform::cached_pid()).then_some(f)
    }

    /// This process's feeder, made now if needed.
    pub fn get_or_create(&self, chan: &Arc<Channel>) -> &Feeder {
        loop {
            let cur = self.ptr.load(Ordering::Acquire);
            // SAFETY: as in `get`.
            if let Some(f) = unsafe { cur.as_ref() } {
                if f.pid == platform::cached_pid() {
                    return f;
                }
            }
            // Absent, or inherited from the parent: replace it. An inherited one is leaked on
            // purpose: its thread and its lock belong to the parent.
            let new = Box::into_raw(Box::new(Feeder::new(Arc::clone(chan))));
            // Release: publishes the new feeder; pairs with the Acquire loads.
            match self
                .ptr
                .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                // SAFETY: just published; never freed while `self` lives (see `get`).
                Ok(_) => return unsafe { &*new },
                // SAFETY: `new` was never shared: free it and look again.
                Err(_) => drop(unsafe { Box::from_raw(new) }),
            }
        }
    }
}

impl Drop for FeederSlot {
    fn drop(&mut self) {
        let p = *self.ptr.get_mut();
        if p.is_null() {
            return;
        }
        // SAFETY: the pointer came from `Box::into_raw`; `&mut self` means no reference to it
        // remains. One inherited from the parent process is leaked instead (see above).
        unsafe {
            if (*p).pid == platform::cached_pid() {
                drop(Box::from_raw(p));
            }
        }
    }
}
