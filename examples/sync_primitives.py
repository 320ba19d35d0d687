"""Event, Barrier and Condition coordinating a group of processes."""

import rmp as multiprocessing


def worker(i, start, barrier, cond, done, results):
    start.wait()  # everyone starts together
    results[i] = i * 10
    barrier.wait()  # every result is written past this point
    with cond:
        done.value += 1
        cond.notify_all()


if __name__ == "__main__":
    n = 3
    start = multiprocessing.Event()
    barrier = multiprocessing.Barrier(n)
    cond = multiprocessing.Condition()
    done = multiprocessing.Value("i", 0, lock=False)
    results = multiprocessing.Array("i", n)
    procs = [
        multiprocessing.Process(target=worker, args=(i, start, barrier, cond, done, results))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    start.set()
    with cond:
        cond.wait_for(lambda: done.value == n, timeout=60)
    for p in procs:
        p.join()
    print("results:", list(results), "done:", done.value)
