"""One benchmark measurement in a fresh interpreter: ``_worker.py SCENARIO IMPL [--quick]``.

What: imports the implementation (``floor`` for a floor), runs the scenario once and prints
exactly one JSON line on stdout: scenario, impl, ok, ops, wall, cpu, detail (and extra).
It exits 0 when the scenario verified its result, 1 otherwise, 2 on bad arguments.

Why: every (scenario, implementation, repetition) gets its own interpreter, so no state
(imported modules, a running fork server, heap growth, resource trackers) leaks from one
measurement to the next. ``run.py`` starts this file and enforces the time limit.

Spawned and forkserver children import this file again as ``__mp_main__``: the module level
imports only ``os`` and ``sys``; everything else happens under the ``__main__`` guard.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def _run(scenario_name: str, impl_name: str, quick: bool) -> dict:
    import platform
    import traceback

    import impls
    import scenarios

    out = {
        "scenario": scenario_name,
        "impl": impl_name,
        "ok": False,
        "python": platform.python_version(),
        "pid": os.getpid(),
    }
    try:
        sc = scenarios.get(scenario_name)
        if sc.kind == "floor":
            if impl_name != "floor":
                raise ValueError("%s is a floor: its implementation must be 'floor'" % sc.name)
            mod = None
        else:
            impl = impls.get(impl_name)
            mod = impl.load()
            out["version"] = str(getattr(mod, "__version__", "") or "")
        res = sc.func(mod, quick)
        out.update(res)
        if out.get("ops", 0) <= 0 and out["ok"]:
            out.update(ok=False, detail="scenario reported no operations")
    except BaseException as e:  # report anything, even SystemExit from a broken adapter
        tb = traceback.format_exception(type(e), e, e.__traceback__)
        out.update(ok=False, detail="%s: %s" % (type(e).__name__, e), traceback="".join(tb))
    return out


def main(argv=None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario")
    ap.add_argument("impl", help="implementation name, or 'floor' for a floor")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    out = _run(args.scenario, args.impl, args.quick)
    sys.stdout.write("\n" + json.dumps(out, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
