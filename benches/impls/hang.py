"""Test-only implementation ``hang``: never returns, and leaves a child of its own behind.

What: the first use (``get_context``, ``Process`` or any other public name) forks a child that
sleeps forever, writes that child's pid to the file named by ``RMP_BENCH_HANG_PIDFILE`` (when
set), then sleeps forever itself.

Why: the runner must kill a hanging worker and its whole process group and report TIMEOUT;
``tests/test_bench.py`` runs ``--impl hang --timeout 3`` and checks both the TIMEOUT and that the
grandchild is gone. It is never in the default set.
"""

from __future__ import annotations

import os
import time

PIDFILE_ENV = "RMP_BENCH_HANG_PIDFILE"


def _sleep_forever():
    while True:
        time.sleep(3600)


def _hang(*_args, **_kwargs):
    pid = os.fork()
    if pid == 0:
        try:
            _sleep_forever()
        finally:
            os._exit(0)
    path = os.environ.get(PIDFILE_ENV)
    if path:
        with open(path, "w") as f:
            f.write("%d\n" % pid)
    _sleep_forever()


get_context = _hang
Process = _hang


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    _hang()
