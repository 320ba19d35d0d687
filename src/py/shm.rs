//! Bindings for `crate::shm` and the futex floor the benchmark measures.

use std::os::fd::{AsRawFd, RawFd};
use std::os::raw::c_int;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;

use crate::errors::Error;
use crate::shm::Segment as CoreSegment;
use crate::sync;

/// An anonymous shared-memory segment (memfd, mapped shared). Inherited across fork; a
/// spawned child maps the descriptor again (`Segment.adopt`). Exposes its bytes through the
/// buffer protocol (writable), so `memoryview`, ctypes `from_buffer` and numpy work on it.
#[pyclass(module = "rmp._core", name = "Segment", frozen)]
pub struct Segment {
    inner: CoreSegment,
}

impl Segment {
    /// Wraps a core segment (a queue's large message).
    pub(crate) fn from_core(inner: CoreSegment) -> Segment {
        Segment { inner }
    }

    /// A pointer to a `T` at `offset`, checked to lie inside the mapping and to be aligned
    /// for `T` (at least 8: every shared state is laid out for 8-byte atomics).
    pub(crate) fn ptr_at<T>(&self, offset: usize) -> PyResult<NonNull<T>> {
        let size = std::mem::size_of::<T>();
        let align = std::mem::align_of::<T>().max(std::mem::align_of::<u64>());
        let fits = offset
            .checked_add(size)
            .is_some_and(|end| end <= self.inner.len());
        if offset % align != 0 || !fits {
            return Err(PyValueError::new_err(format!(
                "offset {offset} is not an {align}-aligned slot of {size} bytes inside the segment"
            )));
        }
        // SAFETY: in bounds (checked) of a live page-aligned mapping, hence non-null and
        // aligned for `T`.
        Ok(unsafe { NonNull::new_unchecked(self.inner.as_ptr().as_ptr().add(offset).cast()) })
    }

    fn word(&self, offset: usize) -> PyResult<&AtomicU32> {
        let ptr = self.ptr_at::<AtomicU32>(offset)?;
        // SAFETY: `ptr_at` checked bounds and alignment; the word is only accessed
        // atomically, and the reference does not outlive `self`, which owns the mapping.
        Ok(unsafe { ptr.as_ref() })
    }
}

#[pymethods]
impl Segment {
    /// Creates a zero-filled segment of `size` bytes.
    #[new]
    fn new(size: usize) -> PyResult<Self> {
        Ok(Segment {
            inner: CoreSegment::create(size).map_err(Error::from)?,
        })
    }

    /// Maps the memfd `fd` (at least `size` bytes), taking ownership of the descriptor: it is
    /// closed with the segment, or at once if mapping fails.
    #[staticmethod]
    fn adopt(fd: RawFd, size: usize) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err("invalid file descriptor"));
        }
        // SAFETY: the caller hands over `fd` (documented above: Python code passes a
        // descriptor it detached and no longer uses).
        let owned = unsafe { crate::platform::owned_fd(fd) };
        Ok(Segment {
            inner: CoreSegment::map(owned, size).map_err(Error::from)?,
        })
    }

    /// Exports the mapping as a writable, contiguous buffer of unsigned bytes.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let (ptr, len) = {
            let seg = &slf.get().inner;
            (seg.as_ptr().as_ptr(), seg.len())
        };
        // SAFETY: `view` is the buffer struct CPython passes to the slot; the mapping at
        // `ptr`..`ptr+len` lives as long as the segment, which the view keeps alive through
        // its new reference to `slf` (`PyBuffer_FillInfo` sets `view->obj`).
        let rc = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                ptr.cast(),
                len as pyo3::ffi::Py_ssize_t,
                0,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    /// Size in bytes.
    #[getter]
    fn size(&self) -> usize {
        self.inner.len()
    }

    /// The memfd.
    fn fileno(&self) -> PyResult<RawFd> {
        self.inner
            .fd()
            .map(|f| f.as_raw_fd())
            .ok_or_else(|| PyValueError::new_err("this segment's descriptor was closed"))
    }

    /// Benchmark floor: plays `rounds` turns of a futex ping-pong on the 32-bit word at
    /// `offset` as party `me` (0 or 1), detached from the interpreter; Ctrl-C interrupts it.
    fn futex_pingpong(&self, py: Python<'_>, offset: usize, me: u32, rounds: u64) -> PyResult<()> {
        if me > 1 {
            return Err(PyValueError::new_err("me must be 0 or 1"));
        }
        let word = self.word(offset)?;
        let mut left = rounds;
        while left > 0 {
            // Each call returns after at most one wait slice without progress, so signals
            // are checked at least every slice.
            let played =
                py.detach(|| sync::futex_pingpong(word, me, left, Some(super::WAIT_SLICE)));
            left -= played.map_err(Error::from)?;
            py.check_signals()?;
        }
        Ok(())
    }
}

/// Takes `obj` out of the cyclic garbage collector's view (`rmp.heap.BufferWrapper` does this
/// to itself). An untracked object is never found to be garbage: it is freed only when its
/// last reference goes, that is after the finalizers of any garbage that holds it have run.
/// For an object that cannot be part of a reference cycle.
#[pyfunction]
fn gc_untrack(obj: &Bound<'_, PyAny>) {
    // SAFETY: `obj` is a live object and the interpreter is attached; untracking an object
    // of a GC type that is tracked is what `PyObject_GC_UnTrack` is for, and an object that
    // is not tracked (or not of a GC type) is left alone.
    unsafe {
        if ffi::PyObject_IS_GC(obj.as_ptr()) != 0 && ffi::PyObject_GC_IsTracked(obj.as_ptr()) != 0 {
            ffi::PyObject_GC_UnTrack(obj.as_ptr().cast());
        }
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Segment>()?;
    m.add_function(wrap_pyfunction!(gc_untrack, m)?)?;
    Ok(())
}
