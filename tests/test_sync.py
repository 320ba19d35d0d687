"""rmp's locks, semaphores, conditions, events and barriers against the stdlib's: semantics,
return values, errors and reprs (``ctx`` runs each parity test for ``multiprocessing`` and
``rmp`` under every start method), primitives shared with children, blocking calls that
release the GIL and answer Ctrl-C, and rmp's robustness to processes SIGKILLed while holding a
lock or waiting on a condition or barrier."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import pickle
import re
import signal
import sys
import threading
import time
import warnings

import pytest
from _helpers import join_or_kill, pid_gone, run_counting_other_thread

import rmp

pytestmark = pytest.mark.timeout(120)

RELEASED_TOO_MANY = "semaphore or lock released too many times"
NOT_OWNED = "attempt to release recursive lock not owned by thread"


def _wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _in_thread(fn, *args):
    """Run ``fn(*args)`` in a thread; return (the thread's result or exception, or None)."""
    out = []

    def run():
        try:
            out.append(fn(*args))
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert not t.is_alive()
    return out[0]


# Module-level targets: spawn and forkserver children import them by name.
def _child_uses_primitives(lock, rlock, sem, event, barrier, value, cond, flag):
    with lock:
        value.value += 1
    with rlock:
        with rlock:
            value.value += 10
    if not sem.acquire(timeout=30):
        sys.exit(2)
    event.set()
    barrier.wait(timeout=30)
    with cond:
        ok = cond.wait_for(lambda: flag.value == 1, timeout=30)
    sys.exit(0 if ok else 3)


def _hold_until(lock, rlock, held, go):
    with lock, rlock:
        held.set()
        go.wait(30)


def _cond_waiter(cond, woken):
    with cond:
        ok = cond.wait(30)
    with woken.get_lock():
        woken.value += 1
    sys.exit(0 if ok else 3)


def _cond_bumper(cond, value, times):
    for _ in range(times):
        time.sleep(0.02)
        with cond:
            value.value += 1
            cond.notify_all()


def _barrier_rounds(barrier, rounds):
    for _ in range(rounds):
        barrier.wait(timeout=30)


def _barrier_expect_broken(barrier):
    try:
        barrier.wait(timeout=30)
    except threading.BrokenBarrierError:
        sys.exit(5)
    sys.exit(0)


def _event_waiter(event):
    sys.exit(0 if event.wait(30) else 3)


def _acquire_and_die(lock):
    lock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def _acquire_signal_and_die(lock, held):
    lock.acquire()
    held.set()
    time.sleep(0.3)  # the parent is blocked in acquire() meanwhile
    os.kill(os.getpid(), signal.SIGKILL)


def _hold_for(lock, held, seconds):
    with lock:
        held.set()
        time.sleep(seconds)


def _increment(value, times, die_at, go):
    go.wait(30)
    for i in range(times):
        with value.get_lock():
            value.value += 1
            if i == die_at:
                os.kill(os.getpid(), signal.SIGKILL)


def _increment_and_report(value, times, go, conn, victim_pid):
    """The surviving incrementer, in a child: reports the RuntimeWarnings it saw."""
    lock = value.get_lock()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        go.wait(30)
        for _ in range(times):
            if not lock.acquire(timeout=10):  # `with lock:`, without hanging on a failure
                conn.send("acquire timed out")
                sys.exit(3)
            try:
                value.value += 1
            finally:
                lock.release()
        pid_gone(victim_pid, 30)  # the victim may not have reached its end yet
        if not lock.acquire(timeout=10):  # recovers it now if the dead child still holds it
            conn.send("acquire timed out")
            sys.exit(3)
        lock.release()
    conn.send([(w.category.__name__, str(w.message)) for w in seen])
    conn.close()


def _barrier_wait_exit(barrier):
    try:
        barrier.wait(timeout=10)
    except threading.BrokenBarrierError:
        sys.exit(5)
    sys.exit(0)


#
# Parity with the stdlib, one primitive at a time
#


def test_lock(ctx):
    lock = ctx.Lock()
    assert repr(lock) == "<Lock(owner=None)>"
    assert lock.acquire() is True
    assert repr(lock) == "<Lock(owner=MainProcess)>"
    assert _in_thread(repr, lock) == "<Lock(owner=SomeOtherThread)>"
    assert lock.acquire(False) is False
    assert lock.acquire(block=False) is False
    assert lock.acquire(timeout=0) is False
    t0 = time.monotonic()
    assert lock.acquire(timeout=0.1) is False
    assert 0.09 <= time.monotonic() - t0 < 5
    assert _in_thread(lock.acquire, True, 0.05) is False
    assert _in_thread(lock.release) is None  # any thread may release a Lock
    assert repr(lock) == "<Lock(owner=None)>"
    with pytest.raises(ValueError, match=f"^{RELEASED_TOO_MANY}$"):
        lock.release()
    with lock as entered:
        assert entered is True
        assert repr(lock) == "<Lock(owner=MainProcess)>"
    assert repr(lock) == "<Lock(owner=None)>"
    assert lock.acquire(timeout=-1) is True
    t0 = time.monotonic()
    assert lock.acquire(timeout=-1) is False  # a negative timeout does not wait
    assert lock.acquire(False, 10) is False  # block=False ignores the timeout
    assert time.monotonic() - t0 < 5
    lock.release()


def test_rlock(ctx):
    lock = ctx.RLock()
    assert repr(lock) == "<RLock(None, 0)>"
    with pytest.raises(AssertionError, match=f"^{NOT_OWNED}$"):
        lock.release()  # never acquired
    assert lock.acquire() is True
    assert lock.acquire(timeout=0.5) is True
    assert repr(lock) == "<RLock(MainProcess, 2)>"
    assert _in_thread(repr, lock) == "<RLock(SomeOtherThread, nonzero)>"
    err = _in_thread(lock.release)
    assert type(err) is AssertionError and str(err) == NOT_OWNED
    assert _in_thread(lock.acquire, False) is False
    t0 = time.monotonic()
    assert _in_thread(lambda: lock.acquire(timeout=0.1)) is False
    assert 0.09 <= time.monotonic() - t0 < 5
    assert lock.release() is None
    assert repr(lock) == "<RLock(MainProcess, 1)>"
    lock.release()
    assert repr(lock) == "<RLock(None, 0)>"
    with pytest.raises(AssertionError, match=f"^{NOT_OWNED}$"):
        lock.release()
    with lock as entered:
        assert entered is True
        with lock:
            assert repr(lock) == "<RLock(MainProcess, 2)>"
    assert repr(lock) == "<RLock(None, 0)>"

    def acquire_in_thread():
        assert lock.acquire()
        try:
            return repr(lock)
        finally:
            lock.release()

    name = _in_thread(acquire_in_thread)  # thread numbering is global: matched loosely
    assert re.fullmatch(r"<RLock\(MainProcess\|Thread-\d+( \(run\))?, 1\)>", name), name


def test_semaphore(ctx):
    sem = ctx.Semaphore(3)
    assert sem.get_value() == 3 and repr(sem) == "<Semaphore(value=3)>"
    assert [sem.acquire() for _ in range(3)] == [True] * 3
    assert sem.get_value() == 0 and repr(sem) == "<Semaphore(value=0)>"
    assert sem.acquire(False) is False
    assert sem.acquire(block=False) is False
    t0 = time.monotonic()
    assert sem.acquire(timeout=0.1) is False
    assert 0.09 <= time.monotonic() - t0 < 5
    assert sem.release() is None
    assert _in_thread(sem.acquire) is True  # any thread may acquire and release
    for _ in range(5):
        sem.release()
    assert sem.get_value() == 5  # an unbounded semaphore may exceed its initial value
    with sem:
        assert sem.get_value() == 4
    assert sem.get_value() == 5
    assert ctx.Semaphore().get_value() == 1
    assert ctx.Semaphore(0).acquire(timeout=0) is False
    with pytest.raises(TypeError):
        sem.release(2)  # no n argument, unlike threading.Semaphore


def test_bounded_semaphore(ctx):
    sem = ctx.BoundedSemaphore(2)
    assert repr(sem) == "<BoundedSemaphore(value=2, maxvalue=2)>"
    with pytest.raises(ValueError, match=f"^{RELEASED_TOO_MANY}$"):
        sem.release()
    assert sem.acquire() and sem.acquire()
    assert repr(sem) == "<BoundedSemaphore(value=0, maxvalue=2)>"
    assert sem.acquire(timeout=0.05) is False
    sem.release()
    assert repr(sem) == "<BoundedSemaphore(value=1, maxvalue=2)>" and sem.get_value() == 1
    sem.release()
    with pytest.raises(ValueError, match=f"^{RELEASED_TOO_MANY}$"):
        sem.release()
    assert sem.get_value() == 2
    assert repr(ctx.BoundedSemaphore()) == "<BoundedSemaphore(value=1, maxvalue=1)>"


def test_negative_semaphore_value_raises_like_the_stdlib():
    with pytest.raises(Exception) as std:
        multiprocessing.Semaphore(-1)
    with pytest.raises(Exception) as ours:
        rmp.Semaphore(-1)
    assert type(ours.value) is type(std.value)
    assert ours.value.args == std.value.args


def test_locked_exists_only_on_3_14(ctx):
    lock = ctx.Lock()
    assert hasattr(lock, "locked") is (sys.version_info >= (3, 14))
    assert hasattr(ctx.Semaphore(), "locked") is (sys.version_info >= (3, 14))
    if sys.version_info >= (3, 14):  # pragma: no cover - exercised on 3.14 only
        assert lock.locked() is False
        with lock:
            assert lock.locked() is True
        sem = ctx.Semaphore(2)
        sem.acquire()
        assert sem.locked() is False
        sem.acquire()
        assert sem.locked() is True


# The reprs follow the running stdlib's: Event has one from CPython 3.11, threading.Barrier
# (which multiprocessing's inherits) from 3.10; before, both have object's default repr.
EVENT_REPR = "__repr__" in vars(multiprocessing.synchronize.Event)
BARRIER_REPR = "__repr__" in vars(threading.Barrier)


def _repr_matches(pattern, obj, has_repr):
    if not has_repr:
        pattern = (
            rf"<{re.escape(type(obj).__module__)}\.{type(obj).__name__} object at 0x[0-9a-f]+>"
        )
    return re.fullmatch(pattern, repr(obj))


def test_event(ctx):
    event = ctx.Event()
    assert _repr_matches(r"<Event at 0x[0-9a-f]+ unset>", event, EVENT_REPR)
    assert event.is_set() is False
    t0 = time.monotonic()
    assert event.wait(0.1) is False
    assert 0.09 <= time.monotonic() - t0 < 5
    assert event.wait(0) is False
    assert event.set() is None
    assert _repr_matches(r"<Event at 0x[0-9a-f]+ set>", event, EVENT_REPR)
    assert event.is_set() is True
    assert event.wait() is True and event.wait(0) is True and event.wait(0.1) is True
    event.set()  # idempotent
    assert event.clear() is None
    assert event.is_set() is False and event.wait(0.01) is False
    event.clear()
    timer = threading.Timer(0.1, event.set)
    timer.start()
    try:
        assert event.wait(30) is True
    finally:
        timer.join()


def test_condition(ctx):
    cond = ctx.Condition()
    assert repr(cond) == "<Condition(<RLock(None, 0)>, 0)>"
    with pytest.raises(AssertionError, match=r"^must acquire\(\) condition before using wait\(\)$"):
        cond.wait(0.01)
    with pytest.raises(AssertionError, match="^lock is not owned$"):
        cond.notify()
    with pytest.raises(AssertionError, match="^lock is not owned$"):
        cond.notify_all()
    with cond as entered:
        assert entered is True
        t0 = time.monotonic()
        assert cond.wait(0.1) is False
        assert 0.09 <= time.monotonic() - t0 < 5
        assert repr(cond) == "<Condition(<RLock(MainProcess, 1)>, 0)>"
        with cond:  # a recursive lock is released all the way down while waiting
            assert cond.wait(0.01) is False
            assert repr(cond) == "<Condition(<RLock(MainProcess, 2)>, 0)>"
        assert cond.wait_for(lambda: 7) == 7
        assert cond.wait_for(lambda: 0, timeout=0.05) == 0
        assert cond.notify() is None and cond.notify(3) is None and cond.notify_all() is None
    assert cond.acquire() is True and cond.acquire(False) is True
    cond.release()
    cond.release()

    lock_cond = ctx.Condition(ctx.Lock())
    assert repr(lock_cond) == "<Condition(<Lock(owner=None)>, 0)>"
    with lock_cond:
        assert repr(lock_cond) == "<Condition(<Lock(owner=MainProcess)>, 0)>"
        assert lock_cond.wait(0.01) is False
        assert lock_cond.acquire(timeout=0.01) is False  # not recursive

    # Between threads of one process.
    flag = []

    def waiter():
        with cond:
            return cond.wait_for(lambda: flag, timeout=30)

    def setter():
        time.sleep(0.1)
        with cond:
            flag.append(1)
            cond.notify()

    t = threading.Thread(target=setter)
    t.start()
    try:
        assert waiter() == [1]
    finally:
        t.join()


def test_barrier(ctx):
    barrier = ctx.Barrier(2)
    module = re.escape(type(barrier).__module__)
    assert barrier.parties == 2 and barrier.n_waiting == 0 and barrier.broken is False
    assert _repr_matches(rf"<{module}\.Barrier at 0x[0-9a-f]+: waiters=0/2>", barrier, BARRIER_REPR)
    results = []
    t = threading.Thread(target=lambda: results.append(barrier.wait(30)))
    t.start()
    _wait_until(lambda: barrier.n_waiting == 1, what="a waiter")
    assert _repr_matches(rf"<{module}\.Barrier at 0x[0-9a-f]+: waiters=1/2>", barrier, BARRIER_REPR)
    results.append(barrier.wait(30))
    t.join()
    assert sorted(results) == [0, 1] and barrier.n_waiting == 0

    # action: run once per cycle, by one of the parties.
    calls = []
    barrier = ctx.Barrier(2, action=lambda: calls.append(threading.get_ident()))
    t = threading.Thread(target=barrier.wait, args=(30,))
    t.start()
    barrier.wait(30)
    t.join()
    assert len(calls) == 1

    # An action that raises: its caller gets the error, the others BrokenBarrierError.
    def bad_action():
        raise ZeroDivisionError

    barrier = ctx.Barrier(2, action=bad_action)
    errors = []

    def wait_and_record():
        try:
            barrier.wait(30)
        except BaseException as e:
            errors.append(type(e))

    t = threading.Thread(target=wait_and_record)
    t.start()
    _wait_until(lambda: barrier.n_waiting == 1, what="a waiter")
    wait_and_record()
    t.join()
    assert sorted(errors, key=lambda c: c.__name__) == [
        threading.BrokenBarrierError,
        ZeroDivisionError,
    ]
    assert barrier.broken is True
    assert _repr_matches(rf"<{module}\.Barrier at 0x[0-9a-f]+: broken>", barrier, BARRIER_REPR)

    # Timeouts: the constructor's default and wait()'s own; a timeout breaks the barrier.
    barrier = ctx.Barrier(2, timeout=0.1)
    t0 = time.monotonic()
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait()
    assert 0.09 <= time.monotonic() - t0 < 5
    assert barrier.broken is True
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(30)  # broken: fails at once
    assert barrier.reset() is None
    assert barrier.broken is False and barrier.n_waiting == 0
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(timeout=0.05)

    # abort() and reset() wake the waiters with BrokenBarrierError; reset() un-breaks.
    for method in ("abort", "reset"):
        barrier = ctx.Barrier(2)
        errors = []
        t = threading.Thread(target=wait_and_record)
        t.start()
        _wait_until(lambda b=barrier: b.n_waiting == 1, what="a waiter")
        getattr(barrier, method)()
        t.join(30)
        assert errors == [threading.BrokenBarrierError]
        assert barrier.broken is (method == "abort")
        assert barrier.n_waiting == 0

    single = ctx.Barrier(1)
    assert single.wait() == 0 and single.wait(0.1) == 0


def test_broken_barrier_error_is_threadings(mp):
    barrier = mp.Barrier(2, timeout=0.01)
    with pytest.raises(threading.BrokenBarrierError) as info:
        barrier.wait()
    assert type(info.value) is threading.BrokenBarrierError


@pytest.mark.parametrize(
    "make",
    [
        lambda mp: mp.Lock(),
        lambda mp: mp.RLock(),
        lambda mp: mp.Semaphore(2),
        lambda mp: mp.BoundedSemaphore(2),
        lambda mp: mp.Condition(),
        lambda mp: mp.Event(),
        lambda mp: mp.Barrier(2),
        lambda mp: mp.Value("i", 1),
        lambda mp: mp.Array("i", 3),
    ],
    ids=[
        "Lock",
        "RLock",
        "Semaphore",
        "BoundedSemaphore",
        "Condition",
        "Event",
        "Barrier",
        "Value",
        "Array",
    ],
)
def test_pickling_outside_spawning_is_refused(mp, make):
    obj = make(mp)
    with pytest.raises(
        RuntimeError, match="objects should only be shared between processes through inheritance"
    ):
        pickle.dumps(obj)
    with pytest.raises(RuntimeError):
        mp.reduction.ForkingPickler.dumps(obj)


#
# Shared with children, under every start method
#


def test_primitives_work_in_children(ctx):
    lock, rlock, sem = ctx.Lock(), ctx.RLock(), ctx.Semaphore(1)
    event, barrier, cond = ctx.Event(), ctx.Barrier(2), ctx.Condition()
    value, flag = ctx.Value("i", 0), ctx.Value("i", 0)
    p = ctx.Process(
        target=_child_uses_primitives,
        args=(lock, rlock, sem, event, barrier, value, cond, flag),
    )
    p.start()
    try:
        assert event.wait(30) is True
        assert barrier.wait(timeout=30) in (0, 1)
        with cond:
            flag.value = 1
            cond.notify_all()
    finally:
        join_or_kill([p])
    assert p.exitcode == 0
    assert value.value == 11
    assert sem.get_value() == 0
    assert repr(lock) == "<Lock(owner=None)>" and repr(rlock) == "<RLock(None, 0)>"
    assert lock.acquire(timeout=5) and rlock.acquire(timeout=5)
    lock.release()
    rlock.release()


def test_reprs_of_a_lock_held_by_another_process(ctx):
    lock, rlock, held, go = ctx.Lock(), ctx.RLock(), ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_until, args=(lock, rlock, held, go))
    p.start()
    try:
        assert held.wait(30)
        assert repr(lock) == "<Lock(owner=SomeOtherProcess)>"
        assert repr(rlock) == "<RLock(SomeOtherProcess, nonzero)>"
        assert lock.acquire(timeout=0.05) is False
        assert rlock.acquire(False) is False
        with pytest.raises(AssertionError, match=f"^{NOT_OWNED}$"):
            rlock.release()
    finally:
        go.set()
        join_or_kill([p])
    assert p.exitcode == 0
    assert lock.acquire(timeout=10) and rlock.acquire(timeout=10)
    lock.release()
    rlock.release()


def test_condition_notify_and_notify_all_wake_children(ctx):
    cond, woken = ctx.Condition(), ctx.Value("i", 0)
    procs = [ctx.Process(target=_cond_waiter, args=(cond, woken)) for _ in range(3)]
    for p in procs:
        p.start()
    try:
        _wait_until(lambda: cond._sleeping_count.get_value() == 3, what="3 sleepers")
        with cond:
            cond.notify()
        _wait_until(lambda: woken.value == 1, what="one waiter woken")
        time.sleep(0.2)
        assert woken.value == 1  # notify() wakes one, not more
        with cond:
            cond.notify_all()
        _wait_until(lambda: woken.value == 3, what="all waiters woken")
    finally:
        if woken.value < 3:
            with cond:
                cond.notify_all()
        join_or_kill(procs)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert cond._sleeping_count.get_value() == 0


def test_condition_wait_for_a_child(ctx):
    cond, value = ctx.Condition(), ctx.Value("i", 0)
    p = ctx.Process(target=_cond_bumper, args=(cond, value, 3))
    p.start()
    try:
        with cond:
            assert cond.wait_for(lambda: value.value >= 3, timeout=30) is True
    finally:
        join_or_kill([p])
    assert p.exitcode == 0 and value.value == 3


def test_barrier_and_event_with_children(ctx):
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_barrier_rounds, args=(barrier, 3)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        indices = [barrier.wait(timeout=30) for _ in range(3)]
    finally:
        join_or_kill(procs)
    assert all(i in (0, 1, 2) for i in indices)
    assert [p.exitcode for p in procs] == [0, 0]

    # abort() in the parent breaks a child's wait.
    barrier = ctx.Barrier(2)
    p = ctx.Process(target=_barrier_expect_broken, args=(barrier,))
    p.start()
    try:
        _wait_until(lambda: barrier.n_waiting == 1, what="the child waiting")
        barrier.abort()
    finally:
        join_or_kill([p])
    assert p.exitcode == 5

    event = ctx.Event()
    p = ctx.Process(target=_event_waiter, args=(event,))
    p.start()
    try:
        time.sleep(0.1)
        event.set()
    finally:
        join_or_kill([p])
    assert p.exitcode == 0


#
# Blocking calls: the GIL is released, and Ctrl-C interrupts them (rmp only)
#


class _Blocked:
    """A fresh rmp primitive with a call that blocks until ``unblock()``."""

    def __init__(self, kind):
        self.kind = kind
        self.thread = None
        if kind in ("Lock", "with Lock"):
            self.obj = rmp.Lock()
            self.obj.acquire()
        elif kind in ("RLock", "Value"):
            # Value: reading `value` waits for its lock, which another thread holds.
            self.obj = rmp.RLock() if kind == "RLock" else rmp.Value("i", 5)
            lock = self.obj if kind == "RLock" else self.obj.get_lock()
            held, self.go = threading.Event(), threading.Event()

            def hold():
                with lock:
                    held.set()
                    self.go.wait(30)

            self.thread = threading.Thread(target=hold)
            self.thread.start()
            assert held.wait(10)
        elif kind == "Semaphore":
            self.obj = rmp.Semaphore(0)
        elif kind == "Condition":
            self.obj = rmp.Condition()
            self.obj.acquire()
        elif kind == "Event":
            self.obj = rmp.Event()
        elif kind == "Barrier":
            self.obj = rmp.Barrier(2)
        else:  # pragma: no cover
            raise AssertionError(kind)

    def call(self, timeout):
        if self.kind == "Value":
            return self.obj.value  # no timeout: `value` waits as long as the lock is held
        if self.kind == "with Lock":  # `__enter__` waits as long as the lock is held
            with self.obj as got:
                assert repr(self.obj) == "<Lock(owner=MainProcess)>"
            return got
        if self.kind in ("Lock", "RLock", "Semaphore"):
            return self.obj.acquire(timeout=timeout)
        return self.obj.wait(timeout)

    def unblock(self):
        if self.kind in ("Lock", "with Lock"):
            self.obj.release()
        elif self.kind in ("RLock", "Value"):
            self.go.set()
        elif self.kind == "Semaphore":
            self.obj.release()
        elif self.kind == "Condition":
            with self.obj:
                self.obj.notify()
        elif self.kind == "Event":
            self.obj.set()
        else:
            self.obj.wait(10)

    def after_success(self, result):
        if self.kind == "with Lock":  # `__exit__` released it
            assert self.obj.acquire(False) is True
            self.obj.release()
        if self.kind == "Barrier":
            assert result in (0, 1)
        elif self.kind == "Value":
            assert result == 5
        else:
            assert result is True
        if self.kind in ("Lock", "RLock", "Condition"):
            self.obj.release()
        if self.thread is not None:
            self.thread.join(10)

    def cleanup(self):
        if self.thread is not None:
            self.go.set()
            self.thread.join(10)

    def after_interrupt(self):
        """The primitive is left as it was, and still works."""
        obj = self.obj
        if self.kind in ("Lock", "with Lock"):  # `with`: neither the body nor `__exit__` ran
            assert repr(obj) == "<Lock(owner=MainProcess)>"
            obj.release()
            assert obj.acquire(False) is True
            obj.release()
        elif self.kind == "RLock":
            assert repr(obj) == "<RLock(SomeOtherThread, nonzero)>"
            self.go.set()
            self.thread.join(10)
            assert obj.acquire(timeout=10) is True
            assert repr(obj) == "<RLock(MainProcess, 1)>"
            obj.release()
        elif self.kind == "Value":
            lock = obj.get_lock()
            assert repr(lock) == "<RLock(SomeOtherThread, nonzero)>"  # untouched
            self.go.set()
            self.thread.join(10)
            assert obj.value == 5 and repr(lock) == "<RLock(None, 0)>"
        elif self.kind == "Semaphore":
            assert obj.get_value() == 0
            obj.release()
            assert obj.acquire(False) is True
        elif self.kind == "Condition":
            assert repr(obj) == "<Condition(<RLock(MainProcess, 1)>, 0)>"  # lock taken back
            assert obj._sleeping_count.get_value() == 0  # no registration left behind
            obj.notify()
            assert obj.wait(0.02) is False
            obj.release()
        elif self.kind == "Event":
            assert obj.is_set() is False
            obj.set()
            assert obj.wait(0) is True
        else:
            # As threading's (and the stdlib's): the interrupted party left, the barrier is
            # whole.
            assert obj.broken is False and obj.n_waiting == 0
            t = threading.Thread(target=obj.wait, args=(10,))
            t.start()
            assert obj.wait(10) in (0, 1)
            t.join(10)


BLOCKING = ["Lock", "with Lock", "RLock", "Semaphore", "Condition", "Event", "Barrier", "Value"]


@pytest.mark.parametrize("kind", BLOCKING)
def test_blocking_calls_release_the_gil(kind):
    blocked = _Blocked(kind)
    timer = threading.Timer(0.5, blocked.unblock)
    timer.start()
    try:
        result, during = run_counting_other_thread(lambda: blocked.call(30))
        blocked.after_success(result)
        assert during > 10_000  # the other thread ran while the call waited
    finally:
        timer.join()
        blocked.cleanup()


@pytest.mark.parametrize("timeout", [None, 30], ids=["forever", "timed"])
@pytest.mark.parametrize("kind", BLOCKING)
def test_sigint_interrupts_blocking_calls(kind, timeout):
    blocked = _Blocked(kind)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    t0 = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            blocked.call(timeout)
        assert time.monotonic() - t0 < 10
        timer.join()
        blocked.after_interrupt()
    finally:
        timer.join()
        blocked.cleanup()


#
# rmp's robustness to SIGKILLed processes
#


@pytest.mark.parametrize("when", ["reaped_first", "reaped_while_waiting", "zombie"])
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_rlock_of_a_dead_holder_is_taken_over(method, when):
    # reaped_first: the holder died and was joined before acquire(). reaped_while_waiting:
    # it dies while acquire() waits, and another thread of the parent joins it. zombie: it
    # died and nobody reaped it yet (the parent is the one acquiring, and has not joined it).
    ctx = rmp.get_context(method)
    lock = ctx.RLock()
    reaper = None
    if when == "reaped_while_waiting":
        held = ctx.Event()
        p = ctx.Process(target=_acquire_signal_and_die, args=(lock, held))
        p.start()
        assert held.wait(30)
        reaper = threading.Thread(target=p.join, args=(30,))
        reaper.start()
    else:
        p = ctx.Process(target=_acquire_and_die, args=(lock,))
        p.start()
        if when == "reaped_first":
            p.join(30)
            assert p.exitcode == -signal.SIGKILL
        else:
            assert pid_gone(p.pid, 30)  # dead: a zombie, not reaped
    try:
        t0 = time.monotonic()
        with pytest.warns(RuntimeWarning, match=str(p.pid)):
            assert lock.acquire(timeout=10) is True
        assert time.monotonic() - t0 < 5
    finally:
        if reaper is not None:
            reaper.join(30)
        join_or_kill([p])
    assert p.exitcode == -signal.SIGKILL
    assert repr(lock) == "<RLock(MainProcess, 1)>"
    lock.release()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # taken over once: no more warnings
        assert lock.acquire(timeout=5) is True
        lock.release()


@pytest.mark.parametrize("survivor", ["parent", "child"])
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_value_lock_of_a_killed_incrementer_is_recovered(method, survivor):
    ctx = rmp.get_context(method)
    value, go = ctx.Value("i", 0), ctx.Event()
    victim = ctx.Process(target=_increment, args=(value, 2000, 500, go))
    victim.start()
    # Nobody reaps the victim until the end: the survivors recover the lock from a zombie,
    # the usual situation in a real program.
    procs = [victim]
    try:
        if survivor == "parent":
            lock = value.get_lock()
            with pytest.warns(RuntimeWarning, match=str(victim.pid)) as seen:
                go.set()
                for _ in range(2000):
                    assert lock.acquire(timeout=10)  # `with lock:`, without hanging the suite
                    try:
                        value.value += 1
                    finally:
                        lock.release()
                assert pid_gone(victim.pid, 30)  # dead (a zombie: nobody joined it)
                assert lock.acquire(timeout=10)  # recovers it now if the parent finished first
                total = value.value
                lock.release()
            assert len([w for w in seen if w.category is RuntimeWarning]) == 1
        else:
            r, w = ctx.Pipe(False)
            other = ctx.Process(target=_increment_and_report, args=(value, 2000, go, w, victim.pid))
            other.start()
            procs.append(other)
            w.close()
            go.set()
            assert r.poll(30)
            reports = r.recv()
            r.close()
            join_or_kill(procs)
            assert other.exitcode == 0
            assert len(reports) == 1, reports
            category, message = reports[0]
            assert category == "RuntimeWarning" and str(victim.pid) in message
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the survivor took it over: no warning here
                total = value.value
    finally:
        go.set()
        join_or_kill(procs)
    assert victim.exitcode == -signal.SIGKILL
    assert total == 2000 + 501


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_live_holder_is_never_taken_over(method):
    ctx = rmp.get_context(method)
    lock, held = ctx.RLock(), ctx.Event()
    p = ctx.Process(target=_hold_for, args=(lock, held, 0.5))
    p.start()
    try:
        assert held.wait(30)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            t0 = time.monotonic()
            assert lock.acquire(timeout=0.2) is False
            assert 0.19 <= time.monotonic() - t0 < 5
            assert lock.acquire(timeout=10) is True  # once the child let go
            lock.release()
        assert seen == []
    finally:
        join_or_kill([p])
    assert p.exitcode == 0


def test_notify_does_not_hang_on_a_waiter_killed_in_wait(start_method):
    # The stdlib's notify() waits for each woken sleeper to acknowledge: it would hang here.
    ctx = rmp.get_context(start_method)
    cond, woken = ctx.Condition(), ctx.Value("i", 0)
    procs = [ctx.Process(target=_cond_waiter, args=(cond, woken)) for _ in range(2)]
    for p in procs:
        p.start()
    victim, survivor = procs
    try:
        _wait_until(lambda: cond._sleeping_count.get_value() == 2, what="2 sleepers")
        victim.kill()
        victim.join(30)
        assert victim.exitcode == -signal.SIGKILL

        def notify(n):
            with cond:
                if n is None:
                    cond.notify_all()
                else:
                    cond.notify(n)

        for n in (1, None):
            t = threading.Thread(target=notify, args=(n,))
            t.start()
            t.join(timeout=5)
            assert not t.is_alive(), f"notify({n}) hung on a dead sleeper"
        survivor.join(30)
    finally:
        if survivor.exitcode is None:
            survivor.kill()
        join_or_kill(procs)
    assert survivor.exitcode == 0 and woken.value == 1


def test_barrier_counts_a_party_killed_in_wait(start_method):
    ctx = rmp.get_context(start_method)
    barrier = ctx.Barrier(3)
    a = ctx.Process(target=_barrier_wait_exit, args=(barrier,))
    a.start()
    procs = [a]
    try:
        _wait_until(lambda: barrier.n_waiting == 1, what="party A waiting")
        a.kill()
        a.join(30)
        assert a.exitcode == -signal.SIGKILL and pid_gone(a.pid, 5)
        b = ctx.Process(target=_barrier_wait_exit, args=(barrier,))
        b.start()
        procs.append(b)
        assert barrier.wait(timeout=10) in (0, 1, 2)
        b.join(30)
    finally:
        barrier.abort()  # frees a hung party, if any
        join_or_kill(procs)
    assert b.exitcode == 0
    barrier.reset()
    assert barrier.broken is False and barrier.n_waiting == 0


#
# Many objects: one descriptor and one mapping per arena, not per object
#


def _fds():
    """Descriptors of this process that are rmp arenas (memfds named "rmp")."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:rmp")
        except OSError:
            pass  # the directory's own descriptor, already closed
    return n


def _maps():
    """Mappings of this process that are rmp arenas (the interpreter's own allocations come
    and go with the objects, so only these are counted)."""
    with open("/proc/self/maps") as f:
        return sum("/memfd:rmp" in line for line in f)


def test_ten_thousand_values_and_locks_cost_no_descriptors():
    shm_before = set(os.listdir("/dev/shm"))
    warm = (rmp.Value("i"), rmp.Lock())  # the heap's first arena exists before measuring
    fds, maps = _fds(), _maps()
    values = [rmp.Value("i", i) for i in range(10_000)]
    locks = [rmp.Lock() for _ in range(10_000)]
    assert values[9_999].value == 9_999
    assert locks[1234].acquire(False) is True
    # All alive at once: 10,000 x (16 + 64) + 10,000 x 64 bytes fill two 1 MiB arenas.
    assert _fds() - fds <= 2 and _maps() - maps <= 2, (_fds(), fds, _maps(), maps)
    del values, locks
    for i in range(10_000):  # created and freed one by one
        v = rmp.Value("i", i)
        lock = rmp.Lock()
    assert v.value == 9_999 and lock.acquire(False)
    del v, lock
    # Freed blocks are reused: no growth beyond what the first loop needed.
    assert _fds() - fds <= 2 and _maps() - maps <= 2, (_fds(), fds, _maps(), maps)
    assert set(os.listdir("/dev/shm")) == shm_before
    del warm


# Regressions found in review: each of these once went wrong.


def _hold_and_report(lock, held, release):
    with lock:
        held.set()
        release.wait(30)


def _where(lock):
    (arena, _start, _stop), _size = lock._wrapper._state
    return arena.token, lock._wrapper.offset


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_lock_a_child_holds_is_not_recycled_when_the_parent_drops_it(method):
    import gc

    ctx = rmp.get_context(method)
    held, release = ctx.Event(), ctx.Event()
    lock = ctx.Lock()
    where = _where(lock)
    p = ctx.Process(target=_hold_and_report, args=(lock, held, release))
    del lock
    p.start()  # the parent's last reference goes with the Process's arguments
    try:
        assert held.wait(30)
        gc.collect()
        fresh = [ctx.Lock() for _ in range(50)]  # would reuse the dropped lock's bytes
        assert where not in {_where(lk) for lk in fresh}
    finally:
        release.set()
        p.join(30)
    assert p.exitcode == 0


def test_a_same_process_takeover_starts_a_fresh_recursion_count():
    lock = rmp.RLock()
    t = threading.Thread(target=lock.acquire)  # takes it and dies holding it
    t.start()
    t.join()
    with pytest.warns(RuntimeWarning):
        assert lock.acquire(timeout=10)
    assert lock._count() == 1
    lock.release()
    assert not lock._is_zero()  # free again after one release


def test_a_takeover_warning_raised_as_an_error_leaves_the_lock_free():
    lock = rmp.RLock()
    t = threading.Thread(target=lock.acquire)
    t.start()
    t.join()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning):
            lock.acquire(timeout=10)
    assert not lock._is_zero() and lock._count() == 0
    assert lock.acquire(timeout=5)  # the holder is gone: no second warning
    lock.release()


def test_event_wait_sees_a_set_that_a_clear_undid():
    event = rmp.Event()
    result = []
    t = threading.Thread(target=lambda: result.append(event.wait(10)))
    t.start()
    time.sleep(0.2)
    event.set()
    event.clear()
    t.join(10)
    assert result == [True]  # as threading.Event documents: set during the wait


#
# Garbage collection: a lock's shared memory outlives the finalizers of its garbage
#


def test_a_lock_in_garbage_keeps_its_block_until_its_finalizers_ran():
    """A collection runs weakref callbacks before finalizers. The block of a lock found in
    garbage must not go back to the heap (where a lock made meanwhile would get it) while a
    generator of the same garbage, suspended inside ``with lock:``, has yet to release it."""
    import gc

    made = []

    class MakesALock:
        def __del__(self):
            new = rmp.Lock()
            new.acquire()
            made.append(new)

    def holds(lock):
        with lock:
            yield

    for _ in range(5):
        lock = rmp.Lock()
        gen = holds(lock)
        next(gen)
        where = (lock._wrapper.segment, lock._wrapper.offset)
        lock.cycle = [gen, MakesALock(), lock]  # all of it garbage once dropped
        del lock, gen
        gc.collect()
        new = made.pop()
        assert (new._wrapper.segment, new._wrapper.offset) != where
        # The generator's `with` released its own lock, not the new one.
        assert new.acquire(False) is False
        new.release()
