"""rmp's public surface is a superset of the running CPython's ``multiprocessing``.

Every public name of ``multiprocessing`` and of its submodules exists in rmp with a compatible
signature, unless it is listed in ``EXPECTED_MISSING`` (names that later work will add; the
list must only shrink). Exceptions are the stdlib's own objects. The primitives rmp exists to
accelerate are rmp's own, backed by ``rmp._core``, never re-exports of the stdlib's.
"""

from __future__ import annotations

import importlib
import inspect
import multiprocessing
import queue
import sys
import threading

import pytest

import rmp
import rmp._core

# Names not implemented yet, as "name" (top level) or "submodule" / "submodule.name".
# Each entry must really be missing (a test checks), so the list shrinks as work lands.
# Empty: every public name of the stdlib's multiprocessing exists in rmp.
EXPECTED_MISSING: set[str] = set()

SUBMODULES = [
    "connection",
    "context",
    "dummy",
    "forkserver",
    "heap",
    "managers",
    "pool",
    "popen_fork",
    "popen_forkserver",
    "popen_spawn_posix",
    "process",
    "queues",
    "reduction",
    "resource_sharer",
    "resource_tracker",
    "shared_memory",
    "sharedctypes",
    "spawn",
    "synchronize",
    "util",
]

# The primitives rmp accelerates: when present they must be rmp's own objects.
OWN_PRIMITIVES = [
    "Process",
    "Pipe",
    "Queue",
    "SimpleQueue",
    "JoinableQueue",
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Barrier",
    "Value",
    "Array",
    "RawValue",
    "RawArray",
    "Pool",
]


def _public_names(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in dir(module) if not n.startswith("_")]
    return list(names)


def _missing(qualname: str) -> bool:
    return qualname in EXPECTED_MISSING or qualname.split(".")[0] in EXPECTED_MISSING


def _check_signature(std_obj, rmp_obj, where: str) -> None:
    # Classes compare by their call signature (``__init__`` or ``__new__``, whichever defines
    # it: rmp's lock classes construct in ``__new__`` because they subclass a Rust type).
    try:
        std_sig = inspect.signature(std_obj)
    except (TypeError, ValueError):
        return  # builtins without a signature: nothing to compare
    rmp_sig = inspect.signature(rmp_obj)
    rmp_params = rmp_sig.parameters
    for name, p in std_sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            assert any(q.kind == p.kind for q in rmp_params.values()), f"{where}: lacks *{name}"
            continue
        assert name in rmp_params, f"{where}: parameter {name!r} missing in {rmp_sig}"
        q = rmp_params[name]
        assert q.kind == p.kind, f"{where}: {name!r} is {q.kind}, stdlib has {p.kind}"
        assert q.default == p.default, f"{where}: {name!r} default {q.default!r} != {p.default!r}"
    for name, q in rmp_params.items():
        if name not in std_sig.parameters and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD):
            assert q.default is not q.empty, f"{where}: extra parameter {name!r} needs a default"


@pytest.mark.parametrize("name", sorted(multiprocessing.__all__))
def test_top_level_name(name):
    if _missing(name):
        assert not hasattr(rmp, name), f"{name} exists now: remove it from EXPECTED_MISSING"
        return
    assert name in rmp.__all__
    std_obj, rmp_obj = getattr(multiprocessing, name), getattr(rmp, name)
    if callable(std_obj) and not inspect.isclass(std_obj):
        _check_signature(std_obj, rmp_obj, name)


@pytest.mark.parametrize("sub", SUBMODULES)
def test_submodule(sub):
    std_mod = importlib.import_module(f"multiprocessing.{sub}")
    if _missing(sub):
        with pytest.raises(ImportError):
            importlib.import_module(f"rmp.{sub}")
        return
    rmp_mod = importlib.import_module(f"rmp.{sub}")
    for name in _public_names(std_mod):
        if _missing(f"{sub}.{name}"):
            assert not hasattr(rmp_mod, name)
            continue
        assert hasattr(rmp_mod, name), f"rmp.{sub} lacks {name}"
        std_obj, rmp_obj = getattr(std_mod, name), getattr(rmp_mod, name)
        if callable(std_obj):
            _check_signature(std_obj, rmp_obj, f"{sub}.{name}")


def test_expected_missing_entries_are_real_names():
    known = set(multiprocessing.__all__) | set(SUBMODULES)
    for entry in EXPECTED_MISSING:
        head = entry.split(".")[0]
        assert head in known, f"unknown EXPECTED_MISSING entry {entry!r}"


def test_exceptions_are_the_stdlibs_own():
    for name in ("ProcessError", "BufferTooShort", "TimeoutError", "AuthenticationError"):
        assert getattr(rmp, name) is getattr(multiprocessing, name)
    for method in ("fork", "spawn", "forkserver"):
        assert rmp.get_context(method).TimeoutError is multiprocessing.TimeoutError
    # Names later issues rely on exist in the running Python as the stdlib's own classes.
    assert queue.Empty is not None and threading.BrokenBarrierError is not None


@pytest.mark.parametrize("name", [n for n in OWN_PRIMITIVES if not _missing(n)])
def test_primitives_are_rmps_own(name):
    obj = getattr(rmp, name)
    std = getattr(multiprocessing, name)
    assert obj is not std
    module = getattr(obj, "__module__", "") or ""
    assert module.startswith("rmp"), f"{name} comes from {module}"


def test_process_is_backed_by_core():
    assert not issubclass(rmp.Process, multiprocessing.process.BaseProcess)
    p = rmp.get_context("fork").Process(target=int)
    p.start()
    try:
        assert isinstance(p._popen._handle, rmp._core.ProcessHandle)
        assert p.sentinel == p._popen._handle.fileno()
    finally:
        p.join(10)
    assert p.exitcode == 0


def test_connection_is_backed_by_core():
    import multiprocessing.connection

    import rmp.connection

    a, b = rmp.Pipe()
    try:
        assert type(a) is rmp.connection.Connection
        assert not issubclass(rmp.connection.Connection, multiprocessing.connection.Connection)
        assert rmp.connection._core is rmp._core
        for name in ("send_message", "recv_message", "wait_any"):
            assert callable(getattr(rmp._core, name))
    finally:
        a.close()
        b.close()


def test_all_start_methods_and_default():
    methods = rmp.get_all_start_methods()
    assert set(methods) == {"fork", "spawn", "forkserver"}
    expected_default = "forkserver" if sys.version_info >= (3, 14) else "fork"
    assert methods[0] == expected_default
    assert rmp.context._default_context._default_context._name == expected_default


def test_core_is_private():
    for name in rmp.__all__:
        assert "_core" not in name
    assert all(not n.startswith("_") for n in rmp.__all__)
