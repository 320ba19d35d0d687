"""Adapter for the peer faster-fifo: its ``Queue`` behind the ``multiprocessing`` names.

What: ``Queue(maxsize)`` and ``get_context(method).Queue(maxsize)`` return a
``faster_fifo.Queue`` (a shared circular buffer sized in bytes) with the stdlib's blocking
defaults put back, and rmp's batch signatures: ``put_many(items, block=True, timeout=None)``,
``get_many(max_items, block=True, timeout=None)``. faster-fifo has no ``SimpleQueue`` or
``JoinableQueue``: asking for one raises ``AttributeError`` rather than quietly handing out the
stdlib's. Every other name is the stdlib's (``Process``, ``Lock``...). Registered with
``groups=("queue",)``: it runs only in queue scenarios.

Why: the queue scenarios compare rmp's Queue with the fastest known peer through the same
scenario code, written against the stdlib's API. faster-fifo changed two stdlib defaults that
this code relies on: ``timeout`` defaults to 10 s (``get()`` raises ``Empty`` after 10 s
instead of waiting) and ``None`` is refused (``TypeError``); here ``None`` waits forever (a
year, in practice), at the cost of one Python call (the wrapper's) per operation, about 0.1 us.
Its buffer must hold a whole message (a larger one waits for space forever), so it is sized
for two of the largest message of the scenarios (64 MiB, pickled), allocated (and zeroed)
once per queue, outside the measured part; its size makes no measurable difference to the
small-message scenarios.
"""

from __future__ import annotations

import multiprocessing

import faster_fifo

# Two 64 MiB messages (plus pickling overhead and faster-fifo's 4-byte length headers) fit,
# so the producer of the 64 MiB scenarios can write the next message while one is read.
BUFFER_BYTES = 160 << 20
FOREVER = 365 * 24 * 3600.0  # faster-fifo's timeouts are floats in seconds; None is refused

_NOT_HERE = ("SimpleQueue", "JoinableQueue")


class _Queue:
    """A ``faster_fifo.Queue`` whose ``timeout=None`` waits forever, as the stdlib's does.

    A wrapper, not a subclass: faster-fifo's own ``put``/``get`` call ``self.put_many`` and
    ``self.get_many`` with its signatures, which an override with rmp's would break."""

    __slots__ = ("_q",)

    def __init__(self, maxsize=0):
        if maxsize > 0:
            self._q = faster_fifo.Queue(BUFFER_BYTES, maxsize=maxsize)
        else:
            self._q = faster_fifo.Queue(BUFFER_BYTES)

    def put(self, obj, block=True, timeout=None):
        self._q.put(obj, block, FOREVER if timeout is None else timeout)

    def get(self, block=True, timeout=None):
        return self._q.get(block, FOREVER if timeout is None else timeout)

    def put_many(self, items, block=True, timeout=None):
        self._q.put_many(items, block, FOREVER if timeout is None else timeout)

    def get_many(self, max_items, block=True, timeout=None):
        return self._q.get_many(block, FOREVER if timeout is None else timeout, max_items)

    def __getattr__(self, name):  # qsize, empty, full, close, put_nowait, get_nowait...
        if name == "_q":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._q, name)


def Queue(maxsize=0):
    return _Queue(maxsize)


class _Context:
    def __init__(self, ctx):
        self._ctx = ctx

    def __getattr__(self, name):
        if name in _NOT_HERE:
            raise AttributeError("faster-fifo has no %s" % name)
        return getattr(self._ctx, name)

    def Queue(self, maxsize=0):
        return Queue(maxsize)


def get_context(method=None):
    return _Context(multiprocessing.get_context(method))


def __getattr__(name):
    if name in _NOT_HERE:
        raise AttributeError("faster-fifo has no %s" % name)
    return getattr(multiprocessing, name)
