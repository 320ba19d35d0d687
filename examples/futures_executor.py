"""concurrent.futures with an rmp context, and an rmp lock shared by its workers."""

import concurrent.futures

import rmp as multiprocessing

_lock = None


def init(lock):
    global _lock
    _lock = lock


def square(x):
    with _lock:
        return x * x


if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=2, mp_context=ctx, initializer=init, initargs=(ctx.Lock(),)
    ) as ex:
        print(list(ex.map(square, range(10))))
