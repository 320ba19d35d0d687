"""Cluster scenarios: the same Pool work on the local pools and on rmp's Ray backend.

What: ``Pool(2)`` from ``mod.get_context("fork")`` (for ``rmp-ray``, a pool of two Ray actors
on a local Ray instance: ``impls/ray_adapter.py``) runs (1) CPU-bound tasks of about 10 ms each
(``_workloads.cpu_task`` ten times over) through ``map(chunksize=1)``, about 2 s of serial work
(1 s in quick mode), and (2) 2,000 tiny tasks (``x + 1``) through ``imap(chunksize=1)``.

Why: the cluster issue asks, for the Ray backend against the local pool on this machine, for
the per-task overhead and the efficiency, serial time / (workers x wall), from which
docs/scaling.md estimates where a cluster pays and where a local pool is the better choice.
The stdlib's pool runs too, as the ratio column's baseline.

How it is measured, and checked: the pool is created and warmed up (a few tasks, so that every
Ray actor is up) outside the measured part; the measured part is the call until its last
result is back; ``close()`` + ``join()`` after it, ``terminate()`` in a ``finally``. Results
are compared with what the parent computes itself (checksums of the CPU-bound results, the
whole list of tiny results). Extras: ``efficiency`` (CPU-bound: the serial time, measured in
this run, over 2 x wall) and ``overhead_us`` (tiny: wall per task in microseconds, of which the
task itself is well under one). CPU time counts this process and its reaped children only:
Ray's actors are not this process's children, so the cpu columns of ``rmp-ray`` leave them
out; read the wall columns.
"""

from __future__ import annotations

import time

from scenarios import Meter, result, scenario
from scenarios._workloads import checksum, cpu_task

PROCESSES = 2
TINY = 2000
WARM = 8
STEPS = 10  # cpu_task calls per CPU-bound task: about 10 ms


def _ten_ms(seed):
    acc = 0
    for k in range(STEPS):
        acc ^= cpu_task(seed * STEPS + k)
    return acc


def _inc(x):
    return x + 1


def _pool(mod):
    return mod.get_context("fork").Pool(PROCESSES)


def _shut(pool):
    try:
        pool.terminate()
    finally:
        pool.join()


@scenario("cluster.cpu_10ms", group="cluster", unit="task", timeout=300)
def cpu_10ms(mod, quick):
    """~10 ms CPU-bound tasks through Pool(2).map(chunksize=1): efficiency vs serial"""
    t0 = time.perf_counter()
    for s in range(3):
        _ten_ms(s)
    per_task = (time.perf_counter() - t0) / 3
    budget = 1.0 if quick else 2.0
    n = PROCESSES * max(20, round(budget / per_task / PROCESSES))
    seeds = list(range(n))
    t0 = time.perf_counter()
    expected = [_ten_ms(s) for s in seeds]
    serial = time.perf_counter() - t0
    pool = _pool(mod)
    meter = Meter()
    try:
        pool.map(_ten_ms, range(WARM), chunksize=1)
        with meter:
            got = pool.map(_ten_ms, seeds, chunksize=1)
        pool.close()
        pool.join()
    finally:
        _shut(pool)
    ok = checksum(got) == checksum(expected)
    efficiency = serial / (PROCESSES * meter.wall)
    return result(
        n,
        meter,
        ok,
        "%d tasks of %.1f ms; serial %.2f s; efficiency %.3f"
        % (n, per_task * 1e3, serial, efficiency),
        efficiency=efficiency,
        task_ms=per_task * 1e3,
    )


@scenario("cluster.tiny", group="cluster", unit="task", timeout=300)
def tiny(mod, quick):
    """2,000 tiny tasks through Pool(2).imap(chunksize=1): per-task overhead"""
    n = TINY // 2 if quick else TINY
    pool = _pool(mod)
    meter = Meter()
    try:
        list(pool.imap(_inc, range(WARM), chunksize=1))
        with meter:
            got = list(pool.imap(_inc, range(n), chunksize=1))
        pool.close()
        pool.join()
    finally:
        _shut(pool)
    ok = got == [x + 1 for x in range(n)]
    overhead = meter.wall / n * 1e6
    return result(n, meter, ok, "%d tasks; %.0f us per task" % (n, overhead), overhead_us=overhead)
