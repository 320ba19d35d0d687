"""Shared memory for ``Value``, ``Array`` and the synchronization primitives.

The counterpart of CPython's ``multiprocessing.heap``. Memory comes from *arenas*: anonymous
``memfd`` segments mapped shared (``rmp._core.Segment``), which have no name, so nothing can
leak in ``/dev/shm`` when a process is SIGKILLed. Small objects are sub-allocated from shared
arenas, so a thousand ``Value`` objects cost one descriptor and one mapping, not a thousand.

A forked child inherits every arena mapped. A spawn or forkserver child receives an arena's
descriptor (``DupFd``) when an object living in it is pickled for the child, and maps each
arena once however many objects of it arrive.
"""

import itertools
import mmap
import os
import threading
import weakref

from . import _core, reduction, util

__all__ = ["Arena", "BufferWrapper", "Heap"]

#: Blocks are aligned (and sizes rounded) to a cache line: no two objects share a line, so a
#: process spinning on one lock never slows the holder of another object's line, nor the
#: holder of this lock writing the data it guards (measured: two processes incrementing a
#: Value under its lock ran 1.5x slower when the value and its lock shared a line).
ALIGNMENT = 64


def _roundup(n, alignment):
    return (n + alignment - 1) & ~(alignment - 1)


class Arena:
    """One shared segment that blocks are cut from.

    ``token`` names the arena across processes, so that a child maps each arena once.
    """

    _counter = itertools.count()

    def __init__(self, size, segment=None, token=None):
        if size <= 0:
            raise ValueError("arena size must be positive")
        self.size = size
        self.segment = segment if segment is not None else _core.Segment(size)
        self.token = token if token is not None else (os.getpid(), next(Arena._counter))
        self.buffer = memoryview(self.segment)

    def __repr__(self):
        return "<rmp.heap.Arena token=%r size=%d fd=%d>" % (
            self.token,
            self.size,
            self.segment.fileno(),
        )


# Arenas this process mapped, by token: a second object from the same arena reuses the
# mapping. Weak, so an arena goes (unmapped, descriptor closed) with its last object.
_arenas_by_token = weakref.WeakValueDictionary()
_arenas_lock = threading.Lock()


def _register_arena(arena):
    with _arenas_lock:
        _arenas_by_token[arena.token] = arena


def reduce_arena(arena):
    return rebuild_arena, (arena.size, arena.token, reduction.DupFd(arena.segment.fileno()))


def rebuild_arena(size, token, dupfd):
    fd = dupfd.detach()
    with _arenas_lock:
        arena = _arenas_by_token.get(token)
        if arena is not None:
            os.close(fd)
            return arena
        arena = Arena(size, _core.Segment.adopt(fd, size), token)
        _arenas_by_token[token] = arena
        return arena


reduction.register(Arena, reduce_arena)


class Heap:
    """A per-process allocator over arenas.

    Sizes are rounded to ``ALIGNMENT``; freed blocks go to a free list per rounded size and
    are reused first; new blocks are cut from the current arena; requests larger than half
    an arena get an arena of their own, released when the block is freed. A forked child
    starts a fresh heap (new arenas), as CPython's does, so parent and child never cut the
    same bytes.
    """

    _ARENA_SIZE = 1 << 20

    def __init__(self, arena_size=None):
        self._lastpid = os.getpid()
        self._lock = threading.Lock()
        self._arena_size = arena_size or max(self._ARENA_SIZE, mmap.PAGESIZE)
        self._arena = None  # the arena new small blocks are cut from
        self._next = 0  # first free offset in it
        self._free = {}  # rounded size -> [(arena, start)]
        self._arenas = []  # arenas holding live or free small blocks
        self._n_allocated = 0

    def _reinit_after_fork(self):
        self.__init__(self._arena_size)

    def _new_arena(self, size):
        arena = Arena(size)
        _register_arena(arena)
        return arena

    def malloc(self, size):
        """Returns a zero-filled block ``(arena, start, stop)`` of at least ``size`` bytes."""
        if size < 0:
            raise ValueError(f"Size {size:n} out of range")
        if size > 1 << 62:
            raise OverflowError(f"Size {size:n} too large")
        if os.getpid() != self._lastpid:
            self._reinit_after_fork()
        rounded = _roundup(max(size, 1), ALIGNMENT)
        with self._lock:
            self._n_allocated += 1
            if rounded > self._arena_size // 2:
                arena = self._new_arena(_roundup(rounded, mmap.PAGESIZE))
                return (arena, 0, rounded)
            blocks = self._free.get(rounded)
            if blocks:
                arena, start = blocks.pop()
                arena.buffer[start : start + rounded] = bytes(rounded)
                return (arena, start, start + rounded)
            if self._arena is None or self._next + rounded > self._arena.size:
                self._arena = self._new_arena(self._arena_size)
                self._arenas.append(self._arena)
                self._next = 0
            start = self._next
            self._next += rounded
            return (self._arena, start, start + rounded)

    def free(self, block):
        """Returns a block to the heap. Blocks of another process's heap (inherited across
        fork) are left alone."""
        if os.getpid() != self._lastpid:
            return
        arena, start, stop = block
        with self._lock:
            self._n_allocated -= 1
            if arena.size != self._arena_size or arena not in self._arenas:
                # A dedicated arena: dropping the last reference unmaps it.
                return
            self._free.setdefault(stop - start, []).append((arena, start))


class BufferWrapper:
    """A block of shared memory that is freed when this object is garbage collected in the
    process that allocated it. Pickles (while spawning, or through a queue/pipe with the
    resource sharer) as its arena's descriptor and offsets."""

    _heap = Heap()

    def __init__(self, size):
        if size < 0:
            raise ValueError(f"Size {size:n} out of range")
        block = BufferWrapper._heap.malloc(size)
        self._state = (block, size)
        util.Finalize(self, BufferWrapper._heap.free, args=(block,))

    def create_memoryview(self):
        (arena, start, _stop), size = self._state
        return arena.buffer[start : start + size]

    @property
    def segment(self):
        return self._state[0][0].segment

    @property
    def offset(self):
        return self._state[0][1]

    def __reduce__(self):
        return _rebuild_wrapper, self._state


def _rebuild_wrapper(block, size):
    w = BufferWrapper.__new__(BufferWrapper)
    w._state = (block, size)
    return w
