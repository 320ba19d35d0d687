//! Futex-based synchronization over shared memory.
//!
//! `semaphore`: the futex semaphore that `SemLock` will build on. Below, the benchmark's
//! floor: a two-party turn word, the cheapest possible cross-process hand-off (one futex wake
//! and one futex wait per turn).

pub mod semaphore;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::platform;

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
