"""Named shared memory: a child attaches by name and changes what the parent sees."""

import rmp as multiprocessing
from rmp import shared_memory


def shout(name):
    shm = shared_memory.SharedMemory(name=name)
    shm.buf[:5] = bytes(shm.buf[:5]).upper()
    shm.close()


if __name__ == "__main__":
    shm = shared_memory.SharedMemory(create=True, size=16)
    try:
        shm.buf[:5] = b"hello"
        p = multiprocessing.Process(target=shout, args=(shm.name,))
        p.start()
        p.join()
        print(bytes(shm.buf[:5]))
    finally:
        shm.close()
        shm.unlink()
