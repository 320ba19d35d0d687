"""``rmp.managers``: managers and proxies, on rmp's connections, processes and pool.

The manager logic is the running CPython's own ``multiprocessing/managers.py``, run as a
module of the ``rmp`` package, so that its relative imports bind to rmp: its server listens
with ``rmp.connection.Listener``, its proxies call through ``rmp.connection.Client`` (Rust
framing, wire-compatible with the stdlib's), ``start()`` runs the server in an rmp process
of the manager's context, and ``SyncManager``'s ``Pool`` is ``rmp.pool.Pool``. The behaviour
(registry, tokens, reference counting, proxies, the wire protocol) is therefore the running
Python's, version for version, and a stdlib client can talk to an rmp manager and the other
way round. Its exceptions are the stdlib's own objects (``RemoteError``).

Running the file here, rather than importing ``multiprocessing.managers``, gives rmp a copy
of the module's state of its own (the classes' registries, the ``listener_client`` table):
the stdlib's managers are left untouched.
"""

import multiprocessing.managers as _std
import os
import select as _select
import socket as _socket
import struct as _struct
import threading as _threading

from rmp import util as _util


def _run_stdlib_managers(namespace):
    path = os.path.join(os.path.dirname(_std.__file__), "managers.py")
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    own = {k: namespace[k] for k in ("__doc__", "__file__")}
    namespace["__package__"] = "rmp"  # `from . import connection` -> rmp.connection
    exec(code, namespace)
    namespace.update(own)


_run_stdlib_managers(globals())

# The stdlib's exception class itself, so that ``except multiprocessing.managers.RemoteError``
# catches what rmp raises (the module's code looks the name up when it raises).
RemoteError = _std.RemoteError

del _run_stdlib_managers


# --- Referents of a crashed client -------------------------------------------------------
#
# The stdlib's server counts references per object only: a client process that dies without
# sending its decrefs (SIGKILL, os._exit, a segfault) leaves its objects alive until the
# manager shuts down. rmp's server also remembers which process each reference came from: on
# a Unix socket the kernel names the peer (SO_PEERCRED), and a pidfd of that process becomes
# readable when it exits. A watcher thread then drops the references the dead process still
# held, exactly as its decrefs would have. A client that reaches the manager over TCP has no
# pid the server can see: its references are counted as the stdlib counts them. Linux only,
# like rmp (pidfds need Linux 5.3).

_UCRED = _struct.Struct("3i")  # struct ucred: pid, uid, gid


def _peer_pid(c):
    """The pid of the process at the other end of connection ``c``, when the kernel knows it
    (a Unix socket), else None."""
    try:
        fd = c.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    try:
        s = _socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        if s.family != _socket.AF_UNIX:
            return None
        pid = _UCRED.unpack(s.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _UCRED.size))[0]
    except OSError:
        return None
    finally:
        s.close()
    # 0: the peer is in another pid namespace. Our own pid: the server's own proxies.
    return pid if pid > 0 and pid != os.getpid() else None


class _Holders:
    """Which live process holds how many references to which object, for one server."""

    def __init__(self, server):
        self._server = server
        self._lock = _threading.Lock()
        self._counts = {}  # pid -> {ident: references}
        self._pidfds = {}  # pid -> pidfd
        # Processes whose references were dropped for them: a decref of theirs that was still in
        # flight when they died must not be counted twice. Bounded; a pid that comes back (a
        # new process) leaves it when its first reference is counted.
        self._dead = {}
        self._poll = _select.poll()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._poll.register(self._wake_r, _select.POLLIN)
        self._thread = None

    def add(self, pid, ident):
        """Count a reference of process ``pid``. False: that process is already gone."""
        with self._lock:
            idents = self._counts.get(pid)
            if idents is None:
                try:
                    pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    return False
                except OSError:  # no pidfds here: counted as the stdlib counts
                    return True
                self._dead.pop(pid, None)
                idents = self._counts[pid] = {}
                self._pidfds[pid] = pidfd
                self._poll.register(pidfd, _select.POLLIN)
                if self._thread is None:
                    self._thread = _threading.Thread(
                        target=self._watch, name="rmp-manager-client-watch", daemon=True
                    )
                    self._thread.start()
                else:
                    os.write(self._wake_w, b"\0")  # poll() again with the new fd
            idents[ident] = idents.get(ident, 0) + 1
            return True

    def remove(self, pid, ident):
        """Uncount a reference of process ``pid``. False: the references of that process were
        dropped already (it died while this decref was on its way)."""
        with self._lock:
            idents = self._counts.get(pid)
            if idents is None:
                return pid not in self._dead
            if ident in idents:
                idents[ident] -= 1
                if not idents[ident]:
                    del idents[ident]
            return True

    def _watch(self):
        while True:
            for fd, _ in self._poll.poll():
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                self._reap(fd)

    def _reap(self, pidfd):
        with self._lock:
            pid = next(p for p, f in self._pidfds.items() if f == pidfd)
            del self._pidfds[pid]
            idents = self._counts.pop(pid)
            self._poll.unregister(pidfd)
            os.close(pidfd)
            self._dead[pid] = None
            if len(self._dead) > 4096:
                del self._dead[next(iter(self._dead))]
        dropped = sum(idents.values())
        if dropped:
            _util.info("manager: process %d died holding %d reference(s): dropped", pid, dropped)
        for ident, n in idents.items():
            for _ in range(n):
                try:
                    _std_decref(self._server, None, ident)
                except Exception as e:  # noqa: BLE001 - a watcher must not die of one object
                    _util.info("manager: dropping a reference to %r failed: %r", ident, e)


_Server = globals()["Server"]  # defined by the stdlib's code above
_std_incref = _Server.incref
_std_decref = _Server.decref


def _holders(server):
    h = server.__dict__.get("_rmp_holders")
    if h is None:
        with server.mutex:
            h = server.__dict__.get("_rmp_holders")
            if h is None:
                h = server._rmp_holders = _Holders(server)
    return h


def _incref(self, c, ident):
    _std_incref(self, c, ident)
    pid = _peer_pid(c) if c is not None else None
    if pid is not None and not _holders(self).add(pid, ident):
        _std_decref(self, None, ident)  # its process died while this incref was on its way


def _decref(self, c, ident):
    pid = _peer_pid(c) if c is not None else None
    if pid is not None and not _holders(self).remove(pid, ident):
        return
    _std_decref(self, c, ident)


_incref.__doc__ = "Count a reference to ``ident``, and which client process holds it."
_decref.__doc__ = "Drop a reference to ``ident`` (the stdlib's logic), and its holder's count."
_Server.incref = _incref
_Server.decref = _decref
