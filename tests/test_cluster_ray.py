"""The Pool API on a real local Ray cluster (``rmp.get_context("ray").Pool``): results and
errors as the local pool gives them, the example programs giving the same output on both,
and the fault behaviour (a worker killed mid-task, task_timeout, a failing initializer,
terminate) never hanging the driver.

The cluster (``ray.init(num_cpus=2)``) starts once for this module. These tests run after
every other (conftest.py moves them last): once a Ray driver runs in this process, forking
it is not something the other tests should have to live with. Skipped when Ray is not
installed, unless ``RMP_REQUIRE_RAY=1`` (CI sets it), which makes that a failure.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

if os.environ.get("RMP_REQUIRE_RAY") == "1":
    import ray
else:
    ray = pytest.importorskip("ray")

import rmp
from rmp.pool import TaskTimeoutError, WorkerLostError

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

HERE = pathlib.Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
_RAY_LINE = re.compile(r"^\x1b\[\d+m\(")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance with two CPUs whose workers can import this module; yields its
    address for other drivers."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}},
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def ctx(cluster):
    return rmp.get_context("ray")


# -- task functions (imported by reference in the workers) ----------------------------------

_STATE = None


def _init(value):
    global _STATE
    _STATE = value


def _state(_):
    return _STATE


def _square(x):
    return x * x


def _pid(_=None):
    return os.getpid()


def _sleep_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def _fail_on(x, bad=3):
    if x == bad:
        raise KeyError("bad item %d" % x)
    return x


def _die_on(x, bad=3):
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def _raise_in_init():
    raise ZeroDivisionError("initializer failed on purpose")


def _length(data):
    return len(data)


def _make(n):
    return b"r" * n


# -- the API -----------------------------------------------------------------------------


def test_the_pool_api_gives_the_local_results(ctx):
    items = list(range(40))
    with ctx.Pool(2) as pool, rmp.Pool(2) as local:
        assert pool.map(_square, items) == local.map(_square, items)
        assert pool.map(_square, items, chunksize=7) == [x * x for x in items]
        assert pool.starmap(pow, [(2, 3), (3, 2), (5, 0)]) == [8, 9, 1]
        assert pool.apply(divmod, (17, 5)) == (3, 2)
        assert pool.apply(dict, (), {"a": 1}) == {"a": 1}
        assert list(pool.imap(_square, items)) == [x * x for x in items]
        assert list(pool.imap(_square, iter(items), chunksize=4)) == [x * x for x in items]
        assert sorted(pool.imap_unordered(_square, items, chunksize=3)) == [x * x for x in items]
        assert pool.map_async(_square, items).get(60) == [x * x for x in items]
        assert pool.starmap_async(pow, [(2, 2)]).get(60) == [4]
        assert pool.map(_square, []) == []
        assert list(pool.imap(_square, [])) == []


def test_callbacks_run_on_the_driver(ctx):
    got, errors = [], []
    done = threading.Event()
    with ctx.Pool(2) as pool:
        pool.apply_async(_square, (6,), callback=got.append)
        pool.map_async(_square, [1, 2], callback=got.append)
        r = pool.map_async(_fail_on, range(5), error_callback=errors.append)
        pool.apply_async(_fail_on, (3,), error_callback=lambda e: done.set())
        with pytest.raises(KeyError):
            r.get(60)
        assert done.wait(60)
        deadline = time.monotonic() + 60
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert sorted(got, key=str) == [36, [1, 4]]
    assert len(errors) == 1 and isinstance(errors[0], KeyError)


def test_exceptions_carry_the_worker_traceback(ctx):
    with ctx.Pool(2) as pool:
        with pytest.raises(KeyError) as info:
            pool.map(_fail_on, range(6))
        cause = info.value.__cause__
        assert type(cause).__name__ == "RemoteTraceback"
        assert "_fail_on" in str(cause) and "bad item 3" in str(cause)
        # The pool goes on.
        assert pool.apply(_square, (9,)) == 81
        it = pool.imap(_fail_on, range(5))
        assert [next(it), next(it), next(it)] == [0, 1, 2]
        with pytest.raises(KeyError):
            next(it)
        assert list(it) == [4]


def test_initializer_state_is_seen_by_the_tasks(ctx):
    with ctx.Pool(2, initializer=_init, initargs=("ready",)) as pool:
        assert pool.map(_state, range(6), chunksize=1) == ["ready"] * 6


def test_unpicklable_argument_raises_at_the_call_site(ctx):
    with ctx.Pool(1) as pool:
        with pytest.raises(TypeError):
            pool.apply_async(_length, (threading.Lock(),))
        with pytest.raises(TypeError):
            pool.map(_length, [[1], threading.Lock()])
        assert pool.map(_length, [[1], [1, 2]]) == [1, 2]


def test_large_arguments_and_results_round_trip(ctx):
    big = os.urandom(4 << 20)
    with ctx.Pool(2) as pool:
        assert pool.apply(_length, (big,)) == len(big)
        out = pool.map(_make, [3 << 20, 10])
        assert [len(x) for x in out] == [3 << 20, 10] and out[1] == b"r" * 10


def test_maxtasksperchild_replaces_workers(ctx):
    with ctx.Pool(2, maxtasksperchild=1) as pool:
        pids = pool.map(_pid, range(6), chunksize=1)
    assert len(set(pids)) == 6  # one task per actor: six actors


def test_lambdas_and_closures_travel_by_value(ctx):
    k = 7
    with ctx.Pool(2) as pool:
        assert pool.map(lambda x: x + k, [1, 2]) == [8, 9]


def test_progress_and_buffersize_extras(ctx, capsys):
    with ctx.Pool(2) as pool:
        assert pool.map(_square, range(10), progress="squares") == [x * x for x in range(10)]
        it = pool.imap(_square, iter(range(20)), buffersize=2)
        assert list(it) == [x * x for x in range(20)]
    assert "squares" in capsys.readouterr().err


def test_pool_state_errors_match_the_local_pool(ctx):
    pool = ctx.Pool(1)
    with pytest.raises(ValueError, match="Pool is still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply(_square, (1,))
    pool.join()
    with pytest.raises(ValueError, match="Number of processes must be at least 1"):
        ctx.Pool(0)
    with pytest.raises(NotImplementedError):
        import pickle

        pickle.dumps(ctx.Pool(1))


# -- faults --------------------------------------------------------------------------------


def test_a_worker_killed_mid_task_fails_that_task_and_the_map_goes_on(ctx):
    with ctx.Pool(2) as pool:
        out = []
        it = pool.imap(_die_on, range(6))
        for _ in range(6):
            try:
                out.append(next(it, "end"))
            except WorkerLostError as e:
                assert "died while running task 3" in str(e)
                assert e.pid is not None
                out.append("lost")
        assert out == [0, 1, 2, "lost", 4, 5]
        with pytest.raises(WorkerLostError):
            pool.map(_die_on, range(6), chunksize=1)
        assert pool.map(_square, range(4)) == [0, 1, 4, 9]


def _report_and_sleep(path, seconds):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)


def test_a_worker_killed_from_outside_fails_its_task_only(ctx, tmp_path):
    report = tmp_path / "pid"
    with ctx.Pool(2) as pool:
        idle = set(pool.map(_pid, range(8), chunksize=1))
        slow = pool.apply_async(_report_and_sleep, (str(report), 60))
        deadline = time.monotonic() + 60
        while not report.exists() or not report.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        busy = int(report.read_text())
        os.kill(busy, signal.SIGKILL)
        for p in idle - {busy}:
            os.kill(p, signal.SIGKILL)  # an idle worker dies too: no task of its is lost
        with pytest.raises(WorkerLostError, match="worker %d .* died while running" % busy):
            slow.get(60)
        assert pool.map(_square, range(8), chunksize=1) == [x * x for x in range(8)]


def test_task_timeout_fails_the_task_and_replaces_the_worker(ctx):
    with ctx.Pool(2, task_timeout=1.0) as pool:
        slow = pool.apply_async(_sleep_pid, (30,))
        fast = [pool.apply_async(_sleep_pid, (0.05,)) for _ in range(4)]
        with pytest.raises(TaskTimeoutError, match="task_timeout=1s"):
            slow.get(60)
        assert all(isinstance(r.get(60), int) for r in fast)
        assert pool.apply(_square, (3,)) == 9


def test_a_failing_initializer_fails_pending_work_instead_of_hanging(ctx):
    pool = ctx.Pool(2, initializer=_raise_in_init)
    try:
        with pytest.raises(WorkerLostError, match="initializer failed on purpose"):
            pool.apply(_square, (2,))
    finally:
        pool.terminate()
        pool.join()


def test_terminate_fails_pending_results(ctx):
    pool = ctx.Pool(1)
    r = pool.apply_async(_sleep_pid, (60,))
    time.sleep(0.5)
    pool.terminate()
    pool.join()
    with pytest.raises(WorkerLostError, match="terminated"):
        r.get(10)


def test_close_then_join_finishes_the_queued_work(ctx):
    pool = ctx.Pool(2)
    r = pool.map_async(_sleep_pid, [0.2] * 6, chunksize=1)
    pool.close()
    pool.join()
    assert r.ready() and len(r.get()) == 6


# -- the same programs, local and on the cluster --------------------------------------------


def _script_run(cluster, path, *args, cwd=None, backend="ray"):
    """Runs a program (``path``, or ``python *args``) with ``RMP_POOL_BACKEND=backend`` as a
    driver of the module's cluster; the lines of its stdout once it exited 0, without what Ray
    forwards there from its daemons (a worker's death...), each under a colored
    "(raylet)"-style prefix."""
    env = dict(os.environ, RMP_POOL_BACKEND=backend, RAY_ADDRESS=cluster)
    out = subprocess.run(
        [sys.executable, *args, str(path)] if path else [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=cwd,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [line for line in out.stdout.splitlines() if not _RAY_LINE.match(line)]


@pytest.mark.parametrize("name", ["pool_tasks.py", "pool_worker_crash.py"])
def test_examples_give_the_same_output_on_the_cluster(cluster, name):
    local = _script_run(cluster, EXAMPLES / name, cwd=EXAMPLES, backend="local")
    on_ray = _script_run(cluster, EXAMPLES / name, cwd=EXAMPLES)
    assert on_ray == local
    assert local


def test_work_fails_when_no_worker_can_start(ctx):
    # Actors asking for a resource the cluster does not have are never placed.
    pool = ctx.Pool(1, ray_remote_args={"resources": {"no-such-resource": 1}})
    pool.start_timeout = 2.0
    try:
        with pytest.raises(WorkerLostError, match="no worker of this Ray pool became ready"):
            pool.apply(_square, (2,))
    finally:
        pool.terminate()
        pool.join()


def test_a_script_that_makes_its_pool_unguarded_gets_an_error_not_a_hang(cluster, tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import rmp\n"
        "def f(x):\n"
        "    return x * x\n"
        "pool = rmp.Pool(1)\n"  # runs again in every worker that imports the script
        "try:\n"
        "    print(pool.map(f, range(4)))\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
        "pool.terminate()\n"
    )
    out = _script_run(cluster, script, cwd=tmp_path)
    # The worker imports the script when it unpickles f: making a pool there raises, and
    # the task fails with that error.
    text = "\n".join(out)
    assert "RuntimeError" in text and "if __name__ == '__main__'" in text


def test_a_main_script_without_py_suffix(cluster, tmp_path):
    # As a console script (``pytest``, an entry point) is: the workers import it all the same.
    script = tmp_path / "tool"
    script.write_text(
        "import rmp\n"
        "BASE = 100\n"
        "def init(extra):\n"
        "    global BASE\n"
        "    BASE += extra\n"
        "def f(x):\n"
        "    return BASE + x\n"
        "if __name__ == '__main__':\n"
        "    with rmp.Pool(2, initializer=init, initargs=(1000,)) as pool:\n"
        "        print(pool.map(f, range(3)))\n"
    )
    out = _script_run(cluster, script, cwd=tmp_path)
    assert out[-1] == "[1100, 1101, 1102]"


def test_a_module_run_with_dash_m(cluster, tmp_path):
    pkg = tmp_path / "pkgdemo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    (pkg / "main.py").write_text(
        "import rmp\n"
        "from .helpers import double\n"
        "def work(x):\n"
        "    return double(x) + 1\n"
        "if __name__ == '__main__':\n"
        "    with rmp.Pool(2) as pool:\n"
        "        print(pool.map(work, range(5)))\n"
    )
    out = _script_run(cluster, None, "-m", "pkgdemo.main", cwd=tmp_path)
    assert out[-1] == "[1, 3, 5, 7, 9]"
