"""rmp.Process against the stdlib's, under every start method (``ctx`` runs each test body
for ``multiprocessing`` and ``rmp``), plus rmp-specific guarantees: pidfd sentinels, waits that
release the GIL and answer Ctrl-C, the stdlib's shared process registry."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from _helpers import pid_gone, run_counting_other_thread

import rmp

pytestmark = pytest.mark.timeout(120)


# Module-level targets: spawn and forkserver children import them by name.
def _noop():
    pass


def _exit_with(code):
    sys.exit(code)


def _raise():
    raise ValueError("boom in child")


def _sleep(seconds):
    time.sleep(seconds)


def _report_identity(q, parent_pid):
    q.put(
        (
            multiprocessing.current_process().name,
            rmp.current_process().name,
            multiprocessing.current_process() is rmp.current_process(),
            rmp.parent_process().pid == parent_pid,
            multiprocessing.parent_process() is rmp.parent_process(),
            os.getpid(),
        )
    )


def _start_grandchild(method):
    p = rmp.get_context(method).Process(target=_noop)
    try:
        p.start()
    except AssertionError as e:
        sys.exit(7 if "daemonic processes are not allowed" in str(e) else 8)
    p.join()
    sys.exit(0)


class _Subclassed(rmp.Process):
    def __init__(self, code):
        super().__init__()
        self.code = code

    def run(self):
        sys.exit(self.code)


def test_start_join_exitcode(ctx):
    p = ctx.Process(target=_exit_with, args=(5,), name="worker")
    assert p.exitcode is None and p.pid is None and not p.is_alive()
    assert "initial" in repr(p)
    p.start()
    assert isinstance(p.pid, int) and p.pid == p.ident
    p.join(30)
    assert p.exitcode == 5
    assert not p.is_alive()
    assert p.name == "worker"
    assert "stopped" in repr(p) and "exitcode=5" in repr(p)
    assert p not in ctx.active_children()


def test_exception_prints_traceback_and_exits_1(ctx, capfd, start_method):
    p = ctx.Process(target=_raise)
    p.start()
    p.join(30)
    assert p.exitcode == 1
    if start_method == "forkserver":
        return  # its children write to the server's stderr, captured by whichever test began it
    err = capfd.readouterr().err
    assert "Traceback" in err and "ValueError: boom in child" in err
    assert f"Process {p.name}:" in err


def test_signal_exitcodes(ctx):
    p = ctx.Process(target=_sleep, args=(60,))
    p.start()
    p.terminate()
    p.join(30)
    assert p.exitcode == -signal.SIGTERM
    assert "exitcode=-SIGTERM" in repr(p)
    p = ctx.Process(target=_sleep, args=(60,))
    p.start()
    p.kill()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL


def test_join_timeout_then_alive(ctx):
    p = ctx.Process(target=_sleep, args=(60,), daemon=True)
    p.start()
    t0 = time.monotonic()
    p.join(0.3)
    assert time.monotonic() - t0 >= 0.29  # never returns before the timeout
    assert p.is_alive() and p.exitcode is None
    p.kill()
    p.join(30)


def test_misuse_errors(ctx):
    p = ctx.Process(target=_sleep, args=(60,))
    with pytest.raises(AssertionError, match="can only join a started process"):
        p.join()
    with pytest.raises(ValueError, match="process not started"):
        p.sentinel  # noqa: B018
    p.start()
    with pytest.raises(AssertionError, match="cannot start a process twice"):
        p.start()
    with pytest.raises(ValueError, match="Cannot close a process while it is still running"):
        p.close()
    with pytest.raises(AssertionError, match="process has already started"):
        p.daemon = True
    p.kill()
    p.join(30)
    p.close()
    with pytest.raises(ValueError, match="process object is closed"):
        p.is_alive()
    assert "closed" in repr(p)
    with pytest.raises(AssertionError):
        ctx.Process(group=object())


def test_daemon_cannot_have_children(rctx, start_method):
    p = rctx.Process(target=_start_grandchild, args=(start_method,), daemon=True)
    p.start()
    p.join(60)
    assert p.exitcode == 7


def test_subclass_run(rctx):
    p = _Subclassed(3)
    p.start()
    p.join(30)
    assert p.exitcode == 3


def test_registry_is_shared_with_stdlib(rctx):
    q = multiprocessing.get_context("spawn").SimpleQueue()
    p = rctx.Process(target=_report_identity, args=(q, os.getpid()))
    p.start()
    std_name, rmp_name, same, parent_ok, same_parent, pid = q.get()
    p.join(30)
    assert p.exitcode == 0
    assert std_name == rmp_name == p.name
    assert same and parent_ok and same_parent
    assert pid == p.pid
    # The parent's registry is the stdlib's too.
    assert multiprocessing.current_process() is rmp.current_process()
    q.close()


def _put_into(q, value):
    q.put(value)


def test_stdlib_queue_passes_through_rmp_child(rctx, start_method):
    std_ctx = multiprocessing.get_context("fork" if start_method == "fork" else "spawn")
    q = std_ctx.Queue()
    p = rctx.Process(target=_put_into, args=(q, {"via": start_method}))
    p.start()
    assert q.get(timeout=60) == {"via": start_method}
    p.join(30)
    assert p.exitcode == 0
    q.close()
    q.join_thread()


def test_sentinel_works_with_connection_wait(rctx):
    p = rctx.Process(target=_sleep, args=(0.2,))
    p.start()
    ready = multiprocessing.connection.wait([p.sentinel], timeout=60)
    assert ready == [p.sentinel]
    p.join(30)
    assert p.exitcode == 0


def test_join_releases_the_gil(rctx):
    p = rctx.Process(target=_sleep, args=(1.0,))
    p.start()
    _, during = run_counting_other_thread(lambda: p.join(60))
    assert p.exitcode == 0
    # Had join held the GIL for its second, the spinning thread could not have run at all.
    assert during > 10_000


def test_sigint_interrupts_join(rctx):
    p = rctx.Process(target=_sleep, args=(60,))
    p.start()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            p.join()
    finally:
        timer.join()
        p.kill()
        p.join(30)
    assert p.exitcode == -signal.SIGKILL


def _run_script(tmp_path, body, timeout=90):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(tmp_path),
    )


def test_daemon_children_terminated_at_exit(tmp_path, start_method):
    r = _run_script(
        tmp_path,
        f"""
        import time, rmp
        def sleep():
            time.sleep(60)
        if __name__ == "__main__":
            p = rmp.get_context({start_method!r}).Process(target=sleep, daemon=True)
            p.start()
            print(p.pid, flush=True)
    """,
    )
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("daemonic child survived its parent's exit")


def test_missing_main_guard_gives_stdlibs_error(tmp_path):
    r = _run_script(
        tmp_path,
        """
        import rmp
        def f():
            pass
        p = rmp.get_context("spawn").Process(target=f)
        p.start()
        p.join()
    """,
    )
    assert "An attempt has been made to start a new process before" in r.stderr
    assert r.stderr.count("An attempt has been made") <= 2  # no fork bomb


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_get_context_and_start_method(method):
    ctx = rmp.get_context(method)
    assert ctx.get_start_method() == method
    with pytest.raises(ValueError, match="cannot set start method of concrete context"):
        ctx.set_start_method("spawn")
    with pytest.raises(ValueError, match="cannot find context for 'nope'"):
        rmp.get_context("nope")


def test_cpu_count_and_logger():
    assert rmp.cpu_count() == multiprocessing.cpu_count()
    assert rmp.get_logger() is multiprocessing.get_logger()


@pytest.mark.parametrize("from_thread", [False, True], ids=["main-thread", "other-thread"])
def test_daemonic_child_dies_with_sigkilled_parent(tmp_path, start_method, from_thread):
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(f"""
        import threading, time, rmp
        def sleep():
            time.sleep(60)
        def start():
            p = rmp.get_context({start_method!r}).Process(target=sleep, daemon=True)
            p.start()
            print(p.pid, flush=True)
        if __name__ == "__main__":
            if {from_thread!r}:
                t = threading.Thread(target=start)
                t.start()
                t.join()
            else:
                start()
            time.sleep(60)
        """)
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())
        assert not pid_gone(child_pid, 0.2), "child died too early"
        parent.kill()
        parent.wait(30)
        ok = pid_gone(child_pid, 15)
        if not ok:
            os.kill(child_pid, signal.SIGKILL)
        assert ok, "daemonic child outlived its SIGKILLed parent (orphan)"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(30)
        parent.stdout.close()


def test_default_start_method_is_shared_with_stdlib(tmp_path):
    r = _run_script(
        tmp_path,
        """
        import multiprocessing, rmp
        def f():
            pass
        if __name__ == "__main__":
            assert rmp.get_start_method(allow_none=True) is None
            rmp.set_start_method("spawn")
            assert multiprocessing.get_start_method() == "spawn"
            assert rmp.get_context() is rmp.get_context("spawn")
            try:
                multiprocessing.set_start_method("fork")
            except RuntimeError as e:
                assert "context has already been set" in str(e)
            else:
                raise AssertionError("set twice")
            rmp.set_start_method("forkserver", force=True)
            assert multiprocessing.get_start_method() == "forkserver"
            p = rmp.Process(target=f)
            p.start()
            p.join()
            assert p.exitcode == 0 and type(p._popen).__module__ == "rmp.popen_forkserver"
            print("ok")
        """,
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def _report_method(q):
    q.put((multiprocessing.get_start_method(), rmp.get_start_method()))


def test_child_knows_its_start_method(rctx, start_method):
    q = multiprocessing.get_context("spawn").SimpleQueue()
    p = rctx.Process(target=_report_method, args=(q,))
    p.start()
    assert q.get() == (start_method, start_method)
    p.join(30)
    q.close()


def _check_parent(q):
    parent = rmp.parent_process()
    t0 = time.monotonic()
    parent.join(0.2)  # the parent is alive: join must time out, not return at once
    q.put((parent.name, parent.pid, parent.is_alive(), time.monotonic() - t0 >= 0.19))


def test_parent_process_in_child(rctx):
    q = multiprocessing.get_context("spawn").SimpleQueue()
    p = rctx.Process(target=_check_parent, args=(q,))
    p.start()
    name, pid, alive, waited = q.get()
    p.join(30)
    q.close()
    assert (name, pid, alive, waited) == ("MainProcess", os.getpid(), True, True)
    assert rmp.parent_process() is None


def _use_proxies(d, lst):
    d["child"] = os.getpid()
    lst.append("from child")


def test_stdlib_manager_proxies_pass_through_rmp_child(rctx):
    # Proxies send their authkey only while the stdlib's spawning popen is set (rmp sets it
    # while it pickles a child's data) and reconnect to the manager from the child.
    with multiprocessing.get_context("spawn").Manager() as manager:
        d = manager.dict()
        lst = manager.list()
        p = rctx.Process(target=_use_proxies, args=(d, lst))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert d["child"] == p.pid
        assert list(lst) == ["from child"]


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_set_executable(tmp_path, method):
    # A wrapper that marks the environment, then runs the real interpreter (a bare symlink
    # would lose a virtualenv, whose pyvenv.cfg is found next to the executable).
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text('#!/bin/sh\nRMP_VIA_WRAPPER=1 exec "%s" "$@"\n' % sys.executable)
    wrapper.chmod(0o755)
    r = _run_script(
        tmp_path,
        f"""
        import os, sys, rmp
        def f():
            sys.exit(0 if os.environ.get("RMP_VIA_WRAPPER") == "1" else 3)
        if __name__ == "__main__":
            rmp.set_executable({str(wrapper)!r})
            p = rmp.get_context({method!r}).Process(target=f)
            p.start()
            p.join()
            print(p.exitcode)
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"


def test_log_to_stderr_is_the_stdlib_logger(capfd):
    import logging

    logger = rmp.log_to_stderr(logging.INFO)
    try:
        assert logger is multiprocessing.get_logger()
        p = rmp.get_context("fork").Process(target=_noop)
        p.start()
        p.join(30)
        err = capfd.readouterr().err
        assert "child process calling self.run()" in err
        assert "process exiting with exitcode 0" in err
    finally:
        logger.setLevel(logging.NOTSET)
        for h in list(logger.handlers):
            logger.removeHandler(h)
        multiprocessing.util._log_to_stderr = False


@pytest.mark.parametrize("method", ["fork", "spawn"])  # a fork server's children are not ours
def test_child_reaped_elsewhere_gives_none_like_stdlib(method):
    p = rmp.get_context(method).Process(target=_noop)
    p.start()
    os.waitpid(p.pid, 0)  # someone else reaps it
    p.join(30)
    assert p.exitcode is None
    assert not p.is_alive() or p.exitcode is None


def test_os_errors_carry_errno_and_subclass():
    import rmp._core

    with pytest.raises(ProcessLookupError) as info:
        rmp._core.ProcessHandle(2**22 + 12345)  # no such pid
    assert info.value.errno == 3


def _register_atexit_writer(path):
    import atexit

    def write():
        with open(path, "w") as f:
            f.write("ran")

    atexit.register(write)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_child_atexit_handlers_follow_the_running_python(method, tmp_path):
    """From 3.13 (gh-83856) a child runs the ``atexit`` handlers it registered, whatever the
    start method; before, only spawned children did (forked ones left through os._exit)."""
    import multiprocessing.popen_fork as std_popen_fork

    path = tmp_path / "out.txt"
    p = rmp.get_context(method).Process(target=_register_atexit_writer, args=(str(path),))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    runs_them = method == "spawn" or "atexit" in vars(std_popen_fork)
    assert path.exists() == runs_them
