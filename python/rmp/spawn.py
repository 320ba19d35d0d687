"""``rmp.spawn``: start a fresh interpreter and run the process object in it.

The rules for ``__main__`` (the child imports the parent's main module as ``__mp_main__``; a
script without the ``if __name__ == '__main__'`` guard gets the stdlib's RuntimeError) are the
stdlib's own: preparation data is built and applied by ``multiprocessing.spawn`` so that the
two can never drift apart. What rmp does differently is how the child is started
(``posix_spawn`` from Rust, ``rmp.util.spawnv_passfds``) and how it is watched (pidfds).
"""

import io
import os
import pickle
import sys

# Bound at import: rmp may later stand in for ``multiprocessing`` in sys.modules.
from multiprocessing import context as _stdcontext
from multiprocessing import process as _mpp
from multiprocessing import reduction
from multiprocessing import resource_tracker as _std_resource_tracker
from multiprocessing.spawn import (  # noqa: F401  (shared: one executable setting per process)
    freeze_support,
    get_executable,
    get_preparation_data,
    import_main_path,
    is_forking,
    prepare,
    set_executable,
)

from . import util

__all__ = [
    "_main",
    "freeze_support",
    "set_executable",
    "get_executable",
    "get_preparation_data",
    "get_command_line",
    "import_main_path",
]


def get_command_line(**kwds):
    """The command line that runs :func:`spawn_main` in a new interpreter."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "--multiprocessing-fork"] + [
            "%s=%r" % item for item in kwds.items()
        ]
    prog = "from rmp.spawn import spawn_main; spawn_main(%s)"
    prog %= ", ".join("%s=%r" % item for item in kwds.items())
    opts = util._util._args_from_interpreter_flags()
    return [get_executable(), *opts, "-c", prog]


def pickle_for_child(popen, process_obj):
    """Pickle the preparation data and ``process_obj`` for a new child, with ``popen`` set as
    the stdlib's spawning popen so that objects pickle their descriptors through it
    (``duplicate_for_child``) and refuse to pickle outside of spawning as in the stdlib."""
    fp = io.BytesIO()
    _stdcontext.set_spawning_popen(popen)
    try:
        reduction.dump(get_preparation_data(process_obj._name), fp)
        reduction.dump(process_obj, fp)
    finally:
        _stdcontext.set_spawning_popen(None)
    return fp


def spawn_main(pipe_handle, parent_pid=None, tracker_fd=None, parent_pidfd=None):
    """Entry point of a spawned child: read the process object from ``pipe_handle``, run it."""
    if tracker_fd is not None:
        _std_resource_tracker._resource_tracker._fd = tracker_fd
    exitcode = _main(pipe_handle, parent_pidfd)
    sys.exit(exitcode)


def _main(fd, parent_sentinel):
    with os.fdopen(fd, "rb", closefd=True) as from_parent:
        return _run_prepared(from_parent, parent_sentinel)


def _run_prepared(from_parent, parent_sentinel):
    """Read the preparation data and the process object from ``from_parent``, run it."""
    # The stdlib's flag for "unpickling in a new child": manager proxies rebuilt now must
    # not incref their referent (the parent already did, see managers.RebuildProxy).
    _mpp.current_process()._inheriting = True
    try:
        preparation_data = pickle.load(from_parent)
        prepare(preparation_data)
        self = pickle.load(from_parent)
    finally:
        del _mpp.current_process()._inheriting
    return self._bootstrap(parent_sentinel)
