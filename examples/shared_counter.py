"""A shared counter: four processes increment one Value under its lock."""

import rmp as multiprocessing


def add(counter, n):
    for _ in range(n):
        with counter.get_lock():
            counter.value += 1


if __name__ == "__main__":
    counter = multiprocessing.Value("i", 0)
    procs = [multiprocessing.Process(target=add, args=(counter, 2500)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    print("total:", counter.value)
