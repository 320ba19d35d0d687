"""The scenario registry of the side-by-side benchmark (``benches/run.py``).

What: every scenario (a measured piece of work run against each implementation) and every
floor (the raw-OS or raw-interpreter lower bound that a scenario's ratio is read against)
registers itself here with a decorator; :class:`Meter` measures wall and CPU time, and
:func:`result` builds the dict a scenario returns.

Why: later issues add scenarios by dropping a module into this package and decorating a
function; the runner and the worker find it by name, with no list to keep in sync.

A scenario function is ``fn(impl_module, quick) -> dict(ops, wall, cpu, ok, detail)``: it
does its work ``ops`` times, measures only that part, and verifies the outcome itself (counts,
exit codes, sums, order). Floors get ``None`` for the module. This package is also imported by
spawned and forkserver children (they import their targets from scenario modules by name), so
it imports nothing heavy.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import pkgutil
import resource
import time

__all__ = [
    "SCENARIOS",
    "Meter",
    "Scenario",
    "floor",
    "get",
    "load_all",
    "matches",
    "result",
    "scenario",
]

BASELINE = "stdlib"
TARGET_IMPL = "rmp"

SCENARIOS: dict = {}  # name -> Scenario, in registration order


class Scenario:
    """One registered scenario or floor (``kind`` is ``"scenario"`` or ``"floor"``)."""

    __slots__ = (
        "name",
        "func",
        "kind",
        "group",
        "unit",
        "impls",
        "floors",
        "target",
        "timeout",
        "label",
        "doc",
        "bytes_per_op",
        "requires",
        "floor_within",
    )

    def __init__(
        self,
        name,
        func,
        *,
        kind,
        group,
        unit,
        impls=None,
        floors=(),
        target=None,
        timeout=120.0,
        label=None,
        doc=None,
        bytes_per_op=None,
        requires=(),
        floor_within=None,
    ):
        self.name = name
        self.func = func
        self.kind = kind
        self.group = group
        self.unit = unit
        self.impls = tuple(impls) if impls is not None else None
        self.floors = tuple(floors)
        self.target = target
        self.timeout = float(timeout)
        self.label = label or name
        self.doc = (doc or func.__doc__ or "").strip().split("\n")[0]
        self.bytes_per_op = bytes_per_op
        self.requires = tuple(requires)
        self.floor_within = floor_within

    def missing(self) -> list:
        """The modules in ``requires`` that cannot be imported here (then it is skipped)."""
        out = []
        for mod in self.requires:
            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                out.append(mod)
        return out

    def applies_to(self, impl) -> bool:
        """Whether implementation ``impl`` (an ``impls.Impl``) runs this scenario."""
        if self.kind == "floor":
            return False
        if self.impls is not None and impl.name not in self.impls:
            return False
        return impl.groups is None or self.group in impl.groups

    def target_text(self) -> str:
        return "" if self.target is None else ">=%gx" % self.target

    def __repr__(self) -> str:
        return "Scenario(%r, kind=%r)" % (self.name, self.kind)


def _register(sc: Scenario) -> None:
    if sc.name in SCENARIOS:
        raise ValueError("scenario %r registered twice" % sc.name)
    SCENARIOS[sc.name] = sc


def scenario(
    name,
    *,
    group,
    unit,
    floors=(),
    target=None,
    impls=None,
    timeout=120.0,
    doc=None,
    requires=(),
    floor_within=None,
):
    """Register ``fn(impl_module, quick) -> dict`` as scenario ``name``.

    ``group`` lets implementations opt in (an implementation with ``groups=("queue",)`` runs
    only queue scenarios); ``impls`` restricts the scenario to those implementation names;
    ``floors`` names the floors that bound it; ``target`` is the wall-time ratio to the stdlib
    that rmp aims at (``1.3`` means at least 1.3x as fast); ``unit`` names one operation;
    ``timeout`` is the wall-clock limit of one worker run in seconds; ``requires`` names
    modules without which it is skipped; ``floor_within`` is a second target: rmp's median
    at most that many times the median of the scenario's first floor, in the same run.
    """

    def deco(fn):
        _register(
            Scenario(
                name,
                fn,
                kind="scenario",
                group=group,
                unit=unit,
                impls=impls,
                floors=floors,
                target=target,
                timeout=timeout,
                doc=doc,
                requires=requires,
                floor_within=floor_within,
            )
        )
        return fn

    return deco


def floor(name, *, unit, label, timeout=120.0, doc=None, bytes_per_op=None, requires=()):
    """Register ``fn(None, quick) -> dict`` as floor ``name`` (run with no implementation).

    ``label`` is the short text shown beside the scenarios it bounds; ``bytes_per_op`` makes
    the report show a throughput as well; ``requires`` names modules without which it is
    skipped.
    """

    def deco(fn):
        _register(
            Scenario(
                name,
                fn,
                kind="floor",
                group="floor",
                unit=unit,
                timeout=timeout,
                label=label,
                doc=doc,
                bytes_per_op=bytes_per_op,
                requires=requires,
            )
        )
        return fn

    return deco


_loaded = False


def load_all() -> dict:
    """Import every public module of this package (each registers its scenarios)."""
    global _loaded
    if not _loaded:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module("%s.%s" % (__name__, info.name))
        _loaded = True
    return SCENARIOS


def get(name: str) -> Scenario:
    load_all()
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError("unknown scenario %r (see run.py --list)" % name) from None


def matches(name: str, pattern: str) -> bool:
    """``--scenario`` filter: a glob when ``pattern`` has ``*?[``, else a substring."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Meter:
    """Wall time (``perf_counter``) and CPU time (user+sys of this process and of its reaped
    children, from ``getrusage``) of the ``with`` blocks it wraps; several blocks add up."""

    __slots__ = ("wall", "cpu", "_t0", "_c0")

    def __init__(self):
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self):
        self._c0 = _cpu_seconds()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._t0
        self.cpu += _cpu_seconds() - self._c0
        return False


def result(ops: int, meter: Meter, ok: bool, detail: str = "", **extra) -> dict:
    """The dict a scenario returns: ``ok`` is its own verification of the outcome."""
    out = {
        "ops": int(ops),
        "wall": meter.wall,
        "cpu": meter.cpu,
        "ok": bool(ok),
        "detail": detail,
    }
    if extra:
        out["extra"] = extra
    return out
