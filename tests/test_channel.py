"""``rmp._core.Channel``, the shared ring under every rmp queue (``rmp.queues`` pickles; this
layer moves tagged bytes): FIFO, the item and byte limits, messages larger than half the ring
(sent as a memfd over the side socket), tags, ``put_many``/``get_many``, shutdown, the
``JoinableQueue`` task count, the ``SimpleQueue`` readiness eventfd, this process's feeder,
descriptors passed to another process, and a producer killed at a random point (perhaps
holding the ring's lock, perhaps between sending a descriptor and committing its record)
that wedges nobody and leaves no half message.

The ``Queue`` classes on top, and their blocking calls under GIL and Ctrl-C, are tested in
``test_queue_robustness.py``."""

from __future__ import annotations

import mmap
import os
import select
import signal
import struct
import threading
import time

import pytest

import rmp
from rmp import _core

pytestmark = pytest.mark.timeout(120)

UNBOUNDED = 0xFFFFFFFF
# put's results (FED: done, into the backlog); get's are a message, FULL (empty) or SHUT
OK, FULL, SHUT, FED = 0, 1, 2, 3
RECORD_HEADER = 8


def _payload(msg):
    """The bytes of a message ``get`` returned: bytes, bytearray, or (sent by descriptor) a
    Segment holding it."""
    tag, data = msg
    return bytes(memoryview(data))


def _record(n):
    """Bytes a message of ``n`` bytes takes in the ring: header, payload padded to 8."""
    return RECORD_HEADER + (n + 7) // 8 * 8


def _wait_until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


#
# One process
#


def test_geometry_and_bad_capacities():
    chan = _core.Channel(1024, UNBOUNDED)
    assert chan.capacity == 1024 and chan.max_items == UNBOUNDED
    assert chan.max_payload == 1024 // 2 - RECORD_HEADER  # fits whatever the head's position
    assert chan.qsize() == chan.ring_len() == chan.pending() == 0
    assert chan.shutdown_state == 0 and chan.unfinished == 0
    assert _core.Channel(64, 0).max_items == 1  # at least one message
    for bad in (0, 32, 100, 1000):
        with pytest.raises((ValueError, OSError)):
            _core.Channel(bad, UNBOUNDED)


def test_fifo_with_wrap_around_at_every_offset():
    chan = _core.Channel(256, UNBOUNDED)
    expect = []
    for i in range(3000):
        # Sizes 0..max_payload in turn, up to three in flight: records wrap at every offset.
        msg = bytes((i + j) & 0xFF for j in range(i % (chan.max_payload + 1)))
        while chan.put(0, msg, False, None, False) == FULL:
            assert _payload(chan.get(False)) == expect.pop(0)
        expect.append(msg)
        assert chan.ring_len() == len(expect)
    while expect:
        assert _payload(chan.get(False)) == expect.pop(0)
    assert chan.get(False) == FULL and chan.ring_len() == 0


def test_item_limit():
    chan = _core.Channel(1024, 3)
    assert chan.max_items == 3
    assert [chan.put(0, b"x", False, None, False) for _ in range(3)] == [OK] * 3
    assert chan.put(0, b"x", False, None, False) == FULL  # room for bytes, not for items
    t0 = time.monotonic()
    assert chan.put(0, b"x", True, 0.1, False) == FULL
    assert 0.09 <= time.monotonic() - t0 < 5
    assert chan.get(False) == (0, b"x")
    assert chan.put(0, b"y", False, None, False) == OK
    assert chan.ring_len() == chan.qsize() == 3


def test_byte_limit():
    chan = _core.Channel(256, UNBOUNDED)
    n = 100  # two records of 112 bytes fit in 256, not three
    assert chan.put(0, b"a" * n, False, None, False) == OK
    assert chan.put(0, b"b" * n, False, None, False) == OK
    assert chan.put(0, b"c" * n, False, None, False) == FULL
    assert chan.put(0, b"c" * n, True, 0.05, False) == FULL
    assert chan.put(0, b"", False, None, False) == OK  # a header alone still fits
    assert chan.pending() == 0  # feed=False never makes a backlog
    assert chan.get(False) == (0, b"a" * n)
    assert chan.put(0, b"c" * n, False, None, False) == OK
    got = [chan.get(False) for _ in range(3)]
    assert got == [(0, b"b" * n), (0, b""), (0, b"c" * n)]


def test_get_waits_for_its_timeout():
    chan = _core.Channel(256, UNBOUNDED)
    assert chan.get(False) == FULL
    t0 = time.monotonic()
    assert chan.get(True, 0.1) == FULL
    assert 0.09 <= time.monotonic() - t0 < 5
    assert chan.get(True, 0) == FULL and chan.get(True, -1) == FULL
    timer = threading.Timer(0.1, chan.put, (7, b"late"))
    timer.start()
    try:
        assert chan.get(True, 30) == (7, b"late")
    finally:
        timer.join()


def test_message_parts_are_concatenated():
    chan = _core.Channel(4096, UNBOUNDED)
    parts = [b"ab", bytearray(b"cd"), memoryview(b"xefx")[1:3], b""]
    assert chan.put(0, parts, False, None, False) == OK
    assert chan.put(0, tuple(parts), False, None, False) == OK
    assert chan.put(0, memoryview(bytearray(b"gh")), False, None, False) == OK
    assert [chan.get(False) for _ in range(3)] == [(0, b"abcdef"), (0, b"abcdef"), (0, b"gh")]
    with pytest.raises(ValueError, match="contiguous"):
        chan.put(0, memoryview(b"abcdef")[::2])
    with pytest.raises(TypeError):
        chan.put(0, "text is not bytes")
    with pytest.raises((TypeError, OverflowError)):
        chan.put(256, b"tag out of range")
    assert chan.ring_len() == 0  # nothing half-put


@pytest.mark.parametrize("tag", [0, 1, 0x7F, 0x80, 0x81, 0x82, 0xFF])
def test_tags_round_trip(tag):
    chan = _core.Channel(1024, UNBOUNDED)
    for data in (b"", b"tagged", bytearray(b"also")):
        assert chan.put(tag, data, False, None, False) == OK
        got_tag, got = chan.get(False)
        assert got_tag == tag and got == data
        # Bit 0x80 asks for a writable bytearray (the Queue's bytearray tag), others bytes.
        assert type(got) is (bytearray if tag & 0x80 else bytes)


@pytest.mark.parametrize("capacity", [512, 65536])
def test_oversize_messages_go_by_descriptor(capacity):
    chan = _core.Channel(capacity, UNBOUNDED)
    limit = chan.max_payload
    sizes = [limit, limit + 1, capacity, 3 * capacity + 5, 3 << 20, 1]
    msgs = [os.urandom(8) * (n // 8) + os.urandom(n % 8) for n in sizes]
    for i, m in enumerate(msgs):  # interleaved with inline ones: one FIFO
        assert chan.put(0x80 | i, m, False, None, False) == OK
        assert chan.put(i, b"inline %d" % i, False, None, False) == OK
    for i, m in enumerate(msgs):
        tag, data = chan.get(False)
        assert tag == 0x80 | i and bytes(memoryview(data)) == m
        if len(m) > limit and tag & 0x7F != 1:
            # The receiver maps the sender's memfd: a Segment of exactly the message's size
            # (the Queue turns it into what the tag asks for).
            assert type(data) is _core.Segment and data.size == len(m)
        elif len(m) > limit:
            # The bytes tag (1, and 0x81 for bytearray) comes back as that object, made from
            # the memfd by the channel itself.
            assert type(data) is bytearray and len(data) == len(m)
        else:
            assert type(data) is bytearray
        assert chan.get(False) == (i, b"inline %d" % i)
    assert chan.get(False) == FULL


def test_a_descriptor_message_costs_one_record():
    chan = _core.Channel(256, UNBOUNDED)
    big = b"z" * 1000
    n = 0
    while chan.put(0, big, False, None, False) == OK:
        n += 1
        assert n < 100
    assert n == 256 // _record(16)  # an fd record: sequence number and length
    for _ in range(n):
        assert _payload(chan.get(False)) == big


def test_put_many_and_get_many():
    chan = _core.Channel(1024, 5)
    datas = [b"a", bytearray(b"b"), [b"c", b"d"], b"e" * 600, b"f", b"g"]
    tags = [1, 0x81, 2, 3, 4, 5]
    # Stops at the item limit: how many went in, and why it stopped.
    assert chan.put_many(tags, datas, False, None, False) == (5, FULL)
    assert chan.put_many([], [], False) == (0, OK)
    with pytest.raises(ValueError, match="length"):
        chan.put_many([1, 2], [b"x"])
    got = chan.get_many(3)
    assert got == [(1, b"a"), (0x81, bytearray(b"b")), (2, b"cd")]
    # A message in a memfd of its own ends a batch (its descriptor leaves the side socket
    # only after the pop is published: nothing is lost if the reader dies before).
    rest = chan.get_many(10, False)
    assert [t for t, _ in rest] == [3] and _payload(rest[0]) == b"e" * 600
    assert chan.get_many(10, False) == [(4, b"f")]
    assert chan.get_many(10, False) == FULL
    t0 = time.monotonic()
    assert chan.get_many(10, True, 0.1) == FULL
    assert 0.09 <= time.monotonic() - t0 < 5
    # get_many waits for the first message only.
    timer = threading.Timer(0.1, chan.put_many, ([9, 9], [b"x", b"y"]))
    timer.start()
    try:
        first = chan.get_many(10, True, 30)
    finally:
        timer.join()
    got = first if len(first) == 2 else first + [chan.get(True, 10)]
    assert got == [(9, b"x"), (9, b"y")]
    # put_many with a deadline: the first ones fit, the rest time out together.
    chan = _core.Channel(1024, 2)
    t0 = time.monotonic()
    assert chan.put_many([0] * 4, [b"1", b"2", b"3", b"4"], True, 0.1, False) == (2, FULL)
    assert 0.09 <= time.monotonic() - t0 < 5


def test_shutdown_lets_the_queue_drain():
    chan = _core.Channel(1024, UNBOUNDED)
    chan.put(0, b"a")
    chan.put(0, b"b" * 600)
    chan.shutdown(False)
    assert chan.shutdown_state == 1
    assert chan.put(0, b"c") == SHUT and chan.put_many([0], [b"c"]) == (0, SHUT)
    assert chan.get(False) == (0, b"a")
    assert _payload(chan.get(True, 30)) == b"b" * 600
    t0 = time.monotonic()
    assert chan.get() == SHUT and chan.get(True, 30) == SHUT and chan.get_many(5) == SHUT
    assert chan.poll(30) is False
    assert time.monotonic() - t0 < 5  # none of them waited
    chan.shutdown(True)  # the state only grows
    assert chan.shutdown_state == 2
    chan.shutdown(False)
    assert chan.shutdown_state == 2


def test_immediate_shutdown_drops_messages_and_their_tasks():
    chan = _core.Channel(1024, UNBOUNDED)
    for data in (b"a", b"b" * 600, b"c"):
        chan.task_added()
        chan.put(0, data)
    chan.task_added()  # one more task, taken and not done yet
    chan.shutdown(True)
    assert chan.shutdown_state == 2 and chan.ring_len() == 0
    assert chan.unfinished == 1  # each dropped message counted as done
    assert chan.get(False) == SHUT and chan.get() == SHUT and chan.put(0, b"x") == SHUT
    assert chan.join(0.05) is False
    assert chan.tasks_done(1) is True and chan.join(0) is True


def test_shutdown_wakes_sleepers():
    empty, full = _core.Channel(256, 1), _core.Channel(256, 1)
    full.put(0, b"full")
    results = []
    calls = [
        lambda: empty.get(True, 30),
        lambda: empty.poll(30),
        lambda: full.put(0, b"x", True, 30, False),
    ]
    threads = [threading.Thread(target=lambda c=c: results.append(c())) for c in calls]
    for t in threads:
        t.start()
    time.sleep(0.2)  # all three asleep
    t0 = time.monotonic()
    empty.shutdown(False)
    full.shutdown(False)
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert time.monotonic() - t0 < 5
    assert sorted(map(repr, results)) == ["2", "2", "False"]  # SHUT, SHUT, nothing to read


def test_tasks_done_and_join():
    chan = _core.Channel(256, UNBOUNDED)
    assert chan.join(0) is True and chan.join() is True  # nothing unfinished
    assert chan.tasks_done(1) is False and chan.unfinished == 0  # never below zero
    for _ in range(3):
        chan.task_added()
    assert chan.unfinished == 3
    assert chan.tasks_done(5) is False and chan.unfinished == 3  # all or nothing
    t0 = time.monotonic()
    assert chan.join(0.1) is False
    assert 0.09 <= time.monotonic() - t0 < 5
    assert chan.tasks_done(2) is True and chan.unfinished == 1
    timer = threading.Timer(0.1, chan.tasks_done, (1,))
    timer.start()
    try:
        assert chan.join(30) is True
    finally:
        timer.join()
    assert chan.unfinished == 0


def _readable(fd):
    return bool(select.select([fd], [], [], 0)[0])


def test_eventfd_is_readable_exactly_while_a_message_waits():
    chan = _core.Channel(1024, UNBOUNDED, True)
    assert chan.fds()[3] is not None
    chan.put(0, b"before arming")
    chan.put(0, b"x" * 600)
    fd = chan.arm_eventfd()
    assert chan.arm_eventfd() == fd  # idempotent: counts are not added twice
    assert fd == chan.fds()[3]
    for _ in range(2):  # counted the messages that were there when armed
        assert _readable(fd) and chan.poll(0) is True
        chan.get(False)
    assert not _readable(fd) and chan.poll(0) is False
    chan.put_many([0, 0, 0], [b"1", b"2", b"3" * 600])
    for _ in range(3):
        assert _readable(fd)
        chan.get(False)
    assert not _readable(fd)
    # poll waits for a message without taking it.
    t0 = time.monotonic()
    assert chan.poll(0.1) is False
    assert 0.09 <= time.monotonic() - t0 < 5
    timer = threading.Timer(0.1, chan.put, (0, b"late"))
    timer.start()
    try:
        assert chan.poll(30) is True and chan.poll(None) is True
    finally:
        timer.join()
    assert _readable(fd) and chan.get(False) == (0, b"late") and not _readable(fd)


def test_arm_eventfd_needs_an_eventfd():
    chan = _core.Channel(1024, UNBOUNDED)
    assert chan.fds()[3] is None
    with pytest.raises(ValueError, match="eventfd"):
        chan.arm_eventfd()
    assert chan.poll(0) is False  # poll works without one
    chan.put(0, b"x")
    assert chan.poll(0) is True


def test_the_feeder_keeps_fifo_behind_its_backlog():
    chan = _core.Channel(256, UNBOUNDED)
    msgs = [b"%03d" % i * 30 for i in range(20)] + [b"big" * 500, b"last"]
    for m in msgs:
        assert chan.put(0, m) in (OK, FED)  # never blocks: what does not fit joins the backlog
    assert chan.pending() > 0 and chan.qsize() == chan.ring_len() + chan.pending()
    got = [_payload(chan.get(True, 10)) for _ in msgs]
    assert got == msgs
    _wait_until(lambda: chan.pending() == 0, what="the backlog to drain")
    assert chan.feeder_error() is None
    chan.close_feeder()
    assert chan.join_feeder(10) is True
    assert chan.get(False) == FULL


def test_join_feeder_waits_for_the_backlog():
    chan = _core.Channel(256, UNBOUNDED)
    for i in range(10):
        chan.put(0, b"%d" % i * 100)
    assert chan.pending() > 0
    chan.close_feeder()
    t0 = time.monotonic()
    assert chan.join_feeder(0.1) is False  # nobody reads: the backlog cannot go in
    assert 0.09 <= time.monotonic() - t0 < 5
    got = []
    reader = threading.Thread(target=lambda: got.extend(chan.get(True, 10) for _ in range(10)))
    reader.start()
    assert chan.join_feeder(30) is True
    reader.join(10)
    assert [_payload(m) for m in got] == [b"%d" % i * 100 for i in range(10)]
    assert chan.join_feeder(0) is True


def test_a_channel_without_a_feeder_joins_at_once():
    chan = _core.Channel(256, UNBOUNDED)
    chan.close_feeder()
    chan.cancel_feeder()
    assert chan.join_feeder(0) is True and chan.feeder_error() is None


def test_cancel_feeder_drops_the_backlog():
    chan = _core.Channel(256, UNBOUNDED)
    for i in range(10):
        chan.put(0, b"%d" % i * 100)
    in_ring = chan.ring_len()
    assert chan.pending() == 10 - in_ring
    chan.cancel_feeder()
    assert chan.join_feeder(10) is True  # exits within one of its wait slices
    assert chan.pending() == 0
    got = []
    while (m := chan.get(False)) != FULL:
        got.append(_payload(m))
    assert got == [b"%d" % i * 100 for i in range(in_ring)]


def test_open_shares_the_ring():
    chan = _core.Channel(1024, UNBOUNDED, True)
    seg, send, recv, ev = chan.fds()
    other = _core.Channel.open(os.dup(seg), 1024, os.dup(send), os.dup(recv), os.dup(ev))
    assert other.capacity == 1024 and other.max_items == UNBOUNDED
    chan.put(0, b"small")
    chan.put(0, b"large" * 200)
    assert other.get(False) == (0, b"small")
    assert _payload(other.get(False)) == b"large" * 200
    other.task_added()
    assert chan.unfinished == 1 and chan.tasks_done(1)
    other.shutdown(False)
    assert chan.shutdown_state == 1
    del other  # closes its own descriptors only
    assert chan.get(False) == SHUT
    os.fstat(seg)


def test_open_refuses_what_is_not_a_ring():
    chan = _core.Channel(1024, UNBOUNDED)
    seg, send, recv, _ = chan.fds()
    with pytest.raises(OSError):  # another capacity than the ring's
        _core.Channel.open(os.dup(seg), 2048, os.dup(send), os.dup(recv))
    plain = _core.Segment(4096)
    with pytest.raises(OSError):  # zeroed memory: no magic
        _core.Channel.open(os.dup(plain.fileno()), 1024, os.dup(send), os.dup(recv))
    with pytest.raises(ValueError, match="descriptor"):
        _core.Channel.open(-1, 1024, os.dup(send), os.dup(recv))


def _fd_count():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("bad", ["segment", "eventfd", "capacity"])
def test_open_closes_what_it_was_given_when_it_fails(bad):
    # Channel.open takes ownership of the descriptors: "they are closed with it, or at once
    # on failure". A refused call must not leak the valid ones it was handed.
    chan = _core.Channel(1024, UNBOUNDED)
    seg, send, recv, _ = chan.fds()
    before = _fd_count()
    for _ in range(5):
        args = [os.dup(seg), 1024, os.dup(send), os.dup(recv), None]
        if bad == "segment":
            os.close(args[0])
            args[0] = -1
        elif bad == "eventfd":
            args[4] = -5
        else:
            args[1] = 2048
        with pytest.raises((ValueError, OSError)):
            _core.Channel.open(*args)
    assert _fd_count() == before


def test_layout_version_is_checked():
    # The header starts with the magic b"RMPQ" and the layout version: a ring of another
    # version is refused rather than misread.
    chan = _core.Channel(1024, UNBOUNDED)
    seg, send, recv, _ = chan.fds()
    with mmap.mmap(seg, 192) as m:
        magic, version = struct.unpack_from("<4sI", m, 0)
        assert magic == b"RMPQ"
        struct.pack_into("<I", m, 4, version + 1)
        with pytest.raises(OSError):
            _core.Channel.open(os.dup(seg), 1024, os.dup(send), os.dup(recv))
        struct.pack_into("<I", m, 4, version)
    assert chan.put(0, b"still fine", False) == OK and chan.get(False) == (0, b"still fine")


def _produce(chan, n, start, feed):
    for i in range(start, start + n):
        size = 4 * (1 + i % 50) if i % 7 else chan.max_payload + 8 * (i % 300)
        assert chan.put(0, i.to_bytes(4, "little") * (size // 4), True, 30, feed) in (OK, FED)
    if feed:  # a raw Channel has no exit flush: wait for this process's backlog here
        chan.close_feeder()
        assert chan.join_feeder(30)


def test_two_producers_one_consumer_across_processes():
    chan = _core.Channel(1024, UNBOUNDED)
    ctx = rmp.get_context("fork")
    procs = [
        ctx.Process(target=_produce, args=(chan, 3000, k * 3000, feed))
        for k, feed in enumerate([False, True])
    ]
    for p in procs:
        p.start()
    try:
        got = [_payload(chan.get(True, 30)) for _ in range(6000)]
    finally:
        for p in procs:
            p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert chan.get(False) == FULL
    ids = [int.from_bytes(m[:4], "little") for m in got]
    for m in got:
        assert m == m[:4] * (len(m) // 4)
    assert sorted(ids) == list(range(6000))
    for k in range(2):  # FIFO per producer
        mine = [i for i in ids if k * 3000 <= i < (k + 1) * 3000]
        assert mine == sorted(mine)


def _flood(chan):
    i = 0
    while True:
        # One message in five travels by descriptor: a kill may fall between the send of
        # the descriptor and the commit of its record.
        n = 16 if i % 5 else 3000
        chan.put(0, i.to_bytes(8, "little") * n, True, None, False)
        i += 1


@pytest.mark.parametrize("attempt", range(8))
def test_a_producer_killed_anywhere_wedges_nobody(attempt):
    chan = _core.Channel(8192, UNBOUNDED)
    ctx = rmp.get_context("fork")
    p = ctx.Process(target=_flood, args=(chan,))
    p.start()
    seen = 0
    try:
        while seen < 50 + 37 * attempt:  # let it run, reading as it goes
            m = _payload(chan.get(True, 30))
            assert m == seen.to_bytes(8, "little") * (len(m) // 8)  # whole, in order
            seen += 1
        os.kill(p.pid, signal.SIGKILL)  # anywhere: maybe inside put, holding the lock
    finally:
        p.join(30)
    assert p.exitcode == -signal.SIGKILL
    # Every message that was committed is whole and in order (none lost but the last one
    # in flight); then the ring works for everyone, descriptors included.
    while (m := chan.get(False)) != FULL:
        m = _payload(m)
        assert m == seen.to_bytes(8, "little") * (len(m) // 8)
        seen += 1
    for data in (b"after", b"after" * 2000):
        assert chan.put(0, data, True, 10, False) == OK
        assert _payload(chan.get(True, 10)) == data
    assert chan.get(False) == FULL
