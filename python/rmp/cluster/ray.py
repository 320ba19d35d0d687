"""``rmp.cluster.ray``: the Pool API on a Ray cluster (``rmp.get_context("ray").Pool``).

The shape, and why:

- A worker is a Ray *actor* (one CPU each, no restarts, no retries): like a pool worker it
  runs the initializer once, keeps its state between tasks and dies alone. Plain Ray tasks
  would give up ``initializer`` and ``maxtasksperchild``.
- The driver keeps the queue of tasks, as the local pool keeps its task ring, and gives an
  actor its next task when the last one is done: a slow task holds up no other, and a dead
  actor costs exactly the task it was running. (Two tasks per actor would save a round trip
  per task, but then the driver could not know which of the two a dead actor was running,
  and a task that crashes its worker could go back to the queue and crash the next.)
- An idle actor is pinged every second, so that one that dies idle is replaced before a task
  is given to it, and a task given to an actor idle for more than 10 ms goes behind a ping:
  if the actor died idle and the driver does not know it yet, the failed ping says that the
  task never started, and it goes back to the queue instead of failing. (In a steady stream
  of tasks, where each follows the last one's result, no ping is sent.)
- Functions and classes of the main script are pickled by reference, and a worker imports
  the script (as ``__rmp_main__``: its ``if __name__ == "__main__":`` block does not run),
  as the spawn start method does, the first time a task or the initializer names something
  of it: an ``initializer`` that sets a global of the script is seen by the script's task
  functions, as with the local pool. (Pickled by value, as Ray does by default, each
  function would bring a globals dict of its own.) What the script does not hold by name (a
  lambda, a nested function) is pickled by value.
- Arguments are pickled (cloudpickle) on the caller's thread, so an unpicklable argument
  raises at the call site as with the local pool; Ray stores an argument or result larger
  than its inline limit (100 KiB) in its object store, and a map's function, when large,
  goes there once per call rather than once per task.
- Results and exceptions are the local pool's: the worker's traceback is the exception's
  ``__cause__`` (``RemoteTraceback``), a result that cannot travel back fails its task with
  ``MaybeEncodingError``, a dead worker fails its task with ``WorkerLostError`` (pid and
  Ray's reason) and is replaced, ``task_timeout`` kills the actor and fails the task with
  ``TaskTimeoutError``, and workers that keep dying in their initializer fail what is pending
  instead of hanging.
- The driver runs two threads, as the local pool does: the supervisor (completions, deaths,
  deadlines, replacements; it is woken by Ray's completion callbacks) and the result thread
  (callbacks and result objects, the same classes as the local pool's).

Linux and the platforms Ray supports; Ray itself is imported by this module only.
"""

import collections
import concurrent.futures
import importlib.machinery
import importlib.util
import io
import os
import queue
import re
import sys
import threading
import time
import types
import weakref

import ray
from ray import cloudpickle
from ray.exceptions import RayActorError, RayError, RayTaskError

from .. import pool as _pool
from .. import util
from ..pool import (
    _BROKEN,
    _FINISH,
    _LOST,
    CLOSE,
    INIT,
    RUN,
    TERMINATE,
    ExceptionWithTraceback,
    MaybeEncodingError,
    TaskTimeoutError,
    WorkerLostError,
    _batch_getter,
    _PoolCache,
    apply_task,
)

__all__ = ["Pool"]

# Tasks given to one actor at a time (see above).
_DEPTH = 1
# Seconds an actor may sit idle before it is pinged.
_PING = 1.0
# Seconds since an actor's last result after which a task given to it goes behind a ping
# (a task that follows a result within the same pass of the supervisor does not).
_PING_AHEAD = 0.01
# A function part larger than this goes into the object store once per call.
_FPART_INLINE = 64 << 10
# Supervisor events.
_READY, _DONE, _WAKE, _PONG = 0, 1, 2, 3


# What a worker calls the driver's main script. Not ``__mp_main__``, as the spawn start method
# has it: Ray's workers already alias that name to their own ``__main__``.
_MAIN = "__rmp_main__"


# In a worker: where the driver's main script is (``_main_path()``), set by ``_Worker``.
_where = None


def _main_module():
    """The driver's main script as a module: ``__main__`` in the driver; in a worker, the
    script imported as ``__rmp_main__``, on first use (the first function of the script that
    a task or the initializer names)."""
    module = sys.modules.get(_MAIN)
    if module is None and _where is not None:
        _import_main(_where)
        module = sys.modules.get(_MAIN)
    return module or sys.modules["__main__"]


def _main_attr(qualname):
    obj = _main_module()
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, except that what the main script holds by name is pickled by reference
    (rebuilt by ``_main_attr`` from the script the worker imported)."""

    def reducer_override(self, obj):
        if isinstance(obj, (types.FunctionType, type)) and obj.__module__ == "__main__":
            try:
                found = _main_attr(obj.__qualname__) is obj
            except AttributeError:
                found = False
            if found:
                return _main_attr, (obj.__qualname__,)
        return super().reducer_override(obj)


def _dumps(obj, main):
    """``obj`` pickled for a worker: with ``_Pickler`` when the workers can import the main
    script (``main``: ``_main_path()``), else with plain cloudpickle (by value)."""
    if main is None:
        return cloudpickle.dumps(obj, protocol=5)
    buf = io.BytesIO()
    _Pickler(buf, protocol=5).dump(obj)
    return buf.getvalue()


def _main_path():
    """How a worker finds the driver's main script: ``("name", "pkg.mod")`` for
    ``python -m pkg.mod``, ``("path", "/abs/script.py")`` for a script, None when there is no
    file to import (``-c``, an interactive session)."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return ("name", spec.name)
    path = getattr(main, "__file__", None)
    return None if path is None else ("path", os.path.abspath(path))


# True in a worker while it imports the driver's script.
_importing_main = False


def _check_not_importing_main():
    if _importing_main:
        raise RuntimeError(
            "a Ray pool worker imports the main script to find its functions, and the script "
            "made a Pool while being imported: put the code that makes the pool under "
            "`if __name__ == '__main__':` (as the spawn start method requires)"
        )


def _import_main(where):
    """In a worker: the driver's script as ``__rmp_main__``, once per process."""
    global _importing_main
    if where is None or _MAIN in sys.modules:
        return
    kind, value = where
    _importing_main = True
    try:
        if kind == "name":
            sys.modules[_MAIN] = importlib.import_module(value)
            return
        # A loader of its own: a script without a .py suffix (a console script such as
        # ``pytest``) has no loader by name.
        loader = importlib.machinery.SourceFileLoader(_MAIN, value)
        spec = importlib.util.spec_from_file_location(_MAIN, value, loader=loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_MAIN] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[_MAIN]
            raise
    finally:
        _importing_main = False


class _Worker:
    """The actor behind one pool slot."""

    def __init__(self, main_path, init_blob):
        global _where
        _where = main_path  # imported when something of the script is unpickled
        self._fpart = None
        self._kind = self._func = None
        if init_blob is not None:
            initializer, initargs = cloudpickle.loads(init_blob)
            initializer(*initargs)

    def ready(self):
        return os.getpid()

    def run(self, fpart, blob):
        try:
            if fpart != self._fpart:
                self._kind, self._func = cloudpickle.loads(fpart)
                self._fpart = fpart
            return True, apply_task(self._kind, self._func, cloudpickle.loads(blob))
        except BaseException as e:
            # SystemExit and KeyboardInterrupt too: the task fails with it and the worker
            # lives, as with the local pool.
            return False, ExceptionWithTraceback(e, e.__traceback__)


_actor_class = None


def _remote_worker():
    global _actor_class
    if _actor_class is None:
        _actor_class = ray.remote(_Worker)
    return _actor_class


class _Entry:
    """A task: job, index, function part, pickled arguments; once given to an actor, the
    future of its result."""

    __slots__ = ("job", "index", "fpart", "blob", "fut")

    def __init__(self, job, index, fpart, blob):
        self.job, self.index, self.fpart, self.blob = job, index, fpart, blob
        self.fut = None


class _Slot:
    """One worker place: its actor (replaced when it dies), what it runs, its task count."""

    __slots__ = (
        "index",
        "gen",
        "actor",
        "pid",
        "ready",
        "assigned",
        "inflight",
        "head_started",
        "timed_out",
        "seen",
        "busy",
        "ping",
    )

    def __init__(self, index):
        self.index = index
        self.gen = 0
        self.actor = None
        self.pid = None
        self.ready = False
        self.assigned = 0  # tasks given to this actor (maxtasksperchild)
        self.inflight = collections.deque()  # _Entry, in the order the actor runs them
        self.head_started = 0.0  # when inflight[0] started running (at the latest)
        self.timed_out = None  # the entry task_timeout killed the actor for
        self.seen = 0.0  # when the actor last answered (a result, a ping)
        self.busy = 0.0  # when it last finished a task (or got ready)
        self.ping = None  # the future of an outstanding ping

    @property
    def name(self):
        return "RayPoolWorker-%d" % (self.index + 1)

    def join(self):
        """What ``Pool.join`` calls on each worker: an actor is stopped by ``ray.kill``, with
        nothing of it left on this machine to wait for."""


class _Wake:
    """What ``Pool._send_stops`` calls ``wake()`` on: an event for the supervisor."""

    def __init__(self, events):
        self.events = events

    def wake(self):
        self.events.put((_WAKE,))


def _kill(actor):
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already gone, or Ray shut down (interpreter exit)
        pass


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _creation_failed(err):
    """Whether ``err`` says that an actor's constructor raised (an initializer, the import
    of the main script)."""
    return isinstance(err, RayActorError) and "creation task" in str(err)


def _reason(err):
    """What Ray says about a dead actor, in a line: why its process died, or the exception
    its construction raised."""
    lines = [line.strip() for line in _ANSI.sub("", str(err)).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("The actor is dead"):
            return line.split(" Some common causes")[0]
    if lines and _creation_failed(err):
        return "starting it raised " + lines[-1]
    return lines[0] if lines else type(err).__name__


def _is_death(err):
    """Whether a task's error means its actor is gone (or may be): anything Ray raises that
    is not the task's own error (``RayTaskError``) makes the slot's actor suspect."""
    return isinstance(err, RayError) and not isinstance(err, RayTaskError)


class Pool(_pool.Pool):
    """A pool whose workers are Ray actors: the local ``rmp.Pool``'s API, results, errors
    and fault behaviour (``rmp.get_context("ray").Pool``)."""

    def __init__(
        self,
        processes=None,
        initializer=None,
        initargs=(),
        maxtasksperchild=None,
        context=None,
        *,
        task_timeout=None,
        ray_remote_args=None,
    ):
        self._pool = []
        self._state = INIT
        self._ctx = context
        self._cache = _PoolCache()
        self._maxtasksperchild = maxtasksperchild
        _check_not_importing_main()
        if not ray.is_initialized():
            ray.init()  # RAY_ADDRESS if set, else a local instance
        if processes is None:
            processes = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._check_args(processes, initializer, maxtasksperchild, task_timeout)
        # The initializer is pickled here: an unpicklable one raises now.
        self._main = _main_path()
        self._init_blob = (
            None if initializer is None else _dumps((initializer, initargs), self._main)
        )
        # Results holding the script's classes name them ``__rmp_main__.*`` (the worker's
        # name for the script): here that is ``__main__``.
        if self._main is not None:
            sys.modules.setdefault(_MAIN, sys.modules["__main__"])
        options = {"num_cpus": 1, "max_restarts": 0, "max_task_retries": 0}
        options.update(ray_remote_args or {})
        self._actor_options = options
        self._events = queue.SimpleQueue()  # for the supervisor
        self._outq = queue.SimpleQueue()  # for the result thread
        self._results_get = _batch_getter(self._outq)
        self._sched = threading.RLock()  # the slots and the pending tasks
        self._pending = collections.deque()  # _Entry not given to an actor yet
        self._early_deaths = 0
        self._respawn_at = 0.0
        self._broken = False
        self._unready_since = None  # since when no worker has been ready (start_timeout)
        self._waker = _Wake(self._events)
        self._pool = [_Slot(i) for i in range(processes)]
        try:
            with self._sched:
                for slot in self._pool:
                    self._start_actor(slot)
        except BaseException:
            for slot in self._pool:
                if slot.actor is not None:
                    _kill(slot.actor)
            raise
        self._state = RUN
        self._result_handler = threading.Thread(
            target=_pool.ThreadPool._handle_results,
            args=(self._results_get, self._cache),
            daemon=True,
        )
        self._result_handler.start()
        self._worker_handler = threading.Thread(target=self._supervise_ref(), daemon=True)
        self._worker_handler.start()
        self._terminate = util.Finalize(
            self, _pool.Pool._terminate_pool, args=(_Terminate(self),), exitpriority=15
        )

    # -- transport -----------------------------------------------------------------------

    def _fpart(self, kind, func):
        blob = _dumps((kind, func), self._main)
        if len(blob) > _FPART_INLINE:
            return ray.put(blob)
        return blob

    def _put_tasks(self, job, index, fpart, argss, packable=False):
        main = self._main
        # Every task is pickled before any is queued: a pickling error queues nothing.
        entries = [_Entry(job, i, fpart, _dumps(args, main)) for i, args in enumerate(argss, index)]
        with self._sched:
            self._pending.extend(entries)
            self._pump()

    def _submit_one(self, job, fpart, args):
        self._submit(job, 0, fpart, (args,))

    def _put_stops(self, n):
        pass  # _stops_sent is set: the supervisor finishes once everything is done

    def _post_result(self, job, i, obj):
        self._outq.put((None, (job, i, obj)))

    # -- actors (under self._sched) ------------------------------------------------------

    def _start_actor(self, slot):
        slot.gen += 1
        slot.ready = False
        slot.pid = None
        slot.assigned = 0
        slot.inflight.clear()
        slot.timed_out = None
        slot.ping = None
        actor = _remote_worker().options(**self._actor_options).remote(self._main, self._init_blob)
        slot.actor = actor
        events, gen = self._events, slot.gen
        fut = actor.ready.remote().future()
        fut.add_done_callback(lambda f: events.put((_READY, slot, gen, f)))

    def _retire(self, slot):
        """Stop ``slot``'s actor; a replacement starts now, or after the respawn delay."""
        if slot.actor is not None:
            _kill(slot.actor)
        slot.actor = None
        slot.ready = False
        slot.gen += 1
        slot.inflight.clear()
        slot.ping = None
        if self._needs_workers() and time.monotonic() >= self._respawn_at:
            self._start_actor(slot)

    def _needs_workers(self):
        if self._state == RUN:
            return True
        # Closed: while tasks remain, or may still come from an imap's feeder.
        return self._state == CLOSE and (self._has_work() or not self._stops_sent)

    def _has_work(self):
        return bool(self._pending) or any(s.inflight for s in self._pool)

    def _room(self, slot):
        if not slot.ready or len(slot.inflight) >= _DEPTH:
            return False
        return self._maxtasksperchild is None or slot.assigned < self._maxtasksperchild

    def _pump(self):
        """Give pending tasks to the actors that have room, in turn."""
        pending = self._pending
        if self._state == TERMINATE:
            return
        while pending:
            gave = False
            for slot in self._pool:
                if not pending:
                    break
                if self._room(slot):
                    entry = pending.popleft()
                    try:
                        self._launch(slot, entry)
                    except Exception as e:
                        # Ray refused the call (shut down, disconnected...): this task fails
                        # with that error rather than wait for a Ray that will not come back.
                        self._post_result(entry.job, entry.index, (False, e))
                    gave = True
            if not gave:
                break

    def _launch(self, slot, entry):
        if not slot.inflight and slot.ping is None and time.monotonic() - slot.busy >= _PING_AHEAD:
            # Idle for a while: a ping goes first, so that if the actor died idle (and its
            # death is not known yet), the failed ping says this task never started.
            self._send_ping(slot)
        fut = slot.actor.run.remote(entry.fpart, entry.blob).future()
        if not slot.inflight:
            slot.head_started = time.monotonic()
        entry.fut = fut
        slot.inflight.append(entry)
        slot.assigned += 1
        events = self._events
        fut.add_done_callback(lambda f: events.put((_DONE, slot, entry, f)))

    # -- the supervisor ------------------------------------------------------------------

    # Seconds that work may wait while no worker of the pool is ready (its actors cannot be
    # placed: the cluster's CPUs are held by other pools or tasks, or a ``ray_remote_args``
    # resource does not exist) before it fails instead of waiting forever.
    start_timeout = 60.0

    def _supervise_once(self):
        if self._state == TERMINATE:
            return False
        timeout = self._next_deadline()
        delay = self._respawn_at - time.monotonic()
        if delay > 0:
            timeout = delay if timeout is None else min(timeout, delay)
        try:
            events = [self._events.get(timeout=1.0 if timeout is None else min(timeout, 1.0))]
        except queue.Empty:
            events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        with self._sched:
            if self._state == TERMINATE:
                return False
            for event in events:
                # One event's failure must not drop the others (a dropped completion would
                # leave its task in flight forever).
                try:
                    self._on_event(event)
                except Exception:
                    sys.excepthook(*sys.exc_info())
            events = event = None
            self._check_timeouts()
            self._ping_idle()
            if time.monotonic() >= self._respawn_at and self._needs_workers():
                for slot in self._pool:
                    if slot.actor is None:
                        self._start_actor(slot)
            self._pump()
            self._check_start()
            if self._state == CLOSE and self._stops_sent and not self._has_work():
                for slot in self._pool:
                    if slot.actor is not None:
                        _kill(slot.actor)
                        slot.actor = None
                self._post_result(_FINISH, 0, None)
                return False
        return True

    def _on_event(self, event):
        kind = event[0]
        if kind == _READY:
            self._on_ready(*event[1:])
        elif kind == _DONE:
            self._on_done(*event[1:])
        elif kind == _PONG:
            self._on_pong(*event[1:])

    def _on_ready(self, slot, gen, fut):
        if slot.gen != gen:
            return
        try:
            slot.pid = fut.result()
        except Exception as err:
            self._early_death(slot, err)
            return
        slot.ready = True
        slot.seen = slot.busy = time.monotonic()
        self._early_deaths = 0
        self._broken = False
        self._unready_since = None

    def _check_start(self):
        """Fail what is pending when no worker has been ready for ``start_timeout``."""
        if any(slot.ready for slot in self._pool):
            self._unready_since = None
            return
        now = time.monotonic()
        if self._unready_since is None:
            self._unready_since = now
            return
        if not self._pending or now - self._unready_since < self.start_timeout:
            return
        try:
            free = ray.available_resources()
        except Exception:
            free = "unknown"
        exc = WorkerLostError(
            "no worker of this Ray pool became ready in %gs: the cluster has no room for its "
            "actors (each asks for %s; available now: %s), or they cannot start"
            % (self.start_timeout, self._actor_options, free)
        )
        self._unready_since = now
        self._pending.clear()
        self._post_result(_BROKEN, 0, exc)

    def _ping_idle(self):
        now = time.monotonic()
        for slot in self._pool:
            if slot.ready and not slot.inflight and slot.ping is None and now - slot.seen >= _PING:
                self._send_ping(slot)

    def _send_ping(self, slot):
        events, gen = self._events, slot.gen
        fut = slot.ping = slot.actor.ready.remote().future()
        fut.add_done_callback(lambda f: events.put((_PONG, slot, gen, f)))

    def _on_pong(self, slot, gen, fut):
        if slot.gen != gen or slot.ping is not fut:
            return
        if _is_death(fut.exception()):
            # Died idle: what was given to it after the ping never started.
            self._requeue(slot.inflight)
            self._retire(slot)
            return
        slot.ping = None
        slot.seen = time.monotonic()

    def _requeue(self, entries):
        """Put tasks that never started back at the front of the queue (one whose result
        did come meanwhile is delivered instead)."""
        back = []
        for entry in entries:
            fut = entry.fut
            if fut is not None and fut.done() and not _is_death(fut.exception()):
                self._deliver(entry, fut)
            else:
                entry.fut = None
                back.append(entry)
        self._pending.extendleft(reversed(back))

    def _early_death(self, slot, err):
        """An actor died before it was ready. When its construction raised (the initializer,
        or the import of the main script), replacements come later and later (up to 2 s),
        and once as many as the pool has died so in a row, what is pending fails (as with the
        local pool); any other death (killed, its node lost) is replaced at once."""
        slot.actor = None
        slot.ready = False
        if not _creation_failed(err):
            if self._needs_workers():
                self._start_actor(slot)
            return
        n, give_up = self._count_early_death()
        if give_up:
            exc = WorkerLostError(
                "%d Ray pool workers in a row died before they were ready for tasks (the "
                "last: %s)" % (n, _reason(err))
            )
            exc.__cause__ = err
            self._broken = True
            self._pending.clear()
            self._post_result(_BROKEN, 0, exc)

    def _on_done(self, slot, entry, fut):
        if entry.fut is not fut or entry not in slot.inflight:
            return  # handled with its actor's death, or an earlier run of a requeued task
        err = fut.exception()
        if _is_death(err):
            self._actor_died(slot, err)
            return
        slot.inflight.remove(entry)
        slot.seen = slot.busy = time.monotonic()
        self._deliver(entry, fut)
        if slot.timed_out is not None:
            # Killed for task_timeout as the task finished: the actor is gone or going.
            self._retire(slot)
        elif slot.inflight:
            slot.head_started = time.monotonic()
        elif self._maxtasksperchild is not None and slot.assigned >= self._maxtasksperchild:
            self._retire(slot)

    def _deliver(self, entry, fut):
        try:
            obj = fut.result()
        except RayTaskError as err:
            # Our method catches every exception of the task: this is Ray failing to store
            # or fetch the result (it could not be pickled...).
            cause = getattr(err, "cause", None) or err
            exc = MaybeEncodingError(
                cause, "<the result of task %d of job %d>" % (entry.index, entry.job)
            )
            exc.__cause__ = err
            obj = (False, exc)
        except Exception as err:
            obj = (False, err)
        self._post_result(entry.job, entry.index, obj)

    def _actor_died(self, slot, err):
        """``slot``'s actor died: the first of its tasks with no result was running and
        fails; the ones behind it never started and go back to the front of the queue."""
        entries = list(slot.inflight)
        slot.inflight.clear()
        ping = slot.ping
        if ping is not None:
            try:
                ping.result(timeout=5.0)
            except Exception as e:
                if _is_death(e) or isinstance(e, concurrent.futures.TimeoutError):
                    # It died before it answered the ping: nothing given after it started.
                    self._requeue(entries)
                    self._retire(slot)
                    return
        lost = None
        requeue = []
        for k, entry in enumerate(entries):
            try:
                # Results sent before the death may still be on their way.
                entry.fut.result(timeout=5.0)
            except concurrent.futures.TimeoutError:
                lost, requeue = entry, entries[k + 1 :]
                break
            except Exception as e:
                if _is_death(e):
                    lost, err, requeue = entry, e, entries[k + 1 :]
                    break
            self._deliver(entry, entry.fut)
        if lost is not None:
            if slot.timed_out is lost:
                exc = TaskTimeoutError(
                    "task %d of job %d ran longer than task_timeout=%gs: worker %s (%s, Ray "
                    "actor) was killed"
                    % (lost.index, lost.job, self._task_timeout, slot.pid, slot.name),
                    pid=slot.pid,
                    timeout=self._task_timeout,
                )
            else:
                exc = WorkerLostError(
                    "worker %s (%s, Ray actor) died while running task %d of job %d: %s"
                    % (slot.pid, slot.name, lost.index, lost.job, _reason(err)),
                    pid=slot.pid,
                )
                exc.__cause__ = err
            self._post_result(_LOST, 0, (lost.job, lost.index, exc))
        self._requeue(requeue)
        self._retire(slot)

    def _next_deadline(self):
        t = self._task_timeout
        if t is None:
            return None
        now = time.monotonic()
        soonest = t
        for slot in self._pool:
            if slot.inflight and slot.timed_out is None:
                soonest = min(soonest, max(0.0, slot.head_started + t - now))
        return soonest

    def _check_timeouts(self):
        t = self._task_timeout
        if t is None:
            return
        now = time.monotonic()
        for slot in self._pool:
            if not slot.inflight or slot.timed_out is not None:
                continue
            head = slot.inflight[0]
            if now - slot.head_started >= t and not head.fut.done():
                slot.timed_out = head
                slot.ready = False  # nothing more for it: its tasks' futures fail
                _kill(slot.actor)


class _Terminate:
    """Terminates a Ray pool: held by its finalizer (no reference to the pool)."""

    def __init__(self, pool):
        self.pool = weakref.ref(pool)
        self.slots = pool._pool
        self.sched = pool._sched
        self.pending = pool._pending
        self.cache = pool._cache
        self.events = pool._events
        self.outq = pool._outq
        self.handlers = (pool._worker_handler, pool._result_handler)

    def run(self):
        util.debug("finalizing Ray pool")
        pool = self.pool()
        if pool is not None:
            pool._state = TERMINATE
        pool = None
        self.events.put((_WAKE,))
        supervisor, result_handler = self.handlers
        current = threading.current_thread()
        if supervisor.is_alive() and supervisor is not current:
            supervisor.join()
        with self.sched:
            self.pending.clear()
            for slot in self.slots:
                if slot.actor is not None:
                    _kill(slot.actor)
                    slot.actor = None
                slot.inflight.clear()
        # Results already handed over are delivered, then the result thread stops.
        self.outq.put((None, (_FINISH, 0, None)))
        if result_handler.is_alive() and result_handler is not current:
            result_handler.join()
        for job, result in list(self.cache.items()):
            result._abort(WorkerLostError("the pool was terminated before job %d finished" % job))
