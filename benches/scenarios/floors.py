"""Floors: what the operating system and the interpreter cost before any library is involved.

What: raw ``os.fork`` + ``os._exit`` + ``waitpid``; a 1-byte ``os.pipe`` round trip between two
forked Python processes; a futex round trip through ``rmp._core.Segment``; ``python -c pass``
and ``python -I -S -c pass`` start-up; a 64 MiB copy into fresh pages; raw forked processes
doing the ~1 ms CPU task of the Pool scenarios; ``pickle.dumps`` + ``pickle.loads`` of the
small item of the queue scenarios.

Why: a ratio to the stdlib says how much faster rmp is, a floor says how much room is left.
Each scenario names the floors that bound it and the report prints them beside its ratio.
Floors run in fresh interpreters, in the same run as the scenarios, with no implementation.
"""

from __future__ import annotations

import mmap
import os
import pickle
import struct
import sys

from scenarios import Meter, floor, result
from scenarios._workloads import checksum, cpu_task

_ONE_BYTE = [bytes((i,)) for i in range(256)]


def _child_exit(fn) -> None:
    """In a forked child: run ``fn`` and leave with ``os._exit`` (0 if it returned)."""
    code = 1
    try:
        fn()
        code = 0
    finally:
        os._exit(code)


def _reap(pid: int) -> int:
    """Wait for ``pid``; return its exit code (negative signal number if killed)."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@floor(
    "floor.fork_exit",
    unit="process",
    label="os.fork+_exit+waitpid",
    doc="raw os.fork() of this interpreter, child os._exit(0), parent os.waitpid()",
)
def fork_exit(_mod, quick):
    n = 50 if quick else 200
    meter = Meter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    _reap(pid)  # warm-up
    codes = []
    with meter:
        for _ in range(n):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            codes.append(_reap(pid))
    bad = [c for c in codes if c != 0]
    return result(n, meter, not bad, "%d forks, %d bad exit codes" % (n, len(bad)))


@floor(
    "floor.pipe_rtt",
    unit="round trip",
    label="os.pipe 1-byte RTT",
    doc="1-byte os.pipe round trip between two forked Python processes (os.read/os.write)",
)
def pipe_rtt(_mod, quick):
    n = 2000 if quick else 10000
    warm = 100
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(to_child_w)
        os.close(to_parent_r)

        def echo():  # send back each byte plus one
            for _ in range(warm + n):
                b = os.read(to_child_r, 1)
                os.write(to_parent_w, _ONE_BYTE[(b[0] + 1) & 255])

        _child_exit(echo)
    os.close(to_child_r)
    os.close(to_parent_w)
    meter = Meter()
    wrong = 0
    try:
        for i in range(warm):
            os.write(to_child_w, _ONE_BYTE[i & 255])
            os.read(to_parent_r, 1)
        with meter:
            for i in range(n):
                os.write(to_child_w, _ONE_BYTE[i & 255])
                if os.read(to_parent_r, 1)[0] != (i + 1) & 255:
                    wrong += 1
            code = _reap(pid)
    finally:
        os.close(to_child_w)
        os.close(to_parent_r)
    ok = wrong == 0 and code == 0
    return result(n, meter, ok, "%d round trips, %d wrong bytes, echo exit %d" % (n, wrong, code))


@floor(
    "floor.futex_rtt",
    unit="round trip",
    label="futex RTT",
    doc="futex round trip (two hand-offs) between two forked processes, rmp._core.Segment",
    requires=("rmp._core",),
)
def futex_rtt(_mod, quick):
    """Each party calls ``futex_pingpong(0, me, n)``: n turns each, 2n hand-offs, n round
    trips (one round trip = party 0 hands the turn to party 1 and gets it back)."""
    from rmp._core import Segment

    n = 20000 if quick else 100000
    warm = 1000
    seg = Segment(4096)
    word = mmap.mmap(seg.fileno(), 4096)  # a second view, to check the word afterwards
    pid = os.fork()
    if pid == 0:
        _child_exit(lambda: seg.futex_pingpong(0, 1, warm + n))
    meter = Meter()
    seg.futex_pingpong(0, 0, warm)
    with meter:
        seg.futex_pingpong(0, 0, n)
        code = _reap(pid)
    (last,) = struct.unpack_from("=I", word, 0)
    word.close()
    ok = code == 0 and last == 0
    detail = "%d round trips (%d hand-offs), partner exit %d, final word %d"
    detail %= (n, 2 * n, code, last)
    return result(n, meter, ok, detail)


def _startup(args, quick):
    n = 10 if quick else 20
    argv = [sys.executable, *args, "-c", "pass"]
    env = dict(os.environ)

    def once():
        pid = os.posix_spawn(sys.executable, argv, env)
        return _reap(pid)

    meter = Meter()
    first = once()  # warm-up (page cache)
    with meter:
        codes = [once() for _ in range(n)]
    bad = [c for c in codes + [first] if c != 0]
    cmd = " ".join(["python", *args, "-c", "pass"])
    return result(n, meter, not bad, "%d x `%s`, %d failed" % (n, cmd, len(bad)))


@floor(
    "floor.python_startup",
    unit="start",
    label="python -c pass",
    doc="`python -c pass` start-up (posix_spawn + waitpid), the floor of spawn",
)
def python_startup(_mod, quick):
    return _startup([], quick)


@floor(
    "floor.python_startup_isolated",
    unit="start",
    label="python -I -S -c pass",
    doc="`python -I -S -c pass` start-up (no site, isolated)",
)
def python_startup_isolated(_mod, quick):
    return _startup(["-I", "-S"], quick)


MEMCPY_BYTES = 64 << 20


@floor(
    "floor.memcpy_64mib",
    unit="64 MiB copy",
    label="memcpy 64 MiB",
    doc="64 MiB slice-assigned into a fresh anonymous mmap (page faults included)",
    bytes_per_op=MEMCPY_BYTES,
)
def memcpy_64mib(_mod, quick):
    k = 3 if quick else 5
    src = bytes(range(256)) * (MEMCPY_BYTES // 256)
    meter = Meter()
    bad = 0
    for _ in range(k):
        dst = mmap.mmap(-1, MEMCPY_BYTES)
        try:
            with meter:
                dst[:] = src
            if dst[:] != src:
                bad += 1
        finally:
            dst.close()
    return result(k, meter, bad == 0, "%d copies of 64 MiB, %d mismatched" % (k, bad))


@floor(
    "floor.pickle_small",
    unit="item",
    label="pickle dumps+loads",
    doc="pickle.dumps + pickle.loads of a (producer, seq) tuple in one process",
)
def pickle_small(_mod, quick):
    """What a queue that pickles pays per item even with a free transport: the small item of
    the queue scenarios, pickled (default protocol, as the stdlib's Queue) and unpickled."""
    n = 1000000 if quick else 3000000
    dumps, loads = pickle.dumps, pickle.loads
    for s in range(1000):  # warm-up
        loads(dumps((0, s)))
    wrong = 0
    meter = Meter()
    with meter:
        for s in range(n):
            if loads(dumps((0, s)))[1] != s:
                wrong += 1
    return result(n, meter, wrong == 0, "%d round trips through pickle, %d wrong" % (n, wrong))


CPU_PROCS = 2


def fork_checksums(chunks):
    """One raw ``os.fork`` child per chunk of seeds, all at once: each runs ``cpu_task`` on
    its seeds and writes their checksum to a pipe. Returns ``(checksums, exit codes)``; a
    child is killed and reaped if this fails midway."""
    pipes, pids = [], []
    try:
        for chunk in chunks:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)

                def work(chunk=chunk, w=w):
                    os.write(w, struct.pack("=Q", checksum(cpu_task(s) for s in chunk)))

                _child_exit(work)
            os.close(w)
            pipes.append(r)
            pids.append(pid)
        got = []
        for r in pipes:
            data = os.read(r, 8)
            got.append(struct.unpack("=Q", data)[0] if len(data) == 8 else None)
        codes = [_reap(pid) for pid in pids]
        pids = []
        return got, codes
    finally:
        for r in pipes:
            os.close(r)
        for pid in pids:  # only after an exception: do not leave them behind
            try:
                os.kill(pid, 9)
                _reap(pid)
            except OSError:
                pass


@floor(
    "floor.cpu_fork",
    unit="task",
    label="raw fork CPU task",
    doc="2 raw forked processes each running k ~1 ms pure-Python tasks; per task, efficiency",
)
def cpu_fork(_mod, quick):
    """Serial first (k tasks per process, in this process) for the expected checksums and the
    per-task time; then CPU_PROCS forked processes run their k tasks at once. Per op is the
    parallel wall time per task; efficiency = serial time / (CPU_PROCS * parallel time)."""
    k = 100 if quick else 300
    seeds = [list(range(c * k, (c + 1) * k)) for c in range(CPU_PROCS)]
    serial = Meter()
    with serial:
        expected = [checksum(cpu_task(s) for s in chunk) for chunk in seeds]
    meter = Meter()
    with meter:
        got, codes = fork_checksums(seeds)
    ok = got == expected and codes == [0] * CPU_PROCS
    efficiency = serial.wall / (CPU_PROCS * meter.wall) if meter.wall > 0 else 0.0
    detail = "%d procs x %d tasks, checksums %s, efficiency %.2f" % (
        CPU_PROCS,
        k,
        "match" if got == expected else "DIFFER",
        efficiency,
    )
    return result(
        CPU_PROCS * k,
        meter,
        ok,
        detail,
        efficiency=efficiency,
        serial_per_task=serial.wall / (CPU_PROCS * k),
    )
