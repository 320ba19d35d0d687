"""A JoinableQueue pipeline: workers take numpy arrays from a task queue, put their sums on a
result queue and mark each task done; the main process waits with join()."""

import numpy as np

import rmp as multiprocessing


def worker(tasks, results):
    while True:
        item = tasks.get()
        if item is None:
            tasks.task_done()
            break
        index, array = item
        results.put((index, float(array.sum())))
        tasks.task_done()


if __name__ == "__main__":
    tasks = multiprocessing.JoinableQueue()
    results = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=worker, args=(tasks, results)) for _ in range(3)]
    for w in workers:
        w.start()
    for i in range(12):
        tasks.put((i, np.full(100_000, i, dtype=np.float64)))  # 800 KB each
    tasks.join()  # every array was summed
    sums = dict(results.get() for _ in range(12))
    print("sums:", [int(sums[i]) for i in range(12)])
    for _ in workers:
        tasks.put(None)
    tasks.join()
    for w in workers:
        w.join()
    print("workers exit codes:", [w.exitcode for w in workers])
