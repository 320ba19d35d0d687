"""``rmp.Pool``, ``rmp.pool.ThreadPool`` and ``rmp.dummy.Pool``: the stdlib's API and semantics
(apply/map/imap/starmap and their async forms, AsyncResult and its states, callbacks, remote
tracebacks, ``MaybeEncodingError``, the default chunksize, ``maxtasksperchild``,
initializers, worker names, closing and terminating, the argument checks), under every start
method, from concurrent threads, with threads instead of processes; and rmp's additions that
are not about faults: pickling errors at the call site, ``progress=`` and ``buffersize=``.
Dead, killed and hung workers, Ctrl-C and parent death are in ``test_pool_faults.py``.

``RMP_TEST_IMPL=multiprocessing pytest tests/test_pool.py`` runs the same tests against the
stdlib (the rmp-only ones are skipped then): the semantics tested here are the stdlib's."""

from __future__ import annotations

import enum
import functools
import importlib
import itertools
import multiprocessing
import os
import pickle
import re
import threading
import time

import pytest
from _helpers import join_pool, pool_workers

import rmp

impl = importlib.import_module(os.environ.get("RMP_TEST_IMPL", "rmp"))
impl_pool = importlib.import_module(impl.__name__ + ".pool")
impl_dummy = importlib.import_module(impl.__name__ + ".dummy")

rmp_only = pytest.mark.skipif(impl is not rmp, reason="rmp behaviour: the stdlib differs")

pytestmark = pytest.mark.timeout(120)

PREFIX = {"fork": "Fork", "spawn": "Spawn", "forkserver": "ForkServer"}


#
# Functions run by the workers (module level: picklable under spawn)
#


def _square(x):
    return x * x


def _add(a, b):
    return a + b


def _kw(a, b=0, *, c=0):
    return (a, b, c)


def _identity(x):
    return x


def _sleep_then(x, seconds):
    time.sleep(seconds)
    return x


DELAYS = [0.3, 0.0, 0.2, 0.0, 0.1, 0.0]


def _delayed(x):
    """``x``, after ``DELAYS[x]``: the early items finish last."""
    time.sleep(DELAYS[x])
    return x


def _raise_value_error(x):
    raise ValueError(f"bad item {x}")


def _fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x * x


def _return_unpicklable(x):
    if x == 3:
        return threading.Lock()
    return x


def _make_bytes(n):
    return b"r" * n


class _Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("this exception cannot be pickled")


def _raise_unpicklable(x):
    raise _Unpicklable(x)


def _worker_info(_):
    me = multiprocessing.current_process()
    time.sleep(0.05)  # long enough for the other workers to take tasks too
    return me.name, me.daemon, os.getpid()


_init_count = 0
_init_args = None
_calls = 0
_barrier = None
_meet = ()


def _init(*args):
    global _init_count, _init_args
    _init_count += 1
    _init_args = args


def _me():
    """This process, told apart from any other that had its pid: (pid, start time)."""
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return os.getpid(), int(fields[19])  # field 22, counted after the command name


def _init_state(_):
    time.sleep(0.02)
    return _me(), _init_count, _init_args


def _count_calls(_):
    """(this process, how many calls it has run, this one included)."""
    global _calls
    _calls += 1
    return _me(), _calls


def _set_barrier(barrier, meet):
    global _barrier, _meet
    _barrier, _meet = barrier, meet


def _chunk_probe(x):
    """Records the call as ``_count_calls`` does; the items in ``_meet`` each wait for the
    other at the barrier, so they must run at the same time, in different chunks."""
    if x in _meet:
        _barrier.wait(30)
    return _count_calls(x)


#
# Helpers
#


def _workers(n, exclude=(), timeout=30.0):
    return pool_workers(impl, n, exclude, timeout)


def _joined(p):
    join_pool(impl, p)


SQUARES = [x * x for x in range(100)]


#
# apply, map, imap, starmap and their async forms
#


def test_apply_and_apply_async():
    with impl.Pool(2) as p:
        assert p.apply(_square, (7,)) == 49
        assert p.apply(_kw, (1,), {"b": 2, "c": 3}) == (1, 2, 3)
        assert p.apply(os.getpid) != os.getpid()
        r = p.apply_async(_add, (2, 3))
        assert r.get(timeout=60) == 5
        assert r.ready() and r.successful()
        assert p.apply_async(_kw, (1,), {"c": 5}).get(60) == (1, 0, 5)
        results = [p.apply_async(_square, (i,)) for i in range(50)]
        assert [r.get(60) for r in results] == SQUARES[:50]
    _joined(p)


def test_map_starmap_and_their_async_forms():
    with impl.Pool(2) as p:
        assert p.map(_square, range(100)) == SQUARES
        assert p.map(_square, range(100), chunksize=1) == SQUARES
        assert p.map(_square, range(100), 7) == SQUARES
        assert p.map(_square, (x for x in range(100))) == SQUARES  # any iterable
        assert p.map(_square, []) == []
        assert p.map_async(_square, range(100)).get(60) == SQUARES
        assert p.map_async(_square, range(100), 3).get(60) == SQUARES
        pairs = [(i, 10 * i) for i in range(60)]
        assert p.starmap(_add, pairs) == [11 * i for i in range(60)]
        assert p.starmap(_add, iter(pairs), chunksize=4) == [11 * i for i in range(60)]
        assert p.starmap_async(_add, pairs).get(60) == [11 * i for i in range(60)]
        assert p.starmap(_add, []) == []
        m = p.map_async(_square, range(10))
        m.wait(60)
        assert m.ready() and m.successful() and m.get(0) == SQUARES[:10]
    _joined(p)


def test_imap_and_imap_unordered():
    with impl.Pool(2) as p:
        assert list(p.imap(_square, range(100))) == SQUARES
        assert list(p.imap(_square, range(100), chunksize=8)) == SQUARES
        assert list(p.imap(_square, iter(range(100)), 3)) == SQUARES
        assert sorted(p.imap_unordered(_square, range(100))) == SQUARES
        assert sorted(p.imap_unordered(_square, iter(range(100)), chunksize=9)) == SQUARES
        assert list(p.imap(_square, [])) == []
        assert list(p.imap_unordered(_square, [])) == []
        # imap keeps the order even when results come back out of order.
        assert list(p.imap(_delayed, range(6))) == list(range(6))
        assert p.map(_delayed, range(6), chunksize=1) == list(range(6))
        pairs = list(enumerate(DELAYS))
        assert p.starmap_async(_sleep_then, pairs, 1).get(60) == list(range(6))
        # An iterator's next() takes a timeout.
        it = p.imap(_square, range(5))
        assert [it.next(timeout=60) for _ in range(5)] == SQUARES[:5]
        with pytest.raises(StopIteration):
            it.next(timeout=60)
        it = p.imap_unordered(_square, range(5))
        assert sorted(it.next(60) for _ in range(5)) == SQUARES[:5]
        with pytest.raises(StopIteration):
            next(it)
    _joined(p)


def _broken_source():
    yield 1
    yield 2
    raise RuntimeError("the source broke")


def test_imap_of_an_iterator_that_raises():
    with impl.Pool(2) as p:
        it = p.imap(_square, _broken_source())
        assert it.next(60) == 1
        assert it.next(60) == 4
        with pytest.raises(RuntimeError, match="the source broke"):
            it.next(60)
        assert p.map(_square, range(5)) == SQUARES[:5]
    _joined(p)


def test_imap_next_timeout_and_chunksize_check():
    with impl.Pool(1) as p:
        it = p.imap(functools.partial(_sleep_then, seconds=1.5), [1, 2])
        t0 = time.monotonic()
        with pytest.raises(multiprocessing.TimeoutError):
            it.next(timeout=0.1)
        assert time.monotonic() - t0 < 1.2
        assert it.next(timeout=60) == 1
        with pytest.raises(ValueError):
            p.imap(_square, [1, 2], chunksize=0)
        with pytest.raises(ValueError):
            p.imap_unordered(_square, [1, 2], chunksize=-1)
    _joined(p)


#
# AsyncResult: get(timeout), ready, successful, wait, callbacks, errors
#


def test_timeout_error_is_the_stdlibs():
    assert impl.TimeoutError is multiprocessing.TimeoutError
    assert rmp.TimeoutError is multiprocessing.TimeoutError
    assert rmp.ProcessError is multiprocessing.ProcessError


def test_async_result_states_and_get_timeout():
    with impl.Pool(1) as p:
        r = p.apply_async(_sleep_then, ("done", 1.5))
        assert not r.ready()
        with pytest.raises(ValueError):
            r.successful()  # not ready yet
        t0 = time.monotonic()
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(timeout=0.2)
        waited = time.monotonic() - t0
        assert 0.15 <= waited < 1.2
        t0 = time.monotonic()
        assert r.wait(0.2) is None
        assert 0.15 <= time.monotonic() - t0 < 1.2 and not r.ready()
        r.wait(60)
        assert r.ready() and r.successful()
        assert r.get() == "done" and r.get(0) == "done"
        bad = p.apply_async(_raise_value_error, (1,))
        bad.wait(60)
        assert bad.ready() and not bad.successful()
        with pytest.raises(ValueError, match="bad item 1"):
            bad.get(0)
        m = p.map_async(functools.partial(_sleep_then, seconds=1.0), [1], chunksize=1)
        with pytest.raises(ValueError):
            m.successful()
        with pytest.raises(multiprocessing.TimeoutError):
            m.get(0.05)
    _joined(p)


def test_callbacks_run_in_the_parent():
    me = os.getpid()
    got, errors = [], []

    def callback(value):
        got.append((os.getpid(), value))

    def error_callback(exc):
        errors.append((os.getpid(), exc))

    with impl.Pool(2) as p:
        assert p.apply_async(_square, (3,), callback=callback).get(60) == 9
        # The callback runs before get() returns, as in the stdlib.
        assert got == [(me, 9)]
        r = p.map_async(_square, range(10), callback=callback)
        assert r.get(60) == SQUARES[:10] and got[-1] == (me, SQUARES[:10])
        r = p.starmap_async(_add, [(1, 2), (3, 4)], callback=callback)
        assert r.get(60) == [3, 7] and got[-1] == (me, [3, 7])
        r = p.apply_async(
            _raise_value_error, (5,), callback=callback, error_callback=error_callback
        )
        with pytest.raises(ValueError):
            r.get(60)
        assert len(errors) == 1 and errors[0][0] == me
        assert isinstance(errors[0][1], ValueError) and "bad item 5" in str(errors[0][1])
        r = p.map_async(
            functools.partial(_fail_on, bad=4),
            range(10),
            callback=callback,
            error_callback=error_callback,
        )
        with pytest.raises(ValueError):
            r.get(60)
        assert len(errors) == 2 and isinstance(errors[1][1], ValueError)
        assert len(got) == 3  # no callback for a failure
    _joined(p)


def _check_remote(exc):
    cause = exc.__cause__
    assert isinstance(cause, impl_pool.RemoteTraceback), repr(cause)
    text = str(cause)
    assert "Traceback (most recent call last)" in text
    assert "_raise_value_error" in text or "_fail_on" in text
    assert "ValueError: bad item" in text


def test_worker_exceptions_carry_the_remote_traceback():
    with impl.Pool(2) as p:
        with pytest.raises(ValueError, match="bad item 1") as ei:
            p.apply(_raise_value_error, (1,))
        _check_remote(ei.value)
        with pytest.raises(ValueError, match="bad item 2") as ei:
            p.apply_async(_raise_value_error, (2,)).get(60)
        _check_remote(ei.value)
        with pytest.raises(ValueError, match="bad item 37") as ei:
            p.map(functools.partial(_fail_on, bad=37), range(100))
        _check_remote(ei.value)
        with pytest.raises(ValueError, match="bad item 3") as ei:
            p.starmap(_fail_on, [(i, 3) for i in range(10)])
        _check_remote(ei.value)
        it = p.imap(functools.partial(_fail_on, bad=3), range(6))
        assert [it.next(60) for _ in range(3)] == [0, 1, 4]
        with pytest.raises(ValueError, match="bad item 3") as ei:
            it.next(60)
        _check_remote(ei.value)
        assert [it.next(60) for _ in range(2)] == [16, 25]  # chunksize 1: the rest follows
        failed = 0
        it = p.imap_unordered(functools.partial(_fail_on, bad=2), range(6))
        got = []
        for _ in range(6):
            try:
                got.append(it.next(60))
            except ValueError:
                failed += 1
        assert sorted(got) == [0, 1, 9, 16, 25] and failed == 1
        assert p.map(_square, range(10)) == SQUARES[:10]  # the pool goes on
    _joined(p)


def test_unpicklable_result_raises_maybe_encoding_error_and_the_pool_goes_on():
    with impl.Pool(2) as p:
        with pytest.raises(impl_pool.MaybeEncodingError) as ei:
            p.apply(_return_unpicklable, (3,))
        assert "Error sending result" in str(ei.value)
        with pytest.raises(impl_pool.MaybeEncodingError):
            p.map(_return_unpicklable, range(10))
        it = p.imap(_return_unpicklable, range(5))
        assert [it.next(60) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(impl_pool.MaybeEncodingError):
            it.next(60)
        assert it.next(60) == 4
        with pytest.raises(impl_pool.MaybeEncodingError):
            p.apply(_raise_unpicklable, (1,))  # an exception that cannot be pickled
        assert p.map(_square, range(100)) == SQUARES
        assert p.apply(_square, (4,)) == 16
    _joined(p)


def test_a_pool_cannot_be_pickled_and_has_the_stdlibs_repr():
    with impl.Pool(2) as p:
        with pytest.raises(NotImplementedError):
            pickle.dumps(p)
        assert re.fullmatch(r"<[\w.]+\.Pool state=RUN pool_size=2>", repr(p)), repr(p)
        p.close()
        assert "state=CLOSE" in repr(p)
    _joined(p)


def test_large_arguments_and_results():
    """Messages larger than any ring or pipe buffer, both ways, many at once."""
    big = bytes(range(256)) * (5 << 12)  # 5 MiB
    with impl.Pool(2) as p:
        assert p.apply(_identity, (big,)) == big
        assert p.apply(_make_bytes, (6 << 20,)) == b"r" * (6 << 20)
        sizes = [(i * 7919) % (300 << 10) for i in range(60)]  # up to 300 KiB, 9 MB in all
        got = p.map(_make_bytes, sizes, chunksize=1)
        assert [len(g) for g in got] == sizes and all(g == b"r" * len(g) for g in got)
        args = [bytes([i]) * s for i, s in enumerate(sizes)]
        assert p.map(len, args) == sizes
        assert list(p.imap(len, iter(args))) == sizes
        assert sorted(p.imap_unordered(_identity, args, 5)) == sorted(args)
    _joined(p)


class _Color(enum.IntEnum):
    RED = 1
    BLUE = 2


class _MyFloat(float):
    pass


def _types_and_values(xs):
    return [(type(x).__name__, repr(x)) for x in xs]


def _half_as_float(x):
    return x / 2


def _is_even(x):
    return x % 2 == 0


def _grow(x):
    return x * 2**40 if x == 77 else x


def test_map_chunks_of_numbers_keep_their_exact_types_and_values():
    """Map chunks and results that are lists of exact ints or floats travel packed (rmp);
    anything else in a chunk (a bool, an int subclass, a float subclass, a numpy scalar, an
    int beyond 64 bits) sends that chunk pickled, so every item comes back as it was."""
    np = pytest.importorskip("numpy")
    ints = list(range(-500, 500)) + [2**63 - 1, -(2**63)]
    floats = [0.5, -0.0, float("inf"), float("-inf"), 5e-324, 1e308] * 30
    with impl.Pool(2) as p:
        assert _types_and_values(p.map(_identity, ints, 50)) == _types_and_values(ints)
        got = p.map(_identity, floats, 20)
        assert _types_and_values(got) == _types_and_values(floats)
        nan = p.map(_identity, [float("nan")] * 20, 10)
        assert all(isinstance(x, float) and x != x for x in nan)
        for odd in (True, _Color.BLUE, _MyFloat(1.5), np.int64(7), 2**64, 1.5, "s", None):
            items = list(range(40))
            items[23] = odd
            got = p.map(_identity, items, 16)
            assert _types_and_values(got) == _types_and_values(items), odd
            assert _types_and_values(p.map(_identity, tuple(items), 16)) == _types_and_values(items)
        # Results: floats from ints, bools from ints, one big int among ints.
        assert p.map(_half_as_float, range(100), 30) == [x / 2 for x in range(100)]
        evens = p.map(_is_even, list(range(100)), 30)
        assert evens == [x % 2 == 0 for x in range(100)] and {type(e) for e in evens} == {bool}
        grown = p.map(_grow, list(range(100)), 30)
        assert grown == [_grow(x) for x in range(100)]
        # imap chunks too, from a list and from a lazy iterator.
        assert list(p.imap(_identity, ints, 64)) == ints
        assert list(p.imap(_identity, iter(ints), 64)) == ints
        assert sorted(p.imap_unordered(_half_as_float, iter(range(300)), 64)) == [
            x / 2 for x in range(300)
        ]
        # A big map, default chunksize (packed both ways).
        n = 300_000
        assert p.map(_identity, list(range(n))) == list(range(n))
    _joined(p)


def test_many_small_tasks():
    n = 20_000
    with impl.Pool(2) as p:
        assert p.map(_square, range(n), chunksize=1) == [x * x for x in range(n)]
        assert sum(p.imap_unordered(_square, range(n))) == sum(x * x for x in range(n))
        results = [p.apply_async(_square, (i,)) for i in range(2000)]
        assert [r.get(60) for r in results] == [i * i for i in range(2000)]
    _joined(p)


#
# Chunks, maxtasksperchild, initializer
#


def _check_chunks(results, chunksize):
    """Each chunk of ``chunksize`` consecutive items ran in one process, one call after the
    other."""
    for start in range(0, len(results), chunksize):
        chunk = results[start : start + chunksize]
        pids = {pid for pid, _ in chunk}
        assert len(pids) == 1, f"chunk at {start} ran in {pids}"
        calls = [n for _, n in chunk]
        assert calls == list(range(calls[0], calls[0] + len(chunk))), (start, calls)


@pytest.mark.parametrize(
    "n,chunksize,expected",
    [(100, None, 13), (16, None, 2), (7, None, 1), (100, 9, 9)],
    ids=["100-default", "16-default", "7-default", "100-explicit-9"],
)
def test_default_chunksize_rule(n, chunksize, expected):
    """Without a chunksize, map cuts the input into chunks of ceil(n / (4 * processes)):
    13 for 100 items over 2 workers. Items ``0`` and ``expected`` wait for each other, so
    they must be in different chunks (no larger chunks); the items of each chunk run in one
    process in a row (no smaller chunks)."""
    barrier = impl.Barrier(2)
    with impl.Pool(2, initializer=_set_barrier, initargs=(barrier, (0, expected))) as p:
        results = p.map(_chunk_probe, range(n), chunksize)
        _check_chunks(results, expected)
        results = p.map_async(_chunk_probe, range(n), chunksize).get(60)
        _check_chunks(results, expected)
    _joined(p)


def test_maxtasksperchild_replaces_workers():
    with impl.Pool(2, initializer=_init, initargs=("again",), maxtasksperchild=2) as p:
        results = p.map(_count_calls, range(12), chunksize=1)
        procs = {me for me, _ in results}
        assert len(procs) >= 6  # at most two tasks per process
        assert max(n for _, n in results) <= 2
        # A worker that ran one task of the first map may run one of the next; one that ran
        # two is gone. (Counts are per process, across both maps.)
        more = p.map(_count_calls, range(12), chunksize=1)
        assert max(n for _, n in more) <= 2
        exhausted = {me for me, n in results if n == 2}
        assert exhausted and not {me for me, _ in more} & exhausted
        states = p.map(_init_state, range(6), chunksize=1)
        assert all(count == 1 and args == ("again",) for _, count, args in states)
        _workers(2)
    _joined(p)


def test_initializer_runs_once_per_worker():
    with impl.Pool(3, initializer=_init, initargs=(1, "two", [3])) as p:
        states = p.map(_init_state, range(60), chunksize=1)
        assert {me[0] for me, _, _ in states} <= _workers(3)
        assert all(count == 1 and args == (1, "two", [3]) for _, count, args in states)
        assert p.apply(_init_state, (0,))[1] == 1
    _joined(p)
    with impl.Pool(1) as p:
        assert p.apply(_init_state, (0,))[1:] == (0, None)  # no initializer: never run
    _joined(p)


#
# Argument checks and the pool's states
#


def test_processes_argument():
    for bad in (0, -1):
        with pytest.raises(ValueError):
            impl.Pool(bad)
    with pytest.raises(TypeError):
        impl.Pool(1, initializer=5)
    for bad in (0, -2, "2"):
        with pytest.raises(ValueError):
            impl.Pool(1, maxtasksperchild=bad)
    with impl.Pool() as p:  # defaults to the number of CPUs
        assert len(_workers(os.cpu_count() or 1)) == (os.cpu_count() or 1)
    _joined(p)
    with impl.Pool(processes=3) as p:
        assert len(_workers(3)) == 3
        assert p.map(_square, range(10)) == SQUARES[:10]
    _joined(p)


def _all_calls(p):
    return [
        lambda: p.apply(_square, (1,)),
        lambda: p.apply_async(_square, (1,)),
        lambda: p.map(_square, [1]),
        lambda: p.map_async(_square, [1]),
        lambda: p.starmap(_add, [(1, 2)]),
        lambda: p.starmap_async(_add, [(1, 2)]),
        lambda: p.imap(_square, [1]),
        lambda: p.imap_unordered(_square, [1]),
    ]


def test_a_closed_or_terminated_pool_refuses_work():
    p = impl.Pool(2)
    assert p.map(_square, range(3)) == [0, 1, 4]
    with pytest.raises(ValueError):
        p.join()  # still running
    p.close()
    for call in _all_calls(p):
        with pytest.raises(ValueError):
            call()
    _joined(p)
    p = impl.Pool(2)
    p.terminate()
    for call in _all_calls(p):
        with pytest.raises(ValueError):
            call()
    _joined(p)
    p.close()  # harmless afterwards
    p.terminate()


def test_map_of_a_non_iterable_raises_type_error():
    with impl.Pool(1) as p:
        with pytest.raises(TypeError):
            p.map(_square, 5)
        with pytest.raises(TypeError):
            p.map_async(_square, None)
        with pytest.raises(TypeError):
            p.starmap(_add, 5)
        with pytest.raises(TypeError):
            list(p.imap(_square, 5))
        with pytest.raises(TypeError):
            list(p.imap_unordered(_square, 5))
        with pytest.raises(TypeError):
            p.starmap(_add, [1, 2])  # items that are not argument tuples
        assert p.map(_square, range(3)) == [0, 1, 4]
    _joined(p)


def test_close_then_join_finishes_the_queued_work():
    p = impl.Pool(2)
    results = [p.apply_async(_sleep_then, (i, 0.1)) for i in range(8)]
    m = p.map_async(_square, range(100))
    it = p.imap(_square, (x for x in range(100)))  # a lazy source, still being read
    unordered = p.imap_unordered(_square, iter(range(50)), chunksize=4)
    p.close()
    _joined(p)
    assert [r.get(0) for r in results] == list(range(8))
    assert m.get(0) == SQUARES
    assert list(it) == SQUARES
    assert sorted(unordered) == SQUARES[:50]


def test_the_context_manager_terminates():
    with impl.Pool(2) as p:
        assert p.apply(_square, (2,)) == 4
        p.apply_async(time.sleep, (60,))
        p.apply_async(time.sleep, (60,))
        time.sleep(0.3)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 10  # terminated, not joined
    with pytest.raises(ValueError):
        p.map(_square, [1])
    _joined(p)
    with pytest.raises(ValueError):
        with p:  # a terminated pool cannot be entered again
            pass


#
# Start methods, worker names, the context argument
#


def test_the_api_under_every_start_method(start_method):
    ctx = impl.get_context(start_method)
    with ctx.Pool(2, initializer=_init, initargs=("m",)) as p:
        assert p.map(_square, range(100)) == SQUARES
        assert p.apply_async(_add, (2, 3)).get(60) == 5
        assert p.apply(_kw, (1,), {"c": 2}) == (1, 0, 2)
        assert list(p.imap(_square, range(20))) == SQUARES[:20]
        assert sorted(p.imap_unordered(_square, range(20), 3)) == SQUARES[:20]
        assert p.starmap(_add, [(1, 2), (3, 4)]) == [3, 7]
        with pytest.raises(ValueError, match="bad item 4") as ei:
            p.apply(_raise_value_error, (4,))
        _check_remote(ei.value)
        with pytest.raises(impl_pool.MaybeEncodingError):
            p.apply(_return_unpicklable, (3,))
        states = p.map(_init_state, range(10), chunksize=1)
        assert all(count == 1 and args == ("m",) for _, count, args in states)
        got = []
        p.map_async(_square, range(5), callback=got.append).get(60)
        assert got == [SQUARES[:5]]
    _joined(p)


def test_worker_names_and_daemonic(start_method):
    ctx = impl.get_context(start_method)
    pattern = re.compile(rf"{PREFIX[start_method]}PoolWorker-\d+")
    with ctx.Pool(2) as p:
        pids = _workers(2)
        for child in impl.active_children():
            assert pattern.fullmatch(child.name), child.name
            assert child.daemon
        infos = p.map(_worker_info, range(8), chunksize=1)
        for name, daemon, pid in infos:
            assert pattern.fullmatch(name), name
            assert daemon and pid in pids
    _joined(p)


def test_the_context_argument_of_pool_pool():
    ctx = impl.get_context("spawn")
    with impl_pool.Pool(2, context=ctx) as p:
        names = {name for name, _, _ in p.map(_worker_info, range(4), chunksize=1)}
        assert all(re.fullmatch(r"SpawnPoolWorker-\d+", n) for n in names), names
        assert p.map(_square, range(10)) == SQUARES[:10]
    _joined(p)
    with impl_pool.Pool(1, None, (), None, impl.get_context("fork")) as p:  # positionally
        assert p.apply(_worker_info, (0,))[0].startswith("ForkPoolWorker-")
    _joined(p)


#
# From several threads at once
#


def test_concurrent_threads_share_a_pool():
    errors, results = [], {}

    def run(k):
        try:
            for rep in range(3):
                base = 1000 * k + rep
                got = p.map(_square, range(base, base + 200))
                results[(k, rep)] = got == [x * x for x in range(base, base + 200)]
                r = p.apply_async(_add, (k, rep)).get(60)
                results[(k, rep, "apply")] = r == k + rep
                got = list(p.imap(_square, range(base, base + 50), 5))
                results[(k, rep, "imap")] = got == [x * x for x in range(base, base + 50)]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    with impl.Pool(2) as p:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(100)
        assert not errors, errors
        assert len(results) == 36 and all(results.values()), results
    _joined(p)


#
# Threads instead of processes
#


@pytest.mark.parametrize("kind", ["pool.ThreadPool", "dummy.Pool"])
def test_thread_pools(kind):
    make = impl_pool.ThreadPool if kind == "pool.ThreadPool" else impl_dummy.Pool
    lock = threading.Lock()  # unpicklable, and fine with threads
    inits = []
    me = os.getpid()
    with make(3, _init_thread, (inits,)) as p:
        assert p.map(lambda x: x * 2, range(50)) == [2 * x for x in range(50)]
        assert p.apply(lambda: os.getpid()) == me
        assert p.apply_async(_identity, (lock,)).get(60) is lock
        assert p.map(_identity, [lock, lock]) == [lock, lock]
        assert list(p.imap(lambda x: x + 1, range(10))) == list(range(1, 11))
        assert sorted(p.imap_unordered(lambda x: -x, range(10), 3)) == sorted(-x for x in range(10))
        assert p.starmap(lambda a, b: (a, b), [(lock, 1)]) == [(lock, 1)]
        assert p.starmap_async(_add, [(1, 2)]).get(60) == [3]
        with pytest.raises(ValueError, match="bad item 1"):
            p.apply(_raise_value_error, (1,))
        with pytest.raises(multiprocessing.TimeoutError):
            p.apply_async(time.sleep, (1.0,)).get(0.05)
        got = []
        p.map_async(_square, range(4), callback=got.append).get(60)
        assert got == [[0, 1, 4, 9]]
    p.join()
    assert len(inits) == 3  # the initializer ran once per thread
    assert impl.active_children() == []  # threads, not processes
    with make(2) as p:
        p.close()
        p.join()
    with pytest.raises(ValueError):
        p.apply(_square, (1,))
    with pytest.raises(ValueError):
        make(0)


def _init_thread(inits):
    inits.append(threading.get_ident())


#
# rmp: unpicklable input raises at the call site
#

_UNPICKLABLE = (pickle.PicklingError, AttributeError, TypeError)


def _bad_calls(p):
    lock = threading.Lock()
    many = list(range(60)) + [lock] + list(range(40))  # deep inside a later chunk

    def anon(x):
        return x

    return {
        "apply_async-function": lambda: p.apply_async(lambda: 0),
        "apply_async-argument": lambda: p.apply_async(_identity, (lock,)),
        "apply_async-keyword": lambda: p.apply_async(_kw, (1,), {"b": lock}),
        "apply-argument": lambda: p.apply(_identity, (lock,)),
        "map-function": lambda: p.map(anon, [1, 2]),
        "map-argument": lambda: p.map(_identity, many),
        "map_async-argument": lambda: p.map_async(_identity, many, chunksize=7),
        "starmap-function": lambda: p.starmap(lambda a, b: a, [(1, 2)]),
        "starmap-argument": lambda: p.starmap(_add, [(1, 2), (1, lock)]),
        "starmap_async-argument": lambda: p.starmap_async(_add, [(1, lock)]),
        "imap-function": lambda: p.imap(anon, [1, 2]),
        "imap-argument": lambda: p.imap(_identity, many),
        "imap-chunked-argument": lambda: p.imap(_identity, many, chunksize=4),
        "imap_unordered-argument": lambda: p.imap_unordered(_identity, many),
    }


@rmp_only
def test_unpicklable_input_raises_at_the_call_site_and_the_pool_goes_on():
    with impl.Pool(2) as p:
        for name, call in _bad_calls(p).items():
            t0 = time.monotonic()
            with pytest.raises(_UNPICKLABLE):
                call()
                pytest.fail(f"{name}: no error at the call site")
            assert time.monotonic() - t0 < 10, name
            assert p.apply(_square, (3,)) == 9, name  # nothing stuck in front
        assert p.map(_square, range(100)) == SQUARES
        assert list(p.imap(_square, range(10))) == SQUARES[:10]
    _joined(p)


#
# rmp: progress=
#

PROGRESS_CALLS = {
    "map": lambda p, **kw: p.map(_square, range(40), **kw),
    "map_async": lambda p, **kw: p.map_async(_square, range(40), **kw).get(60),
    "starmap": lambda p, **kw: [a * a for a in p.starmap(_add, [(i, 0) for i in range(40)], **kw)],
    "starmap_async": lambda p, **kw: [
        a * a for a in p.starmap_async(_add, [(i, 0) for i in range(40)], **kw).get(60)
    ],
    "imap": lambda p, **kw: list(p.imap(_square, range(40), **kw)),
    "imap_unordered": lambda p, **kw: sorted(p.imap_unordered(_square, range(40), **kw)),
}


@rmp_only
@pytest.mark.parametrize("method", list(PROGRESS_CALLS))
def test_progress_draws_a_bar_on_stderr(method, capfd):
    with impl.Pool(2) as p:
        capfd.readouterr()
        assert PROGRESS_CALLS[method](p, progress=True) == SQUARES[:40]
        assert PROGRESS_CALLS[method](p, progress=True, chunksize=3) == SQUARES[:40]
    _joined(p)
    out, err = capfd.readouterr()
    assert out == ""
    assert err.strip(), "no progress bar drawn"
    assert "40" in err  # the total is shown


@rmp_only
def test_no_progress_by_default(capfd):
    with impl.Pool(2) as p:
        capfd.readouterr()
        for call in PROGRESS_CALLS.values():
            assert call(p) == SQUARES[:40]
            assert call(p, progress=None) == SQUARES[:40]
    _joined(p)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


#
# rmp: buffersize=
#


class _CountingSource:
    """An iterable that records how many items have been taken from it."""

    def __init__(self, n=None):
        self.n = n
        self.taken = 0

    def __iter__(self):
        for i in itertools.count() if self.n is None else range(self.n):
            self.taken += 1
            yield i


@rmp_only
@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
@pytest.mark.parametrize("chunksize", [1, 3])
def test_buffersize_bounds_the_tasks_in_flight(method, chunksize):
    """With a slow consumer, at most ``buffersize`` chunks are submitted and not yet yielded:
    the source is read no further than that (as the stdlib's ``buffersize``, 3.14+)."""
    n, buffersize = 30, 2
    src = _CountingSource(n)
    with impl.Pool(2) as p:
        it = getattr(p, method)(_square, src, chunksize=chunksize, buffersize=buffersize)
        got, ahead = [], 0
        for _ in range(n):
            got.append(next(it))
            time.sleep(0.05)  # a slow consumer: the pool has all the time to run ahead
            started_chunks = -(-len(got) // chunksize)  # the chunks yielded from so far
            bound = (started_chunks + buffersize) * chunksize
            assert src.taken <= bound, f"{src.taken} taken with {len(got)} yielded"
            ahead = max(ahead, src.taken - len(got))
        with pytest.raises(StopIteration):
            next(it)
        assert ahead >= buffersize * chunksize - 1  # it did run ahead of the consumer
        results = got if method == "imap" else sorted(got)
        assert results == SQUARES[:n]
    _joined(p)


@rmp_only
def test_buffersize_makes_an_infinite_source_usable():
    src = _CountingSource()
    with impl.Pool(2) as p:
        it = p.imap(_square, src, buffersize=4)
        assert [next(it) for _ in range(20)] == SQUARES[:20]
        time.sleep(0.3)
        assert src.taken <= 25
        it2 = p.imap_unordered(_square, _CountingSource(), chunksize=2, buffersize=3)
        assert len({next(it2) for _ in range(20)}) == 20
    _joined(p)  # the readers of the infinite sources stopped with the pool


@rmp_only
def test_buffersize_is_checked():
    with impl.Pool(1) as p:
        for method in ("imap", "imap_unordered"):
            for bad in ("2", 2.0, [2]):
                with pytest.raises(TypeError):
                    getattr(p, method)(_square, [1], buffersize=bad)
            for bad in (0, -1):
                with pytest.raises(ValueError):
                    getattr(p, method)(_square, [1], buffersize=bad)
            assert list(getattr(p, method)(_square, [3], buffersize=None)) == [9]
            assert list(getattr(p, method)(_square, [3], buffersize=1)) == [9]
    _joined(p)


#
# The stdlib's Pool on an rmp context (its queues are then rmp's SimpleQueue)
#


@rmp_only
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_the_stdlibs_pool_runs_on_an_rmp_context(method):
    import multiprocessing.pool as std_pool

    p = std_pool.Pool(2, context=rmp.get_context(method))
    try:
        assert p.map(_square, range(20)) == SQUARES[:20]
        assert sorted(p.imap_unordered(_square, range(5))) == SQUARES[:5]
    finally:
        # terminate() takes the task queue's `_rlock` (rmp's SimpleQueue has one for it).
        p.terminate()
        p.join()
    p = std_pool.Pool(2, context=rmp.get_context(method))
    assert p.apply(_square, (7,)) == 49
    p.close()
    p.join()
    assert rmp.active_children() == []


class _Counted:
    alive = 0

    def __new__(cls):  # unpickled copies are counted too (unpickling skips __init__)
        cls.alive += 1
        return object.__new__(cls)

    def __del__(self):
        type(self).alive -= 1


def _identity(x):
    return x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["processes", "threads"])
def test_task_arguments_and_results_are_not_kept_alive(kind):
    """Once a map is done, neither its arguments nor its results (the very same objects,
    with threads) are held by the pool's threads, encoders or queues."""
    import gc
    import weakref

    pool = impl.Pool(2) if kind == "processes" else impl_pool.ThreadPool(2)
    with pool as p:
        objs = [_Counted() for _ in range(10)]
        refs = [weakref.ref(o) for o in objs]
        out = p.map(_identity, objs)
        assert len(out) == 10
        r = p.apply_async(_identity, (objs[0],))
        assert r.get(60) is not None
        del objs, out, r
        deadline = time.monotonic() + 10
        while any(ref() is not None for ref in refs) or _Counted.alive:
            assert time.monotonic() < deadline, "task arguments or results kept alive"
            gc.collect()
            time.sleep(0.02)
