"""``rmp.Manager`` and ``rmp.managers``: the stdlib's manager logic running on rmp's
connections, processes and pool (the module docstring of ``rmp.managers`` says how). These
tests check that every type ``SyncManager`` registers works through rmp, under every start
method; that a manager is reachable over TCP from an unrelated process, and refuses a wrong
authkey; that stdlib clients and rmp managers talk to each other both ways; that the references
a killed client held are dropped (rmp's addition); and ``SharedMemoryManager``."""

from __future__ import annotations

import multiprocessing
import multiprocessing.managers as std_managers
import os
import re
import subprocess
import sys
import textwrap
import time
from multiprocessing import shared_memory

import pytest

import rmp
import rmp.connection
import rmp.managers

pytestmark = pytest.mark.timeout(120)


def _square(x):
    return x * x


def _add_in_child(d, lst, q, lock, value):
    with lock:
        d["child"] = value
        lst.append(value)
    q.put(value * 2)


def test_the_module_runs_on_rmp():
    assert rmp.managers.listener_client["pickle"][0] is rmp.connection.Listener
    assert rmp.managers.listener_client["pickle"][1] is rmp.connection.Client
    assert rmp.managers.RemoteError is std_managers.RemoteError
    # The stdlib's own module is untouched.
    assert std_managers.listener_client["pickle"][0] is multiprocessing.connection.Listener
    assert rmp.managers.SyncManager is not std_managers.SyncManager


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_every_registered_type(method):
    ctx = rmp.get_context(method)
    with ctx.Manager() as m:
        assert isinstance(m, rmp.managers.SyncManager)
        assert m._process.__class__.__module__ == "rmp.context"
        d, lst, q, lock = m.dict(), m.list([1]), m.Queue(), m.Lock()
        p = ctx.Process(target=_add_in_child, args=(d, lst, q, lock, 21))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert dict(d) == {"child": 21} and list(lst) == [1, 21] and q.get(timeout=10) == 42
        ns = m.Namespace(a=1)
        ns.b = 2
        assert (ns.a, ns.b) == (1, 2)
        jq = m.JoinableQueue()
        jq.put(1)
        assert jq.get() == 1
        jq.task_done()
        jq.join()
        rl, sem, bsem = m.RLock(), m.Semaphore(2), m.BoundedSemaphore(1)
        with rl, sem, bsem:
            pass
        cond, ev, bar = m.Condition(), m.Event(), m.Barrier(1)
        with cond:
            cond.notify_all()
        ev.set()
        assert ev.is_set() and bar.wait(10) == 0
        v, a = m.Value("i", 3), m.Array("d", [1.0, 2.0])
        v.value += 1
        assert v.value == 4 and list(a) == [1.0, 2.0]
        if hasattr(m, "set"):
            s = m.set([1])
            s.add(2)
            assert s._callmethod("__contains__", (2,))
        pool = m.Pool(2)
        assert pool.map(_square, range(6)) == [x * x for x in range(6)]
        pool.close()
        pool.join()
        # A method the type does not expose: the server refuses it, with the stdlib's
        # error (the very class: `except multiprocessing.managers.RemoteError` catches it).
        with pytest.raises(std_managers.RemoteError, match="no_such_method"):
            d._callmethod("no_such_method")
    assert rmp.active_children() == []


_REMOTE_CLIENT = textwrap.dedent(
    """
    import sys
    from {module} import BaseManager

    class M(BaseManager):
        pass

    M.register("get_store")
    m = M(address=("127.0.0.1", int(sys.argv[1])), authkey=sys.argv[2].encode())
    m.connect()
    store = m.get_store()
    store.update({{"from": "{module}"}})
    print(sorted(store.keys()))
    """
)


def _serve(manager_module, store):
    class M(manager_module.BaseManager):
        pass

    M.register("get_store", callable=lambda: store)
    return M


@pytest.mark.parametrize(
    "server_mod,client_mod",
    [
        ("rmp.managers", "rmp.managers"),
        ("rmp.managers", "multiprocessing.managers"),
        ("multiprocessing.managers", "rmp.managers"),
    ],
)
def test_a_manager_over_tcp_from_an_unrelated_process(server_mod, client_mod):
    """An unrelated interpreter connects with the address and authkey; stdlib and rmp
    managers and clients talk to each other both ways (the same wire protocol)."""
    server_module = rmp.managers if server_mod == "rmp.managers" else std_managers
    store = {}

    class M(server_module.BaseManager):
        pass

    M.register("get_store", callable=lambda: store)
    ctx = rmp.get_context("fork") if server_module is rmp.managers else None
    kwargs = {"ctx": ctx} if ctx is not None else {}
    m = M(address=("127.0.0.1", 0), authkey=b"secret", **kwargs)
    m.start()
    try:
        port = m.address[1]
        out = subprocess.run(
            [sys.executable, "-c", _REMOTE_CLIENT.format(module=client_mod), str(port), "secret"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "['from']"
        # The server's own object was changed by the remote client (through a proxy).
        assert m.get_store().get("from") == client_mod
        # A wrong authkey is refused, and the server keeps serving.
        bad = subprocess.run(
            [sys.executable, "-c", _REMOTE_CLIENT.format(module=client_mod), str(port), "wrong"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode != 0 and "AuthenticationError" in bad.stderr
        assert m.get_store().get("from") == client_mod
    finally:
        m.shutdown()


def test_a_wrong_authkey_in_process_raises_authentication_error():
    with rmp.Manager() as m:

        class M(rmp.managers.BaseManager):
            pass

        client = M(address=m.address, authkey=b"not the key")
        with pytest.raises(multiprocessing.AuthenticationError):
            client.connect()
        assert m.dict() is not None  # still serving


def test_the_xmlrpclib_serializer():
    class M(rmp.managers.BaseManager):
        pass

    store = {}
    M.register("get_store", callable=lambda: store, exposed=("get", "update", "keys"))
    m = M(serializer="xmlrpclib", ctx=rmp.get_context("fork"))
    m.start()
    try:
        proxy = m.get_store()
        proxy.update({"a": 1})
        assert proxy.get("a") == 1
    finally:
        m.shutdown()
    assert rmp.active_children() == []


_REFCOUNT = re.compile(r"(\w+):\s+refcount=(\d+)")


def _refcounts(m):
    """The server's reference count of each object, from its debug_info()."""
    return {ident: int(n) for ident, n in _REFCOUNT.findall(m._debug_info())}


def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# The proxy travels by queue: a proxy a spawned child unpickles with its Process object does
# not count a reference of its own (the stdlib relies on the parent's), one unpickled later does.
def _hold(q, ready):
    d = q.get(timeout=60)
    d["held by"] = os.getpid()
    ready.set()
    time.sleep(120)


def _touch(q):
    d = q.get(timeout=60)
    d["touched by"] = os.getpid()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_killed_childs_references_are_dropped_and_only_those(method):
    """The stdlib's server keeps the references of a client that died without its decrefs
    until the manager shuts down; rmp's drops them when the process dies. A child that exits
    normally decrefs as usual and nothing is dropped twice; a live child's references stay."""
    ctx = rmp.get_context(method)
    with ctx.Manager() as m:
        d = m.dict()
        ident = d._id
        assert _refcounts(m) == {ident: 1}
        q = ctx.Queue()
        p = ctx.Process(target=_touch, args=(q,))
        p.start()
        q.put(d)
        p.join(60)
        assert p.exitcode == 0 and d["touched by"] == p.pid
        time.sleep(0.3)  # room for a wrong second drop, were there one
        assert _refcounts(m) == {ident: 1}

        ready = ctx.Event()
        p = ctx.Process(target=_hold, args=(q, ready))
        p.start()
        q.put(d)
        try:
            assert ready.wait(60)
            held = _refcounts(m)[ident]
            assert held == (3 if method == "fork" else 2)  # a fork child also counts its copy
            time.sleep(0.3)
            assert _refcounts(m) == {ident: held}  # alive: kept
            p.kill()
            p.join(30)
            assert p.exitcode == -9
            assert _wait_for(lambda: _refcounts(m) == {ident: 1}), _refcounts(m)
            assert d["held by"] == p.pid  # the parent's proxy still works
        finally:
            if p.is_alive():
                p.kill()
                p.join(30)
        q.close()
        q.join_thread()
        del d
        assert _wait_for(lambda: m._number_of_objects() == 0)


_CRASHING_CLIENT = textwrap.dedent(
    """
    import os, sys
    from {module} import SyncManager
    m = SyncManager(address=sys.argv[1], authkey=bytes.fromhex(sys.argv[2]))
    m.connect()
    dicts = [m.dict(i=i) for i in range(5)]
    nested = m.list([dicts[0], m.Lock()])
    q = m.Queue()
    q.put(nested)
    print(m._number_of_objects(), flush=True)
    os.kill(os.getpid(), 9)
    """
)


@pytest.mark.parametrize("client_mod", ["rmp.managers", "multiprocessing.managers"])
def test_an_unrelated_clients_objects_are_freed_when_it_is_killed(client_mod):
    """Objects an unrelated interpreter created through a Unix-socket connection (rmp's or
    the stdlib's client) are freed when it is SIGKILLed, nested proxies included."""
    with rmp.Manager() as m:
        keep = m.list([1])
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                _CRASHING_CLIENT.format(module=client_mod),
                m.address,
                bytes(m._authkey).hex(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == -9, out.stderr
        # keep, five dicts, the list, the queue (the lock lives on inside the list, where the
        # server keeps it without counting it, as the stdlib does)
        assert int(out.stdout) == 8
        assert _wait_for(lambda: m._number_of_objects() == 1), m._debug_info()
        assert list(keep) == [1]


_CRASHING_TCP_CLIENT = textwrap.dedent(
    """
    import os, sys
    from {module} import BaseManager

    class M(BaseManager):
        pass

    M.register("Store")
    m = M(address=("127.0.0.1", int(sys.argv[1])), authkey=b"tcp")
    m.connect()
    stores = [m.Store() for _ in range(5)]
    if os.fork() == 0:  # a child holding its own references too, then killed
        extra = m.Store()
        os.kill(os.getpid(), 9)
    os.wait()
    print(len(stores), flush=True)
    os.kill(os.getpid(), 9)
    """
)


@pytest.mark.parametrize("client_mod", ["rmp.managers", "multiprocessing.managers"])
def test_a_tcp_clients_objects_are_freed_when_it_is_killed(client_mod):
    """Over TCP the server cannot see a client's pid: an rmp client holds a lifeline
    connection instead (one per process, a forked child its own), and its references are
    dropped when that closes. A stdlib client has no lifeline: its references are counted
    as the stdlib counts them, and stay."""

    class M(rmp.managers.BaseManager):
        pass

    M.register("Store", dict)
    m = M(address=("127.0.0.1", 0), authkey=b"tcp", ctx=rmp.get_context("fork"))
    m.start()
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                _CRASHING_TCP_CLIENT.format(module=client_mod),
                str(m.address[1]),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == -9, out.stderr
        assert out.stdout.strip() == "5"
        if client_mod == "rmp.managers":
            assert _wait_for(lambda: m._number_of_objects() == 0), m._debug_info()
        else:
            time.sleep(0.3)
            assert m._number_of_objects() == 6  # the stdlib's behaviour, kept for its clients
        # The server keeps serving.
        s = m.Store()
        s.update(a=1)
        assert s.get("a") == 1
    finally:
        m.shutdown()


_RESTART_CLIENT = textwrap.dedent(
    """
    import os, sys
    from rmp.managers import BaseManager

    class M(BaseManager):
        pass

    M.register("Store")
    port = int(sys.argv[1])
    first = M(address=("127.0.0.1", port), authkey=b"tcp")
    first.connect()
    kept = first.Store()
    print("ready", flush=True)
    sys.stdin.readline()  # the manager was restarted at the same address
    second = M(address=("127.0.0.1", port), authkey=b"tcp")
    second.connect()
    stores = [second.Store() for _ in range(3)]
    print(len(stores), flush=True)
    os.kill(os.getpid(), 9)
    """
)


def test_a_tcp_client_makes_a_new_lifeline_to_a_restarted_manager():
    class M(rmp.managers.BaseManager):
        pass

    M.register("Store", dict)
    m = M(address=("127.0.0.1", 0), authkey=b"tcp", ctx=rmp.get_context("fork"))
    m.start()
    port = m.address[1]
    client = subprocess.Popen(
        [sys.executable, "-c", _RESTART_CLIENT, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout.readline().strip() == "ready"
        m.shutdown()
        m = M(address=("127.0.0.1", port), authkey=b"tcp", ctx=rmp.get_context("fork"))
        m.start()
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "3"
        assert client.wait(60) == -9
        assert _wait_for(lambda: m._number_of_objects() == 0), m._debug_info()
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(30)
        client.stdin.close()
        client.stdout.close()
        m.shutdown()


def _write_segments(shm_name, sl_name):
    shm = shared_memory.SharedMemory(shm_name)
    shm.buf[:5] = b"hello"
    shm.close()
    sl = shared_memory.ShareableList(name=sl_name)
    sl[0] = 99
    sl.shm.close()


def _segment_exists(name):
    return os.path.exists("/dev/shm/" + name.lstrip("/"))


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_shared_memory_manager(method):
    """``SharedMemoryManager`` runs its server in an rmp process; the segments it hands out
    are shared with children by name and unlinked when the manager shuts down."""
    ctx = rmp.get_context(method)
    with rmp.managers.SharedMemoryManager(ctx=ctx) as smm:
        assert smm._process.__class__.__module__ == "rmp.context"
        shm = smm.SharedMemory(64)
        sl = smm.ShareableList([1, "two", 3.0])
        names = [shm.name, sl.shm.name]
        assert all(_segment_exists(n) for n in names)
        p = ctx.Process(target=_write_segments, args=tuple(names))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert bytes(shm.buf[:5]) == b"hello" and list(sl) == [99, "two", 3.0]
        shm.close()
        sl.shm.close()
    assert not any(_segment_exists(n) for n in names)
    assert rmp.active_children() == []


_COUNTER_SERVER = textwrap.dedent(
    """
    import sys
    from rmp.managers import BaseManager

    class Counter:
        def __init__(self, start=0):
            self.n = start

        def add(self, k):
            self.n += k
            return self.n

        def spawn_child(self):
            return Counter(100)

        def _private(self):
            return "hidden"

    class M(BaseManager):
        pass

    M.register("Counter", Counter, method_to_typeid={"spawn_child": "SubCounter"})
    # The type of what a method returns: no callable (the server proxies that object).
    M.register("SubCounter", None, create_method=False)
    server = M(address=("127.0.0.1", 0), authkey=b"k").get_server()
    print(server.address[1], flush=True)
    server.serve_forever()
    """
)


class _CounterClient(rmp.managers.BaseManager):
    pass


_CounterClient.register("Counter")
_CounterClient.register("SubCounter", create_method=False)  # a proxy a method returns


def _count_in_child(counter, k):
    counter.add(k)


def test_a_custom_manager_served_by_get_server_serve_forever():
    """An unrelated interpreter serves with ``get_server().serve_forever()``: an
    ``AutoProxy`` of a registered class, a method returning a proxy (``method_to_typeid``), a
    private method refused, and children (under each start method) reconnecting through a
    pickled proxy."""
    server = subprocess.Popen(
        [sys.executable, "-c", _COUNTER_SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(server.stdout.readline())
        client = _CounterClient(address=("127.0.0.1", port), authkey=b"k")
        client.connect()
        c = client.Counter(5)
        assert type(c).__name__ == "AutoProxy[Counter]"
        assert c.add(2) == 7
        sub = c.spawn_child()
        assert type(sub).__name__ == "AutoProxy[SubCounter]" and sub.add(1) == 101
        with pytest.raises(AttributeError):
            c._private()
        for method in ("fork", "spawn", "forkserver"):
            ctx = rmp.get_context(method)
            p = ctx.Process(target=_count_in_child, args=(c, 10))
            p.start()
            p.join(60)
            assert p.exitcode == 0
        assert c.add(0) == 37
    finally:
        server.kill()
        server.wait(30)
        server.stdout.close()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="shutdown_timeout is new in 3.11")
def test_shutdown_timeout_where_the_running_python_has_it():
    m = rmp.managers.SyncManager(shutdown_timeout=5.0)
    assert m._shutdown_timeout == 5.0
    m.start()
    d = m.dict(a=1)
    assert d["a"] == 1
    m.shutdown()
    assert m._process.exitcode == 0
