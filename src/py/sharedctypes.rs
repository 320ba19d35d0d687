//! `SharedValue`: the engine of `rmp.sharedctypes.Synchronized`, so that `v.value` on a
//! synchronized `Value` is one call into Rust (take the lock, read or write the number, release)
//! instead of a Python property that calls the lock twice and ctypes once.
//!
//! Numbers of the fixed-size C types (typecodes `bhilqBHILQfd`) are read and written in place
//! with atomic loads and stores of their width (other processes access the same bytes; the
//! lock orders them, the atomics keep each access whole). Anything else (`c_char`, `c_wchar`,
//! `c_bool`, pointers, values a type would convert rather than store: floats for ints, ints
//! beyond 64 bits...) goes through the ctypes object itself, under the same lock, so the
//! semantics stay exactly ctypes'.

use std::sync::atomic::{
    AtomicI16, AtomicI32, AtomicI64, AtomicI8, AtomicU32, AtomicU64, Ordering,
};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt};

use super::sync::CoreSemLock;

/// A synchronized shared scalar: the ctypes object, its lock, and where its bytes are.
#[pyclass(module = "rmp._core", name = "SharedValue", frozen, subclass)]
pub struct SharedValue {
    /// The ctypes object (it keeps the shared memory alive).
    obj: Py<PyAny>,
    /// The lock as given (any object with acquire/release).
    lock: Py<PyAny>,
    /// The same lock when it is an rmp lock: taken without a Python call.
    fast_lock: Option<Py<CoreSemLock>>,
    /// Address of the value's bytes (`ctypes.addressof(obj)`), valid while `obj` lives.
    addr: usize,
    /// The struct typecode handled in place, or 0 for "through ctypes".
    code: u8,
}

impl SharedValue {
    /// Takes the lock, unless it is an rmp `RLock` that the calling thread already holds (as
    /// inside `with v.get_lock():`, where a nested level would be taken and given back with
    /// nothing in between that could see it). Returns whether [`Self::unlock`] must follow.
    fn lock(&self, py: Python<'_>) -> PyResult<bool> {
        match &self.fast_lock {
            Some(l) => {
                let l = l.get();
                match l.try_acquire_fast_or_held() {
                    Some(taken) => Ok(taken),
                    None => l.acquire(py, true, None).map(|_| true),
                }
            }
            None => self.lock.call_method0(py, "acquire").map(|_| true),
        }
    }

    fn unlock(&self, py: Python<'_>) -> PyResult<()> {
        match &self.fast_lock {
            Some(l) => {
                let l = l.get();
                if l.try_release_fast() {
                    Ok(())
                } else {
                    l.release()
                }
            }
            None => self.lock.call_method0(py, "release").map(|_| ()),
        }
    }

    /// Reads the number in place. Must hold the lock.
    fn read(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let p = self.addr;
        // SAFETY: (all arms) `addr` is the address of a live ctypes object of this typecode's
        // size (checked in `new`), aligned for it (arena blocks are 64-aligned and ctypes
        // objects are naturally aligned), kept alive by `self.obj`; other processes touch the
        // same bytes only through whole, aligned accesses, so atomic loads are sound.
        let v = unsafe {
            match self.code {
                b'b' => (*(p as *const AtomicI8))
                    .load(Ordering::Relaxed)
                    .into_pyobject(py)?
                    .into_any(),
                b'B' => ((*(p as *const AtomicI8)).load(Ordering::Relaxed) as u8)
                    .into_pyobject(py)?
                    .into_any(),
                b'h' => (*(p as *const AtomicI16))
                    .load(Ordering::Relaxed)
                    .into_pyobject(py)?
                    .into_any(),
                b'H' => ((*(p as *const AtomicI16)).load(Ordering::Relaxed) as u16)
                    .into_pyobject(py)?
                    .into_any(),
                b'i' => (*(p as *const AtomicI32))
                    .load(Ordering::Relaxed)
                    .into_pyobject(py)?
                    .into_any(),
                b'I' => (*(p as *const AtomicU32))
                    .load(Ordering::Relaxed)
                    .into_pyobject(py)?
                    .into_any(),
                b'q' => (*(p as *const AtomicI64))
                    .load(Ordering::Relaxed)
                    .into_pyobject(py)?
                    .into_any(),
                b'Q' => (*(p as *const AtomicU64))
                    .load(Ordering::Relaxed)
                    .into_pyobject(py)?
                    .into_any(),
                b'f' => f64::from(f32::from_bits(
                    (*(p as *const AtomicU32)).load(Ordering::Relaxed),
                ))
                .into_pyobject(py)?
                .into_any(),
                b'd' => f64::from_bits((*(p as *const AtomicU64)).load(Ordering::Relaxed))
                    .into_pyobject(py)?
                    .into_any(),
                _ => return self.obj.getattr(py, "value"),
            }
        };
        Ok(v.unbind())
    }

    /// Writes the number in place if `value` is an exact `int` (fitting 64 bits; wrapped to
    /// the type's width as ctypes does) or `float` for a float type; else through ctypes.
    /// Must hold the lock.
    fn write(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let p = self.addr;
        let is_int = value.is_exact_instance_of::<PyInt>();
        let int_bits: Option<u64> = if is_int {
            value
                .extract::<i64>()
                .map(|v| v as u64)
                .or_else(|_| value.extract::<u64>())
                .ok()
        } else {
            None
        };
        // SAFETY: (all arms) as in `read`; stores of the exact width of the C type.
        unsafe {
            match (self.code, int_bits) {
                (b'b' | b'B', Some(v)) => {
                    (*(p as *const AtomicI8)).store(v as i8, Ordering::Relaxed)
                }
                (b'h' | b'H', Some(v)) => {
                    (*(p as *const AtomicI16)).store(v as i16, Ordering::Relaxed)
                }
                (b'i' | b'I', Some(v)) => {
                    (*(p as *const AtomicU32)).store(v as u32, Ordering::Relaxed)
                }
                (b'q' | b'Q', Some(v)) => (*(p as *const AtomicU64)).store(v, Ordering::Relaxed),
                (b'f' | b'd', _) if value.is_exact_instance_of::<PyFloat>() || is_int => {
                    let x: f64 = value.extract()?;
                    if self.code == b'f' {
                        (*(p as *const AtomicU32)).store((x as f32).to_bits(), Ordering::Relaxed)
                    } else {
                        (*(p as *const AtomicU64)).store(x.to_bits(), Ordering::Relaxed)
                    }
                }
                _ => self.obj.setattr(py, "value", value)?,
            }
        }
        Ok(())
    }
}

fn width(code: u8) -> Option<usize> {
    Some(match code {
        b'b' | b'B' => 1,
        b'h' | b'H' => 2,
        b'i' | b'I' | b'f' => 4,
        b'q' | b'Q' | b'd' => 8,
        _ => return None,
    })
}

#[pymethods]
impl SharedValue {
    /// `obj`: the ctypes object; `lock`: its lock; `addr`/`size`: `ctypes.addressof(obj)` and
    /// `ctypes.sizeof(obj)`; `code`: the struct typecode to handle in place (`""`: none).
    #[new]
    #[pyo3(signature = (obj, lock, addr, size, code))]
    fn new(
        obj: Py<PyAny>,
        lock: Bound<'_, PyAny>,
        addr: usize,
        size: usize,
        code: &str,
    ) -> PyResult<Self> {
        let code = match code.as_bytes() {
            [] => 0,
            [c] if width(*c) == Some(size) && addr % size == 0 => *c,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "typecode {code:?} does not describe {size} aligned bytes"
                )))
            }
        };
        let fast_lock = lock.cast::<CoreSemLock>().ok().map(|l| l.clone().unbind());
        Ok(SharedValue {
            obj,
            lock: lock.unbind(),
            fast_lock,
            addr,
            code,
        })
    }

    /// The value, read under the lock.
    #[getter]
    pub(crate) fn get_value(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let taken = self.lock(py)?;
        let r = self.read(py);
        if taken {
            self.unlock(py)?;
        }
        r
    }

    /// Sets the value under the lock.
    #[setter]
    pub(crate) fn set_value(&self, py: Python<'_>, value: Bound<'_, PyAny>) -> PyResult<()> {
        let taken = self.lock(py)?;
        let r = self.write(py, &value);
        if taken {
            self.unlock(py)?;
        }
        r
    }

    /// The lock.
    pub(crate) fn get_lock(&self, py: Python<'_>) -> Py<PyAny> {
        self.lock.clone_ref(py)
    }

    /// The raw ctypes object.
    fn get_obj(&self, py: Python<'_>) -> Py<PyAny> {
        self.obj.clone_ref(py)
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        // Always a real level (not `lock`'s nested shortcut): `__exit__` releases one.
        match &self.fast_lock {
            Some(l) => {
                let l = l.get();
                if !l.try_acquire_fast() {
                    l.acquire(py, true, None)?;
                }
            }
            None => {
                self.lock.call_method0(py, "acquire")?;
            }
        }
        Ok(true)
    }

    #[pyo3(signature = (_exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.unlock(py)
    }

    #[getter(_obj)]
    fn raw_obj(&self, py: Python<'_>) -> Py<PyAny> {
        self.obj.clone_ref(py)
    }

    #[getter(_lock)]
    fn raw_lock(&self, py: Python<'_>) -> Py<PyAny> {
        self.lock.clone_ref(py)
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SharedValue>()?;
    Ok(())
}
