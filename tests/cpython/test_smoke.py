"""Fast smoke subset of the CPython conformance runner (run.py beside this file).

Small classes of CPython's own multiprocessing suite that start rmp processes and that rmp
passes today: ``WithProcessesTestConnection`` (rmp's Pipe and Connection, with children at the
other end) and ``WithProcessesTestPollEintr`` (a child signals the parent while it joins
another child). The whole suite is run with ``python tests/cpython/run.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "run.py")
SMOKE_CLASSES = ("WithProcessesTestConnection", "WithProcessesTestPollEintr")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="rmp is Linux only")


def _run(tmp_path, impl, method, classes, timeout=120):
    out = tmp_path / "result.json"
    cmd = [
        sys.executable,
        RUNNER,
        "--impl",
        impl,
        "--method",
        method,
        "--quiet",
        "--timeout",
        str(timeout),
        "--logs",
        str(tmp_path / "logs"),
        "--json",
        str(out),
    ]
    for cls in classes:
        cmd += ["--class", cls]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60, check=False)
    assert out.exists(), "runner wrote no JSON:\n%s\n%s" % (proc.stdout, proc.stderr)
    with open(out) as f:
        data = json.load(f)
    (run,) = data["runs"]
    return proc, {rec["class"]: rec for rec in run["classes"]}


def _bad_tests(record):
    return {
        tid: entry.get("reason", "")
        for tid, entry in record["tests"].items()
        if entry["outcome"] in ("fail", "error", "unexpected_success")
    }


def _check(records, classes):
    assert sorted(records) == sorted(classes)
    for cls, rec in records.items():
        assert rec["status"] == "ok", (cls, rec["status"], rec["log_tail"])
        assert not _bad_tests(rec), (cls, _bad_tests(rec))
        assert any(e["outcome"] == "pass" for e in rec["tests"].values()), cls
        assert rec["main_process_is_rmp"] is True, cls


@pytest.mark.timeout(240)
def test_rmp_fork_smoke_classes_pass(tmp_path):
    proc, records = _run(tmp_path, "rmp", "fork", SMOKE_CLASSES)
    _check(records, SMOKE_CLASSES)
    assert proc.returncode == 0, proc.stdout
    assert "rmp fork total:" in proc.stdout


@pytest.mark.timeout(240)
def test_rmp_spawn_children_run_with_rmp(tmp_path):
    # Spawned children re-import the entry script as __mp_main__; each reports whether its
    # ``multiprocessing`` is rmp. They must all be rmp, and the class must pass.
    classes = ("WithProcessesTestConnection",)
    proc, records = _run(tmp_path, "rmp", "spawn", classes)
    _check(records, classes)
    rec = records[classes[0]]
    assert rec["children_traced"] > 0
    assert rec["children_not_rmp"] == 0
    assert rec["substitution"]["impl"] == "rmp"
    assert "process" in rec["substitution"]["provided_submodules"]


@pytest.mark.timeout(120)
def test_stdlib_baseline_runs(tmp_path):
    # The runner itself, against the stdlib (no substitution), on one tiny class.
    classes = ("TestInvalidHandle",)
    proc, records = _run(tmp_path, "stdlib", "fork", classes)
    rec = records[classes[0]]
    assert rec["status"] == "ok"
    assert not _bad_tests(rec)
    assert rec["main_process_is_rmp"] is None
    assert proc.returncode == 0
