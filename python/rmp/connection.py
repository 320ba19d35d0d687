"""``rmp.connection``: pipes and connections, mirroring CPython's ``multiprocessing.connection``.

Framing, the write and the read are Rust (``rmp._core``): one ``writev`` per message, waits
detached from the interpreter that Ctrl-C interrupts before a message starts, and a message
that has started is always finished (never half a frame on the wire). The wire format is
CPython's own, so an rmp ``Connection`` and a stdlib one can share a socket or pipe.

Not built yet (the connections work continues): ``Listener``, ``Client``, ``wait`` and the
authentication handshake.
"""

from __future__ import annotations

import os
import socket
from multiprocessing import reduction as _std_reduction
from multiprocessing.context import BufferTooShort

from . import _core

__all__ = ["Pipe", "Connection"]

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


def _reduce_connection(conn):
    # While a child's data is pickled, DupFd goes through the spawning Popen (inherited fd,
    # or SCM_RIGHTS to the fork server); otherwise through the stdlib's resource sharer.
    df = _std_reduction.DupFd(conn.fileno())
    return _rebuild_connection, (df, conn.readable, conn.writable)


def _rebuild_connection(df, readable, writable):
    return Connection(df.detach(), readable, writable)


_std_reduction.register(Connection, _reduce_connection)
