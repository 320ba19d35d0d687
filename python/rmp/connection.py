"""``rmp.connection``: pipes and connections, mirroring CPython's ``multiprocessing.connection``.

Framing, the write and the read are Rust (``rmp._core``): one ``writev`` per message, waits
detached from the interpreter that Ctrl-C interrupts before a message starts, and a message
that has started is always finished (never half a frame on the wire). The wire format is
CPython's own, so an rmp ``Connection`` and a stdlib one can share a socket or pipe.

``Listener``/``Client`` speak the stdlib's authentication handshake in its current form
(CPython 3.12+: HMAC with a ``{digest}``-prefixed challenge, sha256 by default) and accept
the legacy HMAC-MD5 form of older peers, on every Python rmp supports; during the handshake
no message longer than 256 bytes is read, whatever length a peer announces.
"""

from __future__ import annotations

import hmac
import os
import socket
import time
from multiprocessing import reduction as _std_reduction
from multiprocessing.connection import (  # noqa: F401  (address helpers, shared)
    BUFSIZE,
    CONNECTION_TIMEOUT,
    address_type,
    arbitrary_address,
    default_family,
    families,
)
from multiprocessing.context import AuthenticationError, BufferTooShort

from . import _core, util

__all__ = ["Client", "Listener", "Pipe", "wait"]

_ForkingPickler = _std_reduction.ForkingPickler


class Connection:
    """A connection over a socket or pipe descriptor; the stdlib's API and errors."""

    _handle = None

    def __init__(self, handle, readable=True, writable=True):
        handle = handle.__index__()
        if handle < 0:
            raise ValueError("invalid handle")
        if not readable and not writable:
            raise ValueError("at least one of `readable` and `writable` must be True")
        self._handle = handle
        self._readable = readable
        self._writable = writable

    def __del__(self):
        if self._handle is not None:
            self._close()

    def _check_closed(self):
        if self._handle is None:
            raise OSError("handle is closed")

    def _check_readable(self):
        if not self._readable:
            raise OSError("connection is write-only")

    def _check_writable(self):
        if not self._writable:
            raise OSError("connection is read-only")

    def _bad_message_length(self):
        # As CPython: the unread payload makes the stream unusable for reading.
        if self._writable:
            self._readable = False
        else:
            self.close()
        raise OSError("bad message length")

    @property
    def closed(self):
        """True if the connection is closed."""
        return self._handle is None

    @property
    def readable(self):
        """True if the connection is readable."""
        return self._readable

    @property
    def writable(self):
        """True if the connection is writable."""
        return self._writable

    def fileno(self):
        """File descriptor used by the connection."""
        self._check_closed()
        return self._handle

    def _close(self, _close=os.close):
        _close(self._handle)

    def close(self):
        """Close the connection."""
        if self._handle is not None:
            try:
                self._close()
            finally:
                self._handle = None

    def send_bytes(self, buf, offset=0, size=None):
        """Send the bytes data from a bytes-like object."""
        self._check_closed()
        self._check_writable()
        m = memoryview(buf)
        if m.itemsize > 1:
            m = m.cast("B")
        n = m.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        if isinstance(buf, bytes) and offset == 0 and size == n:
            _core.send_message(self._handle, buf)
        else:
            _core.send_message(self._handle, m[offset : offset + size])

    def send(self, obj):
        """Send a (picklable) object."""
        self._check_closed()
        self._check_writable()
        _core.send_message(self._handle, bytes(_ForkingPickler.dumps(obj)))

    def recv_bytes(self, maxlength=None):
        """Receive bytes data as a bytes object."""
        self._check_closed()
        self._check_readable()
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        data = _core.recv_message(self._handle, maxlength)
        if data is None:
            self._bad_message_length()
        return data

    def recv_bytes_into(self, buf, offset=0):
        """Receive bytes data into a writeable bytes-like object; return the number of bytes
        read. ``BufferTooShort`` (carrying the message) if it does not fit."""
        self._check_closed()
        self._check_readable()
        with memoryview(buf) as m:
            itemsize = m.itemsize
            bytesize = itemsize * len(m)
            if offset < 0:
                raise ValueError("negative offset")
            elif offset > bytesize:
                raise ValueError("offset too large")
            data = _core.recv_message(self._handle, None)
            size = len(data)
            if bytesize < offset + size:
                raise BufferTooShort(data)
            m.cast("B")[offset : offset + size] = data
            return size

    def recv(self):
        """Receive a (picklable) object."""
        self._check_closed()
        self._check_readable()
        return _ForkingPickler.loads(_core.recv_message(self._handle, None))

    def poll(self, timeout=0.0):
        """Whether there is any input available to be read (within ``timeout`` seconds;
        None waits forever)."""
        self._check_closed()
        self._check_readable()
        return _core.wait_readable(self._handle, timeout)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.close()

    def __repr__(self):
        state = "closed" if self._handle is None else "handle=%d" % self._handle
        return "<%s.%s %s>" % (type(self).__module__, type(self).__qualname__, state)


def Pipe(duplex=True):
    """Return a pair of connections at either end of a pipe (a socketpair when duplex)."""
    if duplex:
        s1, s2 = socket.socketpair()
        s1.setblocking(True)
        s2.setblocking(True)
        return Connection(s1.detach()), Connection(s2.detach())
    fd1, fd2 = os.pipe()
    return Connection(fd1, writable=False), Connection(fd2, readable=False)


def wait(object_list, timeout=None):
    """Wait until an object in ``object_list`` is ready (readable, at EOF, or an ended
    process's sentinel); return the ready ones. Objects are connections, sockets, sentinels
    (ints) or anything with ``fileno()``. The wait releases the GIL; Ctrl-C interrupts it."""
    objs = list(object_list)
    fds = [o if isinstance(o, int) else o.fileno() for o in objs]
    if not fds:
        if timeout is None:
            raise ValueError("wait() on an empty list with no timeout would block forever")
        time.sleep(max(timeout, 0))
        return []
    return [objs[i] for i in _core.wait_any(fds, timeout)]


#
# Listener and Client
#


class Listener:
    """A listening socket whose ``accept()`` returns a :class:`Connection`; with ``authkey``,
    both sides prove they know the key before the connection is returned."""

    def __init__(self, address=None, family=None, backlog=1, authkey=None):
        family = family or (address and address_type(address)) or default_family
        address = address or arbitrary_address(family)
        if family not in families:
            raise ValueError("Family %s is not recognized." % family)
        if family == "AF_PIPE":  # pragma: no cover - Windows only
            raise ValueError("Family AF_PIPE is not recognized.")
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError("authkey should be a byte string")
        self._listener = _SocketListener(address, family, backlog)
        self._authkey = authkey

    def accept(self):
        """Accept a connection (authenticating it when the listener has an authkey)."""
        if self._listener is None:
            raise OSError("listener is closed")
        c = self._listener.accept()
        if self._authkey is not None:
            try:
                deliver_challenge(c, self._authkey)
                answer_challenge(c, self._authkey)
            except BaseException:
                c.close()
                raise
        return c

    def close(self):
        """Close the bound socket or named pipe of the listener."""
        listener = self._listener
        if listener is not None:
            self._listener = None
            listener.close()

    @property
    def address(self):
        return self._listener._address

    @property
    def last_accepted(self):
        return self._listener._last_accepted

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.close()


class _SocketListener:
    def __init__(self, address, family, backlog=1):
        self._socket = socket.socket(getattr(socket, family))
        try:
            if os.name == "posix":
                self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.setblocking(True)
            self._socket.bind(address)
            self._socket.listen(backlog)
            self._address = self._socket.getsockname()
        except OSError:
            self._socket.close()
            raise
        self._family = family
        self._last_accepted = None
        if family == "AF_UNIX" and not util.is_abstract_socket_namespace(address):
            self._unlink = util.Finalize(self, os.unlink, args=(address,), exitpriority=0)
        else:
            self._unlink = None

    def accept(self):
        s, self._last_accepted = self._socket.accept()
        s.setblocking(True)
        return Connection(s.detach())

    def close(self):
        try:
            self._socket.close()
        finally:
            unlink = self._unlink
            if unlink is not None:
                self._unlink = None
                unlink()


def Client(address, family=None, authkey=None):
    """Connect to a :class:`Listener` (rmp's or the stdlib's) at ``address``."""
    family = family or address_type(address)
    if family not in families:
        raise ValueError("Family %s is not recognized." % family)
    with socket.socket(getattr(socket, family)) as s:
        s.setblocking(True)
        s.connect(address)
        c = Connection(s.detach())
    if authkey is not None:
        if not isinstance(authkey, bytes):
            c.close()
            raise TypeError("authkey should be a byte string")
        try:
            answer_challenge(c, authkey)
            deliver_challenge(c, authkey)
        except BaseException:
            c.close()
            raise
    return c


#
# Authentication: CPython's handshake (3.12+ form, with the legacy MD5 form of older peers)
#

MESSAGE_LENGTH = 40  # random bytes in a challenge; must stay above the legacy 20
CHALLENGE = b"#CHALLENGE#"
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"
# The names CPython uses from 3.12 (its tests build fake peers from them).
_CHALLENGE, _WELCOME, _FAILURE = CHALLENGE, WELCOME, FAILURE
_ALLOWED_DIGESTS = frozenset({b"md5", b"sha256", b"sha384", b"sha3_256", b"sha3_384"})
_MAX_DIGEST_LEN = max(len(d) for d in _ALLOWED_DIGESTS)
_LEGACY_LENGTHS = (20, 16)  # a legacy challenge, a legacy (raw HMAC-MD5) response
_MAX_HANDSHAKE_MESSAGE = 256  # nothing longer is read before the peer is authenticated


def _digest_and_payload(message):
    """('', message) for the legacy form, else (digest name, payload) of a '{digest}...'
    message; AuthenticationError for anything else."""
    if len(message) in _LEGACY_LENGTHS:
        return "", message
    if message.startswith(b"{"):
        end = message.find(b"}", 1, _MAX_DIGEST_LEN + 2)
        if end > 0 and message[1:end] in _ALLOWED_DIGESTS:
            return message[1:end].decode("ascii"), message[end + 1 :]
    raise AuthenticationError(
        "unsupported message length, missing digest prefix, or unsupported digest: "
        "message=%r" % (message,)
    )


def _create_response(authkey, message):
    digest = _digest_and_payload(message)[0]
    if not digest:
        try:
            return hmac.new(authkey, message, "md5").digest()
        except ValueError:  # no MD5 (FIPS builds): answer with sha256 instead
            digest = "sha256"
    mac = hmac.new(authkey, message, digest).digest()
    return b"{%s}%s" % (digest.encode("ascii"), mac)


def _verify_challenge(authkey, message, response):
    digest, mac = _digest_and_payload(response)
    digest = digest or "md5"
    try:
        expected = hmac.new(authkey, message, digest).digest()
    except ValueError:
        raise AuthenticationError("response_digest=%r unsupported" % digest)
    if len(expected) != len(mac):
        raise AuthenticationError(
            "expected %r of length %d got %d" % (digest, len(expected), len(mac))
        )
    if not hmac.compare_digest(expected, mac):
        raise AuthenticationError("digest received was wrong")


def _recv_handshake(connection):
    try:
        return connection.recv_bytes(_MAX_HANDSHAKE_MESSAGE)
    except OSError as e:
        if str(e) == "bad message length":
            raise AuthenticationError("handshake message too long") from None
        raise


def deliver_challenge(connection, authkey, digest_name="sha256"):
    """Send a challenge and check the peer's answer (raises AuthenticationError)."""
    if not isinstance(authkey, bytes):
        raise ValueError(f"Authkey must be bytes, not {type(authkey)!s}")
    message = b"{%s}%s" % (digest_name.encode("ascii"), os.urandom(MESSAGE_LENGTH))
    connection.send_bytes(CHALLENGE + message)
    response = _recv_handshake(connection)
    try:
        _verify_challenge(authkey, message, response)
    except AuthenticationError:
        connection.send_bytes(FAILURE)
        raise
    connection.send_bytes(WELCOME)


def answer_challenge(connection, authkey):
    """Answer the peer's challenge (raises AuthenticationError if it rejects us)."""
    if not isinstance(authkey, bytes):
        raise ValueError(f"Authkey must be bytes, not {type(authkey)!s}")
    message = _recv_handshake(connection)
    if not message.startswith(CHALLENGE):
        raise AuthenticationError("Protocol error, expected challenge: message=%r" % (message,))
    message = message[len(CHALLENGE) :]
    if len(message) < _LEGACY_LENGTHS[0]:
        raise AuthenticationError("challenge too short: %d bytes" % len(message))
    connection.send_bytes(_create_response(authkey, message))
    if _recv_handshake(connection) != WELCOME:
        raise AuthenticationError("digest sent was rejected")


def _reduce_connection(conn):
    # While a child's data is pickled, DupFd goes through the spawning Popen (inherited fd,
    # or SCM_RIGHTS to the fork server); otherwise through the stdlib's resource sharer.
    df = _std_reduction.DupFd(conn.fileno())
    return _rebuild_connection, (df, conn.readable, conn.writable)


def _rebuild_connection(df, readable, writable):
    return Connection(df.detach(), readable, writable)


_std_reduction.register(Connection, _reduce_connection)


# ---------------------------------------------------------------- xmlrpc-serialized ends
# (the managers' "xmlrpclib" serializer uses them, as the stdlib's do)


class ConnectionWrapper:
    """A connection whose ``send``/``recv`` serialize with ``dumps``/``loads`` (as bytes
    messages) instead of pickle; everything else is the wrapped connection's."""

    def __init__(self, conn, dumps, loads):
        self._conn = conn
        self._dumps = dumps
        self._loads = loads
        for attr in ("fileno", "close", "poll", "recv_bytes", "send_bytes"):
            setattr(self, attr, getattr(conn, attr))

    def send(self, obj):
        self._conn.send_bytes(self._dumps(obj))

    def recv(self):
        return self._loads(self._conn.recv_bytes())


def _xml_dumps(obj):
    import xmlrpc.client

    return xmlrpc.client.dumps((obj,), None, None, None, 1).encode("utf-8")


def _xml_loads(data):
    import xmlrpc.client

    (obj,), _method = xmlrpc.client.loads(data.decode("utf-8"))
    return obj


class XmlListener(Listener):
    """A :class:`Listener` whose connections speak xmlrpc-serialized messages."""

    def accept(self):
        return ConnectionWrapper(Listener.accept(self), _xml_dumps, _xml_loads)


def XmlClient(*args, **kwds):
    """A :func:`Client` connection that speaks xmlrpc-serialized messages."""
    return ConnectionWrapper(Client(*args, **kwds), _xml_dumps, _xml_loads)
