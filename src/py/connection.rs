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
    super::wait_detached(py, None, |slice| {
        Ok(platform::poll_readable(fd, Some(slice))?.then_some(()))
    })?;
    match py.detach(|| connection::recv_message(fd, max_length)) {
        Ok(payload) => Ok(Some(PyBytes::new(py, &payload).unbind())),
        Err(RecvError::TooLong(_)) => Ok(None),
        Err(RecvError::Eof) => Err(PyEOFError::new_err(())),
        Err(RecvError::TruncatedEof) => Err(PyOSError::new_err("got end of file during message")),
        Err(RecvError::Io(e)) => Err(Error::from(e).into()),
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(send_message, m)?)?;
    m.add_function(wrap_pyfunction!(recv_message, m)?)?;
    Ok(())
}
