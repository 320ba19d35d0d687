//! The crate's one error type and its mapping to Python exceptions.
//!
//! Core modules return `io::Result` or [`Error`]; the binding layer converts with `?`. An
//! `io::Error` becomes `OSError` with its errno, so Python sees the right subclass
//! (`ProcessLookupError` for ESRCH, `InterruptedError` for EINTR, ...).

use std::fmt;
use std::io;

use pyo3::exceptions::PyValueError;
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
            // pyo3 maps the errno to the matching OSError subclass.
            Error::Io(e) => PyErr::from(e),
            Error::InvalidArgument(msg) => PyValueError::new_err(msg),
        }
    }
}
