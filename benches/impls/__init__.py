"""Implementations the benchmark compares: a name, a module to import, an availability check.

What: each :class:`Impl` names the importable module that decides whether it is installed
(``module``) and the module that scenarios receive (``adapter``, by default the same): an
object with the ``multiprocessing`` names the scenarios use (``get_context``, ``Process``,
later ``Queue``, ``Pool``...). Peers that replace only part of ``multiprocessing`` (faster-fifo,
mpire) get a small adapter module here and a ``groups`` restriction, so they run only in the
scenario groups they cover.

Why: rmp is measured against the stdlib and against peers side by side, in fresh
interpreters; adding a peer is one :func:`register` call (plus an adapter when its API is not
``multiprocessing``'s). ``broken`` and ``hang`` are deliberately faulty, test-only adapters that
check the runner reports FAILED and TIMEOUT; they run only when named with ``--impl``.
"""

from __future__ import annotations

import importlib
import importlib.util

__all__ = ["BASELINE", "IMPLS", "Impl", "get", "register"]

BASELINE = "stdlib"

IMPLS: dict = {}  # name -> Impl, in registration order


class Impl:
    """One implementation: ``name`` on the command line and in the report."""

    __slots__ = ("name", "module", "adapter", "groups", "default", "doc")

    def __init__(self, name, module, *, adapter=None, groups=None, default=True, doc=""):
        self.name = name
        self.module = module
        self.adapter = adapter or module
        self.groups = tuple(groups) if groups is not None else None
        self.default = default
        self.doc = doc

    def available(self) -> bool:
        """Whether ``module`` can be imported here (checked without importing it)."""
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False

    def load(self):
        """Import and return the module the scenarios are given."""
        importlib.import_module(self.module)
        return importlib.import_module(self.adapter)

    def __repr__(self) -> str:
        return "Impl(%r)" % self.name


def register(name, module, **kwargs) -> Impl:
    if name in IMPLS:
        raise ValueError("implementation %r registered twice" % name)
    impl = IMPLS[name] = Impl(name, module, **kwargs)
    return impl


def get(name: str) -> Impl:
    try:
        return IMPLS[name]
    except KeyError:
        raise KeyError("unknown implementation %r (known: %s)" % (name, ", ".join(IMPLS))) from None


register("stdlib", "multiprocessing", doc="CPython's multiprocessing: the baseline")
register("rmp", "rmp", doc="this project")
register(
    "faster-fifo",
    "faster_fifo",
    adapter="impls.faster_fifo_adapter",
    groups=("queue",),
    doc="faster-fifo's Queue (queue scenarios only)",
)
register(
    "mpire",
    "mpire",
    adapter="impls.mpire_adapter",
    groups=("pool",),
    doc="mpire's WorkerPool as a Pool (pool scenarios only)",
)
register(
    "rmp-ray",
    "ray",
    adapter="impls.ray_adapter",
    groups=("cluster",),
    doc="rmp's Pool on a local Ray instance (cluster scenarios only; the 'ray' extra)",
)
register(
    "broken",
    "impls.broken",
    default=False,
    doc="test only: the stdlib with every child's exit code off by one (must show FAILED)",
)
register(
    "hang",
    "impls.hang",
    default=False,
    doc="test only: sleeps forever with a child of its own (must show TIMEOUT)",
)
