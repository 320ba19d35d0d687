"""``rmp.Pool`` when things go wrong (rmp's robustness; the stdlib hangs in most of these):

- a worker SIGKILLed, ``os._exit``-ed or segfaulting in the middle of the work: the task it
  was running fails with ``rmp.pool.WorkerLostError`` (pid, exit code, signal), the worker
  is replaced and the rest of the work completes; SystemExit and KeyboardInterrupt raised
  by a task do not hang the pool;
- ``terminate()`` fails the pending results instead of leaving them waiting forever;
- ``task_timeout=``: a task that runs too long fails with ``TaskTimeoutError`` and its
  worker is replaced;
- workers die with their parent, even a SIGKILLed one, under every start method and when
  the pool was made in another thread;
- Ctrl-C: a program blocked in ``map`` gets KeyboardInterrupt and leaves no worker behind;
  every blocking call of the pool releases the GIL and answers SIGINT.

The API and semantics shared with the stdlib are in ``test_pool.py``."""

from __future__ import annotations

import ctypes
import faulthandler
import functools
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from _helpers import children_of, join_pool, pid_gone, pool_workers, run_counting_other_thread

import rmp
import rmp.pool as rpool

pytestmark = pytest.mark.timeout(120)

SQUARES = [x * x for x in range(100)]


#
# Functions run by the workers (module level: picklable under spawn)
#


def _square(x):
    return x * x


_victim = None


def _set_victim(value):
    global _victim
    _victim = value


def _die_on(x, bad, how="sigkill"):
    """``x * x``, except for ``bad``, where the worker records its pid in ``_victim`` and
    dies (or raises) as ``how`` says."""
    if x != bad:
        return x * x
    if _victim is not None:
        _victim.value = os.getpid()
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit3":
        os._exit(3)
    elif how == "segfault":
        faulthandler.disable()  # no traceback dump on stderr
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
        ctypes.string_at(0)
    elif how == "SystemExit":
        raise SystemExit(4)
    elif how == "KeyboardInterrupt":
        raise KeyboardInterrupt
    time.sleep(60)  # pragma: no cover - not reached
    return None


def _pid_then_sleep(seconds):
    _victim.value = os.getpid()
    time.sleep(seconds)
    return "slept"


def _sleep_then(x, seconds):
    time.sleep(seconds)
    return x


def _count_then_sleep(x, seconds):
    """``x`` after ``seconds``; a long one counts itself in ``_victim`` first."""
    if seconds:
        with _victim.get_lock():
            _victim.value += 1
    time.sleep(seconds)
    return x


def _sleep_on(x, slow, seconds):
    """``x``, after ``seconds`` for the item ``slow`` (which records its pid first)."""
    if x == slow:
        if _victim is not None:
            _victim.value = os.getpid()
        time.sleep(seconds)
    return x


#
# Helpers
#


def _workers(n, exclude=(), timeout=30.0):
    return pool_workers(rmp, n, exclude, timeout)


def _joined(p):
    join_pool(rmp, p)


def _wait_value(value, timeout=30.0):
    deadline = time.monotonic() + timeout
    while value.value == 0:
        if time.monotonic() > deadline:
            raise AssertionError("the task never started")
        time.sleep(0.01)
    return value.value


def _check_lost(e, pid, exitcode, signame=None):
    assert isinstance(e, rpool.WorkerLostError)
    assert isinstance(e, rmp.ProcessError) and isinstance(e, multiprocessing.ProcessError)
    assert e.pid == pid and e.exitcode == exitcode, (e.pid, e.exitcode, str(e))
    text = str(e)
    assert str(pid) in text, text
    if signame is None:
        assert e.signal is None
    else:
        assert e.signal == getattr(signal, signame) and exitcode == -e.signal
        assert signame in text, text


def _collect(it, n, timeout=60):
    """``n`` items of an imap iterator: (position, value) or (position, exception)."""
    out = []
    for i in range(n):
        try:
            out.append((i, it.next(timeout)))
        except rpool.WorkerLostError as e:
            out.append((i, e))
    with pytest.raises(StopIteration):
        it.next(timeout)
    return out


def test_the_exception_classes():
    assert issubclass(rpool.WorkerLostError, rmp.ProcessError)
    assert rmp.ProcessError is multiprocessing.ProcessError
    assert issubclass(rpool.TaskTimeoutError, multiprocessing.TimeoutError)
    assert rmp.TimeoutError is multiprocessing.TimeoutError


#
# A worker dies in the middle of the work
#


@pytest.mark.parametrize("kind", ["imap", "imap_unordered"])
def test_sigkill_in_imap_fails_only_that_item(kind):
    ctx = rmp.get_context("fork")
    victim = ctx.Value("i", 0)
    with ctx.Pool(2, initializer=_set_victim, initargs=(victim,)) as p:
        before = _workers(2)
        it = getattr(p, kind)(functools.partial(_die_on, bad=7), range(30))
        out = _collect(it, 30)
        lost = [(i, v) for i, v in out if isinstance(v, BaseException)]
        values = [v for _, v in out if not isinstance(v, BaseException)]
        assert len(lost) == 1, out
        pid = victim.value
        assert pid in before
        _check_lost(lost[0][1], pid, -signal.SIGKILL, "SIGKILL")
        if kind == "imap":
            assert lost[0][0] == 7  # at the lost item's position
            assert values == [x * x for x in range(30) if x != 7]
        else:
            assert sorted(values) == sorted(x * x for x in range(30) if x != 7)
        after = _workers(2, exclude=(pid,))  # replaced: two workers again, new pid
        assert after != before
        assert p.map(_square, range(100)) == SQUARES
    _joined(p)


def test_sigkill_in_a_chunked_imap_fails_that_chunk():
    victim = rmp.Value("i", 0)
    with rmp.Pool(2, initializer=_set_victim, initargs=(victim,)) as p:
        it = p.imap(functools.partial(_die_on, bad=10), range(30), chunksize=4)
        got = []
        with pytest.raises(rpool.WorkerLostError) as ei:
            for _ in range(30):
                got.append(next(it))
        assert got == SQUARES[:8]  # the chunks before the lost one (8-11) came through
        _check_lost(ei.value, victim.value, -signal.SIGKILL, "SIGKILL")
        assert list(p.imap(_square, range(40), chunksize=4)) == SQUARES[:40]
    _joined(p)


def test_sigkill_in_map_fails_the_map_and_the_pool_goes_on(start_method):
    ctx = rmp.get_context(start_method)
    victim = ctx.Value("i", 0)
    with ctx.Pool(2, initializer=_set_victim, initargs=(victim,)) as p:
        before = _workers(2)
        t0 = time.monotonic()
        with pytest.raises(rpool.WorkerLostError) as ei:
            p.map(functools.partial(_die_on, bad=13), range(40), chunksize=1)
        assert time.monotonic() - t0 < 30
        pid = victim.value
        assert pid in before
        _check_lost(ei.value, pid, -signal.SIGKILL, "SIGKILL")
        after = _workers(2, exclude=(pid,))
        assert len(after) == 2 and pid not in after
        assert p.map(_square, range(100)) == SQUARES
        assert p.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
        r = p.map_async(functools.partial(_die_on, bad=3), range(10))
        with pytest.raises(rpool.WorkerLostError):
            r.get(60)
        assert r.ready() and not r.successful()
        assert p.apply(_square, (9,)) == 81
    _joined(p)


def test_a_worker_killed_from_outside(start_method):
    ctx = rmp.get_context(start_method)
    victim = ctx.Value("i", 0)
    errors = []
    with ctx.Pool(2, initializer=_set_victim, initargs=(victim,)) as p:
        r = p.apply_async(_pid_then_sleep, (60,), error_callback=errors.append)
        pid = _wait_value(victim)
        others = [p.apply_async(_sleep_then, (i, 0.05)) for i in range(10)]
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(rpool.WorkerLostError) as ei:
            r.get(timeout=30)
        assert time.monotonic() - t0 < 10
        _check_lost(ei.value, pid, -signal.SIGKILL, "SIGKILL")
        assert len(errors) == 1 and isinstance(errors[0], rpool.WorkerLostError)
        assert [o.get(60) for o in others] == list(range(10))
        _workers(2, exclude=(pid,))
        assert p.map(_square, range(20)) == SQUARES[:20]
    _joined(p)


def test_os_exit_in_a_task():
    victim = rmp.Value("i", 0)
    with rmp.Pool(2, initializer=_set_victim, initargs=(victim,)) as p:
        it = p.imap(functools.partial(_die_on, bad=2, how="exit3"), range(6))
        out = _collect(it, 6)
        assert [v for _, v in out if not isinstance(v, BaseException)] == [0, 1, 9, 16, 25]
        _check_lost(out[2][1], victim.value, 3)
        assert "3" in str(out[2][1])
        _workers(2, exclude=(victim.value,))
        assert p.map(_square, range(10)) == SQUARES[:10]
    _joined(p)


def test_a_segfault_in_a_task():
    victim = rmp.Value("i", 0)
    with rmp.Pool(2, initializer=_set_victim, initargs=(victim,)) as p:
        r = p.apply_async(_die_on, (5, 5, "segfault"))
        with pytest.raises(rpool.WorkerLostError) as ei:
            r.get(timeout=30)
        _check_lost(ei.value, victim.value, -signal.SIGSEGV, "SIGSEGV")
        _workers(2, exclude=(victim.value,))
        assert p.map(_square, range(10)) == SQUARES[:10]
    _joined(p)


@pytest.mark.parametrize("how", ["SystemExit", "KeyboardInterrupt"])
def test_system_exit_or_keyboard_interrupt_in_a_task_does_not_hang(how):
    """The get raises that exception, or a WorkerLostError if the worker died of it; never a
    timeout. The pool goes on."""
    with rmp.Pool(2) as p:
        r = p.apply_async(_die_on, (1, 1, how))
        t0 = time.monotonic()
        try:
            r.get(timeout=30)
        except multiprocessing.TimeoutError:
            pytest.fail(f"{how} in a task: the result never came")
        except (SystemExit, KeyboardInterrupt, rpool.WorkerLostError) as e:
            assert type(e).__name__ in (how, "WorkerLostError"), repr(e)
        else:
            pytest.fail(f"{how} in a task: get() returned")
        assert time.monotonic() - t0 < 30
        it = p.imap(functools.partial(_die_on, bad=3, how=how), range(6))
        got = []
        for _ in range(6):
            try:
                got.append(it.next(30))
            except (SystemExit, KeyboardInterrupt, rpool.WorkerLostError):
                got.append("failed")
        assert got == [0, 1, 4, "failed", 16, 25]
        assert p.map(_square, range(20)) == SQUARES[:20]
        assert len(_workers(2)) == 2
    _joined(p)


def test_several_workers_lost_at_once():
    """Every worker killed at the same time, twice: every task they ran fails, the rest
    completes, and the pool is full again."""
    started = rmp.Value("i", 0)
    with rmp.Pool(3, initializer=_set_victim, initargs=(started,)) as p:
        for _ in range(2):
            pids = _workers(3)
            started.value = 0
            results = [p.apply_async(_count_then_sleep, (i, 30 if i < 3 else 0)) for i in range(12)]
            deadline = time.monotonic() + 30
            while started.value < 3 and time.monotonic() < deadline:  # the long ones run
                time.sleep(0.01)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            for i, r in enumerate(results):
                if i < 3:
                    with pytest.raises(rpool.WorkerLostError) as ei:
                        r.get(30)
                    assert ei.value.pid in pids and ei.value.signal == signal.SIGKILL
                else:
                    assert r.get(30) == i
            assert not _workers(3) & pids
        assert p.map(_square, range(100)) == SQUARES
    _joined(p)


def test_an_idle_worker_killed_is_replaced_quietly():
    with rmp.Pool(2) as p:
        assert p.map(_square, range(10)) == SQUARES[:10]
        before = _workers(2)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        _workers(2, exclude=(victim,))
        assert p.map(_square, range(100)) == SQUARES
        assert p.apply(_square, (5,)) == 25
    _joined(p)


def test_close_and_join_do_not_hang_on_a_lost_worker():
    victim = rmp.Value("i", 0)
    p = rmp.Pool(2, initializer=_set_victim, initargs=(victim,))
    try:
        r = p.apply_async(_pid_then_sleep, (60,))
        others = p.map_async(_square, range(50), chunksize=1)
        pid = _wait_value(victim)
        p.close()
        threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
        t0 = time.monotonic()
        p.join()  # the killed worker's task fails; the rest is done; join returns
        assert time.monotonic() - t0 < 30
        with pytest.raises(rpool.WorkerLostError) as ei:
            r.get(0)
        assert ei.value.pid == pid
        assert others.get(0) == SQUARES[:50]
        assert rmp.active_children() == []
    finally:
        p.terminate()
        p.join()


def _kill_at_random(stop, kills, rng):
    """Until ``stop`` is set: SIGKILL a random worker every 20-80 ms; count the kills."""
    while not stop.wait(rng.uniform(0.02, 0.08)):
        pids = [c.pid for c in rmp.active_children()]
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills[0] += 1
            except ProcessLookupError:  # pragma: no cover - exited meanwhile
                pass


def _tiny(x):
    time.sleep(0.001)
    return x * x


@pytest.mark.parametrize("kind", ["imap", "imap_unordered", "apply_async"])
def test_workers_killed_at_random_never_hang_the_pool(kind):
    """Workers SIGKILLed at random moments (taking a task, running it, sending its result,
    starting up) while thousands of tiny tasks run: every task either completes with its
    result or fails with WorkerLostError, at most one per kill, and nothing hangs."""
    import random

    n = 3000
    rng = random.Random()
    stop, kills = threading.Event(), [0]
    killer = threading.Thread(target=_kill_at_random, args=(stop, kills, rng))
    with rmp.Pool(3) as p:
        assert p.map(_square, range(6), chunksize=1) == SQUARES[:6]
        killer.start()
        try:
            if kind == "apply_async":
                results = [p.apply_async(_tiny, (i,)) for i in range(n)]
                it = iter(results)
                next_item = lambda: next(it).get(60)  # noqa: E731
            else:
                it = getattr(p, kind)(_tiny, range(n))
                next_item = lambda: it.next(60)  # noqa: E731
            got, lost = [], 0
            for _ in range(n):
                try:
                    got.append(next_item())
                except rpool.WorkerLostError as e:
                    assert e.signal == signal.SIGKILL, str(e)
                    lost += 1
        finally:
            stop.set()
            killer.join()
        assert kills[0] >= 5, "the killer barely ran"
        assert lost <= kills[0]
        assert len(got) + lost == n
        expected = {x * x for x in range(n)}
        assert set(got) <= expected and len(set(got)) == len(got)
        if kind == "imap":
            assert got == sorted(got)  # in order, with the lost ones missing
        assert len(_workers(3)) == 3
        assert p.map(_square, range(100)) == SQUARES
    _joined(p)


def _explode():
    raise RuntimeError("this result cannot be rebuilt")


class _BadOnLoad:
    def __reduce__(self):
        return (_explode, ())


class _TwoArgError(Exception):
    def __init__(self, a, b):  # unpickling calls _TwoArgError(a): TypeError
        super().__init__(a)
        self.b = b


def _return_bad_on_load(x):
    return _BadOnLoad() if x == 3 else x * x


def _raise_two_arg_error(x):
    if x == 3:
        raise _TwoArgError("two", "args")
    return x * x


@pytest.mark.parametrize("func", [_return_bad_on_load, _raise_two_arg_error])
def test_a_result_that_cannot_be_unpickled_fails_its_task_only(func):
    """A result (or exception) that pickles in the worker but cannot be rebuilt in the
    parent fails its own task with an error; it must not take the pool's result handling
    down with it (the stdlib's result thread dies and the pool hangs)."""
    with rmp.Pool(2) as p:
        r = p.apply_async(func, (3,))
        with pytest.raises(Exception) as ei:
            r.get(timeout=30)
        assert not isinstance(ei.value, multiprocessing.TimeoutError), "the result never came"
        it = p.imap(func, range(6))
        got = []
        for _ in range(6):
            try:
                got.append(it.next(30))
            except multiprocessing.TimeoutError:  # pragma: no cover - the bug
                raise
            except Exception:
                got.append("failed")
        assert got == [0, 1, 4, "failed", 16, 25]
        assert p.map(_square, range(20)) == SQUARES[:20]
    _joined(p)


def _bad_callback(value):
    raise ZeroDivisionError(f"callback failed on {value!r}")


def test_a_failing_callback_is_reported_and_the_pool_goes_on(capfd):
    """The stdlib's result thread dies of it and the pool hangs."""
    with rmp.Pool(2) as p:
        r = p.apply_async(_square, (2,), callback=_bad_callback)
        assert r.get(30) == 4
        r = p.apply_async(_explode, error_callback=_bad_callback)
        with pytest.raises(RuntimeError):
            r.get(30)
        assert p.map_async(_square, range(5), callback=_bad_callback).get(30) == SQUARES[:5]
        assert p.map(_square, range(100)) == SQUARES
    _joined(p)
    err = capfd.readouterr().err
    assert err.count("ZeroDivisionError: callback failed on") == 3, err


#
# terminate() fails the pending results
#


def test_terminate_fails_the_pending_results():
    p = rmp.Pool(1)
    running = p.apply_async(time.sleep, (60,))
    queued = p.apply_async(_square, (2,))
    m = p.map_async(_square, range(10))
    s = p.starmap_async(pow, [(2, 3)] * 5)
    time.sleep(0.3)
    p.terminate()
    t0 = time.monotonic()
    for r in (running, queued, m, s):
        with pytest.raises(rpool.WorkerLostError):
            r.get(timeout=10)
        assert r.ready() and not r.successful()
    assert time.monotonic() - t0 < 10
    _joined(p)


def test_terminate_from_another_thread_wakes_blocked_callers():
    with rmp.Pool(2) as p:
        it = p.imap(time.sleep, [30] * 4)
        lazy = p.imap_unordered(time.sleep, (x for x in [30] * 100))
        timer = threading.Timer(0.3, p.terminate)
        timer.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(rpool.WorkerLostError):
                p.map(time.sleep, [60] * 2)
            assert time.monotonic() - t0 < 10
        finally:
            timer.join()
        for pending in (it, lazy):
            with pytest.raises(rpool.WorkerLostError):
                pending.next(10)
    _joined(p)


def test_exiting_the_context_fails_the_pending_results():
    with rmp.Pool(2) as p:
        results = [p.apply_async(time.sleep, (60,)) for _ in range(4)]
        time.sleep(0.2)
    for r in results:
        with pytest.raises(rpool.WorkerLostError):
            r.get(timeout=10)
    _joined(p)


#
# task_timeout=
#


def test_task_timeout_fails_the_task_and_replaces_its_worker():
    victim = rmp.Value("i", 0)
    with rmp.Pool(2, initializer=_set_victim, initargs=(victim,), task_timeout=2.0) as p:
        before = _workers(2)
        t0 = time.monotonic()
        it = p.imap(functools.partial(_sleep_on, slow=3, seconds=60), range(10))
        got, lost = [], []
        for i in range(10):
            try:
                got.append(it.next(60))
            except rpool.TaskTimeoutError as e:
                lost.append((i, e))
        assert time.monotonic() - t0 < 30
        assert got == [0, 1, 2, 4, 5, 6, 7, 8, 9]
        assert len(lost) == 1 and lost[0][0] == 3
        e = lost[0][1]
        assert isinstance(e, multiprocessing.TimeoutError)
        assert e.pid == victim.value and e.pid in before
        assert _workers(2, exclude=(e.pid,)) != before
        # apply_async too; fast tasks are not affected.
        r = p.apply_async(time.sleep, (60,))
        t0 = time.monotonic()
        with pytest.raises(rpool.TaskTimeoutError):
            r.get(30)
        assert 1.5 <= time.monotonic() - t0 < 20
        assert p.map(_square, range(100), chunksize=1) == SQUARES
    _joined(p)


def test_task_timeout_is_checked():
    for bad in (0, -1):
        with pytest.raises(ValueError):
            rmp.Pool(1, task_timeout=bad)


def test_task_timeout_defaults_to_none():
    with rmp.Pool(1) as p:
        assert p.apply(_sleep_then, ("slow", 2.5)) == "slow"
    _joined(p)
    with rmp.Pool(1, task_timeout=None) as p:
        assert p.apply(_sleep_then, ("slow", 1.0)) == "slow"
    _joined(p)


#
# Workers die with their parent
#

_CHILD = textwrap.dedent(
    """
    import os, sys, threading, time
    import rmp

    def _pid(_):
        time.sleep(0.1)
        return os.getpid()

    def worker_pids(pool, n):
        pids = set()
        deadline = time.monotonic() + 60
        while len(pids) < n and time.monotonic() < deadline:
            pids.update(pool.map(_pid, range(4 * n), chunksize=1))
        return pids

    def report(name, pids):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
        with open(path + ".tmp", "w") as f:
            f.write(" ".join(map(str, sorted(pids))))
        os.rename(path + ".tmp", path)

    def main(method, mode):
        ctx = rmp.get_context(method)
        if mode == "sigint":
            try:
                with ctx.Pool(2) as p:
                    report("pids", worker_pids(p, 2))
                    p.map(time.sleep, [30] * 4)
            except KeyboardInterrupt:
                print("KeyboardInterrupt", flush=True)
                sys.exit(42)
            print("map returned", flush=True)
            return
        if mode == "thread":
            box = []

            def make():
                pool = ctx.Pool(3)
                box.append((pool, worker_pids(pool, 3)))

            t = threading.Thread(target=make)
            t.start()
            t.join()
            pool, first = box[0]
        else:
            pool = ctx.Pool(3)
            first = worker_pids(pool, 3)
        time.sleep(0.3)
        report("first", first)
        report("pids", worker_pids(pool, 3))
        time.sleep(300)

    def exit_with_a_running_pool(method):
        pool = rmp.get_context(method).Pool(2)
        report("pids", worker_pids(pool, 2))
        pool.apply_async(time.sleep, (60,))
        print("exiting", flush=True)
        # No close, no terminate: the interpreter's exit must not wait for the task.

    if __name__ == "__main__":
        if sys.argv[2] == "exit":
            exit_with_a_running_pool(sys.argv[1])
        else:
            main(sys.argv[1], sys.argv[2])
    """
)


def _descendants(pid):
    out = set()
    todo = [pid]
    while todo:
        for child in children_of(todo.pop()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _run_child(tmp_path, method, mode):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    out = open(tmp_path / "out.txt", "w")
    err = open(tmp_path / "err.txt", "w")
    try:
        proc = subprocess.Popen(
            [sys.executable, str(script), method, mode],
            cwd=tmp_path,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    finally:
        out.close()
        err.close()
    return proc


def _read_pids(tmp_path, proc, name="pids", timeout=90.0):
    path = tmp_path / name
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"the child did not report its workers (exit code {proc.poll()}): "
                + (tmp_path / "err.txt").read_text()
            )
        time.sleep(0.05)
    return {int(x) for x in path.read_text().split()}


def _kill_leftovers(proc, pids):
    """Cleanup after a failure: the child, and every process it left behind."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)
    for pid in pids:
        if not pid_gone(pid, 0):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize(
    "method,mode",
    [("fork", "main"), ("spawn", "main"), ("forkserver", "main"), ("fork", "thread")],
    ids=["fork", "spawn", "forkserver", "fork-pool-made-in-a-thread"],
)
def test_workers_die_with_a_sigkilled_parent(tmp_path, method, mode):
    proc = _run_child(tmp_path, method, mode)
    pids, tree = set(), set()
    try:
        pids = _read_pids(tmp_path, proc)
        first = _read_pids(tmp_path, proc, "first")
        tree = _descendants(proc.pid)
        assert len(pids) == 3 and pids <= tree
        # The workers outlive the thread that made the pool: the same three are there.
        assert first == pids
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        alive = [pid for pid in pids if not pid_gone(pid, 10)]
        assert not alive, f"workers still alive after their parent was killed: {alive}"
    finally:
        _kill_leftovers(proc, pids | tree)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_the_interpreter_exits_with_a_running_pool(tmp_path, method):
    proc = _run_child(tmp_path, method, "exit")
    pids, tree = set(), set()
    try:
        pids = _read_pids(tmp_path, proc)
        tree = _descendants(proc.pid)
        assert proc.wait(30) == 0, (tmp_path / "err.txt").read_text()
        alive = [pid for pid in pids if not pid_gone(pid, 10)]
        assert not alive, f"workers left behind: {alive}"
    finally:
        _kill_leftovers(proc, pids | tree)


#
# Ctrl-C
#


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_ctrl_c_interrupts_map_and_leaves_no_worker(tmp_path, method):
    proc = _run_child(tmp_path, method, "sigint")
    pids, tree = set(), set()
    try:
        pids = _read_pids(tmp_path, proc)
        tree = _descendants(proc.pid)
        assert len(pids) == 2 and pids <= tree
        time.sleep(0.5)  # in map, every worker sleeping
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)  # the parent only, as a signal from elsewhere
        code = proc.wait(30)
        assert time.monotonic() - t0 < 5
        output = (tmp_path / "out.txt").read_text()
        assert code == 42 and "KeyboardInterrupt" in output, (
            code,
            output,
            (tmp_path / "err.txt").read_text(),
        )
        alive = [pid for pid in pids if not pid_gone(pid, 5)]
        assert not alive, f"workers left behind: {alive}"
    finally:
        _kill_leftovers(proc, pids | tree)


BLOCKING = [
    "AsyncResult.get",
    "AsyncResult.get-timed",
    "AsyncResult.wait",
    "AsyncResult.wait-timed",
    "MapResult.get",
    "IMapIterator.next",
    "Pool.map",
    "Pool.apply",
    "Pool.join",
]


def _blocking(p, kind, seconds):
    """A call of the pool ``p`` that blocks for about ``seconds``."""
    if kind.startswith("AsyncResult."):
        r = p.apply_async(time.sleep, (seconds,))
        timeout = 60 + seconds if kind.endswith("-timed") else None
        return r.get if kind.startswith("AsyncResult.get") else r.wait, (timeout,)
    if kind == "MapResult.get":
        return p.map_async(time.sleep, [seconds]).get, ()
    if kind == "IMapIterator.next":
        return p.imap(time.sleep, [seconds]).next, ()
    if kind == "Pool.map":
        return p.map, (time.sleep, [seconds])
    if kind == "Pool.apply":
        return p.apply, (time.sleep, (seconds,))
    assert kind == "Pool.join"
    p.apply_async(time.sleep, (seconds,))
    p.close()
    return p.join, ()


@pytest.mark.parametrize("kind", BLOCKING)
def test_blocking_calls_release_the_gil(kind):
    p = rmp.Pool(1)
    try:
        p.apply(_square, (1,))  # the worker is up
        fn, args = _blocking(p, kind, 1.0)
        t0 = time.monotonic()
        _, during = run_counting_other_thread(lambda: fn(*args))
        assert time.monotonic() - t0 >= 0.8  # it did block
        assert during > 10_000  # the other thread ran while the call waited
    finally:
        p.terminate()
        _joined(p)


@pytest.mark.parametrize("kind", BLOCKING)
def test_sigint_interrupts_blocking_calls(kind):
    p = rmp.Pool(1)
    try:
        p.apply(_square, (1,))
        fn, args = _blocking(p, kind, 60)
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        t0 = time.monotonic()
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                fn(*args)
            assert time.monotonic() - t0 < 3
        finally:
            timer.join()
    finally:
        t0 = time.monotonic()
        p.terminate()
        _joined(p)
        assert time.monotonic() - t0 < 10


#
# Workers that die before they are ready (the initializer raises)
#


def _failing_initializer():
    raise RuntimeError("the initializer cannot connect")


def _fail_first_initializer(counter):
    with counter.get_lock():
        counter.value += 1
        n = counter.value
    if n == 1:
        raise RuntimeError("only the first worker's initializer fails")


def test_an_initializer_that_always_fails_fails_the_work_instead_of_hanging(capfd):
    """The stdlib restarts such workers forever and map() never returns; here, once as many
    workers in a row as the pool has died before they were ready, what is pending fails."""
    with rmp.Pool(2, initializer=_failing_initializer) as p:
        r = p.map_async(_square, range(10))
        with pytest.raises(rpool.WorkerLostError, match="initializer") as ei:
            r.get(timeout=30)
        assert ei.value.exitcode == 1
        it = p.imap(_square, range(3))
        with pytest.raises(rpool.WorkerLostError):
            it.next(30)
    _joined(p)
    assert "the initializer cannot connect" in capfd.readouterr().err


def test_a_worker_whose_initializer_failed_once_is_replaced():
    counter = rmp.Value("i", 0)
    with rmp.Pool(2, initializer=_fail_first_initializer, initargs=(counter,)) as p:
        assert p.map(_square, range(50), chunksize=1) == SQUARES[:50]
        # The failed worker is replaced (after a short delay): its initializer runs again.
        deadline = time.monotonic() + 30
        while counter.value < 3:
            assert time.monotonic() < deadline, "the failed worker was never replaced"
            time.sleep(0.01)
        assert p.map(_square, range(50)) == SQUARES[:50]
    _joined(p)
