"""``rmp.context``: contexts and start methods, mirroring CPython's ``multiprocessing.context``.

``rmp.get_context(method)`` returns a context whose factories build rmp objects. The default
start method follows the running CPython (fork up to 3.13, forkserver from 3.14). The
exception classes are the stdlib's own objects, so existing ``except`` clauses keep working.
"""

import os
import sys
from multiprocessing import context as _stdcontext
from multiprocessing.context import (  # the stdlib's classes, by identity
    AuthenticationError,
    BufferTooShort,
    ProcessError,
    TimeoutError,
)

from . import process

__all__ = ()

if not sys.platform.startswith("linux"):  # pragma: no cover
    raise ImportError("rmp supports Linux only (it is built on memfd, futex and pidfd)")


class BaseContext:
    """The functions and classes of the ``multiprocessing`` namespace, bound to one context."""

    ProcessError = ProcessError
    BufferTooShort = BufferTooShort
    TimeoutError = TimeoutError
    AuthenticationError = AuthenticationError

    current_process = staticmethod(process.current_process)
    parent_process = staticmethod(process.parent_process)
    active_children = staticmethod(process.active_children)

    def Pipe(self, duplex=True):
        """Return two connection objects connected by a pipe (a socketpair when duplex)."""
        from .connection import Pipe

        return Pipe(duplex)

    def Lock(self):
        """A non-recursive lock shared between processes."""
        from .synchronize import Lock

        return Lock(ctx=self.get_context())

    def RLock(self):
        """A recursive lock shared between processes (survives a dead holder)."""
        from .synchronize import RLock

        return RLock(ctx=self.get_context())

    def Condition(self, lock=None):
        """A condition variable shared between processes."""
        from .synchronize import Condition

        return Condition(lock, ctx=self.get_context())

    def Semaphore(self, value=1):
        """A semaphore shared between processes."""
        from .synchronize import Semaphore

        return Semaphore(value, ctx=self.get_context())

    def BoundedSemaphore(self, value=1):
        """A bounded semaphore shared between processes."""
        from .synchronize import BoundedSemaphore

        return BoundedSemaphore(value, ctx=self.get_context())

    def Event(self):
        """An event shared between processes."""
        from .synchronize import Event

        return Event(ctx=self.get_context())

    def Barrier(self, parties, action=None, timeout=None):
        """A barrier shared between processes."""
        from .synchronize import Barrier

        return Barrier(parties, action, timeout, ctx=self.get_context())

    def Queue(self, maxsize=0):
        """A queue shared between processes (a shared-memory ring with a Rust feeder)."""
        from .queues import Queue

        return Queue(maxsize, ctx=self.get_context())

    def JoinableQueue(self, maxsize=0):
        """A queue with ``task_done()`` and ``join()``, shared between processes."""
        from .queues import JoinableQueue

        return JoinableQueue(maxsize, ctx=self.get_context())

    def SimpleQueue(self):
        """A simplified queue shared between processes."""
        from .queues import SimpleQueue

        return SimpleQueue(ctx=self.get_context())

    def Manager(self):
        """A started ``SyncManager`` (``rmp.managers``: the stdlib's manager logic on rmp's
        connections, processes and pool)."""
        from .managers import SyncManager

        m = SyncManager(ctx=self.get_context())
        m.start()
        return m

    def Pool(
        self,
        processes=None,
        initializer=None,
        initargs=(),
        maxtasksperchild=None,
        *,
        task_timeout=None,
    ):
        """A pool of worker processes (``rmp.pool.Pool``) that never hangs on a dead worker."""
        from .pool import Pool

        return Pool(
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            context=self.get_context(),
            task_timeout=task_timeout,
        )

    def RawValue(self, typecode_or_type, *args):
        """A shared ctypes object without a lock."""
        from .sharedctypes import RawValue

        return RawValue(typecode_or_type, *args)

    def RawArray(self, typecode_or_type, size_or_initializer):
        """A shared ctypes array without a lock."""
        from .sharedctypes import RawArray

        return RawArray(typecode_or_type, size_or_initializer)

    def Value(self, typecode_or_type, *args, lock=True):
        """A synchronized shared ctypes object."""
        from .sharedctypes import Value

        return Value(typecode_or_type, *args, lock=lock, ctx=self.get_context())

    def Array(self, typecode_or_type, size_or_initializer, *, lock=True):
        """A synchronized shared ctypes array."""
        from .sharedctypes import Array

        return Array(typecode_or_type, size_or_initializer, lock=lock, ctx=self.get_context())

    def allow_connection_pickling(self):
        """Install the reducers that let connections and sockets be pickled for children
        (importing ``rmp.connection`` registers them)."""
        from . import connection  # noqa: F401

    def cpu_count(self):
        """Number of CPUs in the system (NotImplementedError if unknown, as the stdlib)."""
        num = os.cpu_count()
        if num is None:
            raise NotImplementedError("cannot determine number of cpus")
        return num

    def freeze_support(self):
        """Run the child if this is a frozen executable started as one (no-op otherwise)."""
        if sys.platform == "win32" and getattr(sys, "frozen", False):  # pragma: no cover
            from .spawn import freeze_support

            freeze_support()

    def get_logger(self):
        """Return the package logger (shared with the stdlib)."""
        from .util import get_logger

        return get_logger()

    def log_to_stderr(self, level=None):
        """Turn on logging to stderr and return the logger."""
        from .util import log_to_stderr

        return log_to_stderr(level)

    def set_executable(self, executable):
        """Set the interpreter that spawn and forkserver children run."""
        from .spawn import set_executable

        set_executable(executable)

    def set_forkserver_preload(self, module_names):
        """Set the modules the fork server imports before forking children (a hint)."""
        from .forkserver import set_forkserver_preload

        set_forkserver_preload(module_names)

    def get_context(self, method=None):
        if method is None:
            return self
        try:
            ctx = _concrete_contexts[method]
        except KeyError:
            if method in _CLUSTER_CONTEXTS:
                from . import cluster

                return cluster.get_context(method)
            raise ValueError("cannot find context for %r" % method) from None
        ctx._check_available()
        return ctx

    def get_start_method(self, allow_none=False):
        return self._name

    def set_start_method(self, method, force=False):
        raise ValueError("cannot set start method of concrete context")

    @property
    def reducer(self):
        """The module that reduces objects for other processes (the stdlib's registry)."""
        return _stdcontext.reduction

    @reducer.setter
    def reducer(self, reduction):
        _stdcontext.reduction = reduction

    def _check_available(self):
        pass


class Process(process.BaseProcess):
    """A process started with the current default start method."""

    _start_method = None

    @staticmethod
    def _Popen(process_obj):
        return _default_context.get_context().Process._Popen(process_obj)

    @staticmethod
    def _after_fork():
        return _default_context.get_context().Process._after_fork()


class DefaultContext(BaseContext):
    """The context behind the top-level ``rmp`` namespace.

    Which start method is the default is process-global state, and it is the stdlib's: rmp
    reads and sets ``multiprocessing``'s default context, so ``rmp.set_start_method("spawn")``
    also governs stdlib code that asks ``multiprocessing.get_context()`` (e.g.
    ``concurrent.futures``), exactly as it would if the program still imported
    ``multiprocessing``. The errors are the stdlib's too ("context has already been set").
    """

    Process = Process

    def __init__(self, context):
        self._default_context = context

    @property
    def _std(self):
        return _stdcontext._default_context

    def get_context(self, method=None):
        if method is None:
            return _concrete_contexts[self._std.get_start_method()]
        return super().get_context(method)

    def set_start_method(self, method, force=False):
        if method is not None and method not in _concrete_contexts:
            raise ValueError("cannot find context for %r" % method)
        self._std.set_start_method(method, force)

    def get_start_method(self, allow_none=False):
        return self._std.get_start_method(allow_none)

    def Pool(
        self,
        processes=None,
        initializer=None,
        initargs=(),
        maxtasksperchild=None,
        *,
        task_timeout=None,
    ):
        """A pool of worker processes (``rmp.pool.Pool``) that never hangs on a dead worker;
        with ``RMP_POOL_BACKEND=ray`` in the environment, a pool on a Ray cluster instead
        (``rmp.get_context("ray").Pool``: see ``rmp.cluster``)."""
        backend = os.environ.get("RMP_POOL_BACKEND", "")
        if backend in _CLUSTER_CONTEXTS:
            return self.get_context(backend).Pool(
                processes, initializer, initargs, maxtasksperchild, task_timeout=task_timeout
            )
        if backend not in ("", "local"):
            raise ValueError(
                "RMP_POOL_BACKEND=%r: expected 'local' or one of %s"
                % (backend, ", ".join(sorted(_CLUSTER_CONTEXTS)))
            )
        return BaseContext.Pool(
            self,
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            task_timeout=task_timeout,
        )

    def get_all_start_methods(self):
        """The supported start methods, default first."""
        default = self._default_context._name
        return [default] + [m for m in ("fork", "spawn", "forkserver") if m != default]


class ForkProcess(process.BaseProcess):
    _start_method = "fork"

    @staticmethod
    def _Popen(process_obj):
        from .popen_fork import Popen

        return Popen(process_obj)


class SpawnProcess(process.BaseProcess):
    _start_method = "spawn"

    @staticmethod
    def _Popen(process_obj):
        from .popen_spawn_posix import Popen

        return Popen(process_obj)

    @staticmethod
    def _after_fork():
        # A spawned child is a fresh interpreter: there is nothing inherited to reset.
        pass


class ForkServerProcess(process.BaseProcess):
    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj):
        from .popen_forkserver import Popen

        return Popen(process_obj)

    @staticmethod
    def _after_fork():
        # Forked from the clean fork server, not from the parent: nothing to reset.
        pass


class ForkContext(BaseContext):
    _name = "fork"
    Process = ForkProcess


class SpawnContext(BaseContext):
    _name = "spawn"
    Process = SpawnProcess


class ForkServerContext(BaseContext):
    _name = "forkserver"
    Process = ForkServerProcess


# Contexts whose Pool runs on a cluster engine (``rmp.cluster``): not start methods.
_CLUSTER_CONTEXTS = frozenset(("ray",))

_concrete_contexts = {
    "fork": ForkContext(),
    "spawn": SpawnContext(),
    "forkserver": ForkServerContext(),
}
# The running CPython's default: fork up to 3.13, forkserver from 3.14 (on Linux).
_default_context = DefaultContext(
    _concrete_contexts[_stdcontext._default_context._default_context._name]
)


def _force_start_method(method):
    """In a child: record the start method it was created with (the shared default)."""
    _stdcontext._force_start_method(method)


def __getattr__(name):
    # ``multiprocessing.context.reduction`` is a module attribute that ``reducer`` rebinds.
    if name == "reduction":
        return _stdcontext.reduction
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_spawning_popen():
    """The Popen currently pickling a child's data, or None (the stdlib's, shared)."""
    return _stdcontext.get_spawning_popen()


def set_spawning_popen(popen):
    _stdcontext.set_spawning_popen(popen)


def assert_spawning(obj):
    """Raise RuntimeError unless a child's data is being pickled (the stdlib's rule)."""
    _stdcontext.assert_spawning(obj)
