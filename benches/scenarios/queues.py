"""Queue scenarios: ``Queue``, ``SimpleQueue`` and ``JoinableQueue`` between processes.

What: 64-byte ``bytes`` from one producer process to one consumer process; small tuples
``(producer_id, seq)`` from 4 producers to 4 consumers; small tuples through ``SimpleQueue``
and through ``JoinableQueue`` (``get`` + ``task_done``, then the producer's ``join()``); 1 MiB
and 64 MiB ``bytes`` and a 64 MiB numpy array one way; and batches of 100 small items through
``put_many``/``get_many`` beside the same items put and got one at a time. Every queue and
process comes from ``mod.get_context("fork")``; the parent only starts, gates and joins.

Why: the queue issue names these ratios (rmp against the stdlib, same run): 64-byte SPSC
>= 10x, 4x4 MPMC >= 6x (read against the pickling of the same item in one process, the floor
printed beside it), ``SimpleQueue`` and ``JoinableQueue`` >= 5x, 1 MiB and 64 MiB messages
>= 2x (read against a 64 MiB copy into fresh pages), and batches of 100 >= 2x rmp's own single
``put``/``get``. faster-fifo, the closest peer, runs through its adapter where it has the API
(``Queue``, ``put_many``/``get_many``); it has no ``SimpleQueue`` or ``JoinableQueue``.

How it is measured, and checked: every child does a warm-up through the queue (so the stdlib's
feeder thread is running and every code path is warm), then waits at a raw-pipe start line
(``sync._Gate``); the measured part is the gate's opening and the join of every child, so
process start is not counted and every child's CPU is (the ``cpu`` column counts reaped
children). Consumers compare what they get with what was put (exact equality for small
messages, their order included; sampled windows stamped with the message and the offset for
the large ones, so a copy check does not weigh on the ratio) and leave their counts and
checksums in an anonymous shared mapping, the same for every implementation and no queue;
the parent checks them and every exit code. A child still alive after a failure or after
``JOIN_TIMEOUT`` is terminated, then killed.

An implementation without the class a scenario needs (rmp before its ``Queue`` lands) gets a
FAILED row that says so: the framework skips scenarios only for a missing module.

The batch ratio: ``run.py`` divides the stdlib's time by the implementation's within one
scenario, and the stdlib has no ``put_many``. So ``queue.batch_100`` runs the stdlib's single
``put``/``get`` and every implementation that has ``put_many``/``get_many`` in batches (one
without falls back to single calls and says so in its detail), while ``queue.batch_100_single``
runs the very same items one at a time for every implementation. Both stdlib rows measure the
same thing, so rmp's gain from batching over its own single calls (the issue's ">= 2x") is
rmp's ratio in ``queue.batch_100`` divided by rmp's ratio in ``queue.batch_100_single``.
"""

from __future__ import annotations

import mmap
import struct
import time

from scenarios import Meter, result, scenario
from scenarios.sync import _cleanup, _Gate

JOIN_TIMEOUT = 60.0  # for all the children of a run together (scenario timeouts: 120 s+)
SMALL_PAYLOADS = 256  # distinct 64-byte payloads, cycled
WARM_SMALL = 500  # warm-up messages per producer, small messages
BATCH = 100
PRODUCERS = CONSUMERS = 4
WINDOW = 16  # bytes compared at each sampled offset of a large message
STRIDE = 64 << 10  # one sampled window every 64 KiB (every 16th page)

_Q = struct.Struct("=Q")
_MASK = (1 << 64) - 1


# ---------------------------------------------------------------- plumbing


class _Slots:
    """Unsigned 64-bit result slots in an anonymous shared mapping (``MAP_SHARED``, inherited
    across fork): children write counts and checksums, the parent reads them after the join.
    Costs the same for every implementation and is not a queue."""

    def __init__(self, n):
        self._buf = mmap.mmap(-1, max(8 * n, 8))

    def __setitem__(self, i, value):
        _Q.pack_into(self._buf, 8 * i, value & _MASK)

    def __getitem__(self, i):
        return _Q.unpack_from(self._buf, 8 * i)[0]

    def close(self):
        self._buf.close()


def _new(ctx, kind, *args):
    """``(ctx.<kind>(*args), "")``, or ``(None, why)`` when the implementation has no such
    class (yet): the scenario then reports FAILED with that reason instead of a traceback."""
    try:
        factory = getattr(ctx, kind)
    except AttributeError as e:
        return None, "this implementation has no %s (%s)" % (kind, e)
    return factory(*args), ""


def _unsupported(why):
    return result(0, Meter(), False, "unsupported: " + why)


def _measure(ctx, children):
    """Start ``children`` (``(target, args)`` pairs; each target gets the gate as its last
    argument and calls ``gate.arrive()`` after its warm-up), wait until all arrived, then
    measure the gate's opening and every child's join. Returns ``(meter, problem, codes)``:
    ``problem`` is '' or what went wrong; ``codes`` are the exit codes, in order."""
    gate = _Gate()
    procs = [ctx.Process(target=fn, args=(*args, gate)) for fn, args in children]
    meter = Meter()
    problem = ""
    try:
        for p in procs:
            p.start()
        problem = gate.wait_ready(procs)
        if not problem:
            with meter:
                gate.open(len(procs))
                deadline = time.monotonic() + JOIN_TIMEOUT  # one limit for all of them
                for p in procs:
                    p.join(max(0.0, deadline - time.monotonic()))
            stuck = sum(1 for p in procs if p.is_alive())
            if stuck:
                problem = "%d child(ren) still running after %gs" % (stuck, JOIN_TIMEOUT)
    finally:
        _cleanup(procs)
        gate.close()
    return meter, problem, [p.exitcode for p in procs]


def _verdict(problem, codes, checks):
    """``(ok, text)``: ``checks`` are ``(description, passed)`` pairs."""
    bad = [what for what, passed in checks if not passed]
    if any(c != 0 for c in codes):
        bad.append("exit codes %s" % codes)
    if problem:
        bad.insert(0, problem)
    return not bad, ("; WRONG: " + ", ".join(bad)) if bad else ""


# ---------------------------------------------------------------- children (module level)


def _put_all(q, warm, msgs, done, gate):
    """Producer: ``put`` every message of ``warm``, arrive, ``put`` every one of ``msgs``."""
    put = q.put
    for m in warm:
        put(m)
    gate.arrive()
    for m in msgs:
        put(m)
    done[0] = len(msgs)


def _get_equal(q, warm, msgs, slots, gate):
    """Consumer: get as many as ``warm``, arrive, then get and compare each of ``msgs`` in
    order (exact equality). Slots: 0 = messages got, 1 = wrong ones."""
    get = q.get
    for _ in warm:
        get()
    gate.arrive()
    wrong = 0
    for m in msgs:
        if get() != m:
            wrong += 1
    slots[0] = len(msgs)  # the loop ran to its end: every get() returned
    slots[1] = wrong


def _get_task_done(q, warm, msgs, slots, gate):
    """JoinableQueue consumer: ``get`` + compare + ``task_done`` for every message."""
    get, task_done = q.get, q.task_done
    for _ in warm:
        get()
        task_done()
    gate.arrive()
    wrong = 0
    for m in msgs:
        if get() != m:
            wrong += 1
        task_done()
    slots[0] = len(msgs)
    slots[1] = wrong


def _put_all_join(q, warm, msgs, done, gate):
    """JoinableQueue producer: ``put`` everything, then ``join()`` (every item task_done)."""
    put = q.put
    for m in warm:
        put(m)
    q.join()
    gate.arrive()
    for m in msgs:
        put(m)
    done[0] = len(msgs)
    q.join()
    done[1] = 1  # join() returned


def _mpmc_producer(q, me, n, warm, done, gate):
    """Put ``(me, seq)`` for seq in -warm..-1 (warm-up), arrive, then 0..n-1, then ``None``
    (one sentinel per producer: a consumer stops at the first one it gets)."""
    put = q.put
    for s in range(-warm, 0):
        put((me, s))
    gate.arrive()
    for s in range(n):
        put((me, s))
    put(None)
    done[me] = n


def _mpmc_consumer(q, me, n, warm, slots, gate):
    """Get ``warm`` warm-up items (from anyone), arrive, then get until a sentinel. Checks
    that each producer's items come in increasing order; slots (4 per consumer): count, sum
    and sum of squares of the item ids ``producer * n + seq``, order violations."""
    get = q.get
    last = [-warm - 1] * PRODUCERS
    for _ in range(warm):
        p, s = get()
        last[p] = s
    gate.arrive()
    count = total = squares = disorder = 0
    while True:
        item = get()
        if item is None:
            break
        p, s = item
        if s <= last[p]:
            disorder += 1
        last[p] = s
        k = p * n + s
        count += 1
        total += k
        squares += k * k
    base = 4 * me
    slots[base] = count
    slots[base + 1] = total
    slots[base + 2] = squares
    slots[base + 3] = disorder


def _put_batches(q, warm, batches, use_batch, done, gate):
    """Batch producer: each batch with one ``put_many`` (or item by item with ``put``)."""
    if use_batch:
        put_many = q.put_many
        put_many(warm)
        gate.arrive()
        for batch in batches:
            put_many(batch)
    else:
        put = q.put
        for item in warm:
            put(item)
        gate.arrive()
        for batch in batches:
            for item in batch:
                put(item)
    done[0] = sum(len(b) for b in batches)


def _get_batches(q, warm, batches, use_batch, slots, gate):
    """Batch consumer: ``get_many(BATCH)`` until every item came (a call may return fewer),
    or item by item with ``get``; every item compared in order. Slots: got, wrong, calls."""
    items = [item for batch in batches for item in batch]
    got = wrong = calls = 0
    if use_batch:
        get_many = q.get_many
        n = 0
        while n < len(warm):
            n += len(get_many(BATCH))
        gate.arrive()
        want = len(items)
        while got < want:
            chunk = get_many(BATCH)
            calls += 1
            k = len(chunk)
            expected = items[got : got + k]
            # one list comparison per call (in C), so checking costs less than the items do;
            # list() in case a batch comes back as another sequence type
            if chunk != expected and list(chunk) != expected:
                wrong += sum(1 for a, b in zip(chunk, expected) if a != b) + k - len(expected)
            got += k
    else:
        get = q.get
        for _ in warm:
            get()
        gate.arrive()
        for item in items:
            if get() != item:
                wrong += 1
        got = calls = len(items)
    slots[0] = got
    slots[1] = wrong
    slots[2] = calls


def _get_sampled(q, warm, msgs, samples, slots, gate):
    """Large-message consumer: get each message, check its type, size and the sampled
    windows of the one expected (``samples[id(expected)]``), then drop it."""
    get = q.get
    for _ in warm:
        get()
    gate.arrive()
    wrong = 0
    for expected in msgs:
        if not _sampled_equal(get(), expected, samples[id(expected)]):
            wrong += 1
    slots[0] = len(msgs)
    slots[1] = wrong


# ---------------------------------------------------------------- large messages


def _windows(buf):
    """The sampled windows of ``buf`` (``bytes`` or a C-contiguous array), (offset, bytes)
    pairs: one every STRIDE bytes, plus the last WINDOW bytes."""
    mv = memoryview(buf).cast("B")
    n = len(mv)
    offsets = list(range(0, n - WINDOW, STRIDE)) + [n - WINDOW]
    return [(o, mv[o : o + WINDOW].tobytes()) for o in offsets]


def _sampled_equal(got, expected, windows) -> bool:
    if type(got) is not type(expected):
        return False
    if hasattr(expected, "dtype"):  # a numpy array
        if got.dtype != expected.dtype or got.shape != expected.shape:
            return False
    try:
        mv = memoryview(got).cast("B")
    except (TypeError, ValueError):
        return False
    if len(mv) != memoryview(expected).nbytes:
        return False
    return all(mv[o : o + WINDOW] == w for o, w in windows)


def _stamped(size, tag):
    """``size`` bytes whose every sampled window holds (tag, offset): a window from another
    message or another place differs."""
    buf = bytearray(bytes(range(256)) * (size // 256) + bytes(size % 256))
    for o in range(0, size - WINDOW, STRIDE):
        struct.pack_into("=QQ", buf, o, tag, o)
    struct.pack_into("=QQ", buf, size - WINDOW, tag, size)
    return bytes(buf)


def _one_way_large(mod, payloads, n, warm_n, what):
    """A producer child puts ``n`` messages (the payloads in turn), a consumer child gets and
    checks them; ``warm_n`` of them first as a warm-up."""
    ctx = mod.get_context("fork")
    q, why = _new(ctx, "Queue")
    if q is None:
        return _unsupported(why)
    samples = {id(p): _windows(p) for p in payloads}
    msgs = [payloads[i % len(payloads)] for i in range(n)]
    warm = [payloads[i % len(payloads)] for i in range(warm_n)]
    done, slots = _Slots(1), _Slots(2)
    try:
        meter, problem, codes = _measure(
            ctx,
            [
                (_put_all, (q, warm, msgs, done)),
                (_get_sampled, (q, warm, msgs, samples, slots)),
            ],
        )
        got, wrong, put = slots[0], slots[1], done[0]
    finally:
        done.close()
        slots.close()
    ok, bad = _verdict(
        problem,
        codes,
        [("%d put" % put, put == n), ("%d got" % got, got == n), ("%d wrong" % wrong, not wrong)],
    )
    mib = meter.wall and n * memoryview(payloads[0]).nbytes / meter.wall / (1 << 20)
    detail = "%d x %s through Queue, %d got, %d failed the sampled check, %.0f MiB/s%s" % (
        n,
        what,
        got,
        wrong,
        mib,
        bad,
    )
    return result(n, meter, ok, detail)


# ---------------------------------------------------------------- scenarios


def _small(me, n):
    return [(me, s) for s in range(n)]


def _one_to_one(mod, kind, msgs, warm, what):
    """One producer child puts ``msgs``, one consumer child gets and compares them."""
    ctx = mod.get_context("fork")
    q, why = _new(ctx, kind)
    if q is None:
        return _unsupported(why)
    done, slots = _Slots(1), _Slots(2)
    try:
        meter, problem, codes = _measure(
            ctx,
            [(_put_all, (q, warm, msgs, done)), (_get_equal, (q, warm, msgs, slots))],
        )
        got, wrong, put = slots[0], slots[1], done[0]
    finally:
        done.close()
        slots.close()
    n = len(msgs)
    ok, bad = _verdict(
        problem,
        codes,
        [("%d put" % put, put == n), ("%d got" % got, got == n), ("%d wrong" % wrong, not wrong)],
    )
    detail = "%d %s through %s, 1 producer -> 1 consumer process; %d got, %d wrong%s" % (
        n,
        what,
        kind,
        got,
        wrong,
        bad,
    )
    return result(n, meter, ok, detail)


@scenario("queue.spsc_64b", group="queue", unit="message", target=10.0)
def spsc_64b(mod, quick):
    """64-byte bytes through Queue, 1 producer process -> 1 consumer process"""
    n = 150000 if quick else 500000
    payloads = [i.to_bytes(8, "little") * 8 for i in range(SMALL_PAYLOADS)]
    msgs = [payloads[i % SMALL_PAYLOADS] for i in range(n)]
    warm = payloads[:] * 2
    return _one_to_one(mod, "Queue", msgs, warm, "64-byte bytes")


@scenario(
    "queue.mpmc_4x4",
    group="queue",
    unit="item",
    floors=("floor.pickle_small",),
    target=6.0,
)
def mpmc_4x4(mod, quick):
    """(producer, seq) tuples through one Queue, 4 producer -> 4 consumer processes"""
    ctx = mod.get_context("fork")
    q, why = _new(ctx, "Queue")
    if q is None:
        return _unsupported(why)
    n = 40000 if quick else 125000  # per producer
    warm = WARM_SMALL // 2
    done, slots = _Slots(PRODUCERS), _Slots(4 * CONSUMERS)
    children = [(_mpmc_producer, (q, p, n, warm, done)) for p in range(PRODUCERS)]
    children += [(_mpmc_consumer, (q, c, n, warm, slots)) for c in range(CONSUMERS)]
    try:
        meter, problem, codes = _measure(ctx, children)
        puts = [done[p] for p in range(PRODUCERS)]
        per = [[slots[4 * c + k] for k in range(4)] for c in range(CONSUMERS)]
    finally:
        done.close()
        slots.close()
    total_items = PRODUCERS * n
    keys = range(total_items)  # the item ids p * n + s, each exactly once
    count = sum(c[0] for c in per)
    checks = [
        ("puts %s" % puts, puts == [n] * PRODUCERS),
        ("%d items got" % count, count == total_items),
        ("sum of ids", sum(c[1] for c in per) & _MASK == sum(keys) & _MASK),
        ("sum of squares", sum(c[2] for c in per) & _MASK == sum(k * k for k in keys) & _MASK),
        ("per-producer order", sum(c[3] for c in per) == 0),
    ]
    ok, bad = _verdict(problem, codes, checks)
    detail = "%d producers x %d items -> %d consumers got %s (sum %d)%s" % (
        PRODUCERS,
        n,
        CONSUMERS,
        "+".join(str(c[0]) for c in per),
        count,
        bad or "; ids summed and squared right, per-producer order kept",
    )
    return result(total_items, meter, ok, detail)


@scenario(
    "queue.simplequeue_small",
    group="queue",
    unit="item",
    floors=("floor.pickle_small",),
    target=5.0,
    impls=("stdlib", "rmp"),  # faster-fifo has no SimpleQueue
)
def simplequeue_small(mod, quick):
    """(producer, seq) tuples through SimpleQueue, 1 producer -> 1 consumer process"""
    n = 150000 if quick else 500000
    return _one_to_one(
        mod, "SimpleQueue", _small(0, n), _small(1, WARM_SMALL), "(producer, seq) tuples"
    )


@scenario(
    "queue.joinable_small",
    group="queue",
    unit="item",
    floors=("floor.pickle_small",),
    target=5.0,
    impls=("stdlib", "rmp"),  # faster-fifo has no JoinableQueue
)
def joinable_small(mod, quick):
    """JoinableQueue: put / get + task_done of tuples, then the producer's join()"""
    ctx = mod.get_context("fork")
    q, why = _new(ctx, "JoinableQueue")
    if q is None:
        return _unsupported(why)
    n = 100000 if quick else 400000
    msgs, warm = _small(0, n), _small(1, WARM_SMALL)
    done, slots = _Slots(2), _Slots(2)
    try:
        meter, problem, codes = _measure(
            ctx,
            [
                (_put_all_join, (q, warm, msgs, done)),
                (_get_task_done, (q, warm, msgs, slots)),
            ],
        )
        got, wrong, put, joined = slots[0], slots[1], done[0], done[1]
    finally:
        done.close()
        slots.close()
    ok, bad = _verdict(
        problem,
        codes,
        [
            ("%d put" % put, put == n),
            ("%d got" % got, got == n),
            ("%d wrong" % wrong, not wrong),
            ("join() did not return", joined == 1),
        ],
    )
    detail = "%d items put, got + task_done (%d got, %d wrong), then join()%s" % (
        n,
        got,
        wrong,
        bad or " returned",
    )
    return result(n, meter, ok, detail)


@scenario("queue.msg_1mib", group="queue", unit="1 MiB message", target=2.0)
def msg_1mib(mod, quick):
    """1 MiB bytes through Queue, producer process -> consumer process"""
    payloads = [_stamped(1 << 20, tag) for tag in (1, 2)]
    return _one_way_large(mod, payloads, 300 if quick else 1000, 4, "1 MiB bytes")


@scenario(
    "queue.bytes_64mib",
    group="queue",
    unit="64 MiB message",
    floors=("floor.memcpy_64mib",),
    target=2.0,
    floor_within=1.5,
    timeout=300,
)
def bytes_64mib(mod, quick):
    """64 MiB bytes through Queue, producer process -> consumer process"""
    payloads = [_stamped(64 << 20, tag) for tag in (1, 2)]
    return _one_way_large(mod, payloads, 5 if quick else 10, 1, "64 MiB bytes")


@scenario(
    "queue.numpy_64mib",
    group="queue",
    unit="64 MiB message",
    floors=("floor.memcpy_64mib",),
    target=2.0,
    floor_within=1.5,
    timeout=300,
    requires=("numpy",),
)
def numpy_64mib(mod, quick):
    """64 MiB numpy float64 array through Queue, producer process -> consumer process"""
    import numpy as np

    payloads = [np.frombuffer(_stamped(64 << 20, tag), dtype=np.float64).copy() for tag in (1, 2)]
    return _one_way_large(mod, payloads, 5 if quick else 10, 1, "64 MiB float64 arrays")


def _batches(mod, quick, batched):
    """Producer -> consumer of (producer, seq) tuples, in batches of BATCH when ``batched``
    and the queue has put_many/get_many, else one put/get per item."""
    ctx = mod.get_context("fork")
    q, why = _new(ctx, "Queue")
    if q is None:
        return _unsupported(why)
    nb = 1500 if quick else 5000
    batches = [[(0, b * BATCH + j) for j in range(BATCH)] for b in range(nb)]
    warm = [(1, j) for j in range(5 * BATCH)]
    has_api = hasattr(q, "put_many") and hasattr(q, "get_many")
    use_batch = batched and has_api
    if use_batch:
        warm = warm[:BATCH]  # put_many(warm) is one batch: keep it a batch of BATCH
    done, slots = _Slots(1), _Slots(3)
    try:
        meter, problem, codes = _measure(
            ctx,
            [
                (_put_batches, (q, warm, batches, use_batch, done)),
                (_get_batches, (q, warm, batches, use_batch, slots)),
            ],
        )
        got, wrong, calls, put = slots[0], slots[1], slots[2], done[0]
    finally:
        done.close()
        slots.close()
    n = nb * BATCH
    ok, bad = _verdict(
        problem,
        codes,
        [("%d put" % put, put == n), ("%d got" % got, got == n), ("%d wrong" % wrong, not wrong)],
    )
    if use_batch:
        how = "put_many of %d x %d items, %d get_many(%d) calls (%.1f items each)" % (
            nb,
            BATCH,
            calls,
            BATCH,
            got / max(calls, 1),
        )
    elif batched:
        how = "single put/get of %d items (no put_many/get_many here: not batched)" % n
    else:
        how = "single put/get of %d items (the reference of queue.batch_100)" % n
    detail = "%s, 1 producer -> 1 consumer process; %d got, %d wrong%s" % (how, got, wrong, bad)
    return result(n, meter, ok, detail, batched=int(use_batch))


@scenario(
    "queue.batch_100",
    group="queue",
    unit="item",
    floors=("floor.pickle_small",),
)
def batch_100(mod, quick):
    """put_many / get_many(100) of tuples; the stdlib (no such API): single put / get"""
    return _batches(mod, quick, True)


@scenario(
    "queue.batch_100_single",
    group="queue",
    unit="item",
    floors=("floor.pickle_small",),
)
def batch_100_single(mod, quick):
    """the items of queue.batch_100 one put / get at a time, every implementation"""
    return _batches(mod, quick, False)
