//! Futex-based synchronization over shared memory. Every state here is `#[repr(C)]`,
//! versioned, lives in a `MAP_SHARED` mapping and is used through atomics only.
//!
//! - `semaphore`: [`semaphore::SemState`], the semaphore / recursive mutex under every lock.
//! - `condition`: [`condition::CondState`], a condition variable on a sequence word whose
//!   notify never waits for a particular sleeper.
//! - `event`: [`event::EventState`], a flag sleepers futex-wait on.
//! - `barrier`: [`barrier::BarrierState`], a generation-counting barrier whose release never
//!   waits for a particular party.
//!
//! Below, the caller's identity ([`Me`]), the bounded futex wait they share, and the
//! benchmark's floor: a two-party turn word, the cheapest possible cross-process hand-off.

pub mod barrier;
pub mod condition;
pub mod event;
pub mod semaphore;

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::platform;

/// Who is calling: pid, kernel thread id and the thread's start time (clock ticks since boot,
/// 0 if `/proc` could not say). Together they name a thread for good: ids are reused, start
/// times tell the new thread from the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Me {
    /// `getpid()`.
    pub pid: u32,
    /// `gettid()`.
    pub tid: u32,
    /// The thread's start time.
    pub start: u64,
}

thread_local! {
    /// (fork epoch, identity) of the calling thread, so that the ids and the `/proc` read are
    /// paid once per thread; a fork changes the epoch and the cache is rebuilt in the child.
    static ME: Cell<Option<(u32, Me)>> = const { Cell::new(None) };
}

impl Me {
    /// The calling thread's identity (cached per thread, refreshed after `fork`).
    pub fn current() -> Me {
        let epoch = platform::fork_epoch();
        ME.with(|c| match c.get() {
            Some((e, me)) if e == epoch => me,
            _ => {
                let pid = platform::getpid() as u32;
                let tid = platform::gettid() as u32;
                let start = platform::thread_start_time(pid as i32, tid as i32)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let me = Me { pid, tid, start };
                c.set(Some((epoch, me)));
                me
            }
        })
    }
}

/// Whether `/proc` shows this process's own threads (it does not inside another pid
/// namespace's `/proc`, or when `/proc` is not mounted). Without it, a missing `/proc` entry
/// says nothing about a thread, and nothing is treated as dead.
pub fn proc_is_ours() -> bool {
    static OURS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OURS.get_or_init(|| {
        let pid = platform::getpid();
        let tid = platform::gettid();
        matches!(platform::thread_start_time(pid, tid), Ok(Some(_)))
    })
}

/// How a bounded futex wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitEnd {
    /// Woken, or the word no longer held the expected value, or a signal arrived.
    Changed,
    /// The whole slice passed.
    TimedOut,
}

/// Futex-waits on `word` while it holds `expected`, at most `slice`. `EAGAIN` (the word
/// changed) and `EINTR` count as [`WaitEnd::Changed`]; callers re-check their state anyway.
pub(crate) fn futex_wait_slice(
    word: &AtomicU32,
    expected: u32,
    slice: Duration,
) -> io::Result<WaitEnd> {
    match platform::futex_wait(word, expected, Some(slice)) {
        Ok(()) => Ok(WaitEnd::Changed),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(WaitEnd::TimedOut),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(WaitEnd::Changed)
        }
        Err(e) => Err(e),
    }
}

/// Sleeps on `word` while it holds `seen` (at most `slice`), counted in `sleepers`, if
/// `still` holds once registered (the re-check that closes the race with a waker that looked
/// before the registration).
///
/// The count is taken back by whoever ends the sleep: by [`wake`], for the sleepers it
/// woke, or here when the sleep ended otherwise (the word had changed, the slice passed, a
/// signal came). So a sleeper that was woken but has not run yet (a while, when processes
/// outnumber CPUs) is no longer counted, and the wakers that come meanwhile skip their
/// system call. Every thread that futex-waits on `word` must do so here, with the same
/// `sleepers`, for the count to stay exact.
pub(crate) fn sleep_on(
    word: &AtomicU32,
    sleepers: &AtomicU32,
    seen: u32,
    slice: Duration,
    still: impl FnOnce() -> bool,
) -> io::Result<WaitEnd> {
    // SeqCst: the registration is ordered before the re-checks below and the kernel's read
    // of `word`, against the waker's change of `word` (or of what `still` reads) and its load
    // of `sleepers` in `wake` (a Dekker pair).
    sleepers.fetch_add(1, Ordering::SeqCst);
    std::sync::atomic::fence(Ordering::SeqCst);
    // Relaxed: the fence above orders it; a changed word needs no system call.
    let r = if word.load(Ordering::Relaxed) == seen && still() {
        platform::futex_wait(word, seen, Some(slice))
    } else {
        Err(io::ErrorKind::WouldBlock.into())
    };
    let e = match r {
        // Dequeued by a wake, which took our count: FUTEX_WAIT returns 0 only then (a timeout
        // or a signal that races with the wake still returns 0).
        Ok(()) => return Ok(WaitEnd::Changed),
        Err(e) => e,
    };
    sleepers.fetch_sub(1, Ordering::SeqCst);
    match e.kind() {
        io::ErrorKind::TimedOut => Ok(WaitEnd::TimedOut),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(WaitEnd::Changed),
        _ => Err(e),
    }
}

/// Wakes up to `k` of the threads sleeping on `word` in [`sleep_on`], if `sleepers` counts
/// any, and takes the ones it woke off the count. The caller has changed `word` (and what
/// the sleepers re-check) by a SeqCst store or read-modify-write, or by stores ordered before
/// one: on x86-64 and AArch64, the platforms rmp supports, that orders them before the load
/// below without a fence of its own.
pub(crate) fn wake(word: &AtomicU32, sleepers: &AtomicU32, k: u32) {
    // SeqCst: after the caller's change, against the sleeper's registration and re-check
    // (the Dekker pair with `sleep_on`).
    if sleepers.load(Ordering::SeqCst) == 0 {
        return;
    }
    // A failed wake (EFAULT cannot happen on a live mapping) changes nothing: sleepers also
    // return at the end of their slice.
    if let Ok(n) = platform::futex_wake(word, k.min(i32::MAX as u32)) {
        if n > 0 {
            // Each sleeper the kernel dequeued registered before it slept and leaves its
            // count to us, so the count cannot go below zero.
            sleepers.fetch_sub(n as u32, Ordering::SeqCst);
        }
    }
}

/// Checks that `magic`/`version` mark an initialised state (Acquire on `magic`, pairing with
/// the Release store that ends each state's `init`).
pub(crate) fn check_header(magic: &AtomicU32, version: &AtomicU32, m: u32, v: u32) -> bool {
    magic.load(Ordering::Acquire) == m && version.load(Ordering::Relaxed) == v
}

/// Plays `rounds` turns of a two-party ping-pong on `word` as party `me` (0 or 1): waits until
/// `word == me`, hands the turn to the other party and wakes it. No spinning: every hand-off
/// is a futex wake and a futex wait, the raw cost of a cross-process wake-up.
///
/// Returns the number of turns played: fewer than `rounds` when one wait lasted longer than
/// `max_wait` or was interrupted by a signal, so that the caller can check for signals and call
/// again.
pub fn futex_pingpong(
    word: &AtomicU32,
    me: u32,
    rounds: u64,
    max_wait: Option<Duration>,
) -> io::Result<u64> {
    let other = 1 - (me & 1);
    for done in 0..rounds {
        loop {
            // Acquire: pairs with the Release store of the other party, so that whatever it
            // wrote before handing over the turn is visible here.
            let cur = word.load(Ordering::Acquire);
            if cur == me {
                break;
            }
            match platform::futex_wait(word, cur, max_wait) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e)
                    if e.kind() == io::ErrorKind::TimedOut
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    return Ok(done)
                }
                Err(e) => return Err(e),
            }
        }
        // Release: publishes this turn; pairs with the Acquire load above in the other party.
        word.store(other, Ordering::Release);
        platform::futex_wake(word, 1)?;
    }
    Ok(rounds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_woken_sleeper_leaves_its_count_to_the_waker() {
        let word = Arc::new(AtomicU32::new(0));
        let sleepers = Arc::new(AtomicU32::new(0));
        let (w, n) = (Arc::clone(&word), Arc::clone(&sleepers));
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            tx.send(platform::gettid()).unwrap();
            let start = std::time::Instant::now();
            let end = sleep_on(&w, &n, 0, Duration::from_secs(30), || true).unwrap();
            (end, start.elapsed())
        });
        // Until the thread sleeps in the kernel (state S in /proc: it does nothing else).
        let stat = format!("/proc/self/task/{}/stat", rx.recv().unwrap());
        while sleepers.load(Ordering::SeqCst) == 0
            || !std::fs::read_to_string(&stat).is_ok_and(|s| s.contains(") S "))
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        word.store(1, Ordering::SeqCst);
        wake(&word, &sleepers, 1);
        // Off the count as soon as it is woken, before it runs again.
        assert_eq!(sleepers.load(Ordering::SeqCst), 0);
        let (end, waited) = t.join().unwrap();
        assert_eq!(end, WaitEnd::Changed);
        assert!(waited < Duration::from_secs(20), "{waited:?}");
        // The sleeper did not take it off a second time.
        assert_eq!(sleepers.load(Ordering::SeqCst), 0);
        // With nobody counted, a wake is not even attempted, and changes nothing.
        wake(&word, &sleepers, 1);
        assert_eq!(sleepers.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_sleep_that_ends_otherwise_takes_its_count_back() {
        let word = AtomicU32::new(5);
        let sleepers = AtomicU32::new(0);
        let slice = Duration::from_millis(10);
        // The word changed already, the re-check fails, or the slice passes.
        assert_eq!(
            sleep_on(&word, &sleepers, 4, slice, || true).unwrap(),
            WaitEnd::Changed
        );
        assert_eq!(
            sleep_on(&word, &sleepers, 5, slice, || false).unwrap(),
            WaitEnd::Changed
        );
        assert_eq!(
            sleep_on(&word, &sleepers, 5, slice, || true).unwrap(),
            WaitEnd::TimedOut
        );
        assert_eq!(sleepers.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn many_sleepers_and_wakers_leave_no_count_behind() {
        // 4 threads take turns on one word (each waits for its number), with short slices and
        // wakes of one sleeper at a time: the count ends at zero, and every turn was taken.
        let word = Arc::new(AtomicU32::new(0));
        let sleepers = Arc::new(AtomicU32::new(0));
        let rounds = 500u32;
        let threads: Vec<_> = (0..4u32)
            .map(|me| {
                let (w, n) = (Arc::clone(&word), Arc::clone(&sleepers));
                std::thread::spawn(move || {
                    for r in 0..rounds {
                        let mine = r * 4 + me;
                        loop {
                            let cur = w.load(Ordering::SeqCst);
                            if cur == mine {
                                break;
                            }
                            sleep_on(&w, &n, cur, Duration::from_millis(5), || true).unwrap();
                        }
                        w.store(mine + 1, Ordering::SeqCst);
                        wake(&w, &n, 1 + r % 3);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(word.load(Ordering::SeqCst), rounds * 4);
        assert_eq!(sleepers.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn me_is_cached_per_thread() {
        let a = Me::current();
        assert_eq!(a, Me::current());
        assert_eq!(a.pid, std::process::id());
        assert!(a.start > 0);
        let b = std::thread::spawn(Me::current).join().unwrap();
        assert_eq!(a.pid, b.pid);
        assert_ne!(a.tid, b.tid);
    }

    #[test]
    fn lone_party_times_out_without_playing() {
        let word = AtomicU32::new(0);
        // Party 1 waits for a turn that never comes.
        let n = futex_pingpong(&word, 1, 5, Some(Duration::from_millis(5))).unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn two_threads_alternate() {
        let word = Arc::new(AtomicU32::new(0));
        let w2 = Arc::clone(&word);
        let t = std::thread::spawn(move || {
            let mut left = 1000;
            while left > 0 {
                left -= futex_pingpong(&w2, 1, left, Some(Duration::from_millis(10))).unwrap();
            }
        });
        assert_eq!(futex_pingpong(&word, 0, 1000, None).unwrap(), 1000);
        t.join().unwrap();
        assert_eq!(word.load(Ordering::SeqCst), 0);
    }
}
