//! `CondState`: the shared half of rmp's `Condition` (the lock is a separate `SemState`).
//!
//! CPython's `Condition` counts sleepers in semaphores and makes `notify` wait until each
//! woken sleeper answers, so one SIGKILLed sleeper hangs every notifier. Here a notify never
//! waits for anyone, and it wakes exactly whom it chose:
//!
//! - Each sleeper registers (holding the condition's lock, before releasing it) in a *slot*
//!   of its own: state `WAITING`, a ticket that orders registrations, and its pid, thread id
//!   and thread start time. It then futex-waits on its slot's state word.
//! - `notify(n)` (holding the lock) picks the `n` oldest waiting slots and moves each from
//!   `WAITING` to `SIGNALLED` with a CAS, waking that slot's word. A slot whose owner thread
//!   has died (gone, zombie, or its thread id reused) is freed and skipped, so a notification
//!   is never spent on a dead process.
//! - A sleeper whose wait times out (or is interrupted) CASes its slot from `WAITING` to
//!   `FREE`: if that fails, a notify chose it first and it reports "notified". Either way it
//!   frees the slot; no lock is needed, since each transition is one CAS on the slot's word.
//! - With more than [`SLOTS`] sleepers at once, the extra ones wait on the shared `seq` word
//!   instead; a notify that finds fewer slot sleepers than it may wake wakes all of those (a
//!   spurious wake-up for some, which callers of `wait` must tolerate; never a lost one).

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::{check_header, futex_wait_slice, Me};
use crate::platform;

/// `b"RMPC"`: marks an initialised [`CondState`].
pub const COND_MAGIC: u32 = u32::from_le_bytes(*b"RMPC");
/// Layout version of [`CondState`]. 2: one slot per sleeper (1 had pooled tokens).
pub const COND_VERSION: u32 = 2;
/// Sleepers with a slot of their own; more wait on `seq` (see the module comment).
pub const SLOTS: usize = 32;

const FREE: u32 = 0;
const WAITING: u32 = 1;
const SIGNALLED: u32 = 2;

/// One sleeper's slot (32 bytes). Field by field:
#[repr(C)]
#[derive(Debug)]
pub struct Slot {
    /// The futex word: `FREE`, `WAITING` or `SIGNALLED`.
    state: AtomicU32,
    /// The sleeper's pid.
    pid: AtomicU32,
    /// The sleeper's thread id.
    tid: AtomicU32,
    /// Reserved, zero.
    _pad: u32,
    /// Registration order (from `next_ticket`).
    ticket: AtomicU64,
    /// The sleeper thread's start time (clock ticks since boot; 0 unknown).
    start: AtomicU64,
}

/// One condition variable in shared memory (32 + 32 × [`SLOTS`] bytes). Field by field:
#[repr(C)]
#[derive(Debug)]
pub struct CondState {
    /// [`COND_MAGIC`], written last by `init` (Release).
    magic: AtomicU32,
    /// [`COND_VERSION`].
    version: AtomicU32,
    /// Futex word of the overflow sleepers: bumped by a notify that wakes them.
    seq: AtomicU32,
    /// Overflow sleepers (registered without a slot).
    overflow: AtomicU32,
    /// Next registration ticket (changed under the condition's lock).
    next_ticket: AtomicU64,
    /// Reserved, zero.
    _reserved: u64,
    /// The sleepers' slots.
    slots: [Slot; SLOTS],
}

/// A registration: which slot (or overflow), to pass back to `wait_slice`/`cancel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    /// Slot index.
    Slot(usize),
    /// No slot was free: waits on `seq` from this value.
    Overflow(u32),
}

impl CondState {
    /// Initialises a zeroed slot; must run before the state is shared.
    pub fn init(&self) {
        self.seq.store(0, Ordering::Relaxed);
        self.overflow.store(0, Ordering::Relaxed);
        self.next_ticket.store(0, Ordering::Relaxed);
        for s in &self.slots {
            s.state.store(FREE, Ordering::Relaxed);
        }
        self.version.store(COND_VERSION, Ordering::Relaxed);
        // Release: publishes the fields above; pairs with the Acquire in `check`.
        self.magic.store(COND_MAGIC, Ordering::Release);
    }

    /// Whether the state was initialised by a compatible `init`.
    pub fn check(&self) -> bool {
        check_header(&self.magic, &self.version, COND_MAGIC, COND_VERSION)
    }

    /// (sleepers not yet notified, notified sleepers that have not woken up yet); racy, for
    /// `repr` and the CPython-compatible counters.
    pub fn counts(&self) -> (u32, u32) {
        let mut waiting = self.overflow.load(Ordering::Relaxed);
        let mut signalled = 0;
        for s in &self.slots {
            match s.state.load(Ordering::Relaxed) {
                WAITING => waiting += 1,
                SIGNALLED => signalled += 1,
                _ => {}
            }
        }
        (waiting, signalled)
    }

    /// Registers the caller as a sleeper. Call holding the condition's lock, before releasing
    /// it; then [`wait_slice`](Self::wait_slice) until it returns true, or
    /// [`cancel`](Self::cancel).
    pub fn register(&self, me: &Me) -> Ticket {
        let ticket = self.next_ticket.load(Ordering::Relaxed);
        self.next_ticket.store(ticket + 1, Ordering::Relaxed);
        for (i, s) in self.slots.iter().enumerate() {
            if s.state.load(Ordering::Relaxed) != FREE {
                continue;
            }
            s.pid.store(me.pid, Ordering::Relaxed);
            s.tid.store(me.tid, Ordering::Relaxed);
            s.start.store(me.start, Ordering::Relaxed);
            s.ticket.store(ticket, Ordering::Relaxed);
            // Acquire/Release: the CAS publishes the fields above to a notifier that sees
            // WAITING (it loads with Acquire); it fails only if another registration, made
            // without the lock by mistake, took the slot.
            if s.state
                .compare_exchange(FREE, WAITING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Ticket::Slot(i);
            }
        }
        // SeqCst: ordered before a notifier's load of `overflow` (with the `seq` re-check of
        // the futex, a Dekker pair with `notify`).
        self.overflow.fetch_add(1, Ordering::SeqCst);
        Ticket::Overflow(self.seq.load(Ordering::SeqCst))
    }

    /// Sleeps at most `slice` to be notified; returns whether the caller was (and then its
    /// registration is over).
    pub fn wait_slice(&self, ticket: &mut Ticket, slice: Duration) -> io::Result<bool> {
        match ticket {
            Ticket::Slot(i) => {
                let s = &self.slots[*i];
                // Acquire: pairs with the Release CAS in `notify` (the notifier's writes,
                // made under the lock, are visible to the woken sleeper).
                if s.state.load(Ordering::Acquire) == SIGNALLED {
                    s.state.store(FREE, Ordering::Release);
                    return Ok(true);
                }
                futex_wait_slice(&s.state, WAITING, slice)?;
                if s.state.load(Ordering::Acquire) == SIGNALLED {
                    s.state.store(FREE, Ordering::Release);
                    return Ok(true);
                }
                Ok(false)
            }
            Ticket::Overflow(seen) => {
                futex_wait_slice(&self.seq, *seen, slice)?;
                // Acquire: pairs with the Release increment in `notify`.
                if self.seq.load(Ordering::Acquire) != *seen {
                    self.overflow.fetch_sub(1, Ordering::SeqCst);
                    return Ok(true);
                }
                Ok(false)
            }
        }
    }

    /// Ends a registration without waiting longer; returns true if the caller had been
    /// notified meanwhile.
    pub fn cancel(&self, ticket: Ticket) -> bool {
        match ticket {
            Ticket::Slot(i) => {
                let s = &self.slots[i];
                // AcqRel: the CAS races with the notifier's WAITING -> SIGNALLED CAS; exactly
                // one of them wins.
                match s
                    .state
                    .compare_exchange(WAITING, FREE, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => false,
                    Err(_) => {
                        s.state.store(FREE, Ordering::Release);
                        true
                    }
                }
            }
            Ticket::Overflow(seen) => {
                self.overflow.fetch_sub(1, Ordering::SeqCst);
                self.seq.load(Ordering::Acquire) != seen
            }
        }
    }

    fn owner_alive(s: &Slot) -> bool {
        let pid = s.pid.load(Ordering::Relaxed) as i32;
        let tid = s.tid.load(Ordering::Relaxed) as i32;
        let start = s.start.load(Ordering::Relaxed);
        match platform::thread_start_time(pid, tid) {
            Ok(Some(now)) => start == 0 || now == start,
            Ok(None) => !super::proc_is_ours(),
            // Not allowed to look (hidepid): assume alive rather than skip a live sleeper.
            Err(_) => true,
        }
    }

    /// Notifies up to `n` sleepers, oldest first, skipping (and freeing) the slots of dead
    /// ones. Call holding the condition's lock. Never waits. Returns how many were notified
    /// (overflow sleepers woken count as one).
    pub fn notify(&self, n: u32) -> u32 {
        let mut done = 0;
        while done < n {
            // The oldest waiting slot.
            let mut best: Option<(u64, &Slot)> = None;
            for s in &self.slots {
                // Acquire: pairs with the registration's CAS, so its fields are visible.
                if s.state.load(Ordering::Acquire) == WAITING {
                    let t = s.ticket.load(Ordering::Relaxed);
                    if best.is_none_or(|(bt, _)| t < bt) {
                        best = Some((t, s));
                    }
                }
            }
            let Some((_, s)) = best else { break };
            if n != u32::MAX && !Self::owner_alive(s) {
                // A dead sleeper's slot: free it, unless it just cancelled itself.
                let _ =
                    s.state
                        .compare_exchange(WAITING, FREE, Ordering::AcqRel, Ordering::Relaxed);
                continue;
            }
            // Release: publishes the notifier's writes to the sleeper (see `wait_slice`).
            if s.state
                .compare_exchange(WAITING, SIGNALLED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                let _ = platform::futex_wake(&s.state, 1);
                done += 1;
            }
        }
        // SeqCst: see `register`.
        if done < n && self.overflow.load(Ordering::SeqCst) > 0 {
            // Release: pairs with the Acquire load in `wait_slice`/`cancel`.
            self.seq.fetch_add(1, Ordering::Release);
            let _ = platform::futex_wake(&self.seq, i32::MAX as u32);
            done += 1;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn new_cond() -> Arc<CondState> {
        // SAFETY: CondState is atomics and integers; all-zero is valid.
        let c: Arc<CondState> = Arc::new(unsafe { std::mem::zeroed() });
        c.init();
        assert!(c.check());
        c
    }

    fn other_thread_me() -> Me {
        // A live thread's identity (this test's other thread stays alive while used).
        Me::current()
    }

    #[test]
    fn layout() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        assert_eq!(std::mem::size_of::<CondState>(), 32 + 32 * SLOTS);
    }

    #[test]
    fn notify_picks_the_oldest_and_counts() {
        let c = new_cond();
        let me = Me::current();
        assert_eq!(c.notify(1), 0);
        let mut t1 = c.register(&me);
        let t2 = c.register(&me);
        assert_eq!(c.counts(), (2, 0));
        assert_eq!(c.notify(1), 1);
        assert_eq!(c.counts(), (1, 1));
        assert!(c.wait_slice(&mut t1, Duration::from_millis(1)).unwrap());
        assert!(!c.cancel(t2));
        assert_eq!(c.counts(), (0, 0));
    }

    #[test]
    fn cancel_after_notify_reports_notified() {
        let c = new_cond();
        let t = c.register(&Me::current());
        c.notify(5);
        assert!(c.cancel(t));
        assert_eq!(c.counts(), (0, 0));
    }

    #[test]
    fn a_late_sleeper_cannot_steal_an_earlier_wake_up() {
        let c = new_cond();
        let me = other_thread_me();
        let mut x = c.register(&me);
        assert_eq!(c.notify(u32::MAX), 1); // for X
        let mut y = c.register(&me);
        let z = c.register(&me);
        assert_eq!(c.notify(1), 1); // for Y, the older of the two
        assert!(c.wait_slice(&mut y, Duration::from_millis(1)).unwrap());
        assert!(!c.cancel(z));
        assert!(c.wait_slice(&mut x, Duration::from_millis(1)).unwrap());
    }

    #[test]
    fn notify_skips_a_dead_sleeper() {
        let c = new_cond();
        // A thread registers and exits (a sleeper that died). It lives a few clock ticks
        // (10 ms each) past its start, so that a thread of another test that reuses its id
        // cannot have its start time and pass for it.
        let c2 = Arc::clone(&c);
        let tid = std::thread::spawn(move || {
            let me = Me::current();
            c2.register(&me);
            std::thread::sleep(Duration::from_millis(30));
            me.tid
        })
        .join()
        .unwrap();
        // Gone as /proc tells it (join returns while the kernel still finishes the exit).
        crate::platform::wait_thread_gone(tid as i32);
        let mut live = c.register(&Me::current());
        assert_eq!(c.notify(1), 1);
        assert!(c.wait_slice(&mut live, Duration::from_millis(1)).unwrap());
        assert_eq!(c.counts(), (0, 0));
    }

    #[test]
    fn notify_wakes_a_sleeping_thread_promptly() {
        let c = new_cond();
        let c2 = Arc::clone(&c);
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let mut ticket = c2.register(&Me::current());
            tx.send(()).unwrap();
            let start = std::time::Instant::now();
            while !c2.wait_slice(&mut ticket, Duration::from_secs(5)).unwrap() {}
            start.elapsed()
        });
        rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(c.notify(u32::MAX), 1);
        assert!(t.join().unwrap() < Duration::from_secs(4));
    }

    #[test]
    fn overflow_sleepers_are_woken_never_lost() {
        let c = new_cond();
        let me = Me::current();
        let mut tickets: Vec<Ticket> = (0..SLOTS + 2).map(|_| c.register(&me)).collect();
        assert!(matches!(tickets[SLOTS], Ticket::Overflow(_)));
        assert_eq!(c.counts(), (SLOTS as u32 + 2, 0));
        assert_eq!(c.notify(u32::MAX), SLOTS as u32 + 1);
        for t in tickets.iter_mut() {
            assert!(c.wait_slice(t, Duration::from_millis(1)).unwrap());
        }
        assert_eq!(c.counts(), (0, 0));
    }
}
