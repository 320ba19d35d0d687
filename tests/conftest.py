"""Shared fixtures: start methods, parity over ``multiprocessing``/``rmp``, and a leak check.

Every test gets a timeout from pytest-timeout (pyproject.toml sets the default). After every
test, ``_no_leaks`` fails the test if it left behind a child process, a thread or a new
``/dev/shm`` entry, and cleans them up so that one leak does not cascade into later tests.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest
from _helpers import children_of

import rmp

START_METHODS = ["fork", "spawn", "forkserver"]
IMPLEMENTATIONS = {"multiprocessing": multiprocessing, "rmp": rmp}

# How long a test's children and threads get to finish after the test body returned.
_GRACE = 5.0


def pytest_collection_modifyitems(session, config, items):
    """Tests marked ``ray`` run last: once a Ray driver runs in this process, the others
    should not have to fork it."""
    items.sort(key=lambda item: item.get_closest_marker("ray") is not None)


@pytest.fixture(params=START_METHODS)
def start_method(request):
    """Each start method in turn."""
    return request.param


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def mp(request):
    """The stdlib ``multiprocessing`` and ``rmp`` in turn, for parity tests."""
    return IMPLEMENTATIONS[request.param]


@pytest.fixture
def ctx(mp, start_method):
    """A context of each implementation for each start method."""
    return mp.get_context(start_method)


@pytest.fixture
def rctx(start_method):
    """An rmp context for each start method."""
    return rmp.get_context(start_method)


def _children() -> dict[int, str]:
    """pid -> state letter of this process's direct children."""
    return children_of(os.getpid())


def _helpers() -> set[int]:
    """Long-lived helper processes that outlive tests by design (resource tracker, fork
    servers of both implementations)."""
    pids = set()
    from multiprocessing import forkserver as std_fs
    from multiprocessing import resource_tracker

    pid = getattr(resource_tracker._resource_tracker, "_pid", None)
    if pid:
        pids.add(pid)
    pid = getattr(std_fs._forkserver, "_forkserver_pid", None)
    if pid:
        pids.add(pid)
    from rmp import forkserver as rmp_fs

    server = rmp_fs._forkserver._server
    if server is not None:
        pids.add(server.pid)
    return pids


def _helper_thread(t) -> bool:
    """Threads that outlive tests by design: tqdm's monitor (one per process, started with
    the first bar, ``progress=`` with tqdm installed)."""
    return type(t).__name__ == "TMonitor"


def _shm() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:  # pragma: no cover
        return set()


@pytest.fixture(autouse=True)
def _no_leaks():
    before_children = set(_children())
    before_threads = set(threading.enumerate())
    before_shm = _shm()
    yield
    deadline = time.monotonic() + _GRACE
    while True:
        multiprocessing.active_children()  # reaps finished children of both implementations
        leaked = {
            pid: st
            for pid, st in _children().items()
            if pid not in before_children and pid not in _helpers()
        }
        threads = [
            t
            for t in threading.enumerate()
            if t not in before_threads and t.is_alive() and not _helper_thread(t)
        ]
        shm = _shm() - before_shm
        if not (leaked or threads or shm) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    problems = []
    if leaked:
        problems.append(f"child processes left behind: {sorted(leaked.items())}")
        for pid in leaked:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    if threads:
        problems.append(f"threads left behind: {threads}")
    if shm:
        problems.append(f"/dev/shm entries left behind: {sorted(shm)}")
        for name in shm:
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except OSError:
                pass
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)
