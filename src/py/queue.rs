//! Binding for `crate::queue`: `Channel`, the shared ring (with its side socket, eventfd and
//! this process's feeder) under every rmp queue. Python pickles; this layer moves bytes.
//! Blocking calls wait detached in slices (`super::wait_detached`) and answer Ctrl-C.
//!
//! Results of `put`/`get` are small ints or values rather than exceptions, so the Python
//! layer raises the stdlib's own `queue.Full`/`queue.Empty`/`ShutDown` with its messages.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyTuple};

use super::plain;
use super::pool::TaskBoard;
use super::shm::Segment;
use super::{deadline, wait_detached};
use crate::errors::Error;
use crate::platform;
use crate::pool::Board;
use crate::queue::channel::{message_offset, Channel as CoreChannel, Large};
use crate::queue::feeder::{FeederSlot, Pending};
use crate::queue::{Popped, Push, OPEN, SHUTDOWN_IMMEDIATE};
use crate::shm::Segment as CoreSegment;
use crate::sync::Me;

/// `put` results.
const PUT_OK: u8 = 0;
/// Done, and the message went to this process's backlog (the feeder moves it).
const PUT_FED: u8 = 3;
const PUT_FULL: u8 = 1;
const PUT_SHUTDOWN: u8 = 2;
/// `put_plain`: the object is not plain data; nothing was put.
const PUT_NOT_PLAIN: u8 = 255;
/// The message tag of exact `bytes` (`rmp.queues._BYTES`).
const TAG_BYTES: u8 = 1;
/// `get` results other than a message.
const GET_EMPTY: u8 = 1;
const GET_SHUTDOWN: u8 = 2;
/// How long a `put` that finds the ring full waits for a pop (spinning) before it gives up
/// on room and uses the feeder.
const ROOM_SPIN: std::time::Duration = std::time::Duration::from_micros(10);
/// Longest a `put` that finds the ring full spins for a burst's worth of room while the
/// consumers keep popping (then it hands the message to the feeder).
const ROOM_BURST: std::time::Duration = std::time::Duration::from_micros(200);
/// How long a blocked `get`/`put` spins before it sleeps (see `Ring::spin_not_empty`).
const SPIN: std::time::Duration = std::time::Duration::from_micros(20);

fn spin_budget() -> std::time::Duration {
    static S: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();
    *S.get_or_init(|| {
        std::env::var("RMP_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(SPIN, std::time::Duration::from_micros)
    })
}
/// A tag with this bit set comes back as a `bytearray` (writable), others as `bytes`.
const TAG_WRITABLE: u8 = 0x80;

/// One part of a message: a `bytes` object (the common case, read without a buffer export)
/// or any C-contiguous buffer.
enum Part<'py> {
    Bytes(Bound<'py, PyBytes>),
    Buf(PyBuffer<u8>),
}

impl Part<'_> {
    fn extract<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Part<'py>> {
        if let Ok(b) = obj.cast::<PyBytes>() {
            return Ok(Part::Bytes(b.clone()));
        }
        let buf = PyBuffer::<u8>::get(obj)?;
        if !buf.is_c_contiguous() {
            return Err(PyValueError::new_err("message parts must be C-contiguous"));
        }
        Ok(Part::Buf(buf))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Part::Bytes(b) => b.as_bytes(),
            // SAFETY: a C-contiguous buffer of `len_bytes` bytes at `buf_ptr`, kept exported
            // (so neither freed nor resized) while the `PyBuffer` lives, which outlives the
            // returned slice (borrowed from `self`).
            Part::Buf(b) => unsafe {
                std::slice::from_raw_parts(b.buf_ptr().cast::<u8>(), b.len_bytes())
            },
        }
    }
}

fn parts_of<'py>(data: &Bound<'py, PyAny>) -> PyResult<Vec<Part<'py>>> {
    if let Ok(l) = data.cast::<PyList>() {
        return l.iter().map(|p| Part::extract(&p)).collect();
    }
    if let Ok(t) = data.cast::<PyTuple>() {
        return t.iter().map(|p| Part::extract(&p)).collect();
    }
    Ok(vec![Part::extract(data)?])
}

/// How a put behaves when there is no room (see `Channel.put`).
#[derive(Clone, Copy)]
struct PutMode {
    block: bool,
    deadline: Option<Instant>,
    feed: bool,
}

/// A queue's shared ring in this process.
#[pyclass(module = "rmp._core", name = "Channel", frozen)]
pub struct Channel {
    chan: Arc<CoreChannel>,
    feeder: FeederSlot,
    /// Whether a put that finds the ring full spins briefly for room before it hands the
    /// message to the feeder: true while consumers keep up (the last spin found room, or a
    /// put went straight in); false once a spin found none (nobody reads: go to the backlog
    /// at once). Waking a feeder thread per message costs more than a short spin.
    spin_for_room: std::sync::atomic::AtomicBool,
    /// Whether this process called a put since the handle was made or `forget_puts` (the
    /// stdlib closes a queue's reader end at `close()` only once its feeder thread started,
    /// that is after a put; `Queue.empty()` then raises). Relaxed: read by the same process.
    has_put: std::sync::atomic::AtomicBool,
}

impl Channel {
    fn backlog(&self) -> usize {
        self.feeder.get().map_or(0, |f| f.pending())
    }

    fn bounded(&self) -> bool {
        self.chan.ring().max_items() < u32::MAX as usize
    }

    /// Whether a message may join this process's backlog now (a bounded queue counts the
    /// backlog against its size).
    fn may_backlog(&self) -> bool {
        !self.bounded() || self.chan.ring().len() + self.backlog() < self.chan.ring().max_items()
    }

    /// One attempt to commit the message in `parts` (or `large`, made on first need, with the
    /// interpreter released while its bytes are copied, as `os.write` does).
    fn try_put(
        &self,
        py: Python<'_>,
        me: &Me,
        tag: u8,
        parts: &[&[u8]],
        large: &mut Option<Large>,
    ) -> std::io::Result<Push> {
        let ring = self.chan.ring();
        let links = self.chan.links();
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total <= ring.max_payload() {
            return ring.try_push(me, Some(&links), tag, parts);
        }
        if large.is_none() {
            *large = Some(py.detach(|| {
                let (offset, frozen) = memfd_layout(tag);
                Large::new(parts, offset, frozen)
            })?);
        }
        let msg = large.as_ref().expect("made above");
        ring.try_push_fd(me, &links, tag, std::os::fd::AsFd::as_fd(&msg.fd), msg.len)
    }

    /// Queues a message behind this process's backlog. When that starts the feeder, the
    /// process registers its wait for the feeders at exit here, whatever the caller then does
    /// with the status (a batch that ends in `Full`, a Ctrl-C before Python sees it).
    fn enqueue(&self, py: Python<'_>, tag: u8, parts: &[&[u8]]) -> PyResult<()> {
        static REGISTER: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
        let started = self
            .feeder
            .get_or_create(&self.chan)
            .enqueue({
                let (offset, frozen) = memfd_layout(tag);
                Pending::new(tag, parts.concat(), offset, frozen)
            })
            .map_err(Error::from)?;
        if started {
            REGISTER
                .import(py, "rmp.queues", "_register_exit_join")?
                .call0()?;
        }
        Ok(())
    }

    /// The whole `put`: commit now, or queue behind the backlog (`feed`), or wait for room.
    fn put_one(
        &self,
        py: Python<'_>,
        me: &Me,
        tag: u8,
        parts: &[&[u8]],
        how: &PutMode,
    ) -> PyResult<u8> {
        let PutMode {
            block,
            deadline,
            feed,
        } = *how;
        let ring = self.chan.ring();
        let mut large: Option<Large> = None;
        // The `not_full` value to wait from: read only after a failed attempt, which is then
        // retried once before any wait (a pop between the two is seen by the retry). Not
        // reading it on the fast path keeps the consumers' cache line where it is.
        let mut armed: Option<u32> = None;
        let mut spun = false;
        loop {
            if ring.shutdown_state() != OPEN {
                return Ok(PUT_SHUTDOWN);
            }
            let why = if feed && self.backlog() > 0 {
                // Keep FIFO: behind this process's backlog.
                Push::FullBytes
            } else {
                self.try_put(py, me, tag, parts, &mut large)
                    .map_err(Error::from)?
            };
            match why {
                Push::Done => {
                    self.spin_for_room.store(true, Ordering::Relaxed);
                    return Ok(PUT_OK);
                }
                Push::FullBytes
                    if feed
                        && self.backlog() == 0
                        && self.spin_for_room.load(Ordering::Relaxed)
                        && !spun =>
                {
                    spun = true;
                    // Room for a burst, while consumers keep popping (see `spin_for_room`).
                    let total: usize = parts.iter().map(|p| p.len()).sum();
                    let want = ring.burst_room(total);
                    if !ring.spin_for_room(want, ROOM_SPIN, ROOM_BURST) {
                        self.spin_for_room.store(false, Ordering::Relaxed);
                    }
                    continue;
                }
                Push::FullBytes if !feed && block && !spun => {
                    // No feeder (SimpleQueue): wait for a burst's worth of room too, while
                    // the consumers keep popping, before the plain wait for any room.
                    spun = true;
                    let total: usize = parts.iter().map(|p| p.len()).sum();
                    ring.spin_for_room(ring.burst_room(total), ROOM_SPIN, ROOM_BURST);
                    continue;
                }
                Push::FullBytes if feed && self.may_backlog() => {
                    // A memfd made for this message is dropped: the backlog keeps bytes.
                    match self.enqueue(py, tag, parts) {
                        Ok(()) => return Ok(PUT_FED),
                        // An immediate shutdown (in another thread) cancelled the feeder.
                        Err(_) if ring.shutdown_state() != OPEN => return Ok(PUT_SHUTDOWN),
                        Err(e) => return Err(e),
                    }
                }
                Push::TooBig => unreachable!("large messages go by descriptor"),
                _ if !block => return Ok(PUT_FULL),
                _ => {}
            }
            let Some(seen) = armed.take() else {
                armed = Some(ring.not_full_seq());
                continue;
            };
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(PUT_FULL);
            }
            // The wait below returns after every slice: Ctrl-C is answered here too.
            py.check_signals()?;
            let mut spin = spin_budget();
            let changed = wait_detached(py, deadline, |slice| {
                if ring.not_full_seq() != seen || ring.shutdown_state() != OPEN {
                    return Ok(Some(()));
                }
                if ring.spin_not_full(seen, std::mem::take(&mut spin).min(slice)) {
                    return Ok(Some(()));
                }
                ring.wait_not_full(seen, slice)?;
                // Retried after each slice too: a consumer killed between its publish and
                // its bump leaves the word unchanged although room was made.
                Ok(Some(()))
            })?;
            if changed.is_none() {
                return Ok(PUT_FULL);
            }
        }
    }

    /// One attempt to take up to `max` messages, as the Python objects `get` returns.
    /// With `claim`, the first message's last 16 bytes (job, index: u64 little-endian) are
    /// recorded in that board slot before the pop is published (a pool worker's task).
    fn try_get_many(
        &self,
        py: Python<'_>,
        me: &Me,
        max: usize,
        claim: Option<(&Board, u32)>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let links = self.chan.links();
        let popped = self
            .chan
            .ring()
            .try_pop_many_with(
                me,
                Some(&links),
                max,
                |tag, len| {
                    // Under the ring's lock with the interpreter attached: a bytes or
                    // bytearray allocation is not tracked by the garbage collector, so it
                    // runs no Python code and cannot re-enter the queue.
                    alloc_message(py, tag, len)
                },
                |taken, pops| {
                    if let (Some((board, slot)), Some(first)) = (claim, taken.first()) {
                        if let Some((job, index)) = task_header(py, first) {
                            // The slot was checked by the caller: this cannot fail.
                            let _ = board.claim(slot, job, index, pops);
                        }
                    }
                },
            )
            .map_err(Error::from)?;
        popped
            .into_iter()
            .map(|p| match p {
                Popped::Inline { tag, data } => {
                    Ok((tag, data).into_pyobject(py)?.unbind().into_any())
                }
                Popped::Fd { tag, fd, len } if tag & !TAG_WRITABLE == TAG_BYTES => {
                    let obj = fd_bytes(py, tag, fd, len)?;
                    Ok((tag, obj).into_pyobject(py)?.unbind().into_any())
                }
                Popped::Fd { tag, fd, len } => {
                    let obj = fd_message(py, fd, len)?;
                    Ok((tag, obj).into_pyobject(py)?.unbind().into_any())
                }
            })
            .collect()
    }

    /// Waits (detached, in slices) until a push happens after `seen`, the shutdown state
    /// moves on from `shut_seen`, or the deadline passes (false). Shut down already (only
    /// while feeders still hold messages), it returns after one slice at most, so that the
    /// caller asks again whether they do: a feeder that dies wakes nobody.
    fn wait_pushed(
        &self,
        py: Python<'_>,
        seen: u32,
        shut_seen: u32,
        deadline: Option<Instant>,
    ) -> PyResult<bool> {
        let ring = self.chan.ring();
        let mut spin = spin_budget();
        let got = wait_detached(py, deadline, |slice| {
            if ring.not_empty_seq() != seen || ring.shutdown_state() != shut_seen {
                return Ok(Some(()));
            }
            if ring.spin_not_empty(seen, std::mem::take(&mut spin).min(slice)) {
                return Ok(Some(()));
            }
            ring.wait_not_empty(seen, slice)?;
            // A producer killed between its publish and its bump leaves the word unchanged:
            // after each slice, the ring itself says whether to look again.
            Ok(
                (ring.not_empty_seq() != seen || !ring.is_empty() || shut_seen != OPEN)
                    .then_some(()),
            )
        })?;
        Ok(got.is_some())
    }

    /// Waits for messages as `get` does and takes up to `max`: a list, or an int status.
    fn get_some(
        &self,
        py: Python<'_>,
        me: &Me,
        max: usize,
        block: bool,
        deadline: Option<Instant>,
        claim: Option<(&Board, u32)>,
    ) -> PyResult<Result<Vec<Py<PyAny>>, u8>> {
        self.wait_for_some(py, block, deadline, || {
            self.try_get_many(py, me, max, claim)
        })
    }

    /// Waits as `get` does and takes up to `max` messages, each decoded as `Queue.get` gives
    /// it: a plain message (copied under the lock into an arena, no `bytes` made) by
    /// `plain::decode`, a pickle by `pickle.loads`, `bytes` as they are, any other kind by
    /// `rmp.queues._decode`. The objects are made after the queue's lock is released.
    fn get_decoded(
        &self,
        py: Python<'_>,
        max: usize,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Result<Vec<Py<PyAny>>, u8>> {
        static LOADS: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
        static DECODE: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
        let me = Me::current();
        let deadline = if block { deadline(timeout)? } else { None };
        let links = self.chan.links();
        let ring = self.chan.ring();
        // One message: an arena chunk of its size; a batch: chunks shared by many.
        let mut arena = Arena::new(if max == 1 { 0 } else { Arena::CHUNK });
        let got = self.wait_for_some(py, block, deadline, || {
            ring.try_pop_many_with(
                &me,
                Some(&links),
                max,
                |tag, len| {
                    if tag == plain::TAG_PLAIN {
                        let (span, p) = arena.alloc(len);
                        Ok((Copied::Plain(span), p))
                    } else {
                        // As in `try_get_many`: no tracked object, so no collection here.
                        alloc_message(py, tag, len).map(|(o, p)| (Copied::Obj(o), p))
                    }
                },
                |_, _| {},
            )
            .map_err(|e| Error::from(e).into())
        });
        let popped = match got? {
            Ok(v) => v,
            Err(code) => return Ok(Err(code)),
        };
        let mut out = Vec::with_capacity(popped.len());
        for p in popped {
            let (tag, data) = match p {
                Popped::Inline {
                    data: Copied::Plain(span),
                    ..
                } => {
                    out.push(plain::decode(py, arena.get(&span))?);
                    continue;
                }
                Popped::Inline {
                    tag,
                    data: Copied::Obj(obj),
                } => (tag, obj),
                Popped::Fd { tag, fd, len } if tag & !TAG_WRITABLE == TAG_BYTES => {
                    out.push(fd_bytes(py, tag, fd, len)?);
                    continue;
                }
                Popped::Fd { tag, fd, len } => (tag, fd_message(py, fd, len)?),
            };
            let is_bytes = data.bind(py).is_exact_instance_of::<PyBytes>();
            out.push(match tag {
                plain::TAG_PICKLE if is_bytes => LOADS
                    .import(py, "pickle", "loads")?
                    .call1((data,))?
                    .unbind(),
                TAG_BYTES if is_bytes => data,
                _ => DECODE
                    .import(py, "rmp.queues", "_decode")?
                    .call1((tag, data))?
                    .unbind(),
            });
        }
        Ok(Ok(out))
    }

    /// The waiting of `get`: `attempt` until it takes something (non-empty), the queue is
    /// shut down, or the deadline passes (the int status then).
    fn wait_for_some<T>(
        &self,
        py: Python<'_>,
        block: bool,
        deadline: Option<Instant>,
        mut attempt: impl FnMut() -> PyResult<Vec<T>>,
    ) -> PyResult<Result<Vec<T>, u8>> {
        let ring = self.chan.ring();
        // As in `put_one`: the `not_empty` value is read only after a failed attempt, which
        // is then retried once before any wait.
        let mut armed: Option<u32> = None;
        loop {
            let state = ring.shutdown_state();
            if state == SHUTDOWN_IMMEDIATE {
                return Ok(Err(GET_SHUTDOWN));
            }
            let got = attempt()?;
            if !got.is_empty() {
                return Ok(Ok(got));
            }
            if state != OPEN {
                // Shut down gracefully: `ShutDown` once the queue is empty, counting the
                // messages live processes' feeders still hold (their `put` returned before the
                // shutdown). Asked first, then the ring once more: a message pushed before its
                // count went down is seen then. Else wait for them as for any message.
                if !ring.backlogged() {
                    let got = attempt()?;
                    return Ok(if got.is_empty() {
                        Err(GET_SHUTDOWN)
                    } else {
                        Ok(got)
                    });
                }
            }
            if !block {
                return Ok(Err(GET_EMPTY));
            }
            let Some(seen) = armed.take() else {
                armed = Some(ring.not_empty_seq());
                continue;
            };
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Err(GET_EMPTY));
            }
            // The wait may return without a message (another consumer took it).
            py.check_signals()?;
            if !self.wait_pushed(py, seen, state, deadline)? {
                return Ok(Err(GET_EMPTY));
            }
        }
    }
}

/// The (job, index) a pool task message ends with: two little-endian u64, its last 16
/// bytes. Called under the ring's lock: reads the copy just made (or the memfd of a large
/// message).
fn task_header(py: Python<'_>, item: &Popped<Py<PyAny>>) -> Option<(u64, u64)> {
    let mut tail = [0u8; 16];
    match item {
        Popped::Inline { data, .. } => {
            let data = data.bind(py);
            if let Ok(b) = data.cast::<PyBytes>() {
                let b = b.as_bytes();
                tail.copy_from_slice(b.get(b.len().checked_sub(16)?..)?);
            } else {
                let b = data.cast::<PyByteArray>().ok()?;
                // SAFETY: the bytearray was just allocated by this call and is not shared yet:
                // no other code can resize it while the slice lives.
                let b = unsafe { b.as_bytes() };
                tail.copy_from_slice(b.get(b.len().checked_sub(16)?..)?);
            }
        }
        Popped::Fd { fd, len, .. } => {
            let at =
                message_offset(std::os::fd::AsFd::as_fd(fd), *len).ok()? + len.checked_sub(16)?;
            if rustix::io::pread(fd, &mut tail, at).ok()? != 16 {
                return None;
            }
        }
    }
    let job = u64::from_le_bytes(tail[..8].try_into().ok()?);
    let index = u64::from_le_bytes(tail[8..].try_into().ok()?);
    Some((job, index))
}

/// A message in a memfd of its own (`len` bytes of `fd`) as `get` returns it: a read-only
/// `Segment` mapping it (empty `bytes` when `len` is 0).
fn fd_message(py: Python<'_>, fd: std::os::fd::OwnedFd, len: u64) -> PyResult<Py<PyAny>> {
    let len = usize::try_from(len).map_err(|_| PyValueError::new_err("message too large"))?;
    if len == 0 {
        return Ok(PyBytes::new(py, b"").unbind().into_any());
    }
    let seg = CoreSegment::map_with(fd, len, true, false).map_err(Error::from)?;
    Ok(Py::new(py, Segment::from_core(seg))?.into_any())
}

/// Where in its memfd a message too large for the ring goes, and whether its contents are
/// sealed (see `Large::new`). A `bytes` message goes where a new `bytes` of its size has its
/// data when glibc's `malloc` maps the object on its own (after glibc's chunk header and the
/// object's header), so that `fd_bytes` can map the file's pages into that object instead of
/// copying them; its file is sealed, so the pages it hands out can never change. Anything
/// else (a `bytearray` too: it is sent to be written, and each first write to a mapped page
/// would cost a copy of that page) goes at 0.
fn memfd_layout(tag: u8) -> (usize, bool) {
    if tag == TAG_BYTES {
        let data = platform::GLIBC_CHUNK_HEADER + std::mem::offset_of!(ffi::PyBytesObject, ob_sval);
        (data, true)
    } else {
        (0, false)
    }
}

/// Smallest message `fd_bytes` maps rather than reads: below it the copy is cheap, and each
/// mapping splits the object's block into kernel memory areas of their own (a process has
/// 65,530 by default). In practice glibc maps a block on its own only above 32 MiB, or below
/// that until the process frees such a block (glibc then raises its threshold to its size).
const MAP_MIN: usize = 1 << 20;

/// Whether `fd_bytes` may map a memfd's pages into a new `bytes`: the object must come
/// straight from glibc's `malloc` (checked per object by `platform::glibc_mmapped_block`),
/// so not with a free-threaded build or a `PYTHONMALLOC` that puts another allocator
/// (mimalloc) or a debug layer in between; and `RMP_MAP_LARGE_BYTES=0` (or `false`, `no`,
/// `off`) turns it off. Read once, at the first large `get`.
fn may_map_bytes(py: Python<'_>) -> bool {
    static MAY: pyo3::sync::PyOnceLock<bool> = pyo3::sync::PyOnceLock::new();
    *MAY.get_or_init(py, || {
        let env_allows = |name: &str, ok: &[&str]| {
            std::env::var(name).map_or(true, |v| v.is_empty() || ok.contains(&v.as_str()))
        };
        let switched_off = std::env::var("RMP_MAP_LARGE_BYTES").is_ok_and(|v| {
            ["0", "false", "no", "off"].contains(&v.trim().to_ascii_lowercase().as_str())
        });
        // A free-threaded build ("t" in its ABI flags) allocates objects with mimalloc.
        let free_threaded = py
            .import("sys")
            .and_then(|sys| sys.getattr("abiflags"))
            .and_then(|f| f.extract::<String>())
            .map_or(true, |f| f.contains('t'));
        !free_threaded
            && env_allows("PYTHONMALLOC", &["pymalloc", "malloc"])
            && !switched_off
            && platform::malloc_is_glibc()
    })
}

/// A `bytes` (or, tagged writable, `bytearray`) message held in the memfd `fd`, as a new
/// object, with the interpreter released while its bytes arrive. A `bytes` whose object is a
/// block glibc maps on its own (see `MAP_MIN`) and whose data lies in its pages as the
/// message does in the file's (see `memfd_layout`) gets the file's pages mapped privately
/// over its whole pages, and only the partial pages at either end are copied; `free` unmaps
/// the block whole, mapping included. Else (and for a `bytearray`) the kernel reads the
/// message into it (`pread`).
fn fd_bytes(py: Python<'_>, tag: u8, fd: std::os::fd::OwnedFd, len: u64) -> PyResult<Py<PyAny>> {
    let len = usize::try_from(len).map_err(|_| PyValueError::new_err("message too large"))?;
    let fd = std::os::fd::AsFd::as_fd(&fd);
    let offset = message_offset(fd, len as u64).map_err(Error::from)?;
    let (mut obj, mut ptr) = alloc_message(py, tag, len).map_err(Error::from)?;
    if mappable(py, &obj, tag, ptr, len, offset) {
        let dst = SendPtr(ptr);
        let mapped = py.detach(|| {
            let dst = dst;
            // SAFETY: the object is new and ours alone, its buffer is `len` writable bytes
            // in a block that glibc unmaps whole when freed (`mappable`).
            unsafe { platform::read_exact_at_mapped(fd, dst.0, len, offset) }
        });
        if mapped.is_ok() {
            return Ok(obj);
        }
        // The object's pages may be gone: it is only freed, and the message, still whole in
        // the file, is read into a new one.
        drop(obj);
        (obj, ptr) = alloc_message(py, tag, len).map_err(Error::from)?;
    }
    if len > 0 {
        let dst = SendPtr(ptr);
        py.detach(|| {
            let dst = dst;
            // SAFETY: `alloc_message` gave `len` writable bytes in `obj`, which we keep
            // alive and which no other thread can see yet.
            let buf = unsafe { std::slice::from_raw_parts_mut(dst.0, len) };
            platform::read_exact_at(fd, buf, offset)
        })
        .map_err(Error::from)?;
    }
    Ok(obj)
}

/// Whether `fd_bytes` may map the pages of a message at `offset` of its file into the new
/// object `obj` (tagged `tag`), whose `len` bytes of data are at `ptr`.
fn mappable(
    py: Python<'_>,
    obj: &Py<PyAny>,
    tag: u8,
    ptr: *mut u8,
    len: usize,
    offset: u64,
) -> bool {
    if tag != TAG_BYTES
        || len < MAP_MIN
        || ptr as usize % platform::page_size() != offset as usize
        || !may_map_bytes(py)
    {
        return false;
    }
    // A `bytes` is one block from its header (pymalloc passes anything above 512 bytes to
    // `malloc`), with its data, then a NUL.
    let header = ptr as usize - obj.as_ptr() as usize;
    // SAFETY: glibc's malloc is in use (`may_map_bytes`), and the object's address is the
    // pointer it returned (or, under CPython's debug layer, one behind that layer's header).
    unsafe { platform::glibc_mmapped_block(obj.as_ptr().cast::<u8>(), header + len + 1) }
}

/// A pointer moved into a closure run without the interpreter (see `fd_bytes`).
struct SendPtr(*mut u8);
// SAFETY: only used by `fd_bytes`, whose buffer no other thread touches meanwhile.
unsafe impl Send for SendPtr {}

/// Where `get_decoded` copies plain messages out of the ring, under its lock: chunks zeroed
/// when made and never grown (so the pointers handed out stay valid); for a batch, chunks of
/// at least 64 KiB, one allocation for many small messages instead of one each.
struct Arena {
    chunks: Vec<Vec<u8>>,
    /// Bytes handed out of the last chunk.
    used: usize,
    /// Smallest chunk made.
    min_chunk: usize,
}

/// Where `get_decoded` copied a message: a plain message into its arena, anything else into
/// the `bytes` (or `bytearray`) that `get` returns.
enum Copied {
    Plain(Span),
    Obj(Py<PyAny>),
}

/// A message's place in an [`Arena`].
struct Span {
    chunk: usize,
    start: usize,
    len: usize,
}

impl Arena {
    const CHUNK: usize = 64 << 10;

    fn new(min_chunk: usize) -> Arena {
        Arena {
            chunks: Vec::new(),
            used: 0,
            min_chunk,
        }
    }

    /// `len` bytes for the pop to copy a message into.
    fn alloc(&mut self, len: usize) -> (Span, *mut u8) {
        if self.chunks.last().is_none_or(|c| c.len() - self.used < len) {
            self.chunks.push(vec![0u8; len.max(self.min_chunk)]);
            self.used = 0;
        }
        let chunk = self.chunks.len() - 1;
        let start = self.used;
        self.used += len;
        let buf = &mut self.chunks[chunk][start..start + len];
        (Span { chunk, start, len }, buf.as_mut_ptr())
    }

    fn get(&self, span: &Span) -> &[u8] {
        &self.chunks[span.chunk][span.start..span.start + span.len]
    }
}

/// A new, uninitialised `bytes` (or `bytearray` for a writable tag) of `len` bytes and the
/// address of its contents.
fn alloc_message(py: Python<'_>, tag: u8, len: usize) -> std::io::Result<(Py<PyAny>, *mut u8)> {
    let n = len as ffi::Py_ssize_t;
    // SAFETY: both constructors accept a null source for an uninitialised object of `n`
    // bytes; on success we own the new reference, and the contents pointer stays valid while
    // it lives. The caller fills all `len` bytes before anyone else sees the object.
    unsafe {
        let (obj, ptr) = if tag & TAG_WRITABLE != 0 {
            let o = ffi::PyByteArray_FromStringAndSize(std::ptr::null(), n);
            (
                o,
                if o.is_null() {
                    std::ptr::null_mut()
                } else {
                    ffi::PyByteArray_AsString(o)
                },
            )
        } else {
            let o = ffi::PyBytes_FromStringAndSize(std::ptr::null(), n);
            (
                o,
                if o.is_null() {
                    std::ptr::null_mut()
                } else {
                    ffi::PyBytes_AsString(o)
                },
            )
        };
        if obj.is_null() || ptr.is_null() {
            if !obj.is_null() {
                ffi::Py_DecRef(obj);
            }
            // The pending MemoryError is dropped: the caller reports the failure as an
            // out-of-memory I/O error, which the binding maps back to MemoryError.
            ffi::PyErr_Clear();
            return Err(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
        }
        Ok((Bound::from_owned_ptr(py, obj).unbind(), ptr.cast()))
    }
}

#[pymethods]
impl Channel {
    /// A new queue ring of `capacity` data bytes (a power of two ≥ 64) holding at most
    /// `max_items` messages (2**32-1: no limit but bytes); with `eventfd`, a readiness
    /// eventfd for `SimpleQueue._reader`.
    #[new]
    #[pyo3(signature = (capacity, max_items, eventfd=false))]
    fn new(capacity: u32, max_items: u32, eventfd: bool) -> PyResult<Self> {
        Ok(Channel {
            chan: Arc::new(CoreChannel::create(capacity, max_items, eventfd).map_err(Error::from)?),
            feeder: FeederSlot::default(),
            spin_for_room: std::sync::atomic::AtomicBool::new(true),
            has_put: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The channel over descriptors received from a parent (ownership passes to it: they
    /// are closed with it, or at once on failure).
    #[staticmethod]
    #[pyo3(signature = (segment_fd, capacity, send_fd, recv_fd, eventfd=None))]
    fn open(
        segment_fd: RawFd,
        capacity: u32,
        send_fd: RawFd,
        recv_fd: RawFd,
        eventfd: Option<RawFd>,
    ) -> PyResult<Self> {
        let own = |fd: RawFd| {
            // SAFETY: the caller hands these descriptors over (documented above); each valid
            // one is owned from here on, so it is closed on every error path below.
            (fd >= 0).then(|| unsafe { crate::platform::owned_fd(fd) })
        };
        let (seg, send, recv) = (own(segment_fd), own(send_fd), own(recv_fd));
        let ev = eventfd.map(own);
        let (Some(seg), Some(send), Some(recv), None | Some(Some(_))) = (seg, send, recv, &ev)
        else {
            return Err(PyValueError::new_err("invalid file descriptor"));
        };
        let ev = ev.flatten();
        Ok(Channel {
            chan: Arc::new(CoreChannel::open(seg, capacity, send, recv, ev).map_err(Error::from)?),
            feeder: FeederSlot::default(),
            spin_for_room: std::sync::atomic::AtomicBool::new(true),
            has_put: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// `(segment, send, recv, eventfd or None)` descriptors, to pass to a child.
    fn fds(&self) -> (RawFd, RawFd, RawFd, Option<RawFd>) {
        let [a, b, c, d] = self.chan.fds();
        let raw = |f: Option<std::os::fd::BorrowedFd<'_>>| f.map(|f| f.as_raw_fd());
        (
            raw(a).unwrap_or(-1),
            raw(b).unwrap_or(-1),
            raw(c).unwrap_or(-1),
            raw(d),
        )
    }

    /// Data bytes of the ring.
    #[getter]
    fn capacity(&self) -> usize {
        self.chan.ring().capacity()
    }

    /// The largest message stored in the ring itself (larger ones go by descriptor).
    #[getter]
    fn max_payload(&self) -> usize {
        self.chan.ring().max_payload()
    }

    /// Most messages at once.
    #[getter]
    fn max_items(&self) -> usize {
        self.chan.ring().max_items()
    }

    /// Puts one message (`data`: a bytes-like object or a list of them, concatenated) with
    /// `tag`. With `feed`, a message that finds no room joins this process's backlog, which a
    /// Rust thread moves into the ring (a bounded queue counts the backlog against its size);
    /// without, or when the size limit is reached, it waits for room unless `block` is
    /// false, at most `timeout` seconds. Returns 0 (done), 3 (done, into the backlog), 1
    /// (full) or 2 (shut down).
    #[pyo3(signature = (tag, data, block=true, timeout=None, feed=true))]
    fn put(
        &self,
        py: Python<'_>,
        tag: u8,
        data: &Bound<'_, PyAny>,
        block: bool,
        timeout: Option<f64>,
        feed: bool,
    ) -> PyResult<u8> {
        self.has_put.store(true, Ordering::Relaxed);
        let me = Me::current();
        let how = PutMode {
            block,
            deadline: if block { deadline(timeout)? } else { None },
            feed,
        };
        if let Ok(b) = data.cast::<PyBytes>() {
            return self.put_one(py, &me, tag, &[b.as_bytes()], &how);
        }
        let parts = parts_of(data)?;
        let slices: Vec<&[u8]> = parts.iter().map(|p| p.bytes()).collect();
        self.put_one(py, &me, tag, &slices, &how)
    }

    /// `put` of a Python object when it needs no `ForkingPickler`: exact `bytes` (tag 1, as
    /// is) or plain data (tag 4, in the plain format of `src/py/plain.rs`), in one call.
    /// Returns `put`'s status, or 255 when `obj` is neither (the caller encodes it).
    #[pyo3(signature = (obj, block=true, timeout=None, feed=true))]
    fn put_plain(
        &self,
        py: Python<'_>,
        obj: &Bound<'_, PyAny>,
        block: bool,
        timeout: Option<f64>,
        feed: bool,
    ) -> PyResult<u8> {
        let encoded;
        let (tag, data): (u8, &[u8]) = if let Ok(b) = obj.cast_exact::<PyBytes>() {
            (TAG_BYTES, b.as_bytes())
        } else {
            match plain::encode(obj) {
                Some(v) => {
                    encoded = v;
                    (plain::TAG_PLAIN, &encoded)
                }
                None => return Ok(PUT_NOT_PLAIN),
            }
        };
        self.has_put.store(true, Ordering::Relaxed);
        let me = Me::current();
        let how = PutMode {
            block,
            deadline: if block { deadline(timeout)? } else { None },
            feed,
        };
        self.put_one(py, &me, tag, &[data], &how)
    }

    /// Puts several messages (`tags[i]`, `datas[i]`) as `put` does, in order, with one
    /// deadline. Returns how many were put and the status that stopped it (0: all).
    #[pyo3(signature = (tags, datas, block=true, timeout=None, feed=true))]
    fn put_many(
        &self,
        py: Python<'_>,
        tags: Vec<u8>,
        datas: &Bound<'_, PyList>,
        block: bool,
        timeout: Option<f64>,
        feed: bool,
    ) -> PyResult<(usize, u8)> {
        if tags.len() != datas.len() {
            return Err(PyValueError::new_err("tags and datas differ in length"));
        }
        self.has_put.store(true, Ordering::Relaxed);
        let me = Me::current();
        let how = PutMode {
            block,
            deadline: if block { deadline(timeout)? } else { None },
            feed,
        };
        for (i, (tag, data)) in tags.iter().zip(datas.iter()).enumerate() {
            let status = if let Ok(b) = data.cast::<PyBytes>() {
                self.put_one(py, &me, *tag, &[b.as_bytes()], &how)?
            } else {
                let parts = parts_of(&data)?;
                let slices: Vec<&[u8]> = parts.iter().map(|p| p.bytes()).collect();
                self.put_one(py, &me, *tag, &slices, &how)?
            };
            if status != PUT_OK && status != PUT_FED {
                return Ok((i, status));
            }
        }
        Ok((tags.len(), PUT_OK))
    }

    /// Puts the messages `blob[bounds[i-1]..bounds[i]]` (`bounds[-1]` taken as 0), all
    /// tagged `tag`, in order, as `put` does each, but committing as many as fit under one
    /// lock and one publish. Returns how many were put and the status that stopped it (0:
    /// all; 3: all, some into the backlog).
    #[pyo3(signature = (tag, blob, bounds, block=true, timeout=None, feed=true))]
    #[allow(clippy::too_many_arguments)]
    fn put_batch(
        &self,
        py: Python<'_>,
        tag: u8,
        blob: &[u8],
        bounds: Vec<usize>,
        block: bool,
        timeout: Option<f64>,
        feed: bool,
    ) -> PyResult<(usize, u8)> {
        if bounds.windows(2).any(|w| w[0] > w[1]) || bounds.last().is_some_and(|&e| e > blob.len())
        {
            return Err(PyValueError::new_err(
                "bounds must increase within the blob",
            ));
        }
        self.has_put.store(true, Ordering::Relaxed);
        let me = Me::current();
        let how = PutMode {
            block,
            deadline: if block { deadline(timeout)? } else { None },
            feed,
        };
        let ring = self.chan.ring();
        let links = self.chan.links();
        let mut done = 0;
        let mut fed = false;
        while done < bounds.len() {
            let from = if done == 0 { 0 } else { bounds[done - 1] };
            if ring.shutdown_state() != OPEN {
                return Ok((done, PUT_SHUTDOWN));
            }
            if !(feed && self.backlog() > 0) {
                let (k, why) = ring
                    .try_push_batch(&me, Some(&links), tag, blob, from, &bounds[done..])
                    .map_err(Error::from)?;
                done += k;
                if why == Push::Done || k > 0 {
                    continue;
                }
            }
            // The next message does not fit now (or is too large for the ring, or a backlog
            // exists): the single path handles it (backlog, descriptor, or a wait).
            let msg = &blob[from..bounds[done]];
            match self.put_one(py, &me, tag, &[msg], &how)? {
                PUT_OK => {}
                PUT_FED => fed = true,
                status => return Ok((done, status)),
            }
            done += 1;
        }
        Ok((done, if fed { PUT_FED } else { PUT_OK }))
    }

    /// Takes the oldest message: `(tag, bytes | bytearray | Segment)`, or 1 when none came
    /// in time (`block` false, or `timeout` passed), or 2 when the queue is shut down (and
    /// empty, unless immediately).
    #[pyo3(signature = (block=true, timeout=None))]
    fn get(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let me = Me::current();
        let deadline = if block { deadline(timeout)? } else { None };
        Ok(match self.get_some(py, &me, 1, block, deadline, None)? {
            Ok(mut v) => v.pop().expect("get_some returns at least one"),
            Err(code) => code.into_pyobject(py)?.unbind().into_any(),
        })
    }

    /// `get`, decoded here: a 1-tuple holding the object as `Queue.get` gives it, or the
    /// int status (see `get_decoded`).
    #[pyo3(signature = (block=true, timeout=None))]
    fn get_obj(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        Ok(match self.get_decoded(py, 1, block, timeout)? {
            Ok(mut v) => {
                let obj = v.pop().expect("wait_for_some returns at least one");
                PyTuple::new(py, [obj])?.unbind().into_any()
            }
            Err(code) => code.into_pyobject(py)?.unbind().into_any(),
        })
    }

    /// `get` for a pool worker: the message's last 16 bytes (job, index) are recorded
    /// in slot `slot` of `board` before the message leaves the queue, so a worker killed at
    /// any point leaves either the message queued or its claim on the board.
    #[pyo3(signature = (board, slot, block=true, timeout=None))]
    fn get_task(
        &self,
        py: Python<'_>,
        board: &TaskBoard,
        slot: u32,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        if slot >= board.board.slots() {
            return Err(PyValueError::new_err(format!(
                "slot {slot} out of range (board of {})",
                board.board.slots()
            )));
        }
        let me = Me::current();
        let deadline = if block { deadline(timeout)? } else { None };
        let claim = Some((&board.board, slot));
        Ok(match self.get_some(py, &me, 1, block, deadline, claim)? {
            Ok(mut v) => v.pop().expect("get_some returns at least one"),
            Err(code) => code.into_pyobject(py)?.unbind().into_any(),
        })
    }

    /// Takes up to `max_items` messages: waits for the first as `get` does (returning its
    /// int status if none comes), then takes what is already there, under one lock. A list
    /// of `(tag, data)`.
    #[pyo3(signature = (max_items, block=true, timeout=None))]
    fn get_many(
        &self,
        py: Python<'_>,
        max_items: usize,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let me = Me::current();
        let deadline = if block { deadline(timeout)? } else { None };
        Ok(
            match self.get_some(py, &me, max_items.max(1), block, deadline, None)? {
                Ok(v) => PyList::new(py, v)?.unbind().into_any(),
                Err(code) => code.into_pyobject(py)?.unbind().into_any(),
            },
        )
    }

    /// Whether this process called a put on this handle since it was made or `forget_puts`.
    fn has_put(&self) -> bool {
        self.has_put.load(Ordering::Relaxed)
    }

    /// Clears `has_put` (a forked child starts with no puts of its own).
    fn forget_puts(&self) {
        self.has_put.store(false, Ordering::Relaxed);
    }

    /// `get_many`, decoded here: a list of up to `max_items` objects (see `get_decoded`),
    /// or the int status.
    #[pyo3(signature = (max_items, block=true, timeout=None))]
    fn get_many_obj(
        &self,
        py: Python<'_>,
        max_items: usize,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        Ok(
            match self.get_decoded(py, max_items.max(1), block, timeout)? {
                Ok(v) => PyList::new(py, v)?.unbind().into_any(),
                Err(code) => code.into_pyobject(py)?.unbind().into_any(),
            },
        )
    }

    /// `put_many` of plain data: every object of the list or tuple `objs` in the plain
    /// format (tag 4), committed as `put_batch` does. None, with nothing put, when one of
    /// them is not plain; else `put_batch`'s `(count, status)`.
    #[pyo3(signature = (objs, block=true, timeout=None, feed=true))]
    fn put_many_plain(
        &self,
        py: Python<'_>,
        objs: &Bound<'_, PyAny>,
        block: bool,
        timeout: Option<f64>,
        feed: bool,
    ) -> PyResult<Option<(usize, u8)>> {
        let Some((blob, bounds)) = plain::encode_many(objs)? else {
            return Ok(None);
        };
        self.put_batch(py, plain::TAG_PLAIN, &blob, bounds, block, timeout, feed)
            .map(Some)
    }

    /// Messages taken from the ring so far (mod 2^32): a pool compares it with a claim's
    /// `pops` to tell a published pop from one its worker died before publishing.
    fn popped(&self) -> u32 {
        self.chan.ring().popped()
    }

    /// Waits until a message is there (true) or the timeout passes, without taking it.
    #[pyo3(signature = (timeout=None))]
    fn poll(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let ring = self.chan.ring();
        let deadline = deadline(timeout)?;
        loop {
            let seen = ring.not_empty_seq();
            let state = ring.shutdown_state();
            // Shut down, nothing more comes once no live feeder holds messages.
            if !ring.is_empty() || (state != OPEN && !ring.backlogged()) {
                return Ok(!ring.is_empty());
            }
            if timeout == Some(0.0) || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            py.check_signals()?;
            if !self.wait_pushed(py, seen, state, deadline)? {
                return Ok(!ring.is_empty());
            }
        }
    }

    /// Messages in the ring plus this process's backlog (approximate, as `qsize()`).
    fn qsize(&self) -> usize {
        self.chan.ring().len() + self.backlog()
    }

    /// Messages of this process not yet in the ring.
    fn pending(&self) -> usize {
        self.backlog()
    }

    /// Messages in the ring (all processes).
    fn ring_len(&self) -> usize {
        self.chan.ring().len()
    }

    // ---- feeder

    /// No more puts from this process: its feeder exits once the backlog is in the ring.
    fn close_feeder(&self) {
        if let Some(f) = self.feeder.get() {
            f.close();
        }
    }

    /// Drops this process's backlog (`cancel_join_thread`).
    fn cancel_feeder(&self) {
        if let Some(f) = self.feeder.get() {
            f.cancel();
        }
    }

    /// Waits (detached, in slices) until this process's feeder has exited, at most
    /// `timeout` seconds. True when it has (or never ran).
    #[pyo3(signature = (timeout=None))]
    fn join_feeder(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let Some(f) = self.feeder.get() else {
            return Ok(true);
        };
        let deadline = deadline(timeout)?;
        let done = wait_detached(py, deadline, |slice| Ok(f.wait_exited(slice).then_some(())))?;
        Ok(done.is_some())
    }

    /// Do not wait for this process's feeder at exit (`cancel_join_thread`).
    fn cancel_exit_join(&self) {
        self.feeder.get_or_create(&self.chan).cancel_exit_join();
    }

    /// The last error this process's feeder met, if any (then cleared).
    fn feeder_error(&self) -> Option<String> {
        self.feeder.get().and_then(|f| f.take_error())
    }

    // ---- JoinableQueue

    /// Counts `n` more unfinished tasks.
    #[pyo3(signature = (n=1))]
    fn task_added(&self, n: u32) {
        self.chan.ring().tasks_added(n);
    }

    /// Counts `n` tasks done; false (nothing changed) if fewer were unfinished.
    #[pyo3(signature = (n=1))]
    fn tasks_done(&self, n: u32) -> bool {
        self.chan.ring().tasks_done(n)
    }

    /// Unfinished tasks.
    #[getter]
    fn unfinished(&self) -> u32 {
        self.chan.ring().unfinished()
    }

    /// Waits (detached, in slices) until no task is unfinished, at most `timeout` seconds.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let ring = self.chan.ring();
        let deadline = deadline(timeout)?;
        let done = wait_detached(py, deadline, |slice| {
            let n = ring.unfinished();
            if n == 0 {
                return Ok(Some(()));
            }
            ring.wait_unfinished(n, slice)?;
            Ok((ring.unfinished() == 0).then_some(()))
        })?;
        Ok(done.is_some())
    }

    // ---- shutdown

    /// Shuts the queue down for every process; with `immediate`, drains it (each message
    /// removed also counts as a task done) and drops this process's backlog.
    #[pyo3(signature = (immediate=false))]
    fn shutdown(&self, py: Python<'_>, immediate: bool) -> PyResult<()> {
        let ring = self.chan.ring();
        if !immediate {
            ring.shut_down(crate::queue::SHUTDOWN);
            return Ok(());
        }
        ring.shut_down(SHUTDOWN_IMMEDIATE);
        if let Some(f) = self.feeder.get() {
            f.cancel();
        }
        let me = Me::current();
        let links = self.chan.links();
        let drained = py
            .detach(|| ring.drain(&me, Some(&links)))
            .map_err(Error::from)?;
        for _ in 0..drained {
            if !ring.tasks_done(1) {
                break;
            }
        }
        // Wake everyone again: sleepers that re-checked before the drain.
        ring.shut_down(SHUTDOWN_IMMEDIATE);
        Ok(())
    }

    /// 0 open, 1 shut down, 2 shut down immediately.
    #[getter]
    fn shutdown_state(&self) -> u32 {
        self.chan.ring().shutdown_state()
    }

    // ---- SimpleQueue's reader

    /// Makes the eventfd count waiting messages from now on (repairing a count left too
    /// high by a producer killed mid-put); returns its descriptor.
    fn arm_eventfd(&self) -> PyResult<RawFd> {
        let links = self.chan.links();
        let Some(ev) = links.evfd else {
            return Err(PyValueError::new_err("this queue has no eventfd"));
        };
        let me = Me::current();
        let ring = self.chan.ring();
        ring.arm_eventfd(&me, ev).map_err(Error::from)?;
        ring.reconcile_eventfd(&me, ev).map_err(Error::from)?;
        Ok(ev.as_raw_fd())
    }
}

/// Waits (detached, in slices) until every queue feeder of this process has moved its
/// backlog into its ring, except those of queues whose `cancel_join_thread()` was called; at
/// most `timeout` seconds. True when all have.
#[pyfunction]
#[pyo3(signature = (timeout=None))]
fn join_feeders(py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
    let joins = crate::queue::feeder::exit_joins();
    let deadline = deadline(timeout)?;
    for j in &joins {
        if wait_detached(py, deadline, |slice| Ok(j.wait_exited(slice).then_some(())))?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Channel>()?;
    m.add_function(wrap_pyfunction!(join_feeders, m)?)?;
    Ok(())
}
