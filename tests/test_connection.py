"""rmp.Pipe / rmp.connection.Connection against the stdlib's: API, errors, wire
compatibility both ways, passing ends to children under every start method, waits that
release the GIL and answer Ctrl-C."""

from __future__ import annotations

import array
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading

import pytest
from _helpers import run_counting_other_thread

import rmp
import rmp.connection

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("duplex", [True, False])
def test_objects_and_bytes(mp, duplex):
    r, w = mp.Pipe(duplex)
    w.send({"a": [1, 2, 3]})
    assert r.recv() == {"a": [1, 2, 3]}
    w.send_bytes(b"hello world", 6, 5)
    assert r.recv_bytes() == b"world"
    w.send_bytes(b"")
    assert r.recv_bytes() == b""
    w.send_bytes(array.array("i", [1, 2, 3]))
    assert r.recv_bytes() == array.array("i", [1, 2, 3]).tobytes()
    assert not r.poll() and not r.poll(0.05)
    w.send_bytes(b"x" * 50_000)  # fits in a pipe's buffer: no reader thread needed
    assert r.poll(5)
    assert r.recv_bytes() == b"x" * 50_000
    r.close()
    w.close()


def test_send_bytes_argument_errors(mp):
    r, w = mp.Pipe()
    with pytest.raises(ValueError, match="offset is negative"):
        w.send_bytes(b"abc", -1)
    with pytest.raises(ValueError, match="buffer length < offset"):
        w.send_bytes(b"abc", 4)
    with pytest.raises(ValueError, match="size is negative"):
        w.send_bytes(b"abc", 0, -1)
    with pytest.raises(ValueError, match=r"buffer length < offset \+ size"):
        w.send_bytes(b"abc", 1, 5)
    r.close()
    w.close()


def test_recv_bytes_into(mp):
    r, w = mp.Pipe()
    buf = bytearray(10)
    w.send_bytes(b"abcd")
    assert r.recv_bytes_into(buf, 3) == 4
    assert buf == b"\x00\x00\x00abcd\x00\x00\x00"
    w.send_bytes(b"0123456789")
    with pytest.raises(multiprocessing.BufferTooShort) as info:
        r.recv_bytes_into(bytearray(4))
    assert info.value.args[0] == b"0123456789"
    with pytest.raises(ValueError, match="negative offset"):
        r.recv_bytes_into(buf, -1)
    with pytest.raises(ValueError, match="offset too large"):
        r.recv_bytes_into(buf, 11)
    r.close()
    w.close()


def test_maxlength_makes_the_stream_unreadable(mp):
    r, w = mp.Pipe()  # duplex: the end stays writable, no longer readable
    w.send_bytes(b"0123456789")
    with pytest.raises(OSError, match="bad message length"):
        r.recv_bytes(5)
    assert not r.readable and not r.closed
    with pytest.raises(OSError, match="connection is write-only"):
        r.recv_bytes()
    r.close()
    w.close()
    r, w = mp.Pipe(False)  # read-only end: closed
    w.send_bytes(b"0123456789")
    with pytest.raises(OSError, match="bad message length"):
        r.recv_bytes(5)
    assert r.closed
    w.close()
    with pytest.raises(ValueError, match="negative maxlength"):
        mp.Pipe()[0].recv_bytes(-1)


def test_closed_readonly_writeonly_and_eof(mp):
    r, w = mp.Pipe(False)
    with pytest.raises(OSError, match="connection is read-only"):
        r.send(1)
    with pytest.raises(OSError, match="connection is write-only"):
        w.recv()
    w.close()
    with pytest.raises(EOFError):
        r.recv()
    assert w.closed
    with pytest.raises(OSError, match="handle is closed"):
        w.send(1)
    with pytest.raises(OSError, match="handle is closed"):
        w.fileno()
    r.close()
    r.close()  # idempotent
    with mp.Pipe()[0] as c:
        assert not c.closed
    assert c.closed
    with pytest.raises(ValueError, match="invalid handle"):
        rmp.connection.Connection(-1)


def test_truncated_message_is_an_oserror():
    r, w = rmp.Pipe(False)
    os.write(w.fileno(), b"\x00\x00\x00\x09abc")
    w.close()
    with pytest.raises(OSError, match="got end of file during message"):
        r.recv_bytes()
    r.close()


@pytest.mark.parametrize("size", [10, 100_000, 3_000_000])
def test_wire_compatible_with_stdlib_both_ways(size):
    payload = bytes(range(256)) * (size // 256) + b"tail"
    a, b = rmp.Pipe()
    std_b = multiprocessing.connection.Connection(os.dup(b.fileno()))
    b.close()
    done = []
    t = threading.Thread(target=lambda: done.append(std_b.recv_bytes()))
    t.start()
    a.send_bytes(payload)
    t.join(60)
    assert done == [payload]
    t = threading.Thread(target=std_b.send, args=({"obj": payload},))
    t.start()
    assert a.recv() == {"obj": payload}
    t.join(60)
    a.close()
    std_b.close()


def _echo(conn):
    # Stops on None, not on EOF: under fork the child inherits the parent's end too.
    while True:
        msg = conn.recv()
        if msg is None:
            break
        conn.send(("echo", msg))
    conn.close()


def test_ends_pass_to_children(rctx):
    parent_end, child_end = rmp.Pipe()
    p = rctx.Process(target=_echo, args=(child_end,))
    p.start()
    child_end.close()
    for item in (1, "two", b"\x00" * 70_000):
        parent_end.send(item)
        assert parent_end.recv() == ("echo", item)
    parent_end.send(None)
    parent_end.close()
    p.join(60)
    assert p.exitcode == 0


def test_recv_and_poll_release_the_gil():
    r, w = rmp.Pipe()
    timer = threading.Timer(0.5, w.send, ("late",))
    timer.start()
    assert run_counting_other_thread(lambda: r.poll(30))[0] is True
    value, during = run_counting_other_thread(r.recv)
    timer.join()
    assert value == "late"
    timer = threading.Timer(0.5, w.send, ("later",))
    timer.start()
    value, during = run_counting_other_thread(r.recv)
    timer.join()
    assert value == "later"
    assert during > 10_000  # the other thread ran while recv waited
    r.close()
    w.close()


@pytest.mark.parametrize("call", ["recv", "poll", "send_full"])
def test_sigint_interrupts_waits(call):
    r, w = rmp.Pipe(False)
    if call == "send_full":
        os.set_blocking(w.fileno(), False)
        try:  # fill the pipe, so that the next send has to wait for room
            while True:
                os.write(w.fileno(), b"\0" * 65536)
        except BlockingIOError:
            pass
        os.set_blocking(w.fileno(), True)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            if call == "recv":
                r.recv()
            elif call == "poll":
                r.poll(None)
            else:
                w.send_bytes(b"x")
    finally:
        timer.join()
        r.close()
        w.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_gib_message_round_trips():
    # Longer than 2 GiB: CPython's 8-byte length extension (-1 then the length).
    size = 3 * 2**30
    payload = b"\x5a" * size
    a, b = rmp.Pipe()
    t = threading.Thread(target=a.send_bytes, args=(payload,))
    t.start()
    got = b.recv_bytes()
    t.join(120)
    assert len(got) == size
    assert got[:1] == got[-1:] == b"\x5a" and got[size // 2] == 0x5A
    del got, payload
    a.close()
    b.close()
