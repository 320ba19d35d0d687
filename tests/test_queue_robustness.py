"""Robustness of ``rmp.Queue``, ``rmp.JoinableQueue`` and ``rmp.SimpleQueue``:

- producers SIGKILLed in the middle of ``put`` and consumers SIGKILLed in the middle of
  ``get`` at random points, hundreds of times on one queue: every message read is whole and
  in order, nobody hangs, the queue stays usable, and only the killed process's own messages
  are lost (exactly which ones is spelled out in each test);
- a many-producer many-consumer stress run that counts every message (``RMP_STRESS_MESSAGES``
  sets its size: ``RMP_STRESS_MESSAGES=1000000 pytest tests/test_queue_robustness.py -k
  stress`` is the long run);
- ten thousand queues created and dropped cost no descriptor, mapping, thread or /dev/shm
  entry;
- every blocking call releases the GIL and answers Ctrl-C;
- the feeder at exit: a child's backlog is flushed before it exits, unless
  ``cancel_join_thread()``; a forked child does not inherit its parent's backlog.

Message contents check themselves (a message repeats its own sequence number, or carries a
checksum), so garbage, truncation, duplicates and reordering are all caught."""

from __future__ import annotations

import gc
import math
import os
import random
import resource
import select
import signal
import struct
import threading
import time
import zlib
from array import array
from queue import Empty, Full

import pytest
from _helpers import join_or_kill, run_counting_other_thread

import rmp
from rmp import queues

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is a test dependency
    np = None

pytestmark = pytest.mark.timeout(120)

FORK = rmp.get_context("fork")


def _wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


#
# Killed producers and consumers
#

# 64 KiB rings: messages above 32,760 bytes travel as memfds over the side socket, so kills
# also land between sending a descriptor and committing its record, or between taking it
# and publishing the pop.
KILL_CAPACITY = 1 << 16
KILL_ITERATIONS = 100  # per test; four tests: 400 kills in all


def _size(seq):
    """The size of message ``seq``: 30% from 32 to 160 KiB (by descriptor), the rest 8 B to
    4 KB (in the ring)."""
    h = (seq * 2654435761) & 0xFFFFFFFF
    if h % 10 < 3:
        return 8 * (4096 + h % 16384)
    return 8 * (1 + h % 500)


def _message(seq):
    """Message ``seq``: its sequence number repeated; one in three is a bytearray."""
    data = seq.to_bytes(8, "little") * (_size(seq) // 8)
    return bytearray(data) if seq % 3 == 0 else data


def _check(m):
    """The sequence number of message ``m``, after checking that it is whole."""
    seq = int.from_bytes(m[:8], "little")
    assert m == _message(seq) and type(m) is type(_message(seq)), f"damaged message {seq}"
    return seq


def _get(q, timeout):
    """One message, or ``queue.Empty`` after ``timeout`` seconds. ``SimpleQueue.get`` has no
    timeout: its channel is read directly (and decoded as ``get`` does), so that a bug fails
    the test rather than hanging it."""
    if isinstance(q, queues.SimpleQueue):
        r = q._chan.get(True, timeout)
        if r.__class__ is tuple:
            return queues._decode(*r)
        raise Empty
    return q.get(timeout=timeout)


def _make_kill_queue(kind):
    if kind == "Queue":
        # Bounded, so that the producer's backlog (which its feeder moves into the ring)
        # stays small; a kill loses that backlog with the process, as the stdlib's does.
        return queues.Queue(32, ctx=FORK, capacity=KILL_CAPACITY)
    q = queues.SimpleQueue(ctx=FORK, capacity=KILL_CAPACITY)  # no feeder: put waits
    q._reader.fileno()  # arms the readiness eventfd: every push and pop counts on it too
    return q


def _readable(q):
    return bool(select.select([q._reader.fileno()], [], [], 0)[0])


def _still_usable(q):
    """After all the kills: nothing left, and both kinds of messages go through."""
    assert q.empty()
    if isinstance(q, queues.Queue):
        assert q.qsize() == 0
    else:
        assert not _readable(q) and not q._reader.poll(0)
    for seq in (3, 1):  # one small, one by descriptor
        q.put(_message(seq))
        if isinstance(q, queues.SimpleQueue):
            assert _readable(q) and q._reader.poll(0)
        assert _check(_get(q, 10)) == seq
    with pytest.raises(Empty):
        _get(q, 0.05)


def _produce_until_killed(q, attempting, done, seq, throttle):
    while True:
        attempting.value = seq  # before the put: a kill inside put leaves it pointing there
        q.put(_message(seq))
        done.value = seq
        seq += 1
        # Throttled, the producer waits for the reader to catch up, so that its next put
        # finds room and is killed while copying, holding the lock or sending a descriptor
        # rather than while waiting for room.
        while throttle and q._chan.ring_len() >= throttle:
            pass


def _read_until(q, stop, out):
    """In a thread: read into ``out`` until ``stop`` is set."""
    while not stop.is_set():
        try:
            out.append(_get(q, 0.01))
        except Empty:
            pass


@pytest.mark.parametrize("kind", ["Queue", "SimpleQueue"])
def test_producer_killed_in_put(kind):
    """A producer puts while a thread of this process reads as fast as it can, and is
    SIGKILLed at a random point. It either floods the queue (the ring is full: a Queue's
    producer feeds its backlog through its feeder thread, a SimpleQueue's waits for room) or
    waits for the reader to catch up after each put (the next put finds room: the kill
    falls while it copies, holds the ring's lock or sends a descriptor).

    Then the messages read (before and after the kill) are exactly ``base, base+1, ...,
    base+k-1``: whole, FIFO, no duplicate, no gap, nothing invented, so ``base+k`` is at
    most one more than the put in progress, ``last``. Without a feeder (SimpleQueue) every
    put that returned was committed, so at most the message in flight is lost: ``base+k``
    is ``last+1`` if its put returned, else ``last`` or ``last+1``. With a feeder (Queue)
    the killed process's backlog is lost too, as in the stdlib."""
    q = _make_kill_queue(kind)
    attempting, done = FORK.RawValue("q", -1), FORK.RawValue("q", -1)
    rng = random.Random()
    base = 0
    for it in range(KILL_ITERATIONS):
        attempting.value = done.value = base - 1
        throttle = rng.choice([0, 1, 4])
        p = FORK.Process(target=_produce_until_killed, args=(q, attempting, done, base, throttle))
        out, stop = [], threading.Event()
        reader = threading.Thread(target=_read_until, args=(q, stop, out))
        p.start()
        reader.start()
        try:
            time.sleep(rng.random() * 0.02)
            os.kill(p.pid, signal.SIGKILL)  # anywhere: maybe in put, holding the ring's lock
        finally:
            join_or_kill([p], 10)
            stop.set()
            reader.join(30)
        assert p.exitcode == -signal.SIGKILL
        read = [_check(m) for m in out]
        while True:  # everything committed is there now (the only producer is dead)
            try:
                read.append(_check(_get(q, 0)))
            except Empty:
                break
        last, returned = attempting.value, done.value == attempting.value
        end = base + len(read)
        where = f"iteration {it}: read {base}..{end - 1}, put {last} in progress"
        where += f" (returned: {returned}, throttle {throttle})"
        assert read == list(range(base, end)), where
        assert end <= last + 1, where
        if kind == "SimpleQueue":
            assert end == last + 1 if returned else end in (last, last + 1), where
        base = max(last, end) + 1
    _still_usable(q)


def _consume_until_killed(q, got):
    while True:
        seq = _check(_get(q, 10))
        if seq != got.value:
            os._exit(3)  # out of order: the parent sees exit code 3 instead of a kill
        got.value = seq + 1  # after the get: a kill before this line loses message `seq`


def _put_until(q, stop, seq, put):
    """In a thread: put messages ``seq, seq+1, ...`` until ``stop`` is set; ``put[0]`` is
    then one past the last one put."""
    while not stop.is_set():
        try:
            q.put(_message(seq), timeout=0.05)
        except Full:
            continue
        except queues.ShutDown:  # freed after a failure
            break
        seq += 1
        put[0] = seq


def _put_until_simple(q, stop, seq, put):
    while not stop.is_set():
        try:
            q.put(_message(seq))  # SimpleQueue.put has no timeout: the main thread reads
        except queues.ShutDown:  # freed after a failure
            break
        seq += 1
        put[0] = seq


@pytest.mark.parametrize("kind", ["Queue", "SimpleQueue"])
def test_consumer_killed_in_get(kind):
    """A consumer reads while a thread of this process puts (a Queue's puts go through this
    process's feeder when the ring is full, a SimpleQueue's wait for room), and is SIGKILLed
    at a random point. It recorded how many it had read, ``got``, after each get. Then the
    putter stops, and this process reads the rest: the messages it reads are the last ones
    put, whole and in order, and the first of them is ``got`` (the get in progress took
    nothing) or ``got + 1`` (it took one and died before recording it, or took a descriptor
    and died before publishing the pop). Nothing else is lost, duplicated or left over."""
    q = _make_kill_queue(kind)
    got = FORK.RawValue("q", 0)
    rng = random.Random()
    base = 0
    putter_target = _put_until if kind == "Queue" else _put_until_simple
    for it in range(KILL_ITERATIONS):
        got.value = base
        put = [base]
        stop = threading.Event()
        p = FORK.Process(target=_consume_until_killed, args=(q, got))
        p.start()
        putter = threading.Thread(target=putter_target, args=(q, stop, base, put), daemon=True)
        putter.start()
        read = []
        try:
            time.sleep(rng.random() * 0.025)
            os.kill(p.pid, signal.SIGKILL)  # anywhere: maybe in get, holding the ring's lock
            join_or_kill([p], 10)
            assert p.exitcode == -signal.SIGKILL, f"iteration {it}: exit code {p.exitcode}"
            stop.set()
            while putter.is_alive():  # a putter waiting for room needs a reader
                try:
                    read.append(_get(q, 0.01))
                except Empty:
                    pass
            end = put[0]
            while True:  # the rest, including what this process's feeder still holds
                idle = q._chan.pending() == 0  # read before trying: then Empty means done
                try:
                    read.append(_get(q, 0))
                except Empty:
                    if idle:
                        break
                    time.sleep(0.001)
        finally:
            join_or_kill([p], 10)
            stop.set()
            if putter.is_alive():  # a failure above: nobody reads, free the putter
                putter.join(1)
                q._chan.shutdown(True)
            putter.join(30)
        read = [_check(m) for m in read]
        first = end - len(read)
        where = f"iteration {it}: consumer recorded {got.value}, then {first}..{end - 1} came"
        assert read == list(range(first, end)), where
        assert first in (got.value, got.value + 1), where
        with pytest.raises(Empty):
            _get(q, 0)
        base = end
    _still_usable(q)


#
# Stress: every message of random size delivered exactly once
#

# About 15 s by default on a 2-core machine; a million take about a minute there.
_STRESS_DEFAULT = 200_000
STRESS_MESSAGES = int(os.environ.get("RMP_STRESS_MESSAGES", _STRESS_DEFAULT))
_STRESS_MARKS = [pytest.mark.timeout(max(240, STRESS_MESSAGES // 200))]
if STRESS_MESSAGES > _STRESS_DEFAULT:
    _STRESS_MARKS.append(pytest.mark.slow)

_HEAD = struct.Struct("<III")  # producer, sequence number, crc32 of the payload
# Payloads are slices of this, at random offsets (made once, inherited by the children).
_NOISE = random.Random(2024).randbytes((1 << 20) + (1 << 16))


def _stress_produce(q, producer, n, seed):
    rng = random.Random(seed)
    top = math.log(1 << 20)
    for seq in range(n):
        size = min(1 << 20, int(math.exp(rng.uniform(0, top))))  # 1 B to 1 MiB, log-uniform
        off = rng.randrange(1 << 16)
        payload = _NOISE[off : off + size]
        crc = zlib.crc32(payload)
        kind = seq % 8
        if kind == 7:  # pickled
            q.put((producer, seq, crc, payload))
        elif kind == 6 and np is not None:  # pickle 5, the array out of band
            q.put((producer, seq, crc, np.frombuffer(payload, np.uint8)))
        elif kind == 3:
            q.put(bytearray(_HEAD.pack(producer, seq, crc) + payload))
        else:  # bytes: no pickling
            q.put(_HEAD.pack(producer, seq, crc) + payload)


def _stress_consume(q, results, index):
    ids = array("Q")
    last = {}
    errors = []
    while True:
        m = q.get(timeout=120)
        if m is None:
            break
        if type(m) is tuple:
            producer, seq, crc, data = m
        else:
            producer, seq, crc = _HEAD.unpack_from(m)
            data = memoryview(m)[_HEAD.size :]
        if zlib.crc32(data) != crc:
            errors.append(("checksum", producer, seq))
        if seq <= last.get(producer, -1):
            errors.append(("order", producer, seq, last[producer]))
        last[producer] = seq
        ids.append(producer << 32 | seq)
    results.put((index, ids.tobytes(), errors[:20], len(errors)))


@pytest.mark.parametrize("messages", [pytest.param(STRESS_MESSAGES, marks=_STRESS_MARKS)])
def test_stress_4_producers_4_consumers(messages):
    """4 producers and 4 consumers share a queue (default 1 MiB ring, so about one message
    in twenty goes by descriptor) and ``messages`` messages whose payloads have 1 B to 1 MiB,
    log-uniform, after a 12-byte header (producer, sequence number, crc32 of the payload):
    bytes, bytearrays, pickled tuples and numpy arrays. Each is delivered exactly once, its
    checksum matches, and each consumer sees each producer's messages in order."""
    producers, consumers = 4, 4
    per = [messages // producers + (p < messages % producers) for p in range(producers)]
    # Bounded, so that a producer running ahead of the consumers blocks instead of growing
    # its backlog without limit (the backlog counts against maxsize).
    q = FORK.Queue(256)
    results = FORK.Queue()
    cons = [FORK.Process(target=_stress_consume, args=(q, results, i)) for i in range(consumers)]
    prods = [
        FORK.Process(target=_stress_produce, args=(q, p, per[p], 1000 + p))
        for p in range(producers)
    ]
    budget = max(120, messages // 250)
    t0 = time.monotonic()
    for p in cons + prods:
        p.start()
    try:
        deadline = time.monotonic() + budget
        for p in prods:
            p.join(max(0.1, deadline - time.monotonic()))
        assert [p.exitcode for p in prods] == [0] * producers
        for _ in cons:
            q.put(None)  # after every message (FIFO): one stop per consumer
        reports = sorted(results.get(timeout=120) for _ in cons)
        join_or_kill(cons, 60)
    finally:
        join_or_kill(prods + cons, 5)
    elapsed = time.monotonic() - t0
    assert [p.exitcode for p in cons] == [0] * consumers
    errors = [e for r in reports for e in r[2]]
    assert sum(r[3] for r in reports) == 0, errors
    ids = array("Q")
    for r in reports:
        ids.frombytes(r[1])
    counts = [len(r[1]) // 8 for r in reports]
    assert len(ids) == messages, f"{len(ids)} delivered of {messages}"
    expected = [p << 32 | s for p in range(producers) for s in range(per[p])]
    assert sorted(ids) == expected  # none lost, none twice
    print(f"\n{messages} messages in {elapsed:.1f} s; per consumer {counts}")


#
# Many queues: no descriptor, mapping, thread or /dev/shm entry outlives its queue
#


def _fds():
    return len(os.listdir("/proc/self/fd"))


def _maps():
    with open("/proc/self/maps") as f:
        return sum("/memfd:rmp" in line for line in f)


def _threads():
    return len(os.listdir("/proc/self/task"))


def test_ten_thousand_queues_leave_nothing_behind():
    ctx = rmp.get_context()
    big = b"L" * 40_000  # above half of a 64 KiB ring: by descriptor
    medium = b"M" * 30_000  # two fit in a 64 KiB ring
    huge = b"H" * (600 << 10)  # above half of the default ring
    # Warm up what is made once per process (encoders, the exit hook).
    warm = queues.Queue(ctx=ctx, capacity=256)
    warm.put(("warm", 1))
    warm.put(b"x" * 300)
    assert warm.get(timeout=10) == ("warm", 1) and warm.get(timeout=10) == b"x" * 300
    del warm
    gc.collect()
    shm, fds, maps, threads = set(os.listdir("/dev/shm")), _fds(), _maps(), _threads()
    for i in range(10_000):
        kind = i % 4
        if kind == 0:
            q = ctx.Queue()
        elif kind == 1:
            q = ctx.JoinableQueue()
        elif kind == 2:
            q = ctx.SimpleQueue()
        else:
            q = queues.Queue(ctx=ctx, capacity=1 << 16)
        if i % 10 == 0:  # used: a small and a large message (by descriptor)
            q.put(("small", i))
            q.put(huge if kind != 3 else big)
            if kind == 2:
                assert q._reader.poll(10)
                assert q.get() == ("small", i) and len(q.get()) in (len(big), len(huge))
            else:
                assert q.get(timeout=10) == ("small", i)
                assert len(q.get(timeout=10)) in (len(big), len(huge))
                if kind == 1:
                    q.task_done()
                    q.task_done()
                    q.join()
        if i % 500 == 7 and kind == 3:  # a backlog, moved by a feeder thread, then read
            for _ in range(40):
                q.put(medium)
            assert q._chan.pending() > 0
            for _ in range(40):
                assert q.get(timeout=10) == medium
        del q
    gc.collect()
    # A feeder thread holds its channel until it exits, just after its backlog went in.
    _wait_until(lambda: _fds() <= fds and _threads() <= threads, 10, "feeders to exit")
    assert (_fds(), _maps(), _threads()) == (fds, maps, threads)
    assert set(os.listdir("/dev/shm")) == shm


def _put_large_backlog(q, n, size, status):
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        for i in range(n):
            q.put(i.to_bytes(8, "little") * (size // 8))
    except OSError as e:
        status.value = -(e.errno or 1000)
        os._exit(0)  # without the exit flush: what was put may wait forever
    status.value = 1


def test_a_backlog_of_large_messages_is_not_limited_by_open_files():
    """A process may put more large messages than it may open files before anyone reads
    (here 600 messages of 40 KB on a 64 KiB ring, with RLIMIT_NOFILE at 256): the stdlib's
    feeder keeps its backlog in memory and never fails there."""
    q = queues.Queue(ctx=FORK, capacity=1 << 16)
    status = FORK.RawValue("i", 0)
    n, size = 600, 40_000
    p = FORK.Process(target=_put_large_backlog, args=(q, n, size, status))
    p.start()
    try:
        _wait_until(lambda: status.value != 0, 60, "the puts")
        got = []
        while len(got) < n:
            try:
                got.append(q.get(timeout=2 if status.value < 0 else 30))
            except Empty:
                break
    finally:
        join_or_kill([p])
    assert status.value == 1, f"put() failed: {os.strerror(-status.value)}"
    assert got == [i.to_bytes(8, "little") * (size // 8) for i in range(n)]
    assert p.exitcode == 0


def test_received_arrays_do_not_hold_descriptors():
    """An out-of-band numpy array larger than half the ring comes back backed by the
    sender's memfd, mapped (no copy). Keeping many of them (a consumer collecting results)
    must not keep a descriptor open for each: with the usual RLIMIT_NOFILE of 1024, the
    thousandth would fail with EMFILE (and so would every open() in the process), where the
    stdlib's arrays are plain memory. The mapping outlives a closed descriptor."""
    np = pytest.importorskip("numpy")
    q = queues.Queue(ctx=FORK, capacity=1 << 16)
    before = _fds()
    kept = []
    for i in range(200):
        q.put(np.full(5000, i, dtype=np.int64))  # 40 KB: out of band, by descriptor
        kept.append(q.get(timeout=10))
    assert all(int(a[0]) == int(a[-1]) == i for i, a in enumerate(kept))
    assert _fds() - before < 10, f"{_fds() - before} descriptors held by {len(kept)} arrays"
    del kept
    assert _fds() <= before


#
# Blocking calls: the GIL is released, and Ctrl-C interrupts them
#


def _drain(q, go, n):
    """In a child: wait for ``go``, then read ``n`` items in order."""
    if not go.wait(30):
        os._exit(2)
    for i in range(n):
        if q.get(timeout=10) != ("backlog", i):
            os._exit(3)


class _Blocked:
    """A fresh queue with a call that blocks until ``unblock()``."""

    def __init__(self, kind, timeout):
        self.kind = kind
        self.timeout = timeout
        self.child = None
        ctx = rmp.get_context("fork")
        if kind in ("Queue.get", "Queue.get_many"):
            self.q = rmp.Queue()
        elif kind in ("Queue.put", "Queue.put_many"):
            self.q = rmp.Queue(1)
            self.q.put("first")
        elif kind == "JoinableQueue.join":
            self.q = rmp.JoinableQueue()
            self.q.put("task")
        elif kind == "Queue.join_thread":
            # A tiny ring and many puts: most of them wait in this process's feeder.
            self.q = queues.Queue(ctx=ctx, capacity=256)
            self.n = 200
            for i in range(self.n):
                self.q.put(("backlog", i))
            assert self.q._chan.pending() > 0
            self.go = ctx.Event()
            self.child = ctx.Process(target=_drain, args=(self.q, self.go, self.n))
            self.child.start()
            self.q.close()
        elif kind in ("SimpleQueue.get", "SimpleQueue._reader.poll"):
            self.q = rmp.SimpleQueue()
        elif kind == "SimpleQueue.put":
            self.q = queues.SimpleQueue(ctx=ctx, capacity=256)
            for _ in range(2):  # two records of 112 bytes; a third does not fit
                self.q.put(b"f" * 100)
        else:  # pragma: no cover
            raise AssertionError(kind)

    def call(self):
        q, t = self.q, self.timeout
        kind = self.kind
        if kind == "Queue.get":
            return q.get(timeout=t)
        if kind == "Queue.get_many":
            return q.get_many(5, timeout=t)
        if kind == "Queue.put":
            return q.put("second", timeout=t)
        if kind == "Queue.put_many":
            return q.put_many(["second"], timeout=t)
        if kind == "JoinableQueue.join":
            return q.join()
        if kind == "Queue.join_thread":
            return q.join_thread()
        if kind == "SimpleQueue.get":
            return q.get()
        if kind == "SimpleQueue._reader.poll":
            return q._reader.poll(t)
        return q.put(b"s" * 100)  # SimpleQueue.put

    def unblock(self):
        kind = self.kind
        if kind in ("Queue.get", "SimpleQueue.get", "SimpleQueue._reader.poll"):
            self.q.put("x")
        elif kind == "Queue.get_many":
            self.q.put_many(["x", "y"])
        elif kind in ("Queue.put", "Queue.put_many"):
            assert self.q.get(timeout=10) == "first"
        elif kind == "JoinableQueue.join":
            assert self.q.get(timeout=10) == "task"
            self.q.task_done()
        elif kind == "Queue.join_thread":
            self.go.set()
        else:
            assert self.q.get() == b"f" * 100

    def after_success(self, result):
        kind, q = self.kind, self.q
        if kind in ("Queue.get", "SimpleQueue.get"):
            assert result == "x"
        elif kind == "Queue.get_many":
            rest = [] if len(result) == 2 else [q.get(timeout=10)]
            assert result + rest == ["x", "y"]
        elif kind in ("Queue.put", "Queue.put_many"):
            assert result is None and q.get(timeout=10) == "second"
        elif kind == "SimpleQueue._reader.poll":
            assert result is True and q.get() == "x"
        elif kind == "SimpleQueue.put":
            assert result is None
            assert [q.get(), q.get()] == [b"f" * 100, b"s" * 100]
        elif kind == "Queue.join_thread":
            assert result is None and q._chan.pending() == 0
            self.child.join(30)
            assert self.child.exitcode == 0
        else:
            assert result is None

    def after_interrupt(self):
        """The queue is as it was, and still works."""
        kind, q = self.kind, self.q
        if kind in ("Queue.get", "Queue.get_many"):
            assert q.qsize() == 0
            q.put("again")
            assert q.get(timeout=10) == "again"
        elif kind in ("Queue.put", "Queue.put_many"):
            assert q.qsize() == 1 and q.full()  # the interrupted put put nothing
            assert q.get(timeout=10) == "first"
            with pytest.raises(Empty):
                q.get(timeout=0.05)
            q.put("again", timeout=10)
            assert q.get(timeout=10) == "again"
        elif kind == "JoinableQueue.join":
            assert q.get(timeout=10) == "task"
            q.task_done()
            q.join()
        elif kind == "Queue.join_thread":
            assert q._chan.pending() > 0  # the backlog is still there
            self.go.set()
            q.join_thread()
            self.child.join(30)
            assert self.child.exitcode == 0
        elif kind in ("SimpleQueue.get", "SimpleQueue._reader.poll"):
            assert q.empty()
            q.put("again")
            assert q._reader.poll(10) and q.get() == "again"
        else:
            assert [q.get(), q.get()] == [b"f" * 100] * 2
            assert q.empty()

    def cleanup(self):
        if self.child is not None:
            self.go.set()
            join_or_kill([self.child])


BLOCKING = [
    ("Queue.get", None),
    ("Queue.get", 30),
    ("Queue.get_many", None),
    ("Queue.get_many", 30),
    ("Queue.put", None),
    ("Queue.put", 30),
    ("Queue.put_many", None),
    ("Queue.put_many", 30),
    ("JoinableQueue.join", None),
    ("Queue.join_thread", None),
    ("SimpleQueue.get", None),
    ("SimpleQueue.put", None),
    ("SimpleQueue._reader.poll", None),
    ("SimpleQueue._reader.poll", 30),
]
BLOCKING_IDS = [f"{k}-{'forever' if t is None else 'timed'}" for k, t in BLOCKING]


@pytest.mark.parametrize("kind,timeout", BLOCKING, ids=BLOCKING_IDS)
def test_blocking_calls_release_the_gil(kind, timeout):
    blocked = _Blocked(kind, timeout)
    timer = threading.Timer(0.5, blocked.unblock)
    timer.start()
    try:
        t0 = time.monotonic()
        result, during = run_counting_other_thread(blocked.call)
        assert time.monotonic() - t0 >= 0.4  # it did block
        blocked.after_success(result)
        assert during > 10_000  # the other thread ran while the call waited
    finally:
        timer.join()
        blocked.cleanup()


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_a_large_message_is_copied_with_the_gil_released(kind):
    """A message too large for the ring is copied into its memfd by ``put`` and mapped (or
    read) out of it by ``get`` without the GIL, as ``os.write`` and ``os.read`` do, and in
    steps short enough not to hold the process's memory-map lock long: another thread,
    which allocates as it runs, keeps running through each, so its longest pause is a small
    part of the call."""
    big = kind(bytes(range(256)) * (1 << 19))  # 128 MiB
    q = rmp.Queue()
    stamps, stop = [], threading.Event()

    def tick():
        while not stop.is_set():
            stamps.append(time.monotonic())

    def longest_pause(call):
        t0 = time.monotonic()
        out = call()
        t1 = time.monotonic()
        inside = [t0] + [t for t in list(stamps) if t0 <= t <= t1] + [t1]
        return out, t1 - t0, max(b - a for a, b in zip(inside, inside[1:]))

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    try:
        _, put_took, put_pause = longest_pause(lambda: q.put(big))
        got, get_took, get_pause = longest_pause(lambda: q.get(timeout=60))
    finally:
        stop.set()
        t.join(30)
        q.close()
        q.join_thread()
    assert type(got) is kind and got == big
    # Held through a copy, the pause would be the whole copy (tens of ms or more).
    assert put_pause < put_took / 2, (put_pause, put_took)
    assert get_pause < get_took / 2, (get_pause, get_took)


@pytest.mark.parametrize("kind,timeout", BLOCKING, ids=BLOCKING_IDS)
def test_sigint_interrupts_blocking_calls(kind, timeout):
    blocked = _Blocked(kind, timeout)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    t0 = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            blocked.call()
        assert time.monotonic() - t0 < 3  # within a few wait slices of the signal
        timer.join()
        blocked.after_interrupt()
    finally:
        timer.join()
        blocked.cleanup()


#
# The feeder at exit, and across fork
#


def _put_and_exit(q, n, done, cancel):
    if cancel == "before":
        q.cancel_join_thread()
    for i in range(n):
        q.put(("item", i, b"p" * 100))
    if cancel == "after":
        q.cancel_join_thread()
    done.set()


def test_exit_flushes_the_backlog(start_method):
    """A child puts far more than its ring holds and returns: it exits only once its
    feeder has moved every item into the ring, and all of them arrive, in order."""
    ctx = rmp.get_context(start_method)
    q = queues.Queue(ctx=ctx, capacity=4096)  # about 25 items fit
    done = ctx.Event()
    n = 500
    p = ctx.Process(target=_put_and_exit, args=(q, n, done, None))
    p.start()
    try:
        assert done.wait(30)
        time.sleep(0.3)
        assert p.exitcode is None, "exited with its backlog undelivered"
        got = [q.get(timeout=10) for _ in range(n)]
        p.join(30)
    finally:
        join_or_kill([p])
    assert p.exitcode == 0
    assert got == [("item", i, b"p" * 100) for i in range(n)]
    with pytest.raises(Empty):
        q.get(timeout=0.1)


def _put_many_until_full(q, n, done):
    try:
        q.put_many([bytes([i]) * 20000 for i in range(n)], timeout=0.3)
    except Full:
        pass
    done.set()


def test_exit_flushes_a_backlog_that_a_put_many_ending_in_full_started(start_method):
    """A bounded ``put_many`` that puts some items into the ring, some into the backlog (it
    starts the feeder) and then raises ``Full``: the child still waits at exit for its
    feeder, and every item it accepted arrives (the exit join is registered where the feeder
    starts, not from the status the call returns)."""
    ctx = rmp.get_context(start_method)
    q = queues.Queue(maxsize=8, ctx=ctx, capacity=1 << 16)  # 3 of the items fit in the ring
    done = ctx.Event()
    p = ctx.Process(target=_put_many_until_full, args=(q, 20, done))
    p.start()
    try:
        assert done.wait(30)
        got = [q.get(timeout=10) for _ in range(8)]
        p.join(30)
    finally:
        join_or_kill([p])
    assert p.exitcode == 0
    assert got == [bytes([i]) * 20000 for i in range(8)]
    with pytest.raises(Empty):
        q.get(timeout=0.1)


@pytest.mark.parametrize("cancel", ["before", "after"])
def test_cancel_join_thread_exits_without_the_backlog(start_method, cancel):
    """With ``cancel_join_thread()`` (before or after the puts) a child whose backlog
    nobody reads exits at once; what reached the ring is whole and in order."""
    ctx = rmp.get_context(start_method)
    q = queues.Queue(ctx=ctx, capacity=4096)
    done = ctx.Event()
    n = 500
    p = ctx.Process(target=_put_and_exit, args=(q, n, done, cancel))
    p.start()
    try:
        assert done.wait(30)
        t0 = time.monotonic()
        p.join(10)
        assert time.monotonic() - t0 < 5
    finally:
        join_or_kill([p])
    assert p.exitcode == 0
    got = []
    while True:
        try:
            got.append(q.get(timeout=0.1))
        except Empty:
            break
    assert 0 < len(got) < n
    assert got == [("item", i, b"p" * 100) for i in range(len(got))]


def _read_a_few_then_put(q, conn, k):
    own_backlog = q._chan.pending()  # what this process would feed: nothing inherited
    got = [q.get(timeout=10) for _ in range(k)]
    conn.send((own_backlog, got))
    conn.close()
    for j in range(3):  # the child's own puts: its own feeder, flushed at its exit
        q.put(("child", j))


def test_a_forked_child_does_not_inherit_the_backlog():
    """The parent fills a tiny queue so that most items wait in its feeder, then forks a
    child that reads a few and puts three of its own. Asserted: the child starts with no
    backlog and reads the oldest items; the parent's feeder goes on delivering its backlog;
    the parent then reads every other item exactly once, in order (a child that fed a copy
    of the backlog would duplicate them, or hang at exit feeding items nobody reads), and
    the child's three items arrive too; finally nothing is left anywhere."""
    q = queues.Queue(ctx=FORK, capacity=4096)
    n, k = 300, 5
    for i in range(n):
        q.put(("parent", i))
    assert q._chan.pending() > 0
    r, w = FORK.Pipe(False)
    p = FORK.Process(target=_read_a_few_then_put, args=(q, w, k))
    p.start()
    w.close()
    try:
        assert r.poll(30)
        child_backlog, child_got = r.recv()
        got = [q.get(timeout=10) for _ in range(n - k + 3)]
        p.join(30)
    finally:
        r.close()
        join_or_kill([p])
    assert p.exitcode == 0
    assert child_backlog == 0
    assert child_got == [("parent", i) for i in range(k)]
    assert [x for x in got if x[0] == "parent"] == [("parent", i) for i in range(k, n)]
    assert [x for x in got if x[0] == "child"] == [("child", j) for j in range(3)]
    with pytest.raises(Empty):
        q.get(timeout=0.2)
    assert q._chan.pending() == 0 and q.qsize() == 0
