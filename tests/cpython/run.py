#!/usr/bin/env python3
"""Run CPython's own multiprocessing test suite against rmp (or the stdlib, as the baseline).

Each TestCase class of the running interpreter's ``test._test_multiprocessing`` runs in its own
subprocess (``_entry.py`` beside this file), in its own process group, with a timeout; the
subprocess writes a JSON summary per test and this script tallies them. See README.md.

    python tests/cpython/run.py --impl rmp --method fork
    python tests/cpython/run.py --compare --method fork --jobs 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ENTRY = os.path.join(HERE, "_entry.py")
DEFAULT_INTERNALS = os.path.join(HERE, "internals.txt")
METHODS = ("fork", "spawn", "forkserver")

PASS_OUTCOMES = ("pass", "expected_failure")
BAD_OUTCOMES = ("fail", "error", "unexpected_success")


# ----------------------------------------------------------------------------------------------
# The internals list


def load_internals(path):
    """``{pattern: (tag, reason)}`` from the internals file (fnmatch patterns on ``Class.test``).

    A reason may start with a ``[tag]`` (``[internal]``, ``[subprocess]``); the default tag is
    ``internal``.
    """
    patterns = {}
    if not path or not os.path.exists(path):
        return patterns
    with open(path) as f:
        for line in f:
            text, _, reason = line.partition("#")
            text = text.strip()
            if not text:
                continue
            reason = reason.strip()
            tag = "internal"
            m = re.match(r"\[([\w-]+)\]\s*", reason)
            if m:
                tag, reason = m.group(1), reason[m.end() :]
            patterns[text] = (tag, reason)
    return patterns


def internal_reason(test_id, internals):
    """``(tag, reason)`` if the test is set apart by the internals file, else None."""
    for pattern, tag_reason in internals.items():
        if fnmatch.fnmatchcase(test_id, pattern):
            return tag_reason
    return None


# ----------------------------------------------------------------------------------------------
# Running one class


def _env(impl, method, missing, trace=None, dump_after=None):
    env = dict(os.environ)
    env.pop("RMP_CONFORMANCE_DUMP_AFTER", None)
    if dump_after:
        env["RMP_CONFORMANCE_DUMP_AFTER"] = "%.1f" % dump_after
    env["RMP_CONFORMANCE_IMPL"] = impl
    env["RMP_CONFORMANCE_METHOD"] = method
    env["RMP_CONFORMANCE_MISSING"] = missing
    env.pop("RMP_CONFORMANCE_TRACE", None)
    if trace:
        env["RMP_CONFORMANCE_TRACE"] = trace
    # The children must find the test module's helpers and this directory's script the same way.
    env.setdefault("PYTHONFAULTHANDLER", "1")
    return env


def list_classes(python, method):
    """The class names (always listed with the stdlib: they do not depend on the impl)."""
    out = subprocess.run(
        [python, ENTRY, "--list"],
        env=_env("stdlib", method, "stub"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit("could not list the test classes:\n" + out.stderr)
    return json.loads(out.stdout)


def _group_members(pgid):
    """Pids of live processes whose process group is ``pgid`` (read from /proc)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        # fields: state ppid pgrp ...; a zombie is already dead.
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            pids.append(int(name))
    return pids


# Process groups of the classes running now: killed if the runner itself is stopped
# (Ctrl-C, SIGTERM from `timeout` or CI), so that no test process outlives it.
_ACTIVE_GROUPS = set()


def _kill_active_groups():
    for pgid in list(_ACTIVE_GROUPS):
        _kill_group(pgid)


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _dump_after(timeout):
    """When the test process dumps its stacks: a few seconds before it is killed."""
    return max(timeout - min(10.0, timeout * 0.1), timeout * 0.5)


def run_class(cls, impl, method, opts):
    """Run one class in a new session; return its result record."""
    stem = "%s-%s-%s" % (impl, method, cls)
    json_path = os.path.join(opts.logs, stem + ".json")
    log_path = os.path.join(opts.logs, stem + ".log")
    trace_path = os.path.join(opts.logs, stem + ".trace")
    for path in (json_path, trace_path):
        if os.path.exists(path):
            os.unlink(path)
    cmd = [opts.python, ENTRY, "--class", cls, "--json", json_path]
    for pattern in opts.tests:
        cmd += ["--tests", pattern]
    # Tests write files (os_helper.TESTFN...) into the working directory: give each class its own.
    cwd = os.path.join(opts.logs, "cwd", stem)
    os.makedirs(cwd, exist_ok=True)
    t0 = time.monotonic()
    status = "ok"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd,
            env=_env(impl, method, opts.missing, trace_path, _dump_after(opts.timeout)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
        _ACTIVE_GROUPS.add(proc.pid)
        try:
            rc = proc.wait(timeout=opts.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            rc = proc.wait()
            status = "timeout"
        finally:
            _ACTIVE_GROUPS.discard(proc.pid)
    elapsed = time.monotonic() - t0
    # Whatever is left in the group (children that outlived the class) is killed too.
    strays = _group_members(proc.pid)
    if strays:
        _kill_group(proc.pid)

    data = None
    try:
        with open(json_path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        pass
    if status == "ok":
        if data is None or not data.get("finished"):
            status = "crash"
        elif rc != 0:
            status = "crash"
    tests = dict(data["tests"]) if data else {}
    running = data.get("running") if data else None
    if status != "ok" and running:
        what = "TIMEOUT" if status == "timeout" else "CRASH"
        tests[running] = {
            "outcome": "error",
            "reason": "%s: class %s while this test was running (rc=%s)"
            % (what, "killed after %ss" % opts.timeout if status == "timeout" else "died", rc),
        }
    if status == "timeout" and data and data.get("finished"):
        status = "timeout-at-exit"  # every test ran; the interpreter did not exit in time

    children = []
    if os.path.exists(trace_path):
        with open(trace_path) as f:
            for line in f:
                try:
                    children.append(json.loads(line))
                except ValueError:
                    pass
    return {
        "class": cls,
        "impl": impl,
        "method": method,
        "status": status,
        "returncode": rc,
        "elapsed": round(elapsed, 2),
        "tests": tests,
        "substitution": (data or {}).get("substitution"),
        "main_process_is_rmp": (data or {}).get("check_main_process_is_rmp"),
        "children_traced": len(children),
        "children_not_rmp": sum(1 for c in children if not c.get("multiprocessing_is_rmp")),
        "stray_processes_killed": len(strays),
        "log": log_path,
        "log_tail": _tail(log_path) if status != "ok" else "",
    }


def _tail(path, n=25):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------------------------
# Tallies and reports


FIXTURES = ("setUpModule", "tearDownModule", "setUpClass", "tearDownClass")


def is_fixture(test_id):
    """Whether an id names a class or module fixture rather than a test."""
    return test_id.rsplit(".", 1)[-1] in FIXTURES


def tally(record, internals):
    """Counts for one class; tests on the internals list are counted apart."""
    counts = dict.fromkeys(("passed", "failed", "errors", "skipped", "internal"), 0)
    for tid, entry in record["tests"].items():
        if internal_reason(tid, internals):
            counts["internal"] += 1
            continue
        outcome = entry["outcome"]
        if outcome in PASS_OUTCOMES:
            counts["passed"] += 1
        elif outcome in ("fail", "unexpected_success"):
            counts["failed"] += 1
        elif outcome == "error":
            counts["errors"] += 1
        elif outcome == "skip":
            counts["skipped"] += 1
    return counts


def cause_of(entry):
    """A short, groupable cause for a failing test."""
    reason = entry.get("reason", "")
    m = re.search(r"rmp does not implement multiprocessing\.(\w+)", reason)
    if m:
        return "needs %s" % m.group(1)
    m = re.search(r"'(\w+Context)' object has no attribute '(\w+)'", reason)
    if m:
        return "needs %s" % m.group(2)  # ctx.Queue() and the like
    m = re.search(r"module '(rmp[\w.]*)' has no attribute '(\w+)'", reason)
    if m:
        return "missing %s.%s" % (m.group(1), m.group(2))
    if reason.startswith(("TIMEOUT", "CRASH")):
        return reason.split(":")[0]
    reason = re.sub(r"0x[0-9a-f]+", "0x…", reason)
    reason = re.sub(r"\d+(\.\d+)?", "N", reason)
    return reason[:140]


def _fmt_status(record):
    s = record["status"]
    extra = []
    if record["children_traced"]:
        bad = record["children_not_rmp"]
        label = "NOT rmp: %d" % bad if bad else "rmp"
        extra.append(
            "%d child%s%s"
            % (
                record["children_traced"],
                "" if record["children_traced"] == 1 else "ren",
                " " + label if record["impl"] == "rmp" else "",
            )
        )
    if record["stray_processes_killed"]:
        extra.append("%d stray killed" % record["stray_processes_killed"])
    return s + ("  (" + ", ".join(extra) + ")" if extra else "")


def print_run(records, internals, impl, method, out=sys.stdout, show_failures=False):
    w = max([len(r["class"]) for r in records] + [10])
    print("\n== %s / %s ==" % (impl, method), file=out)
    print(
        "%-*s %6s %6s %6s %6s %6s %8s  %s"
        % (w, "class", "passed", "failed", "errors", "skip", "apart", "time", "status"),
        file=out,
    )
    total = dict.fromkeys(("passed", "failed", "errors", "skipped", "internal"), 0)
    statuses = {}
    for r in records:
        c = tally(r, internals)
        for k in total:
            total[k] += c[k]
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        print(
            "%-*s %6d %6d %6d %6d %6d %7.1fs  %s"
            % (
                w,
                r["class"],
                c["passed"],
                c["failed"],
                c["errors"],
                c["skipped"],
                c["internal"],
                r["elapsed"],
                _fmt_status(r),
            ),
            file=out,
        )
        if show_failures or r["status"] not in ("ok", "timeout-at-exit"):
            for tid, e in sorted(r["tests"].items()):
                if e["outcome"] in BAD_OUTCOMES and not internal_reason(tid, internals):
                    if show_failures or r["status"] != "ok":
                        print(
                            "    %-5s %s: %s"
                            % (e["outcome"].upper()[:5], tid, e.get("reason", "")[:160]),
                            file=out,
                        )
            if r["status"] not in ("ok", "timeout-at-exit") and not r["tests"]:
                print("    no test result; log tail (%s):" % r["log"], file=out)
                for line in r["log_tail"].splitlines()[-12:]:
                    print("      | " + line, file=out)
    apart = {}
    for r in records:
        for tid, e in r["tests"].items():
            tag = internal_reason(tid, internals)
            if tag:
                per_tag = apart.setdefault(tag[0], {})
                per_tag[e["outcome"]] = per_tag.get(e["outcome"], 0) + 1
    print("-" * (w + 50), file=out)
    print(
        "classes: %d (%s)"
        % (len(records), ", ".join("%d %s" % (n, s) for s, n in sorted(statuses.items()))),
        file=out,
    )
    for tag, outcomes in sorted(apart.items()):
        print(
            "set apart as [%s] by the internals file (not counted): %s"
            % (tag, ", ".join("%d %s" % (n, o) for o, n in sorted(outcomes.items()))),
            file=out,
        )
    traced = sum(r["children_traced"] for r in records)
    if traced:
        bad = sum(r["children_not_rmp"] for r in records)
        verdict = (
            ("all ran with rmp" if not bad else "%d did NOT run with rmp" % bad)
            if impl == "rmp"
            else "stdlib run"
        )
        print(
            "child processes that imported the entry script: %d, %s" % (traced, verdict), file=out
        )
    print(
        "%s %s total: %d passed, %d failed, %d errors, %d skipped, %d set apart"
        % (
            impl,
            method,
            total["passed"],
            total["failed"],
            total["errors"],
            total["skipped"],
            total["internal"],
        ),
        file=out,
    )
    return total


def print_substitution(records, out=sys.stdout):
    for r in records:
        sub = r.get("substitution")
        if sub and sub.get("impl") == "rmp":
            print("\nsubstitution (rmp, missing=%s):" % sub.get("missing_policy"), file=out)
            print(
                "  rmp modules aliased: %s" % ", ".join(sub.get("provided_submodules", [])),
                file=out,
            )
            print(
                "  stdlib submodules kept: %s" % ", ".join(sub.get("stdlib_submodules_kept", [])),
                file=out,
            )
            if sub.get("broken_rmp_submodules"):
                print(
                    "  rmp submodules that failed to import: %s" % sub["broken_rmp_submodules"],
                    file=out,
                )
            print(
                "  names rmp lacks (%s): %s"
                % (
                    {
                        "stub": "stubbed: NotImplementedError when called",
                        "stdlib": "filled with the stdlib's",
                        "strict": "left missing",
                    }.get(sub.get("missing_policy"), "?"),
                    ", ".join(sub.get("missing_names", [])),
                ),
                file=out,
            )
            if sub.get("fixture_bridges"):
                print("  fixture bridges applied: %s" % ", ".join(sub["fixture_bridges"]), file=out)
            return


def print_causes(records, internals, title, out=sys.stdout, only=None):
    groups = {}
    for r in records:
        for tid, e in r["tests"].items():
            if e["outcome"] not in BAD_OUTCOMES or internal_reason(tid, internals):
                continue
            if only is not None and (r["class"], tid) not in only:
                continue
            groups.setdefault(cause_of(e), []).append(tid)
    if not groups:
        return
    print("\n%s:" % title, file=out)
    for cause, tids in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        classes = sorted({t.split(".")[0] for t in tids})
        shown = ", ".join(classes[:6]) + (", …" if len(classes) > 6 else "")
        print("  %4d  %s  [%d classes: %s]" % (len(tids), cause, len(classes), shown), file=out)


def _not_run_reason(record):
    """Why a test has no result: a failed class/module fixture, or the class's fate."""
    cls = record["class"]
    for fixture in (cls + ".setUpClass", "setUpModule"):
        entry = record["tests"].get(fixture)
        if entry and entry["outcome"] in BAD_OUTCOMES:
            return "NOT RUN (%s failed: %s)" % (fixture.split(".")[-1], entry.get("reason", ""))
    return "NOT RUN (class %s)" % record["status"]


def print_compare(std_records, rmp_records, internals, method, out=sys.stdout):
    std = {r["class"]: r for r in std_records}
    w = max([len(c) for c in std] + [10])
    print("\n== compare: stdlib vs rmp, %s ==" % method, file=out)
    print("%-*s %13s %13s  %s" % (w, "class", "stdlib pass", "rmp pass", "rmp status"), file=out)
    regressions = []
    sp_total = rp_total = 0
    for r in rmp_records:
        s = std.get(r["class"])
        sc, rc = tally(s, internals), tally(r, internals)
        sp_total += sc["passed"]
        rp_total += rc["passed"]
        ids = {
            t
            for t in set(s["tests"]) | set(r["tests"])
            if not is_fixture(t) and not internal_reason(t, internals)
        }
        status = _fmt_status(r)
        if s["status"] != "ok":
            status += "   [stdlib: %s]" % s["status"]
        print(
            "%-*s %7d/%-5d %7d/%-5d  %s"
            % (w, r["class"], sc["passed"], len(ids), rc["passed"], len(ids), status),
            file=out,
        )
        for tid, e in s["tests"].items():
            if e["outcome"] not in PASS_OUTCOMES or internal_reason(tid, internals):
                continue
            re_ = r["tests"].get(tid)
            if re_ is None:
                re_ = {"outcome": "error", "reason": _not_run_reason(r)}
            if re_["outcome"] not in PASS_OUTCOMES:
                regressions.append((r["class"], tid, re_))
    print("-" * (w + 40), file=out)
    print(
        "%s: stdlib %d passed, rmp %d passed; %d tests pass with stdlib but not with rmp"
        % (method, sp_total, rp_total, len(regressions)),
        file=out,
    )
    if regressions:
        print("\ntests that pass with stdlib but not with rmp (%s):" % method, file=out)
        for _cls, tid, e in regressions:
            print(
                "  %-5s %s: %s" % (e["outcome"].upper()[:5], tid, e.get("reason", "")[:150]),
                file=out,
            )
        groups = {}
        for _cls, tid, e in regressions:
            groups.setdefault(cause_of(e), []).append(tid)
        print("\nthose regressions grouped by cause (%s):" % method, file=out)
        for cause, tids in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            classes = sorted({t.split(".")[0] for t in tids})
            shown = ", ".join(classes[:5]) + (", …" if len(classes) > 5 else "")
            print("  %4d  %s  [%s]" % (len(tids), cause, shown), file=out)
    return regressions


# ----------------------------------------------------------------------------------------------
# Main


def select_classes(all_classes, includes, excludes):
    def match(name, pattern):
        if any(ch in pattern for ch in "*?["):
            return fnmatch.fnmatchcase(name, pattern)
        return pattern in name

    chosen = [c for c in all_classes if not includes or any(match(c, p) for p in includes)]
    return [c for c in chosen if not any(match(c, p) for p in excludes)]


def run_all(classes, impl, method, opts):
    records = {}
    lock = threading.Lock()
    done = [0]

    def one(cls):
        rec = run_class(cls, impl, method, opts)
        with lock:
            done[0] += 1
            if not opts.quiet:
                c = tally(rec, opts.internals_map)
                print(
                    "[%s/%s %3d/%d] %-40s %-8s %3d pass %3d fail %3d err %3d skip %6.1fs"
                    % (
                        impl,
                        method,
                        done[0],
                        len(classes),
                        cls,
                        rec["status"],
                        c["passed"],
                        c["failed"],
                        c["errors"],
                        c["skipped"],
                        rec["elapsed"],
                    ),
                    file=sys.stderr,
                    flush=True,
                )
        return rec

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, opts.jobs)) as pool:
        for rec in pool.map(one, classes):
            records[rec["class"]] = rec
    return [records[c] for c in classes]


def _methods(value):
    out = []
    for part in value.split(","):
        part = part.strip()
        if part not in METHODS:
            raise argparse.ArgumentTypeError("unknown start method %r" % part)
        out.append(part)
    return out


def build_parser():
    p = argparse.ArgumentParser(
        description="Run CPython's multiprocessing test suite with rmp or the stdlib."
    )
    p.add_argument(
        "--impl",
        choices=("rmp", "stdlib"),
        default="rmp",
        help="what stands behind 'import multiprocessing' (default rmp)",
    )
    p.add_argument(
        "--method",
        type=_methods,
        default=["fork"],
        help="start method(s), comma-separated: fork, spawn, forkserver",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="run both stdlib and rmp and compare them class by class",
    )
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only classes matching (fnmatch if it has *?[, else substring); repeatable",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="skip classes matching (same rules as --class); repeatable",
    )
    p.add_argument(
        "--tests",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only test methods matching this fnmatch pattern; repeatable",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds per class before its process group is killed (default 300)",
    )
    p.add_argument("--jobs", type=int, default=1, help="classes run in parallel (default 1)")
    p.add_argument(
        "--missing",
        choices=("stub", "stdlib", "strict"),
        default="stub",
        help="for names rmp lacks (Queue, Lock...): 'stub' raises NotImplementedError "
        "when called (default); 'stdlib' fills them with the stdlib's built on "
        "rmp's contexts (diagnostic); 'strict' adds nothing at all",
    )
    p.add_argument(
        "--internals",
        default=DEFAULT_INTERNALS,
        help="file of internals-only test ids (default: internals.txt beside this)",
    )
    p.add_argument("--json", dest="json_out", help="write every result to this JSON file")
    p.add_argument(
        "--logs",
        help="directory for per-class logs and summaries (default: a new temporary directory)",
    )
    p.add_argument("--python", default=sys.executable, help="interpreter to test with")
    p.add_argument(
        "--show-failures", action="store_true", help="list every failing test with its reason"
    )
    p.add_argument("--list", action="store_true", help="list the classes and exit")
    p.add_argument(
        "--from-json",
        metavar="FILE",
        help="do not run anything: report again from a file written by --json",
    )
    p.add_argument("--quiet", action="store_true", help="no per-class progress on stderr")
    return p


def report(results, opts):
    """Print every run in ``results`` (``{(impl, method): records}``); return the bad count."""
    methods = list(dict.fromkeys(method for _, method in results))
    bad = 0
    for method in methods:
        impls = [impl for impl in ("stdlib", "rmp") if (impl, method) in results]
        for impl in impls:
            records = results[(impl, method)]
            total = print_run(
                records, opts.internals_map, impl, method, show_failures=opts.show_failures
            )
            if impl == "rmp":
                print_substitution(records)
                print_causes(
                    records,
                    opts.internals_map,
                    "rmp failures and errors grouped by cause (%s)" % method,
                )
            if len(impls) == 1:
                bad += total["failed"] + total["errors"]
                bad += sum(1 for r in records if r["status"] not in ("ok", "timeout-at-exit"))
        if len(impls) == 2:
            regressions = print_compare(
                results[("stdlib", method)], results[("rmp", method)], opts.internals_map, method
            )
            bad += len(regressions)
    return bad


def main(argv=None):
    opts = build_parser().parse_args(argv)
    # A runner started in the background (nohup, "&") inherits an ignored SIGINT, and so would
    # every test process: tests that expect KeyboardInterrupt would fail. Catching it here makes
    # exec() give the test processes the default disposition back.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _terminated(signum, frame):
        raise KeyboardInterrupt("runner terminated (signal %d)" % signum)

    signal.signal(signal.SIGTERM, _terminated)
    try:
        return _main(opts, argv)
    except KeyboardInterrupt:
        _kill_active_groups()
        raise
    finally:
        _kill_active_groups()


def _main(opts, argv):
    opts.internals_map = load_internals(opts.internals)

    if opts.from_json:
        # Report again from a saved --json file (with the current internals file).
        with open(opts.from_json) as f:
            payload = json.load(f)
        results = {(run["impl"], run["method"]): run["classes"] for run in payload["runs"]}
        for key, records in results.items():
            results[key] = [
                r
                for r in records
                if r["class"] in select_classes([r["class"]], opts.classes, opts.exclude)
            ]
        return 1 if report(results, opts) else 0

    opts.logs = os.path.abspath(opts.logs or tempfile.mkdtemp(prefix="rmp-cpython-"))
    os.makedirs(opts.logs, exist_ok=True)
    all_classes = list_classes(opts.python, opts.method[0])
    classes = select_classes(all_classes, opts.classes, opts.exclude)
    if opts.list:
        print("\n".join(classes))
        return 0
    if not classes:
        print("no class matches %s" % opts.classes, file=sys.stderr)
        return 2

    impls = ["stdlib", "rmp"] if opts.compare else [opts.impl]
    results = {}
    for method in opts.method:
        for impl in impls:
            results[(impl, method)] = run_all(classes, impl, method, opts)
    bad = report(results, opts)

    if opts.json_out:
        payload = {
            "python": sys.version.split()[0],
            "argv": sys.argv[1:] if argv is None else list(argv),
            "missing_policy": opts.missing,
            "internals": {k: list(v) for k, v in opts.internals_map.items()},
            "runs": [
                {"impl": impl, "method": method, "classes": records}
                for (impl, method), records in results.items()
            ],
        }
        with open(opts.json_out, "w") as f:
            json.dump(payload, f, indent=1, sort_keys=True)
    print("\nper-class logs and JSON summaries: %s" % opts.logs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
