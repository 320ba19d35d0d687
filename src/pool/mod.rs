//! A pool's task board: one slot per worker, in shared memory, where each worker records the
//! task it is running.
//!
//! The stdlib's pool cannot tell which task a dead worker took, so that task's result never
//! comes and `get()` waits forever. Here a worker claims each task into its slot while it
//! still holds the task queue's pop lock, before the pop is published (see
//! [`crate::queue::Ring::try_pop_many_with`]'s `claim`): a worker killed before the publish
//! leaves the message in the queue, and one killed after it leaves the claim behind. So when
//! the parent sees a worker die, its slot names the task that was lost.
//!
//! Each slot is a seqlock: the writer makes `seq` odd, stores the fields, makes it even
//! again. A reader retries while it is odd or changed under it. The one writer of a slot is
//! the worker that owns it; a worker killed mid-write leaves `seq` odd for good, which the
//! reader reports as torn: that write was a claim not yet published (its message is still
//! queued) or a finish (its result was already sent), so a torn slot holds no lost task.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::shm::Segment;

/// `"RMPT"` (task board), written last by [`Board::create`].
pub const BOARD_MAGIC: u32 = u32::from_le_bytes(*b"RMPT");
/// Layout version of [`BoardHeader`] and [`Slot`].
pub const BOARD_VERSION: u32 = 1;

/// Slot state: waiting for a task (or never started).
pub const IDLE: u32 = 0;
/// Slot state: running the task in `job`/`index` since `started_ns`.
pub const RUNNING: u32 = 1;

/// Start of the board's segment (64 bytes).
#[repr(C, align(64))]
pub struct BoardHeader {
    /// [`BOARD_MAGIC`], stored last with Release (pairs with the Acquire load in `open`).
    magic: AtomicU32,
    /// [`BOARD_VERSION`].
    version: AtomicU32,
    /// Number of slots that follow the header.
    slots: AtomicU32,
    _reserved: [u32; 13],
}

/// One worker's slot (64 bytes, its own cache line).
#[repr(C, align(64))]
pub struct Slot {
    /// Seqlock word: odd while the owner writes the fields below.
    seq: AtomicU64,
    /// [`IDLE`] or [`RUNNING`].
    state: AtomicU32,
    /// Pid of the worker that wrote last.
    pid: AtomicU32,
    /// The running task's job id (the pool's counter; never reused in a pool's life).
    job: AtomicU64,
    /// The running task's index within its job (a chunk number for `map`).
    index: AtomicU64,
    /// `CLOCK_MONOTONIC` nanoseconds (system-wide) when the task was claimed.
    started_ns: AtomicU64,
    /// Tasks claimed through this slot, by all its workers: progress for the parent.
    claims: AtomicU64,
    /// The task queue's pop count once the claimed task's pop is published: while the
    /// queue shows fewer, the pop was not published and the task is still queued.
    pops: AtomicU64,
    _reserved: [u64; 1],
}

/// What a reader saw in a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotView {
    pub state: u32,
    pub pid: u32,
    pub job: u64,
    pub index: u64,
    pub started_ns: u64,
    pub claims: u64,
    /// See [`Slot::pops`].
    pub pops: u32,
    /// The owner died (or is) mid-write: the fields may mix two writes (see the module doc).
    pub torn: bool,
}

/// A task board mapped in this process.
#[derive(Debug)]
pub struct Board {
    seg: Segment,
    slots: u32,
}

const HEADER: usize = std::mem::size_of::<BoardHeader>();
const SLOT: usize = std::mem::size_of::<Slot>();

fn size_for(slots: u32) -> usize {
    HEADER + SLOT * slots as usize
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (the same clock in every process).
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

impl Board {
    /// A new board of `slots` idle slots (1 ..= 65536) in a fresh anonymous segment.
    pub fn create(slots: u32) -> io::Result<Board> {
        if slots == 0 || slots > 1 << 16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a task board has 1 to 65536 slots",
            ));
        }
        let board = Board {
            seg: Segment::create(size_for(slots))?,
            slots,
        };
        let h = board.header();
        h.version.store(BOARD_VERSION, Ordering::Relaxed);
        h.slots.store(slots, Ordering::Relaxed);
        // Release: pairs with the Acquire load in `open`: a process that sees the magic sees
        // the fields above (the slots are zero, i.e. idle, from the fresh memfd).
        h.magic.store(BOARD_MAGIC, Ordering::Release);
        Ok(board)
    }

    /// Maps the board in `fd` (received from the pool's parent), checking its header.
    pub fn open(fd: OwnedFd, slots: u32) -> io::Result<Board> {
        let board = Board {
            seg: Segment::map(fd, size_for(slots))?,
            slots,
        };
        let h = board.header();
        // Acquire: pairs with the Release store in `create`.
        let ok = h.magic.load(Ordering::Acquire) == BOARD_MAGIC
            && h.version.load(Ordering::Relaxed) == BOARD_VERSION
            && h.slots.load(Ordering::Relaxed) == slots;
        if !ok {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an rmp task board of this version and size",
            ));
        }
        Ok(board)
    }

    /// The segment's descriptor, for a spawned worker.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.seg.fd()
    }

    /// Number of slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    fn header(&self) -> &BoardHeader {
        // SAFETY: the segment is at least HEADER bytes, 64-aligned (mmap is page-aligned), and
        // BoardHeader is only atomics and padding, valid for any bit pattern (zero included).
        unsafe { self.seg.as_ptr().cast::<BoardHeader>().as_ref() }
    }

    fn slot(&self, i: u32) -> io::Result<&Slot> {
        if i >= self.slots {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("slot {i} out of range (board of {})", self.slots),
            ));
        }
        // SAFETY: slot `i` lies within the mapping (size_for(slots)), 64-aligned after the
        // 64-byte header, and Slot is only atomics, valid for any bit pattern.
        Ok(unsafe {
            self.seg
                .as_ptr()
                .add(HEADER + SLOT * i as usize)
                .cast::<Slot>()
                .as_ref()
        })
    }

    /// Runs `write` on slot `i` as its one writer, inside the seqlock.
    fn write(&self, i: u32, write: impl FnOnce(&Slot)) -> io::Result<()> {
        let s = self.slot(i)?;
        // Odd from whatever it was: a writer killed mid-write left it odd, and counting up
        // from there would flip the parity for good. Relaxed: a slot has one writer at a
        // time (its worker; a replacement starts after the previous one died); the fence
        // orders the odd `seq` before the field stores (pairs with the reader's Acquire
        // fence).
        let odd = s.seq.load(Ordering::Relaxed) | 1;
        s.seq.store(odd, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        write(s);
        s.pid
            .store(crate::platform::cached_pid() as u32, Ordering::Relaxed);
        // Release: the fields are visible to a reader that sees the even `seq` (pairs with
        // the Acquire load in `read`).
        s.seq.store(odd.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Records that slot `i`'s worker runs task (`job`, `index`) from now, taken by the
    /// pop that brings the task queue's pop count to `pops`.
    pub fn claim(&self, i: u32, job: u64, index: u64, pops: u32) -> io::Result<()> {
        let now = monotonic_ns();
        self.write(i, |s| {
            s.job.store(job, Ordering::Relaxed);
            s.index.store(index, Ordering::Relaxed);
            s.pops.store(u64::from(pops), Ordering::Relaxed);
            s.started_ns.store(now, Ordering::Relaxed);
            s.state.store(RUNNING, Ordering::Relaxed);
            s.claims.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Records that slot `i`'s worker finished its task (its result is sent).
    pub fn finish(&self, i: u32) -> io::Result<()> {
        self.write(i, |s| s.state.store(IDLE, Ordering::Relaxed))
    }

    /// Reads slot `i`. A slot that stays odd or keeps changing over a few tries is returned
    /// as last seen, marked torn.
    pub fn read(&self, i: u32) -> io::Result<SlotView> {
        let s = self.slot(i)?;
        let mut view;
        let mut tries = 0;
        loop {
            // Acquire: pairs with the writer's Release increment.
            let before = s.seq.load(Ordering::Acquire);
            view = SlotView {
                state: s.state.load(Ordering::Relaxed),
                pid: s.pid.load(Ordering::Relaxed),
                job: s.job.load(Ordering::Relaxed),
                index: s.index.load(Ordering::Relaxed),
                started_ns: s.started_ns.load(Ordering::Relaxed),
                claims: s.claims.load(Ordering::Relaxed),
                pops: s.pops.load(Ordering::Relaxed) as u32,
                torn: true,
            };
            // Acquire fence: the field loads above happen before the second `seq` load
            // (pairs with the writer's Release fence after making `seq` odd).
            std::sync::atomic::fence(Ordering::Acquire);
            let after = s.seq.load(Ordering::Relaxed);
            if before == after && before % 2 == 0 {
                view.torn = false;
                return Ok(view);
            }
            tries += 1;
            if tries >= 64 {
                return Ok(view);
            }
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_finish_read() {
        let b = Board::create(3).unwrap();
        assert_eq!(b.read(1).unwrap().state, IDLE);
        b.claim(1, 7, 42, 9).unwrap();
        let v = b.read(1).unwrap();
        assert_eq!(
            (v.state, v.job, v.index, v.claims, v.pops, v.torn),
            (RUNNING, 7, 42, 1, 9, false)
        );
        assert_eq!(v.pid as i32, crate::platform::getpid());
        assert!(v.started_ns > 0 && v.started_ns <= monotonic_ns());
        b.finish(1).unwrap();
        assert_eq!(b.read(1).unwrap().state, IDLE);
        assert_eq!(b.read(0).unwrap().claims, 0);
        assert!(b.read(3).is_err());
        assert!(Board::create(0).is_err());
    }

    #[test]
    fn a_slot_left_torn_by_a_killed_writer_heals_at_the_next_write() {
        let b = Board::create(1).unwrap();
        b.claim(0, 1, 2, 1).unwrap();
        // A writer killed mid-write leaves `seq` odd.
        b.slot(0).unwrap().seq.fetch_add(1, Ordering::Relaxed);
        assert!(b.read(0).unwrap().torn);
        b.finish(0).unwrap();
        let v = b.read(0).unwrap();
        assert!(!v.torn && v.state == IDLE);
        b.claim(0, 7, 3, 2).unwrap();
        let v = b.read(0).unwrap();
        assert!(!v.torn && (v.job, v.index) == (7, 3));
    }

    #[test]
    fn a_reader_never_accepts_a_mix_of_two_writes() {
        // The writer keeps job == index == pops; a view the reader accepts must show that.
        let b = std::sync::Arc::new(Board::create(1).unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (b, stop) = (b.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    n = n.wrapping_add(1);
                    b.claim(0, u64::from(n), u64::from(n), n).unwrap();
                }
            })
        };
        let mut accepted = 0;
        for _ in 0..200_000 {
            let v = b.read(0).unwrap();
            if !v.torn {
                assert_eq!(v.job, v.index);
                assert_eq!(v.job as u32, v.pops);
                accepted += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(accepted > 0);
    }

    #[test]
    fn open_checks_the_header() {
        let b = Board::create(2).unwrap();
        let fd = b.fd().unwrap().try_clone_to_owned().unwrap();
        let again = Board::open(fd, 2).unwrap();
        b.claim(1, 5, 6, 1).unwrap();
        assert_eq!(again.read(1).unwrap().job, 5);
        let fd = b.fd().unwrap().try_clone_to_owned().unwrap();
        assert!(Board::open(fd, 1).is_err());
    }
}
