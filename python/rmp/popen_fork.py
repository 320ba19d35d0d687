"""``rmp.popen_fork``: start a child with ``os.fork()``, watch it through a pidfd.

Forking goes through ``os.fork()`` so that the interpreter's fork hooks and every
``os.register_at_fork`` callback run (a bare fork from Rust would skip them). The sentinel is a
pidfd held by ``rmp._core.ProcessHandle``: readable exactly when the child has exited, and
``join()`` waits on it detached from the interpreter, in slices that let Ctrl-C through.
"""

from __future__ import annotations

import os
import signal

from . import _core, util

__all__ = ["Popen"]

_self_pidfd: dict[int, int] = {}


def _own_pidfd() -> int:
    """A pidfd of this process, inherited by children as their parent sentinel.

    Opened once per process (keyed by pid: after a fork the child opens its own).
    """
    pid = os.getpid()
    fd = _self_pidfd.get(pid)
    if fd is None:
        fd = os.pidfd_open(pid)  # Python 3.9+ on Linux
        _self_pidfd.clear()
        _self_pidfd[pid] = fd
    return fd


class Popen:
    """Start ``process_obj`` in a forked child."""

    method = "fork"

    def __init__(self, process_obj):
        util._flush_std_streams()
        self.returncode = None
        self.finalizer = None
        self._handle = None
        self._launch(process_obj)

    def duplicate_for_child(self, fd):
        return fd

    def poll(self, flag=os.WNOHANG):
        if self.returncode is None:
            try:
                if flag & os.WNOHANG:
                    rc = self._handle.poll()
                else:
                    rc = self._handle.wait(None)
            except ChildProcessError:
                # Reaped by someone else (os.waitpid(-1) elsewhere): the status is lost.
                # The stdlib answers None here too.
                return None
            if rc is not None:
                self.returncode = rc
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            try:
                rc = self._handle.wait(timeout)
            except ChildProcessError:
                return None  # reaped elsewhere, as in poll()
            if rc is not None:
                self.returncode = rc
        return self.returncode

    def _send_signal(self, sig):
        if self.returncode is None:
            try:
                self._handle.send_signal(sig)
            except ProcessLookupError:
                pass
            except OSError:
                if self.wait(timeout=0.1) is None:
                    raise

    def interrupt(self):
        self._send_signal(signal.SIGINT)

    def terminate(self):
        self._send_signal(signal.SIGTERM)

    def kill(self):
        self._send_signal(signal.SIGKILL)

    def _launch(self, process_obj):
        code = 1
        parent_sentinel = _own_pidfd()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                util._child_atexit_begin()
                code = process_obj._bootstrap(parent_sentinel=parent_sentinel)
            finally:
                try:
                    util._child_atexit_end()
                finally:
                    os._exit(code)
        else:
            self._set_handle(_core.ProcessHandle(self.pid))

    def _set_handle(self, handle):
        self._handle = handle
        self.sentinel = handle.fileno()
        self.finalizer = util.Finalize(self, handle.close)

    def close(self):
        if self.finalizer is not None:
            self.finalizer()
