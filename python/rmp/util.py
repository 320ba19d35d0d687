"""Logging, finalizers and after-fork hooks: the stdlib's own registries, shared.

CPython's ``multiprocessing.util`` holds process-global state that stdlib objects rely on:
the after-fork registry (queues, manager proxies), the finalizer registry and the exit
function that joins children at interpreter exit. rmp does not keep a second copy, which
would split that state in two; this module exposes the stdlib's objects under rmp's name
(see DESIGN.md, "Interop seams"), plus :func:`spawnv_passfds` that rmp implements in Rust.
"""

import os
from multiprocessing import util as _util
from multiprocessing.util import (  # noqa: F401  (re-exported: shared process-global state)
    DEBUG,
    DEFAULT_LOGGING_FORMAT,
    INFO,
    LOGGER_NAME,
    MAXFD,
    NOTSET,
    SUBDEBUG,
    SUBWARNING,
    Finalize,
    ForkAwareLocal,
    ForkAwareThreadLock,
    _close_stdin,
    _exit_function,
    _flush_std_streams,
    _run_after_forkers,
    _run_finalizers,
    abstract_sockets_supported,
    close_all_fds_except,
    close_fds,
    debug,
    get_logger,
    get_temp_dir,
    info,
    is_abstract_socket_namespace,
    is_exiting,
    log_to_stderr,
    register_after_fork,
    sub_debug,
    sub_warning,
)

__all__ = [
    "sub_debug",
    "debug",
    "info",
    "sub_warning",
    "get_logger",
    "log_to_stderr",
    "get_temp_dir",
    "register_after_fork",
    "is_exiting",
    "Finalize",
    "ForkAwareThreadLock",
    "ForkAwareLocal",
    "close_all_fds_except",
    "SUBDEBUG",
    "SUBWARNING",
]


def __getattr__(name: str):
    # The registries are rebound by the stdlib (e.g. in a child); always read them live.
    if name in (
        "_afterfork_registry",
        "_finalizer_registry",
        "_afterfork_counter",
        "_finalizer_counter",
        "_logger",
        "_log_to_stderr",
        "_exiting",
    ):
        return getattr(_util, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def spawnv_passfds(path, args, passfds):
    """Start ``path`` with ``args``, inheriting exactly ``passfds`` (besides stdio); return the pid.

    The stdlib forks and execs through ``_posixsubprocess``; rmp uses ``posix_spawn`` from Rust.
    """
    from . import _core  # here: a spawned child imports this module but never spawns

    return _core.spawn(
        os.fsdecode(path), [os.fsdecode(a) for a in args], sorted(set(int(fd) for fd in passfds))
    )


def _fork_child_atexit():
    """Whether a forked child runs its own ``atexit`` handlers before it exits, as the running
    CPython's ``multiprocessing`` does from 3.13 (gh-83856: its ``popen_fork`` clears the
    inherited handlers, registers ``_exit_function`` and runs them): read from the stdlib
    itself, so that patch releases that have the change (or not) are followed."""
    import multiprocessing.popen_fork as std

    return "atexit" in vars(std)


FORK_CHILD_ATEXIT = _fork_child_atexit()


def _child_atexit_begin():
    """In a forked child, before the process object runs: drop the parent's ``atexit``
    handlers (when the running CPython's children run theirs)."""
    if FORK_CHILD_ATEXIT:
        import atexit

        atexit._clear()
        atexit.register(_exit_function)


def _child_atexit_end():
    """In a forked child, right before ``os._exit``: run the handlers it registered."""
    if FORK_CHILD_ATEXIT:
        import atexit

        atexit._run_exitfuncs()
