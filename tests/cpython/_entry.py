"""Per-class entry point of the CPython conformance runner (see README.md beside this file).

``run.py`` starts this script once per TestCase class, in its own process group. It is a
*script*, not a module, on purpose: under the spawn and forkserver start methods the children
import the parent's main script as ``__mp_main__``, so the top-level code below (which installs
the ``multiprocessing`` -> ``rmp`` aliasing) runs in every child too, before anything imports
``test._test_multiprocessing``. The configuration travels in environment variables, which the
children inherit:

``RMP_CONFORMANCE_IMPL``     ``rmp`` or ``stdlib`` (default ``stdlib``: no substitution)
``RMP_CONFORMANCE_METHOD``   ``fork``, ``spawn`` or ``forkserver``
``RMP_CONFORMANCE_MISSING``  ``stub`` (default), ``stdlib`` or ``strict``: what the aliased
                             ``multiprocessing`` offers for the names rmp does not provide
``RMP_CONFORMANCE_DUMP_AFTER`` optional seconds: dump all thread stacks to the log then
                             (run.py sets it a little below the class timeout)
``RMP_CONFORMANCE_TRACE``    optional file: every process that imports this script but is not
                             the test process itself (spawn/forkserver children, the fork
                             server) appends one JSON line saying whether it runs with rmp

Only the ``__main__`` process runs tests; it writes a JSON summary (per test id: pass, fail,
error, skip...) to the file named by ``--json``, rewritten after every test so that a class
killed by a timeout still tells which tests finished and which one was running.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys

_IMPL = os.environ.get("RMP_CONFORMANCE_IMPL", "stdlib")
_METHOD = os.environ.get("RMP_CONFORMANCE_METHOD", "fork")
_MISSING = os.environ.get("RMP_CONFORMANCE_MISSING", "stub")
_TRACE = os.environ.get("RMP_CONFORMANCE_TRACE")

# Names of the stdlib's multiprocessing.process / util / resource_tracker that the test module's
# *fixtures* (setUpModule, tearDownModule, BaseMixin.setUpClass/tearDownClass) touch. When rmp
# lacks one, the stdlib's object is exposed under rmp's module so that a missing private name
# does not turn every test into an error. rmp shares these registries with the stdlib by design
# (rmp.process registers into multiprocessing.process._dangling), so the bridge is faithful.
# Each applied bridge is reported; --missing strict applies none.
_FIXTURE_BRIDGES = (
    ("process", "_dangling"),
    ("util", "_cleanup_tests"),
    ("resource_tracker", "_resource_tracker"),
)

# What was substituted, reported in the JSON summary.
_SUBSTITUTION: dict = {"impl": _IMPL, "method": _METHOD, "missing_policy": _MISSING}


def _stdlib_submodule_names(std_mp):
    names = []
    for info in pkgutil.iter_modules(std_mp.__path__):
        names.append(info.name)
        if info.ispkg:
            sub = importlib.import_module("multiprocessing." + info.name)
            names.extend(info.name + "." + s.name for s in pkgutil.iter_modules(sub.__path__))
    return sorted(names)


def _make_stub(name, like=None):
    """A stand-in that raises NotImplementedError when called. Where the stdlib's object is a
    class, the stand-in is a class too (tests use such names with ``isinstance``)."""
    message = "rmp does not implement multiprocessing.%s yet (conformance stub)" % name

    if isinstance(like, type):

        def __new__(cls, *args, **kwargs):
            raise NotImplementedError(message)

        stub = type(name.rsplit(".", 1)[-1], (), {"__new__": __new__})
    else:

        def stub(*args, **kwargs):
            raise NotImplementedError(message)

        stub.__name__ = stub.__qualname__ = name
    stub._rmp_conformance_stub = True
    return stub


def _install_rmp():
    """Make ``import multiprocessing`` (and its submodules) resolve to rmp in this process."""
    import multiprocessing as std_mp  # the real stdlib package, imported first

    # Bind every stdlib submodule to its stdlib siblings before the aliasing: the ones rmp does
    # not provide stay in use, and rmp's own modules hold references to the stdlib's.
    std_mods = {}
    for sub in _stdlib_submodule_names(std_mp):
        try:
            std_mods[sub] = importlib.import_module("multiprocessing." + sub)
        except ImportError:  # popen_spawn_win32 and the like
            pass

    import rmp

    provided, fallback, broken = [], [], {}
    for sub in sorted(std_mods):
        try:
            mod = importlib.import_module("rmp." + sub)
        except ModuleNotFoundError as e:
            if e.name not in ("rmp." + sub, "rmp." + sub.split(".")[0]):
                broken[sub] = "%s: %s" % (type(e).__name__, e)
            fallback.append(sub)
            continue
        except Exception as e:  # a real import error inside an rmp module: report it
            broken[sub] = "%s: %s" % (type(e).__name__, e)
            fallback.append(sub)
            continue
        if getattr(mod, "__file__", None) is None:  # an empty namespace package: not provided
            fallback.append(sub)
            continue
        provided.append(sub)

    for sub in provided:
        sys.modules["multiprocessing." + sub] = sys.modules["rmp." + sub]
    sys.modules["multiprocessing"] = rmp
    if _MISSING != "strict":
        # ``import multiprocessing.queues`` finds the stdlib module in sys.modules and does not
        # set the attribute on the (aliased) parent package: do it, for top-level subpackages.
        for sub in fallback:
            if "." not in sub:
                setattr(rmp, sub, std_mods[sub])

    missing_sub = []
    missing = sorted(n for n in std_mp.__all__ if not hasattr(rmp, n))
    # Public names that a submodule rmp provides only in part (e.g. connection.Listener while
    # the connections work is under way) get the same treatment as missing top-level names.
    for sub in provided:
        mod = sys.modules["rmp." + sub]
        for name in getattr(std_mods[sub], "__all__", ()):
            if not hasattr(mod, name):
                missing_sub.append((sub, name))
    bridged, filled = [], []
    for sub, name in missing_sub:
        if _MISSING == "stub":
            stub = _make_stub("%s.%s" % (sub, name), getattr(std_mods[sub], name, None))
            setattr(sys.modules["rmp." + sub], name, stub)
        elif _MISSING == "stdlib":
            setattr(sys.modules["rmp." + sub], name, getattr(std_mods[sub], name))
    missing += ["%s.%s" % pair for pair in missing_sub]
    if _MISSING == "stub":
        for name in missing:
            if "." not in name:
                setattr(rmp, name, _make_stub(name))
    elif _MISSING == "stdlib":
        filled = _fill_from_stdlib(rmp, std_mp, std_mods["context"])
    if _MISSING != "strict":
        for sub, name in _FIXTURE_BRIDGES:
            mod = sys.modules.get("rmp." + sub)
            if mod is not None and sub in provided and not hasattr(mod, name):
                setattr(mod, name, getattr(std_mods[sub], name))
                bridged.append("%s.%s" % (sub, name))

    _SUBSTITUTION.update(
        rmp_file=rmp.__file__,
        provided_submodules=provided,
        stdlib_submodules_kept=fallback,
        broken_rmp_submodules=broken,
        missing_names=missing,
        filled_from_stdlib=filled,
        fixture_bridges=bridged,
    )
    return std_mp


def _fill_from_stdlib(rmp, std_mp, std_context):
    """--missing stdlib: give rmp's contexts the stdlib's factory methods they lack.

    The stdlib's methods run with an rmp context as ``self``, so e.g. a Queue is the stdlib's
    Queue built with rmp's context (and its children are rmp processes). Diagnostic only.
    """
    import rmp.context

    filled = []
    for name in dir(std_context.BaseContext):
        if name.startswith("_") or hasattr(rmp.context.BaseContext, name):
            continue
        setattr(rmp.context.BaseContext, name, std_context.BaseContext.__dict__[name])
        filled.append(name)
    default = rmp.context._default_context
    for name in std_mp.__all__:
        if not hasattr(rmp, name):
            setattr(rmp, name, getattr(default, name))
    return filled


_STD_MP = None
if _IMPL == "rmp":
    _STD_MP = _install_rmp()
elif _IMPL != "stdlib":
    raise SystemExit("RMP_CONFORMANCE_IMPL must be 'rmp' or 'stdlib', not %r" % _IMPL)


def _trace_child():
    """In a process other than the test process: record which multiprocessing it runs."""
    mp = sys.modules.get("multiprocessing")
    rmp = sys.modules.get("rmp")
    proc = sys.modules.get("multiprocessing.process")
    record = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "name": __name__,
        "argv0": sys.argv[0] if sys.argv else None,
        "multiprocessing_is_rmp": rmp is not None and mp is rmp,
        "multiprocessing_file": getattr(mp, "__file__", None),
        "process_module": getattr(proc, "__name__", None),
    }
    with open(_TRACE, "a") as f:
        f.write(json.dumps(record) + "\n")


if _TRACE and __name__ != "__main__":
    _trace_child()

import test._test_multiprocessing as _tmp  # noqa: E402  (after the aliasing, on purpose)

_tmp.install_tests_in_module_dict(globals(), _METHOD)

_ORIG_SETUP_MODULE = globals().get("setUpModule")


def _setup_module_wrapper():
    """The suite's setUpModule, but its platform probe ``multiprocessing.RLock()`` (a check that
    sem_open works on this host) gets the stdlib's RLock while rmp has none."""
    import rmp

    stubbed = getattr(getattr(rmp, "RLock", None), "_rmp_conformance_stub", False)
    if stubbed or not hasattr(rmp, "RLock"):
        saved = rmp.__dict__.get("RLock")
        rmp.RLock = _STD_MP.RLock
        try:
            _ORIG_SETUP_MODULE()
        finally:
            if saved is None:
                del rmp.RLock
            else:
                rmp.RLock = saved
    else:
        _ORIG_SETUP_MODULE()


if _IMPL == "rmp" and _MISSING != "strict" and _ORIG_SETUP_MODULE is not None:
    globals()["setUpModule"] = _setup_module_wrapper


# ----------------------------------------------------------------------------------------------
# Running one class (only in the test process itself)


def _test_classes():
    import unittest

    out = []
    for name, obj in list(globals().items()):
        if isinstance(obj, type) and issubclass(obj, unittest.TestCase):
            if obj.__module__ == __name__:
                out.append(name)
    return sorted(out)


def _short_id(test):
    """``Class.test_method`` for tests; ``Class.setUpClass`` / ``setUpModule`` for fixtures."""
    tid = test.id()
    prefix = __name__ + "."
    if tid.startswith(prefix):
        return tid[len(prefix) :]
    # unittest's _ErrorHolder: "setUpClass (__main__.Cls)" / "setUpModule (__main__)"
    if " (" in tid and tid.endswith(")"):
        what, where = tid[:-1].split(" (", 1)
        where = where[len(prefix) :] if where.startswith(prefix) else ""
        return (where + "." + what) if where and where != __name__ else what
    return tid


def _reason_of(err_text):
    """The last non-empty line of a traceback: ``ExcType: message``."""
    lines = [ln for ln in err_text.strip().splitlines() if ln.strip(" -=~^\t")]
    return lines[-1].strip()[:500] if lines else ""


def _make_result_class(json_path, meta):
    import time
    import unittest

    class JsonResult(unittest.TextTestResult):
        """A TextTestResult that also keeps a per-test outcome table in a JSON file."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.outcomes = {}
            self.running = None
            self._t0 = None
            self._dump()

        def _dump(self, finished=False):
            data = dict(meta)
            data["finished"] = finished
            data["running"] = self.running
            data["tests"] = self.outcomes
            tmp = json_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, json_path)

        def _set(self, test, outcome, detail=""):
            tid = _short_id(test)
            entry = {"outcome": outcome}
            if self._t0 is not None and self.running == tid:
                entry["time"] = round(time.monotonic() - self._t0, 3)
            if detail:
                entry["reason"] = detail if outcome == "skip" else _reason_of(detail)
                if outcome in ("fail", "error"):
                    entry["traceback"] = detail[-4000:]
            prev = self.outcomes.get(tid)
            # A failing subtest makes the test fail; the first bad outcome is kept.
            if prev is None or prev["outcome"] in ("pass", "skip"):
                self.outcomes[tid] = entry
            self._dump()

        def startTest(self, test):
            super().startTest(test)
            self.running = _short_id(test)
            self._t0 = time.monotonic()
            self._dump()

        def stopTest(self, test):
            super().stopTest(test)
            self.running = None
            self._dump()

        def addSuccess(self, test):
            super().addSuccess(test)
            self._set(test, "pass")

        def addFailure(self, test, err):
            super().addFailure(test, err)
            self._set(test, "fail", self.failures[-1][1])

        def addError(self, test, err):
            super().addError(test, err)
            self._set(test, "error", self.errors[-1][1])

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            self._set(test, "skip", reason)

        def addExpectedFailure(self, test, err):
            super().addExpectedFailure(test, err)
            self._set(test, "expected_failure")

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            self._set(test, "unexpected_success")

        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is not None:
                if issubclass(err[0], test.failureException):
                    outcome, text = "fail", self.failures[-1][1]
                else:
                    outcome, text = "error", self.errors[-1][1]
                self._set(test, outcome, "[%s] %s" % (subtest._subDescription(), text))

        def finish(self):
            self._dump(finished=True)

    return JsonResult


def _main(argv=None):
    import argparse
    import fnmatch
    import signal
    import unittest

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="print the class names as JSON")
    parser.add_argument("--class", dest="cls", help="the TestCase class to run")
    parser.add_argument(
        "--tests",
        action="append",
        default=[],
        help="only test methods matching this fnmatch pattern (repeatable)",
    )
    parser.add_argument("--json", help="where to write the JSON summary")
    args = parser.parse_args(argv)

    # Tests expect Ctrl-C to raise KeyboardInterrupt: undo an inherited SIG_IGN.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Shortly before run.py kills a class on timeout, dump every thread's stack into the log.
    dump_after = float(os.environ.get("RMP_CONFORMANCE_DUMP_AFTER") or 0)
    if dump_after > 0:
        import faulthandler

        faulthandler.dump_traceback_later(dump_after, exit=False, file=sys.stderr)
    if args.list:
        print(json.dumps(_test_classes()))
        return 0
    if not args.cls or not args.json:
        parser.error("--class and --json are required (or --list)")
    cls = globals().get(args.cls)
    if cls is None:
        parser.error("no TestCase class %r" % args.cls)

    meta = {
        "class": args.cls,
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "substitution": _SUBSTITUTION,
    }
    if _IMPL == "rmp":
        import rmp

        meta["check_main_process_is_rmp"] = sys.modules["multiprocessing"] is rmp
    loader = unittest.TestLoader()
    if args.tests:
        names = [
            n
            for n in loader.getTestCaseNames(cls)
            if any(fnmatch.fnmatchcase(n, p) for p in args.tests)
        ]
        suite = unittest.TestSuite(cls(n) for n in names)
    else:
        suite = loader.loadTestsFromTestCase(cls)
    result_class = _make_result_class(args.json, meta)
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=result_class)
    result = runner.run(unittest.TestSuite([suite]))
    result.finish()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
