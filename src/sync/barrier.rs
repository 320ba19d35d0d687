//! `BarrierState`: rmp's `Barrier`, with `threading.Barrier`'s semantics (indices in arrival
//! order, an action run by the last arrival, `abort`, `reset`, breaking on timeout).
//!
//! CPython's process-shared `Barrier` is `threading.Barrier` over a process-shared
//! `Condition`, whose `notify_all` waits for every sleeper to answer: one SIGKILLed party hangs
//! the barrier for everyone. Here the state is one 64-bit word updated by CAS (arrivals,
//! broken flag, how the last 15 generations ended, generation) and a sequence word that
//! waiters futex-wait on; releasing a generation is one CAS and one wake, and never waits for
//! anyone. A party that dies after arriving still counts as arrived, so the others complete
//! the generation without it. Ending a generation and recording how it ended (released, or
//! reset) is the same CAS, so a sleeper that wakes late always learns the truth.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::{check_header, futex_wait_slice};
use crate::platform;

/// `b"RMPB"`: marks an initialised [`BarrierState`].
pub const BARRIER_MAGIC: u32 = u32::from_le_bytes(*b"RMPB");
/// Layout version of [`BarrierState`]. 2: outcome history in the state word (1 kept the
/// last reset generation in a separate word, which could be read out of step).
pub const BARRIER_VERSION: u32 = 2;
/// Most parties a barrier may have (the arrival count has 16 bits).
pub const MAX_PARTIES: u32 = 0xffff;

const ARRIVED_MASK: u64 = 0xffff;
const BROKEN: u64 = 1 << 16;
const HISTORY_SHIFT: u32 = 17;
/// Generations whose outcome the state remembers.
const HISTORY: u32 = 15;
const HISTORY_MASK: u64 = ((1 << HISTORY) - 1) << HISTORY_SHIFT;
const GEN_SHIFT: u32 = 32;

fn gen_of(state: u64) -> u32 {
    (state >> GEN_SHIFT) as u32
}

fn history_bit(gen: u32) -> u64 {
    1 << (HISTORY_SHIFT + gen % HISTORY)
}

/// The state that starts the generation after the one in `cur`: no arrivals, not broken, and
/// the history saying whether the ending generation was `reset`.
fn next_generation(cur: u64, by_reset: bool) -> u64 {
    let gen = gen_of(cur);
    let mut history = cur & HISTORY_MASK & !history_bit(gen);
    if by_reset {
        history |= history_bit(gen);
    }
    (u64::from(gen.wrapping_add(1)) << GEN_SHIFT) | history
}

/// One barrier in shared memory (32 bytes). Field by field:
#[repr(C)]
#[derive(Debug)]
pub struct BarrierState {
    /// [`BARRIER_MAGIC`], written last by `init` (Release).
    magic: AtomicU32,
    /// [`BARRIER_VERSION`].
    version: AtomicU32,
    /// The futex word: bumped on every release, abort and reset.
    seq: AtomicU32,
    /// Number of parties, written once by `init` (> 0).
    parties: AtomicU32,
    /// Bits 0-15: parties arrived in the current generation. Bit 16: broken. Bits 17-31: for
    /// generation `g`, bit `17 + g % 15` is 1 if `g` ended by `reset` (its late sleepers
    /// raise `BrokenBarrierError`), 0 if it was released. Bits 32-63: the generation (wraps).
    state: AtomicU64,
    /// Reserved, zero.
    _reserved: u64,
}

/// What [`BarrierState::arrive`] gives.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Arrival {
    /// The barrier is broken: raise `BrokenBarrierError`.
    Broken,
    /// Every party has arrived and the last one has not released them yet (its action runs):
    /// wait for `seq` to move, then arrive again.
    Full,
    /// Arrived as `index` of generation `gen`; wait for its release.
    Wait {
        /// The generation.
        gen: u32,
        /// Arrival index, 0-based.
        index: u32,
    },
    /// The last party of generation `gen` (its index is `parties - 1`): run the action, then
    /// [`BarrierState::release`] (or [`BarrierState::abort`] if the action failed).
    Last {
        /// The generation.
        gen: u32,
    },
}

/// How one wait slice of a waiting party ended.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Passage {
    /// Still waiting.
    Waiting,
    /// The generation was released: pass.
    Released,
    /// Broken (abort, reset or a timeout elsewhere): raise `BrokenBarrierError`.
    Broken,
}

impl BarrierState {
    /// Initialises a zeroed slot for `parties` (> 0) parties; must run before sharing.
    pub fn init(&self, parties: u32) {
        self.parties
            .store(parties.clamp(1, MAX_PARTIES), Ordering::Relaxed);
        self.state.store(0, Ordering::Relaxed);
        self.seq.store(0, Ordering::Relaxed);
        self.version.store(BARRIER_VERSION, Ordering::Relaxed);
        // Release: publishes the fields above; pairs with the Acquire in `check`.
        self.magic.store(BARRIER_MAGIC, Ordering::Release);
    }

    /// Whether the slot was initialised by a compatible `init`.
    pub fn check(&self) -> bool {
        check_header(&self.magic, &self.version, BARRIER_MAGIC, BARRIER_VERSION)
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.parties.load(Ordering::Relaxed)
    }

    /// Parties waiting in the current generation (0 when broken).
    pub fn n_waiting(&self) -> u32 {
        let s = self.state.load(Ordering::Acquire);
        if s & BROKEN != 0 {
            0
        } else {
            ((s & ARRIVED_MASK) as u32).min(self.parties().saturating_sub(1))
        }
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        self.state.load(Ordering::Acquire) & BROKEN != 0
    }

    /// The sequence value to wait from (read it before `arrive`/`poll`).
    pub fn seq(&self) -> u32 {
        // Acquire: pairs with the Release increments in `bump`.
        self.seq.load(Ordering::Acquire)
    }

    /// Arrives at the barrier.
    pub fn arrive(&self) -> Arrival {
        let parties = u64::from(self.parties());
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if cur & BROKEN != 0 {
                return Arrival::Broken;
            }
            let arrived = cur & ARRIVED_MASK;
            if arrived >= parties {
                return Arrival::Full;
            }
            // AcqRel: the release CAS of the last party (Acquire side) sees every arrival's
            // writes made before arriving (Release side).
            match self.state.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let gen = gen_of(cur);
                    return if arrived + 1 == parties {
                        Arrival::Last { gen }
                    } else {
                        Arrival::Wait {
                            gen,
                            index: arrived as u32,
                        }
                    };
                }
                Err(actual) => cur = actual,
            }
        }
    }

    fn bump(&self) {
        // Release: pairs with the Acquire load in `seq`.
        self.seq.fetch_add(1, Ordering::Release);
        let _ = platform::futex_wake(&self.seq, i32::MAX as u32);
    }

    /// Applies `f` to the state word with a CAS loop until it sticks; `f` returning None
    /// leaves the state alone. Returns whether the state was changed.
    fn update(&self, mut f: impl FnMut(u64) -> Option<u64>) -> bool {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            let Some(new) = f(cur) else { return false };
            // AcqRel: a release or reset publishes the caller's writes (the last party's
            // action) to the parties that see the new state, and sees theirs.
            match self
                .state
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Ends generation `gen` (called by its last party): everybody waiting passes.
    pub fn release(&self, gen: u32) {
        // Reset or aborted meanwhile: nothing to release.
        if self.update(|cur| {
            (gen_of(cur) == gen && cur & BROKEN == 0).then(|| next_generation(cur, false))
        }) {
            self.bump();
        }
    }

    /// Withdraws an arrival of generation `gen` that stopped waiting without breaking the
    /// barrier (an interrupted `wait`, as `threading.Barrier` does): if the generation is
    /// still filling, one arrival less.
    pub fn leave(&self, gen: u32) {
        let parties = u64::from(self.parties());
        self.update(|cur| {
            let arrived = cur & ARRIVED_MASK;
            let filling = gen_of(cur) == gen && cur & BROKEN == 0 && arrived > 0;
            (filling && arrived < parties).then(|| cur - 1)
        });
    }

    /// Breaks the barrier: current and future waiters get `BrokenBarrierError` until `reset`.
    pub fn abort(&self) {
        // AcqRel: an ordinary read-modify-write; the bump publishes it to sleepers.
        self.state.fetch_or(BROKEN, Ordering::AcqRel);
        self.bump();
    }

    /// Returns the barrier to its empty state; parties waiting now get `BrokenBarrierError`.
    pub fn reset(&self) {
        self.update(|cur| Some(next_generation(cur, true)));
        self.bump();
    }

    /// Sleeps at most `slice` while `seq` still holds `seen` (updated in place): how a party
    /// that found the barrier [`Arrival::Full`] waits before arriving again.
    pub fn wait_seq_slice(&self, seen: &mut u32, slice: Duration) -> io::Result<()> {
        futex_wait_slice(&self.seq, *seen, slice)?;
        *seen = self.seq();
        Ok(())
    }

    /// Checks whether generation `gen` has ended, else sleeps at most `slice` on `seq` from
    /// the value `seen` (updated in place).
    pub fn wait_slice(&self, gen: u32, seen: &mut u32, slice: Duration) -> io::Result<Passage> {
        let p = self.poll(gen);
        if p != Passage::Waiting {
            return Ok(p);
        }
        futex_wait_slice(&self.seq, *seen, slice)?;
        *seen = self.seq();
        Ok(self.poll(gen))
    }

    fn poll(&self, gen: u32) -> Passage {
        let s = self.state.load(Ordering::Acquire);
        let ended = gen_of(s).wrapping_sub(gen);
        if ended != 0 {
            // The outcome of `gen` is remembered for HISTORY generations; a sleeper that slept
            // through more (an implausible case) is let through.
            if ended <= HISTORY && s & history_bit(gen) != 0 {
                Passage::Broken
            } else {
                Passage::Released
            }
        } else if s & BROKEN != 0 {
            Passage::Broken
        } else {
            Passage::Waiting
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn new_barrier(parties: u32) -> Arc<BarrierState> {
        // SAFETY: BarrierState is atomics and integers; all-zero is valid.
        let b: Arc<BarrierState> = Arc::new(unsafe { std::mem::zeroed() });
        b.init(parties);
        assert!(b.check());
        b
    }

    fn pass(b: &BarrierState) -> Result<u32, ()> {
        loop {
            let mut seen = b.seq();
            match b.arrive() {
                Arrival::Broken => return Err(()),
                Arrival::Full => b
                    .wait_seq_slice(&mut seen, Duration::from_millis(10))
                    .unwrap(),
                Arrival::Last { gen } => {
                    b.release(gen);
                    return Ok(b.parties() - 1);
                }
                Arrival::Wait { gen, index } => loop {
                    match b
                        .wait_slice(gen, &mut seen, Duration::from_millis(50))
                        .unwrap()
                    {
                        Passage::Waiting => {}
                        Passage::Released => return Ok(index),
                        Passage::Broken => return Err(()),
                    }
                },
            }
        }
    }

    #[test]
    fn layout_is_32_bytes() {
        assert_eq!(std::mem::size_of::<BarrierState>(), 32);
    }

    #[test]
    fn a_sleeper_through_two_resets_is_broken_and_a_released_one_passes() {
        let b = new_barrier(2);
        let mut seen = b.seq();
        let Arrival::Wait { gen, .. } = b.arrive() else {
            panic!()
        };
        b.reset();
        b.reset();
        assert_eq!(
            b.wait_slice(gen, &mut seen, Duration::from_millis(1))
                .unwrap(),
            Passage::Broken
        );
        // A generation released normally, then reset after: its sleeper passes.
        let mut seen = b.seq();
        let Arrival::Wait { gen, .. } = b.arrive() else {
            panic!()
        };
        assert!(matches!(b.arrive(), Arrival::Last { .. }));
        b.release(gen);
        b.reset();
        assert_eq!(
            b.wait_slice(gen, &mut seen, Duration::from_millis(1))
                .unwrap(),
            Passage::Released
        );
    }

    #[test]
    fn three_threads_many_rounds() {
        let b = new_barrier(3);
        let ts: Vec<_> = (0..3)
            .map(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    let mut idx = Vec::new();
                    for _ in 0..200 {
                        idx.push(pass(&b).unwrap());
                    }
                    idx
                })
            })
            .collect();
        let all: Vec<Vec<u32>> = ts.into_iter().map(|t| t.join().unwrap()).collect();
        for round in 0..200 {
            let mut got: Vec<u32> = all.iter().map(|v| v[round]).collect();
            got.sort();
            assert_eq!(got, vec![0, 1, 2]);
        }
    }

    #[test]
    fn a_dead_party_still_counts_and_abort_breaks() {
        let b = new_barrier(2);
        // A party arrives and "dies" without waiting.
        assert!(matches!(b.arrive(), Arrival::Wait { index: 0, .. }));
        // The next party completes the generation alone.
        assert_eq!(pass(&b), Ok(1));
        assert_eq!(b.n_waiting(), 0);
        b.abort();
        assert!(b.broken());
        assert_eq!(pass(&b), Err(()));
        b.reset();
        assert!(!b.broken());
    }

    #[test]
    fn leaving_withdraws_an_arrival() {
        let b = new_barrier(2);
        let Arrival::Wait { gen, .. } = b.arrive() else {
            panic!()
        };
        assert_eq!(b.n_waiting(), 1);
        b.leave(gen);
        assert_eq!(b.n_waiting(), 0);
        assert!(!b.broken());
        // Two fresh parties still make a generation.
        assert!(matches!(b.arrive(), Arrival::Wait { index: 0, .. }));
        assert!(matches!(b.arrive(), Arrival::Last { .. }));
    }

    #[test]
    fn reset_breaks_current_waiters() {
        let b = new_barrier(2);
        let mut seen = b.seq();
        let Arrival::Wait { gen, .. } = b.arrive() else {
            panic!()
        };
        b.reset();
        assert_eq!(
            b.wait_slice(gen, &mut seen, Duration::from_millis(1))
                .unwrap(),
            Passage::Broken
        );
        assert_eq!(b.n_waiting(), 0);
    }
}
