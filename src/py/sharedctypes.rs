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
                _ => super::fastcall::raise(
                    ffi::PyExc_SystemError,
                    c"SharedValue.read_raw: typecode not handled in place",
                ),
            }
        }
    }

    /// Writes the number in place if `value` is an exact `int` (fitting 64 bits; wrapped to
    /// the type's width as ctypes does) or, for a float type, an exact `float` or `int`; else
    /// through ctypes. Must hold the lock.
    fn write(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Some(n) = self.plain_number(value) {
            self.store(n);
            return Ok(());
        }
        // What `plain_number` leaves to Python: ints beyond 64 signed bits, ints for floats.
        if self.code != 0 && value.is_exact_instance_of::<PyInt>() {
            if matches!(self.code, b'f' | b'd') {
                self.store(Number::Float(value.extract()?));
                return Ok(());
            }
            if let Ok(v) = value.extract::<u64>() {
                self.store(Number::Bits(v));
                return Ok(());
            }
        }
        self.obj.setattr(py, "value", value)
    }

    /// The number `value` stores in place without running Python code or creating a Python
    /// object: an exact `int` within 64 signed bits for an integer typecode, an exact `float`
    /// for a float typecode. `None`: anything else (or no typecode handled in place).
    fn plain_number(&self, value: &Bound<'_, PyAny>) -> Option<Number> {
        match self.code {
            0 => None,
            b'f' | b'd' => value.is_exact_instance_of::<PyFloat>().then(|| {
                // SAFETY: `value` is an exact float.
                Number::Float(unsafe { ffi::PyFloat_AS_DOUBLE(value.as_ptr()) })
            }),
            _ if value.is_exact_instance_of::<PyInt>() => {
                let mut overflow = 0;
                // SAFETY: `value` is an exact int: out of range sets `overflow`, not an
                // exception.
                let v = unsafe { ffi::PyLong_AsLongLongAndOverflow(value.as_ptr(), &mut overflow) };
                (overflow == 0).then_some(Number::Bits(v as u64))
            }
            _ => None,
        }
    }

    /// Stores `n` for the typecode handled in place (the low bits that fit an integer type).
    /// Must hold the lock.
    fn store(&self, n: Number) {
        let p = self.addr;
        // SAFETY: (all arms) as in `read_raw`; stores of the exact width of the C type.
        unsafe {
            match (self.code, n) {
                (b'b' | b'B', Number::Bits(v)) => {
                    (*(p as *const AtomicI8)).store(v as i8, Ordering::Relaxed)
                }
                (b'h' | b'H', Number::Bits(v)) => {
                    (*(p as *const AtomicI16)).store(v as i16, Ordering::Relaxed)
                }
                (b'i' | b'I', Number::Bits(v)) => {
                    (*(p as *const AtomicU32)).store(v as u32, Ordering::Relaxed)
                }
                (b'q' | b'Q', Number::Bits(v)) => {
                    (*(p as *const AtomicU64)).store(v, Ordering::Relaxed)
                }
                (b'f', Number::Float(x)) => {
                    (*(p as *const AtomicU32)).store((x as f32).to_bits(), Ordering::Relaxed)
                }
                (b'd', Number::Float(x)) => {
                    (*(p as *const AtomicU64)).store(x.to_bits(), Ordering::Relaxed)
                }
                _ => {}
            }
        }
    }

    /// Runs `f` under the lock when it is an rmp lock free now or already held by the calling
    /// thread; `None` (and `f` not run) otherwise. `f` must run no Python code: a recursive
    /// lock the caller already holds (inside `with v.get_lock():`) is not taken again, since
    /// that level could not be observed.
    fn under_fast_lock<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let l = self.fast_lock.as_ref()?.get();
        let taken = l.try_acquire_fast_or_held()?;
        let r = f();
        if taken {
            // Cannot fail: we hold what we release.
            let _ = l.try_release_fast();
        }
        Some(r)
    }

    /// The fast path of the raw `value` getter (`src/py/fastcall.rs`): a number handled in
    /// place, under [`Self::under_fast_lock`]. Returns a new reference (or NULL with an
    /// exception set); `None`: use the PyO3 getter, which waits, calls a foreign lock or goes
    /// through ctypes.
    pub(crate) fn try_get_in_place(&self) -> Option<*mut ffi::PyObject> {
        if self.code == 0 {
            return None;
        }
        self.under_fast_lock(|| self.read_raw())
    }

    /// The fast path of the raw `value` setter: a [`Self::plain_number`] stored under
    /// [`Self::under_fast_lock`]. Returns whether it stored it; `false`: use the PyO3 setter.
    pub(crate) fn try_set_in_place(&self, value: &Bound<'_, PyAny>) -> bool {
        match self.plain_number(value) {
            Some(n) => self.under_fast_lock(|| self.store(n)).is_some(),
            None => false,
        }
    }
}

/// A number stored in place: the bits of an integer, or a float.
#[derive(Clone, Copy)]
enum Number {
    Bits(u64),
    Float(f64),
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
