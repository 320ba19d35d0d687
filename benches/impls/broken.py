"""Test-only implementation ``broken``: the stdlib, except that every child's exit code is off
by one.

What: ``get_context(method).Process(target=f)`` starts a real stdlib process that runs ``f``
and then exits with one more than the code ``f`` asked for.

Why: a scenario must verify its result and the runner must print FAILED rather than a number
when it is wrong; ``tests/test_bench.py`` runs ``--impl broken`` to check that. It is never in
the default set. Scenario groups that do not start processes themselves will need their own
sabotage here (e.g. a queue that drops an item) when they are added.
"""

from __future__ import annotations

import functools
import multiprocessing
import sys


def _nothing() -> None:
    pass


def _off_by_one(target, *args, **kwargs) -> None:
    code = 0
    try:
        target(*args, **kwargs)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.exit(code + 1)


class _Context:
    """A stdlib context whose ``Process`` wraps the target in :func:`_off_by_one`."""

    def __init__(self, ctx):
        self._ctx = ctx

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def Process(self, group=None, target=None, name=None, args=(), kwargs=None, *, daemon=None):
        wrapped = functools.partial(_off_by_one, target or _nothing)
        return self._ctx.Process(group, wrapped, name, args, kwargs or {}, daemon=daemon)


def get_context(method=None):
    return _Context(multiprocessing.get_context(method))


def Process(*args, **kwargs):
    return get_context().Process(*args, **kwargs)


def __getattr__(name):
    return getattr(multiprocessing, name)
