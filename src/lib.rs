//! rmp's Rust core and its Python bindings (`rmp._core`).
//!
//! Layers, data flowing down only: `py` (PyO3 bindings: conversion, GIL release, signal checks,
//! error mapping) calls the pure-Rust core (`process`, `shm`, `sync`), which calls `platform`,
//! the only module with raw system calls. See docs/architecture.md.
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(not(target_os = "linux"))]
compile_error!("rmp supports Linux only (it is built on memfd, futex and pidfd)");

pub mod connection;
pub mod errors;
pub mod platform;
pub mod pool;
pub mod process;
pub mod queue;
pub mod shm;
pub mod sync;

mod py;

use pyo3::prelude::*;

/// The private extension module `rmp._core`. Users import `rmp`, never this.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    py::register(m)
}
