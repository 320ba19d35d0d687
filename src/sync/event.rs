//! `EventState`: rmp's `Event`, a flag in shared memory and a generation word that sleepers
//! futex-wait on. CPython builds `Event` from a `Condition` and a semaphore (four semaphores in
//! all); here `set` is one atomic swap and one increment, plus a wake only when someone
//! sleeps, and `wait` one futex wait. A `wait` returns once the flag is set *or* a `set` has
//! happened since it began, so a quick `set(); clear()` still wakes every waiter, as it does
//! with CPython's `Event`.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{check_header, futex_wait_slice};
use crate::platform;

/// `b"RMPE"`: marks an initialised [`EventState`].
pub const EVENT_MAGIC: u32 = u32::from_le_bytes(*b"RMPE");
/// Layout version of [`EventState`]. 2: the `gen` word (1 slept on the flag itself).
pub const EVENT_VERSION: u32 = 2;

/// One event in shared memory (24 bytes). Field by field:
#[repr(C)]
#[derive(Debug)]
pub struct EventState {
    /// [`EVENT_MAGIC`], written last by `init` (Release).
    magic: AtomicU32,
    /// [`EVENT_VERSION`].
    version: AtomicU32,
    /// 1 when set, 0 when clear.
    flag: AtomicU32,
    /// Threads (in any process) registered as sleeping on `gen`; `set` wakes only if > 0.
    sleepers: AtomicU32,
    /// The futex word: incremented by every `set` that changes the flag from 0 to 1.
    gen: AtomicU32,
    /// Reserved, zero.
    _reserved: u32,
}

impl EventState {
    /// Initialises a zeroed slot (clear); must run before the slot is shared.
    pub fn init(&self) {
        self.flag.store(0, Ordering::Relaxed);
        self.sleepers.store(0, Ordering::Relaxed);
        self.gen.store(0, Ordering::Relaxed);
        self.version.store(EVENT_VERSION, Ordering::Relaxed);
        // Release: publishes the fields above; pairs with the Acquire in `check`.
        self.magic.store(EVENT_MAGIC, Ordering::Release);
    }

    /// Whether the slot was initialised by a compatible `init`.
    pub fn check(&self) -> bool {
        check_header(&self.magic, &self.version, EVENT_MAGIC, EVENT_VERSION)
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        // Acquire: pairs with the SeqCst swap in `set`, so what the setter wrote before
        // setting is visible to whoever sees the flag set.
        self.flag.load(Ordering::Acquire) == 1
    }

    /// Sets the flag and wakes every sleeper.
    pub fn set(&self) {
        // SeqCst (all three): the flag and generation stores must be ordered before the load
        // of `sleepers`, against a sleeper's increment of `sleepers` and its re-check of
        // `gen` in the futex (a Dekker pair).
        if self.flag.swap(1, Ordering::SeqCst) == 0 {
            self.gen.fetch_add(1, Ordering::SeqCst);
            if self.sleepers.load(Ordering::SeqCst) > 0 {
                let _ = platform::futex_wake(&self.gen, i32::MAX as u32);
            }
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.flag.store(0, Ordering::SeqCst);
    }

    /// The generation to wait from (read it when the wait begins).
    pub fn generation(&self) -> u32 {
        // Acquire: pairs with the SeqCst increment in `set`.
        self.gen.load(Ordering::Acquire)
    }

    /// Sleeps at most `slice` unless the flag is set or a `set` happened since `since` (a
    /// `generation()` read when the wait began); returns whether either is the case.
    pub fn wait_slice(&self, since: u32, slice: Duration) -> io::Result<bool> {
        let done = || self.is_set() || self.generation() != since;
        if done() {
            return Ok(true);
        }
        // SeqCst: see `set`.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let r = if self.flag.load(Ordering::SeqCst) == 0 {
            futex_wait_slice(&self.gen, since, slice).map(|_| ())
        } else {
            Ok(())
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        r?;
        Ok(done())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn set_wakes_sleepers_and_clear_resets() {
        // SAFETY: EventState is atomics; all-zero is valid.
        let e: Arc<EventState> = Arc::new(unsafe { std::mem::zeroed() });
        e.init();
        assert!(e.check());
        assert!(!e
            .wait_slice(e.generation(), Duration::from_millis(5))
            .unwrap());
        let waiters: Vec<_> =
            (0..3)
                .map(|_| {
                    let e = Arc::clone(&e);
                    let since = e.generation();
                    std::thread::spawn(move || {
                        while !e.wait_slice(since, Duration::from_secs(5)).unwrap() {}
                    })
                })
                .collect();
        std::thread::sleep(Duration::from_millis(30));
        let start = std::time::Instant::now();
        e.set();
        for w in waiters {
            w.join().unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(4));
        e.clear();
        assert!(!e.is_set());
    }

    #[test]
    fn a_set_then_clear_still_wakes_a_waiter() {
        // SAFETY: EventState is atomics; all-zero is valid.
        let e: Arc<EventState> = Arc::new(unsafe { std::mem::zeroed() });
        e.init();
        let since = e.generation();
        e.set();
        e.clear();
        assert!(e.wait_slice(since, Duration::from_millis(1)).unwrap());
        assert!(!e
            .wait_slice(e.generation(), Duration::from_millis(1))
            .unwrap());
    }
}
