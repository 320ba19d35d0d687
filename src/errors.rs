//! The crate's one error type and its mapping to Python exceptions.
//!
//! Core modules return `io::Result` or [`Error`]; the binding layer converts with `?`. An
//! `io::Error` becomes `OSError` with its errno, so Python sees the right subclass
//! (`ProcessLookupError` for ESRCH, `InterruptedError` for EINTR, ...).

use std::fmt;
use std::io;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::PyErr;

/// Everything the Rust core can fail with.
#[derive(Debug)]
pub enum Error {
    /// A system call failed.
    Io(io::Error),
    /// The caller passed a value outside what the operation accepts.
    InvalidArgument(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => e.fmt(f),
            Error::InvalidArgument(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            // OSError(errno, strerror): Python itself picks the subclass for the errno
            // (ChildProcessError for ECHILD, ProcessLookupError for ESRCH...) and sets
            // `.errno`, which pyo3's own conversion does not do for every errno.
            Error::Io(e) => match e.raw_os_error() {
                Some(code) => {
                    let text = e.to_string();
                    let suffix = format!(" (os error {code})");
                    let strerror = text.strip_suffix(&suffix).unwrap_or(&text).to_owned();
                    PyOSError::new_err((code, strerror))
                }
                None => PyErr::from(e),
            },
            Error::InvalidArgument(msg) => PyValueError::new_err(msg),
        }
    }
}
