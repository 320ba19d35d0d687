"""A pool whose worker is killed mid-``imap``: the lost item fails with WorkerLostError (pid
and signal named), the worker is replaced and every other item completes. The stdlib's pool
would wait forever for the lost item."""

import os
import signal

import rmp as multiprocessing
from rmp.pool import WorkerLostError


def work(x):
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # a crash, an OOM kill...
    return x * x


if __name__ == "__main__":
    with multiprocessing.Pool(2) as pool:
        results = pool.imap(work, range(6))
        out = []
        while True:
            try:
                out.append(next(results))
            except StopIteration:
                break
            except WorkerLostError:
                # str(e) names the worker's pid and, on this machine, the signal (e.pid,
                # e.signal); on a Ray cluster, Ray's account of the death.
                out.append("lost")
        print("results:", out)
        print("pool still works:", pool.map(abs, [-1, -2, -3]))
