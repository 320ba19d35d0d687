//! Bindings for `crate::process`: the pidfd handle behind `rmp.Process` and the `spawn`
//! primitive behind the spawn and forkserver start methods.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::Error;
use crate::platform;
use crate::process::Child;

/// A started process, watched through a pidfd. `fileno()` is the sentinel: it polls readable
/// once the process has exited.
#[pyclass(module = "rmp._core", name = "ProcessHandle", frozen)]
pub struct ProcessHandle {
    pid: i32,
    child: RwLock<Option<Arc<Child>>>,
}

impl ProcessHandle {
    fn child(&self) -> PyResult<Arc<Child>> {
        self.child
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| PyValueError::new_err("process handle is closed"))
    }
}

#[pymethods]
impl ProcessHandle {
    /// Watches `pid`, a child of this process that nothing has reaped yet.
    #[new]
    fn new(pid: i32) -> PyResult<Self> {
        let child = Child::open(pid).map_err(Error::from)?;
        Ok(ProcessHandle {
            pid,
            child: RwLock::new(Some(Arc::new(child))),
        })
    }

    /// Watches `pid`, a process that is not our child, through `pidfd`, which it takes over
    /// (the caller must not close it). Its exit status cannot be reaped here.
    #[staticmethod]
    fn adopt(pid: i32, pidfd: RawFd) -> PyResult<Self> {
        if pidfd < 0 {
            return Err(PyValueError::new_err("invalid pidfd"));
        }
        // SAFETY: the caller hands over ownership of an open pidfd (documented above).
        let fd = unsafe { platform::owned_fd(pidfd) };
        Ok(ProcessHandle {
            pid,
            child: RwLock::new(Some(Arc::new(Child::from_pidfd(pid, fd)))),
        })
    }

    /// The process id.
    #[getter]
    fn pid(&self) -> i32 {
        self.pid
    }

    /// The pidfd, usable with `select`/`poll`/`multiprocessing.connection.wait`.
    fn fileno(&self) -> PyResult<RawFd> {
        Ok(self.child()?.fd().as_raw_fd())
    }

    /// The return code (negative signal number if killed) if the child has ended, else None.
    fn poll(&self) -> PyResult<Option<i32>> {
        let child = self.child()?;
        Ok(child
            .try_wait()
            .map_err(Error::from)?
            .map(|s| s.returncode()))
    }

    /// Whether the process has exited (works for non-children; does not reap).
    fn has_exited(&self) -> PyResult<bool> {
        Ok(self.child()?.has_exited().map_err(Error::from)?)
    }

    /// Waits for the child to end, at most `timeout` seconds (None: forever), detached from
    /// the interpreter; returns its return code, or None on timeout. Ctrl-C interrupts it.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<i32>> {
        let child = self.child()?;
        let deadline = super::deadline(timeout)?;
        let status = super::wait_detached(py, deadline, |slice| child.wait_slice(slice))?;
        Ok(status.map(|s| s.returncode()))
    }

    /// Waits until the process has exited without reaping it (for processes that are not our
    /// children); returns whether it did before the timeout.
    #[pyo3(signature = (timeout=None))]
    fn wait_exited(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let child = self.child()?;
        super::wait_fd_readable(py, child.fd(), timeout)
    }

    /// Sends signal `sig` through the pidfd (never to a recycled pid).
    fn send_signal(&self, sig: i32) -> PyResult<()> {
        Ok(self.child()?.signal(sig).map_err(Error::from)?)
    }

    /// Closes the pidfd. Waiting threads finish their current slice on the old descriptor.
    fn close(&self) {
        self.child.write().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.child
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }
}

fn cstring(bytes: Vec<u8>) -> PyResult<CString> {
    CString::new(bytes).map_err(|_| PyValueError::new_err("embedded null byte"))
}

/// Starts `executable` with `args` (args[0] included), inheriting exactly the descriptors in
/// `pass_fds` besides 0, 1 and 2; returns the pid. `posix_spawn`, so the parent's memory is not
/// copied.
#[pyfunction]
fn spawn(executable: PathBuf, args: Vec<OsString>, pass_fds: Vec<RawFd>) -> PyResult<i32> {
    let exe = cstring(executable.into_os_string().into_vec())?;
    let argv = args
        .into_iter()
        .map(|a| cstring(a.into_vec()))
        .collect::<PyResult<Vec<_>>>()?;
    if argv.is_empty() {
        return Err(PyValueError::new_err("args must not be empty"));
    }
    if pass_fds.iter().any(|&fd| fd < 0) {
        return Err(PyValueError::new_err("bad value(s) in pass_fds"));
    }
    Ok(platform::spawn(&exe, &argv, &pass_fds).map_err(Error::from)?)
}

/// Makes this process die (SIGKILL) as soon as the process `parent_pidfd` refers to exits,
/// through a helper thread that blocks all signals. Used by daemonic children.
#[pyfunction]
fn die_with_parent(parent_pidfd: RawFd) -> PyResult<()> {
    if parent_pidfd < 0 {
        return Err(PyValueError::new_err("invalid pidfd"));
    }
    // SAFETY: the descriptor is only borrowed for the call (the core clones it); the caller
    // keeps it open for that long, and an invalid number makes the clone fail with EBADF.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(parent_pidfd) };
    Ok(crate::process::die_with_parent(fd).map_err(Error::from)?)
}

/// Waits until descriptor `fd` polls readable, at most `timeout` seconds (None: forever),
/// detached from the interpreter; Ctrl-C interrupts it. Returns whether it became readable.
#[pyfunction]
#[pyo3(signature = (fd, timeout=None))]
fn wait_readable(py: Python<'_>, fd: RawFd, timeout: Option<f64>) -> PyResult<bool> {
    if fd < 0 {
        return Err(PyValueError::new_err("invalid file descriptor"));
    }
    // SAFETY: borrowed for the duration of the call only; the caller keeps `fd` open (a
    // closed number makes poll report POLLNVAL, which counts as readable, as select does).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    super::wait_fd_readable(py, fd, timeout)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ProcessHandle>()?;
    m.add_function(wrap_pyfunction!(wait_readable, m)?)?;
    m.add_function(wrap_pyfunction!(die_with_parent, m)?)?;
    m.add_function(wrap_pyfunction!(spawn, m)?)?;
    Ok(())
}
