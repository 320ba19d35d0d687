"""Manager scenarios: proxies of a ``SyncManager`` (the manager issue's ratios).

What: from one client (the benchmark's process), 10,000 ``d[i] = i`` then ``d[i]`` through a
``dict`` proxy, and 10,000 ``q.put(i)`` then ``q.get()`` through a ``Queue`` proxy; one op is
one such pair (two calls to the manager's server, each a round trip).

Why: the manager issue asks for >= 2x the stdlib on both. rmp's managers run the stdlib's
manager logic; what differs is the transport (rmp's connections) and the server process
(an rmp process), so these ratios measure rmp's connection layer under the manager protocol.

How it is measured: the manager (``mod.get_context("fork").Manager()``) and the proxy are made
outside the measured part, with a warm-up of 200 ops; the CPU column counts the manager's
server process too (``pool._TreeMeter``: the live descendants' CPU from ``/proc``). The
values read back are checked against what was written, and the dict's final size.
"""

from __future__ import annotations

from scenarios import result, scenario
from scenarios.pool import _TreeMeter

OPS = 10_000
WARM = 200


def _with_manager(mod, make, run, check):
    manager = mod.get_context("fork").Manager()
    try:
        proxy = make(manager)
        run(proxy, range(-WARM, 0))
        meter = _TreeMeter()
        with meter:
            wrong = run(proxy, range(OPS))
        ok, detail = check(proxy, wrong)
    finally:
        manager.shutdown()
    return result(OPS, meter, ok, detail)


def _dict_ops(d, keys):
    wrong = 0
    for i in keys:
        d[i] = i
        if d[i] != i:
            wrong += 1
    return wrong


def _queue_ops(q, items):
    wrong = 0
    for i in items:
        q.put(i)
        if q.get() != i:
            wrong += 1
    return wrong


@scenario("manager.dict_set_get", group="managers", unit="set+get", target=2.0)
def dict_set_get(mod, quick):
    """10,000 d[i] = i; d[i] through a SyncManager dict proxy, one client"""

    def check(d, wrong):
        size = len(d)
        return wrong == 0 and size == OPS + WARM, "%d set+get, %d wrong, %d keys" % (
            OPS,
            wrong,
            size,
        )

    return _with_manager(mod, lambda m: m.dict(), _dict_ops, check)


@scenario("manager.queue_put_get", group="managers", unit="put+get", target=2.0)
def queue_put_get(mod, quick):
    """10,000 q.put(i); q.get() through a SyncManager Queue proxy, one client"""

    def check(q, wrong):
        left = q.qsize()
        return wrong == 0 and left == 0, "%d put+get, %d wrong, %d left" % (OPS, wrong, left)

    return _with_manager(mod, lambda m: m.Queue(), _queue_ops, check)
