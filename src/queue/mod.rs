//! A bounded many-producer many-consumer byte ring in shared memory: the core of rmp's queues
//! (bound as `rmp._core.Ring`; the `Queue` classes and their feeder thread are to build on it).
//!
//! One [`RingHeader`] (`#[repr(C)]`, 128 bytes, versioned) followed by `capacity` bytes of
//! data, all in one `MAP_SHARED` mapping. Messages are records: an 8-byte header (length,
//! kind) and the payload padded to 8 bytes. A record never straddles the end of the data area:
//! a writer that would cross it first writes a *wrap* record that tells readers to continue at
//! the start.
//!
//! Writers and readers serialise on a recursive-mutex [`SemState`] embedded in the header,
//! whose holder is recorded, so that a process killed while holding it does not wedge the
//! others (the next one takes it over). What a killed holder leaves behind is harmless by
//! construction (*commit, then publish*): a writer copies the record into free space and only
//! then advances `tail`; a reader copies the payload out and only then advances `head`. A
//! writer killed mid-copy leaves no visible message; a reader killed mid-copy leaves the
//! message in place for the next reader.
//!
//! Sleepers wait on two sequence words (`not_empty`, `not_full`) that every push and pop bump,
//! and are woken only when someone sleeps.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::platform;
use crate::sync::semaphore::{Kind, SemState};
use crate::sync::{futex_wait_slice, Me};

/// `b"RMPQ"`: marks an initialised [`RingHeader`].
pub const RING_MAGIC: u32 = u32::from_le_bytes(*b"RMPQ");
/// Layout version of [`RingHeader`] and of the record format.
pub const RING_VERSION: u32 = 1;
/// Bytes before the data area.
pub const HEADER_SIZE: usize = 128;
/// Bytes of a record header.
pub const RECORD_HEADER: usize = 8;

const KIND_MESSAGE: u32 = 0;
const KIND_WRAP: u32 = 1;
/// How long one attempt to take the ring's lock may sleep before the caller re-checks (the
/// lock is held only for a copy, so this is rarely reached).
const LOCK_SLICE: Duration = Duration::from_millis(50);

/// The ring's shared header. Field by field:
#[repr(C)]
#[derive(Debug)]
pub struct RingHeader {
    /// [`RING_MAGIC`], written last by `init` (Release).
    magic: AtomicU32,
    /// [`RING_VERSION`].
    version: AtomicU32,
    /// Bytes of the data area: a power of two, at least 64. Written once by `init`.
    capacity: AtomicU32,
    /// Most messages the ring holds at once (`u32::MAX`: only bytes limit it). Written once.
    max_items: AtomicU32,
    /// Futex word bumped after every push (Release): consumers sleep on it.
    not_empty: AtomicU32,
    /// Futex word bumped after every pop (Release): producers sleep on it.
    not_full: AtomicU32,
    /// Consumers registered as sleeping on `not_empty`.
    empty_sleepers: AtomicU32,
    /// Producers registered as sleeping on `not_full`.
    full_sleepers: AtomicU32,
    /// Messages committed and not yet consumed, updated under the lock right after the
    /// publish (a holder killed between the two stores leaves it off by one: `qsize()` is
    /// approximate, as the stdlib documents it to be).
    items: AtomicU32,
    /// Reserved, zero.
    _pad: u32,
    /// Read position in bytes since creation (monotonic; `% capacity` in the data area).
    /// Advanced under the lock after a record is copied out (the publish of a pop).
    head: AtomicU64,
    /// Write position in bytes since creation. Advanced under the lock after a record is
    /// copied in (the publish of a push).
    tail: AtomicU64,
    /// Reserved, zero.
    _reserved: [u32; 2],
    /// The ring's lock (recursive-mutex kind, holder recorded), in a cache line of its own.
    lock: SemState,
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// Committed.
    Done,
    /// No room now (bytes or `max_items`); wait on `not_full` and retry.
    Full,
    /// The message can never fit in this ring: send it another way.
    TooBig,
}

/// A view of a ring in a mapping.
pub struct Ring {
    hdr: NonNull<RingHeader>,
    data: NonNull<u8>,
}

// SAFETY: the ring is shared memory accessed through atomics and, for the data area, under
// the ring's lock; the view holds no thread-affine state.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

/// Bytes a segment needs for a ring with `capacity` data bytes.
pub fn segment_size(capacity: usize) -> usize {
    HEADER_SIZE + capacity
}

fn record_len(payload: usize) -> u64 {
    (RECORD_HEADER + payload.div_ceil(8) * 8) as u64
}

impl Ring {
    /// A view of the ring at `base`.
    ///
    /// # Safety
    /// `base` must point to `segment_size(capacity)` bytes of a live, 128-byte-aligned
    /// mapping that outlives the view, holding a ring initialised by [`Ring::init`] (or about
    /// to be, by the caller, before anyone else uses it).
    pub unsafe fn from_raw(base: NonNull<u8>) -> Ring {
        Ring {
            hdr: base.cast(),
            // SAFETY: the caller guarantees the mapping extends past the header.
            data: unsafe { base.add(HEADER_SIZE) },
        }
    }

    fn hdr(&self) -> &RingHeader {
        // SAFETY: `from_raw`'s contract: a live mapping holding the header; every field is
        // an atomic (or plain data written only by `init`).
        unsafe { self.hdr.as_ref() }
    }

    /// Initialises a zeroed ring of `capacity` data bytes (a power of two, ≥ 64) holding at
    /// most `max_items` messages. Must run before the ring is shared.
    pub fn init(&self, capacity: u32, max_items: u32) -> io::Result<()> {
        if !capacity.is_power_of_two() || capacity < 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ring capacity must be a power of two >= 64",
            ));
        }
        let h = self.hdr();
        h.capacity.store(capacity, Ordering::Relaxed);
        h.max_items.store(max_items.max(1), Ordering::Relaxed);
        h.lock.init(Kind::RecursiveMutex, 1, 1);
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
            && h.lock.check()
    }

    /// Data bytes.
    pub fn capacity(&self) -> usize {
        self.hdr().capacity.load(Ordering::Relaxed) as usize
    }

    /// Messages waiting (racy by nature: `qsize()`).
    pub fn len(&self) -> usize {
        self.hdr().items.load(Ordering::Relaxed) as usize
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

    fn lock(&self, me: &Me) -> io::Result<()> {
        let l = &self.hdr().lock;
        loop {
            // A holder killed mid-operation is taken over (its work was never published).
            if l.acquire_slice(me, LOCK_SLICE)?.got() {
                return Ok(());
            }
        }
    }

    fn unlock(&self, me: &Me) {
        // Cannot fail: `lock` made us the holder and nothing releases in between.
        let _ = self.hdr().lock.release(me);
    }

    /// Copies `len` bytes at ring position `pos` (not crossing the end) into `dst`.
    ///
    /// # Safety
    /// The caller holds the lock and `pos % cap + len <= cap`.
    unsafe fn read_at(&self, pos: u64, dst: *mut u8, len: usize) {
        let off = (pos % self.capacity() as u64) as usize;
        // SAFETY: in bounds per the contract; the lock excludes concurrent writers of these
        // bytes (a committed record is only rewritten after it is popped).
        unsafe { std::ptr::copy_nonoverlapping(self.data.as_ptr().add(off), dst, len) }
    }

    /// Copies `src` to ring position `pos` (not crossing the end).
    ///
    /// # Safety
    /// The caller holds the lock, the bytes are free space, and `pos % cap + len <= cap`.
    unsafe fn write_at(&self, pos: u64, src: *const u8, len: usize) {
        let off = (pos % self.capacity() as u64) as usize;
        // SAFETY: in bounds and free per the contract; readers never look past `tail`.
        unsafe { std::ptr::copy_nonoverlapping(src, self.data.as_ptr().add(off), len) }
    }

    fn write_record_header(&self, pos: u64, len: u32, kind: u32) {
        let mut h = [0u8; RECORD_HEADER];
        h[..4].copy_from_slice(&len.to_le_bytes());
        h[4..].copy_from_slice(&kind.to_le_bytes());
        // SAFETY: called under the lock on free space; records are 8-aligned, so the header
        // never crosses the end.
        unsafe { self.write_at(pos, h.as_ptr(), RECORD_HEADER) }
    }

    fn read_record_header(&self, pos: u64) -> (u32, u32) {
        let mut h = [0u8; RECORD_HEADER];
        // SAFETY: under the lock, a committed record (8-aligned: never crosses the end).
        unsafe { self.read_at(pos, h.as_mut_ptr(), RECORD_HEADER) };
        (
            u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
            u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        )
    }

    /// Commits one message made of `parts` (concatenated), if it fits now.
    pub fn try_push(&self, me: &Me, parts: &[&[u8]]) -> io::Result<Push> {
        let payload: usize = parts.iter().map(|p| p.len()).sum();
        if payload > self.max_payload() {
            return Ok(Push::TooBig);
        }
        let cap = self.capacity() as u64;
        let need = record_len(payload);
        let h = self.hdr();
        self.lock(me)?;
        let head = h.head.load(Ordering::Relaxed);
        let mut tail = h.tail.load(Ordering::Relaxed);
        let to_end = cap - tail % cap;
        let wrap = if need > to_end { to_end } else { 0 };
        let full = h.items.load(Ordering::Relaxed) >= h.max_items.load(Ordering::Relaxed)
            || tail - head + wrap + need > cap;
        if full {
            self.unlock(me);
            return Ok(Push::Full);
        }
        if wrap > 0 {
            self.write_record_header(tail, (wrap as usize - RECORD_HEADER) as u32, KIND_WRAP);
            tail += wrap;
        }
        let mut pos = tail + RECORD_HEADER as u64;
        for p in parts {
            // SAFETY: under the lock, into free space (checked above), within one
            // contiguous stretch (the wrap record moved us to the start when needed).
            unsafe { self.write_at(pos, p.as_ptr(), p.len()) };
            pos += p.len() as u64;
        }
        self.write_record_header(tail, payload as u32, KIND_MESSAGE);
        // Publish: only now is the record visible. Release pairs with the Acquire load of
        // `tail` by readers (under the lock as well; the ordering also covers lock-free
        // observers such as `len`).
        h.tail.store(tail + need, Ordering::Release);
        h.items.fetch_add(1, Ordering::Relaxed);
        self.unlock(me);
        // Release: pairs with the Acquire load in `wait_not_empty`.
        h.not_empty.fetch_add(1, Ordering::Release);
        // SeqCst: the bump above must be ordered before this load, against a sleeper's
        // increment of `empty_sleepers` and its re-check (a Dekker pair with `wait_on`).
        if h.empty_sleepers.load(Ordering::SeqCst) > 0 {
            let _ = platform::futex_wake(&h.not_empty, 1);
        }
        Ok(Push::Done)
    }

    /// Takes the oldest message, if any.
    pub fn try_pop(&self, me: &Me) -> io::Result<Option<Vec<u8>>> {
        let cap = self.capacity() as u64;
        let h = self.hdr();
        self.lock(me)?;
        let mut head = h.head.load(Ordering::Relaxed);
        // Acquire: pairs with the Release store of `tail` in `try_push`.
        let tail = h.tail.load(Ordering::Acquire);
        if head == tail {
            self.unlock(me);
            return Ok(None);
        }
        let (mut len, mut kind) = self.read_record_header(head);
        if kind == KIND_WRAP {
            head += RECORD_HEADER as u64 + u64::from(len);
            debug_assert_eq!(head % cap, 0);
            (len, kind) = self.read_record_header(head);
        }
        debug_assert_eq!(kind, KIND_MESSAGE);
        let len = len as usize;
        let mut out = Vec::with_capacity(len);
        // SAFETY: a committed record of `len` payload bytes lies after its header within one
        // contiguous stretch; `out` has room for `len` bytes.
        unsafe {
            self.read_at(head + RECORD_HEADER as u64, out.as_mut_ptr(), len);
            out.set_len(len);
        }
        // Publish the pop only after the copy.
        h.head.store(head + record_len(len), Ordering::Release);
        h.items.fetch_sub(1, Ordering::Relaxed);
        self.unlock(me);
        // Release / SeqCst: as in `try_push`, for the producers' side.
        h.not_full.fetch_add(1, Ordering::Release);
        if h.full_sleepers.load(Ordering::SeqCst) > 0 {
            let _ = platform::futex_wake(&h.not_full, 1);
        }
        Ok(Some(out))
    }

    /// The `not_empty` sequence value to wait from (read before trying to pop).
    pub fn not_empty_seq(&self) -> u32 {
        self.hdr().not_empty.load(Ordering::Acquire)
    }

    /// The `not_full` sequence value to wait from (read before trying to push).
    pub fn not_full_seq(&self) -> u32 {
        self.hdr().not_full.load(Ordering::Acquire)
    }

    /// Sleeps at most `slice` unless a push happened since `seen` was read.
    pub fn wait_not_empty(&self, seen: u32, slice: Duration) -> io::Result<()> {
        let h = self.hdr();
        wait_on(&h.not_empty, &h.empty_sleepers, seen, slice)
    }

    /// Sleeps at most `slice` unless a pop happened since `seen` was read.
    pub fn wait_not_full(&self, seen: u32, slice: Duration) -> io::Result<()> {
        let h = self.hdr();
        wait_on(&h.not_full, &h.full_sleepers, seen, slice)
    }
}

fn wait_on(word: &AtomicU32, sleepers: &AtomicU32, seen: u32, slice: Duration) -> io::Result<()> {
    // SeqCst: register before the futex re-checks `word` (see `try_push`).
    sleepers.fetch_add(1, Ordering::SeqCst);
    let r = futex_wait_slice(word, seen, slice);
    sleepers.fetch_sub(1, Ordering::SeqCst);
    r.map(|_| ())
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
    fn header_is_128_bytes() {
        assert_eq!(std::mem::size_of::<RingHeader>(), HEADER_SIZE);
        assert_eq!(std::mem::offset_of!(RingHeader, lock), 64);
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
                .try_push(&me, &[&msg[..msg.len() / 2], &msg[msg.len() / 2..]])
                .unwrap()
                == Push::Full
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
    fn limits() {
        let (_seg, ring) = new_ring(256, 2);
        let me = Me::current();
        assert_eq!(ring.max_payload(), 120);
        assert_eq!(ring.try_push(&me, &[&[0u8; 121]]).unwrap(), Push::TooBig);
        assert_eq!(ring.try_push(&me, &[&[1u8; 120]]).unwrap(), Push::Done);
        assert_eq!(ring.try_push(&me, &[b"x"]).unwrap(), Push::Done);
        // max_items reached, although bytes remain.
        assert_eq!(ring.try_push(&me, &[b"y"]).unwrap(), Push::Full);
        assert_eq!(ring.try_pop(&me).unwrap().unwrap(), vec![1u8; 120]);
        assert_eq!(ring.try_push(&me, &[b"y"]).unwrap(), Push::Done);
    }

    #[test]
    fn a_dead_holder_does_not_wedge_the_ring() {
        let (_seg, ring) = new_ring(256, u32::MAX);
        let ring = Arc::new(ring);
        let r2 = Arc::clone(&ring);
        // A thread takes the ring's lock and dies with it (as a process killed mid-push).
        std::thread::spawn(move || r2.lock(&Me::current()).unwrap())
            .join()
            .unwrap();
        let me = Me::current();
        assert_eq!(ring.try_push(&me, &[b"after"]).unwrap(), Push::Done);
        assert_eq!(ring.try_pop(&me).unwrap().unwrap(), b"after");
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
                        match ring.try_push(&me, &[&msg]).unwrap() {
                            Push::Done => break,
                            Push::Full => {
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
            while ring.try_push(&me, &[]).unwrap() != Push::Done {}
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
