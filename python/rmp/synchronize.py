"""``rmp.synchronize``: process-shared locks, semaphores, conditions, events and barriers.

The API, reprs and errors are those of CPython's ``multiprocessing.synchronize``; the engine is
rmp's: every primitive is a futex state in an arena of shared memory (``rmp.heap``), driven by
``rmp._core``. Blocking calls wait outside the interpreter (other threads run) and answer
Ctrl-C. Differences that make rmp more robust:

- an ``RLock`` (and so the default lock of ``Condition``, ``Value`` and ``Array``) whose holder
  dies is taken over by the next acquirer, with a ``RuntimeWarning`` naming the dead process;
- ``Condition.notify`` and a ``Barrier``'s release never wait for a particular process, so a
  process killed inside ``wait()`` cannot hang the others.

Like the stdlib's, these objects pickle only while a child's data is being pickled (they are
shared by inheritance), under every start method.
"""

import sys
import threading
import time
from multiprocessing import synchronize as _std_synchronize

from . import _core, context, heap, process, util

__all__ = [
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Barrier",
]

# CPython's kind numbers and its semaphore bound (the largest value a Semaphore may reach).
RECURSIVE_MUTEX, SEMAPHORE = list(range(2))
SEM_VALUE_MAX = 2**31 - 1

_SEM_SIZE = 64  # sizeof(SemState), see src/sync/semaphore.rs
_COND_SIZE = 32 + 32 * 32  # sizeof(CondState): header and 32 sleeper slots
_EVENT_SIZE = 24
_BARRIER_SIZE = 32


def _check_ctx(ctx):
    return ctx if ctx is not None else context._default_context.get_context()


def _after_fork(obj):
    obj._after_fork()


class SemLock(_core.SemLock):
    """Base of the lock and semaphore classes. It *is* an ``rmp._core.SemLock`` (a subclass),
    so ``acquire``, ``release`` and ``with lock:`` go straight to Rust; ``_semlock`` is the
    object itself, where CPython keeps a wrapped one."""

    # Raw method descriptors of _core.SemLock: the uncontended call is one CAS with no
    # argument parsing; anything else goes to the full methods (_acquire/_release). `with`
    # uses the same two, through descriptors whose bindings the lock keeps for reuse
    # (src/py/withlock.rs), so that a `with` statement allocates nothing.
    acquire = _core.semlock_acquire
    release = _core.semlock_release
    __enter__ = _core.semlock_enter
    __exit__ = _core.semlock_exit

    def __new__(cls, kind, value, maxvalue, *, ctx):
        _check_ctx(ctx)
        wrapper = heap.BufferWrapper(_SEM_SIZE)
        self = _core.SemLock.__new__(
            cls, wrapper.segment, wrapper.offset, kind, value, maxvalue, True
        )
        self._wrapper = wrapper
        util.debug("created semlock at offset %d" % wrapper.offset)
        util.register_after_fork(self, _after_fork)
        return self

    def __reduce__(self):
        context.assert_spawning(self)
        return _rebuild_semlock, (type(self), self._wrapper, self.kind, self.maxvalue, self.name)

    def locked(self):
        """Whether it is held now: no unit left (CPython 3.14+)."""
        return self._is_zero()


def _rebuild_semlock(cls, wrapper, kind, maxvalue, name):
    self = _core.SemLock.__new__(
        cls, wrapper.segment, wrapper.offset, kind, 0, maxvalue, False, name
    )
    self._wrapper = wrapper
    util.debug("recreated semlock at offset %d" % wrapper.offset)
    util.register_after_fork(self, _after_fork)
    return self


class Semaphore(SemLock):
    def __new__(cls, value=1, *, ctx):
        return SemLock.__new__(cls, SEMAPHORE, value, SEM_VALUE_MAX, ctx=ctx)

    def get_value(self):
        return self._get_value()

    def __repr__(self):
        try:
            value = self._get_value()
        except Exception:
            value = "unknown"
        return "<%s(value=%s)>" % (self.__class__.__name__, value)


class BoundedSemaphore(Semaphore):
    def __new__(cls, value=1, *, ctx):
        return SemLock.__new__(cls, SEMAPHORE, value, value, ctx=ctx)

    def __repr__(self):
        try:
            value = self._get_value()
        except Exception:
            value = "unknown"
        return "<%s(value=%s, maxvalue=%s)>" % (
            self.__class__.__name__,
            value,
            self.maxvalue,
        )


def _owner_name():
    name = process.current_process().name
    if threading.current_thread().name != "MainThread":
        name += "|" + threading.current_thread().name
    return name


class Lock(SemLock):
    """A non-recursive lock; any process or thread may release it."""

    def __new__(cls, *, ctx):
        return SemLock.__new__(cls, SEMAPHORE, 1, 1, ctx=ctx)

    def __repr__(self):
        try:
            if self._is_mine():
                name = _owner_name()
            elif self._get_value() == 1:
                name = "None"
            elif self._count() > 0:
                name = "SomeOtherThread"
            else:
                name = "SomeOtherProcess"
        except Exception:
            name = "unknown"
        return "<%s(owner=%s)>" % (self.__class__.__name__, name)


class RLock(SemLock):
    """A recursive lock owned by a thread. If its holder dies, the next acquirer takes it
    over and a ``RuntimeWarning`` names the dead process."""

    def __new__(cls, *, ctx):
        return SemLock.__new__(cls, RECURSIVE_MUTEX, 1, 1, ctx=ctx)

    def __repr__(self):
        try:
            if self._is_mine():
                name = _owner_name()
                count = self._count()
            elif self._get_value() == 1:
                name, count = "None", 0
            elif self._count() > 0:
                name, count = "SomeOtherThread", "nonzero"
            else:
                name, count = "SomeOtherProcess", "nonzero"
        except Exception:
            name, count = "unknown", "unknown"
        return "<%s(%s, %s)>" % (self.__class__.__name__, name, count)


class _Count:
    """A read-only count with a semaphore's ``get_value()``: CPython's ``Condition`` exposes
    its bookkeeping as semaphores (``_sleeping_count``, ``_woken_count``, ``_wait_semaphore``)
    and code that checks "nobody is waiting" reads them; rmp's are views of its counts."""

    __slots__ = ("_get",)

    def __init__(self, get):
        self._get = get

    def get_value(self):
        return self._get()


class Condition:
    """A condition variable over a process-shared lock (an ``RLock`` by default).

    ``notify`` wakes sleepers through a shared sequence word and never waits for them.
    """

    def __init__(self, lock=None, *, ctx):
        self._lock = lock or _check_ctx(ctx).RLock()
        self._wrapper = heap.BufferWrapper(_COND_SIZE)
        self._cv = _core.CondVar(self._wrapper.segment, self._wrapper.offset, True)
        self._make_methods()

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._lock, self._wrapper)

    def __setstate__(self, state):
        self._lock, self._wrapper = state
        self._cv = _core.CondVar(self._wrapper.segment, self._wrapper.offset, False)
        self._make_methods()

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    def _make_methods(self):
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    # CPython's bookkeeping, as counts: registered sleepers (notified or not), none "woken"
    # apart, and notifications not yet taken.
    _sleeping_count = property(lambda self: _Count(lambda: sum(self._cv.counts())))
    _woken_count = property(lambda self: _Count(lambda: 0))
    _wait_semaphore = property(lambda self: _Count(lambda: self._cv.counts()[1]))

    def __repr__(self):
        try:
            num_waiters = self._cv.counts()[0]
        except Exception:
            num_waiters = "unknown"
        return "<%s(%s, %s)>" % (self.__class__.__name__, self._lock, num_waiters)

    def wait(self, timeout=None):
        assert self._lock._semlock._is_mine(), "must acquire() condition before using wait()"
        ticket = self._cv.register()
        # Release the lock however deep this thread holds it, and take it back as deep.
        count = self._lock._semlock._count()
        for _ in range(count):
            self._lock.release()
        try:
            return self._cv.wait(ticket, timeout)
        finally:
            for _ in range(count):
                self._lock.acquire()

    def notify(self, n=1):
        assert self._lock._semlock._is_mine(), "lock is not owned"
        if n > 0:
            self._cv.notify(min(n, 0xFFFFFFFF))

    def notify_all(self):
        self.notify(0xFFFFFFFF)

    def wait_for(self, predicate, timeout=None):
        result = predicate()
        if result:
            return result
        if timeout is not None:
            endtime = time.monotonic() + timeout
        else:
            endtime = None
            waittime = None
        while not result:
            if endtime is not None:
                waittime = endtime - time.monotonic()
                if waittime <= 0:
                    break
            self.wait(waittime)
            result = predicate()
        return result


class Event:
    """A process-shared flag; ``wait`` sleeps on it directly (one futex wait)."""

    def __init__(self, *, ctx):
        _check_ctx(ctx)
        self._wrapper = heap.BufferWrapper(_EVENT_SIZE)
        self._flag = _core.EventFlag(self._wrapper.segment, self._wrapper.offset, True)

    def __getstate__(self):
        context.assert_spawning(self)
        return self._wrapper

    def __setstate__(self, state):
        self._wrapper = state
        self._flag = _core.EventFlag(self._wrapper.segment, self._wrapper.offset, False)

    def is_set(self):
        return self._flag.is_set()

    def set(self):
        self._flag.set()

    def clear(self):
        self._flag.clear()

    def wait(self, timeout=None):
        return self._flag.wait(timeout)

    if "__repr__" in vars(_std_synchronize.Event):  # CPython 3.11+

        def __repr__(self):
            set_status = "set" if self.is_set() else "unset"
            return f"<{type(self).__qualname__} at {id(self):#x} {set_status}>"


class Barrier(threading.Barrier):
    """``threading.Barrier`` across processes. Its release never waits for any process, and a
    party that dies after arriving still counts, so the others are not hung by it."""

    def __init__(self, parties, action=None, timeout=None, *, ctx):
        _check_ctx(ctx)
        if parties < 1:
            # CPython 3.13's threading.Barrier says the same; older ones accepted a barrier
            # that could never be passed.
            raise ValueError("parties must be > 0")
        self._wrapper = heap.BufferWrapper(_BARRIER_SIZE)
        self._core = _core.BarrierCore(self._wrapper.segment, self._wrapper.offset, parties, True)
        self._action = action
        self._timeout = timeout

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._core.parties, self._action, self._timeout, self._wrapper)

    def __setstate__(self, state):
        parties, self._action, self._timeout, self._wrapper = state
        self._core = _core.BarrierCore(self._wrapper.segment, self._wrapper.offset, parties, False)

    def wait(self, timeout=None):
        if timeout is None:
            timeout = self._timeout
        status, index, gen = self._core.wait(timeout)
        if status == 2:
            raise threading.BrokenBarrierError
        if status == 1:
            try:
                if self._action:
                    self._action()
            except BaseException:
                self._core.abort()
                raise
            self._core.release(gen)
        return index

    def reset(self):
        self._core.reset()

    def abort(self):
        self._core.abort()

    @property
    def parties(self):
        return self._core.parties

    @property
    def n_waiting(self):
        return self._core.n_waiting

    @property
    def broken(self):
        return self._core.broken

    # __repr__: threading.Barrier's (CPython 3.10+), which reads the properties above.


if sys.version_info < (3, 14):
    # ``SemLock.locked`` arrives with CPython 3.14; older stdlibs lack it.
    del SemLock.locked
