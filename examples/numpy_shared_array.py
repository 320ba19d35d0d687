"""A shared Array viewed as a numpy array without copying: children fill their slices."""

import numpy as np

import rmp as multiprocessing


def fill(shared, start, stop):
    view = np.frombuffer(shared.get_obj(), dtype=np.float64)  # no copy: the shared memory
    view[start:stop] = np.arange(start, stop) ** 2


if __name__ == "__main__":
    n, workers = 1_000_000, 4
    shared = multiprocessing.Array("d", n)
    step = n // workers
    procs = [
        multiprocessing.Process(target=fill, args=(shared, i * step, (i + 1) * step))
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    result = np.frombuffer(shared.get_obj(), dtype=np.float64)
    print("matches:", bool(np.array_equal(result, np.arange(n, dtype=np.float64) ** 2)))
