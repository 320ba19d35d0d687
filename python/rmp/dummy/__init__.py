"""``rmp.dummy``: the ``multiprocessing`` API on threads (``multiprocessing.dummy``).

Threads need none of rmp's shared memory, so the thread-backed objects are the stdlib's own
(``multiprocessing.dummy``'s ``Process``, ``Queue``, locks...); only ``Pool`` differs: it is
``rmp.pool.ThreadPool``, with the extras of rmp's pools (``progress=``, ``buffersize=``).
"""

from multiprocessing.dummy import (  # noqa: F401  (the stdlib module's names)
    Array,
    Barrier,
    BoundedSemaphore,
    Condition,
    DummyProcess,
    Event,
    JoinableQueue,
    Lock,
    Manager,
    Namespace,
    Pipe,
    Process,
    Queue,
    RLock,
    Semaphore,
    Value,
    active_children,
    current_process,
    freeze_support,
    shutdown,
)

from . import connection  # noqa: F401  (the submodule, as in the stdlib)

__all__ = [
    "Process",
    "current_process",
    "active_children",
    "freeze_support",
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Barrier",
    "Queue",
    "Manager",
    "Pipe",
    "Pool",
    "JoinableQueue",
]


def Pool(processes=None, initializer=None, initargs=()):
    """A pool of worker threads: ``rmp.pool.ThreadPool``."""
    from ..pool import ThreadPool

    return ThreadPool(processes, initializer, initargs)
