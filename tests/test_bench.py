"""Tests of the benchmark runner ``benches/run.py``, run as a subprocess as a person would.

What: the deliberately faulty implementations ``broken`` (wrong exit codes) and ``hang`` (never
returns, with a child of its own) must show FAILED and TIMEOUT instead of numbers, the hung
worker's whole process group must be gone afterwards, and one quick real run must produce a
ratio row for rmp and parseable ``--json`` and ``--markdown`` output.

Why: a benchmark that prints a number for a wrong or hung run is worse than none.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time

import pytest

RUN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benches", "run.py")


def _run(*args, env=None, timeout=150):
    return subprocess.run(
        [sys.executable, RUN, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.timeout(60)
def test_list_names_scenarios_floors_and_test_only_impls():
    proc = _run("--list", timeout=50)
    assert proc.returncode == 0, proc.stderr
    for name in (
        "process_start.fork",
        "process_start.spawn",
        "process_start.forkserver",
        "process_start.batch_100",
        "floor.python_startup",
        "floor.futex_rtt",
    ):
        assert name in proc.stdout
    assert re.search(r"^\s+broken\s+\S+\s+on request", proc.stdout, re.M)
    assert re.search(r"^\s+hang\s+\S+\s+on request", proc.stdout, re.M)


@pytest.mark.timeout(120)
def test_wrong_result_is_reported_as_failed():
    proc = _run(
        "--quick", "--repeat", "1", "--impl", "broken", "--scenario", "process_start.fork",
        "--no-floors", timeout=110,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    row = re.search(r"^(?:\(per process\))?\s+broken\s+(\S+)", proc.stdout, re.M)
    assert row and row.group(1) == "FAILED", proc.stdout
    # the stdlib baseline still gets its number
    assert re.search(r"^process_start\.fork\s+stdlib\s+[\d.]+ [mu]?s", proc.stdout, re.M)


@pytest.mark.timeout(120)
def test_hang_is_killed_with_its_group_and_reported_as_timeout(tmp_path):
    pidfile = tmp_path / "hang.pid"
    env = dict(os.environ, RMP_BENCH_HANG_PIDFILE=str(pidfile))
    t0 = time.monotonic()
    proc = _run(
        "--quick", "--repeat", "2", "--impl", "hang", "--scenario", "process_start.fork",
        "--no-floors", "--timeout", "3", env=env, timeout=110,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stdout + proc.stderr
    row = re.search(r"^(?:\(per process\))?\s+hang\s+(\S+)", proc.stdout, re.M)
    assert row and row.group(1) == "TIMEOUT", proc.stdout
    assert "(1/1 reps)" in proc.stdout  # the second repetition is not run after a timeout
    assert elapsed < 60
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the hung worker's child survived the timeout"


@pytest.mark.timeout(240)
def test_quick_real_run_prints_ratio_row_and_json(tmp_path):
    out_json = tmp_path / "bench.json"
    out_md = tmp_path / "bench.md"
    proc = _run(
        "--quick", "--repeat", "1", "--impl", "rmp", "--scenario", "process_start.fork",
        "--json", str(out_json), "--markdown", str(out_md), timeout=220,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # a ratio row: rmp, its wall time, then the wall and CPU ratios to the stdlib
    num = r"[\d.]+ [mu]?s"
    ratio = r"\d+\.\d\dx"
    pattern = rf"^(?:\(per process\))?\s+rmp\s+{num} \[[\d.]+-[\d.]+\]\s+{num}\s+{ratio}\s+{ratio}"
    assert re.search(pattern, proc.stdout, re.M), proc.stdout
    assert "floor os.fork+_exit+waitpid" in proc.stdout
    assert "rep 1/1" in proc.stderr  # progress went to stderr
    report = json.loads(out_json.read_text())
    (row,) = [s for s in report["scenarios"] if s["name"] == "process_start.fork"]
    impls = {i["name"]: i for i in row["impls"]}
    assert set(impls) == {"stdlib", "rmp"}
    assert impls["rmp"]["status"] == "OK"
    assert impls["rmp"]["ratio"] > 0 and impls["rmp"]["cpu_ratio"] > 0
    assert impls["rmp"]["target"] == 0.9
    assert [f["name"] for f in report["floors"]] == ["floor.fork_exit"]
    assert "| process_start.fork (per process) | stdlib |" in out_md.read_text()


QUEUE_SCENARIOS = (
    "queue.spsc_64b",
    "queue.mpmc_4x4",
    "queue.simplequeue_small",
    "queue.joinable_small",
    "queue.msg_1mib",
    "queue.bytes_64mib",
    "queue.numpy_64mib",
    "queue.batch_100",
    "queue.batch_100_single",
)


@pytest.mark.timeout(240)
def test_queue_scenarios_run_and_verify_on_the_stdlib():
    """Each queue scenario checks its own result: on the stdlib every one must come out OK
    with a number (numpy's is skipped, and says so, where numpy is missing)."""
    proc = _run(
        "--quick", "--repeat", "1", "--impl", "stdlib", "--scenario", "queue.*", timeout=220,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    has_numpy = importlib.util.find_spec("numpy") is not None
    for name in QUEUE_SCENARIOS:
        if name == "queue.numpy_64mib" and not has_numpy:
            assert "queue.numpy_64mib (no numpy)" in proc.stdout, proc.stdout
            continue
        row = rf"^{re.escape(name)}\s+stdlib\s+[\d.]+ [mu]?s \["
        assert re.search(row, proc.stdout, re.M), proc.stdout
    assert "floor pickle dumps+loads" in proc.stdout
    assert "floor memcpy 64 MiB" in proc.stdout


def test_a_floor_target_is_judged_against_the_floor_of_the_same_run():
    """``floor_within``: rmp's median at most that many times its scenario's first floor,
    reported as ok or MISS beside the floor and among the missed targets."""
    bench = os.path.dirname(RUN)
    sys.path.insert(0, bench)
    try:
        import _report
        from scenarios import Scenario
    finally:
        sys.path.remove(bench)

    def run(scenario, impl, wall):
        return {"scenario": scenario, "impl": impl, "rep": 0, "status": "OK", "ops": 1,
                "wall": wall, "cpu": wall, "detail": ""}  # fmt: skip

    floor = Scenario("floor.copy", None, kind="floor", group="floor", unit="copy")
    sc = Scenario("x.big", None, kind="scenario", group="x", unit="message",
                  floors=("floor.copy",), target=2.0, floor_within=1.5)  # fmt: skip
    for rmp_wall, verdict in ((0.14, "ok"), (0.16, "MISS")):
        runs = [run("floor.copy", "floor", 0.1), run("x.big", "stdlib", 1.0)]
        runs.append(run("x.big", "rmp", rmp_wall))
        report = _report.build_report({}, [sc, floor], ["stdlib", "rmp"], runs, "stdlib", "rmp")
        rmp_row = report["scenarios"][0]["impls"][1]
        assert rmp_row["floor_multiple"] == pytest.approx(rmp_wall / 0.1)
        assert rmp_row["floor_met"] is (verdict == "ok")
        assert rmp_row["target_met"] is True  # the ratio target is judged on its own
        text = _report.render_text(report)
        assert "(target: rmp <= 1.5x of it, %s)" % verdict in text
        assert ("its floor, target <=1.5x" in text) is (verdict == "MISS")
        assert "rmp <= 1.5x of it, %s" % verdict in _report.render_markdown(report)
