"""`with lock:` through rmp's own `__enter__`/`__exit__` descriptors (src/py/withlock.rs).

A lock keeps the bindings of its last `with` for reuse instead of making two bound methods per
statement. These tests check that the reuse cannot be seen: bindings behave as bound methods
(they keep their lock alive, a cycle through one is collected, they are freed with their lock),
and `with` takes and gives back the lock whatever the nesting, threads and exceptions.
"""

from __future__ import annotations

import gc
import pickle
import sys
import threading
import weakref

import pytest
from _helpers import join_or_kill

import rmp
from rmp import synchronize

KINDS = {
    "Lock": rmp.Lock,
    "RLock": rmp.RLock,
    "Semaphore": lambda: rmp.Semaphore(2),
    "BoundedSemaphore": lambda: rmp.BoundedSemaphore(1),
}


def _bindings() -> int:
    """How many `lock.__enter__`/`lock.__exit__` bindings exist (they are GC-tracked)."""
    gc.collect()
    return sum(type(o).__name__ == "lock_method" for o in gc.get_objects())


@pytest.mark.parametrize("kind", KINDS)
def test_with_takes_the_lock_and_gives_it_back(kind):
    lock = KINDS[kind]()
    for _ in range(5):
        assert lock._count() == 0
        with lock as got:
            assert got is True
            assert lock._count() == 1
        assert lock._count() == 0
    with pytest.raises(ZeroDivisionError):
        with lock:
            assert lock._count() == 1
            1 / 0  # noqa: B018
    assert lock._count() == 0


def test_nested_with_on_an_rlock_counts_each_level():
    lock = rmp.RLock()
    with lock:
        with lock:
            with lock:
                assert lock._count() == 3
            assert lock._count() == 2
        assert lock._count() == 1
    assert lock._count() == 0 and repr(lock) == "<RLock(None, 0)>"


def test_a_binding_is_a_bound_method():
    lock = rmp.Lock()
    enter, exit_ = lock.__enter__, lock.__exit__
    assert enter.__self__ is lock and exit_.__self__ is lock
    assert (enter.__name__, exit_.__name__) == ("__enter__", "__exit__")
    assert repr(enter).startswith("<built-in method __enter__ of Lock object at ")
    assert enter() is True and lock._count() == 1
    assert exit_(None, None, None) is None and lock._count() == 0
    # It keeps its lock alive, as a bound method does.
    ref = weakref.ref(lock)
    del lock
    gc.collect()
    assert ref() is enter.__self__
    assert enter() is True
    assert ref()._count() == 1
    exit_()
    # Equal (and hashed alike) when they are the same method of the same lock, so that
    # `atexit.unregister(lock.__exit__)` and the like find a registration.
    other = rmp.Lock()
    assert enter == enter.__self__.__enter__ and hash(enter) == hash(enter.__self__.__enter__)
    assert enter != exit_ and enter != other.__enter__ and enter != 5
    assert {enter: 1}[enter.__self__.__enter__] == 1
    assert enter.__qualname__ == "Lock.__enter__" and "acquire" in enter.__doc__
    # Pickled as `getattr(lock, name)`: so only while spawning, as the lock itself.
    assert enter.__reduce__() == (getattr, (enter.__self__, "__enter__"))
    with pytest.raises(RuntimeError, match="through inheritance"):
        pickle.dumps(other.__exit__)
    # The descriptor, from the class.
    descr = synchronize.SemLock.__enter__
    assert (descr.__name__, descr.__qualname__) == ("__enter__", "SemLock.__enter__")
    assert descr.__objclass__ is rmp._core.SemLock
    assert descr.__get__(None, synchronize.SemLock) is descr


def test_unbound_calls_work_as_method_descriptors_do():
    lock = rmp.RLock()
    assert synchronize.SemLock.__enter__(lock) is True
    assert synchronize.SemLock.__enter__(lock) is True
    assert lock._count() == 2
    synchronize.SemLock.__exit__(lock, None, None, None)
    synchronize.SemLock.__exit__(lock)
    assert lock._count() == 0


def test_bad_calls_raise_type_error():
    lock = rmp.Lock()
    with pytest.raises(TypeError, match=r"^unbound method SemLock.__enter__\(\) needs an"):
        synchronize.SemLock.__enter__()
    with pytest.raises(TypeError, match="doesn't apply to a 'int' object"):
        synchronize.SemLock.__exit__(5)
    with pytest.raises(TypeError, match="doesn't apply to a 'str' object"):
        synchronize.SemLock.__enter__.__get__("x", str)
    with pytest.raises(TypeError, match=r"__enter__\(\) takes no arguments \(1 given\)"):
        lock.__enter__(1)
    with pytest.raises(TypeError, match=r"__exit__\(\) takes no keyword arguments"):
        lock.__exit__(None, None, tb=None)
    with pytest.raises(TypeError, match="cannot create"):
        type(lock.__enter__)()
    with pytest.raises(TypeError, match="cannot create"):
        type(synchronize.SemLock.__enter__)()
    assert lock._count() == 0  # none of these touched the lock


@pytest.mark.parametrize("which", ["__enter__", "__exit__"])
def test_a_cycle_through_a_binding_is_collected(which):
    lock = rmp.Lock()
    lock.me = getattr(lock, which)  # lock -> __dict__ -> binding -> lock
    ref = weakref.ref(lock)
    del lock
    gc.collect()
    assert ref() is None


def test_bindings_are_reused_and_freed_with_their_lock():
    before = _bindings()
    locks = [rmp.RLock() for _ in range(300)]
    for lock in locks:
        with lock:
            with lock:  # two `__exit__` bindings out at once: one is parked, one freed
                pass
    # Each lock keeps one `__enter__` and one `__exit__` binding; none is left over.
    assert _bindings() - before == 2 * len(locks)
    for _ in range(3):
        for lock in locks:
            with lock:
                pass
    assert _bindings() - before == 2 * len(locks)  # reused, not made again
    del locks, lock
    assert _bindings() == before


def test_threads_sharing_a_lock_through_with():
    lock, rlock = rmp.Lock(), rmp.RLock()
    total = [0, 0]  # one counter per lock
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads inside the `with` statements

    def work():
        for _ in range(20_000):
            with lock:
                total[0] += 1
            with rlock:
                with rlock:
                    total[1] += 1

    try:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
            assert not t.is_alive()
    finally:
        sys.setswitchinterval(old)
    assert total == [4 * 20_000, 4 * 20_000]
    assert lock._count() == 0 and rlock._count() == 0
    assert lock.acquire(False) and rlock.acquire(False)


def _enter_in_child(enter):
    assert enter() is True


@pytest.mark.timeout(60)
def test_a_binding_is_a_process_target_under_spawn():
    ctx = rmp.get_context("spawn")
    lock = ctx.Lock()
    p = ctx.Process(target=_enter_in_child, args=(lock.__enter__,))
    p.start()
    join_or_kill([p])
    assert p.exitcode == 0
    assert lock.acquire(False) is False  # the child took it (a Lock may stay taken)
    lock.release()


def _count_with(lock, value, n):
    for _ in range(n):
        with lock:
            value.value += 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_with_across_processes(method):
    ctx = rmp.get_context(method)
    lock = ctx.Lock()
    value = ctx.Value("i", 0, lock=False)
    with lock:  # the parent's bindings are parked before the children fork
        pass
    procs = [ctx.Process(target=_count_with, args=(lock, value, 5000)) for _ in range(2)]
    for p in procs:
        p.start()
    _count_with(lock, value, 5000)
    join_or_kill(procs)
    assert [p.exitcode for p in procs] == [0, 0]
    assert value.value == 15_000
