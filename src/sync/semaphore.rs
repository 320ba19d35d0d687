//! A counting semaphore on a futex word in shared memory: the core of a future `SemLock`
//! (`Lock`, `Semaphore`, `BoundedSemaphore`; the sync issue builds the rest on it). Not yet
//! bound to Python.
//!
//! The state is one [`SemState`] (`#[repr(C)]`, 32 bytes, versioned) that may live in a
//! `MAP_SHARED` mapping seen by many processes. Acquire takes a unit with a CAS on `value`;
//! when none is left it registers in `sleepers` and futex-waits on `value` (process-shared
//! futex, no `FUTEX_PRIVATE_FLAG`). Release adds a unit (refusing to pass `max_value`, the
//! stdlib's "released too many times") and wakes one sleeper only when someone sleeps.
//! Waits take a bounded slice so that callers can check for signals and deadlines between
//! slices. The owner pid of the last acquire is recorded for the dead-holder detection that
//! the sync issue adds.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::platform;

/// `b"RMPS"`: marks an initialised [`SemState`].
pub const SEM_MAGIC: u32 = u32::from_le_bytes(*b"RMPS");
/// Layout version of [`SemState`]; bump on any change of fields or meaning.
pub const SEM_VERSION: u32 = 1;

/// One semaphore in shared memory. Field by field:
#[repr(C)]
#[derive(Debug)]
pub struct SemState {
    /// [`SEM_MAGIC`]; written last by [`SemState::init`] (Release), checked by
    /// [`SemState::check`] (Acquire) so that a half-initialised slot is never used.
    magic: AtomicU32,
    /// [`SEM_VERSION`], written once by `init` before `magic`.
    version: AtomicU32,
    /// Units available (0..=max_value). Decremented by acquire (CAS), incremented by release;
    /// it is also the futex word sleepers wait on.
    value: AtomicU32,
    /// Upper bound of `value` (1 for a lock; u32::MAX for an unbounded semaphore). Written
    /// once by `init`.
    max_value: AtomicU32,
    /// Number of threads (in any process) registered as about to sleep or sleeping on
    /// `value`; release issues a futex wake only when it is non-zero.
    sleepers: AtomicU32,
    /// Pid of the process that last acquired a unit (0 if none): diagnostic today, the
    /// basis of dead-holder recovery later.
    last_owner: AtomicU32,
    /// Reserved, zero.
    _reserved: [u32; 2],
}

/// What [`SemState::release`] refuses.
#[derive(Debug, PartialEq, Eq)]
pub enum ReleaseError {
    /// Releasing would exceed `max_value` (CPython: ValueError "semaphore or lock released
    /// too many times").
    TooManyReleases,
}

impl SemState {
    /// Initialises a zeroed slot with `value` units of at most `max_value`. Must run before
    /// the slot is shared (or under the allocator's lock).
    pub fn init(&self, value: u32, max_value: u32) {
        self.value.store(value.min(max_value), Ordering::Relaxed);
        self.max_value.store(max_value, Ordering::Relaxed);
        self.sleepers.store(0, Ordering::Relaxed);
        self.last_owner.store(0, Ordering::Relaxed);
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

    /// Units available now (racy by nature: for `get_value()` and tests).
    pub fn value(&self) -> u32 {
        self.value.load(Ordering::Relaxed)
    }

    /// Pid of the last acquirer (0 if none).
    pub fn last_owner(&self) -> u32 {
        self.last_owner.load(Ordering::Relaxed)
    }

    /// Takes a unit if one is available, without waiting.
    pub fn try_acquire(&self, pid: u32) -> bool {
        let mut cur = self.value.load(Ordering::Relaxed);
        while cur > 0 {
            // Acquire on success: pairs with the Release in `release`, so what the releaser
            // wrote before releasing is visible to the new holder.
            match self.value.compare_exchange_weak(
                cur,
                cur - 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.last_owner.store(pid, Ordering::Relaxed);
                    return true;
                }
                Err(actual) => cur = actual,
            }
        }
        false
    }

    /// Takes a unit, sleeping at most `slice` for one. Returns whether it got one; a signal or
    /// the end of the slice returns `Ok(false)` so the caller can check signals and deadlines.
    pub fn acquire_slice(&self, pid: u32, slice: Duration) -> io::Result<bool> {
        if self.try_acquire(pid) {
            return Ok(true);
        }
        // Register before re-checking, so that a release between our check and our sleep
        // sees `sleepers > 0` and wakes us (or changes `value`, which makes the wait return).
        // SeqCst: orders this increment before the re-load of `value` below, against the
        // release's store to `value` and its load of `sleepers` (a Dekker-style pair).
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let result = if self.value.load(Ordering::SeqCst) == 0 {
            match platform::futex_wait(&self.value, 0, Some(slice)) {
                Ok(()) => Ok(()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else {
            Ok(())
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        result?;
        Ok(self.try_acquire(pid))
    }

    /// Gives back a unit; wakes one sleeper if any.
    pub fn release(&self) -> Result<(), ReleaseError> {
        let max = self.max_value.load(Ordering::Relaxed);
        let mut cur = self.value.load(Ordering::Relaxed);
        loop {
            if cur >= max {
                return Err(ReleaseError::TooManyReleases);
            }
            // SeqCst: see `acquire_slice` (the increment must be ordered before the load
            // of `sleepers`); it also publishes the releaser's writes (Release semantics).
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
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            // A failed wake (EFAULT cannot happen on a live mapping) changes nothing for the
            // count; sleepers also return at the end of their slice.
            let _ = platform::futex_wake(&self.value, 1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn new_sem(value: u32, max: u32) -> Arc<SemState> {
        // SAFETY: SemState is plain atomics and integers, for which all-zero is valid.
        let s: SemState = unsafe { std::mem::zeroed() };
        let s = Arc::new(s);
        assert!(!s.check());
        s.init(value, max);
        assert!(s.check());
        s
    }

    #[test]
    fn layout_is_32_bytes() {
        assert_eq!(std::mem::size_of::<SemState>(), 32);
        assert_eq!(std::mem::align_of::<SemState>(), 4);
    }

    #[test]
    fn counts_and_bounds() {
        let s = new_sem(2, 2);
        assert!(s.try_acquire(7));
        assert!(s.try_acquire(7));
        assert!(!s.try_acquire(7));
        assert_eq!(s.last_owner(), 7);
        s.release().unwrap();
        s.release().unwrap();
        assert_eq!(s.release(), Err(ReleaseError::TooManyReleases));
        assert_eq!(s.value(), 2);
    }

    #[test]
    fn slice_times_out_when_empty() {
        let s = new_sem(0, 1);
        assert!(!s.acquire_slice(1, Duration::from_millis(10)).unwrap());
    }

    #[test]
    fn contended_threads_conserve_units() {
        // 4 threads x 2000 acquire/release pairs on a lock: mutual exclusion is checked by a
        // counter that only the holder touches.
        let s = new_sem(1, 1);
        let inside = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (s, inside) = (Arc::clone(&s), Arc::clone(&inside));
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        while !s.acquire_slice(t, Duration::from_millis(50)).unwrap() {}
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        inside.fetch_sub(1, Ordering::SeqCst);
                        s.release().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.value(), 1);
    }

    #[test]
    fn release_wakes_a_sleeper() {
        let s = new_sem(0, 1);
        let s2 = Arc::clone(&s);
        let t = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while !s2.acquire_slice(2, Duration::from_secs(5)).unwrap() {}
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        s.release().unwrap();
        let waited = t.join().unwrap();
        // Woken by the release, not by the end of its 5 s slice.
        assert!(waited < Duration::from_secs(4), "{waited:?}");
    }
}
