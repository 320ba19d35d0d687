"""Start processes with arguments and names; read their exit codes (a signal shows as < 0)."""

import os
import signal

import rmp as multiprocessing


def greet(name):
    print(f"hello {name} from {multiprocessing.current_process().name}", flush=True)


def crash():
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    for i, name in enumerate(["ada", "grace", "linus"]):
        p = multiprocessing.Process(target=greet, args=(name,), name=f"worker-{i}")
        p.start()
        p.join()  # one at a time, so that the output order is fixed
    p = multiprocessing.Process(target=crash)
    p.start()
    p.join()
    print("killed child exit code:", p.exitcode)
