"""Listener/Client/wait: rmp and the stdlib talk to each other in both directions, over
AF_UNIX and AF_INET, with and without an authkey; a wrong key or a garbage peer is refused
without harming the listener; wait() over connections, sockets and process sentinels."""

from __future__ import annotations

import multiprocessing.connection as std_conn
import os
import signal
import socket
import struct
import threading
import time

import pytest
from _helpers import run_counting_other_thread

import rmp
import rmp.connection as rmp_conn

pytestmark = pytest.mark.timeout(60)

IMPLS = {"rmp": rmp_conn, "stdlib": std_conn}


def _serve(listener, results, count=1):
    for _ in range(count):
        try:
            with listener.accept() as c:
                c.send(("hello", c.recv()))
                results.append("ok")
        except Exception as e:  # recorded for the test to check
            results.append(e)


@pytest.mark.parametrize("family", ["AF_UNIX", "AF_INET"])
@pytest.mark.parametrize("authkey", [None, b"secret key"])
@pytest.mark.parametrize("server,client", [("rmp", "stdlib"), ("stdlib", "rmp"), ("rmp", "rmp")])
def test_interop(server, client, family, authkey):
    with IMPLS[server].Listener(family=family, authkey=authkey) as listener:
        results = []
        t = threading.Thread(target=_serve, args=(listener, results))
        t.start()
        with IMPLS[client].Client(listener.address, authkey=authkey) as c:
            c.send([1, 2, 3])
            assert c.recv() == ("hello", [1, 2, 3])
        t.join(30)
        assert results == ["ok"]
        if family == "AF_UNIX":
            address = listener.address
    if family == "AF_UNIX":
        assert not os.path.exists(address)  # the socket file is removed on close


@pytest.mark.parametrize("server,client", [("rmp", "stdlib"), ("stdlib", "rmp"), ("rmp", "rmp")])
def test_wrong_authkey_fails_both_sides_and_listener_keeps_serving(server, client):
    with IMPLS[server].Listener(authkey=b"right") as listener:
        results = []
        t = threading.Thread(target=_serve, args=(listener, results, 2))
        t.start()
        with pytest.raises(rmp.AuthenticationError):
            IMPLS[client].Client(listener.address, authkey=b"wrong")
        with IMPLS[client].Client(listener.address, authkey=b"right") as c:
            c.send("again")
            assert c.recv() == ("hello", "again")
        t.join(30)
        assert isinstance(results[0], rmp.AuthenticationError)
        assert results[1] == "ok"


def test_huge_length_prefix_before_auth_is_refused_unread():
    with rmp_conn.Listener(authkey=b"k") as listener:
        results = []
        t = threading.Thread(target=_serve, args=(listener, results))
        t.start()
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(listener.address)
            s.recv(4096)  # the challenge
            s.sendall(struct.pack("!i", 2**31 - 1) + b"garbage")  # announces 2 GiB
            t.join(30)
        assert not t.is_alive()
        assert isinstance(results[0], rmp.AuthenticationError)


def test_garbage_challenge_is_refused():
    a, b = rmp.Pipe()
    b.send_bytes(b"not a challenge")
    with pytest.raises(rmp.AuthenticationError, match="expected challenge"):
        rmp_conn.answer_challenge(a, b"k")
    with pytest.raises(ValueError, match="Authkey must be bytes"):
        rmp_conn.deliver_challenge(a, "str key")
    a.close()
    b.close()


def test_bad_arguments():
    with pytest.raises(TypeError, match="authkey should be a byte string"):
        rmp_conn.Listener(authkey="text")
    with pytest.raises(ValueError, match="unrecognized family"):  # as the stdlib
        rmp_conn.Listener(family="AF_NOPE")


def _exit_after(delay):
    time.sleep(delay)


def test_wait_over_connections_sockets_and_sentinels():
    a, b = rmp.Pipe()
    s1, s2 = socket.socketpair()
    p = rmp.get_context("fork").Process(target=_exit_after, args=(0.3,))
    p.start()
    try:
        assert rmp_conn.wait([a, s1, p.sentinel], timeout=0.05) == []
        b.send("x")
        assert rmp_conn.wait([a, s1], timeout=5) == [a]
        a.recv()
        s2.send(b"y")
        assert rmp_conn.wait([a, s1], timeout=5) == [s1]
        assert rmp_conn.wait([p.sentinel], timeout=30) == [p.sentinel]
        # stdlib connections work too
        sa, sb = std_conn.Pipe()
        sb.send(1)
        assert rmp_conn.wait([sa], timeout=5) == [sa]
        sa.close()
        sb.close()
    finally:
        p.join(30)
        for c in (a, b, s1, s2):
            c.close()


def test_wait_releases_gil_and_answers_sigint():
    a, b = rmp.Pipe()
    ready, counted = run_counting_other_thread(lambda: rmp_conn.wait([a], timeout=0.5))
    assert ready == []
    assert counted > 10_000
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            rmp_conn.wait([a])
    finally:
        timer.join()
        a.close()
        b.close()


def test_accept_releases_gil_and_answers_sigint():
    with rmp_conn.Listener() as listener:
        timer = threading.Timer(0.5, lambda: rmp_conn.Client(listener.address).close())
        timer.start()
        conn, counted = run_counting_other_thread(listener.accept)
        timer.join()
        conn.close()
        assert counted > 10_000
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                listener.accept()
        finally:
            timer.join()
