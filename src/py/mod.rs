//! PyO3 bindings: every `#[pyclass]`/`#[pyfunction]` of `rmp._core`. This layer converts
//! arguments, releases the interpreter around blocking calls, checks for signals between wait
//! slices and maps errors. It holds no algorithm.

mod connection;
mod fastcall;
mod plain;
mod pool;
mod process;
mod queue;
mod scalars;
mod sharedctypes;
mod shm;
mod sync;
mod withlock;

use std::io;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The longest a blocking call stays detached before it re-attaches to run signal handlers.
/// A signal that interrupts the system call returns sooner (`EINTR`).
pub(crate) const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Converts a Python timeout (`None` = forever, seconds as float, negative = 0) to a deadline.
pub(crate) fn deadline(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() => Err(PyValueError::new_err("timeout must not be NaN")),
        Some(t) => {
            let d = Duration::try_from_secs_f64(t.max(0.0)).unwrap_or(Duration::MAX);
            Ok(Some(
                Instant::now().checked_add(d).unwrap_or_else(far_future),
            ))
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// Runs `step` detached from the interpreter, one bounded slice at a time, until it yields a
/// value or the deadline passes (`Ok(None)`). Between slices it re-attaches and runs signal
/// handlers, so Ctrl-C raises `KeyboardInterrupt` within one slice. `step` receives the time it
/// may block for and reports `Interrupted` errors as "no value yet".
pub(crate) fn wait_detached<T, F>(
    py: Python<'_>,
    deadline: Option<Instant>,
    mut step: F,
) -> PyResult<Option<T>>
where
    T: Send,
    F: FnMut(Duration) -> io::Result<Option<T>> + Send,
{
    loop {
        let slice = match deadline {
            None => WAIT_SLICE,
            Some(d) => d.saturating_duration_since(Instant::now()).min(WAIT_SLICE),
        };
        match py.detach(|| step(slice)) {
            Ok(Some(v)) => return Ok(Some(v)),
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(crate::errors::Error::from(e).into()),
        }
        py.check_signals()?;
        if let Some(d) = deadline {
            if Instant::now() >= d {
                return Ok(None);
            }
        }
    }
}

/// Waits detached, in slices, until `fd` polls readable or the timeout passes.
pub(crate) fn wait_fd_readable(
    py: Python<'_>,
    fd: std::os::fd::BorrowedFd<'_>,
    timeout: Option<f64>,
) -> PyResult<bool> {
    let deadline = deadline(timeout)?;
    let done = wait_detached(py, deadline, |slice| {
        Ok(crate::platform::poll_readable(fd, Some(slice))?.then_some(()))
    })?;
    Ok(done.is_some())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    connection::register(m)?;
    pool::register(m)?;
    process::register(m)?;
    queue::register(m)?;
    scalars::register(m)?;
    plain::register(m)?;
    sharedctypes::register(m)?;
    shm::register(m)?;
    sync::register(m)?;
    fastcall::register(m)?;
    withlock::register(m)?;
    fastcall::register_value(m)?;
    Ok(())
}
