"""The Pool API end to end: an initializer that sets a global the tasks read, map, imap
with chunks, imap_unordered, starmap, a callback, and an exception that carries the
worker's traceback as its ``__cause__``. Unchanged, it runs on a Ray cluster too:
``RMP_POOL_BACKEND=ray python pool_tasks.py`` (with ``RAY_ADDRESS`` for an existing one)."""

import rmp as multiprocessing

SCALE = None


def init(scale):
    global SCALE
    SCALE = scale


def scaled(x):
    return x * SCALE


def words(line):
    return len(line.split())


def check(x):
    if x < 0:
        raise ValueError("negative: %d" % x)
    return x


if __name__ == "__main__":
    lines = ["the quick brown fox", "jumps over", "the lazy dog"] * 100
    with multiprocessing.Pool(2, initializer=init, initargs=(10,)) as pool:
        print("scaled:", pool.map(scaled, range(8)))
        print("words:", sum(pool.imap(words, lines, chunksize=25)))
        print("unordered:", sorted(pool.imap_unordered(scaled, range(5))))
        print("starmap:", pool.starmap(pow, [(2, 5), (3, 3)]))
        got = []
        pool.apply_async(scaled, (4,), callback=got.append).wait(60)
        print("callback:", got)
        try:
            pool.map(check, [1, -2, 3])
        except ValueError as e:
            print("error:", e, "| cause:", type(e.__cause__).__name__)
