//! Packed scalars: a list of exact `int`s (each within i64) or of exact `float`s, as raw
//! little-endian machine words instead of a pickle. A pool's map sends its chunks and results
//! this way when they are such lists (falling back to pickle otherwise): a pickle of a
//! million ints costs the sender about 13 ms and the receiver about 33 ms; these cost a
//! fraction (see `docs/architecture.md`, "Pool").
//!
//! Layout (version 1), 8 header bytes then the items:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | kind: `b'q'` (i64 items, from exact `int`) or `b'd'` (f64 items, from exact `float`) |
//! | 1 | 1 | version: 1 |
//! | 2 | 6 | zero |
//! | 8 | 8 × n | the items, little-endian (`f64` by its bits: NaN payloads and -0.0 survive) |
//!
//! Only the exact types qualify: a `bool`, an `int` or `float` subclass, or any other object
//! (numpy scalars included) would come back as something else, so a list holding one is not
//! packed. Neither is an `int` outside i64.

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

const HEADER: usize = 8;
const VERSION: u8 = 1;
const KIND_I64: u8 = b'q';
const KIND_F64: u8 = b'd';

/// Items of `seq[start:end]` (a list or tuple) as packed scalars, or None when they do not
/// all qualify (or there are none).
#[pyfunction]
#[pyo3(signature = (seq, start=0, end=None))]
fn pack_scalars<'py>(
    py: Python<'py>,
    seq: &Bound<'py, PyAny>,
    start: usize,
    end: Option<usize>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let items: &[*mut ffi::PyObject] = if let Ok(list) = seq.cast_exact::<PyList>() {
        // SAFETY: a list's item array holds `len` valid pointers; the interpreter is attached
        // for the whole call and nothing below runs Python code (only exact ints and floats
        // are read, whose conversions call no Python code), so the list cannot change while
        // the slice lives.
        unsafe {
            let p = list.as_ptr().cast::<ffi::PyListObject>();
            let n = ffi::PyList_GET_SIZE(list.as_ptr()) as usize;
            if n == 0 {
                return Ok(None);
            }
            std::slice::from_raw_parts((*p).ob_item, n)
        }
    } else if let Ok(tuple) = seq.cast_exact::<PyTuple>() {
        let n = tuple.len();
        if n == 0 {
            return Ok(None);
        }
        // SAFETY: a tuple's items are `n` valid pointers stored inline after its header, and
        // a tuple never changes.
        unsafe {
            let p = tuple.as_ptr().cast::<ffi::PyTupleObject>();
            std::slice::from_raw_parts((*p).ob_item.as_ptr(), n)
        }
    } else {
        return Ok(None);
    };
    let end = end.unwrap_or(items.len()).min(items.len());
    if start >= end {
        return Ok(None);
    }
    let items = &items[start..end];
    // SAFETY: every pointer in `items` is a live object (see above); the type checks read
    // only its type pointer.
    let kind = unsafe {
        if ffi::PyLong_CheckExact(items[0]) != 0 {
            KIND_I64
        } else if ffi::PyFloat_CheckExact(items[0]) != 0 {
            KIND_F64
        } else {
            return Ok(None);
        }
    };
    let mut fits = true;
    let bytes = PyBytes::new_with(py, HEADER + 8 * items.len(), |out| {
        out[0] = kind;
        out[1] = VERSION;
        for (obj, dst) in items.iter().zip(out[HEADER..].chunks_exact_mut(8)) {
            let word = if kind == KIND_I64 {
                // SAFETY: as above; an exact int's conversion runs no Python code and reports
                // overflow through the flag, without setting an exception.
                unsafe {
                    let mut overflow = 0;
                    let v = if ffi::PyLong_CheckExact(*obj) != 0 {
                        ffi::PyLong_AsLongLongAndOverflow(*obj, &mut overflow)
                    } else {
                        overflow = 1;
                        0
                    };
                    if overflow != 0 {
                        fits = false;
                        break;
                    }
                    v.to_le_bytes()
                }
            } else {
                // SAFETY: as above; an exact float's value is read without a call.
                unsafe {
                    if ffi::PyFloat_CheckExact(*obj) == 0 {
                        fits = false;
                        break;
                    }
                    ffi::PyFloat_AS_DOUBLE(*obj).to_bits().to_le_bytes()
                }
            };
            dst.copy_from_slice(&word);
        }
        Ok(())
    })?;
    Ok(fits.then_some(bytes))
}

/// The list packed in `data[:end]` (bytes or any contiguous buffer).
#[pyfunction]
#[pyo3(signature = (data, end=None))]
fn unpack_scalars<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    end: Option<usize>,
) -> PyResult<Bound<'py, PyList>> {
    let buf = pyo3::buffer::PyBuffer::<u8>::get(data)?;
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err(
            "packed scalars need a contiguous buffer",
        ));
    }
    let len = end.unwrap_or(buf.len_bytes()).min(buf.len_bytes());
    // SAFETY: a C-contiguous buffer of `len_bytes` bytes at `buf_ptr`, kept alive (and its
    // exporter's memory pinned) by `buf` until the end of this function; `len` is within it.
    let bytes = unsafe { std::slice::from_raw_parts(buf.buf_ptr().cast::<u8>(), len) };
    if len < HEADER || (len - HEADER) % 8 != 0 || bytes[1] != VERSION {
        return Err(PyValueError::new_err(
            "not packed scalars (bad header or length)",
        ));
    }
    let kind = bytes[0];
    if kind != KIND_I64 && kind != KIND_F64 {
        return Err(PyValueError::new_err("not packed scalars (unknown kind)"));
    }
    let words = bytes[HEADER..].chunks_exact(8);
    let n = words.len();
    // SAFETY: PyList_New gives a new list of `n` NULL slots (or NULL with an exception set);
    // each slot is filled exactly once with a new reference that the list steals, before the
    // list is handed to any code. On a failed item allocation the list is released with its
    // remaining NULL slots, which list deallocation skips.
    unsafe {
        let list = ffi::PyList_New(n as ffi::Py_ssize_t);
        if list.is_null() {
            return Err(PyErr::fetch(py));
        }
        let list = Bound::from_owned_ptr(py, list);
        for (i, w) in words.enumerate() {
            let w: [u8; 8] = w.try_into().expect("chunks of 8");
            let item = if kind == KIND_I64 {
                ffi::PyLong_FromLongLong(i64::from_le_bytes(w))
            } else {
                ffi::PyFloat_FromDouble(f64::from_bits(u64::from_le_bytes(w)))
            };
            if item.is_null() {
                return Err(PyErr::fetch(py));
            }
            ffi::PyList_SET_ITEM(list.as_ptr(), i as ffi::Py_ssize_t, item);
        }
        Ok(list.cast_into_unchecked())
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(pack_scalars, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_scalars, m)?)?;
    Ok(())
}
