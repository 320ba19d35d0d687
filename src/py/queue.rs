//! Binding for `crate::queue`: `Ring`, the shared byte ring under rmp's queues. Blocking
//! calls wait detached in slices (`super::wait_detached`) and answer Ctrl-C.

use std::ptr::NonNull;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::shm::Segment;
use super::{deadline, wait_detached};
use crate::errors::Error;
use crate::queue::{segment_size, Push, Ring as CoreRing};
use crate::sync::Me;

/// A many-producer many-consumer byte ring in a shared segment (offset 0).
#[pyclass(module = "rmp._core", name = "Ring", frozen)]
pub struct Ring {
    /// Keeps the mapping alive.
    _seg: Py<Segment>,
    ring: CoreRing,
}

#[pymethods]
impl Ring {
    /// Binds the ring at the start of `segment`; with `create`, initialises it first with
    /// `capacity` data bytes (a power of two ≥ 64) and at most `max_items` messages.
    #[new]
    #[pyo3(signature = (segment, capacity, max_items, create))]
    fn new(segment: Py<Segment>, capacity: u32, max_items: u32, create: bool) -> PyResult<Self> {
        if !capacity.is_power_of_two() || capacity < 64 {
            return Err(PyValueError::new_err(format!(
                "ring capacity must be a power of two >= 64, not {capacity}"
            )));
        }
        let core = segment.get().core();
        if core.len() < segment_size(capacity as usize) {
            return Err(PyValueError::new_err(format!(
                "a ring of {capacity} bytes needs a segment of {} bytes",
                segment_size(capacity as usize)
            )));
        }
        let base: NonNull<u8> = core.as_ptr();
        // SAFETY: the segment is large enough (checked), page-aligned, and kept alive by
        // `_seg` for as long as the view exists.
        let ring = unsafe { CoreRing::from_raw(base) };
        if create {
            ring.init(capacity, max_items).map_err(Error::from)?;
        } else if !ring.check() || ring.capacity() != capacity as usize {
            return Err(PyValueError::new_err(
                "no rmp ring of this capacity in the segment",
            ));
        }
        Ok(Ring {
            _seg: segment,
            ring,
        })
    }

    /// Commits `data` as one message. Waits for room (detached, in slices) unless `block` is
    /// false, at most `timeout` seconds. Returns False if there was no room in time; raises
    /// ValueError for a message larger than `max_payload`.
    #[pyo3(signature = (data, block=true, timeout=None))]
    fn put(
        &self,
        py: Python<'_>,
        data: &[u8],
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let me = Me::current();
        let ring = &self.ring;
        let too_big = || {
            PyValueError::new_err(format!(
                "message of {} bytes exceeds the ring's limit of {} bytes",
                data.len(),
                ring.max_payload()
            ))
        };
        // Small messages are copied with the interpreter held (a memcpy under a lock that is
        // held only for copies); the wait for room is detached.
        match ring.try_push(&me, &[data]).map_err(Error::from)? {
            Push::Done => return Ok(true),
            Push::TooBig => return Err(too_big()),
            Push::Full if !block => return Ok(false),
            Push::Full => {}
        }
        let deadline = deadline(timeout)?;
        let done = wait_detached(py, deadline, |slice| {
            let seen = ring.not_full_seq();
            match ring.try_push(&me, &[data])? {
                Push::Done => Ok(Some(())),
                _ => ring.wait_not_full(seen, slice).map(|_| None),
            }
        })?;
        Ok(done.is_some())
    }

    /// Takes the oldest message as bytes. Waits (detached, in slices) unless `block` is
    /// false, at most `timeout` seconds; None if nothing came in time.
    #[pyo3(signature = (block=true, timeout=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let me = Me::current();
        let ring = &self.ring;
        if let Some(v) = ring.try_pop(&me).map_err(Error::from)? {
            return Ok(Some(PyBytes::new(py, &v)));
        }
        if !block {
            return Ok(None);
        }
        let deadline = deadline(timeout)?;
        let got = wait_detached(py, deadline, |slice| {
            let seen = ring.not_empty_seq();
            match ring.try_pop(&me)? {
                Some(v) => Ok(Some(v)),
                None => ring.wait_not_empty(seen, slice).map(|_| None),
            }
        })?;
        Ok(got.map(|v| PyBytes::new(py, &v)))
    }

    /// Messages waiting (approximate, as `qsize()`).
    fn __len__(&self) -> usize {
        self.ring.len()
    }

    /// Data bytes.
    #[getter]
    fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// The largest message `put` accepts.
    #[getter]
    fn max_payload(&self) -> usize {
        self.ring.max_payload()
    }

    /// Bytes a segment needs for a ring of `capacity` data bytes.
    #[staticmethod]
    fn segment_size(capacity: usize) -> usize {
        segment_size(capacity)
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Ring>()?;
    Ok(())
}
