"""Helpers shared by the tests (not fixtures: plain functions)."""

from __future__ import annotations

import os


def children_of(pid: int) -> dict[int, str]:
    """pid -> state letter (R, S, Z...) of the direct children of ``pid``, read from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # comm may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            out[int(entry)] = fields[0]
    return out


def run_counting_other_thread(call):
    """Run ``call()`` while another Python thread counts as fast as it can; return
    ``(call's result, how far the other thread counted meanwhile)``. A call that holds the
    GIL while it blocks lets the counter advance by almost nothing."""
    import threading

    count = 0
    stop = threading.Event()

    def spin():
        nonlocal count
        while not stop.is_set():
            count += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        before = count
        result = call()
        return result, count - before
    finally:
        stop.set()
        t.join()


def pid_gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` ends (exits or becomes a zombie) within ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except OSError:
            return True  # no such process
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def join_or_kill(procs, timeout=30):
    """Join every process; one still running after ``timeout`` (a hung child) is killed and
    reaped, so that no test leaves it behind."""
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.exitcode is None:  # pragma: no cover - a hung child: do not leave it behind
            p.kill()
            p.join(5)


def pool_workers(mp, n, exclude=(), timeout=30.0):
    """The pids of this process's live children (``mp.active_children()``) once there are
    exactly ``n`` and none is in ``exclude``: a pool's workers, in tests that start no other
    child."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        pids = {c.pid for c in mp.active_children()}
        if len(pids) == n and not pids & set(exclude):
            return pids
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {n} workers (none of {exclude}), have {pids}")
        time.sleep(0.02)


def join_pool(mp, p):
    """Join a closed or terminated pool: then no worker is left."""
    p.join()
    assert mp.active_children() == []
