//! `with lock:` without allocating: `SemLock.__enter__` and `__exit__` are descriptors of our
//! own, whose binding to a lock is a small object that the lock keeps for reuse.
//!
//! CPython 3.9–3.13 look `__enter__` and `__exit__` up through their descriptors
//! (`_PyObject_LookupSpecial`), so with method descriptors every `with lock:` makes and frees
//! two bound-method objects: about a third of an uncontended `with lock: pass`. Here a binding
//! (`LockCall`) whose last reference goes is resurrected into a slot of its lock instead of being
//! freed, and the next lookup on that lock takes it back: no allocation, and no GC tracking
//! traffic, once a lock has been used. A binding holds its lock only while it is out: a parked
//! one keeps nothing alive (so no cycle goes through a slot), and the lock drops what it has
//! parked when it is freed itself.
//!
//! The descriptors are also method descriptors (`Py_TPFLAGS_METHOD_DESCRIPTOR`): an explicit
//! `lock.__enter__()` (and 3.14's `with`) calls them unbound, with no binding at all.
//!
//! Everything here runs with the interpreter attached, which serialises it; the atomics only
//! make the lock's slots `Sync` for PyO3.

use std::ffi::{c_int, c_void, CStr, CString};
use std::mem::offset_of;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;

use super::fastcall;
use super::sync::CoreSemLock;

/// Which special method a descriptor or binding is.
#[repr(u32)]
#[derive(Clone, Copy)]
enum Which {
    Enter = 0,
    Exit = 1,
}

impl Which {
    fn name(self) -> &'static CStr {
        match self {
            Which::Enter => c"__enter__",
            Which::Exit => c"__exit__",
        }
    }
}

/// A lock's parked bindings, one per [`Which`]: each null, or the one reference to a binding
/// whose `lock` is null. Owned by the lock, dropped with it.
#[derive(Default)]
pub(crate) struct Parked([AtomicPtr<ffi::PyObject>; 2]);

impl Drop for Parked {
    fn drop(&mut self) {
        for slot in &mut self.0 {
            let p = *slot.get_mut();
            if !p.is_null() {
                // SAFETY: the slot owns a reference to a live binding. The lock is dropped by
                // its `tp_dealloc`, with the interpreter attached; the binding, whose `lock`
                // is null, is then freed.
                unsafe { ffi::Py_DECREF(p) }
            }
        }
    }
}

/// `lock.__enter__` / `lock.__exit__`: a binding of one special method to one lock.
#[repr(C)]
struct LockCall {
    ob_base: ffi::PyObject,
    /// The vectorcall entry: the type's `__vectorcalloffset__` points here.
    vectorcall: Option<ffi::vectorcallfunc>,
    /// The lock, a strong reference while the binding is alive; null once the GC cleared it.
    lock: *mut ffi::PyObject,
    which: Which,
}

/// `SemLock.__enter__` / `SemLock.__exit__`: the descriptor, callable unbound.
#[repr(C)]
struct LockCallDescr {
    ob_base: ffi::PyObject,
    /// The vectorcall entry, as in [`LockCall`].
    vectorcall: Option<ffi::vectorcallfunc>,
    which: Which,
}

/// The binding type and the lock type (`_core.SemLock`), set once by [`register`] (Release),
/// read by the calls (Acquire, pairing with it; the interpreter lock orders them anyway).
/// Both types live as long as the interpreter: `CALL_TYPE` holds a reference of its own.
static CALL_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(ptr::null_mut());
static LOCK_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(ptr::null_mut());

/// The parked-binding slot of `lock` for `which`.
///
/// # Safety
/// `lock` is a live `_core.SemLock` (or subclass) and the interpreter is attached; the
/// reference is used only while `lock` is alive.
unsafe fn slot<'a>(lock: *mut ffi::PyObject, which: Which) -> &'a AtomicPtr<ffi::PyObject> {
    // SAFETY: per the function's contract.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: `lock` is a SemLock, borrowed for the duration of the reference.
    let sem = unsafe { Bound::ref_from_ptr(py, &lock).cast_unchecked::<CoreSemLock>() };
    let parked: *const Parked = sem.get().parked();
    // SAFETY: the slots live inside the lock object, alive as long as the caller says.
    unsafe { &(*parked).0[which as usize] }
}

/// Whether `obj` is a `_core.SemLock`.
///
/// # Safety
/// `obj` is a live object; the interpreter is attached.
unsafe fn is_lock(obj: *mut ffi::PyObject) -> bool {
    let tp = LOCK_TYPE.load(Ordering::Acquire);
    // SAFETY: `tp` is a live type once registered (we are not called before).
    !tp.is_null() && unsafe { ffi::PyObject_TypeCheck(obj, tp) } != 0
}

/// Sets a `TypeError` with `msg`; returns NULL.
///
/// # Safety
/// The interpreter is attached.
unsafe fn type_error(msg: String) -> *mut ffi::PyObject {
    let msg = CString::new(msg).unwrap_or_default();
    // SAFETY: per the function's contract.
    unsafe { fastcall::raise(ffi::PyExc_TypeError, &msg) }
}

/// The `TypeError` of CPython's method descriptors for a `self` of the wrong type.
///
/// # Safety
/// `obj` is a live object; the interpreter is attached.
unsafe fn wrong_self(which: Which, obj: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: `tp_name` of a live type is a valid C string.
    let tp = unsafe { CStr::from_ptr((*ffi::Py_TYPE(obj)).tp_name) };
    // SAFETY: per the function's contract.
    unsafe {
        type_error(format!(
            "descriptor '{}' for 'SemLock' objects doesn't apply to a '{}' object",
            which.name().to_string_lossy(),
            tp.to_string_lossy()
        ))
    }
}

/// Runs `which` on `lock` with the call's arguments: `__enter__()` is `acquire()`,
/// `__exit__(*exc_info)` is `release()` whatever the positional arguments.
///
/// # Safety
/// `lock` is a live `_core.SemLock` kept alive by the caller for the call; `kwnames` is null
/// or a tuple; the interpreter is attached.
unsafe fn invoke(
    which: Which,
    lock: *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let name = || which.name().to_string_lossy();
    // SAFETY: kwnames is a tuple when not null (vectorcall protocol).
    if !kwnames.is_null() && unsafe { ffi::PyTuple_GET_SIZE(kwnames) } != 0 {
        // SAFETY: attached.
        return unsafe { type_error(format!("{}() takes no keyword arguments", name())) };
    }
    match which {
        Which::Enter if nargs != 0 => {
            // SAFETY: attached.
            unsafe { type_error(format!("{}() takes no arguments ({nargs} given)", name())) }
        }
        // SAFETY: `lock` is a SemLock kept alive for the call.
        Which::Enter => unsafe { fastcall::acquire(lock, ptr::null(), 0, ptr::null_mut()) },
        // SAFETY: as above.
        Which::Exit => unsafe { fastcall::release(lock, ptr::null_mut()) },
    }
}

// ------------------------------------------------------------------------------- the binding

/// The error of a binding whose lock the GC cleared (it was part of collected garbage).
///
/// # Safety
/// The interpreter is attached.
unsafe fn lock_gone() -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    unsafe {
        fastcall::raise(
            ffi::PyExc_ReferenceError,
            c"this lock method's lock is gone",
        )
    }
}

/// `lock.__enter__(...)`: vectorcall of a binding.
unsafe extern "C" fn call_bound(
    callable: *mut ffi::PyObject,
    _args: *const *mut ffi::PyObject,
    nargsf: libc::size_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let c = callable.cast::<LockCall>();
    // SAFETY: CPython calls us with a live binding (the caller holds it), attached.
    unsafe {
        let lock = (*c).lock;
        if lock.is_null() {
            return lock_gone();
        }
        // The binding holds `lock`, and the caller holds the binding for the call.
        invoke((*c).which, lock, ffi::PyVectorcall_NARGS(nargsf), kwnames)
    }
}

/// Binds `which` to `lock`: its parked binding, or a new one.
///
/// # Safety
/// `lock` is a live `_core.SemLock`; the interpreter is attached.
unsafe fn bind(lock: *mut ffi::PyObject, which: Which) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    let parked = unsafe { slot(lock, which) }.swap(ptr::null_mut(), Ordering::Relaxed);
    // SAFETY: a parked binding is a live binding (tracked, with a null `lock`) whose one
    // reference the slot held and now passes to our caller. A new one comes zeroed and
    // tracked, from the registered type (descriptors exist only after `register`).
    unsafe {
        let op = if parked.is_null() {
            let op = ffi::PyType_GenericAlloc(CALL_TYPE.load(Ordering::Acquire), 0);
            if op.is_null() {
                return op;
            }
            op
        } else {
            parked
        };
        let c = op.cast::<LockCall>();
        (*c).vectorcall = Some(call_bound);
        ffi::Py_INCREF(lock);
        (*c).lock = lock;
        (*c).which = which;
        op
    }
}

unsafe extern "C" fn call_dealloc(op: *mut ffi::PyObject) {
    // SAFETY: CPython deallocates a binding whose count reached 0, attached, with no Python
    // code in between (so no collection can see the count at 0). If its lock's slot is empty,
    // the binding is resurrected into it (count 1, owned by the slot, still tracked, `lock`
    // null: it keeps nothing alive), as a one-object free list; else it is freed. The lock's
    // reference is dropped last: freeing the lock drops what it has parked, which may be this
    // binding.
    unsafe {
        let c = op.cast::<LockCall>();
        let lock = std::mem::replace(&mut (*c).lock, ptr::null_mut());
        if !lock.is_null() {
            let parked = slot(lock, (*c).which);
            if parked.load(Ordering::Relaxed).is_null() {
                ffi::Py_INCREF(op);
                parked.store(op, Ordering::Relaxed);
                ffi::Py_DECREF(lock);
                return;
            }
        }
        let tp = ffi::Py_TYPE(op);
        ffi::PyObject_GC_UnTrack(op.cast());
        ffi::PyObject_GC_Del(op.cast());
        // Instances of a heap type own a reference to it.
        ffi::Py_DECREF(tp.cast());
        if !lock.is_null() {
            ffi::Py_DECREF(lock);
        }
    }
}

unsafe extern "C" fn call_traverse(
    op: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: CPython traverses a live, tracked binding. Heap types visit their type.
    unsafe {
        let lock = (*op.cast::<LockCall>()).lock;
        if !lock.is_null() {
            let r = visit(lock, arg);
            if r != 0 {
                return r;
            }
        }
        visit(ffi::Py_TYPE(op).cast(), arg)
    }
}

unsafe extern "C" fn call_clear(op: *mut ffi::PyObject) -> c_int {
    // SAFETY: CPython clears a live binding, attached; calling it afterwards raises.
    unsafe {
        let lock = std::mem::replace(&mut (*op.cast::<LockCall>()).lock, ptr::null_mut());
        if !lock.is_null() {
            ffi::Py_DECREF(lock);
        }
    }
    0
}

unsafe extern "C" fn call_repr(op: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: a live binding, attached; `%s` gets C strings and `%p` a pointer.
    unsafe {
        let c = op.cast::<LockCall>();
        let lock = (*c).lock;
        let owner = if lock.is_null() {
            c"(gone)".as_ptr()
        } else {
            (*ffi::Py_TYPE(lock)).tp_name
        };
        ffi::PyUnicode_FromFormat(
            c"<built-in method %s of %s object at %p>".as_ptr(),
            (*c).which.name().as_ptr(),
            owner,
            lock.cast::<c_void>(),
        )
    }
}

unsafe extern "C" fn call_self(op: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: a live binding, attached.
    unsafe {
        let lock = (*op.cast::<LockCall>()).lock;
        let r = if lock.is_null() { ffi::Py_None() } else { lock };
        ffi::Py_INCREF(r);
        r
    }
}

unsafe extern "C" fn call_name(op: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: a live binding, attached.
    unsafe { ffi::PyUnicode_FromString((*op.cast::<LockCall>()).which.name().as_ptr()) }
}

unsafe extern "C" fn call_qualname(op: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: a live binding, attached; `%s` gets C strings.
    unsafe {
        let c = op.cast::<LockCall>();
        let owner = if (*c).lock.is_null() {
            c"SemLock".as_ptr()
        } else {
            (*ffi::Py_TYPE((*c).lock)).tp_name
        };
        ffi::PyUnicode_FromFormat(c"%s.%s".as_ptr(), owner, (*c).which.name().as_ptr())
    }
}

/// The docstring of `which`.
fn doc(which: Which) -> &'static CStr {
    match which {
        Which::Enter => c"Enter the semaphore/lock (acquire it).",
        Which::Exit => c"Exit the semaphore/lock (release it).",
    }
}

unsafe extern "C" fn call_doc(op: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: a live binding, attached.
    unsafe { ffi::PyUnicode_FromString(doc((*op.cast::<LockCall>()).which).as_ptr()) }
}

/// `==` as for bound methods: the same method of the same object (by identity).
unsafe extern "C" fn call_richcompare(
    a: *mut ffi::PyObject,
    b: *mut ffi::PyObject,
    op: c_int,
) -> *mut ffi::PyObject {
    // SAFETY: CPython compares live objects, attached; `a` is a binding (our slot).
    unsafe {
        let tp = CALL_TYPE.load(Ordering::Acquire);
        if (op != ffi::Py_EQ && op != ffi::Py_NE) || ffi::Py_TYPE(b) != tp {
            let r = ffi::Py_NotImplemented();
            ffi::Py_INCREF(r);
            return r;
        }
        let (x, y) = (a.cast::<LockCall>(), b.cast::<LockCall>());
        let same = (*x).which as u32 == (*y).which as u32 && (*x).lock == (*y).lock;
        let r = if same == (op == ffi::Py_EQ) {
            ffi::Py_True()
        } else {
            ffi::Py_False()
        };
        ffi::Py_INCREF(r);
        r
    }
}

unsafe extern "C" fn call_hash(op: *mut ffi::PyObject) -> ffi::Py_hash_t {
    // SAFETY: a live binding, attached.
    let c = unsafe { &*op.cast::<LockCall>() };
    // The lock's address (its identity: equal bindings share it) mixed with the method.
    let h = (c.lock as usize).rotate_right(4) ^ (c.which as usize + 1).wrapping_mul(0x9e37_79b9);
    match h as ffi::Py_hash_t {
        -1 => -2,
        h => h,
    }
}

/// `__reduce__`: `getattr(lock, name)`, as for bound methods (the lock pickles as it does:
/// only while spawning).
unsafe extern "C" fn call_reduce(
    op: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: a live binding, attached; each call returns a new reference or NULL with an
    // exception set, and every reference made here is handed on or released.
    unsafe {
        let c = op.cast::<LockCall>();
        if (*c).lock.is_null() {
            return lock_gone();
        }
        // A borrowed reference into the builtins dict.
        let getattr = ffi::PyDict_GetItemString(ffi::PyEval_GetBuiltins(), c"getattr".as_ptr());
        if getattr.is_null() {
            return fastcall::raise(ffi::PyExc_RuntimeError, c"no builtin getattr");
        }
        let name = ffi::PyUnicode_FromString((*c).which.name().as_ptr());
        if name.is_null() {
            return name;
        }
        // Py_BuildValue's `N` steals `name`, `O` takes new references.
        ffi::Py_BuildValue(c"O(ON)".as_ptr(), getattr, (*c).lock, name)
    }
}

unsafe extern "C" fn no_new(
    tp: *mut ffi::PyTypeObject,
    _: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls `tp_new` with a live type, attached.
    unsafe {
        let name = CStr::from_ptr((*tp).tp_name).to_string_lossy();
        type_error(format!("cannot create '{name}' instances"))
    }
}

// ---------------------------------------------------------------------------- the descriptor

/// `SemLock.__enter__(lock, ...)`: vectorcall of a descriptor, called unbound.
unsafe extern "C" fn call_unbound(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: libc::size_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls us with a live descriptor and a valid argument vector, attached.
    unsafe {
        let which = (*callable.cast::<LockCallDescr>()).which;
        let nargs = ffi::PyVectorcall_NARGS(nargsf);
        if nargs < 1 {
            return type_error(format!(
                "unbound method SemLock.{}() needs an argument",
                which.name().to_string_lossy()
            ));
        }
        let slf = *args;
        if !is_lock(slf) {
            return wrong_self(which, slf);
        }
        // The caller holds `slf` (an argument) for the call.
        invoke(which, slf, nargs - 1, kwnames)
    }
}

unsafe extern "C" fn descr_get(
    descr: *mut ffi::PyObject,
    obj: *mut ffi::PyObject,
    _tp: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls `__get__` with a live descriptor and a live or null `obj`,
    // attached.
    unsafe {
        if obj.is_null() || obj == ffi::Py_None() {
            ffi::Py_INCREF(descr);
            return descr;
        }
        let which = (*descr.cast::<LockCallDescr>()).which;
        if !is_lock(obj) {
            return wrong_self(which, obj);
        }
        bind(obj, which)
    }
}

unsafe extern "C" fn descr_dealloc(op: *mut ffi::PyObject) {
    // SAFETY: CPython deallocates a descriptor whose count reached 0; it holds no references
    // but its type's.
    unsafe {
        let tp = ffi::Py_TYPE(op);
        ffi::PyObject_Free(op.cast());
        ffi::Py_DECREF(tp.cast());
    }
}

unsafe extern "C" fn descr_name(op: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: a live descriptor, attached.
    unsafe { ffi::PyUnicode_FromString((*op.cast::<LockCallDescr>()).which.name().as_ptr()) }
}

unsafe extern "C" fn descr_qualname(op: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: a live descriptor, attached.
    unsafe {
        ffi::PyUnicode_FromFormat(
            c"SemLock.%s".as_ptr(),
            (*op.cast::<LockCallDescr>()).which.name().as_ptr(),
        )
    }
}

unsafe extern "C" fn descr_doc(op: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: a live descriptor, attached.
    unsafe { ffi::PyUnicode_FromString(doc((*op.cast::<LockCallDescr>()).which).as_ptr()) }
}

unsafe extern "C" fn descr_objclass(_: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    let tp = LOCK_TYPE.load(Ordering::Acquire).cast::<ffi::PyObject>();
    // SAFETY: registered before any descriptor exists; attached.
    unsafe { ffi::Py_INCREF(tp) };
    tp
}

unsafe extern "C" fn descr_repr(op: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: a live descriptor, attached.
    unsafe {
        ffi::PyUnicode_FromFormat(
            c"<method '%s' of 'SemLock' objects>".as_ptr(),
            (*op.cast::<LockCallDescr>()).which.name().as_ptr(),
        )
    }
}

// ------------------------------------------------------------------------------ registration

/// Getset and member tables: CPython keeps pointers to them, hence statics; they hold raw
/// pointers, hence the wrapper.
struct Tables {
    call_getset: [ffi::PyGetSetDef; 5],
    call_methods: [ffi::PyMethodDef; 2],
    descr_getset: [ffi::PyGetSetDef; 5],
}
// SAFETY: never mutated; only read by CPython.
unsafe impl Sync for Tables {}

const fn getter(
    name: &'static CStr,
    get: unsafe extern "C" fn(*mut ffi::PyObject, *mut c_void) -> *mut ffi::PyObject,
) -> ffi::PyGetSetDef {
    ffi::PyGetSetDef {
        name: name.as_ptr(),
        get: Some(get),
        set: None,
        doc: ptr::null(),
        closure: ptr::null_mut(),
    }
}

const END: ffi::PyGetSetDef = ffi::PyGetSetDef {
    name: ptr::null(),
    get: None,
    set: None,
    doc: ptr::null(),
    closure: ptr::null_mut(),
};

static TABLES: Tables = Tables {
    call_getset: [
        getter(c"__self__", call_self),
        getter(c"__name__", call_name),
        getter(c"__qualname__", call_qualname),
        getter(c"__doc__", call_doc),
        END,
    ],
    call_methods: [
        ffi::PyMethodDef {
            ml_name: c"__reduce__".as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunction: call_reduce,
            },
            ml_flags: ffi::METH_NOARGS,
            ml_doc: ptr::null(),
        },
        ffi::PyMethodDef::zeroed(),
    ],
    descr_getset: [
        getter(c"__name__", descr_name),
        getter(c"__qualname__", descr_qualname),
        getter(c"__objclass__", descr_objclass),
        getter(c"__doc__", descr_doc),
        END,
    ],
};

/// `__vectorcalloffset__`, the member through which `PyType_FromSpec` learns where an
/// instance keeps its vectorcall entry (3.9+), then the end marker.
fn vectorcall_members(offset: usize) -> [ffi::PyMemberDef; 2] {
    [
        ffi::PyMemberDef {
            name: c"__vectorcalloffset__".as_ptr(),
            type_code: ffi::Py_T_PYSSIZET,
            offset: offset as ffi::Py_ssize_t,
            flags: ffi::Py_READONLY,
            doc: ptr::null(),
        },
        ffi::PyMemberDef::default(),
    ]
}

fn slot_of(slot: c_int, pfunc: *mut c_void) -> ffi::PyType_Slot {
    ffi::PyType_Slot { slot, pfunc }
}

/// A heap type from `slots`, callable through vectorcall and not instantiable from Python
/// (both slots, and the end marker, added here).
fn new_type<'py>(
    py: Python<'py>,
    name: &'static CStr,
    basicsize: usize,
    flags: u64,
    mut slots: Vec<ffi::PyType_Slot>,
) -> PyResult<Bound<'py, PyAny>> {
    slots.push(slot_of(
        ffi::Py_tp_call,
        ffi::PyVectorcall_Call as *mut c_void,
    ));
    slots.push(slot_of(ffi::Py_tp_new, no_new as *mut c_void));
    slots.push(slot_of(0, ptr::null_mut()));
    // Immutable (3.10+): nobody may replace `__call__` and so silently turn vectorcall off.
    let immutable = if py.version_info() >= (3, 10) {
        1 << 8
    } else {
        0
    };
    let mut spec = ffi::PyType_Spec {
        name: name.as_ptr(),
        basicsize: basicsize as c_int,
        itemsize: 0,
        flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_HAVE_VECTORCALL | flags | immutable) as _,
        slots: slots.as_mut_ptr(),
    };
    // SAFETY: the spec and its slots are valid for the call (CPython copies them); the name
    // and the getset tables are 'static; the members are copied into the type.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyType_FromSpec(&mut spec)) }
}

/// Makes the two types and adds `_core.semlock_enter` and `_core.semlock_exit`, which
/// `rmp.synchronize.SemLock` installs as its `__enter__` and `__exit__`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let lock_type = py.get_type::<CoreSemLock>();
    let mut call_members = vectorcall_members(offset_of!(LockCall, vectorcall));
    let mut descr_members = vectorcall_members(offset_of!(LockCallDescr, vectorcall));
    let call_type = new_type(
        py,
        c"rmp._core.lock_method",
        std::mem::size_of::<LockCall>(),
        ffi::Py_TPFLAGS_HAVE_GC,
        vec![
            slot_of(ffi::Py_tp_dealloc, call_dealloc as *mut c_void),
            slot_of(ffi::Py_tp_traverse, call_traverse as *mut c_void),
            slot_of(ffi::Py_tp_clear, call_clear as *mut c_void),
            slot_of(ffi::Py_tp_repr, call_repr as *mut c_void),
            slot_of(ffi::Py_tp_richcompare, call_richcompare as *mut c_void),
            slot_of(ffi::Py_tp_hash, call_hash as *mut c_void),
            slot_of(
                ffi::Py_tp_getset,
                TABLES.call_getset.as_ptr().cast_mut().cast(),
            ),
            slot_of(
                ffi::Py_tp_methods,
                TABLES.call_methods.as_ptr().cast_mut().cast(),
            ),
            slot_of(ffi::Py_tp_members, call_members.as_mut_ptr().cast()),
        ],
    )?;
    let descr_type = new_type(
        py,
        c"rmp._core.lock_method_descriptor",
        std::mem::size_of::<LockCallDescr>(),
        ffi::Py_TPFLAGS_METHOD_DESCRIPTOR,
        vec![
            slot_of(ffi::Py_tp_dealloc, descr_dealloc as *mut c_void),
            slot_of(ffi::Py_tp_descr_get, descr_get as *mut c_void),
            slot_of(ffi::Py_tp_repr, descr_repr as *mut c_void),
            slot_of(
                ffi::Py_tp_getset,
                TABLES.descr_getset.as_ptr().cast_mut().cast(),
            ),
            slot_of(ffi::Py_tp_members, descr_members.as_mut_ptr().cast()),
        ],
    )?;
    // Both types live for the interpreter: the statics own a reference each (never dropped).
    LOCK_TYPE.store(lock_type.as_ptr().cast(), Ordering::Release);
    CALL_TYPE.store(
        call_type.clone().into_ptr().cast::<ffi::PyTypeObject>(),
        Ordering::Release,
    );
    let _ = lock_type.into_ptr();
    for (name, which) in [
        ("semlock_enter", Which::Enter),
        ("semlock_exit", Which::Exit),
    ] {
        // SAFETY: `descr_type` is a live type of `LockCallDescr` instances; the allocation
        // comes zeroed with a count of 1 (or NULL with an exception set) and we fill it in.
        let descr = unsafe {
            let op = ffi::PyType_GenericAlloc(descr_type.as_ptr().cast(), 0);
            let d = Bound::from_owned_ptr_or_err(py, op)?;
            let raw = op.cast::<LockCallDescr>();
            (*raw).vectorcall = Some(call_unbound);
            (*raw).which = which;
            d
        };
        m.add(name, descr)?;
    }
    m.add("lock_method", call_type)?;
    m.add("lock_method_descriptor", descr_type)?;
    Ok(())
}
