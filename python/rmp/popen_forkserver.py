"""``rmp.popen_forkserver``: ask the fork server for a child, watch it through a pidfd."""

from __future__ import annotations

import os
import threading
from multiprocessing import resource_tracker as _std_resource_tracker

from . import _core, forkserver, popen_fork, spawn, util

__all__ = ["Popen"]


class _DupFd:
    def __init__(self, ind):
        self.ind = ind

    def detach(self):
        return forkserver.get_inherited_fds()[self.ind]


def _release(handle, conn):
    handle.close()
    conn.close()


class Popen(popen_fork.Popen):
    """Start ``process_obj`` in a child forked by the fork server."""

    method = "forkserver"
    DupFd = _DupFd

    def __init__(self, process_obj):
        self._fds = []
        self._collect_lock = threading.Lock()
        self._conn = None
        super().__init__(process_obj)

    def duplicate_for_child(self, fd):
        self._fds.append(fd)
        return len(self._fds) - 1

    def _launch(self, process_obj):
        buf = spawn.pickle_for_child(self, process_obj)

        fds = [_std_resource_tracker.getfd(), popen_fork._own_pidfd(), *self._fds]
        self._conn, self.pid, pidfd = forkserver.connect_to_new_process(fds, buf.getbuffer())
        self._handle = _core.ProcessHandle.adopt(self.pid, pidfd)
        self.sentinel = self._handle.fileno()
        self.finalizer = util.Finalize(self, _release, (self._handle, self._conn))

    def _collect(self):
        # The child has exited; the server sends its status once it has reaped it. Two
        # threads may get here at once (``join`` in one, ``active_children``'s clean-up in
        # another): the status is read exactly once, under the lock, and the other waits
        # for it (reading again would see the end of the stream and report 255).
        with self._collect_lock:
            if self.returncode is None and self._conn is not None:
                conn = self._conn
                conn.setblocking(True)
                try:
                    rc = forkserver.read_status(conn)
                except OSError:
                    rc = None
                self.returncode = 255 if rc is None else rc
        return self.returncode

    def poll(self, flag=os.WNOHANG):
        if self.returncode is None:
            if flag & os.WNOHANG:
                if not self._handle.has_exited():
                    return None
            else:
                self._handle.wait_exited(None)
            self._collect()
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            if not self._handle.wait_exited(timeout):
                return None
            self._collect()
        return self.returncode
