"""A progress bar over a pool's results, the way it is usually written: tqdm wrapped around
``imap_unordered`` (the bar goes to stderr; the results are checked here). rmp's own
``progress=True`` on the map family does the same without the wrapping."""

from tqdm import tqdm

import rmp as multiprocessing


def cube(x):
    return x**3


if __name__ == "__main__":
    items = range(200)
    with multiprocessing.Pool(2) as pool:
        total = 0
        for value in tqdm(pool.imap_unordered(cube, items, chunksize=8), total=len(items)):
            total += value
        print("sum of cubes:", total, total == sum(x**3 for x in items))
        print("with progress=:", sum(pool.map(cube, items, progress="cubes")))
