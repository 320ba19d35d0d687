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
use pyo3::ffi;
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
    fn lock(&self, py: Python<'_>) -> PyResult<()> {
        match &self.fast_lock {
            Some(l) => {
                let l = l.get();
                if l.try_acquire_fast() {
                    Ok(())
                } else {
                    l.acquire(py, true, None).map(|_| ())
                }
            }
            None => self.lock.call_method0(py, "acquire").map(|_| ()),
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
        if self.code == 0 {
            return self.obj.getattr(py, "value");
        }
        // SAFETY: `read_raw` returns a new reference or NULL with an exception set.
        unsafe { Ok(Bound::from_owned_ptr_or_err(py, self.read_raw())?.unbind()) }
    }

    /// Reads a number handled in place (`code != 0`) as a new Python `int` or `float`: a new
    /// reference, or NULL with an exception set (no memory for the object). Must hold the
    /// lock; calls no Python code and drops no Python object.
    fn read_raw(&self) -> *mut ffi::PyObject {
        let p = self.addr;
        // SAFETY: (all arms) `addr` is the address of a live ctypes object of this typecode's
        // size (checked in `new`), aligned for it (arena blocks are 64-aligned and ctypes
        // objects are naturally aligned), kept alive by `self.obj`; other processes touch the
        // same bytes only through whole, aligned accesses, so atomic loads are sound. The
        // constructors are called with the interpreter attached (our callers are).
        unsafe {
            let int = |v: i64| ffi::PyLong_FromLongLong(v);
            match self.code {
                b'b' => int((*(p as *const AtomicI8)).load(Ordering::Relaxed).into()),
                b'B' => int(((*(p as *const AtomicI8)).load(Ordering::Relaxed) as u8).into()),
                b'h' => int((*(p as *const AtomicI16)).load(Ordering::Relaxed).into()),
                b'H' => int(((*(p as *const AtomicI16)).load(Ordering::Relaxed) as u16).into()),
                b'i' => int((*(p as *const AtomicI32)).load(Ordering::Relaxed).into()),
                b'I' => int((*(p as *const AtomicU32)).load(Ordering::Relaxed).into()),
                b'q' => int((*(p as *const AtomicI64)).load(Ordering::Relaxed)),
                b'Q' => ffi::PyLong_FromUnsignedLongLong(
                    (*(p as *const AtomicU64)).load(Ordering::Relaxed),
                ),
                b'f' => ffi::PyFloat_FromDouble(f64::from(f32::from_bits(
                    (*(p as *const AtomicU32)).load(Ordering::Relaxed),
                ))),
                b'd' => ffi::PyFloat_FromDouble(f64::from_bits(
                    (*(p as *const AtomicU64)).load(Ordering::Relaxed),
                )),
                _ => {
                    ffi::PyErr_SetString(
                        ffi::PyExc_SystemError,
                        c"SharedValue.read_raw: typecode not handled in place".as_ptr(),
                    );
                    std::ptr::null_mut()
                }
            }
        }
    }

    /// Writes the number in place if `value` is an exact `int` (fitting 64 bits; wrapped to
    /// the type's width as ctypes does) or `float` for a float type; else through ctypes.
    /// Must hold the lock.
    fn write(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
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
        match (self.code, int_bits) {
            (b'f' | b'd', _) if value.is_exact_instance_of::<PyFloat>() || is_int => {
                self.store_float(value.extract()?)
            }
            (b'b' | b'B' | b'h' | b'H' | b'i' | b'I' | b'q' | b'Q', Some(v)) => self.store_bits(v),
            _ => self.obj.setattr(py, "value", value)?,
        }
        Ok(())
    }

    /// Stores the low bits of `v` that fit an integer typecode handled in place. Must hold the
    /// lock.
    fn store_bits(&self, v: u64) {
        let p = self.addr;
        // SAFETY: (all arms) as in `read_raw`; stores of the exact width of the C type.
        unsafe {
            match self.code {
                b'b' | b'B' => (*(p as *const AtomicI8)).store(v as i8, Ordering::Relaxed),
                b'h' | b'H' => (*(p as *const AtomicI16)).store(v as i16, Ordering::Relaxed),
                b'i' | b'I' => (*(p as *const AtomicU32)).store(v as u32, Ordering::Relaxed),
                b'q' | b'Q' => (*(p as *const AtomicU64)).store(v, Ordering::Relaxed),
                _ => {}
            }
        }
    }

    /// Stores `x` for a float typecode handled in place. Must hold the lock.
    fn store_float(&self, x: f64) {
        let p = self.addr;
        // SAFETY: as in `read_raw`; stores of the exact width of the C type.
        unsafe {
            match self.code {
                b'f' => (*(p as *const AtomicU32)).store((x as f32).to_bits(), Ordering::Relaxed),
                b'd' => (*(p as *const AtomicU64)).store(x.to_bits(), Ordering::Relaxed),
                _ => {}
            }
        }
    }

    /// The fast path of the raw `value` getter (`src/py/fastcall.rs`): an rmp lock that is
    /// free now, or already held by the calling thread, and a number handled in place. Returns
    /// a new reference (or NULL with an exception set); `None`: use the PyO3 getter, which
    /// waits, calls a foreign lock or goes through ctypes. Nothing but this Rust code runs
    /// while the lock is held, so a recursive lock the caller already holds (inside `with
    /// v.get_lock():`) is not taken again: that level could not be observed.
    pub(crate) fn try_get_in_place(&self) -> Option<*mut ffi::PyObject> {
        if self.code == 0 {
            return None;
        }
        let l = self.fast_lock.as_ref()?.get();
        let taken = l.try_acquire_fast_or_held()?;
        let r = self.read_raw();
        if taken {
            // Cannot fail: we hold what we release.
            let _ = l.try_release_fast();
        }
        Some(r)
    }

    /// The fast path of the raw `value` setter: as [`Self::try_get_in_place`], for an exact
    /// `int` within 64 signed bits (integer types) or an exact `float` (float types). Returns
    /// whether it stored the value; `false`: use the PyO3 setter.
    pub(crate) fn try_set_in_place(&self, value: &Bound<'_, PyAny>) -> bool {
        let Some(lock) = self.fast_lock.as_ref() else {
            return false;
        };
        let float = matches!(self.code, b'f' | b'd');
        let (bits, x) = if self.code == 0 {
            return false;
        } else if float && value.is_exact_instance_of::<PyFloat>() {
            // SAFETY: `value` is an exact float.
            (0, unsafe { ffi::PyFloat_AS_DOUBLE(value.as_ptr()) })
        } else if !float && value.is_exact_instance_of::<PyInt>() {
            let mut overflow = 0;
            // SAFETY: `value` is an exact int: out of range sets `overflow`, not an exception.
            let v = unsafe { ffi::PyLong_AsLongLongAndOverflow(value.as_ptr(), &mut overflow) };
            if overflow != 0 {
                return false;
            }
            (v as u64, 0.0)
        } else {
            return false;
        };
        let l = lock.get();
        let Some(taken) = l.try_acquire_fast_or_held() else {
            return false;
        };
        if float {
            self.store_float(x);
        } else {
            self.store_bits(bits);
        }
        if taken {
            // Cannot fail: we hold what we release.
            let _ = l.try_release_fast();
        }
        true
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
    fn get_value(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.lock(py)?;
        let r = self.read(py);
        self.unlock(py)?;
        r
    }

    /// Sets the value under the lock.
    #[setter]
    fn set_value(&self, py: Python<'_>, value: Bound<'_, PyAny>) -> PyResult<()> {
        self.lock(py)?;
        let r = self.write(py, &value);
        self.unlock(py)?;
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
        self.lock(py)?;
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
