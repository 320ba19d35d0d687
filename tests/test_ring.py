"""``rmp._core.Ring``, the shared byte ring under rmp's queues (the ``Queue`` classes build on
it): FIFO across processes, limits, waits that release the GIL and answer Ctrl-C, and a
producer killed at a random point (perhaps mid-copy, holding the ring's lock) that wedges
nobody and leaves no half message."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from _helpers import run_counting_other_thread

import rmp
from rmp import _core

pytestmark = pytest.mark.timeout(120)


def _ring(capacity=4096, max_items=2**32 - 1):
    seg = _core.Segment(_core.Ring.segment_size(capacity))
    return _core.Ring(seg, capacity, max_items, True)


def test_fifo_limits_and_errors():
    ring = _ring(256, 3)
    assert ring.capacity == 256 and ring.max_payload == 120 and len(ring) == 0
    assert ring.get(block=False) is None
    assert ring.put(b"a") and ring.put(b"") and ring.put(b"c" * 120)
    assert ring.put(b"d", block=False) is False  # max_items
    assert len(ring) == 3
    assert [ring.get(), ring.get(), ring.get()] == [b"a", b"", b"c" * 120]
    with pytest.raises(ValueError, match="exceeds"):
        ring.put(b"x" * 121)
    with pytest.raises(ValueError):
        _core.Ring(_core.Segment(4096), 4096, 1, True)  # segment too small for its header
    with pytest.raises(ValueError):
        _core.Ring(_core.Segment(_core.Ring.segment_size(100)), 100, 1, True)  # not 2^k
    t0 = time.monotonic()
    assert ring.get(timeout=0.1) is None
    assert 0.09 <= time.monotonic() - t0 < 5


def _produce(ring, n, start):
    for i in range(start, start + n):
        ring.put(i.to_bytes(4, "little") * (1 + i % 50))


def test_two_producers_one_consumer_across_processes():
    ring = _ring(1024)
    ctx = rmp.get_context("fork")
    procs = [ctx.Process(target=_produce, args=(ring, 3000, k * 3000)) for k in range(2)]
    for p in procs:
        p.start()
    try:
        got = [ring.get(timeout=30) for _ in range(6000)]
    finally:
        for p in procs:
            p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    ids = [int.from_bytes(m[:4], "little") for m in got]
    for m, i in zip(got, ids):
        assert m == i.to_bytes(4, "little") * (1 + i % 50)
    assert sorted(ids) == list(range(6000))
    for k in range(2):  # FIFO per producer
        mine = [i for i in ids if k * 3000 <= i < (k + 1) * 3000]
        assert mine == sorted(mine)


def _flood(ring):
    i = 0
    while True:
        ring.put(i.to_bytes(8, "little") * 16)
        i += 1


@pytest.mark.parametrize("attempt", range(5))
def test_a_producer_killed_anywhere_wedges_nobody(attempt):
    ring = _ring(8192)
    ctx = rmp.get_context("fork")
    p = ctx.Process(target=_flood, args=(ring,))
    p.start()
    try:
        seen = 0
        while seen < 50 + 37 * attempt:  # let it run, reading as it goes
            m = ring.get(timeout=30)
            assert m == m[:8] * 16
            seen += 1
        os.kill(p.pid, signal.SIGKILL)  # anywhere: maybe inside put, holding the lock
    finally:
        p.join(30)
    assert p.exitcode == -signal.SIGKILL
    # Every message that was committed is whole; then the ring works for everyone.
    while (m := ring.get(block=False)) is not None:
        assert m == m[:8] * 16
    assert ring.put(b"after", timeout=10)
    assert ring.get(timeout=10) == b"after"


def test_get_and_put_release_the_gil():
    ring = _ring(256, 1)
    threading.Timer(0.3, ring.put, (b"late",)).start()
    result, counted = run_counting_other_thread(lambda: ring.get(timeout=30))
    assert result == b"late" and counted > 1000
    ring.put(b"fills it")
    threading.Timer(0.3, ring.get).start()
    result, counted = run_counting_other_thread(lambda: ring.put(b"waits", timeout=30))
    assert result is True and counted > 1000


@pytest.mark.parametrize("call", ["get", "put_full"])
def test_sigint_interrupts_waits(call):
    ring = _ring(256, 1)
    if call == "put_full":
        ring.put(b"full")
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            if call == "get":
                ring.get()
            else:
                ring.put(b"x")
    finally:
        timer.join()
