"""``rmp.Queue`` and ``rmp.JoinableQueue``: the stdlib's API and semantics side by side with
the stdlib (parity tests run both), children under every start method, and rmp's additions:
pickling errors at the call site, ``put_many``/``get_many``, ``shutdown``, large messages and
numpy arrays. Robustness (kills, stress, leaks, GIL and Ctrl-C) is in
``test_queue_robustness.py``; the ring itself in ``test_channel.py``."""

from __future__ import annotations

import json
import os
import pickle
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import rmp
from rmp import queues

pytestmark = pytest.mark.timeout(120)


def _close(q):
    q.close()
    q.join_thread()


def test_basics_match_the_stdlib(mp):
    q = mp.Queue()
    try:
        assert q.empty() and q.qsize() == 0 and not q.full()
        for i in range(5):
            q.put(i)
        q.put_nowait("five")
        assert q.get(timeout=10) == 0
        got = [q.get(timeout=10) for _ in range(4)]
        assert got == [1, 2, 3, 4]
        if mp is rmp:
            # rmp writes a put straight into the ring when it fits: a get_nowait() right after
            # sees it. The stdlib's feeder thread may not have flushed it yet, so wait there.
            assert q.get_nowait() == "five"
        else:
            assert q.get(timeout=10) == "five"
        with pytest.raises(queue.Empty):
            q.get_nowait()
        with pytest.raises(queue.Empty):
            q.get(False, 5)  # block=False ignores the timeout
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(timeout=0.2)
        assert 0.15 <= time.monotonic() - t0 < 5
        with pytest.raises(queue.Empty):
            q.get(timeout=-1)  # a negative timeout is "do not wait"
    finally:
        _close(q)


def _empty_after_close(q, out):
    q.close()
    q.join_thread()
    out.put(q.empty())


def test_empty_after_close_matches_the_stdlib(mp):
    """The stdlib's ``close()`` closes the reader end once the queue was used (its feeder
    thread exits with it): ``empty()`` then raises OSError; unused, it still answers. A
    forked child has put nothing of its own."""
    for q in mp.Queue(), mp.JoinableQueue():
        q.close()
        q.join_thread()
        assert q.empty()
    for q in mp.Queue(), mp.JoinableQueue():
        q.put("foo")
        deadline = time.monotonic() + 10
        while q.empty() and time.monotonic() < deadline:  # the stdlib's feeder thread
            time.sleep(0.01)
        ctx = mp.get_context("fork")
        out = ctx.SimpleQueue()
        p = ctx.Process(target=_empty_after_close, args=(q, out))
        p.start()
        p.join(60)
        assert p.exitcode == 0 and out.get() is False  # "foo" is there
        out.close()
        q.close()
        q.join_thread()
        with pytest.raises(OSError, match="is closed"):
            q.empty()
        assert q.qsize() == 1 and not q.full()  # these still answer, as in the stdlib


class _Str(str):
    pass


def _varied():
    shared = [1]
    return [
        (0, 1),
        None,
        True,
        2**70,
        -(2**63),
        1.5,
        float("-inf"),
        "héllo",
        "\ud800",
        b"bytes",
        bytearray(b"ba"),
        {"k": [1, (2, None)], 3: {b"x": 1.0}},
        {1, 2},
        frozenset([3]),
        _Str("sub"),
        [shared, shared],
        list(range(1000)),
        1j,
    ]


def _echo(q_in, q_out, n):
    for _ in range(n):
        q_out.put(q_in.get())


def _check_varied(got):
    want = _varied()
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert type(g) is type(w) and (g == w or (g != g and w != w)), (g, w)
        if isinstance(w, (list, tuple, dict)):
            for x, y in zip(
                g.values() if isinstance(g, dict) else g, w.values() if isinstance(w, dict) else w
            ):
                assert type(x) is type(y)
    shared = got[15]
    assert shared[0] is shared[1]  # sharing inside one message survives, as with pickle


@pytest.mark.parametrize("kind", ["Queue", "SimpleQueue", "JoinableQueue"])
def test_objects_keep_their_types_and_sharing_through_a_child(mp, kind):
    """Plain data takes rmp's fast paths (plain messages, put_many); everything else is
    pickled: either way each object comes back as it was, in order, through a child."""
    ctx = mp.get_context("fork")
    q_in, q_out = getattr(ctx, kind)(), getattr(ctx, kind)()
    objs = _varied()
    p = ctx.Process(target=_echo, args=(q_in, q_out, 2 * len(objs)))
    p.start()
    try:
        for o in objs:
            q_in.put(o)
        if hasattr(q_in, "put_many"):
            q_in.put_many(objs)
        else:
            for o in objs:
                q_in.put(o)
        # SimpleQueue.get has no timeout (the module's pytest timeout bounds it).
        kw = {} if kind == "SimpleQueue" else {"timeout": 30}
        got = [q_out.get(**kw) for _ in range(2 * len(objs))]
        p.join(30)
        assert p.exitcode == 0
    finally:
        if p.is_alive():
            p.kill()
            p.join(10)
    _check_varied(got[: len(objs)])
    _check_varied(got[len(objs) :])
    if hasattr(q_out, "get_many"):
        q_out.put_many(objs[:3])
        deadline = time.monotonic() + 10
        batch = []
        while len(batch) < 3 and time.monotonic() < deadline:
            batch += q_out.get_many(10, timeout=10)
        assert batch == objs[:3]
    for q in (q_in, q_out):
        q.close()
        if kind != "SimpleQueue":
            q.join_thread()


def test_get_many_decodes_every_kind_of_message():
    """One get_many batch holding each kind of message a put makes: plain data, pickles,
    bytes, bytearray, a numpy array (out-of-band buffers), and one in a memfd of its own
    (which ends a batch)."""
    q = rmp.Queue()
    try:
        arr = np.arange(5000, dtype=np.float64)  # 40 KB: out of band
        objs = [(1, "a"), {1, 2}, b"raw", bytearray(b"ba"), arr, [1, [2]], b"L" * (1 << 20)]
        for o in objs:
            q.put(o)
        got = []
        deadline = time.monotonic() + 10
        while len(got) < len(objs) and time.monotonic() < deadline:
            got += q.get_many(100, timeout=10)
        assert len(got) == len(objs)
        for g, o in zip(got, objs):
            assert type(g) is type(o)
        assert got[:4] == objs[:4] and got[5:] == objs[5:]
        assert np.array_equal(got[4], arr)
    finally:
        _close(q)


def test_bounded_queue_full_and_sizes(mp):
    q = mp.Queue(2)
    try:
        q.put(1)
        q.put(2)
        deadline = time.monotonic() + 10
        while q.qsize() != 2 and time.monotonic() < deadline:  # the stdlib's feeder
            time.sleep(0.01)
        assert q.full() and q.qsize() == 2
        with pytest.raises(queue.Full):
            q.put_nowait(3)
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            q.put(3, timeout=0.2)
        assert 0.15 <= time.monotonic() - t0 < 5
        assert q.get(timeout=10) == 1
        q.put(3, timeout=10)
        assert [q.get(timeout=10), q.get(timeout=10)] == [2, 3]
    finally:
        _close(q)


def test_closed_queue_raises_the_stdlibs_error(mp):
    for q in (mp.Queue(), mp.JoinableQueue()):
        q.close()
        with pytest.raises(ValueError, match="is closed"):
            q.put(1)
        with pytest.raises(ValueError, match="is closed"):
            q.get()
        q.join_thread()
    q = mp.Queue()
    with pytest.raises(AssertionError, match="not closed"):
        q.join_thread()
    _close(q)


def test_pickling_outside_spawning_and_generic_alias(mp):
    import multiprocessing.queues

    q = mp.Queue()
    try:
        if hasattr(multiprocessing.queues.Queue, "__class_getitem__"):  # 3.12+
            assert type(q)[int] is not None
        else:
            assert not hasattr(type(q), "__class_getitem__")
        with pytest.raises(RuntimeError, match="inheritance"):
            pickle.dumps(q)
    finally:
        _close(q)


def _roundtrip(q_in, q_out, n):
    for _ in range(n):
        q_out.put(q_in.get(timeout=30))


def test_queues_with_children(ctx):
    q_in, q_out = ctx.Queue(), ctx.JoinableQueue()
    payloads = [1, "two", b"three", bytearray(b"four"), {"five": [5]}, None, b"x" * (3 << 20)]
    p = ctx.Process(target=_roundtrip, args=(q_in, q_out, len(payloads)))
    p.start()
    try:
        for x in payloads:
            q_in.put(x)
        got = [q_out.get(timeout=30) for _ in payloads]
        assert got == payloads
        assert [type(g) for g in got] == [type(x) for x in payloads]
    finally:
        p.join(30)
        _close(q_in)
        _close(q_out)
    assert p.exitcode == 0


def _numpy_child(q_in, q_out):
    a = q_in.get(timeout=30)
    a *= 2  # arrays come back writable
    q_out.put(a)
    q_out.put(np.arange(10, dtype=np.int16))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_numpy_arrays_travel_out_of_band(method):
    ctx = rmp.get_context(method)
    q_in, q_out = ctx.Queue(), ctx.Queue()
    big = np.arange(3_000_000, dtype=np.float64)  # larger than the ring: by descriptor
    p = ctx.Process(target=_numpy_child, args=(q_in, q_out))
    p.start()
    try:
        q_in.put(big)
        back = q_out.get(timeout=30)
        small = q_out.get(timeout=30)
        assert back.dtype == big.dtype and back.shape == big.shape
        assert np.array_equal(back, big * 2) and back.flags.writeable
        assert np.array_equal(small, np.arange(10, dtype=np.int16))
        mid = np.ones((300, 300))  # out of band, inside the ring
        q_in.put(mid)
        got = q_in.get(timeout=10)
        assert np.array_equal(got, mid) and got.flags.c_contiguous
        nc = np.arange(100_000.0)[::2]  # not contiguous: pickled in band
        q_in.put(nc)
        assert np.array_equal(q_in.get(timeout=10), nc)
    finally:
        p.join(30)
        _close(q_in)
        _close(q_out)
    assert p.exitcode == 0


class _Unpicklable:
    def __reduce__(self):
        raise TypeError("no pickling here")


def test_unpicklable_raises_at_the_call_site_and_the_queue_goes_on():
    q = rmp.Queue()
    try:
        with pytest.raises(TypeError, match="no pickling here"):
            q.put(_Unpicklable())
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            q.put(lambda: 0)
        q.put("after")
        assert q.get(timeout=10) == "after" and q.empty()
        with pytest.raises(TypeError):
            q.put_many([1, _Unpicklable(), 3])
        assert q.empty()  # all or nothing
    finally:
        _close(q)


def test_a_subclass_hook_gets_the_pickling_error_as_in_the_stdlib():
    seen = []

    class SafeQueue(rmp.queues.Queue):
        @staticmethod
        def _on_queue_feeder_error(e, obj):
            seen.append((type(e), type(obj)))

    q = SafeQueue(ctx=rmp.get_context())
    try:
        q.put(_Unpicklable())
        q.put(True)
        q.put_many([1, _Unpicklable(), 3])
        assert seen == [(TypeError, _Unpicklable)] * 2
        assert [q.get(timeout=10) for _ in range(3)] == [True, 1, 3]
    finally:
        _close(q)


def test_put_many_and_get_many():
    q = queues.Queue(ctx=rmp.get_context(), capacity=4096)
    try:
        items = [(i, "x" * (i % 300)) for i in range(500)]  # more than the ring holds
        q.put_many(items)
        q.put_many([])
        got = []
        while len(got) < len(items):
            batch = q.get_many(64, timeout=10)
            assert 1 <= len(batch) <= 64
            got += batch
        assert got == items
        with pytest.raises(queue.Empty):
            q.get_many(10, timeout=0.05)
        with pytest.raises(ValueError):
            q.get_many(0)
        q.put_many(iter([b"bytes", bytearray(b"ba"), np.zeros(3)]))
        a, b, c = q.get_many(3, timeout=10)
        assert a == b"bytes" and b == bytearray(b"ba") and np.array_equal(c, np.zeros(3))
    finally:
        _close(q)


def test_put_many_on_a_bounded_queue_puts_what_fits_then_raises_full():
    q = rmp.Queue(3)
    try:
        with pytest.raises(queue.Full):
            q.put_many(range(5), timeout=0.1)
        assert q.get_many(10, timeout=10) == [0, 1, 2]
        with pytest.raises(queue.Full):
            q.put_many(range(5), block=False)
        assert q.qsize() == 3
    finally:
        _close(q)


def test_joinable_put_many_counts_tasks_put_only():
    q = rmp.JoinableQueue(2)
    try:
        with pytest.raises(queue.Full):
            q.put_many(["a", "b", "c"], timeout=0.1)
        assert q._chan.unfinished == 2
        assert q.get_many(5, timeout=10) == ["a", "b"]
        q.task_done()
        q.task_done()
        with pytest.raises(ValueError, match="too many"):
            q.task_done()
        q.join()
    finally:
        _close(q)


def _worker(q, results):
    while True:
        item = q.get(timeout=30)
        if item is None:
            q.task_done()
            return
        results.put(item * item)
        q.task_done()


def test_joinable_queue_join_across_processes(rctx):
    q, results = rctx.JoinableQueue(), rctx.Queue()
    procs = [rctx.Process(target=_worker, args=(q, results)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        for i in range(50):
            q.put(i)
        q.join()  # returns once every item was processed
        assert sorted(results.get(timeout=10) for _ in range(50)) == [i * i for i in range(50)]
        for _ in procs:
            q.put(None)
        q.join()
    finally:
        for p in procs:
            p.join(30)
        _close(q)
        _close(results)
    assert [p.exitcode for p in procs] == [0, 0]


def test_shutdown_semantics():
    q = rmp.JoinableQueue()
    try:
        q.put(1)
        q.put(2)
        q.shutdown()
        assert q.is_shutdown
        with pytest.raises(queues.ShutDown):
            q.put(3)
        assert q.get(timeout=10) == 1 and q.get(timeout=10) == 2  # what was put stays
        with pytest.raises(queues.ShutDown):
            q.get(timeout=10)  # then empty: ShutDown, not a wait
        q.task_done()
        q.task_done()
        q.join()
    finally:
        _close(q)
    if hasattr(queue, "ShutDown"):
        assert queues.ShutDown is queue.ShutDown


def test_shutdown_wakes_blocked_getters_and_putters():
    q, full = rmp.Queue(), rmp.Queue(1)
    full.put(0)
    errors = []

    def run(fn):
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - recorded and checked below
            errors.append(type(e))

    threads = [
        threading.Thread(target=run, args=(lambda: q.get(timeout=30),)),
        threading.Thread(target=run, args=(lambda: full.put(1, timeout=30),)),
    ]
    for t in threads:
        t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    q.shutdown()
    full.shutdown()
    for t in threads:
        t.join(10)
    assert time.monotonic() - t0 < 5
    assert errors == [queues.ShutDown, queues.ShutDown]
    _close(q)
    _close(full)


def test_immediate_shutdown_drops_items_and_releases_join():
    q = rmp.JoinableQueue()
    try:
        for i in range(5):
            q.put(i)
        q.shutdown(immediate=True)
        with pytest.raises(queues.ShutDown):
            q.get(timeout=10)
        assert q.qsize() == 0 and q._chan.unfinished == 0
        q.join()  # every dropped item counted as done
    finally:
        _close(q)


def _get_until_shutdown(q, out):
    try:
        q.get(timeout=30)
        out.put("got an item")
    except queues.ShutDown:
        out.put("shutdown")


def test_shutdown_reaches_other_processes(rctx):
    q, out = rctx.Queue(), rctx.Queue()
    p = rctx.Process(target=_get_until_shutdown, args=(q, out))
    p.start()
    try:
        time.sleep(0.3)
        q.shutdown()
        assert out.get(timeout=30) == "shutdown"
    finally:
        p.join(30)
        _close(q)
        _close(out)
    assert p.exitcode == 0


def _put_then_shutdown(q, n, backlogged, done):
    for i in range(n):
        q.put(("item", i))
    backlogged.value = q._chan.pending()  # messages its feeder still holds
    q.shutdown()
    done.set()
    # Exits now: its exit waits for the feeder to push the rest.


def test_graceful_shutdown_keeps_what_feeders_still_hold(rctx):
    """A producer whose feeder still holds most of its messages (the ring is small and
    nobody gets yet) shuts the queue down and exits: a consumer still gets every message,
    in order, before ShutDown (not ShutDown at the first empty ring), and the producer's
    exit returns."""
    q = queues.Queue(ctx=rctx, capacity=4096)
    backlogged, done = rctx.Value("i", -1), rctx.Event()
    n = 3000
    p = rctx.Process(target=_put_then_shutdown, args=(q, n, backlogged, done))
    p.start()
    got = []
    try:
        assert done.wait(30)
        while True:
            try:
                got.append(q.get(timeout=30)[1])
            except queues.ShutDown:
                break
    finally:
        p.join(30)
        if p.is_alive():  # its exit waits for a feeder whose messages nobody takes
            p.kill()
            p.join(30)
        _close(q)
    assert got == list(range(n))
    assert p.exitcode == 0
    assert backlogged.value > 0  # the case under test: messages were still in the backlog


def _backlog_then_sleep(q, n, ready):
    for i in range(n):
        q.put(("item", i))
    assert q._chan.pending() > 0
    ready.set()
    time.sleep(60)  # stopped or killed by the test before its feeder can push the rest


def _backlogged_producer(n=2000):
    """A small queue and a forked child that has put ``n`` items, most of them still in its
    feeder (nobody gets), once ``ready.wait()`` returns."""
    ctx = rmp.get_context("fork")
    q = queues.Queue(ctx=ctx, capacity=4096)
    ready = ctx.Event()
    p = ctx.Process(target=_backlog_then_sleep, args=(q, n, ready))
    p.start()
    return q, p, ready


def test_graceful_shutdown_does_not_wait_for_a_killed_producers_backlog():
    """A producer SIGKILLed with messages in its feeder: after a graceful shutdown, a
    consumer gets what reached the ring and then ShutDown, not a wait for ever."""
    q, p, ready = _backlogged_producer()
    try:
        assert ready.wait(30)
        q.shutdown()
        os.kill(p.pid, 9)
        p.join(30)
        got = []
        # Waiting for the dead backlog would end in Empty after 30 s, not ShutDown.
        with pytest.raises(queues.ShutDown):
            while True:
                got.append(q.get(timeout=30)[1])
        assert got == list(range(len(got))) and 0 < len(got) < 2000
    finally:
        p.kill()
        p.join(30)
        _close(q)


def _wait_stopped(pid):
    """Until every thread of ``pid`` is stopped (a SIGSTOP takes effect asynchronously)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = []
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        if all(st in ("T", "t") for st in states):
            return
        time.sleep(0.01)
    raise AssertionError("process %d did not stop" % pid)


def test_a_get_waiting_on_a_stopped_feeder_sleeps_and_times_out():
    """Shut down while a live but stopped producer's feeder holds messages: get and
    _reader.poll wait for them asleep (little CPU), honour their timeouts, and then raise
    Empty / return False; once the producer is gone, ShutDown."""
    q, p, ready = _backlogged_producer()
    try:
        assert ready.wait(30)
        os.kill(p.pid, signal.SIGSTOP)
        _wait_stopped(p.pid)  # every thread, the feeder too: it pushes nothing more
        q.shutdown()
        while q._chan.ring_len():
            q.get(timeout=10)
        cpu0, t0 = time.process_time(), time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(timeout=1)
        assert not q._reader.poll(0.5)
        waited, cpu = time.monotonic() - t0, time.process_time() - cpu0
        assert waited >= 1.4
        assert cpu < waited / 4, (cpu, waited)  # asleep, not spinning
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        with pytest.raises(queues.ShutDown):
            q.get(timeout=30)
    finally:
        p.kill()
        p.join(30)
        _close(q)


def test_immediate_shutdown_counts_a_feeders_dropped_messages_as_done():
    """JoinableQueue: messages still in this process's feeder when the queue is shut down
    immediately are dropped and count as tasks done, so join() returns (3.13's queue)."""
    q = queues.JoinableQueue(ctx=rmp.get_context(), capacity=4096)
    try:
        for i in range(2000):
            q.put(("item", i))
        assert q._chan.pending() > 0
        q.shutdown(immediate=True)
        assert q._chan.join(10)  # join(), bounded
    finally:
        _close(q)


def test_capacity_is_checked():
    for bad in (0, 63, 100, 1 << 31):
        with pytest.raises(ValueError):
            queues.Queue(ctx=rmp.get_context(), capacity=bad)
    q = queues.Queue(ctx=rmp.get_context(), capacity=64)
    q.put(b"x" * 1000)  # larger than the ring: by descriptor
    assert q.get(timeout=10) == b"x" * 1000
    _close(q)


def test_concurrent_futures_with_rmp_queues_passed_to_workers(rctx):
    import concurrent.futures

    q = rctx.Queue()
    with concurrent.futures.ProcessPoolExecutor(
        2, mp_context=rctx, initializer=_set_queue, initargs=(q,)
    ) as ex:
        assert sorted(ex.map(_put_square, range(10))) == list(range(10))
    assert sorted(q.get(timeout=10) for _ in range(10)) == [i * i for i in range(10)]
    _close(q)


_q = None


def _set_queue(q):
    global _q
    _q = q


def _put_square(i):
    _q.put(i * i)
    return i


def test_waiting_on_a_queues_reader_with_connection_wait():
    import multiprocessing.connection as std_connection

    import rmp.connection

    q = rmp.Queue()
    try:
        r = q._reader
        assert std_connection.wait([r], timeout=0) == []
        q.put("x")
        assert std_connection.wait([r], timeout=10) == [r]
        assert r.recv() == "x"
        assert rmp.connection.wait([r], timeout=0) == [] and not r.poll()
    finally:
        _close(q)


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_large_bytes_come_back_whole_and_of_their_type(kind):
    """Messages too large for the ring travel in a memfd of their own (written and read by
    the kernel, not through a mapping): every byte and the exact type come back, in order
    with the ring's messages, and from a joinable queue too."""
    size = 3 << 20
    big = [kind(bytes([i]) * size + bytes(range(256)) * 7 + bytes([i])) for i in range(3)]
    for q in (rmp.Queue(), rmp.JoinableQueue()):
        try:
            for i, b in enumerate(big):
                q.put(b)
                q.put(("small", i))
            for i, b in enumerate(big):
                got = q.get(timeout=30)
                assert type(got) is kind and len(got) == len(b) and got == b
                assert q.get(timeout=30) == ("small", i)
        finally:
            _close(q)


# Above glibc's largest mmap threshold (32 MiB): such a buffer is a mapping of its own.
HUGE = 40 << 20


def _mapped_messages():
    """This process's private mappings of a queue message's memfd, as (start, end)."""
    with open("/proc/self/maps") as f:
        lines = [line.split() for line in f if "rmp-queue-message" in line]
    return [tuple(int(x, 16) for x in ln[0].split("-")) for ln in lines if ln[1].endswith("p")]


def _data_address(obj):
    return np.frombuffer(obj, dtype=np.uint8).ctypes.data


def _put_random(q, kind, seed, size):
    q.put(kind(random.Random(seed).randbytes(size)))


@pytest.mark.parametrize("queue_type", ["Queue", "SimpleQueue", "JoinableQueue"])
def test_huge_bytes_are_mapped_into_the_new_object_not_copied(queue_type):
    """A huge bytes message from another process comes back as the file's pages mapped
    (privately) inside the new object, only its partial end pages copied; freeing the
    object unmaps them. Random content: a page out of place would show."""
    ctx = rmp.get_context("fork")
    q = getattr(ctx, queue_type)()
    size = HUGE + 1234
    p = ctx.Process(target=_put_random, args=(q, bytes, 11, size))
    p.start()
    try:
        # SimpleQueue.get has no timeout: the module's test timeout bounds it.
        got = q.get() if queue_type == "SimpleQueue" else q.get(timeout=60)
        assert type(got) is bytes and got == random.Random(11).randbytes(size)
        maps = _mapped_messages()
        assert len(maps) == 1, maps
        lo, hi = maps[0]
        start = _data_address(got)
        page = os.sysconf("SC_PAGE_SIZE")
        assert start < lo and hi <= start + size and hi - lo >= size - 2 * page
        del got
        assert _mapped_messages() == []
    finally:
        p.join(60)
        q.close()
        if queue_type != "SimpleQueue":
            q.join_thread()
    assert p.exitcode == 0


def test_huge_bytearrays_are_read_not_mapped():
    """A bytearray is sent to be written: each first write to a mapped page would copy it,
    so it is read into its new buffer, and it is an ordinary buffer in every way."""
    src = random.Random(5).randbytes(HUGE)
    q = rmp.Queue()
    try:
        q.put(bytearray(src))
        got = q.get(timeout=30)
        assert type(got) is bytearray and got == src
        assert _mapped_messages() == []
        got[HUGE // 2] ^= 0xFF
        got += b"tail"
        assert got[HUGE // 2] == src[HUGE // 2] ^ 0xFF and got[-4:] == b"tail"
    finally:
        _close(q)


_ROUND_TRIP = (
    """
import json, os, random, sys
import rmp
q = rmp.SimpleQueue()
src = random.Random(9).randbytes(%d)
q.put(src)
got = q.get()
with open("/proc/self/maps") as f:
    mapped = sum("rmp-queue-message" in line for line in f)
print(json.dumps([got == src, mapped]))
"""
    % HUGE
)


@pytest.mark.parametrize(
    "env, mapped",
    [
        ({"PYTHONMALLOC": "malloc"}, 1),
        ({"PYTHONMALLOC": "malloc_debug"}, 0),  # a debug layer: the block is not malloc's
        ({"PYTHONMALLOC": "pymalloc_debug"}, 0),
        ({"RMP_MAP_LARGE_BYTES": "0"}, 0),  # turned off
    ],
)
def test_mapping_only_where_the_allocator_is_known(env, mapped):
    out = subprocess.run(
        [sys.executable, "-c", _ROUND_TRIP],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [True, mapped]
