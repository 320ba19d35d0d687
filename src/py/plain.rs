//! Plain messages: a compact encoding of plain data (builtin scalars in tuples, lists and
//! dicts) that a queue writes and reads without a pickler. `pickle.dumps` and `pickle.loads`
//! of a small tuple cost about 200 ns each here, most of it setting up a pickler; this
//! encoding costs a few tens of nanoseconds each way. Anything it does not cover goes
//! through pickle as before, so no object ever comes back different.
//!
//! Format, version 1 (little-endian):
//!
//! | bytes | meaning |
//! |---|---|
//! | `P`, 1 | header: magic and version |
//! | `N` / `T` / `F` | `None` / `True` / `False` |
//! | `i` + 8 | an exact `int` within i64 |
//! | `f` + 8 | an exact `float` (its bits: NaN payloads and -0.0 survive) |
//! | `s` + u32 n + n | an exact `str`, UTF-8 (a string with lone surrogates is not plain) |
//! | `b` + u32 n + n | exact `bytes` |
//! | `(` + u32 n + n values | an exact `tuple` |
//! | `[` + u32 n + n values | an exact `list` |
//! | `{` + u32 n + n (key, value) | an exact `dict`, in its order |
//!
//! A `list` or `dict` met twice in one object (shared, or containing itself) is not plain:
//! pickle would keep the sharing, which this format cannot express. (Equal immutable values
//! met twice come back as equal, separate objects; pickle would share them.)

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyTuple};

/// The queue message tag of a plain message (`rmp.queues._PLAIN`), and of a pickle.
pub(crate) const TAG_PLAIN: u8 = 4;
pub(crate) const TAG_PICKLE: u8 = 0;

const MAGIC: u8 = b'P';
const VERSION: u8 = 1;
/// Most values (containers' items, keys and values counted) an object may hold to be
/// encoded: past this, pickle's set-up cost is small against the work.
const BUDGET: usize = 256;
/// Deepest nesting encoded (and accepted when decoding).
const DEPTH: u32 = 16;

struct Encoder {
    out: Vec<u8>,
    budget: usize,
    /// Lists and dicts met so far (a second meeting makes the object not plain).
    seen: Vec<*mut ffi::PyObject>,
}

impl Encoder {
    fn len_prefix(&mut self, tag: u8, n: usize) -> bool {
        let Ok(n) = u32::try_from(n) else {
            return false;
        };
        self.out.push(tag);
        self.out.extend_from_slice(&n.to_le_bytes());
        true
    }

    /// Appends `obj`; false when it is not plain (what was appended is then garbage).
    ///
    /// # Safety
    /// `obj` must be a live object with the interpreter attached. No Python code runs here
    /// (only exact builtin types are read), so no container changes while it is read.
    unsafe fn value(&mut self, obj: *mut ffi::PyObject, depth: u32) -> bool {
        if self.budget == 0 || depth == 0 {
            return false;
        }
        self.budget -= 1;
        // SAFETY: the caller's contract; every accessor below is applied to an object whose
        // exact type was just checked, within the container's size.
        unsafe {
            if obj == ffi::Py_None() {
                self.out.push(b'N');
            } else if obj == ffi::Py_True() {
                self.out.push(b'T');
            } else if obj == ffi::Py_False() {
                self.out.push(b'F');
            } else if ffi::PyLong_CheckExact(obj) != 0 {
                let mut overflow = 0;
                let v = ffi::PyLong_AsLongLongAndOverflow(obj, &mut overflow);
                if overflow != 0 {
                    return false;
                }
                self.out.push(b'i');
                self.out.extend_from_slice(&v.to_le_bytes());
            } else if ffi::PyFloat_CheckExact(obj) != 0 {
                self.out.push(b'f');
                self.out
                    .extend_from_slice(&ffi::PyFloat_AS_DOUBLE(obj).to_bits().to_le_bytes());
            } else if ffi::PyUnicode_CheckExact(obj) != 0 {
                let mut n: ffi::Py_ssize_t = 0;
                let p = ffi::PyUnicode_AsUTF8AndSize(obj, &mut n);
                if p.is_null() {
                    // Lone surrogates: not UTF-8. Pickle handles them; clear the error.
                    ffi::PyErr_Clear();
                    return false;
                }
                if !self.len_prefix(b's', n as usize) {
                    return false;
                }
                self.out
                    .extend_from_slice(std::slice::from_raw_parts(p.cast::<u8>(), n as usize));
            } else if ffi::PyBytes_CheckExact(obj) != 0 {
                let n = ffi::PyBytes_Size(obj) as usize;
                if !self.len_prefix(b'b', n) {
                    return false;
                }
                let p = ffi::PyBytes_AS_STRING(obj).cast::<u8>();
                self.out.extend_from_slice(std::slice::from_raw_parts(p, n));
            } else if ffi::PyTuple_CheckExact(obj) != 0 {
                let n = ffi::PyTuple_GET_SIZE(obj);
                if !self.len_prefix(b'(', n as usize) {
                    return false;
                }
                for i in 0..n {
                    if !self.value(ffi::PyTuple_GET_ITEM(obj, i), depth - 1) {
                        return false;
                    }
                }
            } else if ffi::PyList_CheckExact(obj) != 0 {
                if !self.first_meeting(obj) {
                    return false;
                }
                let n = ffi::PyList_GET_SIZE(obj);
                if !self.len_prefix(b'[', n as usize) {
                    return false;
                }
                for i in 0..n {
                    if !self.value(ffi::PyList_GET_ITEM(obj, i), depth - 1) {
                        return false;
                    }
                }
            } else if ffi::PyDict_CheckExact(obj) != 0 {
                if !self.first_meeting(obj) {
                    return false;
                }
                if !self.len_prefix(b'{', ffi::PyDict_Size(obj) as usize) {
                    return false;
                }
                let mut pos: ffi::Py_ssize_t = 0;
                let mut key = std::ptr::null_mut();
                let mut value = std::ptr::null_mut();
                while ffi::PyDict_Next(obj, &mut pos, &mut key, &mut value) != 0 {
                    if !self.value(key, depth - 1) || !self.value(value, depth - 1) {
                        return false;
                    }
                }
            } else {
                return false;
            }
        }
        true
    }

    fn first_meeting(&mut self, obj: *mut ffi::PyObject) -> bool {
        if self.seen.contains(&obj) {
            return false;
        }
        self.seen.push(obj);
        true
    }
}

/// `obj` in the plain format, or None when it is not plain data.
pub(crate) fn encode(obj: &Bound<'_, PyAny>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    encode_into(obj, &mut out).then_some(out)
}

/// Appends `obj` in the plain format to `out` (false, with `out` as it was, when it is not
/// plain data).
fn encode_into(obj: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let mut enc = Encoder {
        out: std::mem::take(out),
        budget: BUDGET,
        seen: Vec::new(),
    };
    enc.out.extend_from_slice(&[MAGIC, VERSION]);
    // SAFETY: `obj` is a live object and the interpreter is attached (we hold a Bound).
    let ok = unsafe { enc.value(obj.as_ptr(), DEPTH) };
    *out = enc.out;
    if !ok {
        out.truncate(start);
    }
    ok
}

struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
}

fn corrupt() -> PyErr {
    PyValueError::new_err("corrupt plain message")
}

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> PyResult<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(corrupt)?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn word(&mut self) -> PyResult<[u8; 8]> {
        Ok(self.take(8)?.try_into().expect("8 bytes"))
    }

    fn len(&mut self) -> PyResult<usize> {
        let b: [u8; 4] = self.take(4)?.try_into().expect("4 bytes");
        Ok(u32::from_le_bytes(b) as usize)
    }

    fn value(&mut self, py: Python<'_>, depth: u32) -> PyResult<Py<PyAny>> {
        if depth == 0 {
            return Err(corrupt());
        }
        let tag = self.take(1)?[0];
        // SAFETY: each constructor returns a new reference or NULL with an exception set,
        // which `from_owned_ptr_or_err` turns into the error; container slots are filled
        // once each with references they steal, before the container is used.
        unsafe {
            let raw = match tag {
                b'N' => return Ok(py.None()),
                b'T' => return Ok(true.into_pyobject(py)?.to_owned().into_any().unbind()),
                b'F' => return Ok(false.into_pyobject(py)?.to_owned().into_any().unbind()),
                b'i' => ffi::PyLong_FromLongLong(i64::from_le_bytes(self.word()?)),
                b'f' => ffi::PyFloat_FromDouble(f64::from_bits(u64::from_le_bytes(self.word()?))),
                b's' => {
                    let n = self.len()?;
                    let s = self.take(n)?;
                    ffi::PyUnicode_DecodeUTF8(
                        s.as_ptr().cast(),
                        n as ffi::Py_ssize_t,
                        std::ptr::null(),
                    )
                }
                b'b' => {
                    let n = self.len()?;
                    let s = self.take(n)?;
                    ffi::PyBytes_FromStringAndSize(s.as_ptr().cast(), n as ffi::Py_ssize_t)
                }
                b'(' | b'[' => {
                    let n = self.len()?;
                    if n > self.data.len() - self.pos {
                        return Err(corrupt()); // every item takes at least one byte
                    }
                    let c = if tag == b'(' {
                        ffi::PyTuple_New(n as ffi::Py_ssize_t)
                    } else {
                        ffi::PyList_New(n as ffi::Py_ssize_t)
                    };
                    let c = Bound::from_owned_ptr_or_err(py, c)?;
                    for i in 0..n {
                        // On an error the container is dropped with NULL slots, which its
                        // deallocation skips.
                        let item = self.value(py, depth - 1)?.into_ptr();
                        if tag == b'(' {
                            ffi::PyTuple_SET_ITEM(c.as_ptr(), i as ffi::Py_ssize_t, item);
                        } else {
                            ffi::PyList_SET_ITEM(c.as_ptr(), i as ffi::Py_ssize_t, item);
                        }
                    }
                    return Ok(c.unbind());
                }
                b'{' => {
                    let n = self.len()?;
                    let d = Bound::from_owned_ptr_or_err(py, ffi::PyDict_New())?;
                    for _ in 0..n {
                        let k = self.value(py, depth - 1)?;
                        let v = self.value(py, depth - 1)?;
                        if ffi::PyDict_SetItem(d.as_ptr(), k.as_ptr(), v.as_ptr()) != 0 {
                            return Err(PyErr::fetch(py));
                        }
                    }
                    return Ok(d.unbind());
                }
                _ => return Err(corrupt()),
            };
            Ok(Bound::from_owned_ptr_or_err(py, raw)?.unbind())
        }
    }
}

/// The object encoded in `data` (all of it).
pub(crate) fn decode(py: Python<'_>, data: &[u8]) -> PyResult<Py<PyAny>> {
    if data.len() < 2 || data[0] != MAGIC || data[1] != VERSION {
        return Err(PyValueError::new_err("not a plain message (bad header)"));
    }
    let mut dec = Decoder { data, pos: 2 };
    let v = dec.value(py, DEPTH)?;
    if dec.pos != data.len() {
        return Err(corrupt());
    }
    Ok(v)
}

/// `obj` in the plain format (bytes), or None when it is not plain data.
#[pyfunction]
fn plain_encode<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>) -> Option<Bound<'py, PyBytes>> {
    encode(obj).map(|v| PyBytes::new(py, &v))
}

/// The object a plain message holds (`bytes` or `bytearray`).
#[pyfunction]
fn plain_decode(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return decode(py, b.as_bytes());
    }
    let b = data.cast::<PyByteArray>()?;
    // Copied: decoding allocates objects, which may run the collector, which may run code
    // that resizes this bytearray.
    let copy = b.to_vec();
    decode(py, &copy)
}

/// Every object of the list or tuple `objs` in the plain format, as one blob and the end of
/// each message in it (what `Channel.put_batch` takes), or None if one of them is not plain.
#[pyfunction]
fn plain_encode_many<'py>(
    py: Python<'py>,
    objs: &Bound<'py, PyAny>,
) -> PyResult<Option<(Bound<'py, PyBytes>, Vec<usize>)>> {
    Ok(encode_many(objs)?.map(|(blob, bounds)| (PyBytes::new(py, &blob), bounds)))
}

/// `plain_encode_many` in Rust memory.
pub(crate) fn encode_many(objs: &Bound<'_, PyAny>) -> PyResult<Option<(Vec<u8>, Vec<usize>)>> {
    let items = if let Ok(list) = objs.cast_exact::<PyList>() {
        list.iter().collect::<Vec<_>>()
    } else if let Ok(tuple) = objs.cast_exact::<PyTuple>() {
        tuple.iter().collect::<Vec<_>>()
    } else {
        return Ok(None);
    };
    let mut blob = Vec::new();
    let mut bounds = Vec::with_capacity(items.len());
    for obj in &items {
        if !encode_into(obj, &mut blob) {
            return Ok(None);
        }
        bounds.push(blob.len());
    }
    Ok(Some((blob, bounds)))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(plain_encode_many, m)?)?;
    m.add_function(wrap_pyfunction!(plain_encode, m)?)?;
    m.add_function(wrap_pyfunction!(plain_decode, m)?)?;
    Ok(())
}
