"""Adapter for the peer faster-fifo: its ``Queue`` behind the ``multiprocessing`` names.

What: ``Queue(maxsize)`` and ``get_context(method).Queue(maxsize)`` return a
``faster_fifo.Queue`` (a shared circular buffer sized in bytes, not items); every other name is
the stdlib's. Registered with ``groups=("queue",)``: it runs only in queue scenarios.

Why: the queue scenarios compare rmp's Queue with the fastest known peer, through the same
scenario code. Imported only when faster-fifo is installed; not exercised before the queue
scenarios exist.
"""

from __future__ import annotations

import multiprocessing

import faster_fifo

BUFFER_BYTES = 8 << 20  # faster-fifo bounds the buffer in bytes; maxsize (items) is ignored


def Queue(maxsize=0):
    return faster_fifo.Queue(BUFFER_BYTES)


class _Context:
    def __init__(self, ctx):
        self._ctx = ctx

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def Queue(self, maxsize=0):
        return Queue(maxsize)


def get_context(method=None):
    return _Context(multiprocessing.get_context(method))


def __getattr__(name):
    return getattr(multiprocessing, name)
