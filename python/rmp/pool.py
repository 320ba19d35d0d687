"""``rmp.pool``: pools of worker processes, mirroring CPython's ``multiprocessing.pool``.

The stdlib's API and semantics, on rmp's shared-memory queues, and a pool that never hangs
on a dead worker (Linux only):

- Tasks travel through one ``rmp._core.Channel`` ring that every worker takes from, results
  through another. Tasks are pickled on the caller's thread, so an unpicklable function or
  argument raises at the call site; a batch of tasks (a ``map``) goes in under one lock, and
  what does not fit is moved in by the queue's Rust feeder thread.
- Each task message starts with its (job, index). A worker takes a task with
  ``Channel.get_task``, which records that pair on the pool's task board (``_core.TaskBoard``,
  one shared-memory slot per worker) before the message leaves the queue. A worker writes its
  result into the ring itself (never through a feeder), then marks its slot idle.
- The parent has two threads instead of the stdlib's three. The result thread takes results
  in batches and completes the ``AsyncResult`` objects. The supervisor waits on the workers'
  pidfds: when a worker dies, its slot names the task it was running, which then fails with
  ``WorkerLostError`` (pid, signal or exit code, OOM when the cgroup says so) through the
  result ring, after any result the worker did send. The worker is replaced and the rest of
  the work goes on. The supervisor also enforces ``task_timeout``.
- Workers are daemonic rmp processes, which die with their parent even when it is SIGKILLed
  (they watch the parent's pidfd).

Extras (additions only; the stdlib's defaults are unchanged): ``Pool(task_timeout=)``,
``progress=`` on the map family, ``imap(..., buffersize=)`` (as the stdlib has from 3.15),
and pending results failing with ``WorkerLostError`` after ``terminate()`` (the stdlib leaves
them waiting forever).
"""

import collections
import io
import itertools
import os
import pickle
import queue
import select
import signal
import struct
import sys
import threading
import time
import types
import warnings
import weakref
from multiprocessing import ProcessError, TimeoutError

# The stdlib's own classes and helpers (the same objects, for except clauses and isinstance).
from multiprocessing.pool import (  # noqa: F401  (RemoteTraceback, rebuild_exc: API)
    ExceptionWithTraceback,
    MaybeEncodingError,
    RemoteTraceback,
    mapstar,
    rebuild_exc,
    starmapstar,
)

from . import _core, util
from .queues import _decode, _encode, _new_encoder, _table_refresher
from .reduction import DupFd, ForkingPickler

__all__ = ["Pool", "ThreadPool"]

#
# Constants and helpers shared with the stdlib
#

INIT = "INIT"
RUN = "RUN"
CLOSE = "CLOSE"
TERMINATE = "TERMINATE"

job_counter = itertools.count()

# A task message: the pickled arguments of its kind, the function part (the pickled
# ``(kind, func)``, the same bytes for every task of a call, pickled once per call), then a
# trailer: the length of the function part (u32), job and index (little-endian u64: the last
# 16 bytes, which ``get_task`` records on the board). ``pickle.loads`` stops at the end of
# the arguments' pickle, so nothing is sliced to read them.
_TRAILER = struct.Struct("<IQQ")
_TRAILER_SIZE = _TRAILER.size
# A result message: the pickled (success, value), then job (signed: the parent's control
# messages use negative ids) and index, read apart from the pickle so that a value the
# parent cannot unpickle fails its own task only.
_RESULT_TRAILER = struct.Struct("<qQ")
# The high bit of a task trailer's function-part length: the arguments part is a map chunk
# of exact ints or floats as packed scalars (``_core.pack_scalars``), not a pickle.
_PACKED_ARGS = 1 << 31
# The tag of a result message whose value is a list of exact ints or floats, packed the same
# way (the queue tags are 0, 1, 0x81 and 0x82).
_SCALARS = 0x10
# Results of these types (alone, or in a short list) are pickled by ``pickle.dumps``:
# ``ForkingPickler`` registers no reducer for them.
_PLAIN = frozenset((int, float, str, bytes, bool, type(None), complex))
# Task kinds: how a worker applies ``func`` to the arguments part.
_CALL = 0  # func(*args)
_CALL_KW = 1  # func(*args, **kwds): the part is (args, kwds)
_MAP = 2  # list(map(func, chunk)), the stdlib's mapstar
_STARMAP = 3  # list(itertools.starmap(func, chunk)), the stdlib's starmapstar
# The job id of the message that tells a worker to exit.
_STOP_JOB = (1 << 64) - 1
# Result-ring control messages (job ids no task has).
_LOST = -1  # (job, index, exception): a task whose worker died
_FINISH = -2  # the result thread ends
_BROKEN = -3  # exception: fail everything pending (workers keep dying before any task)
# Results taken per wake of the result thread.
_RESULT_BATCH = 256
# Bytes of the task and result rings: a default map chunk of a million small items (about
# 600 KB pickled) fits in the ring itself, not in a memfd of its own.
_RING = 1 << 22
# Encoded task bytes after which a long call queues what it has so far.
_FLUSH = 256 << 10

__all__ += ["WorkerLostError", "TaskTimeoutError"]


class WorkerLostError(ProcessError):
    """A worker process died while running the task (killed by a signal, the OOM killer,
    ``os._exit``...), or the pool was terminated before the task finished.

    ``pid``, ``exitcode`` (negative: the signal), ``signal`` (number or None) and ``oom``
    (the cgroup's OOM killer acted meanwhile) say what happened."""

    def __init__(self, message, pid=None, exitcode=None, oom=False):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = -exitcode if exitcode is not None and exitcode < 0 else None
        self.oom = oom

    def __reduce__(self):
        return (type(self), (self.args[0], self.pid, self.exitcode, self.oom))


class TaskTimeoutError(TimeoutError):
    """A task ran longer than the pool's ``task_timeout``; its worker was killed and
    replaced."""

    def __init__(self, message, pid=None, timeout=None):
        super().__init__(message)
        self.pid = pid
        self.timeout = timeout

    def __reduce__(self):
        return (type(self), (self.args[0], self.pid, self.timeout))


def _signal_name(sig):
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "signal %d" % sig


def _oom_kills():
    """The cgroup's ``oom_kill`` count (memory.events), or None where it cannot be read."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    path = line[3:].strip()
                    break
            else:
                return None
        with open("/sys/fs/cgroup%s/memory.events" % path) as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


#
# Encoding tasks (parent) and results (workers)
#


def _new_task_encoder():
    """``(encode, one)``, sharing one reused ``ForkingPickler`` per thread:
    ``encode(job, index0, fpart, argss, flush) -> (blob, bounds)`` makes one task message per
    element of ``argss`` (see ``_TRAILER``); ``one(obj)`` pickles one object in band (a
    function part, an ``apply_async``'s arguments)."""
    buf = io.BytesIO()
    pickler = ForkingPickler(buf, 5)
    seek, truncate, tell, write, getvalue = (
        buf.seek,
        buf.truncate,
        buf.tell,
        buf.write,
        buf.getvalue,
    )
    clear, dump, pack = pickler.clear_memo, pickler.dump, _TRAILER.pack
    pack_scalars = _core.pack_scalars
    refresh = _table_refresher(pickler)
    busy = False

    def encode(job, index, fpart, argss, flush=None, packable=False):
        nonlocal busy
        if busy:  # re-entered from a __reduce__
            return _new_task_encoder()[0](job, index, fpart, argss, flush, packable)
        refresh()
        busy = True
        bounds = []
        head = len(fpart)
        try:
            seek(0)
            truncate()
            for packed, args in _task_parts(argss, packable, pack_scalars):
                if packed is None:
                    clear()
                    dump(args)
                    write(fpart)
                    write(pack(head, job, index))
                else:
                    write(packed)
                    write(fpart)
                    write(pack(head | _PACKED_ARGS, job, index))
                index += 1
                end = tell()
                bounds.append(end)
                if flush is not None and end >= _FLUSH:
                    # Queue what is encoded so far: workers start while the rest is pickled.
                    flush(getvalue(), bounds)
                    bounds = []
                    seek(0)
                    truncate()
            return getvalue(), bounds
        finally:
            # The memo holds what was pickled: let it go now, not at the next call.
            clear()
            busy = False

    def one(obj):
        nonlocal busy
        if busy:
            return _new_task_encoder()[1](obj)
        refresh()
        busy = True
        try:
            seek(0)
            truncate()
            clear()
            dump(obj)
            return getvalue()
        finally:
            # The memo holds what was pickled: let it go now, not at the next call.
            clear()
            busy = False

    return encode, one


_local = threading.local()


def _encoders():
    try:
        return _local.task_encoders
    except AttributeError:
        enc = _local.task_encoders = _new_task_encoder()
        return enc


def _task_parts(argss, packable, pack_scalars):
    """``(packed, args)`` per task of ``argss``: its packed scalars (then ``args`` is None)
    or None and the arguments to pickle."""
    if not packable:
        for args in argss:
            yield None, args
    elif argss.__class__ is _ListChunks:
        seq, size = argss.seq, argss.size
        for i in range(0, len(seq), size):
            packed = pack_scalars(seq, i, i + size)
            yield packed, (seq[i : i + size] if packed is None else None)
    else:
        for args in argss:
            yield pack_scalars(args), args


def _encode_tasks(job, index, fpart, argss, flush=None, packable=False):
    return _encoders()[0](job, index, fpart, argss, flush, packable)


# Function parts of plain module-level functions, kept across calls (apply_async pickles
# one task per call): checked against the module's attribute before use, as pickling by
# reference would.
_fparts = {}


def _function_part(kind, func):
    """The pickled ``(kind, func)`` of a task."""
    if func.__class__ is types.FunctionType:
        key = (kind, func)
        fpart = _fparts.get(key)
        if fpart is not None:
            mod = sys.modules.get(func.__module__)
            if getattr(mod, func.__qualname__, None) is func:
                return fpart
        fpart = _encoders()[1]((kind, func))
        if "." not in func.__qualname__ and "<" not in func.__qualname__:
            if len(_fparts) >= 256:
                _fparts.clear()
            _fparts[key] = fpart
        return fpart
    return _encoders()[1]((kind, func))


class _Portable:
    """A ring or a board handed to a worker: the object itself under fork, its descriptors
    when the worker is spawned (pickled with the process object)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __reduce__(self):
        obj = self.obj
        if isinstance(obj, _core.TaskBoard):
            return _open_board, (DupFd(obj.fileno()), obj.slots)
        seg, send, recv, ev = obj.fds()
        return _open_ring, (obj.capacity, DupFd(seg), DupFd(send), DupFd(recv))


def _open_ring(capacity, seg, send, recv):
    return _Portable(_core.Channel.open(seg.detach(), capacity, send.detach(), recv.detach()))


def _open_board(fd, slots):
    return _Portable(_core.TaskBoard.open(fd.detach(), slots))


#
# Code run by worker processes
#


def worker(
    tasks,
    results,
    board,
    slot,
    initializer=None,
    initargs=(),
    maxtasks=None,
    wrap_exception=True,
):
    """A pool worker: takes tasks until told to stop (or ``maxtasks`` are done)."""
    if (maxtasks is not None) and not (isinstance(maxtasks, int) and maxtasks >= 1):
        raise AssertionError(f"Maxtasks {maxtasks!r} is not valid")
    tasks, results, board = tasks.obj, results.obj, board.obj
    get_task, put, finish = tasks.get_task, results.put, board.finish
    trailer, loads, dumps = _TRAILER.unpack_from, ForkingPickler.loads, pickle.dumps
    pack_scalars, unpack_scalars = _core.pack_scalars, _core.unpack_scalars
    pack_result = _RESULT_TRAILER.pack
    starmap = itertools.starmap
    plain = _PLAIN
    encode = _new_encoder()
    if initializer is not None:
        initializer(*initargs)
    # Started: the slot shows this pid from now on (a worker that dies before this line is
    # one that could not start, see Pool._early_death).
    finish(slot)
    # The last function part and what it unpickled to: a task of the same call reuses a
    # plain function or class (never a callable instance, which may carry state).
    last_fpart = kind = func = None
    completed = 0
    while maxtasks is None or completed < maxtasks:
        try:
            r = get_task(board, slot, True, None)
        except KeyboardInterrupt:
            # Ctrl-C reaches the whole process group: the parent decides what happens to
            # the pool; an idle worker keeps waiting.
            continue
        if r.__class__ is not tuple:  # the ring was shut down (terminate)
            break
        data = r[1]
        if data.__class__ is not bytes:  # a large message, in a memfd of its own
            data = memoryview(data)
        end = len(data) - _TRAILER_SIZE
        flen, job, i = trailer(data, end)
        if job == _STOP_JOB:
            util.debug("worker got sentinel -- exiting")
            break
        packed = flen & _PACKED_ARGS
        flen &= ~_PACKED_ARGS
        try:
            fpart = data[end - flen : end]
            if fpart != last_fpart:
                last_fpart = None
                kind, func = loads(fpart)
                if func.__class__ in _REUSABLE:
                    last_fpart = bytes(fpart)
            if packed:
                args = unpack_scalars(data, end - flen)
            else:
                args = loads(data)  # the arguments' pickle comes first: loads() stops at its end
            # apply_task(), inlined: one call less per task.
            if kind == _CALL:
                result = (True, func(*args))
            elif kind == _MAP:
                result = (True, list(map(func, args)))
            elif kind == _STARMAP:
                result = (True, list(starmap(func, args)))
            else:
                result = (True, func(*args[0], **args[1]))
        except BaseException as e:
            # SystemExit and KeyboardInterrupt from a task fail that task: the worker lives.
            if wrap_exception:
                e = ExceptionWithTraceback(e, e.__traceback__)
            result = (False, e)
        fpart = args = data = r = None
        if last_fpart is None:
            func = None
        value = result[1]
        cls = value.__class__
        try:
            if cls in plain or (
                cls is list and len(value) <= 8 and all(v.__class__ in plain for v in value)
            ):
                tag, data = 0, dumps(result, 5)
            elif cls is list and result[0] and (data := pack_scalars(value)) is not None:
                tag = _SCALARS
            else:
                tag, data = encode(result)
        except Exception as e:
            wrapped = MaybeEncodingError(e, value)
            util.debug("Possible encoding error while sending result: %s" % wrapped)
            tag, data = encode((False, wrapped))
        result = value = None
        tail = pack_result(job, i)
        put(tag, [data, tail] if data.__class__ is bytes else [*data, tail], True, None, False)
        data = None
        finish(slot)
        completed += 1
    util.debug("worker exiting after %d tasks" % completed)


_REUSABLE = (types.FunctionType, types.BuiltinFunctionType, type)


#
# Result objects
#

# Makes the waiters of a result share the one event they create. A child forked while a
# thread held it gets a fresh one.
_events_lock = threading.Lock()


def _reset_events_lock():
    global _events_lock
    _events_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_events_lock)


class ApplyResult:
    """The result of ``apply_async`` (``AsyncResult``)."""

    def __init__(self, pool, callback, error_callback):
        self._pool = pool
        self._event = None  # made by the first wait(): most results are never waited on
        self._ready = False
        self._job = next(job_counter)
        self._cache = pool._cache
        self._callback = callback
        self._error_callback = error_callback
        self._cache[self._job] = self

    def ready(self):
        """Whether the call has completed."""
        return self._ready

    def successful(self):
        """Whether the call completed without raising (ValueError if not ready)."""
        if not self._ready:
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout=None):
        """Wait until the result is available or ``timeout`` seconds pass."""
        if self._ready:
            return
        with _events_lock:  # waiters share one event
            event = self._event
            if event is None:
                event = self._event = threading.Event()
        # Installed before `_ready` is read again, while `_done` stores `_ready` before it
        # reads `_event`: one of the two sees the other's store, so no wake-up is missed.
        if not self._ready:
            event.wait(timeout)

    def get(self, timeout=None):
        """The result when it arrives; raises ``multiprocessing.TimeoutError`` if it does not
        within ``timeout`` seconds, or the call's exception."""
        if not self._ready:
            self.wait(timeout)
            if not self._ready:
                raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _done(self):
        self._ready = True
        event = self._event
        if event is not None:
            event.set()

    def _set(self, i, obj):
        self._success, self._value = obj
        if self._callback and self._success:
            _call_back(self._callback, self._value)
        if self._error_callback and not self._success:
            _call_back(self._error_callback, self._value)
        self._done()
        del self._cache[self._job]
        self._pool = None

    def _lost(self, i, exc):
        if not self._ready:
            self._set(i, (False, exc))

    def _abort(self, exc):
        """Fails the whole job now (the pool cannot finish it)."""
        if not self._ready:
            self._success, self._value = False, exc
            if self._error_callback:
                _call_back(self._error_callback, exc)
            self._cache.pop(self._job, None)
            self._done()
            self._pool = None

    __class_getitem__ = classmethod(types.GenericAlias)


AsyncResult = ApplyResult


def _call_back(fn, value):
    try:
        fn(value)
    except BaseException:
        # The stdlib's result thread dies here and the pool hangs; report and go on.
        sys.excepthook(*sys.exc_info())


class MapResult(ApplyResult):
    """The result of ``map_async``/``starmap_async``."""

    def __init__(self, pool, chunksize, length, callback, error_callback, progress=None):
        ApplyResult.__init__(self, pool, callback, error_callback=error_callback)
        self._success = True
        self._value = [None] * length
        self._chunksize = chunksize
        self._length = length
        self._progress = progress
        if chunksize <= 0:
            self._number_left = 0
            self._got = bytearray()
            self._done()
            del self._cache[self._job]
            if progress is not None:
                progress.close()
        else:
            self._number_left = length // chunksize + bool(length % chunksize)
            self._got = bytearray(self._number_left)

    def _set(self, i, success_result):
        if self._got[i]:
            return
        self._got[i] = 1
        self._number_left -= 1
        success, result = success_result
        if self._progress is not None:
            self._progress.update(min(self._chunksize, self._length - i * self._chunksize))
        if success and self._success:
            self._value[i * self._chunksize : (i + 1) * self._chunksize] = result
        elif not success and self._success:
            # Only the first exception is kept.
            self._success = False
            self._value = result
        if self._number_left == 0:
            if self._progress is not None:
                self._progress.close()
            if self._success:
                if self._callback:
                    _call_back(self._callback, self._value)
            elif self._error_callback:
                _call_back(self._error_callback, self._value)
            del self._cache[self._job]
            self._done()
            self._pool = None

    def _lost(self, i, exc):
        if not self._got[i]:
            self._set(i, (False, exc))


class IMapIterator:
    """The iterator ``imap`` returns (results in order)."""

    def __init__(self, pool, buffersize=None, progress=None):
        self._pool = pool
        self._cond = threading.Condition(threading.Lock())
        self._job = next(job_counter)
        self._cache = pool._cache
        self._items = collections.deque()
        self._index = 0
        self._length = None
        self._unsorted = {}
        self._progress = progress
        # With buffersize: one permit per task submitted and not yet yielded.
        self._permits = None if buffersize is None else threading.Semaphore(buffersize)
        self._cache[self._job] = self

    def __iter__(self):
        return self

    def next(self, timeout=None):
        """The next result, waiting at most ``timeout`` seconds
        (``multiprocessing.TimeoutError``)."""
        with self._cond:
            waited = False
            while not self._items:
                if self._index == self._length:
                    self._pool = None
                    raise StopIteration from None
                if waited:
                    raise TimeoutError from None
                self._cond.wait(timeout)
                waited = True
            item = self._items.popleft()
        if self._permits is not None:
            self._permits.release()
        success, value = item
        if success:
            return value
        raise value

    __next__ = next

    def _received(self, i):
        return i < self._index or i in self._unsorted

    def _tick(self):
        self._progress.update(1)
        if self._index == self._length:
            self._progress.close()

    def _set(self, i, obj):
        with self._cond:
            if self._received(i):
                return
            if self._index == i:
                self._items.append(obj)
                self._index += 1
                while self._index in self._unsorted:
                    obj = self._unsorted.pop(self._index)
                    self._items.append(obj)
                    self._index += 1
                self._cond.notify()
            else:
                self._unsorted[i] = obj
            if self._progress is not None:
                self._tick()
            if self._index == self._length:
                del self._cache[self._job]
                self._pool = None

    def _lost(self, i, exc):
        self._set(i, (False, exc))

    def _abort(self, exc):
        """Ends the iteration with ``exc`` (the pool cannot finish the job)."""
        with self._cond:
            self._items.append((False, exc))
            self._length = self._index = self._index + 1
            self._cond.notify_all()
        self._cache.pop(self._job, None)
        self._pool = None

    def _set_length(self, length):
        with self._cond:
            self._length = length
            if self._index == self._length:
                self._cond.notify()
                if self._progress is not None:
                    self._progress.close()
                self._cache.pop(self._job, None)
                self._pool = None


class IMapUnorderedIterator(IMapIterator):
    """The iterator ``imap_unordered`` returns (results as they come)."""

    def __init__(self, pool, buffersize=None, progress=None):
        IMapIterator.__init__(self, pool, buffersize, progress)
        self._seen = bytearray()

    def _received(self, i):
        seen = self._seen
        return i < len(seen) and seen[i]

    def _set(self, i, obj):
        with self._cond:
            seen = self._seen
            if i >= len(seen):
                seen.extend(bytes(max(i + 1 - len(seen), len(seen))))
            elif seen[i]:
                return
            seen[i] = 1
            self._items.append(obj)
            self._index += 1
            self._cond.notify()
            if self._progress is not None:
                self._tick()
            if self._index == self._length:
                del self._cache[self._job]
                self._pool = None


class _ListChunks:
    """The chunks of a list, ``size`` items each (the last one shorter): slices when
    iterated; the task encoder packs a chunk straight from the list when it can
    (``_core.pack_scalars(seq, start, end)``), without making the slice."""

    __slots__ = ("seq", "size")

    def __init__(self, seq, size):
        self.seq, self.size = seq, size

    def __iter__(self):
        seq, size = self.seq, self.size
        for i in range(0, len(seq), size):
            yield seq[i : i + size]


def _chunks(iterable, size):
    """Tuples (lists, from a list) of ``size`` items of ``iterable`` (the last one
    shorter)."""
    if iterable.__class__ is list:
        return _ListChunks(iterable, size)
    return _tuple_chunks(iterable, size)


def _tuple_chunks(iterable, size):
    it = iter(iterable)
    islice = itertools.islice
    while True:
        x = tuple(islice(it, size))
        if not x:
            return
        yield x


class _Chunked:
    """What ``imap``/``imap_unordered`` return for ``chunksize > 1``: the items of each
    chunk's result in turn (a generator in the stdlib)."""

    def __init__(self, result):
        self._result = result
        self._chunk = iter(())

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            try:
                return next(self._chunk)
            except StopIteration:
                self._chunk = iter(next(self._result))


class _PoolCache(dict):
    """The pool's pending results by job id (the stdlib's name; nothing waits for it to
    empty here)."""

    def __init__(self, *args, notifier=None, **kwds):
        self.notifier = notifier
        super().__init__(*args, **kwds)


class _Waker:
    """A non-blocking pipe that wakes the supervisor (held apart from the pool, so that
    what holds it does not keep the pool alive)."""

    def __init__(self):
        self.fds = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def wake(self):
        fds = self.fds
        if fds is not None:
            try:
                os.write(fds[1], b"x")
            except OSError:
                pass

    def drain(self):
        fds = self.fds
        if fds is not None:
            try:
                while os.read(fds[0], 4096):
                    pass
            except OSError:
                pass

    def fileno(self):
        return self.fds[0] if self.fds is not None else -1

    def close(self):
        fds, self.fds = self.fds, None
        if fds is not None:
            for fd in fds:
                os.close(fd)


#
# Progress bars (progress=)
#


class _PlainBar:
    """A progress bar on stderr for when tqdm is not installed."""

    def __init__(self, total, desc):
        self.total, self.desc, self.n = total, desc, 0
        self._last = 0.0
        self._closed = False
        self._draw()

    def _draw(self):
        if self.total:
            frac = min(self.n / self.total, 1.0)
            bar = "#" * int(frac * 30)
            text = "\r%s |%-30s| %d/%d (%3d%%)" % (self.desc, bar, self.n, self.total, frac * 100)
        else:
            text = "\r%s %d" % (self.desc, self.n)
        sys.stderr.write(text)
        sys.stderr.flush()

    def update(self, n):
        self.n += n
        now = time.monotonic()
        if now - self._last >= 0.1 or (self.total and self.n >= self.total):
            self._last = now
            self._draw()

    def close(self):
        if not self._closed:
            self._closed = True
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()


def _progress_bar(progress, total):
    """A bar for ``progress=`` (True, or a description string), or None."""
    if progress is None or progress is False:
        return None
    desc = progress if isinstance(progress, str) else "pool"
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainBar(total, desc)
    return tqdm(total=total, desc=desc, file=sys.stderr)


def _check_buffersize(buffersize):
    if buffersize is None:
        return
    if not isinstance(buffersize, int) or isinstance(buffersize, bool):
        raise TypeError("buffersize must be an integer or None")
    if buffersize < 1:
        raise ValueError("buffersize must be None or > 0")


#
# The pool
#


class Pool:
    """A pool of worker processes (``multiprocessing.Pool``)."""

    _wrap_exception = True

    @staticmethod
    def Process(ctx, *args, **kwds):
        return ctx.Process(*args, **kwds)

    def __init__(
        self,
        processes=None,
        initializer=None,
        initargs=(),
        maxtasksperchild=None,
        context=None,
        *,
        task_timeout=None,
    ):
        # Set early so that __del__ works if __init__ raises.
        self._pool = []
        self._state = INIT
        cluster = sys.modules.get("rmp.cluster.ray")
        if cluster is not None:  # in a Ray pool's worker, importing the main script?
            cluster._check_not_importing_main()
        self._ctx = context or _default_context()
        self._cache = _PoolCache()
        self._maxtasksperchild = maxtasksperchild
        self._initializer = initializer
        self._initargs = initargs
        if processes is None:
            processes = _cpu_count()
        self._check_args(processes, initializer, maxtasksperchild, task_timeout)
        self._stopped = 0  # workers that took a stop message
        self._early_deaths = 0  # workers in a row that died before taking a task
        self._respawn_at = 0.0  # no replacement before this time.monotonic()
        self._workers_lock = threading.RLock()  # self._pool, against _repopulate_pool()
        self._broken = False  # a _BROKEN message was posted and no worker got ready since
        self._waker = _Waker()
        try:
            self._setup_queues()
            self._repopulate_pool()
        except BaseException:
            for p in self._pool:
                if p.exitcode is None:
                    p.terminate()
            for p in self._pool:
                p.join()
            self._waker.close()
            raise
        self._state = RUN
        self._result_handler = threading.Thread(
            target=self._handle_results,
            args=(self._results_get, self._cache),
            daemon=True,
        )
        self._result_handler.start()
        self._worker_handler = threading.Thread(target=self._supervise_ref(), daemon=True)
        self._worker_handler.start()
        self._terminate = util.Finalize(
            self, self._terminate_pool, args=(_TerminateState(self),), exitpriority=15
        )

    def _check_args(self, processes, initializer, maxtasksperchild, task_timeout):
        """Checks the constructor's arguments as the stdlib does and sets the state every
        pool shares (the cluster pools of ``rmp.cluster`` too)."""
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if task_timeout is not None:
            task_timeout = float(task_timeout)
            if not task_timeout > 0:
                raise ValueError("task_timeout must be a positive number of seconds or None")
        self._task_timeout = task_timeout
        self._processes = processes
        self._lock = threading.RLock()  # the state, the feeders count, the stop messages
        self._feeders = 0  # imap feeding threads running
        self._stops_sent = False

    # -- transport (processes; ThreadPool overrides) --------------------------------------

    def _setup_queues(self):
        self._tasks = _core.Channel(_RING, 0xFFFFFFFF)
        self._results = _core.Channel(_RING, 0xFFFFFFFF)
        self._board = _core.TaskBoard(self._processes)
        self._results_get = self._results.get_many
        self._timed_out = {}  # pid -> (job, index) killed for task_timeout
        self._oom_seen = _oom_kills()

    @staticmethod
    def _fpart(kind, func):
        """What ``_put_tasks`` takes for tasks applying ``func`` as ``kind`` says."""
        return _function_part(kind, func)

    def _put_tasks(self, job, index, fpart, argss, packable=False):
        """Queue one task of ``job`` per element of ``argss``, from ``index`` on (``fpart``:
        from ``_fpart``), as they are pickled; a pickling error raises here (tasks queued
        before it run, and their results are dropped by the caller). ``packable``: the
        elements are map chunks, sent as packed scalars when they are lists or tuples of
        exact ints or floats."""
        put_batch = self._tasks.put_batch

        def flush(blob, bounds):
            put_batch(0, blob, bounds, True, None, True)

        blob, bounds = _encode_tasks(job, index, fpart, argss, flush, packable)
        if bounds:
            flush(blob, bounds)

    def _put_stops(self, n):
        blob = _TRAILER.pack(0, _STOP_JOB, 0) * n
        size = _TRAILER_SIZE
        self._tasks.put_batch(0, blob, [size * (k + 1) for k in range(n)], True, None, True)

    def _post_result(self, job, i, obj):
        """Put a control message into the result ring, after every result already there."""
        tag, data = _encode(obj)
        tail = _RESULT_TRAILER.pack(job, i)
        self._results.put(tag, [data, tail] if data.__class__ is bytes else [*data, tail])

    def _worker_args(self, slot):
        """``(target, args)`` of the worker for ``slot``."""
        return worker, (
            _Portable(self._tasks),
            _Portable(self._results),
            _Portable(self._board),
            slot,
            self._initializer,
            self._initargs,
            self._maxtasksperchild,
            self._wrap_exception,
        )

    def _new_worker(self, slot):
        target, args = self._worker_args(slot)
        w = self.Process(self._ctx, target=target, args=args)
        w.name = w.name.replace("Process", "PoolWorker")
        w.daemon = True
        w._rmp_slot = slot
        return w

    def _repopulate_pool(self):
        """Start workers until there are ``processes`` (the stdlib's name)."""
        self._repopulate_pool_to(self._processes)

    def _repopulate_pool_to(self, n):
        with self._workers_lock:
            used = {w._rmp_slot for w in self._pool}
            for slot in range(self._processes):
                if len(self._pool) >= n:
                    break
                if slot in used:
                    continue
                w = self._new_worker(slot)
                w.start()
                self._pool.append(w)
                util.debug("added worker")

    # -- the supervisor (the stdlib's worker handler) ------------------------------------

    def _supervise_ref(self):
        # The thread must not keep the pool alive (its finalizer terminates it when the
        # pool is collected): it holds a strong reference only for one wait (at most 1 s),
        # so a pool dropped without close() goes within a second.
        ref = weakref.ref(self)

        def run():
            while True:
                pool = ref()
                if pool is None:
                    return
                try:
                    if not pool._supervise_once():
                        return
                except Exception:
                    # A replacement could not start (fork failed: EAGAIN, ENOMEM...): report
                    # it, and try again after a pause rather than leave the pool unwatched.
                    sys.excepthook(*sys.exc_info())
                    pool._respawn_at = time.monotonic() + 1.0
                finally:
                    pool = None

        return run

    def _supervise_once(self):
        """One wait for a worker's exit, a wake-up or a task deadline; False when done."""
        if self._state == TERMINATE:
            return False
        workers = list(self._pool)
        timeout = self._next_deadline(workers)
        poller = select.poll()
        poller.register(self._waker.fileno(), select.POLLIN)
        for w in workers:
            try:
                poller.register(w.sentinel, select.POLLIN)
            except (ValueError, OSError):
                pass
        # Bounded, so that a pool dropped without close() is noticed (weakref above).
        wait = 1.0 if timeout is None else min(timeout, 1.0)
        delay = self._respawn_at - time.monotonic()
        if delay > 0:
            wait = min(wait, delay)
        try:
            poller.poll(wait * 1000)
        except InterruptedError:
            pass
        self._waker.drain()
        if self._state == TERMINATE:
            return False
        self._check_timeouts(workers)
        self._maintain_pool()
        if self._state == CLOSE and not self._pool:
            if self._stopped >= self._processes or self._broken:
                # Every worker took its stop message (or workers cannot start at all, and
                # what was pending has failed): all results are in the ring.
                self._post_result(_FINISH, 0, None)
                return False
        return True

    def _running_task(self, w):
        """``(job, index, started_ns, claims)`` of the task worker ``w``'s slot shows it
        running, or None: not ready yet, idle, torn by a write it died in, or a claim whose
        pop it never published (that task is still queued, someone else will run it)."""
        running, pid, job, index, started, claims, pops, torn = self._board.read(w._rmp_slot)
        if torn or pid != w.pid or not running:
            return None
        if (self._tasks.popped() - pops) & 0xFFFFFFFF >= 0x80000000:
            return None
        return job, index, started, claims

    def _next_deadline(self, workers):
        t = self._task_timeout
        if t is None:
            return None
        now = _core.monotonic_ns()
        soonest = t
        for w in workers:
            task = self._running_task(w)
            if task is not None and task[0] != _STOP_JOB:
                soonest = min(soonest, max(0.0, (task[2] - now) / 1e9 + t))
        return soonest

    def _check_timeouts(self, workers):
        t = self._task_timeout
        if t is None:
            return
        now = _core.monotonic_ns()
        for w in workers:
            task = self._running_task(w)
            if task is None or task[0] == _STOP_JOB or w.pid in self._timed_out:
                continue
            if (now - task[2]) / 1e9 >= t:
                # Read again right before the kill: a worker that moved on meanwhile must
                # not lose its next task for this one.
                if self._running_task(w) != task:
                    continue
                self._timed_out[w.pid] = task[:2]
                try:
                    w.kill()
                except (OSError, ValueError):
                    pass

    def _maintain_pool(self):
        """Reap exited workers (failing the task a dead one was running) and replace them
        while the pool runs, or while a closed pool still needs them to finish its tasks."""
        with self._workers_lock:
            for i in reversed(range(len(self._pool))):
                w = self._pool[i]
                if w.exitcode is None:
                    continue
                del self._pool[i]
                if self._account_exit(w):
                    self._stopped += 1
                w.join()
            if time.monotonic() < self._respawn_at:
                return
            if self._state == RUN:
                self._repopulate_pool_to(self._processes)
            elif self._state == CLOSE:
                # A worker that exited without its stop message (maxtasksperchild, or
                # killed) is replaced: the queued tasks and that message still need one.
                self._repopulate_pool_to(self._processes - self._stopped)

    def _account_exit(self, w):
        """Handles a worker that exited; True if it took a stop message."""
        _running, pid, _job, _index, _started, _claims, _pops, torn = self._board.read(w._rmp_slot)
        if pid != w.pid and not torn:
            # It never got ready for tasks. Only an exit with a code counts against the
            # pool (an initializer that raised): a signal (the OOM killer, a kill from
            # outside) says nothing about the next worker.
            if w.exitcode is not None and w.exitcode > 0:
                self._early_death(w)
            return False
        self._early_deaths = 0
        self._broken = False
        task = self._running_task(w)
        if task is None:
            return False
        job, index = task[:2]
        if job == _STOP_JOB:
            return True
        code = w.exitcode
        timed_out = self._timed_out.pop(w.pid, None)
        if timed_out == (job, index):
            exc = TaskTimeoutError(
                "task %d of job %d ran longer than task_timeout=%gs: worker %d (%s) was killed"
                % (index, job, self._task_timeout, w.pid, w.name),
                pid=w.pid,
                timeout=self._task_timeout,
            )
        else:
            exc = self._lost_error(w, code, job, index)
        self._post_result(_LOST, 0, (job, index, exc))
        return False

    def _early_death(self, w):
        """A worker died before it was ready for tasks (its initializer raised, its start
        failed...). Replacements are delayed more and more (up to 2 s), and once as many
        workers as the pool has died so in a row, what is pending fails: it would wait
        forever otherwise (as it does with the stdlib)."""
        n, give_up = self._count_early_death()
        if give_up:
            code = w.exitcode
            how = (
                "was killed by %s" % _signal_name(-code)
                if code < 0
                else "exited with code %d" % code
            )
            exc = WorkerLostError(
                "%d pool workers in a row died before they were ready for tasks (the "
                "last, %d (%s), %s): is the initializer failing? (see its output)"
                % (n, w.pid, w.name, how),
                pid=w.pid,
                exitcode=code,
            )
            self._broken = True
            self._post_result(_BROKEN, 0, exc)

    def _count_early_death(self):
        """Counts a worker that died before it was ready and delays the next start (50 ms,
        doubling, at most 2 s); returns ``(deaths in a row, whether pending work should now
        fail)``: after as many in a row as the pool has workers (at least 2)."""
        self._early_deaths += 1
        n = self._early_deaths
        self._respawn_at = time.monotonic() + min(0.05 * 2 ** min(n - 1, 6), 2.0)
        return n, n % max(2, self._processes) == 0

    def _lost_error(self, w, code, job, index):
        oom = False
        if code is not None and code < 0:
            how = "was killed by %s" % _signal_name(-code)
            if code == -signal.SIGKILL:
                now = _oom_kills()
                if now is not None and self._oom_seen is not None and now > self._oom_seen:
                    oom = True
                    how += (
                        " (the kernel's OOM killer: the cgroup's oom_kill count rose to %d)" % now
                    )
                self._oom_seen = now
        else:
            how = "exited with code %s" % code
        return WorkerLostError(
            "worker %d (%s) %s while running task %d of job %d" % (w.pid, w.name, how, index, job),
            pid=w.pid,
            exitcode=code,
            oom=oom,
        )

    # -- the result thread ---------------------------------------------------------------

    @staticmethod
    def _handle_results(get_many, cache):
        loads, trailer = ForkingPickler.loads, _RESULT_TRAILER.unpack_from
        unpack_scalars = _core.unpack_scalars
        while True:
            msgs = get_many(_RESULT_BATCH, True, None)
            if msgs.__class__ is int:  # the ring was shut down
                break
            for tag, data in msgs:
                if data.__class__ is not bytes:  # a large message, in a memfd of its own
                    data = memoryview(data)
                job, i = trailer(data, len(data) - 16)
                try:
                    # The pickle comes first: loads() stops at its end.
                    if tag == 0:
                        obj = loads(data)
                    elif tag == _SCALARS:
                        obj = (True, unpack_scalars(data, len(data) - 16))
                    else:
                        obj = _decode(tag, data)
                except Exception as e:
                    # Pickled in the worker, but it cannot be rebuilt here: fail this task
                    # (the stdlib's result thread dies of it, and the pool hangs).
                    exc = MaybeEncodingError(e, "<the result of task %d of job %d>" % (i, job))
                    exc.__cause__ = e
                    obj = (False, exc)
                data = None
                Pool._dispatch(cache, job, i, obj)
                if job == _FINISH:
                    util.debug("result handler got sentinel")
                    return
            msgs = tag = obj = None

    @staticmethod
    def _dispatch(cache, job, i, obj):
        """Hands a result (or a control message) to its result object."""
        if job < 0:
            if job == _LOST:
                job, i, obj = obj
                try:
                    cache[job]._lost(i, obj)
                except KeyError:
                    pass
            elif job == _BROKEN:
                for result in list(cache.values()):
                    result._abort(obj)
            return
        try:
            cache[job]._set(i, obj)
        except KeyError:
            pass

    # -- the API -------------------------------------------------------------------------

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self, _warn=warnings.warn, RUN=RUN):
        if self._state == RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)

    def __repr__(self):
        cls = self.__class__
        return (
            f"<{cls.__module__}.{cls.__qualname__} state={self._state} pool_size={len(self._pool)}>"
        )

    def _check_running(self):
        if self._state != RUN:
            raise ValueError("Pool not running")

    def apply(self, func, args=(), kwds={}):  # noqa: B006  (the stdlib's signature)
        """Call ``func(*args, **kwds)`` in a worker and return its result."""
        return self.apply_async(func, args, kwds).get()

    def map(self, func, iterable, chunksize=None, *, progress=None):
        """``list(map(func, iterable))`` computed by the workers, in chunks."""
        return self._map_async(func, iterable, mapstar, chunksize, progress=progress).get()

    def starmap(self, func, iterable, chunksize=None, *, progress=None):
        """As ``map``, with each item unpacked as the arguments: ``func(*item)``."""
        return self._map_async(func, iterable, starmapstar, chunksize, progress=progress).get()

    def starmap_async(
        self, func, iterable, chunksize=None, callback=None, error_callback=None, *, progress=None
    ):
        """Asynchronous ``starmap``: a ``MapResult``."""
        return self._map_async(
            func, iterable, starmapstar, chunksize, callback, error_callback, progress
        )

    def map_async(
        self, func, iterable, chunksize=None, callback=None, error_callback=None, *, progress=None
    ):
        """Asynchronous ``map``: a ``MapResult``."""
        return self._map_async(
            func, iterable, mapstar, chunksize, callback, error_callback, progress
        )

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):  # noqa: B006
        """Asynchronous ``apply``: an ``AsyncResult``."""
        self._check_running()
        result = ApplyResult(self, callback, error_callback)
        try:
            if kwds:
                self._submit_one(result._job, self._fpart(_CALL_KW, func), (args, kwds))
            else:
                self._submit_one(result._job, self._fpart(_CALL, func), args)
        except BaseException:
            del self._cache[result._job]
            raise
        return result

    def _map_async(
        self,
        func,
        iterable,
        mapper,
        chunksize=None,
        callback=None,
        error_callback=None,
        progress=None,
    ):
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(iterable), len(self._pool) * 4 or 1)
            if extra:
                chunksize += 1
        if len(iterable) == 0:
            chunksize = 0
        # Materialised here: an exception from the iterable or from pickling raises at the
        # call site.
        kind = _STARMAP if mapper is starmapstar else _MAP
        fpart = self._fpart(kind, func) if chunksize else None
        bar = _progress_bar(progress, len(iterable))
        result = MapResult(self, chunksize, len(iterable), callback, error_callback, bar)
        if chunksize:
            try:
                self._submit(result._job, 0, fpart, _chunks(iterable, chunksize), kind == _MAP)
            except BaseException:
                self._cache.pop(result._job, None)
                if bar is not None:
                    bar.close()
                raise
        return result

    def imap(self, func, iterable, chunksize=1, *, buffersize=None, progress=None):
        """An iterator over ``map(func, iterable)``'s results, in order, as they come."""
        return self._imap(IMapIterator, func, iterable, chunksize, buffersize, progress)

    def imap_unordered(self, func, iterable, chunksize=1, *, buffersize=None, progress=None):
        """As ``imap``, but results come in the order they are ready."""
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize, buffersize, progress)

    def _imap(self, cls, func, iterable, chunksize, buffersize, progress):
        self._check_running()
        _check_buffersize(buffersize)
        if chunksize != 1 and chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        total = None
        if progress and hasattr(iterable, "__len__"):
            # One tick per task: a chunk counts once.
            total = -(-len(iterable) // chunksize)
        if chunksize == 1:
            fpart = self._fpart(_CALL, func)
            items = ((x,) for x in iterable)
        else:
            fpart = self._fpart(_MAP, func)
            items = _chunks(iterable, chunksize)
        bar = _progress_bar(progress, total)
        result = cls(self, buffersize, bar)
        if buffersize is None and isinstance(iterable, (list, tuple, range)):
            # Known items: queued now (pickling errors raise here).
            try:
                argss = list(items)
                self._submit(result._job, 0, fpart, argss, chunksize != 1)
            except BaseException:
                self._cache.pop(result._job, None)
                raise
            result._set_length(len(argss))
        else:
            with self._lock:
                if self._state != RUN:
                    self._cache.pop(result._job, None)
                    raise ValueError("Pool not running")
                self._feeders += 1
            t = threading.Thread(
                target=self._feed, args=(result, fpart, items, chunksize != 1), daemon=True
            )
            t.start()
        if chunksize == 1:
            return result
        return _Chunked(result)

    def _submit_one(self, job, fpart, args):
        """``_submit`` of one task (``apply_async``), without the batch machinery."""
        data = _encoders()[1](args)
        with self._lock:
            self._check_running()
            self._tasks.put(0, [data, fpart, _TRAILER.pack(len(fpart), job, 0)], True, None, True)

    def _submit(self, job, index, fpart, argss, packable=False):
        """``_put_tasks`` while the pool runs: under the lock that ``close()`` takes to queue
        the stop messages, so that no task is queued behind them."""
        with self._lock:
            self._check_running()
            self._put_tasks(job, index, fpart, argss, packable)

    def _feed(self, result, fpart, items, packable):
        """Queue the tasks of an imap over a lazy iterable, as the stdlib's task handler
        does; with ``buffersize``, only as many as the consumer has room for."""
        i = 0
        permits = result._permits
        cache, job = self._cache, result._job
        try:
            it = iter(items)
            while self._state == RUN or self._state == CLOSE:
                if job not in cache:
                    return  # the job was failed as a whole (_abort): nothing more to queue
                if permits is not None:
                    # With a bound, feeding stops once the pool leaves RUN: a consumer that
                    # stopped reading would otherwise keep close()/join() waiting for this
                    # thread forever.
                    while not permits.acquire(timeout=0.1):
                        if self._state != RUN or job not in cache:
                            break
                    if self._state != RUN or job not in cache:
                        break
                try:
                    args = next(it)
                except StopIteration:
                    break
                except Exception as e:
                    # The stdlib reports this at the position it happened.
                    result._set(i, (False, e))
                    i += 1
                    break
                try:
                    self._put_tasks(result._job, i, fpart, (args,), packable)
                except Exception as e:
                    result._set(i, (False, e))
                i += 1
            if job in cache:
                result._set_length(i)
        finally:
            with self._lock:
                self._feeders -= 1
                last = self._feeders == 0
            if last and self._state == CLOSE:
                self._send_stops()

    def _send_stops(self):
        with self._lock:
            if self._stops_sent or self._feeders:
                return
            self._stops_sent = True
            self._put_stops(self._processes)
        self._waker.wake()

    def close(self):
        """No more tasks: the workers exit once the queued ones are done."""
        util.debug("closing pool")
        with self._lock:
            if self._state != RUN:
                return
            self._state = CLOSE
        self._send_stops()

    def terminate(self):
        """Stop the workers now (outstanding tasks fail with ``WorkerLostError``)."""
        util.debug("terminating pool")
        with self._lock:  # not between close()'s check of the state and its write
            self._state = TERMINATE
        self._terminate()

    def join(self):
        """Wait for the workers to exit (after ``close`` or ``terminate``)."""
        util.debug("joining pool")
        if self._state == RUN:
            raise ValueError("Pool is still running")
        elif self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        self._worker_handler.join()
        self._result_handler.join()
        for p in list(self._pool):
            p.join()

    @staticmethod
    def _terminate_pool(state):
        state.run()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()


class _TerminateState:
    """Terminates a pool: held by the pool's finalizer (no reference to the pool)."""

    def __init__(self, pool):
        self.pool = weakref.ref(pool)
        self.pool_list = pool._pool
        self.cache = pool._cache
        self.tasks = pool._tasks
        self.results = pool._results
        self.handlers = (pool._worker_handler, pool._result_handler)
        self.waker = pool._waker

    def run(self):
        util.debug("finalizing pool")
        pool = self.pool()
        if pool is not None:
            pool._state = TERMINATE
        pool = None
        tasks = self.tasks
        tasks.cancel_feeder()
        tasks.cancel_exit_join()
        tasks.shutdown(True)
        self.waker.wake()
        worker_handler, result_handler = self.handlers
        if worker_handler.is_alive() and worker_handler is not threading.current_thread():
            worker_handler.join()
        # Started ones only (a failed start() may have left one that never ran).
        workers = [p for p in self.pool_list if getattr(p, "_popen", True) is not None]
        for p in workers:
            if p.exitcode is None and hasattr(p, "terminate"):
                try:
                    p.terminate()
                except (OSError, ValueError):
                    pass
        deadline = time.monotonic() + 2.0
        for p in workers:
            try:
                p.join(max(0.0, deadline - time.monotonic()))
                if p.exitcode is None and hasattr(p, "kill"):
                    p.kill()
                    p.join()
            except ValueError:
                pass
        # Every result a worker sent is in the ring: let the result thread take them, then
        # stop it.
        self.results.cancel_feeder()
        self.results.cancel_exit_join()
        self.results.shutdown(False)
        if result_handler.is_alive() and result_handler is not threading.current_thread():
            result_handler.join()
        # What is still pending will never come.
        for job, result in list(self.cache.items()):
            result._abort(WorkerLostError("the pool was terminated before job %d finished" % job))
        self.waker.close()


def _cpu_count():
    """The stdlib's default pool size: ``os.process_cpu_count()`` where the running Python
    has it (3.13: the CPUs this process may use), else ``os.cpu_count()``."""
    count = getattr(os, "process_cpu_count", os.cpu_count)
    return count() or 1


def _default_context():
    from .context import _default_context as ctx

    return ctx.get_context()


#
# ThreadPool: the same API on threads
#


class ThreadPool(Pool):
    """A pool of worker threads (``multiprocessing.pool.ThreadPool``): nothing is pickled."""

    _wrap_exception = False

    @staticmethod
    def Process(ctx, *args, **kwds):
        from .dummy import Process

        return Process(*args, **kwds)

    def __init__(self, processes=None, initializer=None, initargs=()):
        Pool.__init__(self, processes, initializer, initargs)

    @staticmethod
    def _handle_results(get_many, cache):
        while True:
            for _tag, (job, i, obj) in get_many(_RESULT_BATCH, True, None):
                Pool._dispatch(cache, job, i, obj)
                if job == _FINISH:
                    return
            obj = None  # a result must not stay alive here while the thread waits

    def _setup_queues(self):
        # As in the stdlib, tasks reach the workers' queue through a task-handler thread,
        # which terminate() stops first: a terminated pool starts no queued task.
        self._taskqueue = queue.SimpleQueue()
        self._inqueue = queue.SimpleQueue()
        self._outqueue = queue.SimpleQueue()
        self._terminated = [False]
        self._results_get = _batch_getter(self._outqueue)
        self._tasks = _ThreadChannel(self._inqueue, self._processes, self._taskqueue)
        self._tasks.terminated = self._terminated
        self._results = _ThreadChannel(self._outqueue, self._processes)
        self._task_handler = threading.Thread(
            target=_handle_thread_tasks,
            args=(self._taskqueue, self._inqueue, self._terminated),
            daemon=True,
        )
        self._task_handler.start()

    @staticmethod
    def _fpart(kind, func):
        return (kind, func)

    def _put_tasks(self, job, index, fpart, argss, packable=False):
        self._taskqueue.put([(job, i, fpart, args) for i, args in enumerate(argss, index)])

    def _put_stops(self, n):
        self._taskqueue.put([None] * n)
        self._taskqueue.put(None)  # then the task handler ends

    def _submit_one(self, job, fpart, args):
        self._submit(job, 0, fpart, (args,))

    def _post_result(self, job, i, obj):
        self._outqueue.put((None, (job, i, obj)))

    def _worker_args(self, slot):
        args = (self._inqueue, self._outqueue, self._terminated)
        return _thread_worker, args + (self._initializer, self._initargs)

    def _supervise_once(self):
        # Threads do not die: wait for close/terminate, then for the workers to finish.
        select.select([self._waker], [], [], 1.0)
        self._waker.drain()
        if self._state == TERMINATE:
            return False
        if self._state == CLOSE and self._stops_sent:
            for w in list(self._pool):
                w.join()
            self._pool.clear()
            self._post_result(_FINISH, 0, None)
            return False
        return True


class _ThreadChannel:
    """What ``_TerminateState`` calls on a ring, for a ``ThreadPool``'s ``queue.SimpleQueue``."""

    def __init__(self, q, workers, taskqueue=None):
        self.q = q
        self.workers = workers
        self.taskqueue = taskqueue
        self.terminated = None

    def cancel_feeder(self):
        pass

    def cancel_exit_join(self):
        pass

    def shutdown(self, immediate):
        q = self.q
        if immediate:
            self.terminated[0] = True
            self.taskqueue.put(None)  # ends the task handler
            try:
                while True:
                    q.get_nowait()
            except queue.Empty:
                pass
            # A stop message for every worker thread.
            for _ in range(self.workers):
                q.put(None)
        else:
            q.put((None, (_FINISH, 0, None)))


def _batch_getter(q):
    def get_many(n, block, timeout):
        out = [q.get()]
        try:
            for _ in range(n - 1):
                out.append(q.get_nowait())
        except queue.Empty:
            pass
        return out

    return get_many


def _handle_thread_tasks(taskqueue, inqueue, terminated):
    """A ``ThreadPool``'s task handler: moves batches of tasks to the workers' queue."""
    put = inqueue.put
    while True:
        batch = taskqueue.get()
        if batch is None or terminated[0]:
            return
        for task in batch:
            put(task)
        batch = task = None


def apply_task(kind, func, args):
    """What a task of ``kind`` computes: ``func`` applied to its arguments part (the
    ThreadPool's and the Ray pool's workers; the process worker inlines it, its hot path)."""
    if kind == _CALL:
        return func(*args)
    if kind == _MAP:
        return list(map(func, args))
    if kind == _STARMAP:
        return list(itertools.starmap(func, args))
    return func(*args[0], **args[1])


def _thread_worker(inqueue, outqueue, terminated, initializer=None, initargs=()):
    if initializer is not None:
        initializer(*initargs)
    get, put = inqueue.get, outqueue.put
    while True:
        task = get()
        if task is None or terminated[0]:
            break
        job, i, (kind, func), args = task
        try:
            result = (True, apply_task(kind, func, args))
        except Exception as e:
            result = (False, e)
        put((None, (job, i, result)))
        task = func = args = result = None
