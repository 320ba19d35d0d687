//! Raw C-API entry points for the hottest calls, `Lock.acquire()` and `Lock.release()` (and
//! `with lock:`, which `super::withlock` runs through the same two):
//! method descriptors whose fast path (a semaphore-kind lock with a unit free, called without
//! arguments) is one CAS and no argument parsing, and which hand every other case to the full
//! PyO3 methods (`_acquire`, `_release`), so behaviour is defined in one place. An uncontended
//! acquire/release pair through PyO3's generic trampoline costs ~25% more than CPython's own
//! `SemLock`; this closes that gap.

use std::ffi::CStr;
use std::ptr;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyString;

use super::sharedctypes::SharedValue;
use super::sync::CoreSemLock;

/// Calls `slf.<name>(*args, **kw)` with the vectorcall arguments we received.
///
/// # Safety
/// The interpreter must be attached; `args`/`nargs`/`kwnames` are a valid vectorcall
/// argument triple (as CPython passes to a `METH_FASTCALL | METH_KEYWORDS` function).
unsafe fn forward(
    name: &Bound<'_, PyString>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let nkw = if kwnames.is_null() {
        0
    } else {
        // SAFETY: kwnames is a tuple when not null (vectorcall protocol).
        unsafe { ffi::PyTuple_GET_SIZE(kwnames) }
    };
    let total = (nargs + nkw) as usize;
    let mut all: Vec<*mut ffi::PyObject> = Vec::with_capacity(total + 1);
    all.push(slf);
    for i in 0..total {
        // SAFETY: the protocol guarantees `nargs + len(kwnames)` valid pointers at `args`.
        all.push(unsafe { *args.add(i) });
    }
    // SAFETY: `all` holds self followed by the same arguments; `name` is a live str.
    unsafe {
        ffi::PyObject_VectorcallMethod(name.as_ptr(), all.as_ptr(), (nargs + 1) as usize, kwnames)
    }
}

/// A new reference to `obj`.
///
/// # Safety
/// `obj` must be a live object and the interpreter attached.
unsafe fn new_ref(obj: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    unsafe { ffi::Py_IncRef(obj) };
    obj
}

/// `acquire(...)`; also `__enter__` (`super::withlock`), called without arguments.
pub(crate) unsafe extern "C" fn acquire(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls method functions with the interpreter attached.
    let py = unsafe { Python::assume_attached() };
    if nargs == 0 && kwnames.is_null() {
        // SAFETY: the method descriptor checked that `slf` is a SemLock (or a subclass)
        // before calling us, and `slf` is a valid borrowed reference for this call.
        let lock = unsafe { Bound::ref_from_ptr(py, &slf).cast_unchecked::<CoreSemLock>() };
        if lock.get().try_acquire_fast() {
            // SAFETY: returning a new reference to True (Py_NewRef is 3.10+).
            return unsafe { new_ref(ffi::Py_True()) };
        }
    }
    // SAFETY: arguments as received from CPython.
    unsafe { forward(pyo3::intern!(py, "_acquire"), slf, args, nargs, kwnames) }
}

pub(crate) unsafe extern "C" fn release(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls method functions with the interpreter attached.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: as in `acquire`.
    let lock = unsafe { Bound::ref_from_ptr(py, &slf).cast_unchecked::<CoreSemLock>() };
    if lock.get().try_release_fast() {
        // SAFETY: returning a new reference to None.
        return unsafe { new_ref(ffi::Py_None()) };
    }
    // SAFETY: no arguments; `slf` valid for the call.
    unsafe {
        forward(
            pyo3::intern!(py, "_release"),
            slf,
            ptr::null(),
            0,
            ptr::null_mut(),
        )
    }
}

/// `PyMethodDef`s must outlive every descriptor made from them: statics. They hold raw
/// pointers, hence the wrapper.
struct Defs([ffi::PyMethodDef; 2]);
// SAFETY: the definitions are never mutated after initialisation and only read by CPython.
unsafe impl Sync for Defs {}

static DEFS: Defs = Defs([
    ffi::PyMethodDef {
        ml_name: c"acquire".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: acquire,
        },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: c"acquire(block=True, timeout=None)\n--\n\nAcquire the semaphore/lock.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"release".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: release,
        },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: c"release()\n--\n\nRelease the semaphore/lock.".as_ptr(),
    },
]);

/// Adds `_core.semlock_acquire` and `semlock_release`: method descriptors of `SemLock` that
/// `rmp.synchronize.SemLock` installs as its `acquire` and `release` (its `__enter__` and
/// `__exit__` come from `super::withlock`).
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let ty = py.get_type::<CoreSemLock>();
    let names = ["semlock_acquire", "semlock_release"];
    for (def, name) in DEFS.0.iter().zip(names) {
        m.add(name, method_descriptor(&ty, def)?)?;
    }
    Ok(())
}

/// A method descriptor of `ty` for the 'static definition `def`.
fn method_descriptor<'py>(
    ty: &Bound<'py, pyo3::types::PyType>,
    def: &'static ffi::PyMethodDef,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `ty` is a live type object and `def` outlives every descriptor made from it;
    // the call returns a new reference or NULL with an exception set.
    unsafe {
        let raw = ffi::PyDescr_NewMethod(
            ty.as_ptr().cast::<ffi::PyTypeObject>(),
            ptr::from_ref(def).cast_mut(),
        );
        Bound::from_owned_ptr_or_err(ty.py(), raw)
    }
}

/// The PyO3 getset descriptor of `SharedValue.value` (the full getter and setter, through
/// PyO3's trampolines): the raw descriptors below hand it every case off their fast path.
static PYO3_VALUE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `Synchronized.value` (read): [`SharedValue::try_get_in_place`], else the PyO3 getter.
unsafe extern "C" fn value_get(
    slf: *mut ffi::PyObject,
    _closure: *mut std::ffi::c_void,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls getters with the interpreter attached.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: the getset descriptor checked that `slf` is a SharedValue (or a subclass);
    // `slf` is a valid borrowed reference for this call.
    let v = unsafe { Bound::ref_from_ptr(py, &slf).cast_unchecked::<SharedValue>() };
    if let Some(r) = v.get().try_get_in_place() {
        return r;
    }
    match PYO3_VALUE.get(py) {
        // SAFETY: `d` is the getset descriptor of `slf`'s base class, which has a getter;
        // it returns a new reference or NULL with an exception set.
        Some(d) => unsafe {
            let d = d.as_ptr();
            match (*ffi::Py_TYPE(d)).tp_descr_get {
                Some(get) => get(d, slf, ffi::Py_TYPE(slf).cast()),
                None => no_descriptor(),
            }
        },
        // SAFETY: the interpreter is attached.
        None => unsafe { no_descriptor() },
    }
}

/// `Synchronized.value = x`: [`SharedValue::try_set_in_place`], else the PyO3 setter;
/// deleting raises the stdlib's error (its `value` is a property without a deleter).
unsafe extern "C" fn value_set(
    slf: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    _closure: *mut std::ffi::c_void,
) -> std::ffi::c_int {
    // SAFETY: CPython calls setters with the interpreter attached.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: `slf` is a valid borrowed reference for this call.
    let obj = unsafe { Bound::ref_from_ptr(py, &slf) };
    if value.is_null() {
        let err = if py.version_info() >= (3, 11) {
            match obj.get_type().qualname() {
                Ok(name) => pyo3::exceptions::PyAttributeError::new_err(format!(
                    "property 'value' of '{name}' object has no deleter"
                )),
                Err(e) => e,
            }
        } else {
            pyo3::exceptions::PyAttributeError::new_err("can't delete attribute")
        };
        err.restore(py);
        return -1;
    }
    // SAFETY: as in `value_get`; `value` is a valid borrowed reference for this call.
    let (v, val) = unsafe {
        (
            obj.cast_unchecked::<SharedValue>(),
            Bound::ref_from_ptr(py, &value),
        )
    };
    if v.get().try_set_in_place(val) {
        return 0;
    }
    match PYO3_VALUE.get(py) {
        // SAFETY: as in `value_get`, for the setter; it returns 0 or -1 with an exception set.
        Some(d) => unsafe {
            let d = d.as_ptr();
            match (*ffi::Py_TYPE(d)).tp_descr_set {
                Some(set) => set(d, slf, value),
                None => {
                    no_descriptor();
                    -1
                }
            }
        },
        None => {
            // SAFETY: the interpreter is attached.
            unsafe { no_descriptor() };
            -1
        }
    }
}

/// Sets `exc(msg)` as the current exception; returns NULL (what a failed call returns).
///
/// # Safety
/// The interpreter must be attached; `exc` is an exception type.
pub(crate) unsafe fn raise(exc: *mut ffi::PyObject, msg: &CStr) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract; `msg` is a valid C string.
    unsafe { ffi::PyErr_SetString(exc, msg.as_ptr()) };
    ptr::null_mut()
}

/// Sets the error for "the PyO3 descriptor is missing" (cannot happen once registered).
///
/// # Safety
/// The interpreter must be attached.
unsafe fn no_descriptor() -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    unsafe {
        raise(
            ffi::PyExc_SystemError,
            c"rmp._core: SharedValue.value descriptor not registered",
        )
    }
}

/// `Synchronized.get_lock()`.
unsafe extern "C" fn value_get_lock(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls method functions with the interpreter attached.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: as in `value_get`.
    let v = unsafe { Bound::ref_from_ptr(py, &slf).cast_unchecked::<SharedValue>() };
    v.get().get_lock(py).into_ptr()
}

struct ValueDefs(ffi::PyGetSetDef, ffi::PyMethodDef);
// SAFETY: as for `Defs`.
unsafe impl Sync for ValueDefs {}

static VALUE_DEFS: ValueDefs = ValueDefs(
    ffi::PyGetSetDef {
        name: c"value".as_ptr(),
        get: Some(value_get),
        set: Some(value_set),
        doc: c"The value, read and written under the lock.".as_ptr(),
        closure: ptr::null_mut(),
    },
    ffi::PyMethodDef {
        ml_name: c"get_lock".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: value_get_lock,
        },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: c"get_lock()\n--\n\nThe lock that guards the value.".as_ptr(),
    },
);

/// Adds `_core.sharedvalue_value` (a getset descriptor) and `_core.sharedvalue_get_lock` (a
/// method descriptor) of `SharedValue`, which `rmp.sharedctypes.Synchronized` installs.
pub(crate) fn register_value(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let ty = py.get_type::<SharedValue>();
    let _ = PYO3_VALUE.set(py, ty.getattr("value")?.unbind());
    // SAFETY: `ty` is a live type object and the definition is 'static; the call returns a
    // new reference or NULL with an exception set.
    let getset = unsafe {
        let raw = ffi::PyDescr_NewGetSet(
            ty.as_ptr().cast::<ffi::PyTypeObject>(),
            ptr::from_ref(&VALUE_DEFS.0).cast_mut(),
        );
        Bound::from_owned_ptr_or_err(py, raw)?
    };
    m.add("sharedvalue_value", getset)?;
    m.add(
        "sharedvalue_get_lock",
        method_descriptor(&ty, &VALUE_DEFS.1)?,
    )?;
    Ok(())
}
