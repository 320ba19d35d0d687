"""``rmp.popen_spawn_posix``: start a fresh interpreter with ``posix_spawn`` (from Rust).

The parent pickles the preparation data and the process object (under the stdlib's spawning
state, so stdlib objects such as ``multiprocessing.Queue`` pickle as they would for a stdlib
child), starts ``sys.executable`` with exactly the descriptors the child needs, and writes the
data into a pipe. The child's parent sentinel is an inherited pidfd of the parent.
"""

from __future__ import annotations

import os
from multiprocessing import resource_tracker as _std_resource_tracker

from . import _core, popen_fork, spawn, util

__all__ = ["Popen"]


class _DupFd:
    def __init__(self, fd):
        self.fd = fd

    def detach(self):
        return self.fd


class Popen(popen_fork.Popen):
    """Start ``process_obj`` in a new interpreter."""

    method = "spawn"
    DupFd = _DupFd

    def __init__(self, process_obj):
        self._fds = []
        super().__init__(process_obj)

    def duplicate_for_child(self, fd):
        self._fds.append(fd)
        return fd

    def _launch(self, process_obj):
        tracker_fd = _std_resource_tracker.getfd()
        self._fds.append(tracker_fd)
        fp = spawn.pickle_for_child(self, process_obj)

        parent_pidfd = popen_fork._own_pidfd()
        child_r = parent_w = None
        try:
            child_r, parent_w = os.pipe()
            cmd = spawn.get_command_line(
                tracker_fd=tracker_fd, pipe_handle=child_r, parent_pidfd=parent_pidfd
            )
            self._fds.extend([child_r, parent_pidfd])
            self.pid = util.spawnv_passfds(spawn.get_executable(), cmd, self._fds)
            self._set_handle(_core.ProcessHandle(self.pid))
            with open(parent_w, "wb", closefd=True) as f:
                parent_w = None
                f.write(fp.getbuffer())
        finally:
            for fd in (child_r, parent_w):
                if fd is not None:
                    os.close(fd)
