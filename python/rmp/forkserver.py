"""``rmp.forkserver``: a preloaded server process that forks children on request.

The server is a fresh interpreter (started with ``posix_spawn``) that imports the preload
modules once, then waits on a Unix socket in the parent's private temporary directory (mode
0700, so no other user can ask it for a process; the stdlib's older releases used an abstract
socket anyone could reach). For each request it receives the child's descriptors with
``SCM_RIGHTS``, forks, and answers with the child's pid and a pidfd for it; when the child
ends it sends the exit status on the same connection. The client's sentinel is that pidfd.
"""

from __future__ import annotations

import errno
import io
import os
import selectors
import signal
import socket
import struct
import sys
import threading

# Bound at import: rmp may later stand in for ``multiprocessing`` in sys.modules.
from multiprocessing import process as _mpp
from multiprocessing import resource_tracker as _std_resource_tracker

from . import _core, spawn, util

__all__ = [
    "ensure_running",
    "get_inherited_fds",
    "connect_to_new_process",
    "set_forkserver_preload",
]

MAXFDS_TO_SEND = 256
_STATUS = struct.Struct("=i")  # server -> client: the child's exit code
_HELLO = struct.Struct("=q")  # spare -> client and spare -> server: the child's pid
_REQUEST = struct.Struct("=Q")  # client -> spare: size of the pickled data that follows


class ForkServer:
    def __init__(self):
        self._address = None
        self._alive_w = None
        self._server = None
        self._inherited_fds = None
        self._lock = threading.Lock()
        self._preload_modules = ["__main__"]

    @property
    def _forkserver_pid(self):
        """The server's pid, or None (the stdlib's attribute name, read by its tests)."""
        return None if self._server is None else self._server.pid

    def _stop(self):
        with self._lock:
            self._stop_unlocked()

    def _stop_unlocked(self):
        if self._server is None:
            return
        os.close(self._alive_w)  # the server exits when it reads EOF here
        self._alive_w = None
        self._server.wait(None)
        self._server.close()
        self._server = None
        if self._address and not util.is_abstract_socket_namespace(self._address):
            try:
                os.unlink(self._address)
            except FileNotFoundError:
                pass
        self._address = None

    def set_forkserver_preload(self, modules_names):
        """Set the modules the server imports before it forks anything (a hint)."""
        if not all(type(mod) is str for mod in modules_names):
            raise TypeError("module_names must be a list of strings")
        self._preload_modules = modules_names

    def get_inherited_fds(self):
        """In a child of the server: the descriptors its parent passed (None elsewhere)."""
        return self._inherited_fds

    def connect_to_new_process(self, fds, data=b""):
        """Ask the server for a child that runs the pickled ``data`` with ``fds`` (the
        resource tracker's, the parent's pidfd, then the object's own); returns
        ``(connection, pid, pidfd)``. The exit status arrives later on the connection."""
        self.ensure_running()
        if len(fds) + 4 >= MAXFDS_TO_SEND:
            raise ValueError("too many fds")
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Blocking whatever socket.setdefaulttimeout() says: the server may take a while
            # to answer (it may be starting).
            client.setblocking(True)
            client.connect(self._address)
            socket.send_fds(client, [_REQUEST.pack(len(data))], list(fds))
            client.sendall(data)
            msg, got, _flags, _addr = socket.recv_fds(client, _HELLO.size, 1)
            if len(msg) != _HELLO.size or len(got) != 1:
                for fd in got:
                    os.close(fd)
                raise OSError(errno.EPROTO, "fork server did not start the process")
            (pid,) = _HELLO.unpack(msg)
            return client, pid, got[0]
        except BaseException:
            client.close()
            raise

    def ensure_running(self):
        """Start the server unless it is running (restarting it if it died)."""
        with self._lock:
            if self._server is not None:
                if not self._server.has_exited():
                    return
                # It died (killed?): forget it and start a new one.
                os.close(self._alive_w)
                self._server.wait(None)
                self._server.close()
                self._server, self._alive_w = None, None

            _std_resource_tracker.ensure_running()
            address = os.path.join(util.get_temp_dir(), "rmp-fs-%d" % os.getpid())
            try:
                os.unlink(address)
            except FileNotFoundError:
                pass
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.setblocking(True)
            alive_r = alive_w = None
            try:
                listener.bind(address)
                os.chmod(address, 0o600)
                listener.listen()
                alive_r, alive_w = os.pipe()
                desired = {}
                if self._preload_modules:
                    # Preload __main__ by path, with the parent's sys.argv visible while it
                    # imports: CPython's fix for its long-dead ``main_path`` preload
                    # (gh-126631, gh-137996, gh-143706; 3.13.8+ and 3.14). Older CPythons
                    # re-ran the main script in every child instead.
                    data = spawn.get_preparation_data("ignore")
                    desired = {
                        "main_path": data.get("init_main_from_path"),
                        "sys_path": data.get("sys_path"),
                        "sys_argv": data.get("sys_argv"),
                    }
                prog = "from rmp.forkserver import main; main(%d, %d, %r, **%r)" % (
                    listener.fileno(),
                    alive_r,
                    self._preload_modules,
                    desired,
                )
                exe = spawn.get_executable()
                args = [exe, *util._util._args_from_interpreter_flags(), "-c", prog]
                pid = util.spawnv_passfds(exe, args, [listener.fileno(), alive_r])
                self._server = _core.ProcessHandle(pid)
            except BaseException:
                if alive_w is not None:
                    os.close(alive_w)
                raise
            finally:
                listener.close()
                if alive_r is not None:
                    os.close(alive_r)
            self._address = address
            self._alive_w = alive_w


def main(listener_fd, alive_r, preload, main_path=None, sys_path=None, sys_argv=None):
    """The fork server's loop (runs in the server process).

    The server keeps one *spare* child forked ahead of time, blocked in ``accept()`` on the
    listening socket, so that a request costs no fork on its critical path: the spare takes
    the connection, receives the descriptors and the pickled process in one message, answers
    the client with its own pid and pidfd, tells the server it was taken (handing over the
    client connection, on which the server later sends the exit status), and runs the
    process. The server then forks the next spare while the taken one runs.
    """
    if preload:
        if sys_path is not None:
            sys.path[:] = sys_path
        if sys_argv is not None:
            sys.argv[:] = sys_argv
        if "__main__" in preload and main_path is not None:
            _mpp.current_process()._inheriting = True
            try:
                spawn.import_main_path(main_path)
            finally:
                del _mpp.current_process()._inheriting
        for modname in preload:
            try:
                __import__(modname)
            except ImportError:
                pass

    util._close_stdin()
    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_r, False)
    os.set_blocking(sig_w, False)

    def sigchld_handler(*_unused):
        # Only wakes the loop (through the wakeup fd); reaping happens there.
        pass

    handlers = {
        signal.SIGCHLD: signal.signal(signal.SIGCHLD, sigchld_handler),
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
    }
    old_wakeup = signal.set_wakeup_fd(sig_w)
    ctl, ctl_spare = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # Drained until EAGAIN below (socket.recv_fds ignores its flags argument).
    ctl.setblocking(False)
    listener = socket.socket(socket.AF_UNIX, fileno=listener_fd)
    listener.setblocking(True)
    server_pid = os.getpid()

    def fork_spare():
        # Output buffered in the server must not be written again by every child.
        util._flush_std_streams()
        pid = os.fork()
        if pid != 0:
            return pid
        code = 1
        try:
            selector.close()
            for c in book.conns.values():
                c.close()
            ctl.close()
            for fd in (sig_r, sig_w):
                os.close(fd)
            util._child_atexit_begin()
            code = _spare(listener, alive_r, ctl_spare, handlers, old_wakeup, server_pid)
        except BaseException:
            sys.excepthook(*sys.exc_info())
            sys.stderr.flush()
        finally:
            try:
                util._child_atexit_end()
            finally:
                os._exit(code)

    def report(conn, code):
        try:
            conn.sendall(_STATUS.pack(code))
        except OSError:
            pass
        conn.close()

    book = _Children(report)

    with listener, ctl, ctl_spare, selectors.DefaultSelector() as selector:
        selector.register(alive_r, selectors.EVENT_READ)
        selector.register(sig_r, selectors.EVENT_READ)
        selector.register(ctl, selectors.EVENT_READ)
        while True:
            if book.spare is None:
                book.forked(fork_spare())
            ready = [key.fileobj for key, _ in selector.select()]
            if alive_r in ready:
                # The parent is gone (EOF): stop serving; the idle spare sees it too.
                raise SystemExit
            if ctl in ready:
                while True:
                    try:
                        msg, fds, _, _ = socket.recv_fds(ctl, _HELLO.size, 1)
                    except BlockingIOError:
                        break
                    if len(msg) != _HELLO.size or len(fds) != 1:
                        for fd in fds:
                            os.close(fd)
                        continue
                    (pid,) = _HELLO.unpack(msg)
                    conn = socket.socket(socket.AF_UNIX, fileno=fds[0])
                    conn.setblocking(True)
                    book.taken(pid, conn)
            if sig_r in ready:
                try:
                    os.read(sig_r, 65536)
                except BlockingIOError:
                    pass
                for pid, code in _reaped():
                    book.reaped(pid, code)


class _Children:
    """The server's book of its children: the idle spare, the clients waiting for a taken
    child's exit status, and the statuses of children reaped before they reported in.

    A taken child's two events, its "taken" message (``taken``) and its reaping (``reaped``),
    may come in either order: the server can be descheduled between reaping one child and
    the next while a new child is taken, runs and ends, and then reaps it before reading its
    message (a client then waited forever for that status)."""

    def __init__(self, report):
        self.spare = None  # pid of the idle spare, None when one must be forked
        self.conns = {}  # pid -> client connection waiting for that child's exit status
        self.exited = {}  # pid -> exit code of a child reaped before it reported in
        self._report = report  # report(conn, code): send the status, close the connection

    def forked(self, pid):
        self.spare = pid
        self.exited.pop(pid, None)  # a status kept for an earlier process with this pid

    def taken(self, pid, conn):
        if pid == self.spare:
            self.spare = None
        if pid in self.exited:
            self._report(conn, self.exited.pop(pid))
        else:
            self.conns[pid] = conn

    def reaped(self, pid, code):
        if pid in self.conns:
            self._report(self.conns.pop(pid), code)
            return
        # An idle spare that died (its status is never asked for), or a taken child whose
        # message is still unread: keep the status for that message.
        self.exited[pid] = code
        if pid == self.spare:
            self.spare = None


def _reaped():
    while True:
        try:
            pid, sts = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, os.waitstatus_to_exitcode(sts)


def _recv_exactly(conn, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = conn.recv_into(view[got:])
        if k == 0:
            raise EOFError("client went away")
        got += k
    return buf


def _spare(listener, alive_r, ctl, handlers, old_wakeup, server_pid):
    """A forked spare: wait for one request, take it, run the process, return its exit code.

    While idle it also watches the server (a pidfd): a spare whose server was killed would
    otherwise wait, orphaned, until the owner exits."""
    signal.set_wakeup_fd(old_wakeup)
    signal.signal(signal.SIGCHLD, handlers[signal.SIGCHLD])
    try:
        server = os.pidfd_open(server_pid)
    except OSError:
        return 0
    if os.getppid() != server_pid:  # the server died before we watched it
        os.close(server)
        return 0
    with selectors.DefaultSelector() as sel:
        sel.register(listener, selectors.EVENT_READ)
        sel.register(alive_r, selectors.EVENT_READ)
        sel.register(server, selectors.EVENT_READ)
        while True:
            ready = [key.fileobj for key, _ in sel.select()]
            if alive_r in ready or server in ready:
                os.close(server)
                return 0  # the owner or the server is gone: nothing will ever come
            try:
                conn, _ = listener.accept()
                conn.setblocking(True)  # whatever socket.setdefaulttimeout() says
                break
            except (BlockingIOError, InterruptedError):
                continue
    listener.close()
    os.close(alive_r)
    os.close(server)
    with conn:
        msg, fds, _, _ = socket.recv_fds(conn, _REQUEST.size, MAXFDS_TO_SEND + 1)
        if len(msg) != _REQUEST.size or len(fds) < 2:
            for fd in fds:
                os.close(fd)
            return 1
        (size,) = _REQUEST.unpack(msg)
        data = _recv_exactly(conn, size)
        pid = os.getpid()
        socket.send_fds(ctl, [_HELLO.pack(pid)], [conn.fileno()])
        ctl.close()
        pidfd = os.pidfd_open(pid)
        try:
            socket.send_fds(conn, [_HELLO.pack(pid)], [pidfd])
        finally:
            os.close(pidfd)
    for sig, val in handlers.items():
        signal.signal(sig, val)
    tracker_fd, parent_pidfd, *inherited = fds
    _forkserver._inherited_fds = inherited
    _std_resource_tracker._resource_tracker._fd = tracker_fd
    return spawn._run_prepared(io.BytesIO(data), parent_pidfd)


def read_status(conn):
    """Read the exit status the server sends when the child ends (None if the server died)."""
    data = b""
    while len(data) < _STATUS.size:
        chunk = conn.recv(_STATUS.size - len(data))
        if not chunk:
            return None
        data += chunk
    return _STATUS.unpack(data)[0]


_forkserver = ForkServer()
ensure_running = _forkserver.ensure_running
get_inherited_fds = _forkserver.get_inherited_fds
connect_to_new_process = _forkserver.connect_to_new_process
set_forkserver_preload = _forkserver.set_forkserver_preload
