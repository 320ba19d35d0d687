//! Bindings for `crate::sync`: `SemLock`, `CondVar`, `EventFlag`, `BarrierCore`. Each holds a
//! reference to the `Segment` its state lives in (an arena slot) and a pointer to the state.
//! Blocking calls wait detached in slices (`super::wait_detached`) and answer Ctrl-C.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use pyo3::exceptions::{PyAssertionError, PyOSError, PyRuntimeWarning, PyValueError};
use pyo3::prelude::*;

use super::shm::Segment;
use super::withlock::Parked;
use super::{deadline, wait_detached};
use crate::sync::barrier::{Arrival, BarrierState, Passage};
use crate::sync::condition::{CondState, Ticket, SLOTS};
use crate::sync::event::EventState;
use crate::sync::semaphore::{Acquired, Kind, SemState};
use crate::sync::Me;
pub(crate) use SemLock as CoreSemLock;

/// CPython's `_multiprocessing` kind numbers.
const RECURSIVE_MUTEX: i32 = 0;
const SEMAPHORE: i32 = 1;

/// A state of type `T` at `offset` in a segment, kept alive by the reference to the segment.
struct Slot<T> {
    seg: Py<Segment>,
    ptr: NonNull<T>,
}

// SAFETY: `T` is one of the sync states, made of atomics only and meant to be shared between
// threads and processes; the mapping is kept alive by `seg`.
unsafe impl<T> Send for Slot<T> {}
// SAFETY: as above: every access through `ptr` is atomic.
unsafe impl<T> Sync for Slot<T> {}

impl<T> Slot<T> {
    fn new(seg: Py<Segment>, offset: usize) -> PyResult<Self> {
        let ptr = seg.get().ptr_at::<T>(offset)?;
        Ok(Slot { seg, ptr })
    }

    fn get(&self) -> &T {
        // SAFETY: `ptr` points into the mapping owned by `seg`, which outlives `&self`; `T` is
        // accessed through atomics only, so shared references are sound even though other
        // processes write the same bytes.
        unsafe { self.ptr.as_ref() }
    }
}

/// A cheap process-local identity of the calling thread (`pthread_self`, as CPython's
/// `PyThread_get_thread_ident`), truncated: compared only with values this process stored.
fn thread_ident() -> u32 {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as u32 }
}

fn kind_from_cpython(kind: i32) -> PyResult<Kind> {
    match kind {
        RECURSIVE_MUTEX => Ok(Kind::RecursiveMutex),
        SEMAPHORE => Ok(Kind::Semaphore),
        _ => Err(PyValueError::new_err(format!("unrecognized kind {kind}"))),
    }
}

/// Spin rounds (one CPU pause each, a few microseconds in all) an acquire tries before it
/// sleeps: a lock held for a short critical section changes hands without a futex sleep and
/// wake-up, which cost far more (both in time and in CPU) than the spin.
const SPINS: u32 = 100;

/// A futex semaphore or recursive mutex in shared memory: the engine of `rmp.synchronize`'s
/// `Lock`, `RLock`, `Semaphore` and `BoundedSemaphore` (which subclass it, so that `with lock:`
/// calls straight into Rust), with the API of CPython's `_multiprocessing.SemLock`.
#[pyclass(module = "rmp._core", name = "SemLock", frozen, subclass)]
pub struct SemLock {
    slot: Slot<SemState>,
    /// CPython kind number.
    #[pyo3(get)]
    kind: i32,
    #[pyo3(get)]
    maxvalue: u32,
    #[pyo3(get)]
    name: Option<String>,
    /// Process-local: acquisitions by this process not yet released (recursion depth for a
    /// mutex), as CPython's `count`.
    count: AtomicU32,
    /// Process-local: `thread_ident()` of the last acquirer in this process (semaphore kind).
    last_tid: AtomicU32,
    /// This lock's parked `__enter__`/`__exit__` bindings (`super::withlock`).
    parked: Parked,
}

impl SemLock {
    pub(crate) fn parked(&self) -> &Parked {
        &self.parked
    }

    fn state(&self) -> &SemState {
        self.slot.get()
    }

    /// Records an acquisition: one more unit (semaphore) or one more level of recursion.
    fn took(&self) {
        // Load + store, not an atomic add: callers hold the interpreter, which serialises
        // them (CPython's own count is a plain int for the same reason).
        self.count
            .store(self.count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.last_tid.store(thread_ident(), Ordering::Relaxed);
    }

    /// Records that the mutex was newly taken (free, or taken over): depth 1, whatever a
    /// thread of this process that died holding it left in the count.
    fn took_mutex(&self) {
        self.count.store(1, Ordering::Relaxed);
        self.last_tid.store(thread_ident(), Ordering::Relaxed);
    }

    /// Records a successful acquire of either kind, `fresh` when a mutex was newly taken.
    fn took_any(&self, fresh: bool) {
        if fresh && self.kind == RECURSIVE_MUTEX {
            self.took_mutex()
        } else {
            self.took()
        }
    }

    /// The uncontended `acquire()`: a semaphore-kind lock with a unit free (one CAS, no
    /// thread identity needed), or a mutex that is free or already the caller's. False: take
    /// the waiting path (`acquire`).
    pub(crate) fn try_acquire_fast(&self) -> bool {
        match self.try_acquire_fast_or_held() {
            Some(true) => true,
            Some(false) => {
                self.took(); // one more level of the caller's recursive mutex
                true
            }
            None => false,
        }
    }

    /// `try_acquire_fast` for a caller that gives the lock back before anything else can
    /// run: a recursive mutex the calling thread already holds is left as it is, since a
    /// nested level would only be counted and uncounted. `Some(true)`: taken (release it
    /// after); `Some(false)`: already held by the caller (nothing to release); `None`: not
    /// available now (take the waiting path).
    pub(crate) fn try_acquire_fast_or_held(&self) -> Option<bool> {
        let st = self.state();
        if self.kind == SEMAPHORE {
            let got = st.try_take_unit();
            if got {
                self.took();
            }
            return got.then_some(true);
        }
        let me = Me::current();
        if st.held_by(&me) {
            Some(false)
        } else if st.try_lock(&me) {
            self.took_mutex();
            Some(true)
        } else {
            None
        }
    }

    /// A `release()` that succeeds: a semaphore below its bound, or a mutex the caller
    /// holds. False: nothing was released (`release` raises the stdlib's error).
    pub(crate) fn try_release_fast(&self) -> bool {
        let st = self.state();
        let c = self.count.load(Ordering::Relaxed);
        if self.kind == SEMAPHORE {
            let anyone = Me {
                pid: 0,
                tid: 0,
                start: 0,
            };
            if st.release(&anyone).is_err() {
                return false;
            }
        } else {
            let me = Me::current();
            if !st.held_by(&me) {
                return false;
            }
            if c <= 1 && st.release(&me).is_err() {
                return false;
            }
        }
        self.count.store(c.saturating_sub(1), Ordering::Relaxed);
        true
    }
}

#[pymethods]
impl SemLock {
    /// Binds the state at `offset` of `segment`; with `create`, initialises it first with
    /// `value` units of at most `maxvalue`.
    #[new]
    #[pyo3(signature = (segment, offset, kind, value, maxvalue, create, name=None))]
    fn new(
        segment: Py<Segment>,
        offset: usize,
        kind: i32,
        value: i64,
        maxvalue: i64,
        create: bool,
        name: Option<String>,
    ) -> PyResult<Self> {
        let core_kind = kind_from_cpython(kind)?;
        if value < 0 {
            // What CPython's sem_open reports for a negative value.
            return Err(PyOSError::new_err((libc::EINVAL, "Invalid argument")));
        }
        let max = u32::try_from(maxvalue.max(1)).unwrap_or(u32::MAX);
        let value = u32::try_from(value).map_err(|_| {
            PyValueError::new_err(format!("semaphore initial value {value} is too large"))
        })?;
        let slot = Slot::<SemState>::new(segment, offset)?;
        if create {
            slot.get().init(core_kind, value, max);
        } else if !slot.get().check() || slot.get().kind() != core_kind {
            return Err(PyValueError::new_err(
                "no rmp semaphore of this kind at this offset (layout version mismatch?)",
            ));
        }
        Ok(SemLock {
            maxvalue: slot.get().max_value(),
            slot,
            kind,
            name,
            count: AtomicU32::new(0),
            last_tid: AtomicU32::new(0),
            parked: Parked::default(),
        })
    }

    /// Acquires, blocking (detached, in slices, answering Ctrl-C) unless `block` is false,
    /// at most `timeout` seconds. A recursive mutex whose holder died is recovered with a
    /// `RuntimeWarning` naming the dead pid. (`rmp.synchronize` calls it through the raw
    /// `semlock_acquire` descriptor, `src/py/fastcall.rs`, which handles the fast path.)
    #[pyo3(name = "_acquire", signature = (block=true, timeout=None))]
    pub(crate) fn acquire(
        &self,
        py: Python<'_>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        if self.try_acquire_fast() {
            return Ok(true);
        }
        let st = self.state();
        let me = Me::current();
        if !block {
            return Ok(false);
        }
        if timeout.is_none_or(|t| t > 0.0) && st.spin_acquire(&me, SPINS) {
            self.took_any(true);
            return Ok(true);
        }
        let deadline = deadline(timeout)?;
        let got = wait_detached(py, deadline, |slice| {
            Ok(match st.acquire_slice(&me, slice)? {
                Acquired::No => None,
                a => Some(a),
            })
        })?;
        match got {
            None => Ok(false),
            Some(a) => {
                self.took_any(true);
                if let Acquired::Recovered { pid, tid } = a {
                    let who = if pid != 0 {
                        format!("process {pid} (thread {tid})")
                    } else {
                        format!("thread {tid}")
                    };
                    let msg = std::ffi::CString::new(format!(
                        "the holder of this lock, {who}, died while holding it; process {} \
                         took it over (data it guarded may be inconsistent)",
                        me.pid
                    ))
                    .unwrap_or_default();
                    if let Err(e) = PyErr::warn(py, &py.get_type::<PyRuntimeWarning>(), &msg, 1) {
                        // The warning became an error (-W error): do not leave with the lock.
                        self.count.store(0, Ordering::Relaxed);
                        let _ = st.release(&me);
                        return Err(e);
                    }
                }
                Ok(true)
            }
        }
    }

    /// Releases one unit; a mutex must be held by the calling thread.
    #[pyo3(name = "_release")]
    pub(crate) fn release(&self) -> PyResult<()> {
        if self.try_release_fast() {
            Ok(())
        } else if self.kind == RECURSIVE_MUTEX {
            Err(PyAssertionError::new_err(
                "attempt to release recursive lock not owned by thread",
            ))
        } else {
            Err(PyValueError::new_err(
                "semaphore or lock released too many times",
            ))
        }
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, None)
    }

    #[pyo3(signature = (_exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        _exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.release()
    }

    /// Acquisitions by this process not yet released.
    fn _count(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether the calling thread holds it (mutex), or acquired it last in this process and
    /// has not released every unit (semaphore), as CPython's `_is_mine`.
    fn _is_mine(&self) -> bool {
        if self.kind == RECURSIVE_MUTEX {
            self.state().held_by(&Me::current()) && self.count.load(Ordering::Relaxed) > 0
        } else {
            self.count.load(Ordering::Relaxed) > 0
                && self.last_tid.load(Ordering::Relaxed) == thread_ident()
        }
    }

    /// Units available (a free mutex has 1).
    fn _get_value(&self) -> u32 {
        self.state().value()
    }

    fn _is_zero(&self) -> bool {
        self.state().value() == 0
    }

    /// Pid of the holder (mutex), 0 if free or a semaphore.
    fn _owner_pid(&self) -> u32 {
        self.state().last_owner()
    }

    /// Forgets this process's acquisitions (a forked child holds nothing).
    fn _after_fork(&self) {
        self.count.store(0, Ordering::Relaxed);
    }

    /// Itself: CPython's wrappers keep the semaphore in `_semlock`, and code written against
    /// them (the stdlib's `Condition`, tests) reaches it there.
    #[getter(_semlock)]
    fn semlock_itself(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The segment the state lives in.
    #[getter]
    fn segment(&self, py: Python<'_>) -> Py<Segment> {
        self.slot.seg.clone_ref(py)
    }
}

/// The shared half of a `Condition`: a sequence word and sleeper/token counts.
#[pyclass(module = "rmp._core", name = "CondVar", frozen)]
pub struct CondVar {
    slot: Slot<CondState>,
}

#[pymethods]
impl CondVar {
    #[new]
    fn new(segment: Py<Segment>, offset: usize, create: bool) -> PyResult<Self> {
        let slot = Slot::<CondState>::new(segment, offset)?;
        if create {
            slot.get().init();
        } else if !slot.get().check() {
            return Err(PyValueError::new_err("no rmp condition at this offset"));
        }
        Ok(CondVar { slot })
    }

    /// Registers the caller as a sleeper (call holding the lock); returns the ticket to pass
    /// to `wait` (a slot index, or a negative number for an overflow registration).
    fn register(&self) -> i64 {
        match self.slot.get().register(&Me::current()) {
            Ticket::Slot(i) => i as i64,
            Ticket::Overflow(seen) => -1 - i64::from(seen),
        }
    }

    /// Waits (detached, in slices) to be notified, at most `timeout` seconds; returns whether
    /// it was. Ends the registration in every case, also when Ctrl-C interrupts it.
    #[pyo3(signature = (ticket, timeout=None))]
    fn wait(&self, py: Python<'_>, ticket: i64, timeout: Option<f64>) -> PyResult<bool> {
        let st = self.slot.get();
        let mut t = if ticket >= 0 {
            let i = ticket as usize;
            if i >= SLOTS {
                return Err(PyValueError::new_err("invalid condition ticket"));
            }
            Ticket::Slot(i)
        } else {
            Ticket::Overflow(
                u32::try_from(-1 - ticket)
                    .map_err(|_| PyValueError::new_err("invalid condition ticket"))?,
            )
        };
        let deadline = match deadline(timeout) {
            Ok(d) => d,
            Err(e) => {
                st.cancel(t);
                return Err(e);
            }
        };
        let t_ref = &mut t;
        let r = wait_detached(py, deadline, |slice| {
            Ok(st.wait_slice(t_ref, slice)?.then_some(()))
        });
        match r {
            Ok(Some(())) => Ok(true),
            Ok(None) => Ok(st.cancel(t)),
            Err(e) => {
                st.cancel(t);
                Err(e)
            }
        }
    }

    /// Notifies up to `n` sleepers without waiting for any; returns how many.
    fn notify(&self, n: u32) -> u32 {
        self.slot.get().notify(n)
    }

    /// (sleepers not yet notified, notified sleepers not yet awake), racy: diagnostics.
    fn counts(&self) -> (u32, u32) {
        self.slot.get().counts()
    }
}

/// A flag in shared memory that sleepers futex-wait on (`Event`).
#[pyclass(module = "rmp._core", name = "EventFlag", frozen)]
pub struct EventFlag {
    slot: Slot<EventState>,
}

#[pymethods]
impl EventFlag {
    #[new]
    fn new(segment: Py<Segment>, offset: usize, create: bool) -> PyResult<Self> {
        let slot = Slot::<EventState>::new(segment, offset)?;
        if create {
            slot.get().init();
        } else if !slot.get().check() {
            return Err(PyValueError::new_err("no rmp event at this offset"));
        }
        Ok(EventFlag { slot })
    }

    fn is_set(&self) -> bool {
        self.slot.get().is_set()
    }

    fn set(&self) {
        self.slot.get().set()
    }

    fn clear(&self) {
        self.slot.get().clear()
    }

    /// Waits (detached, in slices) until set (or a set happened since the wait began), at most
    /// `timeout` seconds; returns the flag.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let st = self.slot.get();
        if st.is_set() {
            return Ok(true);
        }
        let since = st.generation();
        let deadline = deadline(timeout)?;
        let got = wait_detached(py, deadline, |slice| {
            Ok(st.wait_slice(since, slice)?.then_some(()))
        })?;
        // True if the flag was set before or during the wait (even if a clear has undone it
        // since), False only on a timeout: the documented semantics of Event.wait.
        Ok(got.is_some() || st.is_set())
    }
}

/// The shared state of a `Barrier`.
#[pyclass(module = "rmp._core", name = "BarrierCore", frozen)]
pub struct BarrierCore {
    slot: Slot<BarrierState>,
}

/// `BarrierCore.wait` outcomes.
const PASSED: u8 = 0;
const LAST: u8 = 1;
const BROKEN: u8 = 2;

#[pymethods]
impl BarrierCore {
    #[new]
    fn new(segment: Py<Segment>, offset: usize, parties: u32, create: bool) -> PyResult<Self> {
        if parties == 0 {
            return Err(PyValueError::new_err("parties must be > 0"));
        }
        if parties > crate::sync::barrier::MAX_PARTIES {
            return Err(PyValueError::new_err(format!(
                "rmp's Barrier supports at most {} parties",
                crate::sync::barrier::MAX_PARTIES
            )));
        }
        let slot = Slot::<BarrierState>::new(segment, offset)?;
        if create {
            slot.get().init(parties);
        } else if !slot.get().check() {
            return Err(PyValueError::new_err("no rmp barrier at this offset"));
        }
        Ok(BarrierCore { slot })
    }

    /// Arrives and waits (detached, in slices) at most `timeout` seconds. Returns
    /// `(0, index, 0)` when released, `(1, index, gen)` for the last party (which must run
    /// the action and call `release(gen)` or `abort()`), `(2, 0, 0)` when broken; a timeout
    /// breaks the barrier and returns `(2, 0, 0)` too, as `threading.Barrier` does.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<(u8, u32, u32)> {
        let st = self.slot.get();
        let deadline = deadline(timeout)?;
        // Arrive, waiting out a generation whose last party is still running its action.
        let arrival = {
            let mut seen = st.seq();
            let first = st.arrive();
            if first == Arrival::Full {
                let seen_ref = &mut seen;
                let got = wait_detached(py, deadline, |slice| {
                    let a = st.arrive();
                    if a != Arrival::Full {
                        return Ok(Some(a));
                    }
                    st.wait_seq_slice(seen_ref, slice)?;
                    Ok(None)
                })?;
                match got {
                    Some(a) => a,
                    None => {
                        st.abort();
                        return Ok((BROKEN, 0, 0));
                    }
                }
            } else {
                first
            }
        };
        match arrival {
            Arrival::Broken | Arrival::Full => Ok((BROKEN, 0, 0)),
            Arrival::Last { gen } => Ok((LAST, st.parties() - 1, gen)),
            Arrival::Wait { gen, index } => {
                let mut seen = st.seq();
                let seen_ref = &mut seen;
                let r = wait_detached(py, deadline, |slice| {
                    Ok(match st.wait_slice(gen, seen_ref, slice)? {
                        Passage::Waiting => None,
                        p => Some(p),
                    })
                });
                match r {
                    Ok(Some(Passage::Released)) => Ok((PASSED, index, 0)),
                    // Broken by someone else (abort, reset): the barrier may already be in
                    // use again, so leave it alone.
                    Ok(Some(_)) => Ok((BROKEN, 0, 0)),
                    Ok(None) => {
                        // Timed out: as threading.Barrier, that breaks it for everyone.
                        st.abort();
                        Ok((BROKEN, 0, 0))
                    }
                    Err(e) => {
                        // Ctrl-C: as threading.Barrier, the interrupted party leaves without
                        // breaking the barrier.
                        st.leave(gen);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Releases generation `gen` (after the last party ran the action).
    fn release(&self, gen: u32) {
        self.slot.get().release(gen)
    }

    fn abort(&self) {
        self.slot.get().abort()
    }

    fn reset(&self) {
        self.slot.get().reset()
    }

    #[getter]
    fn parties(&self) -> u32 {
        self.slot.get().parties()
    }

    #[getter]
    fn n_waiting(&self) -> u32 {
        self.slot.get().n_waiting()
    }

    #[getter]
    fn broken(&self) -> bool {
        self.slot.get().broken()
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SemLock>()?;
    m.add_class::<CondVar>()?;
    m.add_class::<EventFlag>()?;
    m.add_class::<BarrierCore>()?;
    Ok(())
}
