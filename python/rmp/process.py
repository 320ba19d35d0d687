"""``rmp.process``: the Process class, mirroring CPython's ``multiprocessing.process``.

The process registry is the stdlib's (``multiprocessing.process._current_process``,
``_children``, ``_process_counter``...), shared rather than copied, so that
``multiprocessing.current_process()`` and ``rmp.current_process()`` agree in every process and
the stdlib's exit handler joins rmp's children too (DESIGN.md, "Interop seams"). The process
objects and their life cycle are rmp's; the Popen classes start and watch children through
``rmp._core`` (pidfds, posix_spawn).

A spawned child imports this module before anything else of rmp's, so it stays light: no
``__future__`` import, and ``rmp._core`` is imported where it is used (a child that never
needs it never loads the extension).
"""

import itertools
import os
import signal
import sys
import threading
from multiprocessing import process as _mpp
from multiprocessing.process import AuthenticationString  # shared: pickling rules for keys

__all__ = ["BaseProcess", "current_process", "active_children", "parent_process"]

_HAS_INTERRUPT = sys.version_info >= (3, 14)


def __getattr__(name):
    # The registry is the stdlib's, rebound in children: read it live, never copy it.
    if name in (
        "_current_process",
        "_parent_process",
        "_children",
        "_process_counter",
        "_dangling",
    ):
        return getattr(_mpp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def current_process():
    """Return the process object of the current process (the same as the stdlib's)."""
    return _mpp._current_process


def active_children():
    """Return the live children of the current process (rmp's and the stdlib's)."""
    _cleanup()
    return list(_mpp._children)


def parent_process():
    """Return the process object of the parent, or None in the main process."""
    return _mpp._parent_process


def _cleanup():
    # Forget children that have ended (reaping them).
    for p in list(_mpp._children):
        popen = p._popen
        if popen is not None and popen.poll() is not None:
            _mpp._children.discard(p)


class BaseProcess:
    """A process running ``target(*args, **kwargs)``; the same API as ``multiprocessing``'s."""

    _start_method = None  # the context's start method name, set by each context's class

    def _Popen(self, process_obj):  # pragma: no cover - overridden by every concrete class
        raise TypeError(f"{type(self).__name__} has no start method; use a context's Process")

    @staticmethod
    def _after_fork():
        from . import util

        util._finalizer_registry.clear()
        util._run_after_forkers()

    def __init__(self, group=None, target=None, name=None, args=(), kwargs={}, *, daemon=None):  # noqa: B006 (the stdlib signature)
        assert group is None, "group argument must be None for now"
        count = next(_mpp._process_counter)
        parent = _mpp._current_process
        self._identity = parent._identity + (count,)
        self._config = parent._config.copy()
        self._parent_pid = os.getpid()
        self._parent_name = parent.name
        self._popen = None
        self._closed = False
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs)
        self._name = name or type(self).__name__ + "-" + ":".join(str(i) for i in self._identity)
        if daemon is not None:
            self.daemon = daemon
        _mpp._dangling.add(self)

    def _check_closed(self):
        if self._closed:
            raise ValueError("process object is closed")

    def run(self):
        """The child's work; override in a subclass, or pass ``target``."""
        if self._target:
            self._target(*self._args, **self._kwargs)

    def start(self):
        """Start the child process."""
        self._check_closed()
        assert self._popen is None, "cannot start a process twice"
        assert self._parent_pid == os.getpid(), (
            "can only start a process object created by current process"
        )
        assert not _mpp._current_process._config.get("daemon"), (
            "daemonic processes are not allowed to have children"
        )
        _cleanup()
        self._popen = self._Popen(self)
        self._sentinel = self._popen.sentinel
        # Drop the references the child no longer needs here: a target that refers back to
        # this object would otherwise keep a cycle alive (bpo-30775).
        del self._target, self._args, self._kwargs
        _mpp._children.add(self)

    def terminate(self):
        """Send SIGTERM to the child."""
        self._check_closed()
        self._popen.terminate()

    def kill(self):
        """Send SIGKILL to the child."""
        self._check_closed()
        self._popen.kill()

    if _HAS_INTERRUPT:

        def interrupt(self):
            """Send SIGINT to the child (Python 3.14+)."""
            self._check_closed()
            self._popen.interrupt()

    def join(self, timeout=None):
        """Wait until the child ends, at most ``timeout`` seconds."""
        self._check_closed()
        assert self._parent_pid == os.getpid(), "can only join a child process"
        assert self._popen is not None, "can only join a started process"
        res = self._popen.wait(timeout)
        if res is not None:
            _mpp._children.discard(self)

    def is_alive(self):
        """Whether the child is running."""
        self._check_closed()
        if self is _mpp._current_process:
            return True
        assert self._parent_pid == os.getpid(), "can only test a child process"
        if self._popen is None:
            return False
        if self._popen.poll() is None:
            return True
        _mpp._children.discard(self)
        return False

    def close(self):
        """Release the resources of an ended process; ValueError while it still runs."""
        if self._popen is not None:
            if self._popen.poll() is None:
                raise ValueError(
                    "Cannot close a process while it is still running. "
                    "You should first call join() or terminate()."
                )
            self._popen.close()
            self._popen = None
            del self._sentinel
            _mpp._children.discard(self)
        self._closed = True

    @property
    def name(self):
        return self._name

    @name.setter
    def name(self, name):
        assert isinstance(name, str), "name must be a string"
        self._name = name

    @property
    def daemon(self):
        """Whether the process is daemonic."""
        return self._config.get("daemon", False)

    @daemon.setter
    def daemon(self, daemonic):
        assert self._popen is None, "process has already started"
        self._config["daemon"] = daemonic

    @property
    def authkey(self):
        return self._config["authkey"]

    @authkey.setter
    def authkey(self, authkey):
        self._config["authkey"] = AuthenticationString(authkey)

    @property
    def exitcode(self):
        """The exit code, ``-N`` if killed by signal N, or None while running."""
        self._check_closed()
        if self._popen is None:
            return None
        return self._popen.poll()

    @property
    def ident(self):
        """The pid, or None before start."""
        self._check_closed()
        if self is _mpp._current_process:
            return os.getpid()
        return self._popen and self._popen.pid

    pid = ident

    @property
    def sentinel(self):
        """A file descriptor that becomes readable when the process ends (a pidfd)."""
        self._check_closed()
        try:
            return self._sentinel
        except AttributeError:
            raise ValueError("process not started") from None

    def __repr__(self):
        exitcode = None
        if self is _mpp._current_process:
            status = "started"
        elif self._closed:
            status = "closed"
        elif self._parent_pid != os.getpid():
            status = "unknown"
        elif self._popen is None:
            status = "initial"
        else:
            exitcode = self._popen.poll()
            status = "stopped" if exitcode is not None else "started"
        info = [type(self).__name__, "name=%r" % self._name]
        if self._popen is not None:
            info.append("pid=%s" % self._popen.pid)
        info.append("parent=%s" % self._parent_pid)
        info.append(status)
        if exitcode is not None:
            exitcode = _exitcode_to_name.get(exitcode, exitcode)
            info.append("exitcode=%s" % exitcode)
        if self.daemon:
            info.append("daemon")
        return "<%s>" % " ".join(info)

    def _bootstrap(self, parent_sentinel=None):
        """Run in the child: install this object as the current process, run, exit code."""
        from . import context, util

        try:
            if self._start_method is not None:
                context._force_start_method(self._start_method)
            _mpp._process_counter = itertools.count(1)
            _mpp._children = set()
            util._close_stdin()
            old_process = _mpp._current_process
            _mpp._current_process = self
            _mpp._parent_process = _ParentProcess(
                self._parent_name, self._parent_pid, parent_sentinel
            )
            if self.daemon and parent_sentinel is not None:
                # Daemonic children die with their parent even when it is SIGKILLed and
                # cannot terminate them itself (the stdlib leaves them orphaned then).
                from . import _core

                _core.die_with_parent(parent_sentinel)
            if threading._HAVE_THREAD_NATIVE_ID:
                threading.main_thread()._set_native_id()
            try:
                self._after_fork()
            finally:
                # Finalize the old process object only after the after-fork hooks ran.
                del old_process
            util.info("child process calling self.run()")
            try:
                self.run()
                exitcode = 0
            finally:
                util._exit_function()
        except SystemExit as e:
            if e.code is None:
                exitcode = 0
            elif isinstance(e.code, int):
                exitcode = e.code
            else:
                sys.stderr.write(str(e.code) + "\n")
                exitcode = 1
        except BaseException:
            exitcode = 1
            import traceback

            sys.stderr.write("Process %s:\n" % self.name)
            traceback.print_exc()
        finally:
            threading._shutdown()
            util.info("process exiting with exitcode %d" % exitcode)
            util._flush_std_streams()
        return exitcode


class _ParentProcess(BaseProcess):
    """The parent, as seen from a child: its sentinel is a pidfd of the parent."""

    def __init__(self, name, pid, sentinel):
        self._identity = ()
        self._name = name
        self._pid = pid
        self._parent_pid = None
        self._popen = None
        self._closed = False
        self._sentinel = sentinel
        self._config = {}

    def is_alive(self):
        from . import _core

        return not _core.wait_readable(self._sentinel, 0)

    @property
    def ident(self):
        return self._pid

    pid = ident

    def join(self, timeout=None):
        """Wait until the parent process ends (detached from the GIL; Ctrl-C interrupts)."""
        from . import _core

        _core.wait_readable(self._sentinel, timeout)


_exitcode_to_name = {}
for _name, _signum in list(signal.__dict__.items()):
    if _name[:3] == "SIG" and "_" not in _name:
        _exitcode_to_name[-_signum] = f"-{_name}"
del _name, _signum
