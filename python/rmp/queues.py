"""``rmp.queues``: process-shared queues, mirroring CPython's ``multiprocessing.queues``.

Today this module has ``SimpleQueue``: a pipe of rmp connections (Rust framing, one ``writev``
per message, waits outside the interpreter) guarded by two rmp locks, with the stdlib's
semantics: objects are pickled in ``put()`` on the caller's thread, so an unpicklable object
raises there; ``get()`` blocks until a message arrives; ``_reader`` is a connection that polls
readable exactly while a message waits, which ``concurrent.futures.ProcessPoolExecutor``
relies on. ``Queue`` and ``JoinableQueue`` (a shared-memory ring with a Rust feeder thread)
come with the queue work; until then they are absent, never stubs.
"""

import types

from . import connection, context
from .reduction import ForkingPickler

__all__ = ["SimpleQueue"]


class SimpleQueue:
    """A simplified queue: ``put``, ``get``, ``empty``, ``close``; no size, no feeder
    thread (``put`` writes at once, and may block while the pipe is full)."""

    def __init__(self, *, ctx):
        self._reader, self._writer = connection.Pipe(duplex=False)
        self._rlock = ctx.Lock()
        self._wlock = ctx.Lock()
        self._poll = self._reader.poll

    def close(self):
        """Close both ends (in this process)."""
        self._reader.close()
        self._writer.close()

    def empty(self):
        """Whether no message waits now."""
        return not self._poll()

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._reader, self._writer, self._rlock, self._wlock)

    def __setstate__(self, state):
        self._reader, self._writer, self._rlock, self._wlock = state
        self._poll = self._reader.poll

    def get(self):
        """Remove and return the next object, waiting for one."""
        with self._rlock:
            data = self._reader.recv_bytes()
        # Unpickle after releasing the lock: another reader may proceed meanwhile.
        return ForkingPickler.loads(data)

    def put(self, obj):
        """Put ``obj`` on the queue (pickled here, before taking the lock)."""
        data = ForkingPickler.dumps(obj)
        with self._wlock:
            self._writer.send_bytes(data)

    __class_getitem__ = classmethod(types.GenericAlias)
