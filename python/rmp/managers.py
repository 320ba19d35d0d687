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

import fcntl as _fcntl
import multiprocessing.managers as _std
import os
import select as _select
import socket as _socket
import struct as _struct
import sys as _sys
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
    # A socket object made while socket.setdefaulttimeout() is set puts its descriptor in
    # non-blocking mode, and the duplicate shares that mode with the connection's: put the
    # flags back afterwards.
    try:
        flags = _fcntl.fcntl(fd, _fcntl.F_GETFL)
        s = _socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        _fcntl.fcntl(fd, _fcntl.F_SETFL, flags)
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

    def add_token(self, token, ident):
        """Count a reference of the client process whose lifeline is ``token`` (a TCP
        client of rmp). False: that lifeline is closed already."""
        with self._lock:
            if token in self._dead:
                return False
            idents = self._counts.setdefault(token, {})
            idents[ident] = idents.get(ident, 0) + 1
            return True

    def _reap(self, pidfd):
        with self._lock:
            pid = next(p for p, f in self._pidfds.items() if f == pidfd)
            del self._pidfds[pid]
            self._poll.unregister(pidfd)
            os.close(pidfd)
        self.drop(pid)

    def drop(self, key):
        """Drop every reference the client ``key`` (a pid, or a lifeline token) holds."""
        with self._lock:
            idents = self._counts.pop(key, {})
            self._dead[key] = None
            if len(self._dead) > 4096:
                del self._dead[next(iter(self._dead))]
        dropped = sum(idents.values())
        if dropped:
            _util.info("manager: client %r gone holding %d reference(s): dropped", key, dropped)
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


def _rmp_lifeline(self, c, token):
    """A client process's lifeline (an rmp client over TCP, whose pid the server cannot
    see): held open for the life of that process; when it closes, the process exited or
    died, and the references counted under ``token`` are dropped."""
    c.send(("#RETURN", None))
    try:
        while True:
            c.recv()
    except (EOFError, OSError):
        pass
    _holders(self).drop(token)
    _sys.exit(0)  # as serve_client: handle_request closes the connection


def _rmp_incref(self, c, ident, token):
    _std_incref(self, c, ident)
    if not _holders(self).add_token(token, ident):
        _std_decref(self, None, ident)  # its lifeline closed while this was on its way


def _rmp_decref(self, c, ident, token):
    if _holders(self).remove(token, ident):
        _std_decref(self, c, ident)


_incref.__doc__ = "Count a reference to ``ident``, and which client process holds it."
_decref.__doc__ = "Drop a reference to ``ident`` (the stdlib's logic), and its holder's count."
_Server.incref = _incref
_Server.decref = _decref
_Server.rmp_lifeline = _rmp_lifeline
_Server.rmp_incref = _rmp_incref
_Server.rmp_decref = _rmp_decref
_RMP_METHODS = ["rmp_lifeline", "rmp_incref", "rmp_decref"]
_Server.public = _Server.public + _RMP_METHODS
if "SharedMemoryServer" in globals():  # its `public` was copied from Server's
    SharedMemoryServer.public = SharedMemoryServer.public + _RMP_METHODS  # noqa: F821


# --- The client side of lifelines -------------------------------------------------------
#
# A proxy of a manager reached over TCP counts its references under this process's token,
# and the process keeps one lifeline connection open to that manager (made on the first
# reference). A stdlib server refuses the lifeline: the references are then counted as the
# stdlib counts them. A forked child closes its copies of the parent's lifelines and makes
# its own (its proxies incref again after the fork, as in the stdlib).

_lifelines = {}  # address -> the token the server accepted, or None (no lifelines there)
_lifeline_conns = {}  # address -> the open lifeline
_lifeline_lock = _threading.Lock()
_process_token = os.urandom(16).hex()


def _forget_lifelines():
    global _process_token, _lifeline_lock
    for conn in _lifeline_conns.values():
        try:
            conn.close()
        except OSError:
            pass
    _lifeline_conns.clear()
    _lifelines.clear()
    _process_token = os.urandom(16).hex()
    _lifeline_lock = _threading.Lock()


os.register_at_fork(after_in_child=_forget_lifelines)


def _lifeline(address, authkey, client):
    """This process's lifeline token for the manager at ``address``, or None (a Unix
    socket, whose server sees this process's pid; or a server without lifelines)."""
    if not isinstance(address, tuple):
        return None
    with _lifeline_lock:
        conn = _lifeline_conns.get(address)
        if conn is not None and conn.poll(0):  # EOF: that server is gone (a restarted one?)
            conn.close()
            del _lifeline_conns[address], _lifelines[address]
        if address in _lifelines:
            return _lifelines[address]
        token = None
        try:
            conn = client(address, authkey=authkey)
            try:
                dispatch(conn, None, "rmp_lifeline", (_process_token,))  # noqa: F821
            except BaseException:
                conn.close()
                raise
            _lifeline_conns[address] = conn
            token = _process_token
        except Exception as e:  # noqa: BLE001 - a stdlib server: count as the stdlib does
            _util.debug("manager at %r keeps no lifelines: %r", address, e)
        _lifelines[address] = token
        return token


_BaseProxy = globals()["BaseProxy"]
_std_proxy_decref = _BaseProxy._decref


def _proxy_incref(self):
    if self._owned_by_manager:
        _util.debug("owned_by_manager skipped INCREF of %r", self._token.id)
        return
    lifeline = _lifeline(self._token.address, self._authkey, self._Client)
    conn = self._Client(self._token.address, authkey=self._authkey)
    if lifeline is None:
        dispatch(conn, None, "incref", (self._id,))  # noqa: F821
    else:
        dispatch(conn, None, "rmp_incref", (self._id, lifeline))  # noqa: F821
    _util.debug("INCREF %r", self._token.id)
    self._idset.add(self._id)
    state = self._manager and self._manager._state
    self._close = _util.Finalize(
        self,
        _proxy_decref,
        args=(self._token, self._authkey, state, self._tls, self._idset, self._Client, lifeline),
        exitpriority=10,
    )


def _proxy_decref(token, authkey, state, tls, idset, client, lifeline):
    if lifeline is None:
        return _std_proxy_decref(token, authkey, state, tls, idset, client)
    idset.discard(token.id)
    if state is None or state.value == State.STARTED:  # noqa: F821
        try:
            _util.debug("DECREF %r", token.id)
            conn = client(token.address, authkey=authkey)
            dispatch(conn, None, "rmp_decref", (token.id, lifeline))  # noqa: F821
        except Exception as e:  # noqa: BLE001 - as the stdlib's decref
            _util.debug("... decref failed %s", e)
    if not idset and hasattr(tls, "connection"):
        tls.connection.close()
        del tls.connection
    return None


_proxy_incref.__doc__ = "Count this proxy's reference, under this process's lifeline over TCP."
_BaseProxy._incref = _proxy_incref
