"""numpy arrays through a Queue: a producer process sends arrays, the parent receives them
and checks their contents, shape and dtype (rmp sends an array's buffer out of band, without
pickling its data)."""

import numpy as np

import rmp as multiprocessing


def produce(q, n):
    for i in range(n):
        q.put(np.full((256, 256), i, dtype=np.float64))
    q.put(None)


if __name__ == "__main__":
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=produce, args=(q, 8))
    p.start()
    sums = []
    while (a := q.get(timeout=60)) is not None:
        assert a.shape == (256, 256) and a.dtype == np.float64
        sums.append(int(a.sum()))
    p.join()
    print("sums:", sums)
    print("producer exit code:", p.exitcode)
