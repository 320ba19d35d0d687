//! `EventState`: rmp's `Event`, a flag in shared memory that sleepers futex-wait on. CPython
//! builds `Event` from a `Condition` and a semaphore (four semaphores in all); here `set` is
//! one atomic swap plus a wake only when someone sleeps, and `wait` one futex wait.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{check_header, futex_wait_slice};
use crate::platform;

/// `b"RMPE"`: marks an initialised [`EventState`].
pub const EVENT_MAGIC: u32 = u32::from_le_bytes(*b"RMPE");
/// Layout version of [`EventState`].
pub const EVENT_VERSION: u32 = 1;

/// One event in shared memory (16 bytes). Field by field:
#[repr(C)]
#[derive(Debug)]
pub struct EventState {
    /// [`EVENT_MAGIC`], written last by `init` (Release).
    magic: AtomicU32,
    /// [`EVENT_VERSION`].
    version: AtomicU32,
    /// The futex word: 1 when set, 0 when clear.
    flag: AtomicU32,
    /// Threads (in any process) registered as sleeping on `flag`; `set` wakes only if > 0.
    sleepers: AtomicU32,
}

impl EventState {
    /// Initialises a zeroed slot (clear); must run before the slot is shared.
    pub fn init(&self) {
        self.flag.store(0, Ordering::Relaxed);
        self.sleepers.store(0, Ordering::Relaxed);
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
        // SeqCst (both): the flag store must be ordered before the load of `sleepers`,
        // against a sleeper's increment of `sleepers` and re-load of `flag` (Dekker pair).
        if self.flag.swap(1, Ordering::SeqCst) == 0 && self.sleepers.load(Ordering::SeqCst) > 0 {
            let _ = platform::futex_wake(&self.flag, i32::MAX as u32);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.flag.store(0, Ordering::SeqCst);
    }

    /// Sleeps at most `slice` for the flag; returns whether it is set.
    pub fn wait_slice(&self, slice: Duration) -> io::Result<bool> {
        if self.is_set() {
            return Ok(true);
        }
        // SeqCst: see `set`.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let r = if self.flag.load(Ordering::SeqCst) == 0 {
            futex_wait_slice(&self.flag, 0, slice).map(|_| ())
        } else {
            Ok(())
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        r?;
        Ok(self.is_set())
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
        assert!(!e.wait_slice(Duration::from_millis(5)).unwrap());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let e = Arc::clone(&e);
                std::thread::spawn(move || while !e.wait_slice(Duration::from_secs(5)).unwrap() {})
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
}
