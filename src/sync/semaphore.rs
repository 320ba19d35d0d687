//! `SemState`: the futex semaphore under every rmp lock (`Lock`, `RLock`, `Semaphore`,
//! `BoundedSemaphore`, and the locks of `Condition` and synchronized `Value`/`Array`).
//!
//! The state is one [`SemState`] (`#[repr(C)]`, 64 bytes, versioned) in a `MAP_SHARED`
//! mapping seen by many processes. It has two kinds, as CPython's `SemLock` has:
//!
//! - [`Kind::Semaphore`]: `value` counts the units available (0..=`max_value`). Acquire takes
//!   one with a CAS, release adds one (refusing to pass `max_value`: the stdlib's "released too
//!   many times"). Any process may release, so a unit has no owner; the last acquirer is
//!   recorded for diagnostics only.
//! - [`Kind::RecursiveMutex`]: `value` is 0 when free and the holder's kernel thread id when
//!   held, so taking the lock and recording its owner is one CAS. The holder also publishes its
//!   pid and the thread's start time, so that a waiter whose wait slice ends without the lock
//!   changing hands can tell whether the holder still lives (thread ids are reused: the start
//!   time tells a new thread from the old one). A dead holder's lock is taken over by the
//!   waiter, which learns the dead pid ([`Acquired::Recovered`]). The kernel's robust-futex list
//!   cannot serve: glibc owns each thread's only list head.
//!
//! Sleepers register in `sleepers` before their final check and futex-wait on `value`
//! (process-shared futex, no `FUTEX_PRIVATE_FLAG`); release wakes one only when someone sleeps.
//! Waits take a bounded slice so that callers can check signals and deadlines between slices.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::{sleep_on, wake, Me, WaitEnd};
use crate::platform;

/// `b"RMPS"`: marks an initialised [`SemState`].
pub const SEM_MAGIC: u32 = u32::from_le_bytes(*b"RMPS");
/// Layout version of [`SemState`]; bump on any change of fields or meaning.
/// 2: `kind`, owner thread and start time (1 had a semaphore kind only, 32 bytes).
/// 3: `sleepers` is taken back by the waker for the sleepers it woke (`sync::wake`).
pub const SEM_VERSION: u32 = 3;

/// What a [`SemState`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// A counting semaphore; `Lock` is one with `max_value` 1.
    Semaphore = 0,
    /// A recursive mutex owned by a thread (`RLock`); recursion is counted by the owner's
    /// process, not here.
    RecursiveMutex = 1,
}

impl Kind {
    /// The kind numbered `n` (CPython's `SEMAPHORE` = 1 and `RECURSIVE_MUTEX` = 0 are mapped
    /// by the binding, not here).
    pub fn from_u32(n: u32) -> Option<Kind> {
        match n {
            0 => Some(Kind::Semaphore),
            1 => Some(Kind::RecursiveMutex),
            _ => None,
        }
    }
}

/// One semaphore in shared memory. Field by field:
#[repr(C)]
#[derive(Debug)]
pub struct SemState {
    /// [`SEM_MAGIC`]; written last by [`SemState::init`] (Release), checked by
    /// [`SemState::check`] (Acquire) so that a half-initialised slot is never used.
    magic: AtomicU32,
    /// [`SEM_VERSION`], written once by `init` before `magic`.
    version: AtomicU32,
    /// [`Kind`] as a number, written once by `init`.
    kind: AtomicU32,
    /// The futex word. Semaphore: units available. Recursive mutex: 0 when free, else the
    /// holder's kernel thread id.
    value: AtomicU32,
    /// Upper bound of `value` for a semaphore (1 for a lock; `u32::MAX` when unbounded);
    /// 1 for a mutex. Written once by `init`.
    max_value: AtomicU32,
    /// Threads (in any process) registered as about to sleep or sleeping on `value`; release
    /// issues a futex wake only when it is non-zero.
    sleepers: AtomicU32,
    /// Pid of the holder (mutex); 0 if free. Unused (0) for a semaphore.
    owner_pid: AtomicU32,
    /// Mutex: the holder's thread id, written *after* `owner_pid` and `owner_start` (Release)
    /// and cleared before the mutex is released, so that a reader that finds it equal to
    /// `value` (Acquire) may trust the other two owner fields. Semaphore: unused (0).
    owner_tid: AtomicU32,
    /// Start time (clock ticks since boot) of the holder's thread; 0 if unknown.
    owner_start: AtomicU64,
    /// Reserved, zero.
    _reserved: [u32; 6],
}

/// What [`SemState::release`] refuses.
#[derive(Debug, PartialEq, Eq)]
pub enum ReleaseError {
    /// Releasing would exceed `max_value` (CPython: ValueError "semaphore or lock released
    /// too many times").
    TooManyReleases,
    /// A mutex released by a thread that does not hold it (CPython: AssertionError).
    NotOwner,
}

/// The outcome of one acquire attempt.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Acquired {
    /// Not (yet): the slice ended, a signal arrived, or someone else got it.
    No,
    /// Taken.
    Yes,
    /// Taken over from a holder that died while holding it: its pid (0 if it died before
    /// publishing it) and thread id.
    Recovered {
        /// The dead holder's pid, 0 if unknown.
        pid: u32,
        /// The dead holder's thread id.
        tid: u32,
    },
}

impl Acquired {
    /// Whether the caller now holds a unit.
    pub fn got(self) -> bool {
        self != Acquired::No
    }
}

impl SemState {
    /// Initialises a zeroed slot. Must run before the slot is shared.
    pub fn init(&self, kind: Kind, value: u32, max_value: u32) {
        match kind {
            Kind::Semaphore => {
                self.value.store(value.min(max_value), Ordering::Relaxed);
                self.max_value.store(max_value, Ordering::Relaxed);
            }
            Kind::RecursiveMutex => {
                // A mutex created "taken" (value 0 in CPython's terms) has no holder thread we
                // could name; rmp's RLock is always created free.
                self.value.store(0, Ordering::Relaxed);
                self.max_value.store(1, Ordering::Relaxed);
            }
        }
        self.kind.store(kind as u32, Ordering::Relaxed);
        self.sleepers.store(0, Ordering::Relaxed);
        self.owner_pid.store(0, Ordering::Relaxed);
        self.owner_tid.store(0, Ordering::Relaxed);
        self.owner_start.store(0, Ordering::Relaxed);
        self.version.store(SEM_VERSION, Ordering::Relaxed);
        // Release: publishes every field above; pairs with the Acquire load in `check`.
        self.magic.store(SEM_MAGIC, Ordering::Release);
    }

    /// Whether the slot was initialised by a compatible `init`.
    pub fn check(&self) -> bool {
        // Acquire: pairs with the Release store of `magic` in `init`.
        self.magic.load(Ordering::Acquire) == SEM_MAGIC
            && self.version.load(Ordering::Relaxed) == SEM_VERSION
    }

    /// The kind written by `init`.
    pub fn kind(&self) -> Kind {
        Kind::from_u32(self.kind.load(Ordering::Relaxed)).unwrap_or(Kind::Semaphore)
    }

    /// `max_value` as written by `init`.
    pub fn max_value(&self) -> u32 {
        self.max_value.load(Ordering::Relaxed)
    }

    /// Units available now, in semaphore terms (a free mutex has 1). Racy by nature: for
    /// `get_value()`, `locked()` and tests.
    pub fn value(&self) -> u32 {
        let v = self.value.load(Ordering::Relaxed);
        match self.kind() {
            Kind::Semaphore => v,
            Kind::RecursiveMutex => u32::from(v == 0),
        }
    }

    /// Thread id holding the mutex (0 if free); for a semaphore the raw value.
    pub fn raw_value(&self) -> u32 {
        self.value.load(Ordering::Relaxed)
    }

    /// Pid of the mutex's holder (0 if free, and always for a semaphore).
    pub fn last_owner(&self) -> u32 {
        self.owner_pid.load(Ordering::Relaxed)
    }

    fn publish_owner(&self, me: &Me) {
        self.owner_pid.store(me.pid, Ordering::Relaxed);
        self.owner_start.store(me.start, Ordering::Relaxed);
        // Release: pairs with the Acquire load in `holder_alive`, making pid and start
        // visible to whoever sees this tid.
        self.owner_tid.store(me.tid, Ordering::Release);
    }

    /// Takes a unit (or the mutex) if available, without waiting.
    pub fn try_acquire(&self, me: &Me) -> bool {
        match self.kind() {
            Kind::Semaphore => self.try_take_unit(),
            Kind::RecursiveMutex => self.try_lock(me),
        }
    }

    /// Semaphore kind: takes a unit if one is available. A unit has no owner, so nothing
    /// else is written: the uncontended path touches one word.
    pub fn try_take_unit(&self) -> bool {
        let mut cur = self.value.load(Ordering::Relaxed);
        while cur > 0 {
            // Acquire on success: pairs with the SeqCst increment in `release`, so what the
            // releaser wrote before releasing is visible to the new holder.
            match self.value.compare_exchange_weak(
                cur,
                cur - 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
        false
    }

    /// Recursive-mutex kind: takes the mutex if it is free, recording `me` as the holder.
    pub fn try_lock(&self, me: &Me) -> bool {
        // Acquire: pairs with the SeqCst store of 0 in `release`.
        if self
            .value
            .compare_exchange(0, me.tid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            self.publish_owner(me);
            true
        } else {
            false
        }
    }

    /// Spins up to `spins` CPU pauses for a unit to appear, taking it if one does: a holder
    /// that releases within a few microseconds hands over without a futex sleep and wake-up
    /// on either side. The state is read after 1, 2, 4, 8, then every 16 pauses, so that a
    /// spinner does not keep pulling the line away from the holder. Returns whether it got
    /// one.
    pub fn spin_acquire(&self, me: &Me, spins: u32) -> bool {
        let kind = self.kind();
        let mut pause = 1u32;
        let mut spent = 0u32;
        while spent < spins {
            for _ in 0..pause {
                std::hint::spin_loop();
            }
            spent += pause;
            pause = (pause * 2).min(16);
            let v = self.value.load(Ordering::Relaxed);
            let free = match kind {
                Kind::Semaphore => v > 0,
                Kind::RecursiveMutex => v == 0,
            };
            if free && self.try_acquire(me) {
                return true;
            }
        }
        false
    }

    /// Whether the calling thread holds the mutex (always false for a semaphore).
    pub fn held_by(&self, me: &Me) -> bool {
        self.kind() == Kind::RecursiveMutex && self.value.load(Ordering::Relaxed) == me.tid
    }

    /// Whether the thread holding the mutex (`tid`, read from `value`) still runs. Reads
    /// `/proc`: called only after a whole wait slice passed without the mutex changing hands.
    fn holder_alive(&self, tid: u32) -> io::Result<(bool, u32)> {
        if !super::proc_is_ours() {
            // `/proc` cannot tell us about threads: never take a lock over.
            return Ok((true, 0));
        }
        // Acquire: pairs with the Release store in `publish_owner`.
        let (alive, pid) = if self.owner_tid.load(Ordering::Acquire) == tid {
            let pid = self.owner_pid.load(Ordering::Relaxed);
            let start = self.owner_start.load(Ordering::Relaxed);
            // The holder may have released and another may have published meanwhile: trust
            // the pair only if the holder's tid is still both the owner and the value.
            // Acquire: as above.
            if self.owner_tid.load(Ordering::Acquire) != tid
                || self.value.load(Ordering::Relaxed) != tid
            {
                return Ok((true, 0));
            }
            let alive = match platform::thread_start_time(pid as i32, tid as i32) {
                Ok(None) => false,
                Ok(Some(s)) => start == 0 || s == start,
                // Not allowed to look (`hidepid`): assume alive.
                Err(_) => true,
            };
            (alive, pid)
        } else {
            // The holder took the mutex but has not published itself yet (or died in
            // between): only the thread id is known.
            let alive = !matches!(platform::thread_start_time(0, tid as i32), Ok(None));
            (alive, 0)
        };
        Ok((alive, pid))
    }

    /// Takes a unit, sleeping at most `slice` for one. A signal or the end of the slice gives
    /// [`Acquired::No`] so that the caller can check signals and deadlines. For a mutex whose
    /// holder died, the slice that times out takes it over.
    pub fn acquire_slice(&self, me: &Me, slice: Duration) -> io::Result<Acquired> {
        if self.try_acquire(me) {
            return Ok(Acquired::Yes);
        }
        let kind = self.kind();
        // Registered (in `sleep_on`) before re-checking, so that a release between our check
        // and our sleep sees `sleepers > 0` and wakes us (or changes `value`, which makes the
        // wait return).
        let cur = self.value.load(Ordering::Relaxed);
        let end = sleep_on(&self.value, &self.sleepers, cur, slice, || {
            // Relaxed: ordered after the registration by `sleep_on`'s fence.
            let now = self.value.load(Ordering::Relaxed);
            now == cur
                && match kind {
                    Kind::Semaphore => now == 0,
                    Kind::RecursiveMutex => now != 0,
                }
        })?;
        if self.try_acquire(me) {
            return Ok(Acquired::Yes);
        }
        if kind == Kind::RecursiveMutex && end == WaitEnd::TimedOut {
            let holder = self.value.load(Ordering::Relaxed);
            if holder != 0 && holder != me.tid {
                let (alive, pid) = self.holder_alive(holder)?;
                // Acquire: as in `try_acquire`; the CAS fails if the mutex changed hands
                // since we read `holder`.
                if !alive
                    && self
                        .value
                        .compare_exchange(holder, me.tid, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                {
                    self.publish_owner(me);
                    return Ok(Acquired::Recovered { pid, tid: holder });
                }
            }
        }
        Ok(Acquired::No)
    }

    /// Gives back a unit, or the mutex (which `me` must hold); wakes one sleeper if any.
    pub fn release(&self, me: &Me) -> Result<(), ReleaseError> {
        match self.kind() {
            Kind::Semaphore => {
                let max = self.max_value.load(Ordering::Relaxed);
                let mut cur = self.value.load(Ordering::Relaxed);
                loop {
                    if cur >= max {
                        return Err(ReleaseError::TooManyReleases);
                    }
                    // SeqCst: see `acquire_slice` (the increment must be ordered before the
                    // load of `sleepers`); it also publishes the releaser's writes.
                    match self.value.compare_exchange_weak(
                        cur,
                        cur + 1,
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => break,
                        Err(actual) => cur = actual,
                    }
                }
            }
            Kind::RecursiveMutex => {
                if self.value.load(Ordering::Relaxed) != me.tid {
                    return Err(ReleaseError::NotOwner);
                }
                // Relaxed: nobody trusts these fields unless `owner_tid` matches `value`,
                // and `value` is published below with SeqCst.
                self.owner_tid.store(0, Ordering::Relaxed);
                self.owner_pid.store(0, Ordering::Relaxed);
                self.owner_start.store(0, Ordering::Relaxed);
                // SeqCst: as for the semaphore increment above.
                self.value.store(0, Ordering::SeqCst);
            }
        }
        wake(&self.value, &self.sleepers, 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    pub(crate) fn zeroed<T>() -> Arc<T> {
        // SAFETY: only used for the sync states, which are plain atomics and integers, for
        // which all-zero is a valid value.
        Arc::new(unsafe { std::mem::zeroed() })
    }

    fn new_sem(kind: Kind, value: u32, max: u32) -> Arc<SemState> {
        let s: Arc<SemState> = zeroed();
        assert!(!s.check());
        s.init(kind, value, max);
        assert!(s.check());
        s
    }

    #[test]
    fn layout_is_64_bytes() {
        assert_eq!(std::mem::size_of::<SemState>(), 64);
        assert_eq!(std::mem::align_of::<SemState>(), 8);
    }

    #[test]
    fn counts_and_bounds() {
        let me = Me::current();
        let s = new_sem(Kind::Semaphore, 2, 2);
        assert!(s.try_acquire(&me));
        assert!(s.try_acquire(&me));
        assert!(!s.try_acquire(&me));
        s.release(&me).unwrap();
        s.release(&me).unwrap();
        assert_eq!(s.release(&me), Err(ReleaseError::TooManyReleases));
        assert_eq!(s.value(), 2);
    }

    #[test]
    fn slice_times_out_when_empty() {
        let s = new_sem(Kind::Semaphore, 0, 1);
        let got = s
            .acquire_slice(&Me::current(), Duration::from_millis(10))
            .unwrap();
        assert_eq!(got, Acquired::No);
    }

    #[test]
    fn mutex_records_owner_and_refuses_others() {
        let me = Me::current();
        let s = new_sem(Kind::RecursiveMutex, 1, 1);
        assert_eq!(s.value(), 1);
        assert!(s.try_acquire(&me));
        assert!(s.held_by(&me));
        assert_eq!(s.value(), 0);
        assert_eq!(s.last_owner(), me.pid);
        let other = std::thread::scope(|sc| {
            sc.spawn(|| {
                let them = Me::current();
                (
                    s.try_acquire(&them),
                    s.release(&them),
                    s.acquire_slice(&them, Duration::from_millis(20)).unwrap(),
                )
            })
            .join()
            .unwrap()
        });
        // A live holder is not taken over, and a non-owner cannot release.
        assert_eq!(other, (false, Err(ReleaseError::NotOwner), Acquired::No));
        s.release(&me).unwrap();
        assert!(!s.held_by(&me));
    }

    #[test]
    fn mutex_of_a_dead_thread_is_recovered() {
        let s = new_sem(Kind::RecursiveMutex, 1, 1);
        let dead_tid = std::thread::scope(|sc| {
            sc.spawn(|| {
                let them = Me::current();
                assert!(s.try_acquire(&them));
                them.tid
            })
            .join()
            .unwrap()
        });
        let me = Me::current();
        let mut got = Acquired::No;
        for _ in 0..100 {
            got = s.acquire_slice(&me, Duration::from_millis(10)).unwrap();
            if got.got() {
                break;
            }
        }
        assert_eq!(
            got,
            Acquired::Recovered {
                pid: me.pid,
                tid: dead_tid
            }
        );
        assert!(s.held_by(&me));
    }

    #[test]
    fn contended_threads_conserve_units() {
        // 4 threads x 2000 acquire/release pairs on a lock and on a mutex: mutual exclusion is
        // checked by a counter that only the holder touches.
        for kind in [Kind::Semaphore, Kind::RecursiveMutex] {
            let s = new_sem(kind, 1, 1);
            let inside = Arc::new(AtomicU32::new(0));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (s, inside) = (Arc::clone(&s), Arc::clone(&inside));
                    std::thread::spawn(move || {
                        let me = Me::current();
                        for _ in 0..2000 {
                            while !s
                                .acquire_slice(&me, Duration::from_millis(50))
                                .unwrap()
                                .got()
                            {}
                            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                            // Often past the spin: the others sleep and are woken.
                            std::thread::yield_now();
                            inside.fetch_sub(1, Ordering::SeqCst);
                            s.release(&me).unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(s.value(), 1);
            // Every sleeper's count was taken back, by its waker or by itself.
            assert_eq!(s.sleepers.load(Ordering::SeqCst), 0);
        }
    }

    #[test]
    fn release_wakes_a_sleeper() {
        let s = new_sem(Kind::Semaphore, 0, 1);
        let s2 = Arc::clone(&s);
        let t = std::thread::spawn(move || {
            let me = Me::current();
            let start = std::time::Instant::now();
            while !s2.acquire_slice(&me, Duration::from_secs(5)).unwrap().got() {}
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        s.release(&Me::current()).unwrap();
        let waited = t.join().unwrap();
        // Woken by the release, not by the end of its 5 s slice.
        assert!(waited < Duration::from_secs(4), "{waited:?}");
        assert_eq!(s.sleepers.load(Ordering::SeqCst), 0);
    }
}
