"""``rmp.queues``: process-shared queues, mirroring CPython's ``multiprocessing.queues``.

``Queue``, ``JoinableQueue`` and ``SimpleQueue`` share one design (``rmp._core.Channel``): a
many-producer many-consumer byte ring in an anonymous shared-memory segment, with futex waits
for not-empty / not-full, and a message becomes visible only once committed whole, so a
process killed mid-``put`` or mid-``get`` costs at most its own message.

- Objects are pickled in ``put()`` on the caller's thread: an unpicklable object raises there
  (the stdlib raises in its feeder thread and loses the message). A subclass that overrides
  ``_on_queue_feeder_error`` (as ``concurrent.futures`` does) gets the stdlib's behaviour
  instead: the hook is called and ``put()`` returns.
- A ``put()`` that finds the ring full hands the bytes to a Rust feeder thread of this process
  (no interpreter lock, signals blocked), which moves them in as room appears, so ``put()`` on
  an unbounded queue never blocks, as in the stdlib. Later puts queue behind that backlog
  (FIFO per producer). A forked child starts without the backlog, as in the stdlib.
- ``bytes``/``bytearray`` skip pickling; objects that pickle protocol 5 passes out of band
  (numpy arrays) travel as raw buffers. A message larger than half the ring travels in a memfd
  of its own whose descriptor goes over an ``SCM_RIGHTS`` socket created with the queue, so
  it is copied once in and (for ``bytes``) once out; an out-of-band buffer is not copied out
  at all: the array received is backed by that memfd.
- Extras (additions only): ``put_many``, ``get_many``, ``shutdown(immediate=False)`` with
  ``queue.Queue.shutdown``'s semantics (3.13), raising ``queue.ShutDown`` where the running
  Python has it and ``rmp.queues.ShutDown`` otherwise, and a ``capacity=`` keyword (bytes of
  the ring, default 1 MiB).
"""

import copyreg
import io
import os
import pickle
import struct
import threading
import types
from multiprocessing import queues as _std_queues
from queue import Empty, Full

from . import _core, context
from .reduction import DupFd, ForkingPickler
from .util import Finalize, debug, register_after_fork

try:
    from queue import ShutDown
except ImportError:  # Python < 3.13

    class ShutDown(Exception):
        """Raised when ``put``/``get`` is called on a queue that was shut down."""


__all__ = ["Queue", "SimpleQueue", "JoinableQueue", "ShutDown"]

#: Bytes of a queue's ring unless ``capacity=`` says otherwise.
DEFAULT_CAPACITY = 1 << 20
_UNBOUNDED = 0xFFFFFFFF
# The stdlib's "no limit" (multiprocessing.synchronize.SEM_VALUE_MAX).
_SEM_VALUE_MAX = 2147483647

# Message tags (the binding returns tags with bit 0x80 as a writable bytearray).
_PICKLE = 0
_BYTES = 1
_BYTEARRAY = 0x81
_OOB = 0x82  # pickle protocol 5 with out-of-band buffers: header, pickle, buffers
_PLAIN = 4  # plain data in rmp's own format (src/py/plain.rs): put_plain, put_many
# Buffers smaller than this stay in band (framing them costs more than it saves).
_OOB_MIN = 16 * 1024
_ALIGN = 64

_OK, _FULL, _SHUT, _FED = 0, 1, 2, 3
_NOT_PLAIN = 255  # Channel.put_plain: not bytes nor plain data, nothing put
_loads = ForkingPickler.loads
_plain_encode_many = _core.plain_encode_many
_plain_decode = _core.plain_decode


def _capacity(capacity):
    if capacity is None:
        return DEFAULT_CAPACITY
    capacity = int(capacity)
    if capacity < 64 or capacity & (capacity - 1) or capacity >= 1 << 31:
        raise ValueError("capacity must be a power of two between 64 and 2**30, not %r" % capacity)
    return capacity


def _reducer_table():
    """What ``ForkingPickler`` pickles with: copyreg's table and the registered reducers."""
    merged = dict(copyreg.dispatch_table)
    merged.update(ForkingPickler._extra_reducers)
    return merged


def _table_refresher(pickler):
    """A ``refresh()`` that gives the reused ``pickler`` a new copy of the reducer table
    when ``copyreg`` or ``ForkingPickler.register`` grew since its last copy (building a
    ``ForkingPickler`` copies the table, which costs more than pickling a small object)."""
    extra, table = ForkingPickler._extra_reducers, copyreg.dispatch_table
    seen = -1  # size of the tables the pickler's copy was made from

    def refresh():
        nonlocal seen
        n = len(table) + (len(extra) << 20)
        if n != seen:
            pickler.dispatch_table = _reducer_table()
            seen = n

    return refresh


def _new_encoder():
    """An ``encode(obj) -> (tag, data)`` with its own pickler, reused for every message of one
    thread (see ``_table_refresher``). A call re-entered from a ``__reduce__`` (or a signal
    handler) gets a fresh encoder."""
    buf = io.BytesIO()
    buffers = []

    def keep_big(pb):
        try:
            raw = pb.raw()
        except BufferError:  # not contiguous: in band
            return True
        if raw.nbytes < _OOB_MIN:
            return True
        buffers.append(raw)
        return False

    pickler = ForkingPickler(buf, 5, True, keep_big)
    seek, truncate, getvalue = buf.seek, buf.truncate, buf.getvalue
    clear, dump = pickler.clear_memo, pickler.dump
    refresh = _table_refresher(pickler)
    busy = False

    def encode(obj):
        nonlocal busy
        if busy:
            return _new_encoder()(obj)
        refresh()
        busy = True
        try:
            seek(0)
            truncate()
            clear()
            dump(obj)
        finally:
            # The memo holds what was pickled: let it go now, not at the next call.
            clear()
            busy = False
        if not buffers:
            return _PICKLE, getvalue()
        framed = _frame(getvalue(), buffers)
        buffers.clear()
        return _OOB, framed

    return encode


def _new_batch_encoder():
    """An ``encode_many(objs, on_error) -> (blob, bounds)`` for ``put_many``: every object is
    pickled (in band) into one buffer, each a complete pickle of its own (the memo is cleared
    between them), so the ring stores each as its own message; ``bounds`` are their ends.
    ``on_error(e, obj)``, if given, takes an object that fails to pickle (it is left out);
    otherwise the error raises and nothing is put."""
    buf = io.BytesIO()
    pickler = ForkingPickler(buf, 5)
    seek, truncate, tell, getvalue = buf.seek, buf.truncate, buf.tell, buf.getvalue
    clear, dump = pickler.clear_memo, pickler.dump
    refresh = _table_refresher(pickler)
    busy = False

    def encode_many(objs, on_error=None):
        nonlocal busy
        if busy:
            return _new_batch_encoder()(objs, on_error)
        refresh()
        busy = True
        bounds = []
        end = 0
        try:
            seek(0)
            truncate()
            for obj in objs:
                clear()
                try:
                    dump(obj)
                except Exception as e:
                    seek(end)
                    truncate()
                    if on_error is None:
                        raise
                    on_error(e, obj)
                    continue
                end = tell()
                bounds.append(end)
            return getvalue(), bounds
        finally:
            # The memo holds what was pickled: let it go now, not at the next call.
            clear()
            busy = False

    return encode_many


def _encode_many(objs, on_error=None):
    try:
        enc = _local.encode_many
    except AttributeError:
        enc = _local.encode_many = _new_batch_encoder()
    return enc(objs, on_error)


def _frame(data, buffers):
    """The parts of an out-of-band message. Header: the buffer count, then (offset, length)
    of the pickle and of each buffer, offsets 64-aligned so that arrays come back aligned."""
    n = len(buffers)
    parts = [None]
    spans = []
    pos = 4 + 16 * (n + 1)
    for part in [memoryview(data)] + buffers:
        pad = -pos % _ALIGN
        if pad:
            parts.append(bytes(pad))
            pos += pad
        spans.append((pos, part.nbytes))
        parts.append(part)
        pos += part.nbytes
    parts[0] = struct.pack("<I%dQ" % (2 * (n + 1)), n, *[x for s in spans for x in s])
    return parts


_local = threading.local()


def _encode(obj):
    """``(tag, data)`` for ``obj``: data is bytes-like or a list of bytes-like parts."""
    cls = obj.__class__
    if cls is bytes:
        return _BYTES, obj
    if cls is bytearray:
        return _BYTEARRAY, obj
    try:
        enc = _local.encode
    except AttributeError:
        enc = _local.encode = _new_encoder()
    return enc(obj)


def _decode(tag, data):
    if tag == _PICKLE:
        return _loads(data)
    if tag == _PLAIN:
        return _plain_decode(data if data.__class__ is bytes else bytes(memoryview(data)))
    if tag == _BYTES:
        return data if data.__class__ is bytes else bytes(memoryview(data))
    if tag == _BYTEARRAY:
        return data if data.__class__ is bytearray else bytearray(memoryview(data))
    if tag == _OOB:
        mv = memoryview(data)
        (n,) = struct.unpack_from("<I", mv)
        spans = struct.unpack_from("<%dQ" % (2 * (n + 1)), mv, 4)
        views = [mv[spans[2 * i] : spans[2 * i] + spans[2 * i + 1]] for i in range(n + 1)]
        return pickle.loads(views[0], buffers=views[1:])
    raise ValueError("unknown queue message tag %r" % tag)


def _channel_state(chan):
    seg, send, recv, ev = chan.fds()
    return (
        chan.capacity,
        DupFd(seg),
        DupFd(send),
        DupFd(recv),
        None if ev is None else DupFd(ev),
    )


def _open_channel(state):
    capacity, seg, send, recv, ev = state
    return _core.Channel.open(
        seg.detach(), capacity, send.detach(), recv.detach(), None if ev is None else ev.detach()
    )


# ---------------------------------------------------------------- exit flush

_exit_join_registered = False


def _forget_exit_join():
    global _exit_join_registered
    _exit_join_registered = False  # a forked child registers its own


os.register_at_fork(after_in_child=_forget_exit_join)


def _join_feeders_at_exit():
    debug("joining queue feeders")
    _core.join_feeders()


def _register_exit_join():
    """Once per process (called whenever a put goes to a feeder, so that no path can miss
    it): at exit, wait until every feeder of this process has moved its backlog into its ring
    (as the stdlib joins its feeder threads), except those of queues whose
    ``cancel_join_thread()`` was called. A flag, not ``os.getpid()``: that is a system call,
    and a producer ahead of its consumers puts every message through here."""
    global _exit_join_registered
    if not _exit_join_registered:
        _exit_join_registered = True
        Finalize(None, _join_feeders_at_exit, exitpriority=-5)


class Queue:
    """A process-shared FIFO queue (``multiprocessing.Queue``)."""

    def __init__(self, maxsize=0, *, ctx, capacity=None):
        if maxsize <= 0:
            maxsize = _SEM_VALUE_MAX
        self._maxsize = maxsize
        limit = _UNBOUNDED if maxsize >= _SEM_VALUE_MAX else min(maxsize, _UNBOUNDED - 1)
        # With a readiness eventfd (armed only once `_reader` is used), for code that waits on
        # `q._reader` with `multiprocessing.connection.wait`, as some does with the stdlib's.
        self._chan = _core.Channel(_capacity(capacity), limit, True)
        self._opid = os.getpid()
        # For use by concurrent.futures (kept for compatibility; no pipe to break here).
        self._ignore_epipe = False
        self._reset()
        register_after_fork(self, Queue._after_fork)

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._ignore_epipe, self._maxsize, _channel_state(self._chan), self._opid)

    def __setstate__(self, state):
        self._ignore_epipe, self._maxsize, chan, self._opid = state
        self._chan = _open_channel(chan)
        self._reset()

    def _after_fork(self):
        debug("Queue._after_fork()")
        # The channel drops the parent's backlog by itself (its feeder is keyed by pid).
        self._chan.forget_puts()
        self._reset()

    def _reset(self):
        self._closed = False
        self._joincancelled = False
        self._custom_errors = type(self)._on_queue_feeder_error is not Queue._on_queue_feeder_error
        # What code written against the stdlib touches of its pipe: `_reader.fileno()` polls
        # readable exactly while a message waits, `_reader.recv()`/`poll()` as a connection's.
        self._reader = _End(self)

    def __repr__(self):
        return "<%s.%s object at %#x>" % (type(self).__module__, type(self).__qualname__, id(self))

    def _encode(self, obj):
        """``(tag, data)``, or None when pickling failed and a subclass's
        ``_on_queue_feeder_error`` took the error."""
        try:
            return _encode(obj)
        except Exception as e:
            if not self._custom_errors:
                raise
            self._on_queue_feeder_error(e, obj)
            return None

    def put(self, obj, block=True, timeout=None):
        """Put ``obj`` on the queue (pickled here: a pickling error raises here)."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        # bytes and plain data are pickled and put by one call into the core.
        r = self._chan.put_plain(obj, block, timeout)
        if r == _NOT_PLAIN:
            try:
                tag, data = _encode(obj)
            except Exception as e:
                if not self._custom_errors:
                    raise
                self._on_queue_feeder_error(e, obj)
                return
            r = self._chan.put(tag, data, block, timeout)
        if r:
            self._put_status(r)

    @staticmethod
    def _put_status(r):
        if r == _FED:  # this process has a feeder now: wait for it at exit
            _register_exit_join()
            return
        raise Full if r == _FULL else ShutDown

    def put_many(self, objs, block=True, timeout=None):
        """Put every object of the iterable ``objs``, in order (an rmp extra). All are pickled
        first, so nothing is put if one cannot be; then as many as fit are committed at once
        (one lock, one wake-up), each as its own message. On a bounded queue that stays full,
        raises ``queue.Full`` after putting as many as fitted in time."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        if objs.__class__ is not list and objs.__class__ is not tuple:
            objs = list(objs)
        # Plain data is encoded and committed by one call into the core.
        done = self._chan.put_many_plain(objs, block, timeout)
        if done is None:
            done = self._chan.put_batch(_PICKLE, *self._pickle_many(objs), block, timeout)
        r = done[1]
        if r:
            self._put_status(r)

    def _encode_many(self, objs):
        """``(tag, blob, bounds)`` for ``put_batch``."""
        if objs.__class__ is not list and objs.__class__ is not tuple:
            objs = list(objs)
        # Plain data is encoded by one call into the core; anything else by ForkingPickler.
        enc = _plain_encode_many(objs)
        if enc is not None:
            return _PLAIN, enc[0], enc[1]
        return (_PICKLE, *self._pickle_many(objs))

    def _pickle_many(self, objs):
        """``(blob, bounds)`` of ``objs`` pickled by ``ForkingPickler``."""
        return _encode_many(objs, self._on_queue_feeder_error if self._custom_errors else None)

    def get(self, block=True, timeout=None):
        """Remove and return the oldest object (``queue.Empty`` if none comes in time)."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        r = self._chan.get_obj(block, timeout)  # decoded in the core: (obj,) or a status
        if r.__class__ is tuple:
            return r[0]
        raise Empty if r == _FULL else ShutDown

    def get_many(self, max_items, block=True, timeout=None):
        """Remove and return a list of up to ``max_items`` objects (an rmp extra): waits for
        the first as ``get`` does, then takes what is already there without waiting. A batch
        ends after a message too large for the ring (one in a memfd of its own)."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        r = self._chan.get_many_obj(max_items, block, timeout)  # decoded in the core
        if r.__class__ is list:
            return r
        raise Empty if r == _FULL else ShutDown

    def qsize(self):
        """Approximate number of objects in the queue."""
        return self._chan.qsize()

    def empty(self):
        """Whether the queue is empty (approximate, as in the stdlib). Raises OSError once
        this process closed a queue it put on, as the stdlib does (its reader is closed)."""
        if self._reader.closed:
            raise OSError("handle is closed")
        return self._chan.ring_len() == 0

    def full(self):
        """Whether the queue is full (approximate, as in the stdlib)."""
        return self._chan.qsize() >= self._maxsize

    def get_nowait(self):
        return self.get(False)

    def put_nowait(self, obj):
        return self.put(obj, False)

    def close(self):
        """Indicate that this process will put no more data on this queue; its feeder exits
        once its backlog is in the ring."""
        self._closed = True
        # The stdlib's feeder thread closes the queue's reader end as it exits, and there is
        # a feeder only once this process has put something: the same reader state here.
        if self._chan.has_put():
            self._reader.close()
        self._chan.close_feeder()

    def join_thread(self):
        """Wait until this process's backlog is in the ring (after ``close()``)."""
        debug("Queue.join_thread()")
        assert self._closed, f"Queue {self!r} not closed"
        if not self._joincancelled:
            self._chan.join_feeder()

    def cancel_join_thread(self):
        """Do not wait for this process's backlog at exit (it may be lost)."""
        debug("Queue.cancel_join_thread()")
        self._joincancelled = True
        self._chan.cancel_exit_join()

    def shutdown(self, immediate=False):
        """Shut the queue down for every process (``queue.Queue.shutdown``, 3.13): puts raise
        ``ShutDown``; gets raise it once the queue is empty, or at once with ``immediate``,
        which also drops what the queue holds (each dropped item counts as a task done)."""
        self._chan.shutdown(bool(immediate))

    @property
    def is_shutdown(self):
        """Whether ``shutdown()`` was called (by any process)."""
        return self._chan.shutdown_state != 0

    @staticmethod
    def _on_queue_feeder_error(e, obj):
        """Hook called with the error and the object when pickling fails in ``put()``, if a
        subclass overrides it (``concurrent.futures`` does); otherwise the error raises."""
        import traceback

        traceback.print_exc()

    # Subscriptable where the running Python's Queue is (3.12+), as SimpleQueue always is.
    if hasattr(_std_queues.Queue, "__class_getitem__"):
        __class_getitem__ = classmethod(types.GenericAlias)


class JoinableQueue(Queue):
    """A ``Queue`` with ``task_done()`` and ``join()``; the unfinished-task count lives in
    the shared ring header, and ``join()`` sleeps on it (a futex)."""

    def put(self, obj, block=True, timeout=None):
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        chan = self._chan
        # Counted before the message can be taken, so a fast consumer's task_done() finds it.
        chan.task_added()
        try:
            r = chan.put_plain(obj, block, timeout)
            if r == _NOT_PLAIN:
                msg = self._encode(obj)
                if msg is None:  # a subclass's _on_queue_feeder_error took the error
                    chan.tasks_done(1)
                    return
                r = chan.put(msg[0], msg[1], block, timeout)
        except BaseException:
            chan.tasks_done(1)
            raise
        if r:
            if r != _FED:
                chan.tasks_done(1)
            self._put_status(r)

    def put_many(self, objs, block=True, timeout=None):
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        tag, blob, bounds = self._encode_many(objs)
        chan = self._chan
        n = len(bounds)
        # Counted before the messages can be taken; the ones not put are not tasks.
        chan.task_added(n)
        done, r = 0, _OK
        try:
            done, r = chan.put_batch(tag, blob, bounds, block, timeout)
        finally:
            if n - done:
                chan.tasks_done(n - done)
        if r:
            self._put_status(r)

    def task_done(self):
        """Indicate that a formerly enqueued task is complete."""
        if not self._chan.tasks_done(1):
            raise ValueError("task_done() called too many times")

    def join(self):
        """Block until every item put has been gotten and marked done."""
        self._chan.join()


class _End:
    """``SimpleQueue._reader``/``_writer``: what ``concurrent.futures`` touches of the stdlib's
    pipe connections. The reader's ``fileno()`` is an eventfd that polls readable exactly
    while a message waits, and ``recv()`` removes and unpickles one."""

    def __init__(self, queue):
        self._queue = queue
        self.closed = False

    def close(self):
        self.closed = True

    def fileno(self):
        if self.closed:
            raise OSError("handle is closed")
        return self._queue._chan.arm_eventfd()

    def poll(self, timeout=0.0):
        if self.closed:
            raise OSError("handle is closed")
        return self._queue._chan.poll(timeout)

    def recv(self):
        return self._queue.get()

    def send(self, obj):
        self._queue.put(obj)

    def __reduce__(self):
        raise TypeError("%s cannot be pickled" % type(self).__name__)


class SimpleQueue:
    """A simplified queue (``multiprocessing.SimpleQueue``): ``put``, ``get``, ``empty``,
    ``close``; no size and no feeder thread (``put`` waits while the ring is full)."""

    def __init__(self, *, ctx, capacity=None):
        self._chan = _core.Channel(_capacity(capacity), _UNBOUNDED, True)
        self._reader = _End(self)
        self._writer = _End(self)
        self._ctx = ctx
        self._locks = None

    # The stdlib's reader and writer locks. rmp's ring needs neither, but stdlib code that
    # takes them must find them (multiprocessing.pool's terminate() acquires `_rlock` before
    # draining its task queue, for a Pool built on an rmp context). Made on first use: most
    # queues never need them, and each is a lock in shared memory.
    @property
    def _rlock(self):
        return self._get_locks()[0]

    @property
    def _wlock(self):
        return self._get_locks()[1]

    def _get_locks(self):
        if self._locks is None:
            self._locks = (self._ctx.Lock(), self._ctx.Lock())
        return self._locks

    def close(self):
        """Close both ends (in this process)."""
        self._reader.close()
        self._writer.close()

    def empty(self):
        """Whether no message waits now."""
        if self._reader.closed:
            raise OSError("handle is closed")
        return self._chan.ring_len() == 0

    def __getstate__(self):
        context.assert_spawning(self)
        return _channel_state(self._chan), self._locks

    def __setstate__(self, state):
        state, self._locks = state
        self._ctx = context._default_context
        self._chan = _open_channel(state)
        self._reader = _End(self)
        self._writer = _End(self)

    def get(self):
        """Remove and return the next object, waiting for one."""
        if self._reader.closed:
            raise OSError("handle is closed")
        r = self._chan.get_obj(True, None)  # decoded in the core: (obj,) or a status
        if r.__class__ is tuple:
            return r[0]
        raise ShutDown

    def put(self, obj):
        """Put ``obj`` on the queue (pickled here, on the caller's thread)."""
        if self._writer.closed:
            raise OSError("handle is closed")
        r = self._chan.put_plain(obj, True, None, False)
        if r == _NOT_PLAIN:
            tag, data = _encode(obj)
            r = self._chan.put(tag, data, True, None, False)
        if r:
            raise ShutDown

    __class_getitem__ = classmethod(types.GenericAlias)
