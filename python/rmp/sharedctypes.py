"""``rmp.sharedctypes``: ctypes objects in shared memory, as CPython's
``multiprocessing.sharedctypes``.

Objects live in rmp's arenas (``rmp.heap``: memfd segments, never ``/dev/shm``), so a
thousand ``Value`` objects share one descriptor and one mapping. The synchronized wrappers
default to an rmp ``RLock``, which survives its holder being killed: the next acquirer takes it
over with a ``RuntimeWarning``. ``get_obj()`` returns the raw ctypes object, which exports the
buffer protocol (``numpy.frombuffer(arr.get_obj())`` is zero-copy).
"""

import ctypes
import weakref

from . import _core, context, heap
from .reduction import ForkingPickler

__all__ = ["RawValue", "RawArray", "Value", "Array", "copy", "synchronized"]

typecode_to_type = {
    "c": ctypes.c_char,
    "u": ctypes.c_wchar,
    "b": ctypes.c_byte,
    "B": ctypes.c_ubyte,
    "h": ctypes.c_short,
    "H": ctypes.c_ushort,
    "i": ctypes.c_int,
    "I": ctypes.c_uint,
    "l": ctypes.c_long,
    "L": ctypes.c_ulong,
    "q": ctypes.c_longlong,
    "Q": ctypes.c_ulonglong,
    "f": ctypes.c_float,
    "d": ctypes.c_double,
}


def _new_value(type_):
    size = ctypes.sizeof(type_)
    wrapper = heap.BufferWrapper(size)
    return rebuild_ctype(type_, wrapper, None)


def RawValue(typecode_or_type, *args):
    """A ctypes object of the given type (or typecode) in shared memory, without a lock."""
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    obj = _new_value(type_)
    ctypes.memset(ctypes.addressof(obj), 0, ctypes.sizeof(obj))
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type, size_or_initializer):
    """A ctypes array in shared memory, without a lock: ``size`` zeros, or a copy of a
    sequence."""
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    if isinstance(size_or_initializer, int):
        type_ = type_ * size_or_initializer
        obj = _new_value(type_)
        ctypes.memset(ctypes.addressof(obj), 0, ctypes.sizeof(obj))
        return obj
    type_ = type_ * len(size_or_initializer)
    result = _new_value(type_)
    result.__init__(*size_or_initializer)
    return result


def _lock_for(lock, ctx):
    if lock in (True, None):
        ctx = ctx or context._default_context.get_context()
        lock = ctx.RLock()
    if not hasattr(lock, "acquire"):
        raise AttributeError("%r has no method 'acquire'" % lock)
    return lock, ctx


def Value(typecode_or_type, *args, lock=True, ctx=None):
    """A synchronized shared ctypes object (``lock=False`` gives the raw object)."""
    obj = RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    lock, ctx = _lock_for(lock, ctx)
    return synchronized(obj, lock, ctx=ctx)


def Array(typecode_or_type, size_or_initializer, *, lock=True, ctx=None):
    """A synchronized shared ctypes array (``lock=False`` gives the raw array)."""
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    lock, ctx = _lock_for(lock, ctx)
    return synchronized(obj, lock, ctx=ctx)


def copy(obj):
    """A new shared object holding a copy of ``obj``'s bytes."""
    new_obj = _new_value(type(obj))
    ctypes.pointer(new_obj)[0] = obj
    return new_obj


def synchronized(obj, lock=None, ctx=None):
    """Wraps a shared ctypes object so that every access takes ``lock``."""
    assert not isinstance(obj, SynchronizedBase), "object already synchronized"
    ctx = ctx or context._default_context.get_context()
    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized(obj, lock, ctx)
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock, ctx)
        return SynchronizedArray(obj, lock, ctx)
    cls = type(obj)
    try:
        scls = _class_cache[cls]
    except KeyError:
        names = [field[0] for field in cls._fields_]
        d = {name: make_property(name) for name in names}
        scls = _class_cache[cls] = type("Synchronized" + cls.__name__, (SynchronizedBase,), d)
    return scls(obj, lock, ctx)


#
# Pickling: shared objects travel to children as their block of shared memory.
#


def reduce_ctype(obj):
    context.assert_spawning(obj)
    if isinstance(obj, ctypes.Array):
        return rebuild_ctype, (obj._type_, obj._wrapper, obj._length_)
    return rebuild_ctype, (type(obj), obj._wrapper, None)


def rebuild_ctype(type_, wrapper, length):
    if length is not None:
        type_ = type_ * length
    ForkingPickler.register(type_, reduce_ctype)
    buf = wrapper.create_memoryview()
    obj = type_.from_buffer(buf)
    obj._wrapper = wrapper
    return obj


#
# Synchronized wrappers
#

_prop_cache = {}
_class_cache = weakref.WeakKeyDictionary()


def make_property(name):
    """A property reading and writing attribute ``name`` of the wrapped object under the
    lock."""
    try:
        return _prop_cache[name]
    except KeyError:
        pass

    def get(self):
        self.acquire()
        try:
            return getattr(self._obj, name)
        finally:
            self.release()

    def set(self, value):
        self.acquire()
        try:
            setattr(self._obj, name, value)
        finally:
            self.release()

    _prop_cache[name] = prop = property(get, set)
    return prop


def _default_lock(lock, ctx):
    if lock:
        return lock
    ctx = ctx or context._default_context.get_context()
    return ctx.RLock()


class SynchronizedBase:
    def __init__(self, obj, lock=None, ctx=None):
        self._obj = obj
        self._lock = _default_lock(lock, ctx)
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    def __reduce__(self):
        context.assert_spawning(self)
        return synchronized, (self._obj, self._lock)

    def get_obj(self):
        return self._obj

    def get_lock(self):
        return self._lock

    def __repr__(self):
        return "<%s wrapper for %s>" % (type(self).__name__, self._obj)


def _in_place_codes():
    codes = {ctypes.c_float: "f", ctypes.c_double: "d"}
    signed = (ctypes.c_byte, ctypes.c_short, ctypes.c_int, ctypes.c_long, ctypes.c_longlong)
    unsigned = (ctypes.c_ubyte, ctypes.c_ushort, ctypes.c_uint, ctypes.c_ulong)
    unsigned += (ctypes.c_ulonglong,)
    by_size = {1: "b", 2: "h", 4: "i", 8: "q"}
    for t in signed:
        codes[t] = by_size[ctypes.sizeof(t)]
    for t in unsigned:
        codes[t] = by_size[ctypes.sizeof(t)].upper()
    return codes


# ctypes number types whose value ``rmp._core.SharedValue`` reads and writes in place.
_IN_PLACE = _in_place_codes()


class Synchronized(_core.SharedValue, SynchronizedBase):
    """A synchronized shared scalar. ``value``, ``get_lock()``, ``get_obj()`` and the
    context manager are implemented in Rust: ``v.value += 1`` under an rmp lock makes no
    Python-level call at all. Numbers of fixed-size C types are accessed in place; other
    types through their ctypes object, under the same lock."""

    # Raw descriptors of _core.SharedValue (src/py/fastcall.rs): the same Rust code as its
    # PyO3 getter, setter and method, without the generic trampolines.
    value = _core.sharedvalue_value
    get_lock = _core.sharedvalue_get_lock

    def __new__(cls, obj, lock=None, ctx=None):
        lock = _default_lock(lock, ctx)
        code = _IN_PLACE.get(type(obj), "")
        self = _core.SharedValue.__new__(
            cls, obj, lock, ctypes.addressof(obj), ctypes.sizeof(obj), code
        )
        self.acquire = lock.acquire
        self.release = lock.release
        return self

    def __init__(self, obj, lock=None, ctx=None):
        pass  # everything is set in __new__ (SynchronizedBase.__init__ must not run)

    def __reduce__(self):
        context.assert_spawning(self)
        return synchronized, (self._obj, self._lock)

    def __repr__(self):
        return "<%s wrapper for %s>" % (type(self).__name__, self._obj)


class SynchronizedArray(SynchronizedBase):
    def __len__(self):
        return len(self._obj)

    def __getitem__(self, i):
        with self:
            return self._obj[i]

    def __setitem__(self, i, value):
        with self:
            self._obj[i] = value

    def __getslice__(self, start, stop):
        with self:
            return self._obj[start:stop]

    def __setslice__(self, start, stop, values):
        with self:
            self._obj[start:stop] = values


class SynchronizedString(SynchronizedArray):
    value = make_property("value")
    raw = make_property("raw")
