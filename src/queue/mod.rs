//! A bounded many-producer many-consumer byte ring in shared memory: the core of rmp's queues
//! (`channel` owns a ring with its side channels, `feeder` is the per-process thread that
//! moves a backlog into it).
//!
//! One [`RingHeader`] (`#[repr(C)]`, 512 bytes, versioned) followed by `capacity` bytes of
//! data, all in one `MAP_SHARED` mapping. Messages are records: an 8-byte header (length,
//! kind, tag) and the payload padded to 8 bytes. A record never straddles the end of the data
//! area: a writer that would cross it first writes a *wrap* record that tells readers to
//! continue at the start. A message too large for the ring travels as a memfd over a
//! `SCM_RIGHTS` socket, and the ring carries a 16-byte *fd record* (sequence number, length)
//! in its place, in order with the others.
//!
//! **Two locks** (a two-lock queue): producers serialise on one recursive-mutex [`SemState`],
//! consumers on another, each in its own cache line, and each side writes only its own line
//! of the header (`tail` + `not_empty` for producers, `head` + `not_full` for consumers). A
//! producer reads `head` only when its cached copy says there is no room, a consumer reads
//! `tail` only when its cached copy says the ring is empty; so one producer and one consumer
//! move few cache lines per message. Each lock records its holder, so that a process killed
//! while holding it does not wedge the others (the next one takes it over).
//!
//! **Commit, then publish**: a producer copies the record into free space and only then
//! stores `tail` (Release); a consumer copies the payload out and only then stores `head`
//! (Release). `tail` and `head` each pack the position (low 32 bits, modulo 2^32; the
//! capacity is at most 2^30) with the count of messages pushed / popped (high 32 bits), so
//! one store publishes both and the number of waiting messages (`pushes - pops`) can never
//! drift. A writer killed mid-copy leaves no visible message; a reader killed mid-copy leaves
//! the message in place for the next reader. For fd records, the socket message carries the
//! record's sequence number, so a descriptor whose record was never committed (writer killed
//! between the send and the publish) is discarded, and a record whose descriptor was taken by
//! a killed reader is dropped: each costs only the killed process's own message.
//!
//! Sleepers wait on the sequence words `not_empty` / `not_full`, bumped after every push /
//! pop, and are woken only when someone sleeps. A `JoinableQueue`'s unfinished-task count and
//! the queue's shutdown state live in the header too.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::platform;
use crate::sync::semaphore::{Kind, SemState};
use crate::sync::{sleep_on, wake, Me};

pub mod channel;
pub mod feeder;

/// `b"RMPQ"`: marks an initialised [`RingHeader`].
pub const RING_MAGIC: u32 = u32::from_le_bytes(*b"RMPQ");
/// Layout version of [`RingHeader`] and of the record format.
pub const RING_VERSION: u32 = 5;
/// Bytes before the data area.
pub const HEADER_SIZE: usize = 512;
/// Bytes of a record header.
pub const RECORD_HEADER: usize = 8;
/// The largest capacity: positions are kept modulo 2^32, so the distance between `head` and
/// `tail` must stay far below it.
pub const MAX_CAPACITY: u32 = 1 << 30;
/// Bytes of an fd record's payload: sequence number and message length, both u64 LE.
const FD_RECORD: usize = 16;

const KIND_MESSAGE: u32 = 0;
const KIND_WRAP: u32 = 1;
const KIND_FD: u32 = 2;
/// CPU pauses a push or pop spins for its side's lock before it sleeps: the lock guards a
/// copy of a few bytes, so a holder that runs releases it within the spin, where a futex
/// sleep and wake-up would cost both sides a system call.
const LOCK_SPINS: u32 = 100;
/// How long one attempt to take a lock may sleep before the caller re-checks (a lock is held
/// only for a copy, so this is rarely reached).
const LOCK_SLICE: Duration = Duration::from_millis(50);

/// `shutdown` values.
pub const OPEN: u32 = 0;
/// `shutdown()`: puts fail; gets fail once the ring is empty.
pub const SHUTDOWN: u32 = 1;
/// `shutdown(immediate=True)`: the ring was drained; puts and gets fail.
pub const SHUTDOWN_IMMEDIATE: u32 = 2;

/// A `head`/`tail` word: (count << 32) | position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct End {
    pos: u32,
    count: u32,
}

impl End {
    fn unpack(w: u64) -> End {
        End {
            pos: w as u32,
            count: (w >> 32) as u32,
        }
    }
    fn pack(self) -> u64 {
        (u64::from(self.count) << 32) | u64::from(self.pos)
    }
}

/// The ring's shared header, one cache line per writer. Field by field:
#[repr(C, align(64))]
#[derive(Debug)]
pub struct RingHeader {
    // ---- line 0: written once by `init`, then read-mostly
    /// [`RING_MAGIC`], written last by `init` (Release).
    magic: AtomicU32,
    /// [`RING_VERSION`].
    version: AtomicU32,
    /// Bytes of the data area: a power of two, 64 ..= [`MAX_CAPACITY`].
    capacity: AtomicU32,
    /// Most messages the ring holds at once (`u32::MAX`: only bytes limit it).
    max_items: AtomicU32,
    /// [`OPEN`], [`SHUTDOWN`] or [`SHUTDOWN_IMMEDIATE`]; only ever grows.
    shutdown: AtomicU32,
    /// 1 once the readiness eventfd is kept (a `SimpleQueue` whose `_reader` was asked for):
    /// from then on every push adds one to it (before publishing) and every pop takes one
    /// (after publishing), so its count is never below the messages waiting.
    evfd_armed: AtomicU32,
    _pad0: [u32; 10],
    // ---- line 1: written by producers (under `push_lock`)
    /// [`End`] of the write side: position after the last committed record, and messages
    /// pushed since creation. Stored (Release) after the record is copied in: the publish.
    tail: AtomicU64,
    /// The last sequence number given to an fd record (before its descriptor is sent).
    fd_seq: AtomicU64,
    /// Futex word bumped after every push (Release): consumers sleep on it.
    not_empty: AtomicU32,
    _pad1: [u32; 11],
    // ---- line 2: written by consumers (under `pop_lock`)
    /// [`End`] of the read side: position of the oldest record, and messages popped since
    /// creation. Stored (Release) after the payload is copied out: the publish of a pop.
    head: AtomicU64,
    /// Futex word bumped after every pop (Release): producers sleep on it.
    not_full: AtomicU32,
    _pad2: [u32; 13],
    // ---- line 3: written only by sleepers
    /// Consumers sleeping on `not_empty`.
    empty_sleepers: AtomicU32,
    /// Producers sleeping on `not_full`.
    full_sleepers: AtomicU32,
    /// Threads sleeping in `join()` on `unfinished`.
    join_sleepers: AtomicU32,
    /// Producers sleeping on `drained` until the ring is at most half full.
    room_sleepers: AtomicU32,
    /// Futex word bumped by a consumer whose pop left the ring at most half full while
    /// `room_sleepers` was non-zero.
    drained: AtomicU32,
    _pad3: [u32; 11],
    // ---- line 4: JoinableQueue
    /// Messages put and not yet marked done; also the futex word `join()` sleeps on.
    unfinished: AtomicU32,
    _pad4: [u32; 15],
    // ---- lines 5, 6: the locks (recursive-mutex kind, holder recorded)
    /// Serialises producers.
    push_lock: SemState,
    /// Serialises consumers.
    pop_lock: SemState,
    // ---- line 7
    _reserved: [u32; 16],
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// Committed.
    Done,
    /// `max_items` messages wait; wait on `not_full` and retry.
    FullItems,
    /// Not enough free bytes (or the side socket is full); wait on `not_full` and retry.
    FullBytes,
    /// The message can never fit in this ring: send it another way.
    TooBig,
}

impl Push {
    /// Whether the push must be retried later.
    pub fn is_full(&self) -> bool {
        matches!(self, Push::FullItems | Push::FullBytes)
    }
}

/// What a pop took.
#[derive(Debug)]
pub enum Popped<T> {
    /// A message stored in the ring, copied into what the allocator gave.
    Inline { tag: u8, data: T },
    /// A message in its own memfd of `len` bytes.
    Fd { tag: u8, fd: OwnedFd, len: u64 },
}

/// The process-local descriptors a ring's operations may need.
#[derive(Clone, Copy, Debug)]
pub struct Links<'a> {
    /// The side socket's sending end (fd records).
    pub send: BorrowedFd<'a>,
    /// The side socket's receiving end.
    pub recv: BorrowedFd<'a>,
    /// The readiness eventfd, if the queue has one.
    pub evfd: Option<BorrowedFd<'a>>,
}

/// A view of a ring in a mapping, with this process's cached copies of the other side's end.
/// A copy is trusted only while this process made the last push (for `seen_head`) or pop
/// (for `seen_tail`): then it is at most one ring behind, never stale enough for the 32-bit
/// arithmetic to wrap, and a stale copy only looks fuller (emptier) than the truth, which
/// makes us re-read before refusing.
pub struct Ring {
    hdr: NonNull<RingHeader>,
    data: NonNull<u8>,
    /// Producers' copy of `head`.
    seen_head: AtomicU64,
    /// The `tail` this process's last push stored (`u64::MAX`: none).
    my_tail: AtomicU64,
    /// Consumers' copy of `tail`.
    seen_tail: AtomicU64,
    /// The `head` this process's last pop stored (`u64::MAX`: none).
    my_head: AtomicU64,
}

// SAFETY: the ring is shared memory accessed through atomics and, for the data area, under
// the side's lock; the view holds no thread-affine state.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

/// Processes whose feeders a ring counts at once (see [`BacklogSlot`]).
pub const BACKLOG_SLOTS: usize = 64;

/// One feeder's count of the messages it holds for the ring: accepted by `put`, not yet
/// pushed. The table of [`BACKLOG_SLOTS`] follows the data area, one cache line each, so a
/// feeder's counting never contends with another's. A graceful shutdown makes `get` raise
/// `ShutDown` only once the ring is empty *and* no live process still feeds it
/// ([`Ring::backlogged`]). Field by field:
#[repr(C, align(64))]
#[derive(Debug)]
pub struct BacklogSlot {
    /// The owner, a feeder thread: its thread id in bits 32–63 and the low 32 bits of its
    /// start time (clock ticks since boot, `/proc/<tid>/stat` field 22) in bits 0–31, so that
    /// a reused id is a different owner; 0 when free. Claimed and taken over by
    /// compare-and-swap.
    owner: AtomicU64,
    /// Messages counted: added (Release) before a message joins the feeder's backlog,
    /// subtracted (Release) after the feeder's push is published or the message dropped;
    /// pairs with the Acquire in [`Ring::backlogged`].
    pending: AtomicU64,
    _pad: [u64; 6],
}

/// Bytes a segment needs for a ring with `capacity` data bytes: the header, the data area,
/// then the backlog table.
pub fn segment_size(capacity: usize) -> usize {
    HEADER_SIZE + capacity + BACKLOG_SLOTS * std::mem::size_of::<BacklogSlot>()
}

/// The calling thread's [`BacklogSlot::owner`] word, `None` if its start time cannot be read.
/// A feeder thread claims its slot with it, so that its count dies with the thread: when
/// the process is killed, exits, or `exec`s another program (which ends every other thread).
pub fn thread_owner() -> Option<u64> {
    let tid = platform::gettid();
    match platform::thread_start_time(0, tid) {
        Ok(Some(start)) => Some((u64::from(tid as u32) << 32) | (start & 0xffff_ffff)),
        _ => None,
    }
}

/// Whether the thread an owner word names still runs (the same thread: same start time).
fn owner_alive(word: u64) -> bool {
    let tid = (word >> 32) as i32;
    match platform::thread_start_time(0, tid) {
        Ok(Some(start)) => start & 0xffff_ffff == word & 0xffff_ffff,
        Ok(None) => false,
        Err(_) => true, // unknown (say, out of descriptors): count it, as a live one
    }
}

fn record_len(payload: usize) -> u32 {
    (RECORD_HEADER + payload.div_ceil(8) * 8) as u32
}

fn kind_word(kind: u32, tag: u8) -> u32 {
    kind | (u32::from(tag) << 8)
}

impl Ring {
    /// A view of the ring at `base`.
    ///
    /// # Safety
    /// `base` must point to `segment_size(capacity)` bytes of a live, 64-byte-aligned
    /// mapping that outlives the view, holding a ring initialised by [`Ring::init`] (or about
    /// to be, by the caller, before anyone else uses it).
    pub unsafe fn from_raw(base: NonNull<u8>) -> Ring {
        Ring {
            hdr: base.cast(),
            // SAFETY: the caller guarantees the mapping extends past the header.
            data: unsafe { base.add(HEADER_SIZE) },
            seen_head: AtomicU64::new(0),
            my_tail: AtomicU64::new(u64::MAX),
            seen_tail: AtomicU64::new(0),
            my_head: AtomicU64::new(u64::MAX),
        }
    }

    fn hdr(&self) -> &RingHeader {
        // SAFETY: `from_raw`'s contract: a live mapping holding the header; every field is
        // an atomic (or plain data written only by `init`).
        unsafe { self.hdr.as_ref() }
    }

    /// Initialises a zeroed ring of `capacity` data bytes (a power of two, 64 ..=
    /// [`MAX_CAPACITY`]) holding at most `max_items` messages. Must run before the ring is
    /// shared.
    pub fn init(&self, capacity: u32, max_items: u32) -> io::Result<()> {
        if !capacity.is_power_of_two() || !(64..=MAX_CAPACITY).contains(&capacity) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ring capacity must be a power of two between 64 and 2**30",
            ));
        }
        let h = self.hdr();
        h.capacity.store(capacity, Ordering::Relaxed);
        h.max_items.store(max_items.max(1), Ordering::Relaxed);
        h.push_lock.init(Kind::RecursiveMutex, 1, 1);
        h.pop_lock.init(Kind::RecursiveMutex, 1, 1);
        h.version.store(RING_VERSION, Ordering::Relaxed);
        // Release: publishes the fields above; pairs with the Acquire in `check`.
        h.magic.store(RING_MAGIC, Ordering::Release);
        Ok(())
    }

    /// Whether the ring was initialised by a compatible `init`.
    pub fn check(&self) -> bool {
        let h = self.hdr();
        h.magic.load(Ordering::Acquire) == RING_MAGIC
            && h.version.load(Ordering::Relaxed) == RING_VERSION
            && h.push_lock.check()
            && h.pop_lock.check()
    }

    /// Data bytes.
    pub fn capacity(&self) -> usize {
        self.hdr().capacity.load(Ordering::Relaxed) as usize
    }

    /// Most messages at once.
    pub fn max_items(&self) -> usize {
        self.hdr().max_items.load(Ordering::Relaxed) as usize
    }

    /// Messages popped so far (mod 2^32): the count part of `head`. Acquire: pairs with the
    /// Release store of `head` in `try_pop_many_with`.
    pub fn popped(&self) -> u32 {
        End::unpack(self.hdr().head.load(Ordering::Acquire)).count
    }

    /// Messages waiting (racy by nature: `qsize()`), from the two ends' counts.
    pub fn len(&self) -> usize {
        let h = self.hdr();
        // Head first: a pop between the loads can only make the result larger than some
        // true value, never negative.
        let head = End::unpack(h.head.load(Ordering::Acquire));
        let tail = End::unpack(h.tail.load(Ordering::Acquire));
        tail.count.wrapping_sub(head.count) as usize
    }

    /// Whether no message waits (racy by nature).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The largest payload a push can ever commit.
    pub fn max_payload(&self) -> usize {
        // A record must fit without wrapping into an empty ring whose head may sit anywhere:
        // at most half the ring, so that some contiguous stretch always exists.
        self.capacity() / 2 - RECORD_HEADER
    }

    fn lock(l: &SemState, me: &Me) -> io::Result<()> {
        if l.try_lock(me) || l.spin_acquire(me, LOCK_SPINS) {
            return Ok(());
        }
        loop {
            // A holder killed mid-operation is taken over (its work was never published).
            if l.acquire_slice(me, LOCK_SLICE)?.got() {
                return Ok(());
            }
        }
    }

    fn unlock(l: &SemState, me: &Me) {
        // Cannot fail: `lock` made us the holder and nothing releases in between.
        let _ = l.release(me);
    }

    /// Copies `len` bytes at ring position `pos` (not crossing the end) into `dst`.
    ///
    /// # Safety
    /// The caller holds the pop lock, `dst` is writable for `len` bytes, and
    /// `pos % cap + len <= cap`.
    unsafe fn read_at(&self, pos: u32, dst: *mut u8, len: usize) {
        let off = pos as usize & (self.capacity() - 1);
        // SAFETY: in bounds per the contract; a committed record is only rewritten after its
        // pop is published, and we hold the pop lock.
        unsafe { std::ptr::copy_nonoverlapping(self.data.as_ptr().add(off), dst, len) }
    }

    /// Copies `src` to ring position `pos` (not crossing the end).
    ///
    /// # Safety
    /// The caller holds the push lock, the bytes are free space, and `pos % cap + len <= cap`.
    unsafe fn write_at(&self, pos: u32, src: *const u8, len: usize) {
        let off = pos as usize & (self.capacity() - 1);
        // SAFETY: in bounds and free per the contract; readers never look past `tail`.
        unsafe { std::ptr::copy_nonoverlapping(src, self.data.as_ptr().add(off), len) }
    }

    fn write_record_header(&self, pos: u32, len: u32, kind: u32) {
        let mut h = [0u8; RECORD_HEADER];
        h[..4].copy_from_slice(&len.to_le_bytes());
        h[4..].copy_from_slice(&kind.to_le_bytes());
        // SAFETY: called under the push lock on free space; records are 8-aligned, so the
        // header never crosses the end.
        unsafe { self.write_at(pos, h.as_ptr(), RECORD_HEADER) }
    }

    fn read_record_header(&self, pos: u32) -> (u32, u32) {
        let mut h = [0u8; RECORD_HEADER];
        // SAFETY: under the pop lock, a committed record (8-aligned: never crosses the end).
        unsafe { self.read_at(pos, h.as_mut_ptr(), RECORD_HEADER) };
        (
            u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
            u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        )
    }

    /// Under the push lock: where a record of `payload` bytes goes when the ring's tail is
    /// `tail` (after a wrap record, written here if needed), or why it cannot go now.
    /// `start` is the header's `tail` when the lock was taken (a batch advances `tail`
    /// locally before its one publish).
    fn reserve(&self, start: End, tail: End, payload: usize) -> Result<u32, Push> {
        let h = self.hdr();
        let cap = self.capacity() as u32;
        let need = record_len(payload);
        let to_end = cap - (tail.pos & (cap - 1));
        let wrap = if need > to_end { to_end } else { 0 };
        let max_items = h.max_items.load(Ordering::Relaxed);
        let fits = |head: End| -> Result<(), Push> {
            if tail.count.wrapping_sub(head.count) >= max_items {
                return Err(Push::FullItems);
            }
            if tail.pos.wrapping_sub(head.pos) + wrap + need > cap {
                return Err(Push::FullBytes);
            }
            Ok(())
        };
        // The cached head first (a stale one only looks fuller); re-read before refusing.
        let trusted = self.my_tail.load(Ordering::Relaxed) == start.pack();
        if !trusted || fits(End::unpack(self.seen_head.load(Ordering::Relaxed))).is_err() {
            // Acquire: pairs with the Release store of `head` in `try_pop_many_with`: the
            // space it frees was read out before.
            let head = h.head.load(Ordering::Acquire);
            self.seen_head.store(head, Ordering::Relaxed);
            fits(End::unpack(head))?;
        }
        if wrap > 0 {
            self.write_record_header(tail.pos, wrap - RECORD_HEADER as u32, KIND_WRAP);
        }
        Ok(tail.pos.wrapping_add(wrap))
    }

    /// Under the push lock: publishes the `k` records written up to `new` (the new tail),
    /// then releases the lock and wakes sleeping consumers.
    fn publish(&self, me: &Me, links: Option<&Links<'_>>, new: End, k: u32) {
        let h = self.hdr();
        if let Some(evfd) = links.and_then(|l| l.evfd) {
            // Before the publish: the count is never below the messages waiting.
            if h.evfd_armed.load(Ordering::Acquire) != 0 {
                let _ = platform::eventfd_add(evfd, u64::from(k));
            }
        }
        // Publish: only now are the records visible. Release pairs with the consumers'
        // Acquire load of `tail`.
        h.tail.store(new.pack(), Ordering::Release);
        self.my_tail.store(new.pack(), Ordering::Relaxed);
        // SeqCst (a Release at least, for the Acquire load in `not_empty_seq`): the bump is
        // ordered before `wake`'s load of `empty_sleepers`, against a sleeper's registration
        // and re-check (the Dekker pair of `sleep_on` and `wake`).
        h.not_empty.fetch_add(1, Ordering::SeqCst);
        Ring::unlock(&h.push_lock, me);
        wake(&h.not_empty, &h.empty_sleepers, k);
    }

    /// Under the push lock: writes one message record (`parts` concatenated) at `at`, and
    /// returns the tail after it.
    fn write_message(&self, tail: End, at: u32, tag: u8, parts: &[&[u8]]) -> End {
        let payload: usize = parts.iter().map(|p| p.len()).sum();
        let mut pos = at.wrapping_add(RECORD_HEADER as u32);
        for p in parts {
            // SAFETY: under the push lock, into free space (checked by `reserve`), within one
            // contiguous stretch (the wrap record moved us to the start when needed).
            unsafe { self.write_at(pos, p.as_ptr(), p.len()) };
            pos = pos.wrapping_add(p.len() as u32);
        }
        self.write_record_header(at, payload as u32, kind_word(KIND_MESSAGE, tag));
        End {
            pos: at.wrapping_add(record_len(payload)),
            count: tail.count.wrapping_add(1),
        }
    }

    /// Commits one message made of `parts` (concatenated), tagged `tag`, if it fits now.
    pub fn try_push(
        &self,
        me: &Me,
        links: Option<&Links<'_>>,
        tag: u8,
        parts: &[&[u8]],
    ) -> io::Result<Push> {
        let payload: usize = parts.iter().map(|p| p.len()).sum();
        if payload > self.max_payload() {
            return Ok(Push::TooBig);
        }
        let h = self.hdr();
        Ring::lock(&h.push_lock, me)?;
        let tail = End::unpack(h.tail.load(Ordering::Relaxed));
        let at = match self.reserve(tail, tail, payload) {
            Ok(at) => at,
            Err(why) => {
                Ring::unlock(&h.push_lock, me);
                return Ok(why);
            }
        };
        let new = self.write_message(tail, at, tag, parts);
        self.publish(me, links, new, 1);
        Ok(Push::Done)
    }

    /// Commits, in order, as many as fit now of the messages `blob[bounds[i-1]..bounds[i]]`
    /// (`bounds[-1]` taken as `first`), all tagged `tag`, under one lock and one publish.
    /// Stops before a message larger than `max_payload` (the caller sends it another way).
    /// Returns how many were committed and why it stopped (`Done` when all were).
    pub fn try_push_batch(
        &self,
        me: &Me,
        links: Option<&Links<'_>>,
        tag: u8,
        blob: &[u8],
        first: usize,
        bounds: &[usize],
    ) -> io::Result<(usize, Push)> {
        let h = self.hdr();
        let max = self.max_payload();
        Ring::lock(&h.push_lock, me)?;
        let start = End::unpack(h.tail.load(Ordering::Relaxed));
        let mut tail = start;
        let mut done = 0;
        let mut why = Push::Done;
        let mut from = first;
        for &end in bounds {
            let Some(msg) = blob.get(from..end) else {
                why = Push::TooBig;
                break;
            };
            if msg.len() > max {
                why = Push::TooBig;
                break;
            }
            match self.reserve(start, tail, msg.len()) {
                Ok(at) => tail = self.write_message(tail, at, tag, &[msg]),
                Err(full) => {
                    why = full;
                    break;
                }
            }
            done += 1;
            from = end;
        }
        if done == 0 {
            Ring::unlock(&h.push_lock, me);
        } else {
            self.publish(me, links, tail, done as u32);
        }
        Ok((done, why))
    }

    /// Commits a message of `len` bytes held in the memfd `fd`: sends the descriptor on the
    /// side socket and commits an fd record in order with the ring's other messages.
    pub fn try_push_fd(
        &self,
        me: &Me,
        links: &Links<'_>,
        tag: u8,
        fd: BorrowedFd<'_>,
        len: u64,
    ) -> io::Result<Push> {
        let h = self.hdr();
        Ring::lock(&h.push_lock, me)?;
        let tail = End::unpack(h.tail.load(Ordering::Relaxed));
        let at = match self.reserve(tail, tail, FD_RECORD) {
            Ok(v) => v,
            Err(why) => {
                Ring::unlock(&h.push_lock, me);
                return Ok(why);
            }
        };
        // The sequence number is taken before the send: a writer killed after the send and
        // before the publish leaves a descriptor with a number no record will ever carry.
        let seq = h.fd_seq.fetch_add(1, Ordering::Relaxed) + 1;
        match platform::send_with_fd(links.send, &seq.to_le_bytes(), fd) {
            Ok(()) => {}
            Err(e) => {
                Ring::unlock(&h.push_lock, me);
                if e.kind() == io::ErrorKind::WouldBlock {
                    // The socket's buffer is full of descriptors not yet taken: as full.
                    return Ok(Push::FullBytes);
                }
                return Err(e);
            }
        }
        let mut rec = [0u8; FD_RECORD];
        rec[..8].copy_from_slice(&seq.to_le_bytes());
        rec[8..].copy_from_slice(&len.to_le_bytes());
        // SAFETY: under the push lock, into the free space `reserve` checked, one stretch.
        unsafe {
            self.write_at(
                at.wrapping_add(RECORD_HEADER as u32),
                rec.as_ptr(),
                FD_RECORD,
            )
        };
        self.write_record_header(at, FD_RECORD as u32, kind_word(KIND_FD, tag));
        let new = End {
            pos: at.wrapping_add(record_len(FD_RECORD)),
            count: tail.count.wrapping_add(1),
        };
        self.publish(me, Some(links), new, 1);
        Ok(Push::Done)
    }

    /// Under the pop lock: a duplicate of the descriptor sent with fd record `seq`, if it is
    /// still on the side socket. The message itself stays at the socket's front until the
    /// pop is published ([`Ring::drop_front_fd`]), so a reader killed before its publish
    /// leaves the whole message, record and descriptor, to the next one; one killed after it
    /// leaves a descriptor older than any record, which the next reader closes here, as it
    /// closes those of writers killed between their send and their commit.
    fn peek_fd(&self, recv: BorrowedFd<'_>, seq: u64) -> io::Result<Option<OwnedFd>> {
        let mut buf = [0u8; 8];
        loop {
            match platform::peek_message(recv, &mut buf)? {
                // Nothing waits: the descriptor was lost (a reader of an older rmp, which
                // removed it before publishing, was killed mid-pop).
                None => return Ok(None),
                Some(8) => {}
                Some(_) => {
                    // Not one of ours: drop it.
                    let _ = platform::recv_fd(recv, &mut buf)?;
                    continue;
                }
            }
            let s = u64::from_le_bytes(buf);
            if s > seq {
                // Ours is gone (as above); this one belongs to a later record.
                return Ok(None);
            }
            if s == seq {
                return Ok(platform::peek_fd(recv, &mut buf)?.flatten());
            }
            // s < seq: an orphan, closed by dropping what `recv_fd` returns.
            let _ = platform::recv_fd(recv, &mut buf)?;
        }
    }

    /// Under the pop lock, after the publish of a pop that took an fd record: removes that
    /// record's message from the socket's front (the descriptor it still holds is closed).
    fn drop_front_fd(recv: BorrowedFd<'_>) {
        let mut buf = [0u8; 8];
        // A failure leaves an orphan, which the next reader of an fd record closes.
        let _ = platform::recv_fd(recv, &mut buf);
    }

    /// Takes the oldest message, if any. `alloc(tag, len)` provides the destination of an
    /// inline message (called under the pop lock: it must not block or re-enter the ring).
    /// Records whose message was lost by a killed process are skipped.
    pub fn try_pop_with<T, F>(
        &self,
        me: &Me,
        links: Option<&Links<'_>>,
        alloc: F,
    ) -> io::Result<Option<Popped<T>>>
    where
        F: FnMut(u8, usize) -> io::Result<(T, *mut u8)>,
    {
        Ok(self
            .try_pop_many_with(me, links, 1, alloc, |_, _| {})?
            .pop())
    }

    /// Takes up to `max` of the oldest messages, in order, under one lock and one publish
    /// (see [`Ring::try_pop_with`]). `claim(taken, pops)` runs under the lock before the
    /// publish, with `pops` the count of pops the ring will show once it is published.
    pub fn try_pop_many_with<T, F, C>(
        &self,
        me: &Me,
        links: Option<&Links<'_>>,
        max: usize,
        mut alloc: F,
        claim: C,
    ) -> io::Result<Vec<Popped<T>>>
    where
        F: FnMut(u8, usize) -> io::Result<(T, *mut u8)>,
        C: FnOnce(&[Popped<T>], u32),
    {
        let h = self.hdr();
        let mut out = Vec::new();
        // Cheap early exit without the lock: nothing committed since our last look.
        if max == 0 || !self.has_records() {
            return Ok(out);
        }
        Ring::lock(&h.pop_lock, me)?;
        let start = End::unpack(h.head.load(Ordering::Relaxed));
        let mut head = start;
        let mut failed = None;
        // An fd message taken, still on the side socket: removed after the publish, and the
        // last message of this batch (a later one's `peek_fd` would find it in the way).
        let mut fd_to_drop = false;
        while out.len() < max && !fd_to_drop && self.has_records_after(start, head) {
            let mut pos = head.pos;
            let (mut len, mut kind) = self.read_record_header(pos);
            if kind & 0xff == KIND_WRAP {
                pos = pos.wrapping_add(RECORD_HEADER as u32 + len);
                (len, kind) = self.read_record_header(pos);
            }
            let tag = (kind >> 8) as u8;
            let len = len as usize;
            let item = match kind & 0xff {
                KIND_FD => {
                    let mut rec = [0u8; FD_RECORD];
                    // SAFETY: a committed fd record holds FD_RECORD payload bytes.
                    unsafe {
                        self.read_at(
                            pos.wrapping_add(RECORD_HEADER as u32),
                            rec.as_mut_ptr(),
                            FD_RECORD,
                        )
                    };
                    let seq = u64::from_le_bytes(rec[..8].try_into().unwrap_or_default());
                    let mlen = u64::from_le_bytes(rec[8..].try_into().unwrap_or_default());
                    match links.map(|l| self.peek_fd(l.recv, seq)) {
                        Some(Ok(fd)) => {
                            fd_to_drop = fd.is_some();
                            fd.map(|fd| Popped::Fd { tag, fd, len: mlen })
                        }
                        Some(Err(e)) => {
                            failed = Some(e);
                            break;
                        }
                        None => None,
                    }
                }
                _ => {
                    let (data, dst) = match alloc(tag, len) {
                        Ok(v) => v,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    };
                    // SAFETY: a committed record of `len` payload bytes lies after its header
                    // within one contiguous stretch; `alloc` gave `len` writable bytes.
                    unsafe { self.read_at(pos.wrapping_add(RECORD_HEADER as u32), dst, len) };
                    Some(Popped::Inline { tag, data })
                }
            };
            head = End {
                pos: pos.wrapping_add(record_len(len)),
                count: head.count.wrapping_add(1),
            };
            // A lost fd message (`None`) is gone too: it is skipped.
            out.extend(item);
        }
        let popped = head.count.wrapping_sub(start.count);
        if popped > 0 {
            // Still under the lock: a consumer killed before the publish below leaves every
            // message for the next one, so what `claim` records (a pool worker's running
            // task) is never missing for a message that is gone.
            claim(&out, head.count);
            // Publish the pops only after the copies. Release pairs with the producers'
            // Acquire load of `head` in `reserve`.
            h.head.store(head.pack(), Ordering::Release);
            self.my_head.store(head.pack(), Ordering::Relaxed);
            if let (true, Some(l)) = (fd_to_drop, links) {
                Ring::drop_front_fd(l.recv);
            }
            if let Some(evfd) = links.and_then(|l| l.evfd) {
                // After the publish: the count is never below the messages waiting.
                if h.evfd_armed.load(Ordering::Acquire) != 0 {
                    for _ in 0..popped {
                        let _ = platform::eventfd_take(evfd);
                    }
                }
            }
            // SeqCst (a Release at least, for the Acquire load in `not_full_seq`): the bump,
            // and the `head` store before it, are ordered before the loads of `full_sleepers`
            // and `room_sleepers` below (the Dekker pairs with `sleep_on`).
            h.not_full.fetch_add(1, Ordering::SeqCst);
        }
        Ring::unlock(&h.pop_lock, me);
        if popped > 0 {
            wake(&h.not_full, &h.full_sleepers, popped);
            // Producers waiting for the ring to drain (see `wait_half_empty`). SeqCst: after
            // the `head` store and the bump above, against the sleeper's registration and
            // its re-check of the room.
            if h.room_sleepers.load(Ordering::SeqCst) > 0 && self.half_empty() {
                // SeqCst: a Release for the Acquire load in `wait_half_empty`, and before
                // `wake`'s load.
                h.drained.fetch_add(1, Ordering::SeqCst);
                wake(&h.drained, &h.room_sleepers, u32::MAX);
            }
        }
        match failed {
            // What was taken before the failure is returned; the failure shows next time.
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// Whether a record waits (a hint outside the pop lock, exact under it).
    fn has_records(&self) -> bool {
        let head = End::unpack(self.hdr().head.load(Ordering::Relaxed));
        self.records_after(head, head, false)
    }

    /// Under the pop lock: whether a record waits at `head` (`start`: the header's head when
    /// the lock was taken; a batch advances `head` locally before its one publish).
    fn has_records_after(&self, start: End, head: End) -> bool {
        self.records_after(start, head, true)
    }

    /// Whether a record waits at `head`: from the cached tail when it is trusted (this
    /// process made the last pop, `start`) and shows one, else from a fresh read of `tail`,
    /// which refreshes the cache when `locked` (the pop lock is held: the only writer).
    fn records_after(&self, start: End, head: End, locked: bool) -> bool {
        if self.my_head.load(Ordering::Relaxed) == start.pack() {
            let seen = End::unpack(self.seen_tail.load(Ordering::Relaxed));
            if (seen.count.wrapping_sub(head.count) as i32) > 0 {
                return true;
            }
        }
        // Acquire: pairs with the Release store of `tail` in `publish`: the record is in.
        let tail = self.hdr().tail.load(Ordering::Acquire);
        if locked {
            self.seen_tail.store(tail, Ordering::Relaxed);
        }
        End::unpack(tail).count != head.count
    }

    /// Takes the oldest message as a vector, if any (tests and the feeder-less paths).
    pub fn try_pop(&self, me: &Me) -> io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        let mut n = 0;
        let got = self.try_pop_with(me, None, |_, len| {
            buf.reserve_exact(len);
            n = len;
            Ok(((), buf.as_mut_ptr()))
        })?;
        Ok(got.map(|_| {
            // SAFETY: the pop wrote exactly `n` bytes into `buf`'s reserved capacity.
            unsafe { buf.set_len(n) };
            buf
        }))
    }

    /// Removes every message (`shutdown(immediate=True)`); returns how many.
    pub fn drain(&self, me: &Me, links: Option<&Links<'_>>) -> io::Result<usize> {
        let mut n = 0;
        let mut scratch: Vec<u8> = Vec::new();
        while self
            .try_pop_with(me, links, |_, len| {
                scratch.resize(len, 0);
                Ok(((), scratch.as_mut_ptr()))
            })?
            .is_some()
        {
            n += 1;
        }
        Ok(n)
    }

    /// Makes the readiness eventfd count the waiting messages from now on (idempotent).
    pub fn arm_eventfd(&self, me: &Me, evfd: BorrowedFd<'_>) -> io::Result<()> {
        // Acquire: pairs with the Release store in `set_eventfd_count`.
        if self.hdr().evfd_armed.load(Ordering::Acquire) != 0 {
            return Ok(());
        }
        self.set_eventfd_count(me, evfd)
    }

    /// Repairs the one way the eventfd's count can drift: a producer killed after its add
    /// and before its publish leaves it one too high (a spurious readiness). Cheap to call
    /// when nothing is wrong: it looks first, without the locks, whether the eventfd is
    /// readable while the ring is empty.
    pub fn reconcile_eventfd(&self, me: &Me, evfd: BorrowedFd<'_>) -> io::Result<()> {
        if self.hdr().evfd_armed.load(Ordering::Acquire) == 0
            || !self.is_empty()
            || !platform::poll_readable(evfd, Some(Duration::ZERO))?
        {
            return Ok(());
        }
        self.set_eventfd_count(me, evfd)
    }

    /// Sets the eventfd's count to the messages waiting and marks it kept, under both locks
    /// (push, then pop: the only place that holds both), so no producer is between its add
    /// and its publish and the count is exact.
    fn set_eventfd_count(&self, me: &Me, evfd: BorrowedFd<'_>) -> io::Result<()> {
        let h = self.hdr();
        Ring::lock(&h.push_lock, me)?;
        if let Err(e) = Ring::lock(&h.pop_lock, me) {
            Ring::unlock(&h.push_lock, me);
            return Err(e);
        }
        while let Ok(true) = platform::eventfd_take(evfd) {}
        let n = self.len() as u64;
        let r = if n > 0 {
            platform::eventfd_add(evfd, n)
        } else {
            Ok(())
        };
        // Release: pairs with the Acquire loads in `publish`, `try_pop_many_with` and
        // `arm_eventfd`.
        h.evfd_armed.store(1, Ordering::Release);
        Ring::unlock(&h.pop_lock, me);
        Ring::unlock(&h.push_lock, me);
        r
    }

    /// The `not_empty` sequence value to wait from (read before trying to pop).
    pub fn not_empty_seq(&self) -> u32 {
        self.hdr().not_empty.load(Ordering::Acquire)
    }

    /// The `not_full` sequence value to wait from (read before trying to push).
    pub fn not_full_seq(&self) -> u32 {
        self.hdr().not_full.load(Ordering::Acquire)
    }

    /// Spins up to `budget` for a push after `seen` (true if one came). A wake-up costs
    /// tens of microseconds on a busy machine, and a producer that finds no sleeper skips its
    /// wake call: a short spin before sleeping saves both sides a system call when messages
    /// flow. Bounded, so that a waiting consumer does not burn a core.
    pub fn spin_not_empty(&self, seen: u32, budget: Duration) -> bool {
        spin_while(&self.hdr().not_empty, seen, budget)
    }

    /// As [`Ring::spin_not_empty`], for a pop after `seen`.
    pub fn spin_not_full(&self, seen: u32, budget: Duration) -> bool {
        spin_while(&self.hdr().not_full, seen, budget)
    }

    /// Free data bytes (racy by nature: a pop may free more at any moment).
    pub fn free_bytes(&self) -> usize {
        let h = self.hdr();
        // Head first, as in `len`: a push between the loads only makes the result smaller.
        // Acquire: pairs with the Release stores of `head` and `tail`.
        let head = End::unpack(h.head.load(Ordering::Acquire));
        let tail = End::unpack(h.tail.load(Ordering::Acquire));
        (self.capacity() as u32).saturating_sub(tail.pos.wrapping_sub(head.pos)) as usize
    }

    /// Spins while consumers keep popping, until at least `want` bytes are free (true), or
    /// until no pop came for `idle`, or `budget` passed (false). A producer that finds the
    /// ring full waits for a stretch of room this way rather than for the next pop: writing
    /// in bursts keeps it off the consumers' cache lines, where refilling each freed slot at
    /// once would bounce them between the cores for every message.
    pub fn spin_for_room(&self, want: usize, idle: Duration, budget: Duration) -> bool {
        let start = std::time::Instant::now();
        loop {
            let seen = self.not_full_seq();
            if self.free_bytes() >= want {
                return true;
            }
            if !self.spin_not_full(seen, idle) || start.elapsed() >= budget {
                return false;
            }
        }
    }

    /// The room [`Ring::spin_for_room`] waits for before a push of a `len`-byte message:
    /// its record (an fd record if it is too large for the ring) and a wrap marker, or a
    /// burst's worth (a sixteenth of the ring, at most 8 KiB) if more.
    pub fn burst_room(&self, len: usize) -> usize {
        let payload = if len <= self.max_payload() {
            len
        } else {
            FD_RECORD
        };
        let cap = self.capacity();
        (record_len(payload) as usize + RECORD_HEADER).max((cap / 16).min(8 << 10))
    }

    /// Sleeps at most `slice` unless a push happened since `seen` was read.
    pub fn wait_not_empty(&self, seen: u32, slice: Duration) -> io::Result<()> {
        let h = self.hdr();
        wait_on(&h.not_empty, &h.empty_sleepers, seen, slice)
    }

    /// Whether at most half the ring's bytes are in use.
    pub fn half_empty(&self) -> bool {
        self.free_bytes() >= self.capacity() / 2
    }

    /// Whether a message of `len` bytes always fits in a ring at most half full (wherever
    /// the free half starts: its record and a wrap marker before it take at most twice the
    /// record).
    pub fn fits_half(&self, len: usize) -> bool {
        len <= self.max_payload() && 2 * record_len(len) as usize <= self.capacity() / 2
    }

    /// Whether a producer sleeps until the next pop (a putter without a feeder, blocked).
    pub fn has_full_sleepers(&self) -> bool {
        self.hdr().full_sleepers.load(Ordering::Relaxed) > 0
    }

    /// Sleeps at most `slice` until a pop leaves the ring at most half full. A producer that
    /// found the ring full waits this way rather than for the next pop: the consumers then
    /// drain half the ring with no wake call (one wakes the sleepers when the ring crosses
    /// the half), and the producer refills it in one burst, where waiting for each pop
    /// would cost a wake-up per message and keep both sides on the same cache lines.
    pub fn wait_half_empty(&self, slice: Duration) -> io::Result<()> {
        let h = self.hdr();
        // Acquire: pairs with the Release bump in `try_pop_many_with`.
        let seen = h.drained.load(Ordering::Acquire);
        if self.half_empty() {
            return Ok(());
        }
        sleep_on(&h.drained, &h.room_sleepers, seen, slice, || {
            !self.half_empty()
        })
        .map(|_| ())
    }

    /// Sleeps at most `slice` unless a pop happened since `seen` was read.
    pub fn wait_not_full(&self, seen: u32, slice: Duration) -> io::Result<()> {
        let h = self.hdr();
        wait_on(&h.not_full, &h.full_sleepers, seen, slice)
    }

    // ---- shutdown

    /// The shutdown state ([`OPEN`], [`SHUTDOWN`], [`SHUTDOWN_IMMEDIATE`]).
    pub fn shutdown_state(&self) -> u32 {
        // Acquire: pairs with the Release in `shut_down`.
        self.hdr().shutdown.load(Ordering::Acquire)
    }

    /// Moves the shutdown state up to `state` and wakes every sleeper so each re-checks it.
    pub fn shut_down(&self, state: u32) {
        let h = self.hdr();
        // Release: pairs with the Acquire in `shutdown_state`.
        h.shutdown.fetch_max(state, Ordering::Release);
        for (w, sleepers) in [
            (&h.not_empty, &h.empty_sleepers),
            (&h.not_full, &h.full_sleepers),
            (&h.drained, &h.room_sleepers),
        ] {
            // SeqCst: before `wake`'s load (see `wake`).
            w.fetch_add(1, Ordering::SeqCst);
            wake(w, sleepers, u32::MAX);
        }
        wake(&h.unfinished, &h.join_sleepers, u32::MAX);
    }

    // ---- feeders' backlogs (see `BacklogSlot`)

    fn backlog(&self) -> &[BacklogSlot] {
        // SAFETY: `from_raw`'s contract: the mapping holds `segment_size(capacity)` bytes,
        // so the table follows the data area, 64-byte aligned (the header and a power-of-two
        // capacity of at least 64 keep it so); every field is an atomic.
        unsafe {
            std::slice::from_raw_parts(
                self.data
                    .as_ptr()
                    .add(self.capacity())
                    .cast::<BacklogSlot>(),
                BACKLOG_SLOTS,
            )
        }
    }

    /// A backlog slot for the feeder thread `me` (its [`thread_owner`] word): a free one, or
    /// one whose owner no longer runs (its count is then void). `None` when every slot
    /// belongs to a live feeder: this one's backlog is then not counted (a graceful shutdown
    /// may end before it arrives).
    pub fn claim_backlog_slot(&self, me: u64) -> Option<usize> {
        for (i, slot) in self.backlog().iter().enumerate() {
            // Acquire: pairs with the AcqRel of a previous owner's claim.
            let cur = slot.owner.load(Ordering::Acquire);
            if cur != 0 && (cur == me || owner_alive(cur)) {
                continue;
            }
            if slot
                .owner
                .compare_exchange(cur, me, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // A dead owner's count is void. Until this store a reader may still count
                // it for us, which only makes a shutting-down `get` look once more.
                slot.pending.store(0, Ordering::Release);
                return Some(i);
            }
        }
        None
    }

    /// Counts `n` more messages in a feeder's backlog (before they join it).
    pub fn backlog_add(&self, slot: usize, n: u64) {
        // Release: a `get` that sees the shutdown that followed this `put` sees the count.
        self.backlog()[slot].pending.fetch_add(n, Ordering::Release);
    }

    /// Counts `n` messages out of a feeder's backlog (after their push was published, or
    /// after they were dropped). When that leaves it empty after a shutdown, wakes the
    /// consumers, which may now raise `ShutDown`.
    pub fn backlog_sub(&self, slot: usize, n: u64) {
        // Release: pairs with the Acquire in `backlogged`, after which the push is seen.
        let before = self.backlog()[slot].pending.fetch_sub(n, Ordering::Release);
        if before == n && self.shutdown_state() != OPEN {
            let h = self.hdr();
            // SeqCst: before `wake`'s load (see `wake`).
            h.not_empty.fetch_add(1, Ordering::SeqCst);
            wake(&h.not_empty, &h.empty_sleepers, u32::MAX);
        }
    }

    /// Gives the slot back (its count must be 0: the feeder is exiting).
    pub fn release_backlog_slot(&self, slot: usize, me: u64) {
        // AcqRel: the count's last change comes before the slot is free.
        let _ =
            self.backlog()[slot]
                .owner
                .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Whether a live feeder (of any process) still holds messages for the ring. A `get` that
    /// finds the ring empty after a graceful shutdown asks this first, then looks at the ring
    /// once more: a message pushed before its count dropped to 0 is then seen.
    pub fn backlogged(&self) -> bool {
        self.backlog().iter().any(|slot| {
            let owner = slot.owner.load(Ordering::Acquire);
            // Acquire: pairs with the Release of `backlog_sub`.
            owner != 0 && slot.pending.load(Ordering::Acquire) > 0 && owner_alive(owner)
        })
    }

    // ---- unfinished tasks (JoinableQueue)

    /// Counts `n` more unfinished tasks.
    pub fn tasks_added(&self, n: u32) {
        self.hdr().unfinished.fetch_add(n, Ordering::AcqRel);
    }

    /// Counts `n` fewer unfinished tasks; false (and no change) if fewer than `n` remain.
    /// Wakes `join()` sleepers when the count reaches zero.
    pub fn tasks_done(&self, n: u32) -> bool {
        let h = self.hdr();
        let mut cur = h.unfinished.load(Ordering::Acquire);
        loop {
            if cur < n {
                return false;
            }
            // SeqCst: orders the task's work before the count (for the joiner's Acquire),
            // and the count before `wake`'s load (see `wake`).
            match h.unfinished.compare_exchange_weak(
                cur,
                cur - n,
                Ordering::SeqCst,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(v) => cur = v,
            }
        }
        if cur == n {
            wake(&h.unfinished, &h.join_sleepers, u32::MAX);
        }
        true
    }

    /// Unfinished tasks now.
    pub fn unfinished(&self) -> u32 {
        self.hdr().unfinished.load(Ordering::Acquire)
    }

    /// Sleeps at most `slice` while the unfinished count is `seen` (non-zero).
    pub fn wait_unfinished(&self, seen: u32, slice: Duration) -> io::Result<()> {
        let h = self.hdr();
        wait_on(&h.unfinished, &h.join_sleepers, seen, slice)
    }
}

fn spin_while(word: &AtomicU32, seen: u32, budget: Duration) -> bool {
    let start = std::time::Instant::now();
    loop {
        for _ in 0..64 {
            // Acquire: pairs with the Release bump in `publish` / `try_pop_with`.
            if word.load(Ordering::Acquire) != seen {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= budget {
            return false;
        }
    }
}

fn wait_on(word: &AtomicU32, sleepers: &AtomicU32, seen: u32, slice: Duration) -> io::Result<()> {
    sleep_on(word, sleepers, seen, slice, || true).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::Segment;
    use std::sync::Arc;

    fn new_ring(capacity: u32, max_items: u32) -> (Arc<Segment>, Ring) {
        let seg = Arc::new(Segment::create(segment_size(capacity as usize)).unwrap());
        // SAFETY: the segment is large enough, page-aligned and outlives the ring in each
        // test (both are dropped together at the end).
        let ring = unsafe { Ring::from_raw(seg.as_ptr()) };
        ring.init(capacity, max_items).unwrap();
        assert!(ring.check());
        (seg, ring)
    }

    #[test]
    fn backlog_slots_count_live_feeders_only() {
        assert_eq!(std::mem::size_of::<BacklogSlot>(), 64);
        let (_seg, ring) = new_ring(4096, u32::MAX);
        assert!(!ring.backlogged());
        // A dead owner's slot, with messages it never delivered: not counted, and taken over.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let slots = ring.backlog();
        slots[0]
            .owner
            .store((u64::from(dead) << 32) | 123, Ordering::Relaxed);
        slots[0].pending.store(5, Ordering::Relaxed);
        assert!(!ring.backlogged(), "a dead process's backlog is void");
        let me = thread_owner().unwrap();
        let mine = ring.claim_backlog_slot(me).unwrap();
        assert_eq!(mine, 0, "the dead owner's slot is reused first");
        assert_eq!(slots[0].pending.load(Ordering::Relaxed), 0);
        assert_eq!(slots[0].owner.load(Ordering::Relaxed), me);
        ring.backlog_add(mine, 3);
        assert!(ring.backlogged(), "a live process's backlog counts");
        ring.backlog_sub(mine, 3);
        assert!(!ring.backlogged());
        // Released, the slot is free again.
        ring.release_backlog_slot(mine, me);
        assert!(slots.iter().all(|s| s.owner.load(Ordering::Relaxed) == 0));
        // A thread that has exited owns nothing: its count is void.
        let gone = std::thread::spawn(|| {
            let owner = thread_owner().unwrap();
            // Past its start's clock tick: a thread that reuses its id cannot share its start
            // time (the same care as in `sync::condition`'s dead-sleeper test).
            std::thread::sleep(Duration::from_millis(30));
            owner
        })
        .join()
        .unwrap();
        platform::wait_thread_gone((gone >> 32) as i32);
        let slot = ring.claim_backlog_slot(gone).unwrap();
        ring.backlog_add(slot, 2);
        assert!(
            !ring.backlogged(),
            "an exited feeder thread's backlog is void"
        );
        // Every slot held by a live thread: no slot, nothing counted.
        for _ in 0..BACKLOG_SLOTS {
            assert!(ring.claim_backlog_slot(me).is_some());
        }
        assert_eq!(ring.claim_backlog_slot(me), None);
    }

    #[test]
    fn header_is_one_line_per_writer() {
        assert_eq!(std::mem::size_of::<RingHeader>(), HEADER_SIZE);
        assert_eq!(std::mem::offset_of!(RingHeader, tail), 64);
        assert_eq!(std::mem::offset_of!(RingHeader, head), 128);
        assert_eq!(std::mem::offset_of!(RingHeader, empty_sleepers), 192);
        assert_eq!(std::mem::offset_of!(RingHeader, room_sleepers), 204);
        assert_eq!(std::mem::offset_of!(RingHeader, drained), 208);
        assert_eq!(std::mem::offset_of!(RingHeader, unfinished), 256);
        assert_eq!(std::mem::offset_of!(RingHeader, push_lock), 320);
        assert_eq!(std::mem::offset_of!(RingHeader, pop_lock), 384);
    }

    #[test]
    fn fifo_with_wrap_around_and_every_size() {
        let (_seg, ring) = new_ring(256, u32::MAX);
        let me = Me::current();
        assert_eq!(ring.try_pop(&me).unwrap(), None);
        // Sizes 0..=120 in turn, three messages in flight, so records wrap at every offset.
        let mut expect = std::collections::VecDeque::new();
        for i in 0..2000usize {
            let msg: Vec<u8> = (0..i % 121).map(|j| (i + j) as u8).collect();
            while ring
                .try_push(
                    &me,
                    None,
                    0,
                    &[&msg[..msg.len() / 2], &msg[msg.len() / 2..]],
                )
                .unwrap()
                == Push::FullBytes
            {
                assert_eq!(ring.try_pop(&me).unwrap(), expect.pop_front());
            }
            expect.push_back(msg);
            assert_eq!(ring.len(), expect.len());
        }
        while let Some(m) = ring.try_pop(&me).unwrap() {
            assert_eq!(Some(m), expect.pop_front());
        }
        assert!(expect.is_empty() && ring.is_empty());
    }

    #[test]
    fn a_producer_waiting_for_room_sleeps_until_half_the_ring_is_drained() {
        let (seg, ring) = new_ring(1024, u32::MAX);
        let me = Me::current();
        let mut n = 0u32;
        while ring.try_push(&me, None, 0, &[&n.to_le_bytes()]).unwrap() == Push::Done {
            n += 1;
        }
        assert!(ring.fits_half(4) && !ring.half_empty());
        let ring = Arc::new(ring);
        let r2 = Arc::clone(&ring);
        let t = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            r2.wait_half_empty(Duration::from_secs(30)).unwrap();
            start.elapsed()
        });
        while ring.hdr().room_sleepers.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        // One pop makes room, but not half the ring: no wake, the producer sleeps on.
        assert_eq!(
            ring.try_pop(&me).unwrap(),
            Some(0u32.to_le_bytes().to_vec())
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished());
        let mut k = 1u32;
        while !ring.half_empty() {
            assert_eq!(ring.try_pop(&me).unwrap(), Some(k.to_le_bytes().to_vec()));
            k += 1;
        }
        let waited = t.join().unwrap();
        // Woken by the pop that crossed the half, not by the end of its 30 s slice.
        assert!(waited < Duration::from_secs(20), "{waited:?}");
        assert_eq!(ring.hdr().room_sleepers.load(Ordering::SeqCst), 0);
        assert!(k < n);
        drop(ring);
        drop(seg);
    }

    #[test]
    fn limits() {
        let (_seg, ring) = new_ring(256, 2);
        let me = Me::current();
        assert_eq!(ring.max_payload(), 120);
        assert_eq!(
            ring.try_push(&me, None, 0, &[&[0u8; 121]]).unwrap(),
            Push::TooBig
        );
        assert_eq!(
            ring.try_push(&me, None, 0, &[&[1u8; 120]]).unwrap(),
            Push::Done
        );
        assert_eq!(ring.try_push(&me, None, 0, &[b"x"]).unwrap(), Push::Done);
        // max_items reached, although bytes remain.
        assert_eq!(
            ring.try_push(&me, None, 0, &[b"y"]).unwrap(),
            Push::FullItems
        );
        assert_eq!(ring.try_pop(&me).unwrap().unwrap(), vec![1u8; 120]);
        assert_eq!(ring.try_push(&me, None, 0, &[b"y"]).unwrap(), Push::Done);
    }

    #[test]
    fn a_dead_holder_does_not_wedge_the_ring() {
        let (_seg, ring) = new_ring(256, u32::MAX);
        let ring = Arc::new(ring);
        let r2 = Arc::clone(&ring);
        // A thread takes both locks and dies with them (as a process killed mid-push or
        // mid-pop).
        std::thread::spawn(move || {
            let me = Me::current();
            Ring::lock(&r2.hdr().push_lock, &me).unwrap();
            Ring::lock(&r2.hdr().pop_lock, &me).unwrap();
        })
        .join()
        .unwrap();
        let me = Me::current();
        assert_eq!(
            ring.try_push(&me, None, 0, &[b"after"]).unwrap(),
            Push::Done
        );
        assert_eq!(ring.try_pop(&me).unwrap().unwrap(), b"after");
    }

    /// A consumer that dies after taking an fd record's descriptor and before publishing its
    /// pop (here: a thread that panics in the `claim` hook, holding the pop lock, as a process
    /// SIGKILLed there) leaves the message, record and descriptor, to the next consumer; one
    /// that dies after its publish leaves an orphan the next fd pop closes.
    #[test]
    fn a_consumer_dying_mid_pop_loses_no_fd_message() {
        use std::os::fd::AsFd;
        let (_seg, ring) = new_ring(256, u32::MAX);
        let ring = Arc::new(ring);
        let (send, recv) = platform::seqpacket_pair().unwrap();
        let links = Links {
            send: send.as_fd(),
            recv: recv.as_fd(),
            evfd: None,
        };
        let me = Me::current();
        let push = |byte: u8| {
            let fd = platform::memfd(c"t", 4).unwrap();
            rustix::io::pwrite(&fd, &[byte; 4], 0).unwrap();
            assert_eq!(
                ring.try_push_fd(&me, &links, 7, fd.as_fd(), 4).unwrap(),
                Push::Done
            );
        };
        let first_byte = |p: Popped<()>| match p {
            Popped::Fd { tag: 7, fd, len: 4 } => {
                let mut b = [0u8; 1];
                rustix::io::pread(&fd, &mut b, 0).unwrap();
                b[0]
            }
            _ => panic!("not the fd message"),
        };
        push(1);
        push(2);
        let (r2, recv2) = (Arc::clone(&ring), recv.try_clone().unwrap());
        let send2 = send.try_clone().unwrap();
        let died = std::thread::spawn(move || {
            let links = Links {
                send: send2.as_fd(),
                recv: recv2.as_fd(),
                evfd: None,
            };
            let _ = r2.try_pop_many_with(
                &Me::current(),
                Some(&links),
                8,
                |_, _| Ok(((), std::ptr::null_mut())),
                |taken: &[Popped<()>], _| {
                    assert_eq!(taken.len(), 1, "an fd message ends a batch");
                    panic!("killed before the publish")
                },
            );
        })
        .join();
        assert!(died.is_err());
        let none = |_: u8, _: usize| -> io::Result<((), *mut u8)> { unreachable!() };
        let got = ring.try_pop_with(&me, Some(&links), none).unwrap().unwrap();
        assert_eq!(
            first_byte(got),
            1,
            "the dead consumer's message is still there"
        );
        let got = ring.try_pop_with(&me, Some(&links), none).unwrap().unwrap();
        assert_eq!(first_byte(got), 2);
        // Killed after the publish: its descriptor, older than any record, stays on the
        // socket (re-sent here); the next fd pop closes it and takes its own.
        let orphan = platform::memfd(c"t", 4).unwrap();
        platform::send_with_fd(send.as_fd(), &2u64.to_le_bytes(), orphan.as_fd()).unwrap();
        push(3);
        let got = ring.try_pop_with(&me, Some(&links), none).unwrap().unwrap();
        assert_eq!(first_byte(got), 3);
        assert!(ring.is_empty());
        let mut buf = [0u8; 8];
        assert!(platform::peek_message(recv.as_fd(), &mut buf)
            .unwrap()
            .is_none());
    }

    #[test]
    fn many_producers_many_consumers() {
        const PRODUCERS: u32 = 3;
        const PER: u32 = 3000;
        let (seg, ring) = new_ring(1024, u32::MAX);
        let ring = Arc::new(ring);
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for p in 0..PRODUCERS {
            let ring = Arc::clone(&ring);
            threads.push(std::thread::spawn(move || {
                let me = Me::current();
                for i in 0..PER {
                    let msg = [p.to_le_bytes(), i.to_le_bytes()].concat();
                    loop {
                        let seen = ring.not_full_seq();
                        match ring.try_push(&me, None, 0, &[&msg]).unwrap() {
                            Push::Done => break,
                            Push::FullItems | Push::FullBytes => {
                                ring.wait_not_full(seen, Duration::from_millis(20)).unwrap()
                            }
                            Push::TooBig => unreachable!(),
                        }
                    }
                }
            }));
        }
        for _ in 0..2 {
            let (ring, got) = (Arc::clone(&ring), Arc::clone(&got));
            threads.push(std::thread::spawn(move || {
                let me = Me::current();
                let mut mine = Vec::new();
                loop {
                    let seen = ring.not_empty_seq();
                    match ring.try_pop(&me).unwrap() {
                        Some(m) if m.is_empty() => break, // the stop message
                        Some(m) => mine.push((
                            u32::from_le_bytes(m[..4].try_into().unwrap()),
                            u32::from_le_bytes(m[4..].try_into().unwrap()),
                        )),
                        None => ring
                            .wait_not_empty(seen, Duration::from_millis(20))
                            .unwrap(),
                    }
                }
                // Per producer, each consumer sees increasing indices (FIFO per producer).
                for p in 0..PRODUCERS {
                    let idx: Vec<u32> = mine.iter().filter(|m| m.0 == p).map(|m| m.1).collect();
                    assert!(idx.windows(2).all(|w| w[0] < w[1]));
                }
                got.lock().unwrap().extend(mine);
            }));
        }
        let consumers = threads.split_off(PRODUCERS as usize);
        for t in threads {
            t.join().unwrap();
        }
        let me = Me::current();
        for _ in 0..2 {
            while ring.try_push(&me, None, 0, &[]).unwrap() != Push::Done {}
        }
        for t in consumers {
            t.join().unwrap();
        }
        let mut all = got.lock().unwrap().clone();
        all.sort();
        let want: Vec<(u32, u32)> = (0..PRODUCERS)
            .flat_map(|p| (0..PER).map(move |i| (p, i)))
            .collect();
        assert_eq!(all, want);
        drop(seg);
    }
}
