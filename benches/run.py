"""Side-by-side benchmark of rmp against the stdlib (and installed peers), with floors.

What: runs every selected scenario for every selected implementation, each (scenario,
implementation, repetition) in a fresh interpreter (``_worker.py``) under a wall-clock limit,
repetitions interleaved across implementations (rep 1: stdlib, rmp; rep 2: rmp, stdlib; ...),
and prints per scenario the median [min-max] wall time and the CPU time per operation, the
ratios to the stdlib, the issue's target with a pass/miss mark, and the floors (raw-OS lower
bounds, measured in the same run) right under the rows they bound.

Why: speed claims must be measured against the real thing on the same machine minutes apart,
verified (a scenario that gets a wrong answer prints FAILED, one that hangs is killed with its
whole process group and prints TIMEOUT), and read against what the OS itself costs.

Usage: ``python benches/run.py [--quick] [--repeat N] [--scenario PAT]... [--impl NAME]...
[--json PATH] [--markdown PATH] [--plot PNG] [--timeout S] [--no-floors] [--list]``.
Exit status: 0, or 1 when anything FAILED or timed out (a missed target is not an error),
2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import _report  # noqa: E402
import impls  # noqa: E402
import scenarios  # noqa: E402

WORKER = os.path.join(HERE, "_worker.py")
FLOOR_IMPL = "floor"


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="run.py",
        description="Side-by-side benchmark of rmp, the stdlib and installed peers; every "
        "measurement in a fresh interpreter, repetitions interleaved, results verified.",
    )
    ap.add_argument(
        "--quick", action="store_true", help="fewer iterations and 3 repetitions (< 5 min)"
    )
    ap.add_argument(
        "--repeat", type=int, metavar="N", help="repetitions per implementation (5; quick: 3)"
    )
    ap.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help="run the scenario (or floor) NAME, or those whose name contains NAME, or matches "
        "it as a glob when it has *?[; repeatable. Floors a scenario names run with it",
    )
    ap.add_argument(
        "--impl",
        action="append",
        default=[],
        metavar="NAME",
        help="implementation to run (repeatable); the stdlib baseline is always run. "
        "Default: every installed implementation of the default set",
    )
    ap.add_argument("--json", metavar="PATH", help="write the full results as JSON")
    ap.add_argument("--markdown", metavar="PATH", help="write the tables as Markdown")
    ap.add_argument(
        "--plot", metavar="PNG", help="write a bar chart of the ratios (needs matplotlib)"
    )
    ap.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="wall-clock limit of one worker run in seconds (default: per scenario)",
    )
    ap.add_argument("--no-floors", action="store_true", help="do not run the floors")
    ap.add_argument(
        "--list", action="store_true", help="list scenarios, floors and implementations"
    )
    args = ap.parse_args(argv)
    if args.repeat is None:
        args.repeat = 3 if args.quick else 5
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        ap.error("--timeout must be positive")
    return args


def list_registry() -> str:
    reg = scenarios.load_all()
    lines = ["Scenarios (name, group, per, target, floors: description):"]
    for sc in reg.values():
        if sc.kind == "scenario":
            lines.append(
                "  %-28s %-8s per %-10s %-7s %s: %s"
                % (sc.name, sc.group, sc.unit, sc.target_text() or "-", ",".join(sc.floors), sc.doc)
            )
    lines.append("Floors (name, per: description):")
    for sc in reg.values():
        if sc.kind == "floor":
            lines.append("  %-32s per %-12s %s" % (sc.name, sc.unit, sc.doc))
    lines.append("Implementations (name, module, default set, installed: description):")
    for impl in impls.IMPLS.values():
        lines.append(
            "  %-12s %-14s %-11s %-13s %s"
            % (
                impl.name,
                impl.module,
                "default" if impl.default else "on request",
                "installed" if impl.available() else "not installed",
                impl.doc,
            )
        )
    return "\n".join(lines) + "\n"


def _selects(pattern: str, name: str) -> bool:
    """An exact name selects only itself; otherwise a glob (``*?[``) or a substring."""
    if pattern in scenarios.SCENARIOS:
        return pattern == name
    return scenarios.matches(name, pattern)


def select_scenarios(patterns, no_floors):
    reg = scenarios.load_all()
    chosen = [
        sc for sc in reg.values() if not patterns or any(_selects(p, sc.name) for p in patterns)
    ]
    if no_floors:
        return [sc for sc in chosen if sc.kind != "floor"]
    wanted = {sc.name for sc in chosen}
    for sc in chosen:
        wanted.update(sc.floors)
    missing = [n for sc in chosen for n in sc.floors if n not in reg]
    if missing:
        raise SystemExit("run.py: unknown floor(s) declared: %s" % ", ".join(missing))
    # floors first (registry order), then the scenarios (registry order)
    return [sc for sc in reg.values() if sc.kind == "floor" and sc.name in wanted] + [
        sc for sc in reg.values() if sc.kind != "floor" and sc.name in wanted
    ]


def select_impls(names):
    """(implementations to run, names asked for or in the default set but not installed)."""
    if names:
        unknown = [n for n in names if n not in impls.IMPLS]
        if unknown:
            raise SystemExit(
                "run.py: unknown implementation(s) %s; known: %s"
                % (", ".join(unknown), ", ".join(impls.IMPLS))
            )
        wanted = [impls.BASELINE] + [n for n in dict.fromkeys(names) if n != impls.BASELINE]
        candidates = [impls.IMPLS[n] for n in wanted]
    else:
        candidates = [i for i in impls.IMPLS.values() if i.default]
    chosen = [i for i in candidates if i.available()]
    missing = [i.name for i in candidates if not i.available()]
    return chosen, missing


def build_jobs(selected, chosen_impls, repeat):
    """Scenario by scenario; within one, repetitions alternate the implementations' order."""
    jobs = []
    for sc in selected:
        names = (
            [FLOOR_IMPL]
            if sc.kind == "floor"
            else [i.name for i in chosen_impls if sc.applies_to(i)]
        )
        for rep in range(repeat):
            order = names if rep % 2 == 0 else names[::-1]
            jobs.extend((sc, name, rep) for name in order)
    return jobs


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait until ``pid`` exits, without reaping it (so its pid, which is also its process
    group id, cannot be reused before the group is killed). False on timeout."""
    delay = 0.001
    while True:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        if info is not None:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.05)


def _parse_result(stdout: str):
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "scenario" in obj:
                return obj
    return None


def run_job(sc, impl_name, quick, timeout) -> dict:
    """One worker run in its own session; its whole process group is killed afterwards (on a
    timeout, and also after a normal exit, so nothing it left behind survives)."""
    cmd = [sys.executable, WORKER, sc.name, impl_name] + (["--quick"] if quick else [])
    run = {"scenario": sc.name, "impl": impl_name}
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
        try:
            finished = _wait_unreaped(proc.pid, t0 + timeout)
        finally:
            _kill_group(proc.pid)  # the leader is a zombie at most: the group id is still ours
            proc.wait()
        run["elapsed"] = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    if not finished:
        run.update(status=_report.TIMEOUT, detail="killed after %gs" % timeout)
        return run
    res = _parse_result(stdout)
    if res is None:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        detail = "worker exited %s with no result" % proc.returncode
        run.update(status=_report.FAILED, detail=detail + (": " + tail if tail else ""))
        return run
    run.update(
        status=_report.OK if res.get("ok") else _report.FAILED,
        ops=res.get("ops", 0),
        wall=res.get("wall", 0.0),
        cpu=res.get("cpu", 0.0),
        detail=res.get("detail", ""),
    )
    if run["status"] == _report.OK and proc.returncode != 0:
        run.update(status=_report.FAILED, detail="worker exited %s" % proc.returncode)
    for key in ("extra", "version", "traceback"):
        if key in res:
            run[key] = res[key]
    return run


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return "%d:%02d" % (seconds // 60, seconds % 60)


class Progress:
    """One stderr line per worker run: which one, how far, roughly how long is left."""

    def __init__(self, jobs, repeat):
        self.jobs = jobs
        self.repeat = repeat
        self.t0 = time.monotonic()
        self.done = {}  # scenario name -> [elapsed, ...]

    def _estimate(self, sc) -> float:
        mine = self.done.get(sc.name)
        if mine:
            return sum(mine) / len(mine)
        every = [t for ts in self.done.values() for t in ts]
        return sum(every) / len(every) if every else 2.0

    def start(self, index, skipped=frozenset()):
        sc, impl, rep = self.jobs[index]
        left = sum(self._estimate(s) for s, i, _ in self.jobs[index:] if (s.name, i) not in skipped)
        width = len(str(len(self.jobs)))
        sys.stderr.write(
            "[%*d/%d  %s elapsed, ~%s left]  %s  %s  rep %d/%d\n"
            % (
                width,
                index + 1,
                len(self.jobs),
                _clock(time.monotonic() - self.t0),
                _clock(left),
                sc.name,
                impl,
                rep + 1,
                self.repeat,
            )
        )
        sys.stderr.flush()

    def finish(self, index, run):
        sc = self.jobs[index][0]
        self.done.setdefault(sc.name, []).append(run["elapsed"])
        if run["status"] != _report.OK:
            sys.stderr.write("    -> %s: %s\n" % (run["status"], run["detail"]))
            sys.stderr.flush()


def _write(path, text) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _precompile(chosen) -> None:
    """Write bytecode for the benchmark's own modules and each implementation's package.

    Spawn and forkserver children import these modules again; the stdlib's modules come with
    bytecode, and so does any package pip installed, but a checkout or an editable install
    under PYTHONDONTWRITEBYTECODE would compile from source in every child and measure the
    compiler instead of the library. compileall writes bytecode whatever that variable says.
    """
    import compileall
    import importlib.util

    dirs = [HERE]
    for impl in chosen:
        if impl.module == "multiprocessing":
            continue  # the stdlib ships its bytecode
        spec = importlib.util.find_spec(impl.module)
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(spec.submodule_search_locations)
    for d in dirs:
        try:
            compileall.compile_dir(d, quiet=2)
        except OSError:
            pass  # read-only install: it already has its bytecode or cannot get any


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        sys.stdout.write(list_registry())
        return 0
    try:
        selected = select_scenarios(args.scenario, args.no_floors)
        chosen, missing = select_impls(args.impl)
    except SystemExit as e:
        sys.stderr.write("%s\n" % e)
        return 2
    if not selected:
        sys.stderr.write("run.py: no scenario matches %s (see --list)\n" % args.scenario)
        return 2
    for name in missing:
        if name in args.impl:
            sys.stderr.write("run.py: %s is not installed, skipped\n" % name)
    unmet = ["%s (no %s)" % (sc.name, ", ".join(sc.missing())) for sc in selected if sc.missing()]
    selected = [sc for sc in selected if not sc.missing()]
    _precompile(chosen)
    jobs = build_jobs(selected, chosen, args.repeat)
    started = time.time()
    meta = {
        "title": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": "%s %s" % (platform.system(), platform.machine()),
        "kernel": platform.release(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": "%.2f" % os.getloadavg()[0],
        "quick": args.quick,
        "repeat": args.repeat,
        "implementations": [i.name for i in chosen],
        "unavailable": missing,
        "skipped_scenarios": unmet,
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    progress = Progress(jobs, args.repeat)
    runs = []
    dead = set()  # (scenario, impl) that timed out: their later repetitions are not run
    for index, (sc, impl_name, rep) in enumerate(jobs):
        if (sc.name, impl_name) in dead:
            continue
        progress.start(index, dead)
        run = run_job(sc, impl_name, args.quick, args.timeout or sc.timeout)
        run["rep"] = rep
        runs.append(run)
        progress.finish(index, run)
        if run["status"] == _report.TIMEOUT:
            dead.add((sc.name, impl_name))
    took = time.time() - started
    meta["loadavg_end"] = "%.2f" % os.getloadavg()[0]
    meta["took"] = _clock(took)
    meta["took_seconds"] = round(took, 1)
    impl_names = [FLOOR_IMPL] + [i.name for i in chosen]
    report = _report.build_report(
        meta, selected, impl_names, runs, impls.BASELINE, scenarios.TARGET_IMPL
    )
    sys.stdout.write(_report.render_text(report))
    sys.stdout.flush()
    if args.json:
        _write(args.json, json.dumps(report, indent=2, sort_keys=True) + "\n")
        sys.stderr.write("wrote %s\n" % args.json)
    if args.markdown:
        _write(args.markdown, _report.render_markdown(report))
        sys.stderr.write("wrote %s\n" % args.markdown)
    if args.plot:
        sys.stderr.write(_report.plot(report, args.plot) + "\n")
    bad = any(r["status"] != _report.OK for r in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
