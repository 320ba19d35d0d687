//! `CondState`: the shared half of rmp's `Condition` (the lock is a separate [`SemState`]).
//!
//! CPython's `Condition` counts sleepers in semaphores and makes `notify` wait until each
//! woken sleeper answers, so one SIGKILLed sleeper hangs every notifier. Here a notify never
//! waits for anyone: it moves up to `n` registered sleepers to *tokens* and bumps a sequence
//! word. Sleepers register while holding the lock (so a notify, which also holds it, counts
//! exactly the sleepers that came before it), remembering the sequence value at registration
//! (their ticket), then futex-wait on the sequence word in bounded slices. A sleeper may take
//! a token only once the sequence has moved past its ticket, so one that registers after a
//! notify cannot steal the wake-up meant for an earlier one. A sleeper that times out either
//! takes a token it is entitled to (it was notified after all) or unregisters, so every
//! registration ends exactly once. A sleeper that dies registered leaves one count behind: a
//! later notify may give it a token that a later sleeper then takes (a spurious wake-up, which
//! callers of `wait` must tolerate anyway), but nobody ever waits for it.
//!
//! [`SemState`]: super::semaphore::SemState

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::{check_header, futex_wait_slice};
use crate::platform;

/// `b"RMPC"`: marks an initialised [`CondState`].
pub const COND_MAGIC: u32 = u32::from_le_bytes(*b"RMPC");
/// Layout version of [`CondState`].
pub const COND_VERSION: u32 = 1;

const ONE_SLEEPER: u64 = 1 << 32;

/// One condition variable in shared memory (32 bytes). Field by field:
#[repr(C)]
#[derive(Debug)]
pub struct CondState {
    /// [`COND_MAGIC`], written last by `init` (Release).
    magic: AtomicU32,
    /// [`COND_VERSION`].
    version: AtomicU32,
    /// The futex word: bumped by every notify that hands out tokens.
    seq: AtomicU32,
    /// Reserved, zero (keeps `counts` 8-aligned).
    _pad: u32,
    /// High 32 bits: registered sleepers not yet notified. Low 32 bits: tokens handed out by
    /// notify and not yet taken. Updated together by CAS so the sum is conserved.
    counts: AtomicU64,
    /// Reserved, zero.
    _reserved: [u32; 2],
}

impl CondState {
    /// Initialises a zeroed slot; must run before the slot is shared.
    pub fn init(&self) {
        self.seq.store(0, Ordering::Relaxed);
        self.counts.store(0, Ordering::Relaxed);
        self.version.store(COND_VERSION, Ordering::Relaxed);
        // Release: publishes the fields above; pairs with the Acquire in `check`.
        self.magic.store(COND_MAGIC, Ordering::Release);
    }

    /// Whether the slot was initialised by a compatible `init`.
    pub fn check(&self) -> bool {
        check_header(&self.magic, &self.version, COND_MAGIC, COND_VERSION)
    }

    /// (sleepers, tokens) now; racy, for tests and diagnostics.
    pub fn counts(&self) -> (u32, u32) {
        let c = self.counts.load(Ordering::Relaxed);
        ((c >> 32) as u32, c as u32)
    }

    /// Registers the caller as a sleeper. Call while holding the condition's lock, before
    /// releasing it; then [`wait_slice`](Self::wait_slice) until it returns true, or
    /// [`cancel`](Self::cancel) on timeout. Returns the sequence value to wait from.
    pub fn register(&self) -> u32 {
        // SeqCst: the registration must be visible to a notify that runs after the caller
        // releases the lock (the lock's release orders it too; this is belt and braces).
        self.counts.fetch_add(ONE_SLEEPER, Ordering::SeqCst);
        self.seq.load(Ordering::Acquire)
    }

    /// Whether a sleeper holding `ticket` may take a token: only after a notify that came
    /// after its registration.
    fn entitled(&self, ticket: u32) -> bool {
        // Acquire: pairs with the Release increment in `notify`.
        self.seq.load(Ordering::Acquire) != ticket
    }

    fn take_token(&self, ticket: u32) -> bool {
        if !self.entitled(ticket) {
            return false;
        }
        let mut cur = self.counts.load(Ordering::Relaxed);
        while cur & 0xffff_ffff != 0 {
            // Acquire: pairs with the SeqCst CAS in `notify`.
            match self.counts.compare_exchange_weak(
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

    /// Sleeps at most `slice` for a token; returns whether the caller took one (was
    /// notified). `ticket` is what `register` returned; `seen` the sequence value to sleep
    /// from (start with the ticket), updated in place.
    pub fn wait_slice(&self, ticket: u32, seen: &mut u32, slice: Duration) -> io::Result<bool> {
        if self.take_token(ticket) {
            return Ok(true);
        }
        futex_wait_slice(&self.seq, *seen, slice)?;
        // Acquire: pairs with the Release increment in `notify`.
        *seen = self.seq.load(Ordering::Acquire);
        Ok(self.take_token(ticket))
    }

    /// Ends a registration without waiting longer: takes a token if the caller is entitled
    /// to one (returns true: it was notified) or unregisters (returns false).
    pub fn cancel(&self, ticket: u32) -> bool {
        let entitled = self.entitled(ticket);
        let mut cur = self.counts.load(Ordering::Relaxed);
        loop {
            let new = if entitled && cur & 0xffff_ffff != 0 {
                cur - 1
            } else if cur >> 32 != 0 {
                cur - ONE_SLEEPER
            } else if cur & 0xffff_ffff != 0 {
                // Every registration was turned into a token: one is ours.
                cur - 1
            } else {
                // Nothing to undo (counts disturbed by a dead sleeper's leftovers).
                return false;
            };
            // Acquire: as in `take_token`.
            match self
                .counts
                .compare_exchange_weak(cur, new, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return new & 0xffff_ffff != cur & 0xffff_ffff,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Notifies up to `n` registered sleepers; returns how many were notified. Never waits.
    pub fn notify(&self, n: u32) -> u32 {
        let mut cur = self.counts.load(Ordering::Relaxed);
        let k = loop {
            let sleepers = (cur >> 32) as u32;
            let tokens = cur as u32;
            let k = n.min(sleepers).min(u32::MAX - tokens);
            if k == 0 {
                return 0;
            }
            let new = cur - (u64::from(k) << 32) + u64::from(k);
            // SeqCst: pairs with the Acquire CAS of `take_token`/`cancel`, and publishes the
            // notifier's writes (made under the lock) to the sleepers it wakes.
            match self
                .counts
                .compare_exchange_weak(cur, new, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break k,
                Err(actual) => cur = actual,
            }
        };
        // Release: pairs with the Acquire load of `seq` by sleepers.
        self.seq.fetch_add(1, Ordering::Release);
        let _ = platform::futex_wake(&self.seq, k);
        k
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

    #[test]
    fn layout_is_32_bytes() {
        assert_eq!(std::mem::size_of::<CondState>(), 32);
    }

    #[test]
    fn notify_counts_only_registered_sleepers() {
        let c = new_cond();
        assert_eq!(c.notify(1), 0);
        let t1 = c.register();
        let t2 = c.register();
        assert_eq!(c.notify(1), 1);
        assert_eq!(c.counts(), (1, 1));
        let mut seen = t1;
        assert!(c
            .wait_slice(t1, &mut seen, Duration::from_millis(1))
            .unwrap());
        // The second sleeper times out and unregisters.
        assert!(!c.cancel(t2));
        assert_eq!(c.counts(), (0, 0));
    }

    #[test]
    fn cancel_after_notify_takes_the_token() {
        let c = new_cond();
        let t = c.register();
        c.notify(5);
        assert!(c.cancel(t));
        assert_eq!(c.counts(), (0, 0));
    }

    #[test]
    fn notify_wakes_a_sleeping_thread_promptly() {
        let c = new_cond();
        let c2 = Arc::clone(&c);
        let ticket = c.register();
        let t = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let mut seen = ticket;
            while !c2
                .wait_slice(ticket, &mut seen, Duration::from_secs(5))
                .unwrap()
            {}
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(c.notify(u32::MAX), 1);
        assert!(t.join().unwrap() < Duration::from_secs(4));
    }

    #[test]
    fn a_dead_sleeper_never_blocks_notify() {
        let c = new_cond();
        // A sleeper registers and "dies" (never waits nor cancels).
        c.register();
        assert_eq!(c.notify(u32::MAX), 1);
        // A later sleeper is not entitled to the stale token until a notify follows its
        // registration; then it may take either (a spurious wake-up at worst, never a hang).
        let t = c.register();
        let mut seen = t;
        assert!(!c
            .wait_slice(t, &mut seen, Duration::from_millis(1))
            .unwrap());
        assert_eq!(c.notify(1), 1);
        assert!(c
            .wait_slice(t, &mut seen, Duration::from_millis(1))
            .unwrap());
        assert_eq!(c.counts(), (0, 1));
    }

    #[test]
    fn a_late_sleeper_cannot_steal_an_earlier_wake_up() {
        let c = new_cond();
        let early = c.register();
        assert_eq!(c.notify(1), 1);
        let late = c.register();
        let mut seen = late;
        assert!(!c
            .wait_slice(late, &mut seen, Duration::from_millis(1))
            .unwrap());
        assert!(!c.cancel(late));
        let mut seen = early;
        assert!(c
            .wait_slice(early, &mut seen, Duration::from_millis(1))
            .unwrap());
        assert_eq!(c.counts(), (0, 0));
    }
}
