"""``rmp.SimpleQueue`` (parity with the stdlib's, children under every start method, GIL
release and Ctrl-C on its blocking calls) and ``concurrent.futures.ProcessPoolExecutor``
driven by an rmp context, with rmp locks and Values passed to its workers."""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import signal
import threading

import pytest
from _helpers import run_counting_other_thread

import rmp

pytestmark = pytest.mark.timeout(120)


def test_simple_queue_basics(ctx):
    q = ctx.SimpleQueue()
    try:
        assert q.empty()
        q.put(1)
        q.put({"a": [1, 2]})
        q.put(b"x" * 30_000)  # fits the pipe buffer (nobody reads while we put)
        assert not q.empty()
        assert q.get() == 1
        assert q.get() == {"a": [1, 2]}
        assert q.get() == b"x" * 30_000
        assert q.empty()
    finally:
        q.close()
    with pytest.raises(OSError):
        q.get()


def test_simple_queue_generic_alias_and_pickling(mp):
    q = mp.SimpleQueue()
    try:
        assert type(q)[int] is not None
        with pytest.raises(RuntimeError, match="inheritance"):
            pickle.dumps(q)
    finally:
        q.close()


def test_unpicklable_object_raises_at_the_call_site(mp):
    q = mp.SimpleQueue()
    try:
        with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
            q.put(lambda: 0)
        q.put("after")  # the queue is still usable
        assert q.get() == "after"
    finally:
        q.close()


def _echo(q_in, q_out, n):
    for _ in range(n):
        q_out.put(q_in.get() * 2)


def test_simple_queue_with_children(ctx):
    q_in, q_out = ctx.SimpleQueue(), ctx.SimpleQueue()
    procs = [ctx.Process(target=_echo, args=(q_in, q_out, 50)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        for i in range(100):
            q_in.put(i)
        got = sorted(q_out.get() for _ in range(100))
        assert got == [2 * i for i in range(100)]
    finally:
        for p in procs:
            p.join(30)
        q_in.close()
        q_out.close()
    assert [p.exitcode for p in procs] == [0, 0]


def test_get_releases_the_gil():
    q = rmp.SimpleQueue()
    threading.Timer(0.3, q.put, ("done",)).start()
    try:
        result, counted = run_counting_other_thread(q.get)
        assert result == "done"
        assert counted > 1000
    finally:
        q.close()


def _small_simple_queue():
    """A SimpleQueue whose ring holds little, filled up (its next put has to wait)."""
    q = rmp.queues.SimpleQueue(ctx=rmp.get_context(), capacity=256)
    n = 0
    while q._chan.put(1, b"f" * 40, False, None, False) == 0:
        n += 1
    return q, n


@pytest.mark.parametrize("call", ["get", "put_full"])
def test_sigint_interrupts_blocking_calls(call):
    if call == "put_full":
        q, n = _small_simple_queue()
    else:
        q, n = rmp.SimpleQueue(), 0
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            if call == "get":
                q.get()
            else:
                q.put(b"x" * 40)
        # Nothing was half done on the way out: the queue still works.
        assert [q.get() for _ in range(n)] == [b"f" * 40] * n
        q.put("after")
        assert q.get() == "after" and q.empty()
    finally:
        timer.join()
        q.close()


def test_full_simple_queue_put_waits_without_the_gil():
    q, n = _small_simple_queue()
    try:
        threading.Timer(0.3, q.get).start()
        result, counted = run_counting_other_thread(lambda: q.put(b"l" * 40))
        assert result is None and counted > 1000
        got = [q.get() for _ in range(n)]
        assert got[-1] == b"l" * 40 and got[:-1] == [b"f" * 40] * (n - 1)
    finally:
        q.close()


def test_simple_queue_reader_is_an_eventfd_readable_exactly_while_a_message_waits():
    import multiprocessing.connection as std_connection

    q = rmp.SimpleQueue()
    try:
        q.put("before the reader was asked for")
        r = q._reader
        assert std_connection.wait([r], timeout=0) == [r]
        assert r.recv() == "before the reader was asked for"
        assert std_connection.wait([r], timeout=0) == []
        assert not r.poll()
        for i in range(3):
            q.put(i)
        assert r.poll(0) and std_connection.wait([r], timeout=0) == [r]
        assert [r.recv() for _ in range(3)] == [0, 1, 2]
        assert std_connection.wait([r], timeout=0.05) == []
    finally:
        q.close()


# concurrent.futures with an rmp context: its call queue is the stdlib's Queue class built on
# rmp's locks, its result queue rmp's SimpleQueue (read through ``_reader``).

_shared = {}


def _init(lock, counter):
    _shared["lock"], _shared["counter"] = lock, counter


def _count_and_square(x):
    with _shared["lock"]:
        _shared["counter"].value += 1
    return x * x


def _boom(x):
    raise ValueError(f"bad {x}")


def test_process_pool_executor_with_an_rmp_context(start_method):
    ctx = rmp.get_context(start_method)
    lock, counter = ctx.Lock(), ctx.Value("i", 0, lock=False)
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=2, mp_context=ctx, initializer=_init, initargs=(lock, counter)
    ) as ex:
        assert list(ex.map(_count_and_square, range(40))) == [x * x for x in range(40)]
        with pytest.raises(ValueError, match="bad 3"):
            ex.submit(_boom, 3).result(timeout=60)
    assert counter.value == 40
