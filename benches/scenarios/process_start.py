"""Process start-up scenarios: start + join of trivial processes, per start method.

What: for each start method (fork, spawn, forkserver), the time to construct, start and join a
process whose target does nothing, per process; and 100 processes of the default start method
started together, then joined, each exiting with its own code.

Why: process start is the first thing rmp accelerates (posix_spawn from Rust, pidfds); the
issue's targets are parity for fork, >= 1.3x for spawn and for 100 processes, >= 2x for
forkserver. Each run starts one warm-up process first, so that the fork server's own start is
not counted.

The targets are module-level functions so that spawn and forkserver children can import them
by name (``scenarios.process_start.noop``): keep this module light, every spawned child
imports it.
"""

from __future__ import annotations

import sys

from scenarios import Meter, result, scenario

BATCH = 100  # processes of the batch scenario
EXIT_MOD = 7  # child i of the batch exits with i % EXIT_MOD


def noop() -> None:
    """The target of the start + join scenarios."""


def exit_with(code: int) -> None:
    """The target of the batch scenario: exit with ``code`` (verified by the parent)."""
    sys.exit(code)


def _warm_up(ctx) -> str:
    p = ctx.Process(target=noop)
    p.start()
    p.join()
    return "" if p.exitcode == 0 else "warm-up process exited with %r" % (p.exitcode,)


def _start_join(mod, method: str, quick: bool) -> dict:
    n = 20 if quick else 50
    ctx = mod.get_context(method)
    meter = Meter()
    problem = _warm_up(ctx)
    if problem:
        return result(0, meter, False, problem)
    codes = []
    with meter:
        for _ in range(n):
            p = ctx.Process(target=noop)
            p.start()
            p.join()
            codes.append(p.exitcode)
    bad = [c for c in codes if c != 0]
    ok = len(codes) == n and not bad
    detail = "%d processes, all exit code 0" % n
    if not ok:
        detail = "%d of %d processes exited with a code other than 0: %r" % (
            len(bad),
            n,
            sorted(set(bad), key=repr),
        )
    return result(n, meter, ok, detail)


@scenario(
    "process_start.fork",
    group="process",
    unit="process",
    floors=("floor.fork_exit",),
    target=0.9,
    timeout=120,
)
def start_join_fork(mod, quick):
    """start + join of a trivial process, start method fork"""
    return _start_join(mod, "fork", quick)


@scenario(
    "process_start.spawn",
    group="process",
    unit="process",
    floors=("floor.python_startup", "floor.python_startup_isolated"),
    target=1.3,
    timeout=240,
)
def start_join_spawn(mod, quick):
    """start + join of a trivial process, start method spawn"""
    return _start_join(mod, "spawn", quick)


@scenario(
    "process_start.forkserver",
    group="process",
    unit="process",
    floors=("floor.fork_exit", "floor.pipe_rtt"),
    target=2.0,
    timeout=180,
)
def start_join_forkserver(mod, quick):
    """start + join of a trivial process, start method forkserver"""
    return _start_join(mod, "forkserver", quick)


@scenario(
    "process_start.batch_100",
    group="process",
    unit="process",
    floors=("floor.fork_exit",),
    target=1.3,
    timeout=180,
)
def batch_100(mod, quick):
    """100 processes (default start method) started, then joined; child i exits with i % 7"""
    ctx = mod.get_context()
    meter = Meter()
    problem = _warm_up(ctx)
    if problem:
        return result(0, meter, False, problem)
    with meter:
        procs = [ctx.Process(target=exit_with, args=(i % EXIT_MOD,)) for i in range(BATCH)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    wrong = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode != i % EXIT_MOD]
    pids = {p.pid for p in procs}
    ok = not wrong and len(pids) == BATCH and None not in pids
    detail = "%d processes (%s), exit codes i %% %d all right" % (
        BATCH,
        ctx.get_start_method(),
        EXIT_MOD,
    )
    if wrong:
        detail = "%d of %d exit codes wrong, e.g. child %d exited %r (expected %d)" % (
            len(wrong),
            BATCH,
            wrong[0][0],
            wrong[0][1],
            wrong[0][0] % EXIT_MOD,
        )
    elif not ok:
        detail = "only %d distinct pids for %d processes" % (len(pids - {None}), BATCH)
    return result(BATCH, meter, ok, detail)
