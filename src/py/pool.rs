//! Binding for `crate::pool`: `TaskBoard`, the shared slots where pool workers record the
//! task they run (claimed by `Channel.get_task`, read by the parent when a worker dies or
//! overruns `task_timeout`).

use std::os::fd::{AsRawFd, RawFd};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::Error;
use crate::pool::{self, Board};

/// A pool's task board: `slots` slots in an anonymous shared segment.
#[pyclass(module = "rmp._core", name = "TaskBoard", frozen)]
pub struct TaskBoard {
    pub(crate) board: Board,
}

#[pymethods]
impl TaskBoard {
    /// A new board of `slots` idle slots.
    #[new]
    fn new(slots: u32) -> PyResult<Self> {
        Ok(TaskBoard {
            board: Board::create(slots).map_err(Error::from)?,
        })
    }

    /// Maps the board whose descriptor `fd` a parent passed (the board takes the descriptor).
    #[staticmethod]
    fn open(fd: RawFd, slots: u32) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err("invalid file descriptor"));
        }
        // SAFETY: not checkable here: the Python caller must hand over an open descriptor it
        // owns and will not use again (pool.py passes a DupFd's detach()); a wrong number
        // fails the mapping or maps another file, which `Board::open`'s header check refuses.
        let fd = unsafe { crate::platform::owned_fd(fd) };
        Ok(TaskBoard {
            board: Board::open(fd, slots).map_err(Error::from)?,
        })
    }

    /// The segment's descriptor (to pass to a spawned worker).
    fn fileno(&self) -> PyResult<RawFd> {
        self.board
            .fd()
            .map(|f| f.as_raw_fd())
            .ok_or_else(|| PyValueError::new_err("task board has no descriptor"))
    }

    /// Number of slots.
    #[getter]
    fn slots(&self) -> u32 {
        self.board.slots()
    }

    /// Records that slot `i`'s worker runs (`job`, `index`) from now (`Channel.get_task` does
    /// this itself under the queue's lock, with the queue's pop count as `pops`).
    #[pyo3(signature = (i, job, index, pops=0))]
    fn claim(&self, i: u32, job: u64, index: u64, pops: u32) -> PyResult<()> {
        Ok(self.board.claim(i, job, index, pops).map_err(Error::from)?)
    }

    /// Records that slot `i`'s worker finished its task (after sending the result).
    fn finish(&self, i: u32) -> PyResult<()> {
        Ok(self.board.finish(i).map_err(Error::from)?)
    }

    /// Slot `i`: `(running, pid, job, index, started_ns, claims, pops, torn)`.
    #[allow(clippy::type_complexity)]
    fn read(&self, i: u32) -> PyResult<(bool, u32, u64, u64, u64, u64, u32, bool)> {
        let v = self.board.read(i).map_err(Error::from)?;
        Ok((
            v.state == pool::RUNNING,
            v.pid,
            v.job,
            v.index,
            v.started_ns,
            v.claims,
            v.pops,
            v.torn,
        ))
    }
}

/// `CLOCK_MONOTONIC` now in nanoseconds: the clock of the board's `started_ns`.
#[pyfunction]
fn monotonic_ns() -> u64 {
    pool::monotonic_ns()
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TaskBoard>()?;
    m.add_function(wrap_pyfunction!(monotonic_ns, m)?)?;
    Ok(())
}
