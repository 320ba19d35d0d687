"""rmp's Value, Array, RawValue, RawArray and ``rmp.sharedctypes`` against the stdlib's: every
typecode, ctypes types and structures, locks, ``copy``, ``synchronized``, the buffer protocol
(numpy views without copies), bad input, and children of every start method sharing the
memory (``ctx`` runs those tests for ``multiprocessing`` and ``rmp``)."""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.sharedctypes
import subprocess
import sys
import textwrap
import threading

import pytest

import rmp
import rmp.reduction
import rmp.sharedctypes
import rmp.synchronize

pytestmark = pytest.mark.timeout(120)

IMPLEMENTATIONS = (multiprocessing, rmp)
TYPECODES = sorted(multiprocessing.sharedctypes.typecode_to_type)

# A non-zero value of each typecode, at the edge of its range where that says something.
SAMPLES = {
    "c": b"x",
    "u": "\u00e9",
    "b": -128,
    "B": 255,
    "h": -32768,
    "H": 65535,
    "i": -(2**31),
    "I": 2**32 - 1,
    "l": -7,
    "L": 2**63,
    "q": -(2**63),
    "Q": 2**64 - 1,
    "f": 1.5,
    "d": 2.25,
}


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]


def _outcome(fn):
    """``('ok', result)`` or ``('error', exception class, message)``."""
    try:
        return ("ok", fn())
    except Exception as e:
        return ("error", type(e), str(e))


def _same_in_both(fn):
    """``fn(mp)``'s outcome for the stdlib and for rmp, asserted equal; returns it."""
    std, ours = (_outcome(lambda mp=mp: fn(mp)) for mp in IMPLEMENTATIONS)
    assert ours == std
    return ours


def _free_for_another_thread(lock):
    """Whether another thread could take ``lock`` now (it gives it back at once)."""
    got = []

    def probe():
        if lock.acquire(False):
            got.append(True)
            lock.release()

    t = threading.Thread(target=probe)
    t.start()
    t.join(30)
    return bool(got)


def test_rmp_knows_every_stdlib_typecode():
    assert rmp.sharedctypes.typecode_to_type == multiprocessing.sharedctypes.typecode_to_type
    assert set(SAMPLES) == set(TYPECODES)


@pytest.mark.parametrize("tc", TYPECODES)
def test_value_of_every_typecode(tc):
    x = SAMPLES[tc]

    def facts(mp):
        zero, v, raw = mp.Value(tc), mp.Value(tc, x), mp.RawValue(tc, x)
        before = (zero.value, v.value, raw.value, repr(v), repr(raw), repr(mp.RawValue(tc)))
        types = (type(v).__name__, type(v.get_obj()), type(raw), type(v.get_lock()).__name__)
        zero.value = x
        raw.value = zero.value
        v.get_obj().value = mp.RawValue(tc).value  # through the raw object: zero again
        return before, types, (zero.value, raw.value, v.value)

    outcome = _same_in_both(facts)
    assert outcome[0] == "ok"
    assert outcome[1][1][1] is multiprocessing.sharedctypes.typecode_to_type[tc]


@pytest.mark.parametrize("tc", TYPECODES)
def test_array_of_every_typecode(tc):
    x = SAMPLES[tc]

    def facts(mp):
        out = []
        for make in (mp.Array, mp.RawArray):
            zeros, arr = make(tc, 4), make(tc, [x, x, x])
            out.append((zeros[:], arr[:], len(zeros), len(arr), arr[0], arr[-1]))
            out.append((arr[1:3], arr[::2], arr[::-1], zeros[1:1], type(arr).__name__))
            zeros[1] = x
            zeros[2:4] = [x, x]
            out.append(zeros[:])
            out.append(_outcome(lambda z=zeros: z[4]))
            out.append(_outcome(lambda z=zeros: z.__setitem__(slice(0, 2), [x])))
        return out

    assert _same_in_both(facts)[0] == "ok"


def test_char_arrays_value_and_raw():
    def facts(mp):
        arr = mp.Array("c", b"hello")
        out = [type(arr).__name__, arr.value, arr.raw, len(arr), arr[:], arr[1]]
        arr.value = b"hi"
        out += [arr.value, arr.raw]
        arr.raw = b"abcde"
        out += [arr.value, arr.raw]
        out.append(_outcome(lambda: setattr(arr, "raw", b"toolong")))
        out.append(_outcome(lambda: setattr(arr, "value", b"toolong")))
        empty = mp.Array("c", 3)
        out += [empty.value, empty.raw]
        raw = mp.RawArray("c", b"abc")
        out += [type(raw).__name__, raw.value, raw.raw]
        return out

    outcome = _same_in_both(facts)
    assert outcome[1][:3] == ["SynchronizedString", b"hello", b"hello"]


@pytest.mark.parametrize(
    "type_, sample",
    [
        (ctypes.c_int16, -5),
        (ctypes.c_uint64, 2**64 - 1),
        (ctypes.c_bool, True),
        (ctypes.c_double, -0.5),
        (ctypes.c_longdouble, 1.25),
        (ctypes.c_size_t, 12345),
        (ctypes.c_wchar, "w"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_ctypes_types(type_, sample):
    def facts(mp):
        v, raw = mp.Value(type_, sample), mp.RawValue(type_, sample)
        arr = mp.Array(type_, [sample, sample])
        v.value = raw.value
        return (v.value, raw.value, arr[:], type(v.get_obj()), type(raw), type(arr).__name__)

    assert _same_in_both(facts)[0] == "ok"


def test_structures():
    def facts(mp):
        v, raw = mp.Value(Point, 1, 2.5), mp.RawValue(Point, 3, 4.5)
        out = [type(v).__name__, v.x, v.y, (raw.x, raw.y), type(v.get_obj()), type(raw)]
        v.x, v.y = 10, -1.0
        out.append((v.get_obj().x, v.get_obj().y))
        arr = mp.Array(Point, [(1, 2.0), (3, 4.0)])
        out.append([(p.x, p.y) for p in arr])
        arr[1] = Point(5, 6.0)
        arr[0].x = 7  # the element is a view into shared memory
        out.append([(p.x, p.y) for p in arr[:]])
        out.append((len(arr), type(arr).__name__, type(arr.get_obj()._type_)))
        out.append([(p.x, p.y) for p in mp.RawArray(Point, 2)])
        out.append(_outcome(lambda: mp.Value(Point, 1, 2.0, 3)))
        return out

    outcome = _same_in_both(facts)
    assert outcome[1][:3] == ["SynchronizedPoint", 1, 2.5]


def test_get_obj_get_lock_and_lock_argument(mp):
    v = mp.Value("i", 7)
    assert type(v.get_obj()) is ctypes.c_int and v.get_obj().value == 7
    assert repr(v) == "<Synchronized wrapper for c_int(7)>"
    lock = v.get_lock()
    assert type(lock).__name__ == "RLock" and repr(lock) == "<RLock(None, 0)>"
    if mp is rmp:
        assert isinstance(lock, rmp.synchronize.RLock)
    with v as entered:
        assert entered is True and repr(lock) == "<RLock(MainProcess, 1)>"
        v.value += 1  # the default lock is recursive
    assert v.acquire() is True
    v.release()
    assert v.value == 8
    assert type(mp.Value("i", lock=None).get_lock()).__name__ == "RLock"
    assert type(mp.Array("i", 2, lock=True).get_lock()).__name__ == "RLock"

    # lock=False: the raw ctypes object itself.
    raw = mp.Value("i", 3, lock=False)
    assert type(raw) is ctypes.c_int and raw.value == 3 and not hasattr(raw, "get_lock")
    raw_arr = mp.Array("d", [1.0, 2.0], lock=False)
    assert isinstance(raw_arr, ctypes.Array) and raw_arr._type_ is ctypes.c_double
    assert raw_arr[:] == [1.0, 2.0]

    # lock=<a lock>: that lock, recursive or not, of either implementation.
    for given in (mp.Lock(), mp.RLock(), multiprocessing.Lock(), rmp.Lock()):
        for obj in (mp.Value("i", 1, lock=given), mp.Array("i", [1, 2], lock=given)):
            assert obj.get_lock() is given
            assert obj.acquire == given.acquire and obj.release == given.release
            with obj:
                assert not _free_for_another_thread(given)  # held through the wrapper
            assert _free_for_another_thread(given)
        v = mp.Value("i", 1, lock=given)
        v.value += 1
        assert v.value == 2 and _free_for_another_thread(given)  # released after each access

    for bad in (lambda: mp.Value("i", lock="notalock"), lambda: mp.Array("i", 2, lock="notalock")):
        with pytest.raises(AttributeError, match="^'notalock' has no method 'acquire'$"):
            bad()


def test_value_access_inside_its_own_lock_and_from_another_thread(mp):
    # Inside `with v.get_lock():` each `v.value` takes the recursive lock again (rmp skips
    # that nested level): the depth the block sees stays 1 and the lock is free after it,
    # while another thread's access waits for the block to end.
    v = mp.Value("i", 0)
    lock = v.get_lock()
    seen = []
    with lock:
        t = threading.Thread(target=lambda: seen.append(v.value))
        t.start()
        for _ in range(100):
            v.value += 1
        assert repr(lock) == "<RLock(MainProcess, 1)>"
        t.join(0.2)
        assert t.is_alive() and seen == []  # blocked on the lock we hold
    t.join(10)
    assert seen == [100] and repr(lock) == "<RLock(None, 0)>"
    with lock, lock:
        v.value = 5
        assert v.value == 5 and repr(lock) == "<RLock(MainProcess, 2)>"
    assert _free_for_another_thread(lock)


def test_value_access_that_runs_python_code_takes_a_real_level(mp):
    # Storing an object that is not an exact int runs its __index__ under the lock: there the
    # recursive lock is held one level deeper, as in the stdlib (only an access that runs no
    # Python code may skip that level).
    v = mp.Value("i", 0)
    lock = v.get_lock()
    seen = []

    class Index:
        def __index__(self):
            seen.append(repr(lock))
            return 7

    with lock:
        v.value = Index()
    assert seen == ["<RLock(MainProcess, 2)>"] and v.value == 7
    assert repr(lock) == "<RLock(None, 0)>"


def test_value_with_a_foreign_lock_keeps_no_reference_to_what_it_returns(mp):
    # Whatever a foreign lock's acquire()/release() return is dropped at once, on every path
    # (an earlier fast path left such objects to be freed only by some later call).
    import weakref

    alive = weakref.WeakSet()

    class Token:
        pass

    class Foreign:
        def acquire(self, *args):
            t = Token()
            alive.add(t)
            return t

        def release(self):
            t = Token()
            alive.add(t)
            return t

    v = mp.Value("q", 0, lock=Foreign())
    for i in range(200):
        v.value = i
        assert v.value == i
    v.value = 2**70  # beyond 64 bits: through ctypes, which keeps the low bits
    assert v.value == 0 and len(alive) == 0


def test_value_cannot_be_deleted(mp):
    v = mp.Value("i", 1)
    with pytest.raises(AttributeError) as info:
        del v.value
    if sys.version_info >= (3, 11):
        assert str(info.value) == "property 'value' of 'Synchronized' object has no deleter"
    else:
        assert str(info.value) == "can't delete attribute"
    assert v.value == 1 and _free_for_another_thread(v.get_lock())


def test_copy(mp):
    sc = mp.sharedctypes
    raw = mp.RawArray("i", [1, 2, 3])
    dup = sc.copy(raw)
    assert type(dup) is type(raw) and dup[:] == [1, 2, 3]
    dup[0] = 100
    assert raw[0] == 1  # separate memory
    v = mp.Value("d", 2.5)
    dv = sc.copy(v.get_obj())
    assert type(dv) is ctypes.c_double and dv.value == 2.5
    dv.value = 0.0
    assert v.value == 2.5
    point = sc.copy(mp.RawValue(Point, 4, 8.0))
    assert (point.x, point.y) == (4, 8.0)
    assert sc.copy(mp.RawArray("c", b"ab")).raw == b"ab"


def test_copy_of_a_wrapper_fails_like_the_stdlib():
    _same_in_both(lambda mp: mp.sharedctypes.copy(mp.Value("i", 3)))


def test_synchronized(mp):
    sc = mp.sharedctypes
    v = sc.synchronized(mp.RawValue("i", 3))
    assert type(v).__name__ == "Synchronized" and v.value == 3
    assert type(v.get_lock()).__name__ == "RLock"
    lock = mp.Lock()
    arr = sc.synchronized(mp.RawArray("i", [1, 2]), lock)
    assert type(arr).__name__ == "SynchronizedArray" and arr.get_lock() is lock
    assert arr[:] == [1, 2]
    s = sc.synchronized(mp.RawArray("c", b"xy"))
    assert type(s).__name__ == "SynchronizedString" and s.value == b"xy"
    p = sc.synchronized(mp.RawValue(Point, 1, 2.0))
    assert type(p).__name__ == "SynchronizedPoint" and (p.x, p.y) == (1, 2.0)
    assert type(sc.synchronized(mp.RawValue(Point))) is type(p)  # one class per structure
    for wrapped in (v, arr, s, p, mp.Value("i"), mp.Array("d", 2), mp.Array("c", 2)):
        with pytest.raises(AssertionError, match="^object already synchronized$"):
            sc.synchronized(wrapped)


@pytest.mark.parametrize(
    "make",
    [
        lambda mp: mp.Value("i"),
        lambda mp: mp.Value(Point),
        lambda mp: mp.Array("i", 2),
        lambda mp: mp.Array("c", 2),
    ],
    ids=["Value", "Value(Structure)", "Array", "Array('c')"],
)
def test_wrappers_are_synchronized_base_instances(make):
    # Code that tells wrappers from raw objects does it as the stdlib's synchronized() does.
    for mp in IMPLEMENTATIONS:
        obj = make(mp)
        assert isinstance(obj, mp.sharedctypes.SynchronizedBase), (mp.__name__, type(obj))


@pytest.mark.parametrize(
    "make",
    [
        lambda mp: mp.RawValue("i", 1),
        lambda mp: mp.RawArray("d", 3),
        lambda mp: mp.RawValue(Point),
        lambda mp: mp.Value("i", 1),
        lambda mp: mp.Array("c", 3),
    ],
    ids=["RawValue", "RawArray", "RawValue(Structure)", "Value", "Array"],
)
def test_pickling_outside_spawning_is_refused(mp, make):
    obj = make(mp)
    with pytest.raises(
        RuntimeError, match="objects should only be shared between processes through inheritance"
    ):
        mp.reduction.ForkingPickler.dumps(obj)


@pytest.mark.parametrize(
    "bad",
    [
        lambda mp: mp.Value("x"),
        lambda mp: mp.RawValue("x"),
        lambda mp: mp.Array("x", 3),
        lambda mp: mp.RawArray("x", 3),
        lambda mp: mp.Array("i", -1),
        lambda mp: mp.RawArray("i", -1),
        lambda mp: mp.Array("i", 2.5),
        lambda mp: mp.Array("i", [1, "a"]),
        lambda mp: mp.Array("i", [1, 2, 3]).__setitem__(slice(0, 3), [1]),
        lambda mp: mp.Value("i", "a"),
        lambda mp: mp.Value("i", 1, 2),
        lambda mp: mp.Value("i", 1.5),
        lambda mp: setattr(mp.Value("i"), "value", None),
        lambda mp: setattr(mp.Value("d"), "value", "1"),
        lambda mp: setattr(mp.Value("c"), "value", b"ab"),
        lambda mp: setattr(mp.Value("u"), "value", "ab"),
        lambda mp: mp.Value("i", lock="notalock"),
    ],
)
def test_bad_input_fails_like_the_stdlib(bad):
    outcome = _same_in_both(bad)
    assert outcome[0] == "error"


def test_buffer_protocol():
    def facts(mp):
        arr = mp.Array("d", [1.0, 2.0, 3.0])
        view = memoryview(arr.get_obj())
        out = [view.format, view.itemsize, view.nbytes, view.shape, view.readonly]
        out.append(_outcome(view.tolist))  # '<d': memoryview cannot index it, in both
        doubles = view.cast("B").cast("d")
        doubles[1] = 20.0  # a view of the shared memory, not a copy
        out += [doubles.tolist(), arr[:]]
        ints = mp.Array("i", [1, 2])
        b = memoryview(ints.get_obj()).cast("B")
        b[:4] = (7).to_bytes(4, sys.byteorder)
        out += [ints[:], memoryview(mp.Value("q", 5).get_obj()).nbytes]
        return out

    assert _same_in_both(facts)[1][-3] == [1.0, 20.0, 3.0]


def test_numpy_views_share_the_memory(mp):
    np = pytest.importorskip("numpy")
    arr = mp.Array("d", [0.5, 1.5, 2.5])
    view = np.frombuffer(arr.get_obj())
    assert view.dtype == np.float64 and view.tolist() == [0.5, 1.5, 2.5]
    view[0] = 42.0
    assert arr[0] == 42.0
    arr[2] = -1.0
    assert view[2] == -1.0
    ints = np.frombuffer(mp.RawArray("i", 4), dtype=np.int32)
    ints += 3
    assert ints.tolist() == [3, 3, 3, 3]


#
# Children of every start method share the memory
#


def _child_modifies(v, arr, raw_v, raw_arr, text, point, big):
    with v.get_lock():
        v.value += 1
    for i in range(len(arr)):
        arr[i] = arr[i] * 10
    raw_v.value = raw_v.value + 0.5
    raw_arr[0] = raw_arr[1]
    text.value = text.value.upper()
    point.x, point.y = point.x + 1, point.y * 2
    big[len(big) - 1] = big[0] + 1.0


def _child_increments(v, times):
    for _ in range(times):
        with v.get_lock():
            v.value += 1


def _child_doubles_in_place(arr, ready, done):
    ready.set()
    with arr.get_lock():
        for i in range(len(arr)):
            arr[i] *= 2
    done.set()


def test_children_see_and_modify_the_same_memory(ctx):
    v, arr = ctx.Value("i", 41), ctx.Array("i", [1, 2, 3])
    raw_v, raw_arr = ctx.RawValue("d", 1.0), ctx.RawArray("h", [5, -6])
    text, point = ctx.Array("c", b"abc"), ctx.Value(Point, 1, 1.5)
    big = ctx.Array("d", 200_000)  # larger than half an rmp arena: an arena of its own
    big[0] = 7.0
    p = ctx.Process(target=_child_modifies, args=(v, arr, raw_v, raw_arr, text, point, big))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert v.value == 42 and arr[:] == [10, 20, 30]
    assert raw_v.value == 1.5 and raw_arr[:] == [-6, -6]
    assert text.value == b"ABC" and (point.x, point.y) == (2, 3.0)
    assert big[199_999] == 8.0


def test_children_increment_one_value_under_its_lock(ctx):
    v = ctx.Value("i", 0)
    procs = [ctx.Process(target=_child_increments, args=(v, 1000)) for _ in range(2)]
    for p in procs:
        p.start()
    _child_increments(v, 1000)
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert v.value == 3000


def test_numpy_write_is_seen_by_a_child(ctx):
    np = pytest.importorskip("numpy")
    arr = ctx.Array("d", 1000)
    view = np.frombuffer(arr.get_obj())
    view[:] = np.arange(1000.0)  # written through numpy, no copy
    ready, done = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_child_doubles_in_place, args=(arr, ready, done))
    p.start()
    p.join(60)
    assert p.exitcode == 0 and done.is_set()
    assert view.tolist() == (np.arange(1000.0) * 2).tolist()  # the child's writes, seen here


def test_a_block_freed_while_the_heap_is_busy_in_the_same_thread_does_not_deadlock():
    """The garbage collector may run a block's finalizer in the middle of ``malloc()`` on
    the same thread (Python 3.12+ collects at any bytecode boundary): that free must not
    wait for the heap's lock, which its own thread holds. (A fresh interpreter, so that a
    regression hangs a child with a timeout, not the test run.)"""
    code = textwrap.dedent(
        """
        import gc
        import rmp.heap

        heap = rmp.heap.BufferWrapper._heap
        block = rmp.heap.BufferWrapper(64)
        spare = heap.malloc(64)
        with heap._lock:  # as malloc() holds it when the collector runs a finalizer
            del block
            gc.collect()
            assert len(heap._pending) == 1  # deferred, not waited for
        again = heap.malloc(64)  # the next call frees it, then reuses the block
        assert not heap._pending
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
