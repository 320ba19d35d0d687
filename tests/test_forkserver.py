"""rmp's fork server: restart after a crash, a replaced spare, concurrent requests, the
``__main__`` preload, descriptors passed to children."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from _helpers import children_of, pid_gone

import rmp
from rmp import forkserver

pytestmark = pytest.mark.timeout(120)


def _exit_with(code):
    sys.exit(code)


def _run(ctx, code):
    p = ctx.Process(target=_exit_with, args=(code,))
    p.start()
    p.join(60)
    return p.exitcode


def _server_children(server_pid):
    return [pid for pid, state in children_of(server_pid).items() if state != "Z"]


def _server_and_spares(ctx):
    """Start a process through the server, then return (server pid, its idle spares)."""
    assert _run(ctx, 0) == 0
    server = forkserver._forkserver._forkserver_pid
    deadline = time.monotonic() + 10
    spares = []
    while not spares and time.monotonic() < deadline:
        spares = _server_children(server)
        time.sleep(0.01)
    return server, spares


def test_server_restarts_after_being_killed():
    ctx = rmp.get_context("forkserver")
    assert _run(ctx, 3) == 3
    old = forkserver._forkserver._forkserver_pid
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not forkserver._forkserver._server.has_exited() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _run(ctx, 4) == 4
    assert forkserver._forkserver._forkserver_pid != old


def test_killed_spare_is_replaced():
    ctx = rmp.get_context("forkserver")
    server, spares = _server_and_spares(ctx)
    assert len(spares) == 1, spares  # exactly one idle spare waits
    os.kill(spares[0], signal.SIGKILL)
    assert _run(ctx, 5) == 5


def test_concurrent_starts_from_threads():
    ctx = rmp.get_context("forkserver")
    results = {}

    def worker(i):
        results[i] = _run(ctx, i % 5)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert results == {i: i % 5 for i in range(12)}


def _send_through(conn, data):
    conn.send_bytes(data)
    conn.close()


def test_passed_descriptors_reach_the_child():
    # A stdlib Connection pickles its fd through reduction.DupFd while the spawning popen is
    # set: rmp's forkserver Popen sends it with SCM_RIGHTS and the child finds it by index.
    ctx = rmp.get_context("forkserver")
    r, w = multiprocessing.Pipe(duplex=False)
    try:
        p = ctx.Process(target=_send_through, args=(w, b"via SCM_RIGHTS"))
        p.start()
        w.close()
        assert r.poll(60)
        assert r.recv_bytes() == b"via SCM_RIGHTS"
        p.join(60)
        assert p.exitcode == 0
    finally:
        r.close()


def test_server_book_reports_a_status_whatever_the_order_of_its_events():
    # A taken child's "taken" message and its reaping may come in either order (the server
    # can be descheduled between two reaps while a new child runs and ends); each client
    # gets its child's status exactly once either way. With the reap first, a client once
    # waited forever (about 1 script in 100 under load).
    sent = []
    book = forkserver._Children(lambda conn, code: sent.append((conn, code)))
    book.forked(100)
    book.reaped(100, 3)  # taken, ran and ended before its message was read
    assert book.spare is None and sent == []
    book.forked(101)
    book.taken(100, "client-a")
    assert sent == [("client-a", 3)] and book.spare == 101 and not book.exited

    book.taken(101, "client-b")  # the usual order
    assert book.spare is None and sent == [("client-a", 3)]
    book.reaped(101, 0)
    assert sent[-1] == ("client-b", 0) and not book.conns

    book.forked(102)
    book.reaped(102, -9)  # a spare killed while idle: nobody asks for it
    assert book.spare is None and sent[-1] == ("client-b", 0)
    book.forked(102)  # a later spare with the same pid: the old status is not its own
    book.taken(102, "client-c")
    assert book.conns == {102: "client-c"} and len(sent) == 2
    book.reaped(102, 1)
    assert sent[-1] == ("client-c", 1) and not book.conns and not book.exited


def test_preload_type_check():
    with pytest.raises(TypeError, match="module_names must be a list of strings"):
        rmp.set_forkserver_preload([1])


def test_main_module_preloaded_once(tmp_path):
    marker = tmp_path / "imports.txt"
    script = tmp_path / "main.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, sys, rmp
        with open({str(marker)!r}, "a") as f:
            f.write("%d %s\\n" % (os.getpid(), sys.argv[1:]))
        def f(x):
            sys.exit(x)
        if __name__ == "__main__":
            ctx = rmp.get_context("forkserver")
            codes = []
            for i in range(3):
                p = ctx.Process(target=f, args=(i,))
                p.start()
                p.join()
                codes.append(p.exitcode)
            print(codes)
        """)
    )
    r = subprocess.run(
        [sys.executable, str(script), "an-arg"], capture_output=True, text=True, timeout=90
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[0, 1, 2]"
    lines = marker.read_text().splitlines()
    # The parent, then the fork server once (with the parent's argv), never each child.
    assert len(lines) == 2, lines
    assert all(line.endswith("['an-arg']") for line in lines)


def test_spare_exits_when_its_server_is_killed():
    ctx = rmp.get_context("forkserver")
    server, spares = _server_and_spares(ctx)
    assert len(spares) == 1
    os.kill(server, signal.SIGKILL)
    if not pid_gone(spares[0], 10):
        os.kill(spares[0], signal.SIGKILL)
        pytest.fail("the idle spare outlived its fork server")
    assert _run(ctx, 6) == 6  # and a new server serves again


def test_socket_default_timeout_does_not_reach_rmp_sockets(tmp_path):
    """``socket.setdefaulttimeout()`` in the program must not make the fork server's
    sockets, or a manager connection, time out (CPython's TestTimeouts sets 0.1 s, shorter
    than a server start); in a fresh interpreter, so that the server starts under it."""
    code = textwrap.dedent(
        """
        import socket, rmp
        def child(conn):
            conn.send(123)
        if __name__ == "__main__":
            socket.setdefaulttimeout(0.01)
            ctx = rmp.get_context("forkserver")
            for _ in range(3):
                a, b = ctx.Pipe()
                p = ctx.Process(target=child, args=(b,))
                p.start()
                assert a.poll(60) and a.recv() == 123
                p.join()
                assert p.exitcode == 0, p.exitcode
            with ctx.Manager() as m:
                d = m.dict()
                d["x"] = 1
                assert d.copy() == {"x": 1}
            print("ok")
        """
    )
    script = tmp_path / "default_timeout.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
