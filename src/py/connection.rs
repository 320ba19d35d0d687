//! Bindings for `crate::connection`: the framed send/receive behind `rmp.connection.Connection`.
//!
//! Waiting for a message to start (or for room to write one) happens in detached slices with
//! signal checks, so Ctrl-C interrupts a `recv`/`poll`/`send` that has not moved a byte yet.
//! Once a message has started it is finished: a signal then cannot leave half a frame on the
//! wire (CPython's own `Connection` can). A peer that stalls mid-message therefore blocks the
//! call until it resumes or closes.

use std::os::fd::{BorrowedFd, RawFd};

use pyo3::exceptions::{PyEOFError, PyOSError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::connection::{self, RecvError};
use crate::errors::Error;
use crate::platform;

fn borrow(fd: RawFd) -> PyResult<BorrowedFd<'static>> {
    if fd < 0 {
        return Err(PyOSError::new_err("handle is closed"));
    }
    // SAFETY: the Python `Connection` owns `fd` and keeps it open for the duration of each
    // call into this module; the borrow never outlives the call.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// How long `recv` polls without sleeping before it blocks. A cross-process wake-up costs
/// 10-300 us here (DESIGN.md, "Measuring"); a peer that answers within this window saves
/// both sides a sleep. Bounded, so an idle receiver costs at most this much CPU per call.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// Polls `fd` without blocking until it is readable or `SPIN` has passed.
fn spin_until_readable(fd: BorrowedFd<'_>) -> bool {
    let start = std::time::Instant::now();
    loop {
        match platform::poll_readable(fd, Some(std::time::Duration::ZERO)) {
            Ok(true) => return true,
            Ok(false) => {}
            Err(_) => return false, // let the blocking path report it
        }
        if start.elapsed() >= SPIN {
            return false;
        }
        // Yield rather than burn: on a busy machine the peer may need this very core.
        std::thread::yield_now();
    }
}

/// Sends `data` (any bytes-like object) as one framed message on `fd`.
#[pyfunction]
fn send_message(py: Python<'_>, fd: RawFd, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let fd = borrow(fd)?;
    // bytes are immutable: send straight from the object. Anything else (bytearray,
    // memoryview...) could be mutated by another thread while we are detached: copy it.
    let owned: Py<PyBytes>;
    let copied: Vec<u8>;
    let payload: &[u8] = if let Ok(b) = data.cast::<PyBytes>() {
        owned = b.clone().unbind();
        owned.as_bytes(py)
    } else {
        copied = pyo3::buffer::PyBuffer::<u8>::get(data)?.to_vec(py)?;
        &copied
    };
    // Wait for room before the first byte moves; a signal here cancels the send cleanly.
    super::wait_detached(py, None, |slice| {
        Ok(platform::poll_writable(fd, Some(slice))?.then_some(()))
    })?;
    py.detach(|| connection::send_message(fd, payload))
        .map_err(|e| PyErr::from(Error::from(e)))
}

/// Receives one framed message from `fd`: the payload as bytes, or None if it is longer
/// than `max_length` (the payload is then left unread, as in CPython).
#[pyfunction]
#[pyo3(signature = (fd, max_length=None))]
fn recv_message(
    py: Python<'_>,
    fd: RawFd,
    max_length: Option<u64>,
) -> PyResult<Option<Py<PyBytes>>> {
    let fd = borrow(fd)?;
    // A reply that comes within a few microseconds is read without sleeping: a sleep and a
    // wake-up cost 10-300 us on these machines, far more than the spin (see SPIN).
    let ready = py.detach(|| spin_until_readable(fd));
    if !ready {
        super::wait_detached(py, None, |slice| {
            Ok(platform::poll_readable(fd, Some(slice))?.then_some(()))
        })?;
    }
    let len = py
        .detach(|| connection::recv_length(fd))
        .map_err(recv_error)?;
    if max_length.is_some_and(|m| len > m) {
        return Ok(None); // left unread: the caller makes the end unreadable, as CPython
    }
    let len = usize::try_from(len).map_err(|_| recv_error(RecvError::TooLong(len)))?;
    // Read straight into a new, uninitialised bytes object: nobody else can see it yet, so
    // filling it while detached is safe, nothing zeroes it first, and the payload is copied
    // once (kernel to object).
    let ssize = pyo3::ffi::Py_ssize_t::try_from(len)
        .map_err(|_| recv_error(RecvError::TooLong(len as u64)))?;
    // SAFETY: a null source asks CPython for an uninitialised bytes object of `len` bytes;
    // the returned reference is owned (or null with an exception set, which the call below
    // turns into Err).
    let obj = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), ssize),
        )?
    };
    // SAFETY: `obj` is a bytes object we own, so PyBytes_AsString returns its buffer of `len`
    // bytes (plus CPython's trailing NUL), valid while `obj` lives, which outlives the slice.
    // Viewing it as MaybeUninit<u8> makes no claim about its contents.
    let buf = unsafe {
        let ptr = pyo3::ffi::PyBytes_AsString(obj.as_ptr()).cast::<std::mem::MaybeUninit<u8>>();
        std::slice::from_raw_parts_mut(ptr, len)
    };
    py.detach(|| connection::recv_payload(fd, buf))
        .map_err(recv_error)?;
    // Every byte is initialised now (recv_payload returned Ok): the object may be shared.
    Ok(Some(obj.cast_into::<PyBytes>()?.unbind()))
}

fn recv_error(e: RecvError) -> PyErr {
    match e {
        RecvError::Eof => PyEOFError::new_err(()),
        RecvError::TruncatedEof => PyOSError::new_err("got end of file during message"),
        RecvError::TooLong(_) => PyOSError::new_err("bad message length"),
        RecvError::Io(e) => Error::from(e).into(),
    }
}

/// Waits until any descriptor in `fds` is readable (or at EOF / in error), at most `timeout`
/// seconds (None: forever), detached from the interpreter; Ctrl-C interrupts it. Returns the
/// indices of the ready descriptors in `fds` order (empty on timeout).
#[pyfunction]
#[pyo3(signature = (fds, timeout=None))]
fn wait_any(py: Python<'_>, fds: Vec<RawFd>, timeout: Option<f64>) -> PyResult<Vec<usize>> {
    let borrowed = fds
        .iter()
        .map(|&fd| borrow(fd))
        .collect::<PyResult<Vec<_>>>()?;
    let deadline = super::deadline(timeout)?;
    let ready = super::wait_detached(py, deadline, |slice| {
        let r = platform::poll_any_readable(&borrowed, Some(slice))?;
        Ok((!r.is_empty()).then_some(r))
    })?;
    Ok(ready.unwrap_or_default())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(wait_any, m)?)?;
    m.add_function(wrap_pyfunction!(send_message, m)?)?;
    m.add_function(wrap_pyfunction!(recv_message, m)?)?;
    Ok(())
}
