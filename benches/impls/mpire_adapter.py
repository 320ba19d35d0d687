"""Adapter for the peer mpire: its ``WorkerPool`` behind ``multiprocessing.Pool``'s names.

What: ``Pool(processes)`` (and ``get_context(method).Pool``) returns an object with the Pool
methods the pool scenarios use (``map``, ``imap``, ``imap_unordered``, ``close``, ``join``,
``terminate``, ``with``). Every argument is passed to the function as one argument: mpire
unpacks tuples and dicts, so each is wrapped in a 1-tuple. Registered with
``groups=("pool",)``: it runs only in pool scenarios.

Why: the pool scenarios compare rmp's Pool with a popular peer, through the same scenario code.
Imported only when mpire is installed; not exercised before the pool scenarios exist.
"""

from __future__ import annotations

import multiprocessing

from mpire import WorkerPool


def _one_arg(iterable):
    return [(x,) for x in iterable]


class _Pool:
    def __init__(self, processes=None, start_method=None):
        self._pool = WorkerPool(
            n_jobs=processes or multiprocessing.cpu_count(),
            start_method=start_method or multiprocessing.get_start_method(),
        )

    def map(self, func, iterable, chunksize=None):
        return self._pool.map(func, _one_arg(iterable), chunk_size=chunksize)

    def imap(self, func, iterable, chunksize=1):
        return self._pool.imap(func, _one_arg(iterable), chunk_size=chunksize)

    def imap_unordered(self, func, iterable, chunksize=1):
        return self._pool.imap_unordered(func, _one_arg(iterable), chunk_size=chunksize)

    def close(self):
        pass

    def join(self):
        self._pool.stop_and_join()

    def terminate(self):
        self._pool.terminate()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.terminate()
        return False


def Pool(processes=None):
    return _Pool(processes)


class _Context:
    def __init__(self, ctx):
        self._ctx = ctx

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def Pool(self, processes=None):
        return _Pool(processes, self._ctx.get_start_method())


def get_context(method=None):
    return _Context(multiprocessing.get_context(method))


def __getattr__(name):
    return getattr(multiprocessing, name)
